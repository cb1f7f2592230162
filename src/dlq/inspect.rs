//! Reading the dead-letter topic back (`persona dlq list`) and re-driving dead letters to the
//! partition they came from (`persona dlq replay`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    DeadLetters, DlqError, HEADER_ERROR, HEADER_FAILED_AT, HEADER_KIND, HEADER_REPLAY_OF,
    HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
};
use crate::config::KafkaConfig;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading stops when the high watermark is reached, or when nothing arrives for this long.
const READ_IDLE: Duration = Duration::from_secs(10);

/// One message of the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub kind: String,
    pub error: String,
    pub failed_at: String,
    /// Set when this dead letter is itself a re-driven message that failed again.
    pub replay_of: Option<String>,
    pub key: Option<String>,
    /// The original value, as text (lossy for non-UTF-8 bytes).
    pub payload: Option<String>,
    #[serde(skip)]
    raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    raw_payload: Option<Vec<u8>>,
    #[serde(skip)]
    other_headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// `<dlq topic>/<partition>/<offset>`: what [`HEADER_REPLAY_OF`] carries.
    pub fn address(&self, topic: &str) -> String {
        format!("{topic}/{}/{}", self.partition, self.offset)
    }
}

/// Every dead letter from `from_offset` on (per partition), up to the topic's end when called.
pub fn read(config: &KafkaConfig, from_offset: i64) -> Result<Vec<DeadLetter>, DlqError> {
    let topic = config.dlq_topic.as_str();
    let read_error = |source| DlqError::Read { topic: topic.to_string(), source };
    let consumer: BaseConsumer = super::client(config)
        .set("group.id", "persona-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(read_error)?;
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).map_err(read_error)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for partition in partitions {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT).map_err(read_error)?;
        let start = from_offset.max(low);
        if start < high {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(read_error)?;
            remaining += 1;
            ends.insert(partition, high);
        }
    }
    let mut letters = Vec::new();
    if remaining == 0 {
        return Ok(letters);
    }
    consumer.assign(&assignment).map_err(read_error)?;
    let mut last_progress = Instant::now();
    while remaining > 0 && last_progress.elapsed() < READ_IDLE {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = result.map_err(read_error)?;
        last_progress = Instant::now();
        let Some(end) = ends.get(&message.partition()).copied() else { continue };
        if message.offset() >= end {
            continue;
        }
        letters.push(decode(&message));
        if message.offset() + 1 >= end {
            ends.remove(&message.partition());
            remaining -= 1;
        }
    }
    letters.sort_by_key(|letter| (letter.partition, letter.offset));
    Ok(letters)
}

fn decode(message: &impl Message) -> DeadLetter {
    let mut letter = DeadLetter {
        partition: message.partition(),
        offset: message.offset(),
        source_topic: String::new(),
        source_partition: None,
        source_offset: None,
        kind: String::new(),
        error: String::new(),
        failed_at: String::new(),
        replay_of: None,
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: message.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
        raw_key: message.key().map(<[u8]>::to_vec),
        raw_payload: message.payload().map(<[u8]>::to_vec),
        other_headers: Vec::new(),
    };
    let Some(headers) = message.headers() else { return letter };
    for header in headers.iter() {
        let text =
            header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        match header.key {
            HEADER_ERROR => letter.error = text,
            HEADER_KIND => letter.kind = text,
            HEADER_SOURCE_TOPIC => letter.source_topic = text,
            HEADER_SOURCE_PARTITION => letter.source_partition = text.parse().ok(),
            HEADER_SOURCE_OFFSET => letter.source_offset = text.parse().ok(),
            HEADER_FAILED_AT => letter.failed_at = text,
            HEADER_REPLAY_OF => letter.replay_of = Some(text),
            other => {
                letter.other_headers.push((other.to_string(), header.value.map(<[u8]>::to_vec)))
            }
        }
    }
    letter
}

/// Produces each dead letter's original key, value and headers to the partition it came from,
/// marked as a replay of it. Returns how many were re-driven.
pub async fn replay(dead_letters: &DeadLetters, letters: &[DeadLetter]) -> Result<usize, DlqError> {
    let mut sent = 0;
    for letter in letters {
        if letter.source_topic.is_empty() {
            continue;
        }
        let address = letter.address(dead_letters.topic());
        let mut headers = OwnedHeaders::new();
        for (key, value) in &letter.other_headers {
            headers = headers.insert(Header { key, value: value.as_deref() });
        }
        let headers =
            headers.insert(Header { key: HEADER_REPLAY_OF, value: Some(address.as_str()) });
        let mut record = FutureRecord::<[u8], [u8]>::to(&letter.source_topic).headers(headers);
        if let Some(partition) = letter.source_partition {
            record = record.partition(partition);
        }
        if let Some(key) = &letter.raw_key {
            record = record.key(key);
        }
        if let Some(payload) = &letter.raw_payload {
            record = record.payload(payload);
        }
        dead_letters.producer.send(record, super::DELIVERY_TIMEOUT).await.map_err(
            |(source, _)| DlqError::Produce { topic: letter.source_topic.clone(), source },
        )?;
        sent += 1;
    }
    Ok(sent)
}

/// A one-line preview of a value: control characters escaped, cut at `max` characters.
pub fn preview(text: &str, max: usize) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            let escape = c.is_control().then(|| c.escape_default());
            escape.into_iter().flatten().chain((!c.is_control()).then_some(c))
        })
        .collect();
    if escaped.chars().count() <= max {
        escaped
    } else {
        let cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_escapes_and_cuts() {
        assert_eq!(preview("a\nb", 10), "a\\nb");
        assert_eq!(preview("{\"a\":1}", 10), "{\"a\":1}");
        assert_eq!(preview("abcdefgh", 5), "abcd…");
        assert_eq!(preview("", 5), "");
    }
}
