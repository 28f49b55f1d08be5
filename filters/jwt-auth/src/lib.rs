//! JWT verification at the gateway, with the concepts and answers of Envoy's `jwt_authn`:
//! providers (issuer, audiences, keys, token locations, outputs), rules that choose what a
//! request needs, and 401/403 answers with `WWW-Authenticate: Bearer`. See `README.md`.
//!
//! Request path, per stream:
//! 1. every request header is read with one host call ([`gatewasm::Stream::request`]);
//! 2. any client-sent copy of a header a provider sets (`x-admin-id`, the payload header) is
//!    removed, on every request, before anything else;
//! 3. the first matching rule's requirement is evaluated ([`verifier`]): tokens extracted
//!    ([`extractor`]), each verified once ([`verifier::Provider::verify`]: the verified-token
//!    cache first, then parse, claims and signature), then the claims and scopes the
//!    requirement demands of them ([`authz`]);
//! 4. on success the outputs are written and the tokens removed (unless `forward`); on failure
//!    the request is answered 401/403 and does not go upstream.
//!
//! Root context: a tick reads the clock and fetches remote key sets that are due
//! ([`jwks_cache`], first through the issuer's OpenID Connect discovery document where
//! configured); their answers arrive in [`Plugin::on_callout`]. The SDK flushes the
//! counters. A native module ticks on the main thread's instance only: it publishes each new
//! key set in shared data, and the workers' instances, which serve the requests, read the clock
//! per request and adopt the published sets (at most every [`REMOTE_TICK`], at once while a set
//! is missing).

pub mod authz;
pub mod config;
pub mod ec_verify;
pub mod extractor;
pub mod host_crypto;
pub mod jwks_cache;
pub mod jwt;
pub mod keys;
#[cfg(not(target_arch = "wasm32"))]
pub mod native_crypto;
pub mod outputs;
pub mod rsa_public;
pub mod rules;
pub mod status;
pub mod verifier;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewasm::metrics::{series_name, Counter, LocalCounter, Metrics, FLUSH_PERIOD};
use gatewasm::{
    Callout, CalloutId, CalloutResult, ConfigErrors, Flow, HeaderMap, HttpFilter, LocalReply, Plugin,
    Request, Root, Stream,
};

use crate::config::Compiled;
use crate::extractor::Location;
use crate::jwks_cache::{FetchOutcome, KeySource};
use crate::status::Status;
use crate::verifier::{Evaluation, Success};

/// Requests let through (a rule matched and its requirement passed).
pub const ALLOWED: &str = "jwt_auth_allowed_total";
/// Requests refused, by `reason` (see [`Status::DENY_CODES`]).
pub const DENIED: &str = "jwt_auth_denied_total";
/// JWKS fetches by `provider` and `result` (`ok`, `failed`).
pub const JWKS_FETCHES: &str = "jwt_auth_jwks_fetches_total";
/// OpenID Connect discovery document fetches by `provider` and `result` (`ok`, `failed`).
pub const DISCOVERY_FETCHES: &str = "jwt_auth_discovery_fetches_total";
/// Weak keys (RSA under 2048 bits, `oct` secrets under 32 bytes) skipped in fetched JWKS
/// documents, by `provider`: counted at each fetch that serves them.
pub const JWKS_WEAK_KEYS: &str = "jwt_auth_jwks_weak_keys_total";

/// Tick period when some provider has a remote key set: the first fetch goes out this soon
/// after the configuration is loaded, and an unknown `kid` is re-fetched this soon.
const REMOTE_TICK: Duration = Duration::from_millis(200);

/// Whether the instance that fetches remote key sets publishes them in shared data: natively,
/// where the workers' instances never tick. Every Wasm VM fetches for itself.
const PUBLISHES_KEYS: bool = cfg!(not(target_arch = "wasm32"));

/// The plugin: providers, rules and counters.
pub struct JwtAuth {
    config: Compiled,
    allowed: LocalCounter,
    denied: Vec<(&'static str, LocalCounter)>,
    /// Per provider: its fetch and weak-key counters, `None` for a provider with inline keys.
    remote_counters: Vec<Option<RemoteCounters>>,
    /// Remote fetches in flight: callout and provider index.
    in_flight: RefCell<Vec<(CalloutId, usize)>>,
    /// Whether some provider fetches its keys.
    remote: bool,
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    host_rules: bool,
    /// Requests refused because their host cannot be read while rules name hosts.
    invalid_host: LocalCounter,
    /// The host's clock, seconds, as read at the last tick: requests compare `exp`/`nbf` with
    /// it instead of reading the clock each (a host call). At most one tick period old (200 ms
    /// with remote keys, 1 s otherwise), well inside any clock skew.
    clock: Cell<Option<u64>>,
    /// Set once the host answered that it has no `verify_signature` (Envoy before 1.35, other
    /// hosts, native modules): later signatures go straight to the module's own code.
    host_lacks_verify: Cell<bool>,
    /// Whether this instance ticks (see [`Root::ticks`]): one that does not reads the clock per
    /// request and takes remote key sets from shared data.
    ticks: bool,
    /// When this instance last looked for published key sets, ms (instances that do not tick).
    last_sync: Cell<u64>,
}

/// The counters of a provider that fetches its keys.
struct RemoteCounters {
    fetched: Counter,
    failed: Counter,
    /// Weak keys skipped in its fetched documents.
    weak_keys: Counter,
    /// With discovery: discovery document fetches that succeeded and failed.
    discovery: Option<(Counter, Counter)>,
}

impl RemoteCounters {
    fn define(metrics: &Metrics, provider: &str, discovery: bool) -> Self {
        let series = |name, result| series_name(name, &[("provider", provider), ("result", result)]);
        Self {
            fetched: metrics.counter(&series(JWKS_FETCHES, "ok")),
            failed: metrics.counter(&series(JWKS_FETCHES, "failed")),
            weak_keys: metrics.counter(&series_name(JWKS_WEAK_KEYS, &[("provider", provider)])),
            discovery: discovery.then(|| {
                (
                    metrics.counter(&series(DISCOVERY_FETCHES, "ok")),
                    metrics.counter(&series(DISCOVERY_FETCHES, "failed")),
                )
            }),
        }
    }
}

/// Milliseconds in `d`, saturating.
fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// On the fetching instance: whether a worker noted an unknown `kid` for `remote` (the note is
/// cleared), recorded as if this instance had seen it.
fn take_workers_unknown_kid(root: &Root, remote: &jwks_cache::RemoteJwks) {
    let Ok((Some(note), version)) = root.shared_data(remote.unknown_kid_key()) else { return };
    if note.is_empty() {
        return;
    }
    remote.unknown_kid();
    // A worker noting another one meanwhile changes the version: this clear then fails, and
    // the next tick sees the note again.
    let _ = root.set_shared_data(remote.unknown_kid_key(), b"", version);
}

/// Milliseconds since the Unix epoch of a host clock reading (0 when the host has none).
fn millis(now: Option<SystemTime>) -> u64 {
    now.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
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

    /// Whether Envoy's `verify_signature` finds `arguments` ([`host_crypto::request`]) a valid
    /// signature. Anything but a clear "valid" is a failed verification, except a host without
    /// the function (`None`), where the module checks instead, from then on without asking.
    fn host_check(&self, stream: &Stream, arguments: &[u8]) -> Option<bool> {
        if self.host_lacks_verify.get() {
            return None;
        }
        match stream.foreign_function(host_crypto::FUNCTION, arguments) {
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
                self.host_lacks_verify.set(true);
                log::info!("jwt_auth: the host has no verify_signature; the module checks every signature");
                None
            }
            Err(status) => {
                log::debug!("jwt_auth: verify_signature failed: {status:?}");
                Some(false)
            }
        }
    }

    fn fetch_due(self: &Rc<Self>, root: &Root) {
        let now = millis(root.now());
        for (index, p) in self.config.providers.iter().enumerate() {
            let KeySource::Remote(remote) = &p.keys else { continue };
            if PUBLISHES_KEYS {
                take_workers_unknown_kid(root, remote);
            }
            let Some(for_kid) = remote.due(now) else { continue };
            let c = &remote.config;
            let target = remote.target();
            let what = if target.discovery { "discovery document" } else { "JWKS" };
            let mut call = Callout::get(&c.cluster, &target.authority, &target.path);
            call.timeout = Duration::from_millis(c.timeout_ms);
            call.max_response_bytes = c.max_bytes;
            call.headers.push(("accept".into(), "application/json".into()));
            match root.dispatch(&call) {
                Ok(id) => {
                    remote.sent(now, for_kid, &target);
                    self.in_flight.borrow_mut().push((id, index));
                    log::debug!("jwt_auth: fetching the {what} of provider {}", p.name);
                }
                Err(e) => {
                    remote.send_failed(now);
                    self.count(index, target.discovery, false);
                    log::warn!("jwt_auth: the {what} fetch of provider {} could not be sent: {e:?}", p.name);
                }
            }
        }
    }

    /// Counts a fetch of provider `index`: of its discovery document or of its JWKS.
    fn count(&self, index: usize, discovery: bool, ok: bool) {
        let Some(Some(c)) = self.remote_counters.get(index) else { return };
        let counter = match (discovery, &c.discovery) {
            (true, Some((fetched, failed))) => {
                if ok {
                    fetched
                } else {
                    failed
                }
            }
            _ => {
                if ok {
                    &c.fetched
                } else {
                    &c.failed
                }
            }
        };
        counter.inc();
    }

    /// On an instance that does not tick: adopts the key sets the fetching instance published,
    /// at most every [`REMOTE_TICK`] (at once while a set is missing), and passes on that a token
    /// named an unknown `kid`. Tokens verified with a replaced set are verified again.
    fn sync_published_keys(&self, root: &Root, now: u64) {
        let due = now.saturating_sub(self.last_sync.get()) >= millis_of(REMOTE_TICK);
        for p in &self.config.providers {
            let KeySource::Remote(remote) = &p.keys else { continue };
            if !due && remote.has_keys() {
                continue;
            }
            if remote.take_unknown_kid() {
                if let Err(status) = root.set_shared_data(remote.unknown_kid_key(), b"1", None) {
                    log::debug!("jwt_auth: noting an unknown kid for provider {} failed: {status:?}", p.name);
                }
            }
            let Ok((Some(document), version)) = root.shared_data(remote.shared_key()) else { continue };
            match remote.adopt(now, &document, version) {
                Some(FetchOutcome::Updated { keys, changed: true, .. }) => {
                    p.cache.borrow_mut().clear();
                    log::debug!("jwt_auth: provider {}: {keys} key(s) from the published JWKS", p.name);
                }
                Some(FetchOutcome::Failed(why)) => {
                    log::warn!("jwt_auth: provider {}: published JWKS unusable: {why}", p.name);
                }
                // A published document is a JWKS: adopting it never reads a discovery document.
                Some(
                    FetchOutcome::Updated { .. }
                    | FetchOutcome::Discovered
                    | FetchOutcome::DiscoveryFailed(_),
                )
                | None => {}
            }
        }
        if due {
            self.last_sync.set(now);
        }
    }
}

impl Plugin for JwtAuth {
    const NAME: &'static str = "jwt_auth";
    type Filter = JwtFilter;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let metrics = root.metrics();
        let allowed = metrics.local_counter(ALLOWED);
        let denied = Status::DENY_CODES
            .iter()
            .map(|code| (*code, metrics.local_counter(&series_name(DENIED, &[("reason", code)]))))
            .collect();
        // Only providers that fetch their keys have fetch counters.
        let remote_counters = config
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Remote(r) => {
                    Some(RemoteCounters::define(metrics, &p.name, r.config.discovery.is_some()))
                }
                KeySource::Local(_) => None,
            })
            .collect();
        let remote = config.providers.iter().any(|p| matches!(p.keys, KeySource::Remote(_)));
        let host_rules = config.rules.iter().any(|r| !r.matcher.hosts.is_empty());
        let invalid_host = metrics.local_counter(&series_name(DENIED, &[("reason", "invalid_host")]));
        log::info!("jwt_auth: {} provider(s), {} rule(s) loaded", config.providers.len(), config.rules.len());
        Ok(JwtAuth {
            config,
            allowed,
            denied,
            remote_counters,
            in_flight: RefCell::new(Vec::new()),
            remote,
            host_rules,
            invalid_host,
            clock: Cell::new(None),
            host_lacks_verify: Cell::new(false),
            ticks: root.ticks(),
            last_sync: Cell::new(0),
        })
    }

    fn new_filter(self: &Rc<Self>) -> JwtFilter {
        JwtFilter { plugin: Rc::clone(self) }
    }

    /// The clock is read on the tick (see `clock`); remote key sets need a shorter one.
    fn tick_period(&self) -> Option<Duration> {
        Some(if self.remote { REMOTE_TICK } else { FLUSH_PERIOD })
    }

    fn on_tick(self: &Rc<Self>, root: &Root) {
        self.clock.set(Some(millis(root.now()) / 1000));
        if self.remote {
            self.fetch_due(root);
        }
    }

    fn on_callout(self: &Rc<Self>, root: &Root, id: CalloutId, result: CalloutResult) {
        let index = {
            let mut in_flight = self.in_flight.borrow_mut();
            let Some(at) = in_flight.iter().position(|(i, _)| *i == id) else { return };
            in_flight.swap_remove(at).1
        };
        let Some(p) = self.config.providers.get(index) else { return };
        let KeySource::Remote(remote) = &p.keys else { return };
        let now = millis(root.now());
        let outcome = match &result {
            Ok(resp) => remote.answered(now, Some(resp.status), &resp.body, resp.truncated),
            Err(_) => remote.answered(now, None, &[], false),
        };
        let discovery = matches!(outcome, FetchOutcome::DiscoveryFailed(_));
        match outcome {
            FetchOutcome::Updated { keys, changed, weak } => {
                self.count(index, false, true);
                if weak > 0 {
                    if let Some(Some(c)) = self.remote_counters.get(index) {
                        c.weak_keys.add(u64::try_from(weak).unwrap_or(u64::MAX));
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
                    if PUBLISHES_KEYS {
                        let document = remote.state.borrow().document.clone();
                        if let Err(status) = root.set_shared_data(remote.shared_key(), &document, None) {
                            log::warn!(
                                "jwt_auth: provider {}: publishing its JWKS failed: {status:?}",
                                p.name
                            );
                        }
                    }
                }
            }
            FetchOutcome::Discovered => {
                self.count(index, true, true);
                log::debug!("jwt_auth: provider {}: discovery document read", p.name);
            }
            FetchOutcome::Failed(why) | FetchOutcome::DiscoveryFailed(why) => {
                self.count(index, discovery, false);
                let kept = if remote.state.borrow().keys.is_some() {
                    "keeping the last key set"
                } else {
                    "no keys yet"
                };
                let what = if discovery { "discovery" } else { "JWKS fetch" };
                log::warn!("jwt_auth: provider {}: {what} failed: {why}; {kept}", p.name);
            }
        }
    }
}

/// Per-stream state.
pub struct JwtFilter {
    plugin: Rc<JwtAuth>,
}

/// The `realm` of the `WWW-Authenticate` answer: the request URL without its query (which may
/// hold the token itself), as `scheme://host/path`.
fn realm(req: &Request) -> String {
    let scheme = req.header("x-forwarded-proto").unwrap_or("http");
    let realm = format!("{scheme}://{}{}", req.authority(), req.path());
    // Quotes or control characters would break the header; drop them.
    realm.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

fn deny(status: Status, req: &Request) -> LocalReply {
    let mut value = format!("Bearer realm=\"{}\"", realm(req));
    // RFC 6750 section 3.1: a valid token without the needed claims or scopes is
    // `insufficient_scope`, anything else wrong with a token `invalid_token`.
    let (error, code) = match status {
        Status::Missing => (None, "missing_token"),
        Status::InsufficientScope => (Some("insufficient_scope"), "insufficient_scope"),
        Status::AudienceNotAllowed => (Some("invalid_token"), "forbidden"),
        _ => (Some("invalid_token"), "invalid_token"),
    };
    if let Some(error) = error {
        value.push_str(&format!(", error=\"{error}\""));
    }
    LocalReply::new(status.http_status(), code, status.message()).header("www-authenticate", value)
}

/// Removes tokens from the request going upstream: a header as a whole, a cookie out of
/// `Cookie`, a parameter out of the query. Changes to `Cookie` and `:path` are gathered and
/// written once.
struct Removals<'r> {
    req: &'r Request,
    headers_out: HeaderMap<'r>,
    path: Option<String>,
    cookie: Option<Option<String>>,
    headers: Vec<&'r str>,
}

impl<'r> Removals<'r> {
    fn new(req: &'r Request, headers_out: HeaderMap<'r>) -> Self {
        Removals { req, headers_out, path: None, cookie: None, headers: Vec::new() }
    }

    fn remove(&mut self, location: Option<&'r Location>) {
        match location {
            Some(Location::Header { name, .. }) if !self.headers.contains(&name.as_str()) => {
                let _ = self.headers_out.remove(name);
                self.headers.push(name);
            }
            Some(Location::Cookie(name)) => {
                let current = match &self.cookie {
                    Some(c) => c.clone(),
                    None => self.req.header("cookie").map(str::to_string),
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
                let _ = self.headers_out.set("cookie", &c);
            }
            Some(None) => {
                let _ = self.headers_out.remove("cookie");
            }
            None => {}
        }
        if let Some(p) = self.path {
            let _ = self.headers_out.set(":path", &p);
        }
    }
}

/// Writes the outputs of the verified tokens and removes tokens from the request: verified ones
/// unless their provider forwards them, unverified ones ([`Evaluation::unverified`]) always.
/// The tokens agree on every claim header ([`verifier::identities_conflict`]), so each header is
/// written once; the payload header carries the first token's payload.
fn write_outputs(
    plugin: &JwtAuth,
    stream: &Stream,
    req: &Request,
    successes: &[Success<'_>],
    unverified: &[(usize, usize)],
) {
    let out = stream.request_headers();
    let providers = &plugin.config.providers;
    // Only several tokens can set a header twice; one token needs no bookkeeping (and no
    // allocation on the cached path).
    let mut written: Vec<&str> = Vec::new();
    let several = successes.len() > 1;
    let mut removals = Removals::new(req, out);
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
                    let _ = out.set(header, &v);
                }
                Some(_) => log::debug!("jwt_auth: claim {claim} has characters a header cannot carry"),
                None => {}
            }
        }
        if let Some(h) = &o.forward_payload_header {
            if !several || !written.contains(&h.as_str()) {
                let _ = out.set(h, &s.verified.payload_b64);
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
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let cfg = &plugin.config;
        let req = stream.request();
        let h = req.headers();
        // Spoofed outputs go first, whatever happens next.
        for name in &cfg.output_headers {
            if h.contains(name) {
                let _ = stream.request_headers().remove(name);
            }
        }
        let method = req.method();
        if cfg.bypass_cors_preflight
            && method == "OPTIONS"
            && h.contains("origin")
            && h.contains("access-control-request-method")
        {
            return Flow::Continue;
        }
        // A host that cannot be read matches no host condition; a rule after the one it should
        // have matched could then apply. With host rules such a request is refused instead.
        let host = match req.host() {
            Some(host) => host,
            None if plugin.host_rules => {
                plugin.invalid_host.inc();
                return Flow::Reply(LocalReply::invalid_host());
            }
            None => Default::default(),
        };
        let Some(rule) =
            rules::first_match(&cfg.rules, &host, req.path_and_query(), method, Some(req.headers()))
        else {
            return Flow::Continue;
        };
        let Some(requirement) = &rule.requires else {
            return Flow::Continue;
        };
        let now = match plugin.clock.get() {
            Some(t) if plugin.ticks => t,
            _ => {
                // Before the first tick, or on an instance that never ticks.
                let now_ms = millis(stream.now());
                if !plugin.ticks && plugin.remote {
                    plugin.sync_published_keys(stream.root(), now_ms);
                }
                let t = now_ms / 1000;
                plugin.clock.set(Some(t));
                t
            }
        };
        let stream: &Stream = stream;
        let check = |arguments: &[u8]| plugin.host_check(stream, arguments);
        // Once the host said it has no `verify_signature`, the arguments are not even built.
        let host_check: Option<keys::SignatureCheck<'_>> =
            (cfg.host_crypto && !plugin.host_lacks_verify.get()).then_some(&check);
        let mut successes = Vec::new();
        let mut evaluation = Evaluation::new(&cfg.providers, &req, now, host_check);
        let status = evaluation.decide(requirement, &mut successes);
        if status != Status::Ok {
            plugin.count_denied(status);
            log::debug!("jwt_auth: denied: {}", status.message());
            return Flow::Reply(deny(status, &req));
        }
        plugin.allowed.inc();
        write_outputs(&plugin, stream, &req, &successes, &evaluation.unverified(&successes));
        Flow::Continue
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(JwtAuth);
