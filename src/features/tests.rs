//! Unit and property tests of the feature engine, through the shipped definitions.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;

use super::*;

mod overlap;
mod prune;
mod snapshot;
mod truncate;

pub(super) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z").expect("valid").with_timezone(&Utc)
}

fn set() -> FeatureSet {
    FeatureSet::load(None).expect("built-in definitions are valid")
}

fn activity(id: &str, user: &str, kind: &str, product: Option<&str>, secs_ago: i64) -> SourceRow {
    let at = t0() - TimeDelta::seconds(secs_ago);
    let mut columns = BTreeMap::new();
    columns.insert("id", Scalar::Text(id.into()));
    columns.insert("user_id", Scalar::Text(user.into()));
    columns.insert("activity_type", Scalar::Text(kind.into()));
    columns.insert("product_id", product.map_or(Scalar::Null, |p| Scalar::Text(p.into())));
    columns.insert("activity_timestamp", Scalar::Time(at.timestamp_micros()));
    SourceRow::reference(id.into(), columns, at)
}

fn cart(user: &str, product: &str, quantity: i64, price: &str) -> SourceRow {
    let mut columns = BTreeMap::new();
    columns.insert("user_id", Scalar::Text(user.into()));
    columns.insert("product_id", Scalar::Text(product.into()));
    columns.insert("quantity", Scalar::Number(Decimal::from(quantity)));
    columns.insert("unit_price", Scalar::Number(price.parse().expect("decimal")));
    columns.insert("updated_at", Scalar::Null);
    SourceRow::reference(format!("{user}/{product}"), columns, t0())
}

fn order(id: i64, user: &str, product: &str, secs_ago: i64) -> SourceRow {
    let at = t0() - TimeDelta::seconds(secs_ago);
    let mut columns = BTreeMap::new();
    columns.insert("id", Scalar::Number(Decimal::from(id)));
    columns.insert("user_id", Scalar::Text(user.into()));
    columns.insert("product_id", Scalar::Text(product.into()));
    columns.insert("quantity", Scalar::Number(Decimal::ONE));
    columns.insert("amount", Scalar::Number(Decimal::TEN));
    columns.insert("status", Scalar::Text("paid".into()));
    columns.insert("created_at", Scalar::Time(at.timestamp_micros()));
    SourceRow::reference(id.to_string(), columns, at)
}

fn change(
    table: SourceTable,
    before: Option<SourceRow>,
    after: Option<SourceRow>,
    lsn: i64,
) -> SourceChange {
    let rank = u8::from(after.is_some());
    SourceChange {
        table,
        before,
        after,
        position: Some(Position(lsn, lsn, rank)),
        snapshot: None,
        run: None,
        processed_ms: None,
        truncated: None,
        truncate: false,
        committed_at: Some(t0()),
        replay: false,
        overlapped: false,
    }
}

fn insert(row: SourceRow, lsn: i64) -> SourceChange {
    change(SourceTable::new("user_activity"), None, Some(row), lsn)
}

pub(super) fn catalog() -> HashMap<String, Product> {
    let product = |id: &str, category: &str, brand: &str, price: i64| {
        let name = format!("{id} name");
        Product::reference(id, Some(&name), Some(category), Some(brand), Some(Decimal::from(price)))
    };
    [
        product("p1", "shoes", "acme", 20),
        product("p2", "shoes", "zeta", 60),
        product("p3", "hats", "acme", 120),
        product("p4", "bags", "bolt", 300),
    ]
    .into_iter()
    .map(|p| (p.id.clone(), p))
    .collect()
}

fn fold(set: &FeatureSet, entity: Entity, id: &str, changes: &[SourceChange]) -> EntityState {
    let mut state = EntityState::default();
    for change in changes {
        let stream = format!("{}/0", change.table);
        apply(set, entity, id, &mut state, change, &stream, t0());
    }
    state
}

fn context<'a>(
    at: DateTime<Utc>,
    catalog: &'a HashMap<String, Product>,
    ranking: &'a dyn Fn(&Feature) -> Option<std::sync::Arc<Ranking>>,
) -> ReadContext<'a> {
    ReadContext { at, catalog, ranking }
}

fn read(set: &FeatureSet, entity: Entity, id: &str, state: &EntityState) -> Features {
    evaluate(set, entity, id, Some(state), None, &context(t0(), &catalog(), &|_| None))
}

fn user(changes: &[SourceChange]) -> Features {
    let set = set();
    read(&set, Entity::USER, "u1", &fold(&set, Entity::USER, "u1", changes))
}

#[test]
fn counts_fall_into_sliding_windows_and_decay() {
    let set = set();
    let state = fold(
        &set,
        Entity::USER,
        "u1",
        &[
            insert(activity("a", "u1", "CLICK", None, 10), 1),
            insert(activity("b", "u1", "CLICK", None, 120), 2),
            insert(activity("c", "u1", "CLICK", None, 600), 3),
        ],
    );
    let now = read(&set, Entity::USER, "u1", &state);
    assert_eq!(now["clicks_1m"].value, json!(1));
    assert_eq!(now["clicks_5m"].value, json!(2));
    assert_eq!(now["clicks_15m"].value, json!(3));
    // Bucket resolution: a 1m window has 1s buckets.
    assert_eq!(now["clicks_1m"].event_time, Some(t0() - TimeDelta::seconds(10)));
    let later = evaluate(
        &set,
        Entity::USER,
        "u1",
        Some(&state),
        None,
        &context(t0() + TimeDelta::seconds(55), &catalog(), &|_| None),
    );
    assert_eq!(later["clicks_1m"].value, json!(0));
    assert_eq!(later["clicks_5m"].value, json!(2));
}

#[test]
fn unknown_entity_has_every_feature_missing() {
    let set = set();
    let features =
        evaluate(&set, Entity::USER, "nobody", None, None, &context(t0(), &catalog(), &|_| None));
    assert_eq!(features.len(), set.of_entity(Entity::USER).count());
    assert!(features.values().all(|v| v.status == FeatureStatus::Missing));
}

#[test]
fn last_viewed_is_by_event_time_and_a_delete_falls_back() {
    let v1 = activity("v1", "u1", "VIEW_PRODUCT", Some("p1"), 20);
    let v2 = activity("v2", "u1", "VIEW_PRODUCT", Some("p2"), 10);
    let f = user(&[insert(v2.clone(), 1), insert(v1.clone(), 2)]);
    assert_eq!(f["last_viewed_product"].value, json!("p2"));
    let f = user(&[
        insert(v1.clone(), 1),
        insert(v2.clone(), 2),
        change(SourceTable::new("user_activity"), Some(v2), None, 3),
    ]);
    assert_eq!(f["last_viewed_product"].value, json!("p1"));
    assert_eq!(f["last_viewed_product"].event_time, Some(t0() - TimeDelta::seconds(20)));
}

#[test]
fn joins_read_the_product_as_it_is_now() {
    let f = user(&[
        insert(activity("v1", "u1", "VIEW_PRODUCT", Some("p1"), 30), 1),
        insert(activity("v2", "u1", "VIEW_PRODUCT", Some("p3"), 20), 2),
        insert(activity("v3", "u1", "VIEW_PRODUCT", Some("p2"), 10), 3),
        insert(activity("v4", "u1", "VIEW_PRODUCT", Some("unknown"), 5), 4),
    ]);
    assert_eq!(f["category_views_1h"].value, json!({"shoes": 2, "hats": 1}));
    assert_eq!(f["recent_categories_10m"].value, json!(["shoes", "hats"]));
    assert_eq!(f["recent_products_viewed"].value, json!(["unknown", "p2", "p3", "p1"]));
}

#[test]
fn price_bands_and_conversion() {
    let f = user(&[
        insert(activity("s1", "u1", "SEARCH", None, 50), 1),
        insert(activity("s2", "u1", "SEARCH", None, 40), 2),
        insert(activity("c1", "u1", "CLICK", Some("p1"), 30), 3),
        insert(activity("c2", "u1", "CLICK", Some("p4"), 20), 4),
        insert(activity("a1", "u1", "ADD_TO_CART", Some("p4"), 10), 5),
    ]);
    assert_eq!(f["clicks_by_price_band_1h"].value, json!({"<25": 1, "250+": 1}));
    assert_eq!(
        f["search_click_cart_conversion_1h"].value,
        json!({"counts": {"SEARCH": 2, "CLICK": 2, "ADD_TO_CART": 1}, "rates": [1.0, 0.5]})
    );
}

#[test]
fn cart_is_current_state_with_updates_and_deletes() {
    let set = set();
    let changes = [
        change(SourceTable::new("cart_items"), None, Some(cart("u1", "p1", 2, "10.50")), 1),
        change(SourceTable::new("cart_items"), None, Some(cart("u1", "p2", 1, "5")), 2),
        change(
            SourceTable::new("cart_items"),
            Some(cart("u1", "p1", 2, "10.50")),
            Some(cart("u1", "p1", 3, "10.50")),
            3,
        ),
        change(SourceTable::new("cart_items"), Some(cart("u1", "p2", 1, "5")), None, 4),
    ];
    let f = read(&set, Entity::USER, "u1", &fold(&set, Entity::USER, "u1", &changes));
    assert_eq!(f["cart_total"].value, json!(31.5));
    assert_eq!(f["cart_item_count"].value, json!(3));
}

#[test]
fn top_brands_and_purchase_intervals() {
    let set = set();
    let changes = [
        change(SourceTable::new("orders"), None, Some(order(1, "u1", "p1", 3600)), 1),
        change(SourceTable::new("orders"), None, Some(order(2, "u1", "p3", 600)), 2),
        change(SourceTable::new("orders"), None, Some(order(3, "u1", "p2", 60)), 3),
        change(SourceTable::new("orders"), None, Some(order(4, "u1", "p4", 30)), 4),
        change(SourceTable::new("orders"), Some(order(4, "u1", "p4", 30)), None, 5),
    ];
    let f = read(&set, Entity::USER, "u1", &fold(&set, Entity::USER, "u1", &changes));
    assert_eq!(
        f["top_brands_purchased_30d"].value,
        json!([{"value": "acme", "count": 2}, {"value": "zeta", "count": 1}])
    );
    assert_eq!(f["purchase_intervals"].value, json!([540.0, 3000.0]));
}

#[test]
fn product_features_merge_partition_shares_and_rank() {
    let set = set();
    let view = |id: &str, user: &str, lsn: i64| {
        insert(activity(id, user, "VIEW_PRODUCT", Some("p1"), 30), lsn)
    };
    let share0 = fold(&set, Entity::PRODUCT, "p1", &[view("a", "u1", 1), view("b", "u1", 2)]);
    let share1 = fold(&set, Entity::PRODUCT, "p1", &[view("c", "u2", 1)]);
    let mut merged = share0.clone();
    merged.merge(&share1);
    let ranking = std::sync::Arc::new(Ranking::new(vec![0.0, 1.0, 3.0, 5.0]));
    let rank = |_: &Feature| Some(std::sync::Arc::clone(&ranking));
    let catalog = catalog();
    let f =
        evaluate(&set, Entity::PRODUCT, "p1", Some(&merged), None, &context(t0(), &catalog, &rank));
    assert_eq!(f["views_1h"].value, json!(3));
    assert_eq!(f["unique_viewers_1h"].value, json!(2));
    // Two of the three other products have fewer views: 66% → 60 at step 10.
    assert_eq!(f["popularity_percentile"].value, json!(60));
}

#[test]
fn duplicates_are_skipped_by_position() {
    let set = set();
    let click = insert(activity("a", "u1", "CLICK", None, 10), 7);
    let mut state = fold(&set, Entity::USER, "u1", std::slice::from_ref(&click));
    let outcome = apply(&set, Entity::USER, "u1", &mut state, &click, "user_activity/0", t0());
    assert!(outcome.duplicate);
    assert_eq!(read(&set, Entity::USER, "u1", &state)["clicks_1m"].value, json!(1));
    // The same position on another stream is another event.
    let outcome = apply(&set, Entity::USER, "u1", &mut state, &click, "user_activity/1", t0());
    assert!(!outcome.duplicate);
}

#[test]
fn a_change_behind_its_stream_is_a_duplicate_unless_redriven() {
    let set = set();
    let late = insert(activity("late", "u1", "CLICK", None, 10), 1);
    let mut state =
        fold(&set, Entity::USER, "u1", &[insert(activity("a", "u1", "CLICK", None, 10), 5)]);
    let stream = "user_activity/0";
    assert!(apply(&set, Entity::USER, "u1", &mut state, &late, stream, t0()).duplicate);
    let redriven = SourceChange { replay: true, ..late };
    assert!(!apply(&set, Entity::USER, "u1", &mut state, &redriven, stream, t0()).duplicate);
    assert!(apply(&set, Entity::USER, "u1", &mut state, &redriven, stream, t0()).duplicate);
    assert_eq!(read(&set, Entity::USER, "u1", &state)["clicks_1m"].value, json!(2));
}

#[test]
fn primary_key_update_is_a_delete_then_an_insert_at_one_lsn() {
    let set = set();
    let old = activity("a", "u1", "CLICK", None, 10);
    let new = activity("b", "u1", "CLICK", None, 10);
    let delete = SourceChange {
        position: Some(Position(5, 9, 0)),
        ..change(SourceTable::new("user_activity"), Some(old.clone()), None, 0)
    };
    let create = SourceChange {
        position: Some(Position(5, 9, 1)),
        ..change(SourceTable::new("user_activity"), None, Some(new), 0)
    };
    let state = fold(&set, Entity::USER, "u1", &[insert(old, 1), delete, create]);
    assert_eq!(read(&set, Entity::USER, "u1", &state)["clicks_1m"].value, json!(1));
}

#[test]
fn rows_older_than_window_and_history_are_dropped_as_late() {
    let set = set();
    let mut state = EntityState::default();
    let old = insert(activity("a", "u1", "CLICK", None, 2 * 3600), 1);
    let outcome = apply(&set, Entity::USER, "u1", &mut state, &old, "s", t0());
    assert!(outcome.late > 0);
    assert!(!state.features.contains_key("clicks_15m"));
}

#[test]
fn state_round_trips_through_json() {
    let set = set();
    let state = fold(
        &set,
        Entity::USER,
        "u1",
        &[
            insert(activity("a", "u1", "CLICK", Some("p1"), 10), 1),
            insert(activity("v", "u1", "VIEW_PRODUCT", Some("p2"), 20), 2),
        ],
    );
    let json = serde_json::to_string(&state).expect("serializes");
    assert_eq!(serde_json::from_str::<EntityState>(&json).expect("parses"), state);
}

// ---- properties ----------------------------------------------------------------------------

/// One feature of every aggregation (but `percentile`, which is derived at read time), windowed
/// and not, joined and not: the properties below hold for each of them.
const EVERY_AGGREGATION: &str = r#"
history = "15m"
[[feature]]
name = "count_5m"
entity = "user"
source = "user_activity"
filter = { activity_type = ["CLICK", "VIEW_PRODUCT"] }
aggregation = "count"
window = "5m"
[[feature]]
name = "count_all"
entity = "user"
source = "user_activity"
aggregation = "count"
[[feature]]
name = "sum_price_1h"
entity = "user"
source = "user_activity"
aggregation = "sum"
value = "product.price"
window = "1h"
[[feature]]
name = "avg_price_1h"
entity = "user"
source = "user_activity"
aggregation = "avg"
value = "product.price"
window = "1h"
[[feature]]
name = "last_type"
entity = "user"
source = "user_activity"
aggregation = "last"
value = "activity_type"
[[feature]]
name = "last_category_10m"
entity = "user"
source = "user_activity"
aggregation = "last"
value = "product.category"
window = "10m"
[[feature]]
name = "last_3_products"
entity = "user"
source = "user_activity"
aggregation = "last_n"
n = 3
value = "product_id"
[[feature]]
name = "distinct_products_1h"
entity = "user"
source = "user_activity"
aggregation = "distinct_count"
value = "product_id"
window = "1h"
[[feature]]
name = "types_15m"
entity = "user"
source = "user_activity"
aggregation = "histogram"
value = "activity_type"
window = "15m"
[[feature]]
name = "price_bands_1h"
entity = "user"
source = "user_activity"
aggregation = "histogram"
value = "product.price"
bands = [50, 150]
window = "1h"
[[feature]]
name = "top_brands_1h"
entity = "user"
source = "user_activity"
aggregation = "top_k"
k = 2
value = "product.brand"
window = "1h"
[[feature]]
name = "price_in_view"
entity = "user"
source = "user_activity"
aggregation = "current_sum"
value = "product.price"
[[feature]]
name = "rows_now"
entity = "user"
source = "user_activity"
aggregation = "current_count"
[[feature]]
name = "intervals_4"
entity = "user"
source = "user_activity"
aggregation = "intervals"
n = 4
[[feature]]
name = "funnel_1h"
entity = "user"
source = "user_activity"
aggregation = "conversion"
value = "activity_type"
steps = ["SEARCH", "CLICK", "ADD_TO_CART"]
window = "1h"
"#;

fn every_aggregation() -> FeatureSet {
    FeatureSet::parse(EVERY_AGGREGATION, "test").expect("valid")
}

/// Both the shipped definitions and one feature of every aggregation.
pub(super) fn sets() -> [FeatureSet; 2] {
    [set(), every_aggregation()]
}

#[test]
fn the_property_set_covers_every_stored_aggregation() {
    let set = every_aggregation();
    for aggregation in [
        Aggregation::Count,
        Aggregation::Sum,
        Aggregation::Avg,
        Aggregation::Last,
        Aggregation::LastN,
        Aggregation::DistinctCount,
        Aggregation::Histogram,
        Aggregation::TopK,
        Aggregation::CurrentSum,
        Aggregation::CurrentCount,
        Aggregation::Intervals,
        Aggregation::Conversion,
    ] {
        assert!(set.features.iter().any(|f| f.aggregation == aggregation), "{aggregation:?}");
    }
}

const KINDS: [&str; 5] = ["CLICK", "VIEW_PRODUCT", "SEARCH", "ADD_TO_CART", "PURCHASE"];
const PRODUCTS: [&str; 5] = ["p1", "p2", "p3", "p4", "p9"];

/// One step of a random workload on a handful of rows: write a row (insert or update) or
/// delete it.
#[derive(Debug, Clone)]
enum Step {
    Write { row: u8, kind: usize, product: usize, secs_ago: i64 },
    Delete { row: u8 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..10, 0..KINDS.len(), 0..PRODUCTS.len(), 0i64..4_000).prop_map(
            |(row, kind, product, secs_ago)| Step::Write { row, kind, product, secs_ago }
        ),
        1 => (0u8..10).prop_map(|row| Step::Delete { row }),
    ]
}

/// The changes a workload produces (with before images, as REPLICA IDENTITY FULL gives), and the
/// rows that exist at its end.
fn run(steps: &[Step]) -> (Vec<SourceChange>, Vec<SourceRow>) {
    let mut rows: BTreeMap<u8, SourceRow> = BTreeMap::new();
    let mut changes = Vec::new();
    for (lsn, step) in (1i64..).zip(steps) {
        match step {
            Step::Write { row, kind, product, secs_ago } => {
                let new = activity(
                    &format!("r{row}"),
                    "u1",
                    KINDS[*kind],
                    Some(PRODUCTS[*product]),
                    *secs_ago,
                );
                let before = rows.insert(*row, new.clone());
                changes.push(change(SourceTable::new("user_activity"), before, Some(new), lsn));
            }
            Step::Delete { row } => {
                if let Some(before) = rows.remove(row) {
                    changes.push(change(
                        SourceTable::new("user_activity"),
                        Some(before),
                        None,
                        lsn,
                    ));
                }
            }
        }
    }
    (changes, rows.into_values().collect())
}

proptest! {
    /// Updates and deletes retract exactly: the state after any history equals the state built
    /// from only the rows that remain, inserted in any order.
    #[test]
    fn history_equals_inserting_the_surviving_rows(
        steps in prop::collection::vec(arb_step(), 0..40),
        seed in any::<u64>(),
    ) {
        let (changes, mut survivors) = run(&steps);
        // Shuffle deterministically by seed: order within retention must not matter.
        survivors.sort_by_key(|row| (row.key.len() as u64 ^ seed).wrapping_mul(row.time.timestamp() as u64 | 1));
        let inserts: Vec<SourceChange> =
            (1i64..).zip(survivors).map(|(lsn, row)| insert(row, lsn)).collect();
        for set in sets() {
            let replayed = fold(&set, Entity::USER, "u1", &changes);
            let direct = fold(&set, Entity::USER, "u1", &inserts);
            prop_assert_eq!(read(&set, Entity::USER, "u1", &replayed), read(&set, Entity::USER, "u1", &direct));
        }
    }

    /// Redelivering any changes already applied (a crash before commit, Debezium publishing
    /// again) changes nothing.
    #[test]
    fn redelivery_changes_nothing(
        steps in prop::collection::vec(arb_step(), 1..40),
        replay_from in 0usize..40,
    ) {
        let (changes, _) = run(&steps);
        let from = replay_from.min(changes.len());
        let mut twice = changes.clone();
        twice.extend_from_slice(&changes[from..]);
        for set in sets() {
            let once = fold(&set, Entity::USER, "u1", &changes);
            let again = fold(&set, Entity::USER, "u1", &twice);
            prop_assert_eq!(read(&set, Entity::USER, "u1", &once), read(&set, Entity::USER, "u1", &again));
        }
    }

    /// A change dead-lettered and re-driven later (behind everything its stream applied since),
    /// however many times, counts as if it had been applied in place.
    #[test]
    fn a_redriven_dead_letter_applies_once(
        steps in prop::collection::vec(arb_step(), 0..30),
        kind in 0..KINDS.len(),
        product in 0..PRODUCTS.len(),
        secs_ago in 0i64..4_000,
        times in 1usize..4,
    ) {
        let (changes, _) = run(&steps);
        let dead = insert(activity("dead", "u1", KINDS[kind], Some(PRODUCTS[product]), secs_ago), 0);
        let mut in_place = vec![dead.clone()];
        in_place.extend(changes.iter().cloned());
        let mut redriven = changes.clone();
        redriven.extend(std::iter::repeat_n(SourceChange { replay: true, ..dead }, times));
        for set in sets() {
            let expected = fold(&set, Entity::USER, "u1", &in_place);
            let actual = fold(&set, Entity::USER, "u1", &redriven);
            prop_assert_eq!(read(&set, Entity::USER, "u1", &expected), read(&set, Entity::USER, "u1", &actual));
        }
    }

    /// Applying a row and then retracting it is the same as never having seen it.
    #[test]
    fn apply_then_retract_is_nothing(
        steps in prop::collection::vec(arb_step(), 0..30),
        kind in 0..KINDS.len(),
        product in 0..PRODUCTS.len(),
        secs_ago in 0i64..4_000,
    ) {
        let (mut changes, _) = run(&steps);
        let base_changes = changes.clone();
        let extra = activity("extra", "u1", KINDS[kind], Some(PRODUCTS[product]), secs_ago);
        let next = changes.len() as i64 + 100;
        changes.push(insert(extra.clone(), next));
        changes.push(change(SourceTable::new("user_activity"), Some(extra), None, next + 1));
        for set in sets() {
            let base = fold(&set, Entity::USER, "u1", &base_changes);
            let retracted = fold(&set, Entity::USER, "u1", &changes);
            prop_assert_eq!(read(&set, Entity::USER, "u1", &base), read(&set, Entity::USER, "u1", &retracted));
        }
    }
}
