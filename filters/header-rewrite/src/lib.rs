//! Header rewrite: request and response header operations (add, set, remove, rename) with
//! value substitutions, host rewrite and path rewrite (prefix or regex), selected by rules that
//! match on host, path, method and headers. See `README.md` for the configuration.
//!
//! Request path, per stream:
//! 1. when `strip_original_path` is on (by default when some rule rewrites the path), a
//!    client-sent `x-envoy-original-path` is removed (a write only when present). When the rules
//!    may need two or more request values (this check counts as one), every request header is
//!    read with one host call ([`gatewasm::Request::snapshot`]) and everything is answered from
//!    it; with exactly one, that value alone is read; with none, nothing is;
//! 2. rules are matched against the request as it arrived (`first` or `all` matching rules);
//! 3. every request value the matched rules' templates need is read once and kept, so response
//!    operations can use request values after Envoy stops exposing the request headers;
//! 4. request operations run, then host and path rewrites.
//!
//! Response path: the response operations of the rules that matched the request run; nothing is
//! matched again.

pub mod apply;
pub mod config;
pub mod matcher;
pub mod rewrite;
pub mod template;

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use gatewasm::metrics::{Counter, LocalCounter, FLUSH_PERIOD};
use gatewasm::{
    ConfigErrors, Flow, Headers, HttpFilter, LocalReply, Plugin, Request, Stream, REQUEST_HEADERS,
    RESPONSE_HEADERS,
};

use crate::apply::{Applied, Sink};
use crate::config::{Compiled, MatchMode};
use crate::template::{Part, Source};

/// Header the filter sets to the original `:path` (query included) when it rewrites the path,
/// and removes from every client request so it cannot be spoofed.
pub const ORIGINAL_PATH: &str = "x-envoy-original-path";

/// Name of the per-rule counter family; the rule name is the `rule` label.
pub const RULES_APPLIED: &str = "header_rewrite_rules_applied_total";
/// Counter of operations dropped because a substituted value had control characters.
pub const UNSAFE_DROPPED: &str = "header_rewrite_unsafe_values_dropped_total";
/// Requests refused (400) because their host cannot be read while rules name hosts.
pub const INVALID_HOST: &str = "header_rewrite_invalid_host_total";

/// The plugin: the compiled configuration and its counters.
pub struct HeaderRewrite {
    config: Compiled,
    /// `config.request_headers`, shared with every stream's [`View`].
    names: Rc<[String]>,
    /// Whether the request needs two or more values (counting the check for a spoofed
    /// `x-envoy-original-path`): then every request header is read with one host call instead
    /// of one call per value.
    snapshot: bool,
    /// Whether a client's `x-envoy-original-path` is removed (`strip_original_path`, on by
    /// default when some rule rewrites the path).
    strips_original_path: bool,
    /// Per-rule counts, kept in the VM and flushed to Envoy from the tick: no host call per request.
    applied: Vec<Option<LocalCounter>>,
    dropped: Option<Counter>,
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    host_rules: bool,
    invalid_host: Option<LocalCounter>,
}

impl HeaderRewrite {
    /// The compiled configuration.
    pub fn config(&self) -> &Compiled {
        &self.config
    }
}

#[cfg(target_arch = "wasm32")]
fn counter(name: &str) -> Option<Counter> {
    use gatewasm::metrics::Metric;
    match Counter::define(name) {
        Ok(c) => Some(c),
        Err(status) => {
            log::warn!("header_rewrite: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Native builds (unit tests) have no host to define metrics in.
#[cfg(not(target_arch = "wasm32"))]
fn counter(_name: &str) -> Option<Counter> {
    None
}

/// How many distinct request values (pseudo-headers and header slots) the rules may read.
fn request_values(config: &Compiled) -> usize {
    let (mut method, mut authority, mut path) = (false, false, false);
    for rule in &config.rules {
        method |= !rule.matcher.methods.is_empty();
        authority |= !rule.matcher.hosts.is_empty();
        path |= rule.matcher.path.is_some() || rule.path_rewrite.is_some();
        for part in rule.request.templates().chain(rule.response.templates()).flat_map(|t| t.parts()) {
            match part {
                Part::Method => method = true,
                Part::Host | Part::Authority => authority = true,
                Part::Path => path = true,
                Part::RequestHeader(_) | Part::ResponseHeader(_) | Part::Literal(_) => {}
            }
        }
    }
    usize::from(method) + usize::from(authority) + usize::from(path) + config.request_headers.len()
}

impl Plugin for HeaderRewrite {
    const NAME: &'static str = "header_rewrite";
    type Filter = Rewriter;

    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let applied = config
            .rules
            .iter()
            .map(|r| {
                counter(&gatewasm::metrics::series_name(RULES_APPLIED, &[("rule", &r.name)]))
                    .map(LocalCounter::new)
            })
            .collect();
        let dropped = counter(UNSAFE_DROPPED);
        log::info!("header_rewrite: {} rule(s) loaded", config.rules.len());
        let names = config.request_headers.clone().into();
        let strips_original_path = config.strip_original_path;
        // One pairs read costs about what one value read costs plus 1 µs (it returns every
        // header): worth it only when two or more values are needed (BENCHMARKS.md).
        let reads = request_values(&config) + usize::from(strips_original_path);
        let snapshot = reads >= 2;
        let host_rules = config.rules.iter().any(|r| !r.matcher.hosts.is_empty());
        let invalid_host = counter(INVALID_HOST).map(LocalCounter::new);
        Ok(HeaderRewrite {
            config,
            names,
            snapshot,
            strips_original_path,
            applied,
            dropped,
            host_rules,
            invalid_host,
        })
    }

    fn new_filter(self: &Rc<Self>) -> Rewriter {
        Rewriter { plugin: Rc::clone(self), view: View::new(Rc::clone(&self.names)), matched: Vec::new() }
    }

    fn tick_period(&self) -> Option<std::time::Duration> {
        Some(FLUSH_PERIOD)
    }

    fn on_tick(self: &Rc<Self>) {
        for counter in self.applied.iter().flatten().chain(&self.invalid_host) {
            counter.flush();
        }
    }
}

/// The request as it reached the filter, each part read from Envoy at most once and kept for
/// the response phase.
pub struct View {
    req: Request,
    /// Request header values by slot; allocated on first use.
    headers: OnceCell<Vec<OnceCell<Option<String>>>>,
    /// The plugin's slot table.
    names: Rc<[String]>,
}

impl View {
    fn new(names: Rc<[String]>) -> Self {
        View { req: Request::new(), headers: OnceCell::new(), names }
    }

    /// Every request header read now, with one host call.
    fn snapshot(names: Rc<[String]>) -> Self {
        View { req: Request::snapshot(), headers: OnceCell::new(), names }
    }

    /// Whether the client sent `x-envoy-original-path`.
    fn has_original_path(&self) -> bool {
        match self.req.headers() {
            Some(h) => h.contains(ORIGINAL_PATH),
            None => REQUEST_HEADERS.get(ORIGINAL_PATH).is_some(),
        }
    }

    /// The full `:path`, query included.
    pub fn path_and_query(&self) -> &str {
        self.req.path_and_query()
    }
}

impl Source for View {
    fn method(&self) -> &str {
        self.req.method()
    }
    fn host(&self) -> Option<Cow<'_, str>> {
        self.req.host()
    }
    fn authority(&self) -> &str {
        self.req.authority()
    }
    fn path(&self) -> &str {
        self.req.path()
    }
    fn request_header(&self, slot: usize) -> Option<&str> {
        if let Some(h) = self.req.headers() {
            let name = self.names.get(slot)?;
            // Removed before anything else looks at the request (it is in the snapshot).
            if name == ORIGINAL_PATH {
                return None;
            }
            return h.get(name);
        }
        let cells = self.headers.get_or_init(|| self.names.iter().map(|_| OnceCell::new()).collect());
        let name = self.names.get(slot)?;
        cells.get(slot)?.get_or_init(|| REQUEST_HEADERS.get(name)).as_deref()
    }
    fn response_header(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The response side: request values from the kept [`View`], response headers from Envoy,
/// each read once (so substitutions see the response as it arrived, whatever `remove` did).
struct ResponseSide<'a>(&'a View, RefCell<Vec<(String, Option<String>)>>);

impl Source for ResponseSide<'_> {
    fn method(&self) -> &str {
        self.0.method()
    }
    fn host(&self) -> Option<Cow<'_, str>> {
        self.0.host()
    }
    fn authority(&self) -> &str {
        self.0.authority()
    }
    fn path(&self) -> &str {
        self.0.path()
    }
    fn request_header(&self, slot: usize) -> Option<&str> {
        self.0.request_header(slot)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        let mut cache = self.1.borrow_mut();
        if let Some((_, v)) = cache.iter().find(|(n, _)| *n == name) {
            return v.clone();
        }
        let v = RESPONSE_HEADERS.get(name);
        cache.push((name.to_string(), v.clone()));
        v
    }
}

/// Writes to one of Envoy's header maps; failures are logged and otherwise ignored (the request
/// goes on as it is rather than failing).
struct HostSink(Headers);

impl Sink for HostSink {
    fn set(&mut self, name: &str, value: &str) {
        if let Err(status) = self.0.set(name, value) {
            log::warn!("header_rewrite: setting {name} failed: {status:?}");
        }
    }
    fn add(&mut self, name: &str, value: &str) {
        if let Err(status) = self.0.add(name, value) {
            log::warn!("header_rewrite: adding {name} failed: {status:?}");
        }
    }
    fn remove(&mut self, name: &str) {
        if let Err(status) = self.0.remove(name) {
            log::warn!("header_rewrite: removing {name} failed: {status:?}");
        }
    }
    fn values(&mut self, name: &str) -> Vec<String> {
        self.0.all().into_iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect()
    }
}

/// Per-stream state: the request view and the rules that matched it.
pub struct Rewriter {
    plugin: Rc<HeaderRewrite>,
    view: View,
    /// Indexes of matched rules; after the request phase, only those with response operations.
    matched: Vec<usize>,
}

impl Rewriter {
    fn count_dropped(&self, applied: Applied) {
        if applied.unsafe_dropped > 0 {
            if let Some(c) = self.plugin.dropped {
                c.add(u64::from(applied.unsafe_dropped));
            }
        }
    }
}

impl HttpFilter for Rewriter {
    fn on_request_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        if plugin.snapshot {
            self.view = View::snapshot(Rc::clone(&plugin.names));
        }
        // Reading first: removing an absent header would still clear Envoy's route cache.
        if plugin.strips_original_path && self.view.has_original_path() {
            let _ = REQUEST_HEADERS.remove(ORIGINAL_PATH);
        }
        let cfg = &plugin.config;
        if cfg.rules.is_empty() {
            return Flow::Continue;
        }

        // A host that cannot be read matches no host condition, so a later rule could apply
        // where a well-formed host would have selected another: refused instead.
        if plugin.host_rules && self.view.host().is_none() {
            if let Some(c) = &plugin.invalid_host {
                c.inc();
            }
            return Flow::Reply(LocalReply::invalid_host());
        }

        // 1. Match against the request as it arrived.
        for (i, rule) in cfg.rules.iter().enumerate() {
            if rule.matcher.matches(&self.view) {
                self.matched.push(i);
                if cfg.mode == MatchMode::First {
                    break;
                }
            }
        }
        if self.matched.is_empty() {
            return Flow::Continue;
        }

        // 2. Read every request value the operations will use before changing anything.
        let rules = || self.matched.iter().filter_map(|&i| cfg.rules.get(i).map(|r| (i, r)));
        for (_, rule) in rules() {
            for t in rule.request.templates().chain(rule.response.templates()) {
                t.prefetch(&self.view);
            }
            if rule.path_rewrite.is_some() {
                let _ = self.view.path_and_query();
            }
        }

        // 3. Header operations in rule order, then host and path rewrites (in `all` mode the
        // last matching rule that rewrites wins; each rewrite starts from the original path).
        let mut sink = HostSink(REQUEST_HEADERS);
        let mut buf = String::new();
        let mut host = None;
        let mut path = None;
        let mut dropped = Applied::default();
        for (i, rule) in rules() {
            let applied = apply::apply(&rule.request, &self.view, &mut sink, &mut buf);
            dropped.unsafe_dropped += applied.unsafe_dropped;
            if let Some(h) = &rule.host_rewrite {
                host = Some(h.as_str());
            }
            if let Some(p) = &rule.path_rewrite {
                if let Some(new) = p.apply(self.view.path_and_query()) {
                    path = Some(new);
                }
            }
            if let Some(Some(c)) = plugin.applied.get(i) {
                c.inc();
            }
            log::debug!("header_rewrite: rule {} applied", rule.name);
        }
        if let Some(h) = host {
            sink.set(":authority", h);
        }
        if let Some(p) = path {
            sink.set(ORIGINAL_PATH, self.view.path_and_query());
            sink.set(":path", &p);
        }
        self.count_dropped(dropped);

        self.matched.retain(|&i| cfg.rules.get(i).is_some_and(|r| !r.response.is_empty()));
        Flow::Continue
    }

    fn on_response_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> Flow {
        if self.matched.is_empty() {
            return Flow::Continue;
        }
        let plugin = Rc::clone(&self.plugin);
        let src = ResponseSide(&self.view, RefCell::new(Vec::new()));
        let rules = || self.matched.iter().filter_map(|&i| plugin.config.rules.get(i));
        for rule in rules() {
            rule.response.templates().for_each(|t| t.prefetch(&src));
        }
        let mut sink = HostSink(RESPONSE_HEADERS);
        let mut buf = String::new();
        let mut dropped = Applied::default();
        for rule in rules() {
            dropped.unsafe_dropped += apply::apply(&rule.response, &src, &mut sink, &mut buf).unsafe_dropped;
        }
        self.count_dropped(dropped);
        Flow::Continue
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(HeaderRewrite);
