//! The HTTP API in process (`app(state)` driven with `oneshot`), backed by the stack's real
//! Redis: bad requests are 4xx JSON errors naming the problem; every response has a request id.

use crate::common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use persona::config::{ApiConfig, CacheConfig, RedisConfig, Sensitive};
use persona::features::{
    Entity, EntityState, FeatureSet, Position, Product, ProductCatalog, Scalar, SourceChange,
    SourceRow, SourceTable, apply,
};
use persona::http::app;
use persona::recommend::Recommender;
use persona::serve::{
    ActiveUsers, EvaluationCache, Readiness, RecommendationCache, Services, Watchers,
};
use persona::store::{EntityRef, FeatureStore, TableMarks};
use serde_json::Value;
use tower::ServiceExt;

async fn router() -> axum::Router {
    app(state().await.into(), &ApiConfig::default())
}

async fn state() -> Services {
    let redis = RedisConfig {
        url: Sensitive(common::env("PERSONA_REDIS__URL")),
        key_prefix: common::unique("api"),
        ..RedisConfig::default()
    };
    let store = FeatureStore::connect(&redis, &CacheConfig::default()).await.expect("redis");
    Services {
        store: Arc::new(store),
        features: Arc::new(FeatureSet::load(None).expect("definitions")),
        catalog: Arc::new(ProductCatalog::default()),
        evaluations: Arc::new(EvaluationCache::new(
            ApiConfig::default().evaluation_granularity,
            ApiConfig::default().cache_bytes,
        )),
        recommendations: Arc::new(RecommendationCache::new(ApiConfig::default().cache_bytes)),
        catalog_loaded: Vec::new(),
        readiness: Arc::new(Readiness::default()),
        broker: None,
        metrics: None,
        recommender: Arc::new(Recommender::default()),
        render_deadline: std::time::Duration::from_millis(50),
        active_users: Arc::new(ActiveUsers::default()),
        watchers: Arc::new(Watchers::new(ApiConfig::default().max_streams)),
        ops: Arc::new(persona::ops::OpsView::default()),
    }
}

async fn call(router: &axum::Router, uri: &str) -> (StatusCode, Option<String>, Value) {
    send(router, Request::builder().uri(uri).body(Body::empty()).expect("request")).await
}

async fn post(router: &axum::Router, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let (status, _, body) = send(router, request).await;
    (status, body)
}

async fn send(
    router: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, Option<String>, Value) {
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let request_id =
        response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(String::from);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, request_id, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_problem() {
    let router = router().await;

    let (status, _, body) = call(&router, "/api/v1/users/u1/features?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("colour"), "{body}");

    let (status, _, body) = call(&router, "/api/v1/users/u1/features?names=clicks_2m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("clicks_2m"), "{body}");

    let long = "x".repeat(200);
    let (status, _, body) = call(&router, &format!("/api/v1/users/{long}/features")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("user id"), "{body}");

    let (status, _, body) = call(&router, "/api/v1/users/u1/features?at=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("at"), "{body}");
    let (status, _, body) =
        call(&router, "/api/v1/users/u1/features?at=2020-01-01T00:00:00Z").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("history"), "{body}");

    let (status, _, body) = call(&router, "/api/v1/products/p1/features?names=clicks_1m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("product feature"), "{body}");

    let (status, _, body) = call(&router, "/api/v1/users/a%07b/features").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _, body) = call(&router, "/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test]
async fn names_select_features_and_unknown_users_are_missing() {
    let router = router().await;
    let (status, request_id, body) =
        call(&router, "/api/v1/users/nobody/features?names=clicks_1m,last_viewed_product").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(request_id.is_some_and(|id| !id.is_empty()));
    let features = body["features"].as_object().expect("features");
    let mut names: Vec<&str> = features.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["clicks_1m", "last_viewed_product"]);
    assert!(features.values().all(|f| f["status"] == "missing"), "{body}");
    assert_eq!(body["freshness"], "live");
}

#[tokio::test]
async fn probes_answer() {
    let router = router().await;
    let (status, _, _) = call(&router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&router, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn batch_answers_every_entity_in_order_and_rejects_bad_bodies() {
    let router = router().await;
    let (status, body) = post(
        &router,
        "/api/v1/features/batch",
        r#"{"entities": [{"entity": "user", "id": "nobody", "names": ["clicks_1m"]},
                         {"entity": "product", "id": "p-none"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["id"], "nobody");
    assert_eq!(results[0]["features"].as_object().map(|f| f.len()), Some(1), "{body}");
    assert_eq!(results[1]["entity"], "product");
    assert_eq!(results[1]["features"]["views_1h"]["status"], "missing", "{body}");

    for (bad, needle) in [
        ("{", "JSON"),
        (r#"{"entities": []}"#, "entities"),
        (r#"{"entities": [{"entity": "shop", "id": "x"}]}"#, "entity"),
        (r#"{"entities": [{"entity": "user", "id": "x", "names": ["views_1h"]}]}"#, "entities[0]"),
        (r#"{"entities": [{"entity": "user", "id": "x"}], "extra": 1}"#, "extra"),
    ] {
        let (status, body) = post(&router, "/api/v1/features/batch", bad).await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
        assert!(error_message(&body).contains(needle), "{bad}: {body}");
    }
    let many: Vec<String> = (0..=persona::api::MAX_BATCH)
        .map(|i| format!(r#"{{"entity":"user","id":"u{i}"}}"#))
        .collect();
    let (status, body) =
        post(&router, "/api/v1/features/batch", &format!(r#"{{"entities":[{}]}}"#, many.join(",")))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("at most"), "{body}");
}

/// A click of `user` on `product`, now, as ingest would apply it to the user's share.
fn clicked(set: &FeatureSet, user: &str, product: &str, share: &mut EntityState, lsn: i64) {
    act(set, (Entity::USER, user), "CLICK", product, share, lsn);
}

/// An activity of `user` on `product`, now, as ingest would apply it to `entity`'s share.
fn act(
    set: &FeatureSet,
    (entity, user): (Entity, &str),
    kind: &str,
    product: &str,
    share: &mut EntityState,
    lsn: i64,
) {
    let now = chrono::Utc::now();
    let text = |value: &str| Scalar::Text(value.into());
    let columns = [
        ("id", text(&format!("click-{lsn}"))),
        ("user_id", text(user)),
        ("activity_type", text(kind)),
        ("product_id", text(product)),
        ("activity_timestamp", Scalar::Time(now.timestamp_micros())),
    ];
    let row = SourceRow::reference(format!("click-{lsn}"), columns, now);
    let change = SourceChange {
        table: SourceTable::new("user_activity"),
        before: None,
        after: Some(row),
        position: Some(Position(lsn, lsn, 1)),
        snapshot: None,
        run: None,
        processed_ms: None,
        truncated: None,
        truncate: false,
        committed_ms: Some(now.timestamp_millis()),
        replay: false,
        overlapped: false,
    };
    let id = if entity == Entity::USER { user } else { product };
    apply(set, entity, id, share, &change, "user_activity/0", now);
}

/// Reads at "now" reuse an evaluation only while nothing it came from changed: a new change of
/// the user, or of a product its features join through, is served at once.
#[tokio::test]
async fn a_reused_evaluation_never_hides_a_change() {
    let state = state().await;
    let (store, catalog, set, _) = handles(&state);
    let router = app(state.into(), &ApiConfig::default());
    let user = common::unique("cached");
    catalog.upsert(product("p1", "shoes"));
    let uri = format!("/api/v1/users/{user}/features?names=clicks_1m,category_clicks_1h");
    let key = EntityRef::user(&user).share("user_activity/0");
    let mut share = EntityState::default();
    let mut previous_at = None;
    for click in 1..=3 {
        clicked(&set, &user, "p1", &mut share, click);
        store
            .write_states(vec![(key.clone(), share.clone())], &TableMarks::default(), None)
            .await
            .expect("write");
        // The write updated L1 before returning: the very next read sees it.
        let (status, _, body) = call(&router, &uri).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["features"]["clicks_1m"]["value"], click, "{body}");
        assert_eq!(body["features"]["category_clicks_1h"]["value"]["shoes"], click, "{body}");
        // Unchanged, a second read is the same evaluation (same read time).
        let (_, _, again) = call(&router, &uri).await;
        assert_eq!(again["features"], body["features"]);
        previous_at = Some(body["at"].clone());
    }
    catalog.upsert(product("p1", "boots"));
    let (_, _, body) = call(&router, &uri).await;
    assert_eq!(body["features"]["category_clicks_1h"]["value"]["boots"], 3, "{body}");
    assert!(body["features"]["category_clicks_1h"]["value"].get("shoes").is_none(), "{body}");
    assert_ne!(Some(body["at"].clone()), previous_at, "re-evaluated after the catalog changed");
}

/// The services a test drives besides the router.
fn handles(
    state: &Services,
) -> (Arc<FeatureStore>, Arc<ProductCatalog>, Arc<FeatureSet>, Arc<Recommender>) {
    (
        Arc::clone(&state.store),
        Arc::clone(&state.catalog),
        Arc::clone(&state.features),
        Arc::clone(&state.recommender),
    )
}

fn product(id: &str, category: &str) -> Product {
    Product::reference(id, None, Some(category), None, None)
}

/// Batches at "now" and recommendations reuse evaluations and answers the same way: a change of
/// the user, or a new product index, is served at once.
#[tokio::test]
async fn reused_batches_and_recommendations_never_hide_a_change() {
    let state = state().await;
    let (store, catalog, set, recommender) = handles(&state);
    let router = app(state.into(), &ApiConfig::default());
    let user = common::unique("reused");
    catalog.upsert(product("p1", "shoes"));
    catalog.upsert(product("p2", "boots"));
    let rebuild_index = || {
        let index = catalog.read(|products| {
            persona::recommend::ProductIndex::build(products, &Default::default(), None)
        });
        recommender.replace(index);
    };
    rebuild_index();
    let recommendations = format!("/api/v1/users/{user}/recommendations");
    let batch = format!(
        r#"{{"names": ["clicks_1m"], "entities": [{{"entity": "user", "id": "{user}"}}, {{"entity": "user", "id": "{user}-other"}}]}}"#
    );
    let key = EntityRef::user(&user).share("user_activity/0");
    let mut share = EntityState::default();
    for (click, product, top) in [(1, "p1", "p1"), (2, "p2", "p1"), (3, "p2", "p2")] {
        clicked(&set, &user, product, &mut share, click);
        store
            .write_states(vec![(key.clone(), share.clone())], &TableMarks::default(), None)
            .await
            .expect("write");
        for _ in 0..2 {
            let (status, body) = post(&router, "/api/v1/features/batch", &batch).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["results"][0]["features"]["clicks_1m"]["value"], click, "{body}");
            assert_eq!(body["results"][1]["features"]["clicks_1m"]["status"], "missing");
            assert!(body["results"][0]["at"].is_string(), "each result says when: {body}");

            let (status, _, body) = call(&router, &recommendations).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["source"], "personalized", "{body}");
            assert_eq!(body["recommendations"][0]["product_id"], top, "click {click}: {body}");
        }
    }
    let listed = |body: &Value| -> Vec<String> {
        body["recommendations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["product_id"].as_str().map(String::from))
            .collect()
    };
    let (_, _, before) = call(&router, &recommendations).await;
    assert!(!listed(&before).contains(&"p3".to_string()), "{before}");
    // A new index over the same catalog (as the refresher builds when trending scores move):
    // the user's evaluation is reused, the answer is not.
    let mut products = catalog.read(Clone::clone);
    products.insert("p3".into(), product("p3", "boots"));
    recommender.replace(persona::recommend::ProductIndex::build(
        &products,
        &Default::default(),
        None,
    ));
    let (_, _, after) = call(&router, &recommendations).await;
    assert!(listed(&after).contains(&"p3".to_string()), "a new index is used at once: {after}");
}

/// Live streams have their own budget: past it a new stream is refused with 503 and
/// `Retry-After` (which `EventSource` honours), and a closed stream frees its place.
#[tokio::test]
async fn live_streams_past_their_budget_are_refused_until_one_closes() {
    let mut state = state().await;
    state.watchers = Arc::new(Watchers::new(1));
    let router = app(state.into(), &ApiConfig::default());
    let open = |uri: &'static str| {
        let router = router.clone();
        async move {
            let request = Request::builder().uri(uri).body(Body::empty()).expect("request");
            router.oneshot(request).await.expect("infallible")
        }
    };
    let first = open("/u/alice/live").await;
    assert_eq!(first.status(), StatusCode::OK);
    let refused = open("/u/bob/live").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], persona::serve::RETRY_AFTER);
    drop(first);
    assert_eq!(
        open("/u/bob/live").await.status(),
        StatusCode::OK,
        "a closed stream frees its place"
    );
}

/// Percentiles at "now" rank among the values the index refresher keeps: a product's change
/// reaches the ranking through the store's change notifications, and only that product is
/// evaluated again.
#[tokio::test]
async fn percentiles_at_now_follow_product_changes_through_the_kept_ranking() {
    let state = state().await;
    let (store, catalog, set, recommender) = handles(&state);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    store.spawn_invalidation_listener(shutdown.clone());
    for id in ["p1", "p2", "p3"] {
        catalog.upsert(product(id, "shoes"));
    }
    recommender.spawn_refresher(
        Arc::clone(&store),
        Arc::clone(&set),
        Arc::clone(&catalog),
        std::time::Duration::from_millis(100),
        shutdown.clone(),
    );
    let router = app(state.into(), &ApiConfig::default());
    let mut lsn = 0;
    let mut view = |product: &str, times: i64, share: &mut EntityState| {
        for _ in 0..times {
            lsn += 1;
            act(&set, (Entity::PRODUCT, "u1"), "VIEW_PRODUCT", product, share, lsn);
        }
    };
    let write = |product: &str, share: &EntityState| {
        let key = EntityRef::product(product).share("user_activity/0");
        let store = Arc::clone(&store);
        let share = share.clone();
        async move {
            store
                .write_states(vec![(key, share)], &TableMarks::default(), None)
                .await
                .expect("write")
        }
    };
    let percentiles = || async {
        let mut served = Vec::new();
        for id in ["p1", "p2", "p3"] {
            let uri = format!("/api/v1/products/{id}/features?names=popularity_percentile");
            let (_, _, body) = call(&router, &uri).await;
            served.push(body["features"]["popularity_percentile"]["value"].clone());
        }
        served
    };
    // Refreshed every 100 ms: a few seconds are plenty, and short enough that the next minute
    // boundary (when p3's trending bucket ends and it is due anyway) seldom hides a missed change.
    let settles = |expected: [i64; 3]| {
        let percentiles = &percentiles;
        let recommender = &recommender;
        async move {
            let what = format!("percentiles {expected:?} from the kept ranking");
            common::eventually(&what, std::time::Duration::from_secs(5), || async {
                let kept = recommender.index().rankings.contains_key("views_1h");
                let served = percentiles().await;
                (kept && served == expected.map(serde_json::Value::from))
                    .then_some(())
                    .ok_or(format!("kept ranking: {kept}, served {served:?}"))
            })
            .await
        }
    };

    let mut shares: Vec<EntityState> = vec![EntityState::default(); 3];
    for (product, views) in [("p1", 2), ("p2", 1), ("p3", 1)] {
        let share = &mut shares[usize::from(product.as_bytes()[1] - b'1')];
        view(product, views, share);
        write(product, share).await;
    }
    // Views: p1 2, p2 1, p3 1.
    settles([100, 0, 0]).await;
    view("p3", 4, &mut shares[2]);
    write("p3", &shares[2]).await;
    // Views: p1 2, p2 1, p3 5.
    settles([50, 0, 100]).await;
}
