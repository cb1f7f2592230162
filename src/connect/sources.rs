//! `persona sources plan [--apply]`: what the legacy database and the connector need for the
//! declared sources (see [`super::setup`]), printed for people; `--apply` runs the database
//! part in one transaction, and a second run has nothing left to do.

use std::process::ExitCode;

use super::commands::Loaded;
use super::setup::{self, Capture};
use super::validate::TableName;
use crate::features::FeatureSet;

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(
        "no publication to check: pass --publication, or a connector file (--connector) that \
         sets publication.name"
    )]
    NoPublication,
    #[error("the connector files name different publications ({0}); pass --publication")]
    Publications(String),
    #[error("cannot connect to postgres (postgres.url): {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("postgres: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// The publication the connector files read, unless `given`.
pub fn publication(given: Option<String>, files: &[Loaded]) -> Result<String, SourcesError> {
    if let Some(name) = given {
        return Ok(name);
    }
    let mut names: Vec<&String> =
        files.iter().filter_map(|file| file.file.config.get("publication.name")).collect();
    names.sort();
    names.dedup();
    match names.as_slice() {
        [] => Err(SourcesError::NoPublication),
        [one] => Ok((*one).clone()),
        many => Err(SourcesError::Publications(
            many.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
        )),
    }
}

fn describe(capture: &Capture) -> String {
    let identity = if capture.full_identity { ", REPLICA IDENTITY FULL" } else { "" };
    format!(
        "{:<32} {} (keyed by {}{identity})",
        capture.table.to_string(),
        capture.declared_as,
        capture.key_columns.join(",")
    )
}

/// Prints the plan for `set` against the database at `url`, and with `apply` runs it. Exit
/// status 1 when something no statement fixes is found (a missing table, a type that is not the
/// declared one, `wal_level`).
pub async fn plan(
    set: &FeatureSet,
    url: &str,
    publication: &str,
    topic_prefix: Option<&str>,
    apply: bool,
) -> Result<ExitCode, SourcesError> {
    let captures = setup::captures(set);
    println!(
        "Declared tables ({} sources, {} dimensions):",
        set.sources.len(),
        set.dimensions.len()
    );
    for capture in &captures {
        println!("  {}", describe(capture));
    }
    let (mut db, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(SourcesError::Connect)?;
    tokio::spawn(connection);
    let plan = setup::database_plan(&db, &captures, publication).await?;
    println!("\nDatabase (publication {publication}):");
    if plan.steps.is_empty() {
        println!("  nothing to change");
    }
    for step in &plan.steps {
        println!("  {step}");
    }
    for blocker in &plan.blockers {
        println!("  ! {blocker}");
    }
    println!("\nConnector JSON (connect/):");
    println!("  \"table.include.list\": \"{}\",", setup::include_list(&captures));
    println!("  \"message.key.columns\": \"{}\",", setup::message_key_columns(&captures));
    println!("  \"publication.name\": \"{publication}\",");
    if let Some(prefix) = topic_prefix {
        let topic = |table: &TableName| format!("{prefix}.{table}");
        let sources: Vec<String> =
            captures.iter().filter(|c| c.full_identity).map(|c| topic(&c.table)).collect();
        println!("\npersona (its config):");
        println!("  kafka.topics = {:?} (and __debezium-heartbeat.{prefix})", sources);
        for dimension in &set.dimensions {
            let table =
                TableName { schema: dimension.schema.into(), table: dimension.table.into() };
            match dimension.entity == set.item {
                true => println!("  kafka.products_topic = {:?}", topic(&table)),
                false => {
                    println!("  kafka.dimension_topics.{} = {:?}", dimension.name, topic(&table))
                }
            }
        }
    }
    if apply && !plan.steps.is_empty() {
        setup::apply(&mut db, &plan.steps).await?;
        println!("\napplied {} statement(s)", plan.steps.len());
    } else if !plan.steps.is_empty() {
        println!("\nrun with --apply to execute the database statements");
    }
    Ok(if plan.blockers.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
