//! Feature computation, declared in `features.toml` and computed by pure functions: from
//! `(state, change, now)` to a new state, and from `(state, read time, catalog)` to values.
//! No I/O, so every rule here is unit- and property-tested without Kafka or Redis.
//!
//! - [`definition`]: the feature file, its validation and the compiled [`FeatureSet`].
//! - [`source`]: the legacy tables features read, and one decoded change ([`SourceChange`]).
//! - [`state`]: per-entity state and [`apply`] (retraction, dedup by source position, late rows).
//! - `retention`: what a state keeps and for how long (windows, `history`, fact bounds).
//! - [`overlap`]: which streamed changes a snapshot run over an existing slot had already read.
//! - [`pairs`]: item-to-item co-occurrence from neighbouring rows of a user's session.
//! - [`evaluate()`]: values at a reference time, joined through the product [`catalog`].
//! - [`next_change`]: when a value read earlier changes with no new event (windows sliding).

mod buckets;
mod by_feature;
pub mod catalog;
mod columns;
pub mod definition;
mod entity;
mod evaluate;
mod expiry;
mod facts;
mod intern;
pub mod overlap;
mod pairs;
mod retention;
mod row_key;
mod sharing;
pub mod source;
mod state;
mod text;
mod view;

pub use buckets::{Buckets, Cell};
pub use by_feature::{FeatureState, FeatureStates, Stored};
pub use catalog::{Catalog, CatalogView, DimensionSchema, ItemRoles, Product, ProductCatalog};
pub use columns::Columns;
pub use definition::{
    Aggregation, BUCKETS_PER_WINDOW, DefinitionError, Entity, EntitySchema, FactBound, Feature,
    FeatureSet, IdKind, RecommendationFeatures, SESSION_FACTS_MAX, SharedBuckets, SharedFacts,
    Storage, band_of,
};
pub use evaluate::{
    FeatureStatus, FeatureValue, Features, HLL_PRECISION, Ranking, ReadContext, evaluate,
};
pub use expiry::{DecayParts, next_change};
pub use facts::{Fact, Facts};
pub use intern::intern;
pub use pairs::PairDelta;
#[cfg(test)]
pub(crate) use row_key::key_text as row_key_text;
pub use row_key::{KeyForm, RowKey};
pub use source::{
    ColumnType, High, Position, RunStart, Scalar, SnapshotRead, SnapshotRun, SourceChange,
    SourceRow, SourceSchema, SourceTable, Truncation,
};
pub use state::{
    EntityState, FACT_SLACK, Outcome, RunMark, StoredParts, apply, apply_with_pairs, entity_of,
    superseded, truncated_away,
};
pub use text::same_text;
pub use view::FeatureView;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_expiry;
#[cfg(test)]
mod tests_pairs;
