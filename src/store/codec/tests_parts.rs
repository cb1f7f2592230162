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
            self.0.insert(part_field(STREAM, &name), value);
        }
        for name in share.dropped {
            self.0.remove(&part_field(STREAM, &name));
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

/// The parts written, by the end of their field.
fn written(hash: &mut Hash, state: &mut EntityState) -> Vec<String> {
    let share = encode_share(state);
    let parts = share.parts.iter().map(|(name, _)| name.clone()).collect();
    hash.write(share);
    note_written(state);
    parts
}

/// The features of `parts` (fields' ends), each once, in order.
fn features_of(parts: &[String]) -> Vec<&str> {
    let mut features: Vec<&str> =
        parts.iter().map(|part| part.split('#').next().unwrap_or_default()).collect();
    features.sort_unstable();
    features.dedup();
    features
}

/// The pieces a feature of `buckets` buckets, from 0, is written in.
fn pieces(buckets: i64) -> usize {
    (buckets as usize).div_ceil(PIECE_BUCKETS as usize)
}

#[test]
fn large_features_are_parts_and_small_ones_ride_in_the_head() {
    let big = PART_FROM_ITEMS as i64;
    let mut state = share(&[("views", big), ("clicks", 3), ("viewers", 5 * big)]);
    let mut hash = Hash::default();
    let parts = written(&mut hash, &mut state);
    assert_eq!(features_of(&parts), ["viewers", "views"]);
    assert_eq!(parts.len(), pieces(big) + pieces(5 * big), "features of buckets, in pieces");
    assert!(parts.contains(&"views#0".to_string()));
    assert!(is_head(&hash.0[STREAM]));
    assert!(matches!(hash.0[STREAM][0], PIECES_HEAD_VERSION | PIECES_HEAD_VERSION_COMPRESSED));
    assert_eq!(hash.0.len(), 1 + parts.len());
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
    let before = hash.0.clone();
    state.rev += 1;
    // A bucket past the last piece, and one in the first.
    state.features.entry(intern("views")).buckets.add(big + 1, "", 1);
    state.features.entry(intern("views")).buckets.add(3, "", 1);
    state.features.entry(intern("clicks")).buckets.add(9, "", 1);
    let share_written = encode_share(&state);
    assert!(share_written.keeps_parts);
    let mut parts: Vec<_> = share_written.parts.iter().map(|(name, _)| name.clone()).collect();
    parts.sort_unstable();
    let last = (big + 1) / i64::from(PIECE_BUCKETS);
    assert_eq!(parts, ["views#0".to_string(), format!("views#{last}")]);
    hash.write(share_written);
    note_written(&mut state);
    for (field, value) in &before {
        if field != STREAM && field != &part_field(STREAM, "views#0") {
            assert_eq!(&hash.0[field], value, "{field} is left alone");
        }
    }
    assert_eq!(hash.read().expect("reads"), state);
    // Written and acknowledged: nothing is written again but the head.
    assert!(encode_share(&state).parts.is_empty());
    // A piece changed and changed back is not written: it is as Redis holds it.
    state.features.entry(intern("viewers")).buckets.add(5, "x", 1);
    state.features.entry(intern("viewers")).buckets.add(5, "x", -1);
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
    assert_eq!(share_written.dropped.len(), pieces(big) + pieces(2 * big));
    assert_eq!(features_of(&share_written.dropped), ["viewers", "views"]);
    hash.write(share_written);
    note_written(&mut state);
    assert_eq!(hash.0.len(), 1, "the head alone");
    assert_eq!(hash.read().expect("reads"), state);
}

#[test]
fn a_head_whose_part_is_missing_is_refused() {
    let mut hash = Hash::default();
    written(&mut hash, &mut share(&[("views", PART_FROM_ITEMS as i64)]));
    let first = hash.0.remove(&part_field(STREAM, "views#0")).expect("written");
    assert!(matches!(hash.read(), Err(CodecError::MissingPart(name)) if name == "views#0"));
    // A part holding another feature than its head names is refused too.
    let mut other = Hash::default();
    written(&mut other, &mut share(&[("clicks", PART_FROM_ITEMS as i64)]));
    let clicks = other.0.remove(&part_field(STREAM, "clicks#0")).expect("written");
    hash.0.insert(part_field(STREAM, "views#0"), clicks);
    assert!(matches!(hash.read(), Err(CodecError::PartName)));
    // And a piece holding another piece's buckets.
    let second = hash.0[&part_field(STREAM, "views#1")].clone();
    hash.0.insert(part_field(STREAM, "views#0"), second);
    assert!(matches!(hash.read(), Err(CodecError::Piece(name)) if name == "views"));
    hash.0.insert(part_field(STREAM, "views#0"), first);
    assert!(hash.read().is_ok());
}

#[test]
fn a_share_of_an_earlier_layout_is_written_whole_as_head_and_parts() {
    let big = PART_FROM_ITEMS as i64;
    let state = share(&[("views", big), ("clicks", 3)]);
    let mut read = decode_share(&encode_state(&state), |_| None).expect("reads");
    read.features.entry(intern("clicks"));
    let share_written = encode_share(&read);
    let parts: Vec<_> = share_written.parts.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(parts.len(), pieces(big), "every piece, though no change fed it");
    assert_eq!(features_of(&parts), ["views"]);
    assert!(!share_written.keeps_parts);
}

#[test]
fn a_feature_in_one_part_of_layout_6_is_written_again_in_pieces() {
    let big = PART_FROM_ITEMS as i64;
    let state = share(&[("views", big), ("clicks", 3)]);
    // As persona wrote it before pieces: a head of version 6 (7) and one part per feature.
    let mut texts = Texts::default();
    let envelope = Envelope::of(&state, &mut texts);
    let clicks = state.features.get("clicks").expect("held");
    let inline = vec![encode_columns(&mut texts, "clicks", clicks)];
    let parts = vec![texts.place("views")];
    let head = Head { wire: envelope.wire(texts, inline), parts };
    let mut hash = Hash::default();
    hash.0.insert(STREAM.to_string(), encoded(HEAD_VERSION, HEAD_VERSION_COMPRESSED, &head));
    let views = state.features.get("views").expect("held");
    hash.0.insert(part_field(STREAM, "views"), encode_part("views", views));
    let mut read = hash.read().expect("reads");
    assert_eq!(read, state);
    read.rev += 1;
    let share_written = encode_share(&read);
    assert_eq!(share_written.dropped, ["views"]);
    assert_eq!(share_written.parts.len(), pieces(big));
    hash.write(share_written);
    note_written(&mut read);
    assert!(!hash.0.contains_key(&part_field(STREAM, "views")));
    assert_eq!(hash.0.len(), 1 + pieces(big));
    assert_eq!(hash.read().expect("reads"), read);
}

#[test]
fn a_share_with_no_feature_in_pieces_keeps_the_head_earlier_persona_reads() {
    let mut state = share(&[("clicks", 3)]);
    let mut hash = Hash::default();
    written(&mut hash, &mut state);
    assert_eq!(hash.0[STREAM][0], HEAD_VERSION);
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
            let listed: usize = state
                .stored_parts
                .0
                .iter()
                .map(|part| part.pieces.as_ref().map_or(1, Vec::len))
                .sum();
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
