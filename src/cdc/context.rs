//! The consumer's librdkafka callbacks and the per-partition slots they share with the poll
//! loop: logging into `tracing`, consumer-lag statistics, and draining revoked partitions before
//! their offsets are committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

pub(super) type PartitionKey = (String, i32);

/// A message as the poll loop hands it to its partition's worker, with when it was polled: the
/// worker times how long it waited (`persona_ingest_queue_wait_seconds`) and persona's own part
/// of its freshness (`persona_ingest_latency_seconds`).
pub(super) struct Received {
    pub(super) message: OwnedMessage,
    pub(super) at: std::time::Instant,
}

pub(super) struct PartitionSlot {
    /// The message that found the queue full. The partition stays paused until it fits; the
    /// consumer's position is already past it, so librdkafka resumes with the message after it.
    pub(super) held: Option<Received>,
    /// The first offset whose effects are not durable yet: where a replacement for a worker
    /// that died starts. The worker moves it once it has stored a batch's offsets.
    pub(super) resume_from: Arc<AtomicI64>,
    pub(super) queue: mpsc::Sender<Received>,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<()>,
    /// Why the worker ended, when it ended on its own.
    pub(super) exit: Arc<ExitReason>,
}

/// Why a partition worker ended on its own, as it tells the poll loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerExit {
    /// A panic (the worker set nothing).
    Died,
    /// A newer owner of the partition fenced it.
    Fenced,
    /// It found a stored state it cannot read, removed it, and wants the partition read again
    /// from the start (its `resume_from`) to rebuild it.
    ReadAgain,
}

#[derive(Debug, Default)]
pub(super) struct ExitReason(AtomicU8);

impl ExitReason {
    pub(super) fn set(&self, exit: WorkerExit) {
        self.0.store(exit as u8, Ordering::Release);
    }

    pub(super) fn get(&self) -> WorkerExit {
        match self.0.load(Ordering::Acquire) {
            1 => WorkerExit::Fenced,
            2 => WorkerExit::ReadAgain,
            _ => WorkerExit::Died,
        }
    }
}

/// librdkafka callbacks: logs into `tracing`, and drains revoked partitions before their offsets
/// are committed.
pub struct IngestContext {
    pub(super) partitions: Mutex<HashMap<PartitionKey, PartitionSlot>>,
    pub(super) runtime: Handle,
    pub(super) drain_timeout: Duration,
    /// Set by a rebalance that assigned partitions; the poll loop then gives each a worker
    /// (`PollLoop::start_idle_workers`).
    pub(super) assigned: AtomicBool,
    /// Set when ingest stops: its workers are drained and their offsets committed. The close of
    /// the consumer may still deliver a rebalance (a join that completed meanwhile assigns
    /// partitions and takes them back), which has nothing to drain or commit: no synchronous
    /// commit from inside the close. (A close that delivered one once never returned; shutdown
    /// now waits for the close a bounded time, see `main`.)
    pub(super) stopped: AtomicBool,
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(telemetry::CONSUMER_ERRORS).increment(1);
        tracing::warn!(target: "librdkafka", error = %error, reason, "kafka client error");
    }

    /// librdkafka's periodic statistics: the lag of each partition this instance owns, counted
    /// from the offset stored once effects were durable (not from what was merely fetched).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in stats.partitions.iter().filter(|(id, p)| **id >= 0 && p.desired) {
                let lag =
                    partition_lag(p.hi_offset, p.stored_offset, p.committed_offset, p.lo_offset);
                if let Some(lag) = lag {
                    metrics::gauge!(
                        telemetry::CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(lag as f64);
                }
            }
        }
    }
}

/// Messages behind on a partition: counted from the offset stored once effects were durable,
/// else from the committed one, else (nothing processed yet: a new group reads from the start)
/// from the low watermark. `None` until the broker's high watermark is known.
pub(super) fn partition_lag(hi: i64, stored: i64, committed: i64, lo: i64) -> Option<i64> {
    if hi < 0 {
        return None;
    }
    let from = [stored, committed, lo].into_iter().find(|offset| *offset >= 0)?;
    Some((hi - from).max(0))
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            if self.stopped.load(Ordering::Acquire) {
                tracing::info!(
                    partitions = revoked.count(),
                    "partitions revoked after ingest stopped; nothing to drain"
                );
                return;
            }
            let keys: Vec<PartitionKey> = revoked
                .elements()
                .iter()
                .map(|tp| (tp.topic().to_string(), tp.partition()))
                .collect();
            tracing::info!(partitions = keys.len(), "partitions revoked; draining");
            // Their lag is their next owner's to report; summed over instances it stays right.
            for (topic, partition) in &keys {
                metrics::gauge!(
                    telemetry::CONSUMER_LAG,
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(0.0);
            }
            self.drain(Some(&keys));
            commit_stored(consumer);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            if self.stopped.load(Ordering::Acquire) {
                tracing::info!(
                    partitions = assigned.count(),
                    "partitions assigned after ingest stopped; left to the next owner"
                );
                return;
            }
            tracing::info!(partitions = assigned.count(), "partitions assigned");
            self.assigned.store(true, Ordering::Release);
            // librdkafka keeps a partition paused through revoke and assign. A pause for a full
            // queue belonged to the worker the revoke drained; a partition assigned back must
            // be fetched again.
            if let Err(error) = consumer.resume(assigned) {
                tracing::warn!(error = %error, "cannot resume assigned partitions");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result
            && !matches!(
                error,
                KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)
            )
        {
            tracing::warn!(error = %error, "offset commit failed; it will be retried with the next one");
        }
    }
}

impl IngestContext {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionKey, PartitionSlot>> {
        self.partitions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the workers of `keys` (all when `None`) and waits, up to the drain timeout, for
    /// their in-flight batch to finish. Messages still queued are dropped: their offsets were not
    /// stored, so whoever owns the partition next reads them again.
    pub(super) fn drain(&self, keys: Option<&[PartitionKey]>) {
        let slots: Vec<(PartitionKey, PartitionSlot)> = {
            let mut partitions = self.lock();
            match keys {
                Some(keys) => keys.iter().filter_map(|k| partitions.remove_entry(k)).collect(),
                None => partitions.drain().collect(),
            }
        };
        if slots.is_empty() {
            return;
        }
        for (_, slot) in &slots {
            slot.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // Waited for through a std channel rather than `Handle::block_on`, which panics when the
        // last consumer handle happens to be dropped on a runtime thread.
        self.runtime.spawn(async move {
            for ((topic, partition), slot) in slots {
                drop(slot.queue);
                let mut task = slot.task;
                let outcome = match tokio::time::timeout_at(deadline, &mut task).await {
                    Ok(_) => "drained",
                    Err(_) => {
                        task.abort();
                        tracing::warn!(%topic, partition, "partition did not drain in time; its uncommitted messages will be redelivered");
                        "timed_out"
                    }
                };
                metrics::counter!(telemetry::PARTITION_DRAINS, "outcome" => outcome).increment(1);
            }
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(self.drain_timeout + Duration::from_secs(1)).is_err() {
            tracing::warn!("drain did not report back in time");
        }
    }
}

pub(super) fn commit_stored(consumer: &BaseConsumer<IngestContext>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => tracing::warn!(error = %error, "synchronous offset commit failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::partition_lag;

    /// librdkafka reports offsets it does not know as negative (-1001).
    const UNKNOWN: i64 = -1001;

    #[test]
    fn lag_counts_from_what_was_made_durable() {
        assert_eq!(partition_lag(100, 90, 80, 0), Some(10));
        assert_eq!(partition_lag(100, UNKNOWN, 80, 0), Some(20));
        // A new group that has applied nothing yet is behind by everything on the partition.
        assert_eq!(partition_lag(100, UNKNOWN, UNKNOWN, 40), Some(60));
        assert_eq!(partition_lag(0, UNKNOWN, UNKNOWN, 0), Some(0));
        assert_eq!(partition_lag(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN), None);
    }
}
