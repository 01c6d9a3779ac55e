//! Manifest writes and the OCI referrers API.

use bytes::Bytes;
use reqwest::header::LINK;
use reqwest::{Method, StatusCode};

use super::http::{self, Request, status_error, write_error};
use super::types::{self, ImageIndex};
use super::{
    MAX_MANIFEST_BYTES, Reference, RegistryClient, RegistryError, Target, parse_reference,
};
use crate::reference::{Digest, ImageRepo};

/// Referrers pages followed at most.
const MAX_REFERRER_PAGES: usize = 16;

impl RegistryClient {
    /// PUTs manifest `bytes` as they are (so the digest is preserved) under `reference`, a tag
    /// or the bytes' own digest, with `media_type` as `Content-Type`. Returns the digest.
    /// The registry refuses a manifest whose blobs or children it lacks
    /// ([`RegistryError::Rejected`] with code `MANIFEST_BLOB_UNKNOWN`).
    pub async fn put_manifest(
        &self,
        repo: &ImageRepo,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let target = Target::new(repo, Some(reference));
        let digest = match parse_reference(&target, reference)? {
            Reference::Digest(digest) => {
                if !digest.verifies(bytes) {
                    return Err(RegistryError::DigestMismatch {
                        target,
                        actual: digest.same_algorithm_of(bytes),
                        expected: digest,
                    });
                }
                digest
            }
            Reference::Tag => Digest::sha256_of(bytes),
        };
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge {
                target,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let (endpoint, url) =
            self.push_endpoint(&target, repo, &format!("manifests/{reference}"), None)?;
        let request = Request {
            body: Some((media_type.to_owned(), Bytes::copy_from_slice(bytes))),
            ..Request::new(&target, Method::PUT, url, &endpoint.scope)
        };
        let response = self.engine.send(&endpoint.host, &request).await?;
        if !response.status.is_success() {
            return Err(write_error(&target, &response));
        }
        if let Some(claimed) = response.header(http::DOCKER_CONTENT_DIGEST)
            && let Ok(claimed) = claimed.trim().parse::<Digest>()
            && claimed.algorithm() == digest.algorithm()
            && claimed != digest
        {
            return Err(RegistryError::DigestMismatch {
                target,
                expected: digest,
                actual: claimed,
            });
        }
        Ok(digest)
    }

    /// The manifests that name `digest` as their `subject` (OCI distribution spec, "Listing
    /// Referrers"), following `Link` pages. `Ok(None)` when the registry has no referrers API
    /// (404).
    pub async fn referrers(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
    ) -> Result<Option<ImageIndex>, RegistryError> {
        let target = Target::new(repo, Some(digest.as_str()));
        let (endpoint, base) = self.endpoint(&target, repo, &format!("referrers/{digest}"))?;
        let mut url = base.clone();
        let mut all: Option<ImageIndex> = None;
        // The pages together are one manifest's worth: their parsed entries are held at once.
        let mut left = MAX_MANIFEST_BYTES;
        for _ in 0..MAX_REFERRER_PAGES {
            if left == 0 {
                return Err(RegistryError::TooLarge {
                    target,
                    limit: MAX_MANIFEST_BYTES,
                });
            }
            let response = self
                .request(
                    &endpoint,
                    Method::GET,
                    url.clone(),
                    Some(types::OCI_INDEX),
                    left,
                )
                .await
                .map_err(|e| match e {
                    // The listing itself, not a token answer on the way.
                    RegistryError::TooLarge { target, limit } if limit == left => {
                        RegistryError::TooLarge {
                            target,
                            limit: MAX_MANIFEST_BYTES,
                        }
                    }
                    e => e,
                })?;
            left = left.saturating_sub(response.body.len() as u64);
            match response.status {
                StatusCode::NOT_FOUND if all.is_none() => return Ok(None),
                status if status.is_success() => {}
                _ => return Err(status_error(&target, &response)),
            }
            let page: ImageIndex = serde_json::from_slice(&response.body).map_err(|e| {
                RegistryError::InvalidResponse {
                    target: target.clone(),
                    reason: format!("referrers answer is not an image index: {e}"),
                }
            })?;
            match all.as_mut() {
                Some(index) => index.manifests.extend(page.manifests),
                None => all = Some(page),
            }
            let next = response
                .header(LINK)
                .and_then(super::tags::parse_link_next)
                .and_then(|link| url.join(&link).ok());
            match next {
                // Our credentials go only to the registry itself.
                Some(next) if next.origin() == base.origin() => url = next,
                _ => break,
            }
        }
        Ok(all)
    }
}
