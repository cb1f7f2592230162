//! The Kafka consumer: one dedicated thread polls librdkafka, routes each message to its
//! partition's worker, and handles rebalances.
//!
//! Partition lifecycle, per `(topic, partition)`:
//! ```text
//! (none) --first message, or assigned having committed offsets--> Running
//! Running --queue full: hold the message, pause--> Paused
//! Paused --held message fits the queue again, resume--> Running
//! Running|Paused --revoke or shutdown--> Draining --in-flight batch acked or drain_timeout--> (none)
//! ```
//! Polling on a thread of its own means a rebalance callback may block while the revoked
//! partitions drain without stalling the async runtime, and the poll loop never blocks on a full
//! queue: it pauses that partition instead, so the consumer keeps its group membership. Pausing
//! makes librdkafka discard what it prefetched for the partition and fetch again, on resume,
//! from the message after the last one polled: the held message is handed over first, so
//! nothing is skipped or repeated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::context::{IngestContext, PartitionKey, Received, commit_stored};
use super::restart::Restarts;
use crate::config::KafkaConfig;
use crate::dlq::DeadLetters;
use crate::engine::OwnedBudget;
use crate::features::FeatureSet;
use crate::store::FeatureStore;
use crate::telemetry;

mod workers;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const SEEK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a partition whose worker was fenced waits for the rebalance that revokes it before
/// this instance claims it again (it is then still assigned here: the group says it is ours).
const FENCED_RECHECK: Duration = Duration::from_secs(30);
/// How often librdkafka reports statistics (consumer lag).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe { topics: Vec<String>, source: KafkaError },
    #[error("cannot start the poll thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(
        "invalid configuration: `kafka.dimension_topics.{dimension}` is required by dimension \
         `{dimension}` (persona sources plan prints it)"
    )]
    DimensionTopic { dimension: String },
}

/// Checks that a broker answers; used by the readiness probe.
#[derive(Clone)]
pub struct BrokerProbe {
    /// Weak: the consumer closes (and leaves its group) when ingest shuts down, not whenever the
    /// API's last probe lets go of it.
    consumer: Weak<BaseConsumer<IngestContext>>,
}

impl BrokerProbe {
    /// Blocking: call from `spawn_blocking`.
    pub fn check(&self, timeout: Duration) -> Result<(), String> {
        let consumer = self.consumer.upgrade().ok_or_else(|| "ingest has stopped".to_string())?;
        consumer.fetch_metadata(None, timeout).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Where [`Ingest::replay`] moves this instance's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Every partition from its first offset (state was lost).
    Beginning,
    /// At start without state: partitions with a committed offset from their first offset (the
    /// state they were committed against is gone); the others start where
    /// `kafka.auto_offset_reset` says, which for a new group is the same.
    LostState,
    /// From these offsets, by `<topic>/<partition>` (a rebuild's end offsets); partitions not
    /// listed from their first offset.
    From(HashMap<String, i64>),
}

/// Asks the ingest to drain every partition it owns and seek it to a [`Replay`] target (once it
/// owns some). Feature state deduplicates by source position, so reading changes again is
/// harmless.
#[derive(Clone)]
pub struct Replayer(std::sync::mpsc::Sender<Replay>);

impl Replayer {
    pub fn replay(&self, replay: Replay) {
        if self.0.send(replay).is_err() {
            tracing::warn!("ingest has stopped; replay ignored");
        }
    }
}

/// The running ingest: a poll thread and its partition workers.
pub struct Ingest {
    consumer: Arc<BaseConsumer<IngestContext>>,
    commands: std::sync::mpsc::Sender<Replay>,
    stop: CancellationToken,
    thread: ThreadHandle<()>,
}

impl Ingest {
    /// Creates the consumer, subscribes, and starts polling on a thread of its own. Must be
    /// called from within the tokio runtime the workers should run on.
    pub fn start(
        config: &KafkaConfig,
        store: Arc<FeatureStore>,
        features: Arc<FeatureSet>,
        dead_letters: DeadLetters,
        owned: OwnedBudget,
    ) -> Result<Self, IngestError> {
        let context = IngestContext {
            partitions: Mutex::new(HashMap::new()),
            runtime: Handle::current(),
            drain_timeout: config.drain_timeout,
            assigned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<IngestContext> = client_config(config)
            .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string())
            .create_with_context(context)
            .map_err(IngestError::Create)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| IngestError::Subscribe { topics: config.topics.clone(), source })?;
        let consumer = Arc::new(consumer);
        let stop = CancellationToken::new();
        let (commands, receiver) = std::sync::mpsc::channel();
        let poll_loop = PollLoop {
            commands: receiver,
            pending_replay: None,
            consumer: Arc::clone(&consumer),
            store,
            features,
            dead_letters,
            owned,
            stop: stop.clone(),
            batch_max: config.batch_max_messages,
            write_max_entities: config.write_max_entities,
            topics: Arc::from(config.topics.clone()),
            queue_capacity: config.partition_queue_capacity,
            restarts: Restarts::default(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop.run())
            .map_err(IngestError::Thread)?;
        Ok(Self { consumer, commands, stop, thread })
    }

    /// A handle that asks this ingest to replay its partitions.
    pub fn replayer(&self) -> Replayer {
        Replayer(self.commands.clone())
    }

    pub fn broker_probe(&self) -> BrokerProbe {
        BrokerProbe { consumer: Arc::downgrade(&self.consumer) }
    }

    /// True once the poll thread has ended (after shutdown, or if it died).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Drains every partition, commits, and leaves the group. Blocking: call from
    /// `spawn_blocking`.
    pub fn shutdown(self) {
        self.stop.cancel();
        if self.thread.join().is_err() {
            tracing::error!("kafka poll thread panicked");
        }
    }
}

/// The librdkafka settings persona relies on, then the operator's extras.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "persona")
        // Offsets are stored by the workers once effects are durable, then auto-committed.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &config.auto_offset_reset)
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("topic.metadata.refresh.interval.ms", config.metadata_refresh.as_millis().to_string())
        .set("fetch.wait.max.ms", config.fetch_wait_max.as_millis().to_string())
        .set("enable.partition.eof", "false");
    if let Some(instance_id) = &config.instance_id {
        client.set("group.instance.id", instance_id);
    }
    for (key, value) in config.extra_librdkafka.iter() {
        client.set(key, value);
    }
    client
}

struct PollLoop {
    commands: std::sync::mpsc::Receiver<Replay>,
    pending_replay: Option<Replay>,
    consumer: Arc<BaseConsumer<IngestContext>>,
    store: Arc<FeatureStore>,
    features: Arc<FeatureSet>,
    dead_letters: DeadLetters,
    owned: OwnedBudget,
    stop: CancellationToken,
    batch_max: usize,
    write_max_entities: usize,
    topics: Arc<[String]>,
    queue_capacity: usize,
    restarts: Restarts,
}

impl PollLoop {
    fn run(mut self) {
        tracing::info!("ingest started");
        let mut last_resume_check = Instant::now();
        while !self.stop.is_cancelled() {
            if last_resume_check.elapsed() >= POLL_INTERVAL {
                self.check_workers();
                self.start_idle_workers();
                self.restart_due();
                self.resume_drained();
                while let Ok(replay) = self.commands.try_recv() {
                    self.pending_replay = Some(replay);
                }
                if let Some(replay) = self.pending_replay.take()
                    && !self.replay(&replay)
                {
                    self.pending_replay = Some(replay);
                }
                last_resume_check = Instant::now();
            }
            match self.consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Ok(message)) => {
                    self.dispatch(Received { message: message.detach(), at: Instant::now() });
                }
                Some(Err(error)) => {
                    metrics::counter!(telemetry::CONSUMER_ERRORS).increment(1);
                    tracing::warn!(error = %error, "kafka consumer error");
                }
            }
        }
        tracing::info!("ingest stopping; draining partitions");
        self.consumer.context().drain(None);
        commit_stored(&self.consumer);
        self.consumer.context().stopped.store(true, Ordering::Release);
        self.consumer.unsubscribe();
        tracing::info!("ingest stopped");
    }

    fn dispatch(&mut self, received: Received) {
        let key = (received.message.topic().to_string(), received.message.partition());
        let offset = received.message.offset();
        let died_at = {
            let mut partitions = self.consumer.context().lock();
            let slot =
                partitions.entry(key.clone()).or_insert_with(|| self.spawn_worker(&key, offset));
            if let Some(held) = &slot.held {
                // Pausing discards what was prefetched, so this does not happen; should it,
                // fetch from just after the held message again rather than skip this one.
                tracing::warn!(topic = %key.0, partition = key.1, offset, "message of a paused partition; fetching it again on resume");
                let after_held = Offset::Offset(held.message.offset() + 1);
                if let Err(error) = self.consumer.seek(&key.0, key.1, after_held, SEEK_TIMEOUT) {
                    tracing::error!(topic = %key.0, partition = key.1, error = %error, "cannot seek a paused partition");
                }
                return;
            }
            match slot.queue.try_send(received) {
                Ok(()) => None,
                Err(TrySendError::Full(received)) => {
                    tracing::debug!(topic = %key.0, partition = key.1, offset, "queue full; partition paused");
                    metrics::counter!(telemetry::PARTITION_PAUSES, "topic" => key.0.clone())
                        .increment(1);
                    slot.held = Some(received);
                    self.set_paused(&key, true);
                    None
                }
                // The worker ended on its own: a panic, or fenced. This message is read again
                // with the rest.
                Err(TrySendError::Closed(_)) => partitions
                    .remove(&key)
                    .map(|dead| (dead.resume_from.load(Ordering::Acquire), dead.exit.get())),
            }
        };
        if let Some((offset, exit)) = died_at {
            self.worker_ended(&key, offset, exit);
        }
    }

    /// Drains the workers and seeks every assigned partition; `false` when it must be tried again
    /// (nothing assigned yet, or a seek failed).
    fn replay(&mut self, replay: &Replay) -> bool {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) if assignment.count() > 0 => assignment,
            _ => return false,
        };
        let committed = match replay {
            Replay::LostState => {
                match self.consumer.committed_offsets(assignment.clone(), SEEK_TIMEOUT) {
                    Ok(committed) => Some(committed),
                    Err(error) => {
                        tracing::warn!(error = %error, "cannot read committed offsets; retrying");
                        return false;
                    }
                }
            }
            _ => None,
        };
        let mut targets: Vec<(PartitionKey, Offset)> = Vec::new();
        for element in assignment.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match replay {
                Replay::From(offsets) => offsets
                    .get(&format!("{topic}/{partition}"))
                    .map_or(Offset::Beginning, |offset| Offset::Offset(*offset)),
                Replay::Beginning => Offset::Beginning,
                Replay::LostState => {
                    let was_committed = committed
                        .as_ref()
                        .and_then(|c| c.find_partition(topic, partition))
                        .is_some_and(|tp| matches!(tp.offset(), Offset::Offset(_)));
                    if !was_committed {
                        continue;
                    }
                    Offset::Beginning
                }
            };
            targets.push(((topic.to_string(), partition), offset));
        }
        // Only what is sought is drained: messages queued for the other partitions must stay.
        let keys: Vec<PartitionKey> = targets.iter().map(|(key, _)| key.clone()).collect();
        self.consumer.context().drain(Some(&keys));
        for key in &keys {
            self.restarts.forget(key);
        }
        let mut done = true;
        for (key, offset) in &targets {
            let (topic, partition) = key;
            // A partition paused for a full queue lost its slot in the drain: resume it.
            self.set_paused(key, false);
            if let Err(error) = self.consumer.seek(topic, *partition, *offset, SEEK_TIMEOUT) {
                tracing::warn!(%topic, partition, error = %error, "cannot seek for replay; retrying");
                done = false;
            }
        }
        if done {
            tracing::info!(partitions = targets.len(), ?replay, "replaying partitions");
        }
        done
    }

    /// Resumes paused partitions whose queue has room again, starting with the held message.
    fn resume_drained(&self) {
        let mut partitions = self.consumer.context().lock();
        for (key, slot) in partitions.iter_mut() {
            if slot.held.is_none() || slot.queue.capacity() < self.queue_capacity / 2 {
                continue;
            }
            let Some(message) = slot.held.take() else { continue };
            if let Err(TrySendError::Full(message) | TrySendError::Closed(message)) =
                slot.queue.try_send(message)
            {
                slot.held = Some(message);
                continue;
            }
            tracing::debug!(topic = %key.0, partition = key.1, "partition resumed");
            self.set_paused(key, false);
        }
    }

    fn set_paused(&self, (topic, partition): &PartitionKey, paused: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, *partition);
        let result = if paused { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        if let Err(error) = result {
            tracing::warn!(%topic, partition, paused, error = %error, "cannot change partition flow");
        }
    }
}
