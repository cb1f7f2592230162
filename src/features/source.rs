//! The legacy tables features are computed from, their columns, and one decoded change to them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use ustr::Ustr;

use super::columns::Columns;
use super::entity::Entity;
pub use super::intern::intern;
use super::row_key::RowKey;

/// A declared source: a table whose changes feed features, by the name the definitions give it
/// (see [`SourceSchema`]). Dimensions are not sources: features join through them (see
/// [`crate::features::Catalog`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceTable(Ustr);

impl SourceTable {
    pub fn new(name: &str) -> Self {
        Self(Ustr::from(name))
    }

    pub fn name(self) -> &'static str {
        self.0.as_str()
    }
}

impl PartialOrd for SourceTable {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SourceTable {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl fmt::Debug for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceTable({})", self.name())
    }
}

impl fmt::Display for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for SourceTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SourceTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::new(&name))
    }
}

/// A column's Postgres type, as declared, which says how Debezium sends its values (Postgres
/// connector, JsonConverter without schemas, `decimal.handling.mode=string`,
/// `time.precision.mode=adaptive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `TEXT`, `VARCHAR`, `CHAR`, enum types: a string.
    Text,
    /// `UUID`: a string.
    Uuid,
    /// `JSON`/`JSONB`: a string, the document as Postgres prints it.
    Json,
    /// `SMALLINT`/`INTEGER`/`BIGINT`: a JSON number.
    Integer,
    /// `NUMERIC`: a decimal string.
    Number,
    /// `REAL`/`DOUBLE PRECISION`: a JSON number.
    Float,
    /// `BOOLEAN`: `true`/`false`, kept as the text Postgres casts it to.
    Boolean,
    /// `TIMESTAMP` (precision 4 to 6, the default): microseconds since the epoch, read as UTC.
    Timestamp,
    /// `TIMESTAMP(0)` to `TIMESTAMP(3)`: milliseconds since the epoch, read as UTC.
    TimestampMillis,
    /// `TIMESTAMPTZ`: an ISO-8601 string.
    Timestamptz,
    /// `DATE`: days since the epoch; its midnight UTC.
    Date,
    /// An array of any of the above: a JSON array, kept as its JSON text.
    Array(ElementType),
}

/// The element type of an array column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    Text,
    Integer,
    Number,
    Boolean,
}

impl ColumnType {
    /// The declared type named by `name` (`text`, `bigint`, `numeric`, `timestamptz`, `text[]`, …).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        if let Some(element) = name.strip_suffix("[]") {
            let element = match Self::parse(element)? {
                Self::Text | Self::Uuid => ElementType::Text,
                Self::Integer => ElementType::Integer,
                Self::Number => ElementType::Number,
                Self::Boolean => ElementType::Boolean,
                _ => return None,
            };
            return Some(Self::Array(element));
        }
        Some(match name.as_str() {
            "text" | "varchar" | "character varying" | "char" | "character" | "enum" => Self::Text,
            "uuid" => Self::Uuid,
            "json" | "jsonb" => Self::Json,
            "smallint" | "integer" | "int" | "bigint" | "int2" | "int4" | "int8" => Self::Integer,
            "numeric" | "decimal" => Self::Number,
            "real" | "double precision" | "float4" | "float8" => Self::Float,
            "boolean" | "bool" => Self::Boolean,
            "timestamp" | "timestamp(4)" | "timestamp(5)" | "timestamp(6)" => Self::Timestamp,
            "timestamp(0)" | "timestamp(1)" | "timestamp(2)" | "timestamp(3)" => {
                Self::TimestampMillis
            }
            "timestamptz" | "timestamp with time zone" => Self::Timestamptz,
            "date" => Self::Date,
            _ => return None,
        })
    }

    /// The names [`Self::parse`] accepts, for error messages.
    pub const NAMES: &'static str = "text, varchar, enum, uuid, json, jsonb, smallint, integer, \
        bigint, numeric, real, double precision, boolean, timestamp, timestamp(3), timestamptz, \
        date, or an array of text, integer, numeric or boolean (`text[]`)";

    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Integer | Self::Number | Self::Float)
    }

    /// Whether values are times (and the column can be a source's event time).
    pub fn is_time(self) -> bool {
        matches!(self, Self::Timestamp | Self::TimestampMillis | Self::Timestamptz | Self::Date)
    }
}

/// A declared source table: where its changes come from, what identifies its rows, which
/// entities they belong to, and the type of every column features may read.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSchema {
    pub name: SourceTable,
    /// The Postgres schema and table, as Debezium names them in `source.schema`/`source.table`.
    pub schema: &'static str,
    pub table: &'static str,
    /// Primary key columns: a row's identity across its updates.
    pub key: Vec<&'static str>,
    /// The event time of a row; `None`: its commit time.
    pub time_column: Option<&'static str>,
    /// Where the time column is NULL: the commit time stands in (`true`), or the row is refused.
    pub time_from_commit_if_null: bool,
    pub columns: Vec<(&'static str, ColumnType)>,
    /// The column holding each entity's id, for the entities the rows belong to.
    pub entities: Vec<(Entity, &'static str)>,
    /// The entity the change events are keyed by (Debezium's `message.key.columns`): a row
    /// without it cannot be placed and is refused.
    pub keyed_by: Entity,
    /// Coded values read as names (`behavior` 1 → `VIEW_PRODUCT`): column → (value → name).
    /// Values without a name are kept as they are.
    pub mappings: Vec<(&'static str, BTreeMap<String, String>)>,
}

impl SourceSchema {
    /// The column `name` and its type as features read it: a mapped column holds names (text)
    /// whatever the type of its codes.
    pub fn column(&self, name: &str) -> Option<(&'static str, ColumnType)> {
        let (column, kind) = *self.columns.iter().find(|(column, _)| *column == name)?;
        let mapped = self.mappings.iter().any(|(mapped, _)| *mapped == column);
        Some((column, if mapped { ColumnType::Text } else { kind }))
    }

    /// The column naming `entity`'s id, when rows of this source belong to it.
    pub fn entity_column(&self, entity: Entity) -> Option<&'static str> {
        self.entities.iter().find(|(known, _)| *known == entity).map(|(_, column)| *column)
    }

    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The name `column`'s coded value `value` stands for, if the source maps it.
    pub fn mapped(&self, column: &str, value: &str) -> Option<&str> {
        let (_, names) = self.mappings.iter().find(|(mapped, _)| *mapped == column)?;
        names.get(value).map(String::as_str)
    }
}

/// One column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Null,
    /// Inline up to 24 bytes (ids, codes, categories): a row's texts were most of a decode's
    /// allocations.
    Text(CompactString),
    Number(Decimal),
    /// Microseconds since the epoch.
    Time(i64),
}

impl Scalar {
    /// The value as features store and compare it; `None` for NULL. Text, the common case, is
    /// borrowed: filters compare it on every change.
    pub fn as_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Self::Null => None,
            Self::Text(text) => Some(std::borrow::Cow::Borrowed(text)),
            Self::Number(number) => Some(number.normalize().to_string().into()),
            Self::Time(micros) => Some(micros.to_string().into()),
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
    pub key: RowKey,
    pub columns: Columns,
    /// The ids of the entities the row belongs to (see [`SourceSchema::entities`]), as text.
    pub ids: Vec<(Entity, CompactString)>,
    /// Event time in microseconds since the epoch: the table's time column, or the commit time
    /// where that is NULL. Every feature reads it in microseconds, so it is kept in them.
    pub time_us: i64,
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

    /// A row of the reference schema (as the shipped definitions declare it), whose users and
    /// products are its `user_id` and `product_id` columns.
    pub fn reference(key: String, columns: impl Into<Columns>, time: DateTime<Utc>) -> Self {
        let columns = columns.into();
        let ids = [(Entity::USER, "user_id"), (Entity::PRODUCT, "product_id")]
            .into_iter()
            .filter_map(|(entity, column)| Some((entity, columns.get(column)?.as_key()?.into())))
            .collect();
        Self { key: RowKey::new(&key), columns, ids, time_us: time.timestamp_micros() }
    }

    /// The id of the `entity` the row belongs to; `None` where the row names none.
    pub fn id(&self, entity: Entity) -> Option<&str> {
        self.ids.iter().find(|(known, _)| *known == entity).map(|(_, id)| id.as_str())
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
    /// Commit time in Postgres, in milliseconds since the epoch (Debezium's `source.ts_ms`).
    pub committed_ms: Option<i64>,
    /// Re-driven from the dead-letter topic: its position may be behind what its stream has
    /// applied since, and it is applied once all the same.
    pub replay: bool,
    /// Streamed, but already in what its snapshot run read (committed after the run began and
    /// before its database snapshot; see [`crate::features::overlap`]): only its position is
    /// recorded.
    pub overlapped: bool,
}
