//! Probes for load balancers and orchestrators, and the Prometheus exposition.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use super::AppError;
use super::error::ErrorResponse;
use crate::serve::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Whether this instance should get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ReadinessStatus {
    Ready,
    /// Ready, but feature writes fail for a reason that needs someone to act (`checks.ingest`):
    /// reads still work.
    Degraded,
    NotReady,
    /// Shutting down: take this instance out of the load balancer.
    Draining,
}

/// Each dependency's state: `ok`, or what is wrong with it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Checks {
    redis: String,
    /// `not checked` when this instance runs no ingest.
    broker: String,
    /// `ok`, `loading` (not read up to its end yet) or `not checked`.
    catalog: String,
    /// `ok`, or `writes failing: …`.
    ingest: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Readiness {
    status: ReadinessStatus,
    /// Absent while draining.
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<Checks>,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process answers", body = Health))
)]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: not draining, Redis answers, and (when ingest runs) a broker answers and the
/// product catalog is loaded.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready (or degraded: reads work, feature writes fail)", body = Readiness),
        (status = 503, description = "Not ready, or draining", body = Readiness),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    if state.readiness.is_draining() {
        let body = Readiness { status: ReadinessStatus::Draining, checks: None };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
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
    let catalog = match state.catalog_loaded.as_slice() {
        [] => "not checked",
        loaded if loaded.iter().all(|flag| flag.load(Ordering::Acquire)) => "ok",
        _ => "loading",
    };
    let ready = redis == "ok" && (broker == "ok" || state.broker.is_none()) && catalog != "loading";
    // Failing feature writes hold ingest back, not reads: this instance still serves what it has,
    // so it stays in the load balancer (every replica shares the failure) but says so.
    let ingest = state.store.write_failure();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let status = match (ready, &ingest) {
        (false, _) => ReadinessStatus::NotReady,
        (true, Some(_)) => ReadinessStatus::Degraded,
        (true, None) => ReadinessStatus::Ready,
    };
    let checks = Checks {
        redis,
        broker,
        catalog: catalog.to_string(),
        ingest: ingest
            .map_or_else(|| "ok".to_string(), |failure| format!("writes failing: {failure}")),
    };
    (code, Json(Readiness { status, checks: Some(checks) }))
}

/// The Prometheus exposition (text format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "Every metric, described", body = String, content_type = "text/plain"),
        (status = 404, description = "No metrics recorder in this process", body = ErrorResponse),
    )
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<String, AppError> {
    state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .ok_or_else(|| AppError::NotFound("/metrics".into()))
}
