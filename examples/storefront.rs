//! Measures the storefront as a shopper sees it:
//! - live update: a legacy write's commit in Postgres → the user's live block arrives over SSE;
//! - page: `GET /u/{id}` end to end, for a user whose state is in L1 and for users not yet read.
//!
//! ```sh
//! source .stack/stack.env
//! cargo run --release --example storefront -- http://127.0.0.1:8080 100
//! ```
//! Needs products in the catalog (`persona simulate --duration 10s` seeds them).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label}: n={} p50={:.1?} p90={:.1?} p99={:.1?} max={:.1?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

/// Reads the stream until the next `event: live`.
async fn next_live(response: &mut reqwest::Response, buffer: &mut String) -> anyhow::Result<()> {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.lines().any(|line| line == "event: live") {
                return Ok(());
            }
            continue;
        }
        match response.chunk().await? {
            Some(chunk) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            None => bail!("the live stream ended"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let api = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let samples: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let database = std::env::var("PERSONA_POSTGRES__URL").context("source .stack/stack.env")?;
    let (db, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let products: Vec<String> = db
        .query("SELECT id FROM products WHERE category IS NOT NULL ORDER BY id LIMIT 20", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if products.is_empty() {
        bail!("no products: run `persona simulate --duration 10s` first");
    }
    let insert = db
        .prepare(
            "INSERT INTO user_activity (id, user_id, activity_type, product_id, activity_timestamp) \
             VALUES (gen_random_uuid(), $1, 'VIEW_PRODUCT', $2, now())",
        )
        .await?;
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();

    let mut live = Vec::with_capacity(samples);
    let mut cold_pages = Vec::with_capacity(samples);
    for i in 0..samples {
        let user = format!("bench-{run}-{i}");
        let started = Instant::now();
        let page = http.get(format!("{api}/u/{user}")).send().await?;
        page.error_for_status()?.text().await?;
        cold_pages.push(started.elapsed());

        let mut stream =
            http.get(format!("{api}/u/{user}/live")).send().await?.error_for_status()?;
        let mut buffer = String::new();
        // Without `since`, the current block comes first: the stream is then subscribed.
        next_live(&mut stream, &mut buffer).await?;
        let product = &products[i % products.len()];
        db.execute(&insert, &[&user, product]).await?;
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), next_live(&mut stream, &mut buffer))
            .await
            .context("no live update within 10 s")??;
        live.push(committed.elapsed());
    }

    let warm_user = format!("bench-{run}-0");
    let mut warm_pages = Vec::with_capacity(samples * 5);
    for _ in 0..samples * 5 {
        let started = Instant::now();
        http.get(format!("{api}/u/{warm_user}")).send().await?.error_for_status()?.text().await?;
        warm_pages.push(started.elapsed());
    }

    percentiles("commit → live block over SSE", live);
    percentiles("GET /u/{id}, user not read before", cold_pages);
    percentiles("GET /u/{id}, user in L1", warm_pages);
    Ok(())
}
