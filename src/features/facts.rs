//! A feature's facts: the rows `last`, `last_n`, `intervals`, current-state aggregations and the
//! co-occurrence session keep, each with its event time and stored value.
//!
//! They are a vector in (event time, row key, value) order, the order every read and every
//! pruning rule takes them in: reads walk them newest first without sorting, retention drops
//! from the front, and a session row finds its neighbours by binary search. Rows mostly arrive
//! in time order, so an insert lands at the end. A map by row key (the layout before) kept no
//! order a read could use, and each fact cost a tree node's share besides its 56 bytes
//! (BENCHMARKS.md, "Facts in time order").
//!
//! **Row keys only where a retraction needs one.** Sources are REPLICA IDENTITY FULL, so the
//! before image of an update or delete carries the row's event time and the value it stored:
//! where the time is a column of the row, that finds its fact. Two rows with the same time and
//! value are then the same fact twice, and retracting either leaves the other, which is all a
//! read can tell apart. Those facts are kept without a key ([`RowKey::none`]): the key was 16 of
//! a fact's ~23 stored bytes and 24 of its 56 in memory. A row dated by its commit time
//! (`time_if_null`) keeps its key, as its before image carries no time to find it by. Among
//! facts of the same time, keyless ones order by value, which is the tie-break of `last` and
//! `last_n` for them. A state stored before keyless facts holds keyed facts of a keyless feature:
//! a retraction by time and value finds those too.
//!
//! A keyed row has one fact: applying a change retracts the row's before image (which carries
//! its time) before adding its after image, so an insert never finds its row under another time.

use std::fmt;

use ecow::EcoString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

use super::row_key::RowKey;

/// A row's event time and stored value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    #[serde(rename = "t")]
    pub at_us: i64,
    /// Inline up to 15 bytes (a product id, a category): no allocation per fact, and 16 bytes
    /// where a `CompactString` took 24 — a fact is 24 bytes, and facts are half a user's memory.
    #[serde(rename = "v")]
    pub value: EcoString,
}

/// A fact and its row key ([`RowKey::none`] when kept without), as facts are walked.
pub type Entry<'a> = (&'a RowKey, &'a Fact);

/// Facts in (event time, row key, value) order; serialized as a map from row key to fact.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    facts: Vec<Fact>,
    /// The facts' row keys, in the same order; empty while every fact is keyless (one word, as
    /// most features' facts never have keys).
    keys: ThinVec<RowKey>,
}

impl Facts {
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// Whether any fact has a row key (for memory estimates).
    pub fn keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    fn key(&self, index: usize) -> &RowKey {
        self.keys.get(index).unwrap_or(RowKey::none())
    }

    /// Oldest first; `.rev()` for newest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Entry<'_>> + ExactSizeIterator {
        (0..self.facts.len()).map(|index| (self.key(index), &self.facts[index]))
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Fact> + ExactSizeIterator {
        self.facts.iter()
    }

    pub fn oldest(&self) -> Option<&Fact> {
        self.facts.first()
    }

    pub fn newest(&self) -> Option<&Fact> {
        self.facts.last()
    }

    /// The fact at `index`, oldest first.
    pub fn entry(&self, index: usize) -> Option<Entry<'_>> {
        self.facts.get(index).map(|fact| (self.key(index), fact))
    }

    fn order(&self, index: usize) -> (i64, &RowKey, &str) {
        let fact = &self.facts[index];
        (fact.at_us, self.key(index), &fact.value)
    }

    /// Where the fact (`at_us`, `key`, `value`) is (the first of equal ones), or would go.
    pub fn place(&self, at_us: i64, key: &RowKey, value: &str) -> Result<usize, usize> {
        let probe = (at_us, key, value);
        // From the end: rows mostly arrive in time order, and a binary search over the newest
        // few would touch the same cache lines as this check of the last one.
        let len = self.facts.len();
        if len > 0 && self.order(len - 1) < probe {
            return Err(len);
        }
        let (mut low, mut high) = (0, len);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.order(middle) < probe {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        if low < len && self.order(low) == probe { Ok(low) } else { Err(low) }
    }

    /// Where the fact a before image (`at_us`, `key`, `value`) retracts is: at its place; for
    /// a keyless one stored with its key (before keyless facts), among the facts of its time;
    /// for a keyed one dated by its commit time (`time_if_null`, whose before image is dated by
    /// the change retracting it), anywhere.
    pub fn find(&self, at_us: i64, key: &RowKey, value: &str) -> Option<usize> {
        match self.place(at_us, key, value) {
            Ok(index) => Some(index),
            Err(_) if key.is_none() => {
                let from = self.facts.partition_point(|fact| fact.at_us < at_us);
                let mut same_time =
                    self.facts[from..].iter().take_while(|fact| fact.at_us == at_us);
                Some(from + same_time.position(|fact| fact.value == value)?)
            }
            Err(_) => (0..self.facts.len()).find(|&index| self.key(index) == key),
        }
    }

    /// Keeps `fact` of row `key` ([`RowKey::none`]: of a row found by its time and value). A
    /// keyed row has no fact at another time (see the module's doc); the same one is replaced.
    /// A keyless fact equal to one held is held twice.
    pub fn insert(&mut self, key: RowKey, fact: Fact) {
        let index = match self.place(fact.at_us, &key, &fact.value) {
            Ok(index) if !key.is_none() => {
                self.facts[index] = fact;
                return;
            }
            Ok(index) | Err(index) => index,
        };
        if !key.is_none() && self.keys.is_empty() {
            self.keys = std::iter::repeat_n(RowKey::none().clone(), self.facts.len()).collect();
        }
        if !key.is_none() || !self.keys.is_empty() {
            self.keys.insert(index, key);
        }
        self.facts.insert(index, fact);
    }

    /// Forgets the fact at `index`.
    pub fn remove_at(&mut self, index: usize) -> Fact {
        if !self.keys.is_empty() {
            self.keys.remove(index);
        }
        self.facts.remove(index)
    }

    /// Forgets the fact a before image retracts (see [`Self::find`]).
    pub fn remove(&mut self, at_us: i64, key: &RowKey, value: &str) -> Option<Fact> {
        let index = self.find(at_us, key, value)?;
        Some(self.remove_at(index))
    }

    /// Forgets the oldest fact whose value is `value`.
    pub fn remove_oldest_of(&mut self, value: &str) {
        if let Some(index) = self.facts.iter().position(|fact| fact.value == value) {
            self.remove_at(index);
        }
    }

    /// The facts just before and just after `index`.
    pub fn neighbours_of(&self, index: usize) -> (Option<Entry<'_>>, Option<Entry<'_>>) {
        (index.checked_sub(1).and_then(|before| self.entry(before)), self.entry(index + 1))
    }

    /// The facts just before and just after where (`at_us`, `key`, `value`) would be inserted.
    pub fn neighbours_at(
        &self,
        at_us: i64,
        key: &RowKey,
        value: &str,
    ) -> (Option<Entry<'_>>, Option<Entry<'_>>) {
        let (Ok(index) | Err(index)) = self.place(at_us, key, value);
        (index.checked_sub(1).and_then(|before| self.entry(before)), self.entry(index))
    }

    /// Drops the oldest facts while `keep` refuses their time; `keep` must accept every time
    /// after one it accepts (a horizon).
    pub fn drop_older(&mut self, keep: impl Fn(i64) -> bool) {
        // From the front, as `Buckets::drop_before`: a change drops few facts, if any.
        let refused = self.facts.iter().take_while(|fact| !keep(fact.at_us)).count();
        self.drop_oldest(refused);
    }

    /// Drops the oldest facts beyond the newest `kept`.
    pub fn keep_newest(&mut self, kept: usize) {
        self.drop_oldest(self.facts.len().saturating_sub(kept));
    }

    fn drop_oldest(&mut self, count: usize) {
        self.facts.drain(..count);
        if !self.keys.is_empty() {
            self.keys.drain(..count);
        }
    }

    /// Keeps the facts whose place, counted from the newest (0), `keep` accepts; `keep` is
    /// asked oldest first.
    pub fn retain_from_newest(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let len = self.facts.len();
        let keyed = self.keyed();
        let mut kept = 0;
        for index in 0..len {
            if keep(len - 1 - index) {
                self.facts.swap(kept, index);
                if keyed {
                    self.keys.swap(kept, index);
                }
                kept += 1;
            }
        }
        self.facts.truncate(kept);
        self.keys.truncate(if keyed { kept } else { 0 });
    }
}

impl PartialEq for Facts {
    /// As the facts and keys they hold: keyless facts equal facts keyed by [`RowKey::none`].
    fn eq(&self, other: &Self) -> bool {
        self.facts == other.facts
            && self.iter().map(|(key, _)| key).eq(other.iter().map(|(key, _)| key))
    }
}

impl Eq for Facts {}

impl FromIterator<(RowKey, Fact)> for Facts {
    /// In any order; a keyed row given twice keeps its last fact, keyless facts are all kept.
    fn from_iter<I: IntoIterator<Item = (RowKey, Fact)>>(iter: I) -> Self {
        let mut entries: Vec<(RowKey, Fact)> = iter.into_iter().collect();
        // Stable: of a row's facts, the last given comes last and is the one dedup keeps.
        entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        entries.reverse();
        entries.dedup_by(|later, earlier| !later.0.is_none() && later.0 == earlier.0);
        entries
            .sort_unstable_by(|(a, x), (b, y)| (x.at_us, a, &x.value).cmp(&(y.at_us, b, &y.value)));
        let keyed = entries.iter().any(|(key, _)| !key.is_none());
        let (keys, facts): (Vec<RowKey>, Vec<Fact>) = entries.into_iter().unzip();
        Self { facts, keys: if keyed { keys.into_iter().collect() } else { ThinVec::new() } }
    }
}

impl Serialize for Facts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, fact) in self.iter() {
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
    use proptest::prelude::*;

    use super::*;

    /// One step on facts: insert a row (keyed `r0`…`r11` when it has no fact, or keyless: 12 and
    /// up), retract one held (a keyed row looked up at its time or a wrong one; a keyless fact by
    /// its time and value; a keyed fact by its time and value, as a state stored before keyless
    /// facts is), retract one not held, or prune.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, i64),
        Remove(usize, bool),
        RemoveAsKeyless(usize),
        RemoveAbsent(i64),
        DropOlder(i64),
        KeepNewest(usize),
        /// Keeps the facts whose place from the newest is not a multiple of this.
        RetainFromNewest(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..18, 0i64..30).prop_map(|(key, at)| Step::Insert(key, at)),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(at, right)| Step::Remove(at, right)),
            1 => any::<usize>().prop_map(Step::RemoveAsKeyless),
            1 => (0i64..30).prop_map(Step::RemoveAbsent),
            1 => (0i64..30).prop_map(Step::DropOlder),
            1 => (0usize..12).prop_map(Step::KeepNewest),
            1 => (2usize..5).prop_map(Step::RetainFromNewest),
        ]
    }

    fn key(key: u8) -> RowKey {
        if key < 12 { RowKey::new(&format!("r{key}")) } else { RowKey::none().clone() }
    }

    fn order((key, fact): &(RowKey, Fact)) -> (i64, &RowKey, &str) {
        (fact.at_us, key, &fact.value)
    }

    /// Removes from `model` the first fact, in order, at `at_us` with `value`.
    fn remove_first(model: &mut Vec<(RowKey, Fact)>, at_us: i64, value: &str) -> Option<Fact> {
        let index = model.iter().position(|(_, f)| f.at_us == at_us && f.value == value)?;
        Some(model.remove(index).1)
    }

    proptest! {
        /// Facts hold what a list of (row key, fact) in (time, key, value) order holds, through
        /// inserts in any time order, keyed and keyless, retractions of every kind, and both
        /// kinds of pruning; neighbours are the facts next to a place in that order.
        #[test]
        fn facts_are_a_list_in_time_order(steps in prop::collection::vec(step(), 0..80)) {
            let mut facts = Facts::default();
            // Kept sorted by `order`.
            let mut model: Vec<(RowKey, Fact)> = Vec::new();
            for step in steps {
                match step {
                    Step::Insert(k, at_us) => {
                        let key = key(k);
                        if !key.is_none() && model.iter().any(|(held, _)| *held == key) {
                            continue;
                        }
                        let fact = Fact { at_us, value: format!("v{}", (at_us + i64::from(k)) % 3).into() };
                        let (before, after) = facts.neighbours_at(at_us, &key, &fact.value);
                        let place = model.partition_point(|entry| order(entry) < (at_us, &key, &fact.value));
                        prop_assert_eq!(before.map(|(_, f)| f), place.checked_sub(1).map(|i| &model[i].1));
                        prop_assert_eq!(after.map(|(_, f)| f), model.get(place).map(|(_, f)| f));
                        facts.insert(key.clone(), fact.clone());
                        model.insert(place, (key, fact));
                    }
                    Step::Remove(_, _) | Step::RemoveAsKeyless(_) if model.is_empty() => {}
                    Step::Remove(pick, right) => {
                        let (key, fact) = model[pick % model.len()].clone();
                        if key.is_none() {
                            prop_assert_eq!(facts.remove(fact.at_us, &key, &fact.value), remove_first(&mut model, fact.at_us, &fact.value));
                        } else {
                            // A row dated by its commit time: its before image has another time.
                            let at_us = if right { fact.at_us } else { fact.at_us + 1 };
                            prop_assert_eq!(facts.remove(at_us, &key, &fact.value), Some(fact));
                            model.retain(|(held, _)| *held != key);
                        }
                    }
                    Step::RemoveAsKeyless(pick) => {
                        let (_, fact) = model[pick % model.len()].clone();
                        let removed = facts.remove(fact.at_us, RowKey::none(), &fact.value);
                        prop_assert_eq!(removed, remove_first(&mut model, fact.at_us, &fact.value));
                    }
                    Step::RemoveAbsent(at_us) => {
                        let removed = facts.remove(at_us, RowKey::none(), "absent");
                        prop_assert_eq!(removed, None);
                    }
                    Step::DropOlder(horizon) => {
                        facts.drop_older(|at| at >= horizon);
                        model.retain(|(_, fact)| fact.at_us >= horizon);
                    }
                    Step::KeepNewest(kept) => {
                        facts.keep_newest(kept);
                        model.drain(..model.len().saturating_sub(kept));
                    }
                    Step::RetainFromNewest(every) => {
                        facts.retain_from_newest(|place| !place.is_multiple_of(every));
                        let len = model.len();
                        model = model
                            .into_iter()
                            .enumerate()
                            .filter(|(index, _)| !(len - 1 - index).is_multiple_of(every))
                            .map(|(_, entry)| entry)
                            .collect();
                    }
                }
                let held: Vec<(RowKey, Fact)> = facts.iter().map(|(k, f)| (k.clone(), f.clone())).collect();
                prop_assert_eq!(&held, &model);
                for index in 0..model.len() {
                    let (before, after) = facts.neighbours_of(index);
                    prop_assert_eq!(before.map(|(_, f)| f), index.checked_sub(1).map(|i| &model[i].1));
                    prop_assert_eq!(after.map(|(_, f)| f), model.get(index + 1).map(|(_, f)| f));
                }
                let collected: Facts = model.iter().rev().cloned().collect();
                prop_assert_eq!(&collected, &facts);
            }
            let read_back: Facts = serde_json::from_str(&serde_json::to_string(&facts).expect("serializes"))
                .expect("reads back");
            prop_assert_eq!(read_back, facts);
        }
    }

    #[test]
    fn a_keyed_row_given_twice_keeps_its_last_fact_and_keyless_facts_are_all_kept() {
        let fact = |at_us| Fact { at_us, value: "p1".into() };
        let none = || RowKey::none().clone();
        let facts: Facts = [
            (key(1), fact(5)),
            (none(), fact(3)),
            (key(2), fact(3)),
            (key(1), fact(1)),
            (none(), fact(3)),
        ]
        .into_iter()
        .collect();
        let held: Vec<(String, i64)> =
            facts.iter().map(|(key, fact)| (key.as_text().into_owned(), fact.at_us)).collect();
        let expected = [("r1", 1), ("", 3), ("", 3), ("r2", 3)];
        assert_eq!(held, expected.map(|(key, at)| (key.to_string(), at)));
    }

    #[test]
    fn keyless_facts_take_no_room_for_keys() {
        let facts: Facts = (0..4)
            .map(|at_us| (RowKey::none().clone(), Fact { at_us, value: "p1".into() }))
            .collect();
        assert!(!facts.keyed());
        let mut facts = facts;
        facts.insert(key(1), Fact { at_us: 2, value: "p2".into() });
        assert!(facts.keyed());
        assert_eq!(facts.iter().filter(|(key, _)| key.is_none()).count(), 4);
    }
}
