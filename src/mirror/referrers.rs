//! Artifacts that refer to an image: cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`),
//! the OCI referrers tag schema (`sha256-<hex>`, an index of referrers) and the OCI referrers
//! API. Each is looked up with one request (a HEAD per tag: tags are never listed); what
//! exists is copied with its blobs and counted in [`CopyReport::referrers`].
//!
//! A failed lookup is logged and skipped (a registry without the API, a tag it cannot
//! answer for); a referrer that exists but cannot be copied fails the image's copy, since a
//! policy that requires signatures would reject the mirrored image.

use std::collections::HashSet;

use super::engine::MirrorEngine;
use super::{CopyReport, MirrorError};
use crate::reference::{Digest, ImageRepo};

/// Suffixes of the cosign tags, and "" for the referrers tag schema's index.
const TAG_SUFFIXES: [&str; 4] = [".sig", ".att", ".sbom", ""];

impl MirrorEngine {
    /// Copies the referrers of `digest` from `source` to `destination`.
    pub(super) async fn copy_referrers(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        digest: &Digest,
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let mut copied: HashSet<Digest> = HashSet::new();
        for suffix in TAG_SUFFIXES {
            let tag = format!("{}-{}{suffix}", digest.algorithm(), digest.hex());
            let found = match self.client.head_manifest(source, &tag).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(%source, %tag, "cannot look up a referrer tag: {e}");
                    continue;
                }
            };
            let Some(found) = found else { continue };
            let already = self
                .client
                .head_manifest(destination, &tag)
                .await?
                .is_some_and(|d| d.digest == found.digest);
            if !already {
                self.copy_by_digest(source, destination, &found.digest, report)
                    .await?;
                self.ensure_tags(
                    destination,
                    &found.digest,
                    std::slice::from_ref(&tag),
                    None,
                    report,
                )
                .await?;
            }
            copied.insert(found.digest);
            report.referrers += 1;
        }
        let listed = match self.client.referrers(source, digest).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(%source, %digest, "cannot list referrers: {e}");
                None
            }
        };
        for descriptor in listed.map(|index| index.manifests).unwrap_or_default() {
            if !copied.insert(descriptor.digest.clone()) {
                continue;
            }
            self.copy_by_digest(source, destination, &descriptor.digest, report)
                .await?;
            report.referrers += 1;
        }
        Ok(())
    }
}
