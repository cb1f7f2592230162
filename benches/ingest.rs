//! Decode + apply, the ingest engine's pure work per change event (issue 14's first goal:
//! ≥ 300,000 events/s on one core), without Kafka or Redis.
//!
//! The messages are Debezium envelopes as the connector writes them, for the writes the
//! simulator's model makes (`persona simulate`): activity rows of 1,000 users over 200 products,
//! and the cart rows of their add-to-carts, 0.5 ms apart (2,000 changes/s). Each is decoded
//! (`decode::envelope::decode`, `decode::change::source_change`) and applied to every feature of the
//! shipped definitions, users first and then products with the co-occurrence pairs the users'
//! changes imply, as `engine::Applier` does between its Redis round trips.
//!
//! ```sh
//! cargo bench --bench ingest      # last line: the goal met or missed
//! ```

mod support;

use chrono::TimeDelta;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use persona::decode::envelope::decode;
use persona::features::FeatureSet;
use support::{States, Workload, decode_and_apply, decodes};

/// The allocator `persona` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: usize = 20_000;

fn ingest(c: &mut Criterion) {
    let set = FeatureSet::load(None).expect("the shipped definitions");
    let messages: Vec<Vec<u8>> =
        Workload::new(1_000, 200, TimeDelta::microseconds(500)).take(MESSAGES).collect();
    let changes = messages.iter().filter(|message| decodes(&set, message)).count();
    assert_eq!(changes, messages.len(), "every message is a change");
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.sample_size(10);
    group.bench_function("envelope", |b| {
        b.iter(|| messages.iter().filter(|message| decode(Some(message)).is_ok()).count())
    });
    group.bench_function("decode", |b| {
        b.iter(|| messages.iter().filter(|message| decodes(&set, message)).count())
    });
    group.bench_function("decode_and_apply", |b| {
        b.iter_batched(
            States::new,
            |mut states| {
                for message in &messages {
                    decode_and_apply(&set, message, &mut states);
                }
                states
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Passes over the messages timed for the goal's verdict, after criterion's figures.
const VERDICT_PASSES: usize = 11;

/// Issue 14's goal, printed met or missed: decode and apply of every message into fresh states,
/// timed pass by pass (criterion's estimates are printed above; this line reads the median pass).
fn verdict() {
    let set = FeatureSet::load(None).expect("the shipped definitions");
    let messages: Vec<Vec<u8>> =
        Workload::new(1_000, 200, TimeDelta::microseconds(500)).take(MESSAGES).collect();
    let mut rates: Vec<f64> = (0..VERDICT_PASSES)
        .map(|_| {
            let mut states = States::new();
            let started = Instant::now();
            for message in &messages {
                decode_and_apply(&set, message, &mut states);
            }
            messages.len() as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let verdict = if median >= GOAL_PER_SECOND {
        "met".to_string()
    } else {
        format!("missed, {:.2}× the goal", median / GOAL_PER_SECOND)
    };
    println!(
        "issue 14's decode + apply goal (≥ 300,000 events/s on one core): {verdict}; \
         {median:.0} events/s at the median of {VERDICT_PASSES} passes ({:.2} µs per event; \
         slowest {:.0}, fastest {:.0})",
        1e6 / median,
        rates[0],
        rates[rates.len() - 1],
    );
}

const GOAL_PER_SECOND: f64 = 300_000.0;

criterion_group!(benches, ingest);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs each bench once without `--bench`: no verdict then.
    if std::env::args().any(|arg| arg == "--bench") {
        verdict();
    }
}
