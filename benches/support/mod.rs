//! The simulator's writes as Debezium envelopes, and the applier's routing of their changes to
//! in-memory states, shared by the ingest benchmarks.

use std::collections::{BTreeMap, HashMap, VecDeque};

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
    /// Changes of the statement being written, each a message of its own.
    pending: VecDeque<Pending>,
    /// The cart rows each user has, by product, as the simulator's statements leave them.
    carts: HashMap<String, BTreeMap<String, serde_json::Value>>,
    orders: u64,
    /// The rows' times are whole multiples of it.
    time_unit_us: u64,
}

impl Workload {
    pub fn new(users: usize, products: usize, spacing: TimeDelta) -> Self {
        Self {
            shoppers: Shoppers::new(users, catalog(products, 7), 7),
            start: DateTime::from_timestamp_micros(1_795_316_793_698_261).expect("a time"),
            spacing,
            written: 0,
            pending: VecDeque::new(),
            carts: HashMap::new(),
            orders: 0,
            time_unit_us: std::env::var("PERSONA_BENCH_TIME_UNIT_US")
                .ok()
                .and_then(|unit| unit.parse().ok())
                .unwrap_or(1)
                .max(1),
        }
    }
}

/// A change waiting for its message: its table, before and after images, and its statement's
/// time.
type Pending = (&'static str, Option<serde_json::Value>, Option<serde_json::Value>, DateTime<Utc>);

/// A fixed pseudo-random number for `n`, so every run decodes the same messages.
fn hash(n: usize, salt: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), salt)
}

/// One Debezium change of `table` from the row `before` to `after` (an insert without `before`,
/// a delete without `after`), at `at`, the `n`-th change.
fn change(
    table: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    at: DateTime<Utc>,
    n: usize,
) -> Vec<u8> {
    let lsn = 24_000_000 + n as i64 * 64;
    let ts_ms = at.timestamp_millis();
    let op = match (&before, &after) {
        (None, _) => "c",
        (Some(_), Some(_)) => "u",
        (Some(_), None) => "d",
    };
    serde_json::to_vec(&serde_json::json!({
        "before": before,
        "after": after,
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "persona",
            "ts_ms": ts_ms, "snapshot": "false", "db": "persona",
            "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 64),
            "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000,
            "schema": "public", "table": table, "txId": 700 + n, "lsn": lsn, "xmin": null
        },
        "transaction": null, "op": op, "ts_ms": ts_ms + 5, "ts_us": (ts_ms + 5) * 1000,
        "ts_ns": (ts_ms + 5) * 1_000_000
    }))
    .expect("a JSON value serializes")
}

fn micros(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Workload {
    /// The changes the simulator's statements make for `action`, queued in `pending`.
    fn queue(&mut self, action: Action, at: DateTime<Utc>, n: usize) {
        let activity = |user: &str, kind: &str, product: Option<&str>| {
            serde_json::json!({
                // `gen_random_uuid()`, as the simulator's inserts: keys that differ early.
                "id": uuid::Uuid::from_u64_pair(hash(n, 1), hash(n, 2)).to_string(),
                "user_id": user, "activity_type": kind, "product_id": product,
                "activity_timestamp": micros(at)
            })
        };
        match action {
            Action::Activity { user, kind, product } => {
                let row = activity(&user, kind, product.as_deref());
                self.pending.push_back(("user_activity", None, Some(row), at));
            }
            Action::AddToCart { user, product, price } => {
                let row = activity(&user, "ADD_TO_CART", Some(&product));
                self.pending.push_back(("user_activity", None, Some(row), at));
                // INSERT … ON CONFLICT DO UPDATE: a product already in the cart is an update.
                let cart = self.carts.entry(user.clone()).or_default();
                let before = cart.get(&product).cloned();
                let quantity =
                    before.as_ref().map_or(0, |row| row["quantity"].as_i64().unwrap_or(0));
                let after = serde_json::json!({
                    "user_id": user, "product_id": product, "quantity": quantity + 1,
                    "unit_price": price.to_string(), "updated_at": at.timestamp_micros()
                });
                cart.insert(product, after.clone());
                self.pending.push_back(("cart_items", before, Some(after), at));
            }
            Action::Purchase { user } => {
                // The cart's rows deleted and ordered, in one statement.
                for (product, row) in self.carts.remove(&user).unwrap_or_default() {
                    self.orders += 1;
                    let quantity = row["quantity"].as_i64().unwrap_or(1);
                    let price: f64 =
                        row["unit_price"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0.0);
                    let order = serde_json::json!({
                        "id": self.orders, "user_id": user, "product_id": product,
                        "quantity": quantity, "amount": format!("{:.2}", price * quantity as f64),
                        "status": "paid", "created_at": micros(at)
                    });
                    self.pending.push_back(("cart_items", Some(row), None, at));
                    self.pending.push_back(("orders", None, Some(order), at));
                }
            }
        }
    }
}

impl Iterator for Workload {
    type Item = Vec<u8>;

    /// The next message as the connector would deliver it: the simulator's next statement's
    /// changes, one at a time.
    fn next(&mut self) -> Option<Vec<u8>> {
        while self.pending.is_empty() {
            // Microseconds into the spacing, as `now()` stamps the simulator's rows: times at
            // whole multiples of the spacing would compress better than the simulator's do.
            let spacing_us = self.spacing.num_microseconds().unwrap_or(1).max(1) as u64;
            let jitter = hash(self.written, 11) % spacing_us;
            let at = self.start
                + self.spacing * self.written as i32
                + TimeDelta::microseconds(jitter as i64);
            let at = at
                - TimeDelta::microseconds(
                    at.timestamp_subsec_micros() as i64 % self.time_unit_us as i64,
                );
            let action = self.shoppers.next_action();
            self.queue(action, at, self.written);
        }
        let (table, before, after, at) = self.pending.pop_front()?;
        // Numbered by message, so every message has its own position.
        let n = self.written;
        self.written += 1;
        Some(change(table, before, after, at, n))
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
    apply_message(set, message, states, |_, _| {});
}

/// [`decode_and_apply`], calling `touched` with each entity it applied the change to.
#[allow(dead_code, reason = "each benchmark uses its own part of this module")]
pub fn apply_message(
    set: &FeatureSet,
    message: &[u8],
    states: &mut States,
    mut touched: impl FnMut(Entity, &str),
) {
    let Ok(CdcMessage::Change(event)) = decode(Some(message)) else { return };
    let Ok(Some(change)) = source_change(set, &event) else { return };
    // A delete's entities are its before image's.
    let Some(row) = change.after.as_ref().or(change.before.as_ref()) else { return };
    // The engine's clock, read once per batch; here the row's own time, so nothing is late.
    let now_us = row.time_us;
    let fed = set.entities_fed_by(change.table);
    let mut pairs = Vec::new();
    for entity in fed.iter().copied().filter(|e| *e != set.item) {
        let Some(id) = entity_of(row, entity) else {
            continue;
        };
        let state = states.entry((entity, id.to_string())).or_default();
        let outcome = apply_with_pairs(set, entity, id, state, &change, STREAM, now_us, &[]);
        touched(entity, id);
        pairs.extend(outcome.pairs);
    }
    if !fed.contains(&set.item) {
        return;
    }
    let mut products: Vec<String> =
        entity_of(row, set.item).map(str::to_string).into_iter().collect();
    for delta in &pairs {
        if !products.iter().any(|product| *product == delta.product) {
            products.push(delta.product.to_string());
        }
    }
    for id in products {
        let state = states.entry((set.item, id.clone())).or_default();
        apply_with_pairs(set, set.item, &id, state, &change, STREAM, now_us, &pairs);
        touched(set.item, &id);
    }
}
