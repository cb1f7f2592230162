//! The serving benchmark's live-stream client: opens `streams` Server-Sent Event streams
//! (`/u/{user}/live`, users `sim-u0001`… in turn), keeps them open for `seconds`, and counts the
//! live blocks each receives after its first (the first comes at once: the stream names no
//! version it already shows). Prints `opened <n> refused <n> failed <n> in <s>` once every stream
//! was asked for (so a script can start measuring), then `updates <n> streams_updated <n>
//! ended_early <n>` at the end.
//!
//! ```sh
//! cargo run --release --example streams -- http://127.0.0.1:18091 10000 10000 30
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;

/// Streams being opened at once (the server's accept backlog is finite).
const OPENING: usize = 256;

#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    updates: AtomicUsize,
    updated: AtomicUsize,
    ended_early: AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, users, streams, seconds] = args.as_slice() else {
        anyhow::bail!("usage: streams <base url> <users> <streams> <seconds>");
    };
    let users: usize = users.parse().context("users")?;
    let streams: usize = streams.parse().context("streams")?;
    let hold = Duration::from_secs(seconds.parse().context("seconds")?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    // Appended to each stream's path, e.g. `?since=<version>` (the block the page already shows).
    let query = std::env::var("STREAMS_QUERY").unwrap_or_default();
    let counts = Arc::new(Counts::default());
    let opening = Arc::new(Semaphore::new(OPENING));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    let (asked_tx, mut asked_rx) = tokio::sync::mpsc::channel::<()>(streams.max(1));
    for stream in 0..streams {
        let user = format!("sim-u{:04}", stream % users + 1);
        let url = format!("{base}/u/{user}/live{query}");
        let (client, counts, opening, asked) =
            (client.clone(), Arc::clone(&counts), Arc::clone(&opening), asked_tx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let response = client.get(&url).send().await;
            drop(permit);
            let _ = asked.send(()).await;
            let mut response = match response {
                Ok(response) if response.status().is_success() => {
                    counts.opened.fetch_add(1, Ordering::Relaxed);
                    response
                }
                Ok(response) if response.status().as_u16() == 503 => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let deadline = tokio::time::Instant::now() + hold;
            let mut received = 0;
            loop {
                match tokio::time::timeout_at(deadline, response.chunk()).await {
                    Err(_) => break,
                    Ok(Ok(Some(chunk))) => {
                        let text = String::from_utf8_lossy(&chunk);
                        received += text.matches("event: live").count();
                    }
                    Ok(_) => {
                        counts.ended_early.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let updates = received.saturating_sub(1);
            counts.updates.fetch_add(updates, Ordering::Relaxed);
            counts.updated.fetch_add(usize::from(updates > 0), Ordering::Relaxed);
        }));
    }
    drop(asked_tx);
    for _ in 0..streams {
        if asked_rx.recv().await.is_none() {
            break;
        }
    }
    println!(
        "opened {} refused {} failed {} in {:.1}",
        counts.opened.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    for task in tasks {
        task.await?;
    }
    println!(
        "updates {} streams_updated {} ended_early {}",
        counts.updates.load(Ordering::Relaxed),
        counts.updated.load(Ordering::Relaxed),
        counts.ended_early.load(Ordering::Relaxed)
    );
    Ok(())
}
