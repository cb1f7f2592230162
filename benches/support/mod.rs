//! The simulator's writes as Debezium envelopes, and the applier's routing of their changes to
//! in-memory states, shared by the ingest benchmarks.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use persona::decode::change::source_change;
use persona::decode::envelope::{CdcMessage, decode};
use persona::features::{Entity, EntityState, FeatureSet, apply_with_pairs, entity_of};
use persona::simulate::model::{Action, Shoppers, catalog};

/// The stream (topic partition) every change is read from.
const STREAM: &str = "persona.public.user_activity/0";

/// The simulator's model: `users` shoppers over `products` products, writing one change every
/// `spacing` of event time (0.5 ms: 2,000 changes/s, the load of issue 14's freshness goal).
pub struct Workload {
    shoppers: Shoppers,
    start: DateTime<Utc>,
    spacing: TimeDelta,
    written: usize,
    pending: Option<Vec<u8>>,
}

impl Workload {
    pub fn new(users: usize, products: usize, spacing: TimeDelta) -> Self {
        Self {
            shoppers: Shoppers::new(users, catalog(products, 7), 7),
            start: DateTime::from_timestamp_micros(1_795_316_793_698_261).expect("a time"),
            spacing,
            written: 0,
            pending: None,
        }
    }
}

/// A fixed pseudo-random number for `n`, so every run decodes the same messages.
fn hash(n: usize, salt: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), salt)
}

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

impl Iterator for Workload {
    type Item = Vec<u8>;

    /// The next message as the connector would deliver it: an activity row, and after an
    /// add-to-cart also its cart row.
    fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(cart) = self.pending.take() {
            return Some(cart);
        }
        // Numbered by message, so every message has its own position.
        let n = self.written;
        self.written += 1;
        let at = self.start + self.spacing * n as i32;
        let activity = |user: &str, kind: &str, product: Option<&str>| {
            serde_json::json!({
                // `gen_random_uuid()`, as the simulator's inserts: keys that differ early.
                "id": uuid::Uuid::from_u64_pair(hash(n, 1), hash(n, 2)).to_string(),
                "user_id": user, "activity_type": kind, "product_id": product,
                "activity_timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            })
        };
        Some(match self.shoppers.next_action() {
            Action::Activity { user, kind, product } => {
                insert("user_activity", activity(&user, kind, product.as_deref()), at, n)
            }
            Action::AddToCart { user, product, price } => {
                let cart = serde_json::json!({
                    "user_id": user, "product_id": product, "quantity": 1,
                    "unit_price": price.to_string(), "updated_at": at.timestamp_micros()
                });
                self.pending = Some(insert("cart_items", cart, at, n + 1));
                self.written += 1;
                insert("user_activity", activity(&user, "ADD_TO_CART", Some(&product)), at, n)
            }
            Action::Purchase { user } => {
                insert("user_activity", activity(&user, "PURCHASE", None), at, n)
            }
        })
    }
}

/// States by entity and id, as the applier keeps them between its Redis round trips.
pub type States = HashMap<(Entity, String), EntityState>;

/// Decodes `message` into a change of a declared source; false when it is none.
#[allow(dead_code, reason = "each benchmark uses its own part of this module")]
pub fn decodes(set: &FeatureSet, message: &[u8]) -> bool {
    let Ok(CdcMessage::Change(event)) = decode(Some(message)) else { return false };
    matches!(source_change(set, &event), Ok(Some(_)))
}

/// Decodes and applies `message` to `states`, as the applier routes it: users first, then the
/// products with the co-occurrence pairs the users' changes imply.
pub fn decode_and_apply(set: &FeatureSet, message: &[u8], states: &mut States) {
    let Ok(CdcMessage::Change(event)) = decode(Some(message)) else { return };
    let Ok(Some(change)) = source_change(set, &event) else { return };
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
        return;
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
