//! What the product index and the percentile rankings need of each product, kept up to date
//! incrementally: a product is evaluated again only when its state changed or one of its windows
//! moved ([`next_change`]), never the whole catalog on every tick. Between those times a trending
//! score only decays, which [`DecayParts`] computes without the state. Pure bookkeeping: the
//! refresher ([`super::Recommender`]) reads the states it is told to and hands them in.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::index::{ProductIndex, together_of};
use crate::features::definition::ValueExpr;
use crate::features::{
    Aggregation, Catalog, DecayParts, EntityState, Feature, FeatureSet, FeatureView, Product,
    Ranking, ReadContext, evaluate, next_change,
};

/// One product's signals as evaluated last.
#[derive(Debug, Clone)]
struct Tracked {
    /// The trending score, readable at any time until `next_change`.
    trending: DecayParts,
    together: Vec<(String, i64)>,
    /// The value of each ranked feature, in [`Tracker::ranked`] order.
    ranked: Vec<f64>,
    /// When the product must be evaluated again, with no change to its state.
    next_change: Option<i64>,
}

pub struct Tracker {
    /// Features evaluated per product: trending, viewed together and every ranked feature.
    features: Vec<Feature>,
    /// The features playing trending and viewed together (`[recommendations]`).
    trending: Option<String>,
    together: Option<String>,
    /// Their names, as `evaluate` takes them.
    names: Vec<String>,
    /// The features percentiles rank (the `of` of each percentile feature).
    ranked: Vec<String>,
    /// Whether any tracked value joins product attributes, so a catalog change moves it.
    joins_catalog: bool,
    products: HashMap<String, Tracked>,
    /// Products by the time they must be evaluated again.
    due: BTreeSet<(i64, String)>,
    rankings: Vec<Arc<Ranking>>,
    /// The band bounds of the feature price matching reads: the index's price slots.
    price_bands: Vec<Decimal>,
}

impl Tracker {
    pub fn new(set: &FeatureSet) -> Self {
        let mut ranked: Vec<String> = Vec::new();
        for feature in set.of_entity(set.item) {
            if feature.aggregation == Aggregation::Percentile
                && let Some(of) = feature.of.as_ref().filter(|of| set.get(of).is_some())
                && !ranked.contains(of)
            {
                ranked.push(of.clone());
            }
        }
        let roles = &set.recommendations;
        let trending = roles.trending.clone();
        let together = roles.viewed_together.clone();
        let mut names: Vec<&str> = trending.iter().chain(&together).map(String::as_str).collect();
        names.extend(ranked.iter().map(String::as_str));
        let mut features: Vec<Feature> = Vec::new();
        for name in names {
            if let Some(feature) =
                set.get(name).filter(|f| !features.iter().any(|t| t.name == f.name))
            {
                features.push(feature.clone());
            }
        }
        let joins_catalog = features.iter().any(|f| matches!(f.value, ValueExpr::Attribute(..)));
        let names = features.iter().map(|f| f.name.to_string()).collect();
        let rankings = ranked.iter().map(|_| Arc::new(Ranking::default())).collect();
        let price_bands = roles.price_band_clicks.as_ref().and_then(|name| set.get(name));
        let price_bands = price_bands.map(|f| f.bands.clone()).unwrap_or_default();
        Self {
            features,
            trending,
            together,
            names,
            ranked,
            joins_catalog,
            products: HashMap::new(),
            due: BTreeSet::new(),
            rankings,
            price_bands,
        }
    }

    /// Whether a change of product attributes can move a tracked value (then every product is
    /// evaluated again when the catalog changes).
    pub fn joins_catalog(&self) -> bool {
        self.joins_catalog
    }

    /// The products to evaluate at `now_us`: those whose windows moved since, and those of the
    /// catalog not tracked yet.
    pub fn due(&self, now_us: i64, catalog: &HashMap<String, Product>) -> Vec<String> {
        let moved = self.due.iter().take_while(|(at, _)| *at <= now_us).map(|(_, id)| id.clone());
        let new = catalog.keys().filter(|id| !self.products.contains_key(*id)).cloned();
        moved.chain(new).collect()
    }

    /// Evaluates a product from its state (`None`: persona has none, it was never seen) at `at`.
    pub fn update(
        &mut self,
        set: &FeatureSet,
        id: &str,
        state: Option<&EntityState>,
        at: DateTime<Utc>,
        catalog: &dyn Catalog,
    ) {
        let empty = EntityState::default();
        let state = state.unwrap_or(&empty);
        let at_us = at.timestamp_micros();
        let context = ReadContext { at, catalog, ranking: &|_| None };
        let values = evaluate(set, set.item, id, Some(state), Some(&self.names), &context);
        let trending_feature = self
            .trending
            .as_ref()
            .and_then(|name| self.features.iter().find(|feature| feature.name == name));
        let trending = match trending_feature {
            Some(feature) if feature.aggregation == Aggregation::DecayedCount => {
                DecayParts::of(feature, FeatureView::of(feature, state), at_us).unwrap_or_default()
            }
            // Any other definition of it is a plain number until its next change.
            other => DecayParts {
                at_us,
                half_life_us: 1.0,
                flat: other
                    .and_then(|feature| values.get(feature.name))
                    .and_then(|v| v.value.as_f64())
                    .unwrap_or(0.0),
                ..DecayParts::default()
            },
        };
        let ranked: Vec<f64> = self
            .ranked
            .iter()
            .map(|name| values.get(name).and_then(|v| v.value.as_f64()).unwrap_or(0.0))
            .collect();
        let next = self
            .features
            .iter()
            .filter_map(|feature| next_change(feature, FeatureView::of(feature, state), at_us))
            .min();
        let previous = self.products.get(id);
        let previous_next = previous.and_then(|p| p.next_change);
        Self::rerank(&mut self.rankings, previous.map(|p| p.ranked.as_slice()), Some(&ranked));
        self.reschedule(id, previous_next, next);
        let tracked = Tracked {
            trending,
            together: together_of(&values, self.together.as_deref()),
            ranked,
            next_change: next,
        };
        self.products.insert(id.to_string(), tracked);
    }

    /// Forgets the products that left the catalog.
    pub fn retain(&mut self, catalog: &HashMap<String, Product>) {
        let gone: Vec<String> =
            self.products.keys().filter(|id| !catalog.contains_key(*id)).cloned().collect();
        for id in gone {
            if let Some(previous) = self.products.remove(&id) {
                self.reschedule(&id, previous.next_change, None);
                Self::rerank(&mut self.rankings, Some(&previous.ranked), None);
            }
        }
    }

    fn reschedule(&mut self, id: &str, previous: Option<i64>, next: Option<i64>) {
        if let Some(at) = previous {
            self.due.remove(&(at, id.to_string()));
        }
        if let Some(at) = next {
            self.due.insert((at, id.to_string()));
        }
    }

    /// Moves one product's values in the rankings (`None`: not ranked before, or no more).
    fn rerank(rankings: &mut [Arc<Ranking>], old: Option<&[f64]>, new: Option<&[f64]>) {
        for (position, ranking) in rankings.iter_mut().enumerate() {
            let old = old.map(|values| values[position]);
            let new = new.map(|values| values[position]);
            if old.map(f64::to_bits) != new.map(f64::to_bits) {
                // Copied only when a reader still holds the previous ranking.
                Arc::make_mut(ranking).replace(old, new);
            }
        }
    }

    /// The index at `at` (not before the last evaluation), with the rankings.
    pub fn index(&self, catalog: &HashMap<String, Product>, at: DateTime<Utc>) -> ProductIndex {
        let at_us = at.timestamp_micros();
        let mut index = ProductIndex::build_with(
            catalog,
            |id| {
                self.products
                    .get(id)
                    .map(|p| (p.trending.at(at_us), p.together.clone()))
                    .unwrap_or_default()
            },
            Some(at),
        )
        .with_price_bands(&self.price_bands);
        index.rankings =
            self.ranked.iter().cloned().zip(self.rankings.iter().map(Arc::clone)).collect();
        index
    }
}

#[cfg(test)]
#[path = "tests_tracker.rs"]
mod tests;
