//! Access logs to Kafka: one JSON record per request (Istio's JSON access-log field names by
//! default), buffered per worker and sent in batches over the Kafka REST produce API (v2) from
//! the root context. See `README.md` for the configuration and the record.
//!
//! Request path, per stream: the clock is read when the request headers arrive; body sizes are
//! counted from the body callbacks (no host call); at the end of the stream (`on_log`) the
//! response headers (one read), then, if the status condition passes, the request headers (one
//! read) and each configured attribute (one read each) are read, the record is written as JSON
//! and pushed to the buffer. Nothing waits for Kafka: when the buffer is full the record is
//! dropped and counted.
//!
//! Root context, on a tick and whenever a produce request answers: due batches are sent (at
//! most `max_in_flight` at once), answers are read per record in the shape of each REST proxy
//! (`produce`), and what may succeed later is retried with exponential backoff (`outbox`).

pub mod config;
pub mod handoff;
pub mod outbox;
pub mod produce;
pub mod record;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewasm::metrics::{Counter, Gauge};
use gatewasm::{
    Callout, CalloutError, CalloutId, CalloutResult, ConfigErrors, HeaderMap, HeaderSnapshot, HttpFilter,
    Plugin, Root, Stream,
};

use crate::config::Compiled;
use crate::outbox::{Entry, Outbox, Stats};
use crate::produce::Answer;
use crate::record::{Source, Timing, Values};

/// Counter of records stored in Kafka.
pub const SENT: &str = "kafka_log_records_sent_total";
/// Counter of records given up on (non-retriable errors, out of attempts, or waiting for a
/// retry when the plugin is removed).
pub const FAILED: &str = "kafka_log_records_failed_total";
/// Counter of the failed records given up while their last attempt's outcome was unknown
/// (they may be in Kafka).
pub const FAILED_UNCONFIRMED: &str = "kafka_log_records_failed_unconfirmed_total";
/// Counter of record retries (a record sent three times counts two).
pub const RETRIED: &str = "kafka_log_records_retried_total";
/// Counter of records the proxy answered as not stored, retriable (once per record per
/// answer).
pub const RETRIABLE: &str = "kafka_log_records_retriable_total";
/// Counter of records in attempts whose outcome is unknown: timeout, connection lost, an
/// answer the proxy did not write (once per record per attempt).
pub const UNCONFIRMED: &str = "kafka_log_records_unconfirmed_total";
/// Counter of records dropped because the buffer was full.
pub const DROPPED: &str = "kafka_log_records_dropped_total";
/// Gauge of records held (waiting, in flight, waiting to be retried), summed over workers.
pub const BUFFERED: &str = "kafka_log_records_buffered";

/// Longest period between ticks: batches leave at most this late after they are due.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Shortest period between two warnings of the same kind.
const WARN_EVERY_MS: u64 = 10_000;

/// Metrics, defined once per VM (Envoy shares them by name across workers). The counters are
/// raised from the tick by what the outbox counted since the last report, so they cost no host
/// call per request.
struct Metrics {
    sent: Counter,
    failed: Counter,
    retried: Counter,
    dropped: Counter,
    retriable: Counter,
    unconfirmed: Counter,
    failed_unconfirmed: Counter,
    buffered: Gauge,
}

/// Rate-limited warnings, each kind on its own clock: when the last drop/failure summary was
/// logged and what was counted then, when the last produce failure was logged, and when the
/// last per-record retriable failure was logged and how many were counted then.
#[derive(Debug, Default, Clone, Copy)]
struct Warned {
    at_ms: Option<u64>,
    dropped: u64,
    failed: u64,
    produce_at_ms: Option<u64>,
    retriable_at_ms: Option<u64>,
    retriable: u64,
}

/// The plugin: configuration, this worker's buffer and its callouts.
pub struct KafkaLog {
    config: Compiled,
    /// Request / response header names the fields and the status condition look up (empty:
    /// that map is not read).
    request_names: Vec<String>,
    response_names: Vec<String>,
    outbox: RefCell<Outbox>,
    /// Produce requests in flight: callout id and batch id.
    calls: RefCell<Vec<(CalloutId, u64)>>,
    rng: Cell<u64>,
    metrics: Metrics,
    /// Stats last flushed to the counters, and the buffered count last added to the gauge.
    flushed: Cell<Stats>,
    buffered_reported: Cell<u64>,
    warned: Cell<Warned>,
    /// The host is removing the plugin: what it holds is being sent once, then it lets go.
    closing: Cell<bool>,
    /// This VM's part of every idempotency key, drawn at configuration: keys of two workers or
    /// two configurations differ even though their batch numbers are the same.
    key_prefix: u64,
    /// Where an instance that never ticks (a native module's worker) hands its records to the
    /// one that does, named for the configuration.
    queue: String,
}

/// The idempotency key header of the produce requests; the bridge recognises it (README).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Nanoseconds since the Unix epoch of a host clock reading.
fn unix_ns(now: Option<SystemTime>) -> Option<u64> {
    now.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl KafkaLog {
    /// The compiled configuration.
    pub fn config(&self) -> &Compiled {
        &self.config
    }

    /// xorshift64*: sampling and backoff jitter need no host call and no cryptographic quality.
    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn sampled(&self) -> bool {
        let rate = self.config.sample_rate;
        if rate >= 1.0 {
            return true;
        }
        // 53 random bits as a fraction in [0, 1).
        ((self.random() >> 11) as f64) / ((1u64 << 53) as f64) < rate
    }

    /// Sends every batch that is due, as long as callouts may be added. From the root context
    /// only: a stream's callouts end with the stream.
    fn pump(&self, root: &Root, now_ms: u64) {
        loop {
            let closing = self.closing.get();
            let next = {
                let mut outbox = self.outbox.borrow_mut();
                if closing {
                    outbox.due_closing(now_ms)
                } else {
                    outbox.due(now_ms)
                }
            };
            let Some(send) = next else { return };
            let mut call = Callout::get(&self.config.cluster, &self.config.authority, &self.config.path);
            call.method = "POST".into();
            call.headers = Vec::with_capacity(self.config.headers.len() + 3);
            call.headers.push(("content-type".into(), "application/vnd.kafka.json.v2+json".into()));
            call.headers.push(("accept".into(), "application/vnd.kafka.v2+json".into()));
            call.headers
                .push((IDEMPOTENCY_KEY.into(), format!("{:016x}-{}", self.key_prefix, send.key).into()));
            call.headers.extend(self.config.headers.iter().map(|(k, v)| (k.into(), v.into())));
            call.body = send.body;
            call.timeout = self.config.timeout;
            // Room for one result per record in any of the proxies' shapes.
            call.max_response_bytes = 4096 + send.records * 256;
            match root.dispatch(&call) {
                Ok(id) => self.calls.borrow_mut().push((id, send.id)),
                Err(err) => {
                    let random = self.random();
                    let why = Answer::RetryAll(format!("dispatch refused: {err:?}"));
                    let mut outbox = self.outbox.borrow_mut();
                    outbox.complete(send.id, &why, now_ms, random);
                    if closing {
                        outbox.give_up_retries();
                    }
                    drop(outbox);
                    self.warn_failure(
                        now_ms,
                        &format!("cannot send to cluster {}: {err:?}", self.config.cluster),
                    );
                    return;
                }
            }
        }
    }

    fn warn_failure(&self, now_ms: u64, why: &str) {
        let mut w = self.warned.get();
        if w.produce_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < WARN_EVERY_MS) {
            return;
        }
        w.produce_at_ms = Some(now_ms);
        self.warned.set(w);
        log::warn!("kafka_log: produce to topic {} failed ({why}); retrying with backoff", self.config.topic);
    }

    /// Per-record retriable failures in a 2xx answer: counted by the outbox, logged here at
    /// most every 10 s with how many since the last line and the proxy's first error text.
    fn warn_retriable(&self, now_ms: u64, records: u64, body: &[u8]) {
        let mut w = self.warned.get();
        w.retriable += records;
        if w.retriable_at_ms.is_some_and(|at| now_ms.saturating_sub(at) < WARN_EVERY_MS) {
            self.warned.set(w);
            return;
        }
        let why = produce::first_error(body).unwrap_or_else(|| "no error text".to_string());
        log::warn!(
            "kafka_log: {} record(s) not stored by the proxy (retriable) since the last warning, e.g. \"{why}\"; \
             retrying with backoff",
            w.retriable
        );
        w.retriable = 0;
        w.retriable_at_ms = Some(now_ms);
        self.warned.set(w);
    }

    /// Counters and gauge to Envoy, and the rate-limited warnings for drops and failures.
    fn report(&self, now_ms: u64) {
        let (stats, held) = {
            let outbox = self.outbox.borrow();
            (outbox.stats(), outbox.held())
        };
        let last = self.flushed.replace(stats);
        let add = |counter: &Counter, now: u64, before: u64| {
            if now > before {
                counter.add(now - before);
            }
        };
        let m = &self.metrics;
        add(&m.sent, stats.sent, last.sent);
        add(&m.failed, stats.failed, last.failed);
        add(&m.retried, stats.retried, last.retried);
        add(&m.dropped, stats.dropped, last.dropped);
        add(&m.retriable, stats.retriable, last.retriable);
        add(&m.unconfirmed, stats.unconfirmed, last.unconfirmed);
        add(&m.failed_unconfirmed, stats.failed_unconfirmed, last.failed_unconfirmed);
        let held_records = held.0 as u64;
        let before = self.buffered_reported.replace(held_records);
        if held_records != before {
            m.buffered.add(held_records as i64 - before as i64);
        }

        let mut w = self.warned.get();
        let quiet = w.at_ms.is_some_and(|at| now_ms.saturating_sub(at) < WARN_EVERY_MS);
        let (dropped, failed) = (stats.dropped - w.dropped, stats.failed - w.failed);
        if !quiet && (dropped > 0 || failed > 0) {
            let limits = &self.config.limits;
            log::warn!(
                "kafka_log: {dropped} record(s) dropped (buffer full: {} records, {} bytes held; limits {} records, {} bytes) \
                 and {failed} failed since the last warning",
                held.0,
                held.1,
                limits.buffer_max_records,
                limits.buffer_max_bytes
            );
            w = Warned { at_ms: Some(now_ms), dropped: stats.dropped, failed: stats.failed, ..w };
            self.warned.set(w);
        }
    }
}

/// The queue of the configuration `raw`: configurations that differ do not share records.
fn queue_name(raw: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    // Deterministic within the process, which is all a queue's name must be.
    let mut hasher = std::hash::DefaultHasher::new();
    raw.hash(&mut hasher);
    format!("kafka_log.{:016x}", hasher.finish())
}

/// The root's clock in milliseconds since the Unix epoch (0 when the host cannot tell).
fn now_ms(root: &Root) -> u64 {
    unix_ns(root.now()).map_or(0, |ns| ns / 1_000_000)
}

impl Plugin for KafkaLog {
    const NAME: &'static str = "kafka_log";
    type Filter = LogStream;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let (request_names, response_names) = header_names(&config);
        let metrics = root.metrics();
        log::info!(
            "kafka_log: {} field(s) to topic {} through cluster {}",
            config.fields.len(),
            config.topic,
            config.cluster
        );
        let mut plugin = KafkaLog {
            outbox: RefCell::new(Outbox::new(config.limits.clone())),
            config,
            request_names,
            response_names,
            calls: RefCell::new(Vec::new()),
            rng: Cell::new(unix_ns(root.now()).unwrap_or(0x9E37_79B9_7F4A_7C15) | 1),
            metrics: Metrics {
                sent: metrics.counter(SENT),
                failed: metrics.counter(FAILED),
                retried: metrics.counter(RETRIED),
                dropped: metrics.counter(DROPPED),
                retriable: metrics.counter(RETRIABLE),
                unconfirmed: metrics.counter(UNCONFIRMED),
                failed_unconfirmed: metrics.counter(FAILED_UNCONFIRMED),
                buffered: metrics.gauge(BUFFERED),
            },
            flushed: Cell::new(Stats::default()),
            buffered_reported: Cell::new(0),
            warned: Cell::new(Warned::default()),
            closing: Cell::new(false),
            key_prefix: 0,
            queue: queue_name(raw),
        };
        plugin.key_prefix = plugin.random();
        Ok(plugin)
    }

    fn new_filter(self: &Rc<Self>) -> LogStream {
        LogStream {
            plugin: Rc::clone(self),
            sampled: self.sampled(),
            start_ns: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(self.config.limits.flush_interval.clamp(Duration::from_millis(10), MAX_TICK))
    }

    fn on_tick(self: &Rc<Self>, root: &Root) {
        // Records of the instances that never tick (a native module's workers); on proxy-wasm
        // every VM ticks, nothing is queued and this is no host call.
        if let Ok(items) = root.queue_drain(&self.queue) {
            let mut outbox = self.outbox.borrow_mut();
            for entry in items.iter().filter_map(|item| handoff::decode(item)) {
                outbox.push(entry);
            }
        }
        let now = now_ms(root);
        self.pump(root, now);
        self.report(now);
    }

    fn on_callout(self: &Rc<Self>, root: &Root, id: CalloutId, result: CalloutResult) {
        let batch = {
            let mut calls = self.calls.borrow_mut();
            let Some(at) = calls.iter().position(|(c, _)| *c == id) else {
                log::debug!("kafka_log: answer for an unknown produce request");
                return;
            };
            calls.swap_remove(at).1
        };
        let now = now_ms(root);
        let answer = match result {
            Ok(resp) => {
                let records = self.outbox.borrow().records_in(batch).unwrap_or(0);
                let answer = produce::classify(resp.status, &resp.body, records);
                if let Answer::Records(statuses) = &answer {
                    let retriable =
                        statuses.iter().filter(|s| **s == produce::RecordStatus::Retriable).count();
                    if retriable > 0 {
                        self.warn_retriable(now, retriable as u64, &resp.body);
                    }
                }
                answer
            }
            Err(CalloutError::Timeout) => Answer::Unconfirmed("timeout".to_string()),
            Err(CalloutError::Failed) => Answer::Unconfirmed("connection failed".to_string()),
            // Never sent.
            Err(CalloutError::Dispatch(status)) => Answer::RetryAll(format!("dispatch failed: {status:?}")),
        };
        match &answer {
            Answer::RetryAll(why) => self.warn_failure(now, why),
            Answer::Unconfirmed(why) => self.warn_failure(
                now,
                &format!("{why}; outcome unknown, sent again under the same idempotency key"),
            ),
            Answer::FailAll(why) => {
                log::warn!(
                    "kafka_log: produce to topic {} refused ({why}); the batch is dropped",
                    self.config.topic
                )
            }
            Answer::Records(_) => {}
        }
        let random = self.random();
        let mut outbox = self.outbox.borrow_mut();
        outbox.complete(batch, &answer, now, random);
        if self.closing.get() {
            outbox.give_up_retries();
        }
        drop(outbox);
        self.pump(root, now);
        if self.closing.get() && self.finished(now) {
            if let Err(status) = root.done() {
                log::warn!("kafka_log: the host refused proxy_done: {status:?}");
            }
        }
    }

    /// Removed by the host (Envoy: the listener drained after a configuration change): the
    /// buffered records are sent at once, whatever their age, and the plugin lets go when the
    /// last produce request answers. Records that would be retried are given up (counted
    /// failed). Envoy keeps a removed plugin only while its VM lives on for another plugin
    /// (see README: "When the plugin is removed").
    fn on_done(self: &Rc<Self>, root: &Root) -> bool {
        self.closing.set(true);
        let now = now_ms(root);
        let held = self.outbox.borrow().held().0;
        if held > 0 {
            log::info!("kafka_log: plugin removed; sending the {held} record(s) it holds");
        }
        self.outbox.borrow_mut().give_up_retries();
        self.pump(root, now);
        self.finished(now)
    }
}

impl KafkaLog {
    /// While closing: true once no produce request is in flight (nothing left to send or wait
    /// for), with the counters reported one last time.
    fn finished(&self, now_ms: u64) -> bool {
        if self.outbox.borrow().in_flight() > 0 {
            return false;
        }
        self.report(now_ms);
        true
    }
}

/// Per-stream state: what the stream measured itself, and whether it is sampled.
pub struct LogStream {
    plugin: Rc<KafkaLog>,
    sampled: bool,
    start_ns: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
}

/// The header names to find in each map: those of the fields, and `:status` for the response
/// code and the status condition.
fn header_names(config: &Compiled) -> (Vec<String>, Vec<String>) {
    fn add(names: &mut Vec<String>, name: &str) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let (mut request, mut response) = (Vec::new(), Vec::new());
    if config.has_status_condition() {
        add(&mut response, ":status");
    }
    for field in &config.fields {
        match &field.source {
            Source::Path => {
                add(&mut request, "x-envoy-original-path");
                add(&mut request, ":path");
            }
            Source::RequestHeader(name) => add(&mut request, name),
            Source::ResponseHeader(name) => add(&mut response, name),
            Source::ResponseCode => add(&mut response, ":status"),
            _ => {}
        }
    }
    (request, response)
}

/// Reads a header map when some field needs it (one host call; none when no name is wanted).
/// A host error (no such map in this callback) reads as an empty map.
fn headers_for(map: HeaderMap<'_>, names: &[String]) -> HeaderSnapshot {
    if names.is_empty() {
        return HeaderSnapshot::default();
    }
    map.snapshot()
}

impl HttpFilter for LogStream {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> gatewasm::Flow {
        if self.sampled {
            self.start_ns = unix_ns(stream.now());
        }
        gatewasm::Flow::Continue
    }

    fn on_request_body(&mut self, _stream: &mut Stream, body_size: usize, _eos: bool) -> gatewasm::Flow {
        self.bytes_in += body_size as u64;
        gatewasm::Flow::Continue
    }

    fn on_response_body(&mut self, _stream: &mut Stream, body_size: usize, _eos: bool) -> gatewasm::Flow {
        self.bytes_out += body_size as u64;
        gatewasm::Flow::Continue
    }

    fn on_log(&mut self, stream: &mut Stream) {
        if !self.sampled {
            return;
        }
        let plugin = &self.plugin;
        let response = headers_for(stream.response_headers(), &plugin.response_names);
        if plugin.config.has_status_condition() {
            let code = response.get(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
            if !plugin.config.status_logged(code) {
                return;
            }
        }
        let request = headers_for(stream.request_headers(), &plugin.request_names);
        let end_ns = unix_ns(stream.now());
        let timing = Timing {
            // A stream that never reached this filter's request callback (an earlier filter
            // answered it) is dated by its end.
            start_ns: self.start_ns.or(end_ns),
            end_ns,
            bytes_received: self.bytes_in,
            bytes_sent: self.bytes_out,
        };
        let values = Values { request: &request, response: &response, stream };
        let mut text = String::with_capacity(768);
        let key =
            record::write_record(&plugin.config.fields, &values, &timing, plugin.config.key_field, &mut text);
        let at_ms = end_ns.map_or(0, |ns| ns / 1_000_000);
        let entry = Entry { text, key, at_ms };
        let root = stream.root();
        if root.ticks() {
            plugin.outbox.borrow_mut().push(entry);
            return;
        }
        // This instance never sends (a native module's worker): the record goes to the one that
        // does, through a queue bounded as the buffer is; what does not fit is counted dropped.
        let capacity = plugin.config.limits.buffer_max_records;
        if !matches!(root.queue_push(&plugin.queue, &handoff::encode(&entry), capacity), Ok(true)) {
            plugin.metrics.dropped.add(1);
        }
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(KafkaLog);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::rc::Rc;
    use std::time::{Duration, UNIX_EPOCH};

    use gatewasm::testing::{Answer, FakeHost, FakeStream, Harness};
    use serde_json::{json, Value};

    use super::*;

    const START_NS: u64 = 1_700_000_000_123_456_789;

    fn gateway(config: &str) -> Harness<KafkaLog> {
        let host = FakeHost::new();
        host.set_now(UNIX_EPOCH + Duration::from_nanos(START_NS));
        Harness::with_host(host, config).unwrap()
    }

    /// A whole stream as Envoy holds it at the end: the default fields' headers and attributes,
    /// 17 bytes in, 2048 out, 42.9 ms long.
    fn full_stream(gw: &Harness<KafkaLog>) -> FakeStream<KafkaLog> {
        let mut s = gw.stream();
        s.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v2/users?id=7"),
                ("x-envoy-original-path", "/api/users?id=7"),
                (":authority", "shop.example.com"),
                ("x-forwarded-for", "10.0.0.1"),
                ("user-agent", "curl/8.0 \"quoted\"\n"),
                ("x-request-id", "2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01"),
                ("authorization", "Bearer secret"),
            ],
            false,
        );
        s.request_body(&[0; 17], true);
        s.response_headers(&[(":status", "503"), ("x-envoy-upstream-service-time", "12")], false);
        s.response_body(&[0; 2048], true);
        for (path, value) in [
            ("request.protocol", b"HTTP/1.1".to_vec()),
            ("response.flags", ((1u64 << 1) | (1u64 << 5)).to_le_bytes().to_vec()),
            ("upstream.address", b"10.1.2.3:8080".to_vec()),
            ("xds.cluster_name", b"outbound|8080||users.default.svc.cluster.local".to_vec()),
            ("xds.route_name", b"users".to_vec()),
            ("source.address", b"192.168.1.9:51234".to_vec()),
            ("connection.mtls", vec![1]),
        ] {
            s.set_property(&path.split('.').collect::<Vec<_>>(), value);
        }
        gw.host().advance(Duration::from_nanos(42_900_000));
        s
    }

    /// The records of the produce request the next due tick sends: `(key, value)` each.
    fn sent(gw: &mut Harness<KafkaLog>) -> Vec<(Option<String>, Value)> {
        gw.host().advance(Duration::from_secs(2));
        gw.tick();
        let call = gw.host().callouts().pop().unwrap();
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r.get("key").and_then(Value::as_str).map(str::to_string), r["value"].clone()))
            .collect()
    }

    #[test]
    fn default_record_matches_istio_names_and_types() {
        let mut gw = gateway(r#"{"cluster": "kafka", "topic": "t", "key_field": "request_id"}"#);
        full_stream(&gw).log();
        let records = sent(&mut gw);
        assert_eq!(records.len(), 1);
        let (key, v) = &records[0];
        assert_eq!(
            *v,
            json!({
                "start_time": "2023-11-14T22:13:20.123Z",
                "method": "POST",
                "path": "/api/users?id=7",
                "protocol": "HTTP/1.1",
                "response_code": 503,
                "response_flags": "UH,UF",
                "bytes_received": 17,
                "bytes_sent": 2048,
                "duration": 42,
                "upstream_service_time": "12",
                "x_forwarded_for": "10.0.0.1",
                "user_agent": "curl/8.0 \"quoted\"\n",
                "request_id": "2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01",
                "authority": "shop.example.com",
                "upstream_host": "10.1.2.3:8080",
                "upstream_cluster": "outbound|8080||users.default.svc.cluster.local",
                "route_name": "users",
                "downstream_remote_address": "192.168.1.9:51234",
            })
        );
        assert_eq!(key.as_deref(), Some("2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01"));
    }

    #[test]
    fn missing_values_are_null_and_no_response_is_code_0() {
        let mut gw = gateway(r#"{"cluster": "kafka", "topic": "t", "key_field": "request_id"}"#);
        // Answered before it reached the filter: no headers seen, no attributes.
        gw.stream().log();
        let (key, v) = sent(&mut gw).pop().unwrap();
        assert_eq!(v["response_code"], 0);
        assert!(v["method"].is_null() && v["upstream_host"].is_null() && v["response_flags"].is_null());
        assert_eq!(v["duration"], 0, "dated by its end");
        assert_eq!(key, None);
    }

    #[test]
    fn redaction_and_extra_kinds() {
        let mut gw = gateway(
            r#"{"cluster": "kafka", "topic": "t",
                "fields": {"request_headers": {"auth": "authorization"},
                           "response_headers": {"absent_auth": "set-cookie"},
                           "properties": {"mtls": "connection.mtls", "long": "a.b.c.d.e"},
                           "values": {"fixed": {"a": [1]}}}}"#,
        );
        let s = full_stream(&gw);
        s.set_property(&["a", "b", "c", "d", "e"], "five segments");
        let mut s = s;
        s.log();
        let (_, v) = sent(&mut gw).pop().unwrap();
        let pick: Value = ["auth", "absent_auth", "mtls", "long", "fixed"]
            .iter()
            .map(|k| ((*k).to_string(), v[*k].clone()))
            .collect::<serde_json::Map<_, _>>()
            .into();
        assert_eq!(
            pick,
            json!({"auth": "[REDACTED]", "absent_auth": null, "mtls": true, "long": "five segments", "fixed": {"a": [1]}})
        );
    }

    /// A native module's worker instances never tick: their records reach the instance that
    /// does through the process's queue, bounded as the buffer is.
    #[test]
    fn records_of_an_instance_that_never_ticks_reach_the_one_that_does() {
        let host = FakeHost::new();
        host.set_now(UNIX_EPOCH + Duration::from_nanos(START_NS));
        let config = r#"{"cluster": "kafka", "topic": "t", "buffer_max_records": 1, "batch_max_size": 1}"#;
        let worker = Harness::<KafkaLog>::with_host(Rc::clone(&host), config).unwrap();
        let mut main = Harness::<KafkaLog>::with_host(Rc::clone(&host), config).unwrap();
        host.set_ticks(false);
        full_stream(&worker).log();
        // The queue holds one record, as the buffer would: the second is dropped, and counted.
        full_stream(&worker).log();
        assert_eq!(host.counter(DROPPED), Some(1));
        host.set_ticks(true);
        let records = sent(&mut main);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1["method"], "POST");
    }

    #[test]
    fn batches_leave_from_the_root_context_and_the_last_answer_lets_the_plugin_go() {
        let mut gw = gateway(r#"{"cluster": "kafka", "topic": "t"}"#);
        let mut s = full_stream(&gw);
        s.log();
        assert!(s.callout().is_none(), "a stream never sends a batch: its callouts end with it");
        gw.tick();
        assert!(gw.host().callouts().is_empty(), "not due before the flush interval");
        full_stream(&gw).log();
        // Removed: what is held leaves at once, and the plugin waits for the answer.
        assert!(!gw.done());
        let calls = gw.host().callouts();
        assert_eq!(calls.len(), 1);
        assert_eq!(gw.root().in_flight(), 1);
        assert_eq!(calls[0].cluster, "kafka");
        assert_eq!(gw.host().done_calls(), 0);
        gw.answer(
            calls[0].token,
            &Answer::new(
                200,
                &[],
                r#"{"offsets": [{"partition": 0, "offset": 1}, {"partition": 0, "offset": 2}]}"#,
            ),
        );
        assert_eq!(gw.host().done_calls(), 1);
        assert_eq!(gw.host().counter(SENT), Some(2));
        assert_eq!(gw.host().gauge(BUFFERED), Some(0));
    }
}
