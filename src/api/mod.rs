//! The JSON API (axum): feature reads and recommendations for SSR pages and other callers,
//! its OpenAPI document (`/openapi.json`, `/docs`), health and readiness probes, Prometheus
//! metrics. Its routes join the pages' in `crate::http`.

mod error;
mod features;
mod openapi;
mod probes;
mod recommendations;

use axum::Router;
use axum::routing::get;

pub use error::{AppError, FailureDetail};
pub use features::MAX_BATCH;

use crate::serve::AppState;

/// The JSON API, the probes and the metrics.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/{user_id}/features", get(features::user_features))
        .route("/api/v1/products/{product_id}/features", get(features::product_features))
        .route("/api/v1/entities/{entity}/{id}/features", get(features::entity_features))
        .route("/api/v1/features/batch", axum::routing::post(features::batch))
        .route(
            "/api/v1/users/{user_id}/recommendations",
            get(recommendations::user_recommendations),
        )
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
}
