//! JWT verification at the gateway, with the concepts and answers of Envoy's `jwt_authn`:
//! providers (issuer, audiences, keys, token locations, outputs), rules that choose what a
//! request needs, and 401/403 answers with `WWW-Authenticate: Bearer`. See `README.md`.
//!
//! Request path, per stream:
//! 1. every request header is read with one host call ([`gatewasm::Request::snapshot`]);
//! 2. any client-sent copy of a header a provider sets (`x-admin-id`, the payload header) is
//!    removed, on every request, before anything else;
//! 3. the first matching rule's requirement is evaluated ([`verifier`]): tokens extracted
//!    ([`extractor`]), each verified once ([`verifier::Provider::verify`]: the verified-token
//!    cache first, then parse, claims and signature);
//! 4. on success the outputs are written and the tokens removed (unless `forward`); on failure
//!    the request is answered 401/403 and does not go upstream.
//!
//! Root context: a tick flushes the counters and fetches remote key sets that are due
//! ([`jwks_cache`]); their answers arrive in [`Plugin::on_callout`].

pub mod config;
pub mod ec_verify;
pub mod extractor;
pub mod host_crypto;
pub mod jwks_cache;
pub mod jwt;
pub mod keys;
pub mod matcher;
pub mod outputs;
pub mod rsa_public;
pub mod status;
pub mod verifier;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use gatewasm::metrics::{Counter, LocalCounter, FLUSH_PERIOD};
use gatewasm::{
    Callout, CalloutId, CalloutResult, ConfigErrors, Flow, HttpFilter, LocalReply, Plugin, Request, Stream,
    REQUEST_HEADERS,
};

use crate::config::Compiled;
use crate::extractor::{Location, RequestView};
use crate::jwks_cache::{FetchOutcome, KeySource};
use crate::status::Status;
use crate::verifier::{Evaluation, Success};

/// Requests let through (a rule matched and its requirement passed).
pub const ALLOWED: &str = "jwt_auth_allowed_total";
/// Requests refused, by `reason` (see [`Status::DENY_CODES`]).
pub const DENIED: &str = "jwt_auth_denied_total";
/// JWKS fetches by `provider` and `result` (`ok`, `failed`).
pub const JWKS_FETCHES: &str = "jwt_auth_jwks_fetches_total";
/// Weak keys (RSA under 2048 bits, `oct` secrets under 32 bytes) skipped in fetched JWKS
/// documents, by `provider`: counted at each fetch that serves them.
pub const JWKS_WEAK_KEYS: &str = "jwt_auth_jwks_weak_keys_total";

/// Tick period when some provider has a remote key set: the first fetch goes out this soon
/// after the configuration is loaded, and an unknown `kid` is re-fetched this soon.
const REMOTE_TICK: Duration = Duration::from_millis(200);

thread_local! {
    /// Set once the host answered that it has no `verify_signature` (Envoy before 1.35, other
    /// hosts): later signatures go straight to the module's own code.
    static HOST_LACKS_VERIFY: Cell<bool> = const { Cell::new(false) };
}

/// [`keys::HostCheck`] through Envoy's `verify_signature`. Anything but a clear "valid" is a
/// failed verification, except a host without the function, where the module checks instead.
fn host_check(arguments: &[u8]) -> Option<bool> {
    if HOST_LACKS_VERIFY.with(Cell::get) {
        return None;
    }
    match gatewasm::host::foreign_function(host_crypto::FUNCTION, arguments) {
        Ok(answer) => {
            let valid = host_crypto::verified(&answer);
            if !valid {
                log::debug!(
                    "jwt_auth: host signature check failed: {}",
                    host_crypto::error_text(&answer).unwrap_or_default()
                );
            }
            Some(valid)
        }
        Err(gatewasm::proxy_wasm::types::Status::NotFound) => {
            HOST_LACKS_VERIFY.with(|c| c.set(true));
            log::info!("jwt_auth: the host has no verify_signature; the module checks every signature");
            None
        }
        Err(status) => {
            log::debug!("jwt_auth: verify_signature failed: {status:?}");
            Some(false)
        }
    }
}

/// The plugin: providers, rules and counters.
pub struct JwtAuth {
    config: Compiled,
    allowed: Option<LocalCounter>,
    denied: Vec<(&'static str, LocalCounter)>,
    fetches: Vec<(Option<Counter>, Option<Counter>)>,
    /// Weak keys skipped, per provider (`None` for inline keys).
    weak_keys: Vec<Option<Counter>>,
    /// Remote fetches in flight: callout and provider index.
    in_flight: RefCell<Vec<(CalloutId, usize)>>,
    /// Whether some provider fetches its keys.
    remote: bool,
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    host_rules: bool,
    /// Requests refused because their host cannot be read while rules name hosts.
    invalid_host: Option<LocalCounter>,
    /// The host's clock, seconds, as read at the last tick: requests compare `exp`/`nbf` with
    /// it instead of reading the clock each (a host call). At most one tick period old (200 ms
    /// with remote keys, 1 s otherwise), well inside any clock skew.
    clock: Cell<Option<u64>>,
}

#[cfg(target_arch = "wasm32")]
fn counter(name: &str) -> Option<Counter> {
    use gatewasm::metrics::Metric;
    match Counter::define(name) {
        Ok(c) => Some(c),
        Err(status) => {
            log::warn!("jwt_auth: cannot define metric {name}: {status:?}");
            None
        }
    }
}

/// Native builds (unit tests) have no host to define metrics in.
#[cfg(not(target_arch = "wasm32"))]
fn counter(_name: &str) -> Option<Counter> {
    None
}

fn now_ms() -> u64 {
    gatewasm::clock::now()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl JwtAuth {
    /// The compiled configuration.
    pub fn config(&self) -> &Compiled {
        &self.config
    }

    fn count_denied(&self, status: Status) {
        if let Some((_, c)) = self.denied.iter().find(|(code, _)| *code == status.code()) {
            c.inc();
        }
    }

    fn fetch_due(self: &Rc<Self>) {
        let now = now_ms();
        for (index, p) in self.config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &p.keys else { continue };
            let Some(for_kid) = remote.due(now) else { continue };
            let c = &remote.config;
            let mut call = Callout::get(&c.cluster, &c.authority, &c.path);
            call.timeout = Duration::from_millis(c.timeout_ms);
            call.max_response_bytes = c.max_bytes;
            call.headers.push(("accept".into(), "application/json".into()));
            match gatewasm::dispatch(&call) {
                Ok(id) => {
                    remote.sent(now, for_kid);
                    self.in_flight.borrow_mut().push((id, index));
                    log::debug!("jwt_auth: fetching JWKS of provider {}", p.name);
                }
                Err(e) => {
                    remote.send_failed(now);
                    self.count_fetch(index, false);
                    log::warn!("jwt_auth: JWKS fetch of provider {} could not be sent: {e:?}", p.name);
                }
            }
        }
    }

    fn count_fetch(&self, index: usize, ok: bool) {
        if let Some((good, bad)) = self.fetches.get(index) {
            if let Some(c) = if ok { good } else { bad } {
                c.inc();
            }
        }
    }
}

impl Plugin for JwtAuth {
    const NAME: &'static str = "jwt_auth";
    type Filter = JwtFilter;

    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> {
        let mut config = config::parse(raw)?;
        if config.host_crypto {
            for provider in &mut config.providers {
                provider.host_check = Some(host_check);
            }
        }
        let allowed = counter(ALLOWED).map(LocalCounter::new);
        let denied = Status::DENY_CODES
            .iter()
            .filter_map(|code| {
                let name = gatewasm::metrics::series_name(DENIED, &[("reason", code)]);
                counter(&name).map(|c| (*code, LocalCounter::new(c)))
            })
            .collect();
        let fetches = config
            .providers
            .iter()
            .map(|p| {
                // Only providers that fetch their keys have fetch counters.
                if !matches!(p.keys, KeySource::Remote(_)) {
                    return (None, None);
                }
                let name = |result| {
                    gatewasm::metrics::series_name(JWKS_FETCHES, &[("provider", &p.name), ("result", result)])
                };
                (counter(&name("ok")), counter(&name("failed")))
            })
            .collect();
        let weak_keys = config
            .providers
            .iter()
            .map(|p| match p.keys {
                KeySource::Remote(_) => {
                    counter(&gatewasm::metrics::series_name(JWKS_WEAK_KEYS, &[("provider", &p.name)]))
                }
                KeySource::Local(_) => None,
            })
            .collect();
        let remote = config.providers.iter().any(|p| matches!(p.keys, KeySource::Remote(_)));
        let host_rules = config.rules.iter().any(|r| !r.matcher.hosts.is_empty());
        let invalid_host = counter(&gatewasm::metrics::series_name(DENIED, &[("reason", "invalid_host")]))
            .map(LocalCounter::new);
        log::info!("jwt_auth: {} provider(s), {} rule(s) loaded", config.providers.len(), config.rules.len());
        Ok(JwtAuth {
            config,
            allowed,
            denied,
            fetches,
            weak_keys,
            in_flight: RefCell::new(Vec::new()),
            remote,
            host_rules,
            invalid_host,
            clock: Cell::new(None),
        })
    }

    fn new_filter(self: &Rc<Self>) -> JwtFilter {
        JwtFilter { plugin: Rc::clone(self) }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(if self.remote { REMOTE_TICK } else { FLUSH_PERIOD })
    }

    fn on_tick(self: &Rc<Self>) {
        self.clock.set(Some(now_ms() / 1000));
        if let Some(c) = &self.allowed {
            c.flush();
        }
        for c in self.denied.iter().map(|(_, c)| c).chain(&self.invalid_host) {
            c.flush();
        }
        if self.remote {
            self.fetch_due();
        }
    }

    fn on_callout(self: &Rc<Self>, id: CalloutId, result: CalloutResult) {
        let index = {
            let mut in_flight = self.in_flight.borrow_mut();
            let Some(at) = in_flight.iter().position(|(i, _)| *i == id) else { return };
            in_flight.swap_remove(at).1
        };
        let Some(p) = self.config.providers.get(index) else { return };
        let KeySource::Remote(remote) = &p.keys else { return };
        let outcome = match &result {
            Ok(resp) => remote.answered(now_ms(), Some(resp.status), &resp.body, resp.truncated),
            Err(_) => remote.answered(now_ms(), None, &[], false),
        };
        match outcome {
            FetchOutcome::Updated { keys, changed, weak } => {
                self.count_fetch(index, true);
                if weak > 0 {
                    if let Some(Some(c)) = self.weak_keys.get(index) {
                        c.add(u64::try_from(weak).unwrap_or(u64::MAX));
                    }
                    log::warn!(
                        "jwt_auth: provider {}: skipped {weak} weak key(s) in its JWKS (RSA under 2048 bits or a secret under 32 bytes); the other {keys} key(s) are used",
                        p.name
                    );
                }
                if changed {
                    // Tokens verified with keys that may be gone must be verified again.
                    p.cache.borrow_mut().clear();
                    log::info!("jwt_auth: provider {}: {keys} key(s) from its JWKS", p.name);
                }
            }
            FetchOutcome::Failed(why) => {
                self.count_fetch(index, false);
                let kept = if remote.state.borrow().keys.is_some() {
                    "keeping the last key set"
                } else {
                    "no keys yet"
                };
                log::warn!("jwt_auth: provider {}: JWKS fetch failed: {why}; {kept}", p.name);
            }
        }
    }
}

/// The request as the extractor sees it: the snapshot of its headers.
struct View<'a>(&'a Request);

impl RequestView for View<'_> {
    fn header_values(&self, name: &str) -> Vec<&str> {
        match self.0.headers() {
            Some(h) => h.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).collect(),
            None => Vec::new(),
        }
    }
    fn query(&self) -> Option<&str> {
        self.0.query()
    }
}

/// Per-stream state.
pub struct JwtFilter {
    plugin: Rc<JwtAuth>,
}

/// The `realm` of the `WWW-Authenticate` answer: the request URL without its query (which may
/// hold the token itself), as `scheme://host/path`.
fn realm(req: &Request) -> String {
    let scheme = req.headers().and_then(|h| h.get("x-forwarded-proto")).unwrap_or("http");
    let realm = format!("{scheme}://{}{}", req.authority(), req.path());
    // Quotes or control characters would break the header; drop them.
    realm.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

fn deny(status: Status, req: &Request) -> LocalReply {
    let mut value = format!("Bearer realm=\"{}\"", realm(req));
    if status != Status::Missing {
        value.push_str(", error=\"invalid_token\"");
    }
    let code = if status == Status::AudienceNotAllowed { "forbidden" } else { "invalid_token" };
    let mut reply = LocalReply::new(status.http_status(), code, status.message());
    if status == Status::Missing {
        reply.code = "missing_token";
    }
    reply.header("www-authenticate", value)
}

/// Removes tokens from the request going upstream: a header as a whole, a cookie out of
/// `Cookie`, a parameter out of the query. Changes to `Cookie` and `:path` are gathered and
/// written once.
struct Removals<'r> {
    req: &'r Request,
    path: Option<String>,
    cookie: Option<Option<String>>,
    headers: Vec<&'r str>,
}

impl<'r> Removals<'r> {
    fn new(req: &'r Request) -> Self {
        Removals { req, path: None, cookie: None, headers: Vec::new() }
    }

    fn remove(&mut self, location: Option<&'r Location>) {
        match location {
            Some(Location::Header { name, .. }) if !self.headers.contains(&name.as_str()) => {
                let _ = REQUEST_HEADERS.remove(name);
                self.headers.push(name);
            }
            Some(Location::Cookie(name)) => {
                let current = match &self.cookie {
                    Some(c) => c.clone(),
                    None => self.req.headers().and_then(|h| h.get("cookie")).map(str::to_string),
                };
                self.cookie = Some(current.and_then(|c| extractor::without_cookie(&c, name)));
            }
            Some(Location::Param(name)) => {
                let current = self.path.clone().unwrap_or_else(|| self.req.path_and_query().to_string());
                self.path = Some(extractor::without_param(&current, name));
            }
            Some(Location::Header { .. }) | None => {}
        }
    }

    fn write(self) {
        match self.cookie {
            Some(Some(c)) => {
                let _ = REQUEST_HEADERS.set("cookie", &c);
            }
            Some(None) => {
                let _ = REQUEST_HEADERS.remove("cookie");
            }
            None => {}
        }
        if let Some(p) = self.path {
            let _ = REQUEST_HEADERS.set(":path", &p);
        }
    }
}

/// Writes the outputs of the verified tokens and removes tokens from the request: verified ones
/// unless their provider forwards them, unverified ones ([`Evaluation::unverified`]) always.
/// The tokens agree on every claim header ([`verifier::identities_conflict`]), so each header is
/// written once; the payload header carries the first token's payload.
fn write_outputs(plugin: &JwtAuth, req: &Request, successes: &[Success<'_>], unverified: &[(usize, usize)]) {
    let providers = &plugin.config.providers;
    // Only several tokens can set a header twice; one token needs no bookkeeping (and no
    // allocation on the cached path).
    let mut written: Vec<&str> = Vec::new();
    let several = successes.len() > 1;
    let mut removals = Removals::new(req);
    for s in successes {
        let Some(p) = providers.get(s.provider) else { continue };
        let o = &p.outputs;
        for (header, claim) in &o.claim_to_headers {
            if several {
                if written.contains(&header.as_str()) {
                    continue;
                }
                written.push(header);
            }
            match s.verified.claims.get(claim).and_then(outputs::claim_header_value) {
                Some(v) if gatewasm::config::is_header_value(&v) => {
                    let _ = REQUEST_HEADERS.set(header, &v);
                }
                Some(_) => log::debug!("jwt_auth: claim {claim} has characters a header cannot carry"),
                None => {}
            }
        }
        if let Some(h) = &o.forward_payload_header {
            if !several || !written.contains(&h.as_str()) {
                let _ = REQUEST_HEADERS.set(h, &s.verified.payload_b64);
                if several {
                    written.push(h);
                }
            }
        }
        if !o.forward {
            removals.remove(p.locations.get(s.location));
        }
    }
    for (provider, location) in unverified {
        removals.remove(providers.get(*provider).and_then(|p| p.locations.get(*location)));
    }
    removals.write();
}

impl HttpFilter for JwtFilter {
    fn on_request_headers(&mut self, _stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let cfg = &plugin.config;
        let req = Request::snapshot();
        // Spoofed outputs go first, whatever happens next.
        if let Some(h) = req.headers() {
            for name in &cfg.output_headers {
                if h.contains(name) {
                    let _ = REQUEST_HEADERS.remove(name);
                }
            }
        }
        let method = req.method();
        if cfg.bypass_cors_preflight && method == "OPTIONS" {
            let h = req.headers();
            if h.is_some_and(|h| h.contains("origin") && h.contains("access-control-request-method")) {
                return Flow::Continue;
            }
        }
        // A host that cannot be read matches no host condition; a rule after the one it should
        // have matched could then apply. With host rules such a request is refused instead.
        let host = match req.host() {
            Some(host) => host,
            None if plugin.host_rules => {
                if let Some(c) = &plugin.invalid_host {
                    c.inc();
                }
                return Flow::Reply(LocalReply::invalid_host());
            }
            None => Default::default(),
        };
        let Some(rule) = matcher::first_match(&cfg.rules, &host, req.path(), method) else {
            return Flow::Continue;
        };
        let Some(requirement) = &rule.requires else {
            return Flow::Continue;
        };
        let now = match plugin.clock.get() {
            Some(t) => t,
            None => {
                // Before the first tick.
                let t = now_ms() / 1000;
                plugin.clock.set(Some(t));
                t
            }
        };
        let view = View(&req);
        let mut successes = Vec::new();
        let mut evaluation = Evaluation::new(&cfg.providers, &view, now);
        let status = evaluation.decide(requirement, &mut successes);
        if status != Status::Ok {
            plugin.count_denied(status);
            log::debug!("jwt_auth: denied: {}", status.message());
            return Flow::Reply(deny(status, &req));
        }
        if let Some(c) = &plugin.allowed {
            c.inc();
        }
        write_outputs(&plugin, &req, &successes, &evaluation.unverified(&successes));
        Flow::Continue
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(JwtAuth);
