//! The feature store on a Redis Cluster of the test's own (three primaries, one replica each):
//! batches spanning every slot, fencing, replicas acknowledging writes, failover, generation
//! cleanup and quarantine across nodes; batches of several partitions flushed together
//! (`group`).

use crate::common;
mod dictionary;
mod group;

use std::sync::Arc;
use std::time::Duration;

use common::redis_cluster::OwnRedisCluster;
use common::unique;
use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::overlap::{Overlap, OverlapWrites, Wanted};
use persona::features::{EntityState, High, Position};
use persona::store::{
    EntityRef, FeatureStore, Fence, MarksSeen, StateKey, StoreError, TableMarks, generation,
};

const STREAM: &str = "user_activity/0";

async fn store(cluster: &OwnRedisCluster, prefix: &str) -> FeatureStore {
    store_with(cluster, prefix, 0, CacheConfig::default()).await
}

async fn store_with(
    cluster: &OwnRedisCluster,
    prefix: &str,
    min_replica_acks: u32,
    cache: CacheConfig,
) -> FeatureStore {
    let config = RedisConfig {
        url: Sensitive(cluster.url()),
        key_prefix: prefix.into(),
        min_replica_acks,
        ..RedisConfig::default()
    };
    FeatureStore::connect(&config, &cache).await.expect("connect to the redis cluster")
}

fn state(rev: u64) -> EntityState {
    EntityState { rev, ..EntityState::default() }
}

fn user(id: usize) -> StateKey {
    EntityRef::user(format!("u{id}")).share(STREAM)
}

/// `count` users, user `i` at revision `rev + i`, each with a feature large enough to be a part
/// of its own beside its share's head (see `store::codec::parts`).
fn batch(count: usize, rev: u64) -> Vec<(StateKey, EntityState)> {
    let views: persona::features::Buckets = (0..300).map(|bucket| (bucket, "", 1)).collect();
    let views = persona::features::FeatureState::new(views, Default::default());
    let share = |rev| {
        let mut share = state(rev);
        share.features.insert_named("views_1m", views.clone());
        share
    };
    (0..count).map(|i| (user(i), share(rev + i as u64))).collect()
}

/// Each user's revision as a fresh instance (cold L1) reads it.
async fn revisions(reader: &FeatureStore, count: usize) -> Vec<Option<u64>> {
    let wanted: Vec<EntityRef> = (0..count).map(|i| user(i).entity).collect();
    let (reads, _) = reader.read_many(&wanted, &[]).await;
    reads.iter().map(|read| read.state.as_ref().map(|state| state.rev)).collect()
}

fn expected(count: usize, rev: u64) -> Vec<Option<u64>> {
    (0..count).map(|i| Some(rev + i as u64)).collect()
}

/// Another instance, listening for invalidations, whose L1 keeps what it read for minutes: only
/// an invalidation can show it a newer state.
struct ListeningReader {
    store: Arc<FeatureStore>,
    shutdown: tokio_util::sync::CancellationToken,
    listener: tokio::task::JoinHandle<()>,
}

impl ListeningReader {
    async fn start(cluster: &OwnRedisCluster, prefix: &str) -> Self {
        let long_ttl = CacheConfig { ttl: Duration::from_secs(600), ..CacheConfig::default() };
        let store = Arc::new(store_with(cluster, prefix, 0, long_ttl).await);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let listener = store.spawn_invalidation_listener(shutdown.clone());
        // The listener subscribes on each primary's connection as it comes up, and empties L1
        // after each: until the last, a copy cached would go without any announcement.
        let primaries = cluster.primaries().len() as u64;
        let subscribed = store.watch_marks();
        common::eventually("subscribed on every primary", common::DEADLINE, || async {
            let clears = *subscribed.borrow();
            if clears >= primaries { Ok(()) } else { Err(format!("{clears} subscriptions")) }
        })
        .await;
        Self { store, shutdown, listener }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.listener.await.expect("listener ends");
    }
}

#[tokio::test]
async fn a_batch_spanning_every_primary_is_written_with_its_marks_and_read_back() {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    let fence = writer.claim("persona.public.user_activity/0").await.expect("claim");
    let high = High { run: None, cut: None, position: Position(50, 50, 1) };
    let marks = TableMarks {
        highs: [(STREAM.to_string(), high)].into(),
        overlaps: [(STREAM.to_string(), Overlap::default())].into(),
        ..TableMarks::default()
    };
    let overlap = OverlapWrites {
        rows: vec![("row-1".into(), Some(7))],
        overlapped: vec![Position(45, 45, 1)],
        ..OverlapWrites::default()
    };
    writer
        .write_batch(
            &mut batch(300, 1),
            &marks,
            Some((STREAM, &overlap)),
            &MarksSeen::default(),
            Some(&fence),
        )
        .await
        .expect("a batch across slots is written");

    for primary in cluster.primaries() {
        assert!(cluster.keys_on(primary) > 0, "primary {primary} holds part of the batch");
    }
    let reader = store(&cluster, &prefix).await;
    assert_eq!(revisions(&reader, 300).await, expected(300, 1));
    let loaded = reader
        .load_for_write(
            &[user(0), user(299)],
            &["user_activity".to_string()],
            &[STREAM.to_string()],
        )
        .await
        .expect("load");
    assert_eq!(loaded.states.len(), 2);
    assert_eq!(loaded.states.get(&user(0)), Some(&batch(1, 1)[0].1), "head and part read back");
    assert_eq!(loaded.marks.highs.get(STREAM), Some(&high));
    let wanted = Wanted { rows: vec!["row-1".into()], positions: vec![Position(45, 45, 1)] };
    let known = reader.load_overlap(STREAM, &wanted).await.expect("load overlap");
    assert_eq!(known.rows.get(&"row-1".into()), Some(&7));
    assert!(known.overlapped.contains(&Position(45, 45, 1)));
}

/// Script calls the primaries ran, all told.
fn script_calls(cluster: &OwnRedisCluster) -> u64 {
    cluster.primaries().into_iter().map(|primary| cluster.calls(primary, "evalsha")).sum()
}

/// A cluster of its own, its key prefix, a writer that claimed the partition, and its fence,
/// after a batch of 300 users at revision 1 (which loaded the scripts on every primary).
async fn after_one_batch() -> (OwnRedisCluster, String, FeatureStore, Fence) {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    let fence = writer.claim("persona.public.user_activity/0").await.expect("claim");
    let marks = TableMarks::default();
    writer.write_states(batch(300, 1), &marks, Some(&fence)).await.expect("write");
    (cluster, prefix, writer, fence)
}

/// The users of the batch of [`after_one_batch`] whose shares live on primary `primary`.
fn users_on(cluster: &OwnRedisCluster, prefix: &str, primary: usize) -> Vec<usize> {
    let keys = cluster.keys_matching(primary, &format!("{prefix}:*:user:u*"));
    let users = keys.iter().filter_map(|key| key.rsplit_once(":u")?.1.parse().ok());
    let mut users: Vec<usize> = users.collect();
    users.sort_unstable();
    users
}

/// A batch costs one script per primary it writes to: its marks go in the script of the shares
/// on the marks' primary, and each script announces the shares it wrote.
#[tokio::test]
async fn a_batch_costs_one_script_per_primary_it_writes_to() {
    let (cluster, prefix, writer, fence) = after_one_batch().await;
    let marks = TableMarks::default();
    let before = script_calls(&cluster);
    writer.write_states(batch(300, 2), &marks, Some(&fence)).await.expect("write");
    let calls = script_calls(&cluster) - before;
    let primaries = cluster.primaries();
    assert_eq!(calls, primaries.len() as u64, "script calls for 300 shares on {primaries:?}");
    let reader = store(&cluster, &prefix).await;
    assert_eq!(revisions(&reader, 300).await, expected(300, 2));

    // Shares on the marks' primary only: one script; on another only: that and the marks'.
    let marks_primary = cluster.primary_of(&format!("{{{prefix}}}:owners"));
    let other = *primaries.iter().find(|primary| **primary != marks_primary).expect("primaries");
    for (primary, wanted) in [(marks_primary, 1), (other, 2)] {
        let users = users_on(&cluster, &prefix, primary);
        assert!(users.len() > 10, "users on primary {primary}: {users:?}");
        let shares: Vec<_> =
            batch(300, 3).into_iter().filter(|(key, _)| users.contains(&index_of(key))).collect();
        let before = script_calls(&cluster);
        writer.write_states(shares, &marks, Some(&fence)).await.expect("write");
        let calls = script_calls(&cluster) - before;
        assert_eq!(calls, wanted, "script calls for shares on primary {primary} only");
        let read = revisions(&store(&cluster, &prefix).await, 300).await;
        for user in &users {
            assert_eq!(read[*user], Some(3 + *user as u64), "user {user}");
        }
    }
}

/// The `i` of user `u<i>`.
fn index_of(key: &StateKey) -> usize {
    key.entity.id.trim_start_matches('u').parse().expect("a user of `batch`")
}

#[tokio::test]
async fn a_batch_lands_whole_after_a_slot_moved_to_another_primary() {
    let (cluster, prefix, writer, fence) = after_one_batch().await;
    let marks = TableMarks::default();

    // The lowest slot holding shares on a primary (whose first share routes the primary's
    // script, so the script itself is redirected), moved to another primary behind the
    // writer's back: its slot map still names the old one. First off the marks' primary, whose
    // shares go in the marks' script; then off another.
    let owners = format!("{{{prefix}}}:owners");
    let marks_primary = cluster.primary_of(&owners);
    let primaries = cluster.primaries();
    let other = *primaries.iter().find(|primary| **primary != marks_primary).expect("primaries");
    for (rev, from) in [(2, marks_primary), (3, other)] {
        let shares = cluster.keys_matching(from, &format!("{prefix}:*"));
        let (slot, share) = shares
            .into_iter()
            .filter(|key| !key.contains('{'))
            .map(|key| (cluster.slot_of(&key), key))
            .filter(|(slot, _)| *slot != cluster.slot_of(&owners))
            .min()
            .expect("shares on every primary");
        let to = *primaries.iter().find(|primary| **primary != from).expect("another primary");
        cluster.move_slot(slot, from, to);

        let written = writer.write_states(batch(300, rev), &marks, Some(&fence)).await;
        written.expect("write after the move");
        assert!(cluster.keys_matching(from, &share).is_empty(), "{share} moved off node {from}");
        assert_eq!(cluster.keys_matching(to, &share), vec![share.clone()], "{share} on node {to}");
        let reader = store(&cluster, &prefix).await;
        assert_eq!(revisions(&reader, 300).await, expected(300, rev));
    }
}

#[tokio::test]
async fn a_fenced_owner_writes_nothing_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let (stale, owner) = (store(&cluster, &prefix).await, store(&cluster, &prefix).await);
    let partition = "persona.public.user_activity/0";
    let old_claim = stale.claim(partition).await.expect("claim");
    let new_claim = owner.claim(partition).await.expect("claim");
    owner
        .write_states(batch(50, 100), &TableMarks::default(), Some(&new_claim))
        .await
        .expect("the owner writes");

    let refused = stale.write_states(batch(50, 1), &TableMarks::default(), Some(&old_claim)).await;
    assert!(matches!(refused, Err(StoreError::Fenced { .. })), "{refused:?}");
    assert_eq!(revisions(&store(&cluster, &prefix).await, 50).await, expected(50, 100));

    // The owner check and the shares are in different slots, so a stale owner can pass the
    // check just before the new one claims. Put the claim back as it was then: the shares the
    // new owner wrote still refuse the stale writer, whole.
    let owners = format!("{{{prefix}}}:owners");
    let node = cluster.primary_of(&owners);
    cluster.command(node, &["HSET", &owners, partition, &old_claim.epoch.to_string()]);
    let mut mixed = batch(50, 1);
    mixed.push((user(77), state(9)));
    let refused = stale.write_states(mixed, &TableMarks::default(), Some(&old_claim)).await;
    assert!(matches!(refused, Err(StoreError::Fenced { .. })), "{refused:?}");
    let reader = store(&cluster, &prefix).await;
    assert_eq!(revisions(&reader, 50).await, expected(50, 100));
}

#[tokio::test]
async fn acknowledged_writes_survive_a_primary_killed_and_its_replica_promoted() {
    let mut cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store_with(&cluster, &prefix, 1, CacheConfig::default()).await;
    // Retried as the ingest loop would: on a busy machine a replica may confirm late.
    common::eventually("written and held by a replica", common::DEADLINE, || async {
        writer
            .write_states(batch(200, 1), &TableMarks::default(), None)
            .await
            .map_err(|error| error.to_string())
    })
    .await;

    // Killed right after acknowledging: what it acknowledged is on its replica, which takes over.
    let victim = cluster.primary_of(&format!("{prefix}:g0:user:u0"));
    cluster.kill(victim);
    cluster.wait_until_healthy();
    let promoted = cluster.primary_of(&format!("{prefix}:g0:user:u0"));
    assert_ne!(promoted, victim);
    let reader = store(&cluster, &prefix).await;
    assert_eq!(revisions(&reader, 200).await, expected(200, 1), "nothing acknowledged was lost");

    // The promoted primary has no replica until the old one rejoins as its replica: until then
    // writes to its slots are not acknowledged (the ingest loop retries them, offsets held).
    let unconfirmed = writer.write_states(batch(200, 1000), &TableMarks::default(), None).await;
    assert!(matches!(unconfirmed, Err(StoreError::Unreplicated { .. })), "{unconfirmed:?}");
    cluster.restart(victim);
    cluster.wait_until_healthy();
    common::eventually(
        "a write confirmed after the old primary rejoined",
        common::DEADLINE,
        || async {
            writer
                .write_states(batch(200, 1000), &TableMarks::default(), None)
                .await
                .map_err(|error| error.to_string())
        },
    )
    .await;
    let role = cluster.command(victim, &["role"]);
    assert!(role.starts_with("slave"), "the old primary came back as a replica: {role}");
    assert_eq!(revisions(&store(&cluster, &prefix).await, 200).await, expected(200, 1000));
}

#[tokio::test]
async fn a_write_no_replica_confirmed_does_not_count_as_done() {
    let mut cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store_with(&cluster, &prefix, 1, CacheConfig::default()).await;
    let key = format!("{prefix}:g0:user:u0");
    let primary = cluster.primary_of(&key);
    let replica = cluster.replica_of(primary);
    cluster.kill(replica);
    let unconfirmed =
        writer.write_states(vec![(user(0), state(1))], &TableMarks::default(), None).await;
    assert!(
        matches!(unconfirmed, Err(StoreError::Unreplicated { acked: 0, wanted: 1 })),
        "{unconfirmed:?}"
    );
    assert!(unconfirmed.is_err_and(|error| error.is_transient()), "retried, offsets held");
}

/// A claim lost in a failover would let the owner it fenced write again: a claim no replica
/// holds is refused like a write (and retried by the ingest loop before it reads on).
#[tokio::test]
async fn a_claim_no_replica_confirmed_does_not_count_as_done() {
    let mut cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let owner = store_with(&cluster, &prefix, 1, CacheConfig::default()).await;
    let primary = cluster.primary_of(&format!("{{{prefix}}}:owners"));
    let replica = cluster.replica_of(primary);
    cluster.kill(replica);
    let unconfirmed = owner.claim("persona.public.user_activity/0").await;
    assert!(
        matches!(unconfirmed, Err(StoreError::Unreplicated { acked: 0, wanted: 1 })),
        "{unconfirmed:?}"
    );
    assert!(unconfirmed.is_err_and(|error| error.is_transient()), "retried, offsets held");
}

#[tokio::test]
async fn an_older_generation_is_deleted_from_every_primary() {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    writer.use_generation("g-old");
    let marks = TableMarks {
        highs: [(STREAM.to_string(), High { run: None, cut: None, position: Position(1, 1, 1) })]
            .into(),
        ..TableMarks::default()
    };
    writer.write_states(batch(300, 1), &marks, None).await.expect("write");
    writer.use_generation("g-new");
    writer.write_states(batch(10, 1), &TableMarks::default(), None).await.expect("write");
    let keys_before: u64 = cluster.primaries().iter().map(|p| cluster.keys_on(*p)).sum();

    let deleted = generation::delete(&writer, "g-old").await.expect("delete");
    assert_eq!(deleted, 301, "300 users and the highs");
    let keys_after: u64 = cluster.primaries().iter().map(|p| cluster.keys_on(*p)).sum();
    assert_eq!(keys_before - keys_after, 301);
    assert_eq!(revisions(&writer, 10).await, expected(10, 1), "the newer generation stays");
}

#[tokio::test]
async fn an_unreadable_share_is_set_aside_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    writer.write_states(batch(1, 4), &TableMarks::default(), None).await.expect("write");
    let hash = format!("{prefix}:g0:user:u0");
    cluster.command(cluster.primary_of(&hash), &["HSET", &hash, STREAM, "{not json"]);

    let loaded = writer.load_for_write(&[user(0)], &[], &[]).await.expect("load");
    assert_eq!(loaded.unreadable.len(), 1, "{loaded:?}");
    writer.quarantine(&loaded.unreadable).await.expect("quarantine");
    assert_eq!(cluster.command(cluster.primary_of(&hash), &["HEXISTS", &hash, STREAM]), "0");
    let quarantine = format!("{prefix}:g0:quarantine");
    let field = format!("{hash} {STREAM}");
    assert_eq!(
        cluster.command(cluster.primary_of(&quarantine), &["HGET", &quarantine, &field]),
        "{not json"
    );
}

#[tokio::test]
async fn another_instances_write_reaches_l1_through_the_cluster() {
    let cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    let reader = ListeningReader::start(&cluster, &prefix).await;
    writer.write_states(batch(20, 1), &TableMarks::default(), None).await.expect("write");
    assert_eq!(revisions(&reader.store, 20).await, expected(20, 1), "cached by the reader");

    common::eventually("the reader sees every newer state", common::DEADLINE, || async {
        writer
            .write_states(batch(20, 500), &TableMarks::default(), None)
            .await
            .map_err(|error| error.to_string())?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = revisions(&reader.store, 20).await;
        if seen == expected(20, 500) { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    reader.stop().await;
}

#[tokio::test]
async fn the_marks_primary_failing_over_stops_neither_writes_nor_invalidations() {
    let mut cluster = OwnRedisCluster::start();
    let prefix = unique("rc");
    let writer = store(&cluster, &prefix).await;
    let reader = ListeningReader::start(&cluster, &prefix).await;
    let partition = "persona.public.user_activity/0";
    let fence = writer.claim(partition).await.expect("claim");
    writer.write_states(batch(20, 1), &TableMarks::default(), Some(&fence)).await.expect("write");
    assert_eq!(revisions(&reader.store, 20).await, expected(20, 1), "cached by the reader");

    // The primary holding the owners, the marks and the invalidation channel.
    let victim = cluster.primary_of(&format!("{{{prefix}}}:owners"));
    cluster.kill(victim);
    cluster.wait_until_healthy();
    let fence = std::sync::Mutex::new(fence);
    common::eventually(
        "the reader sees writes made after the failover",
        common::DEADLINE,
        || async {
            let current = fence.lock().expect("fence").clone();
            match writer.write_states(batch(20, 700), &TableMarks::default(), Some(&current)).await
            {
                Ok(()) => {}
                // Without replica acknowledgements the claim may not have reached the replica
                // before the failover: claim again, as the ingest loop does.
                Err(StoreError::Unclaimed { .. }) => {
                    let claimed =
                        writer.claim(partition).await.map_err(|error| error.to_string())?;
                    *fence.lock().expect("fence") = claimed;
                    return Err("claimed the partition again".to_string());
                }
                Err(error) => return Err(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = revisions(&reader.store, 20).await;
            if seen == expected(20, 700) { Ok(()) } else { Err(format!("{seen:?}")) }
        },
    )
    .await;
    reader.stop().await;
}

/// On a cluster the marks are checked by the first of a batch's scripts, before any share.
#[tokio::test]
async fn a_write_conditioned_on_marks_that_moved_writes_nothing_on_a_cluster() {
    let cluster = OwnRedisCluster::start();
    let writer = store(&cluster, &unique("moved")).await;
    let fence = writer.claim("persona.public.user_activity/0").await.expect("claim");
    common::check_writes_conditioned_on_marks(&writer, Some(&fence)).await;
}
