//! A share written as a head and parts reads back as it was, however it changed since it was
//! read; only the parts a change fed are written again.

use std::collections::HashMap;

use proptest::prelude::*;

use super::super::tests::{entity_state, feature_state};
use super::*;
use crate::features::{FeatureStates, intern};
use crate::store::codec::{decode_share, encode_state};

const STREAM: &str = "user_activity/1";

/// One entity's hash, as the write scripts leave it.
#[derive(Default)]
struct Hash(HashMap<String, Vec<u8>>);

impl Hash {
    fn write(&mut self, share: EncodedShare) {
        self.0.insert(STREAM.to_string(), share.head);
        for (name, value) in share.parts {
            self.0.insert(part_field(STREAM, name), value);
        }
        for name in share.dropped {
            self.0.remove(&part_field(STREAM, name));
        }
    }

    fn read(&self) -> Result<EntityState, CodecError> {
        decode_share(&self.0[STREAM], |name| {
            self.0.get(&part_field(STREAM, name)).map(Vec::as_slice)
        })
    }
}

/// A feature of `items` buckets' values, one value per bucket: a part when `items` is
/// [`PART_FROM_ITEMS`] or more.
fn counts(items: i64) -> FeatureState {
    FeatureState::new((0..items).map(|bucket| (bucket, "", 1)).collect(), Default::default())
}

fn share(features: &[(&str, i64)]) -> EntityState {
    let mut state = EntityState { rev: 1, ..EntityState::default() };
    for (name, items) in features {
        state.features.insert(intern(name), counts(*items));
    }
    state
}

fn written(hash: &mut Hash, state: &mut EntityState) -> Vec<&'static str> {
    let share = encode_share(state);
    let parts = share.parts.iter().map(|(name, _)| *name).collect();
    hash.write(share);
    note_written(state);
    parts
}

#[test]
fn large_features_are_parts_and_small_ones_ride_in_the_head() {
    let big = PART_FROM_ITEMS as i64;
    let mut state = share(&[("views", big), ("clicks", 3), ("viewers", 5 * big)]);
    let mut hash = Hash::default();
    let mut parts = written(&mut hash, &mut state);
    parts.sort_unstable();
    assert_eq!(parts, ["viewers", "views"]);
    assert!(is_head(&hash.0[STREAM]));
    assert_eq!(hash.0.len(), 3);
    let read = hash.read().expect("reads");
    assert_eq!(read, state);
    let stored: Vec<_> =
        read.features.iter_stored().filter(|(.., s)| s.0).map(|(n, ..)| n).collect();
    assert_eq!(stored.len(), 2);
    assert!(!stored.contains(&"clicks"));
}

#[test]
fn a_change_writes_the_head_and_the_parts_it_fed_only() {
    let big = PART_FROM_ITEMS as i64;
    let mut hash = Hash::default();
    written(&mut hash, &mut share(&[("views", big), ("viewers", 5 * big), ("clicks", 3)]));
    let mut state = hash.read().expect("reads");
    let viewers_before = hash.0[&part_field(STREAM, "viewers")].clone();
    state.rev += 1;
    state.features.entry(intern("views")).buckets.add(big + 1, "", 1);
    state.features.entry(intern("clicks")).buckets.add(9, "", 1);
    let share_written = encode_share(&state);
    assert!(share_written.keeps_parts);
    let parts: Vec<_> = share_written.parts.iter().map(|(name, _)| *name).collect();
    assert_eq!(parts, ["views"]);
    hash.write(share_written);
    note_written(&mut state);
    assert_eq!(hash.0[&part_field(STREAM, "viewers")], viewers_before);
    assert_eq!(hash.read().expect("reads"), state);
    // Written and acknowledged: nothing is written again but the head.
    assert!(encode_share(&state).parts.is_empty());
}

#[test]
fn a_part_the_share_no_longer_holds_is_removed() {
    let big = PART_FROM_ITEMS as i64;
    let mut hash = Hash::default();
    written(&mut hash, &mut share(&[("views", big), ("viewers", 2 * big)]));
    let mut state = hash.read().expect("reads");
    state.features.remove(intern("viewers"));
    // Shrunk below the bound: it rides in the head now.
    state.features.insert(intern("views"), counts(2));
    let share_written = encode_share(&state);
    let mut dropped = share_written.dropped.clone();
    dropped.sort_unstable();
    assert_eq!(dropped, ["viewers", "views"]);
    hash.write(share_written);
    note_written(&mut state);
    assert_eq!(hash.0.len(), 1, "the head alone");
    assert_eq!(hash.read().expect("reads"), state);
}

#[test]
fn a_head_whose_part_is_missing_is_refused() {
    let mut hash = Hash::default();
    written(&mut hash, &mut share(&[("views", PART_FROM_ITEMS as i64)]));
    hash.0.remove(&part_field(STREAM, "views"));
    assert!(matches!(hash.read(), Err(CodecError::MissingPart(name)) if name == "views"));
    // A part holding another feature than its head names is refused too.
    let mut other = Hash::default();
    written(&mut other, &mut share(&[("clicks", PART_FROM_ITEMS as i64)]));
    let clicks = other.0.remove(&part_field(STREAM, "clicks")).expect("written");
    hash.0.insert(part_field(STREAM, "views"), clicks);
    assert!(matches!(hash.read(), Err(CodecError::PartName)));
}

#[test]
fn a_share_of_an_earlier_layout_is_written_whole_as_head_and_parts() {
    let big = PART_FROM_ITEMS as i64;
    let state = share(&[("views", big), ("clicks", 3)]);
    let mut read = decode_share(&encode_state(&state), |_| None).expect("reads");
    read.features.entry(intern("clicks"));
    let share_written = encode_share(&read);
    assert_eq!(share_written.parts.len(), 1, "every part, though no change fed it");
    assert!(!share_written.keeps_parts);
}

/// What a change may do to a share's features.
#[derive(Debug, Clone)]
enum Change {
    /// Replaces (or adds) the state of the feature of that name.
    Set(&'static str, FeatureState),
    Remove(&'static str),
    /// Adds rows to a bucket of the feature of that name, as ingest does.
    Add(&'static str, i64, &'static str, i64),
    /// Drops the feature's buckets before that one, as time does.
    DropBefore(&'static str, i64),
    /// The share is read back from Redis, as an owner that did not keep it does.
    Reload,
}

fn change() -> impl Strategy<Value = Change> {
    let name = prop_oneof![Just("views"), Just("viewers"), Just("clicks"), Just("session")];
    let big = (0i64..3 * PART_FROM_ITEMS as i64).prop_map(counts);
    let bucket = 0i64..4 * PART_FROM_ITEMS as i64;
    let value = prop_oneof![Just(""), Just("a"), Just("b")];
    prop_oneof![
        (name.clone(), prop_oneof![feature_state(), big]).prop_map(|(n, f)| Change::Set(n, f)),
        name.clone().prop_map(Change::Remove),
        (name.clone(), bucket.clone(), value, -1i64..3)
            .prop_map(|(n, b, v, d)| Change::Add(n, b, v, d)),
        (name, bucket).prop_map(|(n, b)| Change::DropBefore(n, b)),
        Just(Change::Reload),
    ]
}

proptest! {
    /// Through any changes, each written as its head and the parts it fed, the stored share
    /// reads back as the state written, and the parts left alone are the ones unchanged.
    #[test]
    fn a_share_reads_back_as_written_through_any_changes(
        start in entity_state(),
        changes in prop::collection::vec(change(), 1..12),
    ) {
        let mut hash = Hash::default();
        let mut state = start;
        written(&mut hash, &mut state);
        prop_assert_eq!(&hash.read().expect("reads"), &state);
        for change in changes {
            match change {
                Change::Set(name, feature) => state.features.insert(intern(name), feature),
                Change::Remove(name) => state.features.remove(intern(name)),
                Change::Add(name, bucket, value, delta) => {
                    let feature = state.features.entry(intern(name));
                    feature.buckets.add(bucket, value, delta);
                    if feature.buckets.is_empty() && feature.facts.is_empty() {
                        state.features.remove(intern(name));
                    }
                }
                Change::DropBefore(name, bucket) => {
                    let feature = state.features.entry(intern(name));
                    feature.buckets.drop_before(bucket);
                    if feature.buckets.is_empty() && feature.facts.is_empty() {
                        state.features.remove(intern(name));
                    }
                }
                Change::Reload => state = hash.read().expect("reads"),
            }
            state.rev += 1;
            written(&mut hash, &mut state);
            prop_assert_eq!(&hash.read().expect("reads"), &state);
            let listed: usize = state.stored_parts.0.len();
            prop_assert_eq!(hash.0.len(), 1 + listed, "the head and its parts, nothing left over");
        }
    }
}

#[test]
fn feature_states_say_stored_until_a_change_reaches_them() {
    let mut states = FeatureStates::default();
    states.insert(intern("views"), counts(1));
    states.mark_stored(intern("views"));
    assert!(states.iter_stored().all(|(.., stored)| stored.0));
    let _ = states.get_interned("views");
    assert!(states.iter_stored().all(|(.., stored)| stored.0), "a read changes nothing");
    let _ = states.get_interned_mut(intern("views"));
    assert!(states.iter_stored().all(|(.., stored)| !stored.0));
}
