//! Layout versions 12, 13, 16 and 19: a head and a part as versions 7, 9, 15 and 18 write them,
//! but each zstd frame compressed with a dictionary trained on the deployment's own shares (12 and
//! 13 are still read; 16 and 19 are written).
//!
//! A user's share is a few kilobytes, and zstd, which learns as it reads, has read little of it
//! before it is over: the stream and feature names, the filters' values, the ids and the shape
//! of the columns that every share repeats are paid for again in each one. A dictionary trained
//! on shares this deployment wrote holds them once, outside every value. A median simulator user
//! then stores 0.85× the bytes (BENCHMARKS.md, "A dictionary trained on the shares").
//!
//! A frame names its dictionary by the id zstd gives it (a hash of its content), so a reader
//! knows which one it needs before reading anything else; the store keeps every dictionary in
//! Redis by that id (see `store::dictionaries`), and refuses to write a value with one before
//! Redis holds it. A value whose dictionary is unknown is [`CodecError::UnknownDictionary`]: the
//! store reads from Redis the dictionaries a read's values name before it decodes them.

use std::sync::Arc;

use super::{CodecError, UNIT_HEAD_VERSION_DICTIONARY, UNIT_PART_VERSION_DICTIONARY};

/// A head compressed with a dictionary (version 7's content).
pub const HEAD_VERSION_DICTIONARY: u8 = 12;
/// A part compressed with a dictionary (version 9's content).
pub const PART_VERSION_DICTIONARY: u8 = 13;

/// The largest dictionary trained. What a dictionary gains is the names and the shape every
/// share repeats: 4 KiB gained what 110 KiB did on the simulator's users (BENCHMARKS.md).
const DICTIONARY_MAX_BYTES: usize = 16 * 1024;

/// A zstd dictionary, and the id its frames name it by.
#[derive(Clone)]
pub struct Dictionary {
    id: u32,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dictionary({}, {} bytes)", self.id, self.bytes.len())
    }
}

impl Dictionary {
    /// A dictionary as zstd's trainer wrote it; refused when it is not one (it has no id).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        let id =
            zstd::zstd_safe::get_dict_id_from_dict(bytes).ok_or(CodecError::NotADictionary)?.get();
        Ok(Self { id, bytes: bytes.into() })
    }

    /// A dictionary trained on `samples` (uncompressed heads and parts, as
    /// [`share_samples`](super::share_samples) gives them).
    pub fn train(samples: &[Vec<u8>]) -> Result<Self, CodecError> {
        let bytes = zstd::dict::from_samples(samples, DICTIONARY_MAX_BYTES)
            .map_err(|error| CodecError::Training(error.to_string()))?;
        Self::from_bytes(&bytes)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The dictionary `value` (a stored head or part) was compressed with, if any.
pub fn dictionary_of(value: &[u8]) -> Option<u32> {
    match value.split_first() {
        Some((
            &(HEAD_VERSION_DICTIONARY
            | PART_VERSION_DICTIONARY
            | UNIT_HEAD_VERSION_DICTIONARY
            | UNIT_PART_VERSION_DICTIONARY),
            frame,
        )) => {
            // A frame that names none is malformed, and reading it says so.
            zstd::zstd_safe::get_dict_id_from_frame(frame).map(|id| id.get())
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "tests_dictionary.rs"]
mod tests;
