//! `persona simulate` against the real legacy database: it seeds the catalog and writes exactly
//! the activity it reports, through the legacy tables.

use crate::common;

use std::process::Command;

use common::legacy_db;

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test]
async fn simulate_seeds_the_catalog_and_writes_what_it_reports() {
    let db = legacy_db().await;
    let activity = "SELECT count(*) FROM user_activity WHERE user_id LIKE 'sim-u%'";
    let before = count(&db, activity).await;
    let output = Command::new(env!("CARGO_BIN_EXE_persona"))
        .args(["simulate", "--users", "4", "--products", "16", "--rate", "40", "--duration", "2s"])
        .env("PERSONA_POSTGRES__URL", common::env("PERSONA_POSTGRES__URL"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run persona simulate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let reported: i64 = stdout
        .split(" activity rows")
        .next()
        .and_then(|n| n.trim().rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no activity count in {stdout:?}"));
    assert!(reported > 0, "nothing written: {stdout}");
    let after = count(&db, activity).await;
    assert_eq!(after - before, reported, "rows in user_activity vs the summary: {stdout}");
    let products = count(
        &db,
        "SELECT count(*) FROM products WHERE id LIKE 'sim-p%' AND name IS NOT NULL AND price > 0",
    )
    .await;
    assert!(products >= 16, "{products} simulated products");
    assert!(stdout.contains("0 failed writes"), "{stdout}");
}
