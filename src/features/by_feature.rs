//! One feature's state ([`FeatureState`]: buckets or facts), and an entity's, by feature.
//!
//! Applying a change finds the state of every feature it feeds, so this lookup runs a few dozen
//! times per event. Feature names are interned when the definitions load and when a state is
//! read back from Redis, so the ingest path finds a state by comparing pointers; an entity holds
//! at most as many states as the definitions declare features, few enough that a vector beats a
//! map. (A map keyed by `String` spent a fifth of decode + apply comparing and cloning names;
//! see BENCHMARKS.md, "Decode + apply per event".)

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::buckets::Buckets;
use super::facts::Facts;
use super::intern::intern;

/// What one feature keeps of one entity: counts per time bucket, or rows (see
/// docs/FEATURES.md, "State layout").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureState {
    #[serde(rename = "b", default, skip_serializing_if = "Buckets::is_empty")]
    pub buckets: Buckets,
    #[serde(rename = "f", default, skip_serializing_if = "Facts::is_empty")]
    pub facts: Facts,
    /// How many values an unwindowed `last_n`'s facts held when last pruned by a full walk, kept
    /// since by every change that added a fact: `None` when not known (see
    /// `retention::prune_last_n`). Neither stored nor compared.
    #[serde(skip)]
    pub(super) last_n_values: KnownValues,
}

/// Distinct values of a `last_n`'s facts, when known (a `u32`: one word with its tag); equal to
/// any other.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KnownValues(pub(super) Option<u32>);

impl PartialEq for KnownValues {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KnownValues {}

impl FeatureState {
    pub fn new(buckets: Buckets, facts: Facts) -> Self {
        Self { buckets, facts, last_n_values: KnownValues::default() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.facts.is_empty()
    }
}

/// Feature states by feature name; serialized as a map from name to state.
///
/// Each state also carries whether Redis holds it, unchanged since, in a value of its own (a
/// *part* of the share: see `store::codec`), so that writing the share again leaves it alone.
/// Only reading it from such a value, or its writer after the write was acknowledged, says so;
/// any mutable access says otherwise. Neither stored nor compared.
#[derive(Clone, Default)]
pub struct FeatureStates(Vec<(&'static str, FeatureState, Stored)>);

/// Whether Redis holds a feature state, as it is, in a part of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored(pub bool);

impl FeatureStates {
    /// The state of the feature named `name`, by its text (a name from a request, say).
    pub fn get(&self, name: &str) -> Option<&FeatureState> {
        self.0.iter().find(|(known, ..)| *known == name).map(|(_, state, _)| state)
    }

    /// The state of the feature named `name`, an interned name.
    pub fn get_interned(&self, name: &'static str) -> Option<&FeatureState> {
        self.position(name).map(|index| &self.0[index].1)
    }

    pub fn get_interned_mut(&mut self, name: &'static str) -> Option<&mut FeatureState> {
        let index = self.position(name)?;
        self.0[index].2 = Stored(false);
        Some(&mut self.0[index].1)
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
                self.0.push((name, FeatureState::default(), Stored(false)));
                self.0.len() - 1
            }
        };
        self.0[index].2 = Stored(false);
        &mut self.0[index].1
    }

    pub fn insert(&mut self, name: &'static str, state: FeatureState) {
        *self.entry(name) = state;
    }

    /// [`Self::insert`] under `name` read from elsewhere (a stored state), interned.
    pub fn insert_named(&mut self, name: &str, state: FeatureState) {
        self.insert(intern(name), state);
    }

    /// Takes the state of `name`, an interned name, out.
    pub fn take(&mut self, name: &'static str) -> Option<FeatureState> {
        self.position(name).map(|index| self.0.swap_remove(index).1)
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
        self.0.iter().map(|(name, state, _)| (*name, state))
    }

    /// [`Self::iter`], with whether Redis holds each state as it is, in a part of its own.
    pub fn iter_stored(&self) -> impl Iterator<Item = (&'static str, &FeatureState, Stored)> {
        self.0.iter().map(|(name, state, stored)| (*name, state, *stored))
    }

    /// Records that Redis holds the state of `name` (an interned name), as it is now, in a part
    /// of its own: read from there, or written there and acknowledged.
    pub fn mark_stored(&mut self, name: &'static str) {
        if let Some(index) = self.position(name) {
            self.0[index].2 = Stored(true);
        }
    }

    /// [`Self::mark_stored`] of the state named `name`, by its text; the name as held.
    pub fn mark_stored_named(&mut self, name: &str) -> Option<&'static str> {
        let entry = self.0.iter_mut().find(|(known, ..)| *known == name)?;
        entry.2 = Stored(true);
        Some(entry.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &FeatureState> {
        self.0.iter().map(|(_, state, _)| state)
    }

    /// Every name held is interned, so equal names are the same pointer.
    fn position(&self, name: &'static str) -> Option<usize> {
        self.0.iter().position(|(known, ..)| std::ptr::eq(*known, name))
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
    use super::*;

    fn state(bucket: i64) -> FeatureState {
        let mut state = FeatureState::default();
        state.buckets.add(bucket, "", 1);
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
    fn a_feature_state_is_its_vectors_and_a_word() {
        // An entity holds a couple of dozen: what pruning knows of `last_n` costs a word each, the
        // facts' keys (none for most) another, the buckets' dictionary another.
        assert_eq!(std::mem::size_of::<FeatureState>(), 72);
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
