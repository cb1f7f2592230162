//! One partition's worker: takes messages in offset order, applies them in batches, writes the
//! resulting state, and only then stores the batch's offsets for commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::context::{ExitReason, IngestContext, Received, WorkerExit};
use crate::dlq::DeadLetters;
use crate::engine::Applier;
use crate::engine::OwnedStates;
use crate::features::{FeatureSet, Truncation};
use crate::store::{FeatureStore, Fence, StoreError};
use crate::telemetry;

pub(super) struct PartitionWorker {
    pub topic: String,
    pub partition: i32,
    /// Moved past each batch once its offsets are stored (see `PartitionSlot::resume_from`).
    pub resume_from: Arc<AtomicI64>,
    pub consumer: Arc<BaseConsumer<IngestContext>>,
    pub store: Arc<FeatureStore>,
    pub features: Arc<FeatureSet>,
    pub dead_letters: DeadLetters,
    /// The partition's shares kept between batches: its own, dropped with the worker.
    pub owned: std::sync::Mutex<OwnedStates>,
    pub batch_max: usize,
    /// `kafka.write_max_entities`.
    pub write_max_entities: usize,
    pub topics: Arc<[String]>,
    /// Why the worker ended on its own (fenced, or asking for its partition to be read again).
    pub exit: Arc<ExitReason>,
}

const CLAIM_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(5);
const REWIND_TIMEOUT: Duration = Duration::from_secs(10);

impl PartitionWorker {
    /// Runs until `stop` is cancelled (between batches), the queue is closed, a newer owner of
    /// the partition fenced this worker, or it found a state it cannot read (`exit` says which).
    pub async fn run(self, mut queue: mpsc::Receiver<Received>, stop: CancellationToken) {
        let Some(mut fence) = self.claim(&stop).await else { return };
        let mut marks = self.store.watch_marks();
        // Registered once: a live batch is a few events, recorded every few milliseconds.
        let queue_wait = metrics::histogram!(telemetry::INGEST_QUEUE_WAIT_SECONDS);
        let batch_duration = metrics::histogram!(telemetry::INGEST_BATCH_SECONDS);
        let latency = metrics::histogram!(telemetry::INGEST_LATENCY_SECONDS);
        // A TRUNCATE recorded while the partition had no worker (during a rebalance's drain, or
        // before a restart) woke nobody, and this partition may hear nothing more: check once
        // before the first message.
        marks.mark_changed();
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Ok(()) = marks.changed() => {
                    // A TRUNCATE recorded on another partition may be one this partition ran
                    // past; with no message coming, only this finds out.
                    if let Some((stream, truncation)) = self.missed_truncate(&fence).await {
                        self.read_again_past_truncate(&fence, &stream, &truncation).await;
                        return;
                    }
                    continue;
                }
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            // The first message waited longest: the batch's latency is its.
            let oldest = first.at;
            let taken = Instant::now();
            let mut batch = vec![first.message];
            while batch.len() < self.batch_max {
                match queue.try_recv() {
                    Ok(received) => batch.push(received.message),
                    Err(_) => break,
                }
            }
            let first_offset = batch[0].offset();
            let last_offset = batch[batch.len() - 1].offset();

            let span = tracing::info_span!(
                "batch",
                topic = %self.topic,
                partition = self.partition,
                first_offset,
                last_offset
            );
            #[cfg(debug_assertions)]
            crate::engine::hooks::injected_panic(&batch);
            let outcome = loop {
                let applier = self.applier(&fence);
                let applied = applier
                    .apply_batch(&self.topic, self.partition, &batch)
                    .instrument(span.clone());
                match applied.await {
                    Err(StoreError::Unclaimed { partition }) => {
                        tracing::warn!(%partition, "the partition's claim is gone from redis (its data was lost?); claiming it again");
                        let Some(claimed) = self.claim(&stop).await else { return };
                        fence = claimed;
                        // Redis lost what they were read from: from now on it is the truth.
                        self.owned
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .clear();
                    }
                    outcome => break outcome,
                }
            };
            match outcome {
                Ok(_) => {
                    self.store_offset(last_offset);
                    let written = Instant::now();
                    queue_wait.record(taken.duration_since(oldest));
                    batch_duration.record(written.duration_since(taken));
                    latency.record(written.duration_since(oldest));
                }
                Err(error @ StoreError::Unreadable { .. }) => {
                    // Its contributions are all in this partition: reading it again from the start
                    // rebuilds it, and every other state skips what it has by position.
                    tracing::error!(topic = %self.topic, partition = self.partition, first_offset, error = %error, "unreadable feature state set aside; reading the partition again from the start to rebuild it");
                    if !self.read_again_from_start().await {
                        // The share is set aside already: read again even at the risk of a crash
                        // before the committed offset catches up.
                        self.resume_from.store(0, Ordering::Release);
                        self.exit.set(WorkerExit::ReadAgain);
                    }
                    return;
                }
                Err(StoreError::MissedTruncate { stream, truncation }) => {
                    self.read_again_past_truncate(&fence, &stream, &truncation).await;
                    return;
                }
                Err(error @ StoreError::Fenced { .. }) => {
                    // Not a single offset more: the new owner reads on from the last commit.
                    tracing::error!(topic = %self.topic, partition = self.partition, first_offset, error = %error, "write refused: another instance owns this partition now; stopping its worker");
                    metrics::counter!(telemetry::STALE_WRITES_REFUSED, "topic" => self.topic.clone())
                        .increment(1);
                    self.exit.set(WorkerExit::Fenced);
                    return;
                }
                Err(error) => {
                    // apply_batch retries every other failure itself; should one come through,
                    // end as a dead worker does: replaced, and nothing skipped.
                    tracing::error!(topic = %self.topic, partition = self.partition, first_offset, error = %error, "batch failed unexpectedly; replacing the worker");
                    return;
                }
            }
        }
    }

    /// Claims the partition in the store, retrying while Redis does not answer; `None` when
    /// stopped first.
    async fn claim(&self, stop: &CancellationToken) -> Option<Fence> {
        let partition = format!("{}/{}", self.topic, self.partition);
        let mut backoff = CLAIM_BACKOFF_MIN;
        loop {
            match self.store.claim(&partition).await {
                Ok(fence) => {
                    tracing::debug!(%partition, epoch = fence.epoch, "partition claimed");
                    return Some(fence);
                }
                Err(error) => {
                    tracing::warn!(%partition, error = %error, retry_in = ?backoff, "cannot claim the partition yet");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(CLAIM_BACKOFF_MAX);
        }
    }

    /// The TRUNCATE of this partition's table that it ran past, if any (see `engine::truncate`).
    async fn missed_truncate(&self, fence: &Fence) -> Option<(String, Truncation)> {
        // Marks and streams are named by the declared source, which need not be the table's name.
        let source = self.features.source_of_topic(&self.topic)?.name.name();
        let stream = format!("{source}/{}", self.partition);
        match self.applier(fence).missed_truncate(source, &stream).await {
            Ok(()) => None,
            Err(StoreError::MissedTruncate { stream, truncation }) => Some((stream, truncation)),
            Err(error) => {
                // The next batch checks again.
                tracing::debug!(%stream, error = %error, "cannot check for a missed TRUNCATE");
                None
            }
        }
    }

    /// Reads the partition again from the start, after a TRUNCATE of its table it had run past.
    async fn read_again_past_truncate(&self, fence: &Fence, stream: &str, truncation: &Truncation) {
        tracing::warn!(topic = %self.topic, partition = self.partition, %stream, ?truncation, "the partition applied changes after a TRUNCATE of its table before knowing of it; reading it again from the start to separate them");
        if !self.read_again_from_start().await {
            // Not rewound: end as a dead worker, whose replacement meets the TRUNCATE again.
            return;
        }
        if let Err(error) = self.applier(fence).acknowledge_truncate(stream, truncation).await {
            tracing::warn!(%stream, error = %error, "cannot record the TRUNCATE as known; the re-read will meet it again");
        }
        metrics::counter!(telemetry::TRUNCATE_REREADS, "topic" => self.topic.clone()).increment(1);
    }

    fn applier<'a>(&'a self, fence: &'a Fence) -> Applier<'a> {
        Applier {
            features: &self.features,
            store: &self.store,
            topics: &self.topics,
            dead_letters: Some(&self.dead_letters),
            fence: Some(fence),
            owned: Some(&self.owned),
            write_max_entities: self.write_max_entities,
        }
    }

    /// Ends the worker asking for its partition to be read again from its first message. The
    /// committed offset is moved back first, and durably: a crash before the re-read caught up
    /// must not resume past what it has to redo. False when it could not be moved (the worker
    /// then ends as a dead one, replaced from its last stored offset).
    async fn read_again_from_start(&self) -> bool {
        let consumer = Arc::clone(&self.consumer);
        let (topic, partition) = (self.topic.clone(), self.partition);
        let rewound = tokio::task::spawn_blocking(move || {
            let (low, _) = consumer.fetch_watermarks(&topic, partition, REWIND_TIMEOUT)?;
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset(&topic, partition, Offset::Offset(low))?;
            consumer.store_offsets(&offsets)?;
            consumer.commit(&offsets, CommitMode::Sync)?;
            Ok::<i64, KafkaError>(low)
        })
        .await;
        match rewound {
            Ok(Ok(low)) => {
                self.resume_from.store(low, Ordering::Release);
                self.exit.set(WorkerExit::ReadAgain);
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, error = %error, "cannot move the committed offset back");
                false
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, partition = self.partition, error = %error, "cannot move the committed offset back");
                false
            }
        }
    }

    /// Marks everything up to `last_offset` as done; auto-commit (or the drain) commits it.
    fn store_offset(&self, last_offset: i64) {
        let mut offsets = TopicPartitionList::new();
        // A committed offset names the next message to read.
        let next = Offset::Offset(last_offset + 1);
        if let Err(error) = offsets
            .add_partition_offset(&self.topic, self.partition, next)
            .and_then(|()| self.consumer.store_offsets(&offsets))
        {
            // The partition was revoked meanwhile: its new owner re-reads from the last commit.
            tracing::warn!(topic = %self.topic, partition = self.partition, offset = last_offset, error = %error, "cannot store offset");
            return;
        }
        self.resume_from.store(last_offset + 1, Ordering::Release);
        metrics::counter!(telemetry::OFFSETS_STORED).increment(1);
    }
}
