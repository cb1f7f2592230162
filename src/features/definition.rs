//! Feature definitions: read from a TOML file (`features.toml`), validated once at start with
//! errors that name the feature and the field, and compiled into [`FeatureSet`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::source::{ColumnType, SourceTable};

/// Every window is this many buckets: the bucket width is `window / 60`.
pub const BUCKETS_PER_WINDOW: i64 = 60;
const MIN_WINDOW: Duration = Duration::from_secs(60);
const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read feature definitions {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("feature definitions {path} are not valid TOML: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("feature `{feature}`: `{field}` {problem}")]
    Invalid { feature: String, field: &'static str, problem: String },
    #[error("feature definitions: `{field}` {problem}")]
    File { field: &'static str, problem: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    User,
    Product,
}

impl Entity {
    /// The source column naming the entity a row belongs to.
    pub fn column(self) -> &'static str {
        match self {
            Self::User => "user_id",
            Self::Product => "product_id",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Product => "product",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Count,
    Sum,
    Avg,
    Last,
    LastN,
    DistinctCount,
    Histogram,
    TopK,
    CurrentSum,
    CurrentCount,
    Intervals,
    Conversion,
    Percentile,
}

/// How an aggregation keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Time buckets of value → count: exactly retractable.
    Buckets,
    /// Row key → (event time, value): a delete removes the row's fact.
    Facts,
    /// Row key → value for rows that exist now, no window.
    Current,
    /// Computed at read time from other features.
    Derived,
}

impl Aggregation {
    pub fn storage(self) -> Storage {
        match self {
            Self::Count
            | Self::Sum
            | Self::Avg
            | Self::DistinctCount
            | Self::Histogram
            | Self::TopK
            | Self::Conversion => Storage::Buckets,
            Self::Last | Self::LastN | Self::Intervals => Storage::Facts,
            Self::CurrentSum | Self::CurrentCount => Storage::Current,
            Self::Percentile => Storage::Derived,
        }
    }

    fn needs_value(self) -> bool {
        !matches!(self, Self::Count | Self::CurrentCount | Self::Intervals | Self::Percentile)
    }

    fn needs_number(self) -> bool {
        matches!(self, Self::Sum | Self::Avg | Self::CurrentSum)
    }
}

/// Product attributes a feature can join to by `product_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProductAttr {
    Name,
    Category,
    Brand,
    Price,
}

impl ProductAttr {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "name" => Self::Name,
            "category" => Self::Category,
            "brand" => Self::Brand,
            "price" => Self::Price,
            _ => return None,
        })
    }

    fn is_number(self) -> bool {
        self == Self::Price
    }
}

/// What a row contributes to a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueExpr {
    /// Nothing but its existence (count).
    Nothing,
    Column(&'static str),
    /// The product's attribute, looked up by `product_id` when the feature is read.
    Product(ProductAttr),
    /// The product of two numeric columns, such as `quantity * unit_price`.
    Product2(&'static str, &'static str),
}

/// A sliding event-time window of `BUCKETS_PER_WINDOW` buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub length: Duration,
    pub bucket_us: i64,
}

impl Window {
    pub fn bucket_of(&self, at_us: i64) -> i64 {
        at_us.div_euclid(self.bucket_us)
    }

    /// Whether an event at `event_us` is in the window read at `at_us`: its bucket is one of the
    /// 60 buckets ending with the one `at_us` falls in.
    pub fn contains(&self, at_us: i64, event_us: i64) -> bool {
        let end = self.bucket_of(at_us);
        let bucket = self.bucket_of(event_us);
        bucket > end - BUCKETS_PER_WINDOW && bucket <= end
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    pub description: Option<String>,
    pub entity: Entity,
    pub table: SourceTable,
    /// Column → accepted values (as text). A row passes when every column matches.
    pub filter: Vec<(&'static str, Vec<String>)>,
    pub aggregation: Aggregation,
    pub value: ValueExpr,
    pub window: Option<Window>,
    /// `last_n`: how many values; `intervals`: how many events.
    pub n: usize,
    /// `top_k`: how many values.
    pub k: usize,
    /// Numeric values are reported as the band they fall in (`histogram`, `top_k`).
    pub bands: Vec<Decimal>,
    /// `conversion`: the funnel's steps, values of `value`.
    pub steps: Vec<String>,
    /// `percentile`: the product feature ranked.
    pub of: Option<String>,
    /// `percentile`: the rank is rounded down to a multiple of this (percent).
    pub step: u32,
}

impl Feature {
    pub fn storage(&self) -> Storage {
        self.aggregation.storage()
    }

    /// The band label of a numeric value: `<25`, `25-50`, …, `250+`.
    pub fn band_of(&self, value: Decimal) -> String {
        let bands = &self.bands;
        match bands.iter().position(|upper| value < *upper) {
            Some(0) => format!("<{}", bands[0].normalize()),
            Some(i) => format!("{}-{}", bands[i - 1].normalize(), bands[i].normalize()),
            None => format!("{}+", bands[bands.len() - 1].normalize()),
        }
    }
}

/// The validated definitions persona computes.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub features: Vec<Feature>,
    /// How far back `?at=` may go; windows keep their buckets this much longer.
    pub history: Duration,
    /// Hash of the definitions as loaded: state computed under other definitions is rebuilt.
    pub fingerprint: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default = "default_history", with = "humantime_serde")]
    history: Duration,
    #[serde(default)]
    feature: Vec<RawFeature>,
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
struct RawFeature {
    name: String,
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
}

/// The definitions shipped with persona (`features.toml` at the repository root).
pub const DEFAULT_DEFINITIONS: &str = include_str!("../../features.toml");

impl FeatureSet {
    pub fn load(path: Option<&Path>) -> Result<Self, DefinitionError> {
        match path {
            None => Self::parse(DEFAULT_DEFINITIONS, "<built-in features.toml>"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    DefinitionError::Read { path: path.display().to_string(), source }
                })?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, DefinitionError> {
        let raw: RawFile = toml::from_str(text).map_err(|source| DefinitionError::Parse {
            path: origin.to_string(),
            source: Box::new(source),
        })?;
        if raw.history > MAX_HISTORY {
            return Err(DefinitionError::File {
                field: "history",
                problem: "must be at most 30d".into(),
            });
        }
        if raw.feature.is_empty() {
            return Err(DefinitionError::File {
                field: "feature",
                problem: "defines no feature".into(),
            });
        }
        let mut names = BTreeSet::new();
        let mut features = Vec::with_capacity(raw.feature.len());
        for feature in &raw.feature {
            if !names.insert(feature.name.clone()) {
                return Err(invalid(&feature.name, "name", "is defined twice"));
            }
            features.push(compile(feature)?);
        }
        for feature in &features {
            check_reference(feature, &features)?;
        }
        let canonical = serde_json::to_string(&raw).unwrap_or_default();
        Ok(Self { features, history: raw.history, fingerprint: fingerprint(&canonical) })
    }

    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|feature| feature.name == name)
    }

    pub fn of_entity(&self, entity: Entity) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(move |feature| feature.entity == entity)
    }

    /// The features a change to `table` can affect for `entity`.
    pub fn fed_by(&self, entity: Entity, table: SourceTable) -> impl Iterator<Item = &Feature> {
        self.of_entity(entity).filter(move |feature| feature.table == table)
    }

    /// The entities whose features a change to `table` feeds.
    pub fn entities_fed_by(&self, table: SourceTable) -> Vec<Entity> {
        let mut entities: Vec<Entity> = self
            .features
            .iter()
            .filter(|feature| feature.table == table && feature.storage() != Storage::Derived)
            .map(|feature| feature.entity)
            .collect();
        entities.sort();
        entities.dedup();
        entities
    }

    pub fn history_us(&self) -> i64 {
        i64::try_from(self.history.as_micros()).unwrap_or(i64::MAX)
    }
}

/// FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn invalid(feature: &str, field: &'static str, problem: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid { feature: feature.to_string(), field, problem: problem.into() }
}

fn column_of(
    name: &str,
    table: SourceTable,
    column: &str,
    field: &'static str,
) -> Result<(&'static str, ColumnType), DefinitionError> {
    table.schema().columns.iter().find(|(known, _)| *known == column).copied().ok_or_else(|| {
        let known: Vec<&str> = table.schema().columns.iter().map(|(c, _)| *c).collect();
        invalid(
            name,
            field,
            format!("names column {column:?}, which {table} does not have (it has {known:?})"),
        )
    })
}

fn parse_value(
    name: &str,
    table: SourceTable,
    text: &str,
) -> Result<(ValueExpr, bool), DefinitionError> {
    if let Some(attr) = text.strip_prefix("product.") {
        let attr = ProductAttr::parse(attr).ok_or_else(|| {
            invalid(name, "value", format!("{text:?}: products has name, category, brand, price"))
        })?;
        return Ok((ValueExpr::Product(attr), attr.is_number()));
    }
    if let Some((left, right)) = text.split_once('*') {
        let (left, left_type) = column_of(name, table, left.trim(), "value")?;
        let (right, right_type) = column_of(name, table, right.trim(), "value")?;
        if !left_type.is_numeric() || !right_type.is_numeric() {
            return Err(invalid(name, "value", "multiplies columns that are not both numeric"));
        }
        return Ok((ValueExpr::Product2(left, right), true));
    }
    let (column, kind) = column_of(name, table, text.trim(), "value")?;
    Ok((ValueExpr::Column(column), kind.is_numeric()))
}

fn compile(raw: &RawFeature) -> Result<Feature, DefinitionError> {
    let name = raw.name.as_str();
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(name, "name", "must be 1 to 64 of a-z, 0-9 and _"));
    }
    let table = SourceTable::from_name(&raw.source).ok_or_else(|| {
        let known: Vec<&str> = SourceTable::ALL.iter().map(|t| t.name()).collect();
        invalid(name, "source", format!("{:?} is not one of {known:?}", raw.source))
    })?;
    let aggregation = raw.aggregation;
    let storage = aggregation.storage();

    let mut filter = Vec::new();
    for (column, values) in &raw.filter {
        let (column, _) = column_of(name, table, column, "filter")?;
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
        (Some(text), true) => parse_value(name, table, text)?,
        (None, true) => {
            return Err(invalid(name, "value", format!("is required by {aggregation:?}")));
        }
        (Some(_), false) => {
            return Err(invalid(name, "value", format!("is not used by {aggregation:?}")));
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
    let k = count_param("k", raw.k, aggregation == Aggregation::TopK, (1, 100))?;

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
    if is_percentile && raw.entity != Entity::Product {
        return Err(invalid(name, "entity", "must be product for percentile"));
    }
    let step = match (raw.step, is_percentile) {
        (Some(_), false) => return Err(invalid(name, "step", "applies only to percentile")),
        (Some(step), true) if step == 0 || 100 % step != 0 => {
            return Err(invalid(name, "step", "must divide 100 (1, 5, 10, 25, …)"));
        }
        (step, _) => step.unwrap_or(10),
    };

    Ok(Feature {
        name: name.to_string(),
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
    })
}

fn check_reference(feature: &Feature, all: &[Feature]) -> Result<(), DefinitionError> {
    let Some(of) = &feature.of else { return Ok(()) };
    let target = all
        .iter()
        .find(|candidate| &candidate.name == of)
        .ok_or_else(|| invalid(&feature.name, "of", format!("names no feature ({of:?})")))?;
    let rankable = target.entity == Entity::Product
        && matches!(
            target.aggregation,
            Aggregation::Count | Aggregation::Sum | Aggregation::DistinctCount
        );
    if !rankable {
        return Err(invalid(
            &feature.name,
            "of",
            format!("{of:?} must be a product count, sum or distinct_count"),
        ));
    }
    if target.table != feature.table {
        return Err(invalid(&feature.name, "source", format!("must be the source of {of:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(feature: &str) -> Result<FeatureSet, DefinitionError> {
        FeatureSet::parse(&format!("[[feature]]\n{feature}"), "test")
    }

    fn error(feature: &str) -> String {
        one(feature).expect_err("must be rejected").to_string()
    }

    #[test]
    fn shipped_definitions_are_valid() {
        let set = FeatureSet::load(None).expect("valid");
        assert!(set.get("last_viewed_product").is_some());
        assert!(set.get("popularity_percentile").is_some());
    }

    #[test]
    fn errors_name_the_feature_and_the_field() {
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"user_activity\"\naggregation = \"count\"\nwindow = \"31d\"",
        );
        assert!(message.contains("feature `x`") && message.contains("`window`"), "{message}");
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"user_activity\"\naggregation = \"sum\"\nvalue = \"activity_type\"",
        );
        assert!(message.contains("`value`") && message.contains("numeric"), "{message}");
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nfilter = { colour = \"red\" }",
        );
        assert!(message.contains("`filter`") && message.contains("colour"), "{message}");
        let message =
            error("name = \"x\"\nentity = \"user\"\nsource = \"carts\"\naggregation = \"count\"");
        assert!(message.contains("`source`"), "{message}");
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"top_k\"\nvalue = \"product.brand\"",
        );
        assert!(message.contains("`k`"), "{message}");
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindow = \"90s\"",
        );
        assert!(message.contains("whole number of minutes"), "{message}");
    }

    #[test]
    fn unknown_keys_and_duplicates_are_rejected() {
        let message = error(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindw = \"1m\"",
        );
        assert!(message.contains("windw"), "{message}");
        let twice = "[[feature]]\nname = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\n";
        let message =
            FeatureSet::parse(&format!("{twice}{twice}"), "t").expect_err("dup").to_string();
        assert!(message.contains("defined twice"), "{message}");
    }

    #[test]
    fn windows_are_sixty_buckets() {
        let set = one(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\nwindow = \"1h\"",
        )
        .expect("valid");
        let window = set.features[0].window.expect("windowed");
        assert_eq!(window.bucket_us, 60_000_000);
        assert!(window.contains(3_600_000_000 * 10, 3_600_000_000 * 9 + 60_000_000));
        assert!(!window.contains(3_600_000_000 * 10, 3_600_000_000 * 9 + 59_999_999));
    }

    #[test]
    fn bands_label_values() {
        let set = one(
            "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"histogram\"\nvalue = \"product.price\"\nbands = [25, 50]",
        )
        .expect("valid");
        let feature = &set.features[0];
        assert_eq!(feature.band_of(Decimal::new(2499, 2)), "<25");
        assert_eq!(feature.band_of(Decimal::new(25, 0)), "25-50");
        assert_eq!(feature.band_of(Decimal::new(50, 0)), "50+");
    }

    #[test]
    fn fingerprint_follows_the_definitions() {
        let a = "name = \"x\"\nentity = \"user\"\nsource = \"orders\"\naggregation = \"count\"\n";
        let b = format!("{a}window = \"1h\"\n");
        assert_ne!(one(a).expect("ok").fingerprint, one(&b).expect("ok").fingerprint);
        assert_eq!(one(a).expect("ok").fingerprint, one(a).expect("ok").fingerprint);
    }
}
