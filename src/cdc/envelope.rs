//! Decoding of Debezium change events (JsonConverter, schemas disabled) into typed rows.
//!
//! A change event value looks like this (Postgres connector, `decimal.handling.mode=string`):
//!
//! ```json
//! {"before": null,
//!  "after": {"id": "6f1c…", "user_id": "u1", "activity_type": "VIEW_PRODUCT",
//!            "product_id": "p1", "activity_timestamp": "2026-11-22T03:06:33.698261Z"},
//!  "source": {"version": "3.1.1.Final", "connector": "postgresql", "name": "persona",
//!             "ts_ms": 1795316793698, "snapshot": "false", "db": "persona",
//!             "sequence": "[\"24023928\",\"24024216\"]", "schema": "public",
//!             "table": "user_activity", "txId": 755, "lsn": 24024216, "xmin": null},
//!  "transaction": null, "op": "c", "ts_ms": 1795316793712}
//! ```
//!
//! A delete is `op: "d"` with `after: null` and is followed by a tombstone (same key, null
//! value). Heartbeats on `__debezium-heartbeat.<prefix>` carry only `{"ts_ms": …}`.
//! `TIMESTAMPTZ` arrives as an ISO-8601 string, `TIMESTAMP` as microseconds since the epoch,
//! `NUMERIC` as a decimal string.

use serde::Deserialize;
use serde_json::{Map, Value};

pub const OP_READ: &str = "r";
pub const OP_CREATE: &str = "c";
pub const OP_UPDATE: &str = "u";
pub const OP_DELETE: &str = "d";
pub const OP_TRUNCATE: &str = "t";
pub const OP_MESSAGE: &str = "m";

/// Why a message could not be decoded. Every variant is data, not a bug: the message is counted,
/// logged and skipped, and its offset still advances.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("value is neither a change event nor a heartbeat")]
    UnknownShape,
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("op {op:?} without the {image:?} row image")]
    MissingImage { op: String, image: &'static str },
    #[error("row field {0:?} is missing or null")]
    MissingField(&'static str),
    #[error("row field {field:?} is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error(
        "a read of an incremental snapshot: persona needs blocking snapshots, which read whole \
         tables (see README, \"Snapshots\")"
    )]
    IncrementalSnapshot,
}

impl DecodeError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::UnknownShape => "unknown_shape",
            Self::UnknownOp(_) => "unknown_op",
            Self::MissingImage { .. } => "missing_image",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::IncrementalSnapshot => "incremental_snapshot",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
    Truncate,
    Message,
}

impl Op {
    fn parse(op: &str) -> Result<Self, DecodeError> {
        Ok(match op {
            OP_READ => Self::Read,
            OP_CREATE => Self::Create,
            OP_UPDATE => Self::Update,
            OP_DELETE => Self::Delete,
            OP_TRUNCATE => Self::Truncate,
            OP_MESSAGE => Self::Message,
            other => return Err(DecodeError::UnknownOp(other.to_string())),
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Read => OP_READ,
            Self::Create => OP_CREATE,
            Self::Update => OP_UPDATE,
            Self::Delete => OP_DELETE,
            Self::Truncate => OP_TRUNCATE,
            Self::Message => OP_MESSAGE,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Source {
    /// Commit time in Postgres.
    #[serde(default)]
    pub ts_ms: Option<i64>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub lsn: Option<i64>,
    /// `["<commit LSN of the previous transaction>","<LSN of this change>"]`.
    #[serde(default)]
    pub sequence: Option<String>,
    /// `"true"`, `"first"`, `"last"`, … for snapshot reads, `"incremental"` for reads of an
    /// incremental snapshot, `"false"` when streaming.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The connector's `topic.prefix`.
    #[serde(default)]
    pub name: Option<String>,
    /// The transaction: for snapshot reads, the snapshot's own.
    #[serde(default, rename = "txId")]
    pub tx_id: Option<i64>,
}

pub type Row = Map<String, Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub op: Op,
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub source: Source,
    /// When Debezium processed the change.
    pub ts_ms: Option<i64>,
}

impl ChangeEvent {
    pub fn table(&self) -> Option<&str> {
        self.source.table.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CdcMessage {
    Change(Box<ChangeEvent>),
    /// The null value Debezium writes after a delete so compaction can drop the key.
    Tombstone,
    /// Debezium's liveness tick; `ts_ms` is when it was emitted.
    Heartbeat {
        ts_ms: i64,
    },
}

#[derive(Deserialize)]
struct RawEnvelope {
    op: Option<String>,
    #[serde(default)]
    before: Option<Row>,
    #[serde(default)]
    after: Option<Row>,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    ts_ms: Option<i64>,
}

/// Decodes one Kafka message value.
pub fn decode(value: Option<&[u8]>) -> Result<CdcMessage, DecodeError> {
    let Some(bytes) = value else {
        return Ok(CdcMessage::Tombstone);
    };
    let raw: RawEnvelope =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let Some(op) = raw.op else {
        return match (raw.ts_ms, raw.before, raw.after, raw.source) {
            (Some(ts_ms), None, None, None) => Ok(CdcMessage::Heartbeat { ts_ms }),
            _ => Err(DecodeError::UnknownShape),
        };
    };
    let op = Op::parse(&op)?;
    let needs = match op {
        Op::Read | Op::Create | Op::Update => Some(("after", raw.after.is_none())),
        Op::Delete => Some(("before", raw.before.is_none())),
        Op::Truncate | Op::Message => None,
    };
    if let Some((image, true)) = needs {
        return Err(DecodeError::MissingImage { op: op.label().to_string(), image });
    }
    Ok(CdcMessage::Change(Box::new(ChangeEvent {
        op,
        before: raw.before,
        after: raw.after,
        source: raw.source.unwrap_or_default(),
        ts_ms: raw.ts_ms,
    })))
}

/// The Debezium connector (its `topic.prefix`) that produced `event`.
pub fn connector(event: &ChangeEvent) -> Option<&str> {
    event.source.name.as_deref()
}
