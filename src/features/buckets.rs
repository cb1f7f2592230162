//! A feature's time buckets ([`Buckets`]) and what each holds ([`Cell`]): the state of every
//! bucketed aggregation (counts, sums, histograms, distinct values, co-occurrences).
//!
//! A user holds hundreds of buckets, nearly all with one value, and rows arrive in time order:
//! buckets are a vector in bucket order, a row adds to the newest (found first) or appends one,
//! and time drops the oldest from the front. A `BTreeMap` spent a node slot and a pointer per
//! bucket, its nodes half full as appends leave them, and a cache miss per bucket walked when a
//! state is encoded or read (BENCHMARKS.md, "State per entity").

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// A feature's buckets, oldest first: bucket number (event time over the bucket's length) →
/// cell. No cell is kept empty.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Buckets(Vec<(i64, Cell)>);

impl Buckets {
    fn place(&self, bucket: i64) -> Result<usize, usize> {
        match self.0.last() {
            // The newest bucket, or one after it: most rows.
            Some((newest, _)) if *newest == bucket => Ok(self.0.len() - 1),
            Some((newest, _)) if *newest < bucket => Err(self.0.len()),
            None => Err(0),
            Some(_) => self.0.binary_search_by_key(&bucket, |(known, _)| *known),
        }
    }

    pub fn get(&self, bucket: i64) -> Option<&Cell> {
        self.place(bucket).ok().map(|at| &self.0[at].1)
    }

    pub fn get_mut(&mut self, bucket: i64) -> Option<&mut Cell> {
        self.place(bucket).ok().map(|at| &mut self.0[at].1)
    }

    /// The cell of `bucket`, added empty when absent (the caller fills or removes it).
    pub fn cell_mut(&mut self, bucket: i64) -> &mut Cell {
        let at = match self.place(bucket) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (bucket, Cell::default()));
                at
            }
        };
        &mut self.0[at].1
    }

    pub fn insert(&mut self, bucket: i64, cell: Cell) {
        *self.cell_mut(bucket) = cell;
    }

    pub fn remove(&mut self, bucket: i64) {
        if let Ok(at) = self.place(bucket) {
            self.0.remove(at);
        }
    }

    /// Drops the buckets before `oldest`.
    pub fn drop_before(&mut self, oldest: i64) {
        // From the front rather than by binary search: a change drops at most a bucket or two,
        // and the search's probes across the vector were cache misses, a tenth of the apply
        // once states were full.
        let stale = self.0.iter().take_while(|(bucket, _)| *bucket < oldest).count();
        self.0.drain(..stale);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Gives back the room of buckets not there (a state read back is not growing).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    /// Buckets and their cells, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i64, &Cell)> + ExactSizeIterator {
        self.into_iter()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = i64> + '_ {
        self.0.iter().map(|(bucket, _)| *bucket)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Cell> {
        self.0.iter().map(|(_, cell)| cell)
    }
}

impl<'a> IntoIterator for &'a Buckets {
    type Item = (i64, &'a Cell);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (i64, Cell)>, fn(&'a (i64, Cell)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(bucket, cell)| (*bucket, cell))
    }
}

impl FromIterator<(i64, Cell)> for Buckets {
    /// Adds up the cells of a bucket given more than once; in any order.
    fn from_iter<I: IntoIterator<Item = (i64, Cell)>>(iter: I) -> Self {
        let mut buckets = Buckets::default();
        for (bucket, cell) in iter {
            let target = buckets.cell_mut(bucket);
            if target.is_empty() {
                *target = cell;
            } else {
                for (value, count) in cell.iter() {
                    target.add(value, count);
                }
            }
        }
        buckets.shrink_to_fit();
        buckets
    }
}

impl fmt::Debug for Buckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map from bucket to cell, as the state's JSON form always wrote it.
impl Serialize for Buckets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<i64, Cell>::deserialize(deserializer)?;
        Ok(Buckets(map.into_iter().collect()))
    }
}

/// One time bucket: stored value → number of rows, in the order of the values.
///
/// Most buckets hold one value (`""` for plain counts): a sorted vector, its first value
/// inline, takes no allocation for them where a map took a whole node each (buckets were 80% of
/// a user's memory; BENCHMARKS.md, "State per entity").
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cell(SmallVec<[(CompactString, i64); 1]>);

/// A copy takes the room its values need: `SmallVec`'s own clone grows to a power of two, and a
/// product's cells hold hundreds of viewer ids.
impl Clone for Cell {
    fn clone(&self) -> Self {
        let mut values = SmallVec::with_capacity(self.0.len());
        values.extend(self.0.iter().cloned());
        Cell(values)
    }
}

impl Cell {
    fn place(&self, value: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(known, _)| text_order(known.as_bytes(), value.as_bytes()))
    }

    pub fn get(&self, value: &str) -> Option<i64> {
        self.place(value).ok().map(|at| self.0[at].1)
    }

    pub fn get_mut(&mut self, value: &str) -> Option<&mut i64> {
        self.place(value).ok().map(|at| &mut self.0[at].1)
    }

    /// Adds `delta` to the rows of `value` (from none when absent); the new count.
    pub fn add(&mut self, value: &str, delta: i64) -> i64 {
        match self.place(value) {
            Ok(at) => {
                self.0[at].1 += delta;
                self.0[at].1
            }
            Err(at) => {
                self.0.insert(at, (value.into(), delta));
                delta
            }
        }
    }

    pub fn remove(&mut self, value: &str) {
        if let Ok(at) = self.place(value) {
            self.0.remove(at);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Values and their rows, in the order of the values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(value, count)| (value.as_ref(), *count))
    }

    pub fn values(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().map(|(_, count)| *count)
    }
}

/// The order of `str`, compared eight bytes at a time. Values are short ids (`sim-u0042`, a
/// product id, a UUID) searched for a dozen times per change; `str::cmp` called `memcmp` for
/// each, and those calls were a sixth of decode + apply (BENCHMARKS.md, "Decode + apply").
#[inline]
fn text_order(left: &[u8], right: &[u8]) -> std::cmp::Ordering {
    let mut left_words = left.chunks_exact(8);
    let mut right_words = right.chunks_exact(8);
    for (l, r) in (&mut left_words).zip(&mut right_words) {
        // Big-endian, so that comparing the words compares their bytes in order.
        let (l, r) = (word(l), word(r));
        if l != r {
            return l.cmp(&r);
        }
    }
    let at = left.len().min(right.len()) / 8 * 8;
    for (l, r) in left[at..].iter().zip(&right[at..]) {
        if l != r {
            return l.cmp(r);
        }
    }
    left.len().cmp(&right.len())
}

#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

impl<S: AsRef<str>> FromIterator<(S, i64)> for Cell {
    /// Adds up the rows of a value given more than once.
    fn from_iter<I: IntoIterator<Item = (S, i64)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut cell = Cell(SmallVec::with_capacity(iter.size_hint().0));
        for (value, count) in iter {
            let value = value.as_ref();
            // Stored cells come in order: appending them skips a search per value, which was
            // most of reading back a product's viewers.
            match cell.0.last() {
                Some((last, _)) if last.as_str() >= value => {
                    cell.add(value, count);
                }
                _ => cell.0.push((value.into(), count)),
            }
        }
        // Read back from a stored state: no room for values that are not there.
        cell.0.shrink_to_fit();
        cell
    }
}

/// As a map from value to rows, as the state's JSON form always wrote it.
impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<std::borrow::Cow<'de, str>, i64>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_one_value_cell_is_inline_and_no_larger_than_a_value_and_a_length() {
        assert_eq!(std::mem::size_of::<Cell>(), 40);
        let mut cell = Cell::default();
        cell.add("p-0042", 1);
        assert!(!cell.0.spilled());
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

        /// A cell counts as the map it replaced: any adds and removes leave the same counts,
        /// in the same order, and write the same JSON (so shares written before read back).
        #[test]
        fn a_cell_counts_as_a_map_of_values_does(
            steps in prop::collection::vec((prop_oneof!["", "p[0-9]", ".{0,4}"], -3i64..4, any::<bool>()), 0..60),
        ) {
            let mut cell = Cell::default();
            let mut map: BTreeMap<String, i64> = BTreeMap::new();
            for (value, delta, remove) in &steps {
                if *remove {
                    cell.remove(value);
                    map.remove(value);
                } else {
                    let count = map.entry(value.clone()).or_default();
                    *count += delta;
                    prop_assert_eq!(cell.add(value, *delta), *count);
                }
                prop_assert_eq!(cell.get(value), map.get(value).copied());
            }
            let counted: Vec<(String, i64)> = cell.iter().map(|(v, c)| (v.to_string(), c)).collect();
            prop_assert_eq!(&counted, &map.clone().into_iter().collect::<Vec<_>>());
            // Collected in any order, with values repeated: the same as added one by one.
            let mut summed: BTreeMap<&str, i64> = BTreeMap::new();
            for (value, delta, _) in &steps {
                *summed.entry(value).or_default() += delta;
            }
            let collected: Cell = steps.iter().map(|(value, delta, _)| (value, *delta)).collect();
            prop_assert_eq!(collected, summed.into_iter().collect::<Cell>());
            let json = serde_json::to_string(&cell).expect("serializes");
            prop_assert_eq!(&json, &serde_json::to_string(&map).expect("serializes"));
            prop_assert_eq!(serde_json::from_str::<Cell>(&json).expect("reads"), cell);
        }
    }

    proptest! {
        /// Buckets hold what a map of them would, whatever the order buckets are touched in,
        /// and write the same JSON.
        #[test]
        fn buckets_hold_what_a_map_of_them_does(
            steps in prop::collection::vec((-5i64..20, 0u8..4), 0..80),
        ) {
            let mut buckets = Buckets::default();
            let mut map: BTreeMap<i64, Cell> = BTreeMap::new();
            for (bucket, action) in steps {
                match action {
                    0 => {
                        buckets.remove(bucket);
                        map.remove(&bucket);
                    }
                    1 => {
                        buckets.drop_before(bucket);
                        map = map.split_off(&bucket);
                    }
                    _ => {
                        buckets.cell_mut(bucket).add("v", 1);
                        map.entry(bucket).or_default().add("v", 1);
                    }
                }
                prop_assert_eq!(buckets.get(bucket), map.get(&bucket));
                prop_assert!(buckets.keys().eq(map.keys().copied()));
            }
            prop_assert_eq!(buckets.len(), map.len());
            let json = serde_json::to_string(&buckets).expect("serializes");
            prop_assert_eq!(&json, &serde_json::to_string(&map).expect("serializes"));
            prop_assert_eq!(serde_json::from_str::<Buckets>(&json).expect("reads"), buckets.clone());
            let collected: Buckets = map.into_iter().rev().collect();
            prop_assert_eq!(collected, buckets);
        }
    }
}
