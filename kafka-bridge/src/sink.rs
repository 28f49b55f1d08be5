//! Where records go: Kafka through librdkafka, or JSON lines to a file or stdout when no
//! brokers are configured.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde_json::Value;

use crate::api::{Outcome, Record};

/// Producer settings (`--acks`, `--compression`, ...).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// `acks`: `all`, `1` or `0`.
    pub acks: String,
    /// `compression.type`: `none`, `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// `linger.ms`.
    pub linger_ms: u64,
    /// `batch.size` in bytes.
    pub batch_bytes: u64,
    /// `message.timeout.ms`: how long librdkafka tries to deliver a record before reporting it
    /// failed (retriable) to the client. Keep it below the client's request timeout, so the
    /// client never gives up on a batch Kafka may still store.
    pub delivery_timeout: Duration,
    /// Any other librdkafka properties, `key=value`.
    pub extra: Vec<(String, String)>,
}

/// The configured destination.
pub enum Sink {
    /// librdkafka producer.
    Kafka(FutureProducer),
    /// JSON lines, one per record.
    Lines(Mutex<Lines>),
}

/// The JSON-lines writer and the offsets it hands out (one partition, 0, per topic).
pub struct Lines {
    out: Box<dyn io::Write + Send>,
    next_offset: std::collections::HashMap<String, i64>,
}

impl Sink {
    /// A Kafka producer with `settings`. librdkafka connects lazily, so this succeeds while the
    /// brokers are down.
    pub fn kafka(settings: &KafkaSettings) -> anyhow::Result<Sink> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", &settings.acks)
            .set("compression.type", &settings.compression)
            .set("linger.ms", settings.linger_ms.to_string())
            .set("batch.size", settings.batch_bytes.to_string())
            .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
            // The acks=all wait the broker enforces (default 30 s): no longer than the client
            // side waits, so a broker does not store a record after it was reported failed.
            // librdkafka itself bounds each produce request by the remaining message timeout.
            .set("request.timeout.ms", settings.delivery_timeout.as_millis().max(1).to_string());
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
        Ok(Sink::Kafka(producer))
    }

    /// JSON lines appended to `path`, or written to stdout when `path` is `None`.
    pub fn lines(path: Option<PathBuf>) -> anyhow::Result<Sink> {
        let out: Box<dyn io::Write + Send> = match path {
            Some(path) => {
                let file: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Box::new(file)
            }
            None => Box::new(io::stdout()),
        };
        Ok(Sink::Lines(Mutex::new(Lines { out, next_offset: Default::default() })))
    }

    /// Stores `records` in `topic` and reports each record's outcome, in order. Returns only
    /// once every record is acknowledged or has failed.
    pub async fn produce(&self, topic: &str, records: &[Record]) -> Vec<Outcome> {
        match self {
            Sink::Kafka(producer) => produce_kafka(producer, topic, records).await,
            Sink::Lines(lines) => {
                let mut lines = lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                lines.write(topic, records)
            }
        }
    }

    /// Delivers everything still queued, waiting at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Sink::Kafka(producer) => producer.flush(timeout).context("flushing the Kafka producer"),
            Sink::Lines(lines) => {
                let mut lines = lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                lines.out.flush().context("flushing the output")
            }
        }
    }

    /// `kafka` or `lines`, for the health answer.
    pub fn mode(&self) -> &'static str {
        match self {
            Sink::Kafka(_) => "kafka",
            Sink::Lines(_) => "lines",
        }
    }
}

async fn produce_kafka(producer: &FutureProducer, topic: &str, records: &[Record]) -> Vec<Outcome> {
    // Everything is queued first and awaited after, so librdkafka batches the request's records.
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let mut message = FutureRecord::<[u8], [u8]>::to(topic);
        if let Some(key) = &record.key {
            message = message.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            message = message.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            message = message.partition(partition);
        }
        pending.push(producer.send_result(message).map_err(|(err, _)| err));
    }
    let mut outcomes = Vec::with_capacity(records.len());
    for delivery in pending {
        outcomes.push(match delivery {
            Ok(future) => match future.await {
                Ok(Ok(delivery)) => {
                    Outcome::Stored { partition: delivery.partition, offset: delivery.offset }
                }
                Ok(Err((err, _))) => failed(&err),
                Err(_) => Outcome::Failed { retriable: true, message: "the producer stopped".to_string() },
            },
            Err(err) => failed(&err),
        });
    }
    outcomes
}

fn failed(err: &KafkaError) -> Outcome {
    let retriable = err.rdkafka_error_code().is_none_or(is_retriable);
    Outcome::Failed { retriable, message: err.to_string() }
}

/// Errors that sending the same record again cannot fix; anything else (timeouts, brokers
/// down, leader changes, a full local queue) may succeed later.
fn is_retriable(code: RDKafkaErrorCode) -> bool {
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::PolicyViolation
    )
}

impl Lines {
    fn write(&mut self, topic: &str, records: &[Record]) -> Vec<Outcome> {
        let mut text = Vec::new();
        let offset = self.next_offset.entry(topic.to_string()).or_insert(0);
        let first = *offset;
        for record in records {
            let parse = |bytes: &Option<Vec<u8>>| {
                bytes.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()).unwrap_or(Value::Null)
            };
            let line = serde_json::json!({
                "topic": topic,
                "partition": 0,
                "offset": *offset,
                "key": parse(&record.key),
                "value": parse(&record.value),
            });
            text.extend_from_slice(line.to_string().as_bytes());
            text.push(b'\n');
            *offset += 1;
        }
        match self.out.write_all(&text).and_then(|()| self.out.flush()) {
            Ok(()) => (0..records.len())
                .map(|i| Outcome::Stored {
                    partition: 0,
                    offset: first + i64::try_from(i).unwrap_or(i64::MAX),
                })
                .collect(),
            Err(err) => {
                // Nothing is known to be written: the offsets are handed out again next time.
                *offset = first;
                let message = format!("writing the output failed: {err}");
                records
                    .iter()
                    .map(|_| Outcome::Failed { retriable: true, message: message.clone() })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retriable_classification() {
        assert!(is_retriable(RDKafkaErrorCode::MessageTimedOut));
        assert!(is_retriable(RDKafkaErrorCode::QueueFull));
        assert!(is_retriable(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!is_retriable(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!is_retriable(RDKafkaErrorCode::TopicAuthorizationFailed));
    }
}
