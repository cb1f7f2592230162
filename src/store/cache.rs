//! L1: the in-process moka cache of entity states, with the rules that keep it from ever holding
//! a state older than one already written or announced.
//!
//! An entry holds every share of an entity (one per source stream, see [`super::StateKey`]) and
//! their merge. Revisions are per share:
//! - Ingest's own write replaces a share only with a higher `rev`.
//! - An invalidation names a share and its new `rev`; it bumps the key's epoch and drops the
//!   entry if its copy of that share is older. A read from Redis caches what it read only if the
//!   epoch did not move meanwhile (otherwise it may have read a state the invalidation already
//!   superseded).

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use crate::config::CacheConfig;
use crate::features::EntityState;

const EPOCH_SHARDS: usize = 256;

/// An entity's shares by stream, as stored.
pub type Shares = BTreeMap<String, Arc<EntityState>>;

/// What L1 holds for an entity: its shares and their merge, or the fact that Redis had none.
#[derive(Debug)]
pub struct Cached {
    shares: Shares,
    pub state: Option<Arc<EntityState>>,
}

impl Cached {
    pub fn new(shares: Shares) -> Self {
        let state = match shares.len() {
            0 => None,
            // An entity of one share (every user) is that share: served as it is, not copied
            // into a merge of one, which cost a copy of the whole state per write and read.
            1 => shares.values().next().cloned(),
            _ => {
                let mut merged = EntityState::default();
                for share in shares.values() {
                    merged.merge(share);
                }
                Some(Arc::new(merged))
            }
        };
        Self { shares, state }
    }

    /// The entity's state, owned: taken from the one share without a copy when nothing else
    /// holds it.
    pub fn into_state(self) -> Option<EntityState> {
        let Self { shares, state } = self;
        drop(shares);
        state.map(Arc::unwrap_or_clone)
    }

    fn share_rev(&self, stream: &str) -> u64 {
        self.shares.get(stream).map_or(0, |share| share.rev)
    }

    /// True when this copy is at least as new as `other` in every share.
    fn covers(&self, other: &Cached) -> bool {
        other.shares.iter().all(|(stream, share)| self.share_rev(stream) >= share.rev)
    }
}

/// How current a read answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// From L1 or Redis while Redis is reachable.
    Live,
    /// From L1 while Redis is unreachable: may lag behind the source.
    Stale,
    /// Neither L1 nor Redis could answer.
    Unavailable,
}

pub(super) struct L1 {
    cache: Cache<String, Arc<Cached>>,
    epochs: Vec<AtomicU64>,
}

impl L1 {
    pub fn new(config: &CacheConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, value: &Arc<Cached>| {
                let bytes = key.len() + value.state.as_ref().map_or(16, |s| s.approx_bytes());
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(config.ttl)
            .build();
        Self { cache, epochs: (0..EPOCH_SHARDS).map(|_| AtomicU64::new(0)).collect() }
    }

    fn shard(&self, key: &str) -> &AtomicU64 {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.epochs[(hasher.finish() as usize) % EPOCH_SHARDS]
    }

    pub fn epoch(&self, key: &str) -> u64 {
        self.shard(key).load(Ordering::Acquire)
    }

    pub async fn get(&self, key: &str) -> Option<Arc<Cached>> {
        self.cache.get(key).await
    }

    /// Returns the cached entry, or loads it once for all concurrent callers of the same key.
    /// `Some((entry, true))` when it was already cached; `None` when loading failed.
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, load: F) -> Option<(Arc<Cached>, bool)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Shares, E>>,
        E: Send + Sync + 'static,
    {
        let mut uncached: Option<Arc<Cached>> = None;
        let outcome = self
            .cache
            .entry(key.to_string())
            .and_try_compute_with(|existing| {
                let uncached = &mut uncached;
                async move {
                    if existing.is_some() {
                        return Ok(Op::Nop);
                    }
                    let epoch = self.epoch(key);
                    let loaded = Arc::new(Cached::new(load().await?));
                    if self.epoch(key) != epoch {
                        *uncached = Some(loaded);
                        return Ok(Op::Nop);
                    }
                    Ok::<_, E>(Op::Put(loaded))
                }
            })
            .await;
        match outcome {
            Ok(CompResult::Inserted(entry) | CompResult::ReplacedWith(entry)) => {
                Some((entry.into_value(), false))
            }
            Ok(CompResult::Unchanged(entry)) => Some((entry.into_value(), true)),
            Ok(CompResult::StillNone(_) | CompResult::Removed(_)) => {
                uncached.map(|cached| (cached, false))
            }
            Err(_) => None,
        }
    }

    /// Caches a state read from Redis unless `key` was invalidated since `epoch`; returns what
    /// the caller should serve.
    pub async fn insert_if_unchanged(
        &self,
        key: String,
        shares: Shares,
        epoch: u64,
    ) -> Arc<Cached> {
        let loaded = Arc::new(Cached::new(shares));
        if self.epoch(&key) != epoch {
            return loaded;
        }
        let candidate = Arc::clone(&loaded);
        let outcome = self
            .cache
            .entry(key)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().covers(&candidate) => Op::Nop,
                    _ => Op::Put(candidate),
                }
            })
            .await;
        match outcome {
            CompResult::Unchanged(entry) => entry.into_value(),
            _ => loaded,
        }
    }

    /// Ingest's write of one share: updates a cached entry unless it already holds this
    /// revision of the share or a newer one. An entity not cached stays uncached (its other
    /// shares are not known here).
    pub async fn put_share(&self, key: String, stream: &str, state: &EntityState) {
        self.cache
            .entry(key)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().share_rev(stream) < state.rev => {
                        let mut shares = entry.value().shares.clone();
                        shares.insert(stream.to_string(), Arc::new(state.clone()));
                        Op::Put(Arc::new(Cached::new(shares)))
                    }
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// Drops the entry if its copy of share `stream` is older than `rev`; `true` when dropped.
    pub async fn invalidate(&self, key: String, stream: &str, rev: u64) -> bool {
        self.shard(&key).fetch_add(1, Ordering::AcqRel);
        let outcome = self
            .cache
            .entry(key)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().share_rev(stream) < rev => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
        matches!(outcome, CompResult::Removed(_))
    }

    pub fn clear(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.cache.invalidate_all();
    }
}

/// `persona_cache_lookups_total` by the tier that answered, registered once.
pub(super) struct Lookups {
    pub l1: metrics::Counter,
    pub redis: metrics::Counter,
    pub none: metrics::Counter,
}

impl Lookups {
    pub fn register() -> Self {
        let tier =
            |tier: &'static str| metrics::counter!(crate::telemetry::CACHE_LOOKUPS, "tier" => tier);
        Self { l1: tier("l1"), redis: tier("redis"), none: tier("none") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(rev: u64, value: &str) -> Arc<EntityState> {
        let mut state = EntityState { rev, ..EntityState::default() };
        state.features.entry("views_1h").buckets.add(1, value, 1);
        Arc::new(state)
    }

    #[test]
    fn an_entity_of_one_share_is_that_share_uncopied() {
        let only = share(3, "p1");
        let cached = Cached::new(Shares::from([("a/0".to_string(), Arc::clone(&only))]));
        let state = cached.state.as_ref().expect("a state");
        assert!(Arc::ptr_eq(state, &only), "one share was copied into a merge");
        drop(only);
        let owned = cached.into_state().expect("a state");
        assert_eq!(owned.rev, 3);
        assert_eq!(owned.features.get("views_1h").and_then(|f| f.buckets.rows(1, "p1")), Some(1));
    }

    #[test]
    fn an_entity_of_several_shares_is_their_merge() {
        let shares = Shares::from([
            ("a/0".to_string(), share(3, "p1")),
            ("a/1".to_string(), share(4, "p2")),
        ]);
        let state = Cached::new(shares).into_state().expect("a state");
        let views = &state.features.get("views_1h").expect("merged feature").buckets;
        assert_eq!((views.rows(1, "p1"), views.rows(1, "p2")), (Some(1), Some(1)));
        assert_eq!(state.rev, 7);
    }
}
