//! Evaluated features, kept per entity version and read-time granule, so that reads at "now"
//! pay for evaluating an entity's windows once per granule rather than once per request.
//!
//! An entry refers to the merged state it was evaluated from (the `Arc` L1 serves; L1 replaces
//! it whenever any share of the entity changes, so pointer identity is the entity's version; a
//! `Weak` reference rules out reuse of the address without keeping the state's contents
//! alive), the product catalog's version, and the granule of its read time. A read at "now"
//! reuses the entry only when all three are unchanged: a change to the entity or to any product
//! is served at once, and what is reused is exactly the evaluation at the read time the answer
//! states (`at`), at most one granule ago. Reads at an explicit time, reads served while Redis
//! is unreachable, and products ranked by percentile are never cached.
//!
//! Each entity's granules are shifted by a hash of its id, so that entities expire spread over
//! the granule rather than all at its boundary (where a batch would evaluate all of its
//! entities again at once).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, Utc};

use super::AppState;
use super::features::{
    EntityFeatures, FeatureRequest, evaluate_read, rankings_needed, read_and_evaluate, unavailable,
};
use crate::features::{Entity, EntityState};
use crate::store::{EntityRead, EntityRef, Freshness};

/// What an entry answers: an entity, and the feature names asked for, as asked (all when
/// `None`). The cache is keyed by a hash of it, so that a lookup allocates nothing; the entry
/// keeps the names to tell a collision from a hit.
struct Entry {
    names: Option<Vec<String>>,
    evaluated: Arc<Evaluated>,
}

fn key_of(entity: Entity, id: &str, names: &Option<Vec<String>>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(entity.label().as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_bytes());
    match names {
        None => hasher.update(&[0]),
        Some(names) => {
            for name in names {
                hasher.update(&[1]);
                hasher.update(name.as_bytes());
            }
        }
    }
    hasher.digest()
}

/// One entity's features as evaluated at `at`.
#[derive(Debug)]
pub struct Evaluated {
    state: Option<Weak<EntityState>>,
    catalog: u64,
    granule: i64,
    pub at: DateTime<Utc>,
    pub features: EntityFeatures,
    json: OnceLock<Bytes>,
}

impl Evaluated {
    pub(super) fn new(
        state: Option<Arc<EntityState>>,
        catalog: u64,
        granule: i64,
        at: DateTime<Utc>,
        features: EntityFeatures,
    ) -> Self {
        let state = state.as_ref().map(Arc::downgrade);
        Self { state, catalog, granule, at, features, json: OnceLock::new() }
    }

    /// An evaluation that is not kept for reuse (reads needing a ranking, reads without a
    /// granule).
    pub fn uncached(at: DateTime<Utc>, features: EntityFeatures) -> Self {
        Self::new(None, 0, 0, at, features)
    }

    /// The answer to a single read, `{"at": …, "entity": …, "id": …, "freshness": …,
    /// "features": …}`, serialized once: a reused evaluation costs a reference count.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            #[derive(serde::Serialize)]
            struct Response<'a> {
                at: DateTime<Utc>,
                #[serde(flatten)]
                features: &'a EntityFeatures,
            }
            let response = Response { at: self.at, features: &self.features };
            // Serializing a map of plain values cannot fail; an empty object would be wrong but
            // harmless, and is not reachable.
            Bytes::from(serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()))
        })
    }

    /// Roughly what an entry takes in memory, for the cache's bound.
    fn weight(&self) -> u32 {
        let features: usize = self
            .features
            .features
            .iter()
            .map(|(name, value)| name.len() + 64 + approximate_bytes(&value.value))
            .sum();
        // The JSON, once serialized, is about as large again.
        u32::try_from(2 * features + self.features.id.len() + 256).unwrap_or(u32::MAX)
    }

    fn reusable(&self, state: &Option<Arc<EntityState>>, catalog: u64, granule: i64) -> bool {
        let same_state = match (&self.state, state) {
            (Some(ours), Some(theirs)) => std::ptr::eq(ours.as_ptr(), Arc::as_ptr(theirs)),
            (None, None) => true,
            _ => false,
        };
        same_state && self.catalog == catalog && self.granule == granule
    }
}

/// The evaluations kept. A `quick_cache` rather than moka, which L1 uses: this cache is read
/// on every request and needs neither expiry nor loaders, and quick_cache's hit is a shard's
/// read lock and a bit, where moka records every read for its housekeeping (5% of a feature
/// read's CPU in a profile).
pub struct EvaluationCache {
    entries: Option<quick_cache::sync::Cache<u64, Arc<Entry>, EntryWeight>>,
    granule_us: i64,
}

/// An entry's weight: about the bytes it holds (see [`Evaluated::weight`]).
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<u64, Arc<Entry>> for EntryWeight {
    fn weight(&self, _: &u64, entry: &Arc<Entry>) -> u64 {
        u64::from(entry.evaluated.weight())
    }
}

/// A guess of how large an evaluation is, to size the cache's table up front.
const TYPICAL_ENTRY_BYTES: u64 = 8 * 1024;

impl EvaluationCache {
    /// Reuses evaluations within `granularity` of read time, keeping about `max_bytes`;
    /// `Duration::ZERO` keeps nothing.
    pub fn new(granularity: Duration, max_bytes: u64) -> Self {
        // No idle expiry: an entry out of its granule is never reused and makes room by size
        // like any other, and expiry would read the clock on every hit.
        let entries = (!granularity.is_zero() && max_bytes > 0).then(|| {
            let items = usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES).unwrap_or(usize::MAX);
            quick_cache::sync::Cache::with_weighter(items.max(16), max_bytes, EntryWeight)
        });
        Self { entries, granule_us: granularity.as_micros().try_into().unwrap_or(i64::MAX) }
    }

    /// Whether evaluations are kept at all.
    pub(super) fn keeps(&self) -> bool {
        self.granule_us > 0 && self.entries.is_some()
    }

    /// The granule `at` falls in for the entity `id` (its granules shifted by a hash of the id).
    pub(super) fn granule(&self, at: DateTime<Utc>, id: &str) -> i64 {
        let granule_us = self.granule_us.max(1);
        let shift = (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % granule_us.unsigned_abs()) as i64;
        at.timestamp_micros().saturating_add(shift).div_euclid(granule_us)
    }

    pub(super) fn get(
        &self,
        entity: Entity,
        id: &str,
        names: &Option<Vec<String>>,
        state: &Option<Arc<EntityState>>,
        catalog: u64,
        granule: i64,
    ) -> Option<Arc<Evaluated>> {
        let entry = self.entries.as_ref()?.get(&key_of(entity, id, names))?;
        let evaluated = &entry.evaluated;
        let same_request = evaluated.features.entity == entity
            && evaluated.features.id == id
            && entry.names == *names;
        (same_request && evaluated.reusable(state, catalog, granule)).then(|| Arc::clone(evaluated))
    }

    pub(super) fn put(&self, names: Option<Vec<String>>, evaluated: Arc<Evaluated>) {
        if let Some(entries) = &self.entries {
            let key = key_of(evaluated.features.entity, &evaluated.features.id, &names);
            entries.insert(key, Arc::new(Entry { names, evaluated }));
        }
    }
}

/// Roughly the heap a JSON value takes.
pub(super) fn approximate_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 16,
        Value::String(text) => 24 + text.len(),
        Value::Array(items) => 24 + items.iter().map(approximate_bytes).sum::<usize>(),
        Value::Object(map) => {
            48 + map.iter().map(|(key, v)| 32 + key.len() + approximate_bytes(v)).sum::<usize>()
        }
    }
}

/// One entity's features at "now": reused from the evaluation cache when neither the entity nor
/// the catalog changed within the current granule of read time (see [`super::evaluated`]).
pub async fn read_now(state: &AppState, request: FeatureRequest) -> Arc<Evaluated> {
    let ranked = !rankings_needed(&state.features, std::slice::from_ref(&request)).is_empty();
    let catalog = state.catalog.version();
    let at = Utc::now();
    if ranked || !state.evaluations.keeps() {
        let (entity, id) = (request.entity.entity, request.entity.id.clone());
        let mut results = read_and_evaluate(state, vec![request], at, false).await;
        let features = results.pop().unwrap_or_else(|| unavailable(entity, id));
        return Arc::new(Evaluated::uncached(at, features));
    }
    let read = state.store.read(&request.entity).await;
    reuse_or_evaluate(state, request, read, Now { catalog, at })
}

/// Many entities' features at "now", with at most one Redis round trip for the L1 misses; each
/// reused from the evaluation cache as [`read_now`] does, so each carries its own `at` (all
/// within one granule of now). Requests needing a whole-catalog ranking are evaluated together
/// at one `at` instead, uncached.
pub async fn read_now_many(state: &AppState, requests: Vec<FeatureRequest>) -> Vec<Arc<Evaluated>> {
    let ranked = !rankings_needed(&state.features, &requests).is_empty();
    let catalog = state.catalog.version();
    let at = Utc::now();
    if ranked || !state.evaluations.keeps() {
        let results = read_and_evaluate(state, requests, at, false).await;
        return results
            .into_iter()
            .map(|features| Arc::new(Evaluated::uncached(at, features)))
            .collect();
    }
    let entities: Vec<EntityRef> = requests.iter().map(|r| r.entity.clone()).collect();
    let (reads, _) = state.store.read_many(&entities, &[]).await;
    let now = Now { catalog, at };
    requests
        .into_iter()
        .zip(reads)
        .map(|(request, read)| reuse_or_evaluate(state, request, read, now))
        .collect()
}

/// What a read at "now" is checked against: the catalog's version and the read time.
#[derive(Clone, Copy)]
struct Now {
    catalog: u64,
    at: DateTime<Utc>,
}

fn reuse_or_evaluate(
    state: &AppState,
    request: FeatureRequest,
    read: EntityRead,
    now: Now,
) -> Arc<Evaluated> {
    let live = read.freshness == Freshness::Live;
    let FeatureRequest { entity, names } = request;
    let granule = state.evaluations.granule(now.at, &entity.id);
    if live
        && let Some(hit) = state.evaluations.get(
            entity.entity,
            &entity.id,
            &names,
            &read.state,
            now.catalog,
            granule,
        )
    {
        return hit;
    }
    let version = read.state.clone();
    let request = FeatureRequest { entity, names: names.clone() };
    let features = evaluate_read(state, request, read, now.at, &|_| None);
    let evaluated = Arc::new(Evaluated::new(version, now.catalog, granule, now.at, features));
    if live {
        state.evaluations.put(names, Arc::clone(&evaluated));
    }
    evaluated
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn an_entitys_granule_lasts_the_granularity_and_entities_expire_apart() {
        let cache = EvaluationCache::new(Duration::from_secs(1), 1 << 20);
        let start = DateTime::from_timestamp_micros(1_800_000_000_000_000).expect("time");
        let ids: Vec<String> = (0..200).map(|n| format!("u{n}")).collect();
        let mut changes_at: Vec<i64> = Vec::new();
        for id in &ids {
            // Step through two seconds by milliseconds: the granule changes exactly twice, one
            // second apart.
            let mut changes = Vec::new();
            let mut previous = cache.granule(start, id);
            for ms in 1..=2000 {
                let at = start + TimeDelta::milliseconds(ms);
                let granule = cache.granule(at, id);
                if granule != previous {
                    changes.push(ms);
                    previous = granule;
                }
            }
            assert!(changes.len() == 2 && changes[1] - changes[0] == 1000, "{id}: {changes:?}");
            changes_at.push(changes[0]);
        }
        // Spread over the second, not all at its boundary: 200 ids land on many instants.
        changes_at.sort_unstable();
        changes_at.dedup();
        assert!(changes_at.len() > 100, "granules of different entities change together");
    }
}
