//! Partition workers that die (a panic in decode, apply or encode) are replaced without skipping
//! anything: the partition is paused, sought back to the first offset whose effects were not yet
//! durable, and fetched again by a fresh worker. What the dead worker had queued or in flight is
//! read again; what it wrote already is skipped by source position.
//!
//! A worker fenced by a newer owner of its partition is not replaced at once: the rebalance
//! that gave the partition to another instance revokes it here. Only if the partition is still
//! assigned here a while later is a new worker started (claiming the partition again).
//!
//! A worker that dies again at the same offset (a change that panics every time) waits longer
//! before each new try, so that a bug holds its partition back, logged and counted, rather than
//! spinning; the other partitions go on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::context::PartitionKey;

/// Longest wait before a partition whose worker keeps dying at the same offset is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A partition whose worker died.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Restart {
    /// Where the replacement worker starts.
    offset: i64,
    /// Deaths in a row at that offset.
    deaths: u32,
    /// When to seek and resume; `None` once done.
    due: Option<Instant>,
}

/// The partitions waiting for a replacement worker, and the deaths each has seen.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    partitions: HashMap<PartitionKey, Restart>,
}

/// The wait before the replacement of a worker that died `deaths` times in a row at one offset:
/// none the first time, then 1 s, 2 s, 4 s… up to [`MAX_BACKOFF`].
pub(super) fn backoff(deaths: u32) -> Duration {
    match deaths {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_BACKOFF),
    }
}

impl Restarts {
    /// Records a death at `offset`; returns how many deaths in a row that offset has seen.
    pub(super) fn died(&mut self, key: &PartitionKey, offset: i64, now: Instant) -> u32 {
        let deaths = match self.partitions.get(key) {
            Some(previous) if previous.offset == offset => previous.deaths + 1,
            _ => 1,
        };
        let due = Some(now + backoff(deaths));
        self.partitions.insert(key.clone(), Restart { offset, deaths, due });
        deaths
    }

    /// Schedules a new worker at `offset` for `due`, for a worker that ended without dying: one
    /// fenced by a newer owner of its partition (due only if the partition is still assigned
    /// here by then: a rebalance normally revokes it first), or one that asked for its
    /// partition to be read again.
    pub(super) fn schedule(&mut self, key: &PartitionKey, offset: i64, due: Instant) {
        self.partitions.insert(key.clone(), Restart { offset, deaths: 0, due: Some(due) });
    }

    /// The partitions whose replacement is due, with the offset to seek to.
    pub(super) fn due(&self, now: Instant) -> Vec<(PartitionKey, i64)> {
        self.partitions
            .iter()
            .filter(|(_, restart)| restart.due.is_some_and(|due| due <= now))
            .map(|(key, restart)| (key.clone(), restart.offset))
            .collect()
    }

    /// The replacement started: remember the deaths in case it dies at the same offset again.
    pub(super) fn started(&mut self, key: &PartitionKey) {
        if let Some(restart) = self.partitions.get_mut(key) {
            restart.due = None;
        }
    }

    /// Trying again later (the seek failed).
    pub(super) fn retry(&mut self, key: &PartitionKey, at: Instant) {
        if let Some(restart) = self.partitions.get_mut(key) {
            restart.due = Some(at);
        }
    }

    /// True while a replacement worker waits for its time (it starts with the partition's
    /// first message after the seek).
    pub(super) fn pending(&self, key: &PartitionKey) -> bool {
        self.partitions.get(key).is_some_and(|restart| restart.due.is_some())
    }

    /// The partition is no longer this instance's, or is being replayed anyway.
    pub(super) fn forget(&mut self, key: &PartitionKey) {
        self.partitions.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("t".to_string(), 0)
    }

    #[test]
    fn the_first_death_restarts_at_once_and_repeated_ones_back_off() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(7), Duration::from_secs(30));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn deaths_count_in_a_row_at_the_same_offset_only() {
        let mut restarts = Restarts::default();
        let now = Instant::now();
        assert_eq!(restarts.died(&key(), 10, now), 1);
        assert_eq!(restarts.due(now), vec![(key(), 10)]);
        restarts.started(&key());
        assert!(restarts.due(now).is_empty());
        assert_eq!(restarts.died(&key(), 10, now), 2);
        assert!(restarts.due(now).is_empty(), "the second death waits");
        assert_eq!(restarts.due(now + Duration::from_secs(1)), vec![(key(), 10)]);
        // Progress past the offset: a death elsewhere is a first one again.
        assert_eq!(restarts.died(&key(), 25, now), 1);
        restarts.forget(&key());
        assert!(restarts.due(now + MAX_BACKOFF).is_empty());
    }

    #[test]
    fn a_scheduled_worker_is_due_at_its_time_and_is_not_a_death() {
        let mut restarts = Restarts::default();
        let now = Instant::now();
        restarts.schedule(&key(), 0, now + Duration::from_secs(30));
        assert!(restarts.due(now).is_empty());
        assert_eq!(restarts.due(now + Duration::from_secs(30)), vec![(key(), 0)]);
        restarts.started(&key());
        // A death at the same offset afterwards is a first one: it restarts at once.
        assert_eq!(restarts.died(&key(), 0, now), 1);
        assert_eq!(restarts.due(now), vec![(key(), 0)]);
    }
}
