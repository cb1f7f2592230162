//! Buckets kept once for several features. `views_1m`, `views_5m` and `views_15m` count the
//! same rows (a user's views) over three windows; `category_clicks_1h` and
//! `clicks_by_price_band_1h` both keep the product id of each click and join it when read. Each
//! kept its own buckets of the same rows; features of one entity over the same source, filter and
//! stored value now keep one state, in buckets as wide as the greatest common divisor of their
//! widths (each feature's bucket is a whole number of them, so every window is read exactly),
//! for as long as the longest-kept of them needs.
//!
//! Facts too: `last_viewed_product`, `recent_products_viewed` and `recent_categories_10m` each
//! kept a user's views (the viewed product's id, by time). Fact features over the same rows keep
//! one list ([`SharedFacts`]), holding every fact any of them would keep: a superset of each
//! one's, from which each reads what it read before (see `retention::prune_shared_facts`).
//!
//! A co-occurrence session is the same views again (the shopper's rows that pass its filter,
//! by the item they name): where fact features keep them, the session reads its rows from their
//! list ([`SharedFacts::sessions`]), which then keeps them as long as the session needs.

use super::{Aggregation, Entity, Feature, Storage, ValueExpr};
use crate::features::intern::intern;
use crate::features::source::{SourceSchema, SourceTable};

/// The state several windowed bucket features keep together (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBuckets {
    /// The state's name: its features' names joined by `+`, in definition order. (No feature
    /// name holds a `+`, so it never names a feature's own state.)
    pub name: &'static str,
    /// The width of its buckets (µs): the greatest common divisor of its features' widths.
    pub bucket_us: i64,
    /// Its features, in definition order; the first one applies changes for all of them.
    pub members: Vec<&'static str>,
    /// Their bucket widths, in the same order; each keeps its window plus `history`.
    pub widths: Vec<i64>,
}

impl SharedBuckets {
    /// Whether `feature` applies changes to the shared state for every member.
    pub fn applied_by(&self, feature: &Feature) -> bool {
        self.members.first().is_some_and(|first| std::ptr::eq(*first, feature.name))
    }
}

/// The facts several fact features keep together (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFacts {
    /// The state's name: its features' names joined by `+`, in definition order.
    pub name: &'static str,
    /// Its features, in definition order.
    pub members: Vec<&'static str>,
    /// The member that applies changes for all of them: one storing a column as it is, if any.
    /// (A member joining an attribute of the item stores the item's id too, but stores no fact
    /// for an empty id, which no item has: it reads such a fact as one it cannot join, as it
    /// reads any fact of an item not in the catalog, so it reads the same.)
    pub leader: &'static str,
    /// What each of them reads, in the same order: the facts it keeps.
    pub bounds: Vec<FactBound>,
    /// The bucket widths of the windowed ones among them (for rows too old for them).
    pub widths: Vec<i64>,
    /// The co-occurrence sessions that read their rows from these facts, which keep the rows
    /// each one needs besides those of the members.
    pub sessions: Vec<SessionBound>,
}

/// Rows of one user's session kept per feature, newest first, beyond which the oldest go even
/// when younger than `history + session` (a bound on state size for very active users).
pub const SESSION_FACTS_MAX: usize = 500;

/// What a co-occurrence session needs of the facts it reads (see `features::pairs`): its rows of
/// the last `keep_us`, at most [`SESSION_FACTS_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBound {
    /// The co-occurrence feature.
    pub feature: &'static str,
    /// How far back a row can still be a neighbour (µs): `history + session`.
    pub keep_us: i64,
}

impl SharedFacts {
    /// Whether `feature` applies changes to the shared facts for every member.
    pub fn applied_by(&self, feature: &Feature) -> bool {
        std::ptr::eq(self.leader, feature.name)
    }
}

/// The facts one fact feature keeps (its reads need no others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactBound {
    /// A window of buckets this wide (µs): facts for the window plus `history`.
    Window(i64),
    /// Unwindowed `last` and `intervals`: the newest this many facts.
    Newest(usize),
    /// Unwindowed `last_n`: the facts of the newest this many values (a few of each).
    NewestValues(usize),
}

impl FactBound {
    fn of(feature: &Feature) -> Self {
        let kept = feature.n.max(1) + crate::features::FACT_SLACK;
        match (feature.window, feature.aggregation) {
            (Some(window), _) => Self::Window(window.bucket_us),
            (None, Aggregation::LastN) => Self::NewestValues(kept),
            (None, _) => Self::Newest(kept),
        }
    }
}

/// What a row stores for a bucket feature, as far as sharing goes: features that store the same
/// text for every row can share buckets. (An attribute of a dimension stores the item's id and
/// is joined when read.)
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Nothing,
    Column(&'static str),
    ItemId(Entity),
    Product2(&'static str, &'static str),
}

/// Which rows a bucket feature keeps, and what of them: equal for features that can share.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rows {
    storage: Storage,
    keyed: bool,
    entity: Entity,
    table: SourceTable,
    filter: Vec<(&'static str, Vec<String>)>,
    stored: Stored,
    steps: Vec<String>,
}

impl Rows {
    fn of(feature: &Feature, sources: &[SourceSchema]) -> Option<Self> {
        match feature.storage() {
            Storage::Buckets if feature.window.is_some() => {}
            Storage::Facts => {}
            _ => return None,
        }
        let stored = match &feature.value {
            ValueExpr::Nothing => Stored::Nothing,
            // A fact of a column holding an entity's id is that id (see `SharedFacts::leader`).
            ValueExpr::Column(column) => match sources
                .iter()
                .find(|source| source.name == feature.table)
                .and_then(|source| source.entities.iter().find(|(_, c)| c == column))
            {
                Some((entity, _)) if feature.storage() == Storage::Facts => Stored::ItemId(*entity),
                _ => Stored::Column(column),
            },
            ValueExpr::Attribute(entity, _) => Stored::ItemId(*entity),
            ValueExpr::Product2(left, right) => Stored::Product2(left, right),
        };
        Some(Self {
            storage: feature.storage(),
            keyed: feature.facts_keyed,
            entity: feature.entity,
            table: feature.table,
            filter: normalized(&feature.filter),
            stored,
            steps: feature.steps.clone(),
        })
    }

    /// The rows a co-occurrence feature's session keeps, as a fact feature of the shopper would
    /// keep them: the item's id of each row that passes its filter.
    fn session_of(feature: &Feature, shopper: Entity) -> Option<Self> {
        (feature.storage() == Storage::Pairs).then(|| Self {
            storage: Storage::Facts,
            keyed: feature.facts_keyed,
            entity: shopper,
            table: feature.table,
            filter: normalized(&feature.filter),
            stored: Stored::ItemId(feature.entity),
            steps: Vec::new(),
        })
    }
}

/// A filter in one order, each column's accepted values sorted and once each.
fn normalized(filter: &[(&'static str, Vec<String>)]) -> Vec<(&'static str, Vec<String>)> {
    let mut filter = filter.to_vec();
    for (_, accepted) in &mut filter {
        accepted.sort();
        accepted.dedup();
    }
    filter.sort();
    filter
}

/// Groups the windowed bucket features, and the fact features, that keep the same rows, and
/// points each feature of a group of two or more at the group's [`SharedBuckets`] or
/// [`SharedFacts`]; a co-occurrence session over a group of fact features' rows reads them
/// there.
pub(super) fn share_buckets(
    features: &mut [Feature],
    sources: &[SourceSchema],
    shopper: Entity,
    history_us: i64,
) {
    let mut groups: Vec<(Rows, Vec<usize>)> = Vec::new();
    for (index, feature) in features.iter().enumerate() {
        let Some(rows) = Rows::of(feature, sources) else { continue };
        match groups.iter_mut().find(|(known, _)| *known == rows) {
            Some((_, members)) => members.push(index),
            None => groups.push((rows, vec![index])),
        }
    }
    for (rows, indices) in groups.into_iter().filter(|(_, indices)| indices.len() > 1) {
        let members: Vec<&'static str> = indices.iter().map(|i| features[*i].name).collect();
        if rows.storage == Storage::Facts {
            let leader = indices
                .iter()
                .map(|i| &features[*i])
                .find(|feature| matches!(feature.value, ValueExpr::Column(_)))
                .map_or(members[0], |feature| feature.name);
            let sessions: Vec<usize> = (0..features.len())
                .filter(|i| Rows::session_of(&features[*i], shopper).as_ref() == Some(&rows))
                .collect();
            let shared = SharedFacts {
                name: intern(&members.join("+")),
                leader,
                bounds: indices.iter().map(|i| FactBound::of(&features[*i])).collect(),
                widths: indices
                    .iter()
                    .filter_map(|i| features[*i].window.map(|w| w.bucket_us))
                    .collect(),
                members,
                sessions: sessions
                    .iter()
                    .map(|i| SessionBound {
                        feature: features[*i].name,
                        keep_us: history_us.saturating_add(features[*i].session_us()),
                    })
                    .collect(),
            };
            for index in sessions {
                features[index].session_in = Some(shared.name);
            }
            for index in indices {
                features[index].shared_facts = Some(shared.clone());
            }
            continue;
        }
        let widths: Vec<i64> = indices
            .iter()
            .filter_map(|i| features[*i].window.map(|window| window.bucket_us))
            .collect();
        let shared = SharedBuckets {
            name: intern(&members.join("+")),
            bucket_us: widths.iter().copied().fold(0, gcd),
            members,
            widths,
        };
        for index in indices {
            features[index].shared = Some(shared.clone());
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSet;

    #[test]
    fn features_over_the_same_rows_share_buckets_as_wide_as_their_widths_allow() {
        let set = FeatureSet::parse(super::super::DEFAULT_DEFINITIONS, "test").expect("valid");
        let shared = |name: &str| set.get(name).and_then(|f| f.shared.clone());
        let views = shared("views_1m").expect("views_1m shares");
        assert_eq!(views.members, ["views_1m", "views_5m", "views_15m"]);
        assert_eq!(views.name, "views_1m+views_5m+views_15m");
        // 1 s, 5 s and 15 s buckets: one second divides them all.
        assert_eq!(views.bucket_us, 1_000_000);
        assert_eq!(shared("views_15m"), Some(views.clone()));
        // Categories and price bands both keep the clicked product's id.
        let clicks = shared("category_clicks_1h").expect("shares");
        assert_eq!(clicks.members, ["category_clicks_1h", "clicks_by_price_band_1h"]);
        assert_eq!(clicks.bucket_us, 60_000_000);
        let categories = shared("category_views_1h").expect("shares");
        assert_eq!(categories.members, ["category_views_1h", "category_views_10m"]);
        assert_eq!(categories.bucket_us, 10_000_000);
        // A product's views and their decayed count.
        let product = shared("views_1h").expect("shares");
        assert_eq!(product.members, ["views_1h", "trending_score"]);
        // Other filters, other stored values, or alone: their own state.
        for alone in ["searches_15m", "unique_viewers_1h", "search_click_cart_conversion_1h"] {
            assert_eq!(shared(alone), None, "{alone}");
        }
        // Facts share facts, not buckets.
        for facts in ["recent_products_viewed", "last_viewed_product", "viewed_together_24h"] {
            assert_eq!(shared(facts), None, "{facts}");
        }
        let facts = set.get("recent_products_viewed").and_then(|f| f.shared_facts.clone());
        let facts = facts.expect("shares facts");
        assert_eq!(
            facts.members,
            ["last_viewed_product", "recent_categories_10m", "recent_products_viewed"]
        );
        let window_10m = set.get("recent_categories_10m").and_then(|f| f.window).expect("10m");
        // `last_viewed_product` stores the column as it is: it applies changes for all three.
        assert_eq!(facts.leader, "last_viewed_product");
        assert_eq!(
            facts.bounds,
            [
                FactBound::Newest(1 + crate::features::FACT_SLACK),
                FactBound::Window(window_10m.bucket_us),
                FactBound::NewestValues(20 + crate::features::FACT_SLACK),
            ]
        );
        // The co-occurrence session of a user is the same views: it reads them there, and they
        // keep them for `history + session` (15m + 30m).
        let together = set.get("viewed_together_24h").expect("declared");
        assert_eq!(together.session_in, Some(facts.name));
        let keep_us = 45 * 60 * 1_000_000;
        assert_eq!(facts.sessions, [SessionBound { feature: together.name, keep_us }]);
        // Other stored values (the cart's products, an order's), or alone.
        for alone in ["cart_products", "purchased_products_30d", "purchase_intervals"] {
            assert_eq!(set.get(alone).and_then(|f| f.shared_facts.clone()), None, "{alone}");
        }
        assert!(views.applied_by(set.get("views_1m").expect("declared")));
        assert!(!views.applied_by(set.get("views_5m").expect("declared")));
    }

    #[test]
    fn the_greatest_common_divisor_of_widths() {
        assert_eq!([60, 10].into_iter().fold(0, gcd), 10);
        assert_eq!([15, 10].into_iter().fold(0, gcd), 5);
        assert_eq!([7].into_iter().fold(0, gcd), 7);
    }
}
