//! What the pages show, built from a recommendation answer and the product index, and the
//! askama templates (in `frontend/templates/`) that render it. Every string from the database
//! goes through askama's HTML escaping.

use std::hash::{Hash, Hasher};

use askama::Template;
use rust_decimal::Decimal;

use crate::features::{FeatureStatus, Features};
use crate::recommend::index::IndexedProduct;
use crate::recommend::{ProductIndex, Recommendation, UserSignals};
use crate::serve::{Answer, Degraded};
use crate::store::Freshness;

/// Products per shelf.
pub const SHELF: usize = 8;
const SIDE_SHELF: usize = 4;
const RECENT_SHOWN: usize = 5;

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Card {
    pub id: String,
    pub name: String,
    pub category: String,
    pub brand: String,
    pub price: String,
    pub reason: String,
    pub href: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Because {
    pub seed: String,
    pub cards: Vec<Card>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Trending {
    pub category: String,
    pub cards: Vec<Card>,
}

/// The part of the storefront that live updates replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveView {
    /// A hash of everything below: the page and the live stream compare versions, not HTML.
    pub version: String,
    pub notice: Option<String>,
    pub recommended: Vec<Card>,
    pub because: Option<Because>,
    pub trending: Option<Trending>,
    pub activity: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "storefront.html")]
pub struct StorefrontPage<'a> {
    pub user_id: &'a str,
    pub live_url: String,
    pub live: &'a LiveView,
}

#[derive(Template)]
#[template(path = "_live.html")]
pub struct LiveBlock<'a> {
    pub live: &'a LiveView,
}

#[derive(Template)]
#[template(path = "product.html")]
pub struct ProductPage {
    pub user_id: String,
    pub back_href: String,
    pub name: String,
    pub category: String,
    pub brand: String,
    pub price: String,
    pub stats: String,
    pub together: Vec<Card>,
    pub more: Vec<Card>,
}

#[derive(Template)]
#[template(path = "index.html")]
pub struct IndexPage {
    /// (user id, storefront link)
    pub active: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub title: &'a str,
    pub message: &'a str,
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub fn storefront_href(user_id: &str) -> String {
    format!("/u/{}", encode(user_id))
}

fn product_href(product_id: &str, user_id: &str) -> String {
    if user_id.is_empty() {
        format!("/p/{}", encode(product_id))
    } else {
        format!("/p/{}?u={}", encode(product_id), encode(user_id))
    }
}

pub fn price(price: Option<Decimal>) -> String {
    price.map_or_else(String::new, |p| format!("${:.2}", p.round_dp(2)))
}

fn card_of(product: &IndexedProduct, reason: String, user_id: &str) -> Card {
    let product = &product.product;
    Card {
        id: product.id.clone(),
        name: product.name.clone().unwrap_or_else(|| product.id.clone()),
        category: product.category.clone().unwrap_or_default(),
        brand: product.brand.clone().unwrap_or_default(),
        price: price(product.price),
        reason,
        href: product_href(&product.id, user_id),
    }
}

fn card_of_recommendation(item: &Recommendation, user_id: &str) -> Card {
    Card {
        id: item.product_id.clone(),
        name: item.name.clone().unwrap_or_else(|| item.product_id.clone()),
        category: item.category.clone().unwrap_or_default(),
        brand: item.brand.clone().unwrap_or_default(),
        price: price(item.price),
        reason: item.reason_text.clone(),
        href: product_href(&item.product_id, user_id),
    }
}

/// The products viewed together with `seed`, leaving out `skip`.
pub fn together_cards(
    index: &ProductIndex,
    seed: &str,
    skip: &dyn Fn(&str) -> bool,
    user_id: &str,
    limit: usize,
) -> Vec<Card> {
    let Some(entry) = index.get(seed) else { return Vec::new() };
    entry
        .together
        .iter()
        .filter(|(id, _)| id != seed && !skip(id))
        .filter_map(|(id, _)| index.get(id))
        .take(limit)
        .map(|product| card_of(product, String::new(), user_id))
        .collect()
}

/// The most trending products of `category`, leaving out `skip`.
pub fn trending_cards(
    index: &ProductIndex,
    category: &str,
    skip: &dyn Fn(&str) -> bool,
    user_id: &str,
    limit: usize,
) -> Vec<Card> {
    index
        .popular
        .iter()
        .filter_map(|id| index.get(id))
        .filter(|p| p.product.category.as_deref() == Some(category) && !skip(&p.product.id))
        .take(limit)
        .map(|product| card_of(product, String::new(), user_id))
        .collect()
}

fn names(index: &ProductIndex, ids: &[String]) -> String {
    ids.iter()
        .take(RECENT_SHOWN)
        .map(|id| index.get(id).and_then(|p| p.product.name.clone()).unwrap_or_else(|| id.clone()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn strings(features: &Features, name: &str) -> Vec<String> {
    features
        .get(name)
        .filter(|v| v.status != FeatureStatus::Missing)
        .and_then(|v| v.value.as_array())
        .map(|items| items.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn count(features: &Features, name: &str) -> i64 {
    features.get(name).and_then(|v| v.value.as_i64()).unwrap_or(0)
}

fn activity(
    features: &Features,
    signals: &UserSignals,
    index: &ProductIndex,
) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    if !signals.recent.is_empty() {
        rows.push(("Viewed recently".to_string(), names(index, &signals.recent)));
    }
    let categories = strings(features, "recent_categories_10m");
    if !categories.is_empty() {
        rows.push(("Browsing".to_string(), categories.join(", ")));
    }
    if !signals.cart.is_empty() {
        let total = features.get("cart_total").and_then(|v| v.value.as_f64()).unwrap_or(0.0);
        let cart = names(index, &signals.cart);
        rows.push(("In your cart".to_string(), format!("{cart} (${total:.2})")));
    }
    let (views, clicks, searches) = (
        count(features, "views_15m"),
        count(features, "clicks_15m"),
        count(features, "searches_15m"),
    );
    if views + clicks + searches > 0 {
        rows.push((
            "Last 15 minutes".to_string(),
            format!("{views} views · {clicks} clicks · {searches} searches"),
        ));
    }
    rows
}

fn notice(answer: &Answer) -> Option<String> {
    match (answer.degraded, answer.freshness) {
        (Some(Degraded::FeaturesSlow), _) => Some(
            "Showing popular picks: your personal recommendations took too long this time.".into(),
        ),
        (Some(Degraded::FeaturesUnavailable), _) => Some(
            "Showing popular picks: personal recommendations are unavailable right now.".into(),
        ),
        (None, Freshness::Stale) => Some("Your picks may be a few moments behind.".into()),
        _ => None,
    }
}

/// Builds the live part of a storefront from a recommendation answer.
pub fn live_view(answer: &Answer) -> LiveView {
    let index = &answer.index;
    let user_id = answer.user_id.as_str();
    let signals = &answer.signals;
    let recommended: Vec<Card> =
        answer.recommendations.iter().map(|item| card_of_recommendation(item, user_id)).collect();
    let shown: Vec<&str> = recommended.iter().map(|c| c.id.as_str()).collect();
    let skip = |id: &str| signals.owned.contains(id) || shown.contains(&id);

    let because = signals.recent.iter().find_map(|seed| {
        let cards = together_cards(index, seed, &skip, user_id, SIDE_SHELF);
        let name = index.get(seed)?.product.name.clone().unwrap_or_else(|| seed.clone());
        (!cards.is_empty()).then_some(Because { seed: name, cards })
    });
    let category = signals
        .top_category()
        .or_else(|| index.popular.first().and_then(|id| index.get(id)?.product.category.clone()));
    let trending = category.and_then(|category| {
        let cards = trending_cards(index, &category, &skip, user_id, SIDE_SHELF);
        (!cards.is_empty()).then_some(Trending { category, cards })
    });
    let activity =
        answer.features().map(|f| activity(f, &answer.signals, index)).unwrap_or_default();
    let notice = notice(answer);

    let mut hasher = std::hash::DefaultHasher::new();
    (&notice, &recommended, &because, &trending, &activity).hash(&mut hasher);
    LiveView {
        version: format!("{:016x}", hasher.finish()),
        notice,
        recommended,
        because,
        trending,
        activity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_links() {
        assert_eq!(encode("u-1_a.b~"), "u-1_a.b~");
        assert_eq!(encode("a b/<x>"), "a%20b%2F%3Cx%3E");
        assert_eq!(product_href("p 1", "u&1"), "/p/p%201?u=u%261");
    }

    #[test]
    fn markup_in_product_names_is_escaped() {
        let card = Card {
            id: "p1".into(),
            name: "<script>alert(1)</script>".into(),
            category: "shoes".into(),
            brand: "\"acme\"".into(),
            price: "$1.00".into(),
            reason: String::new(),
            href: "/p/p1".into(),
        };
        let live = LiveView {
            version: "v".into(),
            notice: None,
            recommended: vec![card],
            because: None,
            trending: None,
            activity: vec![],
        };
        let html = LiveBlock { live: &live }.render().expect("renders");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "{html}");
        assert!(html.contains("&#34;acme&#34;"), "{html}");
    }
}
