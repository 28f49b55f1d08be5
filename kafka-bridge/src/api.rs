//! The Kafka REST produce API subset the bridge serves (Confluent REST Proxy v2, JSON embedded
//! format): request parsing and response bodies. Pure, so it is unit-tested without a server.

use serde::Deserialize;
use serde_json::{json, Value};

/// Content type of a v2 JSON produce request.
pub const JSON_V2: &str = "application/vnd.kafka.json.v2+json";
/// Content type of every answer, as Confluent's REST Proxy sends it.
pub const RESPONSE_TYPE: &str = "application/vnd.kafka.v2+json";

/// One record to produce: key and value as the JSON the client sent, serialized to bytes as
/// Kafka will store them (a string key `"abc"` is stored as the five bytes `"abc"`, quotes
/// included, as REST Proxy's JSON format does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Key bytes; `None` when the record has no key (or a `null` one).
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` for a `null` value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Partition the client chose, if any.
    pub partition: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    records: Vec<RawRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    partition: Option<i32>,
}

/// Why a request is refused before anything is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// REST Proxy's error code (status times 100 plus a detail digit).
    pub error_code: u32,
    /// Human-readable reason.
    pub message: String,
}

impl ApiError {
    /// An error with status and REST Proxy error code.
    pub fn new(status: u16, error_code: u32, message: impl Into<String>) -> Self {
        Self { status, error_code, message: message.into() }
    }

    /// The JSON body: `{"error_code": ..., "message": ...}`.
    pub fn body(&self) -> Vec<u8> {
        json!({ "error_code": self.error_code, "message": self.message }).to_string().into_bytes()
    }
}

/// The topic of `POST /topics/{topic}`; `None` for any other path. Topic names follow Kafka's
/// rule: 1 to 249 characters of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn topic_of(path: &str) -> Option<Result<&str, ApiError>> {
    let path = path.split('?').next().unwrap_or(path);
    let topic = path.strip_prefix("/topics/")?;
    if topic.contains('/') {
        return None;
    }
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    Some(if valid {
        Ok(topic)
    } else {
        Err(ApiError::new(422, 42202, format!("invalid topic name {topic:?}")))
    })
}

/// Parses a produce body into records (at least one).
pub fn parse_records(body: &[u8]) -> Result<Vec<Record>, ApiError> {
    let raw: RawBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(422, 42201, format!("request body is not a v2 JSON produce request: {e}"))
    })?;
    if raw.records.is_empty() {
        return Err(ApiError::new(422, 42201, "`records` is empty"));
    }
    Ok(raw
        .records
        .into_iter()
        .map(|r| Record {
            key: r.key.filter(|k| !k.is_null()).map(|k| k.to_string().into_bytes()),
            value: r.value.filter(|v| !v.is_null()).map(|v| v.to_string().into_bytes()),
            partition: r.partition,
        })
        .collect())
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka acknowledged it at this partition and offset.
    Stored {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// It was not stored; `retriable` tells the client whether sending it again may succeed.
    Failed {
        /// Whether a retry may succeed (REST Proxy's `error_code` 2; 1 otherwise).
        retriable: bool,
        /// librdkafka had sent it to a broker that never answered: Kafka may hold it, and a
        /// client that sends it again may store it twice. Only a `--delivery-timeout-ms` (or a
        /// fatal producer error) reports such a record.
        possibly_stored: bool,
        /// The producer's reason.
        message: String,
    },
}

/// The 200 answer: one `offsets` entry per record, in request order, in REST Proxy's shape
/// (`error_code` 1 for a non-retriable error, 2 for a retriable one, `null` on success).
pub fn response_body(outcomes: &[Outcome]) -> Vec<u8> {
    let offsets: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Stored { partition, offset } => {
                json!({ "partition": partition, "offset": offset, "error_code": null, "error": null })
            }
            Outcome::Failed { retriable, possibly_stored, message } => json!({
                "partition": null,
                "offset": null,
                "error_code": if *retriable { 2 } else { 1 },
                "error": if *possibly_stored {
                    format!("{message} (possibly stored: sent to a broker that did not answer)")
                } else {
                    message.clone()
                },
            }),
        })
        .collect();
    json!({ "key_schema_id": null, "value_schema_id": null, "offsets": offsets }).to_string().into_bytes()
}

/// True when the request's content type is the v2 JSON one (parameters such as `charset`
/// allowed); plain `application/json` is accepted too, as REST Proxy does for v2.
pub fn acceptable_content_type(value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(JSON_V2) || media.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked() {
        assert_eq!(topic_of("/topics/access-logs").unwrap().unwrap(), "access-logs");
        assert_eq!(topic_of("/topics/a.b_c?x=1").unwrap().unwrap(), "a.b_c");
        assert!(topic_of("/topics/a/partitions/1").is_none());
        assert!(topic_of("/healthz").is_none());
        assert_eq!(topic_of("/topics/").unwrap().unwrap_err().status, 422);
        assert!(topic_of("/topics/..").unwrap().is_err());
        assert!(topic_of("/topics/a%20b").unwrap().is_err());
        assert!(topic_of(&format!("/topics/{}", "a".repeat(250))).unwrap().is_err());
    }

    #[test]
    fn records_keep_their_json() {
        let records = parse_records(
            br#"{"records":[{"key":"r1","value":{"a":1,"s":"x\"y"}},{"value":[1,2]},{"key":null,"value":null,"partition":2}]}"#,
        )
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key.as_deref(), Some(&b"\"r1\""[..]));
        let value: Value = serde_json::from_slice(records[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(value, json!({"a": 1, "s": "x\"y"}));
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].value, None);
        assert_eq!(records[2].partition, Some(2));
    }

    #[test]
    fn bad_bodies_are_422() {
        for body in [&b"not json"[..], br#"{"records":[]}"#, br#"{"records":[{"valu":1}]}"#, br#"{}"#] {
            let err = parse_records(body).unwrap_err();
            assert_eq!(err.status, 422, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn response_shape_is_rest_proxy_v2() {
        let body = response_body(&[
            Outcome::Stored { partition: 0, offset: 7 },
            Outcome::Failed { retriable: true, possibly_stored: false, message: "Local: Queue full".into() },
            Outcome::Failed {
                retriable: false,
                possibly_stored: false,
                message: "Broker: Message size too large".into(),
            },
            Outcome::Failed {
                retriable: true,
                possibly_stored: true,
                message: "Local: Message timed out".into(),
            },
        ]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["offsets"][0], json!({"partition": 0, "offset": 7, "error_code": null, "error": null}));
        assert_eq!(v["offsets"][1]["error_code"], 2);
        assert_eq!(v["offsets"][2]["error_code"], 1);
        assert_eq!(v["offsets"][2]["error"], "Broker: Message size too large");
        assert_eq!(v["offsets"][3]["error_code"], 2);
        assert_eq!(
            v["offsets"][3]["error"],
            "Local: Message timed out (possibly stored: sent to a broker that did not answer)"
        );
        assert!(v["key_schema_id"].is_null());
    }

    #[test]
    fn content_types() {
        assert!(acceptable_content_type(Some("application/vnd.kafka.json.v2+json")));
        assert!(acceptable_content_type(Some("application/vnd.kafka.json.v2+json; charset=utf-8")));
        assert!(acceptable_content_type(Some("application/json")));
        assert!(!acceptable_content_type(Some("application/vnd.kafka.binary.v2+json")));
        assert!(!acceptable_content_type(None));
    }
}
