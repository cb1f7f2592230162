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

use crate::features::{Activity, ActivityChange};

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
    Change(ChangeEvent),
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
    Ok(CdcMessage::Change(ChangeEvent {
        op,
        before: raw.before,
        after: raw.after,
        source: raw.source.unwrap_or_default(),
        ts_ms: raw.ts_ms,
    }))
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

fn required_time(row: &Row, name: &'static str) -> Result<DateTime<Utc>, DecodeError> {
    parse_timestamp(field(row, name).ok_or(DecodeError::MissingField(name))?, name)
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

/// A `user_activity` row image.
pub fn activity_row(row: &Row) -> Result<Activity, DecodeError> {
    let user_id = required_str(row, "user_id")?;
    if user_id.is_empty() {
        // What a delete looks like when the table is not REPLICA IDENTITY FULL.
        return Err(DecodeError::InvalidField {
            field: "user_id",
            reason: "empty (is user_activity REPLICA IDENTITY FULL?)".into(),
        });
    }
    Ok(Activity {
        id: required_str(row, "id")?,
        user_id,
        activity_type: required_str(row, "activity_type")?,
        product_id: optional_str(row, "product_id")?,
        at: required_time(row, "activity_timestamp")?,
    })
}

/// What a `user_activity` change event means, per user. An update that moves a row to another
/// user removes it from the first and adds it to the second.
pub fn activity_changes(event: &ChangeEvent) -> Result<Vec<(String, ActivityChange)>, DecodeError> {
    let before = event.before.as_ref().map(activity_row).transpose()?;
    let after = event.after.as_ref().map(activity_row).transpose()?;
    Ok(match (event.op, before, after) {
        (Op::Read | Op::Create | Op::Update, before, Some(after)) => {
            let mut changes = Vec::with_capacity(2);
            if let Some(before) = before.filter(|b| b.user_id != after.user_id || b.id != after.id)
            {
                changes.push((before.user_id, ActivityChange::Delete { id: before.id }));
            }
            changes.push((after.user_id.clone(), ActivityChange::Upsert(after)));
            changes
        }
        (Op::Delete, Some(before), _) => {
            vec![(before.user_id, ActivityChange::Delete { id: before.id })]
        }
        // Truncate and logical messages carry no rows; missing images were rejected in decode.
        _ => Vec::new(),
    })
}

/// A `products` row image. Not used by features yet; decoded so a malformed product event is
/// reported as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price: Option<Decimal>,
    pub updated_at: Option<DateTime<Utc>>,
}

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
    use crate::features::VIEW_PRODUCT;

    // Shapes as captured from Debezium 3.1.1 with the connector in connect/.
    const CREATE: &str = r#"{"before":null,"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"version":"3.1.1.Final","connector":"postgresql","name":"persona","ts_ms":1795316793698,"snapshot":"false","db":"persona","sequence":"[\"24023928\",\"24024216\"]","ts_us":1795316793698261,"ts_ns":1795316793698261000,"schema":"public","table":"user_activity","txId":755,"lsn":24024216,"xmin":null},"transaction":null,"op":"c","ts_ms":1795316793712,"ts_us":1795316793712113,"ts_ns":1795316793712113000}"#;
    const UPDATE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"ts_ms":1795316794000,"schema":"public","table":"user_activity","lsn":24025000},"transaction":null,"op":"u","ts_ms":1795316794010}"#;
    const DELETE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":null,"source":{"ts_ms":1795316795000,"schema":"public","table":"user_activity","lsn":24026000},"transaction":null,"op":"d","ts_ms":1795316795010}"#;
    const SNAPSHOT_READ: &str = r#"{"before":null,"after":{"id":"11111111-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u2","activity_type":"SEARCH","product_id":null,"activity_timestamp":"2026-11-22T01:00:00Z"},"source":{"ts_ms":1795316700000,"snapshot":"true","schema":"public","table":"user_activity","lsn":24000000},"transaction":null,"op":"r","ts_ms":1795316700100}"#;
    const PRODUCT: &str = r#"{"before":null,"after":{"id":"p1","name":"Trail shoe","category":"shoes","brand":"Acme","price":"89.90","updated_at":1795316793698261},"source":{"ts_ms":1795316793698,"schema":"public","table":"products","lsn":24030000},"transaction":null,"op":"c","ts_ms":1795316793712}"#;
    const HEARTBEAT: &str = r#"{"ts_ms":1795316800000}"#;

    fn change(json: &str) -> ChangeEvent {
        match decode(Some(json.as_bytes())) {
            Ok(CdcMessage::Change(event)) => event,
            other => panic!("expected a change event, got {other:?}"),
        }
    }

    #[test]
    fn create_is_an_upsert_with_iso_timestamp() {
        let event = change(CREATE);
        assert_eq!(event.op, Op::Create);
        assert_eq!(event.table(), Some("user_activity"));
        assert_eq!(event.source.ts_ms, Some(1795316793698));
        let changes = activity_changes(&event).expect("decodes");
        let [(user, ActivityChange::Upsert(activity))] = changes.as_slice() else {
            panic!("expected one upsert, got {changes:?}");
        };
        assert_eq!(user, "u1");
        assert_eq!(activity.activity_type, VIEW_PRODUCT);
        assert_eq!(activity.product_id.as_deref(), Some("p1"));
        assert_eq!(activity.at.timestamp_micros(), 1795316793698261);
    }

    #[test]
    fn update_replaces_the_row() {
        let changes = activity_changes(&change(UPDATE)).expect("decodes");
        let [(_, ActivityChange::Upsert(activity))] = changes.as_slice() else {
            panic!("expected one upsert, got {changes:?}");
        };
        assert_eq!(activity.activity_type, "CLICK");
    }

    #[test]
    fn update_moving_a_row_to_another_user_retracts_it_from_the_first() {
        let moved = UPDATE.replacen(
            r#""user_id":"u1","activity_type":"CLICK""#,
            r#""user_id":"u9","activity_type":"CLICK""#,
            1,
        );
        let changes = activity_changes(&change(&moved)).expect("decodes");
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0], (u, ActivityChange::Delete { .. }) if u == "u1"));
        assert!(matches!(&changes[1], (u, ActivityChange::Upsert(_)) if u == "u9"));
    }

    #[test]
    fn delete_uses_the_before_image() {
        let changes = activity_changes(&change(DELETE)).expect("decodes");
        assert_eq!(
            changes,
            vec![(
                "u1".into(),
                ActivityChange::Delete { id: "8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01".into() }
            )]
        );
    }

    #[test]
    fn snapshot_read_is_an_upsert_with_null_product() {
        let event = change(SNAPSHOT_READ);
        assert_eq!(event.op, Op::Read);
        let changes = activity_changes(&event).expect("decodes");
        assert!(matches!(&changes[0].1, ActivityChange::Upsert(a) if a.product_id.is_none()));
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
        let error = activity_changes(&change(&no_time)).expect_err("bad");
        assert_eq!(error, DecodeError::MissingField("activity_timestamp"));
        let bad_time = CREATE.replace("2026-11-22T03:06:33.698261Z", "yesterday");
        let error = activity_changes(&change(&bad_time)).expect_err("bad");
        assert!(matches!(error, DecodeError::InvalidField { field: "activity_timestamp", .. }));
        let empty_user = DELETE.replace(r#""user_id":"u1""#, r#""user_id":"""#);
        let error = activity_changes(&change(&empty_user)).expect_err("bad");
        assert!(error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
    }
}
