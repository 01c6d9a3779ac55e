//! Admin endpoints on their own plain-HTTP port: `/healthz`, `/readyz`, `/status`, `/metrics`.
//!
//! `/readyz` waits for the repo to be loaded and, when the admission webhook runs, for its
//! pins: a webhook without pins would answer every Pod with 503.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Status;
use crate::admission::IndexHandle;

type StatusRx = watch::Receiver<Arc<Status>>;

#[derive(Clone)]
struct AdminState {
    status: StatusRx,
    /// The webhook's pins, when the webhook runs.
    index: Option<IndexHandle>,
}

pub fn router(status: StatusRx, index: Option<IndexHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .layer(super::request_timeout())
        .with_state(AdminState { status, index })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    status: StatusRx,
    index: Option<IndexHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, index))
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

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::telemetry::METRICS_CONTENT_TYPE,
        )],
        crate::telemetry::encode(),
    )
}

async fn status_json(State(AdminState { status, .. }): State<AdminState>) -> impl IntoResponse {
    // Take the snapshot out of the borrow so the writer is never held up by a slow client,
    // and serialize it where it is: with thousands of entries a copy is megabytes.
    let snapshot: Arc<Status> = status.borrow().clone();
    Json(StatusJson(snapshot))
}

/// Serializes the shared snapshot in place.
struct StatusJson(Arc<Status>);

impl serde::Serialize for StatusJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
