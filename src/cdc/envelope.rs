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

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value};

use std::collections::BTreeMap;

use crate::features::source::ColumnType;
use crate::features::{
    Position, Product, RunStart, Scalar, SnapshotRead, SnapshotRun, SourceChange, SourceRow,
    SourceTable,
};

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

fn field<'a>(row: &'a Row, name: &'static str) -> Option<&'a Value> {
    row.get(name).filter(|value| !value.is_null())
}

fn required_str(row: &Row, name: &'static str) -> Result<String, DecodeError> {
    match field(row, name) {
        None => Err(DecodeError::MissingField(name)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(DecodeError::InvalidField {
            field: name,
            reason: format!("expected a string, got {other}"),
        }),
    }
}

fn optional_str(row: &Row, name: &'static str) -> Result<Option<String>, DecodeError> {
    match field(row, name) {
        None => Ok(None),
        Some(_) => required_str(row, name).map(Some),
    }
}

/// `TIMESTAMPTZ` (ISO-8601 string) or `TIMESTAMP` (microseconds since the epoch, read as UTC).
pub fn parse_timestamp(value: &Value, name: &'static str) -> Result<DateTime<Utc>, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidField { field: name, reason };
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| invalid(format!("{s:?} is not an ISO-8601 timestamp: {e}"))),
        Value::Number(n) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(|| invalid(format!("{n} is not a timestamp in microseconds"))),
        other => Err(invalid(format!("expected a timestamp, got {other}"))),
    }
}

/// `NUMERIC` as sent with `decimal.handling.mode=string`.
pub fn parse_decimal(value: &Value, name: &'static str) -> Result<Decimal, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidField { field: name, reason };
    match value {
        Value::String(s) => {
            s.parse::<Decimal>().map_err(|e| invalid(format!("{s:?} is not a decimal: {e}")))
        }
        other => Err(invalid(format!(
            "expected a decimal string (is decimal.handling.mode=string?), got {other}"
        ))),
    }
}

fn row_error(table: SourceTable, column: &'static str) -> DecodeError {
    if column == "user_id" || table.schema().key.contains(&column) {
        // What a delete's before image looks like when the table is not REPLICA IDENTITY FULL.
        return DecodeError::InvalidField {
            field: column,
            reason: format!("missing or empty (is {table} REPLICA IDENTITY FULL?)"),
        };
    }
    DecodeError::MissingField(column)
}

fn scalar(
    value: Option<&Value>,
    name: &'static str,
    kind: ColumnType,
) -> Result<Scalar, DecodeError> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(Scalar::Null);
    };
    Ok(match kind {
        ColumnType::Text => match value {
            Value::String(s) => Scalar::Text(s.clone()),
            other => {
                return Err(DecodeError::InvalidField {
                    field: name,
                    reason: format!("expected a string, got {other}"),
                });
            }
        },
        ColumnType::Integer => match value.as_i64() {
            Some(integer) => Scalar::Number(Decimal::from(integer)),
            None => {
                return Err(DecodeError::InvalidField {
                    field: name,
                    reason: format!("expected an integer, got {value}"),
                });
            }
        },
        ColumnType::Number => Scalar::Number(parse_decimal(value, name)?),
        ColumnType::Time => Scalar::Time(parse_timestamp(value, name)?.timestamp_micros()),
    })
}

/// A row image of a source table. `committed_at` stands in for a NULL time column.
pub fn source_row(
    table: SourceTable,
    row: &Row,
    committed_at: Option<DateTime<Utc>>,
) -> Result<SourceRow, DecodeError> {
    let schema = table.schema();
    let mut columns = BTreeMap::new();
    for (name, kind) in schema.columns {
        columns.insert(*name, scalar(row.get(*name), name, *kind)?);
    }
    let present =
        |name: &str| columns.get(name).and_then(Scalar::as_key).filter(|value| !value.is_empty());
    let mut key_parts = Vec::with_capacity(schema.key.len());
    for column in schema.key {
        key_parts.push(present(column).ok_or_else(|| row_error(table, column))?);
    }
    if present("user_id").is_none() {
        return Err(row_error(table, "user_id"));
    }
    let time = match schema.time_column.map(|column| (column, columns.get(column))) {
        Some((_, Some(Scalar::Time(micros)))) => DateTime::from_timestamp_micros(*micros),
        Some((column, _)) if table == SourceTable::UserActivity || table == SourceTable::Orders => {
            return Err(DecodeError::MissingField(column));
        }
        _ => committed_at,
    }
    .ok_or(DecodeError::MissingField("source.ts_ms"))?;
    Ok(SourceRow { key: key_parts.join("/"), columns, time })
}

/// Debezium's `source.sequence`, `["<last commit lsn>","<lsn>"]`, as a [`Position`].
fn position(event: &ChangeEvent) -> Result<Option<Position>, DecodeError> {
    if event.op == Op::Read {
        return Ok(None);
    }
    let rank = u8::from(event.op != Op::Delete);
    let invalid = |reason: String| DecodeError::InvalidField { field: "source.sequence", reason };
    let Some(sequence) = event.source.sequence.as_deref() else {
        return Ok(event.source.lsn.map(|lsn| Position(0, lsn, rank)));
    };
    let parts: Vec<Option<String>> = serde_json::from_str(sequence)
        .map_err(|e| invalid(format!("{sequence:?} is not a JSON list: {e}")))?;
    let number = |part: Option<&Option<String>>| -> Result<i64, DecodeError> {
        match part {
            None | Some(None) => Ok(0),
            Some(Some(text)) => {
                text.parse().map_err(|_| invalid(format!("{text:?} is not an LSN")))
            }
        }
    };
    let lsn = match parts.get(1) {
        Some(Some(_)) => number(parts.get(1))?,
        _ => event.source.lsn.ok_or_else(|| invalid(format!("{sequence:?} has no LSN")))?,
    };
    Ok(Some(Position(number(parts.first())?, lsn, rank)))
}

/// A change event of a source table as a [`SourceChange`]; `None` for other tables and for
/// events without rows (truncate, logical messages).
pub fn source_change(event: &ChangeEvent) -> Result<Option<SourceChange>, DecodeError> {
    let Some(table) = event.table().and_then(SourceTable::from_name) else {
        return Ok(None);
    };
    if event.op == Op::Message {
        return Ok(None);
    }
    let committed_at = event.source.ts_ms.and_then(DateTime::from_timestamp_millis);
    let image = |row: &Option<Row>| {
        row.as_ref().map(|row| source_row(table, row, committed_at)).transpose()
    };
    let before = image(&event.before)?;
    let after = if event.op == Op::Delete { None } else { image(&event.after)? };
    Ok(Some(SourceChange {
        table,
        before,
        after,
        position: position(event)?,
        snapshot: snapshot_start(event)?.map(|start| SnapshotRead { start, seq: 0 }),
        run: None,
        processed_ms: event.ts_ms,
        truncated: None,
        truncate: event.op == Op::Truncate,
        committed_at,
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

/// The Debezium connector (its `topic.prefix`) that produced `event`.
pub fn connector(event: &ChangeEvent) -> Option<&str> {
    event.source.name.as_deref()
}

/// A `products` row image.
pub fn product_row(row: &Row) -> Result<Product, DecodeError> {
    Ok(Product {
        id: required_str(row, "id")?,
        name: optional_str(row, "name")?,
        category: optional_str(row, "category")?,
        brand: optional_str(row, "brand")?,
        price: field(row, "price").map(|v| parse_decimal(v, "price")).transpose()?,
        updated_at: field(row, "updated_at")
            .map(|v| parse_timestamp(v, "updated_at"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes as captured from Debezium 3.1.1 with the connector in connect/ (the snapshot
    // read's `source` as Debezium 3.6.1 writes it).
    const CREATE: &str = r#"{"before":null,"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"version":"3.1.1.Final","connector":"postgresql","name":"persona","ts_ms":1795316793698,"snapshot":"false","db":"persona","sequence":"[\"24023928\",\"24024216\"]","ts_us":1795316793698261,"ts_ns":1795316793698261000,"schema":"public","table":"user_activity","txId":755,"lsn":24024216,"xmin":null},"transaction":null,"op":"c","ts_ms":1795316793712,"ts_us":1795316793712113,"ts_ns":1795316793712113000}"#;
    const UPDATE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"ts_ms":1795316794000,"schema":"public","table":"user_activity","lsn":24025000},"transaction":null,"op":"u","ts_ms":1795316794010}"#;
    const DELETE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":null,"source":{"ts_ms":1795316795000,"schema":"public","table":"user_activity","lsn":24026000},"transaction":null,"op":"d","ts_ms":1795316795010}"#;
    const SNAPSHOT_READ: &str = r#"{"before":null,"after":{"id":"11111111-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u2","activity_type":"SEARCH","product_id":null,"activity_timestamp":"2026-11-22T01:00:00Z"},"source":{"ts_ms":1795316700000,"snapshot":"true","schema":"public","table":"user_activity","txId":3638,"lsn":24000000},"transaction":null,"op":"r","ts_ms":1795316700100}"#;
    const PRODUCT: &str = r#"{"before":null,"after":{"id":"p1","name":"Trail shoe","category":"shoes","brand":"Acme","price":"89.90","updated_at":1795316793698261},"source":{"ts_ms":1795316793698,"schema":"public","table":"products","lsn":24030000},"transaction":null,"op":"c","ts_ms":1795316793712}"#;
    const HEARTBEAT: &str = r#"{"ts_ms":1795316800000}"#;

    fn change(json: &str) -> ChangeEvent {
        match decode(Some(json.as_bytes())) {
            Ok(CdcMessage::Change(event)) => *event,
            other => panic!("expected a change event, got {other:?}"),
        }
    }

    fn decoded(json: &str) -> SourceChange {
        source_change(&change(json)).expect("decodes").expect("a source table")
    }

    #[test]
    fn create_has_the_row_its_time_and_position() {
        let event = change(CREATE);
        assert_eq!(event.op, Op::Create);
        assert_eq!(event.source.ts_ms, Some(1795316793698));
        let decoded = decoded(CREATE);
        assert_eq!(decoded.table, SourceTable::UserActivity);
        assert!(decoded.before.is_none());
        let row = decoded.after.expect("after");
        assert_eq!(row.key, "8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01");
        assert_eq!(row.text("user_id"), Some("u1"));
        assert_eq!(row.text("activity_type"), Some("VIEW_PRODUCT"));
        assert_eq!(row.time.timestamp_micros(), 1795316793698261);
        assert_eq!(decoded.position, Some(Position(24023928, 24024216, 1)));
    }

    #[test]
    fn update_carries_both_images() {
        let decoded = decoded(UPDATE);
        assert_eq!(decoded.before.expect("before").text("activity_type"), Some("VIEW_PRODUCT"));
        assert_eq!(decoded.after.expect("after").text("activity_type"), Some("CLICK"));
        // No sequence in this capture: the LSN alone orders it.
        assert_eq!(decoded.position, Some(Position(0, 24025000, 1)));
    }

    #[test]
    fn delete_has_only_the_before_image_and_ranks_first() {
        let decoded = decoded(DELETE);
        assert!(decoded.after.is_none());
        assert_eq!(decoded.before.expect("before").text("user_id"), Some("u1"));
        assert_eq!(decoded.position.map(|p| p.2), Some(0));
    }

    #[test]
    fn snapshot_reads_have_no_position_but_their_run() {
        let decoded = decoded(SNAPSHOT_READ);
        assert_eq!(decoded.position, None);
        let start = decoded.snapshot.map(|read| read.start);
        assert_eq!(
            start,
            Some(RunStart {
                run: SnapshotRun(24000000, 3638),
                at_ms: 1795316700000,
                read_ms: Some(1795316700100)
            })
        );
        assert_eq!(decoded.processed_ms, Some(1795316700100));
        assert_eq!(decoded.after.expect("after").get("product_id"), &Scalar::Null);
    }

    #[test]
    fn a_truncate_is_a_change_without_rows_at_its_position() {
        let truncate = r#"{"before":null,"after":null,"source":{"ts_ms":1795316793698,"snapshot":"false","table":"cart_items","sequence":"[\"500\",\"640\"]","lsn":640},"op":"t","ts_ms":1795316793712}"#;
        let decoded = decoded(truncate);
        assert!(decoded.truncate);
        assert_eq!(decoded.table, SourceTable::CartItems);
        assert_eq!((decoded.before, decoded.after), (None, None));
        assert_eq!(decoded.position, Some(Position(500, 640, 1)));
    }

    #[test]
    fn orders_and_cart_items_decode_numbers() {
        let order = r#"{"before":null,"after":{"id":42,"user_id":"u1","product_id":"p1","quantity":2,"amount":"19.80","status":"paid","created_at":"2026-11-22T03:06:33Z"},"source":{"ts_ms":1795316793698,"table":"orders","sequence":"[null,\"100\"]","lsn":100},"op":"c"}"#;
        let decoded = decoded(order);
        let row = decoded.after.expect("after");
        assert_eq!(row.key, "42");
        assert_eq!(row.get("amount"), &Scalar::Number(Decimal::new(1980, 2)));
        assert_eq!(decoded.position, Some(Position(0, 100, 1)));
        let cart = r#"{"before":null,"after":{"user_id":"u1","product_id":"p1","quantity":3,"unit_price":"5.00","updated_at":null},"source":{"ts_ms":1795316793698,"table":"cart_items","lsn":7},"op":"c"}"#;
        let row = decoded_row(cart);
        assert_eq!(row.key, "u1/p1");
        // No updated_at: the commit time stands in.
        assert_eq!(row.time.timestamp_millis(), 1795316793698);
    }

    fn decoded_row(json: &str) -> SourceRow {
        decoded(json).after.expect("after")
    }

    #[test]
    fn other_tables_are_not_source_changes() {
        assert_eq!(source_change(&change(PRODUCT)).expect("decodes"), None);
    }

    #[test]
    fn tombstone_and_heartbeat_are_recognised() {
        assert_eq!(decode(None), Ok(CdcMessage::Tombstone));
        assert_eq!(
            decode(Some(HEARTBEAT.as_bytes())),
            Ok(CdcMessage::Heartbeat { ts_ms: 1795316800000 })
        );
    }

    #[test]
    fn product_has_numeric_string_and_timestamp_micros() {
        let product = product_row(change(PRODUCT).after.as_ref().expect("after")).expect("decodes");
        assert_eq!(product.price, Some(Decimal::new(8990, 2)));
        assert_eq!(product.updated_at.map(|t| t.timestamp_micros()), Some(1795316793698261));
        assert_eq!(product.category.as_deref(), Some("shoes"));
    }

    #[test]
    fn numeric_as_bytes_is_named_as_a_connector_problem() {
        let precise = PRODUCT.replace(r#""price":"89.90""#, r#""price":"AjH0""#);
        let error = product_row(change(&precise).after.as_ref().expect("after")).expect_err("bad");
        assert_eq!(error.kind(), "invalid_field");
        let bytes_as_number = PRODUCT.replace(r#""price":"89.90""#, r#""price":12"#);
        let error =
            product_row(change(&bytes_as_number).after.as_ref().expect("after")).expect_err("bad");
        assert!(error.to_string().contains("decimal.handling.mode"), "{error}");
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for (bytes, kind) in [
            (&b"not json"[..], "invalid_json"),
            (&b"{\"op\":\"x\",\"after\":{}}"[..], "unknown_op"),
            (&b"{\"op\":\"c\",\"after\":null}"[..], "missing_image"),
            (&b"{\"op\":\"d\",\"before\":null}"[..], "missing_image"),
            (&b"{\"hello\":1}"[..], "unknown_shape"),
            (&b"[1,2]"[..], "invalid_json"),
        ] {
            let error = decode(Some(bytes)).expect_err("must fail");
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn bad_rows_name_the_field() {
        let no_time = CREATE.replace(
            r#""activity_timestamp":"2026-11-22T03:06:33.698261Z""#,
            r#""activity_timestamp":null"#,
        );
        let error = source_change(&change(&no_time)).expect_err("bad");
        assert_eq!(error, DecodeError::MissingField("activity_timestamp"));
        let bad_time = CREATE.replace("2026-11-22T03:06:33.698261Z", "yesterday");
        let error = source_change(&change(&bad_time)).expect_err("bad");
        assert!(matches!(error, DecodeError::InvalidField { field: "activity_timestamp", .. }));
        let empty_user = DELETE.replace(r#""user_id":"u1""#, r#""user_id":"""#);
        let error = source_change(&change(&empty_user)).expect_err("bad");
        assert!(error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
    }
}
