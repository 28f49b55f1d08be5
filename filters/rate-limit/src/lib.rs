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

pub mod algorithm;
pub mod config;
pub mod descriptor;
pub mod headers;
pub mod table;

use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use gatewasm::matcher::RequestParts;
use gatewasm::metrics::{series_name, LocalCounter, Metrics};
use gatewasm::{ConfigErrors, Flow, HttpFilter, LocalReply, Plugin, Root, Stream};
use sha2::{Digest, Sha256};

use crate::algorithm::{Algorithm, Decision, MICROS};
use crate::config::{Config, Limit, ResponseHeaders};
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
        part(limit.algorithm.identity().as_bytes());
        for d in &limit.descriptors {
            part(d.source.identity().as_bytes());
        }
        Self {
            identity,
            policy_item: headers::policy_item(&limit.policy, &limit.algorithm, limit.hits),
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
        let limit = self.config.rules.get(at.rule)?.limits.get(at.limit)?;
        Some((limit, self.limits.get(at.rule)?.get(at.limit)?))
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
        let result = self.table.change(&self.root, &at.fingerprint, now, |state| {
            (limit.algorithm.give_back(state, now, limit.hits), ())
        });
        match result {
            Ok(changed) => self.count_change(&changed),
            Err(why) => self.count_untracked(why, &limit.policy),
        }
    }

    /// Logs a dry-run refusal: at most one line a second per limit, with the count since.
    fn log_dry_run(&self, limit: &Limit, counted: &Counted, fingerprint: &Fingerprint, now: u64) {
        if let Some(since) = counted.dry_run_log.note(now) {
            log::info!(
                "rate_limit: dry run: {} would have refused {since} request(s) since the last line (last counter {})",
                limit.policy,
                fingerprint.short()
            );
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
        match table.create(root) {
            Ok(created) => log::info!(
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
            config,
        })
    }

    fn new_filter(self: &Rc<Self>) -> Limiter {
        Limiter { plugin: Rc::clone(self), held: Vec::new(), response: None }
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
    response: Option<(String, String)>,
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

/// The limits that apply to `request`, each with its counter.
fn applied(
    plugin: &RateLimit,
    stream: &Stream,
    request: &gatewasm::Request,
    host: Option<&str>,
) -> Vec<Applied> {
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
    let mut out = Vec::new();
    for (r, rule) in plugin.config.rules.iter().enumerate() {
        if !rule.matcher.matches(&parts) {
            continue;
        }
        for (l, limit) in rule.limits.iter().enumerate() {
            let Some(counted) = plugin.limits.get(r).and_then(|c| c.get(l)) else { continue };
            let read: Option<Vec<_>> =
                limit.descriptors.iter().map(|d| d.source.value(&values, &mut read_remote)).collect();
            if let Some(read) = read {
                let fingerprint = counted.fingerprint(read.iter().map(|v| v.as_ref()));
                out.push(Applied { rule: r, limit: l, fingerprint });
            }
        }
    }
    out
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
        let applied = applied(&plugin, stream, &request, host.as_deref());
        if applied.is_empty() {
            return Flow::Continue;
        }
        let Some(now) = stream.now().and_then(|t| t.duration_since(UNIX_EPOCH).ok()) else {
            log::warn!("rate_limit: the host has no clock: request let through uncounted");
            return Flow::Continue;
        };
        let now = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);

        let mut taken: Vec<Applied> = Vec::with_capacity(applied.len());
        let mut items: Vec<String> = Vec::with_capacity(applied.len());
        let mut refused: Option<(Applied, Decision)> = None;
        let mut dry_run_refused = false;
        for &at in &applied {
            let Some((limit, counted)) = plugin.limit(at) else { continue };
            let changed = plugin.table.change(&plugin.root, &at.fingerprint, now, |state| {
                let decision = limit.algorithm.take(state, now, limit.hits);
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
                plugin.log_dry_run(limit, counted, &at.fingerprint, now);
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
                Algorithm::Concurrency { retry_after, .. } => retry_after,
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
            if matches!(limit.algorithm, Algorithm::Concurrency { .. }) {
                self.held.push(at);
            }
        }
        if !items.is_empty() && (dry_run_refused || plugin.config.response_headers == ResponseHeaders::Always)
        {
            self.response = Some((policies(), items.join(", ")));
        }
        Flow::Continue
    }

    fn on_response_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
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
}
