//! The series registry: one entry per distinct label set, with a hard cap shared by every VM
//! (Envoy worker) of the plugin, and the overflow set beyond it.
//!
//! Each Envoy worker runs its own VM, and every VM defines the stats it uses; Envoy keeps one
//! stat per name, however many VMs define it. A per-VM cap would let N workers create N times
//! the cap. So a label set is admitted once, globally, through Envoy's shared data (per VM id):
//! a count of admitted sets, raised with compare-and-swap, and one key per admitted set. The
//! host calls this takes happen when a VM first sees a label set, not per request; once the cap
//! is reached, a label set the VM does not know costs one shared-data read (is it admitted by
//! another worker?) and is then counted as `overflow`.
//!
//! Memory: at most `max_series` entries per VM (a VM only keeps admitted sets), each a key of
//! at most a few hundred bytes and five ids.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::types::{MetricType, Status};

use crate::config::Histograms;
use crate::labels::OVERFLOW_VALUE;

/// What the registry needs from the host; the Wasm build talks to Envoy, unit tests to a fake.
pub trait Host {
    /// Defines (or finds) a metric; `None` when the host refuses.
    fn define(&self, kind: MetricType, name: &str) -> Option<u32>;
    /// Adds to a counter or gauge.
    fn increment(&self, id: u32, delta: i64);
    /// Records a histogram value, or sets a gauge.
    fn record(&self, id: u32, value: u64);
    /// Reads shared data: the value (`None` when absent) and its CAS; `Err` on a host error.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status>;
    /// Writes shared data; `cas` 0 writes unconditionally.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status>;
}

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
    requests: u32,
    /// Requests counted since the last flush (the counter is flushed from the tick).
    pending: Cell<u64>,
    duration: Option<u32>,
    request_bytes: Option<u32>,
    response_bytes: Option<u32>,
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
pub struct Registry<H: Host> {
    host: H,
    families: Families,
    labels: Vec<String>,
    histograms: Histograms,
    max_series: usize,
    /// Shared-data key prefix: this plugin and configuration.
    namespace: String,
    count_key: String,
    index: RefCell<HashMap<String, usize>>,
    series: RefCell<Vec<Series>>,
    overflow: RefCell<Option<Series>>,
    /// The global count reached the cap (it never goes down).
    full: Cell<bool>,
    overflow_counter: Option<u32>,
    overflow_pending: Cell<u64>,
    series_gauge: Option<u32>,
    memory_gauge: Option<u32>,
    memory_reported: Cell<u64>,
}

/// How many times a CAS race on the count is retried before the set goes to overflow.
const CAS_RETRIES: usize = 8;

impl<H: Host> Registry<H> {
    /// A registry for `labels` (names, in stat-name order); `namespace` identifies the plugin
    /// and configuration in shared data.
    pub fn new(
        host: H,
        families: Families,
        labels: Vec<String>,
        histograms: Histograms,
        max_series: usize,
        namespace: String,
    ) -> Self {
        let overflow_counter = host.define(MetricType::Counter, &families.overflow);
        let series_gauge = host.define(MetricType::Gauge, &families.series);
        let memory_gauge = host.define(MetricType::Gauge, &families.memory);
        let count_key = format!("{namespace}#count");
        // Create the count before traffic, so that two VMs never both create it under load.
        if let Ok((None, _)) = host.shared_get(&count_key) {
            let _ = host.shared_set(&count_key, b"0", 0);
        }
        Registry {
            host,
            families,
            labels,
            histograms,
            max_series,
            namespace,
            count_key,
            index: RefCell::new(HashMap::new()),
            series: RefCell::new(Vec::new()),
            overflow: RefCell::new(None),
            full: Cell::new(false),
            overflow_counter,
            overflow_pending: Cell::new(0),
            series_gauge,
            memory_gauge,
            memory_reported: Cell::new(0),
        }
    }

    /// The host (tests inspect the fake).
    pub fn host(&self) -> &H {
        &self.host
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
                self.overflow_pending.set(self.overflow_pending.get().saturating_add(1));
                if self.overflow.borrow().is_none() {
                    let all: Vec<&str> = self.labels.iter().map(|_| OVERFLOW_VALUE).collect();
                    *self.overflow.borrow_mut() = self.define(&all);
                }
                if let Some(s) = self.overflow.borrow().as_ref() {
                    self.sample(s, sample);
                }
                true
            }
        }
    }

    fn sample(&self, s: &Series, sample: Sample) {
        s.pending.set(s.pending.get().saturating_add(1));
        if let Some(id) = s.duration {
            self.host.record(id, sample.duration_ms);
        }
        if let Some(id) = s.request_bytes {
            self.host.record(id, sample.request_bytes);
        }
        if let Some(id) = s.response_bytes {
            self.host.record(id, sample.response_bytes);
        }
    }

    /// Admits and defines a new label set; `None` sends the request to overflow.
    fn add(&self, key: &str, values: &[&str]) -> Option<usize> {
        if self.series.borrow().len() >= self.max_series || !self.admit(key) {
            return None;
        }
        let series = self.define(values)?;
        let mut all = self.series.borrow_mut();
        all.push(series);
        let i = all.len() - 1;
        self.index.borrow_mut().insert(key.to_string(), i);
        Some(i)
    }

    /// Whether the label set is admitted under the global cap (admitting it if there is room).
    fn admit(&self, key: &str) -> bool {
        let set_key = format!("{}/{key}", self.namespace);
        match self.host.shared_get(&set_key) {
            Ok((Some(_), _)) => return true,
            Ok((None, _)) => {}
            Err(_) => return false,
        }
        if self.full.get() {
            return false;
        }
        for _ in 0..CAS_RETRIES {
            let Ok((value, cas)) = self.host.shared_get(&self.count_key) else { return false };
            let count = value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if count >= self.max_series {
                self.full.set(true);
                return false;
            }
            let next = (count + 1).to_string();
            match self.host.shared_set(&self.count_key, next.as_bytes(), cas.unwrap_or(0)) {
                Ok(()) => {
                    // Written after the count: a crash in between leaves a counted set that no
                    // VM uses, never a used set that is not counted.
                    let _ = self.host.shared_set(&set_key, b"1", 0);
                    return true;
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    fn define(&self, values: &[&str]) -> Option<Series> {
        let name = |family: &str| self.families.series_name(family, &self.labels, values);
        let h = |on: bool, family: &str| {
            if on {
                self.host.define(MetricType::Histogram, &name(family))
            } else {
                None
            }
        };
        Some(Series {
            requests: self.host.define(MetricType::Counter, &name(&self.families.requests))?,
            pending: Cell::new(0),
            duration: h(self.histograms.duration, &self.families.duration),
            request_bytes: h(self.histograms.request_bytes, &self.families.request_bytes),
            response_bytes: h(self.histograms.response_bytes, &self.families.response_bytes),
        })
    }

    /// Sends the request counts counted since the last flush (one call per series that counted
    /// anything), the overflow count, the global series count and this VM's memory growth.
    /// `memory` is this VM's linear memory in bytes.
    pub fn flush(&self, memory: u64) {
        let flush = |id: u32, pending: &Cell<u64>| {
            let n = pending.get();
            if n > 0 {
                self.host.increment(id, i64::try_from(n).unwrap_or(i64::MAX));
                pending.set(0);
            }
        };
        for s in self.series.borrow().iter() {
            flush(s.requests, &s.pending);
        }
        if let Some(s) = self.overflow.borrow().as_ref() {
            flush(s.requests, &s.pending);
        }
        if let Some(id) = self.overflow_counter {
            flush(id, &self.overflow_pending);
        }
        if let Some(id) = self.series_gauge {
            if let Ok((Some(v), _)) = self.host.shared_get(&self.count_key) {
                if let Some(n) = std::str::from_utf8(&v).ok().and_then(|v| v.parse::<u64>().ok()) {
                    self.host.record(id, n);
                }
            }
        }
        // Every VM adds its own growth, so the gauge is the sum over the plugin's VMs.
        if let Some(id) = self.memory_gauge {
            let before = self.memory_reported.get();
            if memory != before {
                let delta =
                    i64::try_from(memory).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
                self.host.increment(id, delta);
                self.memory_reported.set(memory);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;

    /// Envoy's side, shared by several fake VMs: stats by name, shared data with CAS.
    /// A stat: kind, name, counter or gauge value, histogram samples.
    type Stat = (MetricType, String, i64, Vec<u64>);

    #[derive(Default)]
    pub struct FakeEnvoy {
        pub stats: RefCell<Vec<Stat>>,
        pub shared: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
        pub calls: Cell<u64>,
        /// Conditional writes to fail with CasMismatch, as if another VM wrote first.
        pub lose_races: Cell<u32>,
    }

    #[derive(Clone, Default)]
    pub struct Fake(pub Rc<FakeEnvoy>);

    impl Host for Fake {
        fn define(&self, kind: MetricType, name: &str) -> Option<u32> {
            self.0.calls.set(self.0.calls.get() + 1);
            let mut stats = self.0.stats.borrow_mut();
            if let Some(i) = stats.iter().position(|(_, n, _, _)| n == name) {
                return Some(i as u32);
            }
            stats.push((kind, name.to_string(), 0, Vec::new()));
            Some(stats.len() as u32 - 1)
        }
        fn increment(&self, id: u32, delta: i64) {
            self.0.calls.set(self.0.calls.get() + 1);
            self.0.stats.borrow_mut()[id as usize].2 += delta;
        }
        fn record(&self, id: u32, value: u64) {
            self.0.calls.set(self.0.calls.get() + 1);
            let mut stats = self.0.stats.borrow_mut();
            let s = &mut stats[id as usize];
            if s.0 == MetricType::Gauge {
                s.2 = value as i64;
            } else {
                s.3.push(value);
            }
        }
        fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
            self.0.calls.set(self.0.calls.get() + 1);
            Ok(match self.0.shared.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
            self.0.calls.set(self.0.calls.get() + 1);
            let mut shared = self.0.shared.borrow_mut();
            if cas != 0 && self.0.lose_races.get() > 0 {
                self.0.lose_races.set(self.0.lose_races.get() - 1);
                if let Some(entry) = shared.get_mut(key) {
                    entry.1 += 1;
                }
                return Err(Status::CasMismatch);
            }
            let next = match shared.get(key) {
                Some((_, current)) if cas != 0 && cas != *current => return Err(Status::CasMismatch),
                Some((_, current)) => current + 1,
                None => 1,
            };
            shared.insert(key.to_string(), (value.to_vec(), next));
            Ok(())
        }
    }

    impl FakeEnvoy {
        pub fn counter(&self, name: &str) -> Option<i64> {
            self.stats.borrow().iter().find(|(_, n, _, _)| n == name).map(|s| s.2)
        }
        pub fn samples(&self, name: &str) -> Option<Vec<u64>> {
            self.stats.borrow().iter().find(|(_, n, _, _)| n == name).map(|s| s.3.clone())
        }
        pub fn names(&self, prefix: &str) -> Vec<String> {
            self.stats.borrow().iter().filter(|s| s.1.starts_with(prefix)).map(|s| s.1.clone()).collect()
        }
    }

    const ALL: Histograms = Histograms { duration: true, request_bytes: true, response_bytes: true };

    fn registry(envoy: &Fake, max: usize) -> Registry<Fake> {
        Registry::new(
            envoy.clone(),
            Families::new("m", NameFormat::Envoy),
            vec!["host".into(), "code".into()],
            ALL,
            max,
            "ns".into(),
        )
    }

    fn rec(r: &Registry<Fake>, host: &str, code: &str) -> bool {
        r.record(
            &format!("{host};{code}"),
            &[host, code],
            Sample { duration_ms: 3, request_bytes: 10, response_bytes: 20 },
        )
    }

    #[test]
    fn series_are_defined_once_and_counted_locally() {
        let envoy = Fake::default();
        let r = registry(&envoy, 10);
        assert!(!rec(&r, "a", "200"));
        envoy.0.calls.set(0);
        assert!(!rec(&r, "a", "200"));
        assert_eq!(envoy.0.calls.get(), 3, "a known set costs the three histogram records only");
        assert_eq!(envoy.0.counter("m_requests_total;host=a;code=200"), Some(0), "counted in the VM");
        r.flush(0);
        assert_eq!(envoy.0.counter("m_requests_total;host=a;code=200"), Some(2));
        assert_eq!(envoy.0.samples("m_request_duration_ms;host=a;code=200"), Some(vec![3, 3]));
        assert_eq!(envoy.0.samples("m_request_bytes;host=a;code=200"), Some(vec![10, 10]));
        assert_eq!(envoy.0.samples("m_response_bytes;host=a;code=200"), Some(vec![20, 20]));
        assert_eq!(envoy.0.counter("m_series"), Some(1));
        // A flush with nothing counted sends no counter increments.
        envoy.0.calls.set(0);
        r.flush(0);
        assert_eq!(envoy.0.calls.get(), 2, "the series gauge only: one read, one set");
    }

    #[test]
    fn the_cap_sends_new_sets_to_overflow() {
        let envoy = Fake::default();
        let r = registry(&envoy, 2);
        assert!(!rec(&r, "a", "200"));
        assert!(!rec(&r, "b", "200"));
        assert!(rec(&r, "c", "200"));
        assert!(rec(&r, "d", "404"));
        assert!(!rec(&r, "a", "200"), "admitted sets keep working");
        r.flush(0);
        assert_eq!(r.len(), 2);
        assert_eq!(envoy.0.counter("m_requests_total;host=overflow;code=overflow"), Some(2));
        assert_eq!(envoy.0.counter("m_series_overflow_total"), Some(2));
        assert_eq!(envoy.0.counter("m_series"), Some(2));
        assert_eq!(envoy.0.names("m_requests_total").len(), 3, "two sets and overflow");
        // A VM that holds the whole cap itself needs no shared-data read: only the overflow
        // samples.
        envoy.0.calls.set(0);
        assert!(rec(&r, "e", "200"));
        assert_eq!(envoy.0.calls.get(), 3);
    }

    #[test]
    fn the_cap_holds_across_vms() {
        let envoy = Fake::default();
        let vm1 = registry(&envoy, 3);
        let vm2 = registry(&envoy, 3);
        assert!(!rec(&vm1, "a", "200"));
        assert!(!rec(&vm2, "b", "200"));
        assert!(!rec(&vm1, "b", "200"), "admitted by the other VM: not counted twice");
        assert!(!rec(&vm2, "c", "200"));
        assert!(rec(&vm1, "d", "200"));
        assert!(!rec(&vm1, "c", "200"), "admitted elsewhere, still usable when full");
        assert!(rec(&vm2, "e", "200"));
        // Full: a set this VM does not know costs one shared-data read, then the overflow samples.
        assert_eq!(vm2.len(), 2);
        vm2.host().0.calls.set(0);
        assert!(rec(&vm2, "f", "200"));
        assert_eq!(vm2.host().0.calls.get(), 1 + 3);
        vm1.flush(0);
        vm2.flush(0);
        assert_eq!(envoy.0.names("m_requests_total;host=").len(), 4, "a, b, c and overflow");
        assert_eq!(envoy.0.counter("m_requests_total;host=b;code=200"), Some(2));
        assert_eq!(envoy.0.counter("m_series_overflow_total"), Some(3));
    }

    #[test]
    fn cas_races_are_retried() {
        let envoy = Fake::default();
        let r = registry(&envoy, 5);
        envoy.0.lose_races.set(3);
        assert!(!rec(&r, "a", "200"));
        assert_eq!(envoy.0.shared.borrow().get("ns#count").unwrap().0, b"1");
        // A VM that keeps losing gives up and counts the request as overflow.
        envoy.0.lose_races.set(100);
        assert!(rec(&r, "b", "200"));
        envoy.0.lose_races.set(0);
        assert!(!rec(&r, "b", "200"), "and admits the set on a later request");
    }

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

    #[test]
    fn memory_gauge_adds_each_vms_growth() {
        let envoy = Fake::default();
        let vm1 = registry(&envoy, 5);
        let vm2 = registry(&envoy, 5);
        vm1.flush(1000);
        vm2.flush(500);
        vm1.flush(1500);
        assert_eq!(envoy.0.counter("m_vm_memory_bytes"), Some(2000));
    }

    #[test]
    fn histograms_can_be_left_out() {
        let envoy = Fake::default();
        let r = Registry::new(
            envoy.clone(),
            Families::new("m", NameFormat::Envoy),
            vec!["host".into()],
            Histograms { duration: true, request_bytes: false, response_bytes: false },
            5,
            "ns".into(),
        );
        r.record("a", &["a"], Sample::default());
        envoy.0.calls.set(0);
        r.record("a", &["a"], Sample::default());
        assert_eq!(envoy.0.calls.get(), 1);
        assert!(envoy.0.names("m_request_bytes").is_empty());
    }
}
