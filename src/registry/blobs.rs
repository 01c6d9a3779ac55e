//! The blob side of the client: existence checks, streamed downloads with a start offset,
//! cross-repository mounts and streamed uploads (distribution spec, "Pushing blobs").
//!
//! Blob bodies are never held whole: downloads yield chunks as they arrive and uploads take a
//! stream of chunks. A streamed body has no whole-request timeout (a 1 GiB layer takes what
//! it takes); every pause between two chunks is bounded by `ClientConfig::idle_timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderValue, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{Mutex as AsyncMutex, OwnedSemaphorePermit};

use super::http::{self, IdleWatch, Request, Response, classify_error, status_error, write_error};
use super::{Endpoint, RegistryClient, RegistryError, Target, TransferFloor, auth};
use crate::reference::{Digest, ImageRepo};

/// Bytes per PATCH in [`UploadMode::Chunked`].
pub const UPLOAD_CHUNK_BYTES: u64 = 64 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a blob body goes to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// One streaming `PUT <location>?digest=` carrying the whole body: one round trip per
    /// blob, as fast as PATCH + PUT against distribution for large blobs and faster for
    /// small ones.
    Monolithic,
    /// `PATCH`es of at most [`UPLOAD_CHUNK_BYTES`] with `Content-Range`, then an empty
    /// `PUT ?digest=`: for registries that refuse a body on the closing PUT.
    Chunked,
}

/// Connection slots for one blob transfer (a download streaming into an upload), taken
/// together so that two transfers can never each hold one half and wait for the other.
/// Requests made with them do not take another permit of their host. Clones share the slots;
/// they are released when the last clone is dropped.
#[derive(Clone)]
pub struct TransferSlots {
    _permits: Arc<Vec<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for TransferSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferSlots").finish_non_exhaustive()
    }
}

/// An upload session at the registry: where the body goes.
#[derive(Debug, Clone)]
pub struct UploadSession {
    repo: ImageRepo,
    url: Url,
    /// The auth scope the session was opened with; its requests use the same cached token.
    scope: String,
}

impl UploadSession {
    /// The session's absolute URL, as the registry's `Location` named it.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// What `POST /v2/<repo>/blobs/uploads/` gave.
#[derive(Debug)]
pub enum UploadStart {
    /// 201: the registry mounted the blob from the other repository; nothing to upload.
    Mounted,
    /// 202: an upload session (when a mount was asked for, the registry refused it).
    Session(UploadSession),
}

/// A blob download in progress.
pub struct BlobStream {
    /// Offset of the first byte this stream yields: the offset asked for when the registry
    /// answered 206, 0 when it answered 200 with the whole blob.
    pub offset: u64,
    /// The whole blob's length, when the response said.
    pub total: Option<u64>,
    response: reqwest::Response,
    idle: Duration,
    rate: RateWindow,
    target: Target,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Judges a download's average rate per window of [`TransferFloor::window`] (windows follow
/// each other; each one must reach the floor).
#[derive(Debug)]
struct RateWindow {
    floor: TransferFloor,
    start: Instant,
    bytes: u64,
}

impl RateWindow {
    fn new(floor: TransferFloor) -> Self {
        RateWindow {
            floor,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// When the current window is judged; `None` without a floor.
    fn end(&self) -> Option<Instant> {
        (self.floor.bytes_per_second > 0 && !self.floor.window.is_zero())
            .then(|| self.start + self.floor.window)
    }

    /// Counts `bytes` and, once the window is over, judges it and starts the next one.
    fn add(&mut self, bytes: usize, target: &Target) -> Result<(), RegistryError> {
        self.bytes += bytes as u64;
        let Some(end) = self.end() else { return Ok(()) };
        let now = Instant::now();
        if now < end {
            return Ok(());
        }
        let elapsed = now - self.start;
        let required = self.floor.bytes_per_second as f64 * elapsed.as_secs_f64();
        if (self.bytes as f64) < required {
            return Err(RegistryError::TooSlow {
                target: target.clone(),
                bytes: self.bytes,
                window: elapsed,
                floor: self.floor.bytes_per_second,
            });
        }
        self.start = now;
        self.bytes = 0;
        Ok(())
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("target", &self.target)
            .field("offset", &self.offset)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// The next chunk, `Ok(None)` at the end. A pause longer than the idle timeout is
    /// [`RegistryError::Timeout`]; a broken connection [`RegistryError::Network`].
    /// A download that averages below the client's [`TransferFloor`] over a window is
    /// [`RegistryError::TooSlow`], judged when the window ends even if no chunk arrives.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let idle_end = Instant::now() + self.idle;
        loop {
            let wake = self.rate.end().map_or(idle_end, |end| end.min(idle_end));
            match tokio::time::timeout_at(wake.into(), self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    self.rate.add(chunk.len(), &self.target)?;
                    return Ok(Some(chunk));
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(classify_error(e, &self.target, self.idle)),
                Err(_) if Instant::now() >= idle_end => {
                    return Err(RegistryError::Timeout {
                        target: self.target.clone(),
                        after: self.idle,
                    });
                }
                // The rate window ended while waiting: judge it, then wait on.
                Err(_) => self.rate.add(0, &self.target)?,
            }
        }
    }

    /// The chunks as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send {
        futures_util::stream::unfold(Some(self), |state| async move {
            let mut stream = state?;
            match stream.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(stream))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// Parses `Content-Range: bytes <start>-<end>/<total|*>` into (start, total).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    Some((start, total))
}

impl RegistryClient {
    /// An endpoint for writes to `repo`: push scope, plus pull on `mount_from`.
    pub(super) fn push_endpoint(
        &self,
        target: &Target,
        repo: &ImageRepo,
        tail: &str,
        mount_from: Option<&ImageRepo>,
    ) -> Result<(Endpoint, Url), RegistryError> {
        let (mut endpoint, url) = self.endpoint(target, repo, tail)?;
        endpoint.scope = auth::push_scope(&repo.repository);
        if let Some(from) = mount_from {
            endpoint.scope.push(' ');
            endpoint.scope.push_str(&auth::pull_scope(&from.repository));
        }
        Ok((endpoint, url))
    }

    /// Takes connection slots for a transfer touching `repos` (one slot per entry; a host
    /// named twice gives two slots, capped at its concurrency). Hosts are taken in name
    /// order, so concurrent transfers cannot deadlock.
    pub async fn transfer_slots(
        &self,
        repos: &[&ImageRepo],
    ) -> Result<TransferSlots, RegistryError> {
        let mut per_host: BTreeMap<&str, (usize, &ImageRepo)> = BTreeMap::new();
        for repo in repos {
            per_host
                .entry(repo.registry.as_str())
                .or_insert((0, repo))
                .0 += 1;
        }
        let mut permits = Vec::with_capacity(per_host.len());
        for (registry, (count, repo)) in per_host {
            let host = self.engine.host(registry, &Target::new(repo, None))?;
            permits.push(host.slots(count).await?);
        }
        Ok(TransferSlots {
            _permits: Arc::new(permits),
        })
    }

    /// The blob's size when `repo` has it (HEAD), `None` on 404.
    pub async fn blob_exists(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.blob_head(repo, digest, None).await
    }

    /// [`Self::blob_exists`] for a caller that may hold connection `slots` of the host: the
    /// HEAD then goes out on them, instead of waiting for a permit the caller holds itself.
    async fn blob_head(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
        slots: Option<&TransferSlots>,
    ) -> Result<Option<u64>, RegistryError> {
        let target = Target::new(repo, Some(digest.as_str()));
        let (endpoint, url) = self.endpoint(&target, repo, &format!("blobs/{digest}"))?;
        let request = Request {
            take_permit: slots.is_none(),
            ..Request::new(&endpoint.target, Method::HEAD, url, &endpoint.scope)
        };
        let response = self.engine.send(&endpoint.host, &request).await?;
        match response.status {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(
                response
                    .header(CONTENT_LENGTH)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0),
            )),
            _ => Err(status_error(&target, &response)),
        }
    }

    /// Starts downloading a blob at byte `offset` (`Range: bytes=<offset>-` when not 0).
    /// The registry may ignore the range and send everything: check [`BlobStream::offset`].
    /// The request is retried like any other until the response head arrives; the body is
    /// not verified here (the caller hashes what it streams). With `slots`, the download
    /// uses them; otherwise it holds a connection permit of its own until dropped.
    pub async fn get_blob_stream(
        &self,
        repo: &ImageRepo,
        digest: &Digest,
        offset: u64,
        slots: Option<&TransferSlots>,
    ) -> Result<BlobStream, RegistryError> {
        let target = Target::new(repo, Some(digest.as_str()));
        let (endpoint, url) = self.endpoint(&target, repo, &format!("blobs/{digest}"))?;
        let permit = match slots {
            Some(_) => None,
            None => Some(endpoint.host.slots(1).await?),
        };
        let mut request = Request::new(&endpoint.target, Method::GET, url, &endpoint.scope);
        request.stream = true;
        request.take_permit = false;
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|_| {
                RegistryError::InvalidReference {
                    target: target.clone(),
                }
            })?;
            request.headers.push((RANGE, range));
        }
        let response = self.engine.send(&endpoint.host, &request).await?;
        let invalid = |reason: String| RegistryError::InvalidResponse {
            target: target.clone(),
            reason,
        };
        let (start, total) = match response.status {
            StatusCode::PARTIAL_CONTENT => {
                let range = response.header(CONTENT_RANGE).unwrap_or_default();
                let (start, total) = parse_content_range(range).ok_or_else(|| {
                    invalid(format!(
                        "206 with Content-Range {}",
                        crate::manifest::quote(range)
                    ))
                })?;
                if start != offset {
                    return Err(invalid(format!(
                        "asked for bytes from {offset}, got a range from {start}"
                    )));
                }
                (start, total)
            }
            status if status.is_success() => (
                0,
                response
                    .header(CONTENT_LENGTH)
                    .and_then(|v| v.trim().parse::<u64>().ok()),
            ),
            _ => return Err(status_error(&target, &response)),
        };
        let Some(body) = response.stream else {
            return Err(invalid("no response body".into()));
        };
        Ok(BlobStream {
            offset: start,
            total,
            response: body,
            idle: self.engine.idle_timeout,
            rate: RateWindow::new(self.transfer_floor),
            target,
            _permit: permit,
        })
    }

    /// `POST /v2/<repo>/blobs/uploads/`, with `mount = Some((digest, from))` asking for a
    /// cross-repository mount (`?mount=<digest>&from=<repo>`, same registry only). A registry
    /// that cannot mount answers with a session instead, used like any other.
    pub async fn start_upload(
        &self,
        repo: &ImageRepo,
        mount: Option<(&Digest, &ImageRepo)>,
    ) -> Result<UploadStart, RegistryError> {
        let target = Target::new(repo, mount.map(|(d, _)| d.as_str()));
        let (endpoint, mut url) =
            self.push_endpoint(&target, repo, "blobs/uploads/", mount.map(|(_, from)| from))?;
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest.as_str())
                .append_pair("from", &from.repository);
        }
        let request = Request::new(&endpoint.target, Method::POST, url.clone(), &endpoint.scope);
        let response = self.engine.send(&endpoint.host, &request).await?;
        match response.status {
            StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
            StatusCode::ACCEPTED | StatusCode::CREATED => Ok(UploadStart::Session(UploadSession {
                repo: repo.clone(),
                url: self.upload_location(&target, &endpoint, &url, &response)?,
                scope: endpoint.scope.clone(),
            })),
            _ => Err(write_error(&target, &response)),
        }
    }

    /// The absolute upload URL from a response's `Location` (relative ones resolve against
    /// the request URL). It must stay on the registry: our credentials go nowhere else.
    fn upload_location(
        &self,
        target: &Target,
        endpoint: &Endpoint,
        request_url: &Url,
        response: &Response,
    ) -> Result<Url, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidResponse {
            target: target.clone(),
            reason,
        };
        let location = response
            .header(LOCATION)
            .ok_or_else(|| invalid(format!("HTTP {} without a Location", response.status)))?;
        let url = request_url.join(location.trim()).map_err(|e| {
            invalid(format!(
                "upload Location {}: {e}",
                crate::manifest::quote(location)
            ))
        })?;
        if url.origin() != endpoint.host.base.origin() {
            return Err(invalid(format!(
                "upload Location points to another host ({})",
                url.host_str().unwrap_or("?")
            )));
        }
        Ok(url)
    }

    /// Streams `body` (exactly `size` bytes) into `session` and commits it as `digest`. One
    /// attempt: a streamed body cannot be sent twice, so the caller retries with a new
    /// session. A 401 (a token that expired since the session opened) is answered for the
    /// next attempt and returned as [`RegistryError::Unauthorized`]. A body that ends with an
    /// error aborts the request before its last bytes and the registry commits nothing. A
    /// refusal of the mode itself (405, 411, 413, 415, 501, or 400
    /// `BLOB_UPLOAD_INVALID`/`SIZE_INVALID` on a monolithic PUT) comes back as the registry's
    /// error; try [`UploadMode::Chunked`] then.
    pub async fn upload_blob<S, E>(
        &self,
        session: UploadSession,
        digest: &Digest,
        size: u64,
        body: S,
        mode: UploadMode,
        slots: Option<&TransferSlots>,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let target = Target::new(&session.repo, Some(digest.as_str()));
        let endpoint = self.session_endpoint(&target, &session)?;
        let body = body.map(|item| item.map_err(Into::into));
        let mut url = session.url.clone();
        if mode == UploadMode::Chunked && size > 0 {
            url = self
                .patch_chunks(&target, &endpoint, url, size, Box::pin(body), slots)
                .await?;
        } else {
            url.query_pairs_mut().append_pair("digest", digest.as_str());
            let request = Request {
                take_permit: slots.is_none(),
                ..Request::new(&target, Method::PUT, url.clone(), &endpoint.scope)
            };
            let watch = Arc::new(IdleWatch::new(self.engine.upload_idle()));
            let response = self
                .engine
                .send_streaming_body(
                    &endpoint.host,
                    &request,
                    "application/octet-stream",
                    Some(size),
                    reqwest::Body::wrap_stream(watched(body, watch.clone())),
                    &watch,
                )
                .await?;
            return committed(&target, digest, &response);
        }
        // The closing PUT of a chunked upload has no body and can be sent again.
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let request = Request {
            take_permit: slots.is_none(),
            body: Some(("application/octet-stream".into(), Bytes::new())),
            ..Request::new(&target, Method::PUT, url, &endpoint.scope)
        };
        let response = self.engine.send(&endpoint.host, &request).await?;
        if response.status == StatusCode::NOT_FOUND
            && self
                .blob_head(&session.repo, digest, slots)
                .await?
                .is_some()
        {
            // An earlier send of this PUT was committed and its answer lost: the session is
            // gone and the blob, which the registry stores only under its digest, is there.
            return Ok(());
        }
        committed(&target, digest, &response)
    }

    /// Sends `body` as PATCHes of at most [`UPLOAD_CHUNK_BYTES`]; returns the URL for the
    /// closing PUT.
    async fn patch_chunks(
        &self,
        target: &Target,
        endpoint: &Endpoint,
        mut url: Url,
        size: u64,
        body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>,
        slots: Option<&TransferSlots>,
    ) -> Result<Url, RegistryError> {
        let source = Arc::new(AsyncMutex::new(Split {
            stream: body,
            leftover: None,
        }));
        let mut sent = 0u64;
        while sent < size {
            let length = (size - sent).min(UPLOAD_CHUNK_BYTES);
            let range =
                HeaderValue::from_str(&format!("{sent}-{}", sent + length - 1)).map_err(|e| {
                    RegistryError::InvalidResponse {
                        target: target.clone(),
                        reason: e.to_string(),
                    }
                })?;
            let request = Request {
                take_permit: slots.is_none(),
                headers: vec![(CONTENT_RANGE, range)],
                ..Request::new(target, Method::PATCH, url.clone(), &endpoint.scope)
            };
            let watch = Arc::new(IdleWatch::new(self.engine.upload_idle()));
            let part = watched(take_bytes(source.clone(), length), watch.clone());
            let response = self
                .engine
                .send_streaming_body(
                    &endpoint.host,
                    &request,
                    "application/octet-stream",
                    Some(length),
                    reqwest::Body::wrap_stream(part),
                    &watch,
                )
                .await?;
            if response.status != StatusCode::ACCEPTED && !response.status.is_success() {
                return Err(write_error(target, &response));
            }
            url = self.upload_location(target, endpoint, &url, &response)?;
            sent += length;
        }
        Ok(url)
    }

    /// The endpoint for a session's requests, with the scope (and so the cached token) the
    /// session was opened with.
    fn session_endpoint(
        &self,
        target: &Target,
        session: &UploadSession,
    ) -> Result<Endpoint, RegistryError> {
        let (mut endpoint, _) =
            self.push_endpoint(target, &session.repo, "blobs/uploads/", None)?;
        endpoint.scope.clone_from(&session.scope);
        Ok(endpoint)
    }

    /// How long to wait before a blob transfer that failed for the `attempt`-th time starts
    /// over: what the registry asked for with `Retry-After`, otherwise backoff. `None` when
    /// the registry asks for longer than the client allows.
    pub fn retry_delay(&self, error: &RegistryError, attempt: u32) -> Option<std::time::Duration> {
        self.engine.retry_delay(error, attempt)
    }

    /// Abandons an upload session (`DELETE`), so the registry can drop what it received.
    /// Best effort: registries expire sessions anyway.
    pub async fn cancel_upload(&self, session: &UploadSession) {
        let target = Target::new(&session.repo, None);
        let Ok(endpoint) = self.session_endpoint(&target, session) else {
            return;
        };
        let request = Request::new(
            &target,
            Method::DELETE,
            session.url.clone(),
            &endpoint.scope,
        );
        if let Err(e) = self.engine.send(&endpoint.host, &request).await {
            tracing::debug!(%target, "cannot cancel an upload session: {e}");
        }
    }
}

/// Checks the answer to the committing PUT: 201, and the digest the registry names (if it
/// does) is ours.
fn committed(target: &Target, digest: &Digest, response: &Response) -> Result<(), RegistryError> {
    if !response.status.is_success() {
        return Err(write_error(target, response));
    }
    if let Some(claimed) = response.header(http::DOCKER_CONTENT_DIGEST)
        && claimed.trim() != digest.as_str()
    {
        return Err(RegistryError::InvalidResponse {
            target: target.clone(),
            reason: format!("the registry stored the upload as {claimed}"),
        });
    }
    Ok(())
}

/// `body`, reporting each chunk and its end to `watch`.
fn watched<S>(body: S, watch: Arc<IdleWatch>) -> impl Stream<Item = Result<Bytes, BoxError>> + Send
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    futures_util::stream::unfold((Box::pin(body), watch), |(mut body, watch)| async move {
        match body.next().await {
            Some(item) => {
                watch.touch();
                Some((item, (body, watch)))
            }
            None => {
                watch.finish();
                None
            }
        }
    })
}

/// A body shared by the PATCHes of a chunked upload, each taking its length.
struct Split {
    stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>,
    leftover: Option<Bytes>,
}

/// The next `length` bytes of `source` as a stream of its own.
fn take_bytes(
    source: Arc<AsyncMutex<Split>>,
    length: u64,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    futures_util::stream::unfold((source, length), |(source, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        let mut split = source.lock().await;
        let next = match split.leftover.take() {
            Some(bytes) => Some(Ok(bytes)),
            None => split.stream.next().await,
        };
        let mut chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Some((Err(e), (source.clone(), 0))),
            None => {
                let e: BoxError = "the blob body ended before its declared size".into();
                return Some((Err(e), (source.clone(), 0)));
            }
        };
        let take = usize::try_from(remaining).unwrap_or(usize::MAX);
        if chunk.len() > take {
            split.leftover = Some(chunk.split_off(take));
        }
        let left = remaining - chunk.len() as u64;
        drop(split);
        Some((Ok(chunk), (source, left)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 1000-99999/100000"),
            Some((1000, Some(100000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("0-9"), None);
        assert_eq!(parse_content_range("bytes x-9/10"), None);
    }

    #[tokio::test]
    async fn take_bytes_splits_a_stream_at_exact_lengths() {
        let chunks: Vec<Result<Bytes, BoxError>> = vec![
            Ok(Bytes::from_static(b"abcde")),
            Ok(Bytes::from_static(b"fgh")),
            Ok(Bytes::from_static(b"ij")),
        ];
        let source = Arc::new(AsyncMutex::new(Split {
            stream: Box::pin(futures_util::stream::iter(chunks)),
            leftover: None,
        }));
        let mut parts = Vec::new();
        for length in [3, 4, 3] {
            let part: Vec<Bytes> = take_bytes(source.clone(), length)
                .map(|r| r.unwrap())
                .collect()
                .await;
            parts.push(part.concat());
        }
        assert_eq!(parts, [b"abc".to_vec(), b"defg".to_vec(), b"hij".to_vec()]);
        let mut short = Box::pin(take_bytes(source, 1));
        assert!(short.next().await.unwrap().is_err());
    }

    fn mk_target() -> Target {
        Target {
            registry: "r.example".into(),
            repository: "team/web".into(),
            reference: None,
        }
    }

    #[test]
    fn a_window_below_the_floor_is_too_slow() {
        let mut rate = RateWindow::new(TransferFloor {
            bytes_per_second: 1 << 20,
            window: Duration::from_millis(20),
        });
        rate.add(1, &mk_target()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let err = rate.add(1, &mk_target()).unwrap_err();
        assert!(
            matches!(err, RegistryError::TooSlow { bytes: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("transfer too slow"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn windows_above_the_floor_pass_and_start_again() {
        let mut rate = RateWindow::new(TransferFloor {
            bytes_per_second: 1,
            window: Duration::from_millis(10),
        });
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(15));
            rate.add(1000, &mk_target()).unwrap();
            assert_eq!(rate.bytes, 0, "a judged window starts the next");
        }
        let mut off = RateWindow::new(TransferFloor {
            bytes_per_second: 0,
            window: Duration::from_millis(1),
        });
        std::thread::sleep(Duration::from_millis(5));
        assert!(off.end().is_none());
        off.add(0, &mk_target()).unwrap();
    }
}
