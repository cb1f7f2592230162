//! What a feature's state keeps, and for how long: buckets and windowed facts for their window
//! plus `history`, unwindowed facts up to the bounds their reads need. Pruning runs on every
//! change, so each rule here costs at most a pass over one feature's state, and no sort.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::by_feature::{FeatureState, KnownValues};
use super::definition::{BUCKETS_PER_WINDOW, Feature, Storage};

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
    state.facts.drop_older(|at_us| window.bucket_of(at_us) >= oldest);
    true
}

/// Drops what `feature` no longer needs of `state`, after a change that stored `added` (if it
/// stored anything).
pub(super) fn prune(
    feature: &Feature,
    state: &mut FeatureState,
    history_us: i64,
    now_us: i64,
    added: Option<&str>,
) {
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
        state.facts.keep_newest(keep_values);
        return;
    }
    prune_last_n(state, keep_values, added);
}

/// `last_n` without a window keeps the facts of the `keep_values` values seen last (by their
/// newest fact), at most [`FACTS_PER_VALUE`] of each, the newest.
///
/// A change adds at most one fact, so a state pruned before needs at most one fact dropped:
/// when the value added had facts already, its oldest if it now has one too many; when it is
/// new, nothing while the values are fewer than `keep_values`. Only a new value beyond that, or
/// a state whose values are not known (read back, or a fact retracted since), takes a pass over
/// the facts, counting each value's from the newest. (A pass on every change, hashing every
/// value, was a fifth of the apply once states were full; BENCHMARKS.md, "Facts in time order".)
pub(super) fn prune_last_n(state: &mut FeatureState, keep_values: usize, added: Option<&str>) {
    if state.facts.len() <= keep_values.min(FACTS_PER_VALUE) {
        state.last_n_values = KnownValues(None);
        return;
    }
    if let Some(values) = state.last_n_values.0.map(|values| values as usize) {
        let Some(added) = added else { return };
        let count = state.facts.values().filter(|fact| fact.value == added).count();
        if count > 1 {
            if count > FACTS_PER_VALUE {
                state.facts.remove_oldest_of(added);
            }
            return;
        }
        if values < keep_values {
            state.last_n_values = KnownValues(u32::try_from(values + 1).ok());
            return;
        }
    }
    // Per value, its facts kept so far; a value first met once `keep_values` are (staler than
    // all of them) is full from the start.
    let mut seen: HashMap<&str, usize, FixedState> = HashMap::default();
    let mut admitted = 0;
    let mut kept = vec![false; state.facts.len()];
    for (place, fact) in state.facts.values().rev().enumerate() {
        let count = seen.entry(fact.value.as_str()).or_insert_with(|| {
            admitted += 1;
            if admitted <= keep_values { 0 } else { FACTS_PER_VALUE }
        });
        if *count < FACTS_PER_VALUE {
            *count += 1;
            kept[place] = true;
        }
    }
    state.last_n_values = KnownValues(u32::try_from(admitted.min(keep_values)).ok());
    if kept.iter().all(|kept| *kept) {
        return;
    }
    state.facts.retain_from_newest(|place| kept[place]);
}
