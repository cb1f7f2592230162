//! The dimension features join through (the reference schema's `products`, declared in the
//! definitions, see [`DimensionSchema`]): a source row reaches it by the column naming the
//! dimension's entity. Every persona instance holds all of it in memory (see `cdc::dimension`),
//! because any user's activity may name any item.
//!
//! Joins happen when a feature is read, against the product as it is then: a category or price
//! change re-labels the history that mentions the product (a view counted under `shoes` counts
//! under `boots` once the product moves), exactly as a SQL join on the current table would.
//! Activity for a product not seen yet is kept and counts for the joined features as soon as
//! the product arrives; until then it contributes to no joined value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rust_decimal::Decimal;

use super::columns::Columns;
use super::entity::Entity;
use super::source::{ColumnType, Scalar};

/// The declared dimension items join to (the reference schema's `products`): its table, its
/// key, the attributes features may read through it, and which of them recommendations use.
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionSchema {
    /// The prefix features name its attributes by: `value = "product.category"`.
    pub name: &'static str,
    pub schema: &'static str,
    pub table: &'static str,
    /// The column holding the id: what a source's column for [`Self::entity`] holds.
    pub key: &'static str,
    /// The entity whose id is the dimension's key: a source row reaches the dimension through
    /// the column that names that entity.
    pub entity: Entity,
    pub attributes: Vec<(&'static str, ColumnType)>,
    /// The attributes recommendations and pages read as name, category, brand and price.
    pub roles: ItemRoles,
}

impl DimensionSchema {
    pub fn attribute(&self, name: &str) -> Option<ColumnType> {
        self.attributes.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind)
    }

    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Which dimension attributes play which part for recommendations and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemRoles {
    pub name: Option<&'static str>,
    pub category: Option<&'static str>,
    pub brand: Option<&'static str>,
    /// Numeric.
    pub price: Option<&'static str>,
}

/// One row of the dimension: every declared attribute, and the ones with a role by their role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Product {
    pub id: String,
    pub name: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub price: Option<Decimal>,
    pub attributes: Columns,
}

impl Product {
    /// A product of the reference schema, as the default definitions declare it.
    pub fn reference(
        id: &str,
        name: Option<&str>,
        category: Option<&str>,
        brand: Option<&str>,
        price: Option<Decimal>,
    ) -> Self {
        let text = |value: Option<&str>| value.map_or(Scalar::Null, |v| Scalar::Text(v.into()));
        let attributes = Columns::from([
            ("name", text(name)),
            ("category", text(category)),
            ("brand", text(brand)),
            ("price", price.map_or(Scalar::Null, Scalar::Number)),
        ]);
        Self {
            id: id.into(),
            name: name.map(Into::into),
            category: category.map(Into::into),
            brand: brand.map(Into::into),
            price,
            attributes,
        }
    }

    /// Fills the role fields from the attributes `roles` names.
    pub fn with_roles(mut self, roles: &ItemRoles) -> Self {
        let text = |product: &Self, attr: Option<&str>| {
            attr.and_then(|a| product.attribute(a).as_key().map(Cow::into_owned))
        };
        self.name = text(&self, roles.name);
        self.category = text(&self, roles.category);
        self.brand = text(&self, roles.brand);
        self.price = roles.price.and_then(|attr| self.attribute(attr).as_number());
        self
    }

    pub fn attribute(&self, name: &str) -> &Scalar {
        self.attributes.get(name).unwrap_or(&Scalar::Null)
    }
}

/// Dimension rows as evaluation reads them.
pub trait Catalog {
    /// Attribute `attr` of the row `id` of the dimension describing `entity`; `None` when the
    /// row or the attribute is unknown (or NULL).
    fn attribute(&self, entity: Entity, id: &str, attr: &str) -> Option<Scalar>;
    /// Whether the item's dimension holds `id`.
    fn contains(&self, id: &str) -> bool;
}

fn known(product: Option<&Product>, attr: &str) -> Option<Scalar> {
    match product?.attribute(attr) {
        Scalar::Null => None,
        value => Some(value.clone()),
    }
}

/// The item's dimension alone: any entity's attribute is looked up in it (tests, and readers
/// of items only).
impl Catalog for HashMap<String, Product> {
    fn attribute(&self, _entity: Entity, id: &str, attr: &str) -> Option<Scalar> {
        known(self.get(id), attr)
    }

    fn contains(&self, id: &str) -> bool {
        self.contains_key(id)
    }
}

/// Rows of every dimension: the item's, which recommendations and pages read too, and the other
/// entities'.
#[derive(Debug, Default)]
pub struct Tables {
    pub items: HashMap<String, Product>,
    others: HashMap<Entity, HashMap<String, Product>>,
}

/// [`Tables`] seen with the entity that is the item.
pub struct CatalogView<'a> {
    tables: &'a Tables,
    item: Entity,
}

impl CatalogView<'_> {
    pub fn items(&self) -> &HashMap<String, Product> {
        &self.tables.items
    }
}

impl Catalog for CatalogView<'_> {
    fn attribute(&self, entity: Entity, id: &str, attr: &str) -> Option<Scalar> {
        let table = match entity == self.item {
            true => &self.tables.items,
            false => self.tables.others.get(&entity)?,
        };
        known(table.get(id), attr)
    }

    fn contains(&self, id: &str) -> bool {
        self.tables.items.contains_key(id)
    }
}

/// The shared, updatable dimensions.
#[derive(Debug)]
pub struct ProductCatalog {
    tables: RwLock<Tables>,
    /// The entity whose dimension is [`Tables::items`].
    item: Entity,
    /// Bumped by every change (under the write lock): what was evaluated against the catalog
    /// as of one version holds until the next.
    version: AtomicU64,
}

impl Default for ProductCatalog {
    fn default() -> Self {
        Self::new(Entity::PRODUCT)
    }
}

impl ProductCatalog {
    /// Dimensions where `item`'s rows are the items.
    pub fn new(item: Entity) -> Self {
        Self { tables: RwLock::default(), item, version: AtomicU64::new(0) }
    }

    fn table_mut<'a>(
        &self,
        tables: &'a mut Tables,
        entity: Entity,
    ) -> &'a mut HashMap<String, Product> {
        match entity == self.item {
            true => &mut tables.items,
            false => tables.others.entry(entity).or_default(),
        }
    }

    /// Inserts or replaces an item.
    pub fn upsert(&self, product: Product) {
        self.upsert_for(self.item, product);
    }

    /// Inserts or replaces a row of the dimension describing `entity`.
    pub fn upsert_for(&self, entity: Entity, row: Product) {
        let mut tables = self.write();
        self.table_mut(&mut tables, entity).insert(row.id.clone(), row);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, product_id: &str) {
        self.remove_for(self.item, product_id);
    }

    pub fn remove_for(&self, entity: Entity, id: &str) {
        let mut tables = self.write();
        if self.table_mut(&mut tables, entity).remove(id).is_some() {
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// The catalog's version; read it before reading the catalog, so that what is computed
    /// from the catalog is labelled with a version no newer than the data it saw.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.read(|products| products.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many rows the dimension describing `entity` holds.
    pub fn len_for(&self, entity: Entity) -> usize {
        self.view(|view| match entity == self.item {
            true => view.tables.items.len(),
            false => view.tables.others.get(&entity).map_or(0, HashMap::len),
        })
    }

    pub fn get(&self, product_id: &str) -> Option<Product> {
        self.get_for(self.item, product_id)
    }

    pub fn get_for(&self, entity: Entity, id: &str) -> Option<Product> {
        self.view(|view| match entity == self.item {
            true => view.tables.items.get(id).cloned(),
            false => view.tables.others.get(&entity)?.get(id).cloned(),
        })
    }

    /// Runs `f` over the items under the read lock.
    pub fn read<T>(&self, f: impl FnOnce(&HashMap<String, Product>) -> T) -> T {
        self.view(|view| f(&view.tables.items))
    }

    /// Runs `f` over every dimension under the read lock.
    pub fn view<T>(&self, f: impl FnOnce(&CatalogView<'_>) -> T) -> T {
        let guard = self.tables.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&CatalogView { tables: &guard, item: self.item })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
