//! Every state reads back as it was written, in every layout; damaged values are refused.

use proptest::prelude::*;

use super::frames::MAX_STATE_BYTES;
use super::*;

fn position() -> impl Strategy<Value = Position> {
    (any::<i64>(), any::<i64>(), 0u8..3).prop_map(|(a, b, c)| Position(a, b, c))
}

pub(super) fn feature_state() -> impl Strategy<Value = FeatureState> {
    let value = prop_oneof!["", "p[0-9]{1,3}", ".{0,12}"];
    let cell = prop::collection::btree_map(value.clone(), any::<i32>(), 0..4);
    let buckets = prop::collection::btree_map(any::<i64>(), cell, 0..6);
    let fact = (any::<i64>(), value).prop_map(|(at_us, value)| Fact { at_us, value: value.into() });
    let facts = prop::collection::btree_map(
        crate::features::row_key_text().prop_map(RowKey::from),
        fact,
        0..8,
    );
    (buckets, facts).prop_map(|(buckets, facts)| {
        let buckets = buckets
            .iter()
            .flat_map(|(at, cell)| cell.iter().map(|(value, rows)| (*at, value, i64::from(*rows))));
        FeatureState::new(buckets.collect(), facts.into_iter().collect())
    })
}

pub(super) fn entity_state() -> impl Strategy<Value = EntityState> {
    let stream = prop_oneof!["user_activity/[0-3]", "orders/[0-3]", ".{0,10}"];
    let name = prop_oneof!["clicks_1m", "recent_products_viewed", "unique_viewers_1h", ".{1,10}"];
    let mark = (any::<(i64, i64)>(), any::<Option<i64>>())
        .prop_map(|((lsn, tx), through)| RunMark { run: SnapshotRun(lsn, tx), through });
    (
        any::<u64>(),
        prop::collection::btree_map(stream.clone(), position(), 0..3),
        prop::collection::btree_map(
            stream.clone(),
            prop::collection::btree_set(position(), 0..4),
            0..2,
        ),
        prop::collection::btree_map(stream.clone(), mark, 0..2),
        prop::collection::btree_map(stream, position(), 0..2),
        prop::collection::vec((name, feature_state()), 0..5),
    )
        .prop_map(|(rev, applied, replayed, runs, cuts, features)| {
            let mut states = FeatureStates::default();
            for (name, state) in features {
                states.insert_named(&name, state);
            }
            EntityState {
                rev,
                applied,
                replayed,
                runs,
                cuts,
                features: states,
                ..Default::default()
            }
        })
}

proptest! {
    /// Whatever a state holds (extreme times and counts, keys that look like UUIDs but are
    /// not printed as Postgres prints them, texts of any kind), it reads back the same.
    #[test]
    fn every_state_reads_back_as_it_was_written(state in entity_state()) {
        let plain = encode_uncompressed(&state);
        prop_assert_eq!(plain[0], STATE_VERSION);
        prop_assert_eq!(&decode_state(&plain).expect("decodes"), &state);
        let bytes = encode_state(&state);
        let compressed = plain.len() >= COMPRESS_FROM;
        prop_assert_eq!(bytes[0], if compressed { STATE_VERSION_COMPRESSED } else { STATE_VERSION });
        prop_assert_eq!(&decode_state(&bytes).expect("decodes"), &state);
    }

    /// What a rolling upgrade writes for instances not upgraded yet (features in rows,
    /// compressed or not) reads back the same too.
    #[test]
    fn every_state_written_in_rows_reads_back_as_it_was(state in entity_state()) {
        let plain = encode_state_as(&state, StateEncoding::Binary).expect("encodes");
        prop_assert_eq!(plain[0], ROWS_VERSION);
        prop_assert_eq!(&decode_state(&plain).expect("decodes"), &state);
        let bytes = encode_state_as(&state, StateEncoding::Zstd3).expect("encodes");
        let compressed = plain.len() >= COMPRESS_FROM;
        prop_assert_eq!(bytes[0], if compressed { ROWS_VERSION_COMPRESSED } else { ROWS_VERSION });
        prop_assert_eq!(decode_state(&bytes).expect("decodes"), state);
    }

    /// A share written as JSON, before the binary layout, reads as it was.
    #[test]
    fn a_share_written_as_json_still_reads(state in entity_state()) {
        let json = serde_json::to_vec(&state).expect("serializes");
        prop_assert_eq!(decode_state(&json).expect("decodes"), state);
    }

    /// Cut short anywhere, a value is refused, never read as some other state.
    #[test]
    fn a_truncated_value_is_refused(state in entity_state(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_state(&state);
        let cut = 1 + cut.index(bytes.len() - 1);
        prop_assert!(decode_state(&bytes[..cut]).is_err(), "{} of {} bytes", cut, bytes.len());
    }
}

fn viewed(keys: &[&str]) -> EntityState {
    let mut views = FeatureState::default();
    for (at, key) in keys.iter().enumerate() {
        let fact = Fact { at_us: 1_700_000_000_000_000 + at as i64, value: "p1".into() };
        views.facts.insert(RowKey::new(key), fact);
    }
    let mut state = EntityState::default();
    state.features.insert_named("last_viewed_product", views);
    state
}

#[test]
fn a_uuid_key_takes_its_sixteen_bytes_and_other_keys_their_text() {
    let canonical = "0b6a3d1e-8f44-4c3a-9d7e-2f1c5a6b7c8d";
    let one = encode_state(&viewed(&[canonical])).len();
    let two = encode_state(&viewed(&[canonical, "7f3e2d1c-0b9a-4876-a543-210fedcba987"])).len();
    // A key, a time (1 byte: one microsecond after the first) and a value's place.
    assert_eq!(two - one, 1 + 16 + 1 + 1);
    let upper = encode_state(&viewed(&[&canonical.to_uppercase()]));
    assert_eq!(decode_state(&upper).expect("decodes"), viewed(&[&canonical.to_uppercase()]));
    assert!(upper.len() > one + 20, "kept as text, so it reads back as it was");
}

#[test]
fn keyless_facts_take_no_byte_for_their_keys_and_read_back_keyless() {
    let one = encode_state(&viewed(&[""])).len();
    let two = encode_state(&viewed(&["", ""])).len();
    // A time (1 byte) and a value's place.
    assert_eq!(two - one, 1 + 1);
    let rows = |keys: &[&str]| encode_state_as(&viewed(keys), StateEncoding::Binary);
    let [one, two] = [rows(&[""]), rows(&["", ""])].map(|bytes| bytes.expect("encodes").len());
    // In rows, the key's tag as well.
    assert_eq!(two - one, 1 + 1 + 1);
    let read = decode_state(&encode_state(&viewed(&["", ""]))).expect("decodes");
    let facts = &read.features.get("last_viewed_product").expect("kept").facts;
    assert_eq!(facts.len(), 2);
    assert!(!facts.keyed());
}

#[test]
fn a_version_1_value_reads_as_it_did() {
    // As a persona of layout version 1 wrote it: facts in row key order, each dated from the
    // oldest.
    let wire = Wire::<WireFeature> {
        rev: 3,
        texts: vec!["last_viewed_product", "p1", "p2"],
        applied: Vec::new(),
        replayed: Vec::new(),
        runs: Vec::new(),
        cuts: Vec::new(),
        features: vec![WireFeature {
            name: 0,
            buckets: Vec::new(),
            facts_since_us: 1_000,
            facts: vec![(WireKey::Uuid([1; 16]), 500, 1), (WireKey::Uuid([2; 16]), 0, 2)],
        }],
    };
    let bytes = postcard::to_extend(&wire, vec![1]).expect("encodes");
    let mut views = FeatureState::default();
    views.facts.insert(RowKey::from_uuid([2; 16]), Fact { at_us: 1_000, value: "p2".into() });
    views.facts.insert(RowKey::from_uuid([1; 16]), Fact { at_us: 1_500, value: "p1".into() });
    let mut expected = EntityState { rev: 3, ..EntityState::default() };
    expected.features.insert_named("last_viewed_product", views);
    assert_eq!(decode_state(&bytes).expect("decodes"), expected);
}

#[test]
fn a_fact_is_dated_from_the_one_before_it() {
    // Ten facts a day apart: from the oldest, the newest's difference would take 6 bytes.
    let mut views = FeatureState::default();
    for day in 0..10i64 {
        let fact = Fact { at_us: 1_700_000_000_000_000 + day * 86_400_000_000, value: "p1".into() };
        views.facts.insert(RowKey::none().clone(), fact);
    }
    let mut state = EntityState::default();
    state.features.insert_named("last_viewed_product", views);
    let bytes = encode_state(&state);
    assert_eq!(decode_state(&bytes).expect("decodes"), state);
    let wire: Wire<'_, ColumnFeature> = postcard::from_bytes(&bytes[1..]).expect("reads");
    let day = 86_400_000_000;
    assert_eq!(wire.features[0].fact_since, [0, day, day, day, day, day, day, day, day, day]);
}

#[test]
fn texts_repeated_across_buckets_and_facts_are_written_once() {
    let value = "a-category-name-long-enough-to-see";
    let mut histogram = FeatureState::default();
    for bucket in 0..50 {
        histogram.buckets.add(bucket, value, 1);
    }
    let mut state = EntityState::default();
    state.features.insert_named("category_views_1h", histogram);
    let bytes = encode_state(&state);
    let occurrences = bytes.windows(value.len()).filter(|w| *w == value.as_bytes()).count();
    assert_eq!(occurrences, 1);
    assert_eq!(decode_state(&bytes).expect("decodes"), state);
}

/// A state of a few dozen facts: kilobytes, as a user's.
fn large_state() -> EntityState {
    let keys: Vec<String> = (0..200).map(|i| format!("row-{i:04}")).collect();
    viewed(&keys.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn large_values_are_compressed_and_small_ones_are_not() {
    let small = viewed(&["k"]);
    let bytes = encode_state(&small);
    assert_eq!(bytes[0], STATE_VERSION);
    assert_eq!(bytes, encode_uncompressed(&small));

    let large = large_state();
    let plain = encode_uncompressed(&large);
    assert!(plain.len() >= COMPRESS_FROM, "{}", plain.len());
    let bytes = encode_state(&large);
    assert_eq!(bytes[0], STATE_VERSION_COMPRESSED);
    assert!(bytes.len() * 2 < plain.len(), "{} of {}", bytes.len(), plain.len());
    assert_eq!(decode_state(&bytes).expect("decodes"), large);
    // What the frame holds is the uncompressed value, byte for byte.
    assert_eq!(decompress(&bytes[1..]).expect("decompresses"), plain[1..]);
}

#[test]
fn a_damaged_or_overlarge_compressed_value_is_refused() {
    let mut bytes = encode_state(&large_state());
    let cut = bytes.len() / 2;
    assert!(matches!(decode_state(&bytes[..cut]), Err(CodecError::Compressed(_))));
    // A bit flipped inside the frame: its checksum no longer matches what it expands to.
    for at in [cut, bytes.len() - 5] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        assert!(decode_state(&flipped).is_err(), "a flipped bit at {at} went unnoticed");
    }
    bytes[1] ^= 0xff;
    assert!(matches!(decode_state(&bytes), Err(CodecError::Compressed(_))));
    // A frame that declares a content size over the limit, allocating nothing.
    let huge =
        zstd::bulk::compress(&vec![0u8; (MAX_STATE_BYTES + 1) as usize], 1).expect("compresses");
    let mut value = vec![STATE_VERSION_COMPRESSED];
    value.extend_from_slice(&huge);
    let error = decode_state(&value).expect_err("refused");
    assert!(error.to_string().contains("expands to"), "{error}");
}

#[test]
fn a_value_of_an_unknown_layout_is_refused_and_says_why() {
    let mut bytes = encode_state(&viewed(&["k"]));
    bytes[0] = PART_VERSION_COMPRESSED + 1;
    let error = decode_state(&bytes).expect_err("refused");
    assert!(matches!(error, CodecError::UnknownVersion(v) if v == PART_VERSION_COMPRESSED + 1));
    assert!(error.to_string().contains("newer than this persona reads"), "{error}");
    assert!(matches!(decode_state(b""), Err(CodecError::Empty)));
    bytes[0] = PART_VERSION;
    assert!(matches!(decode_state(&bytes), Err(CodecError::Part)));
    assert!(matches!(decode_state(b"{not json"), Err(CodecError::Json(_))));
}

#[test]
fn a_place_outside_the_text_table_is_refused() {
    let wire = Wire::<ColumnFeature> {
        rev: 1,
        texts: vec!["user_activity/0"],
        applied: vec![(3, Position(1, 2, 1))],
        replayed: vec![],
        runs: vec![],
        cuts: vec![],
        features: vec![],
    };
    let mut bytes = vec![STATE_VERSION];
    bytes.extend(postcard::to_allocvec(&wire).expect("serializes"));
    assert!(matches!(decode_state(&bytes), Err(CodecError::MissingText(3))));
}

#[test]
fn columns_of_unequal_length_are_refused() {
    let wire = |feature: ColumnFeature| {
        let wire = Wire {
            rev: 1,
            texts: vec!["clicks_1m", ""],
            applied: vec![],
            replayed: vec![],
            runs: vec![],
            cuts: vec![],
            features: vec![feature],
        };
        decode_state(&postcard::to_extend(&wire, vec![STATE_VERSION]).expect("serializes"))
    };
    let buckets = ColumnFeature {
        bucket_deltas: vec![10, 1],
        bucket_widths: vec![1, 1],
        values: vec![1, 1],
        rows: vec![1, 2],
        ..ColumnFeature::default()
    };
    let read = wire(buckets.clone()).expect("reads");
    let counts = &read.features.get("clicks_1m").expect("kept").buckets;
    assert_eq!([counts.rows(10, ""), counts.rows(11, "")], [Some(1), Some(2)]);
    let uneven = [
        ColumnFeature { bucket_widths: vec![1, 2], ..buckets.clone() },
        ColumnFeature { rows: vec![1], ..buckets.clone() },
        ColumnFeature { bucket_deltas: vec![10], ..buckets.clone() },
        ColumnFeature { fact_since: vec![0, 1], fact_values: vec![1], ..ColumnFeature::default() },
        ColumnFeature {
            fact_since: vec![0, 1],
            fact_values: vec![1, 1],
            fact_keys: vec![WireKey::None],
            ..ColumnFeature::default()
        },
    ];
    for feature in uneven {
        assert!(matches!(wire(feature), Err(CodecError::Columns(_))));
    }
}

#[test]
fn a_count_over_many_buckets_takes_less_room_in_columns_than_in_rows() {
    // A view every few seconds for an hour, one or two a bucket, as a user's counts hold them.
    let mut views = FeatureState::default();
    let mut bucket = 1_795_319_478;
    for i in 0..400i64 {
        bucket += 1 + (i * 7919) % 23;
        views.buckets.add(bucket, "", 1 + i % 2);
    }
    let mut state = EntityState::default();
    state.features.insert_named("views_1m+views_5m+views_15m", views);
    let columns = encode_state(&state);
    let rows = encode_state_as(&state, StateEncoding::Zstd3).expect("encodes");
    assert_eq!((columns[0], rows[0]), (STATE_VERSION_COMPRESSED, ROWS_VERSION_COMPRESSED));
    assert!(columns.len() < rows.len(), "{} in columns, {} in rows", columns.len(), rows.len());
    assert_eq!(decode_state(&columns).expect("decodes"), decode_state(&rows).expect("decodes"));
}
