//! Configuration: the JSON users write (`Raw*`), compiled once into [`Compiled`], which the
//! request path reads without parsing anything.

use std::collections::BTreeMap;
use std::time::Duration;

use gatewasm::config::{self, ConfigErrors};
use serde::Deserialize;
use serde_json::Value;

use crate::record::{self, Field, PropertyKind, Source};

/// The plugin configuration as written (Istio `pluginConfig`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Envoy cluster of the Kafka REST proxy (the bridge, Confluent REST Proxy, Strimzi Kafka
    /// Bridge or Redpanda's HTTP proxy). In Istio: `outbound|PORT||HOST`.
    pub cluster: Option<String>,
    /// `:authority` of the produce requests; defaults to the cluster name.
    pub authority: Option<String>,
    /// Kafka topic the records go to.
    pub topic: Option<String>,
    /// Prefix before `/topics/{topic}`, for a proxy served under a path (`/kafka`).
    #[serde(default)]
    pub path_prefix: String,
    /// Extra headers on every produce request (for example the proxy's `authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long a produce request may take before it is retried, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most records in one produce request.
    #[serde(default = "default_batch_max_size")]
    pub batch_max_size: usize,
    /// Most bytes of records in one produce request (a larger single record is sent alone).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// A batch smaller than the limits is sent once its oldest record is this old.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Most records held per worker (waiting, in flight or waiting to be retried).
    #[serde(default = "default_buffer_max_records")]
    pub buffer_max_records: usize,
    /// Most bytes of records held per worker.
    #[serde(default = "default_buffer_max_bytes")]
    pub buffer_max_bytes: usize,
    /// Produce requests in flight at once per worker.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Retries of timeouts, 5xx answers and retriable per-record errors.
    #[serde(default)]
    pub retry: RawRetry,
    /// Record field whose value becomes the Kafka key (records with the same key go to the same
    /// partition); none: no key.
    pub key_field: Option<String>,
    /// Which fields each record has.
    #[serde(default)]
    pub fields: RawFields,
    /// Header names that are logged in clear although they carry credentials
    /// (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`).
    #[serde(default)]
    pub allow_sensitive_headers: Vec<String>,
    /// Fraction of requests logged, from 0 to 1.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    /// Log only requests whose response code is in this range.
    #[serde(default)]
    pub status: RawStatus,
}

/// `retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// First backoff, in milliseconds; doubled on each further attempt.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Attempts per record before it counts as failed; 0 retries as long as it stays in the
    /// buffer (the buffer's bounds still apply to new records).
    #[serde(default)]
    pub max_attempts: u32,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_attempts: 0,
        }
    }
}

/// `fields`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    /// Default fields left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field name to request header name.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Field name to response header name.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Field name to Envoy attribute path (`upstream.local_address`, `connection.mtls`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Field name to a fixed JSON value.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
}

/// `status`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Lowest response code logged.
    pub min: Option<u16>,
    /// Highest response code logged.
    pub max: Option<u16>,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_batch_max_size() -> usize {
    500
}
fn default_batch_max_bytes() -> usize {
    1 << 20
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_buffer_max_records() -> usize {
    10_000
}
fn default_buffer_max_bytes() -> usize {
    8 << 20
}
fn default_max_in_flight() -> usize {
    4
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    5_000
}
fn default_sample_rate() -> f64 {
    1.0
}

/// Most produce requests in flight per worker (the SDK allows 64 root callouts).
pub const MAX_IN_FLIGHT: usize = 32;

/// Headers that carry credentials: their values are logged as [`REDACTED`] unless listed in
/// `allow_sensitive_headers`.
pub const SENSITIVE_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];

pub use crate::record::REDACTED;

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// Attempts per record; 0 for no limit.
    pub max_attempts: u32,
}

/// Limits on batches and on the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most records per batch.
    pub batch_max_size: usize,
    /// Most record bytes per batch.
    pub batch_max_bytes: usize,
    /// Age of the oldest waiting record that sends a partial batch.
    pub flush_interval: Duration,
    /// Most records held.
    pub buffer_max_records: usize,
    /// Most bytes held.
    pub buffer_max_bytes: usize,
    /// Batches in flight at once.
    pub max_in_flight: usize,
    /// Retry policy.
    pub retry: Retry,
}

/// The compiled configuration.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Cluster of the REST proxy.
    pub cluster: String,
    /// `:authority` of produce requests.
    pub authority: String,
    /// `:path` of produce requests (`{prefix}/topics/{topic}`).
    pub path: String,
    /// Topic.
    pub topic: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Produce request timeout.
    pub timeout: Duration,
    /// Batching, buffer and retry limits.
    pub limits: Limits,
    /// Record fields, in output order.
    pub fields: Vec<Field>,
    /// Index into `fields` of the key field.
    pub key_field: Option<usize>,
    /// Sample rate, 0..=1.
    pub sample_rate: f64,
    /// Response codes logged (inclusive).
    pub status: (u16, u16),
}

impl Compiled {
    /// Whether a response code passes the status condition.
    pub fn status_logged(&self, code: u16) -> bool {
        (self.status.0..=self.status.1).contains(&code)
    }

    /// Whether the status condition excludes any code at all.
    pub fn has_status_condition(&self) -> bool {
        self.status != (0, u16::MAX)
    }
}

/// Parses and compiles a configuration.
pub fn parse(raw: &[u8]) -> Result<Compiled, ConfigErrors> {
    config::parse_with(raw, compile)
}

fn check_topic(errors: &mut ConfigErrors, topic: &str) {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        errors.add("topic", topic, "not a Kafka topic name: 1 to 249 characters of [A-Za-z0-9._-]");
    }
}

fn positive<T: PartialOrd + Default + std::fmt::Debug>(errors: &mut ConfigErrors, field: &str, value: T) {
    if value <= T::default() {
        errors.add(field, value, "must be greater than 0");
    }
}

fn field_name_ok(errors: &mut ConfigErrors, at: String, name: &str) -> bool {
    let ok = !name.is_empty() && name.len() <= 128 && !name.bytes().any(|b| b.is_ascii_control());
    if !ok {
        errors.add(at, name, "field names are 1 to 128 characters without control characters");
    }
    ok
}

fn header_name(errors: &mut ConfigErrors, at: String, name: &str) -> Option<String> {
    let before = errors.errors().len();
    config::check_header_name(errors, at, name);
    (errors.errors().len() == before).then(|| name.to_ascii_lowercase())
}

fn compile(raw: RawConfig, errors: &mut ConfigErrors) -> Compiled {
    let cluster = raw.cluster.unwrap_or_default();
    if cluster.is_empty() {
        errors.add_field("cluster", "required: the Envoy cluster of the Kafka REST proxy");
    }
    let topic = raw.topic.unwrap_or_default();
    check_topic(errors, &topic);
    let explicit = raw.authority.is_some();
    let authority = raw.authority.unwrap_or_else(|| cluster.clone());
    let bad = authority.is_empty() || !config::is_header_value(&authority) || authority.contains(' ');
    if bad && (explicit || !cluster.is_empty()) {
        errors.add("authority", &authority, "not a valid authority");
    }
    if !raw.path_prefix.is_empty()
        && (!raw.path_prefix.starts_with('/')
            || raw.path_prefix.ends_with('/')
            || !raw.path_prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'))
    {
        errors.add(
            "path_prefix",
            &raw.path_prefix,
            "must start with `/`, not end with `/`, and be a plain path",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &raw.headers {
        let at = format!("headers.{name}");
        if let Some(lower) = header_name(errors, at.clone(), name) {
            // `idempotency-key` names each batch; a fixed one would make the bridge answer every
            // batch after the first with the first one's answer (or 409).
            if lower.starts_with(':')
                || matches!(lower.as_str(), "content-type" | "content-length" | "host" | "idempotency-key")
            {
                errors.add(at, name, "set by the filter");
                continue;
            }
            config::check_header_value(errors, at, value);
            headers.push((lower, value.clone()));
        }
    }
    positive(errors, "timeout_ms", raw.timeout_ms);
    positive(errors, "batch_max_size", raw.batch_max_size);
    positive(errors, "batch_max_bytes", raw.batch_max_bytes);
    positive(errors, "flush_interval_ms", raw.flush_interval_ms);
    positive(errors, "buffer_max_records", raw.buffer_max_records);
    positive(errors, "buffer_max_bytes", raw.buffer_max_bytes);
    if raw.max_in_flight == 0 || raw.max_in_flight > MAX_IN_FLIGHT {
        errors.add("max_in_flight", raw.max_in_flight, format!("must be 1 to {MAX_IN_FLIGHT}"));
    }
    if raw.buffer_max_records < raw.batch_max_size {
        errors.add("buffer_max_records", raw.buffer_max_records, "must be at least `batch_max_size`");
    }
    positive(errors, "retry.initial_backoff_ms", raw.retry.initial_backoff_ms);
    if raw.retry.max_backoff_ms < raw.retry.initial_backoff_ms {
        errors.add("retry.max_backoff_ms", raw.retry.max_backoff_ms, "must be at least `initial_backoff_ms`");
    }
    if !(0.0..=1.0).contains(&raw.sample_rate) {
        errors.add("sample_rate", raw.sample_rate, "must be between 0 and 1");
    }
    let status = (raw.status.min.unwrap_or(0), raw.status.max.unwrap_or(u16::MAX));
    if status.0 > status.1 {
        errors.add("status.min", status.0, "greater than `status.max`");
    }

    let allowed: Vec<String> = raw
        .allow_sensitive_headers
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(errors, format!("allow_sensitive_headers[{i}]"), name))
        .collect();
    let redact = |header: &str| SENSITIVE_HEADERS.contains(&header) && !allowed.iter().any(|a| a == header);

    // Default fields, minus the excluded ones; a configured field of the same name replaces one.
    let defaults = record::default_fields();
    for (i, name) in raw.fields.exclude.iter().enumerate() {
        if !defaults.iter().any(|f| f.name == *name) {
            errors.add(format!("fields.exclude[{i}]"), name, "not a default field");
        }
    }
    let mut fields: Vec<Field> =
        defaults.into_iter().filter(|f| !raw.fields.exclude.contains(&f.name)).collect();
    let mut added: Vec<Field> = Vec::new();
    for (name, header) in &raw.fields.request_headers {
        let at = format!("fields.request_headers.{name}");
        if field_name_ok(errors, format!("fields.request_headers (field name {name:?})"), name) {
            if let Some(h) = header_name(errors, at, header) {
                added.push(Field::new(name, Source::RequestHeader(h.clone()), redact(&h)));
            }
        }
    }
    for (name, header) in &raw.fields.response_headers {
        let at = format!("fields.response_headers.{name}");
        if field_name_ok(errors, format!("fields.response_headers (field name {name:?})"), name) {
            if let Some(h) = header_name(errors, at, header) {
                added.push(Field::new(name, Source::ResponseHeader(h.clone()), redact(&h)));
            }
        }
    }
    for (name, path) in &raw.fields.properties {
        let at = format!("fields.properties.{name}");
        if !field_name_ok(errors, format!("fields.properties (field name {name:?})"), name) {
            continue;
        }
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.is_empty() || segments.iter().any(String::is_empty) {
            errors.add(at, path, "an Envoy attribute path such as `upstream.local_address`");
            continue;
        }
        // `request.headers.cookie` is a header read by another name: the same redaction applies.
        let header = match segments.as_slice() {
            [scope, headers, h] if (scope == "request" || scope == "response") && headers == "headers" => {
                Some(h.to_ascii_lowercase())
            }
            _ => None,
        };
        let kind = PropertyKind::of(path);
        added.push(Field::new(name, Source::Property(segments, kind), header.is_some_and(|h| redact(&h))));
    }
    for (name, value) in &raw.fields.values {
        if field_name_ok(errors, format!("fields.values (field name {name:?})"), name) {
            added.push(Field::new(name, Source::Value(value.to_string()), false));
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for f in &added {
        if seen.contains(&f.name.as_str()) {
            errors.add("fields", &f.name, "field name used twice");
        }
        seen.push(&f.name);
    }
    for f in added {
        match fields.iter_mut().find(|d| d.name == f.name) {
            Some(existing) => *existing = f,
            None => fields.push(f),
        }
    }

    let key_field = match &raw.key_field {
        None => None,
        Some(name) => {
            let at = fields.iter().position(|f| f.name == *name);
            if at.is_none() {
                errors.add("key_field", name, "not a field of the record");
            }
            at
        }
    };

    let prefix = raw.path_prefix.clone();
    Compiled {
        path: format!("{prefix}/topics/{topic}"),
        cluster,
        authority,
        topic,
        headers,
        timeout: Duration::from_millis(raw.timeout_ms),
        limits: Limits {
            batch_max_size: raw.batch_max_size,
            batch_max_bytes: raw.batch_max_bytes,
            flush_interval: Duration::from_millis(raw.flush_interval_ms),
            buffer_max_records: raw.buffer_max_records,
            buffer_max_bytes: raw.buffer_max_bytes,
            max_in_flight: raw.max_in_flight,
            retry: Retry {
                initial_backoff: Duration::from_millis(raw.retry.initial_backoff_ms),
                max_backoff: Duration::from_millis(raw.retry.max_backoff_ms),
                max_attempts: raw.retry.max_attempts,
            },
        },
        fields,
        key_field,
        sample_rate: raw.sample_rate,
        status,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fields_of(json: &str) -> Vec<String> {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.errors().iter().map(|e| e.field.clone()).collect(),
        }
    }

    #[test]
    fn minimal_config_has_istio_defaults() {
        let c = parse(br#"{"cluster": "kafka-bridge", "topic": "access-logs"}"#).unwrap();
        assert_eq!(c.path, "/topics/access-logs");
        assert_eq!(c.authority, "kafka-bridge");
        let names: Vec<&str> = c.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "start_time",
                "method",
                "path",
                "protocol",
                "response_code",
                "response_flags",
                "bytes_received",
                "bytes_sent",
                "duration",
                "upstream_service_time",
                "x_forwarded_for",
                "user_agent",
                "request_id",
                "authority",
                "upstream_host",
                "upstream_cluster",
                "route_name",
                "downstream_remote_address",
            ]
        );
        assert_eq!(c.limits.batch_max_size, 500);
        assert!(!c.has_status_condition());
        assert!(c.key_field.is_none());
    }

    #[test]
    fn fields_are_added_replaced_excluded_and_redacted() {
        let c = parse(
            br#"{"cluster": "k", "topic": "t", "key_field": "request_id",
                 "fields": {"exclude": ["user_agent", "protocol"],
                            "request_headers": {"tenant": "X-Tenant", "auth": "authorization", "cookies": "cookie"},
                            "response_headers": {"set_cookie": "set-cookie", "server": "server"},
                            "properties": {"mtls": "connection.mtls", "authority": "request.host"},
                            "values": {"gateway": "eu-1", "version": 2}},
                 "allow_sensitive_headers": ["Cookie"]}"#,
        )
        .unwrap();
        let find = |n: &str| c.fields.iter().find(|f| f.name == n).unwrap();
        assert!(c.fields.iter().all(|f| f.name != "user_agent" && f.name != "protocol"));
        assert_eq!(find("tenant").source, Source::RequestHeader("x-tenant".into()));
        assert!(find("auth").redact);
        assert!(!find("cookies").redact);
        assert!(find("set_cookie").redact);
        assert!(!find("server").redact);
        assert_eq!(
            find("mtls").source,
            Source::Property(vec!["connection".into(), "mtls".into()], PropertyKind::Bool)
        );
        // `authority` replaced in place.
        assert!(matches!(find("authority").source, Source::Property(..)));
        assert_eq!(find("version").source, Source::Value("2".into()));
        assert_eq!(c.fields[c.key_field.unwrap()].name, "request_id");
    }

    #[test]
    fn every_error_is_reported() {
        assert_eq!(
            fields_of(
                r#"{"topic": "bad topic", "timeout_ms": 0, "max_in_flight": 99, "sample_rate": 1.5,
                    "status": {"min": 500, "max": 400}, "key_field": "nope",
                    "fields": {"exclude": ["nope"], "request_headers": {"x": "bad header"}, "properties": {"p": "a..b"}},
                    "headers": {"content-type": "x"}, "path_prefix": "kafka/"}"#
            ),
            [
                "cluster",
                "topic",
                "path_prefix",
                "headers.content-type",
                "timeout_ms",
                "max_in_flight",
                "sample_rate",
                "status.min",
                "fields.exclude[0]",
                "fields.request_headers.x",
                "fields.properties.p",
                "key_field",
            ]
        );
        assert_eq!(fields_of(r#"{"cluster": "k", "topic": "t", "colour": 1}"#), ["colour"]);
        assert_eq!(
            fields_of(r#"{"cluster": "k", "topic": "t", "headers": {"Idempotency-Key": "fixed"}}"#),
            ["headers.Idempotency-Key"]
        );
        assert_eq!(
            fields_of(r#"{"cluster": "k", "topic": "t", "buffer_max_records": 10, "batch_max_size": 20}"#),
            ["buffer_max_records"]
        );
        assert_eq!(
            fields_of(
                r#"{"cluster": "k", "topic": "t", "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 5}}"#
            ),
            ["retry.max_backoff_ms"]
        );
    }

    #[test]
    fn status_condition() {
        let c = parse(br#"{"cluster": "k", "topic": "t", "status": {"min": 400}}"#).unwrap();
        assert!(c.has_status_condition());
        assert!(!c.status_logged(200));
        assert!(c.status_logged(404));
        assert!(c.status_logged(503));
    }
}
