//! Feature state storage: a bounded in-process moka cache (L1) in front of Redis (L2, through
//! fred). Redis holds the authoritative state; L1 makes reads cheap and keeps serving, marked
//! stale, while Redis is unreachable.
//!
//! - Reads: L1, else Redis (one `GET` per key even when many requests miss at once), else an
//!   answer marked unavailable. A Redis error never fails a request.
//! - Writes (from ingest only): one Redis pipeline per batch, then L1. The ingest loop retries a
//!   failed write and does not move its offsets meanwhile, so nothing is lost.
//! - L1 keeps the highest `rev` it has seen for a key, so a slow reader can never put an older
//!   state over a newer one written by ingest.
//! - Every write also publishes `[[key, rev], …]` on `<key_prefix>:l1-invalidate` (in the same
//!   pipeline, after the SETs). Every instance drops L1 entries older than that, so a replica
//!   that did not consume a user's partition serves the new state on its next read instead of
//!   after `cache.ttl`. Messages missed while the subscription is down are covered by the TTL.

mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, RedisConfig};
use crate::features::UserState;
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis command failed: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis is unreachable")]
    Unavailable,
    #[error("cannot encode state for {key}: {source}")]
    Encode { key: String, source: serde_json::Error },
}

/// What L1 holds for a user: the state, or the fact that Redis had none.
#[derive(Debug)]
pub struct CachedUser {
    pub state: Option<UserState>,
}

impl CachedUser {
    fn rev(&self) -> u64 {
        self.state.as_ref().map_or(0, |state| state.rev)
    }
}

/// How current a read answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// From L1 or Redis while Redis is reachable.
    Live,
    /// From L1 while Redis is unreachable: may lag behind the source.
    Stale,
    /// Neither L1 nor Redis could answer.
    Unavailable,
}

pub struct UserRead {
    pub user: Option<Arc<CachedUser>>,
    pub freshness: Freshness,
}

pub struct FeatureStore {
    redis: Pool,
    subscriber: fred::clients::SubscriberClient,
    invalidation_channel: String,
    l1: Cache<String, Arc<CachedUser>>,
    key_prefix: String,
    state_ttl_secs: i64,
    command_timeout: Duration,
    redis_up: AtomicBool,
}

impl FeatureStore {
    /// Connects to Redis. With `required_to_start`, an unreachable Redis is an error; otherwise
    /// persona starts and fred keeps reconnecting in the background.
    pub async fn connect(redis: &RedisConfig, cache: &CacheConfig) -> Result<Self, StoreError> {
        let pool = redis::build_pool(redis)?;
        let subscriber = redis::build_subscriber(redis)?;
        let connected = redis::connect(&pool, redis.command_timeout * 4).await;
        if !connected && redis.required_to_start {
            return Err(StoreError::Unavailable);
        }
        if !connected {
            tracing::warn!("redis unreachable at start; serving without it until it comes back");
        }
        Ok(Self::with_clients(pool, subscriber, redis, cache, connected))
    }

    fn with_clients(
        pool: Pool,
        subscriber: fred::clients::SubscriberClient,
        redis: &RedisConfig,
        cache: &CacheConfig,
        up: bool,
    ) -> Self {
        let l1 = Cache::builder()
            .max_capacity(cache.max_bytes)
            .weigher(|key: &String, value: &Arc<CachedUser>| {
                let bytes = key.len() + value.state.as_ref().map_or(16, UserState::approx_bytes);
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(cache.ttl)
            .build();
        Self {
            redis: pool,
            subscriber,
            invalidation_channel: format!("{}:l1-invalidate", redis.key_prefix),
            l1,
            key_prefix: redis.key_prefix.clone(),
            state_ttl_secs: i64::try_from(redis.state_ttl.as_secs()).unwrap_or(i64::MAX),
            command_timeout: redis.command_timeout,
            redis_up: AtomicBool::new(up),
        }
    }

    pub fn user_key(&self, user_id: &str) -> String {
        format!("{}:user:{user_id}", self.key_prefix)
    }

    pub fn redis_is_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    fn note_redis<T>(&self, op: &'static str, result: &Result<T, fred::error::Error>) {
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

    /// Reads a user's state for the API. Never fails: the answer says how fresh it is.
    pub async fn read_user(&self, user_id: &str) -> UserRead {
        let key = self.user_key(user_id);
        if let Some(user) = self.l1.get(&key).await {
            metrics::counter!(telemetry::CACHE_LOOKUPS, "tier" => "l1").increment(1);
            let freshness = if self.redis_is_up() { Freshness::Live } else { Freshness::Stale };
            return UserRead { user: Some(user), freshness };
        }
        if !self.redis_is_up() {
            // Waiting for a timeout per request would queue callers behind the key lock; the
            // health probe notices when Redis is back.
            metrics::counter!(telemetry::CACHE_LOOKUPS, "tier" => "none").increment(1);
            return UserRead { user: None, freshness: Freshness::Unavailable };
        }
        // Calls on one key are serialized: the first loads from Redis, the others find it in L1.
        let key = &key;
        let loaded = self
            .l1
            .entry(key.to_string())
            .and_try_compute_with(|existing| async move {
                if existing.is_some() {
                    return Ok(Op::Nop);
                }
                let state = self.fetch(key).await?;
                metrics::counter!(telemetry::CACHE_LOOKUPS, "tier" => "redis").increment(1);
                Ok::<_, StoreError>(Op::Put(Arc::new(CachedUser { state })))
            })
            .await;
        match loaded {
            Ok(CompResult::Inserted(entry) | CompResult::ReplacedWith(entry)) => {
                UserRead { user: Some(entry.into_value()), freshness: Freshness::Live }
            }
            Ok(CompResult::Unchanged(entry)) => {
                metrics::counter!(telemetry::CACHE_LOOKUPS, "tier" => "l1").increment(1);
                UserRead { user: Some(entry.into_value()), freshness: Freshness::Live }
            }
            Ok(CompResult::StillNone(_) | CompResult::Removed(_)) | Err(_) => {
                metrics::counter!(telemetry::CACHE_LOOKUPS, "tier" => "none").increment(1);
                UserRead { user: None, freshness: Freshness::Unavailable }
            }
        }
    }

    async fn fetch(&self, key: &str) -> Result<Option<UserState>, StoreError> {
        let result: Result<Option<String>, _> = self.redis.get(key).await;
        self.note_redis("read", &result);
        Ok(result?.and_then(|json| self.decode_state(key, &json)))
    }

    fn decode_state(&self, key: &str, json: &str) -> Option<UserState> {
        match serde_json::from_str(json) {
            Ok(state) => Some(state),
            Err(error) => {
                // Only persona writes these keys; an unreadable one is rebuilt from new events.
                tracing::error!(key, error = %error, "unreadable feature state in redis; starting it afresh");
                None
            }
        }
    }

    /// Loads the authoritative states of `user_ids` from Redis (one `MGET`), for ingest to apply
    /// changes to. Users without state are absent from the map.
    pub async fn load_for_write(
        &self,
        user_ids: &[String],
    ) -> Result<HashMap<String, UserState>, StoreError> {
        if user_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let keys: Vec<String> = user_ids.iter().map(|user| self.user_key(user)).collect();
        let result: Result<Vec<Option<String>>, _> = if keys.len() == 1 {
            self.redis.get::<Option<String>, _>(&keys[0]).await.map(|value| vec![value])
        } else {
            self.redis.mget(keys.clone()).await
        };
        self.note_redis("read", &result);
        let values = result?;
        Ok(user_ids
            .iter()
            .zip(keys.iter().zip(values))
            .filter_map(|(user, (key, value))| {
                value.and_then(|json| self.decode_state(key, &json)).map(|s| (user.clone(), s))
            })
            .collect())
    }

    /// Writes states to Redis in one pipeline and, once acknowledged, to L1.
    pub async fn write_users(&self, states: Vec<(String, UserState)>) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(states.len());
        for (user, state) in states {
            let key = self.user_key(&user);
            let json = serde_json::to_string(&state)
                .map_err(|source| StoreError::Encode { key: key.clone(), source })?;
            encoded.push((key, json, state));
        }
        let pipeline = self.redis.next().pipeline();
        for (key, json, _) in &encoded {
            let _: () = pipeline
                .set(key, json.as_str(), Some(Expiration::EX(self.state_ttl_secs)), None, false)
                .await?;
        }
        let announced: Vec<(&str, u64)> =
            encoded.iter().map(|(key, _, state)| (key.as_str(), state.rev)).collect();
        let announcement = serde_json::to_string(&announced).map_err(|source| {
            StoreError::Encode { key: self.invalidation_channel.clone(), source }
        })?;
        let _: () = pipeline.publish(&self.invalidation_channel, announcement).await?;
        let results = pipeline.try_all::<Value>().await;
        let first_error = results.into_iter().find_map(Result::err);
        let outcome = first_error.map_or(Ok(()), Err);
        self.note_redis("write", &outcome);
        outcome?;
        metrics::counter!(telemetry::STATE_WRITES).increment(encoded.len() as u64);

        for (key, _, state) in encoded {
            let fresh = Arc::new(CachedUser { state: Some(state) });
            self.l1
                .entry(key)
                .and_compute_with(|existing| async move {
                    match existing {
                        Some(entry) if entry.value().rev() >= fresh.rev() => Op::Nop,
                        _ => Op::Put(fresh),
                    }
                })
                .await;
        }
        Ok(())
    }

    /// Drops L1 entries older than the revisions another instance announced.
    async fn invalidate(&self, announcement: &str) {
        let Ok(announced) = serde_json::from_str::<Vec<(String, u64)>>(announcement) else {
            tracing::warn!("ignoring a malformed L1 invalidation message");
            return;
        };
        for (key, rev) in announced {
            let outcome = self
                .l1
                .entry(key)
                .and_compute_with(|existing| async move {
                    match existing {
                        Some(entry) if entry.value().rev() < rev => Op::Remove,
                        _ => Op::Nop,
                    }
                })
                .await;
            if matches!(outcome, CompResult::Removed(_)) {
                metrics::counter!(telemetry::L1_INVALIDATIONS).increment(1);
            }
        }
    }

    /// Subscribes to the invalidation channel and applies what other instances announce.
    pub fn spawn_invalidation_listener(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let _connection = store.subscriber.connect();
            let _resubscribe = store.subscriber.manage_subscriptions();
            let mut messages = store.subscriber.message_rx();
            // Until the first subscription succeeds (Redis may be down at start), retry.
            loop {
                let subscribed = tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = store.subscriber.subscribe(store.invalidation_channel.as_str()) => result,
                };
                match subscribed {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::debug!(error = %error, "cannot subscribe to L1 invalidations yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => break,
                    message = messages.recv() => message,
                };
                match message {
                    Ok(message) => {
                        if let Some(text) = message.value.as_str() {
                            store.invalidate(&text).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "L1 invalidations dropped; entries expire by TTL");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            let _ = store.subscriber.quit().await;
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let result: Result<(), fred::error::Error> =
            match tokio::time::timeout(self.command_timeout, self.redis.ping::<()>(None)).await {
                Ok(result) => result,
                Err(_) => {
                    Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "ping timed out"))
                }
            };
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
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {
                        let was_up = store.redis_is_up();
                        if store.ping().await.is_ok() && !was_up {
                            tracing::info!("redis reachable again");
                        }
                    }
                }
            }
        })
    }
}
