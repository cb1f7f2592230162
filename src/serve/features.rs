//! Feature reads: entities read with at most one Redis round trip, evaluated at a read time.
//! Percentiles at "now" rank among the values the product index keeps up to date; at a past
//! time they rank the whole catalog read then.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppState;
use crate::features::{
    Aggregation, Entity, EntityState, Feature, FeatureSet, FeatureStatus, Features, Ranking,
    ReadContext,
};
use crate::store::{EntityRead, EntityRef, Freshness};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntityFeatures {
    pub entity: Entity,
    pub id: String,
    /// `live`, `stale` (Redis unreachable, served from L1) or `unavailable`.
    pub freshness: Freshness,
    /// Feature name → value.
    #[schema(value_type = std::collections::BTreeMap<String, crate::features::FeatureValue>)]
    pub features: Features,
}

/// Every feature of one shopper at `at`, as `GET /api/v1/users/{id}/features` reads them (for
/// the dashboard's inspector).
pub async fn read_user_features(
    state: &AppState,
    user_id: &str,
    at: DateTime<Utc>,
) -> EntityFeatures {
    let shopper = state.features.shopper;
    let request = FeatureRequest { entity: EntityRef::new(shopper, user_id), names: None };
    let mut results = read_and_evaluate(state, vec![request], at, false).await;
    results.pop().unwrap_or_else(|| unavailable(shopper, user_id.to_string()))
}

pub(super) fn unavailable(entity: Entity, id: String) -> EntityFeatures {
    EntityFeatures { entity, id, freshness: Freshness::Unavailable, features: Features::new() }
}

/// One entity to read, and the features wanted of it (all when `None`).
pub struct FeatureRequest {
    pub entity: EntityRef,
    pub names: Option<Vec<String>>,
}

/// The percentile features the requests need a whole-catalog ranking for.
pub(super) fn rankings_needed<'a>(
    set: &'a FeatureSet,
    requests: &[FeatureRequest],
) -> Vec<&'a Feature> {
    let mut needed: Vec<&Feature> = Vec::new();
    for request in requests.iter().filter(|r| r.entity.entity == set.item) {
        for feature in set.of_entity(set.item) {
            let wanted = request
                .names
                .as_ref()
                .is_none_or(|names| names.iter().any(|name| name == feature.name));
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
pub async fn read_and_evaluate(
    state: &AppState,
    requests: Vec<FeatureRequest>,
    at: DateTime<Utc>,
    explicit_at: bool,
) -> Vec<EntityFeatures> {
    let set = &state.features;
    let needed = rankings_needed(set, &requests);
    let mut rankings: Vec<(String, Arc<Ranking>)> = Vec::new();
    let mut to_rank: Vec<&Feature> = Vec::new();
    // At "now", the rankings the index refresher keeps; at a past time (or before the first
    // refresh), ranked from the whole catalog.
    let index = (!explicit_at && !needed.is_empty()).then(|| state.recommender.index());
    for feature in needed {
        match index.as_ref().and_then(|index| index.rankings.get(feature.name)) {
            Some(ranking) => rankings.push((feature.name.to_string(), Arc::clone(ranking))),
            None => to_rank.push(feature),
        }
    }
    let catalog_ids: Vec<EntityRef> = if to_rank.is_empty() {
        Vec::new()
    } else {
        let item = set.item;
        state.catalog.read(|products| products.keys().map(|id| EntityRef::new(item, id)).collect())
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
            rankings.push((feature.name.to_string(), ranking));
        }
    }
    let ranking_of = |feature: &Feature| {
        rankings.iter().find(|(name, _)| *name == feature.name).map(|(_, r)| Arc::clone(r))
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
    let names = [feature.name.to_string()];
    let values = state.catalog.view(|catalog| {
        ids.iter()
            .zip(states)
            .map(|(id, entity_state)| {
                let features = crate::features::evaluate(
                    set,
                    set.item,
                    &id.id,
                    Some(entity_state.as_ref().unwrap_or(&EntityState::default())),
                    Some(&names),
                    &ReadContext { at, catalog, ranking: &|_| None },
                );
                features.get(feature.name).and_then(|v| v.value.as_f64()).unwrap_or(0.0)
            })
            .collect()
    });
    Ranking::new(values)
}

pub(super) fn evaluate_read(
    state: &AppState,
    request: FeatureRequest,
    read: EntityRead,
    at: DateTime<Utc>,
    ranking: &dyn Fn(&Feature) -> Option<Arc<Ranking>>,
) -> EntityFeatures {
    let FeatureRequest { entity, names } = request;
    let mut features = state.catalog.view(|catalog| {
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
