//! One partition's worker: takes messages in offset order, applies them in batches, writes the
//! resulting state, and only then stores the batch's offsets for commit.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::consumer::IngestContext;
use super::envelope::{self, CdcMessage, ChangeEvent};
use crate::features::{self, ActivityChange};
use crate::store::FeatureStore;
use crate::telemetry;

const WRITE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct PartitionWorker {
    pub topic: String,
    pub partition: i32,
    pub consumer: Arc<BaseConsumer<IngestContext>>,
    pub store: Arc<FeatureStore>,
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
        let mut changes: Vec<(String, ActivityChange)> = Vec::new();
        let mut commit_times: Vec<i64> = Vec::new();
        for message in batch {
            match envelope::decode(message.payload()) {
                Ok(CdcMessage::Change(event)) => {
                    self.count_consumed(event.op.label());
                    match self.changes_of(&event) {
                        Ok(event_changes) => {
                            if !event_changes.is_empty()
                                && let Some(ts_ms) = event.source.ts_ms
                            {
                                commit_times.push(ts_ms);
                            }
                            changes.extend(event_changes);
                        }
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
        for ts_ms in commit_times {
            if let Some(committed) = DateTime::from_timestamp_millis(ts_ms) {
                let seconds = (now - committed).num_microseconds().unwrap_or(0) as f64 / 1e6;
                metrics::histogram!(telemetry::FRESHNESS_SECONDS).record(seconds.max(0.0));
            }
        }
    }

    /// The per-user changes a decoded event carries. Tables without features yet are still
    /// decoded, so a malformed event on them is reported.
    fn changes_of(
        &self,
        event: &ChangeEvent,
    ) -> Result<Vec<(String, ActivityChange)>, envelope::DecodeError> {
        match event.table() {
            Some("user_activity") => envelope::activity_changes(event),
            Some("products") => {
                for row in [&event.before, &event.after].into_iter().flatten() {
                    envelope::product_row(row)?;
                }
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Loads the affected users' state from Redis, applies the changes in offset order and
    /// writes the result back.
    async fn write(
        &self,
        changes: &[(String, ActivityChange)],
    ) -> Result<(), crate::store::StoreError> {
        let mut users: Vec<String> = changes.iter().map(|(user, _)| user.clone()).collect();
        users.sort();
        users.dedup();
        let mut states = self.store.load_for_write(&users).await?;
        let now = Utc::now();
        for (user, change) in changes {
            let state = states.remove(user).unwrap_or_default();
            states.insert(user.clone(), features::apply(state, change, now));
        }
        self.store.write_users(states.into_iter().collect()).await
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
