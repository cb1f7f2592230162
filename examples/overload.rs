//! The serving benchmark's overload client: `connections` clients each send GETs back to back
//! for random users and record every response's latency by outcome, so that the latency of the
//! requests persona admitted is seen apart from the fast 503s it shed (wrk mixes both into one
//! distribution). Prints one line: `admitted <rps> <p50 ms> <p99 ms> shed <rps> <p50 ms>
//! <p99 ms> <share with Retry-After> other <count>`.
//!
//! ```sh
//! cargo run --release --example overload -- http://127.0.0.1:18091 \
//!     '/api/v1/users/{user}/features' 1000 512 10
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

#[derive(Default)]
struct Outcomes {
    admitted: Vec<u32>,
    shed: Vec<u32>,
    shed_with_retry_after: usize,
    other: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, path, users, connections, seconds] = args.as_slice() else {
        anyhow::bail!(
            "usage: overload <base url> <path with {{user}}> <users> <connections> <seconds>"
        );
    };
    let users: u32 = users.parse().context("users")?;
    let connections: usize = connections.parse().context("connections")?;
    let duration = Duration::from_secs(seconds.parse().context("seconds")?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, base, path) = (client.clone(), base.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Outcomes::default();
            while Instant::now() < deadline {
                let user = format!("sim-u{:04}", rand::rng().random_range(1..=users));
                let url = format!("{base}{}", path.replace("{user}", &user));
                let sent = Instant::now();
                let response = client.get(&url).send().await;
                let outcome = match response {
                    Ok(response) => {
                        let status = response.status();
                        let retry_after = response.headers().contains_key("retry-after");
                        // The whole body, as a page would read it.
                        let complete = response.bytes().await.is_ok();
                        Some((status, retry_after, complete))
                    }
                    Err(_) => None,
                };
                let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                match outcome {
                    Some((status, _, true)) if status.is_success() => {
                        outcomes.admitted.push(micros)
                    }
                    Some((status, retry_after, true)) if status.as_u16() == 503 => {
                        outcomes.shed.push(micros);
                        outcomes.shed_with_retry_after += usize::from(retry_after);
                    }
                    _ => outcomes.other += 1,
                }
            }
            outcomes
        }));
    }
    let mut all = Outcomes::default();
    for task in tasks {
        let outcomes = task.await?;
        all.admitted.extend(outcomes.admitted);
        all.shed.extend(outcomes.shed);
        all.shed_with_retry_after += outcomes.shed_with_retry_after;
        all.other += outcomes.other;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = |latencies: &mut Vec<u32>| {
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |micros| f64::from(*micros) / 1000.0)
        };
        format!("{:.0} {:.2} {:.2}", latencies.len() as f64 / elapsed, at(0.5), at(0.99))
    };
    let retry_share = if all.shed.is_empty() {
        1.0
    } else {
        all.shed_with_retry_after as f64 / all.shed.len() as f64
    };
    println!(
        "admitted {} shed {} {:.2} other {}",
        summary(&mut all.admitted),
        summary(&mut all.shed),
        retry_share,
        all.other
    );
    Ok(())
}
