//! The JSON reader against serde_json: the same documents accepted and refused, the same
//! strings and integers read, and envelopes read as serde_json's own tree of them says.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{RawJson, Reader};
use crate::decode::envelope::{CdcMessage, decode};

/// Any JSON value, strings with escapes, control characters and non-ASCII text included.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z\"\\\\/\u{1}\u{1f}é😀 ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_\"\\\\]{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The value's text, compact or pretty (whitespace between every token).
fn text_of(value: &Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(value).expect("serializes")
    } else {
        value.to_string()
    }
}

/// Whether the reader takes `text` as one JSON document.
fn reads(text: &str) -> bool {
    let mut reader = Reader::new(text);
    reader.skip().and_then(|()| reader.finish()).is_ok()
}

fn serde_reads(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// One edit of a document, in characters: what malformed messages look like.
#[derive(Debug, Clone)]
enum Edit {
    Remove(usize),
    Insert(usize, char),
    Replace(usize, char),
}

fn any_edit() -> impl Strategy<Value = Edit> {
    // JSON's own characters, where one out of place breaks the grammar.
    let byte = prop::sample::select(vec![
        '{', '}', '[', ']', ',', ':', '"', '\\', '-', '+', '.', 'e', '0', '7', 'n', 't', 'u', ' ',
        '\u{1}', 'é',
    ]);
    prop_oneof![
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), byte.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        (any::<usize>(), byte).prop_map(|(at, c)| Edit::Replace(at, c)),
    ]
}

fn edited(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let len = chars.len().max(1);
    match *edit {
        Edit::Remove(at) if !chars.is_empty() => {
            chars.remove(at % len);
        }
        Edit::Insert(at, c) => chars.insert(at % (chars.len() + 1), c),
        Edit::Replace(at, c) if !chars.is_empty() => chars[at % len] = c,
        _ => {}
    }
    chars.into_iter().collect()
}

#[test]
fn the_grammar_s_edges_are_where_serde_json_puts_them() {
    let documents = [
        "1e",
        "1e+",
        "1.",
        "1.e3",
        ".5",
        "+1",
        "-",
        "-a",
        "01",
        "-01",
        "0.0e-0",
        "1E9",
        "-0.5",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[",
        "]",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\" : 1 }",
        "{1:2}",
        "{\"a\":}",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"\\ud800\"",
        "\"\u{1}\"",
        "\"\u{7f}\"",
        "tru",
        "nul",
        "nulll",
        "falsey",
        " true ",
        "\t[\r\n]",
        "\u{c}1",
        "",
        "   ",
        "\"",
        "\"\\\"",
        "[\"a\",{\"b\":[null,false,-1.5e-3]}]",
    ];
    for text in documents {
        assert_eq!(reads(text), serde_reads(text), "{text:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_document_reads_whole_as_its_text(value in any_value(), pretty in any::<bool>()) {
        let text = text_of(&value, pretty);
        let mut reader = Reader::new(&text);
        prop_assert_eq!(reader.raw().map(RawJson::get), Ok(text.as_str()));
        prop_assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn an_edited_document_is_refused_exactly_when_serde_json_refuses_it(
        value in any_value(),
        pretty in any::<bool>(),
        edits in prop::collection::vec(any_edit(), 1..3),
    ) {
        let text = edits.iter().fold(text_of(&value, pretty), |text, edit| edited(&text, edit));
        prop_assert_eq!(reads(&text), serde_reads(&text), "{:?}", text);
    }

    #[test]
    fn strings_read_as_serde_json_reads_them(text in any::<String>()) {
        let json = Value::String(text.clone()).to_string();
        prop_assert_eq!(Reader::new(&json).string().map(|s| s.into_owned()), Ok(text));
    }

    #[test]
    fn integers_read_as_serde_json_reads_them(number in any::<i64>()) {
        let text = number.to_string();
        prop_assert_eq!(Reader::new(&text).optional_integer(), Ok(Some(number)));
    }
}

/// Strings and numbers of every length around the sixteen bytes the scans read at a time, with
/// what ends or breaks them at every place, near the message's end and far from it.
#[test]
fn scans_stop_where_serde_json_does_at_every_place() {
    let stops = ["\"", "\\n", "\\u00e9", "\\q", "\u{1}", "\u{1f}", " ", "\u{7f}", "é", "😀"];
    for length in 0..40 {
        for tail in [0, 1, 15, 16, 17, 33] {
            for stop in stops {
                let string = format!("\"{}{stop}z\"", "a".repeat(length));
                let text = format!("[{string}{}]", ",0".repeat(tail));
                assert_eq!(reads(&text), serde_reads(&text), "{text:?}");
                let mut reader = Reader::new(&string);
                let ours = reader.string().map(|s| s.into_owned()).ok();
                let ours = ours.filter(|_| reader.finish().is_ok());
                assert_eq!(ours, serde_json::from_str::<String>(&string).ok(), "{string:?}");
            }
            for after in ["", ".5", "e3", ".", "x", " ", "\"", "-", "/", ":"] {
                let number = format!("{}{after}", "9".repeat(length + 1));
                let text = format!("[{number}{}]", ",0".repeat(tail));
                assert_eq!(reads(&text), serde_reads(&text), "{text:?}");
                let mut reader = Reader::new(&number);
                let ours = reader.optional_integer().ok().flatten();
                let ours = ours.filter(|_| reader.finish().is_ok());
                let theirs = serde_json::from_str::<i64>(&number).ok();
                assert_eq!(ours, theirs, "{number:?}");
            }
        }
    }
}

#[test]
fn numbers_that_are_not_64_bit_integers_are_refused_as_integers() {
    for text in ["1.5", "1e3", "9223372036854775808", "-9223372036854775809", "\"1\"", "true"] {
        assert!(Reader::new(text).optional_integer().is_err(), "{text}");
    }
    assert_eq!(Reader::new(" null").optional_integer(), Ok(None));
    assert_eq!(Reader::new("-0").optional_integer(), Ok(Some(0)));
}

#[test]
fn nesting_deeper_than_serde_json_parses_is_refused() {
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // serde_json's limit is that of its recursive parse (passing over a value it has none).
    let serde_parses = |text: &str| serde_json::from_str::<Value>(text).is_ok();
    for depth in [127, 128, 129, 130] {
        assert_eq!(reads(&deep(depth)), serde_parses(&deep(depth)), "{depth} deep");
    }
    assert!(!reads(&deep(129)));
}

#[test]
fn errors_say_where() {
    let mut reader = Reader::new(r#"{"a" 1}"#);
    let error = reader.first_key().expect_err("no colon");
    assert_eq!(error.to_string(), "expected `:` at index 5");
    let error = Reader::new(r#""open"#).string().expect_err("not closed");
    assert_eq!(error.to_string(), "a string not closed");
}

/// An envelope with its fields in any order, some null, extra fields among them.
fn any_envelope() -> impl Strategy<Value = (Value, String)> {
    let text = prop_oneof![Just(Value::Null), "[a-z_\"\\\\é]{0,10}".prop_map(Value::String)];
    let integer = prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from)];
    let row = prop_oneof![
        Just(Value::Null),
        prop::collection::btree_map("[a-z_\"\\\\]{1,8}", any_value(), 0..5)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
    ];
    let source = (text.clone(), text.clone(), text.clone(), integer.clone(), integer.clone())
        .prop_map(|(schema, table, name, ts_ms, lsn)| {
            json!({"version": "3.6.1.Final", "schema": schema, "table": table, "name": name,
                   "ts_ms": ts_ms, "lsn": lsn, "xmin": null, "sequence": "[\"1\",\"2\"]"})
        });
    let op = prop::sample::select(vec!["c", "u", "d", "r"]).prop_map(Value::from);
    (op, row.clone(), row, source, integer, any_value(), any::<bool>()).prop_map(
        |(op, before, after, source, ts_ms, extra, pretty)| {
            let envelope = json!({"op": op, "before": before, "after": after, "source": source,
                                  "ts_ms": ts_ms, "transaction": extra});
            let text = text_of(&envelope, pretty);
            (envelope, text)
        },
    )
}

proptest! {
    #[test]
    fn an_envelope_reads_as_serde_json_reads_it((envelope, text) in any_envelope()) {
        let event = match decode(Some(text.as_bytes())) {
            Ok(CdcMessage::Change(event)) => event,
            // Refused only for a missing image, which serde_json's tree shows too.
            Err(error) => {
                prop_assert_eq!(error.kind(), "missing_image");
                return Ok(());
            }
            Ok(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(event.op.label(), envelope["op"].as_str().unwrap_or_default());
        prop_assert_eq!(event.ts_ms, envelope["ts_ms"].as_i64());
        let source = &envelope["source"];
        prop_assert_eq!(event.source.schema.as_deref(), source["schema"].as_str());
        prop_assert_eq!(event.source.table.as_deref(), source["table"].as_str());
        prop_assert_eq!(event.source.name.as_deref(), source["name"].as_str());
        prop_assert_eq!(event.source.ts_ms, source["ts_ms"].as_i64());
        prop_assert_eq!(event.source.lsn, source["lsn"].as_i64());
        for (image, row) in [("before", &event.before), ("after", &event.after)] {
            let expected = envelope[image].as_object();
            prop_assert_eq!(row.is_some(), expected.is_some(), "{}", image);
            for (column, value) in expected.into_iter().flatten() {
                let read = row.as_ref().and_then(|row| row.get(column)).map(RawJson::get);
                // Both parsed from text: serde_json does not read back every float it prints.
                let read: Option<Value> = read.and_then(|raw| serde_json::from_str(raw).ok());
                let sent: Option<Value> = serde_json::from_str(&value.to_string()).ok();
                prop_assert_eq!(read, sent, "{}", column);
            }
        }
    }
}
