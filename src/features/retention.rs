//! What a feature's state keeps, and for how long: buckets and windowed facts for their window
//! plus `history`, unwindowed facts up to the bounds their reads need. Pruning runs on every
//! change, so each rule here costs at most a pass over one feature's state, and no sort.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use super::buckets::bucket_in_range;
use super::by_feature::{FeatureState, KnownValues};
use super::definition::{
    BUCKETS_PER_WINDOW, FactBound, Feature, SESSION_FACTS_MAX, SharedBuckets, SharedFacts, Storage,
};
use super::facts::Facts;

/// Facts kept beyond what an unwindowed `last`/`last_n`/`intervals` reports, so that deleting
/// the newest rows falls back to older ones. Deleting more than this many of a user's newest
/// rows in a row can leave a value that an exact recomputation would not give.
pub const FACT_SLACK: usize = 32;
/// `last_n` without a window keeps at most this many facts per value.
const FACTS_PER_VALUE: usize = 8;

/// Where a change to one feature lands: the state it keeps its rows in (its own, or the one it
/// shares with features over the same rows), and what that state must keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Kept<'f> {
    /// The state's name: the feature's, or the shared state's.
    pub name: &'static str,
    /// The width of the state's buckets (µs); unused when unwindowed.
    pub bucket_us: i64,
    /// The bucket widths of the windows read from it, each kept for its window plus `history`;
    /// none when unwindowed.
    widths: &'f [i64],
    /// Whether a feature without a window reads it too: then no row is too old for it.
    unwindowed_reader: bool,
}

impl<'f> Kept<'f> {
    pub fn own(feature: &'f Feature) -> Self {
        let widths =
            feature.window.as_ref().map_or(&[][..], |w| std::slice::from_ref(&w.bucket_us));
        let bucket_us = widths.first().copied().unwrap_or(0);
        Self { name: feature.name, bucket_us, widths, unwindowed_reader: false }
    }

    /// Facts shared by features (`widths` are those of the windowed ones among them).
    pub fn shared_facts(shared: &'f SharedFacts) -> Self {
        // A session may reach further back than the windows: it keeps its rows by time itself.
        let unwindowed_reader = !shared.sessions.is_empty()
            || shared.bounds.iter().any(|b| !matches!(b, FactBound::Window(_)));
        Self { name: shared.name, bucket_us: 0, widths: &shared.widths, unwindowed_reader }
    }

    /// A state of buckets `width` wide read by one window (a feature's own).
    pub fn single(name: &'static str, width: &'f i64) -> Self {
        Self {
            name,
            bucket_us: *width,
            widths: std::slice::from_ref(width),
            unwindowed_reader: false,
        }
    }

    pub fn shared(shared: &'f SharedBuckets) -> Self {
        let widths = &shared.widths;
        Self { name: shared.name, bucket_us: shared.bucket_us, widths, unwindowed_reader: false }
    }

    /// The bucket a row at `at_us` counts in (0 when unwindowed).
    pub fn bucket_of(&self, at_us: i64) -> i64 {
        if self.widths.is_empty() { 0 } else { at_us.div_euclid(self.bucket_us) }
    }

    /// The start of the oldest bucket kept; `None` when unwindowed.
    fn oldest_us(&self, history_us: i64, now_us: i64) -> Option<i64> {
        self.widths.iter().map(|width| oldest_kept_us(*width, history_us, now_us)).min()
    }

    /// For how many of the windows read from the state a row at `at_us` is too old: they can no
    /// longer be read at a time it counts at. (The state keeps it while one window can.)
    pub fn late(&self, at_us: i64, history_us: i64, now_us: i64) -> u32 {
        if at_us >= now_us.saturating_sub(history_us) {
            // Every window keeps at least back to `now - history`: nothing to divide out (a
            // division per window, for the live rows that are nearly all of them).
            return 0;
        }
        let late = self.widths.iter().filter(|w| at_us < oldest_kept_us(**w, history_us, now_us));
        late.count() as u32
    }

    /// For how many of the windows read from a state of buckets a row in `bucket` (from
    /// [`Self::bucket_of`]) is out of the range buckets keep (see [`super::buckets`]): all or
    /// none.
    pub fn out_of_range(&self, bucket: i64) -> u32 {
        match bucket_in_range(bucket) {
            Some(_) => 0,
            None => self.widths.len() as u32,
        }
    }

    /// Whether a row at `at_us` is too old for every window read from the state.
    pub fn too_old(&self, at_us: i64, history_us: i64, now_us: i64) -> bool {
        // As in `late`.
        at_us < now_us.saturating_sub(history_us)
            && !self.unwindowed_reader
            && self.oldest_us(history_us, now_us).is_some_and(|oldest| at_us < oldest)
    }
}

/// The start of the oldest bucket a window of buckets `width` wide keeps: a read at
/// `now - history` still sees its whole window.
fn oldest_kept_us(width: i64, history_us: i64, now_us: i64) -> i64 {
    let bucket = now_us.saturating_sub(history_us).div_euclid(width) - BUCKETS_PER_WINDOW + 1;
    bucket.saturating_mul(width)
}

/// Drops buckets (and facts) older than the windows' retention; `false` when unwindowed.
pub(super) fn prune_buckets(
    kept: Kept<'_>,
    state: &mut FeatureState,
    history_us: i64,
    now_us: i64,
) -> bool {
    let Some(oldest_us) = kept.oldest_us(history_us, now_us) else {
        return false;
    };
    // Each window's oldest start is a whole number of its buckets, so of the state's.
    state.buckets.drop_before(oldest_us.div_euclid(kept.bucket_us));
    state.facts.drop_older(|at_us| at_us >= oldest_us);
    true
}

/// Drops what `feature` no longer needs of `state` (kept as `kept` says), after a change that
/// stored `added` (if it stored anything).
pub(super) fn prune(
    feature: &Feature,
    kept: Kept<'_>,
    state: &mut FeatureState,
    history_us: i64,
    now_us: i64,
    added: Option<&str>,
) {
    if prune_buckets(kept, state, history_us, now_us) {
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
    let (kept, admitted) = last_n_kept(&state.facts, keep_values);
    state.last_n_values = KnownValues(u32::try_from(admitted.min(keep_values)).ok());
    if kept.iter().all(|kept| *kept) {
        return;
    }
    state.facts.retain_from_newest(|place| kept[place]);
}

/// Which facts an unwindowed `last_n` keeps (see [`prune_last_n`]), by place from the newest,
/// and how many values it met.
fn last_n_kept(facts: &Facts, keep_values: usize) -> (Vec<bool>, usize) {
    // Per value, its facts kept so far; a value first met once `keep_values` are (staler than
    // all of them) is full from the start.
    let mut seen: HashMap<&str, usize, FixedState> = HashMap::default();
    let mut admitted = 0;
    let mut kept = vec![false; facts.len()];
    for (place, fact) in facts.values().rev().enumerate() {
        let count = seen.entry(fact.value.as_str()).or_insert_with(|| {
            admitted += 1;
            if admitted <= keep_values { 0 } else { FACTS_PER_VALUE }
        });
        if *count < FACTS_PER_VALUE {
            *count += 1;
            kept[place] = true;
        }
    }
    (kept, admitted)
}

/// Facts shared by several features grow by this many between walks over them (see
/// [`prune_shared_facts`]).
const SHARED_FACTS_WALK_EVERY: usize = 16;

/// Drops the facts that no feature sharing them keeps: each keeps what its own state would
/// (see [`FactBound`]), so each reads from them what it read from its own. A session reading
/// them keeps what its own would: the newest [`SESSION_FACTS_MAX`] of its `history + session`.
///
/// Facts a window needs, or among the newest that a `last` reads, stay without a look. Older
/// ones a `last_n` may keep (a few of each of its newest values) are found by a walk over the
/// facts, as [`prune_last_n`]'s; it runs once they grew by [`SHARED_FACTS_WALK_EVERY`] since the
/// last one, so a state holds up to that many facts more than it needs (which reads never
/// reach: each reads its window, or its newest facts first), and a change costs a sixteenth of
/// a walk.
pub(super) fn prune_shared_facts(
    shared: &SharedFacts,
    state: &mut FeatureState,
    history_us: i64,
    now_us: i64,
) {
    let mut horizon: Option<i64> = None;
    let mut newest = 0;
    let mut values = None;
    for bound in &shared.bounds {
        match *bound {
            FactBound::Window(width) => {
                let oldest = oldest_kept_us(width, history_us, now_us);
                horizon = Some(horizon.map_or(oldest, |known: i64| known.min(oldest)));
            }
            FactBound::Newest(count) => newest = newest.max(count),
            FactBound::NewestValues(count) => values = values.max(Some(count)),
        }
    }
    let len = state.facts.len();
    let older_than = |horizon: i64| state.facts.values().take_while(|f| f.at_us < horizon).count();
    let older = horizon.map_or(len, older_than);
    let in_sessions = shared.sessions.iter().map(|session| {
        let horizon = now_us.saturating_sub(session.keep_us);
        (len - older_than(horizon)).min(SESSION_FACTS_MAX)
    });
    // The oldest facts that neither a window, the newest facts nor a session hold.
    let loose = older.min(len.saturating_sub(newest)).min(len - in_sessions.max().unwrap_or(0));
    if loose == 0 {
        return;
    }
    let Some(keep_values) = values else {
        state.facts.keep_newest(len - loose);
        return;
    };
    if let Some(after_walk) = state.last_n_values.0
        && len < after_walk as usize + SHARED_FACTS_WALK_EVERY
    {
        return;
    }
    let (kept, _) = last_n_kept(&state.facts, keep_values);
    state.facts.retain_from_newest(|place| place < len - loose || kept[place]);
    state.last_n_values = KnownValues(u32::try_from(state.facts.len()).ok());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Rows newer than `now - history`, which skip the divisions, are late for no window,
        /// as the divisions say.
        #[test]
        fn lateness_is_that_of_each_windows_oldest_bucket(
            bucket_s in 1i64..=60,
            multiples in prop::collection::vec(1i64..=30, 1..4),
            history_s in 0i64..=7_200,
            now_us in 0i64..=4_000_000_000_000_000,
            // Where the row falls, in thousandths of the widest window's reach before
            // `now - history`: after it, around each window's oldest bucket, before them all.
            reach_permille in -100i64..=1_200,
            unwindowed_reader in any::<bool>(),
        ) {
            let widths: Vec<i64> = multiples.iter().map(|m| m * bucket_s * 1_000_000).collect();
            let kept = Kept {
                name: "feature",
                bucket_us: bucket_s * 1_000_000,
                widths: &widths,
                unwindowed_reader,
            };
            let history_us = history_s * 1_000_000;
            let reach_us = BUCKETS_PER_WINDOW * widths.iter().max().copied().unwrap_or_default();
            let at_us = now_us - history_us - reach_permille * reach_us / 1_000;
            let oldest: Vec<i64> =
                widths.iter().map(|w| oldest_kept_us(*w, history_us, now_us)).collect();
            let late = oldest.iter().filter(|oldest| at_us < **oldest).count() as u32;
            prop_assert_eq!(kept.late(at_us, history_us, now_us), late);
            let too_old = !unwindowed_reader && oldest.iter().all(|oldest| at_us < *oldest);
            prop_assert_eq!(kept.too_old(at_us, history_us, now_us), too_old);
        }
    }
}
