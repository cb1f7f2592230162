//! Where a snapshot run and streaming overlap, and which streamed changes the run already read.
//! Pure: a stream's [`Overlap`] and its row memory in, verdicts and the updates to write out.
//!
//! Debezium records a run's LSN when the run begins and streams from that LSN once the run is
//! done, but reads the tables later, in a database snapshot of its own. Over a slot Debezium
//! creates, that snapshot is the slot's own and nothing overlaps. Over an existing slot (a
//! connector restarted mid-snapshot, its offsets reset, `snapshot.mode` re-triggered) every
//! transaction committed between the LSN and the database snapshot is both read and streamed,
//! and neither the LSN, the transaction ids nor the event times tell which.
//!
//! The rows do. While a stream may still deliver such changes, it remembers the image of every
//! row as its shares count it (a 64-bit hash of the columns, by row key): first as the run read
//! it, then as streamed changes move it. A streamed change is applied only when its before image
//! is the remembered one (no row, for an insert); otherwise the run read the row after the
//! change, and the change is *overlapped*: its position is recorded and nothing else. Whatever
//! point of a row's history the run read, this applies exactly the changes after that point
//! (the applied ones chain from the read image to the newest one), so the row counts once.
//!
//! The memory is needed only for changes committed before the run's database snapshot, which
//! came before any of its reads was emitted: a change committed more than [`CLOCK_SLACK_MS`]
//! after the run's first read (its `read_ms`) closes the window, and the memory is dropped.
//! The verdicts (overlapped positions) are kept until the next run, so that a stream read
//! again from its start, or a batch delivered again, reaches the same ones.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::row_key::RowKey;
use super::source::{Position, Scalar, SnapshotRun, SourceChange, SourceRow};

/// How far Postgres's clock (commit times) may run ahead of Kafka Connect's (when Debezium
/// emitted a read) without a change committed before a run's database snapshot looking later.
/// Longer only keeps the row memory a little longer.
pub const CLOCK_SLACK_MS: i64 = 30_000;

/// One stream's overlap with its table's newest snapshot run, as stored beside the stream's
/// high mark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    /// The run: everything else is about it. `None`: no run seen yet (or reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<SnapshotRun>,
    /// Changes committed up to this time (milliseconds, plus [`CLOCK_SLACK_MS`]) may be in what
    /// the run read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// The row memory is kept: the window has not closed yet.
    #[serde(default)]
    pub open: bool,
    /// The furthest read (its place in the run's delivery) remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<i64>,
    /// The furthest streamed change given a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<Position>,
    /// The TRUNCATE the memory comes after: it emptied the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Position>,
    /// Stored, but unreadable: the run under way is not checked (its memory is lost), the next
    /// one is.
    #[serde(skip)]
    pub unreadable: bool,
}

impl Overlap {
    pub fn unreadable() -> Self {
        Self { unreadable: true, ..Self::default() }
    }
}

/// A row image as the memory keeps it: a hash of its columns (not of the event time derived
/// from them, which for a NULL time column is the commit time of whichever event carried it).
pub fn image_hash(row: &SourceRow) -> u64 {
    let mut hasher = Xxh3::new();
    // By name, whatever order the row holds them in: remembered hashes outlive a process.
    let mut columns: Vec<_> = row.columns.iter().collect();
    columns.sort_unstable_by_key(|(column, _)| *column);
    for (column, value) in columns {
        hasher.update(column.as_bytes());
        match value {
            Scalar::Null => hasher.update(&[0]),
            Scalar::Text(text) => {
                hasher.update(&[1]);
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            Scalar::Number(number) => {
                hasher.update(&[2]);
                hasher.update(number.normalize().to_string().as_bytes());
            }
            Scalar::Time(micros) => {
                hasher.update(&[3]);
                hasher.update(&micros.to_le_bytes());
            }
        }
        hasher.update(&[0xff]);
    }
    hasher.digest()
}

/// What a batch needs loaded to be decided: the memory of these rows, and whether these
/// positions were overlapped when first decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub rows: Vec<RowKey>,
    pub positions: Vec<Position>,
}

/// What was loaded for [`Wanted`].
#[derive(Debug, Default)]
pub struct Known {
    /// Remembered images, by row key (rows not remembered are absent).
    pub rows: HashMap<RowKey, u64>,
    /// The positions among those asked for that were overlapped.
    pub overlapped: HashSet<Position>,
}

/// What deciding a batch changes in the stream's stored overlap.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OverlapWrites {
    /// The overlap's new mark, when it changed.
    pub mark: Option<Overlap>,
    /// Forget the row memory before setting `rows` (a new run, a TRUNCATE, or the window
    /// closed: then `rows` is empty).
    pub clear_rows: bool,
    /// Forget the overlapped positions before `overlapped` (a new run).
    pub clear_overlapped: bool,
    /// Row memory to set (`Some`) or forget (`None`), by row key.
    pub rows: Vec<(RowKey, Option<u64>)>,
    pub overlapped: Vec<Position>,
}

impl OverlapWrites {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The streamed changes whose verdict is not settled by position alone.
fn streamed(change: &SourceChange) -> Option<Position> {
    if change.replay || change.snapshot.is_some() || change.truncate {
        return None;
    }
    change.position
}

fn within(until_ms: Option<i64>, change: &SourceChange) -> bool {
    match (until_ms, change.committed_ms) {
        (Some(until), Some(committed)) => committed <= until.saturating_add(CLOCK_SLACK_MS),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The memory and verdicts `changes` (one stream's, in delivery order) need, given the stream's
/// stored `overlap`. Conservative: it may ask for more than [`decide`] reads.
pub fn wanted(overlap: &Overlap, changes: &[SourceChange]) -> Wanted {
    let mut wanted = Wanted::default();
    for change in changes {
        let Some(start) = change.run else { continue };
        if overlap.run != Some(start.run) {
            // A newer run begins in this batch (its memory starts empty), or an older one's
            // change, which is obsolete.
            if overlap.run.is_none_or(|run| run < start.run) {
                break;
            }
            continue;
        }
        let Some(position) = streamed(change) else { continue };
        if overlap.decided.is_some_and(|decided| position <= decided) {
            wanted.positions.push(position);
        } else if overlap.open && within(overlap.until_ms, change) {
            for row in [&change.before, &change.after].into_iter().flatten() {
                wanted.rows.push(row.key.clone());
            }
        }
    }
    wanted.rows.sort();
    wanted.rows.dedup();
    wanted
}

/// Gives every streamed change of `changes` (one stream's, in delivery order, labelled with
/// their run and TRUNCATE) its verdict, setting `overlapped` on those the run had read, and
/// returns what to store. `overlap` is updated in place.
pub fn decide(overlap: &mut Overlap, known: &Known, changes: &mut [SourceChange]) -> OverlapWrites {
    let mut writes = OverlapWrites::default();
    let before = overlap.clone();
    // Memory as of this batch: what it set over what was loaded (unless cleared since).
    let mut memory: HashMap<RowKey, Option<u64>> = HashMap::new();
    let mut loaded_valid = true;
    for change in changes.iter_mut() {
        let Some(start) = change.run else { continue };
        if change.replay {
            continue;
        }
        if overlap.unreadable {
            *overlap = Overlap { run: Some(start.run), ..Overlap::default() };
        }
        if overlap.run.is_none_or(|run| run < start.run) {
            *overlap = Overlap {
                run: Some(start.run),
                until_ms: start.read_ms,
                open: start.read_ms.is_some(),
                ..Overlap::default()
            };
            writes.clear_rows = true;
            writes.clear_overlapped = true;
            writes.overlapped.clear();
            memory.clear();
            loaded_valid = false;
        }
        if overlap.run != Some(start.run) {
            continue;
        }
        if let Some(position) = streamed(change)
            && overlap.decided.is_some_and(|decided| position <= decided)
        {
            // Decided when first delivered: the same verdict again.
            change.overlapped =
                known.overlapped.contains(&position) || writes.overlapped.contains(&position);
            continue;
        }
        if !overlap.open {
            continue;
        }
        if let Some(cut) = change.truncated
            && overlap.cut.is_none_or(|known| known < cut)
        {
            // The TRUNCATE emptied the table: nothing is counted any more.
            overlap.cut = Some(cut);
            writes.clear_rows = true;
            memory.clear();
            loaded_valid = false;
        }
        if let Some(read) = change.snapshot {
            // Reads of the run all come before anything it streams, a TRUNCATE included.
            if read.start.run != start.run
                || change.truncated.is_some()
                || overlap.read.is_some_and(|seen| read.seq <= seen)
            {
                continue;
            }
            overlap.read = Some(read.seq);
            if let Some(row) = &change.after {
                memory.insert(row.key.clone(), Some(image_hash(row)));
            }
            continue;
        }
        let Some(position) = streamed(change) else { continue };
        if change.processed_ms.is_some_and(|processed| processed < start.at_ms) {
            // Streamed before the run began, in the sequence of positions before it: obsolete
            // (see `state::apply`), and no mark for what the run streams.
            continue;
        }
        overlap.decided = Some(position);
        if change.truncated.is_some_and(|cut| position <= cut) {
            // Not applied at all (see `state::apply`).
            continue;
        }
        if !within(overlap.until_ms, change) {
            // Committed after the run's database snapshot: so is everything after it.
            overlap.open = false;
            writes.clear_rows = true;
            memory.clear();
            continue;
        }
        let remembered = |key: &RowKey, memory: &HashMap<RowKey, Option<u64>>| match memory.get(key)
        {
            Some(image) => *image,
            None if loaded_valid => known.rows.get(key).copied(),
            None => None,
        };
        let old = change.before.as_ref();
        let new = change.after.as_ref();
        let Some(key) = old.or(new).map(|row| row.key.clone()) else { continue };
        let moves_from_here = remembered(&key, &memory) == old.map(image_hash)
            && new.is_none_or(|row| row.key == key || remembered(&row.key, &memory).is_none());
        if moves_from_here {
            if let Some(row) = old {
                memory.insert(row.key.clone(), None);
            }
            if let Some(row) = new {
                memory.insert(row.key.clone(), Some(image_hash(row)));
            }
        } else {
            change.overlapped = true;
            writes.overlapped.push(position);
        }
    }
    writes.rows = memory.into_iter().collect();
    writes.rows.sort();
    if *overlap != before {
        writes.mark = Some(overlap.clone());
    }
    writes
}
