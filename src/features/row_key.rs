//! A row's identity across its updates: its primary key as text (columns joined with `/`),
//! kept without a heap allocation where it can be.
//!
//! Facts are kept by row key, three times per product view with the shipped definitions, and
//! the reference tables key their rows by `uuid`: a 36-byte `String` per fact, allocated on
//! every insert and chased through a pointer on every comparison, encode included (BENCHMARKS.md,
//! "After leaving unfed states alone"). A UUID in the canonical text Postgres prints is kept as
//! its 16 bytes, any other key inline up to 24 bytes (`CompactString`).
//!
//! The text is the key's meaning: two keys are equal, and ordered, as their texts are (the
//! newest-first tie-break of `last` and `last_n` compares row keys), which holds because the
//! canonical text of a UUID always becomes [`Repr::Uuid`] and orders as its bytes do.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of a UUID's canonical text.
const UUID_TEXT: usize = 36;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RowKey(Repr);

/// What a [`RowKey`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm<'a> {
    /// The bytes of a UUID, the key's text being their canonical text.
    Uuid(&'a [u8; 16]),
    Text(&'a str),
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Uuid([u8; 16]),
    Text(CompactString),
}

/// The key of a fact kept without its row's (see [`RowKey::none`]).
static NONE: RowKey = RowKey(Repr::Text(CompactString::const_new("")));

impl RowKey {
    pub fn new(text: &str) -> Self {
        match canonical_uuid(text) {
            Some(bytes) => Self(Repr::Uuid(bytes)),
            None => Self(Repr::Text(text.into())),
        }
    }

    /// The key whose text is the canonical text of the UUID `bytes`.
    pub fn from_uuid(bytes: [u8; 16]) -> Self {
        Self(Repr::Uuid(bytes))
    }

    /// No key: a fact of a source whose rows carry their event time, which a retraction finds by
    /// its time and value (see [`crate::features::Facts`]). It is the empty text, which no row
    /// key is (decode refuses a row with an empty key column), and sorts before every key.
    pub fn none() -> &'static Self {
        &NONE
    }

    pub fn is_none(&self) -> bool {
        matches!(&self.0, Repr::Text(text) if text.is_empty())
    }

    /// How the key is kept: a UUID's bytes, or its text.
    pub fn form(&self) -> KeyForm<'_> {
        match &self.0 {
            Repr::Uuid(bytes) => KeyForm::Uuid(bytes),
            Repr::Text(text) => KeyForm::Text(text),
        }
    }

    pub fn as_text(&self) -> Cow<'_, str> {
        match &self.0 {
            Repr::Uuid(bytes) => Cow::Owned(uuid_text(bytes).as_str().to_string()),
            Repr::Text(text) => Cow::Borrowed(text),
        }
    }

    /// Heap bytes beside the key itself (for memory estimates).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Text(text) if text.is_heap_allocated() => text.len(),
            _ => 0,
        }
    }

    fn compare_text(&self, other: &str) -> Ordering {
        match &self.0 {
            Repr::Uuid(bytes) => uuid_text(bytes).as_str().cmp(other),
            Repr::Text(text) => text.as_str().cmp(other),
        }
    }
}

/// A UUID's bytes when `text` is one in the canonical text Postgres prints (lower-case hex,
/// hyphenated), so that printing them gives back the same text.
fn canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let canonical = text.len() == UUID_TEXT
        && text.bytes().enumerate().all(|(at, byte)| match at {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => matches!(byte, b'0'..=b'9' | b'a'..=b'f'),
        });
    if !canonical {
        return None;
    }
    uuid::Uuid::try_parse(text).ok().map(|uuid| *uuid.as_bytes())
}

/// The canonical text of a UUID, on the stack.
fn uuid_text(bytes: &[u8; 16]) -> UuidText {
    let mut text = [0; UUID_TEXT];
    uuid::Uuid::from_bytes(*bytes).hyphenated().encode_lower(&mut text);
    UuidText(text)
}

struct UuidText([u8; UUID_TEXT]);

impl UuidText {
    fn as_str(&self) -> &str {
        // Hex digits and hyphens only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Ord for RowKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // The canonical text is the bytes' hex digits in order, the hyphens at the same
            // places in both: the texts order as the bytes do.
            (Repr::Uuid(left), Repr::Uuid(right)) => left.cmp(right),
            (Repr::Text(left), Repr::Text(right)) => left.as_str().cmp(right.as_str()),
            (_, Repr::Uuid(right)) => self.compare_text(uuid_text(right).as_str()),
            (Repr::Uuid(_), Repr::Text(right)) => self.compare_text(right),
        }
    }
}

impl PartialOrd for RowKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<&str> for RowKey {
    fn eq(&self, other: &&str) -> bool {
        self.compare_text(other).is_eq()
    }
}

impl PartialEq<str> for RowKey {
    fn eq(&self, other: &str) -> bool {
        self.compare_text(other).is_eq()
    }
}

impl From<&str> for RowKey {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for RowKey {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(bytes) => f.write_str(uuid_text(bytes).as_str()),
            Repr::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_text().as_ref(), f)
    }
}

/// As its text, as the state's JSON form always wrote it.
impl Serialize for RowKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_text())
    }
}

impl<'de> Deserialize<'de> for RowKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::new(&text))
    }
}

/// Texts of row keys as persona makes them (UUIDs canonical or not as Postgres prints them,
/// composite keys, anything), and texts close to a UUID's, for tests here and of the codec.
#[cfg(test)]
pub fn key_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string()),
        any::<u128>()
            .prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string().to_uppercase()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string()),
        // Texts a UUID's bytes compare with: its text lengthened, shortened, altered.
        any::<u128>().prop_map(|n| format!("{}/7", uuid::Uuid::from_u128(n).hyphenated())),
        (any::<u128>(), 0..36usize)
            .prop_map(
                |(n, len)| uuid::Uuid::from_u128(n).hyphenated().to_string()[..len].to_string()
            ),
        (0..4u128, "[0-9a-f-]{1,3}").prop_map(|(n, tail)| format!(
            "{}{tail}",
            &uuid::Uuid::from_u128(n).hyphenated().to_string()[..33]
        )),
        "[0-9a-f-]{30,40}",
        "[a-z0-9/]{0,40}",
        ".{0,40}",
    ]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_canonical_uuid_is_kept_as_its_bytes_and_others_as_text() {
        let uuid = "0b6a3d1e-8f44-4c3a-9d7e-2f1c5a6b7c8d";
        assert!(matches!(RowKey::new(uuid).form(), KeyForm::Uuid(_)));
        assert_eq!(RowKey::new(uuid).to_string(), uuid);
        for other in [&uuid.to_uppercase(), "0b6a3d1e8f444c3a9d7e2f1c5a6b7c8d", "u-1/p-2"] {
            assert_eq!(RowKey::new(other).form(), KeyForm::Text(other));
        }
        assert_eq!(std::mem::size_of::<RowKey>(), 24, "inline, no larger than a String");
    }

    proptest! {
        #[test]
        fn keys_keep_their_text(text in key_text()) {
            let key = RowKey::new(&text);
            prop_assert_eq!(key.to_string(), text.clone());
            prop_assert_eq!(key.as_text(), text.as_str());
            let json = serde_json::to_string(&key).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&text).unwrap());
            prop_assert_eq!(serde_json::from_str::<RowKey>(&json).unwrap(), key);
        }

        #[test]
        fn keys_compare_as_their_texts_do(left in key_text(), right in key_text()) {
            let (l, r) = (RowKey::new(&left), RowKey::new(&right));
            prop_assert_eq!(l.cmp(&r), left.cmp(&right));
            prop_assert_eq!(l == r, left == right);
        }
    }
}
