//! Shares written before features shared buckets (see `definition::SharedBuckets`). Such a
//! share holds the rows of `views_1m`, `views_5m` and `views_15m` in each one's own state, at
//! its own bucket width. Nothing is converted: new rows go to the shared state, reads add the
//! own states to it (each at its width; a row is in one or the other, never both), a retracted
//! row is taken from where a row like it is, and the own states are pruned as their rows leave
//! their windows, until none is left. Every value read stays exact throughout.
//!
//! Facts shared by features (`definition::SharedFacts`) are simpler: every feature keeps the
//! facts of the same rows, a subset each, so the first change to reach such a share merges its
//! features' own facts into the shared ones (a row kept by any of them is kept once) and drops
//! the own states. Until then, reads take each feature's own facts.

use super::Feature;
use std::collections::HashMap;

use ecow::EcoString;

use super::by_feature::{FeatureState, KnownValues};
use super::definition::{FeatureSet, SharedBuckets, SharedFacts};
use super::facts::Facts;
use super::retention::{Kept, prune_buckets};
use super::row_key::RowKey;
use super::source::SourceRow;
use super::state::{EntityState, Fact, retract, stored_value};

/// Whether a share holds own states of features that now share buckets, once looked at: `None`
/// until then. Equal to any other.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnStates(Option<bool>);

impl PartialEq for OwnStates {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for OwnStates {}

/// Whether `state` holds own states of features that share buckets (looked at once per share
/// and remembered: an entity holds a couple of dozen states, and this runs on every change).
pub(super) fn holds_own_states(set: &FeatureSet, state: &mut EntityState) -> bool {
    if let Some(holds) = state.own_states.0 {
        return holds;
    }
    let holds = set
        .features
        .iter()
        .filter(|feature| feature.shared.is_some() || feature.shared_facts.is_some())
        .any(|feature| state.features.get_interned(feature.name).is_some());
    state.own_states = OwnStates(Some(holds));
    holds
}

/// Prunes the own states of `shared`'s features, and takes `before` (a row retracted) back from
/// them when the shared state holds no row like it (same bucket, same value): every feature
/// then counts one row less where it counted it, whichever state held that row. True when it
/// was taken from the own states.
pub(super) fn tend_own_states(
    feature: &Feature,
    shared: &SharedBuckets,
    state: &mut EntityState,
    before: Option<&SourceRow>,
    history_us: i64,
    now_us: i64,
) -> bool {
    let in_shared = |state: &EntityState, row: &SourceRow| {
        let Some(value) = stored_value(feature, row) else { return true };
        let bucket = row.time_us.div_euclid(shared.bucket_us);
        state
            .features
            .get_interned(shared.name)
            .and_then(|kept| kept.buckets.rows(bucket, &value))
            .is_some_and(|rows| rows > 0)
    };
    let take_back = before.filter(|row| !in_shared(state, row));
    for (member, width) in shared.members.iter().zip(&shared.widths) {
        let own = Kept::single(member, width);
        let Some(own_state) = state.features.get_interned_mut(member) else { continue };
        if let Some(row) = take_back {
            retract(feature, own, own_state, row, history_us, now_us);
        }
        prune_buckets(own, own_state, history_us, now_us);
        if own_state.is_empty() {
            state.features.remove(member);
        }
    }
    take_back.is_some()
}

/// Merges the own facts of `shared`'s features into the shared facts, and drops the own states
/// (see the module docs). Facts of rows that are one fact twice (same time, key and value) are
/// kept as often as the feature that kept most of them did.
pub(super) fn adopt_own_facts(shared: &SharedFacts, state: &mut EntityState) {
    let owns: Vec<FeatureState> =
        shared.members.iter().filter_map(|member| state.features.take(member)).collect();
    if owns.is_empty() {
        return;
    }
    let target = state.features.entry(shared.name);
    type Row = (i64, RowKey, EcoString);
    let count = |facts: &Facts| {
        let mut counts: HashMap<Row, usize> = HashMap::new();
        for (key, fact) in facts.iter() {
            *counts.entry((fact.at_us, key.clone(), fact.value.clone())).or_default() += 1;
        }
        counts
    };
    for own in owns {
        let held = count(&target.facts);
        for ((at_us, key, value), times) in count(&own.facts) {
            let missing = times.saturating_sub(
                held.get(&(at_us, key.clone(), value.clone())).copied().unwrap_or(0),
            );
            for _ in 0..missing {
                target.facts.insert(key.clone(), Fact { at_us, value: value.clone() });
            }
        }
    }
    target.last_n_values = KnownValues(None);
}
