//! One partition's worker: takes messages in offset order, applies them in batches, writes the
//! resulting state, and only then stores the batch's offsets for commit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::consumer::IngestContext;
use super::envelope::{self, CdcMessage};
use crate::features::{self, Entity, EntityState, FeatureSet, SourceChange};
use crate::store::{EntityRef, FeatureStore, StateKey};
use crate::telemetry;

const WRITE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct PartitionWorker {
    pub topic: String,
    pub partition: i32,
    pub consumer: Arc<BaseConsumer<IngestContext>>,
    pub store: Arc<FeatureStore>,
    pub features: Arc<FeatureSet>,
    pub batch_max: usize,
}

impl PartitionWorker {
    /// Runs until `stop` is cancelled (between batches) or the queue is closed.
    pub async fn run(self, mut queue: mpsc::Receiver<OwnedMessage>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                message = queue.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.batch_max {
                match queue.try_recv() {
                    Ok(message) => batch.push(message),
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
            self.process(&batch).instrument(span).await;
            self.store_offset(last_offset);
        }
    }

    async fn process(&self, batch: &[OwnedMessage]) {
        let mut changes: Vec<SourceChange> = Vec::new();
        for message in batch {
            match envelope::decode(message.payload()) {
                Ok(CdcMessage::Change(event)) => {
                    self.count_consumed(event.op.label());
                    match envelope::source_change(&event) {
                        Ok(Some(change)) => changes.push(change),
                        Ok(None) => {}
                        Err(error) => self.skip(message, &error),
                    }
                }
                Ok(CdcMessage::Tombstone) => self.count_consumed("tombstone"),
                Ok(CdcMessage::Heartbeat { .. }) => self.count_consumed("heartbeat"),
                Err(error) => self.skip(message, &error),
            }
        }
        if changes.is_empty() {
            return;
        }
        let mut backoff = WRITE_BACKOFF_MIN;
        loop {
            match self.write(&changes).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff, "feature write failed; holding offsets and retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WRITE_BACKOFF_MAX);
                }
            }
        }
        let now = Utc::now();
        for committed in changes.iter().filter_map(|change| change.committed_at) {
            let seconds = (now - committed).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics::histogram!(telemetry::FRESHNESS_SECONDS).record(seconds.max(0.0));
        }
    }

    /// The shares a change touches: this stream's share of the users and products of its row
    /// images.
    fn keys_of(&self, change: &SourceChange, stream: &str) -> Vec<(StateKey, Entity, String)> {
        let mut keys = Vec::new();
        for entity in self.features.entities_fed_by(change.table) {
            for row in [&change.before, &change.after].into_iter().flatten() {
                let Some(id) = features::entity_of(row, entity) else { continue };
                let key = EntityRef { entity, id: id.to_string() }.share(stream);
                if !keys.iter().any(|(known, _, _)| *known == key) {
                    keys.push((key, entity, id.to_string()));
                }
            }
        }
        keys
    }

    /// Loads the touched states from Redis, applies the changes in offset order (skipping those
    /// a state already has) and writes back the states that changed.
    async fn write(&self, changes: &[SourceChange]) -> Result<(), crate::store::StoreError> {
        let streams: Vec<String> =
            changes.iter().map(|change| format!("{}/{}", change.table, self.partition)).collect();
        let routed: Vec<Vec<(StateKey, Entity, String)>> = changes
            .iter()
            .zip(&streams)
            .map(|(change, stream)| self.keys_of(change, stream))
            .collect();
        let mut keys: Vec<StateKey> =
            routed.iter().flatten().map(|(key, _, _)| key.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut states = self.store.load_for_write(&keys).await?;
        let now = Utc::now();
        let mut changed: HashSet<StateKey> = HashSet::new();
        let (mut duplicates, mut late) = (0u64, 0u64);
        for (change, targets) in changes.iter().zip(&routed) {
            let stream = format!("{}/{}", change.table, self.partition);
            for (key, entity, id) in targets {
                let state = states.entry(key.clone()).or_default();
                let outcome =
                    features::apply(&self.features, *entity, id, state, change, &stream, now);
                if outcome.duplicate {
                    duplicates += 1;
                } else {
                    changed.insert(key.clone());
                }
                late += u64::from(outcome.late);
            }
        }
        if duplicates > 0 {
            metrics::counter!(telemetry::DUPLICATES_SKIPPED, "topic" => self.topic.clone())
                .increment(duplicates);
        }
        if late > 0 {
            metrics::counter!(telemetry::LATE_EVENTS, "topic" => self.topic.clone())
                .increment(late);
        }
        let writes: Vec<(StateKey, EntityState)> =
            states.into_iter().filter(|(key, _)| changed.contains(key)).collect();
        self.store.write_states(writes).await
    }

    fn skip(&self, message: &OwnedMessage, error: &envelope::DecodeError) {
        tracing::warn!(
            offset = message.offset(),
            kind = error.kind(),
            error = %error,
            "skipping undecodable change event"
        );
        metrics::counter!(telemetry::DECODE_ERRORS, "kind" => error.kind()).increment(1);
    }

    fn count_consumed(&self, op: &'static str) {
        metrics::counter!(telemetry::EVENTS_CONSUMED, "topic" => self.topic.clone(), "op" => op)
            .increment(1);
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
        metrics::counter!(telemetry::OFFSETS_STORED).increment(1);
    }
}
