//! Decode + apply, the ingest engine's pure work per change event (issue 14's first goal:
//! ≥ 300,000 events/s on one core), without Kafka or Redis.
//!
//! The messages are Debezium envelopes as the connector writes them, for the writes the
//! simulator's model makes (`persona simulate`): activity rows of 1,000 users over 200 products,
//! and the cart rows of their add-to-carts, 0.5 ms apart (2,000 changes/s). Each is decoded
//! (`cdc::envelope::decode`, `cdc::change::source_change`) and applied to every feature of the
//! shipped definitions, users first and then products with the co-occurrence pairs the users'
//! changes imply, as `cdc::Applier` does between its Redis round trips.
//!
//! ```sh
//! cargo bench --bench ingest
//! ```

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use persona::cdc::change::source_change;
use persona::cdc::envelope::{CdcMessage, decode};
use persona::features::{Entity, EntityState, FeatureSet, apply_with_pairs, entity_of};
use persona::simulate::model::{Action, Shoppers, catalog};

/// The allocator `persona` runs with (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: usize = 20_000;
const STREAM: &str = "persona.public.user_activity/0";

/// One Debezium insert of `table` with the row `after`, at `at`, the `n`-th change.
fn insert(table: &str, after: serde_json::Value, at: DateTime<Utc>, n: usize) -> Vec<u8> {
    let lsn = 24_000_000 + n as i64 * 64;
    let ts_ms = at.timestamp_millis();
    serde_json::to_vec(&serde_json::json!({
        "before": null,
        "after": after,
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "persona",
            "ts_ms": ts_ms, "snapshot": "false", "db": "persona",
            "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 64),
            "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000,
            "schema": "public", "table": table, "txId": 700 + n, "lsn": lsn, "xmin": null
        },
        "transaction": null, "op": "c", "ts_ms": ts_ms + 5, "ts_us": (ts_ms + 5) * 1000,
        "ts_ns": (ts_ms + 5) * 1_000_000
    }))
    .expect("a JSON value serializes")
}

/// A fixed pseudo-random number for `n`, so every run decodes the same messages.
fn hash(n: usize, salt: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), salt)
}

/// The simulator's writes as the connector would deliver them.
fn messages() -> Vec<Vec<u8>> {
    let mut shoppers = Shoppers::new(1_000, catalog(200, 7), 7);
    let start = DateTime::from_timestamp_micros(1_795_316_793_698_261).expect("a time");
    let mut out = Vec::with_capacity(MESSAGES);
    while out.len() < MESSAGES {
        let n = out.len();
        let at = start + TimeDelta::microseconds(500 * n as i64);
        let activity = |user: &str, kind: &str, product: Option<&str>| {
            serde_json::json!({
                // `gen_random_uuid()`, as the simulator's inserts: keys that differ early.
                "id": uuid::Uuid::from_u64_pair(hash(n, 1), hash(n, 2)).to_string(),
                "user_id": user, "activity_type": kind, "product_id": product,
                "activity_timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            })
        };
        match shoppers.next_action() {
            Action::Activity { user, kind, product } => {
                out.push(insert("user_activity", activity(&user, kind, product.as_deref()), at, n));
            }
            Action::AddToCart { user, product, price } => {
                let row = activity(&user, "ADD_TO_CART", Some(&product));
                out.push(insert("user_activity", row, at, n));
                let cart = serde_json::json!({
                    "user_id": user, "product_id": product, "quantity": 1,
                    "unit_price": price.to_string(), "updated_at": at.timestamp_micros()
                });
                out.push(insert("cart_items", cart, at, n + 1));
            }
            Action::Purchase { user } => {
                out.push(insert("user_activity", activity(&user, "PURCHASE", None), at, n));
            }
        }
    }
    out
}

/// Decodes every message into a change of a declared source.
fn decode_all(set: &FeatureSet, messages: &[Vec<u8>]) -> usize {
    let mut changes = 0;
    for message in messages {
        let Ok(CdcMessage::Change(event)) = decode(Some(message)) else { continue };
        if let Ok(Some(_)) = source_change(set, &event) {
            changes += 1;
        }
    }
    changes
}

/// Decodes and applies every message to in-memory states, as the applier routes them.
fn decode_and_apply(
    set: &FeatureSet,
    messages: &[Vec<u8>],
    states: &mut HashMap<(Entity, String), EntityState>,
) {
    for message in messages {
        let Ok(CdcMessage::Change(event)) = decode(Some(message)) else { continue };
        let Ok(Some(change)) = source_change(set, &event) else { continue };
        let now = change.after.as_ref().map_or_else(Utc::now, |row| row.time);
        let fed = set.entities_fed_by(change.table);
        let mut pairs = Vec::new();
        for entity in fed.iter().copied().filter(|e| *e != set.item) {
            let Some(id) = change.after.as_ref().and_then(|row| entity_of(row, entity)) else {
                continue;
            };
            let state = states.entry((entity, id.to_string())).or_default();
            let outcome = apply_with_pairs(set, entity, id, state, &change, STREAM, now, &[]);
            pairs.extend(outcome.pairs);
        }
        if !fed.contains(&set.item) {
            continue;
        }
        let mut products: Vec<String> = change
            .after
            .as_ref()
            .and_then(|row| entity_of(row, set.item))
            .map(str::to_string)
            .into_iter()
            .collect();
        for delta in &pairs {
            if !products.contains(&delta.product) {
                products.push(delta.product.clone());
            }
        }
        for id in products {
            let state = states.entry((set.item, id.clone())).or_default();
            apply_with_pairs(set, set.item, &id, state, &change, STREAM, now, &pairs);
        }
    }
}

fn ingest(c: &mut Criterion) {
    let set = FeatureSet::load(None).expect("the shipped definitions");
    let messages = messages();
    assert_eq!(decode_all(&set, &messages), messages.len(), "every message is a change");
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.sample_size(10);
    group.bench_function("decode", |b| b.iter(|| decode_all(&set, &messages)));
    group.bench_function("decode_and_apply", |b| {
        b.iter_batched(
            HashMap::new,
            |mut states| {
                decode_and_apply(&set, &messages, &mut states);
                states
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
