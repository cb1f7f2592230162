//! The whole HTTP app: the JSON API and the SSR pages under one set of tower layers. [`app`]
//! builds the router, so tests drive it with `oneshot`.
//!
//! Every request gets an `x-request-id` (kept if the caller sent one), a tracing span carrying it,
//! a time limit, and a place in a bounded concurrency budget beyond which it is shed with 503.

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::MatchedPath;
use axum::http::{Request, Uri};
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::{self, AppError};
use crate::config::ApiConfig;
use crate::serve::AppState;
use crate::web;

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
        .merge(api::routes())
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
