//! The change data capture the declared sources need, derived from the definitions alone: which
//! tables the publication carries, which need `REPLICA IDENTITY FULL`, the connector's
//! `table.include.list` and `message.key.columns`, and what a live database lacks of it.
//!
//! `persona sources plan` prints it and `--apply` runs the database part; `persona connector
//! validate` checks connector files and the database against it. One source of truth: nothing
//! here names a table the definitions do not.

use std::collections::BTreeMap;
use std::fmt;

use super::validate::{TableName, captured_tables, key_columns};
use crate::features::{ColumnType, FeatureSet};

/// One table persona reads, and what capturing it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub table: TableName,
    /// What the definitions call it (`source behavior`, `dimension item`).
    pub declared_as: String,
    /// The columns change events must be keyed by (`message.key.columns`).
    pub key_columns: Vec<String>,
    /// Sources need whole before images: persona retracts what a row contributed, and finds
    /// its entity, from the before image of its updates and deletes; unchanged TOASTed values
    /// come from there too. The dimension keeps its rows itself.
    pub full_identity: bool,
    /// Declared columns and their types (`None`: an id, text, uuid or an integer).
    pub columns: Vec<(String, Option<ColumnType>)>,
}

/// Every declared table, sources first.
pub fn captures(set: &FeatureSet) -> Vec<Capture> {
    let mut captures: Vec<Capture> = set
        .sources
        .iter()
        .map(|source| Capture {
            table: TableName { schema: source.schema.into(), table: source.table.into() },
            declared_as: format!("source {}", source.name),
            key_columns: vec![source.entity_column(source.keyed_by).unwrap_or_default().into()],
            full_identity: true,
            columns: source.columns.iter().map(|(c, k)| ((*c).to_string(), Some(*k))).collect(),
        })
        .collect();
    for dimension in &set.dimensions {
        let key = (dimension.key.to_string(), None);
        captures.push(Capture {
            table: TableName { schema: dimension.schema.into(), table: dimension.table.into() },
            declared_as: format!("dimension {}", dimension.name),
            key_columns: vec![dimension.key.into()],
            full_identity: false,
            columns: std::iter::once(key)
                .chain(dimension.attributes.iter().map(|(a, k)| ((*a).to_string(), Some(*k))))
                .collect(),
        })
    }
    captures
}

/// The connector's `table.include.list` for `captures`.
pub fn include_list(captures: &[Capture]) -> String {
    captures.iter().map(|c| c.table.to_string()).collect::<Vec<_>>().join(",")
}

/// The connector's `message.key.columns` for `captures`.
pub fn message_key_columns(captures: &[Capture]) -> String {
    let entries: Vec<String> =
        captures.iter().map(|c| format!("{}:{}", c.table, c.key_columns.join(","))).collect();
    entries.join(";")
}

/// A name quoted for SQL.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(table: &TableName) -> String {
    format!("{}.{}", quoted(&table.schema), quoted(&table.table))
}

/// One statement the database needs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub sql: String,
    pub why: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};  -- {}", self.sql, self.why)
    }
}

/// What the database lacks: statements that add it, and what no statement here can fix.
#[derive(Debug, Default)]
pub struct DatabasePlan {
    pub steps: Vec<Step>,
    /// Missing tables and columns, declared types the database does not have, `wal_level`.
    pub blockers: Vec<String>,
}

/// Whether a column of Postgres type `udt` (`information_schema.columns.udt_name`; arrays as
/// `_text`), with `precision` for timestamps and `enum` for enum types, is one `declared` reads.
fn type_fits(declared: ColumnType, udt: &str, precision: Option<i32>, is_enum: bool) -> bool {
    use ColumnType::*;
    let element = udt.strip_prefix('_');
    match declared {
        Text => is_enum || matches!(udt, "text" | "varchar" | "bpchar" | "name" | "citext"),
        Uuid => udt == "uuid",
        Json => matches!(udt, "json" | "jsonb"),
        Integer => matches!(udt, "int2" | "int4" | "int8"),
        Number => udt == "numeric",
        Float => matches!(udt, "float4" | "float8"),
        Boolean => udt == "bool",
        Timestamp => udt == "timestamp" && precision.is_none_or(|p| p > 3),
        TimestampMillis => udt == "timestamp" && precision.is_some_and(|p| p <= 3),
        Timestamptz => udt == "timestamptz",
        Date => udt == "date",
        Array(kind) => element.is_some_and(|element| match kind {
            crate::features::source::ElementType::Text => {
                matches!(element, "text" | "varchar" | "bpchar" | "uuid")
            }
            crate::features::source::ElementType::Integer => {
                matches!(element, "int2" | "int4" | "int8")
            }
            crate::features::source::ElementType::Number => element == "numeric",
            crate::features::source::ElementType::Boolean => element == "bool",
        }),
    }
}

/// Checks every declared table against the database: it exists with the declared columns and
/// types, sources have `REPLICA IDENTITY FULL`, and `publication` carries them all (and
/// publishes TRUNCATE).
pub async fn database_plan(
    db: &tokio_postgres::Client,
    captures: &[Capture],
    publication: &str,
) -> Result<DatabasePlan, tokio_postgres::Error> {
    let mut plan = DatabasePlan::default();
    let wal_level: String = db.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        plan.blockers.push(format!(
            "wal_level is {wal_level}; logical decoding needs \"logical\" (ALTER SYSTEM SET \
             wal_level = logical; then restart Postgres)"
        ));
    }
    let mut present = Vec::new();
    for capture in captures {
        let table = &capture.table;
        let rows = db
            .query(
                "SELECT c.column_name::text, c.udt_name::text, c.datetime_precision, \
                 EXISTS (SELECT 1 FROM pg_type t WHERE t.typname = c.udt_name AND t.typtype = 'e') \
                 FROM information_schema.columns c \
                 WHERE c.table_schema = $1 AND c.table_name = $2",
                &[&table.schema, &table.table],
            )
            .await?;
        if rows.is_empty() {
            plan.blockers.push(format!(
                "{table} ({}) does not exist, or this login cannot see it",
                capture.declared_as
            ));
            continue;
        }
        present.push(capture);
        let found: BTreeMap<String, (String, Option<i32>, bool)> =
            rows.iter().map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3)))).collect();
        for (column, declared) in &capture.columns {
            match found.get(column) {
                None => plan.blockers.push(format!(
                    "{table}.{column} ({}) does not exist; fix the declaration or the table",
                    capture.declared_as
                )),
                Some((udt, precision, is_enum))
                    if !declared.map_or_else(
                        || {
                            ["text", "varchar", "bpchar", "uuid", "int2", "int4", "int8"]
                                .contains(&udt.as_str())
                        },
                        |declared| type_fits(declared, udt, *precision, *is_enum),
                    ) =>
                {
                    plan.blockers.push(format!(
                        "{table}.{column} ({}) is declared {} but is {udt}{}; declare the type it \
                         has",
                        capture.declared_as,
                        declared.map_or("an id".into(), |d| format!("{d:?}")),
                        precision.map_or(String::new(), |p| format!("({p})"))
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for capture in present.iter().filter(|capture| capture.full_identity) {
        let identity: String = db
            .query_one(
                "SELECT c.relreplident::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&capture.table.schema, &capture.table.table],
            )
            .await?
            .get(0);
        if identity != "f" {
            plan.steps.push(Step {
                sql: format!("ALTER TABLE {} REPLICA IDENTITY FULL", qualified(&capture.table)),
                why: format!(
                    "{}: updates and deletes must carry the whole old row (its {} and what it \
                     contributed)",
                    capture.declared_as,
                    capture.key_columns.join(",")
                ),
            });
        }
    }
    let tables: Vec<String> = present.iter().map(|c| qualified(&c.table)).collect();
    let publication_row = db
        .query_opt(
            "SELECT puballtables, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    match publication_row {
        None if !tables.is_empty() => plan.steps.push(Step {
            sql: format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quoted(publication),
                tables.join(", ")
            ),
            why: "Debezium reads this publication (publication.autocreate.mode=disabled)".into(),
        }),
        None => {}
        Some(row) => {
            if !row.get::<_, bool>(0) {
                let published: Vec<TableName> = db
                    .query(
                        "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
                         WHERE pubname = $1",
                        &[&publication],
                    )
                    .await?
                    .iter()
                    .map(|row| TableName { schema: row.get(0), table: row.get(1) })
                    .collect();
                for capture in present.iter().filter(|c| !published.contains(&c.table)) {
                    plan.steps.push(Step {
                        sql: format!(
                            "ALTER PUBLICATION {} ADD TABLE {}",
                            quoted(publication),
                            qualified(&capture.table)
                        ),
                        why: format!("{}: its changes would never arrive", capture.declared_as),
                    });
                }
            }
            if !row.get::<_, bool>(1) {
                plan.steps.push(Step {
                    sql: format!(
                        "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')",
                        quoted(publication)
                    ),
                    why: "a TRUNCATE would never arrive, and features would keep its rows".into(),
                });
            }
        }
    }
    Ok(plan)
}

/// Runs `steps` in one transaction.
pub async fn apply(
    db: &mut tokio_postgres::Client,
    steps: &[Step],
) -> Result<(), tokio_postgres::Error> {
    let transaction = db.transaction().await?;
    for step in steps {
        transaction.batch_execute(&step.sql).await?;
    }
    transaction.commit().await
}

/// What a connector file (`config`, placeholders unresolved or not) lacks of `captures`, for the
/// declared tables it captures; `covered` collects those tables, so that the caller can tell
/// which declared tables no file captures.
pub fn connector_mismatches(
    config: &BTreeMap<String, String>,
    captures: &[Capture],
    covered: &mut Vec<TableName>,
) -> Vec<(String, String, String)> {
    let mut mismatches = Vec::new();
    let tables = captured_tables(config);
    let keys = key_columns(config).unwrap_or_default();
    for capture in captures.iter().filter(|capture| tables.contains(&capture.table)) {
        covered.push(capture.table.clone());
        let wanted = capture.key_columns.join(",");
        match keys.get(&capture.table) {
            Some(columns) if *columns == capture.key_columns => {}
            found => mismatches.push((
                "message.key.columns".into(),
                format!(
                    "keys {} ({}) by {}; persona needs its events keyed by {wanted}, so that one \
                     entity's changes stay in order on one partition",
                    capture.table,
                    capture.declared_as,
                    found.map_or("its primary key (no entry)".into(), |c| c.join(","))
                ),
                format!("set {}:{wanted} in message.key.columns", capture.table),
            )),
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Vec<Capture> {
        captures(&FeatureSet::load(None).expect("shipped definitions"))
    }

    #[test]
    fn the_shipped_connector_lists_what_the_reference_definitions_declare() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../../connect/persona-postgres.json"))
                .expect("json");
        let config = &file["config"];
        let captures = reference();
        let listed: std::collections::BTreeSet<&str> =
            config["table.include.list"].as_str().expect("list").split(',').collect();
        let include = include_list(&captures);
        assert_eq!(listed, include.split(',').collect());
        let keys: std::collections::BTreeSet<&str> =
            config["message.key.columns"].as_str().expect("keys").split(';').collect();
        let declared = message_key_columns(&captures);
        assert_eq!(keys, declared.split(';').collect());
    }

    #[test]
    fn a_connector_missing_a_declared_table_or_its_key_is_caught() {
        let captures = reference();
        let mut config = BTreeMap::new();
        config.insert("table.include.list".into(), "public.user_activity,public.orders".into());
        config.insert("message.key.columns".into(), "public.user_activity:user_id".into());
        let mut covered = Vec::new();
        let mismatches = connector_mismatches(&config, &captures, &mut covered);
        assert_eq!(covered.len(), 2);
        assert_eq!(mismatches.len(), 1, "{mismatches:?}");
        assert!(mismatches[0].1.contains("public.orders"), "{mismatches:?}");
        assert_eq!(mismatches[0].2, "set public.orders:user_id in message.key.columns");
    }

    #[test]
    fn declared_types_fit_the_postgres_types_they_name() {
        assert!(type_fits(ColumnType::Integer, "int8", None, false));
        assert!(!type_fits(ColumnType::Integer, "numeric", None, false));
        assert!(type_fits(ColumnType::Text, "mood", None, true));
        assert!(type_fits(ColumnType::Timestamp, "timestamp", Some(6), false));
        assert!(!type_fits(ColumnType::Timestamp, "timestamp", Some(3), false));
        assert!(type_fits(ColumnType::TimestampMillis, "timestamp", Some(3), false));
        assert!(type_fits(ColumnType::parse("text[]").expect("type"), "_text", None, false));
        assert!(!type_fits(ColumnType::parse("text[]").expect("type"), "text", None, false));
    }
}
