//! One feature's state ([`FeatureState`]: buckets or facts), and an entity's, by feature.
//!
//! Applying a change finds the state of every feature it feeds, so this lookup runs a few dozen
//! times per event. Feature names are interned when the definitions load and when a state is
//! read back from Redis, so the ingest path finds a state by comparing pointers; an entity holds
//! at most as many states as the definitions declare features, few enough that a vector beats a
//! map. (A map keyed by `String` spent a fifth of decode + apply comparing and cloning names;
//! see BENCHMARKS.md, "Decode + apply per event".)

use std::collections::BTreeMap;
use std::fmt;

use compact_str::CompactString;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::buckets::Buckets;
use super::intern::intern;
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

/// What one feature keeps of one entity: counts per time bucket, or rows (see
/// docs/FEATURES.md, "State layout").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    #[serde(rename = "b", default, skip_serializing_if = "Buckets::is_empty")]
    pub buckets: Buckets,
    #[serde(rename = "f", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<RowKey, Fact>,
    #[serde(skip)]
    oldest_fact: OldestFact,
}

/// A bound at or below every fact's event time, once known: pruning by time skips its walk over
/// the facts while the bound is inside what it keeps. Neither stored nor compared (two states
/// with the same facts are equal however much each knows of them).
#[derive(Debug, Clone, Copy, Default)]
struct OldestFact(Option<i64>);

impl PartialEq for OldestFact {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for OldestFact {}

impl FeatureState {
    pub fn new(buckets: Buckets, facts: BTreeMap<RowKey, Fact>) -> Self {
        Self { buckets, facts, oldest_fact: OldestFact::default() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.facts.is_empty()
    }

    /// Keeps `fact` as the row `key`'s (replacing what the row had).
    pub(super) fn insert_fact(&mut self, key: RowKey, fact: Fact) {
        if let Some(oldest) = &mut self.oldest_fact.0 {
            *oldest = (*oldest).min(fact.at_us);
        }
        self.facts.insert(key, fact);
    }

    /// Drops the facts whose event time `keep` refuses; `keep` must accept every time after one
    /// it accepts (a horizon). Walks the facts only when the oldest may be refused: most changes
    /// move no fact past the horizon, and a walk per change was a tenth of the ingest's time.
    pub(super) fn retain_facts_since(&mut self, keep: impl Fn(i64) -> bool) {
        if self.oldest_fact.0.is_some_and(&keep) {
            return;
        }
        let mut oldest = i64::MAX;
        self.facts.retain(|_, fact| {
            let kept = keep(fact.at_us);
            if kept {
                oldest = oldest.min(fact.at_us);
            }
            kept
        });
        self.oldest_fact = OldestFact(Some(oldest));
    }
}

/// Feature states by feature name; serialized as a map from name to state.
#[derive(Clone, Default)]
pub struct FeatureStates(Vec<(&'static str, FeatureState)>);

impl FeatureStates {
    /// The state of the feature named `name`, by its text (a name from a request, say).
    pub fn get(&self, name: &str) -> Option<&FeatureState> {
        self.0.iter().find(|(known, _)| *known == name).map(|(_, state)| state)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The state of the feature named `name`, an interned name (a [`super::Feature`]'s), made
    /// empty when the entity has none yet.
    pub fn entry(&mut self, name: &'static str) -> &mut FeatureState {
        let index = match self.position(name) {
            Some(index) => index,
            None => {
                self.0.push((name, FeatureState::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[index].1
    }

    pub fn insert(&mut self, name: &'static str, state: FeatureState) {
        *self.entry(name) = state;
    }

    /// [`Self::insert`] under `name` read from elsewhere (a stored state), interned.
    pub fn insert_named(&mut self, name: &str, state: FeatureState) {
        self.insert(intern(name), state);
    }

    /// Forgets the state of `name`, an interned name.
    pub fn remove(&mut self, name: &'static str) {
        if let Some(index) = self.position(name) {
            self.0.swap_remove(index);
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &FeatureState)> {
        self.0.iter().map(|(name, state)| (*name, state))
    }

    pub fn values(&self) -> impl Iterator<Item = &FeatureState> {
        self.0.iter().map(|(_, state)| state)
    }

    /// Every name held is interned, so equal names are the same pointer.
    fn position(&self, name: &'static str) -> Option<usize> {
        self.0.iter().position(|(known, _)| std::ptr::eq(*known, name))
    }
}

/// Equal when both hold the same states, in whatever order they were added.
impl PartialEq for FeatureStates {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(name, state)| other.get(name) == Some(state))
    }
}

impl Eq for FeatureStates {}

impl fmt::Debug for FeatureStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(&'static str, FeatureState)> for FeatureStates {
    fn from_iter<I: IntoIterator<Item = (&'static str, FeatureState)>>(iter: I) -> Self {
        let mut states = Self::default();
        for (name, state) in iter {
            states.insert(intern(name), state);
        }
        states
    }
}

impl Serialize for FeatureStates {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, state) in self.iter() {
            map.serialize_entry(name, state)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for FeatureStates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatesVisitor;

        impl<'de> Visitor<'de> for StatesVisitor {
            type Value = FeatureStates;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from feature name to feature state")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FeatureStates, A::Error> {
                let mut states = FeatureStates(Vec::with_capacity(map.size_hint().unwrap_or(0)));
                while let Some((name, state)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, FeatureState>()?
                {
                    states.insert(intern(&name), state);
                }
                Ok(states)
            }
        }

        deserializer.deserialize_map(StatesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// One step on a state's facts: insert row `key` at a time, remove it, or prune before a
    /// horizon.
    #[derive(Debug, Clone)]
    enum FactStep {
        Insert(u8, i64),
        Remove(u8),
        Prune(i64),
    }

    fn fact_step() -> impl Strategy<Value = FactStep> {
        prop_oneof![
            (0u8..12, 0i64..100).prop_map(|(key, at)| FactStep::Insert(key, at)),
            (0u8..12).prop_map(FactStep::Remove),
            (0i64..100).prop_map(FactStep::Prune),
        ]
    }

    proptest! {
        /// Pruning that skips its walk while the oldest fact is known to be kept drops exactly
        /// what a walk over every fact drops, whatever the order of inserts (older rows
        /// included), removals and horizons, and however the state was merged or read back.
        #[test]
        fn pruning_by_the_oldest_fact_drops_what_a_full_walk_drops(
            steps in prop::collection::vec(fact_step(), 0..80),
        ) {
            let mut tracked = FeatureState::default();
            let mut walked = FeatureState::default();
            for step in &steps {
                match step {
                    FactStep::Insert(key, at) => {
                        let fact = Fact { at_us: *at, value: "v".into() };
                        tracked.insert_fact(format!("r{key}").into(), fact.clone());
                        walked.facts.insert(format!("r{key}").into(), fact);
                    }
                    FactStep::Remove(key) => {
                        tracked.facts.remove(&format!("r{key}").into());
                        walked.facts.remove(&format!("r{key}").into());
                    }
                    FactStep::Prune(horizon) => {
                        tracked.retain_facts_since(|at| at >= *horizon);
                        walked.oldest_fact = OldestFact(None);
                        walked.retain_facts_since(|at| at >= *horizon);
                    }
                }
                prop_assert_eq!(&tracked.facts, &walked.facts);
            }
        }
    }

    fn state(bucket: i64) -> FeatureState {
        let mut state = FeatureState::default();
        state.buckets.cell_mut(bucket).add("", 1);
        state
    }

    #[test]
    fn names_read_back_find_the_states_of_the_definitions_interned_names() {
        let mut states = FeatureStates::default();
        states.insert(intern("clicks_1m"), state(1));
        states.insert(intern("views_1m"), state(2));
        let json = serde_json::to_string(&states).expect("serializes");
        let mut read: FeatureStates = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(read, states);
        // The definitions' name, interned at load: the same pointer as the name read back.
        *read.entry(intern("views_1m")) = state(3);
        assert_eq!(read.len(), 2);
        assert_eq!(read.get("views_1m"), Some(&state(3)));
        read.remove(intern("clicks_1m"));
        assert_eq!(read.get("clicks_1m"), None);
    }

    #[test]
    fn equality_ignores_the_order_states_were_added_in() {
        let a: FeatureStates = [("a", state(1)), ("b", state(2))].into_iter().collect();
        let b: FeatureStates = [("b", state(2)), ("a", state(1))].into_iter().collect();
        let c: FeatureStates = [("b", state(2)), ("a", state(9))].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
