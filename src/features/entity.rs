//! Entities: whose features they are (`user`, `product`, `store`, …), as the definitions declare
//! them (`[[entity]]`), and what their ids look like.

use serde::{Deserialize, Serialize};

/// A declared entity: whose features they are (`user`, `product`, `store`, …; `[[entity]]`). Its
/// name is interned, so an entity is a copyable handle compared by name.
#[derive(Debug, Clone, Copy, PartialOrd, Ord, utoipa::ToSchema)]
#[schema(value_type = String, example = "user")]
pub struct Entity(&'static str);

/// By name; the same interned name (the common case: both read from the definitions) without
/// reading it.
impl PartialEq for Entity {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0) || self.0 == other.0
    }
}

impl Eq for Entity {}

impl std::hash::Hash for Entity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Entity {
    /// The reference schema's shopper.
    pub const USER: Entity = Entity("user");
    /// The reference schema's item.
    pub const PRODUCT: Entity = Entity("product");

    pub fn new(name: &str) -> Self {
        Self(super::intern::intern(name))
    }

    pub fn label(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Entity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Entity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::new(&name))
    }
}

/// What an entity's ids are: any text, or integers (`42`; a Debezium number's decimal text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    #[default]
    Text,
    Integer,
}

/// A declared entity and the part it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntitySchema {
    pub entity: Entity,
    pub id: IdKind,
}
