//! How a share ([`EntityState`]) is laid out as a Redis value: a version byte, then the state in
//! postcard (varints, no field names).
//!
//! Every text the state holds (stream and feature names, stored values, row keys) is written
//! once, in a table, and referred to by its place in it: a user's state names the same products
//! and categories in many buckets and facts. Row keys that are UUIDs in their canonical text (as
//! Postgres prints `uuid` columns) take their 16 bytes instead, and time buckets and fact times
//! are written as differences, which are small: a fact's from the fact before it (layout version
//! 2; from the state's oldest in version 1). A fact kept without its row key (see
//! [`crate::features::Facts`]) takes one byte for it (version 2), and none when no fact of its
//! feature has one (version 4). JSON spent most of a state's bytes on repeating those (see
//! BENCHMARKS.md, "State per entity").
//!
//! Each feature's buckets and facts are written field by field (layout version 4): the bucket
//! differences, then how many values each bucket holds, the values, their rows; the facts'
//! times, their values, their keys. Versions 1 and 2 wrote them bucket by bucket and fact by
//! fact, which interleaved numbers of every kind.
//!
//! Values of [`COMPRESS_FROM`] bytes and more are then compressed (the version byte, then one
//! zstd frame of the uncompressed value: layout version 5 holds a version-4 value, version 3 a
//! version-2 one): what is left repeats itself (a column of the same few numbers, varints of
//! similar times, the same few feature names in every state), and zstd's fastest level halves a
//! user's state for some 20 µs of CPU (BENCHMARKS.md, "Compressed states"). The frame carries a
//! checksum of what it holds.
//!
//! By default a share is not one value but a head and parts (layouts 6 to 9, see `parts.rs`): its
//! large features each in a value of their own, written only when a change fed them; each
//! compressed with a dictionary trained on the deployment's shares once there is one (see
//! `dictionary.rs`), and its facts' times written in their largest common unit (layouts 14 to 19,
//! see `columns.rs`).
//!
//! Every earlier layout is still read, and a share is written back in the current one the next
//! time a change reaches it. During a rolling upgrade the earlier layouts can still be written
//! (`redis.state_encoding`: `zstd` for version 5, `zstd3` for version 3, `binary` for version 2,
//! `json` for instances older than the binary layout), so that instances not upgraded yet read
//! what the upgraded ones write. A value of any other version is refused, never guessed at: it was written by a newer
//! persona, and ingest sets it aside (see `write::quarantine`) rather than build on it.

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;
use serde::{Deserialize, Serialize};

use self::columns::{ColumnFeature, encode_columns};
pub use self::dictionary::{
    Dictionary, HEAD_VERSION_DICTIONARY, PART_VERSION_DICTIONARY, dictionary_of,
};
use self::frames::{compress, decompress};
pub use self::parts::{
    EncodedShare, HEAD_VERSION, HEAD_VERSION_COMPRESSED, PART_INFIX, PART_VERSION,
    PART_VERSION_COMPRESSED, UNIT_HEAD_VERSION, UNIT_HEAD_VERSION_COMPRESSED,
    UNIT_HEAD_VERSION_DICTIONARY, UNIT_PART_VERSION, UNIT_PART_VERSION_COMPRESSED,
    UNIT_PART_VERSION_DICTIONARY, encode_share, encode_share_with, is_head, note_written,
    part_field, share_samples,
};
use self::rows::{WireFeature, encode_feature};
use crate::config::StateEncoding;
use crate::features::{
    Buckets, EntityState, Fact, FeatureState, FeatureStates, KeyForm, Position, RowKey, RunMark,
    SnapshotRun,
};

/// The layout written; bump it (and keep reading the older ones) whenever the wire form changes.
/// Version 4 writes each field of a feature's buckets and facts as a column of its own
/// ([`ColumnFeature`]); version 2 added keyless facts ([`WireKey::None`]) and dates each fact
/// from the one before it; versions 1 to 3 are still read.
pub const STATE_VERSION: u8 = 4;

/// The layout of a compressed value: [`STATE_VERSION`]'s, in one zstd frame.
pub const STATE_VERSION_COMPRESSED: u8 = 5;

/// The layout of a feature as a row of buckets and facts (versions 1 and 2), and its
/// compressed form: still written while instances that read no later layout run.
const ROWS_VERSION: u8 = 2;
const ROWS_VERSION_COMPRESSED: u8 = 3;

/// The smallest value compressed: below it zstd's frame and tables take about what they save.
pub const COMPRESS_FROM: usize = 512;

thread_local! {
    // The uncompressed value, built here and kept between states: a state is kilobytes, and a
    // fresh vector reallocated its way up to that for every state written (under live load
    // encoding is most of persona's CPU: BENCHMARKS.md, "Where persona's time and CPU go under
    // load").
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A stored value persona cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty state value")]
    Empty,
    #[error(
        "state written in layout version {0}, newer than this persona reads ({UNIT_PART_VERSION_DICTIONARY})"
    )]
    UnknownVersion(u8),
    #[error("malformed state: its head lists the part {0}, which is not stored")]
    MissingPart(String),
    #[error("malformed state: a part holds a feature other than the one its head names")]
    PartName,
    #[error("malformed state: a feature's part where a share's head belongs")]
    Part,
    #[error("malformed state: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("malformed state: text {0} is not in the state's table")]
    MissingText(u32),
    #[error("malformed JSON state: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed compressed state: {0}")]
    Compressed(String),
    #[error("malformed state: the columns of a feature's {0} differ in length")]
    Columns(&'static str),
    #[error("state compressed with dictionary {0}, which this persona has not read yet")]
    UnknownDictionary(u32),
    #[error("not a zstd dictionary")]
    NotADictionary,
    #[error("no dictionary could be trained: {0}")]
    Training(String),
}

/// A fact's row key: a UUID's bytes, a text of the table, or none (a keyless fact, one byte).
#[derive(Clone, Serialize, Deserialize)]
enum WireKey {
    Uuid([u8; 16]),
    Text(u32),
    None,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a, F> {
    rev: u64,
    #[serde(borrow)]
    texts: Vec<&'a str>,
    applied: Vec<(u32, Position)>,
    replayed: Vec<(u32, Vec<Position>)>,
    runs: Vec<(u32, SnapshotRun, Option<i64>)>,
    cuts: Vec<(u32, Position)>,
    features: Vec<F>,
}

/// Texts of one state, each given its place in the table once.
#[derive(Default)]
struct Texts<'a> {
    table: Vec<&'a str>,
    places: HashMap<&'a str, u32, FixedState>,
}

impl<'a> Texts<'a> {
    /// A table with room for every text of `features` and `streams` more, so that it never
    /// grows while a state is encoded.
    fn for_features<'f>(streams: usize, features: impl Iterator<Item = &'f FeatureState>) -> Self {
        let room = streams
            + features
                .map(|feature| 1 + feature.buckets.dictionary_len() + feature.facts.len())
                .sum::<usize>();
        Self {
            table: Vec::with_capacity(room),
            places: HashMap::with_capacity_and_hasher(room, FixedState::default()),
        }
    }

    fn place(&mut self, text: &'a str) -> u32 {
        *self.places.entry(text).or_insert_with(|| {
            self.table.push(text);
            // A state holds far fewer than 2^32 texts: it lives in one Redis value.
            (self.table.len() - 1) as u32
        })
    }
}

/// The value written to Redis for `state`: compressed from [`COMPRESS_FROM`] bytes.
pub fn encode_state(state: &EntityState) -> Vec<u8> {
    with_encoded(state, STATE_VERSION, encode_columns, |plain| {
        compressed(plain, STATE_VERSION_COMPRESSED)
    })
}

/// `plain` (a value with its version byte) in one zstd frame behind `version` when it is
/// [`COMPRESS_FROM`] bytes or more and zstd could make a context; else `plain`.
fn compressed(plain: &[u8], version: u8) -> Vec<u8> {
    if plain.len() < COMPRESS_FROM {
        return plain.to_vec();
    }
    compress(&plain[1..], version, None).unwrap_or_else(|| plain.to_vec())
}

/// The value of `state` in layout version [`STATE_VERSION`], uncompressed.
pub fn encode_uncompressed(state: &EntityState) -> Vec<u8> {
    with_encoded(state, STATE_VERSION, encode_columns, <[u8]>::to_vec)
}

/// The value of `state` in layout version 2 (features as rows), uncompressed.
fn encode_rows(state: &EntityState) -> Vec<u8> {
    with_encoded(state, ROWS_VERSION, encode_feature, <[u8]>::to_vec)
}

/// `then` of the uncompressed value of `state` in layout `version`, built in a buffer kept
/// between calls.
fn with_encoded<'a, F: Serialize, T>(
    state: &'a EntityState,
    version: u8,
    encode_feature: impl Fn(&mut Texts<'a>, &'a str, &'a FeatureState) -> F,
    then: impl FnOnce(&[u8]) -> T,
) -> T {
    // Taken rather than borrowed: postcard extends a vector it owns.
    let mut buffer = PLAIN.take();
    buffer.clear();
    buffer.push(version);
    let buffer = encode_wire(state, encode_feature, buffer);
    let result = then(&buffer);
    PLAIN.set(buffer);
    result
}

fn encode_wire<'a, F: Serialize>(
    state: &'a EntityState,
    encode_feature: impl Fn(&mut Texts<'a>, &'a str, &'a FeatureState) -> F,
    buffer: Vec<u8>,
) -> Vec<u8> {
    let mut texts = Texts::for_features(state.applied.len(), state.features.values());
    let envelope = Envelope::of(state, &mut texts);
    let features =
        state.features.iter().map(|(name, feature)| encode_feature(&mut texts, name, feature));
    let features = features.collect();
    let wire = envelope.wire(texts, features);
    flavor::append(&wire, buffer)
}

/// What a stored value says of its share besides its features: its revision, and where each
/// stream's changes got to.
struct Envelope {
    rev: u64,
    applied: Vec<(u32, Position)>,
    replayed: Vec<(u32, Vec<Position>)>,
    runs: Vec<(u32, SnapshotRun, Option<i64>)>,
    cuts: Vec<(u32, Position)>,
}

impl Envelope {
    fn of<'a>(state: &'a EntityState, texts: &mut Texts<'a>) -> Self {
        // Named field by field: a field added to the state does not compile here until the wire
        // form (and its version) carries it.
        let EntityState { rev, applied, replayed, runs, cuts, features: _, .. } = state;
        let applied = applied.iter().map(|(stream, at)| (texts.place(stream), *at)).collect();
        let replayed = replayed
            .iter()
            .map(|(stream, positions)| (texts.place(stream), positions.iter().copied().collect()))
            .collect();
        let runs = runs
            .iter()
            .map(|(stream, mark)| (texts.place(stream), mark.run, mark.through))
            .collect();
        let cuts = cuts.iter().map(|(stream, cut)| (texts.place(stream), *cut)).collect();
        Self { rev: *rev, applied, replayed, runs, cuts }
    }

    fn wire<'a, F>(self, texts: Texts<'a>, features: Vec<F>) -> Wire<'a, F> {
        let Self { rev, applied, replayed, runs, cuts } = self;
        Wire { rev, texts: texts.table, applied, replayed, runs, cuts, features }
    }
}

/// A feature's buckets and facts as both layouts write them, in the order written.
enum Item {
    /// A bucket: its difference from the bucket before it (the first's from 0).
    Bucket(i64),
    /// A value of the last bucket: its place in the table, and its rows.
    Value(u32, i64),
    /// A fact: its row key, its time's difference from the fact before it, its value's place.
    Fact(WireKey, u64, u32),
}

/// Calls `each` with every [`Item`] of `state`; returns the oldest fact's time.
fn walk_feature<'a>(
    texts: &mut Texts<'a>,
    state: &'a FeatureState,
    mut each: impl FnMut(Item),
) -> i64 {
    let mut previous = 0;
    // The table's place of each value of the buckets' dictionary, looked up the first time an
    // entry names it: a value repeats bucket after bucket, and hashing it for each entry took
    // a sixth to a fifth of encoding a user (BENCHMARKS.md, "Compressed states").
    let mut places: Vec<Option<u32>> = Vec::new();
    let mut current = None;
    for (bucket, index, rows) in state.buckets.indexed() {
        if current != Some(bucket) {
            // Wrapping, as decoding adds it back wrapping: exact for any bucket.
            each(Item::Bucket(bucket.wrapping_sub(previous)));
            previous = bucket;
            current = Some(bucket);
        }
        let slot = index as usize;
        if slot >= places.len() {
            places.resize(slot + 1, None);
        }
        let place = places[slot].get_or_insert_with(|| texts.place(state.buckets.text(index)));
        each(Item::Value(*place, rows));
    }
    let facts_since_us = state.facts.oldest().map_or(0, |fact| fact.at_us);
    let mut previous = facts_since_us;
    for (key, fact) in state.facts.iter() {
        let key = match key.form() {
            _ if key.is_none() => WireKey::None,
            KeyForm::Uuid(bytes) => WireKey::Uuid(*bytes),
            KeyForm::Text(text) => WireKey::Text(texts.place(text)),
        };
        // Facts are in time order: never negative.
        let since = fact.at_us.abs_diff(previous);
        previous = fact.at_us;
        each(Item::Fact(key, since, texts.place(&fact.value)));
    }
    facts_since_us
}

/// The value written to Redis for `state` in `encoding`.
pub fn encode_state_as(
    state: &EntityState,
    encoding: StateEncoding,
) -> Result<Vec<u8>, serde_json::Error> {
    match encoding {
        StateEncoding::Zstd | StateEncoding::Parts | StateEncoding::Dictionary => {
            Ok(encode_state(state))
        }
        StateEncoding::Zstd3 => Ok(with_encoded(state, ROWS_VERSION, encode_feature, |plain| {
            compressed(plain, ROWS_VERSION_COMPRESSED)
        })),
        StateEncoding::Binary => Ok(encode_rows(state)),
        StateEncoding::Json => serde_json::to_vec(state),
    }
}

/// A share as written in `encoding`: a head and its changed parts (compressed with `dictionary`
/// if the encoding takes one), or one value (its head, with no parts).
pub fn encode_for_write(
    state: &EntityState,
    encoding: StateEncoding,
    dictionary: Option<&Dictionary>,
) -> Result<EncodedShare, serde_json::Error> {
    match encoding {
        StateEncoding::Dictionary => Ok(encode_share_with(state, dictionary)),
        StateEncoding::Parts => Ok(encode_share(state)),
        whole => Ok(EncodedShare { head: encode_state_as(state, whole)?, ..Default::default() }),
    }
}

/// Reads a share stored as `value` in any layout; when it is a head, its parts are found by
/// `part` from their feature's name.
pub fn decode_share<'p>(
    value: &[u8],
    part: impl Fn(&str) -> Option<&'p [u8]>,
) -> Result<EntityState, CodecError> {
    decode_share_with(value, part, &|_| None)
}

/// [`decode_share`], with the dictionaries values may be compressed with found by `known` from
/// their id.
pub fn decode_share_with<'p>(
    value: &[u8],
    part: impl Fn(&str) -> Option<&'p [u8]>,
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Result<EntityState, CodecError> {
    match parts::decode_if_head(value, &part, known) {
        Some(read) => read,
        None => decode_state(value),
    }
}

/// Reads a value [`encode_state`] wrote, or a share stored in an earlier layout; a head only
/// when it lists no parts.
pub fn decode_state(bytes: &[u8]) -> Result<EntityState, CodecError> {
    match bytes.first() {
        _ if is_head(bytes) => decode_share(bytes, |_| None),
        _ if parts::is_part(bytes) => Err(CodecError::Part),
        None => Err(CodecError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&version @ (1 | ROWS_VERSION)) => decode_wire::<WireFeature>(&bytes[1..], version),
        Some(&ROWS_VERSION_COMPRESSED) => {
            decode_wire::<WireFeature>(&decompress(&bytes[1..])?, ROWS_VERSION)
        }
        Some(&STATE_VERSION) => decode_wire::<ColumnFeature>(&bytes[1..], STATE_VERSION),
        Some(&STATE_VERSION_COMPRESSED) => {
            decode_wire::<ColumnFeature>(&decompress(&bytes[1..])?, STATE_VERSION)
        }
        Some(&other) => Err(CodecError::UnknownVersion(other)),
    }
}

/// What a feature of either layout reads as: its buckets as (bucket, place, rows) and its
/// facts as (key, time since the fact before, place), each in the order written.
trait FeatureForm {
    fn name(&self) -> u32;
    fn buckets(&self) -> Result<Vec<(i64, u32, i64)>, CodecError>;
    fn facts(&self) -> Result<Vec<(&WireKey, u64, u32)>, CodecError>;
    fn facts_since_us(&self) -> i64;
}

fn decode_wire<'a, F: FeatureForm + Deserialize<'a>>(
    bytes: &'a [u8],
    version: u8,
) -> Result<EntityState, CodecError> {
    let wire: Wire<'_, F> = postcard::from_bytes(bytes)?;
    let mut state = decode_envelope(&wire)?;
    decode_features(&wire.texts, &wire.features, version, &mut state.features)?;
    Ok(state)
}

/// The share `wire` holds, but its features.
fn decode_envelope<F>(wire: &Wire<'_, F>) -> Result<EntityState, CodecError> {
    let by_stream = |place: u32| text_at(&wire.texts, place).map(str::to_string);
    let mut state = EntityState { rev: wire.rev, ..EntityState::default() };
    for (stream, at) in &wire.applied {
        state.applied.insert(by_stream(*stream)?, *at);
    }
    for (stream, positions) in &wire.replayed {
        state.replayed.insert(by_stream(*stream)?, positions.iter().copied().collect());
    }
    for (stream, run, through) in &wire.runs {
        state.runs.insert(by_stream(*stream)?, RunMark { run: *run, through: *through });
    }
    for (stream, cut) in &wire.cuts {
        state.cuts.insert(by_stream(*stream)?, *cut);
    }
    Ok(state)
}

fn text_at<'a>(texts: &[&'a str], place: u32) -> Result<&'a str, CodecError> {
    texts.get(place as usize).copied().ok_or(CodecError::MissingText(place))
}

/// Adds `features`, written in layout `version` with the table `texts`, to `into`.
fn decode_features<F: FeatureForm>(
    texts: &[&str],
    features: &[F],
    version: u8,
    into: &mut FeatureStates,
) -> Result<(), CodecError> {
    let text = |place: u32| text_at(texts, place);
    // A text's index in the dictionary of the feature being read, by its place in the table.
    let mut dictionary = vec![0; texts.len()];
    for feature in features {
        let mut decoded = FeatureState::default();
        let buckets = feature.buckets()?;
        if !buckets.is_empty() {
            decoded.buckets = decode_buckets(&buckets, texts, &mut dictionary)?;
        }
        // Written in time order since the facts are kept in it; earlier persona wrote them in
        // row key order, which collecting sorts.
        let mut previous = feature.facts_since_us();
        decoded.facts = feature
            .facts()?
            .into_iter()
            .map(|(key, since, value)| {
                let key = match key {
                    WireKey::Uuid(bytes) => RowKey::from_uuid(*bytes),
                    WireKey::Text(place) => RowKey::new(text(*place)?),
                    WireKey::None => RowKey::none().clone(),
                };
                let at_us = previous.saturating_add_unsigned(since);
                if version >= 2 {
                    previous = at_us;
                }
                Ok((key, Fact { at_us, value: text(value)?.into() }))
            })
            .collect::<Result<_, CodecError>>()?;
        into.insert_named(text(feature.name())?, decoded);
    }
    Ok(())
}

/// A feature's buckets as (bucket, place in `texts`, rows), in bucket order.
///
/// The dictionary is built from the places the buckets name, each looked up once: a product's
/// viewers are thousands of rows over a few hundred texts, and sorting the rows' texts
/// rather than the distinct places took four times as long as the whole decode before.
fn decode_buckets(
    buckets: &[(i64, u32, i64)],
    texts: &[&str],
    dictionary: &mut [u32],
) -> Result<Buckets, CodecError> {
    let mut places: Vec<u32> = buckets.iter().map(|(_, place, _)| *place).collect();
    places.sort_unstable();
    places.dedup();
    let mut values = Vec::with_capacity(places.len());
    for place in places {
        let text = texts.get(place as usize).copied().ok_or(CodecError::MissingText(place))?;
        values.push((text, place));
    }
    values.sort_unstable();
    // A table that held a text twice: one value still.
    let mut distinct: Vec<&str> = Vec::with_capacity(values.len());
    for (text, place) in &values {
        if distinct.last() != Some(text) {
            distinct.push(text);
        }
        dictionary[*place as usize] = (distinct.len() - 1) as u32;
    }
    let dictionary: &[u32] = dictionary;
    let rows = buckets.iter().map(|(at, place, rows)| (*at, dictionary[*place as usize], *rows));
    Ok(Buckets::from_dictionary(distinct, rows))
}

mod columns;
mod dictionary;
mod flavor;
mod frames;
mod parts;
mod rows;

#[cfg(test)]
mod tests;
