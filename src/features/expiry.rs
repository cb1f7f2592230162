//! When a value read from a state changes with no new event: windows slide over buckets, so a
//! windowed value only changes when a stored bucket enters or leaves the window, and a decayed
//! count, between those times, only shrinks by one factor shared by every product. Whoever keeps
//! values read earlier (the product index, percentile rankings) re-reads an entity exactly when
//! [`next_change`] says, instead of re-reading every entity on every tick.

use super::definition::{Aggregation, BUCKETS_PER_WINDOW, Feature, Window};
use super::view::FeatureView;

/// The earliest read time after `at_us` (µs) at which `feature`, read from `state` with no new
/// event, may give another value than at `at_us`; `None` when it never does. For a decayed count
/// the value changes continuously: this is when it stops following [`DecayParts::at`].
///
/// A percentile depends on every product, not on one state: track the feature it ranks.
pub fn next_change(feature: &Feature, state: FeatureView<'_>, at_us: i64) -> Option<i64> {
    use Aggregation as A;
    let window = feature.window;
    match feature.aggregation {
        A::Count
        | A::Sum
        | A::Avg
        | A::DistinctCount
        | A::CoOccurrence
        | A::Histogram
        | A::TopK
        | A::Conversion => {
            let window = window?;
            buckets_of(window, state)
                .filter_map(|bucket| bucket_change(window, bucket, at_us))
                .min()
        }
        A::DecayedCount => {
            let window = window?;
            let end = window.bucket_of(at_us);
            buckets_of(window, state)
                .filter_map(|bucket| {
                    let moves = bucket_change(window, bucket, at_us);
                    // The newest bucket weighs 1 until it ends, then starts to decay.
                    let starts_decaying = (bucket == end).then(|| (end + 1) * window.bucket_us);
                    moves.into_iter().chain(starts_decaying).min()
                })
                .min()
        }
        A::Last | A::LastN | A::Intervals => state
            .facts()
            .values()
            .filter_map(|fact| match window {
                Some(window) => bucket_change(window, window.bucket_of(fact.at_us), at_us),
                // Unwindowed facts count from their own time on.
                None => (fact.at_us > at_us).then_some(fact.at_us),
            })
            .min(),
        A::CurrentSum | A::CurrentCount | A::Percentile => None,
    }
}

/// The window's buckets that hold rows (a shared state's bucket lies within one of them).
fn buckets_of<'a>(window: Window, state: FeatureView<'a>) -> impl Iterator<Item = i64> + 'a {
    state.buckets().map(move |(start_us, _)| window.bucket_of(start_us))
}

/// When `bucket` enters the window read at `at_us` (a bucket ahead of the read time) or leaves
/// it; `None` when it has left already.
fn bucket_change(window: Window, bucket: i64, at_us: i64) -> Option<i64> {
    let end = window.bucket_of(at_us);
    if bucket > end {
        Some(bucket * window.bucket_us)
    } else if bucket > end - BUCKETS_PER_WINDOW {
        Some((bucket + BUCKETS_PER_WINDOW) * window.bucket_us)
    } else {
        None
    }
}

/// A decayed count read at `at_us`, split so that it can be read at a later time without the
/// state: until [`next_change`], the value at `t` is `decaying · 0.5^((t − at)/half_life) + flat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecayParts {
    pub at_us: i64,
    pub half_life_us: f64,
    /// The weighted rows of the buckets that have ended.
    pub decaying: f64,
    /// The rows of the bucket `at_us` falls in: they count fully until it ends.
    pub flat: f64,
    /// Start of the newest bucket in the window.
    pub newest_us: Option<i64>,
}

impl DecayParts {
    /// Splits the decayed count `feature` (which must have a window) read at `at_us`.
    pub fn of(feature: &Feature, state: FeatureView<'_>, at_us: i64) -> Option<Self> {
        let window = feature.window?;
        let half_life_us = feature.half_life.map_or(1.0, |h| h.as_micros() as f64);
        let mut parts = Self { at_us, half_life_us, ..Self::default() };
        for (start_us, cell) in state.buckets() {
            let start = window.bucket_of(start_us) * window.bucket_us;
            if !window.contains(at_us, start) {
                continue;
            }
            parts.newest_us = parts.newest_us.max(Some(start));
            // A bucket's rows count as if they happened at its end (never in the future).
            let age_us = at_us - (start + window.bucket_us);
            let rows = cell.values().sum::<i64>() as f64;
            if age_us >= 0 {
                parts.decaying += 0.5f64.powf(age_us as f64 / half_life_us) * rows;
            } else {
                parts.flat += rows;
            }
        }
        Some(parts)
    }

    /// The decayed count at `t_us` (not before `at_us`, and before the state's next change),
    /// rounded as features are served.
    pub fn at(&self, t_us: i64) -> f64 {
        let elapsed = (t_us - self.at_us).max(0) as f64;
        let decaying = if elapsed == 0.0 {
            self.decaying
        } else {
            self.decaying * 0.5f64.powf(elapsed / self.half_life_us)
        };
        ((decaying + self.flat) * 1e6).round() / 1e6
    }
}
