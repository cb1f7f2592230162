//! Per-entity feature state and how one change updates it. Pure: `(state, change, now)` in,
//! state out; `now` (processing time) only decides what is too old to keep.
//!
//! - Bucketed aggregations keep, per time bucket, a count per stored value. Applying a row adds
//!   one, retracting it (the before image of an update or delete) subtracts one, so retraction
//!   is exact and the order of changes does not matter.
//! - `last`, `last_n` and `intervals` keep facts by row key, so a delete removes exactly its
//!   row's fact and the next newest one takes its place. Without a window the facts kept are
//!   capped (see [`FACT_SLACK`]).
//! - Current-state aggregations keep the rows that exist now, by row key.
//! - Every state remembers the newest source position applied per stream (topic partition):
//!   a change at or before it is a duplicate (Kafka redelivery, or Debezium publishing again
//!   after a Connect restart) and is skipped. State and positions are one Redis value, so they
//!   are written atomically.
//! - Snapshot reads have no position (a run reads every row at one LSN). A share remembers the
//!   snapshot run it belongs to and the furthest read of that run it applied: a read delivered
//!   again is skipped, a read of an older run is obsolete, and the first change after a newer
//!   run began empties the share first, because the run reads the whole table again (see
//!   [`SnapshotRun`]). Shares no change of the new run reached are superseded all the same:
//!   readers compare their run with the stream's (see [`superseded`]).
//! - A change re-driven from the dead-letter topic (`persona dlq replay`) is behind its stream's
//!   newest position by nature. Its position is remembered in a small per-stream set instead,
//!   so it is applied once however often it is re-driven.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::buckets::text_heap_bytes;
pub use super::by_feature::FeatureState;
use super::by_feature::{FeatureStates, KnownValues};
use super::definition::{Entity, Feature, FeatureSet, Storage, ValueExpr};
pub use super::facts::Fact;
use super::pairs::{self, PairDelta};
pub use super::retention::FACT_SLACK;
pub(super) use super::retention::Kept;
use super::retention::{prune, prune_shared_facts};
use super::sharing;
use super::source::{
    Position, Scalar, SnapshotRead, SnapshotRun, SourceChange, SourceRow, Truncation,
};
use super::text::same_text;

/// Re-driven positions remembered per stream; beyond this the oldest are forgotten.
pub const REPLAYED_MAX: usize = 1_000;

/// Everything persona keeps about one entity (or, for products, one source partition's share
/// of it), as stored in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// Incremented by every applied change; lets caches keep the newest copy.
    pub rev: u64,
    /// Newest position applied, per stream (`<table>/<partition>`).
    #[serde(rename = "pos", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Position>,
    /// Positions of re-driven dead letters applied, per stream.
    #[serde(rename = "rp", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replayed: BTreeMap<String, BTreeSet<Position>>,
    /// The snapshot run each stream's contributions belong to.
    #[serde(rename = "run", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, RunMark>,
    /// The TRUNCATE of its table each stream's contributions come after.
    #[serde(rename = "cut", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cuts: BTreeMap<String, Position>,
    #[serde(rename = "f", default, skip_serializing_if = "FeatureStates::is_empty")]
    pub features: FeatureStates,
    /// Whether `features` still holds own states of features that now share buckets (see
    /// `features::sharing`), once an apply looked; neither stored nor compared.
    #[serde(skip)]
    pub own_states: sharing::OwnStates,
    /// The features Redis holds in parts of their own for this share, as its stored value lists
    /// them (as read, or as last written and acknowledged): a part the share no longer lists is
    /// removed with the next write. Neither stored nor compared.
    #[serde(skip)]
    pub stored_parts: StoredParts,
}

/// Names of features, interned; equal to any other (see [`EntityState::stored_parts`]).
#[derive(Debug, Clone, Default)]
pub struct StoredParts(pub Vec<&'static str>);

impl PartialEq for StoredParts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StoredParts {}

/// The snapshot run a share belongs to, and how far into the run's reads it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMark {
    #[serde(rename = "r")]
    pub run: SnapshotRun,
    /// The place of the furthest read of `run` applied; `None` before any.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub through: Option<i64>,
}

/// True when `share`, a share of `stream`, belongs to an older snapshot run than the stream's
/// newest, `current`: its contributions were read again by that run, and it counts as empty.
pub fn superseded(share: &EntityState, stream: &str, current: Option<SnapshotRun>) -> bool {
    // `None < Some(_)`: a share from before any run is superseded by the first.
    let run = share.runs.get(stream).map(|mark| mark.run);
    current.is_some_and(|current| run < Some(current))
}

/// True when `share`, a share of `stream`, holds only what came before `truncation`, its
/// table's newest TRUNCATE, in the share's own run era: it counts as empty.
pub fn truncated_away(share: &EntityState, stream: &str, truncation: Option<&Truncation>) -> bool {
    let Some(truncation) = truncation else { return false };
    let run = share.runs.get(stream).map(|mark| mark.run);
    run == truncation.run && share.cuts.get(stream).is_none_or(|cut| *cut < truncation.position)
}

impl EntityState {
    /// Size in memory, estimated for the L1 cache's byte budget. The constants are what a map
    /// entry, a bucket and a cell's value take beside their texts; `cargo bench --bench state`
    /// prints this estimate against what the allocator counts.
    pub fn approx_bytes(&self) -> usize {
        // A fact in the facts' vector, and its row key in theirs when they are keyed.
        const FACT: usize = std::mem::size_of::<Fact>();
        const KEY: usize = 24;
        let features: usize =
            self.features
                .values()
                .map(|f| {
                    let key = if f.facts.keyed() { KEY } else { 0 };
                    let facts = f.facts.iter().map(|(k, fact)| {
                        FACT + key + k.heap_bytes() + text_heap_bytes(&fact.value)
                    });
                    facts.sum::<usize>() + f.buckets.heap_bytes()
                })
                .sum();
        let replayed: usize = self.replayed.values().map(|set| 48 + set.len() * 24).sum();
        64 + self.applied.len() * 48 + replayed + features
    }

    /// Adds another partition's share of the same entity (product features).
    pub fn merge(&mut self, other: &EntityState) {
        self.rev += other.rev;
        for (stream, position) in &other.applied {
            self.applied.insert(stream.clone(), *position);
        }
        for (stream, positions) in &other.replayed {
            self.replayed.entry(stream.clone()).or_default().extend(positions);
        }
        for (stream, mark) in &other.runs {
            self.runs.insert(stream.clone(), *mark);
        }
        for (stream, cut) in &other.cuts {
            self.cuts.insert(stream.clone(), *cut);
        }
        for (name, theirs) in other.features.iter() {
            let ours = self.features.entry(name);
            ours.buckets.merge(&theirs.buckets);
            for (key, fact) in theirs.facts.iter() {
                ours.facts.insert(key.clone(), fact.clone());
                ours.last_n_values = KnownValues(None);
            }
        }
    }
}

/// What applying one change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Already applied (its position is not after the stream's newest): nothing changed.
    pub duplicate: bool,
    /// Already in what the change's snapshot run read: only its position was recorded, which
    /// must be written all the same (see [`crate::features::overlap`]).
    pub overlapped: bool,
    /// Rows older than a window's retention, dropped.
    pub late: u32,
    /// Applied to a user: what the change does to products' co-occurrence counts, for the
    /// caller to apply to those products (see [`apply_with_pairs`]).
    pub pairs: Vec<PairDelta>,
}

/// The entity a row belongs to, for `entity`.
pub fn entity_of(row: &SourceRow, entity: Entity) -> Option<&str> {
    row.id(entity).filter(|id| !id.is_empty())
}

/// Applies `change`, read from `stream`, to the state of entity `entity_id`.
pub fn apply(
    set: &FeatureSet,
    entity: Entity,
    entity_id: &str,
    state: &mut EntityState,
    change: &SourceChange,
    stream: &str,
    now: DateTime<Utc>,
) -> Outcome {
    apply_with_pairs(set, entity, entity_id, state, change, stream, now.timestamp_micros(), &[])
}

/// [`apply`] at `now_us` (microseconds since the epoch), and for a product also the
/// co-occurrence deltas that applying the same change to users produced (those naming other
/// products are ignored). A product a change reaches only through pairs is applied this way
/// too, so its position marks the change as applied.
#[allow(clippy::too_many_arguments)]
pub fn apply_with_pairs(
    set: &FeatureSet,
    entity: Entity,
    entity_id: &str,
    state: &mut EntityState,
    change: &SourceChange,
    stream: &str,
    now_us: i64,
    pair_deltas: &[PairDelta],
) -> Outcome {
    let mut outcome = Outcome::default();
    if change.snapshot.is_none()
        && let (Some(start), Some(processed)) = (change.run, change.processed_ms)
        && processed < start.at_ms
    {
        // Streamed before the run began: the run read its row as it then was.
        outcome.duplicate = true;
        return outcome;
    }
    enter_run(state, stream, change.run.map(|start| start.run));
    if let Some(cut) = change.truncated {
        enter_cut(state, stream, cut);
        let before_cut = match (change.snapshot, change.position) {
            // Reads of the run come before anything it streams, the TRUNCATE included.
            (Some(_), _) => true,
            (None, Some(position)) => position <= cut,
            (None, None) => false,
        };
        if before_cut {
            outcome.duplicate = true;
            return outcome;
        }
    }
    let fresh = match (change.snapshot, change.position) {
        (Some(read), _) => mark_read(state, stream, read, change.replay),
        (None, Some(position)) => mark_applied(state, stream, position, change.replay),
        (None, None) => true,
    };
    if !fresh {
        outcome.duplicate = true;
        return outcome;
    }
    if change.overlapped {
        state.rev += 1;
        outcome.overlapped = true;
        return outcome;
    }
    let belongs =
        |row: &&SourceRow| entity_of(row, entity).is_some_and(|id| same_text(id, entity_id));
    // Whose rows they are does not depend on the feature: asked once, not once per feature.
    let (before_own, after_own) =
        (change.before.as_ref().filter(belongs), change.after.as_ref().filter(belongs));
    if entity == set.shopper {
        outcome.pairs = pairs::apply_to_session(set, entity_id, state, change, now_us);
    } else if entity == set.item {
        pairs::apply_pairs(set, entity_id, state, pair_deltas, now_us);
    }
    let holds_own = sharing::holds_own_states(set, state);
    for feature in set.fed_by(entity, change.table).filter(|f| f.storage() != Storage::Pairs) {
        // One of the features sharing a state applies the change for all of them.
        let kept = match (&feature.shared, &feature.shared_facts) {
            (Some(shared), _) if !shared.applied_by(feature) => continue,
            (Some(shared), _) => Kept::shared(shared),
            (_, Some(shared)) if !shared.applied_by(feature) => continue,
            (_, Some(shared)) => Kept::shared_facts(shared),
            (None, None) => Kept::own(feature),
        };
        let before = before_own.filter(|row| passes(feature, row));
        let after = after_own.filter(|row| passes(feature, row));
        if before.is_none() && after.is_none() {
            // Filtered out (a view, for a clicks feature): the state is not even visited. Its
            // old buckets wait for the next row it keeps; reads look at their window only, and
            // pruning every state a table feeds on each change was a tenth of the apply, most
            // of it cache misses on states it left as they were.
            continue;
        }
        if let Some(shared) = feature.shared_facts.as_ref().filter(|_| holds_own) {
            sharing::adopt_own_facts(shared, state);
        }
        let mut retracted = false;
        if let Some(shared) = feature.shared.as_ref().filter(|_| holds_own) {
            let history_us = set.history_us();
            retracted =
                sharing::tend_own_states(feature, shared, state, before, history_us, now_us);
        }
        if let Some(before) = before.filter(|_| !retracted) {
            let feature_state = state.features.entry(kept.name);
            retract(feature, kept, feature_state, before, set.history_us(), now_us);
        }
        let feature_state = state.features.entry(kept.name);
        let mut added = None;
        if let Some(after) = after {
            match add(feature, kept, feature_state, after, set.history_us(), now_us) {
                Added::Late(late) => outcome.late += late,
                Added::Value(value, late) => {
                    outcome.late += late;
                    added = value;
                }
            }
        }
        match &feature.shared_facts {
            Some(shared) => prune_shared_facts(shared, feature_state, set.history_us(), now_us),
            None => prune(feature, kept, feature_state, set.history_us(), now_us, added.as_deref()),
        }
        if feature_state.is_empty() {
            state.features.remove(kept.name);
        }
    }
    if holds_own {
        // Looked at again on the next change: the features' own states leave as they empty.
        state.own_states = sharing::OwnStates::default();
    }
    state.rev += 1;
    outcome
}

/// Empties the share when `run` is newer than the run it belongs to: the run reads every row
/// of the stream again. Positions go too: streaming after a run starts a new sequence (its first
/// transaction has no previous commit), and what came before is obsolete by time.
fn enter_run(state: &mut EntityState, stream: &str, run: Option<SnapshotRun>) {
    let Some(run) = run else { return };
    if state.runs.get(stream).is_some_and(|mark| mark.run >= run) {
        return;
    }
    state.features.clear();
    state.own_states = sharing::OwnStates::default();
    state.applied.remove(stream);
    state.replayed.remove(stream);
    state.cuts.remove(stream);
    state.runs.insert(stream.to_string(), RunMark { run, through: None });
}

/// Empties the share when `cut`, a TRUNCATE of its table, is newer than the one it came after:
/// everything it holds was contributed before it. (A share that also holds changes after the
/// TRUNCATE, applied before it was known, cannot be split; its partition must be read again.)
fn enter_cut(state: &mut EntityState, stream: &str, cut: Position) {
    if state.cuts.get(stream).is_some_and(|known| *known >= cut) {
        return;
    }
    state.features.clear();
    state.own_states = sharing::OwnStates::default();
    state.applied.remove(stream);
    state.replayed.remove(stream);
    state.cuts.insert(stream.to_string(), cut);
}

/// Records a snapshot read as applied on `stream`; false when it was already, or when its run
/// is older than the share's.
fn mark_read(state: &mut EntityState, stream: &str, read: SnapshotRead, replay: bool) -> bool {
    let run = read.start.run;
    enter_run(state, stream, Some(run));
    if replay {
        // A dead-lettered read was never applied, however far its run got since; one of an
        // older run is obsolete.
        return state.runs.get(stream).is_some_and(|mark| mark.run == run)
            && first_replay(state, stream, Position(run.0, read.seq, SNAPSHOT_RANK));
    }
    let Some(mark) = state.runs.get_mut(stream).filter(|mark| mark.run == run) else {
        return false;
    };
    if mark.through.is_some_and(|through| through >= read.seq) {
        return false;
    }
    mark.through = Some(read.seq);
    true
}

/// Rank of a re-driven snapshot read's identity in the replayed set, apart from the ranks of
/// streamed changes' positions (0, 1).
const SNAPSHOT_RANK: u8 = 2;

/// Records `position` as applied on `stream`; false when it was already.
fn mark_applied(state: &mut EntityState, stream: &str, position: Position, replay: bool) -> bool {
    // In place when the stream is known (nearly always): inserting anew allocated its name on
    // every change only to drop it again.
    let behind = match state.applied.get_mut(stream) {
        Some(newest) if *newest >= position => true,
        Some(newest) => {
            *newest = position;
            false
        }
        None => {
            state.applied.insert(stream.to_string(), position);
            false
        }
    };
    if !replay {
        return !behind;
    }
    first_replay(state, stream, position)
}

/// Remembers a re-driven dead letter's identity; false when it was applied before.
fn first_replay(state: &mut EntityState, stream: &str, position: Position) -> bool {
    let replayed = state.replayed.entry(stream.to_string()).or_default();
    let first_time = replayed.insert(position);
    while replayed.len() > REPLAYED_MAX {
        replayed.pop_first();
    }
    first_time
}

pub(super) fn passes(feature: &Feature, row: &SourceRow) -> bool {
    let accepts = |accepted: &[String], value: &str| accepted.iter().any(|a| same_text(a, value));
    feature.filter.iter().all(|(column, accepted)| match row.get(column) {
        // Filters are on codes nearly always: read in place.
        Scalar::Text(text) => accepts(accepted, text),
        other => other.as_key().is_some_and(|value| accepts(accepted, &value)),
    })
}

/// What a row that [`passes`] the feature's filter stores for it; `None` when it contributes
/// nothing (NULL, or not one of the steps).
pub(super) fn stored_value<'a>(feature: &Feature, row: &'a SourceRow) -> Option<Cow<'a, str>> {
    let value = match &feature.value {
        ValueExpr::Nothing => Some(Cow::Borrowed("")),
        ValueExpr::Column(column) => row.get(column).as_key(),
        // Joined when read, so a product's later category or price change applies to history.
        ValueExpr::Attribute(entity, _) => row.id(*entity).map(Cow::Borrowed),
        ValueExpr::Product2(left, right) => {
            match (row.get(left).as_number(), row.get(right).as_number()) {
                (Some(left), Some(right)) => Some((left * right).normalize().to_string().into()),
                _ => None,
            }
        }
    }?;
    if !feature.steps.is_empty() && !feature.steps.iter().any(|step| same_text(step, &value)) {
        return None;
    }
    Some(value)
}

/// What adding a row did.
enum Added<'a> {
    /// Dropped as too old for every window reading the state, or dated past the last bucket it
    /// keeps: for how many windows.
    Late(u32),
    /// Kept: the value stored, if any (`None` for a NULL or a value that is not a step), and for
    /// how many windows reading the state it is too old all the same.
    Value(Option<Cow<'a, str>>, u32),
}

/// Adds the contribution of a row that [`passes`] the filter to the state `kept` names.
fn add<'a>(
    feature: &Feature,
    kept: Kept<'_>,
    state: &mut FeatureState,
    row: &'a SourceRow,
    history_us: i64,
    now_us: i64,
) -> Added<'a> {
    let Some(value) = stored_value(feature, row) else { return Added::Value(None, 0) };
    let at_us = row.time_us;
    let late = kept.late(at_us, history_us, now_us);
    if kept.too_old(at_us, history_us, now_us) {
        return Added::Late(late);
    }
    match feature.storage() {
        Storage::Buckets => {
            let bucket = kept.bucket_of(at_us);
            let out_of_range = kept.out_of_range(bucket);
            if out_of_range > 0 {
                return Added::Late(out_of_range);
            }
            state.buckets.add(bucket, &value, 1);
        }
        Storage::Facts | Storage::Current => {
            let fact = Fact { at_us, value: value.as_ref().into() };
            state.facts.insert(feature.fact_key(row).clone(), fact);
        }
        Storage::Derived | Storage::Pairs => {}
    }
    Added::Value(Some(value), late)
}

/// Takes back the contribution of a row that [`passes`] the filter from the state `kept` names.
pub(super) fn retract(
    feature: &Feature,
    kept: Kept<'_>,
    state: &mut FeatureState,
    row: &SourceRow,
    history_us: i64,
    now_us: i64,
) {
    let Some(value) = stored_value(feature, row) else { return };
    let at_us = row.time_us;
    if kept.too_old(at_us, history_us, now_us) {
        return;
    }
    match feature.storage() {
        Storage::Buckets => {
            let bucket = kept.bucket_of(at_us);
            if state.buckets.rows(bucket, &value).is_some() {
                state.buckets.add(bucket, &value, -1);
            }
        }
        Storage::Facts | Storage::Current => {
            if state.facts.remove(at_us, feature.fact_key(row), &value).is_some() {
                // A value may have lost its last fact: what pruning knew of them is stale.
                state.last_n_values = KnownValues(None);
            }
        }
        Storage::Derived | Storage::Pairs => {}
    }
}

/// A numeric stored value (sums).
pub fn stored_number(value: &str) -> Option<Decimal> {
    value.parse().ok()
}
