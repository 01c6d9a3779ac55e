//! Artifacts that refer to an image: cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`),
//! the OCI referrers tag schema (`sha256-<hex>`, an index of referrers) and the OCI referrers
//! API. Cosign tags are copied as they are; what a referrers tag or the API lists is copied
//! manifest by manifest. A repository that several images of a run come from has its tags listed once, and
//! the referrer tags are looked for in that list; otherwise each is a HEAD. A registry that
//! answers 404 to the referrers API is not asked again in the run. What exists is copied with
//! its blobs and counted in [`CopyReport::referrers`]. Referrers found through the API are
//! also listed in the destination's referrers tag when the destination has no API of its
//! own, so clients there can still find them.
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
use crate::registry::types::{Descriptor, OCI_INDEX};
use crate::registry::{ParsedManifest, RegistryClient};

/// A repository's tags, listed once per run; `None` when listing failed.
type TagList = Arc<OnceCell<Option<Arc<HashSet<String>>>>>;

/// What a run learned about referrers, so it asks each thing once.
#[derive(Default)]
pub struct Lookups {
    /// Source repositories worth listing: more than one image of the run comes from them.
    listed: Mutex<HashMap<ImageRepo, TagList>>,
    /// Per registry, source or destination: whether it has the referrers API, once known.
    api: Mutex<HashMap<String, Arc<OnceCell<bool>>>>,
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
            match client.list_tags(repo, &is_referrers_tag).await {
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

    fn api_cell(&self, registry: &str) -> Arc<OnceCell<bool>> {
        self.api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(registry.to_owned())
            .or_default()
            .clone()
    }

    /// The registry answered 404 to the referrers API: it is not asked again in the run.
    fn lacks_api(&self, registry: &str) -> bool {
        self.api_cell(registry).get() == Some(&false)
    }

    /// What a referrers request told about the registry (`false` on a 404).
    fn learned_api(&self, registry: &str, has_api: bool) {
        // Set already means the same answer was learned by another image.
        let _ = self.api_cell(registry).set(has_api);
    }

    /// Whether `repo`'s registry has the referrers API, asked at most once per run (about
    /// `digest`, any manifest will do) unless already known. An answer other than 200 or 404
    /// counts as having it: then nothing is written to the fallback tag.
    async fn has_api(&self, client: &RegistryClient, repo: &ImageRepo, digest: &Digest) -> bool {
        *self
            .api_cell(&repo.registry)
            .get_or_init(|| async {
                match client.referrers(repo, digest).await {
                    Ok(listed) => listed.is_some(),
                    Err(e) => {
                        tracing::warn!(%repo, "cannot tell whether the registry has the referrers API: {e}");
                        true
                    }
                }
            })
            .await
    }
}

/// The referrers tag of `digest` (OCI distribution spec, "Referrers Tag Schema").
fn referrers_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.hex())
}

/// Whether `tag` can be a referrers tag (`<algorithm>-<hex>`, maybe with a cosign suffix):
/// the only tags a listing for referrers keeps.
fn is_referrers_tag(tag: &str) -> bool {
    tag.starts_with("sha256-") || tag.starts_with("sha512-")
}

/// A referrer's descriptor as a referrers list names it.
fn referrer_entry(descriptor: &Descriptor) -> serde_json::Value {
    let mut entry = serde_json::json!({
        "mediaType": descriptor.media_type,
        "digest": descriptor.digest.as_str(),
        "size": descriptor.size,
    });
    if let Some(artifact_type) = &descriptor.artifact_type {
        entry["artifactType"] = artifact_type.as_str().into();
    }
    if !descriptor.annotations.is_empty() {
        entry["annotations"] = serde_json::json!(descriptor.annotations);
    }
    entry
}

/// Suffixes of the cosign tags.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

impl MirrorEngine {
    /// Copies the referrers of `digest` from `source` to `destination`: the cosign tags as
    /// they are; the manifests the source's referrers tag or referrers API lists one by one,
    /// then listed in the destination's own referrers tag when it has no API.
    pub(super) async fn copy_referrers(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        digest: &Digest,
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let listed = self.referrer_lookups.tags(&self.client, source).await;
        let is_listed = |tag: &str| listed.as_ref().is_none_or(|tags| tags.contains(tag));
        for suffix in COSIGN_SUFFIXES {
            let tag = format!("{}{suffix}", referrers_tag(digest));
            if !is_listed(&tag) {
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
            report.referrers += 1;
        }
        // The referrers tag is not copied as it is: the destination's may list more (its
        // own referrers, or what the source's API named), and would be overwritten.
        let mut referrers = Vec::new();
        let tag = referrers_tag(digest);
        if is_listed(&tag) {
            // A HEAD first: registries that count pulls (Docker Hub) count GETs, and most
            // images have no referrers tag.
            let index = match self.client.head_manifest(source, &tag).await {
                Ok(Some(found)) => self.fetch(source, &found.digest).await.map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e.into()),
            };
            match index.map(|index| index.map(|index| index.parse())) {
                Ok(Some(Ok(ParsedManifest::Index(index)))) => referrers.extend(index.manifests),
                Ok(Some(_)) => {
                    tracing::warn!(%source, %tag, "the referrers tag is not an index; skipped");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%source, %tag, "cannot read the referrers tag: {e}"),
            }
        }
        let lookups = &self.referrer_lookups;
        if !lookups.lacks_api(&source.registry) {
            match self.client.referrers(source, digest).await {
                Ok(Some(index)) => {
                    lookups.learned_api(&source.registry, true);
                    referrers.extend(index.manifests);
                }
                Ok(None) => lookups.learned_api(&source.registry, false),
                Err(e) => tracing::warn!(%source, %digest, "cannot list referrers: {e}"),
            }
        }
        let mut seen = HashSet::new();
        referrers.retain(|descriptor| seen.insert(descriptor.digest.clone()));
        for descriptor in &referrers {
            self.copy_by_digest(source, destination, &descriptor.digest, report)
                .await?;
            report.referrers += 1;
        }
        if !referrers.is_empty()
            && !self
                .referrer_lookups
                .has_api(&self.client, destination, digest)
                .await
        {
            self.list_in_referrers_tag(destination, digest, &referrers, report)
                .await?;
        }
        Ok(())
    }

    /// Adds `referrers` to the destination's referrers tag of `digest`, the index through
    /// which clients find referrers on a registry without the API (a registry with it lists
    /// them by their `subject` itself). Entries already there are kept.
    async fn list_in_referrers_tag(
        &self,
        destination: &ImageRepo,
        digest: &Digest,
        referrers: &[Descriptor],
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let tag = referrers_tag(digest);
        let invalid = |reason: String| MirrorError::InvalidManifest {
            repo: destination.clone(),
            digest: digest.clone(),
            reason,
        };
        let mut index = match self.client.get_manifest(destination, &tag).await? {
            Some(existing) => serde_json::from_slice::<serde_json::Value>(&existing.bytes)
                .map_err(|e| invalid(format!("referrers tag {tag} is not JSON: {e}")))?,
            None => serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [],
            }),
        };
        let Some(entries) = index
            .get_mut("manifests")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return Err(invalid(format!(
                "referrers tag {tag} has no manifests list"
            )));
        };
        let listed: HashSet<String> = entries
            .iter()
            .filter_map(|entry| entry.get("digest")?.as_str().map(str::to_owned))
            .collect();
        let before = entries.len();
        entries.extend(
            referrers
                .iter()
                .filter(|r| !listed.contains(r.digest.as_str()))
                .map(referrer_entry),
        );
        if entries.len() == before {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&index)
            .map_err(|e| invalid(format!("cannot write referrers tag {tag}: {e}")))?;
        self.client
            .put_manifest(destination, &tag, OCI_INDEX, &bytes)
            .await?;
        report.manifests_pushed += 1;
        Ok(())
    }
}
