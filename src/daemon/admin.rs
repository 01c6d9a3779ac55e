//! Admin endpoints on their own plain-HTTP port: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! `/readyz` waits for the repo to be loaded and, when the admission webhook runs, for its
//! pins: a webhook without pins would answer every Pod with 503. Leadership does not count:
//! a replica that does not lead still serves the webhook. `/status` and `imagelock_leader`
//! read leadership live from the elector, not from the last pass.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
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
        })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    status: StatusRx,
    index: Option<IndexHandle>,
    leadership: Leadership,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, index, leadership))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
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
        [(
            axum::http::header::CONTENT_TYPE,
            crate::telemetry::METRICS_CONTENT_TYPE,
        )],
        crate::telemetry::encode(),
    )
}

async fn status_json(State(state): State<AdminState>) -> Json<Status> {
    // Clone out of the borrow so the writer is never held up by a slow client.
    let snapshot: Arc<Status> = state.status.borrow().clone();
    let mut status = (*snapshot).clone();
    status.leader = state.leadership.is_leader();
    status.lease = state.leadership.lease_status();
    Json(status)
}
