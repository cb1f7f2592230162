//! Reading the definitions file: the raw TOML shape, and its compilation into [`Feature`]s with
//! every rule checked.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::sources::{Entities, RawDimension, RawEntity, RawSource, valid_name};
use super::{
    Aggregation, BUCKETS_PER_WINDOW, DefinitionError, Entity, Feature, MAX_WINDOW, MIN_WINDOW,
    Storage, ValueExpr, Window,
};
use crate::features::catalog::DimensionSchema;
use crate::features::source::{ColumnType, SourceSchema};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default = "default_history", with = "humantime_serde")]
    pub history: Duration,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<RawEntity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<RawSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimension: Vec<RawDimension>,
    #[serde(default)]
    pub feature: Vec<RawFeature>,
    /// Role → feature; not part of the fingerprint: which features recommendations read does
    /// not change what is stored.
    #[serde(default, skip_serializing)]
    pub recommendations: BTreeMap<String, String>,
}

fn default_history() -> Duration {
    Duration::from_secs(15 * 60)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeature {
    pub name: String,
    description: Option<String>,
    entity: Entity,
    source: String,
    #[serde(default)]
    filter: BTreeMap<String, OneOrMany>,
    aggregation: Aggregation,
    value: Option<String>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    n: Option<usize>,
    k: Option<usize>,
    bands: Option<Vec<Decimal>>,
    steps: Option<Vec<String>>,
    of: Option<String>,
    step: Option<u32>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    half_life: Option<Duration>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    session: Option<Duration>,
}

/// FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
pub(super) fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

pub(super) fn invalid(
    feature: &str,
    field: &'static str,
    problem: impl Into<String>,
) -> DefinitionError {
    DefinitionError::Invalid { feature: feature.to_string(), field, problem: problem.into() }
}

fn column_of(
    name: &str,
    source: &SourceSchema,
    column: &str,
    field: &'static str,
) -> Result<(&'static str, ColumnType), DefinitionError> {
    source.column(column).ok_or_else(|| {
        let known: Vec<&str> = source.columns.iter().map(|(c, _)| *c).collect();
        invalid(
            name,
            field,
            format!(
                "names column {column:?}, which source {} does not declare (it has {known:?})",
                source.name
            ),
        )
    })
}

fn parse_value(
    name: &str,
    source: &SourceSchema,
    dimensions: &[DimensionSchema],
    text: &str,
) -> Result<(ValueExpr, bool), DefinitionError> {
    if let Some((prefix, attr)) = text.split_once('.') {
        let dimension = dimensions.iter().find(|d| d.name == prefix).ok_or_else(|| {
            invalid(name, "value", format!("{text:?}: {prefix:?} is not a declared dimension"))
        })?;
        let kind = dimension.attribute(attr).ok_or_else(|| {
            let known: Vec<&str> = dimension.attributes.iter().map(|(a, _)| *a).collect();
            invalid(name, "value", format!("{text:?}: {prefix} has the attributes {known:?}"))
        })?;
        if source.entity_column(dimension.entity).is_none() {
            return Err(invalid(
                name,
                "value",
                format!(
                    "{text:?}: source {} names no {} id to join {prefix} by (declare it in its \
                     `entities`)",
                    source.name,
                    dimension.entity.label()
                ),
            ));
        }
        let attr = crate::features::source::intern(attr);
        return Ok((ValueExpr::Attribute(dimension.entity, attr), kind.is_numeric()));
    }
    if let Some((left, right)) = text.split_once('*') {
        let (left, left_type) = column_of(name, source, left.trim(), "value")?;
        let (right, right_type) = column_of(name, source, right.trim(), "value")?;
        if !left_type.is_numeric() || !right_type.is_numeric() {
            return Err(invalid(name, "value", "multiplies columns that are not both numeric"));
        }
        return Ok((ValueExpr::Product2(left, right), true));
    }
    let (column, kind) = column_of(name, source, text.trim(), "value")?;
    Ok((ValueExpr::Column(column), kind.is_numeric()))
}

pub(super) fn compile(
    raw: &RawFeature,
    entities: &Entities,
    sources: &[SourceSchema],
    dimensions: &[DimensionSchema],
) -> Result<Feature, DefinitionError> {
    let name = raw.name.as_str();
    if !valid_name(name) {
        return Err(invalid(name, "name", "must be 1 to 64 of a-z, 0-9 and _"));
    }
    let source = sources.iter().find(|s| s.name.name() == raw.source).ok_or_else(|| {
        let known: Vec<&str> = sources.iter().map(|s| s.name.name()).collect();
        invalid(name, "source", format!("{:?} is not one of {known:?}", raw.source))
    })?;
    let table = source.name;
    if !entities.declares(raw.entity) {
        return Err(invalid(
            name,
            "entity",
            format!("{:?} is not a declared entity", raw.entity.label()),
        ));
    }
    if source.entity_column(raw.entity).is_none() {
        return Err(invalid(
            name,
            "entity",
            format!(
                "{}: rows of source {} name no {} (declare it in the source's `entities`)",
                raw.entity.label(),
                source.name,
                raw.entity.label()
            ),
        ));
    }
    let aggregation = raw.aggregation;
    let storage = aggregation.storage();

    let mut filter = Vec::new();
    for (column, values) in &raw.filter {
        let (column, _) = column_of(name, source, column, "filter")?;
        let values = match values {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        };
        if values.is_empty() {
            return Err(invalid(name, "filter", format!("lists no value for {column:?}")));
        }
        filter.push((column, values));
    }

    let (value, numeric) = match (&raw.value, aggregation.needs_value()) {
        (Some(text), true) => parse_value(name, source, dimensions, text)?,
        (None, true) => {
            return Err(invalid(name, "value", format!("is required by {aggregation:?}")));
        }
        (Some(_), false) => {
            return Err(invalid(name, "value", format!("is not used by {aggregation:?}")));
        }
        // The partner of a pair is another row's product.
        (None, false) if aggregation == Aggregation::CoOccurrence => {
            let column = source.entity_column(entities.item).unwrap_or_default();
            (ValueExpr::Column(column), false)
        }
        (None, false) => (ValueExpr::Nothing, false),
    };
    if aggregation.needs_number() && !numeric {
        return Err(invalid(name, "value", format!("must be numeric for {aggregation:?}")));
    }

    let window = match (raw.window, storage) {
        (Some(_), Storage::Current | Storage::Derived) => {
            return Err(invalid(
                name,
                "window",
                format!("does not apply to {aggregation:?}, which reflects the current state"),
            ));
        }
        (Some(length), _) => {
            if length < MIN_WINDOW || length > MAX_WINDOW {
                return Err(invalid(name, "window", "must be between 1m and 30d"));
            }
            if length.as_secs() % 60 != 0 || length.subsec_nanos() != 0 {
                return Err(invalid(name, "window", "must be a whole number of minutes"));
            }
            let bucket_us =
                i64::try_from(length.as_micros()).unwrap_or(i64::MAX) / BUCKETS_PER_WINDOW;
            Some(Window { length, bucket_us })
        }
        (None, _) => None,
    };

    let count_param = |field: &'static str,
                       given: Option<usize>,
                       used: bool,
                       range: (usize, usize)| match (given, used) {
        (Some(_), false) => Err(invalid(name, field, format!("is not used by {aggregation:?}"))),
        (None, true) => Err(invalid(name, field, format!("is required by {aggregation:?}"))),
        (Some(v), true) if v < range.0 || v > range.1 => {
            Err(invalid(name, field, format!("must be between {} and {}", range.0, range.1)))
        }
        (v, _) => Ok(v.unwrap_or(0)),
    };
    let n = count_param(
        "n",
        raw.n,
        matches!(aggregation, Aggregation::LastN | Aggregation::Intervals),
        if aggregation == Aggregation::Intervals { (2, 20) } else { (1, 100) },
    )?;
    let k = count_param(
        "k",
        raw.k,
        matches!(aggregation, Aggregation::TopK | Aggregation::CoOccurrence),
        (1, 100),
    )?;
    if matches!(aggregation, Aggregation::DecayedCount | Aggregation::CoOccurrence)
        && window.is_none()
    {
        return Err(invalid(name, "window", format!("is required by {aggregation:?}")));
    }
    let half_life = match (raw.half_life, aggregation == Aggregation::DecayedCount) {
        (Some(_), false) => {
            return Err(invalid(name, "half_life", "applies only to decayed_count"));
        }
        (None, true) => return Err(invalid(name, "half_life", "is required by decayed_count")),
        (Some(half_life), true) if half_life < Duration::from_secs(1) => {
            return Err(invalid(name, "half_life", "must be at least 1s"));
        }
        (half_life, _) => half_life,
    };
    let session = match (raw.session, aggregation == Aggregation::CoOccurrence) {
        (Some(_), false) => return Err(invalid(name, "session", "applies only to co_occurrence")),
        (None, true) => return Err(invalid(name, "session", "is required by co_occurrence")),
        (Some(session), true)
            if session < Duration::from_secs(1) || session > Duration::from_secs(24 * 3600) =>
        {
            return Err(invalid(name, "session", "must be between 1s and 1d"));
        }
        (session, _) => session,
    };
    if aggregation == Aggregation::CoOccurrence {
        if raw.entity != entities.item {
            let item = entities.item;
            return Err(invalid(
                name,
                "entity",
                format!("must be {item} (the item) for co_occurrence"),
            ));
        }
        if source.entity_column(entities.shopper).is_none() {
            let shopper = entities.shopper;
            return Err(invalid(name, "source", format!("must name the {shopper} of each row")));
        }
    }

    let bands = raw.bands.clone().unwrap_or_default();
    if raw.bands.is_some() {
        if !matches!(aggregation, Aggregation::Histogram | Aggregation::TopK) {
            return Err(invalid(name, "bands", "applies only to histogram and top_k"));
        }
        if !numeric {
            return Err(invalid(name, "bands", "needs a numeric value"));
        }
        if bands.is_empty() || bands.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(invalid(name, "bands", "must be a non-empty, increasing list of bounds"));
        }
    }

    let steps = raw.steps.clone().unwrap_or_default();
    match (aggregation == Aggregation::Conversion, raw.steps.is_some()) {
        (true, _) if steps.len() < 2 => {
            return Err(invalid(name, "steps", "must list at least two funnel steps"));
        }
        (true, _) if !matches!(value, ValueExpr::Column(_)) => {
            return Err(invalid(name, "value", "must be a column of the source for conversion"));
        }
        (false, true) => return Err(invalid(name, "steps", "applies only to conversion")),
        _ => {}
    }

    let is_percentile = aggregation == Aggregation::Percentile;
    if is_percentile != raw.of.is_some() {
        return Err(invalid(name, "of", "is required by percentile, and only by it"));
    }
    if is_percentile && raw.entity != entities.item {
        let item = entities.item;
        return Err(invalid(name, "entity", format!("must be {item} (the item) for percentile")));
    }
    let step = match (raw.step, is_percentile) {
        (Some(_), false) => return Err(invalid(name, "step", "applies only to percentile")),
        (Some(step), true) if step == 0 || 100 % step != 0 => {
            return Err(invalid(name, "step", "must divide 100 (1, 5, 10, 25, …)"));
        }
        (step, _) => step.unwrap_or(10),
    };

    Ok(Feature {
        name: crate::features::source::intern(name),
        description: raw.description.clone(),
        entity: raw.entity,
        table,
        filter,
        aggregation,
        value,
        window,
        n,
        k,
        bands,
        steps,
        of: raw.of.clone(),
        step,
        half_life,
        session,
        facts_keyed: source.time_column.is_none() || source.time_from_commit_if_null,
        shared: None,
        shared_facts: None,
        session_in: None,
    })
}

pub(super) fn check_reference(
    feature: &Feature,
    all: &[Feature],
    item: Entity,
) -> Result<(), DefinitionError> {
    let Some(of) = &feature.of else { return Ok(()) };
    let target = all
        .iter()
        .find(|candidate| candidate.name == of)
        .ok_or_else(|| invalid(feature.name, "of", format!("names no feature ({of:?})")))?;
    let rankable = target.entity == item
        && matches!(
            target.aggregation,
            Aggregation::Count | Aggregation::Sum | Aggregation::DistinctCount
        );
    if !rankable {
        return Err(invalid(
            feature.name,
            "of",
            format!("{of:?} must be a {item} count, sum or distinct_count"),
        ));
    }
    if target.table != feature.table {
        return Err(invalid(feature.name, "source", format!("must be the source of {of:?}")));
    }
    Ok(())
}
