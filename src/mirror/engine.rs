//! The copy engine: images by digest from a source repository into a destination, bytes
//! unchanged.
//!
//! Per image: HEAD the destination manifest (same digest: done, only the tags and the
//! referrers are checked);
//! otherwise fetch the source manifest by digest (verified), copy an index's children first
//! and the index last, an image's blobs (largest first) before its manifest, every manifest
//! PUT verbatim so its digest is preserved; then the tags and the referrers (cosign tags and
//! the OCI referrers API).
//!
//! Per run (one engine): each distinct blob is copied once per destination registry, however
//! many images share it: the first image to need it does the work and the others wait. Once
//! it landed they are done (or mount it, from another repository of the same registry); if it
//! failed, the next one waiting tries for itself, since the failure may be that image's own.
//! Blob transfers in flight are bounded by `blobs_in_flight`; per-host connection
//! limits come from the client.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::join_all;
use tokio::sync::{OnceCell, Semaphore};

use super::blob::{self, Blob};
use super::progress::Progress;
use super::{CopyReport, CopyRequest, MirrorError};
use crate::reference::{Digest, ImageRepo, Platform};
use crate::registry::{
    Descriptor, FetchedManifest, ImageIndex, ParsedManifest, RegistryClient, UploadStart,
};

/// The registry code for a manifest that names a blob or child manifest the registry lacks.
const MANIFEST_BLOB_UNKNOWN: &str = "MANIFEST_BLOB_UNKNOWN";
/// Blobs up to this size are uploaded without asking the destination first.
const SMALL_BLOB: u64 = 256 * 1024;
/// BuildKit names the image an attestation manifest is about in this annotation.
const DOCKER_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Limits for one engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Blob transfers in flight at once across the run (per-host limits still apply).
    pub blobs_in_flight: usize,
    /// Images copied at once.
    pub images_in_flight: usize,
    /// How long one image's copy may take (from when it starts) before it fails with
    /// [`MirrorError::TimedOut`]; `None`: no bound beyond the client's timeouts.
    pub image_timeout: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            blobs_in_flight: 16,
            images_in_flight: 8,
            image_timeout: None,
        }
    }
}

/// An image of a run and how its copy went.
pub type CopyOutcome = (CopyRequest, Result<CopyReport, MirrorError>);

/// The blobs of a run: per (destination registry, digest), the repository where its one copy
/// landed; per (destination repository, digest), its one mount from there.
type BlobCells = HashMap<(String, Digest), Arc<OnceCell<ImageRepo>>>;

/// Copies images between registries; one per run so blobs are deduplicated across images.
pub struct MirrorEngine {
    pub(super) client: RegistryClient,
    options: EngineOptions,
    pub(super) progress: Arc<dyn Progress>,
    /// Bounds blob transfers across the run; FIFO, so an image's blobs start in the order
    /// asked (largest first).
    transfers: Semaphore,
    /// Per (destination registry, digest): the one copy of that blob in this run.
    blobs: Mutex<BlobCells>,
    /// Per destination registry: whether it refused a monolithic PUT (then: chunked PATCH).
    chunked: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Lookups of referrers, shared across the run.
    pub(super) referrer_lookups: super::referrers::Lookups,
    /// Manifests a presence check already fetched, taken by the first copy that needs them.
    prefetched: Mutex<HashMap<(ImageRepo, Digest), FetchedManifest>>,
}

impl std::fmt::Debug for MirrorEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorEngine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Who landed a blob: this caller (with its report), or another image of the run (where).
enum Landing {
    Mine(CopyReport),
    Theirs(ImageRepo),
}

/// Runs `land` unless another caller already landed the blob for `cell`; callers that need it
/// meanwhile wait. Only a landing is shared. A failure is the failing image's own (its source,
/// its destination repository or its credentials may be what failed), so the next caller
/// waiting tries for itself.
async fn once<F, Fut>(
    cell: &OnceCell<ImageRepo>,
    destination: &ImageRepo,
    land: F,
) -> Result<Landing, MirrorError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<CopyReport, MirrorError>>,
{
    let mut mine = None;
    let landed = cell
        .get_or_try_init(|| async {
            mine = Some(land().await?);
            Ok::<_, MirrorError>(destination.clone())
        })
        .await?
        .clone();
    Ok(match mine {
        Some(report) => Landing::Mine(report),
        None => Landing::Theirs(landed),
    })
}

/// True when the index child `platform` satisfies a required `want`: a requirement without a
/// variant accepts any variant (`linux/arm64` matches `linux/arm64/v8`).
fn platform_matches(have: &Platform, want: &Platform) -> bool {
    have.os == want.os
        && have.architecture == want.architecture
        && (want.variant.is_none() || have.variant == want.variant)
}

/// Splits an index's children into those `platforms` require (with their attestations) and
/// the rest; every child is required when `platforms` is empty. A required platform that no
/// child has is returned in the error string.
fn split_children<'a>(
    index: &'a ImageIndex,
    platforms: &[Platform],
) -> Result<(Vec<&'a Descriptor>, Vec<&'a Descriptor>), String> {
    if platforms.is_empty() {
        return Ok((index.manifests.iter().collect(), Vec::new()));
    }
    let missing: Vec<String> = platforms
        .iter()
        .filter(|want| {
            !index
                .platform_manifests()
                .any(|(have, _)| platform_matches(have, want))
        })
        .map(Platform::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(missing.join(", "));
    }
    let wanted: HashSet<&Digest> = index
        .platform_manifests()
        .filter(|(have, _)| platforms.iter().any(|want| platform_matches(have, want)))
        .map(|(_, d)| &d.digest)
        .collect();
    let (required, rest) = index.manifests.iter().partition(|d| {
        wanted.contains(&d.digest)
            || d.annotations
                .get(DOCKER_REFERENCE_DIGEST)
                .and_then(|r| r.parse::<Digest>().ok())
                .is_some_and(|r| wanted.contains(&r))
    });
    Ok((required, rest))
}

/// Adds the reports of `results` to `report`; returns the first error.
fn sum_reports(
    results: Vec<Result<CopyReport, MirrorError>>,
    report: &mut CopyReport,
) -> Option<MirrorError> {
    let mut first_error = None;
    for result in results {
        match result {
            Ok(part) => report.add(&part),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error
}

impl MirrorEngine {
    pub fn new(
        client: RegistryClient,
        options: EngineOptions,
        progress: Arc<dyn Progress>,
    ) -> Self {
        MirrorEngine {
            client,
            options,
            progress,
            transfers: Semaphore::new(options.blobs_in_flight.max(1)),
            blobs: Mutex::new(HashMap::new()),
            chunked: Mutex::new(HashMap::new()),
            referrer_lookups: super::referrers::Lookups::default(),
            prefetched: Mutex::new(HashMap::new()),
        }
    }

    /// Hands the engine a manifest already fetched from `repo` (by [`super::standing`]): the
    /// copy of that digest uses it instead of asking the source again.
    pub fn prefetched(&self, repo: ImageRepo, manifest: FetchedManifest) {
        let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        prefetched.insert((repo, manifest.digest.clone()), manifest);
    }

    /// Whether the destination already has the manifest (a HEAD answers with its digest).
    pub async fn is_present(&self, request: &CopyRequest) -> Result<bool, MirrorError> {
        self.has_manifest(&request.destination, &request.digest)
            .await
    }

    /// Whether the source still has the manifest.
    pub async fn exists_at_source(&self, request: &CopyRequest) -> Result<bool, MirrorError> {
        self.has_manifest(&request.source, &request.digest).await
    }

    /// Whether `repo` has the manifest `digest`: one HEAD.
    pub(super) async fn has_manifest(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
    ) -> Result<bool, MirrorError> {
        self.points_at(repo, digest.as_str(), digest).await
    }

    /// Whether `reference` in `repo` answers with `digest`: one HEAD.
    pub(super) async fn points_at(
        &self,
        repo: &ImageRepo,
        reference: &str,
        digest: &Digest,
    ) -> Result<bool, MirrorError> {
        Ok(self
            .client
            .head_manifest(repo, reference)
            .await?
            .is_some_and(|d| d.digest == *digest))
    }

    /// Copies every request, `images_in_flight` at a time, sharing blobs across them. Results
    /// come back in the order of `requests`.
    pub async fn copy_all(&self, requests: Vec<CopyRequest>) -> Vec<CopyOutcome> {
        self.copy_many(requests, false).await
    }

    /// [`Self::copy_all`] for requests just found missing at the destination (the `mirror`
    /// command's plan): skips asking the destination for each manifest again.
    pub async fn copy_all_missing(&self, requests: Vec<CopyRequest>) -> Vec<CopyOutcome> {
        self.copy_many(requests, true).await
    }

    async fn copy_many(&self, requests: Vec<CopyRequest>, known_missing: bool) -> Vec<CopyOutcome> {
        self.referrer_lookups.plan(&requests);
        self.each_image(requests, |request| async move {
            let result = self.copy_one(&request, known_missing).await;
            (request, result)
        })
        .await
    }

    /// Copies the referrers of images the destination already holds (the `mirror` command's
    /// present set), so that a signature or attestation added at the source since an image
    /// was copied arrives with the next run.
    pub async fn copy_referrers_of(&self, requests: Vec<CopyRequest>) -> Vec<CopyOutcome> {
        self.referrer_lookups.plan(&requests);
        self.each_image(requests, |request| async move {
            let mut report = CopyReport::default();
            let result = self
                .copy_referrers(
                    &request.source,
                    &request.destination,
                    &request.digest,
                    &mut report,
                )
                .await
                .map(|()| report);
            (request, result)
        })
        .await
    }

    /// Runs `work` for each request, `images_in_flight` at a time, and pairs each request with
    /// its result, in request order. A slow image does not hold back the start of the next
    /// ones (as `buffered` would, counting finished results queued behind it).
    async fn each_image<'a, F, Fut>(&self, requests: Vec<CopyRequest>, work: F) -> Vec<CopyOutcome>
    where
        F: Fn(CopyRequest) -> Fut,
        Fut: std::future::Future<Output = CopyOutcome> + 'a,
    {
        let mut results: Vec<(usize, CopyOutcome)> =
            futures_util::stream::iter(requests.into_iter().enumerate())
                .map(|(i, request)| {
                    let done = work(request);
                    async move { (i, done.await) }
                })
                .buffer_unordered(self.options.images_in_flight.max(1))
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Copies one image (manifest, children, blobs, tags, referrers) unless the destination
    /// already has it, in which case only its tags and referrers are checked: a signature
    /// added at the source after the image was copied arrives with the next run.
    pub async fn copy(&self, request: &CopyRequest) -> Result<CopyReport, MirrorError> {
        self.copy_one(request, false).await
    }

    async fn copy_one(
        &self,
        request: &CopyRequest,
        known_missing: bool,
    ) -> Result<CopyReport, MirrorError> {
        let name = format!("{}@{}", request.destination, request.digest);
        self.progress.image_started(&name);
        let copy = self.copy_image(request, known_missing);
        // Dropping a copy half-way is safe: the registry keeps only complete, verified
        // content, and a blob another image waits for is then copied by that image.
        let result = match self.options.image_timeout {
            Some(limit) => tokio::time::timeout(limit, copy)
                .await
                .unwrap_or(Err(MirrorError::TimedOut { after: limit })),
            None => copy.await,
        };
        self.progress.image_finished(&name, result.is_ok());
        match &result {
            Ok(report) => crate::telemetry::METRICS.mirrored(report),
            Err(e) => tracing::debug!(image = %name, "copy failed: {e}"),
        }
        result
    }

    async fn copy_image(
        &self,
        request: &CopyRequest,
        known_missing: bool,
    ) -> Result<CopyReport, MirrorError> {
        let mut report = CopyReport::default();
        let (source, destination) = (&request.source, &request.destination);
        let present = !known_missing && self.has_manifest(destination, &request.digest).await?;
        if present {
            report.manifests_present += 1;
            self.ensure_tags(destination, &request.digest, &request.tags, &mut report)
                .await?;
            self.copy_referrers(source, destination, &request.digest, &mut report)
                .await?;
            return Ok(report);
        }
        let manifest = self.fetch(source, &request.digest).await?;
        // Pushed under its first tag: one PUT stores the manifest and points the tag at it.
        let (first_tag, other_tags) = match request.tags.split_first() {
            Some((first, rest)) => (Some(first.as_str()), rest),
            None => (None, &[][..]),
        };
        self.push_manifest(
            source,
            destination,
            &manifest,
            &request.platforms,
            first_tag,
            &mut report,
        )
        .await?;
        for tag in other_tags {
            self.client
                .put_manifest(destination, tag, &manifest.media_type, &manifest.bytes)
                .await?;
            report.manifests_pushed += 1;
        }
        self.copy_referrers(source, destination, &request.digest, &mut report)
            .await?;
        Ok(report)
    }

    /// Points each of `tags` at `digest` in `repo` where it does not already (HEAD per tag,
    /// then a PUT of the manifest bytes, fetched from `repo` itself once, when first needed).
    async fn ensure_tags(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
        tags: &[String],
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let mut manifest: Option<FetchedManifest> = None;
        for tag in tags {
            if self.points_at(repo, tag, digest).await? {
                continue;
            }
            let manifest = match manifest.as_ref() {
                Some(manifest) => manifest,
                None => manifest.insert(self.fetch(repo, digest).await?),
            };
            self.client
                .put_manifest(repo, tag, &manifest.media_type, &manifest.bytes)
                .await?;
            report.manifests_pushed += 1;
        }
        Ok(())
    }

    /// A manifest by digest from `repo`, verified; missing is [`MirrorError::MissingAtSource`].
    pub(super) async fn fetch(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
    ) -> Result<FetchedManifest, MirrorError> {
        let key = (repo.clone(), digest.clone());
        let prefetched = {
            let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
            prefetched.remove(&key)
        };
        if let Some(manifest) = prefetched {
            return Ok(manifest);
        }
        self.client
            .get_manifest(repo, digest.as_str())
            .await?
            .ok_or_else(|| MirrorError::MissingAtSource {
                repo: repo.clone(),
                digest: digest.clone(),
            })
    }

    /// Makes `manifest` (fetched from `source`) present in `destination` under `tag` (by
    /// digest when `None`): an image's blobs then the image; an index's children then the
    /// index.
    pub(super) async fn push_manifest(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        manifest: &FetchedManifest,
        platforms: &[Platform],
        tag: Option<&str>,
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let invalid = |reason: String| MirrorError::InvalidManifest {
            repo: source.clone(),
            digest: manifest.digest.clone(),
            reason,
        };
        let parsed = manifest.parse().map_err(|e| invalid(e.to_string()))?;
        match parsed {
            ParsedManifest::Image(image) => {
                let mut blobs: Vec<&Descriptor> = Vec::new();
                for descriptor in std::iter::once(&image.config).chain(&image.layers) {
                    if !blobs.iter().any(|b| b.digest == descriptor.digest) {
                        blobs.push(descriptor);
                    }
                }
                // Largest first: the long transfers start early and the run ends sooner.
                blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
                let results =
                    join_all(blobs.iter().map(|d| self.copy_blob(source, destination, d))).await;
                if let Some(e) = sum_reports(results, report) {
                    return Err(e);
                }
                self.put(destination, manifest, tag).await?;
                report.manifests_pushed += 1;
            }
            ParsedManifest::Index(index) => {
                let (required, rest) = split_children(&index, platforms).map_err(|missing| {
                    MirrorError::MissingPlatforms {
                        repo: source.clone(),
                        digest: manifest.digest.clone(),
                        missing,
                    }
                })?;
                self.copy_children(source, destination, &required, report)
                    .await?;
                match self.put(destination, manifest, tag).await {
                    Ok(()) => {}
                    // Registries that insist on every child (distribution does) get them all;
                    // the index itself, and so its digest, stays as it is.
                    Err(e) if !rest.is_empty() && e.code() == Some(MANIFEST_BLOB_UNKNOWN) => {
                        tracing::debug!(
                            %destination, digest = %manifest.digest,
                            "the registry wants every child of the index; copying the other {}",
                            rest.len()
                        );
                        self.copy_children(source, destination, &rest, report)
                            .await?;
                        self.put(destination, manifest, tag).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
                report.manifests_pushed += 1;
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        destination: &ImageRepo,
        manifest: &FetchedManifest,
        tag: Option<&str>,
    ) -> Result<(), crate::registry::RegistryError> {
        let reference = tag.unwrap_or(manifest.digest.as_str());
        self.client
            .put_manifest(
                destination,
                reference,
                &manifest.media_type,
                &manifest.bytes,
            )
            .await
            .map(|_| ())
    }

    /// Copies the child manifests of an index (each complete), concurrently.
    async fn copy_children(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        children: &[&Descriptor],
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        // Only called for an index the destination lacks, whose children it then mostly lacks
        // too: no HEAD first. A child that is there costs a fetch and an idempotent PUT; its
        // large blobs are still asked about.
        let results = join_all(children.iter().map(|child| async move {
            let mut part = CopyReport::default();
            let manifest = self.fetch(source, &child.digest).await?;
            Box::pin(self.push_manifest(source, destination, &manifest, &[], None, &mut part))
                .await?;
            Ok(part)
        }))
        .await;
        sum_reports(results, report).map_or(Ok(()), Err)
    }

    /// Makes the manifest `digest` present in `destination` unless it already is.
    pub(super) async fn copy_by_digest(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        digest: &Digest,
        report: &mut CopyReport,
    ) -> Result<(), MirrorError> {
        let present = self.has_manifest(destination, digest).await?;
        if present {
            report.manifests_present += 1;
            return Ok(());
        }
        let manifest = self.fetch(source, digest).await?;
        Box::pin(self.push_manifest(source, destination, &manifest, &[], None, report)).await
    }

    /// One blob of an image, copied at most once per destination registry in this run: the
    /// first image to need it lands it in its repository; an image bound for another
    /// repository of that registry then mounts it from there (once per repository too).
    async fn copy_blob(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        descriptor: &Descriptor,
    ) -> Result<CopyReport, MirrorError> {
        let digest = &descriptor.digest;
        let first = self.cell(destination.registry.clone(), digest);
        let landed = match once(&first, destination, || {
            self.land_blob(source, destination, descriptor, None)
        })
        .await?
        {
            Landing::Mine(report) => return Ok(report),
            Landing::Theirs(landed) => landed,
        };
        if landed == *destination {
            return Ok(CopyReport {
                blobs_present: 1,
                ..CopyReport::default()
            });
        }
        // Another image of this run put it in another repository of this registry.
        let here = self.cell(format!("{destination}"), digest);
        match once(&here, destination, || {
            self.land_blob(source, destination, descriptor, Some(&landed))
        })
        .await?
        {
            Landing::Mine(report) => Ok(report),
            Landing::Theirs(_) => Ok(CopyReport {
                blobs_present: 1,
                ..CopyReport::default()
            }),
        }
    }

    /// The run's cell for `digest` under `scope` (a registry, or a repository).
    fn cell(&self, scope: String, digest: &Digest) -> Arc<OnceCell<ImageRepo>> {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        blobs.entry((scope, digest.clone())).or_default().clone()
    }

    /// Makes one blob present in `destination`: present already, mounted (from `mount_from`,
    /// or from the source when it is on the same registry), or streamed from the source.
    async fn land_blob(
        &self,
        source: &ImageRepo,
        destination: &ImageRepo,
        descriptor: &Descriptor,
        mount_from: Option<&ImageRepo>,
    ) -> Result<CopyReport, MirrorError> {
        let digest = &descriptor.digest;
        // The transfer's place in line is taken first, before any round trip: blobs queue in
        // the order they are started, largest first.
        let _permit = self
            .transfers
            .acquire()
            .await
            .map_err(|_| MirrorError::Stopped {
                digest: digest.clone(),
            })?;
        // For a small blob the upload costs about what the HEAD costs, and a destination
        // that lacks the image mostly lacks its blobs: skip the HEAD. Large blobs are worth
        // asking about.
        if descriptor.size > SMALL_BLOB
            && self
                .client
                .blob_exists(destination, digest)
                .await?
                .is_some()
        {
            return Ok(CopyReport {
                blobs_present: 1,
                ..CopyReport::default()
            });
        }
        let same_registry = source.registry == destination.registry && source != destination;
        let mount_from = mount_from.or(same_registry.then_some(source));
        let mounted = CopyReport {
            blobs_mounted: 1,
            ..CopyReport::default()
        };
        let session = match mount_from {
            Some(from) => match self
                .client
                .start_upload(destination, Some((digest, from)))
                .await?
            {
                UploadStart::Mounted => return Ok(mounted),
                UploadStart::Session(session) => Some(session),
            },
            None => None,
        };
        let chunked = {
            let mut chunked = self.chunked.lock().unwrap_or_else(|e| e.into_inner());
            chunked
                .entry(destination.registry.clone())
                .or_default()
                .clone()
        };
        self.progress.blob_started(digest, descriptor.size);
        let blob = Blob {
            source,
            destination,
            digest,
            size: descriptor.size,
        };
        let result = blob::transfer(&self.client, &self.progress, &blob, session, &chunked).await;
        self.progress.blob_finished(digest);
        let done = result?;
        if done.mounted {
            return Ok(mounted);
        }
        Ok(CopyReport {
            blobs_uploaded: 1,
            bytes_uploaded: descriptor.size,
            ..CopyReport::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_index(children: &[(&str, char)]) -> ImageIndex {
        let manifests = children
            .iter()
            .map(|(platform, c)| {
                let digest = format!("sha256:{}", c.to_string().repeat(64));
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1,"platform":{}}}"#,
                    match platform.split('/').collect::<Vec<_>>()[..] {
                        [os, arch] => format!(r#"{{"os":"{os}","architecture":"{arch}"}}"#),
                        [os, arch, v] =>
                            format!(r#"{{"os":"{os}","architecture":"{arch}","variant":"{v}"}}"#),
                        _ => unreachable!(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"manifests":[{manifests}]}}"#
        ))
        .unwrap()
    }

    fn mk_platforms(list: &[&str]) -> Vec<Platform> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn children_split_by_required_platforms() {
        let index = mk_index(&[
            ("linux/amd64", 'a'),
            ("linux/arm64/v8", 'b'),
            ("linux/s390x", 'c'),
        ]);
        let (all, none) = split_children(&index, &[]).unwrap();
        assert_eq!((all.len(), none.len()), (3, 0));
        let (required, rest) =
            split_children(&index, &mk_platforms(&["linux/arm64", "linux/amd64"])).unwrap();
        let first: Vec<char> = required
            .iter()
            .map(|d| d.digest.hex().chars().next().unwrap())
            .collect();
        assert_eq!(first, ['a', 'b']);
        assert_eq!(rest.len(), 1);
        let missing =
            split_children(&index, &mk_platforms(&["linux/arm/v7", "linux/amd64"])).unwrap_err();
        assert_eq!(missing, "linux/arm/v7");
    }
}
