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
//!    (counted in the VM, flushed from the tick) and, with `duration_histogram`, the latency to
//!    a histogram.

pub mod check;
pub mod config;
pub mod rules;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use gatewasm::metrics::{Counter, Histogram, LocalCounter, FLUSH_PERIOD};
use gatewasm::proxy_wasm::types::BufferType;
use gatewasm::{
    host, Callout, CalloutError, CalloutResult, ConfigErrors, Flow, HeaderSnapshot, HttpFilter, LocalReply,
    Plugin, Stream, REQUEST_HEADERS, RESPONSE_HEADERS,
};

use crate::check::{ClientRequest, Decision};
use crate::config::{Action, Settings, FAILURE_MODE_ALLOWED};

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

/// The counters, each counted in the VM and flushed from the tick (no host call per request).
struct Counters {
    allowed: Option<LocalCounter>,
    denied: Option<LocalCounter>,
    error: Option<LocalCounter>,
    timeout: Option<LocalCounter>,
    skipped: Option<LocalCounter>,
    failure_mode_allowed: Option<LocalCounter>,
    body_too_large: Option<LocalCounter>,
    invalid_host: Option<LocalCounter>,
    not_text: Option<LocalCounter>,
}

impl Counters {
    fn define() -> Self {
        let result = |r: &str| local(&gatewasm::metrics::series_name(CHECKS, &[("result", r)]));
        Counters {
            allowed: result("allowed"),
            denied: result("denied"),
            error: result("error"),
            timeout: result("timeout"),
            skipped: local(SKIPPED),
            failure_mode_allowed: local(FAILURE_MODE_ALLOWED_TOTAL),
            body_too_large: local(BODY_TOO_LARGE),
            invalid_host: local(INVALID_HOST),
            not_text: local(NOT_TEXT),
        }
    }

    fn all(&self) -> [&Option<LocalCounter>; 9] {
        [
            &self.allowed,
            &self.denied,
            &self.error,
            &self.timeout,
            &self.skipped,
            &self.failure_mode_allowed,
            &self.body_too_large,
            &self.invalid_host,
            &self.not_text,
        ]
    }
}

fn inc(counter: &Option<LocalCounter>) {
    if let Some(c) = counter {
        c.inc();
    }
}

#[cfg(target_arch = "wasm32")]
fn define<M: gatewasm::metrics::Metric>(name: &str) -> Option<M> {
    match M::define(name) {
        Ok(m) => Some(m),
        Err(status) => {
            log::warn!("ext_auth: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Native builds (unit tests) have no host to define metrics in.
#[cfg(not(target_arch = "wasm32"))]
fn define<M: gatewasm::metrics::Metric>(_name: &str) -> Option<M> {
    None
}

fn local(name: &str) -> Option<LocalCounter> {
    define::<Counter>(name).map(LocalCounter::new)
}

/// The plugin: settings and metrics.
pub struct ExtAuth {
    settings: Settings,
    counters: Counters,
    /// The latency histogram, when `duration_histogram` asks for it.
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

impl ExtAuth {
    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Plugin for ExtAuth {
    const NAME: &'static str = "ext_auth";
    type Filter = ExtAuthFilter;

    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> {
        let settings = config::parse(raw)?;
        log::info!(
            "ext_auth: checking with cluster {} ({} rule(s), timeout {} ms)",
            settings.cluster,
            settings.rules.len(),
            settings.timeout.as_millis()
        );
        Ok(ExtAuth {
            counters: Counters::define(),
            duration: if settings.duration_histogram { define::<Histogram>(DURATION) } else { None },
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
            request: HeaderSnapshot::default(),
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(FLUSH_PERIOD)
    }

    fn on_tick(self: &Rc<Self>) {
        for counter in self.counters.all().into_iter().flatten() {
            counter.flush();
        }
        // Without Envoy's `allow_on_headers_stop_iteration`, a Wasm filter that holds the
        // request headers never gets the body: say so instead of leaving requests to hang
        // silently until Envoy's stream idle timeout.
        if let Some(since) = self.waiting_since.get() {
            if !self.body_seen.get()
                && !self.warned.get()
                && gatewasm::clock::since(since) >= BODY_WAIT_WARNING
            {
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

/// Where a stream is.
enum State {
    /// Nothing decided yet.
    Start,
    /// Buffering the body before the check; the check request is built.
    Buffering(Box<Callout<'static>>),
    /// The check is in flight: hold everything.
    Checking,
    /// Allowed or skipped; headers still to add to the client's response (values as the auth
    /// service wrote them).
    Passed(Vec<(String, Vec<u8>)>),
    /// Answered locally (denied, failed or too large).
    Done,
}

/// Per-stream state.
pub struct ExtAuthFilter {
    plugin: Rc<ExtAuth>,
    state: State,
    /// Request body bytes buffered so far.
    buffered: usize,
    /// The request headers as they arrived (the buffer the check was built from, kept rather
    /// than read again): an allowing answer's changes are measured against Envoy's header
    /// limits with it.
    request: HeaderSnapshot,
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
                self.failed(false)
            }
        }
    }

    /// The auth service failed: refuse, or let through marked when `failure_mode_allow` says so.
    fn failed(&mut self, timeout: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        inc(if timeout { &plugin.counters.timeout } else { &plugin.counters.error });
        let settings = &plugin.settings;
        if settings.failure_mode_allow {
            inc(&plugin.counters.failure_mode_allowed);
            if settings.failure_mode_allow_header_add {
                if let Err(status) = REQUEST_HEADERS.set(FAILURE_MODE_ALLOWED, "true") {
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
        let State::Buffering(mut call) = std::mem::replace(&mut self.state, State::Start) else {
            return Flow::Continue;
        };
        let max = self.settings().body.map_or(0, |b| b.max_bytes);
        let want = size.min(max);
        let body = if want == 0 {
            Vec::new()
        } else {
            match host::buffer(BufferType::HttpRequestBody, 0, want) {
                Ok(body) => body,
                Err(status) => {
                    log::warn!("ext_auth: reading the request body failed: {status:?}");
                    self.state = State::Done;
                    return self.failed(false);
                }
            }
        };
        check::attach_body(&mut call, body, size > max || !end_of_stream);
        self.send(stream, &call)
    }
}

impl HttpFilter for ExtAuthFilter {
    fn on_request_headers(&mut self, stream: &mut Stream, end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let settings = &plugin.settings;
        let headers = HeaderSnapshot::read(REQUEST_HEADERS);
        let seen = scan(settings, &headers);
        // Without rules, the host is not normalized (an allocation) for nothing.
        let action = if settings.rules.is_empty() {
            settings.default
        } else {
            // A host that cannot be read matches no host condition, so a later rule or the
            // default could apply where a well-formed host would have been checked: refused.
            let host = match gatewasm::http::normalize_host(seen.authority) {
                Some(host) => host,
                None if settings.host_rules => {
                    inc(&plugin.counters.invalid_host);
                    return Flow::Reply(LocalReply::invalid_host());
                }
                None => Default::default(),
            };
            let path = gatewasm::http::split_path(seen.path).0;
            rules::decide(&settings.rules, settings.default, seen.method, &host, path)
        };
        if action == Action::Skip {
            inc(&plugin.counters.skipped);
            self.state = State::Passed(Vec::new());
            return Flow::Continue;
        }
        // Only a map with bytes that are not UTF-8 is walked again.
        if headers.has_binary() && check::carries_non_text(settings, headers.iter_bytes()) {
            inc(&plugin.counters.not_text);
            self.state = State::Done;
            return Flow::Reply(check::not_text_reply());
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
        // Upgrades (WebSocket) have no body to wait for, as in Envoy.
        if settings.body.is_some() && !end_of_stream && !seen.upgrade {
            if !plugin.body_seen.get() && plugin.waiting_since.get().is_none() {
                plugin.waiting_since.set(gatewasm::clock::now());
            }
            self.state = State::Buffering(Box::new(call.into_owned()));
            self.request = headers;
            return Flow::Pause;
        }
        let flow = self.send(stream, &call);
        drop(call);
        self.request = headers;
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
                    inc(&self.plugin.counters.body_too_large);
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
        if let (Some(histogram), Some(elapsed)) = (plugin.duration, stream.callout_elapsed()) {
            histogram.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        }
        read_denied_body(&plugin.settings, &mut result);
        match check::decide(&plugin.settings, &result) {
            Decision::Allow(allow) => {
                let settings = &plugin.settings;
                // Envoy's limits hold for the request going upstream as they did for the one
                // that arrived; native `ext_authz` answers 500 when the headers it sets break
                // them (and checks nothing when it sets none).
                let (count, bytes) = if allow.upstream.is_empty() {
                    (0, 0)
                } else {
                    check::size_after(self.request.iter_bytes(), &settings.strip, &allow)
                };
                if count > settings.max_request_headers_count
                    || bytes > settings.max_request_headers_kb.saturating_mul(1024)
                {
                    log::info!(
                        "ext_auth: the answer's headers take the request to {count} headers, {bytes} bytes"
                    );
                    inc(&plugin.counters.error);
                    self.state = State::Done;
                    return Flow::Reply(check::too_many_headers_reply(settings));
                }
                if let Err((name, status)) = apply_upstream(&allow) {
                    // The upstream must get every identity the answer gave, or none of the
                    // request: refused as the gateway's own error, whatever failure_mode_allow
                    // says (the auth service did answer).
                    log::warn!("ext_auth: setting {name} upstream failed: {status:?}");
                    inc(&plugin.counters.error);
                    self.state = State::Done;
                    return Flow::Reply(check::error_reply(&plugin.settings, false));
                }
                inc(&plugin.counters.allowed);
                self.state = State::Passed(
                    allow.client.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_vec())).collect(),
                );
                Flow::Continue
            }
            Decision::Deny(reply) => {
                inc(&plugin.counters.denied);
                self.state = State::Done;
                Flow::Reply(reply)
            }
            Decision::Error { timeout } => {
                if let Ok(resp) = &result {
                    log::debug!("ext_auth: auth service answered {}", resp.status);
                }
                self.failed(timeout)
            }
        }
    }

    fn on_response_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> Flow {
        if let State::Passed(client) = &mut self.state {
            for (name, value) in client.drain(..) {
                if let Err(status) = RESPONSE_HEADERS.add_bytes(&name, &value) {
                    log::warn!("ext_auth: adding {name} to the response failed: {status:?}");
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
fn scan<'h>(settings: &Settings, headers: &'h HeaderSnapshot) -> Seen<'h> {
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
        if let Err(status) = REQUEST_HEADERS.remove(name) {
            log::warn!("ext_auth: removing the client's {name} failed: {status:?}");
        }
    }
    seen
}

/// Reads a denying answer's body (the callout leaves every body in Envoy, where it stays readable
/// until the answer's callback returns): up to `max_denied_body_bytes`, as the client gets it. A
/// failed read is an auth service failure, as when the SDK reads the body.
fn read_denied_body(settings: &Settings, result: &mut CalloutResult) {
    let Ok(resp) = result else {
        return;
    };
    if !resp.truncated || settings.max_denied_body_bytes == 0 || !check::is_denial(settings, resp.status) {
        return;
    }
    match host::buffer(BufferType::HttpCallResponseBody, 0, settings.max_denied_body_bytes) {
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
    allow: &check::Allow<'a>,
) -> Result<(), (&'a str, gatewasm::proxy_wasm::types::Status)> {
    for (name, value) in &allow.upstream {
        REQUEST_HEADERS.set_bytes(name, value).map_err(|status| (*name, status))?;
    }
    for name in &allow.remove {
        if let Err(status) = REQUEST_HEADERS.remove(name) {
            log::warn!("ext_auth: removing {name} failed: {status:?}");
        }
    }
    Ok(())
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(ExtAuth);
