//! Buckets hold what a map of buckets to maps of values would, in less room.

use proptest::prelude::*;

use super::*;

type Model = BTreeMap<i64, BTreeMap<String, i64>>;

fn model_json(model: &Model) -> String {
    serde_json::to_string(model).expect("serializes")
}

#[test]
fn an_entry_is_twelve_bytes_and_buckets_two_words_more_than_a_vector() {
    assert_eq!(std::mem::size_of::<Entry>(), 12);
    assert_eq!(std::mem::size_of::<Buckets>(), 32);
}

/// The last bucket kept, and the first past it.
const LAST: i64 = u32::MAX as i64;

#[test]
fn buckets_out_of_range_keep_nothing_and_take_nothing() {
    let mut buckets = Buckets::default();
    buckets.add(LAST, "a", 2);
    buckets.add(0, "", 1);
    for out in [-1, LAST + 1, i64::MIN, i64::MAX] {
        assert_eq!(buckets.add(out, "a", 1), 0, "bucket {out}");
        assert_eq!(buckets.add(out, "a", -1), 0, "bucket {out}");
        assert_eq!(buckets.rows(out, "a"), None);
        assert!(buckets.get(out).is_none());
        buckets.remove(out);
    }
    assert_eq!(buckets.keys().collect::<Vec<_>>(), vec![0, LAST]);
    assert_eq!(buckets.rows(LAST, "a"), Some(2));
    // Stored rows out of the range are left out when read back.
    let read = Buckets::from_dictionary(["a"], [(-3, 0, 1), (LAST, 0, 2), (LAST + 1, 0, 5)]);
    assert_eq!(read.indexed().collect::<Vec<_>>(), vec![(LAST, 1, 2)]);
    buckets.drop_before(LAST + 1);
    assert!(buckets.is_empty());
}

#[test]
fn values_that_come_and_go_do_not_grow_the_dictionary() {
    let mut buckets = Buckets::default();
    for i in 0..10_000i64 {
        buckets.add(i / 10, &format!("viewer-{i}"), 1);
        buckets.drop_before(i / 10 - 5);
    }
    let named = buckets.entries.len();
    assert!(named <= 60, "{named}");
    assert!(buckets.values.len() <= 2 * 64, "{} values for {named} entries", buckets.values.len());
    // What is named reads back as it was added.
    assert_eq!(buckets.rows(999, "viewer-9999"), Some(1));
    assert_eq!(buckets.rows(999, "viewer-9990"), Some(1));
    assert_eq!(buckets.rows(993, "viewer-9939"), None);
}

#[test]
fn plain_counts_keep_no_dictionary() {
    let mut buckets = Buckets::default();
    for bucket in 0..100 {
        buckets.add(bucket, "", 2);
    }
    assert_eq!(buckets.heap_bytes(), 100 * 12);
    buckets.add(7, "a", 1);
    assert_eq!(
        buckets.get(7).map(|cell| cell.iter().collect::<Vec<_>>()),
        Some(vec![("", 2), ("a", 1)])
    );
}

#[test]
fn rows_saturate_rather_than_wrap() {
    let mut buckets = Buckets::default();
    assert_eq!(buckets.add(1, "", i64::MAX), i64::from(i32::MAX));
    assert_eq!(buckets.add(1, "", 1), i64::from(i32::MAX));
    assert_eq!(buckets.add(1, "", -i64::from(i32::MAX)), 0);
    assert!(buckets.is_empty());
}

proptest! {
    /// Comparing by words orders texts as `str` does, across word boundaries and prefixes.
    #[test]
    fn texts_compare_as_str_does(
        stem in "[a-z0-9-]{0,20}",
        left in "\\PC{0,20}",
        right in "\\PC{0,20}",
    ) {
        let (left, right) = (format!("{stem}{left}"), format!("{stem}{right}"));
        prop_assert_eq!(text_order(left.as_bytes(), right.as_bytes()), left.cmp(&right));
        prop_assert_eq!(text_order(stem.as_bytes(), right.as_bytes()), stem.as_str().cmp(&right));
    }

    /// Buckets hold what a map of buckets to maps of values would, whatever the order rows
    /// come in and however many values come and go, the map keeping no bucket out of the range
    /// kept; they write the same JSON, read it back, and collect from their rows in any order
    /// to the same buckets.
    #[test]
    fn buckets_hold_what_a_map_of_maps_does(
        steps in prop::collection::vec(
            (
                prop_oneof![-5i64..20, LAST - 3..LAST + 3],
                prop_oneof!["", "p[0-9]{1,2}", ".{0,4}"],
                -3i64..4,
                0u8..8,
            ),
            0..120,
        ),
    ) {
        let mut buckets = Buckets::default();
        let mut model = Model::new();
        for (bucket, value, delta, action) in &steps {
            match action {
                0 => {
                    buckets.remove(*bucket);
                    model.remove(bucket);
                }
                1 => {
                    buckets.drop_before(*bucket);
                    model = model.split_off(bucket);
                }
                // Out of the range kept: nothing is added.
                _ if !(0..=LAST).contains(bucket) => {
                    prop_assert_eq!(buckets.add(*bucket, value, *delta), 0);
                }
                _ => {
                    let cell = model.entry(*bucket).or_default();
                    let rows = cell.get(value).copied().unwrap_or_default() + delta;
                    if rows == 0 {
                        cell.remove(value);
                    } else {
                        cell.insert(value.clone(), rows);
                    }
                    if cell.is_empty() {
                        model.remove(bucket);
                    }
                    prop_assert_eq!(buckets.add(*bucket, value, *delta), rows);
                }
            }
            let expected = model.get(bucket).and_then(|cell| cell.get(value)).copied();
            prop_assert_eq!(buckets.rows(*bucket, value), expected);
            prop_assert_eq!(buckets.get(*bucket).map(|cell| cell.get(value)), model.get(bucket).map(|cell| cell.get(value).copied()));
            prop_assert!(buckets.keys().eq(model.keys().copied()));
        }
        let json = serde_json::to_string(&buckets).expect("serializes");
        prop_assert_eq!(&json, &model_json(&model));
        prop_assert_eq!(&serde_json::from_str::<Buckets>(&json).expect("reads"), &buckets);
        let collected: Buckets = model
            .iter()
            .rev()
            .flat_map(|(bucket, cell)| cell.iter().map(|(value, rows)| (*bucket, value, *rows)))
            .collect();
        prop_assert_eq!(&collected, &buckets);
        let mut copy = buckets.clone();
        copy.shrink_to_fit();
        prop_assert_eq!(&copy, &buckets);
        let named: std::collections::BTreeSet<&str> = copy.triples().map(|(_, v, _)| v).filter(|v| !v.is_empty()).collect();
        prop_assert_eq!(copy.values.len(), named.len());
    }

    /// Merging buckets holds what adding their rows one by one does.
    #[test]
    fn merging_holds_what_adding_each_row_does(
        ours in prop::collection::vec((0i64..6, prop_oneof!["", "a", "b", "v[0-9]"], -2i64..3), 0..40),
        theirs in prop::collection::vec((0i64..6, prop_oneof!["", "a", "c", "v[0-9]"], -2i64..3), 0..40),
    ) {
        let build = |rows: &[(i64, String, i64)]| {
            let mut buckets = Buckets::default();
            for (bucket, value, delta) in rows {
                buckets.add(*bucket, value, *delta);
            }
            buckets
        };
        let (mut merged, other) = (build(&ours), build(&theirs));
        let mut added = merged.clone();
        for (bucket, cell) in &other {
            for (value, rows) in cell.iter() {
                added.add(bucket, value, rows);
            }
        }
        merged.merge(&other);
        prop_assert_eq!(&merged, &added);
        prop_assert_eq!(serde_json::to_string(&merged).ok(), serde_json::to_string(&added).ok());
        // The merged dictionary is in order: rows added afterwards find their values.
        for (bucket, value, delta) in theirs.iter().chain(&ours) {
            prop_assert_eq!(merged.add(*bucket, value, *delta), added.add(*bucket, value, *delta));
        }
        prop_assert_eq!(&merged, &added);
    }

    /// Rows given more than once for a value of a bucket, in any order, add up.
    #[test]
    fn collecting_adds_up_repeated_rows(
        rows in prop::collection::vec((0i64..4, prop_oneof!["", "a", "b"], -2i64..3), 0..40),
    ) {
        let mut added = Buckets::default();
        for (bucket, value, delta) in &rows {
            added.add(*bucket, value, *delta);
        }
        let collected: Buckets = rows.iter().map(|(b, v, d)| (*b, v, *d)).collect();
        prop_assert_eq!(collected, added);
    }
}
