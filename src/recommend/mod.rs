//! Recommendations: ranks the catalog for one user from the user's live features and the
//! product index (see `docs/RECOMMENDATIONS.md` for the scoring). Pure: the same user features,
//! index and request always give the same answer.
//!
//! - [`UserSignals`]: what the ranking reads of a user's features.
//! - [`index`]: the products with their trending scores and viewed-together lists.
//! - `tracker` and `refresh`: the index kept up to date incrementally, and the task publishing it.
//! - [`recommend`]: scoring, exclusions, diversity, reasons.

pub mod index;
mod refresh;
mod scorer;
mod tracker;

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use serde::Serialize;

pub use index::ProductIndex;
pub use refresh::Recommender;

use crate::features::{Feature, Features, Product, RecommendationFeatures};

/// Weights of the score's parts; they add up to 1.
const W_AFFINITY: f64 = 0.40;
const W_TOGETHER: f64 = 0.25;
const W_TRENDING: f64 = 0.20;
const W_PRICE: f64 = 0.15;
/// A small share of global popularity, so that candidates without any signal still rank.
const W_POPULAR: f64 = 0.02;
/// Clicks say more about interest than views.
const CLICK_WEIGHT: f64 = 2.0;
/// Each product already picked from a category multiplies the next one's score by this.
const DIVERSITY: f64 = 0.75;
/// How many recently viewed products seed "viewed together".
const SEEDS: usize = 3;
/// Products among the user's last few views are still shown, but after fresh ones.
const JUST_VIEWED: usize = 3;
const JUST_VIEWED_FACTOR: f64 = 0.6;

/// A map keyed by short trusted strings (product ids, categories) on the ranking's hot path:
/// SipHash was a third of an answer's CPU on a 5,000-product catalog.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 50;

/// What the ranking reads of one user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserSignals {
    /// Category → views over the short window.
    pub short: BTreeMap<String, f64>,
    /// Category → views plus weighted clicks over the long window.
    pub long: BTreeMap<String, f64>,
    /// Recently viewed products, newest first.
    pub recent: Vec<String>,
    /// Products in the cart, most recently changed first.
    pub cart: Vec<String>,
    /// Price band → clicks.
    pub bands: BTreeMap<String, f64>,
    /// Products in the cart or bought recently: never recommended.
    pub owned: HashSet<String>,
}

impl UserSignals {
    /// Reads the signals from a user's evaluated features, `roles` saying which plays what;
    /// missing features read as empty.
    pub fn from_features(features: &Features, roles: &RecommendationFeatures) -> Self {
        let histogram = |name: &Option<String>| -> BTreeMap<String, f64> {
            name.as_ref()
                .and_then(|name| features.get(name))
                .and_then(|v| v.value.as_object())
                .map(|map| map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
                .unwrap_or_default()
        };
        let list = |name: &Option<String>| -> Vec<String> {
            name.as_ref()
                .and_then(|name| features.get(name))
                .and_then(|v| v.value.as_array())
                .map(|items| items.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let mut long = histogram(&roles.interest);
        for (category, clicks) in histogram(&roles.click_interest) {
            *long.entry(category).or_default() += CLICK_WEIGHT * clicks;
        }
        let cart = list(&roles.in_cart);
        let owned = cart.iter().cloned().chain(list(&roles.purchased)).collect();
        Self {
            short: histogram(&roles.recent_interest),
            long,
            recent: list(&roles.recently_viewed),
            cart,
            bands: histogram(&roles.price_band_clicks),
            owned,
        }
    }

    /// No interest signal at all: the user gets popular products.
    pub fn is_cold(&self) -> bool {
        self.short.is_empty()
            && self.long.is_empty()
            && self.recent.is_empty()
            && self.bands.is_empty()
    }

    /// The category the user shows most interest in (short and long window together).
    pub fn top_category(&self) -> Option<String> {
        let mut best: Option<(f64, &String)> = None;
        for category in self.short.keys().chain(self.long.keys()) {
            let weight = affinity(self, category);
            if best.is_none_or(|(w, c)| weight > w || (weight == w && category < c)) {
                best = Some((weight, category));
            }
        }
        best.map(|(_, c)| c.clone())
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub limit: usize,
    pub category: Option<String>,
    pub exclude: HashSet<String>,
}

/// Why a product is recommended.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Viewed next to a product the user viewed recently.
    ViewedTogether { product_id: String, product_name: Option<String> },
    /// In a category the user has been browsing.
    CategoryAffinity { category: String },
    /// Popular lately within its category.
    Trending { category: String },
    /// In the price band the user clicks most.
    PriceMatch { band: String },
    /// Popular lately across the catalog (cold start, or nothing more specific).
    Popular,
}

impl Reason {
    /// A short sentence for people.
    pub fn text(&self) -> String {
        match self {
            Self::ViewedTogether { product_id, product_name } => {
                format!("Because you viewed {}", product_name.as_deref().unwrap_or(product_id))
            }
            Self::CategoryAffinity { category } => format!("You've been browsing {category}"),
            Self::Trending { category } => format!("Trending in {category}"),
            Self::PriceMatch { band } => format!("In your price range ({band})"),
            Self::Popular => "Popular right now".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub product_id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    /// A decimal number as a string (`"19.90"`).
    #[schema(value_type = Option<String>)]
    pub price: Option<Decimal>,
    /// In [0, 1]; comparable within one answer only.
    pub score: f64,
    pub reason: Reason,
    pub reason_text: String,
}

/// Share of the user's category interest in `category`, in [0, 1]: the short and the long
/// window weigh the same, and a window without activity does not dilute the other.
fn affinity(user: &UserSignals, category: &str) -> f64 {
    let share = |map: &BTreeMap<String, f64>| {
        let total: f64 = map.values().sum();
        (total > 0.0).then(|| map.get(category).copied().unwrap_or(0.0) / total)
    };
    match (share(&user.short), share(&user.long)) {
        (Some(short), Some(long)) => 0.5 * short + 0.5 * long,
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => 0.0,
    }
}

/// The strongest "viewed together" link from the user's recent views to each product linked:
/// weight in [0, 1] (the seed's co-view count relative to its best partner, newer seeds weigh
/// more), and the seed; the first seed wins a tie. Computed once per answer, from the seeds'
/// partner lists, rather than searching those lists for every product of the catalog.
fn together<'a>(
    user: &'a UserSignals,
    index: &'a ProductIndex,
) -> FastMap<&'a str, (f64, &'a str)> {
    let mut best: FastMap<&str, (f64, &str)> = FastMap::default();
    for (rank, seed) in user.recent.iter().take(SEEDS).enumerate() {
        let Some(entry) = index.get(seed) else { continue };
        let Some(top) = entry.together.first().map(|(_, count)| *count as f64) else { continue };
        let mut seen: HashSet<&str> = HashSet::new();
        for (candidate, count) in &entry.together {
            // A partner listed twice counts as its first listing, as a search would find it.
            if !seen.insert(candidate.as_str()) {
                continue;
            }
            let weight = (*count as f64 / top) / (rank as f64 + 1.0);
            let current = best.entry(candidate.as_str()).or_insert((0.0, ""));
            if weight > current.0 {
                *current = (weight, seed.as_str());
            }
        }
    }
    best
}

/// The user's share of clicks in each price band (by band index), worked out once per answer so
/// that matching a product's price takes a search among the bounds and no label.
struct PriceMatch<'a> {
    feature: &'a Feature,
    shares: Vec<f64>,
}

impl<'a> PriceMatch<'a> {
    fn new(user: &UserSignals, bands: Option<&'a Feature>) -> Option<Self> {
        let feature = bands.filter(|feature| !feature.bands.is_empty())?;
        let total: f64 = user.bands.values().sum();
        if total <= 0.0 {
            return None;
        }
        let shares = (0..=feature.bands.len())
            .map(|index| user.bands.get(&feature.band_label(index)).copied().unwrap_or(0.0) / total)
            .collect();
        Some(Self { feature, shares })
    }

    /// The largest share of any band: what price matching gives at most.
    fn best(&self) -> f64 {
        self.shares.iter().copied().fold(0.0, f64::max)
    }

    /// The user's share of the band `price` falls in, and that band.
    fn of(&self, price: Option<Decimal>) -> (f64, Option<usize>) {
        let Some(price) = price else { return (0.0, None) };
        let band = self.feature.band_index(price);
        (self.shares[band], Some(band))
    }
}

/// Ranks the catalog for `user`. `price_bands` is the feature whose bands price matching uses.
///
/// Only the products that can make the answer are scored (see [`scorer`]); only the products
/// picked become [`Recommendation`]s (names cloned, reasons worded).
pub fn recommend(
    user: &UserSignals,
    index: &ProductIndex,
    price_bands: Option<&Feature>,
    query: &Query,
) -> Vec<Recommendation> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let scorer = scorer::Scorer::new(user, index, price_bands, query);
    diversify(scorer.candidates(limit), limit)
        .into_iter()
        .map(|picked| picked.recommendation(index, price_bands))
        .collect()
}

/// A product as scored, before it is picked.
struct Scored<'a> {
    score: f64,
    id: &'a str,
    product: &'a Product,
    why: Why<'a>,
}

/// Which part of the score was strongest (a [`Reason`] once worded).
enum Why<'a> {
    Together(&'a str),
    Affinity,
    Trending,
    /// The band's index among the price bands.
    Price(Option<usize>),
    Popular,
}

impl Scored<'_> {
    fn recommendation(self, index: &ProductIndex, price_bands: Option<&Feature>) -> Recommendation {
        let category = self.product.category.clone().unwrap_or_default();
        let reason = match self.why {
            Why::Together(seed) => Reason::ViewedTogether {
                product_id: seed.to_string(),
                product_name: index.get(seed).and_then(|e| e.product.name.clone()),
            },
            Why::Affinity => Reason::CategoryAffinity { category },
            Why::Trending => Reason::Trending { category },
            Why::Price(band) => Reason::PriceMatch {
                band: band.zip(price_bands).map(|(b, f)| f.band_label(b)).unwrap_or_default(),
            },
            Why::Popular => Reason::Popular,
        };
        Recommendation {
            product_id: self.id.to_string(),
            name: self.product.name.clone(),
            category: self.product.category.clone(),
            brand: self.product.brand.clone(),
            price: self.product.price,
            score: (self.score * 1e4).round() / 1e4,
            reason_text: reason.text(),
            reason,
        }
    }
}

/// Picks `limit` products greedily: each pick's score is discounted by how many products of its
/// category were already picked, so one strong category does not take every slot; ties go to the
/// smaller id.
///
/// Within a category every product is discounted alike, so each pick is some category's best
/// remaining product, and no category gives more than `limit`: only each category's `limit` best
/// are sorted, and a pick compares one product per category instead of the whole catalog.
fn diversify(scored: Vec<Scored<'_>>, limit: usize) -> Vec<Scored<'_>> {
    let best_first =
        |a: &Scored<'_>, b: &Scored<'_>| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(b.id));
    let mut slot: FastMap<Option<&str>, usize> = FastMap::default();
    let mut categories: Vec<Vec<Scored<'_>>> = Vec::new();
    for item in scored {
        let at = *slot.entry(item.product.category.as_deref()).or_insert_with(|| {
            categories.push(Vec::new());
            categories.len() - 1
        });
        categories[at].push(item);
    }
    // Each category's best `limit`, best last (so a pick pops), with how many were picked.
    let mut queues: Vec<(Vec<Scored<'_>>, i32)> = categories
        .into_iter()
        .map(|mut items| {
            if items.len() > limit {
                items.select_nth_unstable_by(limit - 1, best_first);
                items.truncate(limit);
            }
            items.sort_by(|a, b| best_first(b, a));
            (items, 0)
        })
        .collect();
    let mut picked: Vec<Scored<'_>> = Vec::with_capacity(limit);
    while picked.len() < limit {
        let mut best: Option<(f64, &str, usize)> = None;
        for (at, (items, seen)) in queues.iter().enumerate() {
            let Some(head) = items.last() else { continue };
            let adjusted = head.score * DIVERSITY.powi(*seen);
            let better = match best {
                None => true,
                Some((top, id, _)) => adjusted > top || (adjusted == top && head.id < id),
            };
            if better {
                best = Some((adjusted, head.id, at));
            }
        }
        let Some((_, _, at)) = best else { break };
        let (items, seen) = &mut queues[at];
        if let Some(item) = items.pop() {
            *seen += 1;
            picked.push(item);
        }
    }
    picked
}

#[cfg(test)]
mod tests;
