//! One blob from a source repository into a destination upload: streamed, never held whole,
//! hashed while it streams, resumed with `Range` when the source connection breaks.
//!
//! The upload body is the download itself ([`Pull`]): each chunk read from the source is
//! hashed and handed on, one chunk behind. The last chunk is released only once the whole
//! blob hashed to its digest; on a mismatch the body ends with an error instead, so the
//! request is aborted before its last bytes and the registry never commits the upload. A
//! source that breaks mid-blob is asked for the rest (`Range: bytes=<received>-`) inside the
//! same upload body when it answers 206; otherwise the transfer starts again from scratch.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;

use super::MirrorError;
use super::progress::Progress;
use crate::reference::{Digest, DigestHasher, ImageRepo};
use crate::registry::{
    BlobStream, RegistryClient, RegistryError, Target, TransferSlots, UploadMode, UploadSession,
    UploadStart,
};

/// Range resumes within one transfer attempt.
pub const MAX_RESUMES: u32 = 3;
/// Transfers of one blob from scratch.
pub const MAX_ATTEMPTS: u32 = 3;

/// What one transfer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// The blob was mounted after all (the registry answered a fresh POST with 201).
    pub mounted: bool,
    /// Range resumes used.
    pub resumes: u32,
    /// Attempts from scratch, the first included.
    pub attempts: u32,
}

/// How the download side of a transfer ended, read by the transfer after the upload returns.
#[derive(Debug, Default)]
enum PullEnd {
    #[default]
    Open,
    Verified,
    /// All bytes arrived and hashed to this other digest.
    Corrupt(Digest),
    /// More bytes than the descriptor's size.
    Overlong,
    /// The source failed and could not be resumed.
    Source(RegistryError),
}

/// The download that is also the upload body.
struct Pull {
    client: RegistryClient,
    repo: ImageRepo,
    digest: Digest,
    size: u64,
    slots: TransferSlots,
    current: BlobStream,
    received: u64,
    hasher: Option<DigestHasher>,
    /// The chunk read last, held back until the next one (or the verified end) arrives.
    held: Option<Bytes>,
    resumes: u32,
    end: Arc<Mutex<PullEnd>>,
    progress: Arc<dyn Progress>,
    done: bool,
}

impl Pull {
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        loop {
            let broken = match self.current.chunk().await {
                Ok(Some(chunk)) => {
                    if self.received + chunk.len() as u64 > self.size {
                        return Some(self.fail(PullEnd::Overlong));
                    }
                    if let Some(hasher) = self.hasher.as_mut() {
                        hasher.update(&chunk);
                    }
                    self.received += chunk.len() as u64;
                    self.progress.bytes(chunk.len() as u64);
                    if let Some(previous) = self.held.replace(chunk) {
                        return Some(Ok(previous));
                    }
                    continue;
                }
                Ok(None) if self.received == self.size => return self.finish(),
                Ok(None) => RegistryError::Network {
                    target: Target::new(&self.repo, Some(self.digest.as_str())),
                    cause: format!(
                        "the body ended after {} of {} bytes",
                        self.received, self.size
                    ),
                },
                Err(e) => e,
            };
            if !broken.is_retryable() || self.resumes >= MAX_RESUMES {
                return Some(self.fail(PullEnd::Source(broken)));
            }
            self.resumes += 1;
            tracing::debug!(
                repository = %self.repo, digest = %self.digest, offset = self.received,
                "source broke mid-blob ({broken}); resuming with Range"
            );
            match self
                .client
                .get_blob_stream(&self.repo, &self.digest, self.received, Some(&self.slots))
                .await
            {
                Ok(stream) if stream.offset == self.received => self.current = stream,
                // The source sent the whole blob again: it cannot resume. Start over.
                Ok(_) => return Some(self.fail(PullEnd::Source(broken))),
                Err(e) => return Some(self.fail(PullEnd::Source(e))),
            }
        }
    }

    /// All bytes are in: release the last chunk only if they hash to the digest.
    fn finish(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        let actual = match self.hasher.take() {
            Some(hasher) => hasher.finish(),
            None => return Some(self.fail(PullEnd::Overlong)),
        };
        if actual != self.digest {
            return Some(self.fail(PullEnd::Corrupt(actual)));
        }
        self.done = true;
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = PullEnd::Verified;
        self.held.take().map(Ok)
    }

    /// Ends the body with an error: the upload is aborted before its last bytes.
    fn fail(&mut self, end: PullEnd) -> Result<Bytes, std::io::Error> {
        self.done = true;
        self.held = None;
        let message = match &end {
            PullEnd::Corrupt(actual) => format!("blob hashes to {actual}, not {}", self.digest),
            PullEnd::Overlong => format!("blob is longer than its {} bytes", self.size),
            PullEnd::Source(e) => e.to_string(),
            PullEnd::Open | PullEnd::Verified => "blob body failed".to_owned(),
        };
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = end;
        Err(std::io::Error::other(message))
    }

    /// The upload body; adds the resumes it uses to `resumes` as it goes.
    fn into_body(
        self,
        resumes: Arc<AtomicU32>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold((self, resumes), |(mut pull, resumes)| async move {
            let before = pull.resumes;
            let item = pull.next().await;
            resumes.fetch_add(pull.resumes - before, Ordering::Relaxed);
            Some((item?, (pull, resumes)))
        })
    }
}

/// A refusal of the monolithic PUT itself, after which a chunked upload may work.
fn refuses_monolithic(error: &RegistryError) -> bool {
    match error {
        RegistryError::Rejected { status, code, .. } => {
            matches!(status, 405 | 411 | 413 | 415)
                || (*status == 400
                    && matches!(code.as_str(), "BLOB_UPLOAD_INVALID" | "SIZE_INVALID"))
        }
        RegistryError::Http { status, .. } => *status == 501,
        _ => false,
    }
}

/// The blob to move and where.
pub struct Blob<'a> {
    pub source: &'a ImageRepo,
    pub destination: &'a ImageRepo,
    pub digest: &'a Digest,
    pub size: u64,
}

/// Streams one blob from its source into the destination, verifying it on the way. `session`
/// is an upload already opened (by a refused mount). `chunked` is the destination's upload
/// mode, switched on when the registry refuses a monolithic PUT. Bounded: [`MAX_RESUMES`]
/// range resumes per attempt, [`MAX_ATTEMPTS`] attempts.
pub async fn transfer(
    client: &RegistryClient,
    progress: &Arc<dyn Progress>,
    blob: &Blob<'_>,
    mut session: Option<UploadSession>,
    chunked: &AtomicBool,
) -> Result<Transferred, MirrorError> {
    let mut done = Transferred::default();
    let mut reauthenticated = false;
    loop {
        done.attempts += 1;
        let last_attempt = done.attempts >= MAX_ATTEMPTS;
        let session = match session.take() {
            Some(session) => session,
            None => match client.start_upload(blob.destination, None).await? {
                UploadStart::Session(session) => session,
                UploadStart::Mounted => {
                    done.mounted = true;
                    return Ok(done);
                }
            },
        };
        let slots = client
            .transfer_slots(&[blob.source, blob.destination])
            .await?;
        let first = match client
            .get_blob_stream(blob.source, blob.digest, 0, Some(&slots))
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                drop(slots);
                client.cancel_upload(&session).await;
                if matches!(e, RegistryError::NotFound { .. }) {
                    return Err(MirrorError::MissingAtSource {
                        repo: blob.source.clone(),
                        digest: blob.digest.clone(),
                    });
                }
                if e.is_retryable() && !last_attempt {
                    continue;
                }
                return Err(e.into());
            }
        };
        let end = Arc::new(Mutex::new(PullEnd::Open));
        let pull = Pull {
            client: client.clone(),
            repo: blob.source.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            slots: slots.clone(),
            current: first,
            received: 0,
            hasher: Some(DigestHasher::for_digest(blob.digest)),
            held: None,
            resumes: 0,
            end: end.clone(),
            progress: progress.clone(),
            done: false,
        };
        let resumes = Arc::new(AtomicU32::new(0));
        let mode = if chunked.load(Ordering::Relaxed) {
            UploadMode::Chunked
        } else {
            UploadMode::Monolithic
        };
        let body = pull.into_body(resumes.clone());
        let uploaded = client
            .upload_blob(
                session.clone(),
                blob.digest,
                blob.size,
                body,
                mode,
                Some(&slots),
            )
            .await;
        drop(slots);
        done.resumes += resumes.load(Ordering::Relaxed);
        let end = std::mem::take(&mut *end.lock().unwrap_or_else(|e| e.into_inner()));
        let error = match (uploaded, end) {
            (Ok(()), _) => return Ok(done),
            (Err(_), PullEnd::Corrupt(actual)) => {
                client.cancel_upload(&session).await;
                return Err(MirrorError::Corrupt {
                    repo: blob.source.clone(),
                    expected: blob.digest.clone(),
                    actual,
                });
            }
            (Err(_), PullEnd::Overlong) => {
                client.cancel_upload(&session).await;
                return Err(RegistryError::InvalidResponse {
                    target: Target::new(blob.source, Some(blob.digest.as_str())),
                    reason: format!("blob is longer than its descriptor's {} bytes", blob.size),
                }
                .into());
            }
            (Err(_), PullEnd::Source(e)) => e,
            // The token expired while the transfer waited; the registry's challenge has been
            // answered, so one more attempt goes out with a fresh token.
            (Err(e @ RegistryError::Unauthorized { .. }), _) if !reauthenticated => {
                reauthenticated = true;
                client.cancel_upload(&session).await;
                tracing::debug!(destination = %blob.destination, "upload refused ({e}); retrying with a new token");
                continue;
            }
            (Err(e), _) => {
                if mode == UploadMode::Monolithic && refuses_monolithic(&e) {
                    tracing::info!(
                        registry = %blob.destination.registry,
                        "monolithic blob PUT refused ({e}); using chunked PATCH uploads"
                    );
                    chunked.store(true, Ordering::Relaxed);
                    if !last_attempt {
                        client.cancel_upload(&session).await;
                        continue;
                    }
                }
                e
            }
        };
        client.cancel_upload(&session).await;
        if !error.is_retryable() || last_attempt {
            return Err(error.into());
        }
        let Some(wait) = client.retry_delay(&error, done.attempts) else {
            return Err(error.into());
        };
        tracing::warn!(
            source = %blob.source, destination = %blob.destination, digest = %blob.digest,
            attempt = done.attempts, wait_ms = wait.as_millis() as u64,
            "blob transfer failed ({error}); starting over"
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hasher_matches_digest_helpers() {
        let d256 = Digest::sha256_of(b"hello");
        let mut h = DigestHasher::for_digest(&d256);
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), d256);
        let d512: Digest = format!("sha512:{}", "0".repeat(128)).parse().unwrap();
        let mut h = DigestHasher::for_digest(&d512);
        h.update(b"x");
        assert_eq!(h.finish(), d512.same_algorithm_of(b"x"));
    }

    #[test]
    fn monolithic_refusals() {
        let target = Target {
            registry: "r".into(),
            repository: "x".into(),
            reference: None,
        };
        let rejected = |status, code: &str| RegistryError::Rejected {
            target: target.clone(),
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(refuses_monolithic(&rejected(405, "")));
        assert!(refuses_monolithic(&rejected(400, "SIZE_INVALID")));
        assert!(!refuses_monolithic(&rejected(400, "DIGEST_INVALID")));
        assert!(!refuses_monolithic(&RegistryError::Denied {
            target,
            message: String::new()
        }));
    }
}
