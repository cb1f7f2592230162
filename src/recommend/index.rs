//! The product side of recommendations: every product of the catalog with its trending score
//! and the products viewed together with it, and the percentile rankings, as one immutable
//! snapshot. Requests read the newest one from memory (see [`super::refresh`]), so a
//! recommendation needs Redis only for the user's own state.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::FastMap;
use crate::features::{Features, Product, Ranking, RecommendationFeatures, band_of};

/// The product features recommendations read.

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
    /// Each category's products (`None`: products without one) by price slot, each slot most
    /// trending first, as in `popular`: a ranking walks a slot only as far as its products can
    /// still score. Slot 0 holds the products without a price, slot `b + 1` those in band `b`
    /// of `price_bands` (see [`Self::slot_of`]), so a slot's products share one price share.
    pub by_category: FastMap<Option<String>, Vec<Vec<String>>>,
    /// The band bounds the slots follow (`Feature::bands` of the price band feature); empty:
    /// slot 1 holds every priced product.
    pub price_bands: Vec<Decimal>,
    /// The highest trending score per category, to normalise within a category.
    pub top_trending: FastMap<String, f64>,
    /// When the product features were read; `None` when built from the catalog alone.
    pub built_at: Option<DateTime<Utc>>,
    /// Ranked feature → every product's value of it at `built_at`, for percentile reads at
    /// "now"; empty when the index is not maintained by a refresher.
    pub rankings: HashMap<String, Arc<Ranking>>,
}

/// What the index keeps of a product's features: trending score and viewed-together list.
pub type ProductSignals = (f64, Vec<(String, i64)>);

/// Reads a product's signals from its evaluated features, `roles` saying which plays what.
pub fn signals_of(features: &Features, roles: &RecommendationFeatures) -> ProductSignals {
    let trending = roles.trending.as_ref().and_then(|name| features.get(name));
    let trending = trending.and_then(|v| v.value.as_f64()).unwrap_or(0.0);
    (trending, together_of(features, roles.viewed_together.as_deref()))
}

/// Reads a product's viewed-together list (the feature `name`) from its evaluated features.
pub fn together_of(features: &Features, name: Option<&str>) -> Vec<(String, i64)> {
    name.and_then(|name| features.get(name))
        .and_then(|v| v.value.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|item| {
                    Some((item["value"].as_str()?.to_string(), item["count"].as_i64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl ProductIndex {
    /// Builds the index from the catalog and each product's signals (a product without any
    /// counts as never viewed).
    pub fn build(
        catalog: &HashMap<String, Product>,
        signals: &HashMap<String, ProductSignals>,
        built_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self::build_with(catalog, |id| signals.get(id).cloned().unwrap_or_default(), built_at)
    }

    /// Builds the index from the catalog and each product's signals as `signals` gives them.
    pub fn build_with(
        catalog: &HashMap<String, Product>,
        signals: impl Fn(&str) -> ProductSignals,
        built_at: Option<DateTime<Utc>>,
    ) -> Self {
        let mut products = HashMap::with_capacity(catalog.len());
        let mut top_trending: FastMap<String, f64> = FastMap::default();
        for (id, product) in catalog {
            let (trending, together) = signals(id);
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
        let mut index = Self {
            products,
            popular,
            by_category: FastMap::default(),
            top_trending,
            built_at,
            price_bands: Vec::new(),
            rankings: HashMap::new(),
        };
        index.slot_by_price(Vec::new());
        index
    }

    /// Splits each category's products into price slots by the band bounds `bands` (those of
    /// the feature price matching reads), so that ranking walks each band with its own price
    /// share: a band the user rarely buys in is then left after its first products.
    pub fn with_price_bands(mut self, bands: &[Decimal]) -> Self {
        self.slot_by_price(bands.to_vec());
        self
    }

    fn slot_by_price(&mut self, bands: Vec<Decimal>) {
        self.price_bands = bands;
        let mut by_category: FastMap<Option<String>, Vec<Vec<String>>> = FastMap::default();
        for id in &self.popular {
            let product = &self.products[id].product;
            let slot = self.slot_of(product.price);
            let slots = by_category.entry(product.category.clone()).or_default();
            if slots.len() <= slot {
                slots.resize_with(slot + 1, Vec::new);
            }
            slots[slot].push(id.clone());
        }
        self.by_category = by_category;
    }

    /// The price slot of a product priced `price`: 0 without a price, else 1 + its band.
    pub fn slot_of(&self, price: Option<Decimal>) -> usize {
        price.map_or(0, |price| 1 + band_of(&self.price_bands, price))
    }

    pub fn get(&self, id: &str) -> Option<&IndexedProduct> {
        self.products.get(id)
    }

    /// The highest trending score of all products.
    pub fn max_trending(&self) -> f64 {
        self.top_trending.values().copied().fold(0.0, f64::max)
    }
}
