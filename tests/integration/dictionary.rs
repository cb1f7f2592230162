//! The zstd dictionary shares are compressed with (`redis.state_encoding = "dictionary"`),
//! against a real Redis: writers train one on the shares they write, agree on the one Redis
//! names current, and every instance reads what they wrote, whether it knew the dictionary or not.

use crate::common;

use std::time::{Duration, Instant};

use common::{OwnRedis, free_port, unique};
use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::{EntityState, Fact, FeatureState};
use persona::store::codec::{UNIT_HEAD_VERSION_DICTIONARY, dictionary_of};
use persona::store::{EntityRef, FeatureStore, StateKey};

const STREAM: &str = "user_activity/0";

fn user(id: &str) -> StateKey {
    EntityRef::user(id).share(STREAM)
}

/// A user's share as the simulator's users look: the products they viewed, a few seconds apart.
fn share(seed: u64) -> EntityState {
    let mut viewed = FeatureState::default();
    for i in 0..60u64 {
        let at_us = 1_795_316_793_698_261 + (seed * 7_919 + i * 9_876_543) as i64;
        let value = format!("sim-p{:04}", (i * 31 + seed * 7) % 200);
        viewed.facts.insert(format!("row-{seed}-{i}").into(), Fact { at_us, value: value.into() });
    }
    let mut state = EntityState { rev: seed + 1, ..EntityState::default() };
    state.features.insert_named("recent_products_viewed", viewed);
    state
}

async fn connect(redis: &OwnRedis, prefix: &str, samples: usize) -> FeatureStore {
    let config = RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.into(),
        state_dictionary_samples: samples,
        ..RedisConfig::default()
    };
    FeatureStore::connect(&config, &CacheConfig::default()).await.expect("connect")
}

/// Writes `state` for user `id` and returns the dictionary its stored head names.
async fn write(
    redis: &OwnRedis,
    store: &FeatureStore,
    prefix: &str,
    id: &str,
    state: &EntityState,
) -> Option<u32> {
    store
        .write_states(vec![(user(id), state.clone())], &Default::default(), None)
        .await
        .expect("write");
    let head = redis.command_bytes(&["HGET", &format!("{prefix}:g0:user:{id}"), STREAM]);
    let named = dictionary_of(&head);
    assert_eq!(named.is_some(), head.first() == Some(&UNIT_HEAD_VERSION_DICTIONARY), "{head:?}");
    named
}

/// Writes shares of users `u0`, `u1`… with `store` until one is written with a dictionary;
/// returns that user's number.
async fn write_until_trained(redis: &OwnRedis, store: &FeatureStore, prefix: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seed = 0;
    while write(redis, store, prefix, &format!("u{seed}"), &share(seed)).await.is_none() {
        assert!(Instant::now() < deadline, "no dictionary after {seed} shares");
        seed += 1;
    }
    seed
}

#[tokio::test]
async fn writers_agree_on_one_trained_dictionary_and_every_instance_reads_what_it_compressed() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("dict");
    // Started before any dictionary exists: it meets the dictionary only in what it reads.
    let reader = connect(&redis, &prefix, 0).await;
    let writers = [connect(&redis, &prefix, 40).await, connect(&redis, &prefix, 40).await];

    // Each writer writes shares of its own users until it writes them with a dictionary: both
    // sample, both train, and the one Redis names current first is the one both adopt.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = Vec::new();
    let mut named = [None, None];
    let mut seed = 0;
    while named.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "no dictionary after {seed} shares: {named:?}");
        for (index, writer) in writers.iter().enumerate() {
            let id = format!("u{seed}");
            let state = share(seed);
            named[index] = write(&redis, writer, &prefix, &id, &state).await;
            written.push((id, state));
            seed += 1;
        }
    }
    assert!(seed >= 80, "neither trained before sampling 40 shares: {seed}");
    assert_eq!(named[0], named[1], "both writers write with the one dictionary");
    let current = redis.command(&["HGET", &format!("{{{prefix}}}:dictionaries"), "current"]);
    assert_eq!(Some(current.parse::<u32>().expect("an id")), named[0]);

    // Every share reads back, for the API and for ingest, from the instance that started
    // knowing no dictionary.
    for (id, state) in &written {
        let read = reader.read(&EntityRef::user(id.as_str())).await.state.map(|s| (*s).clone());
        assert_eq!(read.as_ref(), Some(state), "{id}");
    }
    let keys: Vec<StateKey> = written.iter().map(|(id, _)| user(id)).collect();
    let loaded = reader.load_for_write(&keys, &[], &[]).await.expect("load");
    for (id, state) in &written {
        assert_eq!(loaded.states.get(&user(id)), Some(state), "{id}");
    }
    assert!(loaded.unreadable.is_empty());

    // An instance started now writes with the current dictionary from its first share, even one
    // that trains none itself.
    let late = connect(&redis, &prefix, 0).await;
    let state = share(10_000);
    assert_eq!(write(&redis, &late, &prefix, "late", &state).await, named[0]);
    assert_eq!(
        reader
            .load_for_write(&[user("late")], &[], &[])
            .await
            .expect("load")
            .states
            .get(&user("late")),
        Some(&state)
    );
}

/// A writer whose encoding is not `dictionary` (a rolling upgrade from a persona that reads no
/// dictionary) neither trains one nor writes with one Redis names current.
#[tokio::test]
async fn writers_of_an_earlier_layout_never_write_with_a_dictionary() {
    use persona::config::StateEncoding;

    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("nodict");
    let trainer = connect(&redis, &prefix, 5).await;
    write_until_trained(&redis, &trainer, &prefix).await;
    let config = RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.clone(),
        state_encoding: StateEncoding::Parts,
        ..RedisConfig::default()
    };
    let parts = FeatureStore::connect(&config, &CacheConfig::default()).await.expect("connect");
    for seed in 0..50 {
        assert_eq!(write(&redis, &parts, &prefix, &format!("p{seed}"), &share(seed)).await, None);
    }
}

/// A writer asked to train on too few shares for zstd's trainer fails, samples twice as many,
/// and tries again until it has a dictionary.
#[tokio::test]
async fn a_training_on_too_few_shares_is_tried_again_on_more() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("retrain");
    let writer = connect(&redis, &prefix, 1).await;
    let seed = write_until_trained(&redis, &writer, &prefix).await;
    // One share is too few for zstd's trainer: only a retry on 2, 4, 8… shares trains one.
    assert!(seed > 1, "trained after {seed} shares");
    assert_eq!(
        writer.state_dictionary(),
        dictionary_of(&redis.command_bytes(&[
            "HGET",
            &format!("{prefix}:g0:user:u{seed}"),
            STREAM
        ]))
    );
}
