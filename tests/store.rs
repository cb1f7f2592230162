//! The feature store against a real Redis of the test's own (so its command counts are ours).

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::{OwnRedis, free_port, unique};
use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::{Activity, ActivityChange, UserState, apply};
use persona::store::{FeatureStore, Freshness};

async fn store(redis: &OwnRedis, prefix: &str) -> FeatureStore {
    store_with_cache(redis, prefix, CacheConfig::default()).await
}

async fn store_with_cache(redis: &OwnRedis, prefix: &str, cache: CacheConfig) -> FeatureStore {
    let config = RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.into(),
        ..RedisConfig::default()
    };
    FeatureStore::connect(&config, &cache).await.expect("connect")
}

fn one_click(user: &str) -> UserState {
    let click = Activity {
        id: unique("a"),
        user_id: user.into(),
        activity_type: "CLICK".into(),
        product_id: None,
        at: Utc::now(),
    };
    apply(UserState::default(), &ActivityChange::Upsert(click), Utc::now())
}

#[tokio::test]
async fn concurrent_l1_misses_read_redis_once_per_key() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let writer = store(&redis, &prefix).await;
    let state = one_click("u1");
    writer.write_users(vec![("u1".into(), state.clone())]).await.expect("write");

    // Another instance, with a cold L1.
    let reader = Arc::new(store(&redis, &prefix).await);
    let gets_before = redis.command_calls("get");
    let reads = (0..50).map(|_| {
        let reader = Arc::clone(&reader);
        tokio::spawn(async move { reader.read_user("u1").await })
    });
    for read in futures::future::join_all(reads).await {
        let read = read.expect("join");
        assert_eq!(read.freshness, Freshness::Live);
        let user = read.user.expect("cached user");
        assert_eq!(user.state.as_ref(), Some(&state));
    }
    assert_eq!(redis.command_calls("get") - gets_before, 1, "one GET for 50 concurrent misses");
}

#[tokio::test]
async fn an_older_state_never_replaces_a_newer_one_in_l1() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let store = store(&redis, &unique("rev")).await;
    let newer = apply(one_click("u1"), &ActivityChange::Delete { id: "x".into() }, Utc::now());
    store.write_users(vec![("u1".into(), newer.clone())]).await.expect("write newer");
    let older = one_click("u1");
    assert!(older.rev < newer.rev);
    store.write_users(vec![("u1".into(), older)]).await.expect("write older");
    let read = store.read_user("u1").await;
    assert_eq!(read.user.and_then(|u| u.state.clone()), Some(newer));
}

#[tokio::test]
async fn another_instances_write_invalidates_l1_long_before_its_ttl() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("inv");
    let writer = store(&redis, &prefix).await;
    let long_ttl =
        CacheConfig { ttl: std::time::Duration::from_secs(600), ..CacheConfig::default() };
    let reader = Arc::new(store_with_cache(&redis, &prefix, long_ttl).await);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = reader.spawn_invalidation_listener(shutdown.clone());

    let first = one_click("u1");
    writer.write_users(vec![("u1".into(), first.clone())]).await.expect("write");
    let cached = reader.read_user("u1").await.user.and_then(|u| u.state.clone());
    assert_eq!(cached, Some(first.clone()), "reader caches the first state");

    let second = apply(first, &ActivityChange::Delete { id: "x".into() }, Utc::now());
    // The subscription may still be settling: keep writing (idempotent) until it is seen.
    common::eventually("reader sees the newer state", common::DEADLINE, || async {
        writer.write_users(vec![("u1".into(), second.clone())]).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let seen = reader.read_user("u1").await.user.and_then(|u| u.state.clone());
        if seen.as_ref() == Some(&second) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    shutdown.cancel();
    listener.await.expect("listener ends");
}
