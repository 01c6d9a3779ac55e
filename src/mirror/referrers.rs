//! Artifacts that refer to an image: cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`),
//! the OCI referrers tag schema (`sha256-<hex>`, an index of referrers) and the OCI referrers
//! API. A repository that several images of a run come from has its tags listed once, and
//! the referrer tags are looked for in that list; otherwise each is a HEAD. A registry that
//! answers 404 to the referrers API is not asked again in the run. What exists is copied with
//! its blobs and counted in [`CopyReport::referrers`].
//!
//! A failed lookup is logged and skipped (a registry without the API, a tag it cannot
//! answer for); a referrer that exists but cannot be copied fails the image's copy, since a
//! policy that requires signatures would reject the mirrored image.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::engine::MirrorEngine;
use super::{CopyReport, CopyRequest, MirrorError};
use crate::reference::{Digest, ImageRepo};
use crate::registry::RegistryClient;

/// A repository's tags, listed once per run; `None` when listing failed.
type TagList = Arc<OnceCell<Option<Arc<HashSet<String>>>>>;

/// What a run learned about referrers, so it asks each thing once.
#[derive(Default)]
pub struct Lookups {
    /// Source repositories worth listing: more than one image of the run comes from them.
    listed: Mutex<HashMap<ImageRepo, TagList>>,
    /// Source registries that answered 404 to the referrers API.
    no_api: Mutex<HashSet<String>>,
}

impl Lookups {
    /// Marks the source repositories that several of `requests` come from.
    pub fn plan(&self, requests: &[CopyRequest]) {
        let mut counts: HashMap<&ImageRepo, usize> = HashMap::new();
        for request in requests {
            *counts.entry(&request.source).or_default() += 1;
        }
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        for (repo, count) in counts {
            if count > 1 {
                listed.entry(repo.clone()).or_default();
            }
        }
    }

    /// The tags of `repo` if it is worth listing (listed at most once per run).
    async fn tags(
        &self,
        client: &RegistryClient,
        repo: &ImageRepo,
    ) -> Option<Arc<HashSet<String>>> {
        let cell = self
            .listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(repo)
            .cloned()?;
        cell.get_or_init(|| async {
            match client.list_tags(repo).await {
                Ok(tags) => Some(Arc::new(tags.into_iter().collect())),
                Err(e) => {
                    tracing::warn!(%repo, "cannot list tags to find referrers; asking per tag: {e}");
                    None
                }
            }
        })
        .await
        .clone()
    }

    fn api_unsupported(&self, registry: &str) -> bool {
        self.no_api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(registry)
    }

    fn mark_api_unsupported(&self, registry: &str) {
        self.no_api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(registry.to_owned());
    }
}

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
        let listed = self.referrer_lookups.tags(&self.client, source).await;
        for suffix in TAG_SUFFIXES {
            let tag = format!("{}-{}{suffix}", digest.algorithm(), digest.hex());
            if listed.as_ref().is_some_and(|tags| !tags.contains(&tag)) {
                continue;
            }
            let found = match self.client.head_manifest(source, &tag).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(%source, %tag, "cannot look up a referrer tag: {e}");
                    continue;
                }
            };
            let Some(found) = found else { continue };
            if !self.points_at(destination, &tag, &found.digest).await? {
                // One PUT under the tag stores the artifact and points the tag at it.
                let manifest = self.fetch(source, &found.digest).await?;
                Box::pin(self.push_manifest(
                    source,
                    destination,
                    &manifest,
                    &[],
                    Some(&tag),
                    report,
                ))
                .await?;
            }
            copied.insert(found.digest);
            report.referrers += 1;
        }
        let referring = if self.referrer_lookups.api_unsupported(&source.registry) {
            None
        } else {
            match self.client.referrers(source, digest).await {
                Ok(None) => {
                    self.referrer_lookups.mark_api_unsupported(&source.registry);
                    None
                }
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(%source, %digest, "cannot list referrers: {e}");
                    None
                }
            }
        };
        for descriptor in referring.map(|index| index.manifests).unwrap_or_default() {
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
