//! Recovery: keeping feature state whole when Redis loses it, and rebuilding it on demand.
//!
//! State lives under a generation (see [`crate::store::generation`]). Every instance watches
//! which generation is current:
//! - none at all: Redis was emptied (flushed, or restarted without persistence). The first
//!   instance to notice starts a new generation; every instance replays the partitions it owns
//!   from the beginning into it, and says so in its log and in `persona_rebuilds_total`.
//! - another one: `persona rebuild` finished. Instances switch to it and resume reading from the
//!   end offsets the rebuild read up to, so nothing after them is missing from the new state.
//!
//! Replaying is safe at any point because feature state deduplicates by source position.

pub mod rebuild;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cdc::{Replay, Replayer};
use crate::features::FeatureSet;
use crate::store::{FeatureStore, StoreError, generation};
use crate::telemetry;

/// Finds the generation to use at start and makes the store use it. `true` when there was none
/// and a new one was created: the caller must then replay its partitions from the beginning,
/// because consumer offsets may be ahead of a state lost while persona was down.
///
/// Warns when the state was computed under other feature definitions: features added since
/// start empty and changed ones keep old values until `persona rebuild`.
pub async fn start_generation(
    store: &FeatureStore,
    features: &FeatureSet,
) -> Result<(String, bool), StoreError> {
    let (current, created) = generation::current_or_create(store).await?;
    store.use_generation(&current);
    if created {
        generation::set_resume_offsets(store, &current, None).await?;
        if let Some(older) = generation::older_layout(store).await? {
            tracing::warn!(
                generation = %current,
                older_generation = %older,
                "redis holds feature state in an older key layout, which this version does not read; reading the topics from the beginning into a new generation (delete the older one's keys `<key_prefix>:{older}:*` once it is done)"
            );
        }
        tracing::warn!(generation = %current, "no feature state in redis; reading the topics from the beginning");
        metrics::counter!(telemetry::REBUILDS, "reason" => "no_state").increment(1);
    }
    let previous = generation::swap_fingerprint(store, &current, &features.fingerprint).await?;
    if let Some(previous) = previous.filter(|previous| *previous != features.fingerprint) {
        tracing::warn!(
            generation = %current,
            state_fingerprint = %previous,
            definitions_fingerprint = %features.fingerprint,
            "feature definitions changed since this state was computed; run `persona rebuild` so that history counts under the new ones"
        );
    }
    Ok((current, created))
}

/// Checks the current generation every `interval` and follows it (see the module docs).
pub fn spawn_watcher(
    store: Arc<FeatureStore>,
    replayer: Replayer,
    mut known: String,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = crate::periodic::Ticks::new(interval, shutdown);
        while ticks.next().await {
            match follow(&store, &replayer, &known).await {
                Ok(Some(switched)) => known = switched,
                Ok(None) => {}
                Err(error) => tracing::debug!(error = %error, "cannot check the state generation"),
            }
        }
    })
}

async fn follow(
    store: &FeatureStore,
    replayer: &Replayer,
    known: &str,
) -> Result<Option<String>, StoreError> {
    let current = match generation::current(store).await? {
        Some(current) if current == known => return Ok(None),
        Some(current) => current,
        None => {
            tracing::warn!(generation = %known, "redis lost persona's feature state (flushed, or restarted without persistence); rebuilding it from the topics");
            let (current, created) = generation::current_or_create(store).await?;
            if created {
                generation::set_resume_offsets(store, &current, None).await?;
            }
            current
        }
    };
    let resume: Option<HashMap<String, i64>> = generation::resume_offsets(store, &current).await?;
    let reason = if resume.is_some() { "rebuild_command" } else { "redis_emptied" };
    metrics::counter!(telemetry::REBUILDS, "reason" => reason).increment(1);
    tracing::info!(from = %known, to = %current, reason, "switching feature state generation");
    store.use_generation(&current);
    replayer.replay(resume.map_or(Replay::Beginning, Replay::From));
    Ok(Some(current))
}
