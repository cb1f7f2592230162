//! State generations. All state lives under `<key_prefix>:<generation>` (entity hashes) and
//! `{<key_prefix>}:<generation>` (marks); the generation in use is the value of
//! `{<key_prefix>}:current`. `persona rebuild` computes a new generation from the topics and then
//! points `current` at it; an instance that finds `current` gone knows Redis was emptied
//! (flushed, or restarted without persistence), or holds state of an older key layout (whose
//! `current` was `<key_prefix>:current`), and replays its partitions into a new generation.

use fred::prelude::*;

use super::{FeatureStore, StoreError};

/// Redis key naming the generation in use.
pub fn current_key(prefix: &str) -> String {
    format!("{{{prefix}}}:current")
}

/// Where persona kept the generation in use before marks took the hash tag `{<key_prefix>}`.
fn layout_1_current_key(prefix: &str) -> String {
    format!("{prefix}:current")
}

/// The generation of an older key layout (marks without a hash tag) that is still in Redis, if
/// any: persona cannot use it, and replays into a new generation instead.
pub async fn older_layout(store: &FeatureStore) -> Result<Option<String>, StoreError> {
    let result: Result<Option<String>, _> =
        store.pool().get(layout_1_current_key(store.key_prefix())).await;
    store.note_redis("generation", &result);
    Ok(result?)
}

/// A new, unique generation name.
pub fn new_generation() -> String {
    format!("g{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
}

/// The generation in use, `None` when Redis has none (new or emptied).
pub async fn current(store: &FeatureStore) -> Result<Option<String>, StoreError> {
    let result: Result<Option<String>, _> = store.pool().get(current_key(store.key_prefix())).await;
    store.note_redis("generation", &result);
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
    store.note_redis("generation", &result);
    result?;
    let winner = current(store).await?.unwrap_or(candidate.clone());
    let created = winner == candidate;
    Ok((winner, created))
}

/// Points `current` at `generation` (after a rebuild).
pub async fn switch_to(store: &FeatureStore, generation: &str) -> Result<(), StoreError> {
    let result: Result<(), _> =
        store.pool().set(current_key(store.key_prefix()), generation, None, None, false).await;
    store.note_redis("generation", &result);
    Ok(result?)
}

fn meta_key(prefix: &str, generation: &str) -> String {
    format!("{prefix}:{generation}:meta")
}

/// Records where instances switching to `generation` must resume reading: the end offsets the
/// rebuild read up to (`<topic>/<partition>` → offset), or `None` for the beginning.
pub async fn set_resume_offsets(
    store: &FeatureStore,
    generation: &str,
    offsets: Option<&std::collections::HashMap<String, i64>>,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(&offsets).map_err(|source| StoreError::Encode {
        key: meta_key(store.key_prefix(), generation),
        source,
    })?;
    let result: Result<(), _> =
        store.pool().hset(meta_key(store.key_prefix(), generation), ("resume", json)).await;
    store.note_redis("generation", &result);
    Ok(result?)
}

/// Where to resume reading for `generation`; `None` (the beginning) when it was not recorded.
pub async fn resume_offsets(
    store: &FeatureStore,
    generation: &str,
) -> Result<Option<std::collections::HashMap<String, i64>>, StoreError> {
    let result: Result<Option<String>, _> =
        store.pool().hget(meta_key(store.key_prefix(), generation), "resume").await;
    store.note_redis("generation", &result);
    Ok(result?.and_then(|json| serde_json::from_str(&json).ok()).flatten())
}

/// Deletes every key of `generation` (after a rebuild replaced it), with `SCAN` (of every
/// primary of a cluster) and `UNLINK` so Redis never blocks; returns how many were deleted.
pub async fn delete(store: &FeatureStore, generation: &str) -> Result<u64, StoreError> {
    use fred::types::scan::Scanner;
    use futures::{StreamExt, TryStreamExt};
    let prefix = store.key_prefix();
    let client = store.pool().next().clone();
    let mut deleted = 0u64;
    for pattern in [format!("{prefix}:{generation}:*"), format!("{{{prefix}}}:{generation}:*")] {
        let mut pages = if client.is_clustered() {
            client.scan_cluster(pattern, Some(1000), None).boxed()
        } else {
            client.scan(pattern, Some(1000), None).boxed()
        };
        while let Some(mut page) = pages.try_next().await? {
            if let Some(keys) = page.take_results() {
                // One UNLINK per slot: a cluster refuses keys of several slots in one command.
                let mut by_slot: std::collections::BTreeMap<u16, Vec<fred::types::Key>> =
                    std::collections::BTreeMap::new();
                for key in keys {
                    by_slot.entry(key.cluster_hash()).or_default().push(key);
                }
                for keys in by_slot.into_values() {
                    deleted += keys.len() as u64;
                    let _: i64 = client.unlink(keys).await?;
                }
            }
            page.next();
        }
    }
    Ok(deleted)
}

/// Records the fingerprint of the feature definitions `generation` is computed under, and
/// returns the one recorded before (if any): when they differ, the state predates the
/// definitions in use.
pub async fn swap_fingerprint(
    store: &FeatureStore,
    generation: &str,
    fingerprint: &str,
) -> Result<Option<String>, StoreError> {
    let key = meta_key(store.key_prefix(), generation);
    let previous: Result<Option<String>, _> = store.pool().hget(&key, "fingerprint").await;
    store.note_redis("generation", &previous);
    let result: Result<(), _> = store.pool().hset(&key, ("fingerprint", fingerprint)).await;
    store.note_redis("generation", &result);
    result?;
    Ok(previous?)
}
