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
//!   in the VM and flushed from a 1 s tick.
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
use gatewasm::{ConfigErrors, HeaderSnapshot, HttpFilter, Plugin, Stream, REQUEST_HEADERS};

use crate::config::{Compiled, StatNames};
use crate::labels::{NONE_VALUE, OTHER_VALUE};
use crate::series::{Families, Host, NameFormat, Registry, Sample};

/// The registry's host: Envoy, through the SDK's binding (no host answer can panic).
#[derive(Debug, Default, Clone, Copy)]
pub struct Envoy;

impl Host for Envoy {
    fn define(&self, kind: gatewasm::proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
        gatewasm::host::define_metric(kind, name)
            .map_err(|s| log::warn!("http_metrics: cannot define metric {name}: {s:?}"))
            .ok()
    }

    fn increment(&self, id: u32, delta: i64) {
        let _ = gatewasm::host::increment_metric(id, delta);
    }

    fn record(&self, id: u32, value: u64) {
        let _ = gatewasm::host::record_metric(id, value);
    }

    fn shared_get(
        &self,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Option<u32>), gatewasm::proxy_wasm::types::Status> {
        // The registry never writes an empty entry: an empty one reads as absent.
        let (value, cas) = gatewasm::host::shared_data(key)?;
        Ok((value.filter(|v| !v.is_empty()), cas))
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: u32,
    ) -> Result<(), gatewasm::proxy_wasm::types::Status> {
        gatewasm::host::set_shared_data(key, value, (cas != 0).then_some(cas))
    }
}

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
    registry: Registry<Envoy>,
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
    fn observe(&self, headers: &HeaderSnapshot, request_bytes: u64, response_bytes: u64) {
        let cfg = &self.config;
        let code = u64_property(&["response", "code"]);
        let duration_ns =
            if cfg.histograms.duration { u64_property(&["request", "duration"]).unwrap_or(0) } else { 0 };
        let cluster =
            cfg.upstream_cluster.then(|| match gatewasm::host::property(&["xds", "cluster_name"]) {
                Ok(Some(name)) if !name.is_empty() => labels::value(&String::from_utf8_lossy(&name)),
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
fn u64_property(path: &[&str]) -> Option<u64> {
    let bytes = gatewasm::host::property(path).ok()??;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

impl Plugin for HttpMetrics {
    const NAME: &'static str = "http_metrics";
    type Filter = Recorder;

    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        // Shared data is per VM id: the namespace separates plugins and configurations, so a new
        // configuration starts a fresh count.
        let namespace = format!("gatewasm.http_metrics.{:016x}", labels::fnv1a(raw));
        let registry = Registry::new(
            Envoy,
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
        Recorder { plugin: Rc::clone(self), headers: None, request_bytes: 0, response_bytes: 0 }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(FLUSH_PERIOD)
    }

    fn on_tick(self: &Rc<Self>) {
        self.registry.flush(vm_memory());
    }
}

/// Per-stream state: the request headers as they reached the filter, body bytes seen so far.
pub struct Recorder {
    plugin: Rc<HttpMetrics>,
    headers: Option<HeaderSnapshot>,
    request_bytes: u64,
    response_bytes: u64,
}

impl HttpFilter for Recorder {
    fn on_request_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> gatewasm::Flow {
        // Read now, as the request reached this filter: by the end of the stream a later filter
        // may have rewritten the path or host (header-rewrite), and the labels must be what the
        // client called. Kept as the host's buffer, no copy.
        self.headers = Some(HeaderSnapshot::read(REQUEST_HEADERS));
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

    fn on_log(&mut self, _stream: &mut Stream) {
        // A request answered by an earlier filter never reached `on_request_headers`: Envoy
        // still holds its headers at the end of the stream, so they are read here instead. One
        // read per request either way.
        let headers = self.headers.take().unwrap_or_else(|| HeaderSnapshot::read(REQUEST_HEADERS));
        self.plugin.observe(&headers, self.request_bytes, self.response_bytes);
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(HttpMetrics);
