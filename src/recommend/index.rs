//! The product side of recommendations: every product of the catalog with its trending score
//! and the products viewed together with it, rebuilt from the product features every
//! `recommend.refresh`. Requests read the newest index from memory, so a recommendation needs
//! Redis only for the user's own state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::features::{
    Entity, FeatureSet, Features, Product, ProductCatalog, ReadContext, evaluate,
};
use crate::store::{EntityRef, FeatureStore};

/// The product features recommendations read.
pub const TRENDING: &str = "trending_score";
pub const VIEWED_TOGETHER: &str = "viewed_together_24h";

#[derive(Debug, Clone)]
pub struct IndexedProduct {
    pub product: Product,
    /// Time-decayed views (0 when unknown).
    pub trending: f64,
    /// Products viewed next to this one, most often first, with their counts.
    pub together: Vec<(String, i64)>,
}

/// A snapshot of the catalog with what recommendations need of each product.
#[derive(Debug, Clone, Default)]
pub struct ProductIndex {
    pub products: HashMap<String, IndexedProduct>,
    /// Every product id, most trending first (ties by id): the cold-start list.
    pub popular: Vec<String>,
    /// The highest trending score per category, to normalise within a category.
    pub top_trending: HashMap<String, f64>,
    /// When the product features were read; `None` when built from the catalog alone.
    pub built_at: Option<DateTime<Utc>>,
}

/// What the index keeps of a product's features: trending score and viewed-together list.
pub type ProductSignals = (f64, Vec<(String, i64)>);

/// Reads a product's signals from its evaluated features.
pub fn signals_of(features: &Features) -> ProductSignals {
    let trending = features.get(TRENDING).and_then(|v| v.value.as_f64()).unwrap_or(0.0);
    let together = features
        .get(VIEWED_TOGETHER)
        .and_then(|v| v.value.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|item| {
                    Some((item["value"].as_str()?.to_string(), item["count"].as_i64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    (trending, together)
}

impl ProductIndex {
    /// Builds the index from the catalog and each product's signals (a product without any
    /// counts as never viewed).
    pub fn build(
        catalog: &HashMap<String, Product>,
        signals: &HashMap<String, ProductSignals>,
        built_at: Option<DateTime<Utc>>,
    ) -> Self {
        let mut products = HashMap::with_capacity(catalog.len());
        let mut top_trending: HashMap<String, f64> = HashMap::new();
        for (id, product) in catalog {
            let (trending, together) = signals.get(id).cloned().unwrap_or_default();
            if let Some(category) = &product.category {
                let top = top_trending.entry(category.clone()).or_insert(0.0);
                *top = top.max(trending);
            }
            products.insert(
                id.clone(),
                IndexedProduct { product: product.clone(), trending, together },
            );
        }
        let mut popular: Vec<String> = products.keys().cloned().collect();
        popular.sort_by(|a, b| {
            products[b].trending.total_cmp(&products[a].trending).then_with(|| a.cmp(b))
        });
        Self { products, popular, top_trending, built_at }
    }

    pub fn get(&self, id: &str) -> Option<&IndexedProduct> {
        self.products.get(id)
    }

    /// The highest trending score of all products.
    pub fn max_trending(&self) -> f64 {
        self.top_trending.values().copied().fold(0.0, f64::max)
    }
}

/// Holds the newest index and counts its replacements (live pages look whether it changed).
pub struct Recommender {
    index: RwLock<Arc<ProductIndex>>,
    /// How many times the index was replaced.
    generation: AtomicU64,
}

impl Default for Recommender {
    fn default() -> Self {
        Self {
            index: RwLock::new(Arc::new(ProductIndex::default())),
            generation: AtomicU64::new(0),
        }
    }
}

impl Recommender {
    pub fn index(&self) -> Arc<ProductIndex> {
        Arc::clone(&self.index.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn replace(&self, index: ProductIndex) {
        *self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(index);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many times the index was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Rebuilds the index every `every` until `shutdown`. When Redis cannot be read the
    /// previous scores are kept (the catalog still refreshes).
    pub fn spawn_refresher(
        self: &Arc<Self>,
        store: Arc<FeatureStore>,
        features: Arc<FeatureSet>,
        catalog: Arc<ProductCatalog>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let recommender = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = crate::periodic::Ticks::new(every, shutdown);
            while ticks.next().await {
                recommender.refresh(&store, &features, &catalog).await;
            }
        })
    }

    async fn refresh(&self, store: &FeatureStore, set: &FeatureSet, catalog: &ProductCatalog) {
        let ids: Vec<EntityRef> =
            catalog.read(|products| products.keys().cloned().map(EntityRef::product).collect());
        let states = store.read_uncached(&ids).await;
        let at = Utc::now();
        let names = [TRENDING.to_string(), VIEWED_TOGETHER.to_string()];
        let (signals, built_at) = match states {
            Some(states) => {
                let signals = catalog.read(|products| {
                    let context = ReadContext { at, catalog: products, ranking: &|_| None };
                    ids.iter()
                        .zip(&states)
                        .map(|(id, state)| {
                            let state = state.clone().unwrap_or_default();
                            let values = evaluate(
                                set,
                                Entity::Product,
                                &id.id,
                                Some(&state),
                                Some(&names),
                                &context,
                            );
                            (id.id.clone(), signals_of(&values))
                        })
                        .collect()
                });
                (signals, Some(at))
            }
            None => {
                let previous = self.index();
                let signals = previous
                    .products
                    .iter()
                    .map(|(id, entry)| (id.clone(), (entry.trending, entry.together.clone())))
                    .collect();
                (signals, previous.built_at)
            }
        };
        let index = catalog.read(|products| ProductIndex::build(products, &signals, built_at));
        self.replace(index);
    }
}
