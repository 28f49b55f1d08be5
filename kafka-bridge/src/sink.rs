//! Where records go: Kafka through librdkafka, or JSON lines to a file or stdout when no
//! brokers are configured.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use serde_json::Value;
use tokio::sync::oneshot;

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
    /// failed; `None` (the default) waits for Kafka however long it takes, so the bridge never
    /// gives up on a record that a slow broker may still store.
    pub delivery_timeout: Option<Duration>,
    /// Any other librdkafka properties, `key=value`.
    pub extra: Vec<(String, String)>,
}

/// The configured destination.
pub enum Sink {
    /// librdkafka producer, polled by its own thread.
    Kafka(ThreadedProducer<Deliveries>),
    /// JSON lines, one per record.
    Lines(Mutex<Lines>),
}

/// The JSON-lines writer and the offsets it hands out (one partition, 0, per topic).
pub struct Lines {
    out: Box<dyn io::Write + Send>,
    next_offset: std::collections::HashMap<String, i64>,
}

/// Routes each record's delivery report to the request waiting for it, with what librdkafka
/// knows about a failed record: whether it may have reached the broker.
pub struct Deliveries;

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("gatewasm-kafka-bridge: librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<oneshot::Sender<Outcome>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Box<oneshot::Sender<Outcome>>) {
        let outcome = match result {
            Ok(message) => Outcome::Stored { partition: message.partition(), offset: message.offset() },
            Err((err, message)) => {
                // SAFETY: `message.ptr()` is the live message librdkafka handed to this delivery
                // callback; rd_kafka_message_status only reads its status field.
                let status = unsafe { rd_kafka_message_status(message.ptr()) };
                let possibly_stored = status != rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED;
                failed(err, possibly_stored)
            }
        };
        // The request may be gone (its produce task still waits, so this is rare): nothing to do.
        let _ = tx.send(outcome);
    }
}

impl Sink {
    /// A Kafka producer with `settings`. librdkafka connects lazily, so this succeeds while the
    /// brokers are down.
    ///
    /// With `acks=all` the producer is idempotent (`enable.idempotence=true`, unless `extra`
    /// says otherwise): a produce request librdkafka sends again after a timeout or a lost
    /// connection is recognised by the broker and stored once. librdkafka refuses idempotence
    /// with `acks` 0 or 1.
    pub fn kafka(settings: &KafkaSettings) -> anyhow::Result<Sink> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", &settings.acks)
            .set("compression.type", &settings.compression)
            .set("linger.ms", settings.linger_ms.to_string())
            .set("batch.size", settings.batch_bytes.to_string())
            // 0: librdkafka's "no limit". A record handed to a broker that stalls may still be
            // stored after any timeout; reporting it failed invites the client to send it again.
            .set(
                "message.timeout.ms",
                settings.delivery_timeout.map_or(0, |t| t.as_millis().max(1)).to_string(),
            );
        if matches!(settings.acks.as_str(), "all" | "-1") {
            config.set("enable.idempotence", "true");
        }
        for (key, value) in &settings.extra {
            config.set(key, value);
        }
        let producer: ThreadedProducer<Deliveries> =
            config.create_with_context(Deliveries).context("creating the Kafka producer")?;
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

async fn produce_kafka(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    records: &[Record],
) -> Vec<Outcome> {
    // Everything is queued first and awaited after, so librdkafka batches the request's records.
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let (tx, rx) = oneshot::channel();
        let mut message = BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, Box::new(tx));
        if let Some(key) = &record.key {
            message = message.key(key.as_slice());
        }
        if let Some(value) = &record.value {
            message = message.payload(value.as_slice());
        }
        if let Some(partition) = record.partition {
            message = message.partition(partition);
        }
        // A record librdkafka refuses to queue (full local queue, unknown partition) never left.
        pending.push(producer.send(message).map(|()| rx).map_err(|(err, _)| failed(&err, false)));
    }
    let mut outcomes = Vec::with_capacity(records.len());
    for delivery in pending {
        outcomes.push(match delivery {
            Ok(rx) => rx.await.unwrap_or_else(|_| Outcome::Failed {
                retriable: true,
                possibly_stored: true,
                message: "the producer stopped without a delivery report".to_string(),
            }),
            Err(outcome) => outcome,
        });
    }
    outcomes
}

/// A failed record's outcome; `possibly_stored` when librdkafka had sent it to a broker that
/// did not answer (its status is not "not persisted").
fn failed(err: &KafkaError, possibly_stored: bool) -> Outcome {
    let retriable = err.rdkafka_error_code().is_none_or(is_retriable);
    Outcome::Failed { retriable, possibly_stored, message: err.to_string() }
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
                    .map(|_| Outcome::Failed {
                        retriable: true,
                        possibly_stored: false,
                        message: message.clone(),
                    })
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
