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
pub type Shares = BTreeMap<String, EntityState>;

/// What L1 holds for an entity: its shares and their merge, or the fact that Redis had none.
#[derive(Debug)]
pub struct Cached {
    shares: Shares,
    pub state: Option<Arc<EntityState>>,
}

impl Cached {
    pub fn new(shares: Shares) -> Self {
        let state = if shares.is_empty() {
            None
        } else {
            let mut merged = EntityState::default();
            for share in shares.values() {
                merged.merge(share);
            }
            Some(Arc::new(merged))
        };
        Self { shares, state }
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
                        shares.insert(stream.to_string(), state.clone());
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
