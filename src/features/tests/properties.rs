//! Properties every aggregation keeps, over random histories of inserts, updates and deletes:
//! a history equals inserting its surviving rows, redelivery changes nothing, a re-driven dead
//! letter applies once, and applying then retracting is nothing.

use proptest::prelude::*;

use super::*;

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
pub(in crate::features) fn sets() -> [FeatureSet; 2] {
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
pub(super) enum Step {
    Write { row: u8, kind: usize, product: usize, secs_ago: i64 },
    Delete { row: u8 },
}

pub(super) fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..10, 0..KINDS.len(), 0..PRODUCTS.len(), 0i64..4_000).prop_map(
            |(row, kind, product, secs_ago)| Step::Write { row, kind, product, secs_ago }
        ),
        1 => (0u8..10).prop_map(|row| Step::Delete { row }),
    ]
}

/// The changes a workload produces (with before images, as REPLICA IDENTITY FULL gives), and the
/// rows that exist at its end.
pub(super) fn run(steps: &[Step]) -> (Vec<SourceChange>, Vec<SourceRow>) {
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
        survivors.sort_by_key(|row| (row.key.to_string().len() as u64 ^ seed).wrapping_mul(row.time_us.div_euclid(1_000_000) as u64 | 1));
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
