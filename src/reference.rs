//! Image names, digests and platforms: the vocabulary every other module speaks.
//!
//! Names follow the distribution reference grammar, with Docker Hub's short forms normalised
//! (`nginx` is `docker.io/library/nginx`), so that a lock, a Pod and a registry call all agree
//! on what an image is called.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// Docker Hub's canonical registry name in references.
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("invalid repository name {0:?}: use lowercase letters, digits and . _ - / separators")]
    Repository(String),
    #[error("invalid tag {0:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>, lowercase")]
    Digest(String),
    #[error("invalid platform {0:?}: expected os/arch or os/arch/variant")]
    Platform(String),
}

/// A content digest, `algorithm:hex`, validated on construction.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl TryFrom<String> for Digest {
    type Error = ReferenceError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl Digest {
    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The digest of `bytes` computed with this digest's own algorithm.
    pub fn same_algorithm_of(&self, bytes: &[u8]) -> Self {
        let mut hasher = DigestHasher::for_digest(self);
        hasher.update(bytes);
        hasher.finish()
    }

    /// True when `bytes` hash to this digest.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        self.same_algorithm_of(bytes) == *self
    }

    pub fn algorithm(&self) -> &str {
        self.0
            .split_once(':')
            .map_or("", |(algorithm, _)| algorithm)
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, hex)| hex)
    }

    /// `sha256:0123456789ab`: short enough for a commit message, long enough to tell apart.
    pub fn short(&self) -> String {
        format!(
            "{}:{}",
            self.algorithm(),
            &self.hex()[..12.min(self.hex().len())]
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hashes bytes as they stream by, with the algorithm of the digest they must match.
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub fn for_digest(digest: &Digest) -> Self {
        match digest.algorithm() {
            "sha512" => DigestHasher::Sha512(Sha512::new()),
            _ => DigestHasher::Sha256(Sha256::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        Digest(match self {
            DigestHasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            DigestHasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        })
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = match s.split_once(':') {
            Some(("sha256", hex)) => is_lower_hex(hex, 64),
            Some(("sha512", hex)) => is_lower_hex(hex, 128),
            _ => false,
        };
        if valid {
            Ok(Digest(s.to_owned()))
        } else {
            Err(ReferenceError::Digest(s.to_owned()))
        }
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository in a registry: `quay.io` + `company/web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRepo {
    /// Registry host with optional port, as written in references (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/nginx`).
    pub repository: String,
}

impl ImageRepo {
    /// Parses `registry/path` or a Docker Hub short form (`nginx`, `bitnami/redis`).
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (registry, repository) = match name.split_once('/') {
            // The first component is a registry host only if it looks like one (docker's rule).
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_repository(&repository) || registry.is_empty() {
            return Err(ReferenceError::Repository(name.to_owned()));
        }
        Ok(ImageRepo {
            registry,
            repository,
        })
    }
}

impl fmt::Display for ImageRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

fn is_valid_repository(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|component| {
            !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && component
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && component
                    .bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

/// True for a valid tag per the distribution spec.
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !tag.starts_with(['.', '-'])
}

/// A full image reference: repository plus tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub repo: ImageRepo,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `name[:tag][@digest]`. A bare name gets no implied tag: callers decide whether
    /// `latest` applies.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (reference, None),
        };
        // A ':' after the last '/' separates the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                let tag = &rest[split + 1..];
                if !is_valid_tag(tag) {
                    return Err(ReferenceError::Tag(tag.to_owned()));
                }
                (&rest[..split], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        Ok(ImageRef {
            repo: ImageRepo::parse(name)?,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// An OCI platform, `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok_part(p)) {
            return Err(ReferenceError::Platform(s.to_owned()));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_forms_normalise() {
        let r = ImageRef::parse("nginx:1.25").unwrap();
        assert_eq!(r.repo.to_string(), "docker.io/library/nginx");
        assert_eq!(r.tag.as_deref(), Some("1.25"));
        assert_eq!(
            ImageRepo::parse("bitnami/redis").unwrap().to_string(),
            "docker.io/bitnami/redis"
        );
        assert_eq!(
            ImageRepo::parse("index.docker.io/library/nginx").unwrap(),
            ImageRepo::parse("nginx").unwrap()
        );
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = ImageRef::parse("localhost:5000/team/web").unwrap();
        assert_eq!(r.repo.registry, "localhost:5000");
        assert_eq!(r.repo.repository, "team/web");
        assert_eq!(r.tag, None);
        let r = ImageRef::parse("127.0.0.1:5000/web:v1").unwrap();
        assert_eq!(r.repo.registry, "127.0.0.1:5000");
        assert_eq!(r.tag.as_deref(), Some("v1"));
    }

    #[test]
    fn tag_and_digest_together() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("quay.io/company/web:latest@{digest}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest.unwrap().as_str(), digest);
    }

    #[test]
    fn rejects_bad_names() {
        assert!(ImageRepo::parse("Quay.io/Upper").is_err());
        assert!(ImageRepo::parse("quay.io/a//b").is_err());
        assert!(ImageRef::parse("web:-bad").is_err());
        assert!(ImageRef::parse("web@sha256:abc").is_err());
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn digest_validation_and_verification() {
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(format!("md5:{}", "a".repeat(32)).parse::<Digest>().is_err());
        let d = Digest::sha256_of(b"hello");
        assert!(d.verifies(b"hello"));
        assert!(!d.verifies(b"hellO"));
        assert_eq!(d.short().len(), "sha256:".len() + 12);
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn platforms_round_trip() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//amd64".parse::<Platform>().is_err());
    }
}
