//! The HTTP API (axum): feature reads for SSR pages, health and readiness probes, Prometheus
//! metrics. [`app`] builds the whole router so tests can drive it with `oneshot`.
//!
//! Every request gets an `x-request-id` (kept if the caller sent one), a tracing span carrying it,
//! a time limit, and a place in a bounded concurrency budget beyond which it is shed with 503.

mod error;
mod features;
mod recommendations;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, State};
use axum::http::{Request, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::AppError;

use crate::cdc::BrokerProbe;
use crate::config::ApiConfig;
use crate::features::{FeatureSet, ProductCatalog};
use crate::recommend::Recommender;
use crate::store::FeatureStore;
use crate::web::{self, ActiveUsers};

pub use features::{EntityFeatures, MAX_BATCH, RankingCache, read_user_features};
pub use recommendations::{Answer, Degraded, Source, recommend_for};

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether this instance should receive traffic.
#[derive(Default)]
pub struct Readiness {
    draining: AtomicBool,
    /// Cancelled when draining starts: long-lived responses (live streams) end, so that the
    /// server's graceful shutdown does not wait for them forever.
    drain: tokio_util::sync::CancellationToken,
}

impl Readiness {
    /// From now on `/readyz` answers 503, so load balancers stop sending requests, and live
    /// streams close (browsers reconnect to another instance).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Resolves once draining has started.
    pub async fn draining(&self) {
        self.drain.cancelled().await;
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<FeatureStore>,
    pub features: Arc<FeatureSet>,
    pub catalog: Arc<ProductCatalog>,
    pub rankings: Arc<RankingCache>,
    /// Set once the product catalog has been read up to its end at start; `None` when no
    /// dimension reader runs (then readiness does not check it).
    pub catalog_loaded: Option<Arc<AtomicBool>>,
    pub readiness: Arc<Readiness>,
    /// `None` when no consumer runs (then readiness does not check the broker).
    pub broker: Option<BrokerProbe>,
    pub metrics: Option<PrometheusHandle>,
    /// The product index recommendations rank from.
    pub recommender: Arc<Recommender>,
    /// How long a page waits for a user's features before rendering popular products.
    pub render_deadline: Duration,
    /// Users seen active lately, for the storefront's user picker.
    pub active_users: Arc<ActiveUsers>,
    /// What the dashboard shows: sampled metrics, slot and connector health.
    pub ops: Arc<crate::ops::OpsView>,
}

pub fn app(state: AppState, config: &ApiConfig) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        tracing::info_span!("request", method = %request.method(), route, request_id = id)
    });
    Router::new()
        .route("/api/v1/users/{user_id}/features", get(features::user_features))
        .route("/api/v1/products/{product_id}/features", get(features::product_features))
        .route("/api/v1/features/batch", axum::routing::post(features::batch))
        .route(
            "/api/v1/users/{user_id}/recommendations",
            get(recommendations::user_recommendations),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(web::routes())
        .route_layer(axum::middleware::from_fn(record_latency))
        .fallback(not_found)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(HandleErrorLayer::new(overload_error))
                .load_shed()
                .concurrency_limit(config.max_concurrency)
                .timeout(config.request_timeout),
        )
        .with_state(state)
}

/// Records each routed request's latency (until the response head) under its route pattern, so
/// that user ids in paths do not become label values.
async fn record_latency(
    route: MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::histogram!(
        crate::telemetry::HTTP_REQUEST_SECONDS,
        "method" => method,
        "route" => route.as_str().to_owned(),
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}

async fn overload_error(error: BoxError) -> AppError {
    if error.is::<tower::timeout::error::Elapsed>() {
        AppError::Timeout
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        AppError::Overloaded
    } else {
        AppError::Internal(error.to_string())
    }
}

async fn not_found(uri: Uri) -> AppError {
    AppError::NotFound(uri.path().to_string())
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
