//! Per-user features derived from `user_activity`: the last viewed product and the count of each
//! activity type over sliding event-time windows.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

pub const VIEW_PRODUCT: &str = "VIEW_PRODUCT";
pub const LAST_VIEWED_PRODUCT: &str = "last_viewed_product";

/// Activity types the legacy application writes. Their window counts are always reported (zero
/// when none); other types are counted too and reported when the user has some.
pub const ACTIVITY_TYPES: [&str; 5] =
    ["VIEW_PRODUCT", "CLICK", "SEARCH", "ADD_TO_CART", "PURCHASE"];

/// How many of a user's most recent product views are kept, so that deleting the latest view
/// falls back to the one before it. Deleting more than this many newest views in a row leaves
/// `last_viewed_product` missing even if older views exist.
pub const RETAINED_VIEWS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub label: &'static str,
    pub seconds: i64,
}

impl Window {
    pub fn length(&self) -> TimeDelta {
        TimeDelta::seconds(self.seconds)
    }
}

/// Sliding windows `(t - length, t]` evaluated at read time `t`.
pub const WINDOWS: [Window; 3] = [
    Window { label: "1m", seconds: 60 },
    Window { label: "5m", seconds: 5 * 60 },
    Window { label: "15m", seconds: 15 * 60 },
];

/// Facts older than the longest window can never count again, so they are pruned on write.
fn retention() -> TimeDelta {
    WINDOWS.iter().map(Window::length).max().unwrap_or_default()
}

/// One `user_activity` row, as decoded from a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub id: String,
    pub user_id: String,
    pub activity_type: String,
    pub product_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// What one change event means for one user's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivityChange {
    /// Insert, update or snapshot read of the row: replaces whatever the row contributed.
    Upsert(Activity),
    /// The row is gone (or moved to another user): it contributes nothing any more.
    Delete { id: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RecentActivity {
    #[serde(rename = "t")]
    activity_type: String,
    #[serde(rename = "at")]
    at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ViewFact {
    id: String,
    #[serde(rename = "p")]
    product_id: String,
    #[serde(rename = "at")]
    at_us: i64,
}

/// Everything persona keeps about one user, as stored in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// Incremented by every applied change; lets caches keep the newest copy.
    pub rev: u64,
    /// Activities within the longest window, by activity id.
    #[serde(default)]
    recent: BTreeMap<String, RecentActivity>,
    /// The newest product views, newest first, at most [`RETAINED_VIEWS`].
    #[serde(default)]
    views: Vec<ViewFact>,
}

impl UserState {
    /// Rough size in memory, for the L1 cache's byte budget.
    pub fn approx_bytes(&self) -> usize {
        64 + self.recent.len() * 96 + self.views.len() * 112
    }
}

/// Applies one change to a user's state. Pure: `now` is the processing time, used only to
/// prune facts no window can count any more.
pub fn apply(mut state: UserState, change: &ActivityChange, now: DateTime<Utc>) -> UserState {
    let horizon = (now - retention()).timestamp_micros();
    match change {
        ActivityChange::Upsert(activity) => {
            remove_fact(&mut state, &activity.id);
            let at_us = activity.at.timestamp_micros();
            if at_us > horizon {
                state.recent.insert(
                    activity.id.clone(),
                    RecentActivity { activity_type: activity.activity_type.clone(), at_us },
                );
            }
            if activity.activity_type == VIEW_PRODUCT
                && let Some(product_id) = &activity.product_id
            {
                state.views.push(ViewFact {
                    id: activity.id.clone(),
                    product_id: product_id.clone(),
                    at_us,
                });
                // Newest first; the id breaks ties so the order never depends on arrival.
                state.views.sort_by(|a, b| (b.at_us, &b.id).cmp(&(a.at_us, &a.id)));
                state.views.truncate(RETAINED_VIEWS);
            }
        }
        ActivityChange::Delete { id } => remove_fact(&mut state, id),
    }
    state.recent.retain(|_, fact| fact.at_us > horizon);
    state.rev += 1;
    state
}

fn remove_fact(state: &mut UserState, id: &str) {
    state.recent.remove(id);
    state.views.retain(|view| view.id != id);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureStatus {
    /// Computed from state that is current as far as persona knows.
    Present,
    /// Nothing to compute it from (unknown user, or no such event yet).
    Missing,
    /// Served from the in-process cache while Redis is unreachable; may lag behind the source.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureValue {
    pub status: FeatureStatus,
    pub value: serde_json::Value,
    /// Event time of the newest event the value is derived from.
    pub event_time: Option<DateTime<Utc>>,
}

impl FeatureValue {
    pub fn missing() -> Self {
        Self { status: FeatureStatus::Missing, value: serde_json::Value::Null, event_time: None }
    }
}

/// Feature name → value, in name order.
pub type UserFeatures = BTreeMap<String, FeatureValue>;

fn count_name(activity_type: &str, window: &Window) -> String {
    format!("{}_count_{}", activity_type.to_ascii_lowercase(), window.label)
}

/// Every feature name reported for any user, sorted. Built once: it is read on every request.
pub fn feature_names() -> &'static [String] {
    static NAMES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut names = vec![LAST_VIEWED_PRODUCT.to_string()];
        for activity_type in ACTIVITY_TYPES {
            names.extend(WINDOWS.iter().map(|window| count_name(activity_type, window)));
        }
        names.sort();
        names
    });
    &NAMES
}

fn micros_to_time(at_us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(at_us)
}

/// Evaluates every feature of a user at read time `at`. `None` (unknown user) gives every
/// feature as missing.
pub fn evaluate(state: Option<&UserState>, at: DateTime<Utc>) -> UserFeatures {
    let mut features: UserFeatures =
        feature_names().iter().map(|name| (name.clone(), FeatureValue::missing())).collect();
    let Some(state) = state else {
        return features;
    };
    let at_us = at.timestamp_micros();

    if let Some(view) = state.views.iter().find(|view| view.at_us <= at_us) {
        features.insert(
            LAST_VIEWED_PRODUCT.to_string(),
            FeatureValue {
                status: FeatureStatus::Present,
                value: serde_json::Value::String(view.product_id.clone()),
                event_time: micros_to_time(view.at_us),
            },
        );
    }

    let mut types: Vec<&str> = ACTIVITY_TYPES.to_vec();
    for fact in state.recent.values() {
        if !types.contains(&fact.activity_type.as_str()) {
            types.push(&fact.activity_type);
        }
    }
    for activity_type in types {
        for window in &WINDOWS {
            let from_us = (at - window.length()).timestamp_micros();
            let in_window = state.recent.values().filter(|fact| {
                fact.activity_type == activity_type && fact.at_us > from_us && fact.at_us <= at_us
            });
            let (count, newest) = in_window.fold((0u64, None::<i64>), |(n, newest), fact| {
                (n + 1, Some(newest.map_or(fact.at_us, |t| t.max(fact.at_us))))
            });
            features.insert(
                count_name(activity_type, window),
                FeatureValue {
                    status: FeatureStatus::Present,
                    value: serde_json::Value::from(count),
                    event_time: newest.and_then(micros_to_time),
                },
            );
        }
    }
    features
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z").expect("valid").with_timezone(&Utc)
    }

    fn activity(id: &str, kind: &str, product: Option<&str>, secs_ago: i64) -> Activity {
        Activity {
            id: id.into(),
            user_id: "u1".into(),
            activity_type: kind.into(),
            product_id: product.map(Into::into),
            at: t0() - TimeDelta::seconds(secs_ago),
        }
    }

    fn upsert(a: Activity) -> ActivityChange {
        ActivityChange::Upsert(a)
    }

    fn fold(changes: &[ActivityChange]) -> UserState {
        changes.iter().fold(UserState::default(), |s, c| apply(s, c, t0()))
    }

    fn count(features: &UserFeatures, name: &str) -> u64 {
        features[name].value.as_u64().unwrap_or_else(|| panic!("{name} is not a count"))
    }

    #[test]
    fn counts_fall_into_sliding_windows() {
        let state = fold(&[
            upsert(activity("a", "CLICK", None, 10)),
            upsert(activity("b", "CLICK", None, 120)),
            upsert(activity("c", "CLICK", None, 600)),
            upsert(activity("d", "SEARCH", None, 30)),
        ]);
        let f = evaluate(Some(&state), t0());
        assert_eq!(count(&f, "click_count_1m"), 1);
        assert_eq!(count(&f, "click_count_5m"), 2);
        assert_eq!(count(&f, "click_count_15m"), 3);
        assert_eq!(count(&f, "search_count_1m"), 1);
        assert_eq!(count(&f, "purchase_count_15m"), 0);
        assert_eq!(f["click_count_15m"].event_time, Some(t0() - TimeDelta::seconds(10)));
    }

    #[test]
    fn counts_decay_at_read_time_without_new_events() {
        let state = fold(&[upsert(activity("a", "CLICK", None, 10))]);
        let later = t0() + TimeDelta::seconds(55);
        let f = evaluate(Some(&state), later);
        assert_eq!(count(&f, "click_count_1m"), 0);
        assert_eq!(count(&f, "click_count_5m"), 1);
    }

    #[test]
    fn last_viewed_is_by_event_time_not_arrival() {
        let state = fold(&[
            upsert(activity("new", VIEW_PRODUCT, Some("p-new"), 5)),
            upsert(activity("old", VIEW_PRODUCT, Some("p-old"), 50)),
        ]);
        let f = evaluate(Some(&state), t0());
        assert_eq!(f[LAST_VIEWED_PRODUCT].value, "p-new");
        assert_eq!(f[LAST_VIEWED_PRODUCT].event_time, Some(t0() - TimeDelta::seconds(5)));
    }

    #[test]
    fn last_viewed_survives_beyond_the_windows() {
        let state = fold(&[upsert(activity("v", VIEW_PRODUCT, Some("p1"), 3 * 24 * 3600))]);
        let f = evaluate(Some(&state), t0());
        assert_eq!(f[LAST_VIEWED_PRODUCT].value, "p1");
        assert_eq!(count(&f, "view_product_count_15m"), 0);
    }

    #[test]
    fn update_moves_the_count_and_delete_removes_it() {
        let mut state = fold(&[upsert(activity("a", "CLICK", None, 10))]);
        state = apply(state, &upsert(activity("a", "SEARCH", None, 10)), t0());
        let f = evaluate(Some(&state), t0());
        assert_eq!(count(&f, "click_count_1m"), 0);
        assert_eq!(count(&f, "search_count_1m"), 1);
        state = apply(state, &ActivityChange::Delete { id: "a".into() }, t0());
        let f = evaluate(Some(&state), t0());
        assert_eq!(count(&f, "search_count_1m"), 0);
    }

    #[test]
    fn deleting_the_last_view_falls_back_to_the_previous_one() {
        let state = fold(&[
            upsert(activity("v1", VIEW_PRODUCT, Some("p1"), 20)),
            upsert(activity("v2", VIEW_PRODUCT, Some("p2"), 10)),
            ActivityChange::Delete { id: "v2".into() },
        ]);
        assert_eq!(evaluate(Some(&state), t0())[LAST_VIEWED_PRODUCT].value, "p1");
        let state = apply(state, &ActivityChange::Delete { id: "v1".into() }, t0());
        assert_eq!(
            evaluate(Some(&state), t0())[LAST_VIEWED_PRODUCT].status,
            FeatureStatus::Missing
        );
    }

    #[test]
    fn unknown_user_has_every_feature_missing() {
        let f = evaluate(None, t0());
        assert_eq!(f.len(), feature_names().len());
        assert!(f.values().all(|v| v.status == FeatureStatus::Missing && v.value.is_null()));
    }

    #[test]
    fn unlisted_activity_types_are_counted_too() {
        let state = fold(&[upsert(activity("w", "WISHLIST", None, 5))]);
        assert_eq!(count(&evaluate(Some(&state), t0()), "wishlist_count_1m"), 1);
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = fold(&[
            upsert(activity("a", "CLICK", None, 10)),
            upsert(activity("v", VIEW_PRODUCT, Some("p"), 20)),
        ]);
        let json = serde_json::to_string(&state).expect("serializes");
        assert_eq!(serde_json::from_str::<UserState>(&json).expect("parses"), state);
    }

    const KINDS: [&str; 3] = ["CLICK", VIEW_PRODUCT, "SEARCH"];

    fn arb_activity() -> impl Strategy<Value = Activity> {
        (0u8..12, 0usize..KINDS.len(), 0u8..4, 0i64..1_200).prop_map(|(id, kind, product, ago)| {
            activity(&format!("id{id}"), KINDS[kind], Some(&format!("p{product}")), ago)
        })
    }

    fn without_rev(mut state: UserState) -> UserState {
        state.rev = 0;
        state
    }

    fn distinct_by_id(activities: Vec<Activity>) -> Vec<Activity> {
        let mut seen = std::collections::BTreeSet::new();
        activities.into_iter().filter(|a| seen.insert(a.id.clone())).collect()
    }

    proptest! {
        #[test]
        fn redelivered_change_is_ignored(history in prop::collection::vec(arb_activity(), 0..20),
                                         change in arb_activity()) {
            let base = fold(&history.into_iter().map(upsert).collect::<Vec<_>>());
            let once = apply(base, &upsert(change.clone()), t0());
            let twice = apply(once.clone(), &upsert(change), t0());
            prop_assert_eq!(without_rev(once), without_rev(twice));
        }

        #[test]
        fn replaying_a_suffix_in_order_converges(
            changes in prop::collection::vec(
                prop_oneof![
                    arb_activity().prop_map(upsert),
                    (0u8..12).prop_map(|id| ActivityChange::Delete { id: format!("id{id}") }),
                ],
                1..30),
            cut in 0usize..30) {
            let cut = cut.min(changes.len());
            let straight = fold(&changes);
            // Crash after `changes.len()` applied, offsets committed only up to `cut`.
            let replayed = changes[cut..].iter().fold(straight.clone(), |s, c| apply(s, c, t0()));
            prop_assert_eq!(
                evaluate(Some(&straight), t0()),
                evaluate(Some(&replayed), t0())
            );
        }

        #[test]
        fn apply_then_delete_equals_never_applied(
            history in prop::collection::vec(arb_activity(), 0..20), extra in arb_activity()) {
            let history: Vec<_> = history.into_iter().filter(|a| a.id != extra.id).collect();
            let base = fold(&history.into_iter().map(upsert).collect::<Vec<_>>());
            let retracted = apply(
                apply(base.clone(), &upsert(extra.clone()), t0()),
                &ActivityChange::Delete { id: extra.id },
                t0(),
            );
            prop_assert_eq!(evaluate(Some(&base), t0()), evaluate(Some(&retracted), t0()));
        }

        #[test]
        fn arrival_order_does_not_change_the_result(
            activities in prop::collection::vec(arb_activity(), 0..20), seed in any::<u64>()) {
            let activities = distinct_by_id(activities);
            let mut shuffled = activities.clone();
            // A deterministic shuffle from the seed (Fisher–Yates with an LCG).
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let a = fold(&activities.into_iter().map(upsert).collect::<Vec<_>>());
            let b = fold(&shuffled.into_iter().map(upsert).collect::<Vec<_>>());
            prop_assert_eq!(without_rev(a), without_rev(b));
        }
    }
}
