use std::collections::HashMap;

use rust_decimal::Decimal;

use super::index::ProductSignals;
use super::*;
use crate::features::{FeatureSet, Product};

fn product(id: &str, category: &str, price: i64) -> Product {
    let name = format!("{id} name");
    Product::reference(id, Some(&name), Some(category), Some("acme"), Some(Decimal::from(price)))
}

/// Four shoes and four hats; hats are the most viewed overall; s1 is viewed together with h4.
fn index() -> ProductIndex {
    let mut catalog = HashMap::new();
    let mut signals: HashMap<String, ProductSignals> = HashMap::new();
    for i in 1..=4 {
        let shoe = product(&format!("s{i}"), "shoes", 20 * i);
        let hat = product(&format!("h{i}"), "hats", 20 * i);
        signals.insert(shoe.id.clone(), (i as f64, Vec::new()));
        signals.insert(hat.id.clone(), (10.0 * i as f64, Vec::new()));
        catalog.insert(shoe.id.clone(), shoe);
        catalog.insert(hat.id.clone(), hat);
    }
    signals.insert("s1".into(), (1.0, vec![("h4".into(), 5), ("s2".into(), 1)]));
    ProductIndex::build(&catalog, &signals, None)
}

fn bands() -> FeatureSet {
    FeatureSet::load(None).expect("built-in definitions")
}

fn shoe_viewer() -> UserSignals {
    UserSignals {
        short: [("shoes".to_string(), 4.0)].into(),
        long: [("shoes".to_string(), 9.0)].into(),
        ..UserSignals::default()
    }
}

fn query(limit: usize) -> Query {
    Query { limit, ..Query::default() }
}

fn ids(list: &[Recommendation]) -> Vec<&str> {
    list.iter().map(|r| r.product_id.as_str()).collect()
}

#[test]
fn a_user_who_viewed_shoes_gets_shoes_first() {
    let set = bands();
    let list = recommend(&shoe_viewer(), &index(), set.get("clicks_by_price_band_1h"), &query(3));
    assert_eq!(list[0].category.as_deref(), Some("shoes"), "{list:?}");
    assert_eq!(list[0].product_id, "s4", "the most trending shoe leads: {list:?}");
    assert_eq!(list[0].reason, Reason::CategoryAffinity { category: "shoes".into() });
}

#[test]
fn a_cold_user_gets_popular_products() {
    let list = recommend(&UserSignals::default(), &index(), None, &query(3));
    assert_eq!(ids(&list), ["h4", "h3", "h2"]);
    assert!(list.iter().all(|r| r.reason == Reason::Popular));
}

#[test]
fn cart_purchases_and_excluded_products_are_left_out() {
    let mut user = shoe_viewer();
    user.owned = ["s4".to_string(), "s3".to_string()].into();
    let query = Query { limit: 50, exclude: ["s2".to_string()].into(), ..Query::default() };
    let list = recommend(&user, &index(), None, &query);
    for gone in ["s4", "s3", "s2"] {
        assert!(!ids(&list).contains(&gone), "{gone} in {:?}", ids(&list));
    }
    assert_eq!(list.len(), 5);
}

#[test]
fn results_mix_categories() {
    let list = recommend(&shoe_viewer(), &index(), None, &query(4));
    let hats = list.iter().filter(|r| r.category.as_deref() == Some("hats")).count();
    assert!(hats >= 1, "all one category: {:?}", ids(&list));
}

#[test]
fn a_recent_view_brings_what_was_viewed_with_it() {
    let mut user = shoe_viewer();
    user.recent = vec!["s1".into()];
    let list = recommend(&user, &index(), None, &query(10));
    let h4 = list.iter().find(|r| r.product_id == "h4").expect("h4 recommended");
    assert_eq!(
        h4.reason,
        Reason::ViewedTogether { product_id: "s1".into(), product_name: Some("s1 name".into()) }
    );
    assert_eq!(h4.reason_text, "Because you viewed s1 name");
}

#[test]
fn the_price_band_the_user_clicks_lifts_products_in_it() {
    let set = bands();
    let position = |band: &str| {
        let user =
            UserSignals { bands: [(band.to_string(), 3.0)].into(), ..UserSignals::default() };
        let list = recommend(&user, &index(), set.get("clicks_by_price_band_1h"), &query(50));
        let at = list.iter().position(|r| r.product_id == "h1").expect("h1 listed");
        (at, list[at].reason.clone())
    };
    let (cheap, reason) = position("<25");
    let (dear, _) = position("250+");
    assert!(cheap < dear, "h1 (20) at {cheap} when clicking <25, at {dear} when clicking 250+");
    assert_eq!(reason, Reason::PriceMatch { band: "<25".into() });
}

#[test]
fn a_category_filter_keeps_only_that_category() {
    let query = Query { limit: 10, category: Some("hats".into()), ..Query::default() };
    let list = recommend(&shoe_viewer(), &index(), None, &query);
    assert_eq!(list.len(), 4);
    assert!(list.iter().all(|r| r.category.as_deref() == Some("hats")));
}

#[test]
fn the_same_state_gives_the_same_answer() {
    let mut user = shoe_viewer();
    user.recent = vec!["s1".into(), "h2".into()];
    let first = recommend(&user, &index(), None, &query(8));
    for _ in 0..5 {
        assert_eq!(recommend(&user, &index(), None, &query(8)), first);
    }
}

#[test]
fn just_viewed_products_come_after_fresh_ones_of_the_same_appeal() {
    let mut user = shoe_viewer();
    let before = recommend(&user, &index(), None, &query(8));
    assert_eq!(before[0].product_id, "s4");
    user.recent = vec!["s4".into()];
    let after = recommend(&user, &index(), None, &query(8));
    assert_ne!(after[0].product_id, "s4", "{:?}", ids(&after));
    assert!(ids(&after).contains(&"s4"), "still recommended: {:?}", ids(&after));
}

/// The greedy pick as first written: every remaining product compared at every pick.
fn diversify_by_scanning<'a>(mut scored: Vec<Scored<'a>>, limit: usize) -> Vec<Scored<'a>> {
    let mut picked: Vec<Scored<'_>> = Vec::new();
    let mut per_category: Vec<(Option<&str>, i32)> = Vec::new();
    while picked.len() < limit && !scored.is_empty() {
        let mut best: Option<(f64, usize)> = None;
        for (position, item) in scored.iter().enumerate() {
            let category = item.product.category.as_deref();
            let seen = per_category.iter().find(|(c, _)| *c == category).map_or(0, |(_, n)| *n);
            let adjusted = item.score * DIVERSITY.powi(seen);
            if best.is_none_or(|(top, at)| {
                adjusted > top || (adjusted == top && item.id < scored[at].id)
            }) {
                best = Some((adjusted, position));
            }
        }
        let Some((_, position)) = best else { break };
        let item = scored.swap_remove(position);
        let category = item.product.category.as_deref();
        match per_category.iter_mut().find(|(c, _)| *c == category) {
            Some((_, n)) => *n += 1,
            None => per_category.push((category, 1)),
        }
        picked.push(item);
    }
    picked
}

proptest::proptest! {
    /// Picking from each category's best equals comparing every product at every pick, ties
    /// (many: scores are eighths) included.
    #[test]
    fn diversifying_by_category_equals_scanning_every_product(
        items in proptest::collection::vec((0u8..9, 0usize..5), 0..60),
        limit in 1usize..12,
    ) {
        let categories = [Some("a"), Some("b"), Some("c"), Some("d"), None];
        let products: Vec<(String, Product)> = items
            .iter()
            .enumerate()
            .map(|(n, (_, category))| {
                let mut product = product(&format!("p{n:02}"), "", 0);
                product.category = categories[*category].map(String::from);
                (product.id.clone(), product)
            })
            .collect();
        let scored = || -> Vec<Scored<'_>> {
            products
                .iter()
                .zip(&items)
                .map(|((id, product), (eighths, _))| Scored {
                    score: f64::from(*eighths) / 8.0,
                    id,
                    product,
                    why: Why::Popular,
                })
                .collect()
        };
        let picked: Vec<&str> = diversify(scored(), limit).iter().map(|s| s.id).collect();
        let scanned: Vec<&str> =
            diversify_by_scanning(scored(), limit).iter().map(|s| s.id).collect();
        proptest::prop_assert_eq!(picked, scanned);
    }
}

type ArbProduct = (usize, u8, Option<i64>, Vec<usize>);

fn arb_catalog() -> impl proptest::strategy::Strategy<Value = Vec<ArbProduct>> {
    // Per product: category (4 is none), trending in quarters, price, partners.
    proptest::collection::vec(
        (
            0usize..5,
            0u8..12,
            // Few prices, some in each band, so that bands hold several products.
            proptest::option::weighted(
                0.9,
                proptest::sample::select(&[10i64, 30, 45, 70, 150, 300][..]),
            ),
            proptest::collection::vec(0usize..30, 0..3),
        ),
        0..30,
    )
}

proptest::proptest! {
    /// Walking each category only as far as its products can still score gives the answer that
    /// scoring every product gives, for any catalog, user and query.
    #[test]
    fn candidates_give_the_answer_scoring_everything_gives(
        catalog in arb_catalog(),
        short in proptest::collection::vec((0usize..5, 1u8..5), 0..3),
        recent in proptest::collection::vec(0usize..30, 0..4),
        owned in proptest::collection::vec(0usize..30, 0..3),
        band_clicks in proptest::collection::vec((0usize..5, 1u8..4), 0..3),
        slotted_by_price in proptest::bool::ANY,
        limit in 1usize..12,
        only in proptest::option::weighted(0.2, 0usize..4),
    ) {
        let categories = ["a", "b", "c", "d"];
        let id = |n: usize| format!("p{n:02}");
        let mut products = HashMap::new();
        let mut signals: HashMap<String, ProductSignals> = HashMap::new();
        for (n, (category, trending, price, partners)) in catalog.iter().enumerate() {
            let mut item = product(&id(n), "", price.unwrap_or_default());
            item.price = price.map(Decimal::from);
            item.category = categories.get(*category).map(|c| c.to_string());
            products.insert(id(n), item);
            let together = partners.iter().enumerate().map(|(k, p)| (id(*p), 3 - k as i64)).collect();
            signals.insert(id(n), (f64::from(*trending) / 4.0, together));
        }
        let set = bands();
        let feature = set.get("clicks_by_price_band_1h");
        let band_bounds = &feature.expect("the shipped price band feature").bands;
        // Slotted by the bands price matching reads, or not at all (the bound then takes the
        // best share everywhere).
        let index = ProductIndex::build(&products, &signals, None);
        let index = if slotted_by_price { index.with_price_bands(band_bounds) } else { index };
        let user = UserSignals {
            short: short.iter().map(|(c, n)| (categories.get(*c).unwrap_or(&"").to_string(), f64::from(*n))).collect(),
            long: BTreeMap::new(),
            recent: recent.iter().map(|n| id(*n)).collect(),
            bands: band_clicks.iter().map(|(b, n)| (feature.expect("bands").band_label(*b), f64::from(*n))).collect(),
            owned: owned.iter().map(|n| id(*n)).collect(),
            ..UserSignals::default()
        };
        let query = Query {
            limit,
            category: only.map(|c| categories[c].to_string()),
            exclude: HashSet::new(),
        };
        let answer = recommend(&user, &index, feature, &query);
        let scorer = scorer::Scorer::new(&user, &index, feature, &query);
        let everything: Vec<Recommendation> = diversify(scorer.all(), limit)
            .into_iter()
            .map(|picked| picked.recommendation(&index, feature))
            .collect();
        proptest::prop_assert_eq!(answer, everything);
    }
}

#[test]
fn signals_are_read_from_the_features_playing_each_role() {
    use crate::features::{FeatureStatus, FeatureValue, RecommendationFeatures};
    let value = |json: serde_json::Value| FeatureValue {
        status: FeatureStatus::Present,
        value: json,
        event_time: None,
    };
    let features: crate::features::Features = [
        ("cats".to_string(), value(serde_json::json!({"boots": 2}))),
        ("cat_clicks".to_string(), value(serde_json::json!({"boots": 1}))),
        ("basket".to_string(), value(serde_json::json!(["i1"]))),
        ("category_views_1h".to_string(), value(serde_json::json!({"hats": 5}))),
    ]
    .into_iter()
    .collect();
    let roles = RecommendationFeatures {
        interest: Some("cats".into()),
        click_interest: Some("cat_clicks".into()),
        in_cart: Some("basket".into()),
        ..RecommendationFeatures::default()
    };
    let signals = UserSignals::from_features(&features, &roles);
    // Views plus clicks counted double; the shipped feature's name plays no part.
    assert_eq!(signals.long, [("boots".to_string(), 4.0)].into());
    assert_eq!(signals.cart, ["i1"]);
    assert!(signals.owned.contains("i1"));
    assert!(UserSignals::from_features(&features, &RecommendationFeatures::default()).is_cold());
}

/// 400 shoes `p000`… priced by `price`: two viewed, then a tail never viewed.
fn never_viewed_tail(price: impl Fn(usize) -> i64) -> ProductIndex {
    let mut products = HashMap::new();
    let mut signals: HashMap<String, ProductSignals> = HashMap::new();
    for n in 0..400 {
        let id = format!("p{n:03}");
        let trending = if n < 2 { 5.0 } else { 0.0 };
        products.insert(id.clone(), product(&id, "shoes", price(n)));
        signals.insert(id, (trending, Vec::new()));
    }
    ProductIndex::build(&products, &signals, None)
}

/// A catalog mostly never viewed: hundreds of products tie at trending 0, many in the price band
/// the user clicks. Only as many of them as can still win a tie are scored, and the answer is
/// the one scoring everything gives.
#[test]
fn a_never_viewed_tail_is_walked_only_while_it_can_win_a_tie() {
    // Prices alternate between two bands.
    let index = never_viewed_tail(|n| if n % 2 == 0 { 40 } else { 300 });
    let set = bands();
    let feature = set.get("clicks_by_price_band_1h");
    let user = UserSignals { bands: [("25-50".to_string(), 3.0)].into(), ..shoe_viewer() };
    let query = query(5);
    let scorer = scorer::Scorer::new(&user, &index, feature, &query);
    scorer.candidates(query.limit);
    assert!(scorer.scored() <= 20, "{} of 400 products scored", scorer.scored());
    let ids =
        |list: Vec<Recommendation>| list.into_iter().map(|r| r.product_id).collect::<Vec<_>>();
    let everything = diversify(scorer.all(), query.limit);
    let everything: Vec<String> = everything.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids(recommend(&user, &index, feature, &query)), everything);
}

/// The same never-viewed tail, but the band the user clicks holds only 3 of the category's
/// products, fewer than the answer's 5. Walked by price band, each band stops on its own bound:
/// the other band's tail is left once the answer is full of products that beat it.
#[test]
fn a_tail_mostly_outside_the_users_price_band_is_walked_by_band() {
    // Three products in the band the user clicks (25-50), the rest far above it.
    let index = never_viewed_tail(|n| if n % 100 == 7 && n < 300 { 40 } else { 300 });
    let set = bands();
    let feature = set.get("clicks_by_price_band_1h");
    let bounds = &feature.expect("the shipped price band feature").bands;
    let index = index.with_price_bands(bounds);
    let user = UserSignals { bands: [("25-50".to_string(), 3.0)].into(), ..shoe_viewer() };
    let query = query(5);
    let scorer = scorer::Scorer::new(&user, &index, feature, &query);
    scorer.candidates(query.limit);
    assert!(scorer.scored() <= 20, "{} of 400 products scored", scorer.scored());
    let everything = diversify(scorer.all(), query.limit);
    let everything: Vec<String> = everything.iter().map(|s| s.id.to_string()).collect();
    let answer = recommend(&user, &index, feature, &query);
    assert_eq!(answer.iter().map(|r| r.product_id.clone()).collect::<Vec<_>>(), everything);
    assert!(everything.contains(&"p007".to_string()), "the user's band leads: {everything:?}");
}
