//! The whole HTTP app: the JSON API and the SSR pages under one set of tower layers. [`app`]
//! builds the router, so tests drive it with `oneshot`.
//!
//! Every request gets an `x-request-id` (kept if the caller sent one), a tracing span carrying it,
//! a time limit, and a place in a bounded concurrency budget beyond which it is shed with 503.

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{MatchedPath, State};
use axum::http::{Method, Request, Uri};
use metrics::Histogram;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::{self, AppError};
use crate::config::ApiConfig;
use crate::serve::AppState;
use crate::web;

pub fn app(state: AppState, config: &ApiConfig) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    // The span is made before routing (no route pattern yet), for every request: its fields are
    // borrowed, not copied, since the log formatter renders them once anyway.
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let path = request.uri().path();
        let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok());
        tracing::info_span!("request", method = %request.method(), path, request_id = id.unwrap_or_default())
    });
    let routes = Router::new()
        .merge(api::routes())
        .merge(web::routes(config))
        .route_layer(axum::middleware::from_fn_with_state(
            LatencyHistograms::default(),
            record_latency,
        ))
        .fallback(not_found);
    with_limits(routes, config)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(state)
}

/// The budget every request runs within: at most `max_concurrency` in progress, the next ones
/// answered 503 with `Retry-After` at once (queueing them would only make every caller wait),
/// and each cut off after `request_timeout`.
///
/// `Router::layer` wraps each route on its own, so the budget is a semaphore shared by every
/// route (a plain `concurrency_limit` would give each route a budget of its own).
fn with_limits<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    config: &ApiConfig,
) -> Router<S> {
    routes.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overload_error))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(config.max_concurrency))
            .timeout(config.request_timeout),
    )
}

/// The request duration histograms by route pattern, method and status, registered once each:
/// looking one up by its labels on every request would allocate and hash three strings.
#[derive(Clone, Default)]
struct LatencyHistograms(Arc<RwLock<HashMap<String, Vec<RouteHistogram>>>>);

/// One route's histogram for one method and status.
type RouteHistogram = (Method, u16, Histogram);

impl LatencyHistograms {
    fn get(&self, route: &str, method: &Method, status: u16) -> Histogram {
        let known =
            self.0.read().unwrap_or_else(PoisonError::into_inner).get(route).and_then(|by_kind| {
                by_kind
                    .iter()
                    .find(|(m, s, _)| m == method && *s == status)
                    .map(|(.., h)| h.clone())
            });
        if let Some(histogram) = known {
            return histogram;
        }
        let histogram = metrics::histogram!(
            crate::telemetry::HTTP_REQUEST_SECONDS,
            "method" => method.as_str().to_owned(),
            "route" => route.to_owned(),
            "status" => status.to_string()
        );
        let mut routes = self.0.write().unwrap_or_else(PoisonError::into_inner);
        routes.entry(route.to_owned()).or_default().push((
            method.clone(),
            status,
            histogram.clone(),
        ));
        histogram
    }
}

/// Records each routed request's latency (until the response head) under its route pattern, so
/// that user ids in paths do not become label values.
async fn record_latency(
    State(histograms): State<LatencyHistograms>,
    route: MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    histograms
        .get(route.as_str(), &method, response.status().as_u16())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn limited(release: Arc<tokio::sync::Notify>) -> Router {
        let config = ApiConfig {
            max_concurrency: 1,
            request_timeout: Duration::from_secs(1),
            ..ApiConfig::default()
        };
        let routes = Router::new()
            .route(
                "/held",
                get(move || async move {
                    release.notified().await;
                    "done"
                }),
            )
            .route("/quick", get(|| async { "quick" }))
            .route("/stuck", get(std::future::pending::<&str>));
        with_limits(routes, &config)
    }

    async fn send(router: &Router, uri: &str) -> axum::response::Response {
        let request = Request::builder().uri(uri).body(Body::empty()).expect("request");
        router.clone().oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn past_the_concurrency_budget_requests_are_shed_at_once_with_retry_after() {
        let release = Arc::new(tokio::sync::Notify::new());
        let router = limited(Arc::clone(&release));
        let held = tokio::spawn({
            let router = router.clone();
            async move { send(&router, "/held").await }
        });
        // Poll until the held request occupies the only slot: then a second one is shed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let shed = loop {
            let response = send(&router, "/quick").await;
            if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                break response;
            }
            assert!(tokio::time::Instant::now() < deadline, "never shed while a request was held");
            tokio::task::yield_now().await;
        };
        assert_eq!(shed.headers()["retry-after"], crate::serve::RETRY_AFTER);
        let body = axum::body::to_bytes(shed.into_body(), 1 << 16).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON error");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        release.notify_one();
        assert_eq!(held.await.expect("held request").status(), StatusCode::OK);
        assert_eq!(
            send(&router, "/quick").await.status(),
            StatusCode::OK,
            "the slot is free again"
        );
    }

    #[tokio::test]
    async fn a_request_past_its_time_limit_is_answered_504() {
        let router = limited(Arc::new(tokio::sync::Notify::new()));
        let response = send(&router, "/stuck").await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get("retry-after").is_none());
    }
}
