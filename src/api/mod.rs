//! The JSON API (axum): feature reads and recommendations for SSR pages and other callers,
//! its OpenAPI document (`/openapi.json`, `/docs`), health and readiness probes, Prometheus
//! metrics. Its routes join the pages' in `crate::http`.

mod error;
mod features;
mod openapi;
mod recommendations;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

pub use error::AppError;
pub use features::MAX_BATCH;

use crate::serve::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The JSON API, the probes and the metrics.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{user_id}/features", get(features::user_features))
        .route("/api/v1/products/{product_id}/features", get(features::product_features))
        .route("/api/v1/features/batch", axum::routing::post(features::batch))
        .route(
            "/api/v1/users/{user_id}/recommendations",
            get(recommendations::user_recommendations),
        )
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: not draining, Redis answers, and (when ingest runs) a broker answers.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" })));
    }
    let redis = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(error) => error.to_string(),
    };
    let broker = match state.broker.clone() {
        None => "not checked".to_string(),
        Some(probe) => {
            match tokio::task::spawn_blocking(move || probe.check(PROBE_TIMEOUT)).await {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(error)) => error,
                Err(error) => error.to_string(),
            }
        }
    };
    let catalog = match &state.catalog_loaded {
        None => "not checked",
        Some(loaded) if loaded.load(Ordering::Acquire) => "ok",
        Some(_) => "loading",
    };
    let ready = redis == "ok" && (broker == "ok" || state.broker.is_none()) && catalog != "loading";
    // Failing feature writes hold ingest back, not reads: this instance still serves what it has,
    // so it stays in the load balancer (every replica shares the failure) but says so.
    let ingest = state.store.write_failure();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let label = match (ready, &ingest) {
        (false, _) => "not_ready",
        (true, Some(_)) => "degraded",
        (true, None) => "ready",
    };
    let body = json!({
        "status": label,
        "checks": {
            "redis": redis,
            "broker": broker,
            "catalog": catalog,
            "ingest": ingest.map_or_else(|| "ok".to_string(), |failure| format!("writes failing: {failure}")),
        },
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> Result<String, AppError> {
    state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .ok_or_else(|| AppError::NotFound("/metrics".into()))
}
