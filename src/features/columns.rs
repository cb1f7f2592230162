//! The decoded columns of one row image.
//!
//! A row has a handful of declared columns, looked up by name several times per change (each
//! feature's filter, its value, the row's key and entities). A scan of a short list beats a
//! search tree here, and the names the decoder stores and the names the features look up are the
//! same `&'static str`s of the source schema, so the scan compares pointers before it compares
//! text.

use std::collections::BTreeMap;

use super::source::Scalar;

/// Column name → value, in the order the source declares the columns.
#[derive(Debug, Clone, Default, Eq)]
pub struct Columns(Vec<(&'static str, Scalar)>);

impl Columns {
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Adds `column`, which the row does not hold yet (a decoder reading declared columns, each
    /// once): no lookup.
    pub fn push(&mut self, column: &'static str, value: Scalar) {
        debug_assert!(self.get(column).is_none(), "column {column} pushed twice");
        self.0.push((column, value));
    }

    /// Sets `column` to `value`, replacing what it held.
    pub fn insert(&mut self, column: &'static str, value: Scalar) {
        match self.index(column) {
            Some(index) => self.0[index].1 = value,
            None => self.0.push((column, value)),
        }
    }

    pub fn get(&self, column: &str) -> Option<&Scalar> {
        self.index(column).map(|index| &self.0[index].1)
    }

    pub fn get_mut(&mut self, column: &str) -> Option<&mut Scalar> {
        self.index(column).map(|index| &mut self.0[index].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Scalar)> {
        self.into_iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Scalar> {
        self.0.iter().map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn index(&self, column: &str) -> Option<usize> {
        let same = |name: &&str| {
            std::ptr::eq(name.as_ptr(), column.as_ptr()) && name.len() == column.len()
        };
        self.0
            .iter()
            .position(|(name, _)| same(name))
            .or_else(|| self.0.iter().position(|(name, _)| *name == column))
    }
}

/// Equal when they hold the same columns with the same values, in whatever order.
impl PartialEq for Columns {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter().all(|(column, value)| other.get(column) == Some(value))
    }
}

impl<'a> IntoIterator for &'a Columns {
    type Item = (&'static str, &'a Scalar);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (&'static str, Scalar)>,
        fn(&'a (&'static str, Scalar)) -> (&'static str, &'a Scalar),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(column, value)| (*column, value))
    }
}

impl FromIterator<(&'static str, Scalar)> for Columns {
    fn from_iter<I: IntoIterator<Item = (&'static str, Scalar)>>(columns: I) -> Self {
        let mut collected = Self::default();
        for (column, value) in columns {
            collected.insert(column, value);
        }
        collected
    }
}

impl From<BTreeMap<&'static str, Scalar>> for Columns {
    fn from(columns: BTreeMap<&'static str, Scalar>) -> Self {
        Self(columns.into_iter().collect())
    }
}

impl<const N: usize> From<[(&'static str, Scalar); N]> for Columns {
    fn from(columns: [(&'static str, Scalar); N]) -> Self {
        columns.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Scalar {
        Scalar::Text(value.into())
    }

    #[test]
    fn a_name_is_found_by_its_text_as_well_as_by_its_pointer() {
        let columns = Columns::from([("user_id", text("u1")), ("kind", text("VIEW"))]);
        let owned = String::from("kind");
        assert_eq!(columns.get("user_id"), Some(&text("u1")));
        assert_eq!(columns.get(&owned), Some(&text("VIEW")));
        assert_eq!(columns.get("product_id"), None);
    }

    #[test]
    fn insert_replaces_and_equality_ignores_order() {
        let mut columns = Columns::from([("a", text("1")), ("b", text("2"))]);
        columns.insert("a", text("3"));
        assert_eq!(columns.len(), 2);
        assert_eq!(columns, Columns::from([("b", text("2")), ("a", text("3"))]));
        assert_ne!(columns, Columns::from([("b", text("2")), ("a", text("1"))]));
        assert_ne!(columns, Columns::from([("b", text("2"))]));
    }
}
