//! Counters, gauges and histograms, with labels that become Prometheus labels.
//!
//! A metric is defined once (one host call) and then updated by id. Labelled metrics encode their
//! labels in the stat name, one `;name=value` pair per label after the family name:
//!
//! ```text
//! gatewasm_requests_total;host=api.example.com;method=GET
//! ```
//!
//! Envoy stores it as `wasmcustom.gatewasm_requests_total;host=...` and, given one
//! `stats_config.stats_tags` entry per label, removes each pair from the name and keeps its value
//! as a tag; `/stats/prometheus` then shows one family with labels:
//!
//! ```yaml
//! stats_config:
//!   stats_tags:
//!   - tag_name: host
//!     regex: "(;host=([^;]*))"
//!   - tag_name: method
//!     regex: "(;method=([^;]*))"
//! ```
//!
//! [`tag_regex`] prints the regex for a label name. Istio's `extraStatTags` uses its own regex
//! (`(<name>=\.=(.*?);\.;)`), not these: on an Istio gateway, patch the bootstrap's `stats_tags`
//! or write names in Istio's form (the http-metrics filter's `stat_names: istio`).
//!
//! Label values are client input (a Host header, a path): [`sanitize_label_value`] escapes every
//! byte outside a safe set as `%XX`, so no value can forge another label and no two values share
//! a name, and callers bound the number of series with [`Family`]'s cap.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::types::{MetricType, Status};

use crate::host as hostcalls;

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(u32);

/// A value that goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge(u32);

/// A distribution of recorded values (Envoy computes buckets and quantiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram(u32);

/// A metric kind that can be defined by name.
pub trait Metric: Copy {
    /// Defines (or looks up: Envoy returns the same id for the same name) the metric.
    fn define(name: &str) -> Result<Self, Status>;
}

impl Metric for Counter {
    fn define(name: &str) -> Result<Self, Status> {
        hostcalls::define_metric(MetricType::Counter, name).map(Counter)
    }
}

impl Metric for Gauge {
    fn define(name: &str) -> Result<Self, Status> {
        hostcalls::define_metric(MetricType::Gauge, name).map(Gauge)
    }
}

impl Metric for Histogram {
    fn define(name: &str) -> Result<Self, Status> {
        hostcalls::define_metric(MetricType::Histogram, name).map(Histogram)
    }
}

impl Counter {
    /// Adds one. Failures are ignored: a metric must never fail a request.
    pub fn inc(self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(self, n: u64) {
        let _ = hostcalls::increment_metric(self.0, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A counter that counts in the VM and reaches the host only when flushed: no host call on the
/// request path. Flush it from [`crate::Plugin::on_tick`] (with a
/// [`crate::Plugin::tick_period`] of [`FLUSH_PERIOD`], say), so Envoy's value lags by up to
/// one period; what was counted since the last flush is lost if the VM stops.
#[derive(Debug)]
pub struct LocalCounter {
    counter: Counter,
    pending: Cell<u64>,
}

/// A flush period for [`LocalCounter`]s: Envoy's stats lag by at most this much.
pub const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

impl LocalCounter {
    /// A local counter in front of `counter`.
    pub fn new(counter: Counter) -> Self {
        Self { counter, pending: Cell::new(0) }
    }

    /// Adds one, locally.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`, locally.
    pub fn add(&self, n: u64) {
        self.pending.set(self.pending.get().saturating_add(n));
    }

    /// What was counted since the last flush.
    pub fn pending(&self) -> u64 {
        self.pending.get()
    }

    /// Sends what was counted to the host (one host call, none when nothing was counted). On
    /// failure the count is kept for the next flush.
    pub fn flush(&self) {
        let n = self.pending.get();
        if n == 0 {
            return;
        }
        let delta = i64::try_from(n).unwrap_or(i64::MAX);
        if hostcalls::increment_metric(self.counter.0, delta).is_ok() {
            self.pending.set(n.saturating_sub(delta.unsigned_abs()));
        }
    }
}

impl Gauge {
    /// Sets the value.
    pub fn set(self, value: u64) {
        let _ = hostcalls::record_metric(self.0, value);
    }

    /// Adds `delta` (may be negative).
    pub fn add(self, delta: i64) {
        let _ = hostcalls::increment_metric(self.0, delta);
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(self, value: u64) {
        let _ = hostcalls::record_metric(self.0, value);
    }
}

/// True for bytes kept as they are in label values. `;` and `=` delimit labels, `:` is rewritten
/// by Envoy in stat names, and `%` is the escape character itself.
fn is_safe_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'.' | b'-' | b'_' | b'/' | b'{' | b'}' | b'*' | b'~' | b'+' | b'@')
}

/// Longest label value kept, in bytes of the escaped form; longer values are cut so one request
/// cannot create a huge stat name.
pub const MAX_LABEL_VALUE: usize = 128;

/// Makes a label value safe to embed in a stat name: every other byte becomes `%XX`, so two
/// different values never share a name (up to [`MAX_LABEL_VALUE`]). The empty value becomes `%`
/// alone, which no escaped value can be.
pub fn sanitize_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LABEL_VALUE));
    for b in value.bytes() {
        let needed = if is_safe_label_byte(b) { 1 } else { 3 };
        if out.len() + needed > MAX_LABEL_VALUE {
            break;
        }
        if is_safe_label_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// The stat name for `family` with `labels` (values sanitized).
pub fn series_name(family: &str, labels: &[(&str, &str)]) -> String {
    let mut name = String::with_capacity(family.len() + labels.len() * 24);
    name.push_str(family);
    for (label, value) in labels {
        name.push(';');
        name.push_str(label);
        name.push('=');
        name.push_str(&sanitize_label_value(value));
    }
    name
}

/// The `stats_tags` regex that extracts `label` from names built by [`series_name`].
pub fn tag_regex(label: &str) -> String {
    format!("(;{label}=([^;]*))")
}

/// Value every label takes for requests beyond a family's cap.
pub const OVERFLOW_VALUE: &str = "overflow";

/// A labelled metric family with a hard cap on distinct label sets.
///
/// Series are defined on first use and cached; once `max_series` exist, new label sets are all
/// counted under one series whose labels are [`OVERFLOW_VALUE`], so memory and the number of
/// series stay bounded whatever clients send.
pub struct Family<M: Metric> {
    name: String,
    labels: Vec<String>,
    max_series: usize,
    series: RefCell<HashMap<Vec<String>, M>>,
    overflowed: RefCell<Option<M>>,
}

impl<M: Metric> Family<M> {
    /// A family named `name` with label names `labels` (fixed order) and a series cap.
    pub fn new(name: impl Into<String>, labels: &[&str], max_series: usize) -> Self {
        Self {
            name: name.into(),
            labels: labels.iter().map(|l| (*l).to_string()).collect(),
            max_series,
            series: RefCell::new(HashMap::new()),
            overflowed: RefCell::new(None),
        }
    }

    /// The series for `values` (one per label, in order), defining it on first use; `None` only
    /// when the host refuses to define it. The boolean is true when the cap sent it to overflow.
    pub fn get(&self, values: &[&str]) -> Option<(M, bool)> {
        let key: Vec<String> = values.iter().map(|v| sanitize_label_value(v)).collect();
        if let Some(m) = self.series.borrow().get(&key) {
            return Some((*m, false));
        }
        if self.series.borrow().len() >= self.max_series {
            return self.overflow().map(|m| (m, true));
        }
        let pairs: Vec<(&str, &str)> =
            self.labels.iter().map(String::as_str).zip(key.iter().map(String::as_str)).collect();
        let metric = M::define(&series_name(&self.name, &pairs)).ok()?;
        self.series.borrow_mut().insert(key, metric);
        Some((metric, false))
    }

    fn overflow(&self) -> Option<M> {
        if let Some(m) = *self.overflowed.borrow() {
            return Some(m);
        }
        let pairs: Vec<(&str, &str)> = self.labels.iter().map(|l| (l.as_str(), OVERFLOW_VALUE)).collect();
        let metric = M::define(&series_name(&self.name, &pairs)).ok()?;
        *self.overflowed.borrow_mut() = Some(metric);
        Some(metric)
    }

    /// Number of distinct series defined so far (the overflow series not included).
    pub fn len(&self) -> usize {
        self.series.borrow().len()
    }

    /// True when no series has been defined yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sanitizing() {
        assert_eq!(
            series_name("req_total", &[("host", "API.example.com:80"), ("path", "/u/{id};x=1")]),
            "req_total;host=API.example.com%3A80;path=/u/{id}%3Bx%3D1"
        );
        assert_eq!(sanitize_label_value(""), "%");
        assert_eq!(sanitize_label_value("a b\n\u{e9}"), "a%20b%0A%C3%A9");
        assert_ne!(sanitize_label_value("a b"), sanitize_label_value("a_b"));
        assert_ne!(sanitize_label_value("a%20b"), sanitize_label_value("a b"));
        assert_eq!(sanitize_label_value(&"x".repeat(500)).len(), MAX_LABEL_VALUE);
        assert!(sanitize_label_value(&"\u{e9}".repeat(100)).len() <= MAX_LABEL_VALUE);
        assert_eq!(tag_regex("host"), "(;host=([^;]*))");
    }

    #[test]
    fn local_counter_keeps_its_count_until_a_flush_succeeds() {
        let c = LocalCounter::new(Counter(4));
        c.inc();
        c.add(2);
        assert_eq!(c.pending(), 3);
        // Native builds have no host: the flush fails and the count is kept.
        #[cfg(not(target_arch = "wasm32"))]
        {
            c.flush();
            assert_eq!(c.pending(), 3);
        }
    }
}
