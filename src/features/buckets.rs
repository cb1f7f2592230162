//! A feature's time buckets ([`Buckets`]), and a view of what one holds ([`Cell`]): the state
//! of every bucketed aggregation (counts, sums, histograms, distinct values, co-occurrences).
//!
//! A user holds hundreds of buckets, nearly all with one value, and rows arrive in time order.
//! Buckets are one vector of entries — bucket, value, rows; 12 bytes — in bucket order and then
//! value order: a row adds to the newest bucket (found from the end) or appends, and time drops
//! the oldest from the front. Values are texts (a category, a price band, a partner, `""` for
//! plain counts) that a feature's buckets repeat bucket after bucket: each is kept once, in a
//! dictionary the entries name by index. A vector of buckets each holding a vector of values
//! took 48 bytes a bucket and 32 more for each further value on the heap (BENCHMARKS.md, "State
//! per entity"). The dictionary is in the values' order, so an entry's index orders as its text
//! does and a bucket's values stay in text order, as the stored forms write them.
//!
//! A bucket counts up to 2³¹ − 1 rows of one value (of one entity, in one bucket); beyond that
//! it saturates. Bucket numbers are kept in 32 bits: from 0 (the epoch) to 2³² − 1, which at the
//! narrowest buckets, a second, is 2106-02-07. A row in a bucket outside that range is not kept
//! ([`bucket_in_range`]): no window read before then can count it, and its retraction finds
//! nothing either, so inserts and deletes still cancel. Entries took 16 bytes with 64-bit
//! buckets; a quarter of a user's memory and more of a product's (BENCHMARKS.md, "Buckets of
//! 32 bits").

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use ecow::EcoString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

/// One value's rows in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    bucket: u32,
    /// Index in the dictionary.
    value: u32,
    rows: i32,
}

/// Dictionary sizes from which a dictionary that is full (a power of two) first drops the
/// values no entry names any more: values come and go (a product's viewers, an hour's
/// categories), and this keeps the dictionary under twice the values named, amortized.
const DROP_UNNAMED_FROM: usize = 16;

/// A feature's buckets: bucket number (event time over the bucket's length) → value → rows.
/// No bucket is kept empty, no value with zero rows.
#[derive(Clone, Default)]
pub struct Buckets {
    entries: Vec<Entry>,
    /// Every value an entry names but `""` (and, until dropped, some no entry names any more),
    /// in text order; entries name them from 1. `""`, first in text order, is 0 and takes no
    /// room: plain counts, the most common buckets, find it without a look at the dictionary
    /// and keep none.
    values: ThinVec<EcoString>,
}

/// The text of the value entries name `index`.
fn text_of(values: &[EcoString], index: u32) -> &str {
    match index {
        0 => "",
        _ => values[index as usize - 1].as_str(),
    }
}

/// What a stored text (an `EcoString`) holds on the heap: nothing up to its inline limit (15
/// bytes), else the text behind a 16-byte header (reference count and capacity).
pub(super) fn text_heap_bytes(text: &str) -> usize {
    if text.len() > EcoString::INLINE_LIMIT { 16 + text.len() } else { 0 }
}

/// `bucket` as kept, if in the range kept (see the module's documentation).
pub(super) fn bucket_in_range(bucket: i64) -> Option<u32> {
    u32::try_from(bucket).ok()
}

fn narrow(rows: i64) -> i32 {
    i32::try_from(rows).unwrap_or(if rows < 0 { i32::MIN } else { i32::MAX })
}

impl Buckets {
    /// Where `bucket`'s entries are (an empty range where they would go).
    fn range(&self, bucket: u32) -> Range<usize> {
        let len = self.entries.len();
        match self.entries.last() {
            None => 0..0,
            Some(newest) if newest.bucket < bucket => len..len,
            // The newest bucket: most rows.
            Some(newest) if newest.bucket == bucket => {
                let rows = self.entries.iter().rev().take_while(|e| e.bucket == bucket).count();
                len - rows..len
            }
            Some(_) => {
                let start = self.entries.partition_point(|e| e.bucket < bucket);
                let rows = self.entries[start..].iter().take_while(|e| e.bucket == bucket).count();
                start..start + rows
            }
        }
    }

    fn place_value(&self, value: &str) -> Result<usize, usize> {
        self.values.binary_search_by(|known| text_order(known.as_bytes(), value.as_bytes()))
    }

    /// The index entries name `value` by, if it is in the dictionary.
    fn find_index(&self, value: &str) -> Option<u32> {
        match value {
            "" => Some(0),
            _ => self.place_value(value).ok().map(|at| at as u32 + 1),
        }
    }

    /// The index entries name `value` by, added to the dictionary when absent (entries naming
    /// later values move up one).
    fn index_of(&mut self, value: &str) -> u32 {
        if value.is_empty() {
            return 0;
        }
        let at = match self.place_value(value) {
            Ok(at) => return at as u32 + 1,
            Err(at) => at,
        };
        let at = if self.values.len() >= DROP_UNNAMED_FROM && self.values.len().is_power_of_two() {
            self.drop_unnamed_values();
            self.place_value(value).unwrap_or_else(|at| at)
        } else {
            at
        };
        let index = at as u32 + 1;
        self.values.insert(at, value.into());
        for entry in &mut self.entries {
            if entry.value >= index {
                entry.value += 1;
            }
        }
        index
    }

    /// Drops the values no entry names, renumbering the entries (their order is kept).
    fn drop_unnamed_values(&mut self) {
        let mut named = vec![false; self.values.len() + 1];
        // `""`, which takes no room, keeps its 0.
        named[0] = true;
        for entry in &self.entries {
            named[entry.value as usize] = true;
        }
        let mut renumbered = Vec::with_capacity(named.len());
        let mut next = 0;
        for is_named in &named {
            renumbered.push(next);
            next += u32::from(*is_named);
        }
        for entry in &mut self.entries {
            entry.value = renumbered[entry.value as usize];
        }
        let mut named = named.into_iter().skip(1);
        self.values.retain(|_| named.next().unwrap_or(false));
    }

    /// Adds `delta` rows of `value` to `bucket` (from none when absent); the rows now there.
    /// A value left with no rows is removed, and a bucket left with no values.
    /// A bucket out of the range kept holds nothing and takes nothing (0).
    pub fn add(&mut self, bucket: i64, value: &str, delta: i64) -> i64 {
        let Some(bucket) = bucket_in_range(bucket) else { return 0 };
        let value = self.index_of(value);
        let range = self.range(bucket);
        match self.entries[range.clone()].binary_search_by_key(&value, |e| e.value) {
            Ok(offset) => {
                let at = range.start + offset;
                let rows = i64::from(narrow(i64::from(self.entries[at].rows) + delta));
                if rows == 0 {
                    self.entries.remove(at);
                } else {
                    self.entries[at].rows = rows as i32;
                }
                rows
            }
            Err(_) if delta == 0 => 0,
            Err(offset) => {
                let rows = narrow(delta);
                self.entries.insert(range.start + offset, Entry { bucket, value, rows });
                i64::from(rows)
            }
        }
    }

    /// The rows of `value` in `bucket`, if any.
    pub fn rows(&self, bucket: i64, value: &str) -> Option<i64> {
        let value = self.find_index(value)?;
        let entries = &self.entries[self.range(bucket_in_range(bucket)?)];
        let at = entries.binary_search_by_key(&value, |e| e.value).ok()?;
        Some(i64::from(entries[at].rows))
    }

    pub fn get(&self, bucket: i64) -> Option<Cell<'_>> {
        let range = self.range(bucket_in_range(bucket)?);
        (!range.is_empty()).then(|| Cell { entries: &self.entries[range], values: &self.values })
    }

    /// Drops `bucket` and its values.
    pub fn remove(&mut self, bucket: i64) {
        if let Some(bucket) = bucket_in_range(bucket) {
            let range = self.range(bucket);
            self.entries.drain(range);
        }
    }

    /// Drops the buckets before `oldest`.
    pub fn drop_before(&mut self, oldest: i64) {
        // From the front rather than by binary search: a change drops at most a bucket or two,
        // and the search's probes across the vector were cache misses, a tenth of the apply
        // once states were full.
        let stale = self.entries.iter().take_while(|e| i64::from(e.bucket) < oldest).count();
        self.entries.drain(..stale);
        if self.entries.is_empty() {
            self.values = ThinVec::new();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many values the buckets hold, counted once per bucket that holds them.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// How many texts the dictionary holds (`""` included): at most what the entries name.
    pub fn dictionary_len(&self) -> usize {
        self.values.len() + 1
    }

    /// Gives back the room of entries and values not there (a state read back is not growing).
    pub fn shrink_to_fit(&mut self) {
        self.drop_unnamed_values();
        self.entries.shrink_to_fit();
        self.values.shrink_to_fit();
    }

    /// What the buckets hold on the heap: the entries, the dictionary, and its texts too long
    /// to keep inline (over 15 bytes).
    pub fn heap_bytes(&self) -> usize {
        let texts: usize = self.values.iter().map(|v| text_heap_bytes(v)).sum();
        let dictionary = if self.values.is_empty() {
            0
        } else {
            16 + self.values.len() * std::mem::size_of::<EcoString>()
        };
        self.entries.len() * std::mem::size_of::<Entry>() + dictionary + texts
    }

    /// Every bucket's values as (bucket, index in the dictionary, rows), in bucket and then value
    /// order: the same value has the same index in every bucket, until the buckets change, and
    /// [`Self::text`] reads it. The codec places each value once, where reading every entry's
    /// text cost a cache miss per entry of a large dictionary (BENCHMARKS.md, "Varints pushed,
    /// not copied").
    pub fn indexed(&self) -> impl Iterator<Item = (i64, u32, i64)> + '_ {
        self.entries.iter().map(|e| (i64::from(e.bucket), e.value, i64::from(e.rows)))
    }

    /// The value named `index` by [`Self::indexed`].
    pub fn text(&self, index: u32) -> &str {
        text_of(&self.values, index)
    }

    /// Buckets and their cells, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        self.into_iter()
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = i64> + '_ {
        self.iter().map(|(bucket, _)| bucket)
    }

    /// Every bucket's values and rows: (bucket, value, rows), in order.
    fn triples(&self) -> impl Iterator<Item = (i64, &str, i64)> {
        let values = &self.values;
        self.entries
            .iter()
            .map(|e| (i64::from(e.bucket), text_of(values, e.value), i64::from(e.rows)))
    }
}

/// Buckets and their cells, oldest first.
pub struct Iter<'a> {
    buckets: std::slice::ChunkBy<'a, Entry, fn(&Entry, &Entry) -> bool>,
    values: &'a [EcoString],
}

fn same_bucket(left: &Entry, right: &Entry) -> bool {
    left.bucket == right.bucket
}

impl<'a> Iterator for Iter<'a> {
    type Item = (i64, Cell<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let entries = self.buckets.next()?;
        Some((i64::from(entries[0].bucket), Cell { entries, values: self.values }))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let entries = self.buckets.next_back()?;
        Some((i64::from(entries[0].bucket), Cell { entries, values: self.values }))
    }
}

impl<'a> IntoIterator for &'a Buckets {
    type Item = (i64, Cell<'a>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        let same: fn(&Entry, &Entry) -> bool = same_bucket;
        Iter { buckets: self.entries.chunk_by(same), values: &self.values }
    }
}

/// The same buckets, values and rows: the dictionary's unnamed values do not count.
impl PartialEq for Buckets {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len() && self.triples().eq(other.triples())
    }
}

impl Eq for Buckets {}

impl Buckets {
    /// Buckets from their dictionary, `values` (distinct, in text order), and their rows as
    /// (bucket, index in `values`, rows). Rows in bucket and value order, as stored states
    /// hold them, are taken as they come; others are sorted, and the rows of a value given more
    /// than once in a bucket are added up. Rows in buckets out of the range kept are left out.
    pub fn from_dictionary(
        values: impl IntoIterator<Item = impl Into<EcoString>>,
        rows: impl IntoIterator<Item = (i64, u32, i64)>,
    ) -> Self {
        let mut values: ThinVec<EcoString> = values.into_iter().map(Into::into).collect();
        // Indices from 1 for the values but `""`, which is 0.
        let shift = match values.first() {
            Some(first) if first.is_empty() => {
                values.remove(0);
                0
            }
            _ => 1,
        };
        let mut entries: Vec<Entry> = rows
            .into_iter()
            .filter_map(|(bucket, value, rows)| {
                let bucket = bucket_in_range(bucket)?;
                Some(Entry { bucket, value: value.saturating_add(shift), rows: narrow(rows) })
            })
            .collect();
        let ordered = entries
            .windows(2)
            .all(|pair| (pair[0].bucket, pair[0].value) < (pair[1].bucket, pair[1].value));
        if !ordered {
            entries.sort_by_key(|e| (e.bucket, e.value));
            entries.dedup_by(|later, kept| {
                let same = (later.bucket, later.value) == (kept.bucket, kept.value);
                if same {
                    kept.rows = narrow(i64::from(kept.rows) + i64::from(later.rows));
                }
                same
            });
        }
        entries.retain(|e| e.rows != 0 && (e.value as usize) <= values.len());
        let mut buckets = Buckets { entries, values };
        buckets.shrink_to_fit();
        buckets
    }
}

impl<S: AsRef<str>> FromIterator<(i64, S, i64)> for Buckets {
    /// (bucket, value, rows) in any order; the rows of a value given more than once in a bucket
    /// are added up.
    fn from_iter<I: IntoIterator<Item = (i64, S, i64)>>(iter: I) -> Self {
        let triples: Vec<(i64, S, i64)> = iter.into_iter().collect();
        let mut values: Vec<&str> = triples.iter().map(|(_, value, _)| value.as_ref()).collect();
        values.sort_unstable_by(|l, r| text_order(l.as_bytes(), r.as_bytes()));
        values.dedup();
        let index = |value: &str| {
            values
                .binary_search_by(|known| text_order(known.as_bytes(), value.as_bytes()))
                .unwrap_or_default() as u32
        };
        let rows: Vec<(i64, u32, i64)> = triples
            .iter()
            .map(|(bucket, value, rows)| (*bucket, index(value.as_ref()), *rows))
            .collect();
        Buckets::from_dictionary(values.iter().copied(), rows)
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
        let map =
            BTreeMap::<i64, BTreeMap<std::borrow::Cow<'de, str>, i64>>::deserialize(deserializer)?;
        Ok(map
            .iter()
            .flat_map(|(bucket, cell)| {
                cell.iter().map(|(value, rows)| (*bucket, value.as_ref(), *rows))
            })
            .collect())
    }
}

/// One bucket: its values and their rows, in the order of the values.
#[derive(Clone, Copy)]
pub struct Cell<'a> {
    entries: &'a [Entry],
    values: &'a [EcoString],
}

impl<'a> Cell<'a> {
    /// Values and their rows, in the order of the values.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, i64)> + use<'a> {
        let values = self.values;
        self.entries.iter().map(move |e| (text_of(values, e.value), i64::from(e.rows)))
    }

    /// The rows of each value.
    pub fn values(&self) -> impl Iterator<Item = i64> + use<'a> {
        self.entries.iter().map(|e| i64::from(e.rows))
    }

    pub fn get(&self, value: &str) -> Option<i64> {
        self.iter().find(|(known, _)| *known == value).map(|(_, rows)| rows)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for Cell<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Cell<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As a map from value to rows, as the state's JSON form always wrote it.
impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
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

#[path = "buckets_merge.rs"]
mod merge;

#[cfg(test)]
#[path = "tests_buckets.rs"]
mod tests;
