//! Feature reads: one user, one product, or a batch of entities. Every value carries its status
//! (`present`, `missing`, `stale`) and event time. An unknown entity is an answer (every feature
//! missing), not an error.
//!
//! - `GET /api/v1/users/{id}/features?names=a,b&at=<RFC 3339>`
//! - `GET /api/v1/products/{id}/features?names=…&at=…`
//! - `POST /api/v1/features/batch` with `{"at"?, "names"?, "entities": [{"entity", "id", "names"?}]}`

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{AppError, AppState};
use crate::features::{
    Aggregation, Entity, EntityState, Feature, FeatureSet, FeatureStatus, Features, Ranking,
    ReadContext,
};
use crate::store::{EntityRead, EntityRef, Freshness};

const MAX_ID_LEN: usize = 128;
/// Most entities one batch request may ask for.
pub const MAX_BATCH: usize = 500;
/// A read time may be this far ahead of the server's clock (clock skew between callers).
const MAX_FUTURE: TimeDelta = TimeDelta::seconds(60);
/// How long a whole-catalog ranking (percentile features) is reused for reads at "now".
const RANKING_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeaturesQuery {
    /// Comma-separated feature names; all when absent.
    names: Option<String>,
    /// RFC 3339 read time; now when absent.
    at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EntityFeatures {
    pub entity: Entity,
    pub id: String,
    /// `live`, `stale` (Redis unreachable, served from L1) or `unavailable`.
    pub freshness: Freshness,
    pub features: Features,
}

#[derive(Debug, Serialize)]
pub(super) struct FeaturesResponse {
    /// The read time windows were evaluated at.
    at: DateTime<Utc>,
    #[serde(flatten)]
    result: EntityFeatures,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    at: Option<String>,
    /// Names for every entity that does not list its own.
    names: Option<Vec<String>>,
    entities: Vec<BatchEntity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEntity {
    entity: Entity,
    id: String,
    names: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(super) struct BatchResponse {
    at: DateTime<Utc>,
    results: Vec<EntityFeatures>,
}

/// The last whole-catalog ranking computed, reused for reads at "now" for [`RANKING_TTL`].
#[derive(Default)]
pub struct RankingCache {
    inner: std::sync::Mutex<Option<(Instant, String, Arc<Ranking>)>>,
}

impl RankingCache {
    fn get(&self, feature: &str) -> Option<Arc<Ranking>> {
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .as_ref()
            .filter(|(computed, name, _)| name == feature && computed.elapsed() < RANKING_TTL)
            .map(|(_, _, ranking)| Arc::clone(ranking))
    }

    fn put(&self, feature: &str, ranking: Arc<Ranking>) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Some((Instant::now(), feature.to_string(), ranking));
    }
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

pub(super) async fn user_features(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Json<FeaturesResponse>, AppError> {
    one_entity(state, Entity::User, path, query).await
}

pub(super) async fn product_features(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Json<FeaturesResponse>, AppError> {
    one_entity(state, Entity::Product, path, query).await
}

async fn one_entity(
    state: AppState,
    entity: Entity,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FeaturesQuery>, QueryRejection>,
) -> Result<Json<FeaturesResponse>, AppError> {
    let Path(id) = path?;
    let Query(query) = query?;
    validate_id(entity.label(), &id)?;
    let names = match split_names(query.names.as_deref()) {
        Some(names) => check_names(&state.features, entity, names)?,
        None => None,
    };
    let (at, explicit_at) = parse_at(query.at.as_deref(), &state.features)?;
    let request = Request { entity: EntityRef { entity, id }, names };
    let mut results = read_and_evaluate(&state, vec![request], at, explicit_at).await;
    let result = results.pop().ok_or_else(|| AppError::Internal("no result".into()))?;
    Ok(Json(FeaturesResponse { at, result }))
}

pub(super) async fn batch(
    State(state): State<AppState>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchResponse>, AppError> {
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
    let (at, explicit_at) = parse_at(body.at.as_deref(), &state.features)?;
    let mut requests = Vec::with_capacity(body.entities.len());
    for (index, item) in body.entities.into_iter().enumerate() {
        validate_id(item.entity.label(), &item.id)
            .map_err(|e| AppError::BadRequest(format!("entities[{index}]: {e}")))?;
        let names = match item.names.or_else(|| body.names.clone()) {
            Some(names) => check_names(&state.features, item.entity, names)
                .map_err(|e| AppError::BadRequest(format!("entities[{index}]: {e}")))?,
            None => None,
        };
        requests.push(Request { entity: EntityRef { entity: item.entity, id: item.id }, names });
    }
    let results = read_and_evaluate(&state, requests, at, explicit_at).await;
    Ok(Json(BatchResponse { at, results }))
}

/// Every feature of one user at `at`, as `GET /api/v1/users/{id}/features` reads them (for the
/// dashboard's inspector).
pub async fn read_user_features(
    state: &AppState,
    user_id: &str,
    at: DateTime<Utc>,
) -> EntityFeatures {
    let request = Request {
        entity: EntityRef { entity: Entity::User, id: user_id.to_string() },
        names: None,
    };
    let mut results = read_and_evaluate(state, vec![request], at, false).await;
    results.pop().unwrap_or_else(|| EntityFeatures {
        entity: Entity::User,
        id: user_id.to_string(),
        freshness: Freshness::Unavailable,
        features: Features::new(),
    })
}

struct Request {
    entity: EntityRef,
    names: Option<Vec<String>>,
}

/// The percentile features the requests need a whole-catalog ranking for.
fn rankings_needed<'a>(set: &'a FeatureSet, requests: &[Request]) -> Vec<&'a Feature> {
    let mut needed: Vec<&Feature> = Vec::new();
    for request in requests.iter().filter(|r| r.entity.entity == Entity::Product) {
        for feature in set.of_entity(Entity::Product) {
            let wanted = request.names.as_ref().is_none_or(|names| names.contains(&feature.name));
            if wanted
                && feature.aggregation == Aggregation::Percentile
                && let Some(of) = feature.of.as_deref().and_then(|name| set.get(name))
                && !needed.iter().any(|known| known.name == of.name)
            {
                needed.push(of);
            }
        }
    }
    needed
}

/// Reads every entity with at most one Redis round trip (L1 misses, and the whole catalog when
/// a ranking must be recomputed), then evaluates at `at`.
async fn read_and_evaluate(
    state: &AppState,
    requests: Vec<Request>,
    at: DateTime<Utc>,
    explicit_at: bool,
) -> Vec<EntityFeatures> {
    let set = &state.features;
    let needed = rankings_needed(set, &requests);
    let mut rankings: Vec<(String, Arc<Ranking>)> = Vec::new();
    let mut to_rank: Vec<&Feature> = Vec::new();
    for feature in needed {
        match state.rankings.get(&feature.name).filter(|_| !explicit_at) {
            Some(ranking) => rankings.push((feature.name.clone(), ranking)),
            None => to_rank.push(feature),
        }
    }
    let catalog_ids: Vec<EntityRef> = if to_rank.is_empty() {
        Vec::new()
    } else {
        state.catalog.read(|products| products.keys().cloned().map(EntityRef::product).collect())
    };
    let entities: Vec<EntityRef> = requests.iter().map(|r| r.entity.clone()).collect();
    let (reads, catalog_states) = if entities.len() == 1 && catalog_ids.is_empty() {
        (vec![state.store.read(&entities[0]).await], None)
    } else {
        state.store.read_many(&entities, &catalog_ids).await
    };
    if let Some(catalog_states) = catalog_states {
        for feature in to_rank {
            let ranking = Arc::new(rank(set, feature, &catalog_ids, &catalog_states, at, state));
            if !explicit_at {
                state.rankings.put(&feature.name, Arc::clone(&ranking));
            }
            rankings.push((feature.name.clone(), ranking));
        }
    }
    let ranking_of = |feature: &Feature| {
        rankings.iter().find(|(name, _)| *name == feature.name).map(|(_, r)| (**r).clone())
    };
    requests
        .into_iter()
        .zip(reads)
        .map(|(request, read)| evaluate_read(state, request, read, at, &ranking_of))
        .collect()
}

fn rank(
    set: &FeatureSet,
    feature: &Feature,
    ids: &[EntityRef],
    states: &[Option<EntityState>],
    at: DateTime<Utc>,
    state: &AppState,
) -> Ranking {
    let names = [feature.name.clone()];
    let values = state.catalog.read(|catalog| {
        ids.iter()
            .zip(states)
            .map(|(id, entity_state)| {
                let features = crate::features::evaluate(
                    set,
                    Entity::Product,
                    &id.id,
                    Some(entity_state.as_ref().unwrap_or(&EntityState::default())),
                    Some(&names),
                    &ReadContext { at, catalog, ranking: &|_| None },
                );
                features.get(&feature.name).and_then(|v| v.value.as_f64()).unwrap_or(0.0)
            })
            .collect()
    });
    Ranking::new(values)
}

fn evaluate_read(
    state: &AppState,
    request: Request,
    read: EntityRead,
    at: DateTime<Utc>,
    ranking: &dyn Fn(&Feature) -> Option<Ranking>,
) -> EntityFeatures {
    let Request { entity, names } = request;
    let mut features = state.catalog.read(|catalog| {
        crate::features::evaluate(
            &state.features,
            entity.entity,
            &entity.id,
            read.state.as_deref(),
            names.as_deref(),
            &ReadContext { at, catalog, ranking },
        )
    });
    if read.freshness == Freshness::Stale {
        for value in features.values_mut() {
            if value.status == FeatureStatus::Present {
                value.status = FeatureStatus::Stale;
            }
        }
    }
    EntityFeatures { entity: entity.entity, id: entity.id, freshness: read.freshness, features }
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
        assert_eq!(check_names(&set, Entity::User, names.clone()).expect("valid"), Some(names));
        let error = check_names(&set, Entity::User, vec!["clicks_2m".into()]).expect_err("bad");
        assert!(error.to_string().contains("clicks_2m"), "{error}");
        let error = check_names(&set, Entity::Product, vec!["clicks_1m".into()]).expect_err("bad");
        assert!(error.to_string().contains("product"), "{error}");
        assert!(check_names(&set, Entity::User, vec![]).is_err());
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
}
