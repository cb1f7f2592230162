//! The legacy tables features are computed from, their columns, and one decoded change to them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A table whose changes feed features. `products` is not one: it is the dimension features
/// join through (see [`crate::features::Catalog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceTable {
    UserActivity,
    CartItems,
    Orders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    /// `INTEGER`/`BIGINT`: a JSON number.
    Integer,
    /// `NUMERIC`: a decimal string (`decimal.handling.mode=string`).
    Number,
    Time,
}

impl ColumnType {
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Integer | Self::Number)
    }
}

pub struct TableSchema {
    pub table: SourceTable,
    pub name: &'static str,
    /// Primary key columns: a row's identity across its updates.
    pub key: &'static [&'static str],
    /// The event time of a row. Rows without one (NULL) use the commit time.
    pub time_column: Option<&'static str>,
    pub columns: &'static [(&'static str, ColumnType)],
}

use ColumnType::{Integer, Number, Text, Time};

pub const SCHEMAS: [TableSchema; 3] = [
    TableSchema {
        table: SourceTable::UserActivity,
        name: "user_activity",
        key: &["id"],
        time_column: Some("activity_timestamp"),
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("activity_type", Text),
            ("product_id", Text),
            ("activity_timestamp", Time),
        ],
    },
    TableSchema {
        table: SourceTable::CartItems,
        name: "cart_items",
        key: &["user_id", "product_id"],
        time_column: Some("updated_at"),
        columns: &[
            ("user_id", Text),
            ("product_id", Text),
            ("quantity", Integer),
            ("unit_price", Number),
            ("updated_at", Time),
        ],
    },
    TableSchema {
        table: SourceTable::Orders,
        name: "orders",
        key: &["id"],
        time_column: Some("created_at"),
        columns: &[
            ("id", Integer),
            ("user_id", Text),
            ("product_id", Text),
            ("quantity", Integer),
            ("amount", Number),
            ("status", Text),
            ("created_at", Time),
        ],
    },
];

impl SourceTable {
    pub const ALL: [SourceTable; 3] =
        [SourceTable::UserActivity, SourceTable::CartItems, SourceTable::Orders];

    pub fn schema(self) -> &'static TableSchema {
        match self {
            Self::UserActivity => &SCHEMAS[0],
            Self::CartItems => &SCHEMAS[1],
            Self::Orders => &SCHEMAS[2],
        }
    }

    pub fn name(self) -> &'static str {
        self.schema().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|table| table.name() == name)
    }

    pub fn column(self, name: &str) -> Option<ColumnType> {
        self.schema().columns.iter().find(|(column, _)| *column == name).map(|(_, kind)| *kind)
    }
}

impl fmt::Display for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Null,
    Text(String),
    Number(Decimal),
    /// Microseconds since the epoch.
    Time(i64),
}

impl Scalar {
    /// The value as features store and compare it; `None` for NULL.
    pub fn as_key(&self) -> Option<String> {
        match self {
            Self::Null => None,
            Self::Text(text) => Some(text.clone()),
            Self::Number(number) => Some(number.normalize().to_string()),
            Self::Time(micros) => Some(micros.to_string()),
        }
    }

    pub fn as_number(&self) -> Option<Decimal> {
        match self {
            Self::Number(number) => Some(*number),
            _ => None,
        }
    }
}

/// One row image of a source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    /// Primary key, joined with `/`: identifies the row across its updates.
    pub key: String,
    pub columns: BTreeMap<&'static str, Scalar>,
    /// Event time: the table's time column, or the commit time where that is NULL.
    pub time: DateTime<Utc>,
}

impl SourceRow {
    pub fn get(&self, column: &str) -> &Scalar {
        self.columns.get(column).unwrap_or(&Scalar::Null)
    }

    pub fn text(&self, column: &str) -> Option<&str> {
        match self.get(column) {
            Scalar::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// Where a change sits in the source database's history, as Debezium reports it:
/// `(commit LSN of the transaction before, LSN of the change, rank of the event)`.
///
/// Postgres LSNs of changes are not monotonic in delivery order (transactions interleave and
/// are delivered in commit order), but the last commit LSN grows with every transaction and the
/// change LSN grows within one, so the pair is increasing in delivery order. A primary-key
/// update is a delete and an insert at the same LSN: the rank (delete 0, other 1) orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position(pub i64, pub i64, pub u8);

/// One run of Debezium's snapshot: `(snapshot LSN, snapshot transaction id)`.
///
/// Every row a run reads carries both, and a later run (the connector restarted mid-snapshot,
/// its offsets reset, or `snapshot.mode` re-triggered) has a later LSN and a newer transaction.
/// A run reads each table whole at its LSN, and streaming resumes after it, so a stream's newest
/// run supersedes everything its stream delivered before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotRun(pub i64, pub i64);

/// A snapshot run and when it began (Debezium's clock, milliseconds since the epoch): changes
/// Debezium processed before then are included in what the run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    pub run: SnapshotRun,
    pub at_ms: i64,
    /// When Debezium emitted one of the run's reads (its clock): the run's database snapshot was
    /// taken before, so a change committed later was not read by it (see
    /// [`crate::features::overlap`]). `None` for runs recorded before persona kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ms: Option<i64>,
}

/// A snapshot read (`op: "r"`): the row as its run read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRead {
    pub start: RunStart,
    /// Where the read sits in its run's delivery on its stream (its Kafka offset): the same read
    /// delivered again has the same place. For a read re-driven from the dead-letter topic, an
    /// identity of the dead letter instead (see [`SourceChange::replay`]).
    pub seq: i64,
}

/// The newest TRUNCATE of a table: where it sits, in the snapshot run era it happened in (a later
/// run reads the table again and makes it moot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    pub position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<SnapshotRun>,
}

/// How far one partition of a table has applied streamed changes, and the TRUNCATE they were
/// applied after (in the run era they belong to). A partition whose changes went past a TRUNCATE
/// it did not know of yet holds shares it cannot split: it must be read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct High {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<SnapshotRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Position>,
    pub position: Position,
}

impl High {
    /// True when this partition applied changes after `truncation` without knowing of it.
    pub fn missed(&self, truncation: &Truncation) -> bool {
        self.run == truncation.run
            && self.cut.is_none_or(|cut| cut < truncation.position)
            && self.position > truncation.position
    }
}

/// One decoded change to a source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChange {
    pub table: SourceTable,
    pub before: Option<SourceRow>,
    pub after: Option<SourceRow>,
    /// `None` for snapshot reads, which all share one position (see `snapshot`).
    pub position: Option<Position>,
    /// Set for snapshot reads.
    pub snapshot: Option<SnapshotRead>,
    /// The newest snapshot run of the change's table when the change is applied (a read's own
    /// run, or a later one), set by whoever knows the table: state from an older run is
    /// superseded, and a streamed change processed before the run began is obsolete.
    pub run: Option<RunStart>,
    /// When Debezium processed the change (its clock, milliseconds since the epoch).
    pub processed_ms: Option<i64>,
    /// The position of the newest TRUNCATE of the change's table in the current run's era, set
    /// by whoever knows the table: what changes at or before it contributed is gone.
    pub truncated: Option<Position>,
    /// This change is a TRUNCATE of `table` (no row images): it reaches no share itself, and
    /// whoever knows the table records it as the table's newest truncation.
    pub truncate: bool,
    /// Commit time in Postgres.
    pub committed_at: Option<DateTime<Utc>>,
    /// Re-driven from the dead-letter topic: its position may be behind what its stream has
    /// applied since, and it is applied once all the same.
    pub replay: bool,
    /// Streamed, but already in what its snapshot run read (committed after the run began and
    /// before its database snapshot; see [`crate::features::overlap`]): only its position is
    /// recorded.
    pub overlapped: bool,
}
