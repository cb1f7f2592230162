//! The shares a partition owner keeps between batches (`engine::owned`), against a real Redis of the
//! test's own: batches applied with them write exactly what batches reading every share from
//! Redis write, and nothing kept outlives a switch of state generation.

use crate::common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{OwnRedis, free_port, unique};
use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::engine::{Applier, OwnedBudget, OwnedStates};
use persona::features::{EntityState, FeatureSet};
use persona::store::{EntityRef, FeatureStore};
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;
use std::sync::Mutex;

const TOPIC: &str = "persona.public.user_activity";
const PARTITION: i32 = 0;

async fn store(redis: &OwnRedis, prefix: &str) -> FeatureStore {
    let config = RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.into(),
        ..RedisConfig::default()
    };
    FeatureStore::connect(&config, &CacheConfig::default()).await.expect("connect")
}

/// The `n`-th activity row of `user` as Debezium delivers its insert, at offset `n`.
fn activity(
    n: i64,
    user: &str,
    kind: &str,
    product: Option<&str>,
    at: DateTime<Utc>,
) -> OwnedMessage {
    let lsn = 40_000_000 + n * 64;
    let ts_ms = at.timestamp_millis();
    let payload = serde_json::json!({
        "before": null,
        "after": {
            "id": uuid::Uuid::from_u64_pair(7, n as u64).to_string(),
            "user_id": user, "activity_type": kind, "product_id": product,
            "activity_timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        },
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "persona",
            "ts_ms": ts_ms, "snapshot": "false", "db": "persona",
            "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 64),
            "schema": "public", "table": "user_activity", "txId": 900 + n, "lsn": lsn
        },
        "op": "c", "ts_ms": ts_ms + 5
    });
    OwnedMessage::new(
        Some(serde_json::to_vec(&payload).expect("serializes")),
        Some(user.as_bytes().to_vec()),
        TOPIC.to_string(),
        Timestamp::NotAvailable,
        PARTITION,
        n,
        None,
    )
}

/// A shopper session: three users viewing, clicking and buying among ten products, so that
/// batches touch users, products and their co-occurrence pairs again and again, also products
/// a batch reaches only through the pairs of a user's session.
fn session(now: DateTime<Utc>) -> Vec<OwnedMessage> {
    let users = ["u-a", "u-b", "u-c"];
    let products = ["p-0", "p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "p-7", "p-8", "p-9"];
    (0..60)
        .map(|n: i64| {
            let user = users[(n as usize * 7) % users.len()];
            let product = products[(n as usize * 3 + n as usize / 5) % products.len()];
            let kind = ["VIEW_PRODUCT", "CLICK", "VIEW_PRODUCT", "ADD_TO_CART", "PURCHASE"]
                [(n as usize) % 5];
            let product = (kind != "PURCHASE").then_some(product);
            activity(n, user, kind, product, now - TimeDelta::seconds(60 - n))
        })
        .collect()
}

/// Applies `messages` in batches of `batch`, with the shares kept in `owned` (or none).
async fn apply_all(
    store: &FeatureStore,
    set: &FeatureSet,
    messages: &[OwnedMessage],
    batch: usize,
    owned: Option<&Mutex<OwnedStates>>,
) {
    apply_in_writes_of(store, set, messages, batch, 1_000, owned).await;
}

/// [`apply_all`], each batch written in writes of at most `write_max_entities` entities.
async fn apply_in_writes_of(
    store: &FeatureStore,
    set: &FeatureSet,
    messages: &[OwnedMessage],
    batch: usize,
    write_max_entities: usize,
    owned: Option<&Mutex<OwnedStates>>,
) {
    let topics = [TOPIC.to_string()];
    let applier = Applier {
        features: set,
        store,
        topics: &topics,
        dead_letters: None,
        fence: None,
        owned,
        write_max_entities,
    };
    for batch in messages.chunks(batch) {
        applier.apply_batch(TOPIC, PARTITION, batch).await.expect("applied");
    }
}

/// Every share of the session's users and products, as Redis holds them.
async fn shares(store: &FeatureStore, set: &FeatureSet) -> Vec<(String, Option<EntityState>)> {
    let stream = format!("user_activity/{PARTITION}");
    let entities: Vec<EntityRef> = ["u-a", "u-b", "u-c"]
        .map(EntityRef::user)
        .into_iter()
        .chain((0..10).map(|n| EntityRef::new(set.item, format!("p-{n}"))))
        .collect();
    let read = store.read_uncached(&entities).await.expect("redis answers");
    entities.iter().map(|entity| format!("{} {stream}", entity.cache_key())).zip(read).collect()
}

fn assert_same_shares(
    written: &[(String, Option<EntityState>)],
    expected: &[(String, Option<EntityState>)],
    context: &str,
) {
    assert_eq!(written.len(), expected.len());
    for ((key, share), (_, reference)) in written.iter().zip(expected) {
        assert_eq!(share, reference, "{key}, {context}");
    }
}

/// What the tests below compare with: a Redis of the test's own, the shipped definitions, a
/// session, and the shares batches of four write of it, reading every share from Redis.
struct Reference {
    redis: OwnRedis,
    set: FeatureSet,
    messages: Vec<OwnedMessage>,
    expected: Vec<(String, Option<EntityState>)>,
}

impl Reference {
    async fn written() -> Self {
        let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
        let set = FeatureSet::load(None).expect("shipped definitions");
        let messages = session(Utc::now());
        let reference = store(&redis, &unique("read")).await;
        apply_all(&reference, &set, &messages, 4, None).await;
        let expected = shares(&reference, &set).await;
        Self { redis, set, messages, expected }
    }
}

#[tokio::test]
async fn kept_shares_write_what_shares_read_from_redis_write() {
    let Reference { redis, set, messages, expected } = Reference::written().await;
    assert!(expected.iter().all(|(_, share)| share.is_some()), "{expected:?}");

    // Kept whole, and kept under a budget so small every share is forgotten after each batch.
    for budget in [256 << 20, 1] {
        let kept = store(&redis, &unique("kept")).await;
        let owned = Mutex::new(OwnedStates::new(OwnedBudget::new(budget)));
        apply_all(&kept, &set, &messages, 4, Some(&owned)).await;
        assert_same_shares(&shares(&kept, &set).await, &expected, &format!("budget {budget}"));
        if budget == 1 {
            assert!(owned.lock().expect("lock").is_empty());
        } else {
            assert!(!owned.lock().expect("lock").is_empty(), "nothing was kept");
        }
    }
}

/// One batch of the whole session cut into writes of two entities (a view names its user and
/// its product: about one change a write) writes what batches of four write, in one write each.
#[tokio::test]
async fn a_batch_cut_into_small_writes_writes_what_small_batches_write() {
    let Reference { redis, set, messages, expected } = Reference::written().await;
    for write_max_entities in [1_000, 2] {
        let cut = store(&redis, &unique("cut")).await;
        let owned = Mutex::new(OwnedStates::new(OwnedBudget::new(256 << 20)));
        let scripts_before = redis.command_calls("evalsha");
        apply_in_writes_of(&cut, &set, &messages, messages.len(), write_max_entities, Some(&owned))
            .await;
        let writes = redis.command_calls("evalsha") - scripts_before;
        if write_max_entities == 2 {
            assert!(writes >= 30, "{} changes written in {writes} writes", messages.len());
        } else {
            assert_eq!(writes, 1, "a batch within the bound is one write");
        }
        let context = format!("writes of {write_max_entities} entities");
        assert_same_shares(&shares(&cut, &set).await, &expected, &context);
    }
}

#[tokio::test]
async fn shares_kept_are_forgotten_when_the_store_switches_generation() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let set = FeatureSet::load(None).expect("shipped definitions");
    let store = store(&redis, &unique("generations")).await;
    let owned = Mutex::new(OwnedStates::new(OwnedBudget::new(256 << 20)));
    let now = Utc::now();
    let clicks = |from: i64| -> Vec<OwnedMessage> {
        (from..from + 3)
            .map(|n| activity(n, "u-g", "CLICK", None, now - TimeDelta::seconds(10 - n)))
            .collect()
    };
    store.use_generation("g1");
    apply_all(&store, &set, &clicks(0), 2, Some(&owned)).await;
    let first = store.read_uncached(&[EntityRef::user("u-g")]).await;
    assert!(!owned.lock().expect("lock").is_empty(), "nothing was kept");

    // A new generation starts empty (a rebuild fills it, or the partitions are replayed into
    // it): what the owner kept of the old one must not be written into it.
    store.use_generation("g2");
    apply_all(&store, &set, &clicks(3), 2, Some(&owned)).await;
    let second = store.read_uncached(&[EntityRef::user("u-g")]).await;
    let applied = |read: Option<Vec<Option<EntityState>>>| {
        read.and_then(|states| states.into_iter().next().flatten()).map(|state| state.rev)
    };
    // `rev` counts the changes a share applied.
    assert_eq!(applied(first), Some(3));
    assert_eq!(applied(second), Some(3), "the new generation holds only what was applied to it");
}

/// Debezium's TRUNCATE of the activity table as delivered on `partition`, at `lsn`.
fn truncate_on(partition: i32, offset: i64, lsn: i64, at: DateTime<Utc>) -> OwnedMessage {
    let ts_ms = at.timestamp_millis();
    let payload = serde_json::json!({
        "before": null, "after": null,
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "persona",
            "ts_ms": ts_ms, "snapshot": "false", "db": "persona",
            "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 64),
            "schema": "public", "table": "user_activity", "txId": 7_000, "lsn": lsn
        },
        "op": "t", "ts_ms": ts_ms + 5
    });
    let value = serde_json::to_vec(&payload).expect("serializes");
    OwnedMessage::new(
        Some(value),
        None,
        TOPIC.into(),
        Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

/// A batch whose shares the owner keeps, with the marks its stream's last batch left, reads
/// nothing: its write is the one round trip.
#[tokio::test]
async fn a_batch_of_kept_shares_is_one_round_trip() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let set = FeatureSet::load(None).expect("shipped definitions");
    let store = store(&redis, &unique("one-trip")).await;
    let owned = Mutex::new(OwnedStates::new(OwnedBudget::new(256 << 20)));
    let now = Utc::now();
    let clicks: Vec<OwnedMessage> = (0..6)
        .map(|n| activity(n, "u-k", "CLICK", None, now - TimeDelta::seconds(10 - n)))
        .collect();
    let monitor = redis.monitor();
    apply_all(&store, &set, &clicks[..2], 2, Some(&owned)).await;
    let first = monitor.sent();
    assert!(first.iter().any(|command| command == "HGET"), "the first batch reads: {first:?}");
    let monitor = redis.monitor();
    apply_all(&store, &set, &clicks[2..], 2, Some(&owned)).await;
    assert_eq!(monitor.sent(), ["EVALSHA", "EVALSHA"], "two batches of kept shares");
    let read = store.read_uncached(&[EntityRef::user("u-k")]).await;
    let rev = read.and_then(|states| states.into_iter().next().flatten()).map(|state| state.rev);
    assert_eq!(rev, Some(6), "every click applied once");
}

/// Partition 1 records a TRUNCATE of the table between two batches of partition 0, whose owner
/// keeps its shares and the marks its last batch saw: its next batch, applied under marks
/// without that TRUNCATE, must not land; applied again under the new ones, it writes what an
/// owner reading every mark and share from Redis writes.
#[tokio::test]
async fn a_batch_applied_before_a_truncate_it_did_not_know_of_is_applied_again() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let set = FeatureSet::load(None).expect("shipped definitions");
    let now = Utc::now();
    let click = |n: i64| activity(n, "u-t", "CLICK", None, now - TimeDelta::seconds(10 - n));
    // Between the second click and the third in the log.
    let truncate = truncate_on(1, 0, 40_000_000 + 3 * 64, now - TimeDelta::seconds(7));
    let topics = [TOPIC.to_string()];
    let mut written = Vec::new();
    for keep in [false, true] {
        let store = store(&redis, &unique("moved")).await;
        let owned = Mutex::new(OwnedStates::new(OwnedBudget::new(256 << 20)));
        let owned = keep.then_some(&owned);
        apply_all(&store, &set, &[click(0), click(1)], 2, owned).await;
        let other = Applier {
            features: &set,
            store: &store,
            topics: &topics,
            dead_letters: None,
            fence: None,
            owned: None,
            write_max_entities: 1_000,
        };
        other.apply_batch(TOPIC, 1, std::slice::from_ref(&truncate)).await.expect("applied");
        apply_all(&store, &set, &[click(5)], 1, owned).await;
        let read = store.read_uncached(&[EntityRef::user("u-t")]).await.expect("redis answers");
        written.push(read.into_iter().next().flatten());
    }
    let [read_every_time, kept] = &written[..] else { unreachable!() };
    assert!(read_every_time.is_some(), "the click after the TRUNCATE counts");
    assert_eq!(kept, read_every_time);
}
