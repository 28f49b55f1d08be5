//! Produce request bodies and what the answers mean, for the three REST proxies that serve the
//! v2 produce API:
//!
//! - Confluent REST Proxy (and this project's bridge): `offsets[i]` has `error_code` `null` on
//!   success, `1` for a non-retriable and `2` for a retriable Kafka error, and `error` (text);
//! - Strimzi Kafka Bridge: a failed record's entry is `{"error_code": <HTTP status>, "message"}`;
//! - Redpanda's HTTP proxy: `{"partition", "error_code": <Kafka error code>, "offset"}`, with
//!   `error_code` only when there is an error.

use serde_json::Value;

/// What a produce answer says about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// Stored.
    Stored,
    /// Not stored; sending it again may succeed.
    Retriable,
    /// Not stored; sending it again will not help.
    Failed,
}

/// What a whole produce answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Per record, in request order.
    Records(Vec<RecordStatus>),
    /// The proxy answered that nothing was stored and a retry may succeed (408, 429 or 5xx with
    /// the proxy's own error body); send the whole batch again later.
    RetryAll(String),
    /// No answer says what was stored (timeout, connection lost, a 5xx that Envoy or another
    /// hop made up): the records may be in Kafka. Sent again under the same idempotency key,
    /// so a proxy that recognises it (the bridge) answers what it did instead of storing them
    /// again.
    Unconfirmed(String),
    /// Nothing was stored and retrying will not help (other 4xx).
    FailAll(String),
}

/// Kafka error codes a producer retries (Kafka's `RetriableException` subclasses).
const RETRIABLE_KAFKA: [i64; 16] = [
    -1, // UNKNOWN_SERVER_ERROR: Redpanda's answer for a broker it cannot reach
    2,  // CORRUPT_MESSAGE
    3,  // UNKNOWN_TOPIC_OR_PARTITION
    5,  // LEADER_NOT_AVAILABLE
    6,  // NOT_LEADER_OR_FOLLOWER
    7,  // REQUEST_TIMED_OUT
    8,  // BROKER_NOT_AVAILABLE
    9,  // REPLICA_NOT_AVAILABLE
    13, // NETWORK_EXCEPTION
    14, // COORDINATOR_LOAD_IN_PROGRESS
    15, // COORDINATOR_NOT_AVAILABLE
    19, // NOT_ENOUGH_REPLICAS
    20, // NOT_ENOUGH_REPLICAS_AFTER_APPEND
    56, // KAFKA_STORAGE_ERROR
    74, // FENCED_LEADER_EPOCH
    75, // UNKNOWN_LEADER_EPOCH
];

/// Classifies one `offsets[]` entry.
pub fn record_status(entry: &Value) -> RecordStatus {
    let code = match entry.get("error_code") {
        None | Some(Value::Null) => return RecordStatus::Stored,
        Some(code) => code.as_i64(),
    };
    let Some(code) = code else {
        // An error code that is not a number: an error all the same, of unknown kind.
        return RecordStatus::Retriable;
    };
    if entry.get("error").is_some() {
        // Confluent REST Proxy: 1 non-retriable, 2 retriable.
        return if code == 2 { RecordStatus::Retriable } else { RecordStatus::Failed };
    }
    if code >= 100 {
        // Strimzi Kafka Bridge: an HTTP status per record.
        return if code >= 500 || code == 408 || code == 429 {
            RecordStatus::Retriable
        } else {
            RecordStatus::Failed
        };
    }
    if code == 0 {
        return RecordStatus::Stored;
    }
    // Redpanda: a Kafka protocol error code.
    if RETRIABLE_KAFKA.contains(&code) {
        RecordStatus::Retriable
    } else {
        RecordStatus::Failed
    }
}

/// Reads a produce answer for a batch of `records` records.
pub fn classify(status: u16, body: &[u8], records: usize) -> Answer {
    match status {
        200..=299 => {}
        408 | 429 | 500..=599 if from_proxy(body) => {
            return Answer::RetryAll(format!("HTTP {status}{}", detail(body)))
        }
        408 | 429 | 500..=599 => return Answer::Unconfirmed(format!("HTTP {status}{}", detail(body))),
        // The bridge: this idempotency key came with another body (nothing was produced); the
        // batch goes again under a new key.
        409 => return Answer::RetryAll(format!("HTTP 409{}", detail(body))),
        0 => return Answer::Unconfirmed("no answer".to_string()),
        _ => return Answer::FailAll(format!("HTTP {status}{}", detail(body))),
    }
    let offsets = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("offsets").and_then(Value::as_array).cloned());
    match offsets {
        // The proxy accepted the batch; an answer without per-record results means all stored.
        None => Answer::Records(vec![RecordStatus::Stored; records]),
        Some(entries) => {
            let mut out: Vec<RecordStatus> = entries.iter().take(records).map(record_status).collect();
            // Fewer entries than records: the missing ones were not confirmed, so they go again.
            out.resize(records, RecordStatus::Retriable);
            Answer::Records(out)
        }
    }
}

/// An error body the proxy itself wrote (`{"error_code": ..., ...}`, as REST Proxy, Strimzi,
/// Redpanda and the bridge answer): it says nothing was produced. Envoy's own answers
/// (`upstream connect error or disconnect/reset before headers`, `no healthy upstream`) are
/// text.
fn from_proxy(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).ok().is_some_and(|v| v.get("error_code").is_some())
}

/// The first per-record error text of a 2xx answer (`error` or `message`), at most 200 bytes:
/// what the proxy said, never record contents.
pub fn first_error(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<Value>(body).ok()?;
    let text = v.get("offsets")?.as_array()?.iter().find_map(|entry| {
        entry.get("error").or_else(|| entry.get("message")).and_then(Value::as_str).map(str::to_string)
    })?;
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text.get(..end).unwrap_or_default().to_string())
}

/// A short reason from an error body (`message`/`error` of the JSON, else its first bytes).
fn detail(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").or_else(|| v.get("error")).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body.get(..body.len().min(120)).unwrap_or(body)).into_owned()
        });
    format!(": {text}")
}

/// Builds `{"records":[{"key":K,"value":V},...]}` from record texts.
pub fn body<'a>(records: impl Iterator<Item = (Option<&'a str>, &'a str)>, capacity: usize) -> Vec<u8> {
    let mut out = String::with_capacity(capacity + 16);
    out.push_str("{\"records\":[");
    for (i, (key, value)) in records.enumerate() {
        if i > 0 {
            out.push(',');
        }
        match key {
            Some(key) => {
                out.push_str("{\"key\":");
                out.push_str(key);
                out.push_str(",\"value\":");
            }
            None => out.push_str("{\"value\":"),
        }
        out.push_str(value);
        out.push('}');
    }
    out.push_str("]}");
    out.into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use RecordStatus::*;

    fn records(answer: Answer) -> Vec<RecordStatus> {
        match answer {
            Answer::Records(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn confluent_rest_proxy_shape() {
        let body = json!({"key_schema_id": null, "value_schema_id": null, "offsets": [
            {"partition": 0, "offset": 10, "error_code": null, "error": null},
            {"partition": null, "offset": null, "error_code": 2, "error": "Local: Message timed out"},
            {"partition": null, "offset": null, "error_code": 1, "error": "Broker: Message size too large"},
        ]});
        assert_eq!(records(classify(200, body.to_string().as_bytes(), 3)), [Stored, Retriable, Failed]);
    }

    #[test]
    fn strimzi_shape() {
        let body = json!({"offsets": [
            {"partition": 2, "offset": 0},
            {"error_code": 500, "message": "Topic test not present in metadata after 60000 ms."},
            {"error_code": 422, "message": "The record is not valid."},
        ]});
        assert_eq!(records(classify(200, body.to_string().as_bytes(), 3)), [Stored, Retriable, Failed]);
    }

    #[test]
    fn redpanda_shape() {
        let body = json!({"offsets": [
            {"partition": 0, "offset": 5},
            {"partition": 0, "error_code": 7, "offset": -1},
            {"partition": 0, "error_code": 10, "offset": -1},
            {"partition": 1, "error_code": 0, "offset": 9},
        ]});
        assert_eq!(
            records(classify(200, body.to_string().as_bytes(), 4)),
            [Stored, Retriable, Failed, Stored]
        );
    }

    #[test]
    fn whole_batch_answers() {
        assert!(
            matches!(classify(503, br#"{"error_code":50301,"message":"queue full"}"#, 2), Answer::RetryAll(m) if m == "HTTP 503: queue full")
        );
        assert!(matches!(
            classify(429, br#"{"error_code":42901,"message":"slow down"}"#, 2),
            Answer::RetryAll(_)
        ));
        // Answers Envoy made up: whether the proxy stored anything is unknown.
        assert!(matches!(classify(504, b"upstream request timeout", 2), Answer::Unconfirmed(_)));
        assert!(matches!(
            classify(503, b"upstream connect error or disconnect/reset before headers. reset reason: connection termination", 2),
            Answer::Unconfirmed(_)
        ));
        assert!(matches!(classify(429, b"", 2), Answer::Unconfirmed(m) if m == "HTTP 429"));
        assert!(matches!(classify(0, b"", 2), Answer::Unconfirmed(_)));
        assert!(matches!(
            classify(409, br#"{"error_code":40901,"message":"key reused"}"#, 2),
            Answer::RetryAll(_)
        ));
        assert!(
            matches!(classify(404, br#"{"error_code":40401,"message":"Topic not found"}"#, 2), Answer::FailAll(m) if m.contains("Topic not found"))
        );
        assert!(matches!(classify(415, b"", 2), Answer::FailAll(_)));
        // Accepted without per-record results; too few results: the rest goes again.
        assert_eq!(records(classify(200, b"", 2)), [Stored, Stored]);
        assert_eq!(
            records(classify(200, br#"{"offsets":[{"partition":0,"offset":1}]}"#, 3)),
            [Stored, Retriable, Retriable]
        );
    }

    #[test]
    fn first_error_names_the_proxy_error_only() {
        let body = json!({"offsets": [
            {"partition": 0, "offset": 1, "error_code": null, "error": null},
            {"partition": null, "offset": null, "error_code": 2, "error": "Local: Queue full"},
        ]});
        assert_eq!(first_error(body.to_string().as_bytes()).as_deref(), Some("Local: Queue full"));
        let strimzi = json!({"offsets": [{"error_code": 500, "message": "Topic not present"}]});
        assert_eq!(first_error(strimzi.to_string().as_bytes()).as_deref(), Some("Topic not present"));
        let long = json!({"offsets": [{"error_code": 2, "error": "é".repeat(150)}]});
        assert_eq!(first_error(long.to_string().as_bytes()).unwrap().len(), 200);
        assert_eq!(first_error(b"{\"offsets\":[{\"partition\":0,\"offset\":1}]}"), None);
        assert_eq!(first_error(b"not json"), None);
    }

    #[test]
    fn body_shape() {
        let b = body([(Some("\"k1\""), "{\"a\":1}"), (None, "{\"b\":2}")].into_iter(), 0);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, json!({"records": [{"key": "k1", "value": {"a": 1}}, {"value": {"b": 2}}]}));
    }
}
