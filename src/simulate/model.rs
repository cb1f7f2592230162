//! What simulated shoppers do, without I/O: a catalog, users with category interests, and
//! sessions that go browse → click → add to cart → purchase. Deterministic for a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

/// (category, brands, product nouns, price range in cents)
type CategorySpec = (&'static str, [&'static str; 3], [&'static str; 5], (i64, i64));
const CATEGORIES: [CategorySpec; 8] = [
    (
        "shoes",
        ["Stride", "Peak", "Urbano"],
        ["Trail Runner", "Canvas Sneaker", "Leather Boot", "Sandal", "Court Shoe"],
        (2_500, 18_000),
    ),
    (
        "books",
        ["Folio", "Inkwell", "Paperleaf"],
        ["Novel", "Cookbook", "Field Guide", "Biography", "Atlas"],
        (800, 4_500),
    ),
    (
        "electronics",
        ["Voltix", "Nimbus", "Arc"],
        ["Headphones", "Speaker", "E-reader", "Smartwatch", "Charger"],
        (1_500, 40_000),
    ),
    (
        "kitchen",
        ["Hearth", "Copperline", "Mesa"],
        ["Chef Knife", "Skillet", "Kettle", "Grinder", "Cutting Board"],
        (1_200, 15_000),
    ),
    (
        "toys",
        ["Jolly", "Brickworks", "Tumble"],
        ["Puzzle", "Robot Kit", "Plush Bear", "Kite", "Board Game"],
        (900, 8_000),
    ),
    (
        "garden",
        ["Verdant", "Rootstock", "Sunpatch"],
        ["Trowel", "Hose", "Planter", "Seed Set", "Pruner"],
        (700, 9_000),
    ),
    (
        "sports",
        ["Kinetic", "Summit", "Apex"],
        ["Yoga Mat", "Dumbbell", "Water Bottle", "Racket", "Backpack"],
        (1_000, 20_000),
    ),
    (
        "beauty",
        ["Lumen", "Petal", "Aura"],
        ["Face Cream", "Perfume", "Hair Oil", "Lip Balm", "Soap Bar"],
        (500, 9_500),
    ),
];
const ADJECTIVES: [&str; 8] =
    ["Classic", "Everyday", "Pro", "Light", "Deluxe", "Compact", "Eco", "Bold"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimProduct {
    pub id: String,
    pub name: String,
    pub category: String,
    pub brand: String,
    pub price: Decimal,
}

/// `count` products spread over the categories; ids `sim-p0001`, ….
pub fn catalog(count: usize, seed: u64) -> Vec<SimProduct> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_ca7a);
    (0..count)
        .map(|i| {
            let (category, brands, nouns, (low, high)) = CATEGORIES[i % CATEGORIES.len()];
            let noun = nouns[(i / CATEGORIES.len()) % nouns.len()];
            let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
            SimProduct {
                id: format!("sim-p{:04}", i + 1),
                name: format!("{adjective} {noun}"),
                category: category.to_string(),
                brand: brands[rng.random_range(0..brands.len())].to_string(),
                price: Decimal::new(rng.random_range(low..=high) / 10 * 10 + 9, 2),
            }
        })
        .collect()
}

pub fn user_id(index: usize) -> String {
    format!("sim-u{:04}", index + 1)
}

/// One write of the legacy application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A row of user_activity.
    Activity { user: String, kind: &'static str, product: Option<String> },
    /// ADD_TO_CART: the activity row, and the cart row added or its quantity raised.
    AddToCart { user: String, product: String, price: Decimal },
    /// PURCHASE: the activity row, and the cart turned into orders.
    Purchase { user: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Search,
    View,
    Click,
    Cart,
}

#[derive(Debug, Clone)]
struct Shopper {
    interests: Vec<usize>,
    /// Where the current session is, and the product it is on.
    session: Option<(Last, String)>,
    cart_items: usize,
}

/// Every simulated user's state; [`Shoppers::next_action`] gives the next write.
pub struct Shoppers {
    rng: StdRng,
    products: Vec<SimProduct>,
    by_category: Vec<Vec<usize>>,
    users: Vec<Shopper>,
}

impl Shoppers {
    pub fn new(users: usize, products: Vec<SimProduct>, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut by_category = vec![Vec::new(); CATEGORIES.len()];
        for (index, product) in products.iter().enumerate() {
            if let Some(c) = CATEGORIES.iter().position(|(name, ..)| *name == product.category) {
                by_category[c].push(index);
            }
        }
        let users = (0..users)
            .map(|_| {
                let first = rng.random_range(0..CATEGORIES.len());
                let mut interests = vec![first];
                if rng.random_bool(0.5) {
                    interests
                        .push((first + rng.random_range(1..CATEGORIES.len())) % CATEGORIES.len());
                }
                Shopper { interests, session: None, cart_items: 0 }
            })
            .collect();
        Self { rng, products, by_category, users }
    }

    pub fn products(&self) -> &[SimProduct] {
        &self.products
    }

    /// A product index skewed to the first ones (Zipf-like), so some products trend.
    fn skewed(&mut self, count: usize) -> usize {
        let u: f64 = self.rng.random();
        ((count as f64).powf(u) - 1.0).floor().clamp(0.0, count as f64 - 1.0) as usize
    }

    fn pick_product(&mut self, user: usize) -> usize {
        let interests = self.users[user].interests.clone();
        if self.rng.random_bool(0.85) {
            let category = interests[self.rng.random_range(0..interests.len())];
            let size = self.by_category[category].len();
            if size > 0 {
                let at = self.skewed(size);
                return self.by_category[category][at];
            }
        }
        self.skewed(self.products.len())
    }

    /// The next write of a random user.
    pub fn next_action(&mut self) -> Action {
        let user = self.rng.random_range(0..self.users.len());
        let id = user_id(user);
        let session = self.users[user].session.clone();
        let roll: f64 = self.rng.random();
        let (last, current) = match session {
            None if roll < 0.3 => {
                self.users[user].session = Some((Last::Search, String::new()));
                return Action::Activity { user: id, kind: "SEARCH", product: None };
            }
            None => (Last::Search, String::new()),
            Some(state) => state,
        };
        let view = |this: &mut Self| {
            let picked = this.pick_product(user);
            let product = this.products[picked].id.clone();
            this.users[user].session = Some((Last::View, product.clone()));
            Action::Activity { user: id.clone(), kind: "VIEW_PRODUCT", product: Some(product) }
        };
        match last {
            Last::Search => view(self),
            Last::View if roll < 0.40 => {
                self.users[user].session = Some((Last::Click, current.clone()));
                Action::Activity { user: id, kind: "CLICK", product: Some(current) }
            }
            Last::View if roll < 0.90 => view(self),
            Last::View => {
                self.users[user].session = None;
                view(self)
            }
            Last::Click if roll < 0.35 => {
                let price = self
                    .products
                    .iter()
                    .find(|p| p.id == current)
                    .map_or(Decimal::ZERO, |p| p.price);
                self.users[user].session = Some((Last::Cart, current.clone()));
                self.users[user].cart_items += 1;
                Action::AddToCart { user: id, product: current, price }
            }
            Last::Click => view(self),
            Last::Cart if roll < 0.45 && self.users[user].cart_items > 0 => {
                self.users[user].session = None;
                self.users[user].cart_items = 0;
                Action::Purchase { user: id }
            }
            Last::Cart => view(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_deterministic_and_spans_categories() {
        let a = catalog(40, 7);
        assert_eq!(a, catalog(40, 7));
        assert_eq!(a[0].id, "sim-p0001");
        let categories: std::collections::BTreeSet<&str> =
            a.iter().map(|p| p.category.as_str()).collect();
        assert_eq!(categories.len(), CATEGORIES.len());
        assert!(a.iter().all(|p| p.price > Decimal::ZERO));
    }

    #[test]
    fn sessions_browse_before_they_buy_and_users_keep_to_their_interests() {
        let products = catalog(80, 1);
        let mut shoppers = Shoppers::new(5, products.clone(), 1);
        let mut carted: std::collections::HashMap<String, usize> = Default::default();
        let mut in_interest = 0usize;
        let mut views = 0usize;
        for _ in 0..5_000 {
            match shoppers.next_action() {
                Action::AddToCart { user, .. } => *carted.entry(user).or_default() += 1,
                Action::Purchase { user } => {
                    assert!(
                        carted.remove(&user).is_some_and(|n| n > 0),
                        "{user} bought an empty cart"
                    );
                }
                Action::Activity { user, kind: "VIEW_PRODUCT", product: Some(product) } => {
                    views += 1;
                    let index: usize = user[5..].parse::<usize>().expect("numbered") - 1;
                    let category =
                        &products.iter().find(|p| p.id == product).expect("known").category;
                    let interests = &shoppers.users[index].interests;
                    if interests.iter().any(|i| CATEGORIES[*i].0 == category) {
                        in_interest += 1;
                    }
                }
                Action::Activity { .. } => {}
            }
        }
        assert!(views > 1_000, "{views} views");
        assert!(in_interest as f64 / views as f64 > 0.75, "{in_interest} of {views} in interest");
    }
}
