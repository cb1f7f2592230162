//! The marks kept beside the shares they rule: in `<namespace>:runs`, which every read fetches,
//! a table's newest snapshot run (field `<table>`) and newest TRUNCATE (`<table>#truncate`); in
//! `<namespace>:highs`, which only ingest reads, how far each stream has applied
//! (`<table>/<partition>#high`) and its overlap with its table's newest snapshot run
//! (`<table>/<partition>#overlap`, see [`crate::features::overlap`]). Every mark but the overlap
//! only moves forward (`write_states.lua` compares them), since partitions see them at different
//! times; a stream's overlap is its owner's alone.

use std::collections::HashMap;

use bytes::Bytes;

use super::StoreError;
use crate::features::overlap::Overlap;
use crate::features::{High, RunStart, Truncation};

/// Each table's newest snapshot run, by table name.
pub type Runs = HashMap<String, RunStart>;

const TRUNCATE: &str = "#truncate";
const HIGH: &str = "#high";
const OVERLAP: &str = "#overlap";

pub(super) fn truncate_field(table: &str) -> String {
    format!("{table}{TRUNCATE}")
}

pub(super) fn high_field(stream: &str) -> String {
    format!("{stream}{HIGH}")
}

pub(super) fn overlap_field(stream: &str) -> String {
    format!("{stream}{OVERLAP}")
}

/// Marks read from, or to be recorded in, `<namespace>:runs`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableMarks {
    pub runs: Runs,
    /// The newest TRUNCATE of each table that has had one, by table name.
    pub truncations: HashMap<String, Truncation>,
    /// How far each stream (`<table>/<partition>`) has applied streamed changes.
    pub highs: HashMap<String, High>,
    /// Each stream's overlap with its table's newest snapshot run.
    pub overlaps: HashMap<String, Overlap>,
}

impl TableMarks {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.truncations.is_empty()
            && self.highs.is_empty()
            && self.overlaps.is_empty()
    }

    /// True when recording these marks changes what readers serve (a run or a TRUNCATE empties
    /// shares without touching them), so every L1 must be cleared.
    pub fn change_reads(&self) -> bool {
        !self.runs.is_empty() || !self.truncations.is_empty()
    }

    /// The `(field, json)` pairs to record.
    pub(super) fn encode(&self) -> Result<Vec<(String, String)>, StoreError> {
        fn json<T: serde::Serialize>(
            field: String,
            mark: &T,
        ) -> Result<(String, String), StoreError> {
            serde_json::to_string(mark)
                .map(|json| (field.clone(), json))
                .map_err(|source| StoreError::Encode { key: field, source })
        }
        let runs = self.runs.iter().map(|(table, run)| json(table.clone(), run));
        let truncations =
            self.truncations.iter().map(|(table, mark)| json(truncate_field(table), mark));
        let highs = self.highs.iter().map(|(stream, high)| json(high_field(stream), high));
        let overlaps =
            self.overlaps.iter().map(|(stream, overlap)| json(overlap_field(stream), overlap));
        runs.chain(truncations).chain(highs).chain(overlaps).collect()
    }
}

/// Reads the stored marks; an unreadable one is logged and left out (it only ever makes reads
/// or writes more conservative than they would be: a TRUNCATE or run not applied yet).
pub(super) fn decode_marks(fields: impl IntoIterator<Item = (String, Bytes)>) -> TableMarks {
    let mut marks = TableMarks::default();
    for (field, json) in fields {
        if let Some(table) = field.strip_suffix(TRUNCATE) {
            if let Some(mark) = decode(&field, &json) {
                marks.truncations.insert(table.to_string(), mark);
            }
        } else if let Some(stream) = field.strip_suffix(HIGH) {
            if let Some(mark) = decode(&field, &json) {
                marks.highs.insert(stream.to_string(), mark);
            }
        } else if let Some(stream) = field.strip_suffix(OVERLAP) {
            let mark = decode(&field, &json).unwrap_or_else(Overlap::unreadable);
            marks.overlaps.insert(stream.to_string(), mark);
        } else if let Some(run) = decode(&field, &json) {
            marks.runs.insert(field, run);
        }
    }
    marks
}

/// The hash a mark is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MarksHash {
    /// `<namespace>:runs`: tables' runs and TRUNCATEs.
    Runs,
    /// `<namespace>:highs`: streams' highs and overlaps.
    Highs,
}

impl MarksHash {
    fn of(field: &str) -> Self {
        match field.ends_with(HIGH) || field.ends_with(OVERLAP) {
            true => Self::Highs,
            false => Self::Runs,
        }
    }

    /// Its index among `write_states.lua`'s KEYS.
    pub(super) fn script_key(self) -> &'static str {
        match self {
            Self::Runs => "2",
            Self::Highs => "3",
        }
    }
}

/// The stored marks a batch is applied under, as read (a field not stored as `None`). A partition
/// owner keeps them between batches, so that a batch whose shares it keeps too needs no read: its
/// write is conditioned on them (`write_states.lua` compares every field first) and refused with
/// [`StoreError::MarksMoved`] when another writer moved one meanwhile, such as another partition
/// recording a TRUNCATE of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarksSeen {
    pub(super) fields: Vec<(MarksHash, String, Option<Bytes>)>,
}

impl MarksSeen {
    pub(super) fn read(fields: impl IntoIterator<Item = (String, Option<Bytes>)>) -> Self {
        let fields = fields
            .into_iter()
            .map(|(field, value)| (MarksHash::of(&field), field, value))
            .collect();
        Self { fields }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The marks these fields hold.
    pub fn marks(&self) -> TableMarks {
        decode_marks(
            self.fields
                .iter()
                .filter_map(|(_, field, value)| Some((field.clone(), value.clone()?))),
        )
    }

    /// What the fields hold once a write conditioned on them recorded `written` (each mark it
    /// records is later than the one seen, or an overlap, which is always set). A field this gets
    /// wrong costs the next batch a refused write and a fresh read, never a wrong answer.
    pub fn after(mut self, written: &TableMarks) -> Result<Self, StoreError> {
        for (field, json) in written.encode()? {
            let value = Some(Bytes::from(json));
            match self.fields.iter_mut().find(|(_, seen, _)| *seen == field) {
                Some((_, _, seen)) => *seen = value,
                None => self.fields.push((MarksHash::of(&field), field, value)),
            }
        }
        Ok(self)
    }
}

fn decode<T: serde::de::DeserializeOwned>(field: &str, json: &[u8]) -> Option<T> {
    match serde_json::from_slice(json) {
        Ok(mark) => Some(mark),
        Err(error) => {
            tracing::error!(field, error = %error, "unreadable table mark in redis; ignoring it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{MarksHash, MarksSeen, TableMarks};
    use crate::features::overlap::Overlap;
    use crate::features::{High, Position, Truncation};

    fn high(at: i64) -> High {
        High { run: None, cut: None, position: Position(at, at, 1) }
    }

    /// As `FeatureStore::load_for_write` reads them: a stored high, no run, no TRUNCATE, no
    /// overlap.
    fn read() -> MarksSeen {
        let stored = serde_json::to_vec(&high(10)).expect("json");
        MarksSeen::read([
            ("orders".to_string(), None),
            ("orders#truncate".to_string(), None),
            ("orders/1#high".to_string(), Some(Bytes::from(stored))),
            ("orders/1#overlap".to_string(), None),
        ])
    }

    #[test]
    fn marks_are_checked_in_the_hash_that_keeps_them() {
        let hashes: Vec<MarksHash> = read().fields.iter().map(|(hash, _, _)| *hash).collect();
        use MarksHash::{Highs, Runs};
        assert_eq!(hashes, [Runs, Runs, Highs, Highs]);
        assert_eq!(read().marks().highs.get("orders/1"), Some(&high(10)));
        assert!(read().marks().truncations.is_empty());
    }

    /// After a write, the marks seen are what the write left: the high and overlap it recorded,
    /// the rest as read; what the next batch decodes from them is what it would read.
    #[test]
    fn marks_after_a_write_hold_what_it_recorded() {
        let written = TableMarks {
            highs: [("orders/1".to_string(), high(20))].into(),
            overlaps: [("orders/1".to_string(), Overlap::default())].into(),
            ..TableMarks::default()
        };
        let after = read().after(&written).expect("encodes");
        assert_eq!(after.fields.len(), 4, "no field added or lost: {after:?}");
        let marks = after.marks();
        assert_eq!(marks.highs.get("orders/1"), Some(&high(20)));
        assert_eq!(marks.overlaps.get("orders/1"), Some(&Overlap::default()));
        assert!(marks.runs.is_empty() && marks.truncations.is_empty());
        let stored = |field: &str| {
            after.fields.iter().find(|(_, f, _)| f == field).and_then(|(_, _, v)| v.clone())
        };
        let encoded: std::collections::HashMap<String, String> =
            written.encode().expect("encodes").into_iter().collect();
        assert_eq!(stored("orders/1#high"), Some(Bytes::from(encoded["orders/1#high"].clone())));
        assert_eq!(stored("orders#truncate"), None);

        let truncated = TableMarks {
            truncations: [(
                "orders".to_string(),
                Truncation { position: Position(5, 5, 1), run: None },
            )]
            .into(),
            ..TableMarks::default()
        };
        assert!(truncated.change_reads(), "a TRUNCATE written is re-read, not kept");
    }
}
