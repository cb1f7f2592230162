//! Scoring products for one answer, and finding the few that can make it without scoring the
//! whole catalog.
//!
//! The diversified pick only ever takes from each category's `limit` best (see `diversify`). A
//! product that is not viewed together with the user's recent views scores at most what its
//! category's affinity, its price band's share and its own trending score give. The index lists
//! a category's products by price band, each band most trending first (then by id). So each
//! band is walked only while that bound still reaches the category's `limit`-th best score so
//! far, and in its last group of equal trending scores (the never-viewed tail) only while it can
//! still win a tie. The bound is the score's own formula with nothing viewed together:
//! floating-point addition and multiplication are monotone, so it is never below a score it
//! stands for. Products viewed together are scored anyway. The user's favourite bands are
//! walked first, so the others usually stop at their first product.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::index::{IndexedProduct, ProductIndex};
use super::{
    FastMap, FastSet, JUST_VIEWED, JUST_VIEWED_FACTOR, PriceMatch, Query, Scored, UserSignals,
    W_AFFINITY, W_POPULAR, W_PRICE, W_TOGETHER, W_TRENDING, Why, affinity, together,
};
use crate::features::Feature;

pub(super) struct Scorer<'a> {
    index: &'a ProductIndex,
    query: &'a Query,
    cold: bool,
    max_trending: f64,
    linked: FastMap<&'a str, (f64, &'a str)>,
    prices: Option<PriceMatch<'a>>,
    /// The largest price share of any band: what price matching gives at most.
    best_price: f64,
    affinities: FastMap<&'a str, f64>,
    just_viewed: FastSet<&'a str>,
    left_out: FastSet<&'a str>,
    /// How many products were scored: what the walk's bounds save is the rest of the catalog.
    scored: Cell<usize>,
}

impl<'a> Scorer<'a> {
    pub fn new(
        user: &'a UserSignals,
        index: &'a ProductIndex,
        price_bands: Option<&'a Feature>,
        query: &'a Query,
    ) -> Self {
        let cold = user.is_cold();
        let linked = if cold { FastMap::default() } else { together(user, index) };
        // Only categories the user browsed have an affinity; computed once each.
        let affinities = if cold {
            FastMap::default()
        } else {
            user.short
                .keys()
                .chain(user.long.keys())
                .map(|c| (c.as_str(), affinity(user, c)))
                .collect()
        };
        let prices = PriceMatch::new(user, price_bands);
        Self {
            index,
            best_price: prices.as_ref().map_or(0.0, PriceMatch::best),
            query,
            cold,
            max_trending: index.max_trending(),
            linked,
            prices,
            affinities,
            just_viewed: user.recent.iter().take(JUST_VIEWED).map(String::as_str).collect(),
            left_out: user.owned.iter().chain(&query.exclude).map(String::as_str).collect(),
            scored: Cell::new(0),
        }
    }

    /// Every product that can be among the first `limit` of its category, scored.
    pub fn candidates(&self, limit: usize) -> Vec<Scored<'a>> {
        let mut scored: Vec<Scored<'a>> = Vec::new();
        for id in self.linked.keys() {
            if let Some((id, entry)) = self.index.products.get_key_value(*id)
                && let Some(item) = self.score(id, entry)
            {
                scored.push(item);
            }
        }
        for (category, slots) in &self.index.by_category {
            if self.query.category.is_some() && self.query.category != *category {
                continue;
            }
            let category = category.as_deref().unwrap_or_default();
            let mut best: BinaryHeap<Worst<'a>> = BinaryHeap::with_capacity(limit + 1);
            let mut slots: Vec<(f64, &Vec<String>)> = slots
                .iter()
                .enumerate()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(slot, ids)| (self.slot_price(slot), ids))
                .collect();
            slots.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (price, ids) in slots {
                self.walk(category, ids, price, limit, &mut best);
            }
            scored.extend(best.into_iter().map(|worst| worst.0));
        }
        scored
    }

    /// Walks one price slot of a category (most trending first) into the category's `best`,
    /// while its products' bound, with the slot's price share `price`, can still enter.
    fn walk(
        &self,
        category: &str,
        ids: &'a [String],
        price: f64,
        limit: usize,
        best: &mut BinaryHeap<Worst<'a>>,
    ) {
        let last_trending = ids.last().and_then(|id| self.index.products.get(id));
        let last_trending = last_trending.map(|entry| entry.trending);
        for id in ids {
            let Some((id, entry)) = self.index.products.get_key_value(id) else { continue };
            if best.len() == limit
                && let Some(Worst(worst)) = best.peek()
            {
                let bound = self.parts(category, entry.trending, 0.0, price).0;
                // A tie goes to the smaller id. In the slot's last trending group (the long tail
                // never viewed) every later product has a larger id than this one, and the same
                // bound.
                let tail = Some(entry.trending) == last_trending && id.as_str() > worst.id;
                if bound < worst.score || (bound == worst.score && tail) {
                    break;
                }
            }
            if self.linked.contains_key(id.as_str()) {
                continue;
            }
            if let Some(item) = self.score(id, entry) {
                best.push(Worst(item));
                if best.len() > limit {
                    best.pop();
                }
            }
        }
    }

    /// The price share every product of index slot `slot` gets (see `ProductIndex::slot_of`):
    /// none without a price; its band's share when the index's bands are the ones price
    /// matching reads, else the best share (a bound that always holds).
    fn slot_price(&self, slot: usize) -> f64 {
        let Some(prices) = &self.prices else { return 0.0 };
        if slot == 0 {
            return 0.0;
        }
        if prices.feature.bands == self.index.price_bands {
            prices.shares.get(slot - 1).copied().unwrap_or(self.best_price)
        } else {
            self.best_price
        }
    }

    /// How many products this scorer has scored.
    #[cfg(test)]
    pub fn scored(&self) -> usize {
        self.scored.get()
    }

    /// Every product of the catalog scored, for tests to compare the candidates with.
    #[cfg(test)]
    pub fn all(&self) -> Vec<Scored<'a>> {
        self.index.products.iter().filter_map(|(id, entry)| self.score(id, entry)).collect()
    }

    /// The score without the just-viewed discount, and the index of its strongest part.
    fn parts(&self, category: &str, trending: f64, together: f64, price: f64) -> (f64, usize) {
        let popular = if self.max_trending > 0.0 { trending / self.max_trending } else { 0.0 };
        if self.cold {
            return (popular, usize::MAX);
        }
        let top = self.index.top_trending.get(category).copied().unwrap_or(0.0);
        let trending = if top > 0.0 { trending / top } else { 0.0 };
        let affinity = self.affinities.get(category).copied().unwrap_or(0.0);
        let parts = [
            (W_TOGETHER * together, 0),
            (W_AFFINITY * affinity, 1),
            (W_TRENDING * trending, 2),
            (W_PRICE * price, 3),
        ];
        let score: f64 = parts.iter().map(|(p, _)| p).sum::<f64>() + W_POPULAR * popular;
        let strongest = parts
            .iter()
            .copied()
            .fold((0.0, usize::MAX), |best, part| if part.0 > best.0 { part } else { best });
        (score, strongest.1)
    }

    /// The product's score and strongest reason; `None` when it is left out of this answer.
    fn score(&self, id: &'a str, entry: &'a IndexedProduct) -> Option<Scored<'a>> {
        self.scored.set(self.scored.get() + 1);
        let product = &entry.product;
        if !self.left_out.is_empty() && self.left_out.contains(id) {
            return None;
        }
        if self.query.category.as_ref().is_some_and(|c| product.category.as_ref() != Some(c)) {
            return None;
        }
        let category = product.category.as_deref().unwrap_or_default();
        let (together, seed) = match self.linked.get(id) {
            Some((weight, seed)) => (*weight, Some(*seed)),
            None => (0.0, None),
        };
        let (price, band) = self.prices.as_ref().map_or((0.0, None), |p| p.of(product.price));
        let (mut score, strongest) = self.parts(category, entry.trending, together, price);
        if !self.cold && !self.just_viewed.is_empty() && self.just_viewed.contains(id) {
            score *= JUST_VIEWED_FACTOR;
        }
        let why = match strongest {
            0 => Why::Together(seed.unwrap_or_default()),
            1 => Why::Affinity,
            2 => Why::Trending,
            3 => Why::Price(band),
            _ => Why::Popular,
        };
        Some(Scored { score, id, product, why })
    }
}

/// Orders a category's best so far with the worst on top: lowest score, then highest id (the
/// diversified pick prefers the smaller id on a tie).
struct Worst<'a>(Scored<'a>);

impl Ord for Worst<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.score.total_cmp(&self.0.score).then_with(|| self.0.id.cmp(other.0.id))
    }
}

impl PartialOrd for Worst<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Worst<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst<'_> {}
