//! Rate limits: rules matched with the SDK's matcher, each with limits that count requests per
//! descriptor values (client address, host, the rule's path, method, a header, a JWT claim
//! header, a constant) by token bucket, fixed window or requests in flight. Counters live in
//! the host's shared data, so every worker of one Envoy counts against the same limit
//! (`table`). See `README.md` for the configuration.
//!
//! Request path, per stream:
//! 1. the request headers are read once (one host call), the downstream address only when a
//!    limit counts by it (one more), the clock once when some limit applies;
//! 2. every matching rule's limits whose descriptor values can all be read apply (a missing
//!    value: that limit does not apply);
//! 3. each applied limit is counted in its shared counter, a read and a compare-and-swap write
//!    (a refusal writes nothing); the first enforced limit that refuses ends it: what the others
//!    took is given back and the answer is 429 with `Retry-After` and the `RateLimit` fields;
//! 4. a concurrency limit's request is held until its stream ends: released at log time, or
//!    when Envoy destroys the stream's context if that comes first.
//!
//! In global mode steps 3 and 4 are the rate limit service's: the applied limits' descriptors go
//! to it in one gRPC call (`global`), the request waits for the answer, and the answer (or the
//! failure mode, when there is none in time) decides.

pub mod algorithm;
pub mod config;
pub mod descriptor;
pub mod global;
pub mod headers;
pub mod table;

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use gatewasm::matcher::RequestParts;
use gatewasm::metrics::{series_name, LocalCounter, Metrics};
use gatewasm::{
    ConfigErrors, Flow, GrpcCall, GrpcError, GrpcResult, HttpFilter, LocalReply, Plugin, Root, Stream,
};
use sha2::{Digest, Sha256};

use crate::algorithm::{Algorithm, Decision, MICROS};
use crate::config::{Config, FailureMode, Global, Limit, ResponseHeaders};
use crate::descriptor::RequestValues;
use crate::table::{Eviction, Fingerprint, Table, Untracked};

/// Decisions per rule, limit and result (`allowed`, `limited`, `dry_run_limited`).
pub const REQUESTS: &str = "rate_limit_requests_total";
/// Counters a new one replaced, by the state they were in (`idle`: nothing lost; `active`: that
/// client starts afresh).
pub const EVICTIONS: &str = "rate_limit_evictions_total";
/// Requests let through uncounted, by reason (`full`: every way of the bucket holds requests in
/// flight; `contention`: other workers kept writing first; `host`: a shared-data call failed).
pub const UNTRACKED: &str = "rate_limit_untracked_total";
/// Compare-and-swap writes refused because another worker wrote the counter's bucket first
/// (each is read and tried again): how contended the counters are.
pub const RETRIES: &str = "rate_limit_cas_retries_total";
/// Requests refused (400) because their host cannot be read while rules name hosts.
pub const INVALID_HOST: &str = "rate_limit_invalid_host_total";
/// Requests held by concurrency limits, released, by the callback that released them (`log`:
/// the stream's log callback, which Envoy runs however a stream ends; `destroy`: the stream's
/// context went without it).
pub const RELEASES: &str = "rate_limit_releases_total";
/// Global mode: requests the rate limit service did not decide, by reason (`timeout`,
/// `unavailable`: not reached or said so, `error`: another gRPC error status, `malformed`: an
/// answer that could not be read) and by what the failure mode did (`allowed`, `denied`).
pub const SERVICE_FAILURES: &str = "rate_limit_service_failures_total";
/// The reasons of [`SERVICE_FAILURES`], in the order of `RateLimit::failures`.
const FAILURE_REASONS: [&str; 4] = ["timeout", "unavailable", "error", "malformed"];

/// The plugin: the compiled configuration, its shared table and its counters.
pub struct RateLimit {
    config: Config,
    table: Table,
    /// For releases when a stream's context is destroyed, where no handle is given.
    root: Root,
    /// Per rule, per limit: what the request path needs beside the configuration.
    limits: Vec<Vec<Counted>>,
    evicted_idle: LocalCounter,
    evicted_active: LocalCounter,
    untracked: [LocalCounter; 3],
    retries: LocalCounter,
    invalid_host: LocalCounter,
    /// Releases at the log callback and at the context's destruction.
    released: [LocalCounter; 2],
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    host_rules: bool,
    /// Global mode's failures, by reason ([`FAILURE_REASONS`]).
    failures: [LocalCounter; 4],
    /// Global mode's failures not yet logged.
    failure_log: Throttle,
}

/// One limit's identity and counters.
struct Counted {
    /// The digest of the limit's identity (rule, limit, algorithm, descriptor sources), to which
    /// a request's descriptor values are added.
    identity: Sha256,
    /// Its `RateLimit-Policy` item.
    policy_item: String,
    allowed: LocalCounter,
    limited: LocalCounter,
    dry_run_limited: LocalCounter,
    /// Dry-run refusals not yet logged.
    dry_run_log: Throttle,
}

/// At most one log line a second, saying how many events it stands for.
#[derive(Debug, Default)]
struct Throttle {
    /// When the last line was written (µs), and the events since.
    state: Cell<(u64, u64)>,
}

impl Throttle {
    /// One more event at `now`: the number of events a line written now stands for, or `None`
    /// when the last line is less than a second old.
    fn note(&self, now: u64) -> Option<u64> {
        let (last, since) = self.state.get();
        let since = since + 1;
        if last == 0 || now.saturating_sub(last) >= MICROS {
            self.state.set((now, 0));
            Some(since)
        } else {
            self.state.set((last, since));
            None
        }
    }
}

impl Counted {
    fn new(metrics: &Metrics, rule: &str, limit: &Limit) -> Self {
        let counter = |result: &str| {
            metrics.local_counter(&series_name(
                REQUESTS,
                &[("rule", rule), ("limit", &limit.name), ("result", result)],
            ))
        };
        let mut identity = Sha256::new();
        let mut part = |bytes: &[u8]| {
            identity.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
            identity.update(bytes);
        };
        part(b"gatewasm-rate-limit");
        part(rule.as_bytes());
        part(limit.name.as_bytes());
        if let Some(algorithm) = &limit.algorithm {
            part(algorithm.identity().as_bytes());
        }
        for d in &limit.descriptors {
            part(d.source.identity().as_bytes());
        }
        Self {
            identity,
            // Global mode's limits are the service's: their items come with its answer.
            policy_item: limit
                .algorithm
                .as_ref()
                .map(|a| headers::policy_item(&limit.policy, a, limit.hits))
                .unwrap_or_default(),
            allowed: counter("allowed"),
            limited: counter("limited"),
            dry_run_limited: counter("dry_run_limited"),
            dry_run_log: Throttle::default(),
        }
    }

    /// The counter of this limit for these descriptor values.
    fn fingerprint<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Fingerprint {
        let mut digest = self.identity.clone();
        for value in values {
            digest.update(u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
            digest.update(value);
        }
        let mut fingerprint = [0u8; 16];
        for (to, from) in fingerprint.iter_mut().zip(digest.finalize()) {
            *to = from;
        }
        Fingerprint(fingerprint)
    }
}

impl RateLimit {
    /// The compiled configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The shared table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    fn limit(&self, at: Applied) -> Option<(&Limit, &Counted)> {
        self.limit_at(at.rule, at.limit)
    }

    fn limit_at(&self, rule: usize, limit: usize) -> Option<(&Limit, &Counted)> {
        let config = self.config.rules.get(rule)?.limits.get(limit)?;
        Some((config, self.limits.get(rule)?.get(limit)?))
    }

    fn count_change<T>(&self, changed: &table::Changed<T>) {
        if changed.retries > 0 {
            self.retries.add(u64::from(changed.retries));
        }
        match changed.evicted {
            Some(Eviction::Idle) => self.evicted_idle.inc(),
            Some(Eviction::Active) => self.evicted_active.inc(),
            None => {}
        }
    }

    fn count_untracked(&self, why: Untracked, policy: &str) {
        let (i, reason) = match why {
            Untracked::Full => (0, "every counter of its bucket holds requests in flight"),
            Untracked::Contention => (1, "other workers kept writing its counter first"),
            Untracked::Host(_) => (2, "the host's shared data failed"),
        };
        if let Some(c) = self.untracked.get(i) {
            c.inc();
        }
        log::debug!("rate_limit: {policy}: request let through uncounted: {reason} ({why:?})");
    }

    /// Gives back what `at` took (`hits` at `now`): for a request another limit refused, and
    /// for a concurrency request that ended.
    fn give_back(&self, at: Applied, now: u64) {
        let Some((limit, _)) = self.limit(at) else { return };
        let Some(algorithm) = &limit.algorithm else { return };
        let result = self.table.change(&self.root, &at.fingerprint, now, |state| {
            (algorithm.give_back(state, now, limit.hits), ())
        });
        match result {
            Ok(changed) => self.count_change(&changed),
            Err(why) => self.count_untracked(why, &limit.policy),
        }
    }

    /// Logs a dry-run refusal: at most one line a second per limit, with the count since (and,
    /// in local mode, the counter's short id).
    fn log_dry_run(&self, limit: &Limit, counted: &Counted, fingerprint: Option<&Fingerprint>, now: u64) {
        if let Some(since) = counted.dry_run_log.note(now) {
            let counter = fingerprint.map(|f| format!(" (last counter {})", f.short())).unwrap_or_default();
            log::info!(
                "rate_limit: dry run: {} would have refused {since} request(s) since the last line{counter}",
                limit.policy,
            );
        }
    }

    /// A global decision the service did not make: counted, logged at most once a second, and
    /// settled by the failure mode.
    fn service_failed(&self, global: &Global, error: &Failure, now: u64) -> Flow {
        let reason = error.reason();
        if let Some(counter) = self.failures.get(reason) {
            counter.inc();
        }
        if let Some(since) = self.failure_log.note(now) {
            log::warn!(
                "rate_limit: the rate limit service ({}) did not decide {since} request(s) since the last line, last: {error}; {}",
                global.cluster,
                match global.failure_mode {
                    FailureMode::Allow => "let through (failure_mode allow)",
                    FailureMode::Deny => "refused (failure_mode deny)",
                }
            );
        }
        match global.failure_mode {
            FailureMode::Allow => Flow::Continue,
            FailureMode::Deny => Flow::Reply(LocalReply::new(
                500,
                "service_error",
                "the rate limit service could not decide: request refused",
            )),
        }
    }
}

impl Plugin for RateLimit {
    const NAME: &'static str = "rate_limit";
    type Filter = Limiter;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let metrics = root.metrics();
        let limits = config
            .rules
            .iter()
            .map(|rule| rule.limits.iter().map(|limit| Counted::new(metrics, &rule.name, limit)).collect())
            .collect();
        let eviction = |state: &str| metrics.local_counter(&series_name(EVICTIONS, &[("state", state)]));
        let untracked = |reason: &str| metrics.local_counter(&series_name(UNTRACKED, &[("reason", reason)]));
        let table = Table::new(&config.domain, config.max_keys);
        match config.global.as_ref().map_or_else(|| table.create(root).map(Some), |_| Ok(None)) {
            Ok(None) => log::info!(
                "rate_limit: {} rule(s), {} limit(s); global mode: domain {} on the rate limit service at cluster {}",
                config.rules.len(),
                config.rules.iter().map(|r| r.limits.len()).sum::<usize>(),
                config.domain,
                config.global.as_ref().map_or("", |g| g.cluster.as_str()),
            ),
            Ok(Some(created)) => log::info!(
                "rate_limit: {} rule(s), {} limit(s); domain {}: {} shared bucket(s) of {} counters ({created} created here)",
                config.rules.len(),
                config.rules.iter().map(|r| r.limits.len()).sum::<usize>(),
                config.domain,
                table.buckets(),
                table::WAYS,
            ),
            Err(status) => log::warn!(
                "rate_limit: cannot create the shared counters ({status:?}): requests the host cannot count are let through and counted in {UNTRACKED}"
            ),
        }
        let host_rules = config.rules.iter().any(|r| !r.matcher.hosts.is_empty());
        let failed = match config.global.as_ref().map(|g| g.failure_mode) {
            Some(FailureMode::Deny) => "denied",
            _ => "allowed",
        };
        let failures = FAILURE_REASONS.map(|reason| {
            metrics.local_counter(&series_name(SERVICE_FAILURES, &[("reason", reason), ("result", failed)]))
        });
        Ok(RateLimit {
            limits,
            evicted_idle: eviction("idle"),
            evicted_active: eviction("active"),
            untracked: [untracked("full"), untracked("contention"), untracked("host")],
            retries: metrics.local_counter(RETRIES),
            invalid_host: metrics.local_counter(INVALID_HOST),
            released: ["log", "destroy"]
                .map(|hook| metrics.local_counter(&series_name(RELEASES, &[("hook", hook)]))),
            table,
            root: root.clone(),
            host_rules,
            failures,
            failure_log: Throttle::default(),
            config,
        })
    }

    fn new_filter(self: &Rc<Self>) -> Limiter {
        Limiter {
            plugin: Rc::clone(self),
            held: Vec::new(),
            asked: Vec::new(),
            response: None,
            service_headers: Vec::new(),
        }
    }
}

/// A limit that applies to a request, and its counter for it.
#[derive(Debug, Clone, Copy)]
struct Applied {
    rule: usize,
    limit: usize,
    fingerprint: Fingerprint,
}

/// Per-stream state: the concurrency counters the request holds, and the `RateLimit` fields for
/// its response.
pub struct Limiter {
    plugin: Rc<RateLimit>,
    held: Vec<Applied>,
    /// Global mode: the limits (rule, limit) whose descriptors the pending call sent, in order.
    asked: Vec<(usize, usize)>,
    response: Option<(String, String)>,
    /// Global mode: headers the service asked for on the client's response.
    service_headers: Vec<(String, String)>,
}

impl Limiter {
    /// Releases the concurrency counters the request holds, counted under `hook` (0: the log
    /// callback, 1: the context's destruction).
    fn release(&mut self, hook: usize) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for &at in &held {
            self.plugin.give_back(at, 0);
        }
        if let Some(counter) = self.plugin.released.get(hook) {
            counter.add(held.len() as u64);
        }
    }
}

/// Visits the limits that apply to `request` (every matching rule's limits whose descriptor
/// values can all be read): `visit(rule, limit, its configuration and counters, the values)`.
fn each_applied(
    plugin: &RateLimit,
    stream: &Stream,
    request: &gatewasm::Request,
    host: Option<&str>,
    mut visit: impl FnMut(usize, usize, &Limit, &Counted, &[Cow<'_, [u8]>]),
) {
    let parts = RequestParts {
        method: request.method(),
        host,
        path: request.path(),
        query: request.query(),
        headers: Some(request.headers()),
    };
    let values = RequestValues { headers: request.headers(), host, method: request.method() };
    // The downstream address is a host call: read once, and only for a limit that counts by it.
    let mut remote: Option<Option<String>> = None;
    let mut read_remote = || {
        remote
            .get_or_insert_with(|| {
                stream.property(&["source", "address"]).and_then(|bytes| String::from_utf8(bytes).ok())
            })
            .clone()
    };
    for (r, rule) in plugin.config.rules.iter().enumerate() {
        if !rule.matcher.matches(&parts) {
            continue;
        }
        for (l, limit) in rule.limits.iter().enumerate() {
            let Some(counted) = plugin.limits.get(r).and_then(|c| c.get(l)) else { continue };
            let read: Option<Vec<_>> =
                limit.descriptors.iter().map(|d| d.source.value(&values, &mut read_remote)).collect();
            if let Some(read) = read {
                visit(r, l, limit, counted, &read);
            }
        }
    }
}

/// The limits that apply to `request`, each with its counter (local mode).
fn applied(
    plugin: &RateLimit,
    stream: &Stream,
    request: &gatewasm::Request,
    host: Option<&str>,
) -> Vec<Applied> {
    let mut out = Vec::new();
    each_applied(plugin, stream, request, host, |rule, limit, _, counted, values| {
        let fingerprint = counted.fingerprint(values.iter().map(|v| v.as_ref()));
        out.push(Applied { rule, limit, fingerprint });
    });
    out
}

/// Why global mode has no decision from the service.
#[derive(Debug)]
enum Failure {
    /// The call failed or was refused.
    Grpc(GrpcError),
    /// The answer could not be read.
    Malformed(global::Malformed),
}

impl Failure {
    /// Its index in [`FAILURE_REASONS`].
    fn reason(&self) -> usize {
        match self {
            Failure::Grpc(GrpcError::Timeout) => 0,
            Failure::Grpc(GrpcError::UnknownCluster | GrpcError::Dispatch(_) | GrpcError::Unavailable(_)) => {
                1
            }
            Failure::Grpc(GrpcError::Status(_)) => 2,
            Failure::Grpc(GrpcError::Malformed | GrpcError::TooLarge { .. }) | Failure::Malformed(_) => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Grpc(GrpcError::UnknownCluster) => f.write_str("no such cluster"),
            Failure::Grpc(GrpcError::Dispatch(status)) => write!(f, "the call was refused ({status:?})"),
            Failure::Grpc(GrpcError::Timeout) => f.write_str("timed out"),
            Failure::Grpc(GrpcError::Unavailable(message)) => write!(f, "unavailable: {message}"),
            Failure::Grpc(GrpcError::Status(status)) => {
                write!(f, "gRPC status {}: {}", status.code, status.message)
            }
            Failure::Grpc(GrpcError::Malformed) => f.write_str("a malformed gRPC answer"),
            Failure::Grpc(GrpcError::TooLarge { size }) => write!(f, "an answer of {size} bytes"),
            Failure::Malformed(why) => write!(f, "an answer that is not a RateLimitResponse: {}", why.0),
        }
    }
}

/// The host's wall clock in microseconds since the epoch.
fn now_micros(stream: &Stream) -> Option<u64> {
    let now = stream.now()?.duration_since(UNIX_EPOCH).ok()?;
    Some(u64::try_from(now.as_micros()).unwrap_or(u64::MAX))
}

impl Limiter {
    /// Global mode: sends the applied limits' descriptors to the service and holds the request
    /// for its answer.
    fn ask_service(
        &mut self,
        stream: &mut Stream,
        request: &gatewasm::Request,
        host: Option<&str>,
        global: &Global,
    ) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let mut message = global::RequestBuilder::new(&plugin.config.domain);
        let mut asked = Vec::new();
        each_applied(&plugin, stream, request, host, |rule, limit, config, _, values| {
            let entries = config.descriptors.iter().zip(values).map(|(d, v)| (d.key.as_str(), v.as_ref()));
            message.descriptor(entries, config.hits);
            asked.push((rule, limit));
        });
        if asked.is_empty() {
            return Flow::Continue;
        }
        let mut call =
            GrpcCall::new(global.cluster.as_str(), global::SERVICE, global::METHOD, message.encode());
        call.timeout = Duration::from_millis(global.timeout_ms);
        match stream.dispatch_grpc(&call) {
            Ok(()) => {
                self.asked = asked;
                Flow::Pause
            }
            Err(error) => {
                plugin.service_failed(global, &Failure::Grpc(error), now_micros(stream).unwrap_or(0))
            }
        }
    }

    /// Global mode: what the service's answer to the limits in `asked` means for the request.
    fn decide(&mut self, stream: &mut Stream, asked: &[(usize, usize)], answer: global::Answer) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let mut policies: Vec<String> = Vec::new();
        let mut items: Vec<String> = Vec::new();
        let mut refused: Option<(usize, usize, Option<u64>)> = None;
        let mut dry_run_refused = false;
        let mut allowed: Vec<(usize, usize)> = Vec::with_capacity(asked.len());
        let now = || now_micros(stream).unwrap_or(0);
        for (i, &(r, l)) in asked.iter().enumerate() {
            let Some((limit, counted)) = plugin.limit_at(r, l) else {
                continue;
            };
            let status = answer.statuses.get(i);
            if let Some((status, service_limit, window)) =
                status.and_then(|s| s.limit.and_then(|sl| sl.window.map(|w| (s, sl, w))))
            {
                policies.push(headers::quota_item(
                    &limit.policy,
                    u64::from(service_limit.requests_per_unit),
                    window,
                    limit.hits,
                ));
                items.push(headers::limit_item(
                    &limit.policy,
                    &Decision {
                        allowed: !status.over,
                        write: None,
                        remaining: u64::from(status.remaining),
                        reset_after: status.reset_after,
                    },
                ));
            }
            // Without statuses to read one by one, the overall code stands for every limit.
            let over = status.map_or(answer.over, |s| s.over);
            if !over {
                allowed.push((r, l));
            } else if limit.dry_run {
                counted.dry_run_limited.inc();
                dry_run_refused = true;
                plugin.log_dry_run(limit, counted, None, now());
            } else if refused.is_none() {
                refused = Some((r, l, status.and_then(|s| s.reset_after)));
            }
        }
        // An overall OVER_LIMIT with no enforced limit over it (statuses that disagree with it):
        // refused, as Envoy's filter reads the overall code, unless only dry-run limits are over.
        if refused.is_none() && answer.over && !dry_run_refused {
            refused = asked
                .iter()
                .find(|&&(r, l)| plugin.limit_at(r, l).is_some_and(|(limit, _)| !limit.dry_run))
                .map(|&(r, l)| (r, l, None));
        }
        if let Some((r, l, reset_after)) = refused {
            let Some((limit, counted)) = plugin.limit_at(r, l) else {
                return Flow::Continue;
            };
            counted.limited.inc();
            log::debug!("rate_limit: {} refused a request (the rate limit service said so)", limit.policy);
            let retry_after = reset_after.map_or(1, |after| headers::seconds(after).max(1));
            let mut reply = LocalReply::new(
                429,
                "too_many_requests",
                format!("too many requests: limit {} reached, retry in {retry_after} s", limit.policy),
            )
            .header(headers::RETRY_AFTER, retry_after.to_string());
            if !policies.is_empty() {
                reply = reply
                    .header(headers::POLICY, policies.join(", "))
                    .header(headers::RATELIMIT, items.join(", "));
            }
            for (name, value) in answer.response_headers {
                reply = reply.header(name, value);
            }
            return Flow::Reply(reply);
        }
        for &(r, l) in &allowed {
            if let Some((_, counted)) = plugin.limit_at(r, l) {
                counted.allowed.inc();
            }
        }
        let headers = stream.request_headers();
        for (name, value) in &answer.request_headers {
            if headers.set(name, value).is_err() {
                log::debug!("rate_limit: a request header from the rate limit service could not be set");
            }
        }
        if !items.is_empty() && (dry_run_refused || plugin.config.response_headers == ResponseHeaders::Always)
        {
            self.response = Some((policies.join(", "), items.join(", ")));
        }
        self.service_headers = answer.response_headers;
        Flow::Continue
    }
}

impl HttpFilter for Limiter {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        if plugin.config.rules.is_empty() {
            return Flow::Continue;
        }
        let request = stream.request();
        let host = request.host();
        if plugin.host_rules && host.is_none() {
            plugin.invalid_host.inc();
            return Flow::Reply(LocalReply::invalid_host());
        }
        if let Some(global) = &plugin.config.global {
            return self.ask_service(stream, &request, host.as_deref(), global);
        }
        let applied = applied(&plugin, stream, &request, host.as_deref());
        if applied.is_empty() {
            return Flow::Continue;
        }
        let Some(now) = now_micros(stream) else {
            log::warn!("rate_limit: the host has no clock: request let through uncounted");
            return Flow::Continue;
        };

        let mut taken: Vec<Applied> = Vec::with_capacity(applied.len());
        let mut items: Vec<String> = Vec::with_capacity(applied.len());
        let mut refused: Option<(Applied, Decision)> = None;
        let mut dry_run_refused = false;
        for &at in &applied {
            let Some((limit, counted)) = plugin.limit(at) else { continue };
            let Some(algorithm) = &limit.algorithm else { continue };
            let changed = plugin.table.change(&plugin.root, &at.fingerprint, now, |state| {
                let decision = algorithm.take(state, now, limit.hits);
                (decision.write, decision)
            });
            let decision = match changed {
                Ok(changed) => {
                    plugin.count_change(&changed);
                    changed.value
                }
                Err(why) => {
                    plugin.count_untracked(why, &limit.policy);
                    continue;
                }
            };
            items.push(headers::limit_item(&limit.policy, &decision));
            if decision.allowed {
                taken.push(at);
            } else if limit.dry_run {
                counted.dry_run_limited.inc();
                dry_run_refused = true;
                plugin.log_dry_run(limit, counted, Some(&at.fingerprint), now);
            } else {
                refused = Some((at, decision));
                break;
            }
        }

        let policies = || {
            let items: Vec<&str> = applied
                .iter()
                .filter_map(|&at| plugin.limit(at))
                .map(|(_, c)| c.policy_item.as_str())
                .collect();
            items.join(", ")
        };
        if let Some((at, decision)) = refused {
            // A refused request uses up nothing: what the other limits took goes back.
            for &back in &taken {
                plugin.give_back(back, now);
            }
            let Some((limit, counted)) = plugin.limit(at) else { return Flow::Continue };
            counted.limited.inc();
            log::debug!(
                "rate_limit: {} refused a request (counter {})",
                limit.policy,
                at.fingerprint.short()
            );
            let fallback = match limit.algorithm {
                Some(Algorithm::Concurrency { retry_after, .. }) => retry_after,
                _ => 1,
            };
            let retry_after = headers::retry_after(&decision, fallback);
            return Flow::Reply(
                LocalReply::new(
                    429,
                    "too_many_requests",
                    format!("too many requests: limit {} reached, retry in {retry_after} s", limit.policy),
                )
                .header(headers::RETRY_AFTER, retry_after.to_string())
                .header(headers::POLICY, policies())
                .header(headers::RATELIMIT, items.join(", ")),
            );
        }
        for &at in &taken {
            let Some((limit, counted)) = plugin.limit(at) else { continue };
            counted.allowed.inc();
            if matches!(limit.algorithm, Some(Algorithm::Concurrency { .. })) {
                self.held.push(at);
            }
        }
        if !items.is_empty() && (dry_run_refused || plugin.config.response_headers == ResponseHeaders::Always)
        {
            self.response = Some((policies(), items.join(", ")));
        }
        Flow::Continue
    }

    fn on_grpc_result(&mut self, stream: &mut Stream, result: GrpcResult) -> Flow {
        let asked = std::mem::take(&mut self.asked);
        let plugin = Rc::clone(&self.plugin);
        let Some(global) = &plugin.config.global else { return Flow::Continue };
        let answer = result
            .map_err(Failure::Grpc)
            .and_then(|bytes| global::decode(&bytes, asked.len()).map_err(Failure::Malformed));
        match answer {
            Ok(answer) => self.decide(stream, &asked, answer),
            Err(failure) => plugin.service_failed(global, &failure, now_micros(stream).unwrap_or(0)),
        }
    }

    fn on_response_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        if !self.service_headers.is_empty() {
            let headers = stream.response_headers();
            for (name, value) in std::mem::take(&mut self.service_headers) {
                if headers.add(&name, &value).is_err() {
                    log::debug!(
                        "rate_limit: a response header from the rate limit service could not be added"
                    );
                }
            }
        }
        if let Some((policy, limits)) = self.response.take() {
            let headers = stream.response_headers();
            if headers
                .set(headers::POLICY, &policy)
                .and_then(|()| headers.set(headers::RATELIMIT, &limits))
                .is_err()
            {
                log::debug!("rate_limit: the RateLimit fields could not be added to the response");
            }
        }
        Flow::Continue
    }

    fn on_log(&mut self, _stream: &mut Stream) {
        self.release(0);
    }
}

impl Drop for Limiter {
    /// A stream that ends without its log callback (should any host skip it) still frees what
    /// it holds: the context goes when its stream does.
    fn drop(&mut self) {
        self.release(1);
    }
}

// The module's entry point.
#[cfg(feature = "export")]
gatewasm::export!(RateLimit);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use std::time::Duration;

    use gatewasm::testing::{Action, FakeHost, FakeStream, Harness};

    use super::*;

    fn gateway(config: &str) -> Harness<RateLimit> {
        Harness::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn on(host: &Rc<FakeHost>, config: &str) -> Harness<RateLimit> {
        Harness::with_host(Rc::clone(host), config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn send(gw: &Harness<RateLimit>, path: &str, extra: &[(&str, &str)]) -> FakeStream<RateLimit> {
        let mut s = gw.stream();
        let mut headers = vec![(":method", "GET"), (":authority", "api.example.com"), (":path", path)];
        headers.extend_from_slice(extra);
        s.request_headers(&headers, true);
        s
    }

    /// The status the client gets: the filter's reply, or 200 from upstream.
    fn status(s: &FakeStream<RateLimit>) -> u32 {
        s.reply().map_or(200, |r| r.status)
    }

    fn counter(gw: &mut Harness<RateLimit>, rule: &str, limit: &str, result: &str) -> Option<u64> {
        gw.tick();
        gw.host().counter(&format!("{REQUESTS};rule={rule};limit={limit};result={result}"))
    }

    const PER_KEY: &str = r#"{"rules": [{"name": "api", "match": {"prefix": "/api/"},
        "limits": [{"name": "per-key", "descriptors": [{"header": "x-api-key"}],
                    "token_bucket": {"rate": 3, "per": "minute"}}]}]}"#;

    #[test]
    fn a_key_over_its_limit_gets_429_with_the_json_body_and_the_ratelimit_fields() {
        let mut gw = gateway(PER_KEY);
        for i in 0..3 {
            let s = send(&gw, "/api/items", &[("x-api-key", "k1")]);
            assert_eq!(status(&s), 200, "request {i}");
        }
        let s = send(&gw, "/api/items", &[("x-api-key", "k1")]);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (429, "rate_limit_too_many_requests"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(body["code"], "too_many_requests");
        assert_eq!(body["message"], "too many requests: limit api.per-key reached, retry in 20 s");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("retry-after"), Some("20"), "one token every 20 s");
        assert_eq!(reply.header("ratelimit-policy"), Some(r#""api.per-key";q=3;w=60"#));
        assert_eq!(reply.header("ratelimit"), Some(r#""api.per-key";r=0;t=20"#));
        assert!(!reply.body_text().contains("k1"), "the key is never echoed");
        // Another key, and a path no rule matches, are not limited.
        assert_eq!(status(&send(&gw, "/api/items", &[("x-api-key", "k2")])), 200);
        assert_eq!(status(&send(&gw, "/health", &[("x-api-key", "k1")])), 200);
        // 20 s later one more request fits.
        gw.host().advance(Duration::from_secs(20));
        assert_eq!(status(&send(&gw, "/api/items", &[("x-api-key", "k1")])), 200);
        assert_eq!(status(&send(&gw, "/api/items", &[("x-api-key", "k1")])), 429);
        assert_eq!(counter(&mut gw, "api", "per-key", "allowed"), Some(5));
        assert_eq!(counter(&mut gw, "api", "per-key", "limited"), Some(2));
        assert_eq!(counter(&mut gw, "api", "per-key", "dry_run_limited"), Some(0));
    }

    #[test]
    fn a_missing_descriptor_value_means_the_limit_does_not_apply() {
        let gw = gateway(PER_KEY);
        for _ in 0..10 {
            let s = send(&gw, "/api/items", &[]);
            assert_eq!(status(&s), 200);
            assert_eq!(s.calls(), 1, "the request read only: nothing counted, no clock read");
        }
    }

    #[test]
    fn every_worker_counts_against_the_same_limit() {
        let host = FakeHost::new();
        let one = on(&host, PER_KEY);
        let two = on(&host, PER_KEY);
        assert_eq!(status(&send(&one, "/api/a", &[("x-api-key", "k")])), 200);
        assert_eq!(status(&send(&two, "/api/a", &[("x-api-key", "k")])), 200);
        assert_eq!(status(&send(&one, "/api/a", &[("x-api-key", "k")])), 200);
        assert_eq!(status(&send(&two, "/api/a", &[("x-api-key", "k")])), 429);
        assert_eq!(status(&send(&one, "/api/a", &[("x-api-key", "k")])), 429);
    }

    /// Host calls `send` costs, the plugin's included (shared data goes through the plugin).
    fn calls(gw: &Harness<RateLimit>, path: &str, extra: &[(&str, &str)]) -> u64 {
        let before = gw.host().calls();
        send(gw, path, extra);
        gw.host().calls() - before
    }

    #[test]
    fn host_calls_per_request() {
        let gw = gateway(PER_KEY);
        // The request, the clock, the counter's bucket read and written.
        assert_eq!(calls(&gw, "/api/a", &[("x-api-key", "k")]), 4);
        send(&gw, "/api/a", &[("x-api-key", "k")]);
        send(&gw, "/api/a", &[("x-api-key", "k")]);
        // A refusal writes nothing: the request, the clock, the read, the reply.
        assert_eq!(calls(&gw, "/api/a", &[("x-api-key", "k")]), 4);
        assert_eq!(calls(&gw, "/other", &[("x-api-key", "k")]), 1, "no rule matched: the read only");
        let by_ip = gateway(
            r#"{"rules": [{"limits": [{"descriptors": ["client_address"], "fixed_window": {"requests": 5}}]}]}"#,
        );
        let before = by_ip.host().calls();
        let mut s = by_ip.stream();
        s.set_property(&["source", "address"], "203.0.113.9:4242");
        s.request_headers(&[(":method", "GET"), (":path", "/"), (":authority", "h")], true);
        assert_eq!(by_ip.host().calls() - before, 5, "and the downstream address, once");
    }

    #[test]
    fn a_refused_request_uses_up_nothing() {
        // Two limits on one rule: per client (5) and for everyone (2). Once everyone's is spent,
        // refused requests must not take from the client's.
        let mut gw = gateway(
            r#"{"rules": [{"name": "r", "limits": [
                {"name": "client", "descriptors": [{"header": "x-client"}], "fixed_window": {"requests": 5, "per": "minute"}},
                {"name": "all", "fixed_window": {"requests": 2, "per": "minute"}}]}]}"#,
        );
        let get = |gw: &Harness<RateLimit>| status(&send(gw, "/", &[("x-client", "c")]));
        assert_eq!([get(&gw), get(&gw), get(&gw), get(&gw)], [200, 200, 429, 429]);
        assert_eq!(counter(&mut gw, "r", "client", "allowed"), Some(2));
        assert_eq!(counter(&mut gw, "r", "all", "limited"), Some(2));
        // The client's counter holds the two allowed requests only.
        let s = send(&gw, "/", &[("x-client", "c")]);
        assert_eq!(s.reply().unwrap().header("ratelimit"), Some(r#""r.client";r=2;t=60, "r.all";r=0;t=60"#));
    }

    #[test]
    fn concurrency_is_held_until_the_stream_ends_whichever_way() {
        let gw = gateway(
            r#"{"rules": [{"name": "upload", "limits": [{"name": "in-flight", "descriptors": [{"header": "x-user"}],
                "concurrency": {"max": 2, "retry_after_seconds": 3}}]}]}"#,
        );
        let user = [("x-user", "u")];
        let mut first = send(&gw, "/", &user);
        let second = send(&gw, "/", &user);
        assert_eq!((status(&first), status(&second)), (200, 200));
        let third = send(&gw, "/", &user);
        let reply = third.reply().unwrap();
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("3"));
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(r#""upload.in-flight";q=2;qu="concurrent-requests""#)
        );
        assert_eq!(reply.header("ratelimit"), Some(r#""upload.in-flight";r=0"#));
        drop(third);
        // The log callback frees the first's place...
        first.log();
        let fourth = send(&gw, "/", &user);
        assert_eq!(status(&fourth), 200);
        drop(first);
        assert_eq!(
            status(&send(&gw, "/", &user)),
            429,
            "a stream is released once, not again when destroyed"
        );
        // ...and a stream destroyed without its log callback frees it too.
        drop(second);
        assert_eq!(status(&send(&gw, "/", &user)), 200);
        drop(fourth);
    }

    #[test]
    fn dry_run_counts_and_adds_the_fields_without_refusing() {
        let mut gw = gateway(
            r#"{"rules": [{"name": "api", "dry_run": true, "limits": [{"name": "per-key",
                "descriptors": [{"header": "x-api-key"}], "token_bucket": {"rate": 1, "per": "hour"}}]}]}"#,
        );
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let mut s = send(&gw, "/", &[("x-api-key", "secret-key-123")]);
            statuses.push(status(&s));
            s.response_headers(&[(":status", "200")], true);
            if statuses.len() == 1 {
                assert_eq!(s.response_header("ratelimit"), None, "under the limit: nothing added");
            } else {
                assert_eq!(s.response_header("ratelimit").as_deref(), Some(r#""api.per-key";r=0;t=3600"#));
                assert_eq!(
                    s.response_header("ratelimit-policy").as_deref(),
                    Some(r#""api.per-key";q=1;w=3600"#)
                );
            }
        }
        assert_eq!(statuses, [200; 4]);
        assert_eq!(counter(&mut gw, "api", "per-key", "allowed"), Some(1));
        assert_eq!(counter(&mut gw, "api", "per-key", "dry_run_limited"), Some(3));
        assert_eq!(counter(&mut gw, "api", "per-key", "limited"), Some(0));
    }

    #[test]
    fn log_lines_are_throttled_to_one_a_second() {
        let t = Throttle::default();
        assert_eq!(t.note(5 * MICROS), Some(1), "the first event is logged at once");
        assert_eq!(t.note(5 * MICROS + 1), None);
        assert_eq!(t.note(5 * MICROS + 999_999), None);
        assert_eq!(t.note(6 * MICROS), Some(3), "the line stands for every event since the last");
        assert_eq!(t.note(6 * MICROS + 10), None);
        assert_eq!(t.note(100 * MICROS), Some(2));
    }

    #[test]
    fn allowed_responses_carry_the_fields_when_asked() {
        let gw = gateway(
            r#"{"response_headers": "always", "rules": [{"name": "api", "limits": [
                {"name": "burst", "token_bucket": {"rate": 10, "burst": 20}},
                {"name": "hourly", "fixed_window": {"requests": 1000, "per": "hour"}}]}]}"#,
        );
        gw.host().set_now(UNIX_EPOCH + Duration::from_secs(1_704_067_200 + 600));
        let mut s = send(&gw, "/", &[]);
        assert_eq!(status(&s), 200);
        let before = s.calls();
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(s.calls() - before, 2, "two header writes");
        assert_eq!(
            s.response_header("ratelimit-policy").as_deref(),
            Some(r#""api.burst";q=10;w=1;gatewasm-burst=20, "api.hourly";q=1000;w=3600"#)
        );
        assert_eq!(
            s.response_header("ratelimit").as_deref(),
            Some(r#""api.burst";r=19;t=1, "api.hourly";r=999;t=3000"#)
        );
    }

    #[test]
    fn new_keys_evict_idle_counters_first_and_the_count_shows_it() {
        // One bucket of 8 counters.
        let mut gw = gateway(
            r#"{"max_keys": 8, "rules": [{"name": "r", "limits": [{"name": "ip",
                "descriptors": [{"header": "x-ip"}], "token_bucket": {"rate": 1, "per": "second", "burst": 2}}]}]}"#,
        );
        for i in 0..8 {
            assert_eq!(status(&send(&gw, "/", &[("x-ip", &i.to_string())])), 200);
        }
        // Every counter is one token short of full: a new key evicts the one full soonest.
        assert_eq!(status(&send(&gw, "/", &[("x-ip", "new")])), 200);
        gw.tick();
        assert_eq!(gw.host().counter(&format!("{EVICTIONS};state=active")), Some(1));
        // A second later every bucket is full again: idle, evicted at no loss.
        gw.host().advance(Duration::from_secs(1));
        assert_eq!(status(&send(&gw, "/", &[("x-ip", "newer")])), 200);
        gw.tick();
        assert_eq!(gw.host().counter(&format!("{EVICTIONS};state=idle")), Some(1));
        let bucket = table::Bucket::decode(&gw.host().shared("gatewasm-rate-limit/gatewasm/0").unwrap());
        assert_eq!(bucket.entries().len(), table::WAYS, "never more counters than the table holds");
    }

    #[test]
    fn counters_in_flight_are_never_evicted() {
        let mut gw = gateway(
            r#"{"max_keys": 8, "rules": [{"name": "r", "limits": [{"name": "c",
                "descriptors": [{"header": "x-u"}], "concurrency": {"max": 1}}]}]}"#,
        );
        let held: Vec<_> = (0..8).map(|i| send(&gw, "/", &[("x-u", &i.to_string())])).collect();
        assert!(held.iter().all(|s| status(s) == 200));
        assert_eq!(status(&send(&gw, "/", &[("x-u", "9")])), 200, "let through uncounted");
        gw.tick();
        assert_eq!(gw.host().counter(&format!("{UNTRACKED};reason=full")), Some(1));
        assert_eq!(status(&send(&gw, "/", &[("x-u", "0")])), 429, "the held counters are intact");
        drop(held);
        assert_eq!(status(&send(&gw, "/", &[("x-u", "0")])), 200);
    }

    #[test]
    fn lost_races_are_retried_and_never_lose_a_count() {
        let mut gw = gateway(
            r#"{"rules": [{"name": "r", "limits": [{"name": "l", "fixed_window": {"requests": 3, "per": "hour"}}]}]}"#,
        );
        gw.host().lose_cas_races(5);
        assert_eq!(status(&send(&gw, "/", &[])), 200);
        gw.tick();
        assert_eq!(gw.host().counter(RETRIES), Some(5));
        assert_eq!(status(&send(&gw, "/", &[])), 200);
        assert_eq!(status(&send(&gw, "/", &[])), 200);
        assert_eq!(status(&send(&gw, "/", &[])), 429);
        // A worker that keeps losing lets the request through, counted as such.
        gw.host().lose_cas_races(1_000);
        gw.host().advance(Duration::from_secs(3_600));
        assert_eq!(status(&send(&gw, "/", &[])), 200);
        gw.tick();
        assert_eq!(gw.host().counter(&format!("{UNTRACKED};reason=contention")), Some(1));
    }

    #[test]
    fn counters_by_client_address_claim_and_rule_path() {
        let gw = gateway(
            r#"{"rules": [
                {"name": "login", "match": {"path": "/login"}, "limits": [{"name": "ip",
                    "descriptors": [{"client_address": {"xff_hop": 1}}], "fixed_window": {"requests": 1, "per": "minute"}}]},
                {"name": "tenant", "match": {"path": {"template": "/t/{id}"}}, "limits": [{"name": "t",
                    "descriptors": ["path", {"jwt_claim_header": "x-tenant"}], "fixed_window": {"requests": 1, "per": "minute"}}]}]}"#,
        );
        // The load balancer's entry counts; the client's own left-hand entry does not.
        let login = |xff: &str| status(&send(&gw, "/login", &[("x-forwarded-for", xff)]));
        assert_eq!(login("1.1.1.1, 198.51.100.7"), 200);
        assert_eq!(login("2.2.2.2, 198.51.100.7"), 429, "the client changed its own entry only");
        assert_eq!(login("198.51.100.8"), 200);
        // One counter per tenant for the rule's path template, whatever the id.
        let tenant = |path: &str, t: &str| status(&send(&gw, path, &[("x-tenant", t)]));
        assert_eq!(tenant("/t/1", "acme"), 200);
        assert_eq!(tenant("/t/2", "acme"), 429);
        assert_eq!(tenant("/t/2", "globex"), 200);
        assert_eq!(status(&send(&gw, "/t/3", &[])), 200, "no claim header: the limit does not apply");
    }

    #[test]
    fn a_host_no_rule_can_read_is_refused_when_rules_name_hosts() {
        let mut gw = gateway(
            r#"{"rules": [{"match": {"hosts": ["api.example.com"]}, "limits": [{"fixed_window": {"requests": 1}}]}]}"#,
        );
        let mut s = gw.stream();
        assert_eq!(
            s.request_headers(&[(":method", "GET"), (":authority", "a..b"), (":path", "/")], true),
            Action::Pause
        );
        assert_eq!(s.reply().map(|r| r.status), Some(400));
        gw.tick();
        assert_eq!(gw.host().counter(INVALID_HOST), Some(1));
    }

    #[test]
    fn counters_are_shared_by_domain_and_survive_a_new_configuration() {
        let host = FakeHost::new();
        let config = |domain: &str, rate: u32| {
            format!(
                r#"{{"domain": "{domain}", "rules": [{{"name": "r", "limits": [{{"name": "l", "token_bucket": {{"rate": {rate}, "per": "hour"}}}}]}}]}}"#
            )
        };
        let old = on(&host, &config("edge", 2));
        assert_eq!(status(&send(&old, "/", &[])), 200);
        assert_eq!(status(&send(&old, "/", &[])), 200);
        // A new configuration with a higher rate keeps the tokens spent under the same limit...
        let new = on(&host, &config("edge", 3));
        assert_eq!(status(&send(&new, "/", &[])), 429);
        // ...another domain counts apart.
        let other = on(&host, &config("internal", 2));
        assert_eq!(status(&send(&other, "/", &[])), 200);
    }

    mod global_mode {
        use gatewasm::testing::GrpcAnswer;
        use prost::Message as _;

        use super::*;
        use crate::global::proto;

        const GLOBAL: &str = r#"{"mode": "global", "domain": "edge",
            "global": {"cluster": "rls", "timeout_ms": 25},
            "rules": [
              {"name": "api", "match": {"prefix": "/api/"},
               "limits": [{"name": "per-key", "descriptors": [{"constant": "api"}, {"header": "x-api-key", "key": "api_key"}]},
                          {"name": "per-ip", "descriptors": ["client_address"], "hits_addend": 2}]},
              {"name": "shadow", "dry_run": true, "match": {"prefix": "/api/"},
               "limits": [{"name": "all", "descriptors": [{"constant": "all"}]}]}
            ]}"#;

        fn status(code: i32, per_minute: u32, remaining: u32, reset: i64) -> proto::DescriptorStatus {
            proto::DescriptorStatus {
                code,
                current_limit: Some(proto::RateLimit { requests_per_unit: per_minute, unit: 2 }),
                limit_remaining: remaining,
                duration_until_reset: Some(proto::Duration { seconds: reset, nanos: 0 }),
            }
        }

        fn answer(overall: i32, statuses: Vec<proto::DescriptorStatus>) -> proto::RateLimitResponse {
            proto::RateLimitResponse { overall_code: overall, statuses, ..Default::default() }
        }

        fn reply(a: &proto::RateLimitResponse) -> GrpcAnswer {
            GrpcAnswer::message(a.encode_to_vec())
        }

        fn ask(gw: &Harness<RateLimit>) -> FakeStream<RateLimit> {
            let mut s = gw.stream();
            s.set_property(&["source", "address"], "10.1.2.3:5555");
            let action = s.request_headers(
                &[
                    (":method", "GET"),
                    (":authority", "api.example.com"),
                    (":path", "/api/items"),
                    ("x-api-key", "k1"),
                ],
                true,
            );
            assert_eq!(action, Action::Pause, "the request waits for the service");
            s
        }

        fn counter(gw: &mut Harness<RateLimit>, name: &str) -> Option<u64> {
            gw.tick();
            gw.host().counter(name)
        }

        #[test]
        fn the_applied_limits_go_to_the_service_as_one_request() {
            let gw = gateway(GLOBAL);
            let s = ask(&gw);
            let call = s.grpc_call().unwrap();
            assert_eq!(
                (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
                ("rls", "envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
            );
            assert_eq!(call.timeout, Duration::from_millis(25));
            let sent = proto::RateLimitRequest::decode(call.message.as_slice()).unwrap();
            assert_eq!(sent.domain, "edge");
            let entries: Vec<Vec<(String, String)>> = sent
                .descriptors
                .iter()
                .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
                .collect();
            let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
            assert_eq!(
                entries,
                vec![
                    vec![pair("generic_key", "api"), pair("api_key", "k1")],
                    vec![pair("remote_address", "10.1.2.3")],
                    vec![pair("generic_key", "all")],
                ]
            );
            let hits: Vec<Option<u64>> =
                sent.descriptors.iter().map(|d| d.hits_addend.as_ref().map(|h| h.value)).collect();
            assert_eq!(hits, vec![None, Some(2), None]);
            // No rule matches: nothing is asked.
            let mut other = gw.stream();
            let action =
                other.request_headers(&[(":method", "GET"), (":authority", "a"), (":path", "/health")], true);
            assert_eq!(action, Action::Continue);
            assert!(other.grpc_call().is_none());
        }

        #[test]
        fn an_over_limit_answer_is_a_429_with_the_services_numbers() {
            let mut gw = gateway(GLOBAL);
            let mut s = ask(&gw);
            let mut a = answer(2, vec![status(1, 100, 7, 30), status(2, 10, 0, 42), status(1, 1000, 5, 10)]);
            a.response_headers_to_add = vec![proto::HeaderValue {
                key: "x-quota".into(),
                value: "gold".into(),
                raw_value: Vec::new(),
            }];
            s.answer_grpc(&reply(&a));
            let r = s.reply().unwrap();
            assert_eq!((r.status, r.details.as_str()), (429, "rate_limit_too_many_requests"));
            assert_eq!(r.header("retry-after"), Some("42"));
            assert_eq!(
                r.header("ratelimit-policy"),
                Some(
                    r#""api.per-key";q=100;w=60, "api.per-ip";q=10;w=60;gatewasm-hits=2, "shadow.all";q=1000;w=60"#
                )
            );
            assert_eq!(
                r.header("ratelimit"),
                Some(r#""api.per-key";r=7;t=30, "api.per-ip";r=0;t=42, "shadow.all";r=5;t=10"#)
            );
            assert_eq!(r.header("x-quota"), Some("gold"));
            assert!(!r.body_text().contains("k1") && !r.body_text().contains("10.1.2.3"));
            assert_eq!(
                counter(&mut gw, "rate_limit_requests_total;rule=api;limit=per-ip;result=limited"),
                Some(1)
            );
            assert_eq!(
                counter(&mut gw, "rate_limit_requests_total;rule=api;limit=per-key;result=allowed"),
                Some(0)
            );
        }

        #[test]
        fn an_ok_answer_lets_the_request_through_with_the_services_headers() {
            let mut gw = gateway(GLOBAL);
            let mut s = ask(&gw);
            let mut a = answer(1, vec![status(1, 100, 7, 30), status(1, 10, 3, 42), status(1, 1000, 5, 10)]);
            a.request_headers_to_add = vec![proto::HeaderValue {
                key: "x-ratelimit-tier".into(),
                value: "b".into(),
                raw_value: Vec::new(),
            }];
            a.response_headers_to_add = vec![proto::HeaderValue {
                key: "x-quota".into(),
                value: "gold".into(),
                raw_value: Vec::new(),
            }];
            s.answer_grpc(&reply(&a));
            assert!(s.reply().is_none());
            assert_eq!(s.resumed().len(), 1, "the request goes on");
            assert_eq!(s.request_header("x-ratelimit-tier").as_deref(), Some("b"));
            s.response_headers(&[(":status", "200")], true);
            assert_eq!(s.response_header("x-quota").as_deref(), Some("gold"));
            assert_eq!(s.response_header("ratelimit"), None, "response_headers is `limited`");
            for limit in ["per-key", "per-ip"] {
                let name = format!("rate_limit_requests_total;rule=api;limit={limit};result=allowed");
                assert_eq!(counter(&mut gw, &name), Some(1), "{limit}");
            }
        }

        #[test]
        fn a_dry_run_limit_over_its_limit_only_counts_and_adds_the_fields() {
            let mut gw = gateway(GLOBAL);
            let mut s = ask(&gw);
            s.answer_grpc(&reply(&answer(
                2,
                vec![status(1, 100, 7, 30), status(1, 10, 3, 42), status(2, 1000, 0, 10)],
            )));
            assert!(s.reply().is_none(), "only the dry-run limit is over");
            s.response_headers(&[(":status", "200")], true);
            assert_eq!(
                s.response_header("ratelimit").as_deref(),
                Some(r#""api.per-key";r=7;t=30, "api.per-ip";r=3;t=42, "shadow.all";r=0;t=10"#)
            );
            assert_eq!(
                counter(&mut gw, "rate_limit_requests_total;rule=shadow;limit=all;result=dry_run_limited"),
                Some(1)
            );
            // Without statuses, an overall OVER_LIMIT refuses (as Envoy reads it).
            let mut s = ask(&gw);
            s.answer_grpc(&reply(&answer(2, Vec::new())));
            let r = s.reply().unwrap();
            assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
            assert_eq!(r.header("ratelimit-policy"), None, "no numbers to give");
            // An overall OK without statuses lets it through.
            let mut s = ask(&gw);
            s.answer_grpc(&reply(&answer(1, Vec::new())));
            assert!(s.reply().is_none());
        }

        #[test]
        fn failures_follow_the_failure_mode_and_are_counted() {
            let cases = [
                (GrpcAnswer::timeout(), "timeout"),
                (GrpcAnswer::unavailable(), "unavailable"),
                (GrpcAnswer::status(7, "no"), "error"),
                (GrpcAnswer::malformed(), "malformed"),
                (GrpcAnswer::message(b"\x0a\x05ab".to_vec()), "malformed"),
            ];
            for (mode, result) in [("allow", "allowed"), ("deny", "denied")] {
                let config = GLOBAL.replace(
                    r#""timeout_ms": 25"#,
                    &format!(r#""timeout_ms": 25, "failure_mode": "{mode}""#),
                );
                let mut gw = gateway(&config);
                for (answer, _) in &cases {
                    let mut s = ask(&gw);
                    s.answer_grpc(answer);
                    match mode {
                        "allow" => assert!(s.reply().is_none() && s.resumed().len() == 1, "{answer:?}"),
                        _ => {
                            let r = s.reply().unwrap();
                            assert_eq!(
                                (r.status, r.details.as_str()),
                                (500, "rate_limit_service_error"),
                                "{answer:?}"
                            );
                        }
                    }
                }
                for (reason, n) in [("timeout", 1), ("unavailable", 1), ("error", 1), ("malformed", 2)] {
                    let name = format!("{SERVICE_FAILURES};reason={reason};result={result}");
                    assert_eq!(counter(&mut gw, &name), Some(n), "{name}");
                }
            }
            // A cluster Envoy does not know: refused at dispatch, settled at once.
            let host = Rc::new(FakeHost::new());
            host.set_clusters(&["other"]);
            let mut gw = on(&host, GLOBAL);
            let mut s = gw.stream();
            let action = s.request_headers(
                &[(":method", "GET"), (":authority", "a"), (":path", "/api/x"), ("x-api-key", "k")],
                true,
            );
            assert_eq!(action, Action::Continue);
            assert_eq!(
                counter(&mut gw, &format!("{SERVICE_FAILURES};reason=unavailable;result=allowed")),
                Some(1)
            );
        }
    }
}
