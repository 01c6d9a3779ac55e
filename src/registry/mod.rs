//! Our OCI distribution client, on reqwest.
//!
//! Why not oci-client: it hides `Retry-After` and the `Link` header, and its errors drop the
//! status and the registry's message. This client is small and explicit about each of them:
//!
//! - every request has a timeout (connect and whole response) and per-registry limits
//!   (a semaphore for concurrency, spacing of request starts for the rate limit);
//! - 5xx, 429 and network failures are retried with exponential backoff and jitter,
//!   honouring `Retry-After`, for a bounded number of attempts;
//! - authentication is anonymous, Basic or Bearer tokens (cached per registry and scope, in
//!   each credential scope of its own: [`RegistryClient::with_logins`], [`RegistryAccess`]);
//! - every host, token realm and redirect hop passes the operator's [`RegistryPolicy`]
//!   (allowlist, internal addresses, which login goes where), names at DNS resolution too;
//! - every manifest and blob is verified against its digest;
//! - the write side (`blobs`, `manifests`): blob HEAD, streamed downloads with a start
//!   offset, cross-repository mounts, streamed uploads (monolithic PUT, chunked PATCH as the
//!   fallback), raw manifest PUTs and the referrers API. Streamed bodies are bounded by an
//!   idle timeout per chunk instead of a whole-request timeout, and downloads by a minimum
//!   rate ([`TransferFloor`]);
//! - whatever a registry answers costs bounded memory: every body read whole has a cap, and
//!   together they share one budget (`budget`); tag listings are bounded in tags, bytes and
//!   pages and filtered as they are read ([`tags`]).

mod access;
mod auth;
mod blobs;
mod budget;
pub mod credentials;
mod error;
mod http;
mod manifests;
pub mod policy;
pub mod retry;
pub mod tags;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use reqwest::{Method, StatusCode, Url};

pub use self::access::{NamespaceClients, RegistryAccess};
pub use self::auth::{Challenge, parse_challenges};
pub use self::blobs::{
    BlobStream, TransferSlots, UPLOAD_CHUNK_BYTES, UploadMode, UploadSession, UploadStart,
};
pub use self::credentials::{Credential, CredentialStore, Logins, Secret};
pub use self::error::{RegistryError, Target};
use self::http::{Engine, Host, Request, Response, status_error};
pub use self::policy::{DEFAULT_CONCURRENCY, RegistryLimits, RegistryPolicy};
pub use self::types::{
    Descriptor, ImageIndex, ImageManifest, ParsedManifest, parse_config_platform, parse_manifest,
};
use crate::manifest::RegistrySettings;
use crate::reference::{Digest, ImageRepo, is_valid_tag};

/// Largest manifest accepted: 4 MiB, the limit registries apply on push (distribution spec).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Settings of a [`RegistryClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The operator's trust settings: plain-HTTP hosts (never implied, not even for
    /// localhost), allowed hosts, which login serves which host, token realms, ceilings.
    pub policy: RegistryPolicy,
    /// Per registry host, from the repo: concurrency and rate limit, each only lowering the
    /// operator's ceiling (`policy.limits`).
    pub registries: BTreeMap<String, RegistrySettings>,
    /// The daemon's logins (its Docker config).
    pub credentials: CredentialStore,
    /// Per request, including reading the whole (small) body. Default 30 s.
    pub request_timeout: Duration,
    /// Streamed blob bodies (downloads and uploads) have no whole-request limit (a 1 GiB blob
    /// takes what it takes); instead no pause between two chunks may last longer. Default 30 s.
    /// An upload's body may pause this plus `request_timeout`: its bytes come from a download
    /// that may have to be resumed first.
    pub idle_timeout: Duration,
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Sends per request at most, the first included. Default 5.
    pub max_attempts: u32,
    /// First backoff delay; doubles per attempt, with jitter, capped at 30 s. Default 200 ms.
    pub backoff_base: Duration,
    /// A `Retry-After` longer than this fails the request instead of waiting. Default 60 s.
    pub max_retry_after: Duration,
    /// Bounds of one tag listing (tags, bytes, pages).
    pub tag_limits: tags::TagLimits,
    /// The slowest a blob download may be on average before it is given up as too slow.
    pub transfer_floor: TransferFloor,
}

/// A minimum rate for blob downloads: fewer than `bytes_per_second` on average over any
/// `window` fails the download with [`RegistryError::TooSlow`]. Besides the idle timeout
/// (which a source sending a byte now and then never trips), this keeps a trickling source
/// from holding a transfer slot for hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferFloor {
    /// 0 turns the floor off.
    pub bytes_per_second: u64,
    pub window: Duration,
}

impl Default for TransferFloor {
    /// 16 KiB/s over 30 s.
    fn default() -> Self {
        TransferFloor {
            bytes_per_second: 16 << 10,
            window: Duration::from_secs(30),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            policy: RegistryPolicy::default(),
            registries: BTreeMap::new(),
            credentials: CredentialStore::empty(),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 5,
            backoff_base: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(60),
            tag_limits: tags::TagLimits::default(),
            transfer_floor: TransferFloor::default(),
        }
    }
}

/// What a tag or digest points to, from a HEAD (or, failing that, a GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A manifest as the registry serves it; `digest` is verified against `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// `bytes` count against the client's memory budget as long as the manifest is held.
    held: budget::Held,
}

impl FetchedManifest {
    /// The manifest parsed by kind (index or image).
    pub fn parse(&self) -> Result<ParsedManifest, RegistryError> {
        parse_manifest(&self.media_type, &self.bytes)
    }
}

/// The OCI distribution client. Cheap to clone: clones share connections, limits and tokens.
/// [`RegistryClient::with_logins`] makes another credential scope over the same connections
/// and limits, with tokens of its own.
#[derive(Clone)]
pub struct RegistryClient {
    engine: Arc<Engine>,
    tag_limits: tags::TagLimits,
    transfer_floor: TransferFloor,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

/// A registry host and what a request is about.
struct Endpoint {
    host: Arc<Host>,
    target: Target,
    scope: String,
}

/// A tag or a digest, checked before it goes into a URL path.
enum Reference {
    Tag,
    Digest(Digest),
}

fn parse_reference(target: &Target, reference: &str) -> Result<Reference, RegistryError> {
    if let Ok(digest) = reference.parse::<Digest>() {
        Ok(Reference::Digest(digest))
    } else if is_valid_tag(reference) {
        Ok(Reference::Tag)
    } else {
        Err(RegistryError::InvalidReference {
            target: target.clone(),
        })
    }
}

impl RegistryClient {
    pub fn new(config: ClientConfig) -> Result<Self, RegistryError> {
        let (tag_limits, transfer_floor) = (config.tag_limits, config.transfer_floor);
        Ok(RegistryClient {
            engine: Arc::new(Engine::new(config)?),
            tag_limits,
            transfer_floor,
        })
    }

    /// A client over the same connections, hosts and limits that logs in with `logins` only,
    /// with a token cache of its own (one per namespace, so no token crosses namespaces).
    pub fn with_logins(&self, logins: Logins) -> Self {
        RegistryClient {
            engine: Arc::new(self.engine.with_logins(logins)),
            tag_limits: self.tag_limits,
            transfer_floor: self.transfer_floor,
        }
    }

    /// The operator's registry policy this client applies.
    pub fn policy(&self) -> &RegistryPolicy {
        self.engine.policy()
    }

    /// Where requests about `target` go, and `base/v2/<repository>/<tail>`.
    fn endpoint(
        &self,
        target: &Target,
        repo: &ImageRepo,
        tail: &str,
    ) -> Result<(Endpoint, Url), RegistryError> {
        let host = self.engine.host(&repo.registry, target)?;
        let url = host.url(target, &format!("v2/{}/{tail}", repo.repository))?;
        let endpoint = Endpoint {
            host,
            target: target.clone(),
            scope: auth::pull_scope(&repo.repository),
        };
        Ok((endpoint, url))
    }

    /// A pull-scoped request to the registry, retried and authenticated as needed.
    async fn request(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: Url,
        accept: Option<&'static str>,
        max_body: u64,
    ) -> Result<Response, RegistryError> {
        let request = Request {
            accept,
            max_body,
            ..Request::new(&endpoint.target, method, url, &endpoint.scope)
        };
        self.engine.send(&endpoint.host, &request).await
    }

    /// Digest of a tag or digest reference: HEAD the manifest; if HEAD gives no
    /// `Docker-Content-Digest` (or 405), GET it and hash. `Ok(None)` on 404.
    pub async fn head_manifest(
        &self,
        repo: &ImageRepo,
        reference: &str,
    ) -> Result<Option<ManifestDescriptor>, RegistryError> {
        let target = Target::new(repo, Some(reference));
        let parsed = parse_reference(&target, reference)?;
        let (endpoint, url) = self.endpoint(&target, repo, &format!("manifests/{reference}"))?;
        let response = self
            .request(
                &endpoint,
                Method::HEAD,
                url,
                Some(types::MANIFEST_ACCEPT),
                0,
            )
            .await?;
        match response.status {
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::METHOD_NOT_ALLOWED => return self.descriptor_by_get(repo, reference).await,
            status if status.is_success() => {}
            _ => return Err(status_error(&target, &response)),
        }
        let digest = response
            .header(http::DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.trim().parse::<Digest>().ok());
        let media_type = response
            .header(CONTENT_TYPE)
            .map(|v| types::essence(v).to_owned());
        let size = response
            .header(CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size))
                if !media_type.is_empty()
                    && match &parsed {
                        Reference::Digest(expected) => *expected == digest,
                        Reference::Tag => true,
                    } =>
            {
                Ok(Some(ManifestDescriptor {
                    digest,
                    media_type,
                    size,
                }))
            }
            // Something missing, or a header that disagrees with the digest asked for:
            // fetch the manifest and compute (and verify) it ourselves.
            _ => self.descriptor_by_get(repo, reference).await,
        }
    }

    async fn descriptor_by_get(
        &self,
        repo: &ImageRepo,
        reference: &str,
    ) -> Result<Option<ManifestDescriptor>, RegistryError> {
        Ok(self
            .get_manifest(repo, reference)
            .await?
            .map(|manifest| ManifestDescriptor {
                digest: manifest.digest,
                media_type: manifest.media_type,
                size: manifest.bytes.len() as u64,
            }))
    }

    /// Raw manifest bytes. The digest is computed from the bytes; it must equal the reference
    /// when the reference is a digest, and the `Docker-Content-Digest` header when present:
    /// otherwise [`RegistryError::DigestMismatch`]. `Ok(None)` on 404.
    pub async fn get_manifest(
        &self,
        repo: &ImageRepo,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, RegistryError> {
        let target = Target::new(repo, Some(reference));
        let parsed = parse_reference(&target, reference)?;
        let (endpoint, url) = self.endpoint(&target, repo, &format!("manifests/{reference}"))?;
        let response = self
            .request(
                &endpoint,
                Method::GET,
                url,
                Some(types::MANIFEST_ACCEPT),
                MAX_MANIFEST_BYTES,
            )
            .await?;
        match response.status {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            _ => return Err(status_error(&target, &response)),
        }
        let mismatch = |expected: Digest, actual: Digest| RegistryError::DigestMismatch {
            target: target.clone(),
            expected,
            actual,
        };
        let (bytes, held) = (response.body, response.held);
        let digest = match &parsed {
            Reference::Digest(expected) => {
                if !expected.verifies(&bytes) {
                    return Err(mismatch(
                        expected.clone(),
                        expected.same_algorithm_of(&bytes),
                    ));
                }
                expected.clone()
            }
            Reference::Tag => Digest::sha256_of(&bytes),
        };
        if let Some(header) = response
            .headers
            .get(http::DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
        {
            let claimed =
                header
                    .trim()
                    .parse::<Digest>()
                    .map_err(|_| RegistryError::InvalidResponse {
                        target: target.clone(),
                        reason: format!(
                            "Docker-Content-Digest {} is not a digest",
                            crate::manifest::quote(header)
                        ),
                    })?;
            if !claimed.verifies(&bytes) {
                return Err(mismatch(claimed.clone(), claimed.same_algorithm_of(&bytes)));
            }
        }
        let header_type = response
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(types::essence)
            .unwrap_or_default();
        let media_type =
            if types::is_index_media_type(header_type) || types::is_image_media_type(header_type) {
                header_type.to_owned()
            } else {
                // A generic Content-Type (application/json, some static mirrors): the manifest
                // names its own kind.
                match parse_manifest(header_type, &bytes) {
                    Ok(ParsedManifest::Index(index)) => index
                        .media_type
                        .unwrap_or_else(|| types::OCI_INDEX.to_owned()),
                    Ok(ParsedManifest::Image(image)) => image
                        .media_type
                        .unwrap_or_else(|| types::OCI_MANIFEST.to_owned()),
                    Err(_) => header_type.to_owned(),
                }
            };
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            bytes,
            held,
        }))
    }

    /// A small blob (an image config) fully in memory, at most `max_bytes`, digest-verified.
    pub async fn get_blob(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let target = Target::new(repo, Some(digest.as_str()));
        let (endpoint, url) = self.endpoint(&target, repo, &format!("blobs/{digest}"))?;
        let response = self
            .request(&endpoint, Method::GET, url, None, max_bytes)
            .await?;
        if !response.status.is_success() {
            return Err(status_error(&target, &response));
        }
        if !digest.verifies(&response.body) {
            return Err(RegistryError::DigestMismatch {
                target,
                expected: digest.clone(),
                actual: digest.same_algorithm_of(&response.body),
            });
        }
        Ok(response.body)
    }

    /// The tags of `repo` that `keep` accepts (and that are valid tags), in the registry's
    /// order without duplicates, following pagination: `?n=1000`, then `Link: <…>;
    /// rel="next"` (relative or absolute), or without a Link after a full page `last=<last
    /// tag>`; stops on a short or empty page, or on a page with nothing new (docker-registry
    /// 2.8 ignores `n` and `last`). `keep` runs on each tag as its page is read, so only the
    /// kept tags are held. A listing past [`ClientConfig::tag_limits`] is
    /// [`RegistryError::TagListTooLong`].
    pub async fn list_tags(
        &self,
        repo: &ImageRepo,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<String>, RegistryError> {
        let target = Target::new(repo, None);
        let (endpoint, base) = self.endpoint(&target, repo, "tags/list")?;
        let mut pager = tags::TagPager::new(base.clone(), self.tag_limits, keep);
        let mut url = tags::first_page(&base);
        let too_long = |limit| RegistryError::TagListTooLong {
            target: target.clone(),
            limit,
        };
        loop {
            let (cap, cap_limit) = pager.page_cap();
            let response = self
                .request(
                    &endpoint,
                    Method::GET,
                    url.clone(),
                    Some("application/json"),
                    cap,
                )
                .await
                .map_err(|e| match e {
                    // The page itself, not a token answer on the way.
                    RegistryError::TooLarge { limit, .. } if limit == cap => too_long(cap_limit),
                    e => e,
                })?;
            if !response.status.is_success() {
                return Err(status_error(&target, &response));
            }
            let link = response
                .headers
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let link = (!link.is_empty()).then_some(link.as_str());
            let next = pager
                .next(&url, &response.body, link)
                .map_err(|e| match e {
                    tags::PageError::Limit(limit) => too_long(limit),
                    tags::PageError::Json(e) => RegistryError::InvalidResponse {
                        target: target.clone(),
                        reason: format!("tag list is not JSON {{\"tags\": [...]}}: {e}"),
                    },
                })?;
            match next {
                Some(next) => {
                    // Our credentials go only to the registry itself.
                    if next.origin() != base.origin() {
                        return Err(RegistryError::InvalidResponse {
                            target,
                            reason: format!(
                                "tag list Link points to another host ({})",
                                next.host_str().unwrap_or("?")
                            ),
                        });
                    }
                    url = next;
                }
                None => return Ok(pager.into_tags()),
            }
        }
    }
}
