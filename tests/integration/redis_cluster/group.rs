//! Small batches of several partitions written at the same time are flushed together: they share
//! their script calls, and each is still checked, refused and answered on its own.

use persona::config::{CacheConfig, RedisConfig, Sensitive};
use persona::features::{EntityState, Position, Truncation};
use persona::store::{EntityRef, FeatureStore, Fence, StateKey, StoreError, TableMarks};

use super::{
    OwnRedisCluster, after_one_batch, batch, expected, revisions, script_calls, state, store,
};

const OTHER_PARTITION: &str = "persona.public.user_activity/1";

/// Shares in a batch flushed with others: fewer than batches written alone have, and enough to
/// land on every primary (each misses one with a chance of 3 × (2/3)^60).
const SMALL: usize = 60;

/// Users `from..to` on the stream of partition 1, user `i` at revision `rev + i`.
fn batch_of_partition_1(from: usize, to: usize, rev: u64) -> Vec<(StateKey, EntityState)> {
    let mut shares = batch(to, rev);
    shares.drain(..from);
    for (key, _) in &mut shares {
        key.stream = "user_activity/1".into();
    }
    shares
}

/// Revisions of users `from..to` as a fresh reader sees them.
async fn revisions_of(reader: &FeatureStore, from: usize, to: usize) -> Vec<Option<u64>> {
    revisions(reader, to).await.split_off(from)
}

/// Writes a small batch of partition 0 (users `0..SMALL`) and one of partition 1 (users
/// `300..300 + SMALL`) at the same time, both at revision `rev`; checks that a fresh reader sees
/// both whole, and returns the script calls they cost.
async fn two_small_batches_at_once(
    cluster: &OwnRedisCluster,
    prefix: &str,
    writer: &FeatureStore,
    (fence, other): (&Fence, &Fence),
    rev: u64,
) -> u64 {
    let marks = TableMarks::default();
    let before = script_calls(cluster);
    let (first, second) = tokio::join!(
        writer.write_states(batch(SMALL, rev), &marks, Some(fence)),
        writer.write_states(batch_of_partition_1(300, 300 + SMALL, rev), &marks, Some(other)),
    );
    first.expect("partition 0's batch");
    second.expect("partition 1's batch");
    let calls = script_calls(cluster) - before;
    let reader = store(cluster, prefix).await;
    assert_eq!(revisions_of(&reader, 0, SMALL).await, expected(SMALL, rev));
    let second = expected(300 + SMALL, rev).split_off(300);
    assert_eq!(revisions_of(&reader, 300, 300 + SMALL).await, second);
    calls
}

#[tokio::test]
async fn batches_written_at_the_same_time_share_their_script_calls() {
    let (cluster, prefix, writer, fence) = after_one_batch().await;
    let other = writer.claim(OTHER_PARTITION).await.expect("claim");
    let calls = two_small_batches_at_once(&cluster, &prefix, &writer, (&fence, &other), 2).await;
    let primaries = cluster.primaries();
    // Alone, each batch costs one call per primary.
    assert_eq!(calls, primaries.len() as u64, "script calls for two batches on {primaries:?}");

    // A large batch goes alone: its calls are shared among its own shares.
    let marks = TableMarks::default();
    let before = script_calls(&cluster);
    let (first, second) = tokio::join!(
        writer.write_states(batch(300, 3), &marks, Some(&fence)),
        writer.write_states(batch_of_partition_1(300, 300 + SMALL, 3), &marks, Some(&other)),
    );
    first.expect("partition 0's large batch");
    second.expect("partition 1's batch");
    let calls = script_calls(&cluster) - before;
    assert_eq!(calls, 2 * primaries.len() as u64, "script calls for a large and a small batch");
}

/// With `redis.group_commit_below = 0` (for the lowest latency) small batches written at the
/// same time are written alone, each with a call per primary.
#[tokio::test]
async fn with_group_commit_off_small_batches_are_written_alone() {
    let (cluster, prefix, _, _) = after_one_batch().await;
    let config = RedisConfig {
        url: Sensitive(cluster.url()),
        key_prefix: prefix.clone(),
        group_commit_below: 0,
        ..RedisConfig::default()
    };
    let writer = FeatureStore::connect(&config, &CacheConfig::default()).await.expect("connect");
    let fence = writer.claim("persona.public.user_activity/0").await.expect("claim");
    let other = writer.claim(OTHER_PARTITION).await.expect("claim");
    let calls = two_small_batches_at_once(&cluster, &prefix, &writer, (&fence, &other), 2).await;
    let primaries = cluster.primaries();
    assert_eq!(calls, 2 * primaries.len() as u64, "script calls for two batches on {primaries:?}");
}

/// A fenced writer's batch in a flush writes nothing, on any primary; the others' land whole.
#[tokio::test]
async fn a_fenced_batch_in_a_flush_writes_nothing_and_the_others_land() {
    let (cluster, prefix, writer, stale) = after_one_batch().await;
    let newer = store(&cluster, &prefix).await;
    newer.claim(&stale.partition).await.expect("a newer owner claims partition 0");
    let other = writer.claim(OTHER_PARTITION).await.expect("claim");
    let marks = TableMarks::default();
    let (refused, written) = tokio::join!(
        writer.write_states(batch(SMALL, 50), &marks, Some(&stale)),
        writer.write_states(batch_of_partition_1(300, 300 + SMALL, 2), &marks, Some(&other)),
    );
    assert!(matches!(refused, Err(StoreError::Fenced { .. })), "{refused:?}");
    written.expect("partition 1's batch");
    let reader = store(&cluster, &prefix).await;
    let mut wanted = expected(300, 1);
    wanted.extend(expected(300 + SMALL, 2).split_off(300));
    assert_eq!(revisions_of(&reader, 0, 300 + SMALL).await, wanted);
}

/// Batches in a flush are checked in turn, each after those before it were written: one moving
/// a mark another was applied under refuses that one, as separate calls in that order would.
#[tokio::test]
async fn a_mark_moved_by_a_batch_earlier_in_the_flush_refuses_a_later_one() {
    let (cluster, prefix, writer, fence) = after_one_batch().await;
    let other = writer.claim(OTHER_PARTITION).await.expect("claim");
    let table = "user_activity".to_string();
    let streams = ["user_activity/0".to_string()];
    let seen = writer.load_for_write(&[], std::slice::from_ref(&table), &streams).await;
    let seen = seen.expect("load marks").seen;
    let truncation = Truncation { position: Position(20, 20, 1), run: None };
    let truncated = TableMarks { truncations: [(table, truncation)].into(), ..Default::default() };
    let late = (EntityRef::user("late").share("user_activity/0"), state(1));
    let mut late_batch = [late.clone()];
    let none = TableMarks::default();
    let (truncating, refused) = tokio::join!(
        writer.write_states(Vec::new(), &truncated, Some(&other)),
        writer.write_batch(&mut late_batch, &none, None, &seen, Some(&fence)),
    );
    truncating.expect("partition 1 records a TRUNCATE");
    assert!(matches!(refused, Err(StoreError::MarksMoved)), "{refused:?}");
    let reader = store(&cluster, &prefix).await;
    let found = reader.load_for_write(&[late.0], &[], &[]).await.expect("load");
    assert!(found.states.is_empty(), "a refused batch wrote {:?}", found.states);
}
