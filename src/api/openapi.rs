//! The API's contract, generated from the handlers and their types: `GET /openapi.json`
//! (OpenAPI 3.1), and a page that renders it for people at `GET /docs`.

use std::sync::LazyLock;

use axum::Json;
use axum::response::{Html, IntoResponse};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "persona",
        description = "Fresh per-user and per-item features and recommendations, computed from a \
                       legacy application's Postgres writes. Every feature value carries a status \
                       (`present`, `missing`, `stale`); every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        super::features::user_features,
        super::features::product_features,
        super::features::entity_features,
        super::features::batch,
        super::recommendations::user_recommendations,
        super::probes::healthz,
        super::probes::readyz,
        super::probes::metrics,
    ),
    components(schemas(super::error::ErrorResponse)),
    tags(
        (name = "features", description = "Feature reads at a read time"),
        (name = "recommendations", description = "Ranked products for a user"),
        (name = "probes", description = "Liveness, readiness and metrics"),
    )
)]
struct ApiDoc;

/// Built once: the document does not change while the process runs.
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

pub(super) fn document() -> &'static utoipa::openapi::OpenApi {
    &DOCUMENT
}

pub(super) async fn openapi_json() -> impl IntoResponse {
    Json(document())
}

/// Redoc, from its CDN, rendering `/openapi.json`.
pub(super) async fn docs() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>persona API</title>",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head><body>",
        "<redoc spec-url=\"/openapi.json\"></redoc>",
        "<script src=\"https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js\"></script>",
        "</body></html>"
    ))
}

#[cfg(test)]
mod tests {
    use super::document;

    #[test]
    fn the_document_covers_every_api_route_with_its_errors() {
        let json = serde_json::to_value(document()).expect("serializes");
        assert!(json["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{json}");
        let paths = json["paths"].as_object().expect("paths");
        for path in [
            "/api/v1/users/{user_id}/features",
            "/api/v1/products/{product_id}/features",
            "/api/v1/features/batch",
            "/api/v1/users/{user_id}/recommendations",
        ] {
            let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing: {json}"));
            let operation = item.as_object().and_then(|ops| ops.values().next()).expect("op");
            for status in ["200", "400", "404", "503", "504"] {
                assert!(operation["responses"].get(status).is_some(), "{path} {status}");
            }
        }
        let schemas = json["components"]["schemas"].as_object().expect("schemas");
        for schema in
            ["EntityFeatures", "FeatureValue", "Answer", "Recommendation", "ErrorResponse"]
        {
            assert!(schemas.contains_key(schema), "{schema} missing");
        }
    }
}
