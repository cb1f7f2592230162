//! A feature's facts: the rows `last`, `last_n`, `intervals`, current-state aggregations and the
//! co-occurrence session keep, by row key, each with its event time and stored value.
//!
//! They are a vector in (event time, row key) order, the order every read and every pruning
//! rule takes them in: reads walk them newest first without sorting, retention drops from the
//! front, and a session row finds its neighbours by binary search. Rows mostly arrive in time
//! order, so an insert lands at the end. A map by row key (the layout before) kept no order a
//! read could use, and each fact cost a tree node's share besides its 56 bytes (BENCHMARKS.md,
//! "Facts in time order").
//!
//! A row has one fact: applying a change retracts the row's before image (which carries its
//! time) before adding its after image, so an insert never finds its row under another time.

use std::fmt;

use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::row_key::RowKey;

/// A row kept by its key: its event time and stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    #[serde(rename = "t")]
    pub at_us: i64,
    /// Inline when short (a product id, a category): no allocation per fact.
    #[serde(rename = "v")]
    pub value: CompactString,
}

/// A row key and its fact, as facts are walked.
pub type Entry<'a> = (&'a RowKey, &'a Fact);

/// Facts by row key, in (event time, row key) order; serialized as a map from row key to fact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts(Vec<(RowKey, Fact)>);

impl Facts {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Oldest first; `.rev()` for newest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&RowKey, &Fact)> + ExactSizeIterator {
        self.0.iter().map(|(key, fact)| (key, fact))
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Fact> + ExactSizeIterator {
        self.0.iter().map(|(_, fact)| fact)
    }

    pub fn oldest(&self) -> Option<&Fact> {
        self.0.first().map(|(_, fact)| fact)
    }

    pub fn newest(&self) -> Option<&Fact> {
        self.0.last().map(|(_, fact)| fact)
    }

    /// Where row `key` at `at_us` is, or would go.
    fn place(&self, at_us: i64, key: &RowKey) -> Result<usize, usize> {
        // From the end: rows mostly arrive in time order, and a binary search over the newest
        // few would touch the same cache lines as this check of the last one.
        match self.0.last() {
            Some((last, fact)) if (fact.at_us, last) < (at_us, key) => Err(self.0.len()),
            _ => self.0.binary_search_by(|(k, fact)| (fact.at_us, k).cmp(&(at_us, key))),
        }
    }

    /// The fact of row `key`, looked up at `at_us`, the time its before image gives.
    pub fn get(&self, key: &RowKey, at_us: i64) -> Option<&Fact> {
        self.place(at_us, key).ok().map(|index| &self.0[index].1)
    }

    /// Keeps `fact` as row `key`'s. The row has no fact at another time (see the module's
    /// doc); one at the same time is replaced.
    pub fn insert(&mut self, key: RowKey, fact: Fact) {
        match self.place(fact.at_us, &key) {
            Ok(index) => self.0[index].1 = fact,
            Err(index) => self.0.insert(index, (key, fact)),
        }
    }

    /// Forgets row `key`'s fact, looked up at `at_us` first, then at any time: a row whose time
    /// is the commit time (`time_if_null`) has a before image dated by the change retracting it.
    pub fn remove(&mut self, key: &RowKey, at_us: i64) -> Option<Fact> {
        let index = match self.place(at_us, key) {
            Ok(index) => index,
            Err(_) => self.0.iter().position(|(k, _)| k == key)?,
        };
        Some(self.0.remove(index).1)
    }

    /// Forgets the oldest fact whose value is `value`.
    pub fn remove_oldest_of(&mut self, value: &str) {
        if let Some(index) = self.0.iter().position(|(_, fact)| fact.value == value) {
            self.0.remove(index);
        }
    }

    /// The facts just before and just after where row `key` at `at_us` is or would go, itself
    /// excluded.
    pub fn neighbours(&self, at_us: i64, key: &RowKey) -> (Option<Entry<'_>>, Option<Entry<'_>>) {
        let (before, after) = match self.place(at_us, key) {
            Ok(index) => (index.checked_sub(1), index + 1),
            Err(index) => (index.checked_sub(1), index),
        };
        let at = |index: usize| self.0.get(index).map(|(key, fact)| (key, fact));
        (before.and_then(at), at(after))
    }

    /// Drops the oldest facts while `keep` refuses their time; `keep` must accept every time
    /// after one it accepts (a horizon).
    pub fn drop_older(&mut self, keep: impl Fn(i64) -> bool) {
        // From the front, as `Buckets::drop_before`: a change drops few facts, if any.
        let refused = self.0.iter().take_while(|(_, fact)| !keep(fact.at_us)).count();
        self.0.drain(..refused);
    }

    /// Drops the oldest facts beyond the newest `kept`.
    pub fn keep_newest(&mut self, kept: usize) {
        let excess = self.0.len().saturating_sub(kept);
        self.0.drain(..excess);
    }

    /// Keeps the facts whose place, counted from the newest (0), `keep` accepts.
    pub fn retain_from_newest(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut place = self.0.len();
        self.0.retain(|_| {
            place -= 1;
            keep(place)
        });
    }
}

impl FromIterator<(RowKey, Fact)> for Facts {
    /// In any order; a row given twice keeps its last fact.
    fn from_iter<I: IntoIterator<Item = (RowKey, Fact)>>(iter: I) -> Self {
        let mut facts: Vec<(RowKey, Fact)> = iter.into_iter().collect();
        // Stable: of a row's facts, the last given comes last and is the one dedup keeps.
        facts.sort_by(|(a, _), (b, _)| a.cmp(b));
        facts.reverse();
        facts.dedup_by(|later, earlier| later.0 == earlier.0);
        facts.sort_unstable_by(|(a, x), (b, y)| (x.at_us, a).cmp(&(y.at_us, b)));
        facts.shrink_to_fit();
        Self(facts)
    }
}

impl<'a> IntoIterator for &'a Facts {
    type Item = (&'a RowKey, &'a Fact);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (RowKey, Fact)>,
        fn(&'a (RowKey, Fact)) -> (&'a RowKey, &'a Fact),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(key, fact)| (key, fact))
    }
}

impl Serialize for Facts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, fact) in self {
            map.serialize_entry(key, fact)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Facts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FactsVisitor;

        impl<'de> Visitor<'de> for FactsVisitor {
            type Value = Facts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from row key to fact")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Facts, A::Error> {
                let mut facts = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4_096));
                while let Some(entry) = map.next_entry::<RowKey, Fact>()? {
                    facts.push(entry);
                }
                Ok(facts.into_iter().collect())
            }
        }

        deserializer.deserialize_map(FactsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// One step on facts: insert row `key` at a time (when it has no fact), remove it (looked up
    /// at its time, or at a wrong one), or drop what is older than a horizon.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, i64),
        Remove(u8, bool),
        DropOlder(i64),
        KeepNewest(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..16, 0i64..40).prop_map(|(key, at)| Step::Insert(key, at)),
            2 => (0u8..16, any::<bool>()).prop_map(|(key, right)| Step::Remove(key, right)),
            1 => (0i64..40).prop_map(Step::DropOlder),
            1 => (0usize..12).prop_map(Step::KeepNewest),
        ]
    }

    fn key(key: u8) -> RowKey {
        RowKey::new(&format!("r{key}"))
    }

    /// The facts `model`, a map by row key, holds, in (time, key) order.
    fn ordered(model: &BTreeMap<RowKey, Fact>) -> Vec<(RowKey, Fact)> {
        let mut facts: Vec<(RowKey, Fact)> =
            model.iter().map(|(key, fact)| (key.clone(), fact.clone())).collect();
        facts.sort_by(|(a, x), (b, y)| (x.at_us, a).cmp(&(y.at_us, b)));
        facts
    }

    proptest! {
        /// Facts hold what a map by row key holds, in time order, through inserts in any time
        /// order, removals looked up at the row's time or another, and both kinds of pruning;
        /// neighbours are the facts next to a row in that order.
        #[test]
        fn facts_are_a_map_by_row_key_in_time_order(steps in prop::collection::vec(step(), 0..80)) {
            let mut facts = Facts::default();
            let mut model: BTreeMap<RowKey, Fact> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(k, at_us) if !model.contains_key(&key(k)) => {
                        let fact = Fact { at_us, value: format!("v{}", at_us % 3).into() };
                        facts.insert(key(k), fact.clone());
                        model.insert(key(k), fact);
                    }
                    Step::Insert(..) => {}
                    Step::Remove(k, right) => {
                        let at_us = model.get(&key(k)).map_or(0, |fact| fact.at_us);
                        let at_us = if right { at_us } else { at_us + 1 };
                        prop_assert_eq!(facts.remove(&key(k), at_us), model.remove(&key(k)));
                    }
                    Step::DropOlder(horizon) => {
                        facts.drop_older(|at| at >= horizon);
                        model.retain(|_, fact| fact.at_us >= horizon);
                    }
                    Step::KeepNewest(kept) => {
                        facts.keep_newest(kept);
                        let all = ordered(&model);
                        let excess = all.len().saturating_sub(kept);
                        for (gone, _) in &all[..excess] {
                            model.remove(gone);
                        }
                    }
                }
                let expected = ordered(&model);
                prop_assert_eq!(&facts.0, &expected);
                for (index, (k, fact)) in expected.iter().enumerate() {
                    let (before, after) = facts.neighbours(fact.at_us, k);
                    prop_assert_eq!(before.map(|(k, _)| k), index.checked_sub(1).map(|i| &expected[i].0));
                    prop_assert_eq!(after.map(|(k, _)| k), expected.get(index + 1).map(|(k, _)| k));
                }
            }
            let read_back: Facts = serde_json::from_str(&serde_json::to_string(&facts).expect("serializes"))
                .expect("reads back");
            prop_assert_eq!(read_back, facts);
        }
    }

    #[test]
    fn a_row_given_twice_keeps_its_last_fact() {
        let fact = |at_us| Fact { at_us, value: "p1".into() };
        let facts: Facts =
            [(key(1), fact(5)), (key(2), fact(3)), (key(1), fact(1))].into_iter().collect();
        let held: Vec<(String, i64)> =
            facts.iter().map(|(key, fact)| (key.as_text().into_owned(), fact.at_us)).collect();
        assert_eq!(held, [("r1".to_string(), 1), ("r2".to_string(), 3)]);
    }
}
