//! Layout version 4 (5 compressed): a feature written field by field; layouts 14 to 19 with
//! its facts' times in their largest common unit.

use serde::{Deserialize, Serialize};

use super::{CodecError, FeatureForm, Item, Texts, WireKey, walk_feature};
use crate::features::FeatureState;

/// A feature in layout version 4: the fields of [`WireFeature`](super::rows::WireFeature), each in
/// a column of its own.
/// A column repeats one kind of number (a plain count's buckets hold one value, `""`, with one
/// or two rows; a view's facts are all keyless), which zstd then takes almost for free, where
/// interleaved with bucket times it could not (BENCHMARKS.md, "Features in columns").
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct ColumnFeature {
    pub(super) name: u32,
    /// Each bucket's difference from the one before it (the first's from 0), ascending.
    pub(super) bucket_deltas: Vec<i64>,
    /// How many values each bucket holds.
    pub(super) bucket_widths: Vec<u32>,
    /// The values of every bucket, bucket after bucket, as places in the table.
    pub(super) values: Vec<u32>,
    /// The rows of each of `values`.
    pub(super) rows: Vec<i64>,
    /// The oldest fact's time; each fact's is its difference from the fact before it.
    pub(super) facts_since_us: i64,
    pub(super) fact_since: Vec<u64>,
    pub(super) fact_values: Vec<u32>,
    /// Each fact's row key; empty when no fact has one.
    pub(super) fact_keys: Vec<WireKey>,
}

pub(super) fn encode_columns<'a>(
    texts: &mut Texts<'a>,
    name: &'a str,
    state: &'a FeatureState,
) -> ColumnFeature {
    let keyed = state.facts.keyed();
    // Sized once: at most a bucket per entry.
    let entries = state.buckets.entry_count();
    let mut feature = ColumnFeature {
        name: texts.place(name),
        bucket_deltas: Vec::with_capacity(entries),
        bucket_widths: Vec::with_capacity(entries),
        values: Vec::with_capacity(entries),
        rows: Vec::with_capacity(entries),
        fact_since: Vec::with_capacity(state.facts.len()),
        fact_values: Vec::with_capacity(state.facts.len()),
        ..ColumnFeature::default()
    };
    feature.facts_since_us = walk_feature(texts, state, |item| match item {
        Item::Bucket(delta) => {
            feature.bucket_deltas.push(delta);
            feature.bucket_widths.push(0);
        }
        Item::Value(place, rows) => {
            feature.values.push(place);
            feature.rows.push(rows);
            if let Some(width) = feature.bucket_widths.last_mut() {
                *width += 1;
            }
        }
        Item::Fact(key, since, value) => {
            feature.fact_since.push(since);
            feature.fact_values.push(value);
            if keyed {
                feature.fact_keys.push(key);
            }
        }
    });
    feature
}

impl FeatureForm for ColumnFeature {
    fn name(&self) -> u32 {
        self.name
    }

    fn buckets(&self) -> Result<Vec<(i64, u32, i64)>, CodecError> {
        let uneven = self.bucket_deltas.len() != self.bucket_widths.len()
            || self.values.len() != self.rows.len()
            || self.bucket_widths.iter().map(|w| *w as usize).sum::<usize>() != self.values.len();
        if uneven {
            return Err(CodecError::Columns("buckets"));
        }
        let mut cells = self.values.iter().zip(&self.rows);
        let mut bucket = 0;
        let mut flat = Vec::with_capacity(self.values.len());
        for (delta, width) in self.bucket_deltas.iter().zip(&self.bucket_widths) {
            bucket = i64::wrapping_add(bucket, *delta);
            let cell = cells.by_ref().take(*width as usize);
            flat.extend(cell.map(|(place, rows)| (bucket, *place, *rows)));
        }
        Ok(flat)
    }

    fn facts(&self) -> Result<Vec<(&WireKey, u64, u32)>, CodecError> {
        let facts = self.fact_since.len();
        let keys = self.fact_keys.len();
        if self.fact_values.len() != facts || (keys != 0 && keys != facts) {
            return Err(CodecError::Columns("facts"));
        }
        let key = |index: usize| self.fact_keys.get(index).unwrap_or(&WireKey::None);
        let each = self.fact_since.iter().zip(&self.fact_values).enumerate();
        Ok(each.map(|(index, (since, value))| (key(index), *since, *value)).collect())
    }

    fn facts_since_us(&self) -> i64 {
        self.facts_since_us
    }
}

/// A feature in the column form of layouts 14 to 19: [`ColumnFeature`] with its facts' times
/// written in their largest common unit. A source that stamps its rows to the millisecond (or
/// the second) dates its facts in microseconds that are all multiples of 1,000: divided by it,
/// each time difference takes a byte or two less, which zstd alone does not see (BENCHMARKS.md,
/// "Facts' times in their common unit").
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct UnitColumnFeature {
    /// Every fact's time difference is a multiple of it; 1 when there are no facts.
    pub(super) fact_unit: u64,
    pub(super) columns: ColumnFeature,
}

pub(super) fn encode_unit_columns<'a>(
    texts: &mut Texts<'a>,
    name: &'a str,
    state: &'a FeatureState,
) -> UnitColumnFeature {
    let mut columns = encode_columns(texts, name, state);
    let unit = columns.fact_since.iter().fold(0, |unit, since| gcd(unit, *since)).max(1);
    if unit > 1 {
        for since in &mut columns.fact_since {
            *since /= unit;
        }
    }
    UnitColumnFeature { fact_unit: unit, columns }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl FeatureForm for UnitColumnFeature {
    fn name(&self) -> u32 {
        self.columns.name
    }

    fn buckets(&self) -> Result<Vec<(i64, u32, i64)>, CodecError> {
        self.columns.buckets()
    }

    fn facts(&self) -> Result<Vec<(&WireKey, u64, u32)>, CodecError> {
        let unit = self.fact_unit;
        let facts = self.columns.facts()?;
        if unit == 0 {
            return Err(CodecError::Columns("facts' times"));
        }
        if unit == 1 {
            return Ok(facts);
        }
        let scaled = facts
            .into_iter()
            .map(|(key, since, value)| since.checked_mul(unit).map(|since| (key, since, value)));
        scaled.collect::<Option<_>>().ok_or(CodecError::Columns("facts' times"))
    }

    fn facts_since_us(&self) -> i64 {
        self.columns.facts_since_us
    }
}
