//! The zstd dictionary shares are compressed with, on a cluster: kept under the hash tag
//! `{<key_prefix>}` with the marks, while the shares that name it spread over every primary.

use std::time::{Duration, Instant};

use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::{EntityState, Fact, FeatureState};
use persona::store::{EntityRef, FeatureStore, StateKey};

use super::{OwnRedisCluster, STREAM};

/// User `id`'s share at revision `rev`: the products it viewed, a few seconds apart.
fn share(id: usize, rev: u64) -> (StateKey, EntityState) {
    let mut viewed = FeatureState::default();
    for i in 0..60 {
        let at_us = 1_795_316_793_698_261 + (id * 7_919 + i * 9_876_543) as i64;
        let value = format!("sim-p{:04}", (i * 31 + id * 7) % 200);
        viewed.facts.insert(format!("row-{id}-{i}").into(), Fact { at_us, value: value.into() });
    }
    let mut state = EntityState { rev, ..EntityState::default() };
    state.features.insert_named("recent_products_viewed", viewed);
    (EntityRef::user(format!("u{id}")).share(STREAM), state)
}

#[tokio::test]
async fn shares_written_with_a_dictionary_read_back_from_every_primary() {
    let cluster = OwnRedisCluster::start();
    let prefix = crate::common::unique("rcdict");
    let config = |samples| RedisConfig {
        url: Sensitive(cluster.url()),
        key_prefix: prefix.clone(),
        state_dictionary_samples: samples,
        ..RedisConfig::default()
    };
    let cache = CacheConfig::default();
    let writer = FeatureStore::connect(&config(30), &cache).await.expect("connect");
    let reader = FeatureStore::connect(&config(0), &cache).await.expect("connect");

    // Batches of 30 users until the writer trained and adopted a dictionary, then one written
    // with it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rev = 1;
    while writer.state_dictionary().is_none() {
        assert!(Instant::now() < deadline, "no dictionary after {rev} batches");
        let batch: Vec<_> = (0..30).map(|id| share(id, rev)).collect();
        writer.write_states(batch, &Default::default(), None).await.expect("write");
        rev += 1;
    }
    let batch: Vec<_> = (0..30).map(|id| share(id, rev)).collect();
    writer.write_states(batch.clone(), &Default::default(), None).await.expect("write");

    assert_eq!(reader.state_dictionary(), None, "the reader started before there was one");
    let keys: Vec<StateKey> = batch.iter().map(|(key, _)| key.clone()).collect();
    let loaded = reader.load_for_write(&keys, &[], &[]).await.expect("load");
    for (key, state) in &batch {
        assert_eq!(loaded.states.get(key), Some(state), "{key:?}");
    }
    let entities: Vec<EntityRef> = keys.iter().map(|key| key.entity.clone()).collect();
    let fresh = FeatureStore::connect(&config(0), &cache).await.expect("connect");
    assert_eq!(fresh.state_dictionary(), writer.state_dictionary(), "adopted at start");
    let (reads, _) = fresh.read_many(&entities, &[]).await;
    let read: Vec<Option<u64>> = reads.iter().map(|r| r.state.as_ref().map(|s| s.rev)).collect();
    assert_eq!(read, vec![Some(rev); 30]);
}
