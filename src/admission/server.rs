//! The HTTPS shell around [`review_body`]: `POST /mutate`, nothing else.
//!
//! Every step a client controls has a limit: the TLS handshake, the request head and the body
//! each have a timeout, the body a size cap (3 MiB, the API server's own request limit), the
//! number of open connections a cap, and a connection a maximum age after which it is closed
//! gracefully. Connections are served concurrently, HTTP/2 (what the API server speaks when
//! offered) or HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::index::IndexHandle;
use super::mutate::review_body;
use crate::manifest::AdmissionMode;

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
    pub handshake_timeout: Duration,
    /// Time to receive a request head, and to wait for the next one on an idle HTTP/1
    /// connection.
    pub header_timeout: Duration,
    /// Time to receive a whole body once the head is in.
    pub body_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog.
    pub max_connections: usize,
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
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connection_age: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            observer: None,
        }
    }
}

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256)
        .max_header_list_size(64 << 10);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();

    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: transient.
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let index = index.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let tls =
                match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook: TLS handshake timed out");
                        return;
                    }
                };
            let service = {
                let options = options.clone();
                hyper::service::service_fn(move |request| {
                    handle(request, index.clone(), options.clone())
                })
            };
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let finished = tokio::select! {
                result = connection.as_mut() => Some(result),
                _ = shutdown.cancelled() => None,
                _ = tokio::time::sleep(options.max_connection_age) => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(options.shutdown_grace, connection).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "webhook: connection ended with an error");
            }
        });
    }
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
) -> Result<Reply, Infallible> {
    let started = Instant::now();
    let (response, mode) = answer(request, &index, &options).await;
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
) -> (Reply, Option<AdmissionMode>) {
    match review(request, index, options).await {
        Ok((reply, mode)) => (reply, Some(mode)),
        Err(reply) => (reply, None),
    }
}

/// Reviews a `POST /mutate`; `Err` is the reply to a request that got no review.
async fn review(
    request: Request<Incoming>,
    index: &IndexHandle,
    options: &ServerOptions,
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

fn too_large(limit: usize) -> Reply {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}
