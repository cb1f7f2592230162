//! The whole HTTP app: the JSON API and the SSR pages under one set of tower layers. [`app`]
//! builds the router, so tests drive it with `oneshot`.
//!
//! Every request gets an `x-request-id` (kept if the caller sent one), a time limit, and a place
//! in a bounded concurrency budget beyond which it is shed with 503. A failed request (a 5xx
//! other than shedding) is logged at ERROR with its id, status, latency and what went wrong.
//! Each request also has a tracing span with its method, path and id, at DEBUG
//! (`RUST_LOG=info,persona::http=debug` shows them): at INFO, rendering it cost a tenth of a
//! cached feature read.

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{MatchedPath, State};
use axum::http::{Method, Request, StatusCode, Uri};
use metrics::Histogram;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::{self, AppError, FailureDetail};
use crate::config::ApiConfig;
use crate::serve::AppState;
use crate::web;

pub fn app(state: AppState, config: &ApiConfig) -> Router {
    let routes = Router::new()
        .merge(api::routes())
        .merge(web::routes(config))
        .route_layer(axum::middleware::from_fn_with_state(
            LatencyHistograms::default(),
            record_latency,
        ))
        .fallback(not_found);
    with_request_ids(with_limits(routes, config)).with_state(state)
}

/// Gives every request an id (the caller's `x-request-id`, or a new UUID), echoes it on the
/// response, and logs failed requests with it.
fn with_request_ids<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    let request_id = axum::http::HeaderName::from_static(REQUEST_ID);
    // The span is made before routing, so it has the path, not the route pattern.
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let path = request.uri().path();
            let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
            let id = id.unwrap_or_default();
            tracing::debug_span!("request", method = %request.method(), path, request_id = id)
        })
        .on_response(log_failure)
        // tower-http's default logs every 5xx at ERROR, sheds included, without the detail.
        .on_failure(());
    routes.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(trace)
            .layer(PropagateRequestIdLayer::new(request_id)),
    )
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

const REQUEST_ID: &str = "x-request-id";

/// Logs a failed request with its id (already on the response), status, latency and detail.
/// Shedding (503) is left to the metrics: logging it would flood the log exactly when the
/// server is busiest.
fn log_failure(response: &axum::response::Response, latency: Duration, _: &tracing::Span) {
    let status = response.status();
    if !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    let id = response.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
    let detail = response.extensions().get::<FailureDetail>().map(|d| d.0.as_str());
    tracing::error!(
        request_id = id.unwrap_or_default(),
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        detail = detail.unwrap_or_default(),
        "request failed"
    );
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

    /// The log lines written while a test holds the returned guard.
    fn capture_logs() -> (Arc<std::sync::Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(Arc::clone(&lines));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test]
    async fn a_failed_request_is_logged_with_its_id_and_detail_and_the_caller_sees_neither_detail()
    {
        let router: Router = with_request_ids(
            Router::new()
                .route("/boom", get(|| async { AppError::Internal("disk on fire".into()) }))
                .route("/fine", get(|| async { "fine" })),
        );
        let (lines, _guard) = capture_logs();
        let request = |uri: &str| {
            Request::builder()
                .uri(uri)
                .header(REQUEST_ID, "req-42")
                .body(Body::empty())
                .expect("request")
        };
        let fine = router.clone().oneshot(request("/fine")).await.expect("infallible");
        assert_eq!(fine.status(), StatusCode::OK);
        let logged = String::from_utf8(lines.lock().expect("logs").clone()).expect("utf-8");
        assert!(logged.is_empty(), "a success logs nothing at info: {logged}");

        let failed = router.oneshot(request("/boom")).await.expect("infallible");
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(failed.headers()[REQUEST_ID], "req-42", "the id is echoed");
        let body = axum::body::to_bytes(failed.into_body(), 1 << 16).await.expect("body");
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("disk on fire"), "internals stay in the log: {body}");
        let logged = String::from_utf8(lines.lock().expect("logs").clone()).expect("utf-8");
        for part in ["ERROR", "request failed", "req-42", "status=500", "disk on fire"] {
            assert!(logged.contains(part), "{part:?} missing from {logged:?}");
        }
        assert_eq!(logged.lines().count(), 1, "one line per failure: {logged}");
    }

    #[tokio::test]
    async fn a_request_past_its_time_limit_is_answered_504() {
        let router = limited(Arc::new(tokio::sync::Notify::new()));
        let response = send(&router, "/stuck").await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get("retry-after").is_none());
    }
}
