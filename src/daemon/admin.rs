//! Admin endpoints on their own plain-HTTP port: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! `/readyz` waits for the repo to be loaded and, when the admission webhook runs, for its
//! pins: a webhook without pins would answer every Pod with 503. Leadership does not count:
//! a replica that does not lead still serves the webhook. `/status` and `imagelock_leader`
//! read leadership live from the elector, not from the last pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Status;
use super::leader::Leadership;
use crate::admission::IndexHandle;

type StatusRx = watch::Receiver<Arc<Status>>;

#[derive(Clone)]
struct AdminState {
    status: StatusRx,
    /// The webhook's pins, when the webhook runs.
    index: Option<IndexHandle>,
    leadership: Leadership,
    /// The length of the last `/status` answer, to size the next one's buffer.
    status_len: Arc<AtomicUsize>,
}

pub fn router(status: StatusRx, index: Option<IndexHandle>, leadership: Leadership) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .layer(super::request_timeout())
        .with_state(AdminState {
            status,
            index,
            leadership,
            status_len: Arc::default(),
        })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    status: StatusRx,
    index: Option<IndexHandle>,
    leadership: Leadership,
    limits: crate::serving::PlainLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router(status, index, leadership);
    crate::serving::serve_plain("admin", listener, router, limits, shutdown).await
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.status.borrow().ready {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: repo not loaded yet\n",
        );
    }
    if state.index.as_ref().is_some_and(|index| !index.is_loaded()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: admission pins not loaded yet\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    crate::telemetry::METRICS
        .leader
        .set(i64::from(state.leadership.is_leader()));
    (
        [(CONTENT_TYPE, crate::telemetry::METRICS_CONTENT_TYPE)],
        crate::telemetry::encode(),
    )
}

/// About what one entry takes in `/status` (one tag, a failure reason and a digest).
const STATUS_BYTES_PER_IMAGE: usize = 512;

async fn status_json(State(state): State<AdminState>) -> Response {
    // Take the snapshot out of the borrow so the writer is never held up by a slow client.
    // Its entries are shared (`Arc`): the copy that gets this replica's leadership holds
    // only the summary fields.
    let snapshot: Arc<Status> = state.status.borrow().clone();
    let mut status = (*snapshot).clone();
    status.leader = state.leadership.is_leader();
    status.lease = state.leadership.lease_status();
    // With thousands of entries the JSON is megabytes (about 500 bytes an entry). A buffer grown by doubling would be copied
    // at every step and reach twice that: it starts at the last answer's length, or at
    // what the entries need when there are more of them now.
    let last = state.status_len.load(Ordering::Relaxed);
    let estimate = last.max(status.images.len() * STATUS_BYTES_PER_IMAGE);
    let mut json = Vec::with_capacity(estimate + estimate / 16);
    match serde_json::to_writer(&mut json, &status) {
        Ok(()) => {
            state.status_len.store(json.len(), Ordering::Relaxed);
            ([(CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
