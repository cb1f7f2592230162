//! Row images of declared tables, decoded column by column by their declared Postgres types (see
//! [`ColumnType`] for the form Debezium sends each in).
//!
//! A column stored out of line (TOASTed) that an update did not touch is not in the WAL's new
//! row: Debezium sends `__debezium_unavailable_value` in its place. Such a column keeps the value
//! it had: from the update's before image (sources are REPLICA IDENTITY FULL, whose old rows
//! Postgres writes whole), or for the dimension from the row persona holds. Without either the
//! image is refused, never stored with the placeholder.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use compact_str::CompactString;
use rust_decimal::Decimal;
use serde_json::Value;

use super::envelope::{DecodeError, RawJson, Row};
use crate::features::source::{ColumnType, ElementType};
use crate::features::{Columns, DimensionSchema, Product, RowKey, Scalar, SourceRow, SourceSchema};

/// What Debezium sends for an unchanged TOASTed column (its `unavailable.value.placeholder`).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The event times a row may have: those chrono can date (some 262,000 years either side of
/// 1970), as the API reports them. A `DATE` or millisecond column may hold more.
const TIME_RANGE_US: std::ops::RangeInclusive<i64> =
    DateTime::<Utc>::MIN_UTC.timestamp_micros()..=DateTime::<Utc>::MAX_UTC.timestamp_micros();

fn invalid(field: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidField { field, reason }
}

fn present<'a>(row: &Row<'a>, name: &str) -> Option<RawJson<'a>> {
    row.get(name).filter(|value| !value.is_null())
}

/// A JSON integer; `None` for any other JSON value (`1.5`, `"1"`).
fn as_integer(value: RawJson) -> Option<i64> {
    serde_json::from_str(value.get()).ok()
}

fn is_number(value: RawJson) -> bool {
    value.get().starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

fn is_unavailable(value: RawJson) -> bool {
    match value.get().as_bytes().first() {
        Some(b'"') => value.as_str().is_some_and(|text| text == UNAVAILABLE),
        // Arrays stand in as an array of the placeholder.
        Some(b'[') => {
            serde_json::from_str::<[String; 1]>(value.get()).is_ok_and(|[text]| text == UNAVAILABLE)
        }
        _ => false,
    }
}

/// `TIMESTAMPTZ` (ISO-8601 string) or `TIMESTAMP` (microseconds since the epoch, read as UTC),
/// in microseconds since the epoch.
pub fn timestamp_micros(value: RawJson, name: &'static str) -> Result<i64, DecodeError> {
    if let Some(text) = value.as_str() {
        if let Some(micros) = utc_micros(&text) {
            return Ok(micros);
        }
        return DateTime::parse_from_rfc3339(&text)
            .map(|t| t.timestamp_micros())
            .map_err(|e| invalid(name, format!("{text:?} is not an ISO-8601 timestamp: {e}")));
    }
    if is_number(value) {
        return as_integer(value)
            .filter(|micros| TIME_RANGE_US.contains(micros))
            .ok_or_else(|| invalid(name, format!("{value} is not a timestamp in microseconds")));
    }
    Err(invalid(name, format!("expected a timestamp, got {value}")))
}

/// A time as Debezium sends a `TIMESTAMPTZ` (`2026-11-20T10:00:00.123456Z`: UTC, zero to nine
/// digits of fraction), in one pass; `None` for any other form (an offset, a leap second, a year
/// past 9999), which chrono's RFC 3339 parser reads instead. That general parser took 2% of
/// decode + apply's instructions, for one time in each row.
fn utc_micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20 || separators.iter().any(|&(at, byte)| bytes[at] != byte) {
        return None;
    }
    let [fraction @ .., b'Z'] = &bytes[19..] else { return None };
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |number, &digit| {
            digit.is_ascii_digit().then(|| number * 10 + u32::from(digit - b'0'))
        })
    };
    let nanos = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let part = |from: usize, to: usize| number(&bytes[from..to]);
    let date = NaiveDate::from_ymd_opt(part(0, 4)? as i32, part(5, 7)?, part(8, 10)?)?;
    let (hour, minute, second) = (part(11, 13)?, part(14, 16)?, part(17, 19)?);
    // Refuses a sixtieth second, which chrono's parser reads as a leap second.
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some(date.and_time(time).and_utc().timestamp_micros())
}

/// `NUMERIC` as sent with `decimal.handling.mode=string`.
pub fn parse_decimal(value: RawJson, name: &'static str) -> Result<Decimal, DecodeError> {
    match value.as_str() {
        Some(text) => text
            .parse::<Decimal>()
            .map_err(|e| invalid(name, format!("{text:?} is not a decimal: {e}"))),
        None => Err(invalid(
            name,
            format!("expected a decimal string (is decimal.handling.mode=string?), got {value}"),
        )),
    }
}

fn integer(value: RawJson, name: &'static str) -> Result<i64, DecodeError> {
    as_integer(value).ok_or_else(|| invalid(name, format!("expected an integer, got {value}")))
}

fn element_fits(element: ElementType, value: &Value) -> bool {
    match element {
        ElementType::Text => value.is_string(),
        ElementType::Integer => value.is_i64(),
        ElementType::Number => value.as_str().is_some_and(|s| s.parse::<Decimal>().is_ok()),
        ElementType::Boolean => value.is_boolean(),
    }
}

/// A document or array, parsed: its text as `serde_json` prints it is compact.
fn parsed(value: RawJson) -> Option<Value> {
    serde_json::from_str(value.get()).ok()
}

/// One non-NULL, available value of a column of type `kind`.
pub fn scalar(value: RawJson, name: &'static str, kind: ColumnType) -> Result<Scalar, DecodeError> {
    let expected = |what: &str| invalid(name, format!("expected {what}, got {value}"));
    Ok(match kind {
        ColumnType::Text | ColumnType::Uuid => match value.as_str() {
            Some(text) => Scalar::Text(text.into()),
            None => return Err(expected("a string")),
        },
        ColumnType::Json => match value.as_str() {
            Some(text) => Scalar::Text(text.into()),
            // A converter that parses documents: keep their JSON text.
            None => Scalar::Text(
                parsed(value).map_or_else(|| value.to_string(), |v| v.to_string()).into(),
            ),
        },
        ColumnType::Integer => Scalar::Number(Decimal::from(integer(value, name)?)),
        ColumnType::Number => Scalar::Number(parse_decimal(value, name)?),
        ColumnType::Float => {
            let float = is_number(value).then(|| serde_json::from_str::<f64>(value.get()).ok());
            match float.flatten().and_then(|f| Decimal::try_from(f).ok()) {
                Some(number) => Scalar::Number(number),
                None => return Err(expected("a finite number")),
            }
        }
        ColumnType::Boolean => match value.get() {
            flag @ ("true" | "false") => Scalar::Text(flag.into()),
            _ => return Err(expected("true or false")),
        },
        ColumnType::Timestamp | ColumnType::Timestamptz => {
            Scalar::Time(timestamp_micros(value, name)?)
        }
        ColumnType::TimestampMillis if is_number(value) => {
            Scalar::Time(integer(value, name)?.saturating_mul(1000))
        }
        ColumnType::TimestampMillis => Scalar::Time(timestamp_micros(value, name)?),
        ColumnType::Date => Scalar::Time(integer(value, name)?.saturating_mul(MICROS_PER_DAY)),
        ColumnType::Array(element) => match parsed(value) {
            Some(Value::Array(items)) if items.iter().all(|item| element_fits(element, item)) => {
                Scalar::Text(Value::Array(items).to_string().into())
            }
            _ => return Err(expected(&format!("an array of {element:?}"))),
        },
    })
}

/// The declared `columns` of an image. An unchanged TOASTed column takes its value from
/// `previous` (the same row as it was), and is refused without one.
fn decode_columns(
    columns: &[(&'static str, ColumnType)],
    row: &Row,
    previous: Option<&Columns>,
    table: impl Fn() -> String,
) -> Result<Columns, DecodeError> {
    let mut decoded = Columns::with_capacity(columns.len());
    for (name, kind) in columns {
        let value = match present(row, name) {
            None => Scalar::Null,
            Some(value) if is_unavailable(value) => {
                match previous.and_then(|previous| previous.get(name)) {
                    Some(kept) => kept.clone(),
                    None => {
                        return Err(invalid(
                            name,
                            format!(
                                "is an unchanged TOASTed value and its previous value is unknown \
                                 (is {} REPLICA IDENTITY FULL?)",
                                table()
                            ),
                        ));
                    }
                }
            }
            Some(value) => scalar(value, name, *kind)?,
        };
        decoded.push(name, value);
    }
    Ok(decoded)
}

fn missing_key(source: &SourceSchema, column: &'static str) -> DecodeError {
    // What a delete's before image looks like when the table is not REPLICA IDENTITY FULL.
    invalid(
        column,
        format!("missing or empty (is {} REPLICA IDENTITY FULL?)", source.qualified_table()),
    )
}

/// A row image of a declared source. `committed_ms` stands in for the event time where the
/// source has no time column (or, when it says so, where it is NULL); `previous` is the same
/// row before the change, for unchanged TOASTed columns.
pub fn source_row(
    source: &SourceSchema,
    row: &Row,
    committed_ms: Option<i64>,
    previous: Option<&SourceRow>,
) -> Result<SourceRow, DecodeError> {
    // Named only in errors: formatting it for every row was an allocation per change.
    let table = || source.qualified_table();
    let mut columns =
        decode_columns(&source.columns, row, previous.map(|previous| &previous.columns), table)?;
    for (column, _) in &source.mappings {
        if let Some(slot) = columns.get_mut(column)
            && let Some(coded) = slot.as_key()
        {
            let name =
                source.mapped(column, &coded).map_or_else(|| coded.into(), CompactString::from);
            *slot = Scalar::Text(name);
        }
    }
    let present =
        |name: &str| columns.get(name).and_then(Scalar::as_key).filter(|value| !value.is_empty());
    let key_part =
        |column: &'static str| present(column).ok_or_else(|| missing_key(source, column));
    let key = match source.key.as_slice() {
        // Most tables' key is one column: read in place, with no list of parts to join.
        [single] => RowKey::new(&key_part(single)?),
        columns => {
            let parts = columns.iter().map(|column| key_part(column));
            RowKey::new(&parts.collect::<Result<Vec<_>, _>>()?.join("/"))
        }
    };
    let mut ids = Vec::with_capacity(source.entities.len());
    for (entity, column) in &source.entities {
        match present(column) {
            Some(id) => ids.push((*entity, id.into())),
            None if *entity == source.keyed_by => return Err(missing_key(source, column)),
            None => {}
        }
    }
    let time_us = match source.time_column.map(|column| (column, columns.get(column))) {
        Some((column, Some(Scalar::Time(micros)))) => {
            Some(*micros).filter(|micros| TIME_RANGE_US.contains(micros)).ok_or_else(|| {
                invalid(column, format!("{micros} µs since 1970 is past the times persona reads"))
            })?
        }
        Some((column, _)) if !source.time_from_commit_if_null => {
            return Err(DecodeError::MissingField(column));
        }
        _ => committed_ms
            .and_then(|ms| ms.checked_mul(1000))
            .filter(|micros| TIME_RANGE_US.contains(micros))
            .ok_or(DecodeError::MissingField("source.ts_ms"))?,
    };
    Ok(SourceRow { key, columns, ids, time_us })
}

/// A row image of the dimension. `previous` is the same row as persona holds it, for unchanged
/// TOASTed attributes.
pub fn dimension_row(
    dimension: &DimensionSchema,
    row: &Row,
    previous: impl FnOnce(&str) -> Option<Product>,
) -> Result<Product, DecodeError> {
    let Some(key) = present(row, dimension.key) else {
        return Err(DecodeError::MissingField(dimension.key));
    };
    let id = match (key.as_str(), as_integer(key)) {
        (Some(id), _) if id.is_empty() => return Err(DecodeError::MissingField(dimension.key)),
        (Some(id), _) => id.into_owned(),
        (None, Some(id)) => id.to_string(),
        (None, None) => {
            return Err(invalid(dimension.key, format!("expected a string or integer, got {key}")));
        }
    };
    let unavailable =
        dimension.attributes.iter().any(|(name, _)| present(row, name).is_some_and(is_unavailable));
    let kept = if unavailable { previous(&id) } else { None };
    let table = || dimension.qualified_table();
    let attributes = decode_columns(
        &dimension.attributes,
        row,
        kept.as_ref().map(|product| &product.attributes),
        table,
    )?;
    Ok(Product { id, attributes, ..Product::default() }.with_roles(&dimension.roles))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chrono_micros(text: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
    }

    #[test]
    fn debeziums_form_takes_the_one_pass() {
        for text in
            ["2026-11-20T10:00:00.123456Z", "2026-11-20T10:00:00Z", "2024-02-29T23:59:59.9Z"]
        {
            assert_eq!(utc_micros(text), chrono_micros(text), "{text}");
            assert!(utc_micros(text).is_some(), "{text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Times in Debezium's form read as chrono reads them; every other text, valid or not,
        /// is left to chrono.
        #[test]
        fn times_read_as_chrono_reads_them(
            year in prop_oneof![0u32..=10_000, 1969u32..=2100],
            month in 0u32..=13,
            day in 0u32..=32,
            hour in 0u32..=24,
            minute in 0u32..=60,
            second in 0u32..=61,
            dot in any::<bool>(),
            fraction in "[0-9]{0,11}",
            separator in prop::sample::select(vec!['T', 't', ' ']),
            zone in prop::sample::select(vec!["Z", "z", "+00:00", "-05:30", "", "+01"]),
        ) {
            let dot = if dot { "." } else { "" };
            let text = format!(
                "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{dot}{fraction}{zone}"
            );
            let debeziums_form = year <= 9_999
                && separator == 'T'
                && zone == "Z"
                && second < 60
                // A fraction of one to nine digits after a dot, or neither.
                && (1..=9).contains(&fraction.len()) != dot.is_empty();
            let expected = chrono_micros(&text).filter(|_| debeziums_form);
            prop_assert_eq!(utc_micros(&text), expected, "{}", text);
        }
    }
}
