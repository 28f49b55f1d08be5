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
//! a name, and callers bound the number of series with [`Family`]'s cap: per VM, or across
//! every VM of the plugin with a [`SharedCap`].

mod cap;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::MetricType;

pub use cap::SharedCap;

use crate::host::Host;

/// The plugin's metrics, reached through [`crate::Root::metrics`]: every metric is defined
/// here, once per plugin (one host call each), and the handles returned are kept by the plugin.
/// A metric the host refuses to define is logged once and then counts nothing: a metric never
/// fails a request, and a filter keeps no `Option` for it.
///
/// [`LocalCounter`]s defined here are flushed by the SDK itself, on a tick it schedules
/// ([`FLUSH_PERIOD`]), whatever the plugin's own tick.
#[derive(Clone)]
pub struct Metrics(Rc<Registry>);

struct Registry {
    host: Rc<dyn Host>,
    locals: RefCell<Vec<Rc<LocalCell>>>,
}

impl Metrics {
    pub(crate) fn new(host: Rc<dyn Host>) -> Self {
        Self(Rc::new(Registry { host, locals: RefCell::new(Vec::new()) }))
    }

    fn define(&self, kind: MetricType, name: &str) -> Handle {
        let id = match self.0.host.define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("cannot define metric {name}: {status:?}; it will count nothing");
                None
            }
        };
        Handle { host: Rc::clone(&self.0.host), id }
    }

    /// A counter named `name` (a [`series_name`] for a labelled one).
    pub fn counter(&self, name: &str) -> Counter {
        Counter(self.define(MetricType::Counter, name))
    }

    /// A gauge named `name`.
    pub fn gauge(&self, name: &str) -> Gauge {
        Gauge(self.define(MetricType::Gauge, name))
    }

    /// A histogram named `name`.
    pub fn histogram(&self, name: &str) -> Histogram {
        Histogram(self.define(MetricType::Histogram, name))
    }

    /// A counter that counts in the VM, with no host call on the request path; the SDK sends
    /// what it counted to the host every [`FLUSH_PERIOD`], so Envoy's value lags by up to one
    /// period, and what was counted since the last flush is lost if the VM stops.
    ///
    /// On a host where an update is a plain function call (a native module), the counter sends
    /// each update at once instead: no batching, no lag.
    pub fn local_counter(&self, name: &str) -> LocalCounter {
        let direct = !self.0.host.batches_counters();
        let cell = Rc::new(LocalCell { counter: self.counter(name), pending: Cell::new(0), direct });
        if !direct {
            self.0.locals.borrow_mut().push(Rc::clone(&cell));
        }
        LocalCounter(cell)
    }

    /// A labelled family of metrics of kind `M` with label names `labels` (fixed order), at
    /// most `max_series` label sets in this VM (see [`Family`]).
    pub fn family<M: Metric>(
        &self,
        name: impl Into<String>,
        labels: &[&str],
        max_series: usize,
    ) -> Family<M> {
        let name = name.into();
        if let Err(status) = self.0.host.define_family(M::KIND, &name, labels) {
            log::warn!("cannot define metric family {name}: {status:?}; its series will count nothing");
        }
        Family {
            metrics: self.clone(),
            name,
            labels: labels.iter().map(|l| (*l).to_string()).collect(),
            max_series,
            cap: None,
            series: RefCell::new(HashMap::new()),
            overflowed: RefCell::new(None),
        }
    }

    /// Declares a labelled family of kind `M` whose series the plugin defines itself, by name
    /// (with [`series_name`], or another form the host can split with the declared label
    /// names, such as Istio's `family` `label=.=value;.;`), rather than through a [`Family`]. A
    /// host with real labels defines the family here, while the plugin is configured (Envoy's
    /// dynamic modules accept new families only then); on proxy-wasm this makes no host call.
    pub fn declare_family<M: Metric>(&self, name: &str, labels: &[&str]) {
        if let Err(status) = self.0.host.define_family(M::KIND, name, labels) {
            log::warn!("cannot define metric family {name}: {status:?}; its series will count nothing");
        }
    }

    /// A cap of `max_series` label sets over every VM of the plugin (every Envoy worker), kept
    /// in the host's shared data under `namespace`. Shared data belongs to the VM id, which
    /// other plugins may share: make `namespace` name the plugin, and the configuration too
    /// (a hash of it) when a new configuration must start a new count. Creates the shared count
    /// if no VM did yet (a read, and a write the first time).
    pub fn shared_cap(&self, namespace: impl Into<String>, max_series: usize) -> SharedCap {
        SharedCap::new(Rc::clone(&self.0.host), namespace.into(), max_series)
    }

    /// A labelled family like [`Metrics::family`] whose label sets are admitted by `cap`, so at
    /// most [`SharedCap::max`] of them exist over every VM of the plugin; beyond, the
    /// [`OVERFLOW_VALUE`] series.
    pub fn shared_family<M: Metric>(
        &self,
        name: impl Into<String>,
        labels: &[&str],
        cap: &SharedCap,
    ) -> Family<M> {
        let mut family = self.family(name, labels, cap.max());
        family.cap = Some(cap.clone());
        family
    }

    /// Whether some [`LocalCounter`] needs the SDK's flush tick.
    pub(crate) fn has_local(&self) -> bool {
        !self.0.locals.borrow().is_empty()
    }

    /// Sends every local counter's count to the host (one host call per counter that counted
    /// something since the last flush).
    pub(crate) fn flush(&self) {
        for cell in self.0.locals.borrow().iter() {
            cell.flush();
        }
    }
}

/// A defined metric: its id (`None` when the host refused it) and the host that keeps it.
#[derive(Clone)]
struct Handle {
    host: Rc<dyn Host>,
    id: Option<u32>,
}

impl Handle {
    fn increment(&self, offset: i64) -> bool {
        self.id.is_some_and(|id| self.host.increment_metric(id, offset).is_ok())
    }

    fn record(&self, value: u64) {
        if let Some(id) = self.id {
            let _ = self.host.record_metric(id, value);
        }
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.id)
    }
}

/// A monotonically increasing count.
#[derive(Debug, Clone)]
pub struct Counter(Handle);

/// A value that goes up and down.
#[derive(Debug, Clone)]
pub struct Gauge(Handle);

/// A distribution of recorded values (Envoy computes buckets and quantiles).
#[derive(Debug, Clone)]
pub struct Histogram(Handle);

/// A metric kind a [`Family`] can hold.
pub trait Metric: Clone {
    /// The host's kind of this metric.
    const KIND: MetricType;
    /// Defines the metric named `name` in `metrics`.
    fn define(metrics: &Metrics, name: &str) -> Self;
}

impl Metric for Counter {
    const KIND: MetricType = MetricType::Counter;
    fn define(metrics: &Metrics, name: &str) -> Self {
        metrics.counter(name)
    }
}

impl Metric for Gauge {
    const KIND: MetricType = MetricType::Gauge;
    fn define(metrics: &Metrics, name: &str) -> Self {
        metrics.gauge(name)
    }
}

impl Metric for Histogram {
    const KIND: MetricType = MetricType::Histogram;
    fn define(metrics: &Metrics, name: &str) -> Self {
        metrics.histogram(name)
    }
}

impl Counter {
    /// Adds one. Failures are ignored: a metric must never fail a request.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.increment(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A counter that counts in the VM and reaches the host only when the SDK flushes it
/// ([`Metrics::local_counter`]). Cloning it is cheap; clones count together.
#[derive(Debug, Clone)]
pub struct LocalCounter(Rc<LocalCell>);

#[derive(Debug)]
struct LocalCell {
    counter: Counter,
    pending: Cell<u64>,
    /// Sends each update at once (the host does not batch, see [`Metrics::local_counter`]).
    direct: bool,
}

/// How often the SDK flushes [`LocalCounter`]s: Envoy's stats lag by at most this much.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

impl LocalCounter {
    /// Adds one, locally.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`, locally.
    pub fn add(&self, n: u64) {
        if self.0.direct {
            self.0.counter.add(n);
        } else {
            self.0.pending.set(self.0.pending.get().saturating_add(n));
        }
    }

    /// What was counted since the last flush.
    pub fn pending(&self) -> u64 {
        self.0.pending.get()
    }
}

impl LocalCell {
    /// Sends what was counted (one host call, none when nothing was counted). On failure the
    /// count is kept for the next flush.
    fn flush(&self) {
        let n = self.pending.get();
        if n == 0 {
            return;
        }
        let delta = i64::try_from(n).unwrap_or(i64::MAX);
        if self.counter.0.increment(delta) {
            self.pending.set(n.saturating_sub(delta.unsigned_abs()));
        }
    }
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.record(value);
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: i64) {
        self.0.increment(delta);
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, value: u64) {
        self.0.record(value);
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

/// A labelled metric family with a hard cap on distinct label sets ([`Metrics::family`]).
///
/// Series are defined on first use and cached; once `max_series` exist, new label sets are all
/// counted under one series whose labels are [`OVERFLOW_VALUE`], so memory and the number of
/// series stay bounded whatever clients send. The cap is per VM, or over every VM with a
/// [`SharedCap`] ([`Metrics::shared_family`]), which costs host calls only when this VM first
/// sees a label set.
pub struct Family<M: Metric> {
    metrics: Metrics,
    name: String,
    labels: Vec<String>,
    max_series: usize,
    cap: Option<SharedCap>,
    series: RefCell<HashMap<Vec<String>, M>>,
    overflowed: RefCell<Option<M>>,
}

impl<M: Metric> Family<M> {
    /// The series for `values` (one per label, in order), defining it on first use. The
    /// boolean is true when the cap sent it to overflow.
    pub fn get(&self, values: &[&str]) -> (M, bool) {
        let key: Vec<String> = values.iter().map(|v| sanitize_label_value(v)).collect();
        if let Some(m) = self.series.borrow().get(&key) {
            return (m.clone(), false);
        }
        if self.series.borrow().len() >= self.max_series
            || self.cap.as_ref().is_some_and(|cap| !cap.admit(&key.join(";")))
        {
            return (self.overflow(), true);
        }
        let pairs: Vec<(&str, &str)> =
            self.labels.iter().map(String::as_str).zip(key.iter().map(String::as_str)).collect();
        let metric = M::define(&self.metrics, &series_name(&self.name, &pairs));
        self.series.borrow_mut().insert(key, metric.clone());
        (metric, false)
    }

    fn overflow(&self) -> M {
        if let Some(m) = self.overflowed.borrow().as_ref() {
            return m.clone();
        }
        let pairs: Vec<(&str, &str)> = self.labels.iter().map(|l| (l.as_str(), OVERFLOW_VALUE)).collect();
        let metric = M::define(&self.metrics, &series_name(&self.name, &pairs));
        *self.overflowed.borrow_mut() = Some(metric.clone());
        metric
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
}
