//! The manifest JSON that resolution reads: OCI image index / Docker manifest list, OCI image
//! manifest / Docker schema 2, and the platform fields of an image config.
//!
//! Only what imagelock needs is modelled; unknown fields are ignored. Bytes are kept by the
//! caller: a manifest is never re-serialised, because that would change its digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::RegistryError;
use crate::reference::{Digest, Platform};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: both multi-platform kinds and both image kinds.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// True for the media types of a multi-platform index.
pub fn is_index_media_type(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// True for the media types of a single-platform image manifest.
pub fn is_image_media_type(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// The media type without parameters (`; charset=utf-8`) and surrounding space.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// A content descriptor (OCI image-spec `descriptor.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    #[serde(deserialize_with = "de_digest")]
    pub digest: Digest,
    pub size: u64,
    #[serde(default, deserialize_with = "de_platform")]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The artifact's type, in the descriptors of a referrers list.
    #[serde(default)]
    pub artifact_type: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ImageIndex {
    /// Children that are images for a platform, skipping attestations: BuildKit stores
    /// provenance manifests in the index with platform `unknown/unknown`.
    pub fn platform_manifests(&self) -> impl Iterator<Item = (&Platform, &Descriptor)> {
        self.manifests.iter().filter_map(|d| {
            let platform = d.platform.as_ref()?;
            let attestation =
                platform.os == "unknown" || d.annotations.contains_key("vnd.docker.reference.type");
            (!attestation).then_some((platform, d))
        })
    }
}

/// An OCI image manifest or Docker image manifest schema 2.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest, by kind.
// Not boxed: values are short-lived parse results, and matching on a Box is clumsier for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedManifest {
    Index(ImageIndex),
    Image(ImageManifest),
}

/// Just enough of a manifest to tell its kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

/// Parses manifest bytes. The kind comes from `content_type` (the response's media type) when it
/// is a manifest type, else from the JSON `mediaType`, else from the shape (`manifests` makes an
/// index, `config` an image). A `Content-Type` that contradicts the JSON `mediaType` is an
/// error: one of them lies, and a pin must not be built on a guess.
pub fn parse_manifest(content_type: &str, bytes: &[u8]) -> Result<ParsedManifest, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidDocument {
        document: "manifest",
        reason,
    };
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not manifest JSON: {e}")))?;
    let header = essence(content_type);
    let declared = probe.media_type.as_deref().map(essence);

    for media_type in [Some(header), declared].into_iter().flatten() {
        if matches!(media_type, DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) {
            return Err(invalid(
                "Docker schema 1 manifests are not supported; push the image again with a current client"
                    .into(),
            ));
        }
    }
    if probe.schema_version == Some(1) {
        return Err(invalid(
            "schemaVersion 1 manifests are not supported".into(),
        ));
    }
    let known = |m: &str| is_index_media_type(m) || is_image_media_type(m);
    if let Some(declared) = declared
        && known(header)
        && known(declared)
        && header != declared
    {
        return Err(invalid(format!(
            "Content-Type {header} disagrees with the manifest's mediaType {declared}"
        )));
    }
    let kind = if known(header) {
        header
    } else if let Some(declared) = declared.filter(|d| known(d)) {
        declared
    } else if let Some(other) = declared.filter(|d| !d.is_empty()) {
        return Err(invalid(format!(
            "unsupported manifest media type {}",
            crate::manifest::quote(other)
        )));
    } else if probe.manifests.is_some() {
        OCI_INDEX
    } else if probe.config.is_some() {
        OCI_MANIFEST
    } else {
        return Err(invalid(format!(
            "cannot tell the manifest kind: media type {:?} and neither `manifests` nor `config`",
            header
        )));
    };
    if is_index_media_type(kind) {
        serde_json::from_slice(bytes)
            .map(ParsedManifest::Index)
            .map_err(|e| invalid(format!("invalid image index: {e}")))
    } else {
        serde_json::from_slice(bytes)
            .map(ParsedManifest::Image)
            .map_err(|e| invalid(format!("invalid image manifest: {e}")))
    }
}

#[derive(Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// The platform (`os`, `architecture`, `variant`) recorded in an image config blob.
pub fn parse_config_platform(config_json: &[u8]) -> Result<Platform, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidDocument {
        document: "image config",
        reason,
    };
    let config: ConfigPlatform = serde_json::from_slice(config_json)
        .map_err(|e| invalid(format!("not image config JSON: {e}")))?;
    platform_from_parts(config.os, config.architecture, config.variant).map_err(invalid)
}

fn platform_from_parts(
    os: String,
    architecture: String,
    variant: Option<String>,
) -> Result<Platform, String> {
    if os.is_empty() || architecture.is_empty() {
        return Err("`os` and `architecture` are required".into());
    }
    Ok(Platform {
        os,
        architecture,
        variant: variant.filter(|v| !v.is_empty()),
    })
}

fn de_digest<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn de_platform<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Platform>, D::Error> {
    let Some(raw) = Option::<ConfigPlatform>::deserialize(deserializer)? else {
        return Ok(None);
    };
    platform_from_parts(raw.os, raw.architecture, raw.variant)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn mk_index(media_type_field: Option<&str>) -> String {
        let media = media_type_field.map_or(String::new(), |m| format!(r#""mediaType":"{m}","#));
        format!(
            r#"{{"schemaVersion":2,{media}"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{b}","size":11,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{c}","size":12,"platform":{{"os":"unknown","architecture":"unknown"}},
                "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}
            ]}}"#,
            a = mk_digest('a'),
            b = mk_digest('b'),
            c = mk_digest('c'),
        )
    }

    fn mk_image(media_type_field: Option<&str>) -> String {
        let media = media_type_field.map_or(String::new(), |m| format!(r#""mediaType":"{m}","#));
        format!(
            r#"{{"schemaVersion":2,{media}"config":{{"mediaType":"{OCI_CONFIG}","digest":"{a}","size":3}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{b}","size":4}}]}}"#,
            a = mk_digest('a'),
            b = mk_digest('b'),
        )
    }

    #[test]
    fn index_from_header_json_or_shape() {
        for (header, field) in [
            (OCI_INDEX, None),
            (DOCKER_MANIFEST_LIST, Some(DOCKER_MANIFEST_LIST)),
            ("application/json", Some(OCI_INDEX)),
            ("", None),
            (
                &format!("{OCI_INDEX}; charset=utf-8") as &str,
                Some(OCI_INDEX),
            ),
        ] {
            let parsed = parse_manifest(header, mk_index(field).as_bytes()).unwrap();
            let ParsedManifest::Index(index) = parsed else {
                panic!("{header}: not an index")
            };
            assert_eq!(index.manifests.len(), 3);
            let platforms: Vec<String> = index
                .platform_manifests()
                .map(|(p, _)| p.to_string())
                .collect();
            assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
        }
    }

    #[test]
    fn image_from_header_json_or_shape() {
        for (header, field) in [
            (OCI_MANIFEST, None),
            (DOCKER_MANIFEST, Some(DOCKER_MANIFEST)),
            ("application/octet-stream", None),
        ] {
            let ParsedManifest::Image(image) =
                parse_manifest(header, mk_image(field).as_bytes()).unwrap()
            else {
                panic!("{header}: not an image")
            };
            assert_eq!(image.config.size, 3);
            assert_eq!(image.layers.len(), 1);
        }
    }

    #[test]
    fn contradictions_and_unsupported_kinds_are_errors() {
        assert!(parse_manifest(OCI_INDEX, mk_image(Some(OCI_MANIFEST)).as_bytes()).is_err());
        assert!(parse_manifest(DOCKER_SCHEMA1_SIGNED, b"{\"schemaVersion\":1}").is_err());
        assert!(parse_manifest("", br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(
            parse_manifest(
                "",
                br#"{"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#
            )
            .is_err()
        );
        assert!(parse_manifest(OCI_MANIFEST, b"not json").is_err());
        // A digest that is not a digest.
        assert!(
            parse_manifest(
                OCI_MANIFEST,
                br#"{"config":{"digest":"sha256:short","size":1},"layers":[]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn config_platform() {
        let p = parse_config_platform(
            br#"{"architecture":"arm","os":"linux","variant":"v7","rootfs":{"type":"layers"}}"#,
        )
        .unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        let p = parse_config_platform(br#"{"architecture":"amd64","os":"linux","variant":""}"#)
            .unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        assert!(parse_config_platform(br#"{"os":"linux"}"#).is_err());
        assert!(parse_config_platform(b"[]").is_err());
    }

    #[test]
    fn accept_lists_all_four_kinds() {
        for media_type in [
            OCI_INDEX,
            OCI_MANIFEST,
            DOCKER_MANIFEST_LIST,
            DOCKER_MANIFEST,
        ] {
            assert!(MANIFEST_ACCEPT.contains(media_type));
        }
    }

    #[test]
    fn an_unsupported_media_type_is_quoted_short_and_escaped() {
        // The reason reaches logs, /status and a pull request check's output.
        let hostile = format!(r"\u001b]0;pwned\u0007{}", "x".repeat(1 << 20));
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{hostile}"}}"#);
        let err = parse_manifest("application/json", body.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported manifest media type"), "{err}");
        assert!(err.len() < 300, "{} bytes", err.len());
        assert!(!err.chars().any(char::is_control), "{err:?}");
    }

    #[test]
    fn hostile_manifest_json_is_an_error_not_a_crash() {
        // Nesting past serde_json's recursion limit (128), in a known field and an unknown
        // one, and a number of a million digits: errors, never a stack overflow.
        let deep = |field: &str| {
            format!(
                r#"{{"schemaVersion":2,"{field}":{}1{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
        };
        let huge_number = format!(r#"{{"schemaVersion":1{}}}"#, "0".repeat(1 << 20));
        for body in [
            deep("manifests"),
            deep("annotations"),
            deep("x"),
            huge_number,
        ] {
            assert!(parse_manifest(OCI_INDEX, body.as_bytes()).is_err());
            assert!(parse_config_platform(body.as_bytes()).is_err());
        }
    }
}
