//! The series registry: one entry per distinct label set, with a hard cap shared by every VM
//! (Envoy worker) of the plugin, and the overflow set beyond it.
//!
//! A label set is the request counter and up to three histograms, named by different families,
//! so the set is admitted once for all of them through the SDK's [`SharedCap`] (a shared-data
//! count raised with compare-and-swap, and one key per admitted set): the host calls this takes
//! happen when a VM first sees a label set, not per request; once the cap is reached, a label set
//! the VM does not know costs one shared-data read (is it admitted by another worker?) and is
//! then counted as `overflow`. The request counters are the SDK's local counters, sent to Envoy
//! by the SDK's own tick.
//!
//! Memory: at most `max_series` entries per VM (a VM only keeps admitted sets), each a key of
//! at most a few hundred bytes and four metric handles.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use gatewasm::metrics::{Counter, Gauge, Histogram, LocalCounter, Metrics, SharedCap};

use crate::config::Histograms;
use crate::labels::OVERFLOW_VALUE;

/// Metric family names, from the prefix.
#[derive(Debug, Clone)]
pub struct Families {
    /// `<prefix>_requests_total` (counter).
    pub requests: String,
    /// `<prefix>_request_duration_ms` (histogram).
    pub duration: String,
    /// `<prefix>_request_bytes` (histogram).
    pub request_bytes: String,
    /// `<prefix>_response_bytes` (histogram).
    pub response_bytes: String,
    /// `<prefix>_series_overflow_total` (counter, no labels).
    pub overflow: String,
    /// `<prefix>_series` (gauge, no labels): admitted label sets.
    pub series: String,
    /// `<prefix>_vm_memory_bytes` (gauge, no labels): linear memory of every VM of the plugin.
    pub memory: String,
    /// How labels are written into stat names.
    pub format: NameFormat,
}

/// How labels are written into a stat name; each form has its tag regexes (see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameFormat {
    /// `family;host=api.example.com;code=200`: regex `(;host=([^;]*))`, for a standalone Envoy's
    /// `stats_config.stats_tags`.
    #[default]
    Envoy,
    /// `familyhost=.=api.example.com;.;code=.=200;.;`: Istio's `extraStatTags` regex
    /// `(host=\.=(.*?);\.;)` removes each pair, leaving the family name.
    Istio,
}

impl Families {
    /// The stat name of `family` with `labels` set to `values` (escaped label values).
    pub fn series_name(&self, family: &str, labels: &[String], values: &[&str]) -> String {
        let mut n = String::with_capacity(family.len() + 80);
        n.push_str(family);
        for (label, value) in labels.iter().zip(values) {
            match self.format {
                NameFormat::Envoy => {
                    n.push(';');
                    n.push_str(label);
                    n.push('=');
                    n.push_str(value);
                }
                NameFormat::Istio => {
                    n.push_str(label);
                    n.push_str("=.=");
                    n.push_str(value);
                    n.push_str(";.;");
                }
            }
        }
        n
    }
}

impl Families {
    /// The names for `prefix`.
    pub fn new(prefix: &str, format: NameFormat) -> Self {
        Families {
            requests: format!("{prefix}_requests_total"),
            duration: format!("{prefix}_request_duration_ms"),
            request_bytes: format!("{prefix}_request_bytes"),
            response_bytes: format!("{prefix}_response_bytes"),
            overflow: format!("{prefix}_series_overflow_total"),
            series: format!("{prefix}_series"),
            memory: format!("{prefix}_vm_memory_bytes"),
            format,
        }
    }
}

/// One label set's metrics.
#[derive(Debug)]
pub struct Series {
    requests: LocalCounter,
    duration: Option<Histogram>,
    request_bytes: Option<Histogram>,
    response_bytes: Option<Histogram>,
}

/// What one request recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// The registry.
pub struct Registry {
    metrics: Metrics,
    cap: SharedCap,
    families: Families,
    labels: Vec<String>,
    histograms: Histograms,
    index: RefCell<HashMap<String, usize>>,
    series: RefCell<Vec<Series>>,
    overflow: RefCell<Option<Series>>,
    overflow_counter: LocalCounter,
    series_gauge: Gauge,
    memory_gauge: Gauge,
    memory_reported: Cell<u64>,
}

impl Registry {
    /// A registry for `labels` (names, in stat-name order), defining its metrics in `metrics`;
    /// `namespace` identifies the plugin and configuration in shared data, where the cap of
    /// `max_series` label sets is kept.
    pub fn new(
        metrics: &Metrics,
        families: Families,
        labels: Vec<String>,
        histograms: Histograms,
        max_series: usize,
        namespace: String,
    ) -> Self {
        // A host with real labels (a native module) defines each family once, here; the series
        // below are then named in either form and split with these label names.
        let names: Vec<&str> = labels.iter().map(String::as_str).collect();
        metrics.declare_family::<Counter>(&families.requests, &names);
        for (on, family) in [
            (histograms.duration, &families.duration),
            (histograms.request_bytes, &families.request_bytes),
            (histograms.response_bytes, &families.response_bytes),
        ] {
            if on {
                metrics.declare_family::<Histogram>(family, &names);
            }
        }
        let overflow_counter = metrics.local_counter(&families.overflow);
        let series_gauge = metrics.gauge(&families.series);
        let memory_gauge = metrics.gauge(&families.memory);
        Registry {
            cap: metrics.shared_cap(namespace, max_series),
            metrics: metrics.clone(),
            families,
            labels,
            histograms,
            index: RefCell::new(HashMap::new()),
            series: RefCell::new(Vec::new()),
            overflow: RefCell::new(None),
            overflow_counter,
            series_gauge,
            memory_gauge,
            memory_reported: Cell::new(0),
        }
    }

    /// Label sets this VM knows (the overflow set not included).
    pub fn len(&self) -> usize {
        self.series.borrow().len()
    }

    /// True before the first label set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records one request under the label set `values` (escaped label values in the order of
    /// the label names); `key` is `values` joined by `;` (no value contains `;`). Returns
    /// whether the request went to the overflow set.
    pub fn record(&self, key: &str, values: &[&str], sample: Sample) -> bool {
        let known = self.index.borrow().get(key).copied();
        let slot = match known {
            Some(i) => Some(i),
            None => self.add(key, values),
        };
        match slot {
            Some(i) => {
                if let Some(s) = self.series.borrow().get(i) {
                    self.sample(s, sample);
                }
                false
            }
            None => {
                self.overflow_counter.inc();
                if self.overflow.borrow().is_none() {
                    let all: Vec<&str> = self.labels.iter().map(|_| OVERFLOW_VALUE).collect();
                    *self.overflow.borrow_mut() = Some(self.define(&all));
                }
                if let Some(s) = self.overflow.borrow().as_ref() {
                    self.sample(s, sample);
                }
                true
            }
        }
    }

    fn sample(&self, s: &Series, sample: Sample) {
        s.requests.inc();
        for (histogram, value) in [
            (&s.duration, sample.duration_ms),
            (&s.request_bytes, sample.request_bytes),
            (&s.response_bytes, sample.response_bytes),
        ] {
            if let Some(h) = histogram {
                h.record(value);
            }
        }
    }

    /// Admits and defines a new label set; `None` sends the request to overflow. A VM that
    /// holds the whole cap itself asks no other VM.
    fn add(&self, key: &str, values: &[&str]) -> Option<usize> {
        if self.series.borrow().len() >= self.cap.max() || !self.cap.admit(key) {
            return None;
        }
        let series = self.define(values);
        let mut all = self.series.borrow_mut();
        all.push(series);
        let i = all.len() - 1;
        self.index.borrow_mut().insert(key.to_string(), i);
        Some(i)
    }

    fn define(&self, values: &[&str]) -> Series {
        let name = |family: &str| self.families.series_name(family, &self.labels, values);
        let h = |on: bool, family: &str| on.then(|| self.metrics.histogram(&name(family)));
        Series {
            requests: self.metrics.local_counter(&name(&self.families.requests)),
            duration: h(self.histograms.duration, &self.families.duration),
            request_bytes: h(self.histograms.request_bytes, &self.families.request_bytes),
            response_bytes: h(self.histograms.response_bytes, &self.families.response_bytes),
        }
    }

    /// The gauges: label sets admitted over every VM (one shared-data read, one set) and this
    /// VM's memory growth since the last report (one call when it changed); `memory` is this
    /// VM's linear memory in bytes. The request counters are not here: the SDK flushes them.
    pub fn report(&self, memory: u64) {
        if let Some(n) = self.cap.admitted() {
            self.series_gauge.set(n);
        }
        // Every VM adds its own growth, so the gauge is the sum over the plugin's VMs.
        let before = self.memory_reported.get();
        if memory != before {
            let delta = i64::try_from(memory).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
            self.memory_gauge.add(delta);
            self.memory_reported.set(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_put_each_pair_where_extra_stat_tags_find_it() {
        let f = Families::new("m", NameFormat::Istio);
        let labels = vec!["host".to_string(), "code".to_string()];
        assert_eq!(
            f.series_name(&f.requests, &labels, &["a.example.com", "200"]),
            "m_requests_totalhost=.=a.example.com;.;code=.=200;.;"
        );
        let f = Families::new("m", NameFormat::Envoy);
        assert_eq!(
            f.series_name(&f.requests, &labels, &["a.example.com", "200"]),
            "m_requests_total;host=a.example.com;code=200"
        );
    }
}
