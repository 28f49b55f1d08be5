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
pub mod outbox;
pub mod produce;
pub mod record;
pub mod slots;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use gatewasm::metrics::{Counter, Gauge};
use gatewasm::{Callout, CalloutError, CalloutId, CalloutResult, ConfigErrors, HttpFilter, Plugin, Stream};
use proxy_wasm::types::MapType;

use crate::config::Compiled;
use crate::outbox::{Entry, Outbox, Stats};
use crate::produce::Answer;
use crate::record::{Reader, Source, Timing};
use crate::slots::Slots;

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

/// Metrics, defined once per VM (Envoy shares them by name across workers).
struct Metrics {
    sent: Option<Counter>,
    failed: Option<Counter>,
    retried: Option<Counter>,
    dropped: Option<Counter>,
    retriable: Option<Counter>,
    unconfirmed: Option<Counter>,
    failed_unconfirmed: Option<Counter>,
    buffered: Option<Gauge>,
}

#[cfg(target_arch = "wasm32")]
fn define<M: gatewasm::metrics::Metric>(name: &str) -> Option<M> {
    match M::define(name) {
        Ok(m) => Some(m),
        Err(status) => {
            log::warn!("kafka_log: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Native builds (unit tests) have no host to define metrics in.
#[cfg(not(target_arch = "wasm32"))]
fn define<M: gatewasm::metrics::Metric>(_name: &str) -> Option<M> {
    None
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
}

/// The idempotency key header of the produce requests; the bridge recognises it (README).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn now_ns() -> Option<u64> {
    gatewasm::clock::now()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
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

    /// Sends every batch that is due, as long as callouts may be added.
    fn pump(&self, now_ms: u64) {
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
            match gatewasm::dispatch(&call) {
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
        let add = |counter: Option<Counter>, now: u64, before: u64| {
            if let Some(c) = counter {
                if now > before {
                    c.add(now - before);
                }
            }
        };
        add(self.metrics.sent, stats.sent, last.sent);
        add(self.metrics.failed, stats.failed, last.failed);
        add(self.metrics.retried, stats.retried, last.retried);
        add(self.metrics.dropped, stats.dropped, last.dropped);
        add(self.metrics.retriable, stats.retriable, last.retriable);
        add(self.metrics.unconfirmed, stats.unconfirmed, last.unconfirmed);
        add(self.metrics.failed_unconfirmed, stats.failed_unconfirmed, last.failed_unconfirmed);
        let held_records = held.0 as u64;
        let before = self.buffered_reported.replace(held_records);
        if let (Some(g), true) = (self.metrics.buffered, held_records != before) {
            g.add(held_records as i64 - before as i64);
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

fn now_ms() -> u64 {
    now_ns().map_or(0, |ns| ns / 1_000_000)
}

impl Plugin for KafkaLog {
    const NAME: &'static str = "kafka_log";
    type Filter = LogStream;

    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let (request_names, response_names) = header_names(&config);
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
            rng: Cell::new(now_ns().unwrap_or(0x9E37_79B9_7F4A_7C15) | 1),
            metrics: Metrics {
                sent: define(SENT),
                failed: define(FAILED),
                retried: define(RETRIED),
                dropped: define(DROPPED),
                retriable: define(RETRIABLE),
                unconfirmed: define(UNCONFIRMED),
                failed_unconfirmed: define(FAILED_UNCONFIRMED),
                buffered: define(BUFFERED),
            },
            flushed: Cell::new(Stats::default()),
            buffered_reported: Cell::new(0),
            warned: Cell::new(Warned::default()),
            closing: Cell::new(false),
            key_prefix: 0,
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

    fn on_tick(self: &Rc<Self>) {
        let now = now_ms();
        self.pump(now);
        self.report(now);
    }

    fn on_callout(self: &Rc<Self>, id: CalloutId, result: CalloutResult) {
        let batch = {
            let mut calls = self.calls.borrow_mut();
            let Some(at) = calls.iter().position(|(c, _)| *c == id) else {
                log::debug!("kafka_log: answer for an unknown produce request");
                return;
            };
            calls.swap_remove(at).1
        };
        let now = now_ms();
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
        self.pump(now);
        if self.closing.get() && self.finished(now) {
            if let Err(status) = gatewasm::done() {
                log::warn!("kafka_log: the host refused proxy_done: {status:?}");
            }
        }
    }

    /// Removed by the host (Envoy: the listener drained after a configuration change): the
    /// buffered records are sent at once, whatever their age, and the plugin lets go when the
    /// last produce request answers. Records that would be retried are given up (counted
    /// failed). Envoy keeps a removed plugin only while its VM lives on for another plugin
    /// (see README: "When the plugin is removed").
    fn on_done(self: &Rc<Self>) -> bool {
        self.closing.set(true);
        let now = now_ms();
        let held = self.outbox.borrow().held().0;
        if held > 0 {
            log::info!("kafka_log: plugin removed; sending the {held} record(s) it holds");
        }
        self.outbox.borrow_mut().give_up_retries();
        self.pump(now);
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

/// Reads a header map and finds `names` in it; no host call when no name is wanted. A host
/// error (no such map in this callback) reads as an empty map.
fn find_headers(map: MapType, names: &[String]) -> Slots<'_> {
    if names.is_empty() {
        return Slots::none(names);
    }
    match gatewasm::host::header_pairs_raw(map) {
        Ok(raw) => Slots::find(names, raw),
        Err(status) => {
            log::debug!("kafka_log: reading header map failed: {status:?}");
            Slots::none(names)
        }
    }
}

/// The stream's values as Envoy holds them at the end of the stream.
struct HostReader<'a> {
    request: Slots<'a>,
    response: Slots<'a>,
}

/// Attribute paths have two or three segments; longer ones (configured by hand) take a `Vec`.
const SHORT_PATH: usize = 4;

impl Reader for HostReader<'_> {
    fn request_header(&self, name: &str) -> Option<&str> {
        self.request.get(name)
    }
    fn response_header(&self, name: &str) -> Option<&str> {
        self.response.get(name)
    }
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        let read = |segments: &[&str]| gatewasm::host::property(segments).ok().flatten();
        if path.len() <= SHORT_PATH {
            let mut segments = [""; SHORT_PATH];
            for (to, from) in segments.iter_mut().zip(path) {
                *to = from.as_str();
            }
            return read(segments.get(..path.len()).unwrap_or_default());
        }
        read(&path.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl HttpFilter for LogStream {
    fn on_request_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> gatewasm::Flow {
        if self.sampled {
            self.start_ns = now_ns();
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

    fn on_log(&mut self, _stream: &mut Stream) {
        if !self.sampled {
            return;
        }
        let plugin = &self.plugin;
        let response = find_headers(MapType::HttpResponseHeaders, &plugin.response_names);
        if plugin.config.has_status_condition() {
            let code = response.get(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
            if !plugin.config.status_logged(code) {
                return;
            }
        }
        let request = find_headers(MapType::HttpRequestHeaders, &plugin.request_names);
        let end_ns = now_ns();
        let timing = Timing {
            // A stream that never reached this filter's request callback (an earlier filter
            // answered it) is dated by its end.
            start_ns: self.start_ns.or(end_ns),
            end_ns,
            bytes_received: self.bytes_in,
            bytes_sent: self.bytes_out,
        };
        let reader = HostReader { request, response };
        let mut text = String::with_capacity(768);
        let key =
            record::write_record(&plugin.config.fields, &reader, &timing, plugin.config.key_field, &mut text);
        let at_ms = end_ns.map_or(0, |ns| ns / 1_000_000);
        plugin.outbox.borrow_mut().push(Entry { text, key, at_ms });
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(KafkaLog);
