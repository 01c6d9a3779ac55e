//! The HTTPS shell around [`review_body`]: `POST /mutate`, nothing else.
//!
//! The API server waits on this server for every Pod, so no client may starve it:
//! - accepting never waits: a new connection only needs a place among the pending TLS
//!   handshakes, and when those are full the oldest pending one is dropped for it. A
//!   handshake has [`ServerOptions::handshake_timeout`] (2 s);
//! - a connection takes one of the `max_connections` slots only once its handshake is done,
//!   and must then send a request head within 2 s; an HTTP/1 head must arrive within 2 s of
//!   its first byte; a connection idle for 30 s is closed (HTTP/2 with a GOAWAY);
//! - one peer (an IPv4 address, an IPv6 /64) holds at most `max_connections_per_peer`
//!   connections, pending or not;
//! - the body has a timeout and a size cap (3 MiB, the API server's own request limit), the
//!   bodies in memory at once a cap (64 MiB), of which one peer may hold at most an eighth
//!   (so that one client's stalled bodies cannot make everyone else's wait), and a
//!   connection a maximum age after which it is closed gracefully.
//!
//! Connections are served concurrently, HTTP/2 (what the API server speaks when offered) or
//! HTTP/1.1.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::index::IndexHandle;
use super::mutate::review_body;
use crate::manifest::AdmissionMode;
use crate::serving::{self, ConnectionTimeouts, LogLimiter, PeerLimiter, Protocol};

/// The only path served.
pub const MUTATE_PATH: &str = "/mutate";

/// Called after every request with its status, the admission mode of the namespace it was
/// answered for (`None` when no review was made: a rejected request, no pins yet) and how
/// long the server took, from a complete request head to the response (for metrics and
/// benchmarks).
#[derive(Clone)]
pub struct RequestObserver(
    pub Arc<dyn Fn(StatusCode, Option<AdmissionMode>, Duration) + Send + Sync>,
);

impl std::fmt::Debug for RequestObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestObserver")
    }
}

/// Limits of the webhook server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request body; bigger ones get 413 (Kubernetes' own limit is 3 MiB).
    pub max_body_bytes: usize,
    /// Time from accepting a connection to the end of its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time from the handshake to the first complete request head, and from the first byte
    /// of an HTTP/1 request head to its end.
    pub header_timeout: Duration,
    /// A connection without a request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Time to receive a whole body once the head is in.
    pub body_timeout: Duration,
    /// Connections past their TLS handshake at most; a new one waits up to
    /// `handshake_timeout` for a slot, then is closed.
    pub max_connections: usize,
    /// TLS handshakes in progress at most; one more drops the oldest pending one.
    pub max_handshakes: usize,
    /// Connections (pending or not) of one peer at most; more are closed at once.
    pub max_connections_per_peer: usize,
    /// Request bodies held in memory at once, in bytes, over all connections and HTTP/2
    /// streams: each request reserves its `Content-Length` (or `max_body_bytes`) before its
    /// body is read, and gets 503 when that cannot be had within `body_timeout`.
    pub max_body_bytes_in_flight: usize,
    /// Of `max_body_bytes_in_flight`, what one peer may hold at once (at least
    /// `max_body_bytes`); past it, its request gets 503 at once instead of waiting.
    pub max_body_bytes_per_peer: usize,
    /// A connection older than this is closed gracefully (requests in flight finish).
    pub max_connection_age: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    pub observer: Option<RequestObserver>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body_bytes: 3 << 20,
            handshake_timeout: Duration::from_secs(2),
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_handshakes: 1024,
            max_connections_per_peer: 256,
            max_body_bytes_in_flight: 64 << 20,
            max_body_bytes_per_peer: 8 << 20,
            max_connection_age: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            observer: None,
        }
    }
}

impl ServerOptions {
    fn timeouts(&self) -> ConnectionTimeouts {
        ConnectionTimeouts {
            first_request: self.header_timeout,
            header: self.header_timeout,
            idle: self.idle_timeout,
            max_age: self.max_connection_age,
            grace: self.shutdown_grace,
        }
    }
}

/// The TLS handshakes in progress, oldest first. When full, the oldest is cancelled to make
/// room: a flood of silent connections then only ever delays itself, and a real client's
/// handshake (milliseconds) finishes long before it could be pushed out.
#[derive(Debug)]
struct Handshakes {
    cap: usize,
    pending: Mutex<(u64, BTreeMap<u64, CancellationToken>)>,
}

/// A place among the pending handshakes, freed on drop; `cancelled` fires when evicted.
struct HandshakeTicket {
    set: Arc<Handshakes>,
    id: u64,
    cancelled: CancellationToken,
}

impl Handshakes {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            cap: cap.max(1),
            pending: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// A place for a new handshake; `true` with it when an older one was evicted.
    fn begin(self: &Arc<Self>) -> (HandshakeTicket, bool) {
        let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, pending) = &mut *guard;
        let mut evicted = false;
        while pending.len() >= self.cap {
            if let Some((_, oldest)) = pending.pop_first() {
                oldest.cancel();
                evicted = true;
            }
        }
        let id = *next;
        *next += 1;
        let cancelled = CancellationToken::new();
        pending.insert(id, cancelled.clone());
        let ticket = HandshakeTicket {
            set: self.clone(),
            id,
            cancelled,
        };
        (ticket, evicted)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .len()
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut guard = self
            .set
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        guard.1.remove(&self.id);
    }
}

/// Failure logs of the accept loop: at most one line each per interval, with a count.
static PEER_REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static EVICTED: LogLimiter = LogLimiter::new(Duration::from_secs(10));

/// Serves `POST /mutate` over TLS on `listener` until `shutdown`, then lets requests in flight
/// finish (up to `shutdown_grace`). Answers 503 while `index` holds no pins yet.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    index: IndexHandle,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let handshakes = Handshakes::new(options.max_handshakes);
    let peers = PeerLimiter::new(options.max_connections_per_peer);
    let bodies = Arc::new(Bodies {
        memory: Semaphore::new(
            kib(options.max_body_bytes_in_flight.max(options.max_body_bytes)) as usize,
        ),
        per_peer: PeerLimiter::new(
            kib(options.max_body_bytes_per_peer.max(options.max_body_bytes)) as usize,
        ),
    });
    let timeouts = Arc::new(options.timeouts());
    let builders =
        Arc::new([Protocol::Http1, Protocol::Http2].map(|p| serving::http_builder(&timeouts, p)));
    let connections = TaskTracker::new();

    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = serving::accept(&listener, "webhook") => accepted,
        };
        let Some(peer_guard) = peers.try_admit(peer.ip()) else {
            drop(tcp);
            crate::telemetry::METRICS.refused("webhook", "per_peer");
            if let Some(suppressed) = PEER_REFUSED.allow() {
                tracing::warn!(
                    %peer,
                    suppressed,
                    limit = options.max_connections_per_peer,
                    "webhook: connection refused: the peer has too many connections open"
                );
            }
            continue;
        };
        let (ticket, evicted) = handshakes.begin();
        if evicted {
            crate::telemetry::METRICS.refused("webhook", "evicted");
            if let Some(suppressed) = EVICTED.allow() {
                tracing::warn!(
                    suppressed,
                    limit = options.max_handshakes,
                    "webhook: too many TLS handshakes pending; dropped the oldest"
                );
            }
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builders = builders.clone();
        let index = index.clone();
        let options = options.clone();
        let timeouts = timeouts.clone();
        let slots = slots.clone();
        let bodies = bodies.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _peer = peer_guard;
            let handshake = tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                _ = ticket.cancelled.cancelled() => return,
                _ = shutdown.cancelled() => return,
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook: TLS handshake timed out");
                        return;
                    }
                },
            };
            drop(ticket);
            // Only a finished handshake takes a slot.
            let _slot = match tokio::time::timeout(options.handshake_timeout, slots.acquire_owned())
                .await
            {
                Ok(Ok(slot)) => slot,
                _ => {
                    crate::telemetry::METRICS.refused("webhook", "connections");
                    tracing::debug!(%peer, "webhook: no connection slot free; closed");
                    return;
                }
            };
            let service = {
                let options = options.clone();
                hyper::service::service_fn(move |request| {
                    let client = Client {
                        peer: peer.ip(),
                        bodies: bodies.clone(),
                    };
                    handle(request, index.clone(), options.clone(), client)
                })
            };
            // The API server offers HTTP/2; ALPN says what was agreed.
            let (protocol, builder) = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => (Protocol::Http2, &builders[1]),
                _ => (Protocol::Http1, &builders[0]),
            };
            let (_, result) =
                serving::drive(builder, tls, protocol, service, &timeouts, &shutdown).await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "webhook: connection ended with an error");
            }
        });
    }
    // The port closes now; the connections still open finish within the grace period.
    drop(listener);
    connections.close();
    if tokio::time::timeout(options.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("webhook: connections still open after the grace period; dropped");
    }
    tracing::info!("webhook server stopped");
}

type Reply = Response<Full<Bytes>>;

/// The memory for request bodies: all of it, and each peer's share of it (in KiB).
struct Bodies {
    memory: Semaphore,
    per_peer: Arc<PeerLimiter>,
}

/// Who sent a request, and the body memory it draws on.
struct Client {
    peer: std::net::IpAddr,
    bodies: Arc<Bodies>,
}

fn reply(status: StatusCode, text: impl Into<String>) -> Reply {
    let mut text = text.into();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    request: Request<Incoming>,
    index: IndexHandle,
    options: Arc<ServerOptions>,
    client: Client,
) -> Result<Reply, Infallible> {
    let started = Instant::now();
    let (response, mode) = answer(request, &index, &options, &client).await;
    let took = started.elapsed();
    if let Some(RequestObserver(observe)) = &options.observer {
        observe(response.status(), mode, took);
    }
    tracing::debug!(
        status = response.status().as_u16(),
        micros = took.as_micros() as u64,
        "webhook: request"
    );
    Ok(response)
}

/// The reply, and the mode of the namespace when a review was made.
async fn answer(
    request: Request<Incoming>,
    index: &IndexHandle,
    options: &ServerOptions,
    client: &Client,
) -> (Reply, Option<AdmissionMode>) {
    match review(request, index, options, client).await {
        Ok((reply, mode)) => (reply, Some(mode)),
        Err(reply) => (reply, None),
    }
}

/// Reviews a `POST /mutate`; `Err` is the reply to a request that got no review.
async fn review(
    request: Request<Incoming>,
    index: &IndexHandle,
    options: &ServerOptions,
    client: &Client,
) -> Result<(Reply, AdmissionMode), Reply> {
    if request.uri().path() != MUTATE_PATH {
        return Err(reply(
            StatusCode::NOT_FOUND,
            format!("only {MUTATE_PATH} is served"),
        ));
    }
    if request.method() != Method::POST {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("POST"));
        return Err(response);
    }
    let limit = options.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    // Memory for the body first: many slow bodies at once wait here instead of piling up.
    // The peer's share is taken without waiting, so that one client whose bodies stall
    // cannot hold the memory every other client's request waits for.
    let reserve = kib(declared.map_or(limit, |length| length as usize)).max(1);
    let Some(_share) = client
        .bodies
        .per_peer
        .try_take(client.peer, reserve as usize)
    else {
        crate::telemetry::METRICS.refused("webhook", "body_share");
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies in flight from this client; try again",
        ));
    };
    let Ok(Ok(_memory)) = tokio::time::timeout(
        options.body_timeout,
        client.bodies.memory.acquire_many(reserve),
    )
    .await
    else {
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies in flight; try again",
        ));
    };
    let body = Limited::new(request.into_body(), limit);
    let bytes = match tokio::time::timeout(options.body_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large(limit));
        }
        Ok(Err(e)) => {
            return Err(reply(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            ));
        }
        Err(_) => {
            return Err(reply(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body took more than {:?}", options.body_timeout),
            ));
        }
    };
    // One snapshot for the whole request: the answer is consistent with one revision.
    let Some(pins) = index.load() else {
        return Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pins are not loaded yet",
        ));
    };
    match review_body(&pins, &bytes) {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer.json)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            Ok((response, answer.mode))
        }
        Err(e) => {
            tracing::debug!(error = %e, "webhook: bad request");
            Err(reply(StatusCode::BAD_REQUEST, e.to_string()))
        }
    }
}

/// Whole KiB holding `bytes`, as semaphore permits.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

fn too_large(limit: usize) -> Reply {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_handshake_set_drops_its_oldest() {
        let set = Handshakes::new(2);
        let (first, evicted) = set.begin();
        assert!(!evicted);
        let (second, _) = set.begin();
        let (third, evicted) = set.begin();
        assert!(evicted);
        assert!(first.cancelled.is_cancelled(), "the oldest goes");
        assert!(!second.cancelled.is_cancelled() && !third.cancelled.is_cancelled());
        assert_eq!(set.len(), 2);
        drop(first);
        assert_eq!(set.len(), 2, "an evicted ticket frees nothing twice");
        drop(second);
        assert_eq!(set.len(), 1);
        drop(third);
        assert_eq!(set.len(), 0);
    }
}
