//! Decoding Debezium change events of the reference schema, and of every declared column type.
use std::sync::LazyLock;

use rust_decimal::Decimal;

use super::change::source_change;
use super::envelope::*;
use super::rows::{self, UNAVAILABLE};
use crate::features::{
    FeatureSet, Position, RunStart, Scalar, SnapshotRun, SourceChange, SourceRow, SourceTable,
};

/// The shipped definitions: the reference schema's declared sources and dimension.
static REFERENCE: LazyLock<FeatureSet> =
    LazyLock::new(|| FeatureSet::load(None).expect("shipped definitions"));

// Shapes as captured from Debezium 3.1.1 with the connector in connect/ (the snapshot
// read's `source` as Debezium 3.6.1 writes it).
const CREATE: &str = r#"{"before":null,"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"version":"3.1.1.Final","connector":"postgresql","name":"persona","ts_ms":1795316793698,"snapshot":"false","db":"persona","sequence":"[\"24023928\",\"24024216\"]","ts_us":1795316793698261,"ts_ns":1795316793698261000,"schema":"public","table":"user_activity","txId":755,"lsn":24024216,"xmin":null},"transaction":null,"op":"c","ts_ms":1795316793712,"ts_us":1795316793712113,"ts_ns":1795316793712113000}"#;
const UPDATE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"VIEW_PRODUCT","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"source":{"ts_ms":1795316794000,"schema":"public","table":"user_activity","lsn":24025000},"transaction":null,"op":"u","ts_ms":1795316794010}"#;
const DELETE: &str = r#"{"before":{"id":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u1","activity_type":"CLICK","product_id":"p1","activity_timestamp":"2026-11-22T03:06:33.698261Z"},"after":null,"source":{"ts_ms":1795316795000,"schema":"public","table":"user_activity","lsn":24026000},"transaction":null,"op":"d","ts_ms":1795316795010}"#;
const SNAPSHOT_READ: &str = r#"{"before":null,"after":{"id":"11111111-5a8e-4d1c-9d43-0d0d0c0d0e01","user_id":"u2","activity_type":"SEARCH","product_id":null,"activity_timestamp":"2026-11-22T01:00:00Z"},"source":{"ts_ms":1795316700000,"snapshot":"true","schema":"public","table":"user_activity","txId":3638,"lsn":24000000},"transaction":null,"op":"r","ts_ms":1795316700100}"#;
const PRODUCT: &str = r#"{"before":null,"after":{"id":"p1","name":"Trail shoe","category":"shoes","brand":"Acme","price":"89.90","updated_at":1795316793698261},"source":{"ts_ms":1795316793698,"schema":"public","table":"products","lsn":24030000},"transaction":null,"op":"c","ts_ms":1795316793712}"#;
const HEARTBEAT: &str = r#"{"ts_ms":1795316800000}"#;

/// The messages of a test live as long as it runs; its events borrow from them.
fn leaked(json: &str) -> &'static str {
    Box::leak(json.to_string().into_boxed_str())
}

fn change(json: &str) -> ChangeEvent<'static> {
    match decode(Some(leaked(json).as_bytes())) {
        Ok(CdcMessage::Change(event)) => *event,
        other => panic!("expected a change event, got {other:?}"),
    }
}

fn decoded(json: &str) -> SourceChange {
    source_change(&REFERENCE, &change(json)).expect("decodes").expect("a source table")
}

#[test]
fn create_has_the_row_its_time_and_position() {
    let event = change(CREATE);
    assert_eq!(event.op, Op::Create);
    assert_eq!(event.source.ts_ms, Some(1795316793698));
    let decoded = decoded(CREATE);
    assert_eq!(decoded.table, SourceTable::new("user_activity"));
    assert!(decoded.before.is_none());
    let row = decoded.after.expect("after");
    assert_eq!(row.key, "8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01");
    assert_eq!(row.text("user_id"), Some("u1"));
    assert_eq!(row.text("activity_type"), Some("VIEW_PRODUCT"));
    assert_eq!(row.time_us, 1795316793698261);
    assert_eq!(decoded.position, Some(Position(24023928, 24024216, 1)));
}

#[test]
fn source_texts_are_borrowed_from_the_message_unless_escaped() {
    use std::borrow::Cow;
    let event = change(CREATE);
    let source = &event.source;
    for text in [&source.schema, &source.table, &source.snapshot, &source.name] {
        assert!(matches!(text, Some(Cow::Borrowed(_))), "{text:?} copied");
    }
    // `sequence` is a JSON array in a string, its quotes escaped: read in place all the same.
    let parts = source.sequence().expect("a sequence").expect("present");
    assert!(parts.iter().all(|part| matches!(part, Some(Cow::Borrowed(_)))), "{parts:?} copied");
    assert_eq!(parts, [Some("24023928".into()), Some("24024216".into())]);
}

#[test]
fn every_form_of_sequence_reads_as_the_general_json_reading_does() {
    let position = |sequence: &str| {
        let json = CREATE.replace(r#""sequence":"[\"24023928\",\"24024216\"]""#, sequence);
        assert_ne!(json, CREATE, "the sequence was replaced");
        source_change(&REFERENCE, &change(&json)).map(|change| change.expect("a source").position)
    };
    let at = |last_commit, lsn| Ok(Some(Position(last_commit, lsn, 1)));
    // Debezium's forms, and forms only a general reader takes: spaces, escapes, a longer list.
    assert_eq!(position(r#""sequence":"[\"1\",\"2\"]""#), at(1, 2));
    assert_eq!(position(r#""sequence":"[null,\"2\"]""#), at(0, 2));
    assert_eq!(position(r#""sequence":"[ \"1\" , \"2\" ]""#), at(1, 2));
    assert_eq!(position(r#""sequence":"[\"\u0031\",\"2\"]""#), at(1, 2));
    assert_eq!(position(r#""sequence":"[\"1\",\"2\",\"3\"]""#), at(1, 2));
    // Without the change's LSN, `source.lsn` (24024216) stands in; without a sequence, too.
    assert_eq!(position(r#""sequence":"[\"1\",null]""#), at(1, 24024216));
    assert_eq!(position(r#""sequence":"[\"1\"]""#), at(1, 24024216));
    assert_eq!(position(r#""sequence":null"#), at(0, 24024216));
    for bad in [
        r#""sequence":"[\"x\",\"2\"]""#,
        r#""sequence":"not a list""#,
        r#""sequence":[1,2]"#,
        r#""sequence":12"#,
    ] {
        let error = position(bad).expect_err(bad);
        assert!(
            matches!(&error, DecodeError::InvalidField { field: "source.sequence", .. }),
            "{bad}: {error}"
        );
    }
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
    assert_eq!(decoded.table, SourceTable::new("cart_items"));
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
    assert_eq!(row.time_us, 1795316793698000);
}

fn decoded_row(json: &str) -> SourceRow {
    decoded(json).after.expect("after")
}

/// Images are read from the message as sent; names and values with JSON escapes are read as
/// the text they stand for.
#[test]
fn escaped_names_and_values_read_as_their_text() {
    let escaped = CREATE
        .replace(r#""user_id":"u1""#, r#""user\u005fid":"u\u0031""#)
        .replace(r#""activity_type":"VIEW_PRODUCT""#, r#""activity_type":"VIEW\u005fPRODUCT""#);
    assert_ne!(escaped, CREATE);
    let row = decoded_row(&escaped);
    assert_eq!(row.text("user_id"), Some("u1"));
    assert_eq!(row.text("activity_type"), Some("VIEW_PRODUCT"));
    assert_eq!(row, decoded_row(CREATE));
}

#[test]
fn other_tables_are_not_source_changes() {
    assert_eq!(source_change(&REFERENCE, &change(PRODUCT)).expect("decodes"), None);
}

#[test]
fn tombstone_and_heartbeat_are_recognised() {
    assert_eq!(decode(None), Ok(CdcMessage::Tombstone));
    assert_eq!(
        decode(Some(HEARTBEAT.as_bytes())),
        Ok(CdcMessage::Heartbeat { ts_ms: 1795316800000 })
    );
}

fn product(json: &str) -> Result<crate::features::Product, DecodeError> {
    let dimension = REFERENCE.item_dimension().expect("the reference dimension");
    rows::dimension_row(dimension, change(json).after.as_ref().expect("after"), |_| None)
}

#[test]
fn product_has_numeric_string_and_timestamp_micros() {
    let product = product(PRODUCT).expect("decodes");
    assert_eq!(product.price, Some(Decimal::new(8990, 2)));
    assert_eq!(product.attribute("updated_at"), &Scalar::Time(1795316793698261));
    assert_eq!(product.category.as_deref(), Some("shoes"));
    assert_eq!(product.attribute("category"), &Scalar::Text("shoes".into()));
}

#[test]
fn numeric_as_bytes_is_named_as_a_connector_problem() {
    let precise = PRODUCT.replace(r#""price":"89.90""#, r#""price":"AjH0""#);
    let error = product(&precise).expect_err("bad");
    assert_eq!(error.kind(), "invalid_field");
    let bytes_as_number = PRODUCT.replace(r#""price":"89.90""#, r#""price":12"#);
    let error = product(&bytes_as_number).expect_err("bad");
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
        // A field twice: which one was meant is unknown.
        (&b"{\"op\":\"c\",\"op\":\"d\",\"after\":{}}"[..], "invalid_json"),
        (&b"{\"op\":\"c\",\"after\":{},\"source\":{\"lsn\":1,\"lsn\":2}}"[..], "invalid_json"),
        (&b"{\"op\":\"c\",\"after\":{}} trailing"[..], "invalid_json"),
        // Not UTF-8, inside a string and outside any.
        (&b"{\"op\":\"c\",\"after\":{\"id\":\"\xff\"}}"[..], "invalid_json"),
        (&b"{\"op\":\"c\"}\xff"[..], "invalid_json"),
    ] {
        let error = decode(Some(bytes)).expect_err("must fail");
        assert_eq!(error.kind(), kind, "{error}");
    }
    // Bytes that are not UTF-8 are named by where they are.
    let error = decode(Some(b"{\"op\":\"c\"}\xff")).expect_err("must fail");
    assert!(error.to_string().contains("from index 10"), "{error}");
}

#[test]
fn bad_rows_name_the_field() {
    let no_time = CREATE.replace(
        r#""activity_timestamp":"2026-11-22T03:06:33.698261Z""#,
        r#""activity_timestamp":null"#,
    );
    let error = source_change(&REFERENCE, &change(&no_time)).expect_err("bad");
    assert_eq!(error, DecodeError::MissingField("activity_timestamp"));
    let bad_time = CREATE.replace("2026-11-22T03:06:33.698261Z", "yesterday");
    let error = source_change(&REFERENCE, &change(&bad_time)).expect_err("bad");
    assert!(matches!(error, DecodeError::InvalidField { field: "activity_timestamp", .. }));
    let empty_user = DELETE.replace(r#""user_id":"u1""#, r#""user_id":"""#);
    let error = source_change(&REFERENCE, &change(&empty_user)).expect_err("bad");
    assert!(error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
}

/// A legacy schema unlike the reference one: integer ids, coded activity types, a dimension keyed
/// by a code, every column type.
const LEGACY: &str = r#"
[[source]]
name = "behavior"
table = "legacy.t_user_behavior"
key = ["behavior_id"]
time = "gmt_create"
entities = { user = "uid", product = "item_code" }
columns = { behavior_id = "bigint", uid = "bigint", behavior = "smallint", item_code = "varchar", gmt_create = "timestamp", payload = "jsonb", flagged = "boolean", day = "date", tags = "text[]", score = "double precision", ref = "uuid", made = "timestamp(3)", price = "numeric" }
map = { behavior = { 1 = "VIEW_PRODUCT", 2 = "CLICK" } }

[[dimension]]
name = "item"
table = "legacy.t_item"
key = "code"
entity = "product"
attributes = { title = "text", cat = "varchar", specs = "jsonb", list_price = "numeric" }
roles = { name = "title", category = "cat", price = "list_price" }

[[feature]]
name = "views"
entity = "user"
source = "behavior"
filter = { behavior = "VIEW_PRODUCT" }
aggregation = "count"
window = "1h"

[[feature]]
name = "categories"
entity = "user"
source = "behavior"
aggregation = "histogram"
value = "item.cat"
window = "1h"
"#;

static LEGACY_SET: LazyLock<FeatureSet> =
    LazyLock::new(|| FeatureSet::parse(LEGACY, "legacy").expect("valid declarations"));

const LEGACY_ROW: &str = r#"{"behavior_id":9007199254740993,"uid":42,"behavior":1,"item_code":"SKU-7","gmt_create":1795316793698261,"payload":"{\"q\": \"boots\", \"n\": 3}","flagged":true,"day":20414,"tags":["a","b"],"score":0.25,"ref":"8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01","made":1795316793698,"price":"12.50"}"#;

fn legacy_event(op: &str, before: &str, after: &str) -> ChangeEvent<'static> {
    let json = format!(
        r#"{{"before":{before},"after":{after},"source":{{"ts_ms":1795316799000,"schema":"legacy","table":"t_user_behavior","sequence":"[\"10\",\"20\"]","lsn":20}},"op":"{op}","ts_ms":1795316799010}}"#
    );
    change(&json)
}

#[test]
fn every_declared_type_decodes_from_its_debezium_form() {
    let change = source_change(&LEGACY_SET, &legacy_event("c", "null", LEGACY_ROW))
        .expect("decodes")
        .expect("a declared source");
    assert_eq!(change.table, SourceTable::new("behavior"));
    let row = change.after.expect("after");
    // Bigint ids as numbers, beyond what a double holds exactly.
    assert_eq!(row.key, "9007199254740993");
    assert_eq!(row.id(crate::features::Entity::USER), Some("42"));
    assert_eq!(row.id(crate::features::Entity::PRODUCT), Some("SKU-7"));
    // Coded values read as their names.
    assert_eq!(row.get("behavior"), &Scalar::Text("VIEW_PRODUCT".into()));
    assert_eq!(row.time_us, 1795316793698261);
    assert_eq!(row.get("payload"), &Scalar::Text(r#"{"q": "boots", "n": 3}"#.into()));
    assert_eq!(row.get("flagged"), &Scalar::Text("true".into()));
    // 20414 days after 1970-01-01 is 2025-11-22, midnight UTC.
    assert_eq!(row.get("day"), &Scalar::Time(20414 * 86_400_000_000));
    assert_eq!(row.get("tags"), &Scalar::Text(r#"["a","b"]"#.into()));
    assert_eq!(row.get("score"), &Scalar::Number(Decimal::new(25, 2)));
    assert_eq!(row.get("ref"), &Scalar::Text("8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01".into()));
    assert_eq!(row.get("made"), &Scalar::Time(1795316793698000));
    assert_eq!(row.get("price"), &Scalar::Number(Decimal::new(1250, 2)));
}

#[test]
fn event_times_past_what_a_read_can_date_are_refused_naming_the_column() {
    let by_day =
        FeatureSet::parse(&LEGACY.replace(r#"time = "gmt_create""#, r#"time = "day""#), "legacy")
            .expect("valid declarations");
    let decoded = |days: i64| {
        let row = LEGACY_ROW.replace(r#""day":20414"#, &format!(r#""day":{days}"#));
        source_change(&by_day, &legacy_event("c", "null", &row))
    };
    let row = decoded(20414).expect("decodes").and_then(|change| change.after).expect("a row");
    assert_eq!(row.time_us, 20414 * 86_400_000_000);
    // Some 274,000 years on: microseconds an i64 holds, and one that saturates it.
    for days in [100_000_000, i64::MAX / 2] {
        let error = decoded(days).expect_err("out of range");
        assert!(matches!(error, DecodeError::InvalidField { field: "day", .. }), "{error}");
    }
}

#[test]
fn nulls_and_unmapped_codes_are_kept_as_they_are() {
    let row = LEGACY_ROW
        .replace(r#""behavior":1"#, r#""behavior":9"#)
        .replace(r#""flagged":true"#, r#""flagged":null"#)
        .replace(r#""tags":["a","b"]"#, r#""tags":null"#);
    let change = source_change(&LEGACY_SET, &legacy_event("c", "null", &row))
        .expect("decodes")
        .expect("a declared source");
    let row = change.after.expect("after");
    assert_eq!(row.get("behavior"), &Scalar::Text("9".into()));
    assert_eq!(row.get("flagged"), &Scalar::Null);
    assert_eq!(row.get("tags"), &Scalar::Null);
}

#[test]
fn wrong_forms_name_the_column() {
    for (from, to, column) in [
        (r#""uid":42"#, r#""uid":"42x""#, "uid"),
        (r#""flagged":true"#, r#""flagged":"yes""#, "flagged"),
        (r#""day":20414"#, r#""day":"2025-11-22""#, "day"),
        (r#""tags":["a","b"]"#, r#""tags":[1,2]"#, "tags"),
        (r#""score":0.25"#, r#""score":"NaN""#, "score"),
    ] {
        let row = LEGACY_ROW.replace(from, to);
        let error = source_change(&LEGACY_SET, &legacy_event("c", "null", &row))
            .expect_err("must be refused");
        assert!(
            matches!(&error, DecodeError::InvalidField { field, .. } if *field == column),
            "{column}: {error}"
        );
    }
}

#[test]
fn an_unchanged_toasted_column_keeps_its_value_from_the_before_image() {
    let after = LEGACY_ROW
        .replace(r#""behavior":1"#, r#""behavior":2"#)
        .replace(
            r#""payload":"{\"q\": \"boots\", \"n\": 3}""#,
            &format!(r#""payload":"{UNAVAILABLE}""#),
        )
        .replace(r#""tags":["a","b"]"#, &format!(r#""tags":["{UNAVAILABLE}"]"#));
    let change = source_change(&LEGACY_SET, &legacy_event("u", LEGACY_ROW, &after))
        .expect("decodes")
        .expect("a declared source");
    let after = change.after.expect("after");
    assert_eq!(after.get("behavior"), &Scalar::Text("CLICK".into()));
    assert_eq!(after.get("payload"), &Scalar::Text(r#"{"q": "boots", "n": 3}"#.into()));
    assert_eq!(after.get("tags"), &Scalar::Text(r#"["a","b"]"#.into()));
    // Without a before image (not REPLICA IDENTITY FULL) it is refused, never kept as the
    // placeholder.
    let error =
        source_change(&LEGACY_SET, &legacy_event("u", "null", &after_json_with_placeholder()))
            .expect_err("refused");
    assert!(error.to_string().contains("REPLICA IDENTITY FULL"), "{error}");
}

fn after_json_with_placeholder() -> String {
    LEGACY_ROW.replace(
        r#""payload":"{\"q\": \"boots\", \"n\": 3}""#,
        &format!(r#""payload":"{UNAVAILABLE}""#),
    )
}

#[test]
fn a_dimension_keyed_by_a_code_keeps_an_unchanged_toasted_attribute_from_the_row_held() {
    let dimension = LEGACY_SET.item_dimension().expect("declared");
    let held = Row::parse(
        r#"{"code":"SKU-7","title":"Boot","cat":"boots","specs":"{\"size\": 42}","list_price":"99.00"}"#,
    )
    .expect("json");
    let held = rows::dimension_row(dimension, &held, |_| None).expect("decodes");
    assert_eq!(held.id, "SKU-7");
    assert_eq!(held.category.as_deref(), Some("boots"));
    assert_eq!(held.name.as_deref(), Some("Boot"));
    assert_eq!(held.price, Some(Decimal::new(9900, 2)));
    assert_eq!(held.brand, None);
    let update = Row::parse(leaked(&format!(
        r#"{{"code":"SKU-7","title":"Boot","cat":"shoes","specs":"{UNAVAILABLE}","list_price":"89.00"}}"#
    )))
    .expect("json");
    let updated = rows::dimension_row(dimension, &update, |id| {
        assert_eq!(id, "SKU-7");
        Some(held.clone())
    })
    .expect("decodes");
    assert_eq!(updated.attribute("specs"), &Scalar::Text(r#"{"size": 42}"#.into()));
    assert_eq!(updated.category.as_deref(), Some("shoes"));
    let error = rows::dimension_row(dimension, &update, |_| None).expect_err("nothing held");
    assert!(error.to_string().contains("TOASTed"), "{error}");
}

#[test]
fn tables_of_other_schemas_are_not_the_declared_source() {
    let mut event = legacy_event("c", "null", LEGACY_ROW);
    event.source.schema = Some("public".into());
    assert_eq!(source_change(&LEGACY_SET, &event).expect("decodes"), None);
}

#[test]
fn each_declared_type_reads_its_debezium_form_and_refuses_others() {
    use serde_json::json;
    // A column's value as a row image sends it, read as the column's declared type.
    let read_as = |form: &serde_json::Value, declared: &str| {
        let kind = crate::features::ColumnType::parse(declared).expect("a declared type");
        let image = json!({ "c": form }).to_string();
        let row = Row::parse(&image).expect("a row image");
        rows::scalar(row.get("c").expect("the column"), "c", kind)
    };
    let time = |micros: i64| Scalar::Time(micros);
    let text = |text: &str| Scalar::Text(text.into());
    let number = |text: &str| Scalar::Number(text.parse().expect("decimal"));
    let accepted = [
        ("text", json!("héllo"), text("héllo")),
        ("varchar", json!(""), text("")),
        ("text", json!("a \"b\"\t\\ c"), text("a \"b\"\t\\ c")),
        ("enum", json!("PAID"), text("PAID")),
        (
            "uuid",
            json!("8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01"),
            text("8d3e3f63-5a8e-4d1c-9d43-0d0d0c0d0e01"),
        ),
        ("json", json!("{\"a\": [1, 2]}"), text("{\"a\": [1, 2]}")),
        ("jsonb", json!({"a": 1}), text("{\"a\":1}")),
        ("smallint", json!(-7), number("-7")),
        ("integer", json!(2147483647), number("2147483647")),
        ("bigint", json!(9007199254740993_i64), number("9007199254740993")),
        ("numeric", json!("12.50"), number("12.50")),
        ("real", json!(0.5), number("0.5")),
        ("double precision", json!(-1.25), number("-1.25")),
        ("boolean", json!(false), text("false")),
        ("timestamp", json!(1795316793698261_i64), time(1795316793698261)),
        ("timestamp(3)", json!(1795316793698_i64), time(1795316793698000)),
        ("timestamptz", json!("2026-11-22T03:06:33.698261Z"), time(1795316793698261)),
        ("timestamptz", json!("2026-11-22T05:06:33+02:00"), time(1795316793000000)),
        ("date", json!(-1), time(-86_400_000_000)),
        ("text[]", json!(["a", "b \"c\""]), text(r#"["a","b \"c\""]"#)),
        ("integer[]", json!([1, -2]), text("[1,-2]")),
        ("numeric[]", json!(["1.50", "2"]), text(r#"["1.50","2"]"#)),
        ("boolean[]", json!([true]), text("[true]")),
        ("text[]", json!([]), text("[]")),
    ];
    for (declared, form, expected) in accepted {
        assert_eq!(read_as(&form, declared), Ok(expected), "{declared} from {form}");
    }
    let refused = [
        ("text", json!(1)),
        ("uuid", json!(true)),
        ("integer", json!("1")),
        ("integer", json!(1.5)),
        ("numeric", json!(12.5)),
        ("numeric", json!("AjH0")),
        ("real", json!("NaN")),
        ("boolean", json!("true")),
        ("timestamp", json!("yesterday")),
        ("timestamp(3)", json!(true)),
        ("timestamptz", json!("2026-11-22")),
        ("date", json!("2026-11-22")),
        ("text[]", json!([1])),
        ("integer[]", json!(["1"])),
        ("numeric[]", json!([1.5])),
        ("boolean[]", json!([1])),
        ("text[]", json!("a")),
    ];
    for (declared, form) in refused {
        let error = read_as(&form, declared).expect_err(declared);
        assert!(
            matches!(error, DecodeError::InvalidField { field: "c", .. }),
            "{declared}: {error}"
        );
    }
    assert_eq!(crate::features::ColumnType::parse("money"), None);
    assert_eq!(crate::features::ColumnType::parse("json[]"), None);
}
