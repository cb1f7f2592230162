//! Feature reads: one user, one product, one entity of any declared kind, or a batch. Every value
//! carries its status (`present`, `missing`, `stale`) and event time. An unknown id is an answer
//! (every feature missing), not an error; an undeclared entity or an id of the wrong kind is.
//!
//! - `GET /api/v1/users/{id}/features?names=a,b&at=<RFC 3339>` (the shopper entity)
//! - `GET /api/v1/products/{id}/features?names=…&at=…` (the item entity)
//! - `GET /api/v1/entities/{entity}/{id}/features?names=…&at=…`
//! - `POST /api/v1/features/batch` with `{"at"?, "names"?, "entities": [{"entity", "id", "names"?}]}`

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::AppError;
use super::error::ErrorResponses;
use crate::features::{Entity, FeatureSet, IdKind};
use crate::serve::{
    AppState, EntityFeatures, Evaluated, FeatureRequest, read_and_evaluate, read_now, read_now_many,
};
use crate::store::EntityRef;

const MAX_ID_LEN: usize = 128;
/// Most entities one batch request may ask for.
pub const MAX_BATCH: usize = 500;
/// A read time may be this far ahead of the server's clock (clock skew between callers).
const MAX_FUTURE: TimeDelta = TimeDelta::seconds(60);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FeaturesQuery {
    /// Comma-separated feature names; all when absent.
    names: Option<String>,
    /// RFC 3339 read time, within the features' history; now when absent.
    #[param(format = DateTime)]
    at: Option<String>,
}

/// One entity's features at a read time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct FeaturesResponse {
    /// The read time windows were evaluated at.
    at: DateTime<Utc>,
    #[serde(flatten)]
    result: EntityFeatures,
}

/// Several entities read at one read time.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// RFC 3339 read time, within the features' history; now when absent.
    #[schema(format = DateTime)]
    at: Option<String>,
    /// Names for every entity that does not list its own.
    names: Option<Vec<String>>,
    #[schema(min_items = 1, max_items = 500)]
    entities: Vec<BatchEntity>,
}

/// One entity of a batch, with the features wanted of it (the batch's `names`, or all, when
/// absent).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchEntity {
    entity: Entity,
    #[schema(min_length = 1, max_length = 128)]
    id: String,
    names: Option<Vec<String>>,
}

/// A batch's answer. At an explicit read time every result is evaluated at it; at "now" each
/// result carries the time its values were evaluated at, within `api.evaluation_granularity`
/// of the batch's `at` (see the single reads).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct BatchResponse {
    /// The read time asked for (now when the request named none).
    at: DateTime<Utc>,
    /// In request order.
    results: Vec<FeaturesResponse>,
}

pub(super) fn validate_id(kind: &str, id: &str) -> Result<(), AppError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(AppError::BadRequest(format!(
            "{kind} id must be 1 to {MAX_ID_LEN} bytes long"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(AppError::BadRequest(format!("{kind} id must not contain control characters")));
    }
    Ok(())
}

/// Checks that `entity` is declared and `id` is one of its ids.
pub(super) fn check_entity(set: &FeatureSet, entity: Entity, id: &str) -> Result<(), AppError> {
    let schema = set.entity(entity.label()).ok_or_else(|| {
        let known: Vec<&str> = set.entities.iter().map(|s| s.entity.label()).collect();
        AppError::BadRequest(format!(
            "entity {:?} is not declared (entities: {})",
            entity.label(),
            known.join(", ")
        ))
    })?;
    validate_id(entity.label(), id)?;
    if schema.id == IdKind::Integer && id.parse::<i64>().is_err() {
        return Err(AppError::BadRequest(format!(
            "{} ids are integers, and {id:?} is not one",
            entity.label()
        )));
    }
    Ok(())
}

fn parse_at(at: Option<&str>, set: &FeatureSet) -> Result<(DateTime<Utc>, bool), AppError> {
    let now = Utc::now();
    let Some(text) = at else { return Ok((now, false)) };
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|e| AppError::BadRequest(format!("at {text:?} is not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    let oldest = now - TimeDelta::from_std(set.history).unwrap_or(TimeDelta::zero());
    if at < oldest {
        return Err(AppError::BadRequest(format!(
            "at {text:?} is older than the history kept ({}): windows before {} are gone",
            humantime::format_duration(set.history),
            oldest.to_rfc3339()
        )));
    }
    if at > now + MAX_FUTURE {
        return Err(AppError::BadRequest(format!("at {text:?} is in the future")));
    }
    Ok((at, true))
}

fn check_names(
    set: &FeatureSet,
    entity: Entity,
    names: Vec<String>,
) -> Result<Option<Vec<String>>, AppError> {
    if names.is_empty() {
        return Err(AppError::BadRequest("names is empty".into()));
    }
    if let Some(unknown) =
        names.iter().find(|name| set.get(name).is_none_or(|f| f.entity != entity))
    {
        return Err(AppError::BadRequest(format!(
            "unknown {} feature name {unknown:?}",
            entity.label()
        )));
    }
    Ok(Some(names))
}

fn split_names(names: Option<&str>) -> Option<Vec<String>> {
    names.map(|names| {
        names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
    })
}

/// A user's features (the shopper entity's): every feature, or those named, each with its status
/// and event time.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/features",
    tag = "features",
    params(("user_id" = String, Path, description = "The user's id as the legacy tables hold it", min_length = 1, max_length = 128), FeaturesQuery),
    responses(
        (status = 200, description = "The user's features (an unknown user has every feature missing)", body = FeaturesResponse),
        ErrorResponses,
    )
)]
pub(super) async fn user_features(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path(id) = path?;
    let shopper = state.features.shopper;
    one_entity(state, shopper, id, query).await
}

/// A product's features (the item entity's).
#[utoipa::path(
    get,
    path = "/api/v1/products/{product_id}/features",
    tag = "features",
    params(("product_id" = String, Path, description = "The product's id", min_length = 1, max_length = 128), FeaturesQuery),
    responses(
        (status = 200, description = "The product's features", body = FeaturesResponse),
        ErrorResponses,
    )
)]
pub(super) async fn product_features(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path(id) = path?;
    let item = state.features.item;
    one_entity(state, item, id, query).await
}

/// The features of an entity of any declared kind (`[[entity]]`: `user`, `product`, `store`, …).
#[utoipa::path(
    get,
    path = "/api/v1/entities/{entity}/{id}/features",
    tag = "features",
    params(
        ("entity" = String, Path, description = "A declared entity", min_length = 1, max_length = 64),
        ("id" = String, Path, description = "The entity's id as the legacy tables hold it", min_length = 1, max_length = 128),
        FeaturesQuery
    ),
    responses(
        (status = 200, description = "The entity's features (an unknown id has every feature missing)", body = FeaturesResponse),
        ErrorResponses,
    )
)]
pub(super) async fn entity_features(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Path((entity, id)) = path?;
    let entity = state.features.entity(&entity).map(|schema| schema.entity).ok_or_else(|| {
        let known: Vec<&str> = state.features.entities.iter().map(|s| s.entity.label()).collect();
        AppError::NotFound(format!(
            "entity {entity:?} is not declared (entities: {})",
            known.join(", ")
        ))
    })?;
    one_entity(state, entity, id, query).await
}

async fn one_entity(
    state: AppState,
    entity: Entity,
    id: String,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query?;
    check_entity(&state.features, entity, &id)?;
    let names = match split_names(query.names.as_deref()) {
        Some(names) => check_names(&state.features, entity, names)?,
        None => None,
    };
    let request = FeatureRequest { entity: EntityRef { entity, id }, names };
    if query.at.is_none() {
        let evaluated = read_now(&state, request).await;
        return Ok(json_body(evaluated.json().clone()));
    }
    let (at, explicit_at) = parse_at(query.at.as_deref(), &state.features)?;
    let mut results = read_and_evaluate(&state, vec![request], at, explicit_at).await;
    let result = results.pop().ok_or_else(|| AppError::Internal("no result".into()))?;
    Ok(Json(FeaturesResponse { at, result }).into_response())
}

fn json_body(body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Features of many users and products at one read time, with one Redis round trip at most.
#[utoipa::path(
    post,
    path = "/api/v1/features/batch",
    tag = "features",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per entity, in request order", body = BatchResponse),
        ErrorResponses,
    )
)]
pub(super) async fn batch(
    State(state): State<AppState>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    if body.entities.is_empty() {
        return Err(AppError::BadRequest("entities is empty".into()));
    }
    if body.entities.len() > MAX_BATCH {
        return Err(AppError::BadRequest(format!(
            "entities lists {} entities; at most {MAX_BATCH} per request",
            body.entities.len()
        )));
    }
    let at = match body.at.as_deref() {
        Some(text) => Some(parse_at(Some(text), &state.features)?.0),
        None => None,
    };
    let mut requests = Vec::with_capacity(body.entities.len());
    for (index, item) in body.entities.into_iter().enumerate() {
        check_entity(&state.features, item.entity, &item.id)
            .map_err(|e| AppError::BadRequest(format!("entities[{index}]: {e}")))?;
        let names = match item.names.or_else(|| body.names.clone()) {
            Some(names) => check_names(&state.features, item.entity, names)
                .map_err(|e| AppError::BadRequest(format!("entities[{index}]: {e}")))?,
            None => None,
        };
        requests
            .push(FeatureRequest { entity: EntityRef { entity: item.entity, id: item.id }, names });
    }
    let Some(at) = at else {
        let asked = Utc::now();
        let evaluated = read_now_many(&state, requests).await;
        return Ok(json_body(batch_at_now(asked, &evaluated)));
    };
    let results = read_and_evaluate(&state, requests, at, true).await;
    let results = results.into_iter().map(|result| FeaturesResponse { at, result }).collect();
    Ok(Json(BatchResponse { at, results }).into_response())
}

/// A [`BatchResponse`] from evaluations at "now", each result's JSON serialized once per
/// evaluation.
fn batch_at_now(asked: DateTime<Utc>, evaluated: &[Arc<Evaluated>]) -> Vec<u8> {
    let size: usize = evaluated.iter().map(|e| e.json().len() + 1).sum();
    let mut body = Vec::with_capacity(size + 64);
    body.extend_from_slice(br#"{"at":"#);
    // Writing a timestamp into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, &asked);
    body.extend_from_slice(br#","results":["#);
    for (position, one) in evaluated.iter().enumerate() {
        if position > 0 {
            body.push(b',');
        }
        body.extend_from_slice(one.json());
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> FeatureSet {
        FeatureSet::load(None).expect("built-in definitions")
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(validate_id("user", "u-42").is_ok());
        assert!(validate_id("user", "").is_err());
        assert!(validate_id("user", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(validate_id("user", "a\u{7}b").is_err());
    }

    #[test]
    fn names_must_be_features_of_the_entity() {
        let set = set();
        let names = split_names(Some("clicks_1m, last_viewed_product")).expect("given");
        assert_eq!(check_names(&set, Entity::USER, names.clone()).expect("valid"), Some(names));
        let error = check_names(&set, Entity::USER, vec!["clicks_2m".into()]).expect_err("bad");
        assert!(error.to_string().contains("clicks_2m"), "{error}");
        let error = check_names(&set, Entity::PRODUCT, vec!["clicks_1m".into()]).expect_err("bad");
        assert!(error.to_string().contains("product"), "{error}");
        assert!(check_names(&set, Entity::USER, vec![]).is_err());
    }

    #[test]
    fn at_must_be_within_history_and_not_in_the_future() {
        let set = set();
        let recent = (Utc::now() - TimeDelta::minutes(1)).to_rfc3339();
        assert!(parse_at(Some(&recent), &set).expect("recent").1);
        let old = (Utc::now() - TimeDelta::days(2)).to_rfc3339();
        let error = parse_at(Some(&old), &set).expect_err("too old").to_string();
        assert!(error.contains("history"), "{error}");
        let future = (Utc::now() + TimeDelta::hours(1)).to_rfc3339();
        assert!(parse_at(Some(&future), &set).is_err());
        assert!(parse_at(Some("yesterday"), &set).is_err());
    }

    #[test]
    fn a_cached_evaluation_answers_as_the_typed_response_would() {
        let at = Utc::now();
        let result = || {
            let mut features = crate::features::Features::new();
            features.insert("clicks_1m".into(), crate::features::FeatureValue::missing());
            EntityFeatures {
                entity: Entity::USER,
                id: "u\"1".into(),
                freshness: crate::store::Freshness::Live,
                features,
            }
        };
        let cached: serde_json::Value =
            serde_json::from_slice(Evaluated::uncached(at, result()).json()).expect("valid JSON");
        let typed = serde_json::to_value(FeaturesResponse { at, result: result() }).expect("json");
        assert_eq!(cached, typed);
    }

    #[test]
    fn a_batch_of_cached_evaluations_answers_as_the_typed_response_would() {
        let asked = Utc::now();
        let at = |n: i64| asked - TimeDelta::milliseconds(n);
        let result = |n: i64| {
            let mut features = crate::features::Features::new();
            if n > 0 {
                features.insert("clicks_1m".into(), crate::features::FeatureValue::missing());
            }
            EntityFeatures {
                entity: Entity::USER,
                id: format!("u{n}"),
                freshness: crate::store::Freshness::Live,
                features,
            }
        };
        let evaluated: Vec<Arc<Evaluated>> =
            (0..3).map(|n| Arc::new(Evaluated::uncached(at(n), result(n)))).collect();
        let results = (0..3).map(|n| FeaturesResponse { at: at(n), result: result(n) }).collect();
        let typed = serde_json::to_value(BatchResponse { at: asked, results }).expect("json");
        let spliced: serde_json::Value =
            serde_json::from_slice(&batch_at_now(asked, &evaluated)).expect("valid JSON");
        assert_eq!(spliced, typed);
    }
}
