//! The connector file's checks against the legacy database: logical WAL, the publication and
//! the tables it covers, replica identity where the message key is not the primary key, and the
//! replication slot.

use std::collections::BTreeMap;

use super::{Problem, Stage, TableName, captured_tables, key_columns, problem};

/// What the database checks found: problems, and what is worth knowing (the slot's state).
#[derive(Debug, Default)]
pub struct DatabaseReport {
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

/// Checks the legacy database: logical WAL, the publication and the tables it covers, replica
/// identity where the message key is not the primary key, and the slot.
pub async fn postgres(
    db: &tokio_postgres::Client,
    resolved: &BTreeMap<String, String>,
) -> Result<DatabaseReport, tokio_postgres::Error> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let pg = |subject: &str, message: String, fix: String| {
        problem(Stage::Postgres, subject, message, fix)
    };
    let wal_level: String = db.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        problems.push(pg(
            "wal_level",
            format!("is {wal_level}; logical decoding needs \"logical\""),
            "ALTER SYSTEM SET wal_level = logical; then restart Postgres".into(),
        ));
    }
    let tables = captured_tables(resolved);
    for table in &tables {
        let exists = db
            .query_opt(
                "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
                &[&table.schema, &table.table],
            )
            .await?
            .is_some();
        if !exists {
            problems.push(pg(
                &table.to_string(),
                "does not exist".into(),
                "run `persona migrate`, or fix table.include.list".into(),
            ));
        }
    }
    let publication = resolved.get("publication.name").cloned().unwrap_or_default();
    match db
        .query_opt(
            "SELECT puballtables, pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
    {
        None => problems.push(pg(
            &format!("publication {publication}"),
            "does not exist".into(),
            format!(
                "run `persona migrate` (it creates persona_cdc), or CREATE PUBLICATION {publication} FOR TABLE {}",
                join(&tables)
            ),
        )),
        Some(row) if !row.get::<_, bool>(1) => problems.push(pg(
            &format!("publication {publication}"),
            "does not publish TRUNCATE: features fed by a truncated table would keep counting its rows".into(),
            format!("ALTER PUBLICATION {publication} SET (publish = 'insert, update, delete, truncate')"),
        )),
        Some(row) if !row.get::<_, bool>(0) => {
            let covered: Vec<TableName> = db
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await?
                .iter()
                .map(|row| TableName { schema: row.get(0), table: row.get(1) })
                .collect();
            for table in tables.iter().filter(|t| !covered.contains(t)) {
                problems.push(pg(
                    &table.to_string(),
                    format!("is captured but not in publication {publication}: its changes would never arrive"),
                    format!("ALTER PUBLICATION {publication} ADD TABLE {table}"),
                ));
            }
        }
        Some(_) => {}
    }
    let keys = key_columns(resolved).unwrap_or_default();
    for (table, columns) in &keys {
        let Some(row) = db
            .query_opt(
                "SELECT c.relreplident::text, \
                 COALESCE((SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                   WHERE i.indrelid = c.oid AND i.indisprimary), '{}') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.table],
            )
            .await?
        else {
            continue;
        };
        let identity: String = row.get(0);
        let mut primary: Vec<String> = row.get(1);
        primary.sort();
        let mut wanted = columns.clone();
        wanted.sort();
        if wanted != primary && identity != "f" {
            problems.push(pg(
                &table.to_string(),
                format!(
                    "is keyed by {} (not its primary key) but has REPLICA IDENTITY {}: updates and deletes would arrive without the key column and be misrouted",
                    columns.join(","),
                    identity_name(&identity)
                ),
                format!("ALTER TABLE {table} REPLICA IDENTITY FULL"),
            ));
        }
    }
    let slot = resolved.get("slot.name").cloned().unwrap_or_default();
    let database = resolved.get("database.dbname").cloned().unwrap_or_default();
    let slot_row = db
        .query_opt(
            "SELECT plugin::text, database::text, active, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    match &slot_row {
        None => notes
            .push(format!("slot {slot} does not exist yet; Debezium creates it on first start")),
        Some(row) => {
            let (active, retained): (bool, i64) = (row.get(2), row.get(3));
            notes.push(format!(
                "slot {slot}: {}, retains {retained} bytes of WAL{}",
                if active { "active" } else { "inactive" },
                if active { "" } else { " (and more while nothing reads it)" }
            ));
        }
    }
    if let Some(row) = slot_row {
        let (plugin, slot_db): (String, String) = (row.get(0), row.get(1));
        if plugin != "pgoutput" || slot_db != database {
            problems.push(pg(
                &format!("slot {slot}"),
                format!("exists with plugin {plugin} on database {slot_db}"),
                format!(
                    "use another slot.name, or drop it: SELECT pg_drop_replication_slot('{slot}')"
                ),
            ));
        }
    }
    Ok(DatabaseReport { problems, notes })
}

fn identity_name(code: &str) -> &'static str {
    match code {
        "d" => "DEFAULT",
        "n" => "NOTHING",
        "i" => "USING INDEX",
        _ => "FULL",
    }
}

fn join(tables: &[TableName]) -> String {
    tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
