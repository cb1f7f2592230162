//! Measures freshness end to end, as a page would see it: the time from a legacy write's commit
//! in Postgres until the API serves the changed feature, and where that time goes.
//!
//! ```sh
//! source .stack/stack.env
//! cargo run --release --example freshness -- http://127.0.0.1:8080 200
//! ```
//! Under load (`persona simulate` writing meanwhile), a third argument is the consumer lag, in
//! messages summed over partitions, that still counts as caught up:
//!
//! ```sh
//! persona simulate --users 1000 --rate 2000 --duration 10m &
//! cargo run --release --example freshness -- http://127.0.0.1:8080 200 2000
//! ```
//! Several instances (API replicas in one group) are given as one comma-separated argument: a
//! write then counts as visible when every one of them serves it, whichever ingested it, and
//! each replica's own figures are printed too:
//!
//! ```sh
//! scripts/stack up --cluster --instances 3 && source .stack/stack.env
//! cargo run --release --example freshness -- "$(echo $PERSONA_STACK_INSTANCES | tr ' ' ,)" 200
//! ```
//! Waits until persona reports no consumer lag (or at most that), then writes `SAMPLES` activity
//! rows, one at a time, each for a fresh user, and polls
//! `GET /api/v1/users/{id}/features?names=clicks_1m` every millisecond until it counts 1.
//! Meanwhile a consumer of its own tails the activity topic, which splits the time in three:
//! - capture: Postgres commit (`source.ts_ms`) → Debezium's record in Kafka (its timestamp);
//! - commit → consumer: the commit returning here → the record reaching a Kafka consumer;
//! - commit → visible: the commit returning here → the API serving the new count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

const TOPIC: &str = "persona.public.user_activity";

/// What the tailing consumer saw of one user's row: when it arrived, and the capture lag.
#[derive(Clone, Copy)]
struct Seen {
    received: Instant,
    capture_ms: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let apis: Vec<String> = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let samples: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let lag_allowed: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0.0);
    let database = std::env::var("PERSONA_POSTGRES__URL").context("source .stack/stack.env")?;
    let brokers = std::env::var("PERSONA_KAFKA__BROKERS").context("source .stack/stack.env")?;
    let (db, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let insert = db
        .prepare(
            "INSERT INTO user_activity (id, user_id, activity_type, activity_timestamp) \
             VALUES (gen_random_uuid(), $1, 'CLICK', now())",
        )
        .await?;
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    wait_caught_up(&http, &apis, lag_allowed).await?;
    let seen = tail(&brokers, &run)?;

    let mut visible = Vec::with_capacity(samples);
    let mut by_replica = vec![Vec::with_capacity(samples); apis.len()];
    let mut commits = Vec::with_capacity(samples);
    for i in 0..samples {
        let user = format!("fresh-{run}-{i}");
        db.execute(&insert, &[&user]).await?;
        // The statement returns once the commit is durable: the clock starts here.
        let committed = Instant::now();
        let seen = futures::future::try_join_all(
            apis.iter().map(|api| visible_on(&http, api, &user, committed)),
        )
        .await?;
        for (replica, millis) in seen.iter().enumerate() {
            by_replica[replica].push(*millis);
        }
        visible.push(seen.iter().copied().fold(0.0, f64::max));
        commits.push((user, committed));
    }

    // Every row was served, so it went through Kafka; the tail may still be polling for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut capture, mut consumed) = (Vec::new(), Vec::new());
    for (user, committed) in &commits {
        let found = loop {
            if let Some(found) = lock(&seen).get(user).copied() {
                break found;
            }
            if Instant::now() > deadline {
                bail!("the tailing consumer never saw {user}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        capture.push(found.capture_ms as f64);
        // A consumer can see the record before the commit returns to the writer.
        consumed.push(found.received.saturating_duration_since(*committed).as_secs_f64() * 1e3);
    }
    match lag_allowed > 0.0 {
        true => println!("over {samples} writes, one at a time, under load:"),
        false => println!("over {samples} writes, one at a time:"),
    }
    report("capture (commit → record in Kafka)", capture);
    report("commit → consumer", consumed);
    if apis.len() == 1 {
        report("commit → visible", visible);
    } else {
        for (api, millis) in apis.iter().zip(by_replica) {
            report(&format!("commit → visible on {api}"), millis);
        }
        report("commit → visible on every replica", visible);
    }
    Ok(())
}

/// Milliseconds from `committed` until `api` serves `user`'s click.
async fn visible_on(
    http: &reqwest::Client,
    api: &str,
    user: &str,
    committed: Instant,
) -> anyhow::Result<f64> {
    let url = format!("{api}/api/v1/users/{user}/features?names=clicks_1m");
    loop {
        let body: serde_json::Value = http.get(&url).send().await?.json().await?;
        if body["features"]["clicks_1m"]["value"] == 1 {
            return Ok(committed.elapsed().as_secs_f64() * 1e3);
        }
        if committed.elapsed() > Duration::from_secs(30) {
            bail!("{user} not visible on {api} after 30 s: {body}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A new consumer group reads the topics' history first: measure only once persona reports no
/// lag (at most `lag_allowed` messages) twice in a row, a statistics interval (5 s) apart. Each
/// instance reports the partitions it owns: their lags are summed.
async fn wait_caught_up(
    http: &reqwest::Client,
    apis: &[String],
    lag_allowed: f64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut streak = 0;
    while streak < 2 {
        let mut lags: Vec<f64> = Vec::new();
        for api in apis {
            let metrics = http.get(format!("{api}/metrics")).send().await?.text().await?;
            lags.extend(
                metrics
                    .lines()
                    .filter(|line| line.starts_with("persona_consumer_lag_messages{"))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok()),
            );
        }
        let behind = lags.iter().sum::<f64>();
        streak = if !lags.is_empty() && behind <= lag_allowed { streak + 1 } else { 0 };
        if started.elapsed() > Duration::from_secs(600) {
            bail!("persona still behind after 10 minutes: {lags:?}");
        }
        if streak < 2 {
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
    }
    eprintln!("persona caught up after {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn report(what: &str, mut millis: Vec<f64>) {
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {what:<36} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
    );
}

/// Tails the activity topic from its end on a thread of its own, noting this run's rows.
fn tail(brokers: &str, run: &str) -> anyhow::Result<Arc<Mutex<HashMap<String, Seen>>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("freshness-{run}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    // Every partition from its current end, read before any row is written.
    let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or_default();
    if partitions == 0 {
        bail!("{TOPIC} has no partitions (is the stack up?)");
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let (_, end) = consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(10))?;
        assignment.add_partition_offset(TOPIC, partition, rdkafka::Offset::Offset(end))?;
    }
    consumer.assign(&assignment)?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let shared = Arc::clone(&seen);
    let marker = format!("fresh-{run}-");
    std::thread::spawn(move || {
        loop {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
            let received = Instant::now();
            let Some(Ok(value)) = message.payload_view::<str>() else { continue };
            if !value.contains(&marker) {
                continue;
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(value) else { continue };
            let (Some(user), Some(committed_ms), Some(kafka_ms)) = (
                event["after"]["user_id"].as_str(),
                event["source"]["ts_ms"].as_i64(),
                message.timestamp().to_millis(),
            ) else {
                continue;
            };
            lock(&shared)
                .insert(user.to_string(), Seen { received, capture_ms: kafka_ms - committed_ms });
        }
    });
    Ok(seen)
}
