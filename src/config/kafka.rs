//! `[kafka]`: the brokers, the consumer group and its topics, batching, and librdkafka settings
//! passed through (credentials redacted when printed).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub brokers: String,
    /// Consumer group shared by every persona instance that splits the CDC partitions.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a name stable across restarts of one
    /// replica, such as its pod name. A restarted member then takes its partitions back at once
    /// instead of after the session timeout. Unset: dynamic membership.
    pub instance_id: Option<String>,
    /// Topics split among instances by the consumer group: Debezium's
    /// `<topic.prefix>.<schema>.<table>` of the feature sources, and its heartbeat topic.
    pub topics: Vec<String>,
    /// The products topic: the dimension every instance reads whole, outside the group.
    pub products_topic: String,
    /// The topics of other declared dimensions (`[[dimension]]` describing an entity other than
    /// the item), by dimension name; read whole like the products topic.
    pub dimension_topics: std::collections::BTreeMap<String, String>,
    /// Where a new consumer group starts. `earliest` so that nothing written before persona's
    /// first start is skipped.
    pub auto_offset_reset: String,
    /// A member that misses heartbeats this long is evicted and its partitions reassigned.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long revoked or shut-down partitions may take to finish their in-flight writes before
    /// their offsets are committed. Must stay below `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Longest time the broker may hold a fetch request open when it has no new data (Kafka
    /// answers as soon as data arrives, so this is not a floor on freshness). A partition just
    /// assigned or resumed may wait this long for the fetch in flight; the cost of a low value
    /// is ~1/value idle fetch requests per second per broker.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// Most messages of one partition applied as one batch, its offsets stored once its writes
    /// are done. A batch is what the partition's queue holds, so batches are this large only
    /// while catching up, where an entity touched several times in a batch is written once:
    /// 4,000 catches up 1.4–1.5× as fast as 1,000 (BENCHMARKS.md, "Batches cut into writes").
    pub batch_max_messages: usize,
    /// Most entities one Redis write carries: a batch whose changes touch more is written in
    /// several writes, in offset order, never splitting a change. Each write is one script,
    /// which other clients of that Redis wait behind; its size follows the entities it carries
    /// (a few KB each), not the batch's messages.
    pub write_max_entities: usize,
    /// Messages buffered per partition before that partition is paused: at least a batch (twice
    /// one, so that the next is ready when a batch is written), and times the partitions an
    /// instance owns and a message's size (about 1 KB), memory held while catching up.
    pub partition_queue_capacity: usize,
    /// How often the consumer re-reads topic metadata; low so a topic created after start is
    /// picked up quickly.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// Where change events that cannot be decoded or applied go, with headers saying why
    /// (`persona dlq list`, `persona dlq replay`). Created at start when missing.
    pub dlq_topic: String,
    /// Passed to librdkafka as is, after persona's own settings (escape hatch).
    pub extra_librdkafka: LibrdkafkaSettings,
}

/// `kafka.extra_librdkafka`: librdkafka settings by name. Printed (`persona config`, `Debug`)
/// with the values of credentials redacted: `sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret` and the like.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct LibrdkafkaSettings(pub BTreeMap<String, String>);

impl LibrdkafkaSettings {
    fn is_secret(key: &str) -> bool {
        ["password", "secret", "ssl.key", "ssl_key", "token"].iter().any(|part| key.contains(part))
    }
}

impl std::ops::Deref for LibrdkafkaSettings {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for LibrdkafkaSettings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl fmt::Debug for LibrdkafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.0 {
            if Self::is_secret(key) {
                map.entry(key, &format_args!("<redacted>"));
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "persona".into(),
            instance_id: None,
            topics: default_topics("persona"),
            products_topic: "persona.public.products".into(),
            dimension_topics: std::collections::BTreeMap::new(),
            auto_offset_reset: "earliest".into(),
            session_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            fetch_wait_max: Duration::from_millis(10),
            batch_max_messages: 4_000,
            write_max_entities: 1_000,
            partition_queue_capacity: 8_000,
            metadata_refresh: Duration::from_secs(10),
            dlq_topic: "persona.dlq".into(),
            extra_librdkafka: LibrdkafkaSettings::default(),
        }
    }
}

/// The feature source topics Debezium writes for the reference schema under `prefix`, plus its
/// heartbeats.
pub fn default_topics(prefix: &str) -> Vec<String> {
    let mut topics: Vec<String> = ["user_activity", "cart_items", "orders"]
        .iter()
        .map(|table| format!("{prefix}.public.{table}"))
        .collect();
    topics.push(format!("__debezium-heartbeat.{prefix}"));
    topics
}
