//! Declared sources and the dimension: the legacy tables persona reads, as the definitions file
//! describes them (`[[source]]`, `[[dimension]]`), validated with errors that name the source or
//! dimension and the field. A file that declares neither reads the reference schema, as the
//! shipped `features.toml` declares it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{DefinitionError, Entity, EntitySchema, IdKind};
use crate::features::catalog::{DimensionSchema, ItemRoles};
use crate::features::source::{ColumnType, SourceSchema, SourceTable, intern};

/// What to do with a row whose time column is NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum TimeIfNull {
    /// The transaction's commit time stands in.
    CommitTime,
    /// The row is refused (sent to the dead-letter topic).
    Refuse,
}

/// The part an entity plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum EntityRole {
    Shopper,
    Item,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntity {
    name: String,
    #[serde(default)]
    id: IdKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<EntityRole>,
}

/// The declared entities, and which is the shopper and which the item.
pub(super) struct Entities {
    pub all: Vec<EntitySchema>,
    pub shopper: Entity,
    pub item: Entity,
}

impl Entities {
    fn find(&self, name: &str) -> Option<Entity> {
        self.all.iter().map(|schema| schema.entity).find(|entity| entity.label() == name)
    }

    fn names(&self) -> Vec<&'static str> {
        self.all.iter().map(|schema| schema.entity.label()).collect()
    }

    /// Whether `entity` is declared.
    pub fn declares(&self, entity: Entity) -> bool {
        self.all.iter().any(|schema| schema.entity == entity)
    }
}

fn entity_error(entity: &str, field: &'static str, problem: impl Into<String>) -> DefinitionError {
    DefinitionError::Entity { name: entity.to_string(), field, problem: problem.into() }
}

/// `[[entity]]`; without any, the reference schema's: `user` (the shopper) and `product` (the
/// item), with text ids.
pub(super) fn compile_entities(raw: &[RawEntity]) -> Result<Entities, DefinitionError> {
    if raw.is_empty() {
        let text = |entity| EntitySchema { entity, id: IdKind::Text };
        return Ok(Entities {
            all: vec![text(Entity::USER), text(Entity::PRODUCT)],
            shopper: Entity::USER,
            item: Entity::PRODUCT,
        });
    }
    let mut all: Vec<EntitySchema> = Vec::new();
    let (mut shopper, mut item) = (None, None);
    for declared in raw {
        let name = declared.name.as_str();
        if !valid_name(name) {
            return Err(entity_error(name, "name", "must be 1 to 64 of a-z, 0-9 and _"));
        }
        let entity = Entity::new(name);
        if all.iter().any(|known| known.entity == entity) {
            return Err(entity_error(name, "name", "is declared twice"));
        }
        let slot = match declared.role {
            Some(EntityRole::Shopper) => Some(&mut shopper),
            Some(EntityRole::Item) => Some(&mut item),
            None => None,
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return Err(entity_error(name, "role", "is already another entity's"));
            }
            *slot = Some(entity);
        }
        all.push(EntitySchema { entity, id: declared.id });
    }
    let (Some(shopper), Some(item)) = (shopper, item) else {
        return Err(DefinitionError::File {
            field: "entity",
            problem: "must give role = \"shopper\" to one entity and role = \"item\" to another"
                .into(),
        });
    };
    Ok(Entities { all, shopper, item })
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    name: String,
    /// `schema.table`, or `table` in `public`.
    table: String,
    /// The primary key columns.
    key: Vec<String>,
    /// The event-time column; without one, rows take their commit time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_if_null: Option<TimeIfNull>,
    /// Entity → the column holding its id.
    entities: BTreeMap<String, String>,
    /// The entity the change events are keyed by; the shopper when the rows name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyed_by: Option<String>,
    /// Column → its Postgres type.
    columns: BTreeMap<String, String>,
    /// Column → (coded value → name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    map: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDimension {
    name: String,
    table: String,
    /// The column holding the id.
    key: String,
    /// The entity whose ids the key holds.
    entity: String,
    /// Attribute → its Postgres type.
    attributes: BTreeMap<String, String>,
    /// Role (`name`, `category`, `brand`, `price`) → attribute; by default the attribute of the
    /// role's name, where there is one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    roles: BTreeMap<String, String>,
}

fn source_error(source: &str, field: &'static str, problem: impl Into<String>) -> DefinitionError {
    DefinitionError::Source { name: source.to_string(), field, problem: problem.into() }
}

fn dimension_error(
    dimension: &str,
    field: &'static str,
    problem: impl Into<String>,
) -> DefinitionError {
    DefinitionError::Dimension { name: dimension.to_string(), field, problem: problem.into() }
}

/// Whether `name` may name a feature, entity, source or dimension: 1 to 64 of a-z, 0-9 and `_`.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `schema.table` (or `table`, in `public`) as its two parts.
fn schema_and_table(text: &str) -> Option<(&'static str, &'static str)> {
    let (schema, table) = text.split_once('.').unwrap_or(("public", text));
    let part = |p: &str| !p.is_empty() && !p.contains(['.', ' ', '"']);
    (part(schema) && part(table)).then(|| (intern(schema), intern(table)))
}

fn column_types(
    columns: &BTreeMap<String, String>,
    error: impl Fn(String) -> DefinitionError,
) -> Result<Vec<(&'static str, ColumnType)>, DefinitionError> {
    columns
        .iter()
        .map(|(column, kind)| match ColumnType::parse(kind) {
            Some(kind) => Ok((intern(column), kind)),
            None => Err(error(format!(
                "{column:?} has type {kind:?}, which is not one of {}",
                ColumnType::NAMES
            ))),
        })
        .collect()
}

pub(super) fn compile_source(
    raw: &RawSource,
    declared: &Entities,
) -> Result<SourceSchema, DefinitionError> {
    let name = raw.name.as_str();
    let error = |field, problem: String| source_error(name, field, problem);
    if !valid_name(name) {
        return Err(error("name", "must be 1 to 64 of a-z, 0-9 and _".into()));
    }
    let (schema, table) = schema_and_table(&raw.table)
        .ok_or_else(|| error("table", format!("{:?} is not `schema.table`", raw.table)))?;
    let columns = column_types(&raw.columns, |problem| error("columns", problem))?;
    if columns.is_empty() {
        return Err(error("columns", "declares no column".into()));
    }
    let known = |column: &str, field| {
        columns.iter().find(|(known, _)| *known == column).map(|(c, k)| (*c, *k)).ok_or_else(|| {
            let declared: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            error(field, format!("names column {column:?}, which is not declared ({declared:?})"))
        })
    };
    if raw.key.is_empty() {
        return Err(error("key", "lists no column".into()));
    }
    let key: Vec<&'static str> = raw
        .key
        .iter()
        .map(|column| known(column, "key").map(|(c, _)| c))
        .collect::<Result<_, _>>()?;
    let time_column = match &raw.time {
        None => None,
        Some(column) => {
            let (column, kind) = known(column, "time")?;
            if !kind.is_time() {
                return Err(error("time", format!("{column:?} is not a timestamp or date column")));
            }
            Some(column)
        }
    };
    if raw.time.is_none() && raw.time_if_null.is_some() {
        return Err(error("time_if_null", "applies only with a `time` column".into()));
    }
    let mut entities = Vec::new();
    for (entity_name, column) in &raw.entities {
        let entity = declared.find(entity_name).ok_or_else(|| {
            error(
                "entities",
                format!("{entity_name:?} is not an entity (entities: {:?})", declared.names()),
            )
        })?;
        let (column, kind) = known(column, "entities")?;
        if !matches!(kind, ColumnType::Text | ColumnType::Uuid | ColumnType::Integer) {
            return Err(error(
                "entities",
                format!("{column:?} holds ids, so it must be text, uuid or an integer"),
            ));
        }
        entities.push((entity, column));
    }
    if entities.is_empty() {
        return Err(error("entities", "names no entity the rows belong to".into()));
    }
    let keyed_by = match &raw.keyed_by {
        Some(name) => declared.find(name).filter(|e| entities.iter().any(|(known, _)| known == e)),
        None if entities.iter().any(|(e, _)| *e == declared.shopper) => Some(declared.shopper),
        None if entities.len() == 1 => Some(entities[0].0),
        None => None,
    }
    .ok_or_else(|| error("keyed_by", "must name one of the source's entities".into()))?;
    let mut mappings = Vec::new();
    for (column, names) in &raw.map {
        let (column, _) = known(column, "map")?;
        if names.is_empty() {
            return Err(error("map", format!("maps no value of {column:?}")));
        }
        if entities.iter().any(|(_, id)| *id == column) || key.contains(&column) {
            return Err(error("map", format!("{column:?} is a key: its values cannot be renamed")));
        }
        mappings.push((column, names.clone()));
    }
    Ok(SourceSchema {
        name: SourceTable::new(name),
        schema,
        table,
        key,
        time_column,
        time_from_commit_if_null: raw.time_if_null == Some(TimeIfNull::CommitTime),
        columns,
        entities,
        keyed_by,
        mappings,
    })
}

pub(super) fn compile_dimension(
    raw: &RawDimension,
    declared: &Entities,
) -> Result<DimensionSchema, DefinitionError> {
    let name = raw.name.as_str();
    let error = |field, problem: String| dimension_error(name, field, problem);
    if !valid_name(name) {
        return Err(error("name", "must be 1 to 64 of a-z, 0-9 and _".into()));
    }
    let (schema, table) = schema_and_table(&raw.table)
        .ok_or_else(|| error("table", format!("{:?} is not `schema.table`", raw.table)))?;
    let entity = declared.find(&raw.entity).ok_or_else(|| {
        error(
            "entity",
            format!("{:?} is not an entity (entities: {:?})", raw.entity, declared.names()),
        )
    })?;
    if entity != declared.item && !raw.roles.is_empty() {
        return Err(error(
            "roles",
            format!("apply only to the dimension of the item ({})", declared.item),
        ));
    }
    if raw.key.trim().is_empty() {
        return Err(error("key", "is empty".into()));
    }
    let attributes = column_types(&raw.attributes, |problem| error("attributes", problem))?;
    if attributes.iter().any(|(attr, _)| *attr == raw.key) {
        return Err(error("attributes", format!("lists the key {:?}", raw.key)));
    }
    let declared = |attr: &str| attributes.iter().find(|(known, _)| *known == attr).copied();
    let mut roles = ItemRoles::default();
    for role in raw.roles.keys() {
        if !["name", "category", "brand", "price"].contains(&role.as_str()) {
            return Err(error("roles", format!("{role:?} is not name, category, brand or price")));
        }
    }
    for (role, slot) in [
        ("name", &mut roles.name),
        ("category", &mut roles.category),
        ("brand", &mut roles.brand),
        ("price", &mut roles.price),
    ] {
        let attr = match raw.roles.get(role) {
            Some(attr) => Some(declared(attr).ok_or_else(|| {
                error("roles", format!("{role} names {attr:?}, which is not an attribute"))
            })?),
            None => declared(role),
        };
        if let Some((attr, kind)) = attr {
            if role == "price" && !kind.is_numeric() {
                return Err(error("roles", format!("price names {attr:?}, which is not numeric")));
            }
            *slot = Some(attr);
        }
    }
    Ok(DimensionSchema {
        name: intern(name),
        schema,
        table,
        key: intern(&raw.key),
        entity,
        attributes,
        roles,
    })
}

/// Checks the declarations together: names and tables declared once, one dimension per entity.
pub(super) fn check_declarations(
    sources: &[SourceSchema],
    dimensions: &[DimensionSchema],
) -> Result<(), DefinitionError> {
    let mut names = BTreeSet::new();
    let mut tables = BTreeSet::new();
    for source in sources {
        let name = source.name.name();
        if !names.insert(name) {
            return Err(source_error(name, "name", "is declared twice"));
        }
        if !tables.insert(source.qualified_table()) {
            return Err(source_error(name, "table", "is declared by another source too"));
        }
    }
    let mut described = BTreeSet::new();
    for dimension in dimensions {
        if !names.insert(dimension.name) {
            return Err(dimension_error(dimension.name, "name", "is declared twice"));
        }
        if !tables.insert(dimension.qualified_table()) {
            return Err(dimension_error(dimension.name, "table", "is declared twice"));
        }
        if !described.insert(dimension.entity) {
            return Err(dimension_error(
                dimension.name,
                "entity",
                format!("{} is described by another dimension already", dimension.entity),
            ));
        }
    }
    if sources.is_empty() {
        return Err(DefinitionError::File {
            field: "source",
            problem: "declares no source".into(),
        });
    }
    Ok(())
}
