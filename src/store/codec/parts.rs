//! Layout versions 6 to 9: a share as a *head* and *parts*, so that writing it again costs what
//! the change fed, not what the share holds.
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

use serde::{Deserialize, Serialize};

use super::columns::{ColumnFeature, encode_columns};
use super::dictionary::{
    Dictionary, HEAD_VERSION_DICTIONARY, PART_VERSION_DICTIONARY, compress_with, decompress_with,
};
use super::{
    CodecError, Envelope, PLAIN, STATE_VERSION, Texts, Wire, compress, decode_envelope,
    decode_features, decompress, text_at,
};
use crate::features::{EntityState, FeatureState, Stored};

/// A head, uncompressed and compressed.
pub const HEAD_VERSION: u8 = 6;
pub const HEAD_VERSION_COMPRESSED: u8 = 7;
/// A part, uncompressed and compressed.
pub const PART_VERSION: u8 = 8;
pub const PART_VERSION_COMPRESSED: u8 = 9;

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

/// The field of the part of `feature` in the share of `stream`.
pub fn part_field(stream: &str, feature: &str) -> String {
    format!("{stream}{PART_INFIX}{feature}")
}

/// What separates a share's stream from a feature in its parts' fields.
pub const PART_INFIX: &str = "#part:";

/// A share as written in layout 6 to 9.
#[derive(Debug, Default)]
pub struct EncodedShare {
    pub head: Vec<u8>,
    /// The parts to write: features changed since last written, by name.
    pub parts: Vec<(&'static str, Vec<u8>)>,
    /// Parts the share listed when read or last written and lists no more: to be removed.
    pub dropped: Vec<&'static str>,
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

/// `state` as its head and the parts that changed.
pub fn encode_share(state: &EntityState) -> EncodedShare {
    encode_share_with(state, None)
}

/// `state` as its head and the parts that changed, compressed with `dictionary` when there is
/// one (layout 12 and 13) and without it otherwise (7 and 9).
pub fn encode_share_with(state: &EntityState, dictionary: Option<&Dictionary>) -> EncodedShare {
    let compression = match dictionary {
        Some(dictionary) => Compression::With(dictionary),
        None => Compression::Plain,
    };
    encode_share_as(state, compression)
}

fn encode_share_as(state: &EntityState, compression: Compression<'_>) -> EncodedShare {
    let mut share = EncodedShare::default();
    let inline = state.features.iter_stored().filter(|(_, f, stored)| !in_part(f, *stored));
    // The parts' names are texts of the head too.
    let names = state.features.len();
    let mut texts = Texts::for_features(state.applied.len() + names, inline.map(|(_, f, _)| f));
    let envelope = Envelope::of(state, &mut texts);
    let mut inline = Vec::new();
    let mut parts = Vec::new();
    for (name, feature, stored) in state.features.iter_stored() {
        if !in_part(feature, stored) {
            inline.push(encode_columns(&mut texts, name, feature));
            continue;
        }
        parts.push(texts.place(name));
        if stored.0 {
            share.keeps_parts = true;
        } else {
            share.parts.push((name, encode_part(name, feature, compression)));
        }
    }
    share.dropped = state
        .stored_parts
        .0
        .iter()
        .copied()
        .filter(|name| {
            !state.features.iter_stored().any(|(listed, feature, stored)| {
                std::ptr::eq(listed, *name) && in_part(feature, stored)
            })
        })
        .collect();
    let head = Head { wire: envelope.wire(texts, inline), parts };
    share.head = encoded(HEAD_VERSIONS, &head, compression);
    share
}

/// The uncompressed heads and parts (without their version byte) of `state`, every part
/// included: what a dictionary for the shares is trained on.
pub fn share_samples(state: &EntityState) -> Vec<Vec<u8>> {
    let share = encode_share_as(state, Compression::None);
    let unchanged = state.features.iter_stored().filter(|(_, _, stored)| stored.0);
    let unchanged =
        unchanged.map(|(name, feature, _)| encode_part(name, feature, Compression::None));
    let parts = share.parts.into_iter().map(|(_, part)| part).chain(unchanged);
    let mut samples: Vec<Vec<u8>> = std::iter::once(share.head).chain(parts).collect();
    for sample in &mut samples {
        sample.remove(0);
    }
    samples
}

fn encode_part(name: &str, feature: &FeatureState, compression: Compression<'_>) -> Vec<u8> {
    let mut texts = Texts::for_features(0, std::iter::once(feature));
    let feature = encode_columns(&mut texts, name, feature);
    encoded(PART_VERSIONS, &Part { texts: texts.table, feature }, compression)
}

/// How the values of a share are compressed.
#[derive(Clone, Copy)]
enum Compression<'d> {
    /// Not at all: a sample to train a dictionary on.
    None,
    Plain,
    With(&'d Dictionary),
}

/// The versions of a kind of value: uncompressed, compressed, compressed with a dictionary.
struct Versions {
    plain: u8,
    compressed: u8,
    with_dictionary: u8,
}

const HEAD_VERSIONS: Versions = Versions {
    plain: HEAD_VERSION,
    compressed: HEAD_VERSION_COMPRESSED,
    with_dictionary: HEAD_VERSION_DICTIONARY,
};

const PART_VERSIONS: Versions = Versions {
    plain: PART_VERSION,
    compressed: PART_VERSION_COMPRESSED,
    with_dictionary: PART_VERSION_DICTIONARY,
};

/// `value` uncompressed, or in one zstd frame when that is shorter, built in the buffer kept
/// between values.
fn encoded(versions: Versions, value: &impl Serialize, compression: Compression<'_>) -> Vec<u8> {
    let mut buffer = PLAIN.take();
    buffer.clear();
    buffer.push(versions.plain);
    let buffer = super::flavor::append(value, buffer);
    let frame = match (buffer.len() >= PART_COMPRESS_FROM, compression) {
        (false, _) | (_, Compression::None) => None,
        (true, Compression::Plain) => compress(&buffer[1..], versions.compressed),
        (true, Compression::With(dictionary)) => {
            compress_with(&buffer[1..], versions.with_dictionary, dictionary)
        }
    };
    let value = frame.filter(|frame| frame.len() < buffer.len()).unwrap_or_else(|| buffer.clone());
    PLAIN.set(buffer);
    value
}

/// Records that Redis now holds what [`encode_share`] wrote of `state`: its parts are stored
/// until a change reaches them. Call it only once the write is acknowledged, and with `state`
/// as it was encoded.
pub fn note_written(state: &mut EntityState) {
    let parts: Vec<&'static str> = state
        .features
        .iter_stored()
        .filter(|(_, feature, stored)| in_part(feature, *stored))
        .map(|(name, ..)| name)
        .collect();
    for name in &parts {
        state.features.mark_stored(name);
    }
    state.stored_parts.0 = parts;
}

/// Whether `value` is a head (a share in layout 6 or 7), which needs its parts to be read.
pub fn is_head(value: &[u8]) -> bool {
    matches!(
        value.first(),
        Some(&(HEAD_VERSION | HEAD_VERSION_COMPRESSED | HEAD_VERSION_DICTIONARY))
    )
}

/// Reads the share whose head is `head` (without its version byte, decompressed), its parts
/// found by `part` from their feature's name and the dictionaries they name by `known`.
pub(super) fn decode_head<'p>(
    head: &[u8],
    part: impl Fn(&str) -> Option<&'p [u8]>,
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Result<EntityState, CodecError> {
    let head: Head<'_, ColumnFeature> = postcard::from_bytes(head)?;
    let mut state = decode_envelope(&head.wire)?;
    decode_features(&head.wire.texts, &head.wire.features, STATE_VERSION, &mut state.features)?;
    for place in &head.parts {
        let name = text_at(&head.wire.texts, *place)?;
        let value = part(name).ok_or_else(|| CodecError::MissingPart(name.to_string()))?;
        let plain;
        let wire = match value.first() {
            Some(&PART_VERSION) => &value[1..],
            Some(&PART_VERSION_COMPRESSED) => {
                plain = decompress(&value[1..])?;
                &plain[..]
            }
            Some(&PART_VERSION_DICTIONARY) => {
                plain = decompress_with(&value[1..], known)?;
                &plain[..]
            }
            Some(&other) => return Err(CodecError::UnknownVersion(other)),
            None => return Err(CodecError::Empty),
        };
        let part: Part<'_, ColumnFeature> = postcard::from_bytes(wire)?;
        decode_features(
            &part.texts,
            std::slice::from_ref(&part.feature),
            STATE_VERSION,
            &mut state.features,
        )?;
        // The feature the part holds must be the one the head names.
        let name = state.features.mark_stored_named(name).ok_or(CodecError::PartName)?;
        state.stored_parts.0.push(name);
    }
    Ok(state)
}

#[cfg(test)]
#[path = "tests_parts.rs"]
mod tests;
