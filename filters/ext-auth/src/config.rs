//! The configuration as written (JSON, [`RawConfig`]) and as the request path uses it
//! ([`Settings`]: names lower-cased, regexes compiled, defaults filled in).
//!
//! [`parse`] reports every problem at once, each with its JSON path and value
//! (`allowed_statuses[1] = 503: a 5xx answer is an auth service failure and never allows`).

use std::time::Duration;

use serde::Deserialize;

use gatewasm::config::{self, ConfigErrors};
use gatewasm::matcher::{self, RawMatch};

pub use crate::rules::Action;
use crate::rules::Rule;

/// Headers sent to the auth service when the client sent them, besides `:method`, `:path` and
/// `:authority` (Ambassador AuthService's fixed list; Envoy's HTTP `ext_authz` sends only
/// `Authorization` by default).
pub const DEFAULT_REQUEST_HEADERS: [&str; 8] = [
    "authorization",
    "cookie",
    "from",
    "proxy-authorization",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Headers of a denying answer passed on to the client (besides `content-type`, which goes with
/// a body).
pub const DEFAULT_CLIENT_HEADERS: [&str; 4] =
    ["location", "set-cookie", "www-authenticate", "proxy-authenticate"];

/// Header added upstream when `failure_mode_allow` lets a request through unchecked (Envoy's
/// name), and removed from every client request.
pub const FAILURE_MODE_ALLOWED: &str = "x-envoy-auth-failure-mode-allowed";

/// Header on the check request saying whether the body sent is cut (Envoy's name); a client's
/// copy is never forwarded.
pub const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// Header an allowing answer may carry to name request headers to remove before the request
/// goes upstream (Envoy's HTTP `ext_authz` convention: comma-separated names).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Default `max_request_headers_count`: Envoy's default `max_headers_count`.
pub const DEFAULT_MAX_REQUEST_HEADERS_COUNT: usize = 100;

/// Default `max_request_headers_kb`: Envoy's default `max_request_headers_kb`.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: usize = 60;

/// Default callout timeout (Envoy's `ext_authz` default; Ambassador's is 5 s).
pub const DEFAULT_TIMEOUT_MS: u64 = 200;

/// Largest `timeout_ms`: a check that takes longer is a hung request.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Default bound on the denying answer's body passed to the client.
pub const DEFAULT_MAX_DENIED_BODY_BYTES: usize = 64 * 1024;

/// Largest `with_request_body.max_bytes` and `max_denied_body_bytes`: Envoy's default
/// per-connection buffer limit, past which Envoy itself answers 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The plugin configuration.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    /// Envoy cluster of the HTTP auth service (in Istio: `outbound|PORT||HOST`). Required unless
    /// `grpc_service` is given.
    #[serde(default)]
    pub cluster: String,
    /// Ask a gRPC auth service (Envoy's `envoy.service.auth.v3.Authorization/Check`) instead of
    /// an HTTP one: exactly one of `cluster` and `grpc_service`.
    pub grpc_service: Option<RawGrpcService>,
    /// `:authority` of the check request. Default: the client request's own, as Envoy sends it.
    pub authority: Option<String>,
    /// Give up on the auth service after this many milliseconds (default 200, at most 60000).
    pub timeout_ms: Option<u64>,
    /// Prepended to the client's path (query included) in the check request, e.g. `/extauth`.
    #[serde(default)]
    pub path_prefix: String,
    /// Client request headers sent to the auth service in addition to the defaults; a name
    /// ending in `*` is a prefix (`x-auth-*`). Names are case-insensitive.
    #[serde(default)]
    pub allowed_request_headers: Vec<String>,
    /// Send Ambassador's default request headers ([`DEFAULT_REQUEST_HEADERS`]) besides
    /// `allowed_request_headers` (default true). `false` sends only `allowed_request_headers`
    /// (and the method, path, authority and length), to reproduce a native `allowed_headers`.
    pub default_request_headers: Option<bool>,
    /// Headers added to every check request, replacing a client header of the same name.
    #[serde(default)]
    pub headers_to_add: Vec<RawHeader>,
    /// Send the request body to the auth service (buffered first). Default: no body.
    pub with_request_body: Option<RawBody>,
    /// Answer statuses that allow the request (default `[200]`); e.g. `[200, 202]` for
    /// oauth2-proxy. Any other non-5xx answer is a denial passed to the client as given.
    pub allowed_statuses: Option<Vec<u16>>,
    /// Headers of an allowing answer copied onto the request going upstream (e.g. `x-admin-id`);
    /// the client's own copies of these are always removed, checked or not.
    #[serde(default)]
    pub allowed_upstream_headers: Vec<String>,
    /// Headers of a denying answer passed to the client, in addition to the defaults.
    #[serde(default)]
    pub allowed_client_headers: Vec<String>,
    /// Headers of an allowing answer added to the client's response (e.g. `set-cookie`).
    #[serde(default)]
    pub allowed_client_headers_on_success: Vec<String>,
    /// Status sent when the auth service times out, cannot be reached or answers 5xx (default
    /// 403, as Envoy).
    pub status_on_error: Option<u16>,
    /// Let the request through when the auth service fails (default false: fail closed).
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`, mark such requests upstream with
    /// `x-envoy-auth-failure-mode-allowed: true` (default true).
    pub failure_mode_allow_header_add: Option<bool>,
    /// Bound on the denying answer's body passed to the client (default 65536); the rest is cut.
    pub max_denied_body_bytes: Option<usize>,
    /// Which requests are checked: the first rule whose `match` holds decides; none: `default`.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// What happens to a request no rule matches (default `check`).
    #[serde(default)]
    pub default: Action,
    /// Most request headers (entries, pseudo-headers included) once an allowing answer's headers
    /// are added; over it the request is refused with 500, as Envoy's `ext_authz` does. Default
    /// 100, Envoy's `max_headers_count`: set the listener's own if it differs.
    pub max_request_headers_count: Option<usize>,
    /// Most request header bytes (names and values) in KiB once an allowing answer's headers are
    /// added; over it, 500. Default 60, Envoy's `max_request_headers_kb`: set the listener's own.
    pub max_request_headers_kb: Option<usize>,
    /// Record each check's latency in the `ext_auth_check_duration_us` histogram (default
    /// false: one host call per check, and Envoy already times the auth cluster in
    /// `cluster.<cluster>.upstream_rq_time`).
    #[serde(default)]
    pub duration_histogram: bool,
}

/// A header name and value.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
}

/// The gRPC auth service.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcService {
    /// Envoy cluster of the gRPC auth service (HTTP/2). Required.
    #[serde(default)]
    pub cluster: String,
    /// Give up after this many milliseconds (default 200, at most 60000).
    pub timeout_ms: Option<u64>,
    /// Metadata (request headers) sent with every check, as Envoy's `initial_metadata`.
    #[serde(default)]
    pub initial_metadata: Vec<RawHeader>,
}

/// Request body buffering.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    /// Most body bytes held and sent (1 to 1048576). Required.
    #[serde(default)]
    pub max_bytes: usize,
    /// Send the first `max_bytes` of a longer body (marked partial) instead of answering 413.
    #[serde(default)]
    pub allow_partial: bool,
    /// gRPC mode: send the body in `raw_body` (bytes) instead of `body` (a string).
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// One rule.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Name for logs (default: the rule's index).
    pub name: Option<String>,
    /// Conditions, the SDK's one shape (`gatewasm::matcher::RawMatch`): hosts, path, methods,
    /// headers, all of which must hold; absent means every request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// What to do with a matching request.
    #[serde(default)]
    pub action: Action,
}

/// A set of header names: exact names and prefixes, lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSet {
    /// Exact names.
    pub exact: Vec<String>,
    /// Name prefixes (from `name*`).
    pub prefixes: Vec<String>,
}

impl NameSet {
    /// Whether `name` (lower-case, as Envoy gives names) is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.exact.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    fn insert(&mut self, name: &str) {
        if !self.exact.iter().any(|n| n == name) {
            self.exact.push(name.to_string());
        }
    }
}

/// Body settings in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySettings {
    /// Most bytes held and sent.
    pub max_bytes: usize,
    /// Send a cut body instead of answering 413.
    pub allow_partial: bool,
    /// gRPC mode: the body goes in `raw_body`.
    pub pack_as_bytes: bool,
}

/// The gRPC mode's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Initial metadata of every check (lower-case names).
    pub metadata: Vec<(String, String)>,
}

/// The configuration as the request path uses it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Auth service cluster (HTTP or gRPC).
    pub cluster: String,
    /// The gRPC mode, when on.
    pub grpc: Option<GrpcSettings>,
    /// gRPC mode: every client header goes into the check (`default_request_headers`).
    pub all_request_headers: bool,
    /// Fixed `:authority`, or the client's.
    pub authority: Option<String>,
    /// Callout timeout.
    pub timeout: Duration,
    /// Path prefix.
    pub path_prefix: String,
    /// Client headers sent to the auth service.
    pub request_headers: NameSet,
    /// Headers added to the check request (lower-case names).
    pub headers_to_add: Vec<(String, String)>,
    /// Body buffering, when on.
    pub body: Option<BodySettings>,
    /// Allowing statuses.
    pub allowed_statuses: Vec<u16>,
    /// Answer headers copied upstream on allow (exact names: they are also removed from every
    /// client request).
    pub upstream_headers: Vec<String>,
    /// Answer headers passed to the client on denial.
    pub client_headers: NameSet,
    /// Answer headers added to the client's response on allow.
    pub client_headers_on_success: NameSet,
    /// Status on auth service failure.
    pub status_on_error: u16,
    /// Allow on failure.
    pub failure_mode_allow: bool,
    /// Mark failure-allowed requests upstream.
    pub failure_mode_allow_header_add: bool,
    /// Bound on the denied body.
    pub max_denied_body_bytes: usize,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Whether some rule names hosts: only then is a request whose host cannot be read refused.
    pub host_rules: bool,
    /// Action when no rule matches.
    pub default: Action,
    /// Client headers removed from every request: `upstream_headers` and the failure marker.
    pub strip: Vec<String>,
    /// Record check latencies in a histogram.
    pub duration_histogram: bool,
    /// Most request header entries after an allowing answer's changes.
    pub max_request_headers_count: usize,
    /// Most request header KiB after an allowing answer's changes.
    pub max_request_headers_kb: usize,
}

/// Headers that must never be copied between requests and answers: framing and hop-by-hop
/// headers, and the Host header (`:authority` in Envoy).
pub fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "keep-alive"
            | "te"
            | "trailer"
            | "proxy-connection"
    ) || name.starts_with(':')
}

/// Parses and compiles a configuration, reporting every problem.
pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigErrors> {
    config::parse_with(bytes, |raw: RawConfig, errors| compile(&raw, errors))
}

/// Compiles a parsed configuration, recording every problem in `errors`.
pub fn compile(raw: &RawConfig, errors: &mut ConfigErrors) -> Settings {
    let grpc = raw.grpc_service.as_ref().map(|g| grpc_service(errors, raw, g));
    if raw.grpc_service.is_none() {
        check_cluster(
            errors,
            "cluster",
            &raw.cluster,
            "required: the Envoy cluster of the auth service (or give `grpc_service`)",
        );
    }
    if let Some(a) = &raw.authority {
        if a.is_empty() || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)) {
            errors.add("authority", a, "must be a host name or address, optionally with a port");
        }
    }
    let (timeout_field, timeout_ms) = match &raw.grpc_service {
        Some(g) => ("grpc_service.timeout_ms", g.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
        None => ("timeout_ms", raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
    };
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        errors.add(timeout_field, timeout_ms, format!("must be 1 to {MAX_TIMEOUT_MS}"));
    }
    if !raw.path_prefix.is_empty()
        && (!raw.path_prefix.starts_with('/')
            || raw.path_prefix.ends_with('/')
            || raw.path_prefix.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#'))
    {
        errors.add(
            "path_prefix",
            &raw.path_prefix,
            "must start with `/`, not end with `/`, and have no whitespace, control characters, `?` or `#`",
        );
    }

    let mut request_headers = NameSet::default();
    let all_request_headers = grpc.is_some() && raw.default_request_headers.unwrap_or(true);
    if grpc.is_none() && raw.default_request_headers.unwrap_or(true) {
        for name in DEFAULT_REQUEST_HEADERS {
            request_headers.insert(name);
        }
    }
    names(errors, "allowed_request_headers", &raw.allowed_request_headers, true, &mut request_headers);
    let mut headers_to_add = Vec::new();
    for (i, h) in raw.headers_to_add.iter().enumerate() {
        let at = format!("headers_to_add[{i}]");
        let name = h.name.to_ascii_lowercase();
        config::check_header_name(errors, format!("{at}.name"), &h.name);
        if is_reserved(&name) || name == PARTIAL_BODY {
            errors.add(format!("{at}.name"), &h.name, "set by the filter or by Envoy: cannot be added");
        }
        config::check_header_value(errors, format!("{at}.value"), &h.value);
        headers_to_add.push((name, h.value.clone()));
    }

    let body = raw.with_request_body.as_ref().map(|b| {
        if b.max_bytes == 0 || b.max_bytes > MAX_BODY_BYTES {
            errors.add(
                "with_request_body.max_bytes",
                b.max_bytes,
                format!("must be 1 to {MAX_BODY_BYTES} (Envoy's default buffer limit)"),
            );
        }
        if b.pack_as_bytes && grpc.is_none() {
            errors.add_field("with_request_body.pack_as_bytes", "only meaningful with `grpc_service`");
        }
        BodySettings {
            max_bytes: b.max_bytes,
            allow_partial: b.allow_partial,
            pack_as_bytes: b.pack_as_bytes,
        }
    });

    let allowed_statuses = raw.allowed_statuses.clone().unwrap_or_else(|| vec![200]);
    if allowed_statuses.is_empty() {
        errors.add_field("allowed_statuses", "give at least one status, or leave it out for [200]");
    }
    for (i, &s) in allowed_statuses.iter().enumerate() {
        if !(200..500).contains(&s) {
            let why = if (500..600).contains(&s) {
                "a 5xx answer is an auth service failure and never allows"
            } else {
                "must be a 2xx, 3xx or 4xx status"
            };
            errors.add(format!("allowed_statuses[{i}]"), s, why);
        }
    }

    let mut upstream = NameSet::default();
    names(errors, "allowed_upstream_headers", &raw.allowed_upstream_headers, false, &mut upstream);
    let mut client_headers = NameSet::default();
    for name in DEFAULT_CLIENT_HEADERS {
        client_headers.insert(name);
    }
    names(errors, "allowed_client_headers", &raw.allowed_client_headers, true, &mut client_headers);
    let mut on_success = NameSet::default();
    names(
        errors,
        "allowed_client_headers_on_success",
        &raw.allowed_client_headers_on_success,
        true,
        &mut on_success,
    );

    let status_on_error = raw.status_on_error.unwrap_or(403);
    if !(200..600).contains(&status_on_error) {
        errors.add("status_on_error", status_on_error, "must be an HTTP status from 200 to 599");
    }
    let max_denied_body_bytes = raw.max_denied_body_bytes.unwrap_or(DEFAULT_MAX_DENIED_BODY_BYTES);
    if max_denied_body_bytes > MAX_BODY_BYTES {
        errors.add(
            "max_denied_body_bytes",
            max_denied_body_bytes,
            format!("must be at most {MAX_BODY_BYTES}"),
        );
    }
    let max_request_headers_count =
        raw.max_request_headers_count.unwrap_or(DEFAULT_MAX_REQUEST_HEADERS_COUNT);
    if !(1..=10_000).contains(&max_request_headers_count) {
        errors.add("max_request_headers_count", max_request_headers_count, "must be 1 to 10000");
    }
    let max_request_headers_kb = raw.max_request_headers_kb.unwrap_or(DEFAULT_MAX_REQUEST_HEADERS_KB);
    if !(1..=8192).contains(&max_request_headers_kb) {
        errors.add("max_request_headers_kb", max_request_headers_kb, "must be 1 to 8192 (Envoy's range)");
    }
    if raw.failure_mode_allow_header_add.is_some() && !raw.failure_mode_allow {
        errors.add_field("failure_mode_allow_header_add", "only meaningful with `failure_mode_allow: true`");
    }

    let names = matcher::rule_names(errors, "rules", raw.rules.iter().map(|r| r.name.as_deref()));
    let rules: Vec<Rule> = raw
        .rules
        .iter()
        .zip(names)
        .enumerate()
        .filter_map(|(i, (r, name))| rule(errors, i, r, name))
        .collect();

    let mut strip = upstream.exact.clone();
    strip.push(FAILURE_MODE_ALLOWED.to_string());
    Settings {
        cluster: match &raw.grpc_service {
            Some(g) => g.cluster.clone(),
            None => raw.cluster.clone(),
        },
        grpc,
        all_request_headers,
        authority: raw.authority.clone(),
        timeout: Duration::from_millis(timeout_ms),
        path_prefix: raw.path_prefix.clone(),
        request_headers,
        headers_to_add,
        body,
        allowed_statuses,
        upstream_headers: upstream.exact,
        client_headers,
        client_headers_on_success: on_success,
        status_on_error,
        failure_mode_allow: raw.failure_mode_allow,
        failure_mode_allow_header_add: raw.failure_mode_allow_header_add.unwrap_or(true),
        max_denied_body_bytes,
        host_rules: rules.iter().any(|r| !r.matcher.hosts.is_empty()),
        rules,
        default: raw.default,
        strip,
        duration_histogram: raw.duration_histogram,
        max_request_headers_count,
        max_request_headers_kb,
    }
}

/// Checks a cluster name given in `field`.
fn check_cluster(errors: &mut ConfigErrors, field: &str, cluster: &str, missing: &str) {
    if cluster.is_empty() {
        errors.add_field(field, missing);
    } else if cluster.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        errors.add(field, cluster, "a cluster name has no spaces or control characters");
    }
}

/// The gRPC mode's settings; the HTTP service's own fields are refused beside it, each named.
fn grpc_service(errors: &mut ConfigErrors, raw: &RawConfig, g: &RawGrpcService) -> GrpcSettings {
    check_cluster(
        errors,
        "grpc_service.cluster",
        &g.cluster,
        "required: the Envoy cluster of the gRPC auth service",
    );
    let http_only: [(&str, bool, &str); 6] = [
        (
            "cluster",
            !raw.cluster.is_empty(),
            "give either `cluster` (an HTTP auth service) or `grpc_service`, not both",
        ),
        ("timeout_ms", raw.timeout_ms.is_some(), "with `grpc_service`, give `grpc_service.timeout_ms`"),
        (
            "path_prefix",
            !raw.path_prefix.is_empty(),
            "HTTP auth services only: a gRPC check has no path of its own",
        ),
        ("authority", raw.authority.is_some(), "HTTP auth services only"),
        (
            "headers_to_add",
            !raw.headers_to_add.is_empty(),
            "with `grpc_service`, give `grpc_service.initial_metadata`",
        ),
        (
            "allowed_statuses",
            raw.allowed_statuses.is_some(),
            "HTTP auth services only: a gRPC answer allows with status OK",
        ),
    ];
    for (field, given, why) in http_only {
        if given {
            errors.add_field(field, why);
        }
    }
    let mut metadata = Vec::new();
    for (i, h) in g.initial_metadata.iter().enumerate() {
        let at = format!("grpc_service.initial_metadata[{i}]");
        let name = h.name.to_ascii_lowercase();
        config::check_header_name(errors, format!("{at}.name"), &h.name);
        if is_reserved(&name) || name.starts_with("grpc-") || name == "content-type" || name == PARTIAL_BODY {
            errors.add(format!("{at}.name"), &h.name, "set by the gRPC client or by Envoy: cannot be sent");
        }
        config::check_header_value(errors, format!("{at}.value"), &h.value);
        metadata.push((name, h.value.clone()));
    }
    GrpcSettings { metadata }
}

/// Adds the names of `list` (field `at`) to `set`, lower-cased; `name*` is a prefix when
/// `prefixes` allows it.
fn names(errors: &mut ConfigErrors, at: &str, list: &[String], prefixes: bool, set: &mut NameSet) {
    for (i, raw) in list.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let lower = raw.to_ascii_lowercase();
        let (name, prefix) = match lower.strip_suffix('*') {
            Some(p) if prefixes => (p, true),
            Some(_) => {
                errors.add(field, raw, "exact names only here: each one is removed from client requests");
                continue;
            }
            None => (lower.as_str(), false),
        };
        if !config::is_header_name(name) || name.starts_with(':') {
            errors.add(field, raw, "not a valid HTTP header name (RFC 9110 token)");
        } else if is_reserved(name) {
            errors.add(field, raw, "a pseudo-, framing or hop-by-hop header cannot be passed on");
        } else if prefix {
            set.prefixes.push(name.to_string());
        } else {
            set.insert(name);
        }
    }
}

fn rule(errors: &mut ConfigErrors, index: usize, raw: &RawRule, name: String) -> Option<Rule> {
    let before = errors.errors().len();
    let matcher = raw.matcher.compile(&format!("rules[{index}].match"), errors);
    (errors.errors().len() == before).then_some(Rule { name, matcher, action: raw.action })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn errors_of(json: &str) -> Vec<String> {
        match parse(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_envoy_and_ambassador_defaults() {
        let s = parse(br#"{"cluster": "auth"}"#).unwrap();
        assert_eq!(s.cluster, "auth");
        assert_eq!(s.timeout, Duration::from_millis(200));
        assert_eq!(s.allowed_statuses, [200]);
        assert_eq!(s.status_on_error, 403);
        assert!(!s.failure_mode_allow);
        assert!(s.body.is_none());
        for h in DEFAULT_REQUEST_HEADERS {
            assert!(s.request_headers.contains(h), "{h}");
        }
        assert!(!s.request_headers.contains("x-api-key"));
        for h in DEFAULT_CLIENT_HEADERS {
            assert!(s.client_headers.contains(h), "{h}");
        }
        assert!(!s.client_headers.contains("authorization"), "never echo credentials to the client");
        assert_eq!(s.strip, [FAILURE_MODE_ALLOWED]);
        assert_eq!(s.default, Action::Check);
        assert!(!s.duration_histogram, "off unless asked for: Envoy times the auth cluster itself");
        assert!(parse(br#"{"cluster": "auth", "duration_histogram": true}"#).unwrap().duration_histogram);
    }

    #[test]
    fn seed_config() {
        let s = parse(
            br#"{"cluster": "example-auth", "path_prefix": "/extauth", "timeout_ms": 5000,
                "allowed_request_headers": ["X-Qotm-Session", "x-auth-*"],
                "allowed_upstream_headers": ["x-qotm-session", "X-Admin-Id", "x-admin-email"],
                "allowed_statuses": [200, 202],
                "with_request_body": {"max_bytes": 4096, "allow_partial": true},
                "rules": [{"name": "health", "match": {"path": {"exact": "/healthz"}, "methods": ["get"]},
                           "action": "skip"}]}"#,
        )
        .unwrap();
        assert!(s.request_headers.contains("x-qotm-session"));
        assert!(s.request_headers.contains("x-auth-user"));
        assert_eq!(s.upstream_headers, ["x-qotm-session", "x-admin-id", "x-admin-email"]);
        assert_eq!(s.strip, ["x-qotm-session", "x-admin-id", "x-admin-email", FAILURE_MODE_ALLOWED]);
        assert_eq!(s.body, Some(BodySettings { max_bytes: 4096, allow_partial: true, pack_as_bytes: false }));
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.rules[0].name, "health");
        assert_eq!(s.rules[0].matcher.methods, ["GET"]);
    }

    /// Without the defaults only the listed names go to the auth service (a native
    /// `allowed_headers` list: `exact` names as given, `prefix` as `name*`), matched whatever
    /// their case.
    #[test]
    fn default_request_headers_can_be_switched_off() {
        let s = parse(
            br#"{"cluster": "auth", "default_request_headers": false,
                "allowed_request_headers": ["Authorization", "X-Tenant", "x-auth-*"]}"#,
        )
        .unwrap();
        for sent in ["authorization", "x-tenant", "x-auth-user"] {
            assert!(s.request_headers.contains(sent), "{sent}");
        }
        for not_sent in ["cookie", "user-agent", "x-forwarded-for", "from", "proxy-authorization"] {
            assert!(!s.request_headers.contains(not_sent), "{not_sent}");
        }
        let s = parse(br#"{"cluster": "auth", "default_request_headers": true}"#).unwrap();
        assert!(s.request_headers.contains("cookie"));
        assert!(parse(br#"{"cluster": "auth", "default_request_headers": "no"}"#).is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = errors_of(
            r#"{"timeout_ms": 0, "path_prefix": "extauth/", "allowed_statuses": [200, 503, 99],
                "allowed_request_headers": ["bad header", "content-length"],
                "allowed_upstream_headers": ["x-id-*"],
                "headers_to_add": [{"name": "x-a", "value": "a\nb"}, {"name": "host", "value": "h"}],
                "with_request_body": {"max_bytes": 0}, "status_on_error": 99,
                "failure_mode_allow_header_add": false, "max_denied_body_bytes": 99999999,
                "max_request_headers_count": 0, "max_request_headers_kb": 9000,
                "rules": [{"match": {"path": {"prefix": "/a", "exact": "/b"}, "hosts": ["a:80"], "methods": ["G T"]}},
                          {"match": {"path": {"regex": "("}}}],
                "bogus": 1}"#,
        );
        let joined = errs.join("\n");
        for field in [
            "bogus",
            "cluster",
            "timeout_ms",
            "path_prefix",
            "allowed_statuses[1]",
            "allowed_statuses[2]",
            "allowed_request_headers[0]",
            "allowed_request_headers[1]",
            "allowed_upstream_headers[0]",
            "headers_to_add[0].value",
            "headers_to_add[1].name",
            "with_request_body.max_bytes",
            "status_on_error",
            "failure_mode_allow_header_add",
            "max_denied_body_bytes",
            "max_request_headers_count",
            "max_request_headers_kb",
            "rules[0].match.path",
            "rules[0].match.hosts[0]",
            "rules[0].match.methods[0]",
            "rules[1].match.path.regex",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(&format!("`{field}`"))),
                "no error for {field} in:\n{joined}"
            );
        }
        assert!(joined.contains("never allows"), "{joined}");
    }

    #[test]
    fn rule_names_are_checked_once_for_every_filter() {
        let errs = errors_of(
            r#"{"cluster": "a", "rules": [{"name": "api"}, {"name": "api"}, {"name": "a b"}, {}, {"name": "3"}]}"#,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.split('`').nth(1).unwrap_or_default()).collect();
        assert_eq!(fields, ["rules[1].name", "rules[2].name", "rules[4].name"], "{errs:?}");
        assert!(errs[0].contains("`rules[0]` has this name too"), "{errs:?}");
        let s = parse(br#"{"cluster": "a", "rules": [{"name": "health"}, {}]}"#).unwrap();
        assert_eq!(s.rules[1].name, "1");
    }

    #[test]
    fn templates_and_headers_select_rules() {
        use gatewasm::HeaderSnapshot;
        let s = parse(
            br#"{"cluster": "a", "rules": [
                {"match": {"path": {"template": "/public/**"}, "headers": [{"name": "x-probe", "prefix": "lb-"}]}, "action": "skip"}]}"#,
        )
        .unwrap();
        let decide = |path, h: &[(&str, &str)]| {
            crate::rules::decide(&s.rules, s.default, "GET", "h", path, &HeaderSnapshot::from_strs(h))
        };
        assert_eq!(decide("/public/a", &[("x-probe", "lb-1")]), Action::Skip);
        assert_eq!(decide("/public", &[("x-probe", "lb-1")]), Action::Skip);
        assert_eq!(decide("/public/a", &[("x-probe", "1")]), Action::Check);
        assert_eq!(decide("/private", &[("x-probe", "lb-1")]), Action::Check);
    }

    #[test]
    fn the_grpc_service_replaces_the_http_one() {
        let s = parse(
            br#"{"grpc_service": {"cluster": "authz", "timeout_ms": 300,
                "initial_metadata": [{"name": "X-Tenant", "value": "a"}]},
                "with_request_body": {"max_bytes": 10, "pack_as_bytes": true}}"#,
        )
        .unwrap();
        assert_eq!((s.cluster.as_str(), s.timeout), ("authz", Duration::from_millis(300)));
        assert_eq!(s.grpc, Some(GrpcSettings { metadata: vec![("x-tenant".into(), "a".into())] }));
        assert!(s.all_request_headers, "every header, as Envoy's gRPC check sends them");
        assert!(s.body.unwrap().pack_as_bytes);
        assert!(parse(br#"{"cluster": "auth"}"#).unwrap().grpc.is_none());

        let errs = errors_of(
            r#"{"cluster": "auth", "timeout_ms": 100, "path_prefix": "/x", "authority": "a",
                "headers_to_add": [{"name": "x-a", "value": "1"}], "allowed_statuses": [200],
                "grpc_service": {"cluster": "", "timeout_ms": 0,
                    "initial_metadata": [{"name": "grpc-timeout", "value": "1"}, {"name": "x-b", "value": "a\nb"}]}}"#,
        );
        for field in [
            "cluster",
            "timeout_ms",
            "path_prefix",
            "authority",
            "headers_to_add",
            "allowed_statuses",
            "grpc_service.cluster",
            "grpc_service.timeout_ms",
            "grpc_service.initial_metadata[0].name",
            "grpc_service.initial_metadata[1].value",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(&format!("`{field}`"))),
                "no error for {field} in {errs:?}"
            );
        }
        let errs =
            errors_of(r#"{"cluster": "auth", "with_request_body": {"max_bytes": 1, "pack_as_bytes": true}}"#);
        assert!(errs[0].starts_with("`with_request_body.pack_as_bytes`"), "{errs:?}");
        let errs = errors_of(r#"{"grpc_service": {"cluster": "a", "bogus": 1}}"#);
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }

    #[test]
    fn type_errors_stop_with_a_path() {
        let errs = errors_of(r#"{"cluster": "a", "timeout_ms": "fast"}"#);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("`timeout_ms`: invalid type: string \"fast\""), "{errs:?}");
    }
}
