//! Co-occurrence and time decay: the pairs maintained incrementally through users must equal a
//! recomputation from the rows that exist, whatever the order, redelivery or retractions.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

const PAIRS: &str = r#"
history = "15m"
[[feature]]
name = "together"
entity = "product"
source = "user_activity"
filter = { activity_type = "VIEW_PRODUCT" }
aggregation = "co_occurrence"
session = "2m"
k = 100
window = "1h"
[[feature]]
name = "trend"
entity = "product"
source = "user_activity"
filter = { activity_type = "VIEW_PRODUCT" }
aggregation = "decayed_count"
window = "1h"
half_life = "10m"
"#;

const USERS: [&str; 2] = ["u1", "u2"];
const KINDS: [&str; 2] = ["VIEW_PRODUCT", "CLICK"];
const PRODUCTS: [&str; 4] = ["p1", "p2", "p3", "p4"];

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z").expect("valid").with_timezone(&Utc)
}

/// Fact features over the same views as `together`: with them, its session reads its rows from
/// their shared facts.
const VIEW_FACTS: &str = r#"
[[feature]]
name = "recent"
entity = "user"
source = "user_activity"
filter = { activity_type = "VIEW_PRODUCT" }
aggregation = "last_n"
n = 3
value = "product_id"
[[feature]]
name = "latest"
entity = "user"
source = "user_activity"
filter = { activity_type = "VIEW_PRODUCT" }
aggregation = "last"
value = "product_id"
"#;

fn set() -> FeatureSet {
    FeatureSet::parse(PAIRS, "test").expect("valid")
}

/// `together` reading its session from the views `recent` and `latest` keep.
fn hosted() -> FeatureSet {
    let set = FeatureSet::parse(&format!("{PAIRS}{VIEW_FACTS}"), "test").expect("valid");
    assert!(set.get("together").is_some_and(|f| f.session_in.is_some()), "a hosted session");
    set
}

/// [`hosted`] as it was before sessions read shared facts: the session keeps its own.
fn hosted_before() -> FeatureSet {
    let mut set = hosted();
    for feature in &mut set.features {
        feature.session_in = None;
        if let Some(shared) = &mut feature.shared_facts {
            shared.sessions.clear();
        }
    }
    set
}

fn row(key: &str, user: &str, kind: &str, product: &str, secs_ago: i64) -> SourceRow {
    let at = t0() - TimeDelta::seconds(secs_ago);
    let mut columns = BTreeMap::new();
    columns.insert("id", Scalar::Text(key.into()));
    columns.insert("user_id", Scalar::Text(user.into()));
    columns.insert("activity_type", Scalar::Text(kind.into()));
    columns.insert("product_id", Scalar::Text(product.into()));
    columns.insert("activity_timestamp", Scalar::Time(at.timestamp_micros()));
    SourceRow::reference(key.into(), columns, at)
}

fn change(before: Option<SourceRow>, after: Option<SourceRow>, lsn: i64) -> SourceChange {
    let rank = u8::from(after.is_some());
    SourceChange {
        table: SourceTable::new("user_activity"),
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

/// Every user's and product's state.
#[derive(Default)]
struct States {
    users: HashMap<String, EntityState>,
    products: BTreeMap<String, EntityState>,
}

/// Applies changes the way ingest does: to the users of their rows first, then to the products
/// of their rows and of the pairs they imply. Returns every product's state.
fn ingest(set: &FeatureSet, changes: &[SourceChange]) -> BTreeMap<String, EntityState> {
    let mut states = States::default();
    ingest_into(set, changes, &mut states);
    states.products
}

fn ingest_into(set: &FeatureSet, changes: &[SourceChange], states: &mut States) {
    let States { users, products } = states;
    let stream = "user_activity/0";
    for change in changes {
        let mut user_ids: Vec<String> = [&change.before, &change.after]
            .into_iter()
            .flatten()
            .filter_map(|row| entity_of(row, Entity::USER).map(str::to_string))
            .collect();
        user_ids.dedup();
        let mut deltas = Vec::new();
        for id in user_ids {
            let state = users.entry(id.clone()).or_default();
            deltas.extend(apply(set, Entity::USER, &id, state, change, stream, t0()).pairs);
        }
        let mut product_ids: Vec<String> = [&change.before, &change.after]
            .into_iter()
            .flatten()
            .filter_map(|row| entity_of(row, Entity::PRODUCT).map(str::to_string))
            .chain(deltas.iter().map(|d| d.product.to_string()))
            .collect();
        product_ids.sort();
        product_ids.dedup();
        for id in product_ids {
            let state = products.entry(id.clone()).or_default();
            apply_with_pairs(
                set,
                Entity::PRODUCT,
                &id,
                state,
                change,
                stream,
                t0().timestamp_micros(),
                &deltas,
            );
        }
    }
}

fn together(set: &FeatureSet, products: &BTreeMap<String, EntityState>) -> BTreeMap<String, Value> {
    let catalog: HashMap<String, Product> = HashMap::new();
    let context = ReadContext { at: t0(), catalog: &catalog, ranking: &|_| None };
    PRODUCTS
        .iter()
        .map(|id| {
            let state = products.get(*id).cloned().unwrap_or_default();
            let names = ["together".to_string()];
            let features = evaluate(set, Entity::PRODUCT, id, Some(&state), Some(&names), &context);
            (id.to_string(), features["together"].value.clone())
        })
        .collect()
}

/// The recomputation: each user's views in (time, key, product) order, the key being none for
/// a source with a time column (its facts are keyless); neighbours at most the session apart
/// with different products pair, once for each product.
fn recompute(set: &FeatureSet, rows: &[SourceRow]) -> BTreeMap<String, Value> {
    let keyed = set.get("together").expect("declared").facts_keyed;
    let session_us = 120 * 1_000_000;
    let mut counts: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for user in USERS {
        let mut views: Vec<(i64, String, &str)> = rows
            .iter()
            .filter(|r| {
                r.text("user_id") == Some(user) && r.text("activity_type") == Some("VIEW_PRODUCT")
            })
            .map(|r| {
                let key = if keyed { r.key.to_string() } else { String::new() };
                (r.time_us, key, r.text("product_id").unwrap_or(""))
            })
            .collect();
        views.sort();
        for pair in views.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.0 - a.0 <= session_us && a.2 != b.2 {
                *counts.entry(a.2.into()).or_default().entry(b.2.into()).or_default() += 1;
                *counts.entry(b.2.into()).or_default().entry(a.2.into()).or_default() += 1;
            }
        }
    }
    PRODUCTS
        .iter()
        .map(|id| {
            let mut ranked: Vec<(String, i64)> =
                counts.get(*id).cloned().unwrap_or_default().into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let list = ranked.into_iter().map(|(v, c)| json!({"value": v, "count": c})).collect();
            (id.to_string(), Value::Array(list))
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    Write { row: u8, user: usize, kind: usize, product: usize, secs_ago: i64 },
    Delete { row: u8 },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, 0..USERS.len(), 0..KINDS.len(), 0..PRODUCTS.len(), 0i64..900).prop_map(
            |(row, user, kind, product, secs_ago)| Step::Write { row, user, kind, product, secs_ago }
        ),
        1 => (0u8..12).prop_map(|row| Step::Delete { row }),
    ]
}

/// The changes of a workload (rows may move between users) and the rows left at its end.
fn run(steps: &[Step]) -> (Vec<SourceChange>, Vec<SourceRow>) {
    let mut rows: BTreeMap<u8, SourceRow> = BTreeMap::new();
    let mut changes = Vec::new();
    for (lsn, step) in (1i64..).zip(steps) {
        match step {
            Step::Write { row: n, user, kind, product, secs_ago } => {
                let new = row(
                    &format!("r{n}"),
                    USERS[*user],
                    KINDS[*kind],
                    PRODUCTS[*product],
                    *secs_ago,
                );
                let before = rows.insert(*n, new.clone());
                changes.push(change(before, Some(new), lsn));
            }
            Step::Delete { row } => {
                if let Some(before) = rows.remove(row) {
                    changes.push(change(Some(before), None, lsn));
                }
            }
        }
    }
    (changes, rows.into_values().collect())
}

#[test]
fn neighbouring_views_pair_and_an_insert_between_them_splits_the_pair() {
    let set = set();
    let a = row("a", "u1", "VIEW_PRODUCT", "p1", 300);
    let b = row("b", "u1", "VIEW_PRODUCT", "p2", 240);
    let products =
        ingest(&set, &[change(None, Some(a.clone()), 1), change(None, Some(b.clone()), 2)]);
    assert_eq!(together(&set, &products)["p1"], json!([{"value": "p2", "count": 1}]));
    // p3 viewed between them (arriving late): p1–p3 and p3–p2 replace p1–p2.
    let c = row("c", "u1", "VIEW_PRODUCT", "p3", 270);
    let products = ingest(
        &set,
        &[change(None, Some(a), 1), change(None, Some(b), 2), change(None, Some(c), 3)],
    );
    let served = together(&set, &products);
    assert_eq!(served["p1"], json!([{"value": "p3", "count": 1}]));
    assert_eq!(served["p3"], json!([{"value": "p1", "count": 1}, {"value": "p2", "count": 1}]));
}

#[test]
fn a_hosted_session_keeps_no_facts_of_its_own() {
    let set = hosted();
    let a = row("a", "u1", "VIEW_PRODUCT", "p1", 300);
    let b = row("b", "u1", "VIEW_PRODUCT", "p2", 240);
    let mut states = States::default();
    ingest_into(&set, &[change(None, Some(a), 1), change(None, Some(b), 2)], &mut states);
    assert_eq!(together(&set, &states.products)["p1"], json!([{"value": "p2", "count": 1}]));
    let user = &states.users["u1"];
    assert!(user.features.get("together").is_none(), "{user:?}");
    let shared = set.get("together").and_then(|f| f.session_in).expect("hosted");
    assert_eq!(user.features.get(shared).map(|views| views.facts.len()), Some(2));
}

#[test]
fn a_row_later_than_history_pairs_with_the_neighbours_still_held() {
    // History is 15 minutes and the session 2: rows 16 minutes old still pair, with each other
    // and with rows on time; one 18 minutes old is older than any neighbour kept.
    for set in [set(), hosted()] {
        let a = row("a", "u1", "VIEW_PRODUCT", "p1", 970);
        let b = row("b", "u1", "VIEW_PRODUCT", "p2", 940);
        let c = row("c", "u1", "VIEW_PRODUCT", "p3", 880);
        let old = row("o", "u1", "VIEW_PRODUCT", "p4", 1080);
        let changes = [a, b, c, old].map(|row| change(None, Some(row), 1));
        let changes: Vec<SourceChange> = (1..)
            .zip(changes)
            .map(|(lsn, change)| SourceChange { position: Some(Position(lsn, lsn, 1)), ..change })
            .collect();
        let served = together(&set, &ingest(&set, &changes));
        assert_eq!(served["p2"], json!([{"value": "p1", "count": 1}, {"value": "p3", "count": 1}]));
        assert_eq!(served["p4"], json!([]));
    }
}

#[test]
fn views_further_apart_than_the_session_do_not_pair() {
    let set = set();
    let a = row("a", "u1", "VIEW_PRODUCT", "p1", 600);
    let b = row("b", "u1", "VIEW_PRODUCT", "p2", 300);
    let products = ingest(&set, &[change(None, Some(a), 1), change(None, Some(b), 2)]);
    assert_eq!(together(&set, &products)["p1"], json!([]));
}

#[test]
fn decayed_count_halves_per_half_life() {
    let set = set();
    let now = row("n", "u1", "VIEW_PRODUCT", "p1", 0);
    let old = row("o", "u2", "VIEW_PRODUCT", "p1", 600);
    let products = ingest(&set, &[change(None, Some(now), 1), change(None, Some(old), 2)]);
    let catalog: HashMap<String, Product> = HashMap::new();
    let context = ReadContext { at: t0(), catalog: &catalog, ranking: &|_| None };
    let features = evaluate(&set, Entity::PRODUCT, "p1", products.get("p1"), None, &context);
    let score = features["trend"].value.as_f64().expect("number");
    // Buckets are 1 minute wide and count from their end: ≈ 1 + 0.5·2^(1/10).
    assert!((score - (1.0 + 0.5 * 2f64.powf(0.1))).abs() < 0.02, "{score}");
}

proptest! {
    /// Whatever the order of inserts, updates (including moves between users) and deletes,
    /// the pairs equal a recomputation from the surviving rows: with the session kept apart,
    /// and read from the views fact features keep.
    #[test]
    fn pairs_equal_a_recomputation_from_the_surviving_rows(
        steps in prop::collection::vec(arb_step(), 0..40),
    ) {
        let (changes, survivors) = run(&steps);
        for set in [set(), hosted()] {
            prop_assert_eq!(together(&set, &ingest(&set, &changes)), recompute(&set, &survivors));
        }
    }

    /// Users whose sessions were kept apart before sessions read shared facts go on exactly:
    /// each keeps its own until the shared facts hold the same rows.
    #[test]
    fn pairs_stay_exact_as_sessions_move_to_shared_facts(
        steps in prop::collection::vec(arb_step(), 0..40),
        split in 0usize..40,
    ) {
        let (before, after) = (hosted_before(), hosted());
        let (changes, survivors) = run(&steps);
        let split = split.min(changes.len());
        let mut states = States::default();
        ingest_into(&before, &changes[..split], &mut states);
        ingest_into(&after, &changes[split..], &mut states);
        prop_assert_eq!(together(&after, &states.products), recompute(&after, &survivors));
    }

    /// Redelivered changes (skipped by position in users and products alike) change nothing.
    #[test]
    fn redelivered_pairs_change_nothing(
        steps in prop::collection::vec(arb_step(), 1..40),
        replay_from in 0usize..40,
    ) {
        let set = set();
        let (changes, _) = run(&steps);
        let from = replay_from.min(changes.len());
        let mut twice = changes.clone();
        twice.extend_from_slice(&changes[from..]);
        prop_assert_eq!(together(&set, &ingest(&set, &changes)), together(&set, &ingest(&set, &twice)));
    }
}
