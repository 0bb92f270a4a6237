//! The admin HTTP port: liveness, readiness, Prometheus metrics, and the SQL query API.
//!
//! Probes (`/healthz`, `/readyz`) stay open so orchestrators need no secret. `/metrics` needs a token with
//! the `admin` scope (Prometheus: `authorization: { credentials: <token> }` in the scrape config), because
//! metric labels name sources, detectors and destinations; so does `POST /-/reload` (see `reload`).
//! `POST /api/v1/query` needs the `query` scope.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use vigil_ingest::security::{http_auth, Authenticator, Scope};

use crate::reload::Reloader;

static READY: AtomicBool = AtomicBool::new(false);

/// Labels of this port's routes in `vigil_auth_failures_total`.
pub const METRICS_LISTENER: &str = "admin";
pub const QUERY_LISTENER: &str = "query_http";

pub fn set_ready(ready: bool) {
    READY.store(ready, Ordering::SeqCst);
}

pub fn router(
    sql: vigil_sql::http_api::ApiState,
    auth: Arc<Authenticator>,
    reloader: Option<Arc<Reloader>>,
) -> Router {
    let mut metrics = Router::new().route("/metrics", get(metrics));
    if let Some(reloader) = reloader {
        metrics = metrics.route("/-/reload", post(move || reload(reloader.clone())));
    }
    let metrics = metrics.route_layer(http_auth::require(
        auth.clone(),
        Scope::Admin,
        METRICS_LISTENER,
    ));
    let query = vigil_sql::http_api::router(sql).route_layer(http_auth::require(
        auth,
        Scope::Query,
        QUERY_LISTENER,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(metrics)
        .merge(query)
}

async fn readyz() -> impl IntoResponse {
    if READY.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// `POST /-/reload` (admin scope): 200 with what was loaded, or 400 with why the file was refused.
async fn reload(reloader: Arc<Reloader>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("reloaded: {summary}\n")),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("reload refused, the running configuration stays: {e:#}\n"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}\n"),
        ),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}
