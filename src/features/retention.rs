//! What a feature's state keeps, and for how long: buckets and windowed facts for their window
//! plus `history`, unwindowed facts up to the bounds their reads need. Pruning runs on every
//! change, so each rule here costs at most a pass over one feature's state, and no sort.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::by_feature::FeatureState;
use super::definition::{BUCKETS_PER_WINDOW, Feature, Storage};
use super::row_key::RowKey;

/// Facts kept beyond what an unwindowed `last`/`last_n`/`intervals` reports, so that deleting
/// the newest rows falls back to older ones. Deleting more than this many of a user's newest
/// rows in a row can leave a value that an exact recomputation would not give.
pub const FACT_SLACK: usize = 32;
/// `last_n` without a window keeps at most this many facts per value.
const FACTS_PER_VALUE: usize = 8;

/// The oldest bucket kept: a read at `now - history` still sees its whole window.
fn oldest_kept_bucket(feature: &Feature, history_us: i64, now_us: i64) -> Option<i64> {
    let window = feature.window?;
    Some(window.bucket_of(now_us.saturating_sub(history_us)) - BUCKETS_PER_WINDOW + 1)
}

pub(super) fn too_old(feature: &Feature, at_us: i64, history_us: i64, now_us: i64) -> bool {
    match (feature.window, oldest_kept_bucket(feature, history_us, now_us)) {
        (Some(window), Some(oldest)) => window.bucket_of(at_us) < oldest,
        _ => false,
    }
}

/// Drops buckets (and facts) older than the window's retention; `false` when unwindowed.
pub(super) fn prune_buckets(
    feature: &Feature,
    state: &mut FeatureState,
    history_us: i64,
    now_us: i64,
) -> bool {
    let (Some(window), Some(oldest)) =
        (feature.window, oldest_kept_bucket(feature, history_us, now_us))
    else {
        return false;
    };
    state.buckets.drop_before(oldest);
    state.retain_facts_since(|at_us| window.bucket_of(at_us) >= oldest);
    true
}

pub(super) fn prune(feature: &Feature, state: &mut FeatureState, history_us: i64, now_us: i64) {
    if prune_buckets(feature, state, history_us, now_us) {
        return;
    }
    if feature.storage() != Storage::Facts {
        return;
    }
    let keep_values = feature.n.max(1) + FACT_SLACK;
    if feature.aggregation != super::Aggregation::LastN {
        // `last` and `intervals` read the newest facts whatever their values: the newest
        // `n + FACT_SLACK` are all a read can need, however many of them are deleted.
        while state.facts.len() > keep_values {
            // A change adds at most one fact, so this drops the one oldest, found without
            // sorting (a state kept under an older, looser rule drops its excess once).
            let oldest = state.facts.iter().min_by_key(|(key, fact)| (fact.at_us, *key));
            let Some(oldest) = oldest.map(|(key, _)| key.clone()) else { break };
            state.facts.remove(&oldest);
        }
        return;
    }
    prune_last_n(state, keep_values);
}

/// `last_n` without a window keeps the facts of the `keep_values` values seen last (by their
/// newest fact), at most [`FACTS_PER_VALUE`] of each, the newest. A change adds at most one fact,
/// so a pruned state needs at most one removal: each pass counts the facts once, without
/// sorting them (sorting every change's facts was most of the apply once states were full).
fn prune_last_n(state: &mut FeatureState, keep_values: usize) {
    if state.facts.len() <= keep_values.min(FACTS_PER_VALUE) {
        return;
    }
    type At<'a> = (i64, &'a RowKey);
    loop {
        // Per value: how many facts, the newest and the oldest.
        let mut values: HashMap<&str, (usize, At<'_>, At<'_>), FixedState> = HashMap::default();
        for (key, fact) in &state.facts {
            let at = (fact.at_us, key);
            values
                .entry(fact.value.as_str())
                .and_modify(|(count, newest, oldest)| {
                    *count += 1;
                    *newest = (*newest).max(at);
                    *oldest = (*oldest).min(at);
                })
                .or_insert((1, at, at));
        }
        let crowded = values.values().find(|(count, ..)| *count > FACTS_PER_VALUE);
        let gone: Vec<RowKey> = match crowded {
            Some((_, _, oldest)) => vec![oldest.1.clone()],
            None if values.len() > keep_values => {
                let stalest = values.iter().min_by_key(|(_, (_, newest, _))| *newest);
                let Some((stalest, _)) = stalest else { return };
                let facts = state.facts.iter().filter(|(_, fact)| fact.value == *stalest);
                facts.map(|(key, _)| key.clone()).collect()
            }
            None => return,
        };
        for key in gone {
            state.facts.remove(&key);
        }
    }
}
