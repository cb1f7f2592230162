//! `next_change` and `DecayParts`: a value read at one time holds (a decayed count follows its
//! parts) until the time `next_change` gives, for every aggregation and any state.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;

use super::state::{Fact, FeatureState};
use super::tests::{catalog, sets, t0};
use super::*;

/// Stored values of every kind the test definitions resolve: product ids (joined), activity
/// types, a plain number; and one the catalog does not know.
const VALUES: [&str; 7] = ["p1", "p2", "p9", "CLICK", "VIEW_PRODUCT", "SEARCH", "12.5"];

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn read(feature: &Feature, set: &FeatureSet, state: &FeatureState, at_us: i64) -> FeatureValue {
    let mut entity = EntityState::default();
    entity.features.insert(feature.name, state.clone());
    let at = DateTime::from_timestamp_micros(at_us).expect("in range");
    let catalog = catalog();
    let names = [feature.name.to_string()];
    let context = ReadContext { at, catalog: &catalog, ranking: &|_| None };
    let mut values = evaluate(set, feature.entity, "e1", Some(&entity), Some(&names), &context);
    values.remove(feature.name).expect("the feature is read")
}

/// A state with rows at the given offsets (seconds from `t0`), bucketed by the feature's window.
fn state_of(
    feature: &Feature,
    rows: &[(i64, usize, i64)],
    facts: &[(u8, i64, usize)],
) -> FeatureState {
    let mut state = FeatureState::default();
    for (secs, value, count) in rows {
        let at_us = micros(t0() + TimeDelta::seconds(*secs));
        let bucket = feature.window.map_or(0, |window| window.bucket_of(at_us));
        state.buckets.add(bucket, VALUES[*value], *count);
    }
    for (key, secs, value) in facts {
        let fact =
            Fact { at_us: micros(t0() + TimeDelta::seconds(*secs)), value: VALUES[*value].into() };
        state.facts.insert(format!("r{key}").into(), fact);
    }
    state
}

#[test]
fn a_bucket_leaves_the_window_at_its_boundary() {
    let [_, set] = sets();
    let feature = set.get("count_5m").expect("defined");
    // 5m windows have 5 s buckets: a row 2 minutes ago leaves 3 minutes from now, and a row
    // 10 s ahead of the read time (a skewed clock) enters at its bucket's start.
    let state = state_of(feature, &[(-120, 3, 1)], &[]);
    assert_eq!(
        next_change(feature, FeatureView::own(feature, &state), micros(t0())),
        Some(micros(t0()) + 180_000_000)
    );
    let ahead = state_of(feature, &[(-120, 3, 1), (12, 3, 1)], &[]);
    assert_eq!(
        next_change(feature, FeatureView::own(feature, &ahead), micros(t0())),
        Some(micros(t0()) + 10_000_000)
    );
    assert_eq!(
        next_change(
            feature,
            FeatureView::own(feature, &state_of(feature, &[(-400, 3, 1)], &[])),
            micros(t0())
        ),
        None
    );
    let unwindowed = set.get("count_all").expect("defined");
    assert_eq!(
        next_change(
            unwindowed,
            FeatureView::own(unwindowed, &state_of(unwindowed, &[(-5, 3, 1)], &[])),
            0
        ),
        None
    );
}

#[test]
fn the_newest_bucket_of_a_decayed_count_starts_decaying_when_it_ends() {
    let [set, _] = sets();
    let feature = set.get("trending_score").expect("shipped");
    // 1h windows have 1 min buckets; t0 + 30 s is in the bucket starting at t0.
    let state = state_of(feature, &[(0, 4, 2), (-1800, 4, 1)], &[]);
    let at = micros(t0()) + 30_000_000;
    assert_eq!(
        next_change(feature, FeatureView::own(feature, &state), at),
        Some(micros(t0()) + 60_000_000)
    );
    let parts = DecayParts::of(feature, FeatureView::own(feature, &state), at).expect("windowed");
    assert_eq!(parts.flat, 2.0);
    assert!(parts.decaying > 0.0 && parts.decaying < 1.0, "{parts:?}");
}

proptest! {
    /// Between a read and the next change `next_change` gives, every value stays the same and a
    /// decayed count follows its parts.
    #[test]
    fn values_hold_until_the_next_change(
        rows in prop::collection::vec((-90_000i64..600, 0..VALUES.len(), 1i64..4), 0..12),
        facts in prop::collection::vec((0u8..6, -90_000i64..600, 0..VALUES.len()), 0..6),
        at_secs in -4_000i64..600,
        probes in prop::collection::vec(0.0f64..1.0, 1..6),
    ) {
        let at_us = micros(t0() + TimeDelta::seconds(at_secs));
        for set in sets() {
            for feature in set.features.iter().filter(|f| f.aggregation != Aggregation::Percentile) {
                let state = state_of(feature, &rows, &facts);
                let change = next_change(feature, FeatureView::own(feature, &state), at_us);
                let until = match change {
                    Some(change) => {
                        prop_assert!(change > at_us, "{}: {change} is not after {at_us}", feature.name);
                        change
                    }
                    None => at_us + 3 * 86_400_000_000,
                };
                let first = read(feature, &set, &state, at_us);
                let parts = DecayParts::of(feature, FeatureView::own(feature, &state), at_us);
                for probe in &probes {
                    let t_us = at_us + ((until - at_us) as f64 * probe) as i64;
                    let later = read(feature, &set, &state, t_us);
                    if feature.aggregation == Aggregation::DecayedCount {
                        let expected = parts.expect("windowed").at(t_us);
                        let served = later.value.as_f64().expect("a number");
                        prop_assert!((served - expected).abs() <= 2e-6,
                            "{} at +{}µs: served {served}, parts give {expected}", feature.name, t_us - at_us);
                        prop_assert_eq!(later.event_time, first.event_time);
                    } else {
                        prop_assert_eq!(&later, &first, "{} at +{}µs", feature.name, t_us - at_us);
                    }
                }
            }
        }
    }

    /// `next_change` is not merely cautious: at that time a stored bucket or fact has entered or
    /// left the window, or (decayed counts) the bucket the read fell in has ended.
    #[test]
    fn the_next_change_is_a_real_boundary(
        rows in prop::collection::vec((-90_000i64..600, 0..VALUES.len(), 1i64..4), 1..12),
        at_secs in -4_000i64..600,
    ) {
        let at_us = micros(t0() + TimeDelta::seconds(at_secs));
        for set in sets() {
            for feature in set.features.iter() {
                let Some(window) = feature.window else { continue };
                let state = state_of(feature, &rows, &[]);
                let Some(change) = next_change(feature, FeatureView::own(feature, &state), at_us) else { continue };
                let inside = |t_us: i64| -> BTreeMap<i64, bool> {
                    state.buckets.keys().map(|b| (b, window.contains(t_us, b * window.bucket_us))).collect()
                };
                let newest_ended = feature.aggregation == Aggregation::DecayedCount
                    && window.bucket_of(change) != window.bucket_of(at_us)
                    && state.buckets.get(window.bucket_of(at_us)).is_some();
                prop_assert!(inside(change) != inside(at_us) || newest_ended, "{}", feature.name);
                prop_assert!(inside(change - 1) == inside(at_us), "{} changed before {change}", feature.name);
            }
        }
    }
}
