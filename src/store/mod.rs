//! Feature state storage: a bounded in-process moka cache (L1) in front of Redis (L2, through
//! fred). Redis holds the authoritative state; L1 makes reads cheap and keeps serving, marked
//! stale, while Redis is unreachable.
//!
//! Layout in Redis, under the namespace `<key_prefix>:<generation>` (see [`generation`]): one hash
//! per entity, `…:user:<id>` or `…:product:<id>`, with one field per source stream
//! (`<table>/<partition>`) holding that stream's share of the entity's [`EntityState`] (see [`codec`]).
//! Each share has exactly one writer, the worker of that topic partition, so shares are
//! read-modified-written without locks even though a user is fed by several topics and a
//! product by every partition; reads merge the shares.
//!
//! - Reads: L1, else Redis (one command per key even when many requests miss at once, one
//!   pipeline for a batch), else an answer marked unavailable. A Redis error never fails a read.
//! - Writes (from ingest only, see [`write`]): one atomic script per batch, fenced by the
//!   partition owner's epoch, then L1. The ingest loop retries a failed write and does not move
//!   its offsets meanwhile, so nothing is lost.
//! - `{<key_prefix>}:<generation>:runs` holds the newest snapshot run of each table: shares of an
//!   older run are superseded (see `features::superseded`).
//! - `{<key_prefix>}:dictionaries` holds the zstd dictionaries shares are compressed with, by id,
//!   and the one writers use (see [`dictionaries`]); it outlives generations.
//! - Redis Cluster: every key but the entity hashes (partition owners, table and stream marks,
//!   overlap memory) carries the hash tag `{<key_prefix>}`, so they share one slot and one script
//!   updates them atomically; entity hashes spread over every slot. On a cluster a batch is
//!   written as one script per slot it touches (see [`slots`] for the order that keeps replays
//!   exact), and each write waits for `redis.min_replica_acks` replicas before it counts as done.
//! - Every write also publishes the shares it changed (key, stream, revision) on
//!   `{<key_prefix>}:l1-invalidate` (a sharded channel on a Redis Cluster); every
//!   instance drops older L1 copies. A read that raced with an invalidation does not cache what
//!   it read, so L1 never keeps a state older than one announced.

mod cache;
mod channels;
pub mod codec;
mod dictionaries;
mod error;
pub mod generation;
mod group;
mod marks;
mod read;
mod redis;
mod script_args;
mod slots;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, RedisConfig, StateEncoding};
use crate::features::{Entity, EntityState};
use crate::telemetry;

pub use cache::{Cached, Freshness};
use cache::{L1, Lookups};
pub use error::StoreError;
pub use marks::{MarksSeen, Runs, TableMarks};
pub use write::{Fence, Loaded};

/// An entity features are served for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRef {
    pub entity: Entity,
    pub id: String,
}

impl EntityRef {
    pub fn new(entity: Entity, id: impl Into<String>) -> Self {
        Self { entity, id: id.into() }
    }

    /// A user of the reference schema.
    pub fn user(id: impl Into<String>) -> Self {
        Self { entity: Entity::USER, id: id.into() }
    }

    /// A product of the reference schema.
    pub fn product(id: impl Into<String>) -> Self {
        Self { entity: Entity::PRODUCT, id: id.into() }
    }

    /// This entity's share of the state fed by `stream`.
    pub fn share(&self, stream: impl Into<String>) -> StateKey {
        StateKey { entity: self.clone(), stream: stream.into() }
    }

    /// The entity's name in L1 and in change notifications (`user:<id>`, `product:<id>`).
    pub fn cache_key(&self) -> String {
        // Built by hand: `format!` costs a visible share of a cached read.
        let label = self.entity.label();
        let mut key = String::with_capacity(label.len() + 1 + self.id.len());
        key.push_str(label);
        key.push(':');
        key.push_str(&self.id);
        key
    }
}

/// One share of an entity's state: what one source stream (`<table>/<partition>`) contributed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey {
    pub entity: EntityRef,
    pub stream: String,
}

/// One entity's state as read for the API.
#[derive(Debug, Clone)]
pub struct EntityRead {
    pub state: Option<Arc<EntityState>>,
    pub freshness: Freshness,
}

/// Announced on the invalidation channel when a snapshot run began: every L1 copy may be stale.
const CLEAR_ALL: &str = "*";

/// Change notifications kept for slow live-page listeners before they lag.
const CHANGES_BUFFERED: usize = 4096;
/// Between attempts to subscribe to L1 invalidations while Redis does not take it.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);

pub struct FeatureStore {
    redis: Pool,
    /// Connected to a Redis Cluster: a batch's keys span slots.
    clustered: bool,
    /// Replicas that must have a write before it is acknowledged (`WAIT`), so that a failover
    /// does not lose it.
    min_replica_acks: u32,
    subscriber: fred::clients::SubscriberClient,
    /// Where writes announce the shares they changed (see [`channels`]).
    channels: channels::Channels,
    l1: L1,
    key_prefix: String,
    namespace: std::sync::RwLock<String>,
    /// Bumped by every switch of generation (see [`Self::generation_epoch`]).
    generation_epoch: std::sync::atomic::AtomicU64,
    state_ttl_secs: i64,
    state_encoding: crate::config::StateEncoding,
    command_timeout: Duration,
    redis_up: AtomicBool,
    /// Per partition (`<topic>/<partition>`), the last feature write that failed for a reason
    /// that does not pass by itself, until one of its writes succeeds again (for `/readyz`).
    write_failures: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Entities whose state changed (any instance's writes, from the announcements), for live
    /// pages.
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Bumped whenever a table mark (a snapshot run, a TRUNCATE) may have been recorded.
    marks_changed: tokio::sync::watch::Sender<u64>,
    /// `persona_cache_lookups_total` by tier, registered once: a labelled lookup per read was
    /// visible in read-path profiles.
    lookups: Lookups,
    /// Batches waiting to be flushed together on a Redis Cluster (see [`group`]).
    group: group::Group,
    /// Batches of at least this many shares are written alone (`redis.group_commit_below`).
    group_commit_below: usize,
    /// The zstd dictionaries shares are compressed with (see [`dictionaries`]).
    dictionaries: Arc<dictionaries::Dictionaries>,
}

impl FeatureStore {
    /// Connects to Redis. With `required_to_start`, Redis still unreachable after
    /// `startup_timeout` is an error; otherwise persona starts at once and fred keeps
    /// reconnecting in the background.
    pub async fn connect(redis: &RedisConfig, cache: &CacheConfig) -> Result<Self, StoreError> {
        let pool = redis::build_pool(redis)?;
        let subscriber = redis::build_subscriber(redis)?;
        let wait =
            if redis.required_to_start { redis.startup_timeout } else { redis.command_timeout * 4 };
        let connected = redis::connect(&pool, wait).await;
        if !connected && redis.required_to_start {
            return Err(StoreError::Unavailable);
        }
        if !connected {
            tracing::warn!("redis unreachable at start; serving without it until it comes back");
        }
        let clustered = pool.next().is_clustered();
        let samples = match redis.state_encoding {
            StateEncoding::Dictionary => redis.state_dictionary_samples,
            _ => 0,
        };
        let dictionaries = Arc::new(dictionaries::Dictionaries::new(&redis.key_prefix, samples));
        // Only a writer of the dictionary layout compresses with one; a reader fetches any it
        // meets.
        if redis.state_encoding == StateEncoding::Dictionary
            && connected
            && let Err(error) = dictionaries.load_current(&pool).await
        {
            // Values that name it are read once it can be read; until then writers sample.
            tracing::warn!(error = %error, "could not read the current state dictionary");
        }
        Ok(Self {
            dictionaries,
            clustered,
            min_replica_acks: redis.min_replica_acks,
            group_commit_below: redis.group_commit_below,
            redis: pool,
            subscriber,
            channels: channels::Channels::new(&redis.key_prefix, clustered),
            l1: L1::new(cache),
            key_prefix: redis.key_prefix.clone(),
            namespace: std::sync::RwLock::new(format!("{}:{}", redis.key_prefix, "g0")),
            generation_epoch: std::sync::atomic::AtomicU64::new(0),
            state_ttl_secs: i64::try_from(redis.state_ttl.as_secs()).unwrap_or(i64::MAX),
            state_encoding: redis.state_encoding,
            command_timeout: redis.command_timeout,
            redis_up: AtomicBool::new(connected),
            write_failures: std::sync::Mutex::default(),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFERED).0,
            marks_changed: tokio::sync::watch::channel(0).0,
            lookups: Lookups::register(),
            group: group::Group::default(),
        })
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The id of the zstd dictionary this instance writes shares with, once it has one (see
    /// [`dictionaries`]).
    pub fn state_dictionary(&self) -> Option<u32> {
        self.dictionaries.current().map(|dictionary| dictionary.id())
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.redis
    }

    fn namespace(&self) -> String {
        self.namespace.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Switches reads and writes to the state generation `generation` and empties L1.
    pub fn use_generation(&self, generation: &str) {
        let namespace = format!("{}:{generation}", self.key_prefix);
        *self.namespace.write().unwrap_or_else(std::sync::PoisonError::into_inner) = namespace;
        self.generation_epoch.fetch_add(1, Ordering::AcqRel);
        self.clear_l1("generation");
    }

    /// Changes whenever [`Self::use_generation`] switches: states read before belong to another
    /// generation.
    pub fn generation_epoch(&self) -> u64 {
        self.generation_epoch.load(Ordering::Acquire)
    }

    fn redis_key(&self, namespace: &str, entity: &EntityRef) -> String {
        format!("{namespace}:{}:{}", entity.entity.label(), entity.id)
    }

    /// Records how the last feature write of `partition` went: `Some` for a failure that
    /// needs someone to act.
    pub fn note_write_failure(&self, partition: String, failure: Option<String>) {
        let mut failures =
            self.write_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match failure {
            Some(failure) => failures.insert(partition, failure),
            None => failures.remove(&partition),
        };
    }

    /// The partitions whose last feature write failed for a reason that needs someone to act,
    /// each with its failure (`<topic>/<partition>: <error>`); `None` when there are none.
    pub fn write_failure(&self) -> Option<String> {
        let failures =
            self.write_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let listed: Vec<String> =
            failures.iter().map(|(partition, failure)| format!("{partition}: {failure}")).collect();
        (!listed.is_empty()).then(|| listed.join("; "))
    }

    pub fn redis_is_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    pub(crate) fn note_redis<T>(&self, op: &'static str, result: &Result<T, fred::error::Error>) {
        metrics::counter!(telemetry::REDIS_ROUND_TRIPS, "op" => op).increment(1);
        match result {
            Ok(_) => self.redis_up.store(true, Ordering::Relaxed),
            Err(error) => {
                if self.redis_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(op, error = %error, "redis unreachable; reads fall back to L1");
                }
                metrics::counter!(telemetry::REDIS_ERRORS, "op" => op).increment(1);
            }
        }
    }

    /// `namespace` with the hash tag every key but the entity hashes carries (see the module
    /// docs): `{<key_prefix>}:<generation>`.
    fn tagged(&self, namespace: &str) -> String {
        let generation = namespace.strip_prefix(self.key_prefix.as_str()).unwrap_or(namespace);
        format!("{{{}}}{generation}", self.key_prefix)
    }

    /// The table marks readers need (runs, TRUNCATEs): see `marks`.
    fn runs_key(&self, namespace: &str) -> String {
        format!("{}:runs", self.tagged(namespace))
    }

    /// How far each stream applied, which only ingest reads: apart, so reads do not fetch it.
    fn highs_key(&self, namespace: &str) -> String {
        format!("{}:highs", self.tagged(namespace))
    }

    /// Notifies of every entity whose state changed, as its [`EntityRef::cache_key`]. A
    /// receiver that falls behind gets `Lagged` and should assume anything changed.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// Wakes when a table mark (a snapshot run, a TRUNCATE) may have been recorded by any
    /// instance, or announcements may have been missed.
    pub fn watch_marks(&self) -> tokio::sync::watch::Receiver<u64> {
        self.marks_changed.subscribe()
    }

    /// Drops L1 entries older than the revisions another instance announced.
    async fn apply_announcement(&self, announcement: &str) {
        if announcement == CLEAR_ALL {
            self.clear_l1("table_marks");
            return;
        }
        let Ok(announced) = serde_json::from_str::<Vec<(String, String, u64)>>(announcement) else {
            tracing::warn!("ignoring a malformed L1 invalidation message");
            return;
        };
        for (key, stream, rev) in announced {
            let changed: Arc<str> = Arc::from(key.as_str());
            if self.l1.invalidate(key, &stream, rev).await {
                metrics::counter!(telemetry::L1_INVALIDATIONS).increment(1);
            }
            // Only now: a listener reading the entity must not find the older copy in L1. No
            // receiver (no live page open) is not an error.
            let _ = self.changes.send(changed);
        }
    }

    /// Subscribes to the invalidation channel and applies what other instances announce.
    ///
    /// Announcements published while the subscription is down are lost, so each time the
    /// subscriber connects again it subscribes anew and only then empties L1: whatever changed
    /// meanwhile is read from Redis, and what changes from then on is announced.
    pub fn spawn_invalidation_listener(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            // Taken before connecting, so the first connection is reported too.
            let mut reconnects = store.subscriber.reconnect_rx();
            let mut messages = store.subscriber.message_rx();
            let _connection = store.subscriber.connect();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    reconnect = reconnects.recv() => {
                        if matches!(reconnect, Err(RecvError::Closed)) {
                            break;
                        }
                        if !store.subscribe_invalidations(&shutdown).await {
                            break;
                        }
                        store.clear_l1("resubscribed");
                    }
                    message = messages.recv() => match message {
                        Ok(message) => {
                            if let Some(text) = message.value.as_str() {
                                store.apply_announcement(&text).await;
                            }
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "L1 invalidations dropped; emptying L1");
                            store.clear_l1("lagged");
                        }
                        Err(RecvError::Closed) => break,
                    },
                }
            }
            let _ = store.subscriber.quit().await;
        })
    }

    /// Subscribes to the invalidation channel, retrying until Redis takes it (it may be down, or
    /// still loading its data after a restart); `false` on shutdown.
    async fn subscribe_invalidations(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let subscribed = tokio::select! {
                () = shutdown.cancelled() => return false,
                result = self.subscribe_channel() => result,
            };
            match subscribed {
                Ok(()) => return true,
                Err(error) => {
                    tracing::debug!(error = %error, "cannot subscribe to L1 invalidations yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
                    }
                }
            }
        }
    }

    /// On a Redis Cluster, the invalidation channels are sharded ones (`SSUBSCRIBE`), one call
    /// each (they are in different slots).
    async fn subscribe_channel(&self) -> Result<(), fred::error::Error> {
        if !self.clustered {
            return self.subscriber.subscribe(self.channels.main()).await;
        }
        let subscribed = self.channels.all().map(|channel| self.subscriber.ssubscribe(channel));
        futures::future::try_join_all(subscribed).await.map(drop)
    }

    fn clear_l1(&self, reason: &'static str) {
        self.l1.clear();
        // Whatever emptied L1 whole may have been a table mark (or hidden one).
        self.marks_changed.send_modify(|seen| *seen += 1);
        metrics::counter!(telemetry::L1_CLEARS, "reason" => reason).increment(1);
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result: Result<(), fred::error::Error> =
            match tokio::time::timeout(self.command_timeout, self.redis.ping::<()>(None)).await {
                Ok(result) => result,
                Err(_) => {
                    Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "ping timed out"))
                }
            };
        note_latency("ping", started);
        self.note_redis("ping", &result);
        Ok(result?)
    }

    /// Pings Redis every `interval` so the health flag recovers (and fails) while idle.
    pub fn spawn_health_probe(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = crate::periodic::Ticks::new(interval, shutdown);
            while ticks.next().await {
                let was_up = store.redis_is_up();
                if store.ping().await.is_ok() && !was_up {
                    tracing::info!("redis reachable again");
                }
            }
        })
    }
}

/// Time of one Redis round trip (pipeline or transaction), including a failed one.
fn note_latency(op: &'static str, started: Instant) {
    metrics::histogram!(telemetry::REDIS_COMMAND_SECONDS, "op" => op)
        .record(started.elapsed().as_secs_f64());
}
