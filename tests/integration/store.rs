//! The feature store against a real Redis of the test's own (so its command counts are ours).

use crate::common;

use std::sync::Arc;

use common::{OwnRedis, free_port, unique};
use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::overlap::{Overlap, OverlapWrites, Wanted};
use persona::features::{EntityState, High, Position, RunMark, RunStart, SnapshotRun, Truncation};
use persona::store::{
    EntityRef, FeatureStore, Freshness, MarksSeen, StateKey, StoreError, TableMarks,
};

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

/// A state told apart by its revision.
fn state(rev: u64) -> EntityState {
    EntityState { rev, ..EntityState::default() }
}

fn user(id: &str) -> StateKey {
    EntityRef::user(id).share("user_activity/0")
}

/// A user's views as `count` facts a second apart.
fn views(count: i64) -> persona::features::FeatureState {
    let mut viewed = persona::features::FeatureState::default();
    for i in 0..count {
        let at_us = 1_700_000_000_000_000 + i * 1_000_000;
        let fact = persona::features::Fact { at_us, value: format!("p{i}").into() };
        viewed.facts.insert(format!("row-{i}").into(), fact);
    }
    viewed
}

async fn read_user(store: &FeatureStore, id: &str) -> Option<EntityState> {
    store.read(&EntityRef::user(id)).await.state.map(|s| (*s).clone())
}

#[tokio::test]
async fn concurrent_l1_misses_read_redis_once_per_key() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let writer = store(&redis, &prefix).await;
    let state = state(3);
    writer
        .write_states(vec![(user("u1"), state.clone())], &Default::default(), None)
        .await
        .expect("write");

    // Another instance, with a cold L1.
    let reader = Arc::new(store(&redis, &prefix).await);
    let gets_before = redis.command_calls("hgetall");
    let reads = (0..50).map(|_| {
        let reader = Arc::clone(&reader);
        tokio::spawn(async move { reader.read(&EntityRef::user("u1")).await })
    });
    for read in futures::future::join_all(reads).await {
        let read = read.expect("join");
        assert_eq!(read.freshness, Freshness::Live);
        assert_eq!(read.state.as_deref(), Some(&state));
    }
    // One of the entity, one of the snapshot runs its shares are judged by.
    assert_eq!(
        redis.command_calls("hgetall") - gets_before,
        2,
        "one read for 50 concurrent misses"
    );
}

#[tokio::test]
async fn an_older_state_never_replaces_a_newer_one_in_l1() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let store = store(&redis, &unique("rev")).await;
    let newer = state(2);
    store
        .write_states(vec![(user("u1"), newer.clone())], &Default::default(), None)
        .await
        .expect("write newer");
    assert_eq!(read_user(&store, "u1").await, Some(newer.clone()), "cached");
    store
        .write_states(vec![(user("u1"), state(1))], &Default::default(), None)
        .await
        .expect("write older");
    assert_eq!(read_user(&store, "u1").await, Some(newer));
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

    let first = state(1);
    writer
        .write_states(vec![(user("u1"), first.clone())], &Default::default(), None)
        .await
        .expect("write");
    let cached = read_user(&reader, "u1").await;
    assert_eq!(cached, Some(first.clone()), "reader caches the first state");

    let second = state(2);
    // The subscription may still be settling: keep writing (idempotent) until it is seen.
    common::eventually("reader sees the newer state", common::DEADLINE, || async {
        writer
            .write_states(vec![(user("u1"), second.clone())], &Default::default(), None)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let seen = read_user(&reader, "u1").await;
        if seen.as_ref() == Some(&second) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    shutdown.cancel();
    listener.await.expect("listener ends");
}

#[tokio::test]
async fn product_shares_of_all_partitions_are_merged_on_read() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("shares");
    let first = store(&redis, &prefix).await;
    let second = store(&redis, &prefix).await;
    let share = |partition| EntityRef::product("p1").share(format!("user_activity/{partition}"));
    first
        .write_states(vec![(share(0), state(3))], &Default::default(), None)
        .await
        .expect("write share 0");
    second
        .write_states(vec![(share(1), state(4))], &Default::default(), None)
        .await
        .expect("write share 1");
    // Ingest reads back only its own share.
    let loaded = first.load_for_write(&[share(0)], &[], &[]).await.expect("load");
    assert_eq!(loaded.states.get(&share(0)), Some(&state(3)));
    let read = store(&redis, &prefix).await.read(&EntityRef::product("p1")).await;
    assert_eq!(read.state.map(|s| s.rev), Some(7), "revisions of both shares add up");
}

#[tokio::test]
async fn a_batch_reads_only_l1_misses_from_redis() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("batch");
    let writer = store(&redis, &prefix).await;
    writer
        .write_states(
            vec![(user("u1"), state(1)), (user("u2"), state(2))],
            &Default::default(),
            None,
        )
        .await
        .expect("write");
    let reader = store(&redis, &prefix).await;
    assert_eq!(read_user(&reader, "u1").await, Some(state(1)), "u1 is now in L1");
    let gets_before = redis.command_calls("hgetall");
    let wanted = [EntityRef::user("u1"), EntityRef::user("u2"), EntityRef::user("u3")];
    let (reads, _) = reader.read_many(&wanted, &[]).await;
    let revs: Vec<Option<u64>> = reads.iter().map(|r| r.state.as_ref().map(|s| s.rev)).collect();
    assert_eq!(revs, [Some(1), Some(2), None]);
    // The two L1 misses, and the snapshot runs their shares are judged by.
    assert_eq!(redis.command_calls("hgetall") - gets_before, 3, "only the two L1 misses");
}

#[tokio::test]
async fn shares_of_one_user_written_by_different_streams_never_overwrite_each_other() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("streams");
    let activity = store(&redis, &prefix).await;
    let carts = store(&redis, &prefix).await;
    let u1 = EntityRef::user("u1");
    activity
        .write_states(vec![(u1.share("user_activity/2"), state(5))], &Default::default(), None)
        .await
        .expect("write");
    carts
        .write_states(vec![(u1.share("cart_items/2"), state(2))], &Default::default(), None)
        .await
        .expect("write");
    activity
        .write_states(vec![(u1.share("user_activity/2"), state(6))], &Default::default(), None)
        .await
        .expect("write");
    assert_eq!(read_user(&store(&redis, &prefix).await, "u1").await.map(|s| s.rev), Some(8));
}

#[tokio::test]
async fn a_write_under_a_stale_claim_is_refused_and_changes_nothing() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let (stale, owner) = (store(&redis, &prefix).await, store(&redis, &prefix).await);
    let old_claim = stale.claim("t/0").await.expect("claim");
    let new_claim = owner.claim("t/0").await.expect("claim");
    assert!(new_claim.epoch > old_claim.epoch);
    let no_runs = Default::default();
    owner
        .write_states(vec![(user("u1"), state(7))], &no_runs, Some(&new_claim))
        .await
        .expect("write");

    let refused =
        stale.write_states(vec![(user("u1"), state(3))], &no_runs, Some(&old_claim)).await;
    assert!(matches!(refused, Err(StoreError::Fenced { .. })), "{refused:?}");
    let reader = store(&redis, &prefix).await;
    assert_eq!(read_user(&reader, "u1").await, Some(state(7)));
    // Another partition's claim is its own.
    let other = stale.claim("t/1").await.expect("claim");
    stale.write_states(vec![(user("u2"), state(1))], &no_runs, Some(&other)).await.expect("write");

    // Redis lost the claims (flushed): the write says so rather than that it was fenced, and a
    // new claim writes.
    redis.command(&["DEL", &format!("{{{prefix}}}:owners")]);
    let lost = owner.write_states(vec![(user("u1"), state(8))], &no_runs, Some(&new_claim)).await;
    assert!(matches!(lost, Err(StoreError::Unclaimed { .. })), "{lost:?}");
    let again = owner.claim("t/0").await.expect("claim");
    owner.write_states(vec![(user("u1"), state(8))], &no_runs, Some(&again)).await.expect("write");
}

#[tokio::test]
async fn a_newer_snapshot_run_supersedes_shares_it_did_not_write() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let writer = store(&redis, &prefix).await;
    let run = |lsn| RunStart { run: SnapshotRun(lsn, lsn), at_ms: lsn, read_ms: Some(lsn) };
    let mut first = state(1);
    first.runs.insert("user_activity/0".into(), RunMark { run: run(10).run, through: Some(3) });
    let runs =
        TableMarks { runs: [("user_activity".to_string(), run(10))].into(), ..Default::default() };
    writer.write_states(vec![(user("u1"), first.clone())], &runs, None).await.expect("write");
    let reader = store(&redis, &prefix).await;
    assert_eq!(read_user(&reader, "u1").await, Some(first));

    // A second run begins (written with another entity): u1's share is from the first.
    let mut second = state(1);
    second.runs.insert("user_activity/0".into(), RunMark { run: run(20).run, through: Some(9) });
    let runs =
        TableMarks { runs: [("user_activity".to_string(), run(20))].into(), ..Default::default() };
    writer.write_states(vec![(user("u2"), second.clone())], &runs, None).await.expect("write");
    let fresh = store(&redis, &prefix).await;
    assert_eq!(read_user(&fresh, "u1").await, None);
    assert_eq!(read_user(&fresh, "u2").await, Some(second.clone()));

    // A partition still reading the first run cannot move the table back to it.
    let behind =
        TableMarks { runs: [("user_activity".to_string(), run(10))].into(), ..Default::default() };
    writer.write_states(vec![(user("u3"), state(1))], &behind, None).await.expect("write");
    let loaded =
        writer.load_for_write(&[], &["user_activity".to_string()], &[]).await.expect("load");
    assert_eq!(loaded.marks.runs.get("user_activity"), Some(&run(20)));
}

#[tokio::test]
async fn an_unreadable_share_is_reported_never_defaulted_and_set_aside() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let writer = store(&redis, &prefix).await;
    writer
        .write_states(vec![(user("u1"), state(4))], &Default::default(), None)
        .await
        .expect("write");
    let hash = format!("{prefix}:g0:user:u1");
    redis.command(&["HSET", &hash, "user_activity/0", "{not json"]);

    let loaded = writer.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
    assert!(loaded.states.is_empty(), "an unreadable share is not a fresh one: {loaded:?}");
    assert_eq!(loaded.unreadable, vec![(user("u1"), bytes::Bytes::from_static(b"{not json"))]);
    writer.quarantine(&loaded.unreadable).await.expect("quarantine");
    assert_eq!(redis.command(&["HEXISTS", &hash, "user_activity/0"]), "0");
    let field = format!("{hash} user_activity/0");
    assert_eq!(redis.command(&["HGET", &format!("{prefix}:g0:quarantine"), &field]), "{not json");
}

#[tokio::test]
async fn a_tables_truncate_mark_only_moves_forward() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("sf");
    let writer = store(&redis, &prefix).await;
    let mark = |lsn| Truncation { position: Position(lsn, lsn, 1), run: None };
    let truncation = |mark| TableMarks {
        truncations: [("cart_items".to_string(), mark)].into(),
        ..Default::default()
    };
    writer
        .write_states(vec![(user("u1"), state(1))], &truncation(mark(20)), None)
        .await
        .expect("write");
    writer
        .write_states(vec![(user("u2"), state(1))], &truncation(mark(10)), None)
        .await
        .expect("write");
    let loaded = writer.load_for_write(&[], &["cart_items".to_string()], &[]).await.expect("load");
    assert_eq!(loaded.marks.truncations.get("cart_items"), Some(&mark(20)));

    // A stream's high moves forward by run, then the TRUNCATE it follows, then position: an
    // acknowledged TRUNCATE replaces a high further along that did not know of it, and a
    // partition's late write from before it cannot bring that back.
    let stream = "cart_items/2".to_string();
    let high = |cut: Option<i64>, at| High {
        run: None,
        cut: cut.map(|lsn| Position(lsn, lsn, 1)),
        position: Position(at, at, 1),
    };
    let highs = |high| TableMarks { highs: [(stream.clone(), high)].into(), ..Default::default() };
    let load = || writer.load_for_write(&[], &[], std::slice::from_ref(&stream));
    writer.write_states(Vec::new(), &highs(high(None, 30)), None).await.expect("write");
    writer.write_states(Vec::new(), &highs(high(Some(20), 20)), None).await.expect("write");
    writer.write_states(Vec::new(), &highs(high(None, 40)), None).await.expect("write");
    assert_eq!(load().await.expect("load").marks.highs.get(&stream), Some(&high(Some(20), 20)));
    writer.write_states(Vec::new(), &highs(high(Some(20), 25)), None).await.expect("write");
    assert_eq!(load().await.expect("load").marks.highs.get(&stream), Some(&high(Some(20), 25)));
}

/// A stream's overlap with a snapshot run: its mark, row memory and verdicts are written with
/// the batch and read back as a batch asks for them; a new run clears memory and verdicts.
#[tokio::test]
async fn a_streams_snapshot_overlap_round_trips_and_clears() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let writer = store(&redis, &unique("overlap")).await;
    let stream = "orders/1".to_string();
    let mark = Overlap {
        run: Some(SnapshotRun(5, 5)),
        until_ms: Some(1_000),
        open: true,
        read: Some(7),
        ..Overlap::default()
    };
    let marks =
        TableMarks { overlaps: [(stream.clone(), mark.clone())].into(), ..Default::default() };
    let (p1, p2) = (Position(10, 11, 1), Position(10, 12, 0));
    let writes = OverlapWrites {
        mark: Some(mark.clone()),
        rows: vec![("41".into(), Some(u64::MAX)), ("42".into(), Some(7))],
        overlapped: vec![p1],
        ..Default::default()
    };
    writer
        .write_batch(
            &mut [(user("u1"), state(1))],
            &marks,
            Some((&stream, &writes)),
            &MarksSeen::default(),
            None,
        )
        .await
        .expect("write");
    let loaded =
        writer.load_for_write(&[], &[], std::slice::from_ref(&stream)).await.expect("load");
    assert_eq!(loaded.marks.overlaps.get(&stream), Some(&mark));
    let wanted =
        Wanted { rows: vec!["41".into(), "42".into(), "43".into()], positions: vec![p1, p2] };
    let known = writer.load_overlap(&stream, &wanted).await.expect("load overlap");
    assert_eq!(known.rows, [("41".into(), u64::MAX), ("42".into(), 7)].into());
    assert_eq!(known.overlapped, [p1].into());

    // Forgetting a row, then a new run: memory and verdicts start over.
    let forget = OverlapWrites { rows: vec![("41".into(), None)], ..Default::default() };
    writer
        .write_batch(
            &mut [],
            &TableMarks::default(),
            Some((&stream, &forget)),
            &MarksSeen::default(),
            None,
        )
        .await
        .expect("write");
    let known = writer.load_overlap(&stream, &wanted).await.expect("load overlap");
    assert_eq!(known.rows, [("42".into(), 7)].into());
    let anew = OverlapWrites {
        clear_rows: true,
        clear_overlapped: true,
        rows: vec![("43".into(), Some(1))],
        ..Default::default()
    };
    writer
        .write_batch(
            &mut [],
            &TableMarks::default(),
            Some((&stream, &anew)),
            &MarksSeen::default(),
            None,
        )
        .await
        .expect("write");
    let known = writer.load_overlap(&stream, &wanted).await.expect("load overlap");
    assert_eq!(known.rows, [("43".into(), 1)].into());
    assert!(known.overlapped.is_empty());
    // Other streams' memory is their own.
    let other = writer.load_overlap("orders/2", &wanted).await.expect("load overlap");
    assert!(other.rows.is_empty() && other.overlapped.is_empty());
}

/// A rolling upgrade from a persona older than the binary layout: instances write JSON
/// (`state_encoding = "json"`), which the older ones read, until every instance is new; the new
/// ones read both, whichever wrote last. The same for the compressed layout (`binary` until
/// every instance reads it).
#[tokio::test]
async fn shares_are_written_in_the_configured_encoding_and_either_is_read() {
    use persona::config::StateEncoding;
    use persona::features::{Fact, FeatureState};

    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("enc");
    let with = |state_encoding| RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.clone(),
        state_encoding,
        ..RedisConfig::default()
    };
    let cache = CacheConfig::default();
    let json = FeatureStore::connect(&with(StateEncoding::Json), &cache).await.expect("connect");
    let binary =
        FeatureStore::connect(&with(StateEncoding::Binary), &cache).await.expect("connect");
    let mut viewed = FeatureState::default();
    let fact = Fact { at_us: 1_700_000_000_000_000, value: "p7".into() };
    viewed.facts.insert("0b6a3d1e-8f44-4c3a-9d7e-2f1c5a6b7c8d".into(), fact);
    let mut share = state(5);
    share.features.insert_named("last_viewed_product", viewed);
    let hash = format!("{prefix}:g0:user:u1");

    json.write_states(vec![(user("u1"), share.clone())], &Default::default(), None)
        .await
        .expect("write");
    let raw = redis.command(&["HGET", &hash, "user_activity/0"]);
    assert!(raw.starts_with("{\"rev\":5"), "written as JSON: {raw}");
    let loaded = binary.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
    assert_eq!(loaded.states.get(&user("u1")), Some(&share));
    assert_eq!(read_user(&binary, "u1").await, Some(share.clone()));

    share.rev = 6;
    binary
        .write_states(vec![(user("u1"), share.clone())], &Default::default(), None)
        .await
        .expect("write");
    let raw = redis.command(&["HGET", &hash, "user_activity/0"]);
    assert!(raw.starts_with('\u{2}'), "written in the binary layout, version 2: {raw:?}");
    assert!(raw.len() < serde_json::to_string(&share).expect("json").len());
    let loaded = json.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
    assert_eq!(loaded.states.get(&user("u1")), Some(&share));

    // `zstd` compresses a share of some size (layout version 5, features in columns);
    // `zstd3` writes layout version 3 (in rows) for instances that read no later one; every
    // setting reads both back.
    let zstd = FeatureStore::connect(&with(StateEncoding::Zstd), &cache).await.expect("connect");
    let zstd3 = FeatureStore::connect(&with(StateEncoding::Zstd3), &cache).await.expect("connect");
    share.features.insert_named("recent_products_viewed", views(300));
    for (rev, store, version) in [(7, &zstd, 5u8), (8, &zstd3, 3)] {
        share.rev = rev;
        store
            .write_states(vec![(user("u1"), share.clone())], &Default::default(), None)
            .await
            .expect("write");
        let raw = redis.command(&["HGET", &hash, "user_activity/0"]);
        let first = raw.chars().next().map(u32::from);
        assert_eq!(
            first,
            Some(u32::from(version)),
            "written compressed, layout {version}: {raw:?}"
        );
        for store in [&json, &binary, &zstd, &zstd3] {
            let loaded = store.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
            assert_eq!(loaded.states.get(&user("u1")), Some(&share));
        }
    }
}

/// The default layout writes a share's large features as parts beside its head, and a write
/// after a change rewrites the head and the parts the change fed only; a head whose parts
/// expired while its writer kept the share is refused rather than written listing them.
#[tokio::test]
async fn a_share_is_written_as_its_head_and_the_parts_a_change_fed() {
    use persona::features::{Fact, FeatureState};

    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let prefix = unique("parts");
    let config = RedisConfig {
        url: Sensitive(redis.url()),
        key_prefix: prefix.clone(),
        ..RedisConfig::default()
    };
    let store = FeatureStore::connect(&config, &CacheConfig::default()).await.expect("connect");
    let hash = format!("{prefix}:g0:user:u1");
    let mut share = state(1);
    share.features.insert_named("recent_products_viewed", views(300));
    share.features.insert_named("last_viewed_product", FeatureState::default());
    store
        .write_states(vec![(user("u1"), share.clone())], &Default::default(), None)
        .await
        .expect("write");
    let fields = redis.command(&["HKEYS", &hash]);
    let mut fields: Vec<&str> = fields.lines().collect();
    fields.sort_unstable();
    assert_eq!(fields, ["user_activity/0", "user_activity/0#part:recent_products_viewed"]);

    // Read back by ingest, as an owner does: its parts are known to be stored.
    let mut loaded = store.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
    let mut read = loaded.states.remove(&user("u1")).expect("stored");
    assert_eq!(read, share);
    assert_eq!(read_user(&store, "u1").await, Some(share.clone()));
    read.rev = 2;
    let fact = Fact { at_us: 1_700_000_000_000_000, value: "p9".into() };
    let mut small = FeatureState::default();
    small.facts.insert("row-x".into(), fact);
    read.features.insert_named("last_viewed_product", small);
    let hsets = redis.command_calls("hset");
    store
        .write_states(vec![(user("u1"), read.clone())], &Default::default(), None)
        .await
        .expect("write");
    assert_eq!(redis.command_calls("hset") - hsets, 1, "the head alone: its part was not fed");
    let mut again = store.load_for_write(&[user("u1")], &[], &[]).await.expect("load");
    assert_eq!(again.states.get(&user("u1")), Some(&read));

    // The parts gone (the hash's TTL passed) under a writer that kept the share: refused.
    let mut kept = again.states.remove(&user("u1")).expect("stored");
    kept.rev = 3;
    redis.command(&["DEL", &hash]);
    let refused = store.write_states(vec![(user("u1"), kept)], &Default::default(), None).await;
    assert!(matches!(refused, Err(StoreError::PartsGone)), "{refused:?}");
    assert_eq!(redis.command(&["EXISTS", &hash]), "0", "nothing written");
}

#[tokio::test]
async fn a_write_conditioned_on_marks_that_moved_writes_nothing() {
    let redis = OwnRedis::start(free_port(), tempfile::tempdir().expect("tempdir"));
    let writer = store(&redis, &unique("moved")).await;
    common::check_writes_conditioned_on_marks(&writer, None).await;
}
