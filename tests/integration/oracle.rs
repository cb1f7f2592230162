//! The SQL oracle (tests/integration/common/oracle.rs) through crashes and go-live:
//! - a workload of more than 20,000 changes, compared after persona is killed with -9
//!   mid-workload and after the Kafka Connect worker is killed mid-workload (Debezium then
//!   publishes again what it had already published);
//! - a go-live: a database with more than 20,000 rows, a fresh connector snapshots it while
//!   persona consumes and the application keeps writing, Connect is killed mid-snapshot (it
//!   snapshots again, over the slot it had created), persona is killed mid-catch-up; then
//!   streaming, and a snapshot run again after writes no connector saw, with the application
//!   writing throughout (so that the run reads rows it also streams);
//! - TRUNCATEs of a source and of the dimension, where partitions ran past them, and then
//!   `persona rebuild` of the whole history.
//!
//! Runs on its own (scripts/test runs this binary after the others, one test at a time:
//! .config/nextest.toml), because it kills the shared Connect worker.

use crate::common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::capture::{
    PARTITIONS, admin, connector_file, consumer, high_watermark, release_slot_and_publication,
};
use common::oracle::{CATALOG, assert_no_mismatch, changes, seed_products, stack, workload};
use common::{CATCH_UP, DEADLINE, Persona, env, eventually, legacy_db, unique};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use serde_json::Value;

#[tokio::test]
async fn every_default_feature_equals_its_sql_recomputation_through_crashes() {
    let prefix = unique("o");
    let mut persona = Persona::start("oracle").await;
    let db = legacy_db().await;
    let mut total = seed_products(&db, &prefix, 0, CATALOG - 1).await;

    total += workload(&prefix, 3, 2_000).await;
    assert_no_mismatch(&persona, &db, &prefix, true, "after the first workload").await;

    // kill -9 persona while the application keeps writing.
    let writer = tokio::spawn({
        let prefix = prefix.clone();
        async move { workload(&prefix, 3, 2_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    persona.kill();
    total += seed_products(&db, &prefix, CATALOG, CATALOG).await;
    persona.restart().await;
    total += writer.await.expect("workload");
    assert_no_mismatch(&persona, &db, &prefix, true, "after kill -9 of persona").await;

    // kill -9 the Connect worker while the application keeps writing: Debezium publishes again
    // what it had published since its last offset flush.
    let writer = tokio::spawn({
        let prefix = prefix.clone();
        async move { workload(&prefix, 3, 2_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| stack("connect-kill")).await.expect("join");
    total += writer.await.expect("workload");
    tokio::task::spawn_blocking(|| stack("connect-start")).await.expect("join");
    assert_no_mismatch(&persona, &db, &prefix, true, "after kill -9 of Kafka Connect").await;

    assert!(total >= 20_000, "the workload made only {total} changes");
    let metrics = persona.metrics().await;
    eprintln!(
        "oracle: {total} changes; duplicates skipped since the restart: {}",
        common::counter(&metrics, "persona_duplicate_events_total", &[])
    );
}

const SOURCE_TABLES: [&str; 3] = ["user_activity", "cart_items", "orders"];
/// Rows the database has before the connector exists.
const PREEXISTING_ACTIVITY: i32 = 20_000;

/// A connector of the go-live's own that snapshots the go-live's rows (and streams only those).
struct GoLive {
    prefix: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl GoLive {
    async fn create(db: &tokio_postgres::Client, prefix: &str) -> Self {
        let of_user = format!("user_id LIKE '{prefix}-%'");
        let of_product = format!("id LIKE '{prefix}-%'");
        let filter = |table: &str| if table == "products" { &of_product } else { &of_user };
        let tables: Vec<&str> = SOURCE_TABLES.into_iter().chain(["products"]).collect();
        let published: Vec<String> =
            tables.iter().map(|t| format!("public.{t} WHERE ({})", filter(t))).collect();
        db.batch_execute(&format!(
            "CREATE PUBLICATION {prefix}_pub FOR TABLE {}",
            published.join(", ")
        ))
        .await
        .expect("create publication");
        let names: Vec<String> = tables.iter().map(|t| format!("{prefix}.public.{t}")).collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(-1)))
            .collect();
        admin().create_topics(&topics, &AdminOptions::new()).await.expect("create topics");

        let include: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
        // The snapshot reads the shared tables: only the go-live's rows.
        let overrides: Vec<(String, String)> = tables
            .iter()
            .map(|t| {
                (
                    format!("snapshot.select.statement.overrides.public.{t}"),
                    format!("SELECT * FROM public.{t} WHERE {}", filter(t)),
                )
            })
            .collect();
        let (publication, slot) = (format!("{prefix}_pub"), format!("{prefix}_slot"));
        let include = include.join(",");
        let mut settings: Vec<(&str, Option<&str>)> = vec![
            ("topic.prefix", Some(prefix)),
            ("publication.name", Some(&publication)),
            ("slot.name", Some(&slot)),
            ("snapshot.mode", Some("initial")),
            ("table.include.list", Some(&include)),
            ("snapshot.select.statement.overrides", Some(&include)),
        ];
        for (key, value) in &overrides {
            settings.push((key, Some(value)));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = connector_file(dir.path(), prefix, &settings);
        Self { prefix: prefix.to_string(), file, _dir: dir }
    }

    fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    fn persona_env(&self) -> Vec<(String, String)> {
        let topics: Vec<String> = SOURCE_TABLES.iter().map(|t| self.topic(t)).collect();
        vec![
            ("PERSONA_KAFKA__TOPICS".into(), serde_json::to_string(&topics).expect("json")),
            ("PERSONA_KAFKA__PRODUCTS_TOPIC".into(), self.topic("products")),
            ("PERSONA_KAFKA__DLQ_TOPIC".into(), format!("{}.dlq", self.prefix)),
        ]
    }

    fn apply(&self) {
        let output = common::capture::persona(
            &["connector", "apply", self.file.to_str().expect("utf-8 path")],
            &[],
        );
        assert!(output.status.success(), "apply: {}", common::capture::text(&output));
    }

    /// Messages written to the activity topic so far.
    fn activity_messages(&self) -> i64 {
        let topic = self.topic("user_activity");
        (0..PARTITIONS).map(|partition| high_watermark(&topic, partition)).sum()
    }

    async fn rest(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let url = format!("{}/connectors/{}{path}", env("PERSONA_CONNECT__URL"), self.prefix);
        let response =
            reqwest::Client::new().request(method, url).send().await.expect("connect rest");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn wait_state(&self, state: &str) {
        eventually(&format!("connector {} {state}", self.prefix), DEADLINE, || async {
            let (_, status) = self.rest(reqwest::Method::GET, "/status").await;
            match status["connector"]["state"].as_str() {
                Some(now) if now == state => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    /// Waits until the newest snapshot run is complete (its last read is in Kafka) and is not
    /// one of `before`; returns every run started so far. Streaming overlaps a run that has not
    /// completed (see docs/FEATURES.md, the limits).
    async fn wait_for_snapshot(&self, before: &BTreeSet<Run>) -> BTreeSet<Run> {
        let prefix = self.prefix.clone();
        let before = before.clone();
        eventually("the snapshot complete", CATCH_UP, || {
            let (prefix, before) = (prefix.clone(), before.clone());
            async move {
                let (started, completed) =
                    tokio::task::spawn_blocking(move || snapshot_runs(&prefix))
                        .await
                        .expect("join");
                match started.last() {
                    Some(newest) if completed.contains(newest) && !before.contains(newest) => {
                        Ok(started)
                    }
                    _ => Err(format!("runs started {started:?}, completed {completed:?}")),
                }
            }
        })
        .await
    }
}

/// A snapshot run: (LSN, transaction).
type Run = (i64, i64);

/// The snapshot runs whose reads the go-live's topics hold, and those complete among them.
fn snapshot_runs(prefix: &str) -> (BTreeSet<Run>, BTreeSet<Run>) {
    let consumer = consumer();
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut remaining = 0;
    for table in SOURCE_TABLES.into_iter().chain(["products"]) {
        let topic = format!("{prefix}.public.{table}");
        for partition in 0..PARTITIONS {
            remaining += high_watermark(&topic, partition);
            assignment
                .add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)
                .expect("offset");
        }
    }
    rdkafka::consumer::Consumer::assign(&consumer, &assignment).expect("assign");
    let (mut started, mut completed) = (BTreeSet::new(), BTreeSet::new());
    let begun = std::time::Instant::now();
    while remaining > 0 && begun.elapsed() < DEADLINE {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
        remaining -= 1;
        let Some(payload) = rdkafka::Message::payload(&message) else { continue };
        let Ok(event) = serde_json::from_slice::<Value>(payload) else { continue };
        if event["op"] != "r" {
            continue;
        }
        let source = &event["source"];
        let run = (
            source["lsn"].as_i64().unwrap_or_default(),
            source["txId"].as_i64().unwrap_or_default(),
        );
        started.insert(run);
        if source["snapshot"] == "last" {
            completed.insert(run);
        }
    }
    (started, completed)
}

impl Drop for GoLive {
    fn drop(&mut self) {
        let _ = common::capture::persona(
            &["connector", "delete", self.file.to_str().unwrap_or_default()],
            &[],
        );
        release_slot_and_publication(&self.prefix);
    }
}

/// Rows the legacy application wrote before persona: activity, carts and orders of the
/// oracle's users, then a round of updates and deletes.
async fn preexisting(db: &tokio_postgres::Client, prefix: &str) -> u64 {
    let users = common::oracle::USERS;
    let products = common::oracle::PRODUCTS;
    let kinds = common::oracle::KINDS;
    let mut total = seed_products(db, prefix, 0, CATALOG - 1).await;
    total += changes(
        db,
        &format!(
            "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
             SELECT gen_random_uuid(), $1 || '-u' || floor(random() * {users})::int, \
                    ({kinds})[1 + floor(random() * 8)::int], \
                    $1 || '-p' || floor(random() * {products})::int, \
                    now() - random() * interval '70 minutes' \
             FROM generate_series(1, {PREEXISTING_ACTIVITY})"
        ),
        prefix,
    )
    .await;
    total + common::oracle::round(db, prefix, 500).await
}

#[tokio::test]
async fn go_live_snapshot_with_crashes_and_a_second_run_equals_sql() {
    // Also names the slot and publication: no dashes.
    let prefix = format!("golive{}", common::capture::hex());
    let db = legacy_db().await;
    preexisting(&db, &prefix).await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM user_activity WHERE user_id LIKE $1 || '-%'", &[&prefix])
        .await
        .expect("count")
        .get(0);
    assert!(rows >= i64::from(PREEXISTING_ACTIVITY) - 1_000, "only {rows} rows before go-live");

    let golive = GoLive::create(&db, &prefix).await;
    let mut persona = Persona::start_with("golive", &unique("golive"), golive.persona_env()).await;
    // The application writes on through the whole go-live.
    let writer = Writer::start(&prefix);
    golive.apply();

    // kill -9 the Connect worker mid-snapshot: it snapshots again from the start.
    eventually("the snapshot under way", DEADLINE, || async {
        match golive.activity_messages() {
            written if written >= 2_000 => Ok(()),
            written => Err(format!("{written} activity messages")),
        }
    })
    .await;
    tokio::task::spawn_blocking(|| stack("connect-kill")).await.expect("join");
    let written_at_kill = golive.activity_messages();
    tokio::task::spawn_blocking(|| stack("connect-start")).await.expect("join");

    // kill -9 persona mid-catch-up.
    eventually("the second snapshot under way", DEADLINE, || async {
        match golive.activity_messages() {
            written if written >= written_at_kill + 2_000 => Ok(()),
            written => Err(format!("{written} activity messages")),
        }
    })
    .await;
    persona.kill();
    persona.restart().await;

    let runs = golive.wait_for_snapshot(&BTreeSet::new()).await;
    let during_go_live = writer.stop().await;
    workload(&prefix, 2, 1_000).await;
    assert_no_mismatch(&persona, &db, &prefix, false, "after go-live").await;

    // A snapshot run again (offsets reset) after writes while no connector ran, deletes among
    // them: rows it does not read any more must stop counting. The application writes on
    // while the run reads: the run's own database snapshot is taken seconds after the position
    // it streams from, so it reads rows that it streams too.
    golive.rest(reqwest::Method::PUT, "/stop").await;
    golive.wait_state("STOPPED").await;
    workload(&prefix, 1, 500).await;
    changes(&db, "DELETE FROM cart_items WHERE user_id = $1 || '-u1'", &prefix).await;
    let (status, answer) = golive.rest(reqwest::Method::DELETE, "/offsets").await;
    assert_eq!(status, 200, "reset offsets: {answer}");
    let writer = Writer::start(&prefix);
    golive.rest(reqwest::Method::PUT, "/resume").await;
    golive.wait_state("RUNNING").await;
    let runs = golive.wait_for_snapshot(&runs).await;
    let during_run = writer.stop().await;
    workload(&prefix, 1, 500).await;
    assert_no_mismatch(&persona, &db, &prefix, false, "after a snapshot run again").await;
    assert!(runs.len() >= 2, "the topics hold reads of {runs:?} only");
    let overlapped =
        common::counter(&persona.metrics().await, "persona_snapshot_overlap_events_total", &[]);
    eprintln!(
        "go-live: {rows} rows before, {during_go_live} changes during it, {during_run} during \
         the run again; snapshot runs {runs:?}; {overlapped} streamed changes found already read"
    );
}

/// The legacy application writing on, round after round, until stopped.
struct Writer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn start(prefix: &str) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let db = legacy_db().await;
            let mut total = 0;
            while !*stopped.borrow_and_update() {
                total += common::oracle::trickle(&db, &prefix).await;
            }
            total
        });
        Self { stop, task }
    }

    /// Stops after the round under way; the changes written.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.expect("writer")
    }
}

/// TRUNCATE of a fact table and of the dimension, with the partition that delivers the fact
/// table's TRUNCATE held back so that the table's other partitions run past it first (they must
/// be read again), and writes on both sides of each.
#[tokio::test]
async fn truncates_empty_what_their_table_fed_even_where_partitions_ran_ahead() {
    let prefix = unique("t");
    let hold = vec![("PERSONA_TEST_HOLD_TRUNCATE".to_string(), "4000".to_string())];
    let persona = Persona::start_with("truncate", &unique("truncate"), hold).await;
    let db = legacy_db().await;
    seed_products(&db, &prefix, 0, CATALOG - 1).await;
    workload(&prefix, 2, 500).await;
    assert_no_mismatch(&persona, &db, &prefix, true, "before the TRUNCATEs").await;
    let truncates = |metrics: &str| {
        common::counter(metrics, "persona_source_truncates_total", &["table=\"cart_items\""])
    };
    let before = persona.metrics().await;

    db.batch_execute("TRUNCATE cart_items").await.expect("truncate cart_items");
    // Rows after it, for every user: on every partition of the topic.
    workload(&prefix, 1, 500).await;
    assert_no_mismatch(&persona, &db, &prefix, true, "after TRUNCATE cart_items").await;
    let metrics = persona.metrics().await;
    assert!(truncates(&metrics) > truncates(&before), "no TRUNCATE recorded: {metrics}");
    let rereads = |metrics: &str| common::counter(metrics, "persona_truncate_rereads_total", &[]);
    assert!(
        rereads(&metrics) > rereads(&before),
        "no partition ran past the held TRUNCATE; the test did not test what it should"
    );

    // The dimension: every product goes, then some come back.
    db.batch_execute("TRUNCATE products").await.expect("truncate products");
    seed_products(&db, &prefix, 0, CATALOG / 2).await;
    workload(&prefix, 1, 500).await;
    assert_no_mismatch(&persona, &db, &prefix, true, "after TRUNCATE products").await;
    let products: i64 =
        db.query_one("SELECT count(*) FROM products", &[]).await.expect("count").get(0);
    eventually("the catalog holds what the table holds", CATCH_UP, || async {
        let held = common::counter(&persona.metrics().await, "persona_catalog_products", &[]);
        if held == products as f64 { Ok(()) } else { Err(format!("{held} held, {products} rows")) }
    })
    .await;

    // The whole history again, TRUNCATEs included, into a fresh generation (kept shares, large
    // batches, partitions applied side by side), which the serving instance then switches to.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_persona"))
        .args(["rebuild", "--grace", "2s"])
        .env("PERSONA_KAFKA__GROUP_ID", &persona.group)
        .env("PERSONA_REDIS__KEY_PREFIX", &persona.group)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run persona rebuild");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    workload(&prefix, 1, 500).await;
    assert_no_mismatch(&persona, &db, &prefix, true, "after persona rebuild").await;
}
