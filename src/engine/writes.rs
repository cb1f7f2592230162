//! How a batch is cut into writes. A batch is as large as the partition's queue allows
//! (`kafka.batch_max_messages`), since an entity touched several times in it is written once;
//! but each write is one Redis script that every other client of that Redis waits behind, and
//! its size follows the entities it carries, not the messages. So a batch is written in runs of
//! consecutive changes that touch at most `kafka.write_max_entities` entities between them, in
//! offset order, its offsets stored after the last: the same as that many smaller batches whose
//! offsets move once, and a replay after a crash between two runs skips, by the shares' source
//! positions, what the earlier runs wrote.
//!
//! A run never splits a change: a user's session and the co-occurrence pairs it implies for
//! products are written together.

use std::collections::HashSet;
use std::hash::Hash;

/// How many of `items`, from the first, one write carries: items of the first one's group (a
/// write is one stream's), as long as the keys they name between them number at most `max_keys`.
/// The first item always goes, however many keys it names. 0 only when `items` is empty.
pub(super) fn leading_run<'a, T, G, K, I>(
    items: &'a [T],
    max_keys: usize,
    group: impl Fn(&T) -> G,
    keys: impl Fn(&'a T) -> I,
) -> usize
where
    G: PartialEq,
    K: Eq + Hash,
    I: IntoIterator<Item = K>,
{
    let Some(first) = items.first() else { return 0 };
    let first_group = group(first);
    let mut named: HashSet<K> = HashSet::new();
    let mut taken = 0;
    for item in items {
        if group(item) != first_group {
            break;
        }
        named.extend(keys(item));
        if named.len() > max_keys && taken > 0 {
            break;
        }
        taken += 1;
    }
    taken
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::leading_run;

    /// Runs cut one after the other, as `Applier::apply_batch` does.
    fn runs(items: &[(u8, Vec<u8>)], max_keys: usize) -> Vec<usize> {
        let mut runs = Vec::new();
        let mut from = 0;
        while from < items.len() {
            let taken =
                leading_run(&items[from..], max_keys, |item| item.0, |item| item.1.iter().copied());
            runs.push(taken);
            from += taken;
        }
        runs
    }

    #[test]
    fn a_run_ends_before_the_item_that_would_name_one_key_too_many() {
        let items = [(0, vec![1, 2]), (0, vec![2, 1]), (0, vec![3]), (0, vec![1])];
        assert_eq!(runs(&items, 2), [2, 2]);
        assert_eq!(runs(&items, 3), [4]);
    }

    #[test]
    fn an_item_naming_more_keys_than_allowed_goes_alone() {
        let items = [(0, vec![1]), (0, vec![2, 3, 4]), (0, vec![5])];
        assert_eq!(runs(&items, 2), [1, 1, 1]);
    }

    #[test]
    fn a_run_is_one_group() {
        let items = [(0, vec![1]), (0, vec![1]), (1, vec![1]), (0, vec![1])];
        assert_eq!(runs(&items, 10), [2, 1, 1]);
        assert_eq!(
            leading_run::<(u8, Vec<u8>), u8, u8, Vec<u8>>(&[], 3, |i| i.0, |i| i.1.clone()),
            0
        );
    }

    proptest! {
        /// Runs cover the items in order, each within one group and, unless it is a single item,
        /// within the bound; and each run but the last of its group is cut only because the
        /// next item would take it past the bound.
        #[test]
        fn runs_cover_every_item_within_the_bound(
            items in prop::collection::vec((0u8..3, prop::collection::vec(0u8..12, 0..4)), 0..60),
            max_keys in 1usize..8,
        ) {
            let runs = runs(&items, max_keys);
            prop_assert_eq!(runs.iter().sum::<usize>(), items.len());
            let mut from = 0;
            for &taken in &runs {
                prop_assert!(taken > 0);
                let run = &items[from..from + taken];
                prop_assert!(run.iter().all(|item| item.0 == run[0].0));
                let named = |run: &[(u8, Vec<u8>)]| {
                    run.iter().flat_map(|item| item.1.iter()).collect::<std::collections::HashSet<_>>().len()
                };
                prop_assert!(taken == 1 || named(run) <= max_keys);
                if let Some(next) = items.get(from + taken) && next.0 == run[0].0 {
                    prop_assert!(named(&items[from..=from + taken]) > max_keys);
                }
                from += taken;
            }
        }
    }
}
