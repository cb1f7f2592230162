//! Features over the same rows share their buckets (`definition::SharedBuckets`) and their
//! facts (`definition::SharedFacts`). Reads must not tell: for any history, at any read time, every value is the one each feature's own
//! buckets gave, rows too old are counted late as often, and a share written before buckets
//! were shared goes on reading exactly while its own states age out.

use super::*;

/// The shipped definitions as they were before features shared buckets.
fn unshared() -> FeatureSet {
    let mut set = set();
    for feature in &mut set.features {
        feature.shared = None;
        feature.shared_facts = None;
        feature.session_in = None;
    }
    set
}

/// Read times around the changes' processing time (`t0`): a window's whole span, `history`
/// back, and ahead of it.
fn read_times() -> [DateTime<Utc>; 5] {
    let at = |secs: i64| t0() + TimeDelta::seconds(secs);
    [at(0), at(-290), at(-899), at(-37), at(45)]
}

fn reads(set: &FeatureSet, entity: Entity, id: &str, state: &EntityState) -> Vec<Features> {
    let catalog = catalog();
    let read = |at| evaluate(set, entity, id, Some(state), None, &context(at, &catalog, &|_| None));
    read_times().into_iter().map(read).collect()
}

/// Applies `changes` on `state` as processed at `now`; the rows they dropped as late.
fn apply_all(
    set: &FeatureSet,
    entity: Entity,
    id: &str,
    state: &mut EntityState,
    changes: &[SourceChange],
    now: DateTime<Utc>,
) -> u32 {
    let late = changes.iter().map(|change| {
        let stream = format!("{}/0", change.table);
        apply(set, entity, id, state, change, &stream, now).late
    });
    late.sum()
}

/// A state as the upgraded `persona` reads it from Redis.
fn read_back(state: &EntityState) -> EntityState {
    serde_json::from_str(&serde_json::to_string(state).expect("encodes")).expect("decodes")
}

const ENTITIES: [(Entity, &str); 3] =
    [(Entity::USER, "u1"), (Entity::PRODUCT, "p1"), (Entity::PRODUCT, "p3")];

proptest! {
    #[test]
    fn shared_buckets_read_as_each_features_own(
        steps in prop::collection::vec(arb_step(), 0..40),
    ) {
        let (changes, _) = run(&steps);
        let (shared, own) = (set(), unshared());
        for (entity, id) in ENTITIES {
            let (mut with, mut without) = (EntityState::default(), EntityState::default());
            let late_with = apply_all(&shared, entity, id, &mut with, &changes, t0());
            let late_without = apply_all(&own, entity, id, &mut without, &changes, t0());
            prop_assert_eq!(late_with, late_without);
            prop_assert_eq!(reads(&shared, entity, id, &with), reads(&own, entity, id, &without));
        }
    }

    /// A share written before buckets were shared, then changed (rows added, updated and
    /// deleted, its older rows among them) by a `persona` that shares them.
    #[test]
    fn a_share_written_before_buckets_were_shared_reads_exactly_as_it_changes(
        steps in prop::collection::vec(arb_step(), 0..40),
        upgraded_after in 0usize..40,
    ) {
        let (changes, _) = run(&steps);
        let split = upgraded_after.min(changes.len());
        let (shared, own) = (set(), unshared());
        for (entity, id) in ENTITIES {
            let mut upgraded = EntityState::default();
            let mut late = apply_all(&own, entity, id, &mut upgraded, &changes[..split], t0());
            let mut upgraded = read_back(&upgraded);
            late += apply_all(&shared, entity, id, &mut upgraded, &changes[split..], t0());
            let mut reference = EntityState::default();
            prop_assert_eq!(late, apply_all(&own, entity, id, &mut reference, &changes, t0()));
            prop_assert_eq!(reads(&shared, entity, id, &upgraded), reads(&own, entity, id, &reference));
        }
    }
}

#[test]
fn own_states_written_before_sharing_leave_as_their_rows_leave_their_windows() {
    let (shared, own) = (set(), unshared());
    let mut state = EntityState::default();
    let earlier = [
        insert(activity("a", "u1", "VIEW_PRODUCT", Some("p1"), 30), 1),
        insert(activity("b", "u1", "CLICK", Some("p2"), 20), 2),
    ];
    apply_all(&own, Entity::USER, "u1", &mut state, &earlier, t0());
    let mut state = read_back(&state);
    assert!(state.features.contains_key("views_5m") && state.features.contains_key("clicks_1m"));
    // Two hours on, past every window and `history`: new rows go to the shared states, and
    // the own states, empty of anything a read can see, are gone.
    let later = t0() + TimeDelta::hours(2);
    let row = |key: &str, kind: &str| {
        let mut row = activity(key, "u1", kind, Some("p1"), 0);
        row.time_us = later.timestamp_micros();
        row
    };
    let now = [insert(row("c", "VIEW_PRODUCT"), 3), insert(row("d", "CLICK"), 4)];
    apply_all(&shared, Entity::USER, "u1", &mut state, &now, later);
    for feature in shared.features.iter().filter(|f| f.shared.is_some() && f.entity == Entity::USER)
    {
        assert!(!state.features.contains_key(feature.name), "{} kept its own state", feature.name);
    }
    assert!(state.features.contains_key("views_1m+views_5m+views_15m"));
    let read = evaluate(
        &shared,
        Entity::USER,
        "u1",
        Some(&state),
        None,
        &context(later, &catalog(), &|_| None),
    );
    assert_eq!(read["views_15m"].value, json!(1));
    assert_eq!(read["clicks_5m"].value, json!(1));
}
