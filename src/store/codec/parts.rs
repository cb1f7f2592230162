//! Layout versions 6 to 9 (and 12 to 19, see `dictionary.rs` and `columns.rs`): a share as a
//! *head* and *parts*, so that writing it again costs what the change fed, not what the share
//! holds.
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

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::columns::{ColumnFeature, UnitColumnFeature, encode_columns, encode_unit_columns};
use super::dictionary::{Dictionary, HEAD_VERSION_DICTIONARY, PART_VERSION_DICTIONARY};
use super::frames::decompress_with;
use super::{
    CodecError, Envelope, FeatureForm, PLAIN, STATE_VERSION, Texts, Wire, compress,
    decode_envelope, decode_features, decompress, text_at,
};
use crate::features::{EntityState, FeatureState, Stored};

/// A head, uncompressed and compressed.
pub const HEAD_VERSION: u8 = 6;
pub const HEAD_VERSION_COMPRESSED: u8 = 7;
/// A part, uncompressed and compressed.
pub const PART_VERSION: u8 = 8;
pub const PART_VERSION_COMPRESSED: u8 = 9;
/// A head and a part with their facts' times in their largest common unit
/// ([`UnitColumnFeature`]): uncompressed, compressed, compressed with a dictionary.
pub const UNIT_HEAD_VERSION: u8 = 14;
pub const UNIT_HEAD_VERSION_COMPRESSED: u8 = 15;
pub const UNIT_HEAD_VERSION_DICTIONARY: u8 = 16;
pub const UNIT_PART_VERSION: u8 = 17;
pub const UNIT_PART_VERSION_COMPRESSED: u8 = 18;
pub const UNIT_PART_VERSION_DICTIONARY: u8 = 19;

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

/// `state` as its head and the parts that changed, in layouts 6 to 9
/// (`redis.state_encoding = "parts"`).
pub fn encode_share(state: &EntityState) -> EncodedShare {
    encode_share_as(state, Compression::Plain, &COLUMNS)
}

/// `state` as its head and the parts that changed, its facts' times in their largest common
/// unit, compressed with `dictionary` when there is one (layouts 16 and 19) and without it
/// otherwise (14, 15, 17, 18).
pub fn encode_share_with(state: &EntityState, dictionary: Option<&Dictionary>) -> EncodedShare {
    let compression = match dictionary {
        Some(dictionary) => Compression::With(dictionary),
        None => Compression::Plain,
    };
    encode_share_as(state, compression, &UNIT_COLUMNS)
}

/// `state` in layouts 12 and 13, which persona wrote before facts' times had a unit and still
/// reads.
#[cfg(test)]
pub(super) fn encode_share_in_microseconds(
    state: &EntityState,
    dictionary: &Dictionary,
) -> EncodedShare {
    encode_share_as(state, Compression::With(dictionary), &COLUMNS)
}

/// A column form of the features, and the layouts of the heads and parts that hold it.
struct Form<F> {
    encode: for<'a> fn(&mut Texts<'a>, &'a str, &'a FeatureState) -> F,
    head: Versions,
    part: Versions,
}

const COLUMNS: Form<ColumnFeature> = Form {
    encode: encode_columns,
    head: Versions {
        plain: HEAD_VERSION,
        compressed: HEAD_VERSION_COMPRESSED,
        with_dictionary: HEAD_VERSION_DICTIONARY,
    },
    part: Versions {
        plain: PART_VERSION,
        compressed: PART_VERSION_COMPRESSED,
        with_dictionary: PART_VERSION_DICTIONARY,
    },
};

const UNIT_COLUMNS: Form<UnitColumnFeature> = Form {
    encode: encode_unit_columns,
    head: Versions {
        plain: UNIT_HEAD_VERSION,
        compressed: UNIT_HEAD_VERSION_COMPRESSED,
        with_dictionary: UNIT_HEAD_VERSION_DICTIONARY,
    },
    part: Versions {
        plain: UNIT_PART_VERSION,
        compressed: UNIT_PART_VERSION_COMPRESSED,
        with_dictionary: UNIT_PART_VERSION_DICTIONARY,
    },
};

fn encode_share_as<F: Serialize>(
    state: &EntityState,
    compression: Compression<'_>,
    form: &Form<F>,
) -> EncodedShare {
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
            inline.push((form.encode)(&mut texts, name, feature));
            continue;
        }
        parts.push(texts.place(name));
        if stored.0 {
            share.keeps_parts = true;
        } else {
            share.parts.push((name, encode_part(name, feature, compression, form)));
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
    share.head = encoded(&form.head, &head, compression);
    share
}

/// The uncompressed heads and parts (without their version byte) of `state`, every part
/// included: what a dictionary for the shares is trained on.
pub fn share_samples(state: &EntityState) -> Vec<Vec<u8>> {
    let share = encode_share_as(state, Compression::None, &UNIT_COLUMNS);
    let unchanged = state.features.iter_stored().filter(|(_, _, stored)| stored.0);
    let unchanged = unchanged
        .map(|(name, feature, _)| encode_part(name, feature, Compression::None, &UNIT_COLUMNS));
    let parts = share.parts.into_iter().map(|(_, part)| part).chain(unchanged);
    let mut samples: Vec<Vec<u8>> = std::iter::once(share.head).chain(parts).collect();
    for sample in &mut samples {
        sample.remove(0);
    }
    samples
}

fn encode_part<F: Serialize>(
    name: &str,
    feature: &FeatureState,
    compression: Compression<'_>,
    form: &Form<F>,
) -> Vec<u8> {
    let mut texts = Texts::for_features(0, std::iter::once(feature));
    let feature = (form.encode)(&mut texts, name, feature);
    encoded(&form.part, &Part { texts: texts.table, feature }, compression)
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

impl Versions {
    /// The body of `value` (without its version byte, decompressed) when it is of one of these
    /// versions.
    fn unpack<'v>(
        &self,
        value: &'v [u8],
        known: &dyn Fn(u32) -> Option<Dictionary>,
    ) -> Result<Option<Cow<'v, [u8]>>, CodecError> {
        let Some((&version, body)) = value.split_first() else { return Ok(None) };
        Ok(match version {
            _ if version == self.plain => Some(Cow::Borrowed(body)),
            _ if version == self.compressed => Some(Cow::Owned(decompress(body)?)),
            _ if version == self.with_dictionary => Some(Cow::Owned(decompress_with(body, known)?)),
            _ => None,
        })
    }

    fn holds(&self, version: u8) -> bool {
        [self.plain, self.compressed, self.with_dictionary].contains(&version)
    }
}

/// `value` uncompressed, or in one zstd frame when that is shorter, built in the buffer kept
/// between values.
fn encoded(versions: &Versions, value: &impl Serialize, compression: Compression<'_>) -> Vec<u8> {
    let mut buffer = PLAIN.take();
    buffer.clear();
    buffer.push(versions.plain);
    let buffer = super::flavor::append(value, buffer);
    let frame = match (buffer.len() >= PART_COMPRESS_FROM, compression) {
        (false, _) | (_, Compression::None) => None,
        (true, Compression::Plain) => compress(&buffer[1..], versions.compressed, None),
        (true, Compression::With(dictionary)) => {
            compress(&buffer[1..], versions.with_dictionary, Some(dictionary))
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

/// Whether `value` is a head (a share in layout 6, 7, 12 or 14 to 16), which needs its parts to
/// be read.
pub fn is_head(value: &[u8]) -> bool {
    value
        .first()
        .is_some_and(|version| COLUMNS.head.holds(*version) || UNIT_COLUMNS.head.holds(*version))
}

/// Whether `value` is a part (layout 8, 9, 13 or 17 to 19), read only through its head.
pub(super) fn is_part(value: &[u8]) -> bool {
    value
        .first()
        .is_some_and(|version| COLUMNS.part.holds(*version) || UNIT_COLUMNS.part.holds(*version))
}

/// Reads the share whose head is `value`, its parts found by `part` from their feature's name
/// and the dictionaries they name by `known`; `None` when `value` is not a head.
pub(super) fn decode_if_head<'p>(
    value: &[u8],
    part: &dyn Fn(&str) -> Option<&'p [u8]>,
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Option<Result<EntityState, CodecError>> {
    let read = || {
        if let Some(head) = COLUMNS.head.unpack(value, known)? {
            return decode_head::<ColumnFeature>(&head, part, known).map(Some);
        }
        if let Some(head) = UNIT_COLUMNS.head.unpack(value, known)? {
            return decode_head::<UnitColumnFeature>(&head, part, known).map(Some);
        }
        Ok(None)
    };
    read().transpose()
}

fn decode_head<'p, F: FeatureForm + DeserializeOwned>(
    head: &[u8],
    part: &dyn Fn(&str) -> Option<&'p [u8]>,
    known: &dyn Fn(u32) -> Option<Dictionary>,
) -> Result<EntityState, CodecError> {
    let head: Head<'_, F> = postcard::from_bytes(head)?;
    let mut state = decode_envelope(&head.wire)?;
    decode_features(&head.wire.texts, &head.wire.features, STATE_VERSION, &mut state.features)?;
    for place in &head.parts {
        let name = text_at(&head.wire.texts, *place)?;
        let value = part(name).ok_or_else(|| CodecError::MissingPart(name.to_string()))?;
        // A part is in whichever layout wrote it last: one a change did not reach stays in the
        // layout of an earlier head.
        if let Some(body) = COLUMNS.part.unpack(value, known)? {
            decode_part::<ColumnFeature>(&body, &mut state)?;
        } else if let Some(body) = UNIT_COLUMNS.part.unpack(value, known)? {
            decode_part::<UnitColumnFeature>(&body, &mut state)?;
        } else {
            return Err(value
                .first()
                .map_or(CodecError::Empty, |v| CodecError::UnknownVersion(*v)));
        }
        // The feature the part holds must be the one the head names.
        let name = state.features.mark_stored_named(name).ok_or(CodecError::PartName)?;
        state.stored_parts.0.push(name);
    }
    Ok(state)
}

/// Adds the feature of the part `body` (without its version byte, decompressed) to `state`.
fn decode_part<F: FeatureForm + DeserializeOwned>(
    body: &[u8],
    state: &mut EntityState,
) -> Result<(), CodecError> {
    let part: Part<'_, F> = postcard::from_bytes(body)?;
    let feature = std::slice::from_ref(&part.feature);
    decode_features(&part.texts, feature, STATE_VERSION, &mut state.features)
}

#[cfg(test)]
#[path = "tests_parts.rs"]
mod tests;
