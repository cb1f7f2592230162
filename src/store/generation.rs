//! State generations. All state lives under `<key_prefix>:<generation>`; the generation in use is
//! the value of `<key_prefix>:current`. `persona rebuild` computes a new generation from the
//! topics and then points `current` at it; an instance that finds `current` gone knows Redis was
//! emptied (flushed, or restarted without persistence).

use fred::prelude::*;

use super::{FeatureStore, StoreError};

/// Redis key naming the generation in use.
pub fn current_key(prefix: &str) -> String {
    format!("{prefix}:current")
}

/// A new, unique generation name.
pub fn new_generation() -> String {
    format!("g{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
}

/// The generation in use, `None` when Redis has none (new or emptied).
pub async fn current(store: &FeatureStore) -> Result<Option<String>, StoreError> {
    let result: Result<Option<String>, _> = store.pool().get(current_key(store.key_prefix())).await;
    store.note_redis("read", &result);
    Ok(result?)
}

/// The generation in use, creating one when there is none. Several instances starting together
/// agree: only the first `SET NX` wins.
pub async fn current_or_create(store: &FeatureStore) -> Result<(String, bool), StoreError> {
    if let Some(generation) = current(store).await? {
        return Ok((generation, false));
    }
    let candidate = new_generation();
    let key = current_key(store.key_prefix());
    let result: Result<Option<String>, _> =
        store.pool().set(&key, candidate.as_str(), None, Some(SetOptions::NX), false).await;
    store.note_redis("write", &result);
    result?;
    let winner = current(store).await?.unwrap_or(candidate.clone());
    let created = winner == candidate;
    Ok((winner, created))
}

/// Points `current` at `generation` (after a rebuild).
pub async fn switch_to(store: &FeatureStore, generation: &str) -> Result<(), StoreError> {
    let result: Result<(), _> =
        store.pool().set(current_key(store.key_prefix()), generation, None, None, false).await;
    store.note_redis("write", &result);
    Ok(result?)
}
