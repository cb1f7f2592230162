//! Measures freshness end to end, as a page would see it: the time from a legacy write's commit
//! in Postgres until the API serves the changed feature.
//!
//! ```sh
//! source .stack/stack.env
//! cargo run --release --example freshness -- http://127.0.0.1:8080 200
//! ```
//! Writes `SAMPLES` activity rows, one at a time, each for a fresh user, and polls
//! `GET /api/v1/users/{id}/features?names=clicks_1m` every millisecond until it counts 1.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let api = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let samples: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let database = std::env::var("PERSONA_POSTGRES__URL").context("source .stack/stack.env")?;
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

    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let user = format!("fresh-{run}-{i}");
        let url = format!("{api}/api/v1/users/{user}/features?names=clicks_1m");
        db.execute(&insert, &[&user]).await?;
        // The statement returns once the commit is durable: the clock starts here.
        let committed = Instant::now();
        loop {
            let body: serde_json::Value = http.get(&url).send().await?.json().await?;
            if body["features"]["clicks_1m"]["value"] == 1 {
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("{user} not visible after 30 s: {body}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(committed.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "commit → visible over {samples} writes: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}
