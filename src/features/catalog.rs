//! The products dimension features join through by `product_id`. Every persona instance holds
//! all of it in memory (see `cdc::dimension`), because any user's activity may name any product.
//!
//! Joins happen when a feature is read, against the product as it is then: a category or price
//! change re-labels the history that mentions the product (a view counted under `shoes` counts
//! under `boots` once the product moves), exactly as a SQL join on the current table would.
//! Activity for a product not seen yet is kept and counts for the joined features as soon as
//! the product arrives; until then it contributes to no joined value.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::definition::ProductAttr;
use super::source::Scalar;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price: Option<Decimal>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Product {
    pub fn attribute(&self, attr: ProductAttr) -> Scalar {
        let text = |value: &Option<String>| value.clone().map_or(Scalar::Null, Scalar::Text);
        match attr {
            ProductAttr::Name => text(&self.name),
            ProductAttr::Category => text(&self.category),
            ProductAttr::Brand => text(&self.brand),
            ProductAttr::Price => self.price.map_or(Scalar::Null, Scalar::Number),
        }
    }
}

pub trait Catalog {
    fn attribute(&self, product_id: &str, attr: ProductAttr) -> Option<Scalar>;
    fn contains(&self, product_id: &str) -> bool;
}

impl Catalog for HashMap<String, Product> {
    fn attribute(&self, product_id: &str, attr: ProductAttr) -> Option<Scalar> {
        match self.get(product_id)?.attribute(attr) {
            Scalar::Null => None,
            value => Some(value),
        }
    }

    fn contains(&self, product_id: &str) -> bool {
        self.contains_key(product_id)
    }
}

/// The shared, updatable catalog.
#[derive(Debug, Default)]
pub struct ProductCatalog {
    products: RwLock<HashMap<String, Product>>,
}

impl ProductCatalog {
    pub fn upsert(&self, product: Product) {
        self.write().insert(product.id.clone(), product);
    }

    pub fn remove(&self, product_id: &str) {
        self.write().remove(product_id);
    }

    pub fn len(&self) -> usize {
        self.read(|products| products.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, product_id: &str) -> Option<Product> {
        self.read(|products| products.get(product_id).cloned())
    }

    /// Runs `f` over the catalog under its read lock.
    pub fn read<T>(&self, f: impl FnOnce(&HashMap<String, Product>) -> T) -> T {
        let guard = self.products.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Product>> {
        self.products.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
