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
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Bumped by every change (under the write lock): what was evaluated against the catalog
    /// as of one version holds until the next.
    version: AtomicU64,
}

impl ProductCatalog {
    pub fn upsert(&self, product: Product) {
        let mut products = self.write();
        products.insert(product.id.clone(), product);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, product_id: &str) {
        let mut products = self.write();
        if products.remove(product_id).is_some() {
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// The catalog's version; read it before reading the catalog, so that what is computed
    /// from the catalog is labelled with a version no newer than the data it saw.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
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
