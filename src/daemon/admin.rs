//! Admin endpoints on their own plain-HTTP port: `/healthz`, `/readyz`, `/status`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Status;

type StatusRx = watch::Receiver<Arc<Status>>;

pub fn router(status: StatusRx) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(status)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    status: StatusRx,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(status))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz(State(status): State<StatusRx>) -> impl IntoResponse {
    if status.borrow().ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: repo not loaded yet\n",
        )
    }
}

async fn status_json(State(status): State<StatusRx>) -> Json<Status> {
    // Clone out of the borrow so the writer is never held up by a slow client.
    let snapshot: Arc<Status> = status.borrow().clone();
    Json((*snapshot).clone())
}
