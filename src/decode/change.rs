//! A Debezium change event of a declared source as a [`SourceChange`]: which source it is, its
//! row images decoded by the source's declared columns ([`super::rows`]), and where it sits in
//! the database's history (its position, or the snapshot run that read it).

use std::borrow::Cow;

use super::envelope::{ChangeEvent, DecodeError, Op};
use super::rows;
use crate::features::{FeatureSet, Position, RunStart, SnapshotRead, SnapshotRun, SourceChange};

/// Debezium's `source.sequence`, `["<last commit lsn>","<lsn>"]`, as a [`Position`].
fn position(event: &ChangeEvent) -> Result<Option<Position>, DecodeError> {
    if event.op == Op::Read {
        return Ok(None);
    }
    let rank = u8::from(event.op != Op::Delete);
    let invalid = |reason: String| DecodeError::InvalidField { field: "source.sequence", reason };
    let Some([last_commit, change]) = event.source.sequence().map_err(invalid)? else {
        return Ok(event.source.lsn.map(|lsn| Position(0, lsn, rank)));
    };
    let number = |part: Option<Cow<str>>| -> Result<i64, DecodeError> {
        match part {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| invalid(format!("{text:?} is not an LSN"))),
        }
    };
    let lsn = match change {
        Some(change) => number(Some(change))?,
        None => {
            event.source.lsn.ok_or_else(|| invalid("names no LSN, nor does source.lsn".into()))?
        }
    };
    Ok(Some(Position(number(last_commit)?, lsn, rank)))
}

/// A change event of a declared source as a [`SourceChange`]; `None` for other tables and for
/// logical messages.
pub fn source_change(
    set: &FeatureSet,
    event: &ChangeEvent,
) -> Result<Option<SourceChange>, DecodeError> {
    let Some(source) =
        event.table().and_then(|table| set.source_of_table(event.source.schema.as_deref(), table))
    else {
        return Ok(None);
    };
    if event.op == Op::Message {
        return Ok(None);
    }
    let committed_ms = event.source.ts_ms;
    let before = match &event.before {
        Some(row) => Some(rows::source_row(source, row, committed_ms, None)?),
        None => None,
    };
    let after = match (&event.after, event.op) {
        (Some(row), op) if op != Op::Delete => {
            Some(rows::source_row(source, row, committed_ms, before.as_ref())?)
        }
        _ => None,
    };
    Ok(Some(SourceChange {
        table: source.name,
        before,
        after,
        position: position(event)?,
        snapshot: snapshot_start(event)?.map(|start| SnapshotRead { start, seq: 0 }),
        run: None,
        processed_ms: event.ts_ms,
        truncated: None,
        truncate: event.op == Op::Truncate,
        committed_ms,
        replay: false,
        overlapped: false,
    }))
}

/// The snapshot run a read belongs to, and when it began (`None` for streamed changes).
fn snapshot_start(event: &ChangeEvent) -> Result<Option<RunStart>, DecodeError> {
    if event.op != Op::Read {
        return Ok(None);
    }
    if event.source.snapshot.as_deref() == Some("incremental") {
        return Err(DecodeError::IncrementalSnapshot);
    }
    let lsn = event.source.lsn.ok_or(DecodeError::MissingField("source.lsn"))?;
    let at_ms = event.source.ts_ms.ok_or(DecodeError::MissingField("source.ts_ms"))?;
    let run = SnapshotRun(lsn, event.source.tx_id.unwrap_or(0));
    Ok(Some(RunStart { run, at_ms, read_ms: event.ts_ms }))
}
