//! Header rewrite: request and response header operations (add, set, remove, rename) with
//! value substitutions, host rewrite, path rewrite (prefix or regex), query parameter operations,
//! and answers without an upstream (direct responses and redirects), selected by rules that
//! match on host, path, method, query parameters and headers. See `README.md` for the
//! configuration.
//!
//! Request path, per stream:
//! 1. the request is read once: when the rules may need two or more request values (the check
//!    for a spoofed `x-envoy-original-path` counts as one), every request header with one host
//!    call ([`gatewasm::Stream::request`]); with exactly one, that header alone; with none,
//!    nothing. What was read is kept, so response operations can use request values after
//!    Envoy stops exposing the request headers;
//! 2. when `strip_original_path` is on (by default when some rule rewrites the path), a
//!    client-sent `x-envoy-original-path` is removed (a write only when present);
//! 3. rules are matched against the request as it arrived (`first` or `all` matching rules); a
//!    matching rule with a `redirect` or `direct_response` answers here, and the request goes
//!    nowhere;
//! 4. request operations run, then the host rewrite, and the path rewrite and query operations,
//!    written as one `:path`.
//!
//! Response path: the response operations of the rules that matched the request run; nothing is
//! matched again.

pub mod answer;
pub mod apply;
pub mod config;
pub mod query;
pub mod rewrite;
pub mod template;

use std::rc::Rc;

use gatewasm::metrics::{Counter, LocalCounter};
use gatewasm::{ConfigErrors, Flow, HeaderSnapshot, HttpFilter, LocalReply, Plugin, Request, Root, Stream};

use crate::answer::Answer;
use crate::apply::Applied;
use crate::config::{Compiled, MatchMode};
use crate::template::{Part, Values};

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
    /// What is read of the request when it arrives.
    reads: Reads,
    /// Whether a client's `x-envoy-original-path` is removed (`strip_original_path`, on by
    /// default when some rule rewrites the path).
    strips_original_path: bool,
    /// Per-rule counts (by rule index), kept in the VM and flushed by the SDK's tick: no host
    /// call per request.
    applied: Vec<LocalCounter>,
    dropped: Counter,
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    host_rules: bool,
    invalid_host: LocalCounter,
    /// The request when nothing of it is read, shared by every stream (no allocation each).
    unread: Rc<Request>,
}

/// How the request is read on arrival: one pairs read costs about what one value read costs
/// plus 1 µs (it returns every header), so it is worth it only when two or more values are
/// needed (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reads {
    /// No rule reads the request.
    Nothing,
    /// Exactly one header (or pseudo-header) is read.
    One(String),
    /// Every request header, with one host call.
    All,
}

impl HeaderRewrite {
    /// The compiled configuration.
    pub fn config(&self) -> &Compiled {
        &self.config
    }
}

/// The request values the rules may read, one entry per distinct use (a pseudo-header read by
/// a condition and by `%REQ(...)%` counts twice, each header slot once).
fn request_values(config: &Compiled) -> Vec<&str> {
    let (mut method, mut authority, mut path, mut scheme) = (false, false, false, false);
    for rule in &config.rules {
        method |= !rule.matcher.methods.is_empty();
        authority |= !rule.matcher.hosts.is_empty();
        path |= rule.matcher.path.is_some()
            || !rule.matcher.query_params.is_empty()
            || rule.path_rewrite.is_some()
            || !rule.query.is_empty();
        if let Some(Answer::Redirect(_)) = &rule.answer {
            // The Location is built from the scheme, authority and path (x-forwarded-proto is
            // in the header table).
            (authority, path, scheme) = (true, true, true);
        }
        let templates =
            rule.request.templates().chain(rule.response.templates()).chain(rule.query.templates());
        for part in templates.flat_map(|t| t.parts()) {
            match part {
                Part::Method => method = true,
                Part::Host | Part::Authority => authority = true,
                Part::Path => path = true,
                Part::RequestHeader(_) | Part::ResponseHeader(_) | Part::Literal(_) => {}
            }
        }
    }
    let pseudo = [(method, ":method"), (authority, ":authority"), (path, ":path"), (scheme, ":scheme")];
    let pseudo = pseudo.into_iter().filter_map(|(used, name)| used.then_some(name));
    pseudo.chain(config.request_headers.iter().map(String::as_str)).collect()
}

impl Plugin for HeaderRewrite {
    const NAME: &'static str = "header_rewrite";
    type Filter = Rewriter;

    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
        let config = config::parse(raw)?;
        let metrics = root.metrics();
        let applied = config
            .rules
            .iter()
            .map(|r| {
                metrics.local_counter(&gatewasm::metrics::series_name(RULES_APPLIED, &[("rule", &r.name)]))
            })
            .collect();
        let dropped = metrics.counter(UNSAFE_DROPPED);
        log::info!("header_rewrite: {} rule(s) loaded", config.rules.len());
        let strips_original_path = config.strip_original_path;
        let mut values = request_values(&config);
        if strips_original_path {
            values.push(ORIGINAL_PATH);
        }
        let reads = match values.as_slice() {
            [] => Reads::Nothing,
            [one] => Reads::One((*one).to_string()),
            _ => Reads::All,
        };
        let host_rules = config.rules.iter().any(|r| !r.matcher.hosts.is_empty());
        let invalid_host = metrics.local_counter(INVALID_HOST);
        Ok(HeaderRewrite {
            config,
            reads,
            strips_original_path,
            applied,
            dropped,
            host_rules,
            invalid_host,
            unread: Rc::default(),
        })
    }

    fn new_filter(self: &Rc<Self>) -> Rewriter {
        Rewriter { plugin: Rc::clone(self), request: Rc::clone(&self.unread), matched: Vec::new() }
    }
}

/// Per-stream state: the request as it reached the filter and the rules that matched it.
pub struct Rewriter {
    plugin: Rc<HeaderRewrite>,
    /// What was read of the request on arrival, kept for the response side.
    request: Rc<Request>,
    /// Indexes of matched rules; after the request phase, only those with response operations.
    matched: Vec<usize>,
}

impl Rewriter {
    fn count_dropped(&self, applied: Applied) {
        if applied.unsafe_dropped > 0 {
            self.plugin.dropped.add(u64::from(applied.unsafe_dropped));
        }
    }
}

/// The request as the plugin's `reads` says to read it.
fn read_request(stream: &Stream, plugin: &HeaderRewrite) -> Rc<Request> {
    match &plugin.reads {
        Reads::Nothing => Rc::clone(&plugin.unread),
        Reads::One(name) => {
            let headers = match stream.request_headers().get(name) {
                Some(value) => HeaderSnapshot::from_strs(&[(name, &value)]),
                None => HeaderSnapshot::default(),
            };
            Rc::new(Request::from_headers(headers))
        }
        Reads::All => stream.request(),
    }
}

/// `request` without header `name` (the client's copy of a header the filter removed).
fn without(request: &Request, name: &str) -> Request {
    let kept = request
        .headers()
        .iter_bytes()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    Request::from_headers(HeaderSnapshot::from_pairs(kept))
}

impl HttpFilter for Rewriter {
    fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        let plugin = Rc::clone(&self.plugin);
        let mut request = read_request(stream, &plugin);
        // Reading first: removing an absent header would still clear Envoy's route cache.
        if plugin.strips_original_path && request.headers().contains(ORIGINAL_PATH) {
            apply::remove(stream.request_headers(), ORIGINAL_PATH);
            // Conditions and substitutions see the request without the spoofed copy (rare: a
            // copy only then).
            request = Rc::new(without(&request, ORIGINAL_PATH));
        }
        self.request = Rc::clone(&request);
        let cfg = &plugin.config;
        if cfg.rules.is_empty() {
            return Flow::Continue;
        }

        // A host that cannot be read matches no host condition, so a later rule could apply
        // where a well-formed host would have selected another: refused instead.
        if plugin.host_rules && request.host().is_none() {
            plugin.invalid_host.inc();
            return Flow::Reply(LocalReply::invalid_host());
        }

        // 1. Match against the request as it arrived.
        let values = Values { request: &request, names: &cfg.request_headers, response: None };
        for (i, rule) in cfg.rules.iter().enumerate() {
            if rule.matcher.matches(&values) {
                self.matched.push(i);
                if cfg.mode == MatchMode::First {
                    break;
                }
            }
        }
        if self.matched.is_empty() {
            return Flow::Continue;
        }

        // A rule that answers ends the request: the rules after it do not apply, and nothing
        // is written to a request that goes nowhere. The rules before it (`all` mode) keep
        // their response operations, with the answering rule's: Envoy runs a Wasm filter's own
        // reply through its response side (not a dynamic module's).
        if let Some(at) =
            self.matched.iter().position(|&i| cfg.rules.get(i).is_some_and(|r| r.answer.is_some()))
        {
            self.matched.truncate(at + 1);
            let mut reply = None;
            for &i in &self.matched {
                let Some(rule) = cfg.rules.get(i) else { continue };
                if let Some(c) = plugin.applied.get(i) {
                    c.inc();
                }
                reply = match &rule.answer {
                    Some(Answer::Direct(direct)) => Some(direct.reply()),
                    Some(Answer::Redirect(redirect)) => Some(redirect.reply(&request, &rule.query, &values)),
                    None => reply,
                };
                log::debug!("header_rewrite: rule {} applied", rule.name);
            }
            self.matched.retain(|&i| cfg.rules.get(i).is_some_and(|r| !r.response.is_empty()));
            if let Some(reply) = reply {
                return Flow::Reply(reply);
            }
        }

        // 2. Header operations in rule order, then host, path and query rewrites (in `all` mode
        // the last matching rule that rewrites the host or path wins, each rewrite starting from
        // the original path; query operations apply one after the other). Every value comes
        // from the request as read on arrival, whatever the operations write.
        let headers = stream.request_headers();
        let mut buf = String::new();
        let mut host = None;
        let mut path = None;
        let mut query: Option<String> = None;
        let mut dropped = Applied::default();
        for &i in &self.matched {
            let Some(rule) = cfg.rules.get(i) else { continue };
            let applied = apply::apply(&rule.request, &values, headers, &mut buf);
            dropped.unsafe_dropped += applied.unsafe_dropped;
            if let Some(h) = &rule.host_rewrite {
                host = Some(h.as_str());
            }
            if let Some(p) = &rule.path_rewrite {
                if let Some(new) = p.apply(request.path()) {
                    path = Some(new);
                }
            }
            // Only an origin-form `:path` has a query to change (not `*`, nor a CONNECT's none).
            if !rule.query.is_empty() && request.path().starts_with('/') {
                let current = query.as_deref().or(request.query()).unwrap_or_default();
                if let Some(new) = rule.query.apply(current, &values, &mut buf) {
                    query = Some(new);
                }
            }
            if let Some(c) = plugin.applied.get(i) {
                c.inc();
            }
            log::debug!("header_rewrite: rule {} applied", rule.name);
        }
        if let Some(h) = host {
            apply::set(headers, ":authority", h);
        }
        // `:path` is written once, for the path and the query together.
        if path.is_some() || query.is_some() {
            let new_query = match &query {
                Some(q) => (!q.is_empty()).then_some(q.as_str()),
                None => request.query(),
            };
            let new = rewrite::join_path(path.as_deref().unwrap_or(request.path()), new_query);
            if new != request.path_and_query() {
                if path.is_some() {
                    apply::set(headers, ORIGINAL_PATH, request.path_and_query());
                }
                apply::set(headers, ":path", &new);
            }
        }
        self.count_dropped(dropped);

        self.matched.retain(|&i| cfg.rules.get(i).is_some_and(|r| !r.response.is_empty()));
        Flow::Continue
    }

    fn on_response_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
        if self.matched.is_empty() {
            return Flow::Continue;
        }
        let plugin = Rc::clone(&self.plugin);
        let rules = || self.matched.iter().filter_map(|&i| plugin.config.rules.get(i));
        // The response headers substitutions read, as they came from upstream (before this
        // filter's `remove`): one read for one header, one read of the map for several.
        let mut names: Vec<&str> = Vec::new();
        for name in rules().flat_map(|r| r.response.templates()).flat_map(|t| t.response_headers()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let headers = stream.response_headers();
        let response = match names.as_slice() {
            [] => HeaderSnapshot::default(),
            [name] => match headers.get(name) {
                Some(value) => HeaderSnapshot::from_strs(&[(name, &value)]),
                None => HeaderSnapshot::default(),
            },
            _ => headers.snapshot(),
        };
        let values = Values {
            request: &self.request,
            names: &plugin.config.request_headers,
            response: Some(&response),
        };
        let mut buf = String::new();
        let mut dropped = Applied::default();
        for rule in rules() {
            dropped.unsafe_dropped += apply::apply(&rule.response, &values, headers, &mut buf).unsafe_dropped;
        }
        self.count_dropped(dropped);
        Flow::Continue
    }
}

// The module's entry point; the gatewasm bundle links this crate without it.
#[cfg(feature = "export")]
gatewasm::export!(HeaderRewrite);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use gatewasm::testing::{Action, Harness};

    use super::*;

    fn gateway(config: &str) -> Harness<HeaderRewrite> {
        Harness::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn request<'a>(
        method: &'a str,
        authority: &'a str,
        path: &'a str,
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut headers = vec![(":method", method), (":authority", authority), (":path", path)];
        headers.extend_from_slice(extra);
        headers
    }

    #[test]
    fn how_the_request_is_read_follows_what_the_rules_need() {
        let reads = |config: &str| gateway(config).plugin().reads.clone();
        assert_eq!(reads(r#"{"rules": []}"#), Reads::Nothing);
        assert_eq!(
            reads(r#"{"rules": [{"response": {"set": [{"name": "x", "value": "1"}]}}]}"#),
            Reads::Nothing
        );
        assert_eq!(
            reads(
                r#"{"rules": [{"match": {"path": {"prefix": "/"}}, "request": {"add": [{"name": "x", "value": "1"}]}}]}"#
            ),
            Reads::One(":path".into())
        );
        assert_eq!(reads(r#"{"strip_original_path": true}"#), Reads::One(ORIGINAL_PATH.into()));
        assert_eq!(
            reads(r#"{"rules": [{"request": {"set": [{"name": "x", "value": "%REQUEST_ID%"}]}}]}"#),
            Reads::One("x-request-id".into())
        );
        assert_eq!(
            reads(r#"{"rules": [{"match": {"path": {"prefix": "/"}}, "path_rewrite": {"prefix": "/v2/"}}]}"#),
            Reads::All,
            "the path, and the check for a spoofed original path"
        );
    }

    #[test]
    fn one_value_needed_costs_one_value_read() {
        let gw = gateway(
            r#"{"rules": [{"match": {"path": {"prefix": "/"}}, "request": {"add": [{"name": "x-a", "value": "1"}]},
                "response": {"set": [{"name": "x-b", "value": "2"}]}}]}"#,
        );
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("GET", "h", "/bench", &[]), true), Action::Continue);
        // The `:path` read and the add.
        assert_eq!(s.calls(), 2);
        assert_eq!(s.request_header("x-a").as_deref(), Some("1"));
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(s.calls(), 3, "one set on the response");
        assert_eq!(s.response_header("x-b").as_deref(), Some("2"));
    }

    #[test]
    fn host_and_prefix_path_rewrite_keep_query_and_original_path() {
        let gw = gateway(
            r#"{"rules": [{"match": {"path": {"prefix": "/api/v1/"}},
                "host_rewrite": "backend.internal", "path_rewrite": {"prefix": "/v2/"}}]}"#,
        );
        let mut s = gw.stream();
        s.request_headers(&request("GET", "api.example.com", "/api/v1/users/7?fields=name&x", &[]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/v2/users/7?fields=name&x"));
        assert_eq!(s.request_header(":authority").as_deref(), Some("backend.internal"));
        assert_eq!(s.request_header(ORIGINAL_PATH).as_deref(), Some("/api/v1/users/7?fields=name&x"));
        // One read, then :authority, the original path and :path.
        assert_eq!(s.calls(), 4);

        let mut s = gw.stream();
        s.request_headers(&request("GET", "api.example.com", "/api/v10/users", &[]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/api/v10/users"));
        assert_eq!(s.request_header(":authority").as_deref(), Some("api.example.com"));
        assert_eq!(s.calls(), 1, "a request no rule matched costs its read only");
    }

    #[test]
    fn a_spoofed_original_path_is_removed_and_never_seen_by_the_rules() {
        let gw = gateway(
            r#"{"rules": [{"match": {"path": {"prefix": "/old/"}}, "path_rewrite": {"prefix": "/new/"},
                "request": {"set": [{"name": "x-seen", "value": "[%REQ(x-envoy-original-path)%]"}]}}]}"#,
        );
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/other", &[(ORIGINAL_PATH, "/admin")]), true);
        assert_eq!(s.request_header(ORIGINAL_PATH), None, "removed though no rule matched");
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/old/x", &[(ORIGINAL_PATH, "/admin")]), true);
        assert_eq!(s.request_header_all(ORIGINAL_PATH), ["/old/x"]);
        assert_eq!(s.request_header("x-seen").as_deref(), Some("[]"));

        // Not stripped: the client's value is what the rules read, however the request is read.
        let gw = gateway(
            r#"{"rules": [{"match": {"path": {"prefix": "/"}},
                "request": {"set": [{"name": "x-seen", "value": "[%REQ(x-envoy-original-path)%]"}]}}]}"#,
        );
        assert_eq!(gw.plugin().reads, Reads::All);
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/", &[(ORIGINAL_PATH, "/admin")]), true);
        assert_eq!(s.request_header("x-seen").as_deref(), Some("[/admin]"));
        assert_eq!(s.request_header(ORIGINAL_PATH).as_deref(), Some("/admin"));

        // Asked for with no rules: one value read, one remove when present.
        let gw = gateway(r#"{"strip_original_path": true}"#);
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/", &[("X-Envoy-Original-Path", "/admin")]), true);
        assert_eq!(s.request_header(ORIGINAL_PATH), None);
        assert_eq!(s.calls(), 2);
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/", &[]), true);
        assert_eq!(s.calls(), 1, "nothing written for a clean request");
    }

    #[test]
    fn response_operations_use_the_request_as_it_arrived_and_the_response_as_it_came() {
        let mut gw = gateway(
            r#"{"rules": [
                {"name": "api", "match": {"path": {"prefix": "/api/"}}, "path_rewrite": {"prefix": "/"},
                 "response": {
                    "set": [{"name": "x-served-for", "value": "%REQ(x-user)% %METHOD% %PATH% via %RESP(server)% %RESP(x-up)%"}],
                    "remove": ["server"],
                    "rename": [{"from": "x-internal-id", "to": "x-trace"}]}},
                {"name": "other", "response": {"add": [{"name": "x-other", "value": "1"}]}}
            ]}"#,
        );
        let mut s = gw.stream();
        s.request_headers(&request("DELETE", "h", "/api/thing?q=1", &[("x-user", "alice")]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/thing?q=1"));
        let before = s.calls();
        s.response_headers(
            &[(":status", "200"), ("server", "echo"), ("x-up", "1"), ("x-internal-id", "abc")],
            true,
        );
        // One read of the response for both substitutions; remove; read, remove and set for the
        // rename; the set.
        assert_eq!(s.calls() - before, 6);
        assert_eq!(s.response_header("x-served-for").as_deref(), Some("alice DELETE /api/thing via echo 1"));
        assert_eq!(s.response_header("server"), None);
        assert_eq!(s.response_header("x-trace").as_deref(), Some("abc"));
        assert_eq!(s.response_header("x-other"), None, "first match only");

        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/elsewhere", &[]), true);
        s.response_headers(&[(":status", "200"), ("server", "echo")], true);
        assert_eq!(s.response_header("x-other").as_deref(), Some("1"));
        assert_eq!(s.response_header("server").as_deref(), Some("echo"));

        // Rule counters reach the host from the SDK's tick.
        assert_eq!(gw.host().counter("header_rewrite_rules_applied_total;rule=api"), Some(0));
        gw.tick();
        assert_eq!(gw.host().counter("header_rewrite_rules_applied_total;rule=api"), Some(1));
        assert_eq!(gw.host().counter("header_rewrite_rules_applied_total;rule=other"), Some(1));
    }

    #[test]
    fn all_mode_matches_the_original_request_and_the_last_rewrite_wins() {
        let gw = gateway(
            r#"{"match_mode": "all", "rules": [
                {"match": {"headers": [{"name": "x-flag", "present": false}]},
                 "request": {"set": [{"name": "x-flag", "value": "1"}]}, "host_rewrite": "first"},
                {"match": {"headers": [{"name": "x-flag", "present": false}]},
                 "request": {"add": [{"name": "x-second", "value": "%REQ(x-flag)%!"}]}, "host_rewrite": "second"}
            ]}"#,
        );
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/", &[]), true);
        assert_eq!(s.request_header("x-flag").as_deref(), Some("1"));
        assert_eq!(
            s.request_header("x-second").as_deref(),
            Some("!"),
            "values are the request's as it arrived"
        );
        assert_eq!(s.request_header(":authority").as_deref(), Some("second"));
    }

    #[test]
    fn a_host_no_rule_can_read_is_refused_when_rules_name_hosts() {
        let mut gw = gateway(
            r#"{"rules": [{"match": {"hosts": ["api.example.com"]}, "request": {"add": [{"name": "x", "value": "1"}]}},
                          {"request": {"add": [{"name": "y", "value": "1"}]}}]}"#,
        );
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("GET", "api.example.com:abc", "/", &[]), true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (400, "header_rewrite_invalid_host"));
        assert_eq!(s.request_header("y"), None);
        gw.tick();
        assert_eq!(gw.host().counter(INVALID_HOST), Some(1));
        // Without host conditions the host is never read and nothing is refused.
        let gw = gateway(r#"{"rules": [{"request": {"add": [{"name": "y", "value": "1"}]}}]}"#);
        let mut s = gw.stream();
        assert_eq!(
            s.request_headers(&request("GET", "api.example.com:abc", "/", &[]), true),
            Action::Continue
        );
        assert_eq!(s.request_header("y").as_deref(), Some("1"));
    }

    #[test]
    fn a_direct_response_answers_with_its_status_headers_and_body() {
        let mut gw = gateway(
            r#"{"rules": [{"name": "teapot", "match": {"path": "/brew"},
                "direct_response": {"status": 418, "json": {"error": "teapot"},
                                    "headers": [{"name": "cache-control", "value": "no-store"}]},
                "response": {"set": [{"name": "x-served-by", "value": "gw %METHOD%"}]}}]}"#,
        );
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("POST", "h", "/brew?x=1", &[]), true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (418, "header_rewrite_direct_response"));
        assert_eq!(reply.body_text(), r#"{"error":"teapot"}"#);
        assert_eq!(reply.headers.len(), 2, "{:?}", reply.headers);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        // The `:path` read and the reply.
        assert_eq!(s.calls(), 2);
        // Envoy runs the reply through a Wasm filter's response side (not a dynamic module's):
        // the rule's response operations apply to it there, as a route's
        // `response_headers_to_add` to its direct response.
        s.response_headers(&[(":status", "418"), ("content-type", "application/json")], true);
        assert_eq!(s.response_header("x-served-by").as_deref(), Some("gw POST"));
        gw.tick();
        assert_eq!(gw.host().counter("header_rewrite_rules_applied_total;rule=teapot"), Some(1));

        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("GET", "h", "/other", &[]), true), Action::Continue);
        assert!(s.reply().is_none());
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(s.response_header("x-served-by"), None);
    }

    #[test]
    fn a_redirect_answers_with_its_location() {
        let gw = gateway(
            r#"{"rules": [
                {"match": {"path": {"prefix": "/old/"}}, "redirect": {"prefix_rewrite": "/new/", "response_code": 308},
                 "query": {"remove": ["utm_source"], "set": [{"name": "from", "value": "%PATH%"}]}},
                {"match": {"query_params": [{"name": "secure", "exact": "1"}]},
                 "redirect": {"https_redirect": true, "strip_query": true}}
            ]}"#,
        );
        let mut s = gw.stream();
        let headers =
            request("GET", "shop.example.com:80", "/old/a?utm_source=x&id=7", &[(":scheme", "http")]);
        assert_eq!(s.request_headers(&headers, true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (308, "header_rewrite_redirect"));
        assert_eq!(
            reply.headers,
            [("location".to_string(), "http://shop.example.com:80/new/a?id=7&from=/old/a".to_string())]
        );
        assert!(reply.body.is_empty());
        // One read of the request, the reply; nothing written to the request.
        assert_eq!(s.calls(), 2);
        assert_eq!(s.request_header(":path").as_deref(), Some("/old/a?utm_source=x&id=7"));

        let mut s = gw.stream();
        let headers = request(
            "GET",
            "shop.example.com:80",
            "/p?secure=1&a=2",
            &[(":scheme", "http"), ("x-forwarded-proto", "http")],
        );
        assert_eq!(s.request_headers(&headers, true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!(reply.status, 301, "Envoy's default");
        assert_eq!(reply.header("location"), Some("https://shop.example.com/p"));

        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("GET", "h", "/p?secure=2", &[]), true), Action::Continue);
        assert!(s.reply().is_none());
    }

    #[test]
    fn query_operations_and_the_path_rewrite_write_the_path_once() {
        let gw = gateway(
            r#"{"match_mode": "all", "rules": [
                {"match": {"path": {"prefix": "/api/"}}, "path_rewrite": {"prefix": "/v2/"},
                 "query": {"remove": ["debug"], "set": [{"name": "v", "value": "2"}]}},
                {"query": {"keep": ["id", "v", "user"], "add": [{"name": "user", "value": "%REQ(x-user)%"}]}}
            ]}"#,
        );
        let mut s = gw.stream();
        let headers = request("GET", "h", "/api/items?debug=1&id=7&x=%20&v=1", &[("x-user", "a b&c")]);
        s.request_headers(&headers, true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/v2/items?id=7&v=2&user=a%20b%26c"));
        assert_eq!(s.request_header(ORIGINAL_PATH).as_deref(), Some("/api/items?debug=1&id=7&x=%20&v=1"));
        // One read; x-envoy-original-path and `:path`, once.
        assert_eq!(s.calls(), 3);

        // The query alone: `:path` written, no original path (the path did not change).
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/other?b=1&id=2", &[("x-user", "u")]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/other?id=2&user=u"));
        assert_eq!(s.request_header(ORIGINAL_PATH), None);
        assert_eq!(s.calls(), 2);

        // Nothing to change: nothing written (a write would clear Envoy's route cache).
        let gw = gateway(r#"{"rules": [{"query": {"remove": ["debug"]}}]}"#);
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/p?a=1&&b", &[]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/p?a=1&&b"));
        assert_eq!(s.calls(), 1);
        let mut s = gw.stream();
        s.request_headers(&request("GET", "h", "/p?debug=1", &[]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("/p"), "no query left: no `?`");
        // A `:path` that is not origin-form is left alone, whatever the operations would add.
        let gw = gateway(r#"{"rules": [{"query": {"add": [{"name": "v", "value": "2"}]}}]}"#);
        let mut s = gw.stream();
        s.request_headers(&request("OPTIONS", "h", "*", &[]), true);
        assert_eq!(s.request_header(":path").as_deref(), Some("*"));
        let mut s = gw.stream();
        s.request_headers(&[(":method", "CONNECT"), (":authority", "h:443")], true);
        assert_eq!(s.request_header(":path"), None);
    }

    #[test]
    fn in_all_mode_an_answer_ends_the_rules() {
        let mut gw = gateway(
            r#"{"match_mode": "all", "rules": [
                {"name": "before", "request": {"set": [{"name": "x-a", "value": "1"}]},
                 "query": {"set": [{"name": "q", "value": "1"}]},
                 "response": {"set": [{"name": "x-before", "value": "1"}]}},
                {"name": "answer", "match": {"path": "/x"}, "direct_response": {"status": 200, "body": "hi"},
                 "response": {"set": [{"name": "x-answer", "value": "1"}]}},
                {"name": "after", "response": {"set": [{"name": "x-after", "value": "1"}]}}
            ]}"#,
        );
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&request("GET", "h", "/x", &[]), true), Action::Pause);
        assert_eq!(s.reply().unwrap().body_text(), "hi");
        assert_eq!(s.request_header("x-a"), None, "nothing is written to a request that goes nowhere");
        assert_eq!(s.request_header(":path").as_deref(), Some("/x"));
        s.response_headers(&[(":status", "200")], true);
        assert_eq!(s.response_header("x-before").as_deref(), Some("1"));
        assert_eq!(s.response_header("x-answer").as_deref(), Some("1"));
        assert_eq!(s.response_header("x-after"), None);
        gw.tick();
        let applied =
            |rule: &str| gw.host().counter(&format!("header_rewrite_rules_applied_total;rule={rule}"));
        assert_eq!((applied("before"), applied("answer"), applied("after")), (Some(1), Some(1), Some(0)));
    }

    /// Allocations on this thread, counted by the test binary's allocator.
    mod allocations {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static COUNT: Cell<u64> = const { Cell::new(0) };
        }

        struct Counting;

        // SAFETY: every call is passed to the system allocator unchanged; counting touches a
        // thread-local integer only, which allocates nothing.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                // SAFETY: the caller's contract for `alloc` is passed on.
                unsafe { System.alloc(layout) }
            }
            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                // SAFETY: as for `alloc`.
                unsafe { System.alloc_zeroed(layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                // SAFETY: the caller's contract for `realloc` is passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: the caller's contract for `dealloc` is passed on.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        /// Allocations made on this thread by `f`.
        pub fn during(f: impl FnOnce()) -> u64 {
            let before = COUNT.with(Cell::get);
            f();
            COUNT.with(Cell::get) - before
        }
    }

    /// A request no rule matches allocates nothing for the rules, whatever they would do: the
    /// query is compared in place, no `Location`, query or body is built. What is left is the
    /// host's read of the request, the same as for a plain rule that reads as much.
    #[test]
    fn a_request_no_rule_matches_allocates_nothing_for_the_rules() {
        let absent = r#"{"name": "x-never"}"#;
        let features = gateway(&format!(
            r#"{{"match_mode": "all", "rules": [
                {{"match": {{"query_params": [{{"name": "q", "regex": "J.*"}}, {{"name": "user id", "exact": "Jörg"}}], "headers": [{absent}]}},
                  "redirect": {{"https_redirect": true, "port_redirect": 8443}}, "query": {{"remove": ["x"]}}}},
                {{"match": {{"query_params": [{{"name": "q", "prefix": "J"}}], "headers": [{absent}]}},
                  "direct_response": {{"status": 200, "json": {{"a": 1}}}}}},
                {{"match": {{"path": {{"prefix": "/"}}, "headers": [{absent}]}},
                  "query": {{"keep": ["a"], "set": [{{"name": "b", "value": "%REQ(x-user)%"}}]}}, "path_rewrite": {{"prefix": "/v2/"}}}}
            ]}}"#
        ));
        let plain = gateway(&format!(
            r#"{{"rules": [{{"match": {{"path": {{"prefix": "/"}}, "headers": [{absent}]}},
                "request": {{"add": [{{"name": "x-a", "value": "1"}}]}}}}]}}"#
        ));
        assert_eq!((features.plugin().reads.clone(), plain.plugin().reads.clone()), (Reads::All, Reads::All));
        let headers = request("GET", "h:80", "/p?q=J%C3%B6rg&user+id=J%C3%B6rg&x=1", &[(":scheme", "http")]);
        let cost = |gw: &Harness<HeaderRewrite>| {
            // A first stream fills what is kept from one request to the next (regex caches).
            gw.stream().request_headers(&headers, true);
            let mut s = gw.stream();
            let n = allocations::during(|| assert_eq!(s.request_headers(&headers, true), Action::Continue));
            assert_eq!(s.request_header(":path").as_deref(), Some("/p?q=J%C3%B6rg&user+id=J%C3%B6rg&x=1"));
            n
        };
        let (features, plain) = (cost(&features), cost(&plain));
        assert!(plain > 0, "the fake host's read allocates, so the counter counts");
        assert_eq!(features, plain);
    }
}
