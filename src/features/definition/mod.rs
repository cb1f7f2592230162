//! Feature definitions: read from a TOML file (`features.toml`), validated once at start with
//! errors that name the feature and the field, and compiled into [`FeatureSet`].

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::catalog::DimensionSchema;
pub use super::entity::{Entity, EntitySchema, IdKind};
use super::row_key::RowKey;
use super::source::{SourceRow, SourceSchema, SourceTable};
use super::text::same_text;

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
    #[error("source `{name}`: `{field}` {problem}")]
    Source { name: String, field: &'static str, problem: String },
    #[error("dimension `{name}`: `{field}` {problem}")]
    Dimension { name: String, field: &'static str, problem: String },
    #[error("entity `{name}`: `{field}` {problem}")]
    Entity { name: String, field: &'static str, problem: String },
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
    /// Views (or any filtered rows) weighted by how recent they are: each bucket counts
    /// `0.5^(age / half_life)`.
    DecayedCount,
    /// Per product, the products viewed next to it in a user's session (item-to-item).
    CoOccurrence,
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
    /// Time buckets of partner product → count, fed by pairs of a user's neighbouring rows
    /// (see `features::pairs`); the user keeps the rows of its recent session as facts.
    Pairs,
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
            | Self::Conversion
            | Self::DecayedCount => Storage::Buckets,
            Self::Last | Self::LastN | Self::Intervals => Storage::Facts,
            Self::CurrentSum | Self::CurrentCount => Storage::Current,
            Self::Percentile => Storage::Derived,
            Self::CoOccurrence => Storage::Pairs,
        }
    }

    fn needs_value(self) -> bool {
        !matches!(
            self,
            Self::Count
                | Self::CurrentCount
                | Self::Intervals
                | Self::Percentile
                | Self::DecayedCount
                | Self::CoOccurrence
        )
    }

    fn needs_number(self) -> bool {
        matches!(self, Self::Sum | Self::Avg | Self::CurrentSum)
    }
}

/// What a row contributes to a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueExpr {
    /// Nothing but its existence (count).
    Nothing,
    Column(&'static str),
    /// An attribute of the dimension, looked up when the feature is read by the id of the
    /// entity the dimension describes (the item) that the row names.
    Attribute(Entity, &'static str),
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
    pub name: &'static str,
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
    /// `decayed_count`: the age at which a row counts half.
    pub half_life: Option<Duration>,
    /// `co_occurrence`: the longest gap between two neighbouring rows of a user that still
    /// pairs them.
    pub session: Option<Duration>,
    /// Whether its facts keep their rows' keys: only where a row's time may be its commit time,
    /// which its before image does not carry (see [`crate::features::Facts`]).
    pub facts_keyed: bool,
    /// The buckets it keeps with other features over the same rows, if any (see
    /// [`SharedBuckets`]).
    pub shared: Option<SharedBuckets>,
    /// The facts it keeps with other features over the same rows, if any (see
    /// [`SharedFacts`]).
    pub shared_facts: Option<SharedFacts>,
    /// `co_occurrence`: the shopper's shared facts its session reads its rows from, when fact
    /// features keep the same rows (see [`SharedFacts::sessions`]); else the session keeps its
    /// own facts under the feature's name.
    pub session_in: Option<&'static str>,
}

/// Which of the bands bounded by `bounds` (ascending upper bounds) `value` falls in: 0 below
/// the first bound, `bounds.len()` above the last.
pub fn band_of(bounds: &[Decimal], value: Decimal) -> usize {
    bounds.iter().position(|upper| value < *upper).unwrap_or(bounds.len())
}

impl Feature {
    pub fn storage(&self) -> Storage {
        self.aggregation.storage()
    }

    /// `co_occurrence`: its `session` (µs); 0 for other features.
    pub fn session_us(&self) -> i64 {
        self.session.map_or(0, |s| i64::try_from(s.as_micros()).unwrap_or(i64::MAX))
    }

    /// The key `row`'s fact is kept by (see [`Self::facts_keyed`]).
    pub fn fact_key<'a>(&self, row: &'a SourceRow) -> &'a RowKey {
        if self.facts_keyed { &row.key } else { RowKey::none() }
    }

    /// The band label of a numeric value: `<25`, `25-50`, …, `250+`.
    pub fn band_of(&self, value: Decimal) -> String {
        self.band_label(self.band_index(value))
    }

    /// Which band a numeric value falls in: 0 below the first bound, `bands.len()` above the
    /// last.
    pub fn band_index(&self, value: Decimal) -> usize {
        band_of(&self.bands, value)
    }

    /// The label of band `index` (see [`Self::band_index`]).
    pub fn band_label(&self, index: usize) -> String {
        let bands = &self.bands;
        match index {
            0 => format!("<{}", bands[0].normalize()),
            i if i < bands.len() => {
                format!("{}-{}", bands[i - 1].normalize(), bands[i].normalize())
            }
            _ => format!("{}+", bands[bands.len() - 1].normalize()),
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
    /// The declared source tables.
    pub sources: Vec<SourceSchema>,
    /// The declared dimensions: at most one per entity.
    pub dimensions: Vec<DimensionSchema>,
    /// The features recommendations read (`[recommendations]`).
    pub recommendations: RecommendationFeatures,
    /// The declared entities (`[[entity]]`; `user` and `product` when the file declares none).
    pub entities: Vec<EntitySchema>,
    /// The entity that browses and buys: its sessions pair items, recommendations are for it.
    pub shopper: Entity,
    /// The entity that is browsed and bought: the dimension describes it, percentiles rank it.
    pub item: Entity,
    /// What a change to each source feeds, found once at load rather than on every change.
    routes: Vec<Route>,
}

/// What a change to one source table feeds.
#[derive(Debug, Clone)]
struct Route {
    table: SourceTable,
    /// The entities whose states it changes (see [`FeatureSet::entities_fed_by`]).
    entities: Vec<Entity>,
    /// Per entity, the features it feeds (indices into `features`).
    features: Vec<(Entity, Vec<usize>)>,
}

impl Route {
    fn of(table: SourceTable, features: &[Feature], shopper: Entity) -> Self {
        let mut entities: Vec<Entity> = features
            .iter()
            .filter(|feature| feature.table == table && feature.storage() != Storage::Derived)
            // Pairs are found in the shopper's session; the items get them from there.
            .map(|feature| match feature.storage() {
                Storage::Pairs => shopper,
                _ => feature.entity,
            })
            .collect();
        entities.sort();
        entities.dedup();
        let mut fed: Vec<(Entity, Vec<usize>)> = Vec::new();
        for (index, feature) in features.iter().enumerate().filter(|(_, f)| f.table == table) {
            match fed.iter_mut().find(|(entity, _)| *entity == feature.entity) {
                Some((_, indices)) => indices.push(index),
                None => fed.push((feature.entity, vec![index])),
            }
        }
        Self { table, entities, features: fed }
    }
}

/// The definitions shipped with persona (`features.toml` at the repository root).
pub const DEFAULT_DEFINITIONS: &str = include_str!("../../../features.toml");

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
        let mut raw: parse::RawFile = toml::from_str(text).map_err(|source| {
            DefinitionError::Parse { path: origin.to_string(), source: Box::new(source) }
        })?;
        if raw.source.is_empty() && raw.dimension.is_empty() && raw.entity.is_empty() {
            let reference: parse::RawFile =
                toml::from_str(DEFAULT_DEFINITIONS).map_err(|e| DefinitionError::Parse {
                    path: "<built-in features.toml>".into(),
                    source: Box::new(e),
                })?;
            raw.source = reference.source;
            raw.dimension = reference.dimension;
            raw.entity = reference.entity;
        }
        let entities = sources::compile_entities(&raw.entity)?;
        let sources: Vec<SourceSchema> = raw
            .source
            .iter()
            .map(|source| sources::compile_source(source, &entities))
            .collect::<Result<_, _>>()?;
        let dimensions: Vec<DimensionSchema> = raw
            .dimension
            .iter()
            .map(|dimension| sources::compile_dimension(dimension, &entities))
            .collect::<Result<_, _>>()?;
        sources::check_declarations(&sources, &dimensions)?;
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
            features.push(compile(feature, &entities, &sources, &dimensions)?);
        }
        for feature in &features {
            check_reference(feature, &features, entities.item)?;
        }
        shared::share_buckets(&mut features, &sources, entities.shopper, history_us(raw.history));
        let recommendations =
            roles::compile(&raw.recommendations, &features, entities.shopper, entities.item)?;
        let canonical = serde_json::to_string(&raw).unwrap_or_default();
        let routes = sources
            .iter()
            .map(|source| Route::of(source.name, &features, entities.shopper))
            .collect();
        Ok(Self {
            features,
            history: raw.history,
            fingerprint: fingerprint(&canonical),
            sources,
            dimensions,
            recommendations,
            entities: entities.all,
            shopper: entities.shopper,
            item: entities.item,
            routes,
        })
    }

    /// The declaration of `table`.
    ///
    /// # Panics
    /// When `table` was not declared by these definitions: every [`SourceTable`] a feature or a
    /// decoded change holds was.
    pub fn source(&self, table: SourceTable) -> &SourceSchema {
        self.find_source(table).unwrap_or_else(|| panic!("source {table} is not declared"))
    }

    pub fn find_source(&self, table: SourceTable) -> Option<&SourceSchema> {
        self.sources.iter().find(|source| source.name == table)
    }

    /// The declared source Debezium names `schema.table` (any schema when it names none).
    pub fn source_of_table(&self, schema: Option<&str>, table: &str) -> Option<&SourceSchema> {
        self.sources.iter().find(|s| {
            same_text(s.table, table) && schema.is_none_or(|schema| same_text(s.schema, schema))
        })
    }

    /// The declared source whose changes Debezium publishes to `topic`, named
    /// `<topic.prefix>.<schema>.<table>` (the prefix may itself hold dots).
    pub fn source_of_topic(&self, topic: &str) -> Option<&SourceSchema> {
        let mut parts = topic.rsplit('.');
        let table = parts.next()?;
        let schema = parts.next()?;
        self.source_of_table(Some(schema), table)
    }

    /// The dimension describing the item (recommendations and pages read its roles).
    pub fn item_dimension(&self) -> Option<&DimensionSchema> {
        self.dimensions.iter().find(|dimension| dimension.entity == self.item)
    }

    /// The declared entity named `name`.
    pub fn entity(&self, name: &str) -> Option<&EntitySchema> {
        self.entities.iter().find(|schema| schema.entity.label() == name)
    }

    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|feature| feature.name == name)
    }

    pub fn of_entity(&self, entity: Entity) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(move |feature| feature.entity == entity)
    }

    /// The features a change to `table` can affect for `entity`.
    pub fn fed_by(&self, entity: Entity, table: SourceTable) -> impl Iterator<Item = &Feature> {
        self.route(table)
            .and_then(|route| route.features.iter().find(|(fed, _)| *fed == entity))
            .map_or(&[][..], |(_, indices)| indices.as_slice())
            .iter()
            .map(|index| &self.features[*index])
    }

    fn route(&self, table: SourceTable) -> Option<&Route> {
        self.routes.iter().find(|route| route.table == table)
    }

    /// The entities whose features a change to `table` feeds.
    pub fn entities_fed_by(&self, table: SourceTable) -> &[Entity] {
        self.route(table).map_or(&[], |route| route.entities.as_slice())
    }

    /// The co-occurrence features, whose pairs a change to `table` can feed.
    pub fn pairs_fed_by(&self, table: SourceTable) -> impl Iterator<Item = &Feature> {
        self.features
            .iter()
            .filter(move |feature| feature.table == table && feature.storage() == Storage::Pairs)
    }

    pub fn history_us(&self) -> i64 {
        history_us(self.history)
    }
}

fn history_us(history: Duration) -> i64 {
    i64::try_from(history.as_micros()).unwrap_or(i64::MAX)
}

mod parse;
mod roles;
mod shared;
mod sources;

pub use shared::{FactBound, SESSION_FACTS_MAX, SessionBound, SharedBuckets, SharedFacts};

use parse::{check_reference, compile, fingerprint, invalid};
pub use roles::RecommendationFeatures;
#[cfg(test)]
mod tests;
