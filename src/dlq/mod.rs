//! The dead-letter topic. A change event that cannot be decoded or applied must neither stall
//! its partition nor vanish: it is produced, unchanged, to `kafka.dlq_topic` with headers that
//! say why it failed and where it came from, and only once the broker has acknowledged it does
//! the partition's offset move past it.
//!
//! `persona dlq list` reads that topic back ([`inspect`]); `persona dlq replay` re-drives chosen
//! dead letters to the partition they came from, marked with [`HEADER_REPLAY_OF`], so that
//! persona applies them once even though their source positions are behind what the partition
//! has applied since (see `features::state`).
//!
//! The products topic is not dead-lettered: every instance reads it whole on every start, so its
//! undecodable events would be written again each time. They are counted and logged.

pub mod commands;
pub mod inspect;

use std::time::Duration;

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::telemetry;

/// The decode or apply error, as text.
pub const HEADER_ERROR: &str = "persona.error";
/// A short stable label of the error (`invalid_json`, `missing_field`, …), as in metrics.
pub const HEADER_KIND: &str = "persona.error.kind";
pub const HEADER_SOURCE_TOPIC: &str = "persona.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "persona.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "persona.source.offset";
/// RFC 3339 time persona gave up on the message.
pub const HEADER_FAILED_AT: &str = "persona.failed_at";
/// On a re-driven message: `<dlq topic>/<partition>/<offset>` of the dead letter it re-drives.
pub const HEADER_REPLAY_OF: &str = "persona.replay.of";

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot create the dead-letter producer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot produce to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("cannot read {topic}: {source}")]
    Read { topic: String, source: KafkaError },
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("no dead letter at offset(s) {missing:?} of {topic}")]
    NoSuchOffsets { topic: String, missing: Vec<i64> },
    #[error("reading the dead-letter topic stopped: {0}")]
    Join(String),
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: &'static str,
    pub error: String,
}

/// Produces dead letters and re-driven messages.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(config: &KafkaConfig) -> Result<Self, DlqError> {
        Ok(Self { producer: producer(config)?, topic: config.dlq_topic.clone() })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `message` unchanged (key, value, its own headers) to the dead-letter topic with
    /// the failure headers added, and waits for the broker's acknowledgement.
    pub async fn send(&self, message: &OwnedMessage, failure: &Failure) -> Result<(), DlqError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let failed_at = Utc::now().to_rfc3339();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter().filter(|h| !h.key.starts_with("persona.error")) {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let headers = headers
            .insert(Header { key: HEADER_ERROR, value: Some(failure.error.as_str()) })
            .insert(Header { key: HEADER_KIND, value: Some(failure.kind) })
            .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(message.topic()) })
            .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) })
            .insert(Header { key: HEADER_FAILED_AT, value: Some(failed_at.as_str()) });
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.producer
            .send(record, DELIVERY_TIMEOUT)
            .await
            .map_err(|(source, _)| DlqError::Produce { topic: self.topic.clone(), source })?;
        metrics::counter!(
            telemetry::DEAD_LETTERS,
            "topic" => message.topic().to_string(),
            "kind" => failure.kind
        )
        .increment(1);
        Ok(())
    }

    /// Creates the dead-letter topic (one partition, the cluster's default replication factor)
    /// when the broker does not have it yet, so that the first dead letter does not depend on
    /// the broker auto-creating topics.
    pub async fn ensure_topic(&self, config: &KafkaConfig) -> Result<(), DlqError> {
        let admin: AdminClient<DefaultClientContext> =
            client(config).create().map_err(DlqError::Create)?;
        // -1: the brokers' `default.replication.factor`, so that `acks=all` meets the cluster's
        // `min.insync.replicas` on a cluster of several brokers as on one.
        let topic = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1));
        let options = AdminOptions::new().operation_timeout(Some(DELIVERY_TIMEOUT));
        let results = admin.create_topics([&topic], &options).await.map_err(|e| {
            DlqError::CreateTopic { topic: self.topic.clone(), reason: e.to_string() }
        })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(DlqError::CreateTopic {
                        topic: self.topic.clone(),
                        reason: code.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// True for a message `persona dlq replay` re-drove.
pub fn is_replay(message: &OwnedMessage) -> bool {
    message.headers().is_some_and(|headers| headers.iter().any(|h| h.key == HEADER_REPLAY_OF))
}

/// For a message `persona dlq replay` re-drove: one number naming the dead letter it came from
/// (its partition and offset in the dead-letter topic), the same however often it is re-driven.
pub fn replay_identity(message: &OwnedMessage) -> Option<i64> {
    let headers = message.headers()?;
    let address = headers.iter().find(|h| h.key == HEADER_REPLAY_OF)?.value?;
    let address = std::str::from_utf8(address).ok()?;
    let mut parts = address.rsplit('/');
    let offset: i64 = parts.next()?.parse().ok()?;
    let partition: i64 = parts.next()?.parse().ok()?;
    Some((partition << 40) | offset)
}

fn producer(config: &KafkaConfig) -> Result<FutureProducer, DlqError> {
    client(config)
        .set("client.id", "persona-dlq")
        // A dead letter is the only copy of what was skipped: wait for every replica.
        .set("acks", "all")
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        .set("linger.ms", "0")
        .create()
        .map_err(DlqError::Create)
}

/// The settings every client of the dead-letter topic shares (its producer, the admin client
/// that creates it, `persona dlq list`'s reader): the brokers, and the security and addressing
/// settings of `kafka.extra_librdkafka`, so that they reach a SASL/TLS cluster as ingest does.
pub(crate) fn client(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in config.extra_librdkafka.iter().filter(|(key, _)| is_shared_setting(key)) {
        client.set(key, value);
    }
    client
}

/// Settings of `kafka.extra_librdkafka` that apply to a producer too (security, addressing);
/// consumer-only ones would make librdkafka warn.
fn is_shared_setting(key: &str) -> bool {
    ["security.", "sasl.", "ssl.", "client.dns", "broker."].iter().any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dead_letter_client_takes_the_security_settings_and_no_consumer_only_ones() {
        let mut config =
            KafkaConfig { brokers: "b1:9093,b2:9093".into(), ..KafkaConfig::default() };
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("ssl.ca.location", "/etc/kafka/ca.pem"),
            ("fetch.wait.max.ms", "10"),
        ] {
            config.extra_librdkafka.insert(key.into(), value.into());
        }
        let client = client(&config);
        assert_eq!(client.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        assert_eq!(client.get("fetch.wait.max.ms"), None, "a consumer-only setting");
    }
}
