//! Decoding Debezium's change events: the envelope ([`envelope`], JsonConverter without schemas,
//! read by [`json`]'s pull reader), the row images by their declared columns ([`rows`]), and the
//! change they make to a declared source ([`change`]). Pure: bytes in, a [`crate::features::SourceChange`] or a
//! [`DecodeError`] out; the Kafka source and `persona rebuild` both feed it.

pub mod change;
pub mod envelope;
mod json;
pub mod rows;
#[cfg(test)]
mod tests;

pub use envelope::{CdcMessage, DecodeError};
