//! Which features recommendations read, by the part each plays (`[recommendations]` in the
//! definitions file): a legacy schema names its own, the shipped definitions' names are the
//! default. A role named explicitly must be a feature of the right shape; a default one that the
//! definitions lack is left out, and recommendations rank without it.

use std::collections::BTreeMap;

use super::{Aggregation, DefinitionError, Entity, Feature};

/// The features recommendations read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecommendationFeatures {
    /// User: histogram of viewed categories over a short window.
    pub recent_interest: Option<String>,
    /// User: histogram of viewed categories over a longer window.
    pub interest: Option<String>,
    /// User: histogram of clicked categories (counted double).
    pub click_interest: Option<String>,
    /// User: the products viewed last, newest first (`last_n`).
    pub recently_viewed: Option<String>,
    /// User: histogram of clicks by price band (with `bands`, which price products too).
    pub price_band_clicks: Option<String>,
    /// User: products in the cart (`last_n`): never recommended.
    pub in_cart: Option<String>,
    /// User: products bought (`last_n`): never recommended.
    pub purchased: Option<String>,
    /// Product: how much it is viewed lately (a number; decayed counts decay between reads).
    pub trending: Option<String>,
    /// Product: the products viewed next to it (`co_occurrence`).
    pub viewed_together: Option<String>,
}

/// Whose feature a role reads.
#[derive(Clone, Copy)]
enum Of {
    Shopper,
    Item,
}

/// A role, the feature of the shipped definitions that plays it, and the shape it needs.
struct Role {
    name: &'static str,
    default: &'static str,
    of: Of,
    aggregations: &'static [Aggregation],
}

use Aggregation::{CoOccurrence, Count, DecayedCount, Histogram, LastN, Sum};

const ROLES: [Role; 9] = [
    Role {
        name: "recent_interest",
        default: "category_views_10m",
        of: Of::Shopper,
        aggregations: &[Histogram],
    },
    Role {
        name: "interest",
        default: "category_views_1h",
        of: Of::Shopper,
        aggregations: &[Histogram],
    },
    Role {
        name: "click_interest",
        default: "category_clicks_1h",
        of: Of::Shopper,
        aggregations: &[Histogram],
    },
    Role {
        name: "recently_viewed",
        default: "recent_products_viewed",
        of: Of::Shopper,
        aggregations: &[LastN],
    },
    Role {
        name: "price_band_clicks",
        default: "clicks_by_price_band_1h",
        of: Of::Shopper,
        aggregations: &[Histogram],
    },
    Role { name: "in_cart", default: "cart_products", of: Of::Shopper, aggregations: &[LastN] },
    Role {
        name: "purchased",
        default: "purchased_products_30d",
        of: Of::Shopper,
        aggregations: &[LastN],
    },
    Role {
        name: "trending",
        default: "trending_score",
        of: Of::Item,
        aggregations: &[DecayedCount, Count, Sum],
    },
    Role {
        name: "viewed_together",
        default: "viewed_together_24h",
        of: Of::Item,
        aggregations: &[CoOccurrence],
    },
];

fn error(role: &str, problem: String) -> DefinitionError {
    DefinitionError::File { field: "recommendations", problem: format!("`{role}` {problem}") }
}

fn fits(role: &Role, feature: &Feature, shopper: Entity, item: Entity) -> Result<(), String> {
    let entity = match role.of {
        Of::Shopper => shopper,
        Of::Item => item,
    };
    if feature.entity != entity || !role.aggregations.contains(&feature.aggregation) {
        let shapes: Vec<String> =
            role.aggregations.iter().map(|a| format!("{a:?}").to_lowercase()).collect();
        return Err(format!(
            "names {:?}, which must be a {} feature of aggregation {}",
            feature.name,
            entity.label(),
            shapes.join(" or ")
        ));
    }
    if role.name == "price_band_clicks" && feature.bands.is_empty() {
        return Err(format!("names {:?}, which must have `bands`", feature.name));
    }
    Ok(())
}

pub(super) fn compile(
    declared: &BTreeMap<String, String>,
    features: &[Feature],
    shopper: Entity,
    item: Entity,
) -> Result<RecommendationFeatures, DefinitionError> {
    if let Some(unknown) = declared.keys().find(|key| !ROLES.iter().any(|r| r.name == *key)) {
        let known: Vec<&str> = ROLES.iter().map(|role| role.name).collect();
        return Err(error(unknown, format!("is not a role (roles: {known:?})")));
    }
    let mut resolved: BTreeMap<&str, String> = BTreeMap::new();
    for role in &ROLES {
        let explicit = declared.get(role.name);
        let name = explicit.map_or(role.default, String::as_str);
        match features.iter().find(|feature| feature.name == name) {
            Some(feature) => match fits(role, feature, shopper, item) {
                Ok(()) => {
                    resolved.insert(role.name, feature.name.to_string());
                }
                Err(problem) if explicit.is_some() => return Err(error(role.name, problem)),
                // The default name used for something else: not this role.
                Err(_) => {}
            },
            None if explicit.is_some() => {
                return Err(error(role.name, format!("names {name:?}, which is not defined")));
            }
            None => {}
        }
    }
    let mut take = |role: &str| resolved.remove(role);
    Ok(RecommendationFeatures {
        recent_interest: take("recent_interest"),
        interest: take("interest"),
        click_interest: take("click_interest"),
        recently_viewed: take("recently_viewed"),
        price_band_clicks: take("price_band_clicks"),
        in_cart: take("in_cart"),
        purchased: take("purchased"),
        trending: take("trending"),
        viewed_together: take("viewed_together"),
    })
}

impl RecommendationFeatures {
    /// The roles the definitions leave unplayed.
    pub fn missing(&self) -> Vec<&'static str> {
        let played = [
            &self.recent_interest,
            &self.interest,
            &self.click_interest,
            &self.recently_viewed,
            &self.price_band_clicks,
            &self.in_cart,
            &self.purchased,
            &self.trending,
            &self.viewed_together,
        ];
        ROLES.iter().zip(played).filter(|(_, name)| name.is_none()).map(|(r, _)| r.name).collect()
    }
}
