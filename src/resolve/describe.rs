//! What a manifest digest is: its media type and, per platform, its image manifests.

use std::collections::BTreeMap;

use tokio::sync::Mutex;

use crate::lock::ResolvedDigest;
use crate::reference::{Digest, ImageRepo, Platform};
use crate::registry::{ParsedManifest, RegistryClient, parse_config_platform};

/// Image configs are small JSON documents; anything bigger is not one.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Describes digests of one repository, each at most once per pass.
pub struct Describer<'a> {
    client: &'a RegistryClient,
    repo: &'a ImageRepo,
    cache: Mutex<BTreeMap<Digest, Result<ResolvedDigest, String>>>,
}

impl<'a> Describer<'a> {
    pub fn new(client: &'a RegistryClient, repo: &'a ImageRepo) -> Self {
        Describer {
            client,
            repo,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// Fetches the manifest by digest (verified by the client) and reads its platforms.
    pub async fn describe(&self, digest: &Digest) -> Result<ResolvedDigest, String> {
        if let Some(hit) = self.cache.lock().await.get(digest) {
            return hit.clone();
        }
        let result = self.fetch(digest).await;
        self.cache
            .lock()
            .await
            .insert(digest.clone(), result.clone());
        result
    }

    async fn fetch(&self, digest: &Digest) -> Result<ResolvedDigest, String> {
        let manifest = self
            .client
            .get_manifest(self.repo, digest.as_str())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("manifest {digest} not found in {}", self.repo))?;
        let parsed = manifest.parse().map_err(|e| e.to_string())?;
        let (digest, media_type) = (manifest.digest.clone(), manifest.media_type.clone());
        // The manifest's bytes (up to 4 MiB, counted in the client's memory budget) are not
        // held while the config is fetched.
        drop(manifest);
        let mut platforms = BTreeMap::new();
        match parsed {
            ParsedManifest::Index(index) => {
                for child in index.manifests {
                    // Attestation manifests (buildx) carry `unknown/unknown`: not a platform.
                    if let Some(platform) = child.platform.filter(|p| p.os != "unknown") {
                        platforms
                            .entry(platform.to_string())
                            .or_insert(child.digest);
                    }
                }
            }
            ParsedManifest::Image(image) => {
                // Only the config's digest is needed from a manifest that may list thousands
                // of layers.
                let config_digest = image.config.digest;
                let config = self
                    .client
                    .get_blob(self.repo, &config_digest, MAX_CONFIG_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
                let platform = parse_config_platform(&config).map_err(|e| e.to_string())?;
                platforms.insert(platform.to_string(), digest.clone());
            }
        }
        Ok(ResolvedDigest {
            digest,
            media_type,
            platforms,
        })
    }
}

/// Why `resolved` lacks a required platform, if it does. A required platform without a
/// variant accepts any variant (`linux/arm64` matches `linux/arm64/v8`).
pub fn platform_problem(resolved: &ResolvedDigest, required: &[Platform]) -> Option<String> {
    let available: Vec<Platform> = resolved
        .platforms
        .keys()
        .filter_map(|p| p.parse().ok())
        .collect();
    let missing: Vec<String> = required
        .iter()
        .filter(|want| {
            !available.iter().any(|have| {
                have.os == want.os
                    && have.architecture == want.architecture
                    && (want.variant.is_none() || have.variant == want.variant)
            })
        })
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let have: Vec<&str> = resolved.platforms.keys().map(String::as_str).collect();
    Some(format!(
        "{} lacks required platform(s) {} (has {})",
        resolved.digest.short(),
        missing.join(", "),
        if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_resolved(platforms: &[&str]) -> ResolvedDigest {
        let digest = Digest::sha256_of(b"index");
        ResolvedDigest {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            platforms: platforms
                .iter()
                .map(|p| (p.to_string(), digest.clone()))
                .collect(),
        }
    }

    fn mk_platforms(list: &[&str]) -> Vec<Platform> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn required_platforms_present() {
        let r = mk_resolved(&["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(
            platform_problem(&r, &mk_platforms(&["linux/amd64", "linux/arm64"])),
            None
        );
        assert_eq!(platform_problem(&r, &[]), None);
    }

    #[test]
    fn missing_platform_is_named() {
        let r = mk_resolved(&["linux/amd64"]);
        let problem = platform_problem(&r, &mk_platforms(&["linux/amd64", "linux/arm64"])).unwrap();
        assert!(problem.contains("linux/arm64"), "{problem}");
        assert!(problem.contains("has linux/amd64"), "{problem}");
        let r = mk_resolved(&["linux/arm64/v7"]);
        assert!(platform_problem(&r, &mk_platforms(&["linux/arm64/v8"])).is_some());
    }
}
