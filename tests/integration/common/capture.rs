//! A Debezium capture of a test's own, and Kafka helpers for the tests that use one: a
//! publication whose row filter keeps only the test's users, and a connector with its own topic
//! prefix and slot, so that what other tests write to the shared tables never reaches its topics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};

use super::{DEADLINE, env};

pub const PARTITIONS: i32 = 4;
pub const TABLES: [&str; 3] = ["user_activity", "cart_items", "orders"];
/// Partitions of a capture's topics, all of which persona reads (`Capture::persona_env`).
pub const TOPIC_PARTITIONS: usize = TABLES.len() * PARTITIONS as usize;

pub fn hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Runs the persona CLI with the stack's environment plus `extra`.
pub fn persona(args: &[&str], extra: &[(String, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_persona"));
    command.args(args).env("RUST_LOG", "warn").env("NO_COLOR", "1");
    for (key, value) in extra {
        command.env(key, value);
    }
    command.output().expect("run persona")
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The committed connector file with `changes` applied (`None` removes a key).
pub fn connector_file(dir: &Path, name: &str, changes: &[(&str, Option<&str>)]) -> PathBuf {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("connect/persona-postgres.json");
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(committed).expect("read")).expect("json");
    file["name"] = json!(name);
    let config = file["config"].as_object_mut().expect("config");
    for (key, value) in changes {
        match value {
            Some(value) => config.insert(key.to_string(), json!(value)),
            None => config.remove(*key),
        };
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&file).expect("json")).expect("write");
    path
}

pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .create()
        .expect("admin client")
}

pub fn consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .set("group.id", format!("ops-test-{}", hex()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Kafka Connect's config topic (scripts/stack), partition 0 only.
pub const CONNECT_CONFIGS: &str = "persona-connect-configs";

/// The keys of partition 0 of `topic` from offset `from` up to `to`.
pub fn keys_written(topic: &str, from: i64, to: i64) -> Vec<String> {
    if from >= to {
        return Vec::new();
    }
    let consumer = consumer();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Offset(from)).expect("offset");
    consumer.assign(&assignment).expect("assign");
    let mut keys = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < DEADLINE {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
        keys.push(
            String::from_utf8_lossy(rdkafka::Message::key(&message).unwrap_or_default())
                .into_owned(),
        );
        if rdkafka::Message::offset(&message) + 1 >= to {
            return keys;
        }
    }
    panic!("{topic} not read up to {to} within {DEADLINE:?}: {keys:?}");
}

pub fn high_watermark(topic: &str, partition: i32) -> i64 {
    consumer().fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks").1
}

/// The partitions of `topic` whose committed offset in `group` is behind their end: those
/// `group` has not yet applied and committed all of.
pub fn partitions_behind(group: &str, topic: &str) -> Vec<i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("PERSONA_KAFKA__BROKERS"))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(topic, partition);
    }
    // Fetching committed offsets reads the group's state without joining it.
    let committed =
        consumer.committed_offsets(partitions, Duration::from_secs(10)).expect("committed offsets");
    (0..PARTITIONS)
        .filter(|&partition| {
            let end = high_watermark(topic, partition);
            let at = match committed.find_partition(topic, partition).map(|p| p.offset()) {
                Some(rdkafka::Offset::Offset(offset)) => offset,
                _ => 0,
            };
            at < end
        })
        .collect()
}

/// A Debezium capture of this test's own: users `<prefix>-…` only, topics `<prefix>.public.*`.
pub struct Capture {
    pub prefix: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The publication of a capture: the captured tables, rows of the capture's users only.
pub async fn create_publication(db: &tokio_postgres::Client, prefix: &str) {
    let filter = format!("WHERE (user_id LIKE '{prefix}-%')");
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t} {filter}")).collect();
    db.batch_execute(&format!("CREATE PUBLICATION {prefix}_pub FOR TABLE {}", tables.join(", ")))
        .await
        .expect("create publication");
}

impl Capture {
    pub async fn create(db: &tokio_postgres::Client) -> Self {
        let prefix = format!("ops{}", hex());
        create_publication(db, &prefix).await;
        let names: Vec<(String, i32)> = TABLES
            .iter()
            .map(|t| (format!("{prefix}.public.{t}"), PARTITIONS))
            .chain([(format!("__debezium-heartbeat.{prefix}"), 1)])
            .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            // -1: the brokers' default, 3 on the stack's three-broker cluster.
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)))
            .collect();
        admin().create_topics(&topics, &AdminOptions::new()).await.expect("create topics");
        let dir = tempfile::tempdir().expect("tempdir");
        let keys: Vec<String> = TABLES.iter().map(|t| format!("public.{t}:user_id")).collect();
        let include: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
        let file = connector_file(
            dir.path(),
            &prefix,
            &[
                ("topic.prefix", Some(&prefix)),
                ("publication.name", Some(&format!("{prefix}_pub"))),
                ("slot.name", Some(&format!("{prefix}_slot"))),
                ("snapshot.mode", Some("no_data")),
                ("table.include.list", Some(&include.join(","))),
                ("message.key.columns", Some(&keys.join(";"))),
            ],
        );
        Self { prefix, file, _dir: dir }
    }

    pub fn file(&self) -> &str {
        self.file.to_str().expect("utf-8 path")
    }

    pub fn topic(&self, table: &str) -> String {
        format!("{}.public.{table}", self.prefix)
    }

    pub fn user(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// persona reading this capture's topics, dead-lettering to a topic of its own.
    pub fn persona_env(&self) -> Vec<(String, String)> {
        let topics: Vec<String> = TABLES.iter().map(|t| self.topic(t)).collect();
        vec![
            ("PERSONA_KAFKA__TOPICS".into(), serde_json::to_string(&topics).expect("json")),
            ("PERSONA_KAFKA__DLQ_TOPIC".into(), self.dlq()),
        ]
    }

    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    pub fn apply(&self) -> Output {
        let output = persona(&["connector", "apply", self.file()], &[]);
        assert!(output.status.success(), "apply: {}", text(&output));
        output
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = persona(&["connector", "delete", self.file()], &[]);
        release_slot_and_publication(&self.prefix);
    }
}

/// Drops the slot `<prefix>_slot` once its deleted connector's task has let go of it, and the
/// publication `<prefix>_pub`.
pub fn release_slot_and_publication(prefix: &str) {
    let sql = format!(
        "DO $$ BEGIN FOR i IN 1..100 LOOP \
           IF NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{prefix}_slot' AND active) THEN \
             PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{prefix}_slot'; \
             EXIT; END IF; PERFORM pg_sleep(0.1); END LOOP; END $$; \
         DROP PUBLICATION IF EXISTS {prefix}_pub;"
    );
    let _ = Command::new("psql").arg(env("PERSONA_POSTGRES__URL")).args(["-qc", &sql]).output();
}

/// The partition of `topic` whose messages mention `needle` (read from the beginning).
pub async fn partition_holding(topic: &str, needle: &str) -> i32 {
    for partition in 0..PARTITIONS {
        if !events_containing(topic, partition, 0, needle).await.is_empty() {
            return partition;
        }
    }
    panic!("no partition of {topic} mentions {needle}");
}

/// Payloads of `topic`/`partition` from `from` up to its end that contain `needle`.
pub async fn events_containing(
    topic: &str,
    partition: i32,
    from: i64,
    needle: &str,
) -> Vec<Vec<u8>> {
    let consumer = consumer();
    let (low, high) =
        consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
    let start = from.max(low);
    if start >= high {
        return Vec::new();
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))
        .expect("offset");
    consumer.assign(&assignment).expect("assign");
    let mut found = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < DEADLINE {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else { continue };
        let payload = rdkafka::Message::payload(&message).unwrap_or_default();
        if String::from_utf8_lossy(payload).contains(needle) {
            found.push(payload.to_vec());
        }
        if rdkafka::Message::offset(&message) + 1 >= high {
            break;
        }
    }
    found
}
