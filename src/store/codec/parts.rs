//! Layout versions 6 to 11: a share as a *head* and *parts*, so that writing it again costs
//! what the change fed, not what the share holds.
//!
//! A share was one value, re-encoded whole whenever a change reached it: a view of a product
//! re-encoded its co-occurrence partner's thousands of viewers for one pair count, and under live
//! load encoding was most of persona's CPU (BENCHMARKS.md, "Where persona's time and CPU go under
//! load"). Now each feature state of [`PART_FROM_ITEMS`] buckets' values and facts or more is
//! a value of its own, a part, in the field `<stream>#part:<feature>` beside the share's field:
//! a part's table holds its own texts, and it is one zstd frame (version 9) unless that is no
//! shorter (8). The head, in the share's field, holds what every change moves (the revision, the
//! streams' positions, runs and cuts), the features too small to stand alone, and the names of
//! the parts (version 7 compressed, 6 not). A share is written as its head, the parts whose
//! features changed since they were last written, and the removal of the parts it no longer
//! lists; one script writes them all, so a reader never sees a head with parts of another
//! revision.
//!
//! Which parts are unchanged the share itself says ([`Stored`]): a feature read from a part, or
//! written to one and acknowledged, is stored until a change reaches it. A reader takes the
//! parts its head lists and nothing else, so a part left behind (by a writer of an earlier
//! layout) is never read. A head listing a part that is missing is unreadable, like any
//! malformed value.
//!
//! A large feature of buckets alone (a product's viewers of the hour) is written in *pieces* of
//! [`PIECE_BUCKETS`] buckets, each a part of its own in the field `<stream>#part:<feature>#<n>`
//! (`n` its buckets' number over [`PIECE_BUCKETS`]), listed by a head of version 10 (11
//! compressed). A change adds to the newest bucket, and time drops the oldest: a view rewrote a
//! product's whole hour of viewers, and now rewrites the piece it fed (BENCHMARKS.md, "Parts in
//! pieces"). Which pieces a change reached is found by comparing each piece's fingerprint (a
//! keyed 64-bit hash of its buckets, values and rows) with the one of the piece Redis holds,
//! kept with the share ([`StoredPart`]); a feature no change reached is not looked at. A
//! share with no feature in pieces keeps the head of version 6 (7), which earlier persona reads.

use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use super::columns::{ColumnFeature, encode_columns, encode_columns_in};
use super::{
    CodecError, Envelope, FeatureForm, PLAIN, STATE_VERSION, Texts, Wire, compress,
    decode_envelope, decode_features, decompress, text_at,
};
use crate::features::{
    Buckets, EntityState, FeatureState, FeatureStates, Stored, StoredPart, intern,
};

/// A head, uncompressed and compressed.
pub const HEAD_VERSION: u8 = 6;
pub const HEAD_VERSION_COMPRESSED: u8 = 7;
/// A part, uncompressed and compressed.
pub const PART_VERSION: u8 = 8;
pub const PART_VERSION_COMPRESSED: u8 = 9;
/// A head listing features in pieces, uncompressed and compressed.
pub const PIECES_HEAD_VERSION: u8 = 10;
pub const PIECES_HEAD_VERSION_COMPRESSED: u8 = 11;

/// The buckets of a piece: half an hour of a window of an hour, whose buckets are a minute, so
/// that a product's viewers of the hour and its `history` are three pieces. Of 8, 16, 32 and
/// 64 buckets, 32 wrote the fewest bytes per change with the least stored (BENCHMARKS.md,
/// "Parts in pieces").
pub const PIECE_BUCKETS: u32 = 32;

/// The buckets' values and facts from which a feature is a part of its own (a product's
/// viewers, its co-occurrences: thousands of values, tens of kilobytes). Below it a feature rides
/// in the head: features fed by the same rows (a user's views, as the recent views, the session
/// and the view counts each keep them) repeat each other's times and values, which zstd matches
/// within one value and not across two. With every feature of 64 or more a part, a user's median
/// stored share grew from 2,557 to 4,006 bytes (BENCHMARKS.md, "A share as its head and parts").
pub const PART_FROM_ITEMS: usize = 256;

/// The smallest head or part compressed, and kept compressed only when that is smaller: a
/// product's head is a hundred or two bytes, which zstd still shortens.
const PART_COMPRESS_FROM: usize = 64;

/// The field of the part `part` (a feature's name, or a piece of one) in the share of `stream`.
pub fn part_field(stream: &str, part: &str) -> String {
    format!("{stream}{PART_INFIX}{part}")
}

/// What separates a share's stream from a feature in its parts' fields.
pub const PART_INFIX: &str = "#part:";

/// The part (the end of its field, after [`PART_INFIX`]) of piece `piece` of `feature`. A
/// feature's name holds no `#` (see `features::definition`), so no piece's field is another
/// part's.
fn piece_of(feature: &str, piece: u32) -> String {
    format!("{feature}#{piece}")
}

/// A share as written in layout 6 to 11.
#[derive(Debug, Default)]
pub struct EncodedShare {
    pub head: Vec<u8>,
    /// The parts to write: features (or pieces) changed since last written, by the end of
    /// their field ([`part_field`]): a feature's name, or `<name>#<piece>`.
    pub parts: Vec<(String, Vec<u8>)>,
    /// Parts the share listed when read or last written and lists no more: to be removed.
    pub dropped: Vec<String>,
    /// Whether the head lists parts it does not write (unchanged): they must still be stored.
    pub keeps_parts: bool,
}

#[derive(Serialize, Deserialize)]
struct Head<'a, F> {
    #[serde(borrow)]
    wire: Wire<'a, F>,
    /// The features in parts of their own, as places in the table.
    parts: Vec<u32>,
}

/// A head of version 10: each part's feature (a place in the table) with its pieces, none
/// when it is one part.
#[derive(Serialize, Deserialize)]
struct PiecesHead<'a, F> {
    #[serde(borrow)]
    wire: Wire<'a, F>,
    parts: Vec<(u32, Vec<u32>)>,
}

#[derive(Serialize, Deserialize)]
struct Part<'a, F> {
    #[serde(borrow)]
    texts: Vec<&'a str>,
    feature: F,
}

/// Whether `feature` is written in a part of its own: it is stored in one, unchanged, or large
/// enough to stand alone.
fn in_part(feature: &FeatureState, stored: Stored) -> bool {
    stored.0 || feature.buckets.entry_count() + feature.facts.len() >= PART_FROM_ITEMS
}

/// Whether a feature in a part is written in pieces: it keeps buckets and no facts.
fn in_pieces(feature: &FeatureState) -> bool {
    feature.facts.is_empty() && !feature.buckets.is_empty()
}

/// The key of the fingerprints: drawn once per process, so that no input can be made to collide
/// on purpose; fingerprints are compared only within the process that made them.
static FINGERPRINTS: LazyLock<foldhash::quality::RandomState> = LazyLock::new(Default::default);

/// Fingerprints of the pieces of one feature's buckets: its values' own, each made once.
struct Fingerprints<'b> {
    buckets: &'b Buckets,
    /// By index in the buckets' dictionary.
    texts: Vec<Option<u64>>,
}

impl<'b> Fingerprints<'b> {
    fn of(buckets: &'b Buckets) -> Self {
        Self { buckets, texts: vec![None; buckets.dictionary_len()] }
    }

    /// The fingerprint of the buckets of the entries in `range`: their buckets, values and
    /// rows.
    fn piece(&mut self, range: Range<usize>) -> u64 {
        let mut hasher = FINGERPRINTS.build_hasher();
        for (bucket, index, rows) in self.buckets.indexed_in(range) {
            let slot = index as usize;
            if slot >= self.texts.len() {
                self.texts.resize(slot + 1, None);
            }
            let text = *self.texts[slot]
                .get_or_insert_with(|| FINGERPRINTS.hash_one(self.buckets.text(index)));
            hasher.write_i64(bucket);
            hasher.write_u64(text);
            hasher.write_i64(rows);
        }
        hasher.finish()
    }

    /// Each piece with its fingerprint.
    fn all(mut self) -> Vec<(u32, u64)> {
        let pieces = self.buckets.pieces(PIECE_BUCKETS).into_iter();
        pieces.map(|(piece, range)| (piece, self.piece(range))).collect()
    }
}

/// `state` as its head and the parts that changed.
pub fn encode_share(state: &EntityState) -> EncodedShare {
    let mut share = EncodedShare::default();
    let inline = state.features.iter_stored().filter(|(_, f, stored)| !in_part(f, *stored));
    // The parts' names are texts of the head too.
    let names = state.features.len();
    let mut texts = Texts::for_features(state.applied.len() + names, inline.map(|(_, f, _)| f));
    let envelope = Envelope::of(state, &mut texts);
    let mut inline = Vec::new();
    let mut parts: Vec<(u32, Vec<u32>)> = Vec::new();
    // The end of the field of every part the head lists.
    let mut listed: Vec<String> = Vec::new();
    for (name, feature, stored) in state.features.iter_stored() {
        if !in_part(feature, stored) {
            inline.push(encode_columns(&mut texts, name, feature));
            continue;
        }
        let held = state.stored_parts.of(name);
        if !in_pieces(feature) {
            parts.push((texts.place(name), Vec::new()));
            listed.push(name.to_string());
            if stored.0 && held.is_some_and(|part| part.pieces.is_none()) {
                share.keeps_parts = true;
            } else {
                share.parts.push((name.to_string(), encode_part(name, feature)));
            }
            continue;
        }
        let held = held.and_then(|part| part.pieces.as_deref()).unwrap_or_default();
        let mut pieces = Vec::new();
        let mut prints = Fingerprints::of(&feature.buckets);
        for (piece, range) in feature.buckets.pieces(PIECE_BUCKETS) {
            let field = piece_of(name, piece);
            // Stored: unchanged since Redis got it, every piece as held; else compared.
            let held = held.iter().find(|(number, _)| *number == piece);
            let unchanged =
                held.is_some_and(|(_, print)| stored.0 || *print == prints.piece(range.clone()));
            if unchanged {
                share.keeps_parts = true;
            } else {
                share.parts.push((field.clone(), encode_piece(name, feature, range)));
            }
            pieces.push(piece);
            listed.push(field);
        }
        parts.push((texts.place(name), pieces));
    }
    for part in &state.stored_parts.0 {
        let fields = match &part.pieces {
            None => vec![part.name.to_string()],
            Some(pieces) => pieces.iter().map(|(piece, _)| piece_of(part.name, *piece)).collect(),
        };
        share.dropped.extend(fields.into_iter().filter(|field| !listed.contains(field)));
    }
    share.head = match parts.iter().any(|(_, pieces)| !pieces.is_empty()) {
        true => {
            let head = PiecesHead { wire: envelope.wire(texts, inline), parts };
            encoded(PIECES_HEAD_VERSION, PIECES_HEAD_VERSION_COMPRESSED, &head)
        }
        false => {
            let parts = parts.into_iter().map(|(place, _)| place).collect();
            let head = Head { wire: envelope.wire(texts, inline), parts };
            encoded(HEAD_VERSION, HEAD_VERSION_COMPRESSED, &head)
        }
    };
    share
}

fn encode_part(name: &str, feature: &FeatureState) -> Vec<u8> {
    let mut texts = Texts::for_features(0, std::iter::once(feature));
    let feature = encode_columns(&mut texts, name, feature);
    encoded(PART_VERSION, PART_VERSION_COMPRESSED, &Part { texts: texts.table, feature })
}

/// The part of the piece of `feature` whose entries are `range`: a part of the feature holding
/// those buckets alone.
fn encode_piece(name: &str, feature: &FeatureState, range: Range<usize>) -> Vec<u8> {
    let mut texts = Texts::with_room(1 + range.len().min(feature.buckets.dictionary_len()));
    let feature = encode_columns_in(&mut texts, name, feature, range);
    encoded(PART_VERSION, PART_VERSION_COMPRESSED, &Part { texts: texts.table, feature })
}

/// `value` behind `version`, or behind `compressed_version` in one zstd frame when that is
/// shorter, built in the buffer kept between values.
fn encoded(version: u8, compressed_version: u8, value: &impl Serialize) -> Vec<u8> {
    let mut buffer = PLAIN.take();
    buffer.clear();
    buffer.push(version);
    let buffer = super::flavor::append(value, buffer);
    let value = match buffer.len() >= PART_COMPRESS_FROM {
        true => compress(&buffer[1..], compressed_version)
            .filter(|frame| frame.len() < buffer.len())
            .unwrap_or_else(|| buffer.clone()),
        false => buffer.clone(),
    };
    PLAIN.set(buffer);
    value
}

/// Records that Redis now holds what [`encode_share`] wrote of `state`: its parts are stored
/// until a change reaches them. Call it only once the write is acknowledged, and with `state`
/// as it was encoded.
pub fn note_written(state: &mut EntityState) {
    let mut held = Vec::new();
    for (name, feature, stored) in state.features.iter_stored() {
        if !in_part(feature, stored) {
            continue;
        }
        let pieces = in_pieces(feature).then(|| {
            let before = state.stored_parts.of(name).and_then(|part| part.pieces.as_ref());
            match before {
                // Unchanged since held: so are its pieces.
                Some(pieces) if stored.0 => pieces.clone(),
                _ => Fingerprints::of(&feature.buckets).all(),
            }
        });
        held.push(StoredPart { name, pieces });
    }
    for part in &held {
        state.features.mark_stored(part.name);
    }
    state.stored_parts.0 = held;
}

/// Whether `value` is a head (a share in layout 6, 7, 10 or 11), which needs its parts to be
/// read.
pub fn is_head(value: &[u8]) -> bool {
    matches!(
        value.first(),
        Some(
            &(HEAD_VERSION
                | HEAD_VERSION_COMPRESSED
                | PIECES_HEAD_VERSION
                | PIECES_HEAD_VERSION_COMPRESSED)
        )
    )
}

/// Reads the share whose head is `head` (a head of version 6, without its version byte,
/// decompressed), its parts found by `part` from the end of their field.
pub(super) fn decode_head<'p>(
    head: &[u8],
    part: impl Fn(&str) -> Option<&'p [u8]>,
) -> Result<EntityState, CodecError> {
    let head: Head<'_, ColumnFeature> = postcard::from_bytes(head)?;
    let parts = head.parts.iter().map(|place| (*place, &[][..]));
    decode_parts(&head.wire, parts, part)
}

/// [`decode_head`] of a head of version 10, whose features may be in pieces.
pub(super) fn decode_pieces_head<'p>(
    head: &[u8],
    part: impl Fn(&str) -> Option<&'p [u8]>,
) -> Result<EntityState, CodecError> {
    let head: PiecesHead<'_, ColumnFeature> = postcard::from_bytes(head)?;
    let parts = head.parts.iter().map(|(place, pieces)| (*place, &pieces[..]));
    decode_parts(&head.wire, parts, part)
}

/// The share of a head's `wire` and its `parts`: each a feature's name (a place in the table)
/// and its pieces, none when it is one part.
fn decode_parts<'a, 'p>(
    wire: &Wire<'_, ColumnFeature>,
    parts: impl Iterator<Item = (u32, &'a [u32])>,
    part: impl Fn(&str) -> Option<&'p [u8]>,
) -> Result<EntityState, CodecError> {
    let mut state = decode_envelope(wire)?;
    decode_features(&wire.texts, &wire.features, STATE_VERSION, &mut state.features)?;
    for (place, pieces) in parts {
        let name = text_at(&wire.texts, place)?;
        if pieces.is_empty() {
            read_part(&part, name, name, &mut state.features)?;
            let name = state.features.mark_stored_named(name).ok_or(CodecError::PartName)?;
            state.stored_parts.0.push(StoredPart { name, pieces: None });
            continue;
        }
        let mut buckets = Buckets::default();
        for (at, piece) in pieces.iter().enumerate() {
            if at > 0 && pieces[at - 1] >= *piece {
                return Err(CodecError::Piece(name.to_string()));
            }
            let mut read = FeatureStates::default();
            read_part(&part, &piece_of(name, *piece), name, &mut read)?;
            let feature = read.take(intern(name)).ok_or(CodecError::PartName)?;
            // Every bucket of a piece in it: else a piece would be read twice or not at all.
            let numbers = feature.buckets.pieces(PIECE_BUCKETS);
            if !feature.facts.is_empty() || numbers.len() != 1 || numbers[0].0 != *piece {
                return Err(CodecError::Piece(name.to_string()));
            }
            buckets.merge(&feature.buckets);
        }
        let prints = Fingerprints::of(&buckets).all();
        state.features.insert_named(name, FeatureState::new(buckets, Default::default()));
        let name = state.features.mark_stored_named(name).ok_or(CodecError::PartName)?;
        state.stored_parts.0.push(StoredPart { name, pieces: Some(prints) });
    }
    Ok(state)
}

/// Reads the part whose field ends in `field` into `into`: it must hold the feature `name`.
fn read_part<'p>(
    part: &impl Fn(&str) -> Option<&'p [u8]>,
    field: &str,
    name: &str,
    into: &mut FeatureStates,
) -> Result<(), CodecError> {
    let value = part(field).ok_or_else(|| CodecError::MissingPart(field.to_string()))?;
    let plain;
    let wire = match value.first() {
        Some(&PART_VERSION) => &value[1..],
        Some(&PART_VERSION_COMPRESSED) => {
            plain = decompress(&value[1..])?;
            &plain[..]
        }
        Some(&other) => return Err(CodecError::UnknownVersion(other)),
        None => return Err(CodecError::Empty),
    };
    let read: Part<'_, ColumnFeature> = postcard::from_bytes(wire)?;
    if text_at(&read.texts, read.feature.name())? != name {
        return Err(CodecError::PartName);
    }
    decode_features(&read.texts, std::slice::from_ref(&read.feature), STATE_VERSION, into)
}

#[cfg(test)]
#[path = "tests_parts.rs"]
mod tests;
