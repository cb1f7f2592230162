//! Declared sources against the real database and Kafka Connect: a legacy schema unlike the
//! reference one (tests/fixtures/legacy-shop), created by the test under a schema of its own,
//! declared in a definitions file and nothing else.
//!
//! - `persona sources plan` prints exactly the CDC setup the schema lacks; `--apply` runs it and
//!   a second run has nothing left to do.
//! - `persona connector validate` names a declared source the connector does not capture, and a
//!   source keyed by something else than its entity.

use crate::common;

use std::path::Path;

use common::capture::{connector_file, persona, text};
use common::legacy_db;
use common::shop::Shop;

/// The statements of the plan's database part, without their reasons.
fn statements(report: &str) -> Vec<String> {
    let section = report.split("\nDatabase (").nth(1).expect("a database section");
    let section = section.split("\n\n").next().expect("lines");
    section
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|line| !line.starts_with('!') && *line != "nothing to change")
        .map(|line| line.split(";  --").next().expect("statement").to_string())
        .collect()
}

#[tokio::test]
async fn sources_plan_prints_what_the_database_lacks_and_apply_twice_is_a_no_op() {
    let db = legacy_db().await;
    let shop = Shop::create(&db).await;
    let (behavior, trade, item, store) = (
        shop.table("t_user_behavior"),
        shop.table("t_trade"),
        shop.table("t_item"),
        shop.table("t_store"),
    );
    let publication = format!("\"{}\"", shop.publication());

    let (code, report) = shop.plan(false);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        statements(&report),
        [
            format!("ALTER TABLE {behavior} REPLICA IDENTITY FULL"),
            format!("ALTER TABLE {trade} REPLICA IDENTITY FULL"),
            format!(
                "CREATE PUBLICATION {publication} FOR TABLE {behavior}, {trade}, {item}, {store}"
            ),
        ],
        "{report}"
    );
    let schema = &shop.schema;
    assert!(
        report.contains(&format!(
            "\"table.include.list\": \"{schema}.t_user_behavior,{schema}.t_trade,{schema}.t_item,{schema}.t_store\""
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "\"message.key.columns\": \"{schema}.t_user_behavior:uid;{schema}.t_trade:buyer_id;{schema}.t_item:code;{schema}.t_store:store_id\""
        )),
        "{report}"
    );

    let (code, report) = shop.plan(true);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("applied 3 statement(s)"), "{report}");
    let identities: Vec<String> = db
        .query(
            "SELECT c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname IN ('t_user_behavior', 't_trade')",
            &[&shop.schema],
        )
        .await
        .expect("identities")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(identities, ["f", "f"]);
    let published: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1",
            &[&shop.publication()],
        )
        .await
        .expect("publication")
        .get(0);
    assert_eq!(published, 4);

    let (code, report) = shop.plan(true);
    assert_eq!(code, Some(0), "{report}");
    assert!(statements(&report).is_empty(), "{report}");
    assert!(report.contains("nothing to change") && !report.contains("applied"), "{report}");

    // What goes missing again is all that is planned.
    db.batch_execute(&format!("ALTER PUBLICATION {publication} DROP TABLE {item}"))
        .await
        .expect("drop from publication");
    let (_, report) = shop.plan(false);
    assert_eq!(
        statements(&report),
        [format!("ALTER PUBLICATION {publication} ADD TABLE {item}")],
        "{report}"
    );

    // What no statement fixes is named, with exit status 1.
    db.batch_execute(&format!(
        "ALTER TABLE {trade} DROP COLUMN pay_date; ALTER TABLE {behavior} ALTER COLUMN uid TYPE text"
    ))
    .await
    .expect("alter the shop");
    let (code, report) = shop.plan(false);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!("! {schema}.t_trade.pay_date (source trade) does not exist")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "! {schema}.t_user_behavior.uid (source behavior) is declared Integer but is text"
        )),
        "{report}"
    );
    shop.drop(&db).await;
}

#[tokio::test]
async fn connector_validate_names_a_declared_source_the_connector_misses() {
    let db = legacy_db().await;
    let shop = Shop::create(&db).await;
    let (code, report) = shop.plan(true);
    assert_eq!(code, Some(0), "{report}");
    let schema = &shop.schema;
    let publication = shop.publication();
    let connector = |name: &str, include: &str, keys: &str| {
        connector_file(
            shop.dir.path(),
            name,
            &[
                ("topic.prefix", Some(schema)),
                ("publication.name", Some(&publication)),
                ("slot.name", Some(&format!("{schema}_slot"))),
                ("table.include.list", Some(include)),
                ("message.key.columns", Some(keys)),
            ],
        )
    };
    let validate = |file: &Path| {
        let output = persona(&["connector", "validate", file.to_str().expect("path")], &shop.env());
        (output.status.code(), text(&output))
    };

    let whole = connector(
        &format!("{schema}-whole"),
        &format!("{schema}.t_user_behavior,{schema}.t_trade,{schema}.t_item,{schema}.t_store"),
        &format!(
            "{schema}.t_user_behavior:uid;{schema}.t_trade:buyer_id;{schema}.t_item:code;\
             {schema}.t_store:store_id"
        ),
    );
    let (code, report) = validate(&whole);
    assert_eq!(code, Some(0), "{report}");

    let partial = connector(
        &format!("{schema}-partial"),
        &format!("{schema}.t_user_behavior,{schema}.t_item,{schema}.t_store"),
        &format!(
            "{schema}.t_user_behavior:behavior_id;{schema}.t_item:code;{schema}.t_store:store_id"
        ),
    );
    let (code, report) = validate(&partial);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "{schema}.t_trade (source trade) is declared but no connector file captures it"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("fix: add {schema}.t_trade to table.include.list")),
        "{report}"
    );
    assert!(
        report.contains(&format!("fix: set {schema}.t_user_behavior:uid in message.key.columns")),
        "{report}"
    );
    shop.drop(&db).await;
}
