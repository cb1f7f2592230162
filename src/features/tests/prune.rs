//! Unwindowed `last`/`last_n` keep only the facts their reads can need (the newest values and
//! [`FACT_SLACK`] more), so a user's state stays bounded. Pruning must never change a read: not
//! after many rows, nor when a few of the newest are deleted and older ones take their place.

use super::*;
use crate::features::by_feature::KnownValues;

/// Views of `user` by `(row, product, seconds ago)`, the rows kept unpruned: the exact state.
fn unpruned(set: &FeatureSet, rows: &[SourceRow]) -> EntityState {
    let mut state = EntityState::default();
    for name in ["last_viewed_product", "recent_products_viewed", "recent_categories_10m"] {
        let feature = set.get(name).expect("shipped");
        let facts = state.features.entry(feature.name);
        for row in rows {
            let value = row.text("product_id").expect("a product").to_string();
            let at_us = row.time_us;
            let fact = super::super::state::Fact { at_us, value: value.into() };
            facts.facts.insert(feature.fact_key(row).clone(), fact);
        }
    }
    state
}

fn views(rows: &[(u16, u8, i64)]) -> BTreeMap<u16, SourceRow> {
    rows.iter()
        .map(|(row, product, secs_ago)| {
            let product = format!("p{product}");
            (*row, activity(&format!("r{row}"), "u1", "VIEW_PRODUCT", Some(&product), *secs_ago))
        })
        .collect()
}

proptest! {
    /// Many views (of some products more than a value keeps facts of, and of more products than
    /// `last_n` keeps values of), then a few of the newest deleted: the pruned state reads as
    /// the state of every surviving row.
    #[test]
    fn pruning_never_changes_a_read(
        // A third of the views go to three products (more facts than a value keeps), the rest
        // to 80 (more values than `last_n` keeps).
        rows in prop::collection::vec(
            (0u16..400, prop_oneof![0u8..3, 0u8..80], 0i64..100_000),
            0..300,
        ),
        deleted in 0usize..6,
    ) {
        let set = set();
        let rows = views(&rows);
        let mut changes: Vec<SourceChange> =
            (1i64..).zip(rows.values().cloned()).map(|(lsn, row)| insert(row, lsn)).collect();
        let mut newest: Vec<&SourceRow> = rows.values().collect();
        newest.sort_by_key(|row| std::cmp::Reverse((row.time_us, row.key.clone())));
        for (lsn, row) in (changes.len() as i64 + 1..).zip(newest.iter().take(deleted)) {
            changes.push(change(SourceTable::new("user_activity"), Some((*row).clone()), None, lsn));
        }
        let survivors: Vec<SourceRow> = newest.iter().skip(deleted).map(|row| (*row).clone()).collect();
        let pruned = fold(&set, Entity::USER, "u1", &changes);
        // The three features keep one list of views (`SharedFacts`): what `last_n` keeps (a few
        // facts of each of its newest values), what `last` does (the newest), and the views of
        // the 10-minute window and `history`, and at most a walk's worth more.
        let shared = set.get("recent_products_viewed").and_then(|f| f.shared_facts.as_ref());
        let shared = shared.expect("shared");
        let kept = pruned.features.get(shared.name).map_or(0, |state| state.facts.len());
        let recent = survivors.iter().filter(|row| t0().timestamp_micros() - row.time_us <= 26 * 60 * 1_000_000).count();
        let bound = (20 + FACT_SLACK) * 8 + (1 + FACT_SLACK) + recent + 16;
        prop_assert!(kept <= bound, "{kept} facts kept, more than {bound}");
        prop_assert!(!pruned.features.contains_key("recent_products_viewed"));
        let names = ["last_viewed_product", "recent_products_viewed", "recent_categories_10m"]
            .map(String::from);
        let read = |state: &EntityState| {
            evaluate(&set, Entity::USER, "u1", Some(state), Some(&names), &context(t0(), &catalog(), &|_| None))
        };
        prop_assert_eq!(read(&pruned), read(&unpruned(&set, &survivors)));
    }
}

proptest! {
    /// `last_n` prunes incrementally while it knows its values, and walks its facts otherwise:
    /// after every change (views in any time order, deletes of any of them), what it keeps is
    /// what a walk on every change keeps.
    #[test]
    fn pruning_incrementally_keeps_what_a_walk_on_every_change_keeps(
        rows in prop::collection::vec(
            (0u16..200, prop_oneof![0u8..3, 0u8..70], 0i64..100_000),
            0..250,
        ),
        deletes in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        // `recent_products_viewed` with facts of its own, as a `last_n` sharing none keeps them.
        let mut set = set();
        for feature in &mut set.features {
            feature.shared_facts = None;
        feature.session_in = None;
        }
        let feature = set.get("recent_products_viewed").expect("shipped");
        let rows: Vec<SourceRow> = views(&rows).into_values().collect();
        let mut changes: Vec<SourceChange> = Vec::new();
        let mut deletes = deletes.iter();
        for (inserted, row) in rows.iter().enumerate() {
            let lsn = changes.len() as i64 + 1;
            changes.push(insert(row.clone(), lsn));
            // Every eighth view, a delete of one of the rows so far (perhaps deleted already).
            if inserted % 8 == 7
                && let Some(index) = deletes.next()
            {
                let gone = rows[index.index(inserted + 1)].clone();
                let table = SourceTable::new("user_activity");
                changes.push(change(table, Some(gone), None, lsn + 1));
            }
        }
        let mut incremental = EntityState::default();
        let mut walked = EntityState::default();
        for change in &changes {
            apply(&set, Entity::USER, "u1", &mut incremental, change, "user_activity/0", t0());
            // Forgetting the values before each change makes every prune a walk.
            if walked.features.contains_key(feature.name) {
                walked.features.entry(feature.name).last_n_values = KnownValues(None);
            }
            apply(&set, Entity::USER, "u1", &mut walked, change, "user_activity/0", t0());
            let facts = |state: &EntityState| state.features.get(feature.name).map(|s| s.facts.clone());
            prop_assert_eq!(facts(&incremental), facts(&walked));
        }
    }
}
