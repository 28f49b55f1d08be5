//! External authorization over HTTP, with Envoy `ext_authz` (HTTP mode) and Ambassador
//! `AuthService` semantics: every request the rules select is first sent, without its body unless
//! configured, to an auth service; an allowing answer lets it through with identity headers
//! copied from the answer, any other answer goes back to the client as given, and a failing
//! auth service refuses the request (or lets it through, marked, with `failure_mode_allow`).
//! See `README.md` for the configuration.
//!
//! Per stream:
//! 1. every request header is read with one host call; the client's copies of the headers the
//!    filter sets upstream are removed (checked or not, so they can never be spoofed);
//! 2. the rules decide whether the request is checked;
//! 3. the check request is built from the headers read, and sent; or, with
//!    `with_request_body`, the body is buffered first (413 when over the limit, unless partial
//!    bodies are allowed);
//! 4. until the answer arrives, the request (headers, body and trailers) is held;
//! 5. the answer allows, denies or fails ([`check::decide`]); the outcome goes to a counter
//!    (counted in the VM, flushed by the SDK's tick) and, with `duration_histogram`, the latency
//!    to a histogram.

pub mod check;
pub mod config;
pub mod grpc;
pub mod rules;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use gatewasm::metrics::{Histogram, LocalCounter, Metrics};
use gatewasm::{
    Callout, CalloutError, CalloutResult, ConfigErrors, Flow, GrpcCall, GrpcError, GrpcResult,
    HeaderSnapshot, HttpFilter, LocalReply, Plugin, Request, Root, Stream,
};

use crate::check::{ClientRequest, Decision};
use crate::config::{Action, Settings, FAILURE_MODE_ALLOWED};
use crate::grpc::{GrpcDecision, HeaderOp};

/// Counter family of check outcomes; the `result` label is `allowed`, `denied`, `error` or
/// `timeout` (timeouts are not also counted as errors).
pub const CHECKS: &str = "ext_auth_checks_total";
/// Counter of requests the rules let through unchecked.
pub const SKIPPED: &str = "ext_auth_skipped_total";
/// Counter of requests let through after an auth service failure (`failure_mode_allow`).
pub const FAILURE_MODE_ALLOWED_TOTAL: &str = "ext_auth_failure_mode_allowed_total";
/// Counter of requests refused with 413 because their body was over `with_request_body.max_bytes`.
pub const BODY_TOO_LARGE: &str = "ext_auth_body_too_large_total";
/// Requests refused (400) because their host cannot be read while rules name hosts.
pub const INVALID_HOST: &str = "ext_auth_invalid_host_total";
/// Counter of requests refused with 400 because a value the check would carry is not UTF-8
/// text (it could reach the auth service only altered).
pub const NOT_TEXT: &str = "ext_auth_header_not_text_total";
/// Histogram of the time from sending the check to its answer (or timeout), in microseconds
/// (a local auth service answers well within a millisecond); only with `duration_histogram`.
pub const DURATION: &str = "ext_auth_check_duration_us";

/// The counters, each counted in the VM and flushed by the SDK's tick (no host call per
/// request).
struct Counters {
    allowed: LocalCounter,
    denied: LocalCounter,
    error: LocalCounter,
    timeout: LocalCounter,
    skipped: LocalCounter,
    failure_mode_allowed: LocalCounter,
    body_too_large: LocalCounter,
    invalid_host: LocalCounter,
    not_text: LocalCounter,
}

impl Counters {
    fn define(metrics: &Metrics) -> Self {
        let result =
            |r: &str| metrics.local_counter(&gatewasm::metrics::series_name(CHECKS, &[("result", r)]));
        Counters {
            allowed: result("allowed"),
            denied: result("denied"),
            error: result("error"),
            timeout: result("timeout"),
            skipped: metrics.local_counter(SKIPPED),
            failure_mode_allowed: metrics.local_counter(FAILURE_MODE_ALLOWED_TOTAL),
            body_too_large: metrics.local_counter(BODY_TOO_LARGE),
            invalid_host: metrics.local_counter(INVALID_HOST),
            not_text: metrics.local_counter(NOT_TEXT),
        }
    }
}

/// The plugin: settings and metrics.
pub struct ExtAuth {
    settings: Settings,
    counters: Counters,
    /// The latency histogram, defined only when `duration_histogram` asks for it (so Envoy
    /// shows no empty histogram otherwise).
    duration: Option<Histogram>,
    /// Whether this VM has seen a request body since `with_request_body` made it wait for one.
    body_seen: Cell<bool>,
    /// When a request first waited for its body while none had been seen (the clock is read
    /// only until a body arrives).
    waiting_since: Cell<Option<SystemTime>>,
    /// Whether the missing-body error was logged (once per VM).
    warned: Cell<bool>,
}

/// How long requests may wait for a first body before the filter says why they hang.
pub const BODY_WAIT_WARNING: Duration = Duration::from_secs(10);

/// How often, with `with_request_body`, the filter looks for requests waiting on a body.
const BODY_WAIT_CHECK: Duration = Duration::from_secs(1);

impl ExtAuth {
    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Plugin for ExtAuth {
    const NAME: &'static str = "ext_auth";
    type Filter = ExtAuthFilter;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let settings = config::parse(raw)?;
        log::info!(
            "ext_auth: checking with cluster {} ({} rule(s), timeout {} ms)",
            settings.cluster,
            settings.rules.len(),
            settings.timeout.as_millis()
        );
        Ok(ExtAuth {
            counters: Counters::define(root.metrics()),
            duration: settings.duration_histogram.then(|| root.metrics().histogram(DURATION)),
            body_seen: Cell::new(false),
            waiting_since: Cell::new(None),
            warned: Cell::new(false),
            settings,
        })
    }

    fn new_filter(self: &Rc<Self>) -> ExtAuthFilter {
        ExtAuthFilter {
            plugin: Rc::clone(self),
            state: State::Start,
            buffered: 0,
            request: None,
            sent_at: None,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        // Only a filter that waits for bodies has anything to watch.
        self.settings.body.map(|_| BODY_WAIT_CHECK)
    }

    fn on_tick(self: &Rc<Self>, root: &Root) {
        // Without Envoy's `allow_on_headers_stop_iteration`, a Wasm filter that holds the
        // request headers never gets the body: say so instead of leaving requests to hang
        // silently until Envoy's stream idle timeout.
        if let Some(since) = self.waiting_since.get() {
            if !self.body_seen.get() && !self.warned.get() && root.since(since) >= BODY_WAIT_WARNING {
                self.warned.set(true);
                log::error!(
                    "ext_auth: requests have waited {} s for a body that never reached the filter: \
                     with_request_body needs `allow_on_headers_stop_iteration: true` in the Wasm \
                     filter's config (Envoy 1.35+); without it Envoy holds the body until its \
                     stream idle timeout",
                    BODY_WAIT_WARNING.as_secs()
                );
            }
        }
    }
}

/// A check built and not yet sent.
enum Check {
    /// To an HTTP auth service.
    Http(Callout<'static>),
    /// To a gRPC auth service.
    Grpc(grpc::CheckRequest),
}

/// A header for the client's response, from an allowing answer (the value as the auth service
/// wrote it).
struct ClientHeader {
    name: String,
    value: Vec<u8>,
    op: HeaderOp,
}

/// Where a stream is.
enum State {
    /// Nothing decided yet.
    Start,
    /// Buffering the body before the check; the check is built.
    Buffering(Box<Check>),
    /// The check is in flight: hold everything.
    Checking,
    /// Allowed or skipped; headers still to change on the client's response.
    Passed(Vec<ClientHeader>),
    /// Answered locally (denied, failed or too large).
    Done,
}

/// Per-stream state.
pub struct ExtAuthFilter {
    plugin: Rc<ExtAuth>,
    state: State,
    /// Request body bytes buffered so far.
    buffered: usize,
    /// The request as it arrived (the headers the check was built from, kept rather than read
    /// again): an allowing answer's changes are measured against Envoy's header limits with it.
    request: Option<Rc<Request>>,
    /// When a gRPC check went out, with `duration_histogram` (an HTTP callout is timed by the
    /// SDK).
    sent_at: Option<SystemTime>,
}

impl ExtAuthFilter {
    fn settings(&self) -> &Settings {
        &self.plugin.settings
    }

    fn send(&mut self, stream: &mut Stream, call: &Callout<'_>) -> Flow {
        match stream.dispatch(call) {
            Ok(()) => {
                self.state = State::Checking;
                Flow::Pause
            }
            Err(e) => {
                log::warn!("ext_auth: cannot call cluster {}: {e:?}", call.cluster);
                self.failed(stream, false)
            }
        }
    }

    /// Sends a gRPC check.
    fn send_grpc(&mut self, stream: &mut Stream, check: &grpc::CheckRequest) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let settings = &plugin.settings;
        let mut call =
            GrpcCall::new(settings.cluster.as_str(), grpc::SERVICE, grpc::METHOD, grpc::encode(check));
        call.timeout = settings.timeout;
        // A denial's body is bounded by `max_denied_body_bytes`; the rest of the answer is small.
        call.max_response_bytes =
            settings.max_denied_body_bytes.saturating_add(gatewasm::grpc::DEFAULT_MAX_RESPONSE_BYTES);
        if let Some(g) = &settings.grpc {
            call.metadata =
                g.metadata.iter().map(|(n, v)| (n.as_str().into(), v.as_bytes().into())).collect();
        }
        if plugin.duration.is_some() {
            self.sent_at = stream.now();
        }
        match stream.dispatch_grpc(&call) {
            Ok(()) => {
                self.state = State::Checking;
                Flow::Pause
            }
            Err(e) => {
                log::warn!("ext_auth: cannot call cluster {}: {e:?}", settings.cluster);
                self.failed(stream, false)
            }
        }
    }

    /// Sends a check built earlier.
    fn send_check(&mut self, stream: &mut Stream, check: &Check) -> Flow {
        match check {
            Check::Http(call) => self.send(stream, call),
            Check::Grpc(request) => self.send_grpc(stream, request),
        }
    }

    /// The auth service failed: refuse, or let through marked when `failure_mode_allow` says so.
    fn failed(&mut self, stream: &Stream, timeout: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        if timeout { &plugin.counters.timeout } else { &plugin.counters.error }.inc();
        let settings = &plugin.settings;
        if settings.failure_mode_allow {
            plugin.counters.failure_mode_allowed.inc();
            if settings.failure_mode_allow_header_add {
                if let Err(status) = stream.request_headers().set(FAILURE_MODE_ALLOWED, "true") {
                    log::warn!("ext_auth: marking the request failed: {status:?}");
                }
            }
            self.state = State::Passed(Vec::new());
            return Flow::Continue;
        }
        self.state = State::Done;
        Flow::Reply(check::error_reply(settings, timeout))
    }

    /// Sends the buffered check with the first `min(size, max)` body bytes.
    fn send_with_body(&mut self, stream: &mut Stream, size: usize, end_of_stream: bool) -> Flow {
        let State::Buffering(mut check) = std::mem::replace(&mut self.state, State::Start) else {
            return Flow::Continue;
        };
        let (max, pack_as_bytes) =
            self.settings().body.map_or((0, false), |b| (b.max_bytes, b.pack_as_bytes));
        let want = size.min(max);
        let body = if want == 0 {
            Vec::new()
        } else {
            match stream.request_body(want) {
                Ok(body) => body,
                Err(status) => {
                    log::warn!("ext_auth: reading the request body failed: {status:?}");
                    self.state = State::Done;
                    return self.failed(stream, false);
                }
            }
        };
        let partial = size > max || !end_of_stream;
        match check.as_mut() {
            Check::Http(call) => check::attach_body(call, body, partial),
            Check::Grpc(request) => grpc::attach_body(request, body, partial, pack_as_bytes),
        }
        self.send_check(stream, &check)
    }
}

impl ExtAuthFilter {
    /// The reply when an allowing answer's headers take the request (`count` headers, `bytes`
    /// bytes) over Envoy's header limits; `None` within them.
    fn over_header_limits(&mut self, count: usize, bytes: usize) -> Option<Flow> {
        let settings = &self.plugin.settings;
        if count <= settings.max_request_headers_count
            && bytes <= settings.max_request_headers_kb.saturating_mul(1024)
        {
            return None;
        }
        log::info!("ext_auth: the answer's headers take the request to {count} headers, {bytes} bytes");
        self.plugin.counters.error.inc();
        self.state = State::Done;
        Some(Flow::Reply(check::too_many_headers_reply(settings)))
    }

    /// Holds the headers and lets the body reach the filter; `check` goes out with the body.
    fn wait_for_body(&mut self, stream: &mut Stream, check: Check) -> Flow {
        let plugin = &self.plugin;
        if !plugin.body_seen.get() && plugin.waiting_since.get().is_none() {
            plugin.waiting_since.set(stream.now());
        }
        self.state = State::Buffering(Box::new(check));
        stream.let_body_through();
        Flow::Pause
    }

    /// Applies a gRPC answer's decision.
    fn grpc_decided(&mut self, stream: &mut Stream, decision: GrpcDecision) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let settings = &plugin.settings;
        match decision {
            GrpcDecision::Allow(changes) => {
                let (count, bytes) = if changes.upstream.is_empty() {
                    (0, 0)
                } else {
                    let request = self.request.iter().flat_map(|r| r.headers().iter_bytes());
                    grpc::size_after(request, &settings.strip, &changes)
                };
                if let Some(reply) = self.over_header_limits(count, bytes) {
                    return reply;
                }
                let request = stream.request_headers();
                for change in &changes.upstream {
                    if let Err(status) = apply(&request, &change.name, change.value.as_bytes(), change.op) {
                        // As on HTTP: every identity the answer gave, or none of the request.
                        log::warn!("ext_auth: setting {} upstream failed: {status:?}", change.name);
                        plugin.counters.error.inc();
                        self.state = State::Done;
                        return Flow::Reply(check::error_reply(settings, false));
                    }
                }
                for name in &changes.remove {
                    if let Err(status) = request.remove(name) {
                        log::warn!("ext_auth: removing {name} failed: {status:?}");
                    }
                }
                plugin.counters.allowed.inc();
                self.state = State::Passed(
                    changes
                        .client
                        .into_iter()
                        .map(|c| ClientHeader { name: c.name, value: c.value.into_bytes(), op: c.op })
                        .collect(),
                );
                Flow::Continue
            }
            GrpcDecision::Deny(reply) => {
                plugin.counters.denied.inc();
                self.state = State::Done;
                Flow::Reply(reply)
            }
            GrpcDecision::Error { timeout } => self.failed(stream, timeout),
        }
    }
}

/// A property's text; `None` when absent or not UTF-8.
fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.and_then(|b| String::from_utf8(b).ok())
}

/// Changes header `name` of `map` as `op` says, as Envoy applies a `HeaderValueOption`.
fn apply(
    map: &gatewasm::HeaderMap<'_>,
    name: &str,
    value: &[u8],
    op: HeaderOp,
) -> Result<(), gatewasm::proxy_wasm::types::Status> {
    match op {
        HeaderOp::Set => map.set_bytes(name, value),
        HeaderOp::Add => map.add_bytes(name, value),
        HeaderOp::AppendIfExists => match map.get_bytes(name) {
            Some(mut joined) => {
                joined.push(b',');
                joined.extend_from_slice(value);
                map.set_bytes(name, &joined)
            }
            None => Ok(()),
        },
    }
}

impl HttpFilter for ExtAuthFilter {
    fn on_request_headers(&mut self, stream: &mut Stream, end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let settings = &plugin.settings;
        let request = stream.request();
        let headers = request.headers();
        let seen = scan(settings, headers, stream);
        // Without rules, the host is not normalized (an allocation) for nothing.
        let action = if settings.rules.is_empty() {
            settings.default
        } else {
            // A host that cannot be read matches no host condition, so a later rule or the
            // default could apply where a well-formed host would have been checked: refused.
            let host = match gatewasm::http::normalize_host(seen.authority) {
                Some(host) => host,
                None if settings.host_rules => {
                    plugin.counters.invalid_host.inc();
                    return Flow::Reply(LocalReply::invalid_host());
                }
                None => Default::default(),
            };
            rules::decide(&settings.rules, settings.default, seen.method, &host, seen.path, headers)
        };
        if action == Action::Skip {
            plugin.counters.skipped.inc();
            self.state = State::Passed(Vec::new());
            return Flow::Continue;
        }
        // Only a map with bytes that are not UTF-8 is walked again.
        if headers.has_binary() && check::carries_non_text(settings, headers.iter_bytes()) {
            plugin.counters.not_text.inc();
            self.state = State::Done;
            return Flow::Reply(check::not_text_reply());
        }
        // Upgrades (WebSocket) have no body to wait for, as in Envoy.
        let wait_for_body = settings.body.is_some() && !end_of_stream && !seen.upgrade;
        if settings.grpc.is_some() {
            let connection = grpc::Connection {
                source: text(stream.property(&["source", "address"])),
                destination: text(stream.property(&["destination", "address"])),
                protocol: text(stream.property(&["request", "protocol"])),
                now: stream.now(),
            };
            let check = grpc::check_request(settings, headers.iter(), connection);
            self.request = Some(request);
            if wait_for_body {
                return self.wait_for_body(stream, Check::Grpc(check));
            }
            return self.send_grpc(stream, &check);
        }
        let call = check::request(
            settings,
            ClientRequest {
                method: seen.method,
                path: seen.path,
                authority: seen.authority,
                headers: headers.iter(),
            },
        );
        if wait_for_body {
            let check = Check::Http(call.into_owned());
            self.request = Some(request);
            return self.wait_for_body(stream, check);
        }
        let flow = self.send(stream, &call);
        drop(call);
        self.request = Some(request);
        flow
    }

    fn on_request_body(&mut self, stream: &mut Stream, body_size: usize, end_of_stream: bool) -> Flow {
        match &self.state {
            State::Buffering(_) => {
                self.plugin.body_seen.set(true);
                self.buffered = body_size;
                let Some(body) = self.settings().body else {
                    return Flow::Continue;
                };
                if body_size > body.max_bytes && !body.allow_partial {
                    self.plugin.counters.body_too_large.inc();
                    self.state = State::Done;
                    return Flow::Reply(check::too_large_reply(body.max_bytes));
                }
                // Exactly `max_bytes` so far is not yet partial: the next piece (or the end)
                // tells, so a body of exactly `max_bytes` is sent as whole, as Envoy marks it.
                if end_of_stream || (body.allow_partial && body_size > body.max_bytes) {
                    return self.send_with_body(stream, body_size, end_of_stream);
                }
                Flow::Pause
            }
            // Returning Continue here would let Envoy pass the held headers on before the answer.
            State::Checking => Flow::Pause,
            State::Start | State::Passed(_) | State::Done => Flow::Continue,
        }
    }

    fn on_request_trailers(&mut self, stream: &mut Stream) -> Flow {
        match &self.state {
            State::Buffering(_) => {
                let size = self.buffered;
                self.send_with_body(stream, size, true)
            }
            State::Checking => Flow::Pause,
            State::Start | State::Passed(_) | State::Done => Flow::Continue,
        }
    }

    fn on_callout(&mut self, stream: &mut Stream, mut result: CalloutResult) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        if let (Some(histogram), Some(elapsed)) = (&plugin.duration, stream.callout_elapsed()) {
            histogram.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        }
        read_denied_body(&plugin.settings, stream, &mut result);
        match check::decide(&plugin.settings, &result) {
            Decision::Allow(allow) => {
                let settings = &plugin.settings;
                // Envoy's limits hold for the request going upstream as they did for the one
                // that arrived; native `ext_authz` answers 500 when the headers it sets break
                // them (and checks nothing when it sets none).
                let (count, bytes) = if allow.upstream.is_empty() {
                    (0, 0)
                } else {
                    let request = self.request.iter().flat_map(|r| r.headers().iter_bytes());
                    check::size_after(request, &settings.strip, &allow)
                };
                if let Some(reply) = self.over_header_limits(count, bytes) {
                    return reply;
                }
                if let Err((name, status)) = apply_upstream(stream, &allow) {
                    // The upstream must get every identity the answer gave, or none of the
                    // request: refused as the gateway's own error, whatever failure_mode_allow
                    // says (the auth service did answer).
                    log::warn!("ext_auth: setting {name} upstream failed: {status:?}");
                    plugin.counters.error.inc();
                    self.state = State::Done;
                    return Flow::Reply(check::error_reply(&plugin.settings, false));
                }
                plugin.counters.allowed.inc();
                self.state = State::Passed(
                    allow
                        .client
                        .iter()
                        .map(|(n, v)| ClientHeader {
                            name: (*n).to_owned(),
                            value: v.to_vec(),
                            op: HeaderOp::Add,
                        })
                        .collect(),
                );
                Flow::Continue
            }
            Decision::Deny(reply) => {
                plugin.counters.denied.inc();
                self.state = State::Done;
                Flow::Reply(reply)
            }
            Decision::Error { timeout } => {
                if let Ok(resp) = &result {
                    log::debug!("ext_auth: auth service answered {}", resp.status);
                }
                self.failed(stream, timeout)
            }
        }
    }

    fn on_grpc_result(&mut self, stream: &mut Stream, result: GrpcResult) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        if let (Some(histogram), Some(sent), Some(now)) = (&plugin.duration, self.sent_at, stream.now()) {
            let elapsed = now.duration_since(sent).unwrap_or_default();
            histogram.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        }
        if let Err(e) = &result {
            log::debug!("ext_auth: the gRPC check failed: {e:?}");
            if matches!(e, GrpcError::TooLarge { .. }) {
                log::warn!("ext_auth: the auth service's answer is over the bound: {e:?}");
            }
        }
        let decision = grpc::decide(&plugin.settings, &result);
        self.grpc_decided(stream, decision)
    }

    fn on_response_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        if let State::Passed(client) = &mut self.state {
            let response = stream.response_headers();
            for header in client.drain(..) {
                if let Err(status) = apply(&response, &header.name, &header.value, header.op) {
                    log::warn!("ext_auth: adding {} to the response failed: {status:?}", header.name);
                }
            }
        }
        Flow::Continue
    }
}

/// What one walk over the request headers finds.
struct Seen<'h> {
    method: &'h str,
    /// `:path`, query included.
    path: &'h str,
    authority: &'h str,
    upgrade: bool,
}

/// Walks the request headers once: picks out what the rules and the check need, and removes the
/// client's copies of the headers the filter sets, before anything else, checked or not (so
/// they can never be spoofed). Each such name is removed once, however often it was sent.
fn scan<'h>(settings: &Settings, headers: &'h HeaderSnapshot, stream: &Stream) -> Seen<'h> {
    let mut seen = Seen { method: "", path: "", authority: "", upgrade: false };
    let mut removed: u64 = 0;
    for (name, value) in headers.iter() {
        match name {
            ":method" => seen.method = value,
            ":path" => seen.path = value,
            ":authority" => seen.authority = value,
            "upgrade" => seen.upgrade = true,
            _ => {}
        }
        let Some(i) = settings.strip.iter().position(|s| s.eq_ignore_ascii_case(name)) else {
            continue;
        };
        // Past 64 names a repeated header is removed again: harmless, only one more call.
        let bit = if i < 64 { 1u64 << i } else { 0 };
        if removed & bit != 0 {
            continue;
        }
        removed |= bit;
        if let Err(status) = stream.request_headers().remove(name) {
            log::warn!("ext_auth: removing the client's {name} failed: {status:?}");
        }
    }
    seen
}

/// Reads a denying answer's body (the callout leaves every body in Envoy, where it stays readable
/// until the answer's callback returns): up to `max_denied_body_bytes`, as the client gets it. A
/// failed read is an auth service failure, as when the SDK reads the body.
fn read_denied_body(settings: &Settings, stream: &Stream, result: &mut CalloutResult) {
    let Ok(resp) = result else {
        return;
    };
    if !resp.truncated || settings.max_denied_body_bytes == 0 || !check::is_denial(settings, resp.status) {
        return;
    }
    match stream.callout_body(settings.max_denied_body_bytes) {
        Ok(body) => resp.body = body,
        Err(status) => {
            log::warn!("ext_auth: reading the auth service's answer body failed: {status:?}");
            *result = Err(CalloutError::Failed);
        }
    }
}

/// Writes an allowing answer's headers onto the held request, byte for byte, one value per name
/// (the client's copies were removed when the request arrived). Stops at the first identity
/// header Envoy refuses, naming it.
fn apply_upstream<'a>(
    stream: &Stream,
    allow: &check::Allow<'a>,
) -> Result<(), (&'a str, gatewasm::proxy_wasm::types::Status)> {
    let request = stream.request_headers();
    for (name, value) in &allow.upstream {
        request.set_bytes(name, value).map_err(|status| (*name, status))?;
    }
    for name in &allow.remove {
        if let Err(status) = request.remove(name) {
            log::warn!("ext_auth: removing {name} failed: {status:?}");
        }
    }
    Ok(())
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(ExtAuth);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use gatewasm::testing::{Action, Answer, FakeHost, Harness};

    use super::*;

    const SEED: &str = r#"{
        "cluster": "auth",
        "path_prefix": "/extauth",
        "timeout_ms": 500,
        "allowed_request_headers": ["x-qotm-session"],
        "allowed_upstream_headers": ["x-qotm-session", "x-admin-id", "x-admin-email"],
        "rules": [{"name": "health", "match": {"path": {"exact": "/healthz"}}, "action": "skip"}]
    }"#;

    /// `SEED` with `extra` fields added.
    fn seed_with(extra: &str) -> String {
        format!("{},{extra}}}", SEED.trim_end().trim_end_matches('}'))
    }

    fn gateway(config: &str) -> Harness<ExtAuth> {
        Harness::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn get<'a>(path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut headers = vec![(":method", "GET"), (":path", path), (":authority", "shop.example.com")];
        headers.extend_from_slice(extra);
        headers
    }

    /// What the SDK's tick sent to the host for outcome `result`.
    fn checks(gw: &mut Harness<ExtAuth>, result: &str) -> Option<u64> {
        gw.tick();
        gw.host().counter(&format!("{CHECKS};result={result}"))
    }

    #[test]
    fn an_allowing_answer_sends_its_identity_upstream_and_the_clients_copies_are_gone() {
        let mut gw = gateway(SEED);
        let mut s = gw.stream();
        let request = get(
            "/nodebackend/?a=1",
            &[("cookie", "id_token=tok"), ("x-admin-id", "999"), ("x-secret", "s"), ("x-qotm-session", "s1")],
        );
        assert_eq!(s.request_headers(&request, true), Action::Pause);
        // One read of the request, a remove for each header the filter sets upstream that the
        // client sent (the forged identity, the session), the callout: nothing else.
        assert_eq!(s.calls(), 4);
        assert_eq!(s.request_header("x-admin-id"), None, "removed before the answer");
        let call = s.callout().unwrap();
        assert_eq!(call.cluster, "auth");
        assert_eq!(call.timeout, Duration::from_millis(500));
        assert_eq!(call.header(":path"), Some("/extauth/nodebackend/?a=1"));
        assert_eq!(call.header(":authority"), Some("shop.example.com"));
        assert_eq!(call.header("cookie"), Some("id_token=tok"));
        assert_eq!(call.header("x-qotm-session"), Some("s1"));
        assert_eq!(call.header("x-secret"), None);
        assert_eq!(call.header("content-length"), Some("0"));

        s.answer(&Answer::new(200, &[("x-admin-id", "1"), ("x-admin-email", "admin@qq.com")], "OK"));
        assert_eq!(s.resumed().len(), 1, "the request goes on");
        assert!(s.reply().is_none());
        assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));
        assert_eq!(s.request_header("x-admin-email").as_deref(), Some("admin@qq.com"));
        assert!(s.request_header_all("x-qotm-session").is_empty(), "not in the answer: not kept");
        let before = s.calls();
        assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Continue);
        assert_eq!(s.calls(), before, "nothing to do on the response");
        assert_eq!(checks(&mut gw, "allowed"), Some(1));
    }

    #[test]
    fn a_denial_reaches_the_client_with_its_body_and_allowed_headers() {
        let mut gw = gateway(&seed_with(r#""allowed_client_headers": ["x-login-*"]"#));
        let mut s = gw.stream();
        s.request_headers(&get("/login", &[]), true);
        s.answer(&Answer::new(
            201,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "id_token=tok; HttpOnly"),
                ("x-login-id", "7"),
                ("authorization", "Bearer leaked"),
            ],
            r#"{"id_token":"tok"}"#,
        ));
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (201, "ext_auth_denied"));
        assert_eq!(reply.body_text(), r#"{"id_token":"tok"}"#, "read although the callout reads no body");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("set-cookie"), Some("id_token=tok; HttpOnly"));
        assert_eq!(reply.header("x-login-id"), Some("7"));
        assert_eq!(reply.header("authorization"), None);
        assert!(s.resumed().is_empty());
        assert_eq!(checks(&mut gw, "denied"), Some(1));
    }

    #[test]
    fn a_long_denial_body_is_cut_at_the_bound_and_an_allowing_body_is_never_read() {
        let gw = gateway(r#"{"cluster": "auth", "max_denied_body_bytes": 4}"#);
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::new(401, &[], "0123456789"));
        assert_eq!(s.reply().unwrap().body, b"0123");

        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        let before = s.calls();
        s.answer(&Answer::new(200, &[], "OK (authenticated)"));
        // The answer's headers and the resume: the body stays in the host.
        assert_eq!(s.calls() - before, 2);
    }

    #[test]
    fn a_timeout_or_a_reset_refuses_with_status_on_error() {
        let mut gw = gateway(SEED);
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::timeout());
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (403, "ext_auth_auth_timeout"));
        assert!(!reply.body_text().contains("upstream request timeout"), "Envoy's own body is not shown");

        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::reset());
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (403, "ext_auth_auth_error"));

        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::new(503, &[], "no healthy upstream"));
        assert_eq!(s.reply().unwrap().details, "ext_auth_auth_error");
        assert!(s.resumed().is_empty());
        assert_eq!(checks(&mut gw, "timeout"), Some(1));
        assert_eq!(gw.host().counter(&format!("{CHECKS};result=error")), Some(2));
    }

    #[test]
    fn failure_mode_allow_lets_through_marked_and_unknown_clusters_fail_at_once() {
        let mut gw = gateway(&seed_with(r#""failure_mode_allow": true, "status_on_error": 503"#));
        let mut s = gw.stream();
        s.request_headers(&get("/", &[("x-envoy-auth-failure-mode-allowed", "forged")]), true);
        assert_eq!(s.request_header(FAILURE_MODE_ALLOWED), None, "the client's copy is removed");
        s.answer(&Answer::reset());
        assert!(s.reply().is_none());
        assert_eq!(s.resumed().len(), 1);
        assert_eq!(s.request_header(FAILURE_MODE_ALLOWED).as_deref(), Some("true"));
        gw.tick();
        assert_eq!(gw.host().counter(FAILURE_MODE_ALLOWED_TOTAL), Some(1));

        let host = FakeHost::new();
        host.set_clusters(&["other"]);
        let gw = Harness::<ExtAuth>::with_host(host, SEED).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&get("/", &[]), true), Action::Pause);
        assert_eq!(s.reply().unwrap().details, "ext_auth_auth_error");
    }

    #[test]
    fn skipped_requests_are_not_checked_but_still_stripped() {
        let mut gw = gateway(SEED);
        let mut s = gw.stream();
        assert_eq!(
            s.request_headers(&get("/healthz", &[("x-admin-email", "evil@x")]), true),
            Action::Continue
        );
        assert!(s.callout().is_none());
        assert_eq!(s.request_header("x-admin-email"), None);
        gw.tick();
        assert_eq!(gw.host().counter(SKIPPED), Some(1));
    }

    #[test]
    fn a_host_no_rule_can_read_is_refused_when_rules_name_hosts() {
        let mut gw = gateway(
            r#"{"cluster": "auth", "default": "skip",
                "rules": [{"match": {"hosts": ["api.example.com"]}, "action": "check"}]}"#,
        );
        let mut s = gw.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/"), (":authority", "api.example.com:abc")], true);
        assert_eq!(s.reply().unwrap().status, 400);
        assert!(s.callout().is_none());
        gw.tick();
        assert_eq!(gw.host().counter(INVALID_HOST), Some(1));
    }

    #[test]
    fn a_value_for_the_auth_service_that_is_not_text_is_refused() {
        let mut gw = gateway(SEED);
        let mut s = gw.stream();
        let request = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"h".to_vec()),
            (b"cookie".to_vec(), b"sid=\xff".to_vec()),
        ];
        assert_eq!(s.request_headers_bytes(request, true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (400, "ext_auth_header_not_text"));
        assert!(s.callout().is_none());
        gw.tick();
        assert_eq!(gw.host().counter(NOT_TEXT), Some(1));
        // A value the check does not carry does not matter.
        let mut s = gw.stream();
        let request = vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":path".to_vec(), b"/".to_vec()),
            (b":authority".to_vec(), b"h".to_vec()),
            (b"x-other".to_vec(), b"\xff".to_vec()),
        ];
        s.request_headers_bytes(request, true);
        assert!(s.callout().is_some());
    }

    #[test]
    fn identity_bytes_reach_the_upstream_unchanged() {
        let gw = gateway(SEED);
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        let mut answer = Answer::new(200, &[], "");
        answer.headers.push((b"x-admin-email".to_vec(), b"adm\xffin@qq.com".to_vec()));
        s.answer(&answer);
        assert_eq!(s.request_header_bytes("x-admin-email").as_deref(), Some(&b"adm\xffin@qq.com"[..]));
    }

    #[test]
    fn the_body_is_buffered_then_sent_whole_or_cut() {
        let gw = gateway(&seed_with(r#""with_request_body": {"max_bytes": 32}"#));
        let post = [(":method", "POST"), (":path", "/upload"), (":authority", "h"), ("x-admin-id", "9")];
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&post, false), Action::Pause);
        assert_eq!(s.request_header("x-admin-id"), None, "stripped at once");
        assert_eq!(s.request_body(b"please ", false), Action::Pause);
        assert!(s.callout().is_none(), "waits for the end of the body");
        assert_eq!(s.request_body(b"allow me", true), Action::Pause);
        let call = s.callout().unwrap();
        assert_eq!(call.body, b"please allow me");
        assert_eq!(call.header(PARTIAL_BODY_HEADER), Some("false"));
        s.answer(&Answer::new(200, &[("x-admin-id", "1")], ""));
        assert_eq!(s.resumed().len(), 1);
        assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));

        // Trailers end the body too.
        let mut s = gw.stream();
        s.request_headers(&post, false);
        s.request_body(b"grpc-ish", false);
        assert_eq!(s.request_trailers(&[("x-checksum", "1")]), Action::Pause);
        assert_eq!(s.callout().unwrap().body, b"grpc-ish");

        let mut gw = gateway(&seed_with(r#""with_request_body": {"max_bytes": 8}"#));
        let mut s = gw.stream();
        s.request_headers(&post, false);
        s.request_body(b"0123456789", false);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (413, "ext_auth_body_too_large"));
        assert!(s.callout().is_none());
        gw.tick();
        assert_eq!(gw.host().counter(BODY_TOO_LARGE), Some(1));

        let gw = gateway(&seed_with(r#""with_request_body": {"max_bytes": 8, "allow_partial": true}"#));
        let mut s = gw.stream();
        s.request_headers(&post, false);
        assert_eq!(s.request_body(b"0123456789", false), Action::Pause);
        let call = s.callout().unwrap();
        assert_eq!(call.body, b"01234567");
        assert_eq!(call.header(PARTIAL_BODY_HEADER), Some("true"));
        // More body while the check is out is held too.
        assert_eq!(s.request_body(b"abc", true), Action::Pause);
        // An upgrade has no body to wait for.
        let mut s = gw.stream();
        let upgrade = [(":method", "GET"), (":path", "/ws"), (":authority", "h"), ("upgrade", "websocket")];
        assert_eq!(s.request_headers(&upgrade, false), Action::Pause);
        assert!(s.callout().unwrap().body.is_empty());
    }

    #[test]
    fn a_body_that_never_arrives_is_noticed_by_the_tick() {
        let mut gw = gateway(&seed_with(r#""with_request_body": {"max_bytes": 100}"#));
        assert!(gw.host().tick_period().is_some());
        let mut s = gw.stream();
        s.request_headers(&[(":method", "POST"), (":path", "/upload"), (":authority", "h")], false);
        gw.host().advance(Duration::from_secs(5));
        gw.tick();
        assert!(!gw.plugin().warned.get());
        gw.host().advance(Duration::from_secs(6));
        gw.tick();
        assert!(gw.plugin().warned.get(), "past BODY_WAIT_WARNING the log says why");
    }

    #[test]
    fn the_duration_histogram_is_opt_in() {
        let gw = gateway(SEED);
        assert!(!gw.host().metric_names().iter().any(|n| n == DURATION));
        let gw = gateway(&seed_with(r#""duration_histogram": true"#));
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        gw.host().advance(Duration::from_millis(3));
        s.answer(&Answer::new(200, &[], ""));
        assert_eq!(gw.host().histogram(DURATION), Some(vec![3000]));
    }

    #[test]
    fn identities_over_the_header_limits_are_refused_with_500() {
        let gw = gateway(&seed_with(r#""max_request_headers_count": 4"#));
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::new(200, &[("x-admin-id", "1"), ("x-admin-email", "a@b")], ""));
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (500, "ext_auth_request_headers_too_large"));
        assert!(s.resumed().is_empty());
    }

    #[test]
    fn headers_to_add_to_the_client_on_success() {
        let gw = gateway(&seed_with(r#""allowed_client_headers_on_success": ["set-cookie"]"#));
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer(&Answer::new(200, &[("set-cookie", "sid=2")], ""));
        assert_eq!(s.response_headers(&[(":status", "200")], true), Action::Continue);
        assert_eq!(s.response_header("set-cookie").as_deref(), Some("sid=2"));
    }

    const PARTIAL_BODY_HEADER: &str = config::PARTIAL_BODY;

    const GRPC: &str = r#"{
        "grpc_service": {"cluster": "authz", "timeout_ms": 300, "initial_metadata": [{"name": "x-tenant", "value": "t1"}]},
        "allowed_upstream_headers": ["x-admin-id"],
        "allowed_client_headers_on_success": ["x-session"]
    }"#;

    /// An OK `CheckResponse` setting `x-admin-id` and, on the response, `x-session`.
    fn grpc_ok() -> Vec<u8> {
        use prost::Message as _;
        let header = |key: &str, value: &str| grpc::HeaderValueOption {
            header: Some(grpc::HeaderValue { key: key.into(), value: value.into() }),
            append: None,
            append_action: 0,
        };
        grpc::CheckResponse {
            status: Some(grpc::RpcStatus { code: 0, message: String::new() }),
            ok_response: Some(grpc::OkHttpResponse {
                headers: vec![header("x-admin-id", "1"), header("x-other", "o")],
                response_headers_to_add: vec![header("x-session", "s1")],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn grpc_checks_allow_deny_and_fail_as_configured() {
        use gatewasm::testing::GrpcAnswer;
        use prost::Message as _;

        let mut gw = gateway(GRPC);
        let mut s = gw.stream();
        s.set_property(&["source", "address"], "10.1.2.3:5555");
        let request = get("/orders", &[("x-admin-id", "999"), ("authorization", "Bearer t")]);
        assert_eq!(s.request_headers(&request, true), Action::Pause);
        assert_eq!(s.request_header("x-admin-id"), None, "the client's copy is removed at once");
        assert!(s.callout().is_none());
        let call = s.grpc_call().unwrap();
        assert_eq!(
            (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
            ("authz", grpc::SERVICE, "Check")
        );
        assert_eq!(call.timeout, Duration::from_millis(300));
        assert_eq!(call.metadata("x-tenant"), Some(&b"t1"[..]));
        let check = grpc::CheckRequest::decode(call.message.as_slice()).unwrap();
        let attributes = check.attributes.unwrap();
        let source = attributes.source.unwrap().address.unwrap().socket_address.unwrap();
        assert_eq!((source.address.as_str(), source.port_value), ("10.1.2.3", 5555));
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!((http.method.as_str(), http.path.as_str()), ("GET", "/orders"));
        assert_eq!(http.headers.get("authorization").map(String::as_str), Some("Bearer t"));
        assert!(!http.headers.contains_key("x-admin-id"));

        s.answer_grpc(&GrpcAnswer::message(grpc_ok()));
        assert_eq!(s.resumed().len(), 1);
        assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));
        assert_eq!(s.request_header("x-other"), None, "not in allowed_upstream_headers");
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(s.response_header("x-session").as_deref(), Some("s1"));
        assert_eq!(checks(&mut gw, "allowed"), Some(1));

        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        let denied = grpc::CheckResponse {
            status: Some(grpc::RpcStatus { code: 7, message: String::new() }),
            ..Default::default()
        };
        s.answer_grpc(&GrpcAnswer::message(denied.encode_to_vec()));
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (403, "ext_auth_denied"));

        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer_grpc(&GrpcAnswer::timeout());
        assert_eq!(s.reply().unwrap().details, "ext_auth_auth_timeout");
        let mut s = gw.stream();
        s.request_headers(&get("/", &[]), true);
        s.answer_grpc(&GrpcAnswer::status(13, "boom"));
        assert_eq!(s.reply().unwrap().details, "ext_auth_auth_error");
        assert_eq!(checks(&mut gw, "denied"), Some(1));
        assert_eq!(gw.host().counter(&format!("{CHECKS};result=error")), Some(1));

        // An unknown cluster fails at once; with failure_mode_allow the request goes on, marked.
        let host = FakeHost::new();
        host.set_clusters(&["other"]);
        let open = GRPC.replace(
            "\"allowed_upstream_headers\"",
            "\"failure_mode_allow\": true, \"allowed_upstream_headers\"",
        );
        let gw = Harness::<ExtAuth>::with_host(host, &open).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&get("/", &[]), true), Action::Continue);
        assert_eq!(s.request_header(FAILURE_MODE_ALLOWED).as_deref(), Some("true"));
    }

    #[test]
    fn a_grpc_check_waits_for_the_body() {
        use prost::Message as _;
        let gw = gateway(&GRPC.replace("\"allowed_upstream_headers\"", "\"with_request_body\": {\"max_bytes\": 4, \"allow_partial\": true}, \"allowed_upstream_headers\""));
        let mut s = gw.stream();
        assert_eq!(
            s.request_headers(&[(":method", "POST"), (":path", "/u"), (":authority", "h")], false),
            Action::Pause
        );
        assert!(s.grpc_call().is_none());
        assert_eq!(s.request_body(b"abcdef", false), Action::Pause);
        let check = grpc::CheckRequest::decode(s.grpc_call().unwrap().message.as_slice()).unwrap();
        let http = check.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.body, b"abcd");
        assert_eq!(http.headers.get(PARTIAL_BODY_HEADER).map(String::as_str), Some("true"));
    }
}
