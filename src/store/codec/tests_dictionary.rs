//! Shares compressed with a dictionary trained on other shares read back as they were, name the
//! dictionary they need, and are smaller than without it; facts' times are written in the unit
//! they have in common.

use std::collections::HashMap;

use proptest::prelude::*;

use super::super::decompress;
use super::super::tests::entity_state;
use crate::features::{EntityState, Fact, FeatureState, RowKey, intern};
use crate::store::codec::*;

const STREAM: &str = "user_activity/1";

/// A user's share much as the simulator leaves one: views counted in buckets, the products
/// viewed as facts, and (for every fifth user) a feature large enough to be a part.
fn user(seed: u64) -> EntityState {
    let mut state = EntityState { rev: seed, ..EntityState::default() };
    state.applied.insert(STREAM.to_string(), crate::features::Position(1_000 + seed as i64, 0, 0));
    let start = 1_795_316_793_698_261 + seed as i64 * 7_919;
    let product = |n: u64| format!("sim-p{:04}", (n * 2_654_435_761 + seed * 97) % 200);
    let views: Vec<(i64, String, i64)> = (0..40u64)
        .map(|n| (start / 1_000_000 + n as i64 * 13, product(n), 1 + (n % 3) as i64))
        .collect();
    state.features.insert(
        intern("category_views_1h+category_views_10m"),
        FeatureState::new(
            views.iter().map(|(at, value, rows)| (*at, value.as_str(), *rows)).collect(),
            Default::default(),
        ),
    );
    // Stamped to the microsecond, from one to twenty seconds apart.
    let mut at_us = start;
    let facts = (0..60u64).map(|n| {
        let random = (n + 1).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(seed) >> 33;
        at_us += 1_000_000 + (random % 19_000_000) as i64;
        (RowKey::none().clone(), Fact { at_us, value: product(n).into() })
    });
    state.features.insert(
        intern("recent_products_viewed"),
        FeatureState::new(Default::default(), facts.collect()),
    );
    if seed.is_multiple_of(5) {
        let viewers = (0..400).map(|n| (start / 1_000_000 + n, "", 1 + (n % 2))).collect();
        state.features.insert(
            intern("views_1m+views_5m+views_15m"),
            FeatureState::new(viewers, Default::default()),
        );
    }
    state
}

fn trained() -> Dictionary {
    let samples: Vec<Vec<u8>> = (0..300).flat_map(|seed| share_samples(&user(seed))).collect();
    Dictionary::train(&samples).expect("zstd trains on 300 shares")
}

/// `share` as the write scripts leave it in an entity's hash.
fn hash(share: EncodedShare) -> HashMap<String, Vec<u8>> {
    let mut hash = HashMap::from([(STREAM.to_string(), share.head)]);
    for (name, value) in share.parts {
        hash.insert(part_field(STREAM, name), value);
    }
    hash
}

/// [`read`] on a thread of its own, which has decoded with no dictionary yet: a thread keeps a
/// context for each dictionary it met, which would read a value whatever `known` says.
fn read_on_a_new_thread(
    hash: &HashMap<String, Vec<u8>>,
    known: impl Fn(u32) -> Option<Dictionary> + Send,
) -> Result<EntityState, CodecError> {
    std::thread::scope(|scope| scope.spawn(move || read(hash, &known)).join().expect("no panic"))
}

fn read(
    hash: &HashMap<String, Vec<u8>>,
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Result<EntityState, CodecError> {
    let part = |name: &str| hash.get(&part_field(STREAM, name)).map(Vec::as_slice);
    decode_share_with(&hash[STREAM], part, known)
}

#[test]
fn a_share_compressed_with_a_dictionary_reads_back_with_it_and_names_it() {
    let dictionary = trained();
    let state = user(1_000);
    let written = hash(encode_share_with(&state, Some(&dictionary)));
    assert_eq!(written.len(), 2, "a head and a part");
    for value in written.values() {
        assert_eq!(dictionary_of(value), Some(dictionary.id()));
    }
    assert_eq!(written[STREAM][0], UNIT_HEAD_VERSION_DICTIONARY);
    let known = |id| (id == dictionary.id()).then(|| dictionary.clone());
    assert_eq!(read(&written, &known).expect("reads"), state);
    match read_on_a_new_thread(&written, |_| None) {
        Err(CodecError::UnknownDictionary(id)) => assert_eq!(id, dictionary.id()),
        other => panic!("read without its dictionary: {other:?}"),
    }
    // A share without a dictionary names none.
    let plain = hash(encode_share(&state));
    assert!(plain.values().all(|value| dictionary_of(value).is_none()));
}

#[test]
fn shares_written_with_a_dictionary_before_times_had_a_unit_still_read_back() {
    let dictionary = trained();
    let state = user(1_010);
    let share = super::super::parts::encode_share_in_microseconds(&state, &dictionary);
    assert_eq!(share.head[0], HEAD_VERSION_DICTIONARY);
    assert_eq!(share.parts[0].1[0], PART_VERSION_DICTIONARY);
    let written = hash(share);
    let known = |id| (id == dictionary.id()).then(|| dictionary.clone());
    assert_eq!(read(&written, &known).expect("reads"), state);
}

#[test]
fn a_head_reads_the_parts_an_earlier_layout_wrote_and_no_change_reached_since() {
    let mut state = user(1_015);
    let mut written = hash(encode_share(&state));
    assert_eq!(
        written[&part_field(STREAM, "views_1m+views_5m+views_15m")][0],
        PART_VERSION_COMPRESSED
    );
    note_written(&mut state);
    // A change that reaches the head's features only.
    state.rev += 1;
    state.features.remove(intern("recent_products_viewed"));
    let share = encode_share_with(&state, None);
    assert!(share.parts.is_empty() && share.keeps_parts);
    written.insert(STREAM.to_string(), share.head);
    assert_eq!(written[STREAM][0], UNIT_HEAD_VERSION_COMPRESSED);
    assert_eq!(read(&written, &|_| None).expect("reads"), state);
}

#[test]
fn a_part_whose_dictionary_is_unknown_is_refused_even_when_the_head_is_known() {
    let dictionary = trained();
    let state = user(1_005);
    let mut written = hash(encode_share_with(&state, Some(&dictionary)));
    // The head re-written without the dictionary: only its part still needs it.
    written.insert(STREAM.to_string(), encode_share(&state).head);
    assert!(matches!(
        read_on_a_new_thread(&written, |_| None),
        Err(CodecError::UnknownDictionary(_))
    ));
}

#[test]
fn shares_are_smaller_with_a_dictionary_trained_on_others() {
    let dictionary = trained();
    let stored = |share: EncodedShare| {
        share.head.len() + share.parts.iter().map(|(_, part)| part.len()).sum::<usize>()
    };
    let (mut with, mut without) = (0, 0);
    // Users the dictionary was not trained on.
    for seed in 500..600 {
        let state = user(seed);
        with += stored(encode_share_with(&state, Some(&dictionary)));
        without += stored(encode_share(&state));
    }
    assert!(with * 10 < without * 9, "with a dictionary {with} bytes, without {without}");
}

#[test]
fn samples_hold_every_part_even_those_stored_unchanged() {
    let mut state = user(10);
    let before = share_samples(&state);
    note_written(&mut state);
    assert!(encode_share(&state).parts.is_empty(), "nothing changed since written");
    let after = share_samples(&state);
    assert_eq!(after.len(), 2);
    assert_eq!(after, before);
    // Uncompressed, without the version byte: the head as written without a dictionary.
    let head = encode_share_with(&state, None).head;
    assert_eq!(head[0], UNIT_HEAD_VERSION_COMPRESSED);
    assert_eq!(decompress(&head[1..]).expect("a frame"), after[0]);
}

#[test]
fn bytes_that_are_not_a_dictionary_are_refused() {
    assert!(matches!(Dictionary::from_bytes(b"not a dictionary"), Err(CodecError::NotADictionary)));
    assert!(matches!(Dictionary::train(&[b"too few".to_vec()]), Err(CodecError::Training(_))));
    let dictionary = trained();
    let again = Dictionary::from_bytes(dictionary.bytes()).expect("a dictionary");
    assert_eq!(again.id(), dictionary.id());
}

/// `state` with its facts' times moved to whole milliseconds.
fn to_the_millisecond(state: &EntityState) -> EntityState {
    let mut moved =
        EntityState { rev: state.rev, applied: state.applied.clone(), ..EntityState::default() };
    for (name, feature) in state.features.iter() {
        let facts = feature.facts.iter().map(|(key, fact)| {
            let at_us = fact.at_us - fact.at_us.rem_euclid(1_000);
            (key.clone(), Fact { at_us, value: fact.value.clone() })
        });
        moved
            .features
            .insert_named(name, FeatureState::new(feature.buckets.clone(), facts.collect()));
    }
    moved
}

#[test]
fn facts_stamped_to_the_millisecond_are_written_in_milliseconds() {
    let stored = |share: EncodedShare| {
        share.head.len() + share.parts.iter().map(|(_, part)| part.len()).sum::<usize>()
    };
    let (mut in_units, mut in_microseconds, mut before) = (0, 0, 0);
    for seed in 0..50 {
        let state = to_the_millisecond(&user(seed));
        let written = hash(encode_share_with(&state, None));
        assert_eq!(read(&written, &|_| None).expect("reads"), state);
        in_units += stored(encode_share_with(&state, None));
        in_microseconds += stored(encode_share(&state));
        before += stored(encode_share_with(&user(seed), None));
    }
    // 60 facts a user, each time two bytes shorter before compression.
    assert!(in_units + 50 * 40 < in_microseconds, "{in_units} bytes against {in_microseconds}");
    // Times to the microsecond have no common unit: written as they were.
    assert!(before > in_units, "{before} bytes to the microsecond, {in_units} to the millisecond");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any share, however unlike those trained on, reads back as it was, with the dictionary
    /// or without, its facts' times in whatever unit they have in common.
    #[test]
    fn any_share_reads_back_through_a_dictionary(state in entity_state(), unit in 0..4u32) {
        let state = match unit {
            0 => to_the_millisecond(&state),
            _ => state,
        };
        let dictionary = DICTIONARY.with(Clone::clone);
        let known = |id| (id == dictionary.id()).then(|| dictionary.clone());
        let written = hash(encode_share_with(&state, Some(&dictionary)));
        prop_assert_eq!(read(&written, &known).expect("reads"), state.clone());
        let written = hash(encode_share_with(&state, None));
        prop_assert_eq!(read(&written, &|_| None).expect("reads"), state);
    }
}

thread_local! {
    static DICTIONARY: Dictionary = trained();
}
