//! The products dimension: every instance reads every partition of the products topic, from the
//! beginning, into its in-memory [`ProductCatalog`] (not through the consumer group, which would
//! give each instance only a share). Until it has read up to the end offsets it saw at start,
//! the instance reports not ready.
//!
//! Changes to one product are keyed by its id, so they arrive in order on one partition and the
//! catalog ends up with the latest row. Redelivery and Debezium re-publishing replay a suffix of
//! that order, which converges to the same row.
//!
//! A TRUNCATE arrives on one partition while the others may be ahead of it or behind it: it
//! removes the products last written before it (by WAL position, see [`Truncations`]), and the
//! products that partitions behind it deliver from before it are not let in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use super::consumer::{IngestError, client_config};
use crate::config::KafkaConfig;
use crate::decode::envelope::{self, CdcMessage, Op};
use crate::decode::rows;
use crate::features::{DimensionSchema, FeatureSet, ProductCatalog};
use crate::telemetry;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often new partitions of the products topic are looked for.
const PARTITION_CHECK: Duration = Duration::from_secs(10);

/// Each declared dimension and the topic it is read from: the item's from
/// `kafka.products_topic`, the others' from `kafka.dimension_topics`.
pub fn dimension_topics(
    config: &KafkaConfig,
    set: &FeatureSet,
) -> Result<Vec<(String, DimensionSchema)>, IngestError> {
    set.dimensions
        .iter()
        .map(|dimension| {
            let topic = match dimension.entity == set.item {
                true => Some(config.products_topic.clone()),
                false => config.dimension_topics.get(dimension.name).cloned(),
            };
            topic.map(|topic| (topic, dimension.clone())).ok_or_else(|| {
                IngestError::DimensionTopic { dimension: dimension.name.to_string() }
            })
        })
        .collect()
}

/// The running dimension reader.
pub struct Dimension {
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    thread: ThreadHandle<()>,
}

impl Dimension {
    /// Reads `topic` as rows of `schema`.
    pub fn start(
        config: &KafkaConfig,
        topic: String,
        schema: DimensionSchema,
        catalog: Arc<ProductCatalog>,
    ) -> Result<Self, IngestError> {
        let mut client = client_config(config);
        // Every instance reads everything: a group of its own, never committed.
        client
            .set("group.id", format!("{}-dimension-{}", config.group_id, uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .remove("group.instance.id");
        let consumer: BaseConsumer = client.create().map_err(IngestError::Create)?;
        let ready = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let reader = Reader {
            consumer,
            topic,
            schema,
            catalog,
            ready: Arc::clone(&ready),
            stop: stop.clone(),
            end_offsets: HashMap::new(),
            positions: HashMap::new(),
            truncations: Truncations::default(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-dimension".into())
            .spawn(move || reader.run())
            .map_err(IngestError::Thread)?;
        Ok(Self { ready, stop, thread })
    }

    /// True once the catalog holds every product published before start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn readiness(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    pub fn shutdown(self) {
        self.stop.cancel();
        if self.thread.join().is_err() {
            tracing::error!("dimension reader thread panicked");
        }
    }
}

struct Reader {
    consumer: BaseConsumer,
    topic: String,
    schema: DimensionSchema,
    catalog: Arc<ProductCatalog>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    /// Per partition: the end offset at assignment, which the catalog must reach to be ready.
    end_offsets: HashMap<i32, i64>,
    /// Per partition: the next offset to read.
    positions: HashMap<i32, i64>,
    truncations: Truncations,
}

/// Where each product in the catalog was last written (the WAL position of the change, or of the
/// snapshot that read it), and the newest TRUNCATE of the table.
#[derive(Debug, Default)]
struct Truncations {
    written_at: HashMap<String, i64>,
    newest: Option<i64>,
}

impl Truncations {
    /// False for a change from before the newest TRUNCATE, delivered late by another partition.
    fn admits(&self, lsn: Option<i64>) -> bool {
        match (self.newest, lsn) {
            (Some(cut), Some(lsn)) => lsn > cut,
            _ => true,
        }
    }

    fn written(&mut self, product: &str, lsn: Option<i64>) {
        if let Some(lsn) = lsn {
            self.written_at.insert(product.to_string(), lsn);
        }
    }

    /// Records a TRUNCATE at `lsn`; the products it removes (those written before it).
    fn truncate(&mut self, lsn: i64) -> Vec<String> {
        if self.newest.is_some_and(|newest| newest >= lsn) {
            return Vec::new();
        }
        self.newest = Some(lsn);
        let gone: Vec<String> = self
            .written_at
            .iter()
            .filter(|(_, at)| **at < lsn)
            .map(|(product, _)| product.clone())
            .collect();
        for product in &gone {
            self.written_at.remove(product);
        }
        gone
    }
}

impl Reader {
    fn run(mut self) {
        let mut last_check: Option<Instant> = None;
        while !self.stop.is_cancelled() {
            if last_check.is_none_or(|at| at.elapsed() >= PARTITION_CHECK) {
                self.assign_new_partitions();
                last_check = Some(Instant::now());
            }
            if !self.ready.load(Ordering::Relaxed) && self.caught_up() {
                let rows = self.catalog.len_for(self.schema.entity);
                tracing::info!(rows, dimension = self.schema.name, topic = %self.topic, "dimension loaded");
                self.ready.store(true, Ordering::Release);
            }
            match self.consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Ok(message)) => {
                    self.positions.insert(message.partition(), message.offset() + 1);
                    let (partition, offset) = (message.partition(), message.offset());
                    let changes = Changes {
                        topic: &self.topic,
                        schema: &self.schema,
                        catalog: &self.catalog,
                        truncations: &mut self.truncations,
                    };
                    changes.apply(message.payload(), partition, offset);
                }
                Some(Err(error)) => {
                    metrics::counter!(telemetry::CONSUMER_ERRORS).increment(1);
                    tracing::warn!(error = %error, topic = %self.topic, "products consumer error");
                }
            }
        }
    }

    fn caught_up(&self) -> bool {
        self.end_offsets.iter().all(|(partition, end)| {
            *end == 0 || self.positions.get(partition).is_some_and(|position| position >= end)
        })
    }

    /// Assigns partitions not assigned yet, from the beginning. A topic that does not exist yet
    /// (no product ever written) means an empty catalog.
    fn assign_new_partitions(&mut self) {
        let count = match self.consumer.fetch_metadata(Some(&self.topic), METADATA_TIMEOUT) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .find(|topic| topic.name() == self.topic && topic.error().is_none())
                .map_or(0, |topic| topic.partitions().len()),
            Err(error) => {
                tracing::warn!(error = %error, topic = %self.topic, "cannot read products topic metadata");
                return;
            }
        };
        let mut fresh = TopicPartitionList::new();
        for partition in 0..i32::try_from(count).unwrap_or(i32::MAX) {
            if self.end_offsets.contains_key(&partition) {
                continue;
            }
            let end = match self.consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            {
                Ok((_, high)) => high,
                Err(error) => {
                    tracing::warn!(error = %error, partition, "cannot read products end offset");
                    continue;
                }
            };
            if fresh.add_partition_offset(&self.topic, partition, Offset::Beginning).is_ok() {
                self.end_offsets.insert(partition, end);
            }
        }
        if fresh.count() > 0 {
            if let Err(error) = self.consumer.incremental_assign(&fresh) {
                tracing::warn!(error = %error, "cannot assign products partitions");
                for element in fresh.elements() {
                    self.end_offsets.remove(&element.partition());
                }
            } else {
                tracing::info!(topic = %self.topic, partitions = fresh.count(), "reading products");
            }
        }
    }
}

/// One product change applied to the catalog: borrows only what it needs, so the reader can
/// apply a message while the consumer still holds it.
struct Changes<'a> {
    topic: &'a str,
    schema: &'a DimensionSchema,
    catalog: &'a ProductCatalog,
    truncations: &'a mut Truncations,
}

impl Changes<'_> {
    fn apply(self, payload: Option<&[u8]>, partition: i32, offset: i64) {
        let event = match envelope::decode(payload) {
            Ok(CdcMessage::Change(event)) => event,
            Ok(CdcMessage::Tombstone | CdcMessage::Heartbeat { .. }) => return,
            Err(error) => return self.skip(partition, offset, &error),
        };
        let lsn = event.source.lsn;
        let row = match event.op {
            Op::Delete => event.before.as_ref(),
            Op::Read | Op::Create | Op::Update => event.after.as_ref(),
            Op::Truncate => {
                let gone = lsn.map(|lsn| self.truncations.truncate(lsn)).unwrap_or_default();
                tracing::warn!(topic = %self.topic, products = gone.len(), "products truncated; removing every product written before it");
                for product in gone {
                    self.catalog.remove_for(self.schema.entity, &product);
                }
                metrics::gauge!(telemetry::CATALOG_PRODUCTS).set(self.catalog.len() as f64);
                return;
            }
            Op::Message => return,
        };
        if !self.truncations.admits(lsn) {
            return;
        }
        let Some(row) = row else { return };
        let before = event
            .before
            .as_ref()
            .and_then(|before| rows::dimension_row(self.schema, before, |_| None).ok());
        // An unchanged TOASTed attribute keeps its value: from the before image where the table
        // is REPLICA IDENTITY FULL, or else from the row already held.
        let held =
            |id: &str| before.clone().or_else(|| self.catalog.get_for(self.schema.entity, id));
        match rows::dimension_row(self.schema, row, held) {
            Ok(product) if event.op == Op::Delete => {
                self.catalog.remove_for(self.schema.entity, &product.id);
            }
            Ok(product) => {
                // A primary-key change arrives as a delete and a create; an update can still
                // carry an old id in its before image.
                if let Some(old) = &before
                    && old.id != product.id
                {
                    self.catalog.remove_for(self.schema.entity, &old.id);
                }
                self.truncations.written(&product.id, lsn);
                self.catalog.upsert_for(self.schema.entity, product);
            }
            Err(error) => return self.skip(partition, offset, &error),
        }
        metrics::counter!(telemetry::CATALOG_CHANGES, "op" => event.op.label()).increment(1);
        metrics::gauge!(telemetry::CATALOG_PRODUCTS).set(self.catalog.len() as f64);
    }

    fn skip(&self, partition: i32, offset: i64, error: &envelope::DecodeError) {
        tracing::warn!(topic = %self.topic, partition, offset, kind = error.kind(), error = %error, "skipping undecodable product event");
        metrics::counter!(telemetry::DECODE_ERRORS, "kind" => error.kind()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Truncations;

    #[test]
    fn a_truncate_removes_what_came_before_it_whichever_partition_delivers_first() {
        let mut truncations = Truncations::default();
        // A partition ahead of the TRUNCATE (at 50) delivered p2 after it; p1 came before it.
        truncations.written("p1", Some(10));
        truncations.written("p2", Some(60));
        assert_eq!(truncations.truncate(50), vec!["p1".to_string()]);
        // A partition behind delivers p3 from before the TRUNCATE: not let in; p4 after is.
        assert!(!truncations.admits(Some(40)));
        assert!(truncations.admits(Some(70)));
        // Delivered again, the same TRUNCATE removes nothing more.
        truncations.written("p4", Some(70));
        assert!(truncations.truncate(50).is_empty());
        let mut gone = truncations.truncate(80);
        gone.sort();
        assert_eq!(gone, ["p2", "p4"]);
    }
}
