//! Shares compressed with a dictionary trained on other shares read back as they were, name the
//! dictionary they need, and are smaller than without it.

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
    let facts = (0..60u64).map(|n| {
        let fact =
            Fact { at_us: start + (n * 9_876_543 % 600_000_000) as i64, value: product(n).into() };
        (RowKey::none().clone(), fact)
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
    assert_eq!(written[STREAM][0], HEAD_VERSION_DICTIONARY);
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
    // Uncompressed, without the version byte: the head as `encode_share` would write it plain.
    let head = encode_share(&state).head;
    assert_eq!(head[0], HEAD_VERSION_COMPRESSED);
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any share, however unlike those trained on, reads back as it was.
    #[test]
    fn any_share_reads_back_through_a_dictionary(state in entity_state()) {
        let dictionary = DICTIONARY.with(Clone::clone);
        let written = hash(encode_share_with(&state, Some(&dictionary)));
        let known = |id| (id == dictionary.id()).then(|| dictionary.clone());
        prop_assert_eq!(read(&written, &known).expect("reads"), state);
    }
}

thread_local! {
    static DICTIONARY: Dictionary = trained();
}
