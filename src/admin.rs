//! The admin HTTP port: liveness, readiness, Prometheus metrics, and the SQL query API.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

static READY: AtomicBool = AtomicBool::new(false);

pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

pub fn router(sql: vigil_sql::http_api::ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(vigil_sql::http_api::router(sql))
}

async fn readyz() -> impl IntoResponse {
    if READY.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}
