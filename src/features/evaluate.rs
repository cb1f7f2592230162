//! Reading features: evaluates an entity's state at a reference time, joining product attributes
//! from the catalog as they are now.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use serde_json::{Value, json};

use super::catalog::Catalog;
use super::definition::{Aggregation, Entity, Feature, FeatureSet, ValueExpr};
use super::expiry::DecayParts;
use super::row_key::RowKey;
use super::source::Scalar;
use super::state::{EntityState, Fact, stored_number};
use super::view::FeatureView;

/// HyperLogLog++ precision: 2^14 registers, a standard error of 1.04/√16384 ≈ 0.81%. Below
/// about 12,000 distinct values the sparse representation is used, which is close to exact.
pub const HLL_PRECISION: u8 = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureStatus {
    /// Computed from state that is current as far as persona knows.
    Present,
    /// Nothing to compute it from (unknown entity, or no such event yet).
    Missing,
    /// Served from the in-process cache while Redis is unreachable; may lag behind the source.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FeatureValue {
    pub status: FeatureStatus,
    /// A number, string, list or object as the feature defines; null when missing.
    pub value: Value,
    /// Event time of the newest event the value is derived from.
    pub event_time: Option<DateTime<Utc>>,
}

impl FeatureValue {
    pub fn missing() -> Self {
        Self { status: FeatureStatus::Missing, value: Value::Null, event_time: None }
    }

    fn present(value: Value, newest_us: Option<i64>) -> Self {
        Self {
            status: FeatureStatus::Present,
            value,
            event_time: newest_us
                .filter(|t| *t > i64::MIN)
                .and_then(DateTime::from_timestamp_micros),
        }
    }
}

/// Feature name → value, in name order.
pub type Features = BTreeMap<String, FeatureValue>;

/// Every product's value of the feature a percentile ranks, at one read time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranking {
    /// Sorted ascending.
    values: Vec<f64>,
}

impl Ranking {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self { values }
    }

    /// Replaces one product's value: `old` is dropped (when ranked), `new` added (when `Some`).
    pub fn replace(&mut self, old: Option<f64>, new: Option<f64>) {
        if let Some(old) = old {
            let at = self.values.partition_point(|v| v.total_cmp(&old).is_lt());
            if self.values.get(at).is_some_and(|v| v.total_cmp(&old).is_eq()) {
                self.values.remove(at);
            }
        }
        if let Some(new) = new {
            let at = self.values.partition_point(|v| v.total_cmp(&new).is_lt());
            self.values.insert(at, new);
        }
    }

    /// `PERCENT_RANK`: the share of the other products ranked strictly below `value`, in percent,
    /// rounded down to a multiple of `step`.
    pub fn percentile(&self, value: f64, step: u32) -> Option<u64> {
        let n = self.values.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let below = self.values.partition_point(|v| *v < value);
        let percent = (below * 100) / (n - 1);
        let step = step.max(1) as usize;
        Some(((percent / step) * step) as u64)
    }
}

/// What a read is evaluated against.
pub struct ReadContext<'a> {
    /// The reference time windows end at.
    pub at: DateTime<Utc>,
    pub catalog: &'a dyn Catalog,
    /// The whole-catalog ranking of a feature, for percentiles (shared, not copied per read).
    pub ranking: &'a dyn Fn(&Feature) -> Option<Arc<Ranking>>,
}

/// Evaluates `names` (every feature of `entity` when `None`) of one entity.
/// `state` is `None` for an entity persona has no state for: every feature is missing.
pub fn evaluate(
    set: &FeatureSet,
    entity: Entity,
    entity_id: &str,
    state: Option<&EntityState>,
    names: Option<&[String]>,
    context: &ReadContext<'_>,
) -> Features {
    let ReadContext { at, catalog, ranking } = *context;
    let wanted = |feature: &&Feature| {
        names.is_none_or(|names| names.iter().any(|name| name == feature.name))
    };
    let mut features = Features::new();
    for feature in set.of_entity(entity).filter(wanted) {
        let value = match state {
            None => FeatureValue::missing(),
            Some(state) if feature.aggregation == Aggregation::Percentile => {
                percentile(set, feature, entity_id, state, at, catalog, ranking)
            }
            Some(state) => evaluate_one(feature, FeatureView::of(feature, state), at, catalog),
        };
        features.insert(feature.name.to_string(), value);
    }
    features
}

fn percentile(
    set: &FeatureSet,
    feature: &Feature,
    entity_id: &str,
    state: &EntityState,
    at: DateTime<Utc>,
    catalog: &dyn Catalog,
    ranking: &dyn Fn(&Feature) -> Option<Arc<Ranking>>,
) -> FeatureValue {
    let Some(of) = feature.of.as_deref().and_then(|name| set.get(name)) else {
        return FeatureValue::missing();
    };
    if !catalog.contains(entity_id) {
        return FeatureValue::missing();
    }
    let own = evaluate_one(of, FeatureView::of(of, state), at, catalog);
    let (Some(value), Some(ranking)) = (own.value.as_f64(), ranking(of)) else {
        return FeatureValue::missing();
    };
    match ranking.percentile(value, feature.step) {
        Some(rank) => FeatureValue { value: json!(rank), ..own },
        None => FeatureValue::missing(),
    }
}

/// The value a stored value stands for when read: the joined product attribute (`None` when the
/// product or the attribute is unknown), banded if the feature has bands.
fn resolve(feature: &Feature, stored: &str, catalog: &dyn Catalog) -> Option<String> {
    let scalar = match feature.value {
        ValueExpr::Attribute(entity, attr) => catalog.attribute(entity, stored, attr)?,
        _ => {
            if feature.bands.is_empty() {
                return Some(stored.to_string());
            }
            Scalar::Number(stored_number(stored)?)
        }
    };
    if feature.bands.is_empty() {
        return scalar.as_key().map(Cow::into_owned);
    }
    scalar.as_number().map(|number| feature.band_of(number))
}

fn resolve_number(feature: &Feature, stored: &str, catalog: &dyn Catalog) -> Option<Decimal> {
    match feature.value {
        ValueExpr::Attribute(entity, attr) => catalog.attribute(entity, stored, attr)?.as_number(),
        _ => stored_number(stored),
    }
}

fn number(value: Decimal) -> Value {
    let value = value.normalize();
    if value.scale() == 0
        && let Some(integer) = value.to_i64()
    {
        return json!(integer);
    }
    value.to_f64().map_or(Value::Null, |f| json!(f))
}

/// Value → count over the buckets in the window read at `at`, and the start of the newest
/// bucket with rows: event times of bucketed values have the window's bucket resolution.
fn window_counts(
    feature: &Feature,
    state: FeatureView<'_>,
    at_us: i64,
) -> (BTreeMap<String, i64>, Option<i64>) {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut newest: Option<i64> = None;
    for (start_us, cell) in state.buckets() {
        let start = match feature.window {
            // A shared state's bucket lies within one of the window's.
            Some(window) if window.contains(at_us, start_us) => {
                Some(window.bucket_of(start_us) * window.bucket_us)
            }
            Some(_) => continue,
            None => None,
        };
        newest = newest.max(start);
        for (value, count) in cell.iter() {
            match counts.get_mut(value) {
                Some(total) => *total += count,
                None => {
                    counts.insert(value.to_string(), count);
                }
            }
        }
    }
    (counts, newest)
}

/// Facts in the window read at `at` (not after `at` when unwindowed), newest first.
fn window_facts<'a>(
    feature: &Feature,
    state: FeatureView<'a>,
    at_us: i64,
) -> impl Iterator<Item = (&'a RowKey, &'a Fact)> {
    let window = feature.window;
    state.facts().iter().rev().filter(move |(_, fact)| match window {
        Some(window) => window.contains(at_us, fact.at_us),
        None => fact.at_us <= at_us,
    })
}

fn evaluate_one(
    feature: &Feature,
    state: FeatureView<'_>,
    at: DateTime<Utc>,
    catalog: &dyn Catalog,
) -> FeatureValue {
    let at_us = at.timestamp_micros();
    match feature.aggregation {
        Aggregation::Count => {
            let (counts, newest) = window_counts(feature, state, at_us);
            FeatureValue::present(json!(counts.values().sum::<i64>()), newest)
        }
        Aggregation::Sum | Aggregation::Avg => {
            let (counts, newest) = window_counts(feature, state, at_us);
            let mut sum = Decimal::ZERO;
            let mut n = 0i64;
            for (stored, count) in &counts {
                if let Some(value) = resolve_number(feature, stored, catalog) {
                    sum += value * Decimal::from(*count);
                    n += count;
                }
            }
            if feature.aggregation == Aggregation::Sum {
                FeatureValue::present(number(sum), newest)
            } else if n == 0 {
                FeatureValue::missing()
            } else {
                FeatureValue::present(number(sum / Decimal::from(n)), newest)
            }
        }
        Aggregation::DistinctCount => {
            let (counts, newest) = window_counts(feature, state, at_us);
            let mut sketch: HyperLogLogPlus<str, BuildHasherDefault<std::hash::DefaultHasher>> =
                match HyperLogLogPlus::new(HLL_PRECISION, BuildHasherDefault::default()) {
                    Ok(sketch) => sketch,
                    Err(_) => return FeatureValue::missing(),
                };
            for stored in counts.keys() {
                if let Some(value) = resolve(feature, stored, catalog) {
                    sketch.insert(value.as_str());
                }
            }
            FeatureValue::present(json!(sketch.count().round() as u64), newest)
        }
        Aggregation::DecayedCount => match DecayParts::of(feature, state, at_us) {
            Some(parts) => FeatureValue::present(json!(parts.at(at_us)), parts.newest_us),
            None => FeatureValue::missing(),
        },
        Aggregation::CoOccurrence => {
            let (counts, newest) = window_counts(feature, state, at_us);
            let mut ranked: Vec<(String, i64)> =
                counts.into_iter().filter(|(_, count)| *count > 0).collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            ranked.truncate(feature.k);
            let value = Value::Array(
                ranked.into_iter().map(|(v, c)| json!({"value": v, "count": c})).collect(),
            );
            FeatureValue::present(value, newest)
        }
        Aggregation::Histogram | Aggregation::TopK | Aggregation::Conversion => {
            let (counts, newest) = window_counts(feature, state, at_us);
            let mut histogram: BTreeMap<String, i64> = BTreeMap::new();
            for (stored, count) in &counts {
                if let Some(value) = resolve(feature, stored, catalog) {
                    *histogram.entry(value).or_default() += count;
                }
            }
            let value = match feature.aggregation {
                Aggregation::Histogram => json!(histogram),
                Aggregation::TopK => {
                    let mut ranked: Vec<(String, i64)> = histogram.into_iter().collect();
                    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    ranked.truncate(feature.k);
                    Value::Array(
                        ranked.into_iter().map(|(v, c)| json!({"value": v, "count": c})).collect(),
                    )
                }
                _ => conversion(feature, &histogram),
            };
            FeatureValue::present(value, newest)
        }
        Aggregation::Last => window_facts(feature, state, at_us)
            .find_map(|(_, fact)| {
                resolve(feature, &fact.value, catalog)
                    .map(|value| FeatureValue::present(json!(value), Some(fact.at_us)))
            })
            .unwrap_or_else(FeatureValue::missing),
        Aggregation::LastN => {
            let facts = window_facts(feature, state, at_us);
            let mut seen = BTreeSet::new();
            let mut values = Vec::new();
            let mut newest = None;
            for (_, fact) in facts {
                if values.len() == feature.n {
                    break;
                }
                if let Some(value) = resolve(feature, &fact.value, catalog)
                    && seen.insert(value.clone())
                {
                    newest = newest.max(Some(fact.at_us));
                    values.push(json!(value));
                }
            }
            FeatureValue::present(Value::Array(values), newest)
        }
        Aggregation::Intervals => {
            let facts = window_facts(feature, state, at_us);
            let times: Vec<i64> = facts.take(feature.n).map(|(_, f)| f.at_us).collect();
            if times.len() < 2 {
                return FeatureValue::missing();
            }
            let intervals: Vec<Value> =
                times.windows(2).map(|pair| json!((pair[0] - pair[1]) as f64 / 1e6)).collect();
            FeatureValue::present(Value::Array(intervals), times.first().copied())
        }
        Aggregation::CurrentSum | Aggregation::CurrentCount => {
            let facts = state.facts();
            let newest = facts.newest().map(|fact| fact.at_us);
            if feature.aggregation == Aggregation::CurrentCount {
                return FeatureValue::present(json!(facts.len()), newest);
            }
            let sum: Decimal = facts
                .values()
                .filter_map(|fact| resolve_number(feature, &fact.value, catalog))
                .sum();
            FeatureValue::present(number(sum), newest)
        }
        Aggregation::Percentile => FeatureValue::missing(),
    }
}

/// `{"counts": {step: n}, "rates": [step2/step1, step3/step2, …]}`; a rate is null when the
/// step before it has no events.
fn conversion(feature: &Feature, histogram: &BTreeMap<String, i64>) -> Value {
    let counts: Vec<i64> =
        feature.steps.iter().map(|step| histogram.get(step).copied().unwrap_or(0)).collect();
    let rates: Vec<Value> = counts
        .windows(2)
        .map(|pair| if pair[0] == 0 { Value::Null } else { json!(pair[1] as f64 / pair[0] as f64) })
        .collect();
    let named: BTreeMap<&str, i64> =
        feature.steps.iter().map(String::as_str).zip(counts.iter().copied()).collect();
    json!({"counts": named, "rates": rates})
}
