//! Per-host and per-route request metrics with a hard bound on cardinality, as Prometheus labels.
//! See `README.md` for the configuration.
//!
//! Per stream:
//! - request headers: every request header in one read, kept for the end of the stream (the
//!   labels describe the request as it reached this filter, before later rewrites);
//! - body callbacks add up the request and response body bytes (their size comes with the
//!   callback: no host call);
//! - at the end of the stream (`on_log`, after the response, also for requests answered by an
//!   earlier filter or by Envoy itself, whose headers are read there instead), one read of
//!   `response.code`, one of `request.duration` (and `xds.cluster_name` when the `cluster` label
//!   is on), then one histogram record per configured histogram. The request counter is counted
//!   in the VM and flushed by the SDK's 1 s tick.
//!
//! Labels are computed from the configuration compiled once: configured hosts or one fixed
//! value, route templates or normalised paths, standard methods or `other`, the code or its
//! class; every value is escaped so that no two inputs share a series (see [`labels`]). The
//! [`series::Registry`] holds at most `max_series` label sets across all VMs of the plugin.

pub mod config;
pub mod labels;
pub mod series;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gatewasm::metrics::FLUSH_PERIOD;
use gatewasm::{ConfigErrors, HeaderSnapshot, HttpFilter, Plugin, Request, Root, Stream};

use crate::config::{Compiled, StatNames};
use crate::labels::{NONE_VALUE, OTHER_VALUE};
use crate::series::{Families, NameFormat, Registry, Sample};

/// This VM's linear memory in bytes (what the VM holds in Envoy's address space).
fn vm_memory() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64) * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// The plugin: compiled configuration, the series registry and scratch buffers reused by every
/// stream of the VM (streams of one VM never run at the same time).
pub struct HttpMetrics {
    config: Compiled,
    registry: Registry,
    scratch: RefCell<Scratch>,
}

#[derive(Default)]
struct Scratch {
    path: String,
    status: String,
    key: String,
}

impl HttpMetrics {
    /// The compiled configuration.
    pub fn config(&self) -> &Compiled {
        &self.config
    }

    /// Computes the labels of the finished request from `headers` (the request as it reached
    /// this filter) and records it.
    fn observe(&self, stream: &Stream, headers: &HeaderSnapshot, request_bytes: u64, response_bytes: u64) {
        let cfg = &self.config;
        let code = u64_property(stream, &["response", "code"]);
        let duration_ns = if cfg.histograms.duration {
            u64_property(stream, &["request", "duration"]).unwrap_or(0)
        } else {
            0
        };
        let cluster = cfg.upstream_cluster.then(|| match stream.property(&["xds", "cluster_name"]) {
            Some(name) if !name.is_empty() => labels::value(&String::from_utf8_lossy(&name)),
            _ => NONE_VALUE.to_string(),
        });
        let header = cfg.header.as_ref().map(|h| match (headers.get(&h.name), &h.values) {
            (None, _) => NONE_VALUE.to_string(),
            (Some(v), None) => labels::value(v),
            (Some(v), Some(allowed)) => allowed
                .iter()
                .find(|(raw, _)| raw == v)
                .map_or_else(|| OTHER_VALUE.to_string(), |(_, label)| label.clone()),
        });

        let mut guard = self.scratch.borrow_mut();
        let scratch = &mut *guard;
        let host = labels::host_label(&cfg.hosts, headers.get(":authority").unwrap_or(""), &cfg.other_host);
        let path = self.path_label(headers.get(":path").unwrap_or(""), &mut scratch.path);
        let method = labels::method_label(headers.get(":method").unwrap_or(""));
        labels::status_label(code, cfg.status_class, &mut scratch.status);

        let mut values: [&str; 6] = [host, path, method, "", "", ""];
        let mut n = 3;
        for extra in
            [cluster.as_deref(), header.as_deref(), Some(scratch.status.as_str())].into_iter().flatten()
        {
            if let Some(slot) = values.get_mut(n) {
                *slot = extra;
                n += 1;
            }
        }
        let values = values.get(..n).unwrap_or_default();
        let sample = Sample { duration_ms: duration_ns / 1_000_000, request_bytes, response_bytes };
        if cfg.stat_names == StatNames::Istio {
            let safe: Vec<std::borrow::Cow<'_, str>> = values.iter().map(|v| labels::istio_safe(v)).collect();
            let safe: Vec<&str> = safe.iter().map(|v| v.as_ref()).collect();
            return self.record(&mut scratch.key, &safe, sample);
        }
        self.record(&mut scratch.key, values, sample);
    }

    /// Records `sample` under the label set `values`, keyed by the values joined with `;`.
    fn record(&self, key: &mut String, values: &[&str], sample: Sample) {
        key.clear();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                key.push(';');
            }
            key.push_str(v);
        }
        self.registry.record(key, values, sample);
    }

    /// The `path` label: the first matching route's, else the normalised path, else the fixed
    /// value. The query string never reaches a label.
    fn path_label<'a>(&'a self, raw: &str, buf: &'a mut String) -> &'a str {
        let path = labels::strip_query(raw);
        let cfg = &self.config;
        if let Some(label) = cfg.routes.iter().find_map(|r| r.matches(path)) {
            return label;
        }
        match cfg.normalize {
            Some(n) if labels::normalize(path, n, buf) => buf.as_str(),
            _ => &cfg.other_path,
        }
    }
}

/// A property holding a little-endian 64-bit integer (`response.code`, `request.duration`).
fn u64_property(stream: &Stream, path: &[&str]) -> Option<u64> {
    let bytes = stream.property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

impl Plugin for HttpMetrics {
    const NAME: &'static str = "http_metrics";
    type Filter = Recorder;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        // Shared data is per VM id: the namespace separates plugins and configurations, so a new
        // configuration starts a fresh count.
        let namespace = format!("gatewasm.http_metrics.{:016x}", labels::fnv1a(raw));
        let registry = Registry::new(
            root.metrics(),
            Families::new(
                &config.prefix,
                match config.stat_names {
                    StatNames::Envoy => NameFormat::Envoy,
                    StatNames::Istio => NameFormat::Istio,
                },
            ),
            config.label_names(),
            config.histograms,
            config.max_series,
            namespace,
        );
        log::info!(
            "http_metrics: {} host(s), {} route(s), at most {} label sets",
            config.hosts.len(),
            config.routes.len(),
            config.max_series
        );
        Ok(HttpMetrics { config, registry, scratch: RefCell::new(Scratch::default()) })
    }

    fn new_filter(self: &Rc<Self>) -> Recorder {
        Recorder { plugin: Rc::clone(self), request: None, request_bytes: 0, response_bytes: 0 }
    }

    /// The plugin's own tick, for the two gauges (the SDK flushes the request counters): the
    /// label sets admitted over every worker, read from shared data, and this VM's memory.
    fn tick_period(&self) -> Option<Duration> {
        Some(FLUSH_PERIOD)
    }

    fn on_tick(self: &Rc<Self>, _root: &Root) {
        self.registry.report(vm_memory());
    }
}

/// Per-stream state: the request headers as they reached the filter, body bytes seen so far.
pub struct Recorder {
    plugin: Rc<HttpMetrics>,
    request: Option<Rc<Request>>,
    request_bytes: u64,
    response_bytes: u64,
}

impl HttpFilter for Recorder {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> gatewasm::Flow {
        // Read now, as the request reached this filter: by the end of the stream a later filter
        // may have rewritten the path or host (header-rewrite), and the labels must be what the
        // client called. Kept as the host's buffer, no copy.
        self.request = Some(stream.request());
        gatewasm::Flow::Continue
    }

    fn on_request_body(
        &mut self,
        _stream: &mut Stream,
        body_size: usize,
        _end_of_stream: bool,
    ) -> gatewasm::Flow {
        // The filter never buffers, so each callback reports the new chunk only.
        self.request_bytes = self.request_bytes.saturating_add(body_size as u64);
        gatewasm::Flow::Continue
    }

    fn on_response_body(
        &mut self,
        _stream: &mut Stream,
        body_size: usize,
        _end_of_stream: bool,
    ) -> gatewasm::Flow {
        self.response_bytes = self.response_bytes.saturating_add(body_size as u64);
        gatewasm::Flow::Continue
    }

    fn on_log(&mut self, stream: &mut Stream) {
        // A request answered by an earlier filter never reached `on_request_headers`: Envoy
        // still holds its headers at the end of the stream, so they are read here instead. One
        // read per request either way.
        let request = self.request.take().unwrap_or_else(|| stream.request());
        self.plugin.observe(stream, request.headers(), self.request_bytes, self.response_bytes);
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(HttpMetrics);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::rc::Rc;

    use gatewasm::testing::{FakeHost, Harness};

    use super::*;

    /// A plugin with the labels `host`, `path`, `method` and `code` and a cap of `max` sets.
    fn vm(host: &Rc<FakeHost>, max: usize, histograms: &str) -> Harness<HttpMetrics> {
        let config = format!(r#"{{"hosts": ["a", "b"], "max_series": {max}, "histograms": {histograms}}}"#);
        Harness::with_host(Rc::clone(host), &config).unwrap()
    }

    const ALL: &str = r#"["duration", "request_bytes", "response_bytes"]"#;

    /// One request to `host`'s `/` answered with `code`, 3 ms long, 10 bytes in and 20 out;
    /// the host calls its end of stream cost.
    fn rec(vm: &Harness<HttpMetrics>, host: &str, code: u64) -> u64 {
        let mut s = vm.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/"), (":authority", host)], false);
        s.request_body(&[0; 10], true);
        s.response_headers(&[(":status", "200")], false);
        s.response_body(&[0; 20], true);
        s.set_property(&["response", "code"], code.to_le_bytes());
        s.set_property(&["request", "duration"], 3_400_000u64.to_le_bytes());
        let before = vm.host().calls();
        s.log();
        vm.host().calls() - before
    }

    fn name(family: &str, host: &str, code: &str) -> String {
        format!("gatewasm_http_{family};host={host};path=/;method=GET;code={code}")
    }

    fn requests(host: &FakeHost, h: &str, code: &str) -> Option<u64> {
        host.counter(&name("requests_total", h, code))
    }

    #[test]
    fn series_are_defined_once_and_counted_locally() {
        let host = FakeHost::new();
        let mut vm = vm(&host, 10, ALL);
        rec(&vm, "a", 200);
        // Two properties, then the three histogram records.
        assert_eq!(rec(&vm, "a", 200), 2 + 3, "a known set costs the three histogram records only");
        assert_eq!(requests(&host, "a", "200"), Some(0), "counted in the VM");
        vm.tick();
        assert_eq!(requests(&host, "a", "200"), Some(2));
        assert_eq!(host.histogram(&name("request_duration_ms", "a", "200")), Some(vec![3, 3]));
        assert_eq!(host.histogram(&name("request_bytes", "a", "200")), Some(vec![10, 10]));
        assert_eq!(host.histogram(&name("response_bytes", "a", "200")), Some(vec![20, 20]));
        assert_eq!(host.gauge("gatewasm_http_series"), Some(1));
        // A tick with nothing counted sends no counter increments.
        let before = host.calls();
        vm.tick();
        assert_eq!(host.calls() - before, 2, "the series gauge only: one read, one set");
    }

    #[test]
    fn the_cap_sends_new_sets_to_overflow() {
        let host = FakeHost::new();
        let mut vm = vm(&host, 2, ALL);
        rec(&vm, "a", 200);
        rec(&vm, "b", 200);
        rec(&vm, "c", 200);
        rec(&vm, "a", 404);
        rec(&vm, "a", 200); // admitted sets keep working
        vm.tick();
        assert_eq!(vm.plugin().registry.len(), 2);
        assert_eq!(requests(&host, "a", "200"), Some(2));
        let overflow =
            "gatewasm_http_requests_total;host=overflow;path=overflow;method=overflow;code=overflow";
        assert_eq!(host.counter(overflow), Some(2));
        assert_eq!(host.counter("gatewasm_http_series_overflow_total"), Some(2));
        assert_eq!(host.gauge("gatewasm_http_series"), Some(2));
        let sets = host.metric_names().into_iter().filter(|n| n.starts_with("gatewasm_http_requests_total;"));
        assert_eq!(sets.count(), 3, "two sets and overflow");
        // A VM that holds the whole cap itself needs no shared-data read: only the overflow
        // samples.
        assert_eq!(rec(&vm, "a", 500), 2 + 3);
    }

    #[test]
    fn the_cap_holds_across_vms() {
        let host = FakeHost::new();
        let mut vm1 = vm(&host, 3, ALL);
        let mut vm2 = vm(&host, 3, ALL);
        rec(&vm1, "a", 200);
        rec(&vm2, "b", 200);
        rec(&vm1, "b", 200); // admitted by the other VM: not counted twice
        rec(&vm2, "a", 500);
        rec(&vm1, "b", 404); // full
        rec(&vm1, "a", 500); // admitted elsewhere, still usable when full
        rec(&vm2, "a", 201);
        // Full: a set this VM does not know costs one shared-data read, then the overflow
        // samples.
        assert_eq!(vm2.plugin().registry.len(), 2);
        assert_eq!(rec(&vm2, "a", 202), 2 + 1 + 3);
        vm1.tick();
        vm2.tick();
        let sets = host.metric_names().into_iter().filter(|n| n.starts_with("gatewasm_http_requests_total;"));
        assert_eq!(sets.count(), 4, "three sets and overflow");
        assert_eq!(requests(&host, "b", "200"), Some(2));
        assert_eq!(host.counter("gatewasm_http_series_overflow_total"), Some(3));
    }

    #[test]
    fn lost_races_on_the_count_are_retried() {
        let host = FakeHost::new();
        let mut vm = vm(&host, 5, ALL);
        host.lose_cas_races(3);
        rec(&vm, "a", 200);
        // A VM that keeps losing gives up and counts the request as overflow...
        host.lose_cas_races(100);
        rec(&vm, "b", 200);
        host.lose_cas_races(0);
        // ...and admits the set on a later request.
        rec(&vm, "b", 200);
        vm.tick();
        assert_eq!(requests(&host, "a", "200"), Some(1));
        assert_eq!(requests(&host, "b", "200"), Some(1));
        assert_eq!(host.counter("gatewasm_http_series_overflow_total"), Some(1));
        assert_eq!(host.gauge("gatewasm_http_series"), Some(2));
    }

    #[test]
    fn memory_gauge_adds_each_vms_growth() {
        let host = FakeHost::new();
        let (vm1, vm2) = (vm(&host, 5, ALL), vm(&host, 5, ALL));
        vm1.plugin().registry.report(1000);
        vm2.plugin().registry.report(500);
        vm1.plugin().registry.report(1500);
        assert_eq!(host.gauge("gatewasm_http_vm_memory_bytes"), Some(2000));
    }

    #[test]
    fn histograms_can_be_left_out() {
        let host = FakeHost::new();
        let one = vm(&host, 5, r#"["duration"]"#);
        rec(&one, "a", 200);
        assert_eq!(rec(&one, "a", 200), 2 + 1);
        assert!(host.histogram(&name("request_bytes", "a", "200")).is_none());
        let none = vm(&FakeHost::new(), 5, "[]");
        rec(&none, "a", 200);
        // Without the duration histogram the duration is not read.
        assert_eq!(rec(&none, "a", 200), 1);
    }

    #[test]
    fn cluster_and_header_labels_come_from_the_stream() {
        let host = FakeHost::new();
        let config = r#"{"upstream_cluster": true, "histograms": [],
            "request_header": {"name": "x-tenant", "values": ["gold"]}}"#;
        let mut vm = Harness::<HttpMetrics>::with_host(Rc::clone(&host), config).unwrap();
        for (tenant, cluster) in [("gold", "backend"), ("tin", ""), ("gold", "backend")] {
            let mut s = vm.stream();
            s.request_headers(&[(":method", "GET"), (":path", "/"), ("x-tenant", tenant)], true);
            s.set_property(&["response", "code"], 200u64.to_le_bytes());
            s.set_property(&["xds", "cluster_name"], cluster);
            s.log();
        }
        vm.tick();
        let p = "gatewasm_http_requests_total;host=other;path=/;method=GET";
        assert_eq!(host.counter(&format!("{p};cluster=backend;x_tenant=gold;code=200")), Some(2));
        assert_eq!(host.counter(&format!("{p};cluster=none;x_tenant=other;code=200")), Some(1));
    }
}
