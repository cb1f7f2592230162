//! Unit and property tests of the feature engine, through the shipped definitions.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;

use super::*;

mod overlap;
mod properties;
mod prune;
mod sharing;
mod snapshot;
mod truncate;

pub(super) use properties::sets;
use properties::{Step, arb_step, run};

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
        committed_ms: Some(t0().timestamp_millis()),
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
fn rows_of_one_time_order_by_value_and_retract_by_time_and_value() {
    let table = || SourceTable::new("user_activity");
    // Row keys in the opposite order to the values: the value decides.
    let b = activity("b", "u1", "VIEW_PRODUCT", Some("p1"), 10);
    let a = activity("a", "u1", "VIEW_PRODUCT", Some("p2"), 10);
    let again = activity("c", "u1", "VIEW_PRODUCT", Some("p1"), 10);
    let f = user(&[insert(b.clone(), 1), insert(a.clone(), 2), insert(again.clone(), 3)]);
    assert_eq!(f["last_viewed_product"].value, json!("p2"));
    assert_eq!(f["recent_products_viewed"].value, json!(["p2", "p1"]));
    // Deleting one of two rows of the same time and value leaves the other.
    let f = user(&[
        insert(b.clone(), 1),
        insert(a.clone(), 2),
        insert(again, 3),
        change(table(), Some(a), None, 4),
        change(table(), Some(b), None, 5),
    ]);
    assert_eq!(f["last_viewed_product"].value, json!("p1"));
    assert_eq!(f["recent_products_viewed"].value, json!(["p1"]));
}

#[test]
fn facts_stored_with_their_keys_are_retracted_by_time_and_value() {
    let set = set();
    let v1 = activity("v1", "u1", "VIEW_PRODUCT", Some("p1"), 20);
    let v2 = activity("v2", "u1", "VIEW_PRODUCT", Some("p2"), 10);
    let mut state = fold(&set, Entity::USER, "u1", &[insert(v1, 1), insert(v2.clone(), 2)]);
    // As a persona before keyless facts kept them (layout version 1): by row key.
    let shared = set.get("last_viewed_product").and_then(|f| f.shared_facts.as_ref());
    let name = shared.expect("views share facts").name;
    let feature = state.features.entry(name);
    assert!(!feature.facts.keyed());
    feature.facts = [("v1", 0), ("v2", 1)]
        .into_iter()
        .map(|(key, place)| {
            let fact = feature.facts.entry(place).expect("two facts").1.clone();
            (RowKey::new(key), fact)
        })
        .collect();
    assert!(feature.facts.keyed());
    let delete = change(SourceTable::new("user_activity"), Some(v2), None, 3);
    apply(&set, Entity::USER, "u1", &mut state, &delete, "user_activity/0", t0());
    let f = read(&set, Entity::USER, "u1", &state);
    assert_eq!(f["last_viewed_product"].value, json!("p1"));
    assert_eq!(f["recent_products_viewed"].value, json!(["p1"]));
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
fn rows_dated_past_the_buckets_range_are_dropped_and_their_deletes_take_nothing() {
    let set = set();
    // The year 100,000: past the last bucket kept of one second (2106) and of a minute (about
    // the year 10,000), the widths of the click features.
    let far = activity("far", "u1", "CLICK", Some("p1"), -98_000 * 365 * 86_400);
    let near = insert(activity("near", "u1", "CLICK", Some("p1"), 5), 1);
    let mut state = fold(&set, Entity::USER, "u1", std::slice::from_ref(&near));
    let features = |state: &EntityState| -> Vec<(String, FeatureState)> {
        state.features.iter().map(|(name, feature)| (name.to_string(), feature.clone())).collect()
    };
    let kept = features(&state);
    assert!(!kept.is_empty());
    let outcome = apply(&set, Entity::USER, "u1", &mut state, &insert(far.clone(), 2), "s", t0());
    assert!(outcome.late > 0, "dropped rows are counted");
    assert_eq!(features(&state), kept);
    let delete = change(SourceTable::new("user_activity"), Some(far), None, 3);
    apply(&set, Entity::USER, "u1", &mut state, &delete, "s", t0());
    assert_eq!(features(&state), kept);
    assert_eq!(read(&set, Entity::USER, "u1", &state)["clicks_1m"].value, json!(1));
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
