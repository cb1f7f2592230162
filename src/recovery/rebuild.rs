//! `persona rebuild`: reads every feature topic from the beginning into a fresh state
//! generation, then makes it current. Serving instances keep answering from the old generation
//! meanwhile and switch when it is done (see [`super`]); the old generation is deleted after a
//! grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::engine::{Applier, BatchStats, OwnedBudget, OwnedStates};
use crate::features::{FeatureSet, Truncation};
use crate::store::{FeatureStore, StoreError, generation};
use crate::telemetry;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Most messages of one partition applied as one batch. Large, because an entity touched several
/// times in a batch is written once: 500 gave 15–16k messages/s on the simulator's history,
/// 5,000 gave 26–35k/s (BENCHMARKS.md). Its writes are bounded by `kafka.write_max_entities`.
const BATCH_MAX: usize = 5_000;
/// Messages read, across partitions, before their batches are applied: bounds the messages
/// held (about 1 KB each) however many partitions there are.
const PENDING_MAX: usize = 20_000;
/// A rebuild that reads nothing for this long has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
    #[error("applying a batch failed unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("no message read for {STALL_TIMEOUT:?}; still missing {missing} messages")]
    Stalled { missing: u64 },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub generation: String,
    pub previous: Option<String>,
    pub messages: u64,
    pub stats: BatchStats,
    pub elapsed: Duration,
    /// Keys of the previous generation deleted after the grace period.
    pub deleted: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.messages as f64 / self.elapsed.as_secs_f64().max(0.001);
        writeln!(f, "rebuilt feature state generation {}", self.generation)?;
        writeln!(
            f,
            "  messages read     {:>10}  ({rate:.0}/s in {:.1}s)",
            self.messages,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  changes applied   {:>10}", self.stats.changes)?;
        writeln!(
            f,
            "  duplicates        {:>10}  (published more than once, skipped)",
            self.stats.duplicates
        )?;
        writeln!(
            f,
            "  late              {:>10}  (older than a window and history)",
            self.stats.late
        )?;
        writeln!(f, "  undecodable       {:>10}  (skipped)", self.stats.errors)?;
        match &self.previous {
            Some(previous) => write!(
                f,
                "  replaced          {previous} ({} keys deleted after the grace period)",
                self.deleted
            ),
            None => write!(f, "  replaced          nothing (there was no state)"),
        }
    }
}

type PartitionKey = (String, i32);

/// What the rebuild applies batches with: the states it keeps of each partition between them.
struct Replayed<'a> {
    features: Arc<FeatureSet>,
    store: Arc<FeatureStore>,
    topics: Arc<[String]>,
    consumer: &'a BaseConsumer,
    budget: OwnedBudget,
    owned: HashMap<PartitionKey, Arc<Mutex<OwnedStates>>>,
    write_max_entities: usize,
}

impl Replayed<'_> {
    /// Applies the partitions' batches side by side, one task each (the partitions' shares are
    /// apart, as between the partition workers of a live ingest). A partition that ran past a
    /// TRUNCATE delivered on another partition (see `engine::truncate`) is sought back to its start
    /// and read again, from the states in Redis.
    async fn apply(
        &mut self,
        positions: &mut HashMap<PartitionKey, i64>,
        pending: HashMap<PartitionKey, Vec<OwnedMessage>>,
    ) -> Result<BatchStats, RebuildError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (key, batch) in pending {
            let owned =
                Arc::clone(self.owned.entry(key.clone()).or_insert_with(|| {
                    Arc::new(Mutex::new(OwnedStates::new(self.budget.clone())))
                }));
            let (features, store) = (Arc::clone(&self.features), Arc::clone(&self.store));
            let topics = Arc::clone(&self.topics);
            let write_max_entities = self.write_max_entities;
            tasks.spawn(async move {
                let applier = Applier {
                    features: &features,
                    store: &store,
                    topics: &topics,
                    dead_letters: None,
                    fence: None,
                    owned: Some(&owned),
                    write_max_entities,
                };
                let applied = applier.apply_batch(&key.0, key.1, &batch).await;
                (key, applied)
            });
        }
        let mut stats = BatchStats::default();
        while let Some(joined) = tasks.join_next().await {
            let (key, applied) = joined?;
            match applied {
                Err(StoreError::MissedTruncate { stream, truncation }) => {
                    self.read_again(positions, key, &stream, &truncation).await?;
                }
                applied => stats += applied?,
            }
        }
        Ok(stats)
    }

    /// Reads again, from its start, every partition that ran past a TRUNCATE of its table it did
    /// not know of; `false` when there is none.
    async fn read_again_past_truncates(
        &mut self,
        positions: &mut HashMap<PartitionKey, i64>,
        ends: &Ends,
    ) -> Result<bool, RebuildError> {
        let mut any = false;
        for key in ends.keys() {
            // Streams are named by their declared source, not by their table.
            let Some(source) = self.features.source_of_topic(&key.0) else { continue };
            let source = source.name.name();
            let stream = format!("{source}/{}", key.1);
            match self.applier().missed_truncate(source, &stream).await {
                Err(StoreError::MissedTruncate { stream, truncation }) => {
                    self.read_again(positions, key.clone(), &stream, &truncation).await?;
                    any = true;
                }
                checked => checked?,
            }
        }
        Ok(any)
    }

    /// Records `truncation` as known to `stream` and reads its partition again from the start,
    /// from the states in Redis.
    async fn read_again(
        &mut self,
        positions: &mut HashMap<PartitionKey, i64>,
        key: PartitionKey,
        stream: &str,
        truncation: &Truncation,
    ) -> Result<(), RebuildError> {
        tracing::info!(%stream, ?truncation, "the partition ran past a TRUNCATE; reading it again");
        self.applier().acknowledge_truncate(stream, truncation).await?;
        self.owned.remove(&key);
        self.consumer.seek(&key.0, key.1, Offset::Beginning, METADATA_TIMEOUT)?;
        positions.insert(key, 0);
        Ok(())
    }

    fn applier(&self) -> Applier<'_> {
        Applier {
            features: &self.features,
            store: &self.store,
            topics: &self.topics,
            dead_letters: None,
            fence: None,
            owned: None,
            write_max_entities: self.write_max_entities,
        }
    }
}

/// Rebuilds from `kafka.topics`; `grace` is how long instances get to switch before the old
/// generation is deleted.
pub async fn run(
    kafka: &KafkaConfig,
    store: &Arc<FeatureStore>,
    features: &Arc<FeatureSet>,
    owned_max_bytes: u64,
    grace: Duration,
) -> Result<Summary, RebuildError> {
    let started = Instant::now();
    let previous = generation::current(store).await?;
    let fresh = generation::new_generation();
    store.use_generation(&fresh);
    tracing::info!(generation = %fresh, ?previous, "rebuilding feature state from the topics");

    let mut client = crate::cdc::client_config(kafka);
    client
        .set("group.id", format!("{}-rebuild-{}", kafka.group_id, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .remove("group.instance.id");
    let consumer: BaseConsumer = client.create()?;
    let (assignment, ends, total) = end_offsets(&consumer, &kafka.topics)?;
    consumer.assign(&assignment)?;

    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut replayed = Replayed {
        features: Arc::clone(features),
        store: Arc::clone(store),
        topics: Arc::from(kafka.topics.clone()),
        consumer: &consumer,
        budget: OwnedBudget::new(owned_max_bytes),
        owned: HashMap::new(),
        write_max_entities: kafka.write_max_entities,
    };
    let mut positions: HashMap<PartitionKey, i64> = HashMap::new();
    let mut pending: HashMap<PartitionKey, Vec<OwnedMessage>> = HashMap::new();
    let mut pending_messages = 0usize;
    let mut stats = BatchStats::default();
    let mut messages = 0u64;
    let mut last_progress = Instant::now();
    let done = |positions: &HashMap<PartitionKey, i64>| {
        ends.iter().all(|(key, end)| positions.get(key).is_some_and(|p| p >= end))
    };
    // Until no partition has run past a TRUNCATE it did not know of: one that read all it had
    // before another partition delivered the TRUNCATE finds out only at the end.
    loop {
        while !done(&positions) {
            let polled = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100)));
            let mut flush = polled.is_none();
            match polled {
                Some(Ok(message)) => {
                    let key = (message.topic().to_string(), message.partition());
                    let end = ends.get(&key).copied().unwrap_or(0);
                    let position = positions.entry(key.clone()).or_insert(0);
                    if message.offset() >= *position && message.offset() < end {
                        *position = message.offset() + 1;
                        let batch = pending.entry(key).or_default();
                        batch.push(message.detach());
                        pending_messages += 1;
                        flush = batch.len() >= BATCH_MAX || pending_messages >= PENDING_MAX;
                        messages += 1;
                        bar.inc(1);
                        last_progress = Instant::now();
                    }
                }
                Some(Err(error)) => tracing::warn!(error = %error, "kafka error while rebuilding"),
                None => {}
            }
            if flush || done(&positions) {
                stats += replayed.apply(&mut positions, std::mem::take(&mut pending)).await?;
                pending_messages = 0;
            }
            if last_progress.elapsed() > STALL_TIMEOUT {
                let read: i64 = positions.values().sum();
                let end: i64 = ends.values().sum();
                return Err(RebuildError::Stalled {
                    missing: u64::try_from(end - read).unwrap_or(0),
                });
            }
        }
        stats += replayed.apply(&mut positions, std::mem::take(&mut pending)).await?;
        if !replayed.read_again_past_truncates(&mut positions, &ends).await? {
            break;
        }
    }
    bar.finish_and_clear();

    let resume: HashMap<String, i64> = ends
        .iter()
        .map(|((topic, partition), end)| (format!("{topic}/{partition}"), *end))
        .collect();
    generation::set_resume_offsets(store, &fresh, Some(&resume)).await?;
    generation::swap_fingerprint(store, &fresh, &features.fingerprint).await?;
    generation::switch_to(store, &fresh).await?;
    metrics::counter!(telemetry::REBUILDS, "reason" => "command").increment(1);
    tracing::info!(generation = %fresh, "new feature state generation is current");
    let elapsed = started.elapsed();

    let mut deleted = 0;
    if let Some(previous) = &previous {
        tokio::time::sleep(grace).await;
        deleted = generation::delete(store, previous).await?;
    }
    Ok(Summary { generation: fresh, previous, messages, stats, elapsed, deleted })
}

type Ends = HashMap<PartitionKey, i64>;

/// Every partition of `topics` from its beginning, the end offset each must be read up to, and
/// the number of messages in between.
fn end_offsets(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<(TopicPartitionList, Ends, u64), RebuildError> {
    let mut assignment = TopicPartitionList::new();
    let mut ends = Ends::new();
    let mut total = 0u64;
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        for partition in 0..i32::try_from(partitions).unwrap_or(0) {
            let (low, high) = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
            if high > low {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
                ends.insert((topic.clone(), partition), high);
                total += u64::try_from(high - low).unwrap_or(0);
            }
        }
    }
    Ok((assignment, ends, total))
}
