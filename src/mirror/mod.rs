//! Mirroring: copy pinned images into the configured registry with their bytes unchanged.
//!
//! - `engine`: copies images by digest. Manifests are copied verbatim, blobs are streamed,
//!   hashed while streaming and deduplicated across a run (`blob`: one verified, resumable
//!   transfer; `referrers`: signatures, attestations and SBOMs copied along).
//! - `layout`: where each image goes in the mirror (`imagelock.yaml` `mirror:`), pure.
//! - `plan`: what is already present, what to copy, what is missing at the source, pure.
//! - `progress`: bars on a terminal, summary lines when piped.

mod blob;
mod engine;
pub mod layout;
pub mod plan;
pub mod progress;
mod referrers;

use crate::reference::{Digest, ImageRepo, Platform};
use crate::registry::{FetchedManifest, RegistryError};

pub use engine::{CopyOutcome, EngineOptions, MirrorEngine};

/// One image to copy: a manifest (image or index) by digest, with the tags it gets at the
/// destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CopyRequest {
    pub source: ImageRepo,
    pub digest: Digest,
    pub destination: ImageRepo,
    /// Tags to point at the digest in the destination (may be empty: by digest only).
    pub tags: Vec<String>,
    /// For an index: the platforms that must be copied. Empty copies every child. The index
    /// itself is always copied verbatim; a registry that insists on every child of an index
    /// (distribution does) gets them all.
    pub platforms: Vec<Platform>,
}

/// What a copy did, for summaries and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Manifests (images, indexes, referrers) written to the destination.
    pub manifests_pushed: usize,
    /// Manifests already at the destination (a HEAD with the same digest).
    pub manifests_present: usize,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
    /// Blobs the destination already had, or that this run already copied for another image.
    pub blobs_present: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Referrer artifacts (signatures, attestations, SBOMs) copied with the image.
    pub referrers: usize,
}

impl CopyReport {
    pub fn add(&mut self, other: &CopyReport) {
        self.manifests_pushed += other.manifests_pushed;
        self.manifests_present += other.manifests_present;
        self.blobs_uploaded += other.blobs_uploaded;
        self.blobs_mounted += other.blobs_mounted;
        self.blobs_present += other.blobs_present;
        self.bytes_uploaded += other.bytes_uploaded;
        self.referrers += other.referrers;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The source or destination registry answered with an error (its status and message
    /// are inside).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{repo}@{digest}: not found at the source")]
    MissingAtSource { repo: ImageRepo, digest: Digest },
    /// Bytes from the source did not hash to the digest they were fetched by: nothing was
    /// stored under that digest.
    #[error("{repo}: blob {expected} arrived with digest {actual}; the upload was abandoned")]
    Corrupt {
        repo: ImageRepo,
        expected: Digest,
        actual: Digest,
    },
    #[error("{repo}@{digest}: {reason}")]
    InvalidManifest {
        repo: ImageRepo,
        digest: Digest,
        reason: String,
    },
    #[error("{repo}@{digest}: platform(s) {missing} not in the index")]
    MissingPlatforms {
        repo: ImageRepo,
        digest: Digest,
        missing: String,
    },
    /// The engine stopped before the blob could be copied.
    #[error("blob {digest}: the copy engine stopped")]
    Stopped { digest: Digest },
    /// The image's copy took longer than [`EngineOptions::image_timeout`].
    #[error("timed out after {} copying the image", humantime::format_duration(*after))]
    TimedOut { after: std::time::Duration },
}

impl MirrorError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            MirrorError::Registry(e) => e.metric_label(),
            MirrorError::MissingAtSource { .. } => "missing_at_source",
            MirrorError::Corrupt { .. } => "corrupt",
            MirrorError::InvalidManifest { .. } => "invalid_manifest",
            MirrorError::MissingPlatforms { .. } => "missing_platforms",
            MirrorError::Stopped { .. } => "stopped",
            MirrorError::TimedOut { .. } => "timed_out",
        }
    }
}

/// Where `request` stands: present when the destination already has the digest under every
/// requested tag (or by digest when there are none); otherwise to copy, or missing when the
/// source lacks it. One HEAD per tag when present: the warm path stays cheap. An image to copy
/// comes with its source manifest, fetched (and verified) by the check itself, so the copy
/// need not ask again (see [`MirrorEngine::prefetched`]).
pub async fn standing(
    client: &crate::registry::RegistryClient,
    request: &CopyRequest,
) -> Result<(plan::Standing, Option<FetchedManifest>), MirrorError> {
    let references: Vec<&str> = if request.tags.is_empty() {
        vec![request.digest.as_str()]
    } else {
        request.tags.iter().map(String::as_str).collect()
    };
    let mut present = true;
    for reference in references {
        let head = client
            .head_manifest(&request.destination, reference)
            .await?;
        if head.is_none_or(|h| h.digest != request.digest) {
            present = false;
            break;
        }
    }
    if present {
        return Ok((plan::Standing::Present, None));
    }
    match client
        .get_manifest(&request.source, request.digest.as_str())
        .await?
    {
        Some(manifest) => Ok((plan::Standing::ToCopy, Some(manifest))),
        None => Ok((plan::Standing::MissingAtSource, None)),
    }
}
