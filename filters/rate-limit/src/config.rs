//! The configuration as written (JSON, [`RawConfig`]) and as the request path uses it
//! ([`Config`]: matchers compiled, descriptors and limits checked, names lower-cased).
//!
//! [`parse`] reports every problem at once, each with its JSON path and value
//! (`` `rules[0].limits[1].token_bucket.per` = "fortnight": ... ``).

use serde::Deserialize;
use serde_json::Value;

use gatewasm::config::{self, ConfigErrors};
use gatewasm::matcher::{self, RawMatch, RawPath, RequestMatch, MAX_RULE_NAME};

use crate::algorithm::{Algorithm, Unit, MAX_COUNT, UNITS};
use crate::descriptor::{ClientAddress, Descriptor, Source};

/// The domain when none is given.
pub const DEFAULT_DOMAIN: &str = "gatewasm";
/// Longest domain.
pub const MAX_DOMAIN: usize = 64;
/// Counters kept when `max_keys` is not given.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;
/// Most counters `max_keys` may ask for (every worker reads each bucket once when configured).
pub const MAX_KEYS: u64 = 1_000_000;
/// Longest constant descriptor value and descriptor key.
pub const MAX_TEXT: usize = 256;
/// Global mode's timeout when none is given: Envoy's `ratelimit` filter's default.
pub const DEFAULT_GLOBAL_TIMEOUT_MS: u64 = 20;
/// Longest global mode timeout.
pub const MAX_GLOBAL_TIMEOUT_MS: u64 = 60_000;
/// Longest `retry_after_seconds`.
pub const MAX_RETRY_AFTER: u64 = 3_600;

/// The plugin configuration as written.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    /// `local` (default): counters in this Envoy, shared by its workers. `global`: a rate limit
    /// service speaking Envoy's protocol over gRPC decides, for every gateway replica at once.
    pub mode: Option<String>,
    /// Names the counters: local mode's shared-data table (configurations with one domain share
    /// counters) and, in global mode, the rate limit service's domain. Default `gatewasm`.
    pub domain: Option<String>,
    /// Every limit only counts, logs and adds headers: nothing is refused.
    #[serde(default)]
    pub dry_run: bool,
    /// Local mode: most counters kept at once, over every worker (default 100,000).
    pub max_keys: Option<u64>,
    /// Where `RateLimit-Policy` and `RateLimit` go: `limited` (default: 429 answers only) or
    /// `always` (allowed responses too).
    pub response_headers: Option<String>,
    /// Global mode: the rate limit service.
    pub global: Option<RawGlobal>,
    /// The rules; every matching rule's limits apply.
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

/// Global mode's service: Envoy's rate limit service protocol over gRPC.
#[derive(Debug, Deserialize, Default)]
pub struct RawGlobal {
    /// The gRPC cluster of the rate limit service (HTTP/2).
    pub cluster: Option<String>,
    /// How long a decision may take, in milliseconds (default 20).
    pub timeout_ms: Option<u64>,
    /// `allow` (default): a service that fails or is late lets the request through; `deny`:
    /// refuses it.
    pub failure_mode: Option<String>,
}

/// One rule: the requests it matches and the limits that count them.
#[derive(Debug, Deserialize, Default)]
pub struct RawRule {
    /// Name in metrics, logs and the `RateLimit` fields (default: the rule's index).
    pub name: Option<String>,
    /// Conditions, the SDK's one shape: hosts, path, methods, headers; absent means every
    /// request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// This rule's limits only count, log and add headers.
    #[serde(default)]
    pub dry_run: bool,
    /// The limits, each counted apart.
    #[serde(default)]
    pub limits: Vec<RawLimit>,
}

/// One limit: what it counts by and how much it allows.
#[derive(Debug, Deserialize, Default)]
pub struct RawLimit {
    /// Name in metrics, logs and the `RateLimit` fields (default: the limit's index).
    pub name: Option<String>,
    /// The values counted apart (each a string or a one-key object, see the README); none: one
    /// counter for every request the rule matches.
    #[serde(default)]
    pub descriptors: Vec<Value>,
    /// A token bucket.
    pub token_bucket: Option<RawTokenBucket>,
    /// A fixed window.
    pub fixed_window: Option<RawFixedWindow>,
    /// Requests in flight.
    pub concurrency: Option<RawConcurrency>,
    /// Hits one request counts (default 1).
    pub hits_addend: Option<u64>,
}

/// `rate` tokens every `per`, at most `burst` kept.
#[derive(Debug, Deserialize, Default)]
pub struct RawTokenBucket {
    /// Tokens added per `per` (required).
    pub rate: Option<u64>,
    /// `second` (default), `minute`, `hour` or `day`.
    pub per: Option<String>,
    /// Most tokens kept (default: `rate`).
    pub burst: Option<u64>,
}

/// `requests` per window of one `per`.
#[derive(Debug, Deserialize, Default)]
pub struct RawFixedWindow {
    /// Hits allowed per window (required).
    pub requests: Option<u64>,
    /// `second` (default), `minute`, `hour` or `day`.
    pub per: Option<String>,
}

/// At most `max` requests in flight.
#[derive(Debug, Deserialize, Default)]
pub struct RawConcurrency {
    /// Requests in flight allowed (required).
    pub max: Option<u64>,
    /// `Retry-After` of a refused request (default 1).
    pub retry_after_seconds: Option<u64>,
}

/// Where the `RateLimit` fields go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseHeaders {
    /// Limited answers (429), and dry-run requests a limit would have refused.
    Limited,
    /// Every response of a request some limit counted.
    Always,
}

/// What global mode does when the service fails or is late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through (Envoy's `failure_mode_deny: false`).
    Allow,
    /// Refuse it.
    Deny,
}

/// Global mode's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// The rate limit service's gRPC cluster.
    pub cluster: String,
    /// How long a decision may take, in milliseconds.
    pub timeout_ms: u64,
    /// What a failure does.
    pub failure_mode: FailureMode,
}

/// A compiled limit.
#[derive(Debug, Clone)]
pub struct Limit {
    /// Its name within the rule.
    pub name: String,
    /// `rule.limit`: the policy name of the `RateLimit` fields.
    pub policy: String,
    /// The values counted apart.
    pub descriptors: Vec<Descriptor>,
    /// How it counts in local mode; `None` in global mode, where the service holds the limit.
    pub algorithm: Option<Algorithm>,
    /// Hits one request counts.
    pub hits: u64,
    /// Only counts, logs and adds headers.
    pub dry_run: bool,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// Its conditions.
    pub matcher: RequestMatch,
    /// Its limits.
    pub limits: Vec<Limit>,
}

/// The configuration as the request path uses it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The counters' namespace (local mode), the service's domain (global mode).
    pub domain: String,
    /// Global mode's service; `None` in local mode.
    pub global: Option<Global>,
    /// Most counters kept.
    pub max_keys: u64,
    /// Where the `RateLimit` fields go.
    pub response_headers: ResponseHeaders,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// Parses and compiles a configuration, reporting every problem.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigErrors> {
    config::parse_with(bytes, |raw: RawConfig, errors| compile(&raw, errors))
}

/// Compiles a parsed configuration, recording every problem in `errors`.
pub fn compile(raw: &RawConfig, errors: &mut ConfigErrors) -> Config {
    let global_mode = match raw.mode.as_deref() {
        None | Some("local") => false,
        Some("global") => true,
        Some(other) => {
            errors.add("mode", other, "must be \"local\" or \"global\"");
            false
        }
    };
    let domain = raw.domain.clone().unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
    if domain.is_empty()
        || domain.len() > MAX_DOMAIN
        || !domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        errors.add("domain", &domain, format!("must be 1 to {MAX_DOMAIN} letters, digits, `.`, `_` or `-`"));
    }
    let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(1..=MAX_KEYS).contains(&max_keys) {
        errors.add("max_keys", max_keys, format!("must be 1 to {MAX_KEYS}"));
    }
    let response_headers = match raw.response_headers.as_deref() {
        None | Some("limited") => ResponseHeaders::Limited,
        Some("always") => ResponseHeaders::Always,
        Some(other) => {
            errors.add("response_headers", other, "must be \"limited\" or \"always\"");
            ResponseHeaders::Limited
        }
    };
    if global_mode && raw.max_keys.is_some() {
        errors.add(
            "max_keys",
            max_keys,
            "only in local mode: the rate limit service keeps global mode's counters",
        );
    }
    let global = match (&raw.global, global_mode) {
        (Some(g), true) => global(g, errors),
        (None, true) => {
            errors.add_field(
                "global",
                "required with \"mode\": \"global\": the rate limit service's `cluster`",
            );
            None
        }
        (Some(_), false) => {
            errors.add_field("global", "only with \"mode\": \"global\"");
            None
        }
        (None, false) => None,
    };

    let names = matcher::rule_names(errors, "rules", raw.rules.iter().map(|r| r.name.as_deref()));
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, (rule, name)) in raw.rules.iter().zip(names).enumerate() {
        if let Some(rule) = compile_rule(&format!("rules[{i}]"), name, rule, raw.dry_run, global_mode, errors)
        {
            rules.push(rule);
        }
    }
    Config { domain, global, max_keys, response_headers, rules }
}

/// Checks global mode's settings.
pub fn global(raw: &RawGlobal, errors: &mut ConfigErrors) -> Option<Global> {
    let before = errors.errors().len();
    let cluster = raw.cluster.clone().unwrap_or_default();
    if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        errors.add(
            "global.cluster",
            &cluster,
            "the rate limit service's cluster: printable ASCII, no spaces",
        );
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_GLOBAL_TIMEOUT_MS);
    if !(1..=MAX_GLOBAL_TIMEOUT_MS).contains(&timeout_ms) {
        errors.add("global.timeout_ms", timeout_ms, format!("must be 1 to {MAX_GLOBAL_TIMEOUT_MS}"));
    }
    let failure_mode = match raw.failure_mode.as_deref() {
        None | Some("allow") => FailureMode::Allow,
        Some("deny") => FailureMode::Deny,
        Some(other) => {
            errors.add("global.failure_mode", other, "must be \"allow\" or \"deny\"");
            FailureMode::Allow
        }
    };
    (errors.errors().len() == before).then_some(Global { cluster, timeout_ms, failure_mode })
}

fn compile_rule(
    at: &str,
    name: String,
    raw: &RawRule,
    dry_run: bool,
    global_mode: bool,
    errors: &mut ConfigErrors,
) -> Option<Rule> {
    let before = errors.errors().len();
    let matcher = raw.matcher.compile(&format!("{at}.match"), errors);
    let path = path_text(&raw.matcher);
    if raw.limits.is_empty() {
        errors
            .add_field(format!("{at}.limits"), "a rule without limits limits nothing: give it at least one");
    }
    let limit_names = limit_names(at, &raw.limits, errors);
    let mut limits = Vec::with_capacity(raw.limits.len());
    for (i, (limit, limit_name)) in raw.limits.iter().zip(limit_names).enumerate() {
        let at = format!("{at}.limits[{i}]");
        let policy = format!("{name}.{limit_name}");
        let dry_run = dry_run || raw.dry_run;
        let mut descriptors = Vec::with_capacity(limit.descriptors.len());
        for (j, d) in limit.descriptors.iter().enumerate() {
            if let Some(d) = descriptor(&format!("{at}.descriptors[{j}]"), d, path.as_deref(), errors) {
                descriptors.push(d);
            }
        }
        if global_mode && limit.descriptors.is_empty() {
            errors.add_field(
                format!("{at}.descriptors"),
                "global mode sends descriptors to the rate limit service: give at least one (`{\"constant\": \"...\"}` for one counter)",
            );
        }
        let algorithm = algorithm(&at, limit, global_mode, errors);
        let hits = hits(&at, limit, algorithm.as_ref(), errors);
        if algorithm.is_some() || global_mode {
            limits.push(Limit { name: limit_name, policy, descriptors, algorithm, hits, dry_run });
        }
    }
    (errors.errors().len() == before).then_some(Rule { name, matcher, limits })
}

/// The rule's path condition as written, for the `path` descriptor.
fn path_text(raw: &RawMatch) -> Option<String> {
    match &raw.path {
        Some(RawPath::Exact(p)) => Some(p.clone()),
        Some(RawPath::Match(m)) => m
            .exact
            .clone()
            .or_else(|| m.prefix.clone())
            .or_else(|| m.regex.clone())
            .or_else(|| m.template.clone()),
        None => raw.prefix.clone().or_else(|| raw.regex.clone()),
    }
}

/// Limit names: as rule names (1 to 64 printable characters), unique within the rule; a limit
/// without one is named by its index.
fn limit_names(at: &str, limits: &[RawLimit], errors: &mut ConfigErrors) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let name = limit.name.clone().unwrap_or_else(|| i.to_string());
        let field = format!("{at}.limits[{i}].name");
        if limit.name.is_some()
            && (name.is_empty() || name.len() > MAX_RULE_NAME || !name.bytes().all(|b| b.is_ascii_graphic()))
        {
            errors.add(
                &field,
                &name,
                format!("must be 1 to {MAX_RULE_NAME} printable ASCII characters, without spaces"),
            );
        }
        if let Some(first) = out.iter().position(|n| *n == name) {
            errors.add(
                field,
                &name,
                format!("`{at}.limits[{first}]` has this name too: limit names are unique within a rule (a limit without one is named by its index)"),
            );
        }
        out.push(name);
    }
    out
}

/// A JSON value quoted in an error as it is written (`42`, `"x"`, `{"a":1}`).
struct Json<'a>(&'a Value);

impl std::fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The descriptor kinds, for error messages.
const KINDS: &str = "`client_address`, `host`, `path`, `method`, `header`, `jwt_claim_header` or `constant`";

/// One descriptor entry: a string naming a kind without arguments (`"client_address"`), or an
/// object with one kind and optionally `key`.
fn descriptor(
    at: &str,
    raw: &Value,
    rule_path: Option<&str>,
    errors: &mut ConfigErrors,
) -> Option<Descriptor> {
    let (kind, args, key) = match raw {
        Value::String(kind) => (kind.as_str(), None, None),
        Value::Object(map) => {
            let mut kinds = map.iter().filter(|(k, _)| k.as_str() != "key");
            let (Some((kind, args)), None) = (kinds.next(), kinds.next()) else {
                errors.add(at, Json(raw), format!("give exactly one of {KINDS} (and optionally `key`)"));
                return None;
            };
            (kind.as_str(), Some(args), map.get("key"))
        }
        _ => {
            errors.add(at, Json(raw), format!("a descriptor is one of {KINDS}, as a string or an object"));
            return None;
        }
    };
    let field = |name: &str| format!("{at}.{name}");
    let before = errors.errors().len();
    let no_args = |errors: &mut ConfigErrors| {
        if let Some(args) = args.filter(|a| !matches!(a, Value::Object(m) if m.is_empty())) {
            errors.add(field(kind), Json(args), "takes no settings: write it as a string, or with `{}`");
        }
    };
    let (source, default_key) = match kind {
        "client_address" => {
            (Source::ClientAddress(client_address(&field(kind), args, errors)), "remote_address".to_string())
        }
        "host" => {
            no_args(errors);
            (Source::Host, "host".to_string())
        }
        "method" => {
            no_args(errors);
            (Source::Method, "method".to_string())
        }
        "path" => {
            no_args(errors);
            let Some(path) = rule_path else {
                errors.add_field(
                    at,
                    "counts by the rule's path condition, and the rule has none (`match.path`, `match.prefix` or `match.regex`)",
                );
                return None;
            };
            (Source::RulePath(path.to_string()), "path".to_string())
        }
        "header" | "jwt_claim_header" => {
            let name = header_name(&field(kind), args, errors)?;
            let source = if kind == "header" {
                Source::Header(name.clone())
            } else {
                Source::JwtClaimHeader(name.clone())
            };
            (source, name)
        }
        "constant" => match args {
            Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_TEXT => {
                (Source::Constant(c.clone()), "generic_key".to_string())
            }
            other => {
                errors.add(
                    field(kind),
                    Json(other.unwrap_or(&Value::Null)),
                    format!("a non-empty string of at most {MAX_TEXT} bytes"),
                );
                return None;
            }
        },
        other => {
            errors.add(at, other, format!("unknown descriptor: one of {KINDS}"));
            return None;
        }
    };
    let key = match key {
        None => default_key,
        Some(Value::String(k))
            if !k.is_empty() && k.len() <= MAX_TEXT && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            k.clone()
        }
        Some(other) => {
            errors.add(
                field("key"),
                Json(other),
                format!("1 to {MAX_TEXT} printable ASCII characters, without spaces"),
            );
            return None;
        }
    };
    (errors.errors().len() == before).then_some(Descriptor { key, source })
}

/// `header`'s and `jwt_claim_header`'s argument: a request header name, lower-cased.
fn header_name(at: &str, args: Option<&Value>, errors: &mut ConfigErrors) -> Option<String> {
    match args {
        Some(Value::String(name)) if name.starts_with(':') => {
            errors.add(at, name, "a pseudo-header: use the `host`, `path` or `method` descriptor");
            None
        }
        Some(Value::String(name)) => {
            let before = errors.errors().len();
            config::check_header_name(errors, at, name);
            (errors.errors().len() == before).then(|| name.to_ascii_lowercase())
        }
        other => {
            errors.add(at, Json(other.unwrap_or(&Value::Null)), "the request header's name, as a string");
            None
        }
    }
}

/// `client_address`'s settings: `xff_hop`, `ipv4_prefix`, `ipv6_prefix`.
fn client_address(at: &str, args: Option<&Value>, errors: &mut ConfigErrors) -> ClientAddress {
    let mut c = ClientAddress::default();
    let Some(args) = args else { return c };
    let Value::Object(map) = args else {
        errors.add(at, Json(args), "an object with `xff_hop`, `ipv4_prefix`, `ipv6_prefix` (or nothing)");
        return c;
    };
    for (name, value) in map {
        let field = format!("{at}.{name}");
        let (low, high) = match name.as_str() {
            "xff_hop" => (1, 32),
            "ipv4_prefix" => (1, 32),
            "ipv6_prefix" => (1, 128),
            _ => {
                errors.add_field(field, "unknown field: `xff_hop`, `ipv4_prefix` or `ipv6_prefix`");
                continue;
            }
        };
        let Some(n) = value.as_u64().filter(|n| (low..=high).contains(n)) else {
            errors.add(field, Json(value), format!("a whole number from {low} to {high}"));
            continue;
        };
        // ok to narrow: `n` is at most 128.
        let small = u8::try_from(n).unwrap_or(u8::MAX);
        match name.as_str() {
            "xff_hop" => c.xff_hop = Some(u32::from(small)),
            "ipv4_prefix" => c.ipv4_prefix = small,
            _ => c.ipv6_prefix = small,
        }
    }
    c
}

/// A `per` unit, `second` when absent.
fn unit(at: &str, raw: Option<&str>, errors: &mut ConfigErrors) -> Unit {
    match raw {
        None => Unit::Second,
        Some(text) => Unit::parse(text).unwrap_or_else(|| {
            errors.add(at, text, format!("must be {UNITS}"));
            Unit::Second
        }),
    }
}

/// A required count from 1 to [`MAX_COUNT`].
fn count(at: String, raw: Option<u64>, what: &str, errors: &mut ConfigErrors) -> u64 {
    match raw {
        Some(n) if (1..=MAX_COUNT).contains(&n) => n,
        Some(n) => {
            errors.add(at, n, format!("must be 1 to {MAX_COUNT}"));
            1
        }
        None => {
            errors.add_field(at, format!("required: {what}"));
            1
        }
    }
}

/// The limit's algorithm: exactly one in local mode; none in global mode, where the service
/// holds the limits.
fn algorithm(at: &str, raw: &RawLimit, global_mode: bool, errors: &mut ConfigErrors) -> Option<Algorithm> {
    let given = usize::from(raw.token_bucket.is_some())
        + usize::from(raw.fixed_window.is_some())
        + usize::from(raw.concurrency.is_some());
    if global_mode {
        if given > 0 {
            errors.add_field(
                at,
                "in global mode the rate limit service's configuration holds the limits: remove `token_bucket`, `fixed_window` and `concurrency`",
            );
        }
        return None;
    }
    if given != 1 {
        errors.add_field(at, "give exactly one of `token_bucket`, `fixed_window`, `concurrency`");
        return None;
    }
    let before = errors.errors().len();
    let algorithm = if let Some(t) = &raw.token_bucket {
        let at = format!("{at}.token_bucket");
        let rate = count(format!("{at}.rate"), t.rate, "tokens added per `per`", errors);
        let per = unit(&format!("{at}.per"), t.per.as_deref(), errors);
        let burst = count(format!("{at}.burst"), Some(t.burst.unwrap_or(rate)), "", errors);
        Algorithm::TokenBucket { rate, per, burst }
    } else if let Some(w) = &raw.fixed_window {
        let at = format!("{at}.fixed_window");
        let requests = count(format!("{at}.requests"), w.requests, "hits allowed per window", errors);
        let per = unit(&format!("{at}.per"), w.per.as_deref(), errors);
        Algorithm::FixedWindow { requests, per }
    } else if let Some(c) = &raw.concurrency {
        let at = format!("{at}.concurrency");
        let max = count(format!("{at}.max"), c.max, "requests in flight allowed", errors);
        let retry_after = c.retry_after_seconds.unwrap_or(1);
        if !(1..=MAX_RETRY_AFTER).contains(&retry_after) {
            errors.add(
                format!("{at}.retry_after_seconds"),
                retry_after,
                format!("must be 1 to {MAX_RETRY_AFTER}"),
            );
        }
        Algorithm::Concurrency { max, retry_after }
    } else {
        return None;
    };
    (errors.errors().len() == before).then_some(algorithm)
}

/// `hits_addend`: 1 to what the limit holds at once (global mode: up to [`MAX_COUNT`]); not for
/// concurrency.
fn hits(at: &str, raw: &RawLimit, algorithm: Option<&Algorithm>, errors: &mut ConfigErrors) -> u64 {
    let Some(hits) = raw.hits_addend else { return 1 };
    let field = format!("{at}.hits_addend");
    let most = match algorithm {
        Some(Algorithm::TokenBucket { burst, .. }) => *burst,
        Some(Algorithm::FixedWindow { requests, .. }) => *requests,
        Some(Algorithm::Concurrency { .. }) => {
            errors.add(field, hits, "a concurrency limit counts requests in flight: one each");
            return 1;
        }
        None => MAX_COUNT,
    };
    if !(1..=most).contains(&hits) {
        errors.add(
            field,
            hits,
            format!("must be 1 to {most} (more than the limit holds would refuse every request)"),
        );
        return 1;
    }
    hits
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Config {
        parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The one error of `json`: its field, its quoted value and its message.
    fn refused(json: &str) -> Vec<String> {
        parse(json.as_bytes()).unwrap_err().errors().iter().map(ToString::to_string).collect()
    }

    fn one(json: &str, field: &str, needle: &str) {
        let errors = refused(json);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("`{field}`")) && e.contains(needle)),
            "{field} / {needle}: {errors:#?}"
        );
    }

    const GATEWAY: &str = r#"{
        "domain": "gateway",
        "rules": [
            {"name": "api", "match": {"path": {"prefix": "/api/"}},
             "limits": [{"name": "per-key", "descriptors": [{"header": "X-Api-Key"}],
                         "token_bucket": {"rate": 100, "per": "minute"}}]},
            {"name": "login", "match": {"path": "/login", "methods": ["POST"]},
             "limits": [{"name": "per-ip", "descriptors": ["client_address"],
                         "token_bucket": {"rate": 10, "per": "second"}}]},
            {"name": "tenants",
             "limits": [{"name": "per-tenant", "descriptors": [{"jwt_claim_header": "x-tenant"}],
                         "fixed_window": {"requests": 1000, "per": "second"}}]}
        ]}"#;

    #[test]
    fn the_three_sentences_of_the_gateway_team() {
        let c = ok(GATEWAY);
        assert_eq!(c.domain, "gateway");
        assert_eq!(c.max_keys, DEFAULT_MAX_KEYS);
        assert_eq!(c.response_headers, ResponseHeaders::Limited);
        let api = &c.rules[0].limits[0];
        assert_eq!(api.policy, "api.per-key");
        assert_eq!(
            api.descriptors,
            [Descriptor { key: "x-api-key".into(), source: Source::Header("x-api-key".into()) }]
        );
        assert_eq!(api.algorithm, Some(Algorithm::TokenBucket { rate: 100, per: Unit::Minute, burst: 100 }));
        assert_eq!((api.hits, api.dry_run), (1, false));
        let login = &c.rules[1].limits[0];
        assert_eq!(login.descriptors[0].key, "remote_address");
        assert_eq!(login.descriptors[0].source, Source::ClientAddress(ClientAddress::default()));
        let tenants = &c.rules[2].limits[0];
        assert_eq!(tenants.algorithm, Some(Algorithm::FixedWindow { requests: 1000, per: Unit::Second }));
        assert_eq!(tenants.descriptors[0].source, Source::JwtClaimHeader("x-tenant".into()));
    }

    #[test]
    fn descriptors_in_both_forms() {
        let c = ok(r#"{"rules": [{"name": "r", "match": {"path": {"template": "/users/{id}"}}, "limits": [{
            "descriptors": ["host", {"path": {}}, "method", {"constant": "login", "key": "route"},
                            {"client_address": {"xff_hop": 2, "ipv4_prefix": 24, "ipv6_prefix": 64}},
                            {"header": "x-plan", "key": "plan"}],
            "concurrency": {"max": 5}}]}]}"#);
        let limit = &c.rules[0].limits[0];
        let sources: Vec<_> = limit.descriptors.iter().map(|d| (d.key.as_str(), d.source.clone())).collect();
        assert_eq!(
            sources,
            [
                ("host", Source::Host),
                ("path", Source::RulePath("/users/{id}".into())),
                ("method", Source::Method),
                ("route", Source::Constant("login".into())),
                (
                    "remote_address",
                    Source::ClientAddress(ClientAddress {
                        xff_hop: Some(2),
                        ipv4_prefix: 24,
                        ipv6_prefix: 64
                    })
                ),
                ("plan", Source::Header("x-plan".into())),
            ]
        );
        assert_eq!(limit.name, "0");
        assert_eq!(limit.policy, "r.0");
        assert_eq!(limit.algorithm, Some(Algorithm::Concurrency { max: 5, retry_after: 1 }));
        // Every form of path condition names the rule's path.
        for (m, text) in [
            (r#"{"path": "/login"}"#, "/login"),
            (r#"{"prefix": "/api/"}"#, "/api/"),
            (r#"{"regex": "/u/[0-9]+"}"#, "/u/[0-9]+"),
            (r#"{"path": {"exact": "/x"}}"#, "/x"),
        ] {
            let c = ok(&format!(
                r#"{{"rules": [{{"match": {m}, "limits": [{{"descriptors": ["path"], "fixed_window": {{"requests": 1}}}}]}}]}}"#
            ));
            assert_eq!(c.rules[0].limits[0].descriptors[0].source, Source::RulePath(text.into()), "{m}");
        }
    }

    #[test]
    fn dry_run_and_defaults() {
        let c = ok(r#"{"dry_run": true, "max_keys": 64, "response_headers": "always",
            "rules": [{"limits": [{"token_bucket": {"rate": 5, "burst": 9}, "hits_addend": 3}]}]}"#);
        let limit = &c.rules[0].limits[0];
        assert!(limit.dry_run);
        assert_eq!(limit.hits, 3);
        assert!(limit.descriptors.is_empty(), "one counter for the rule");
        assert_eq!(limit.algorithm, Some(Algorithm::TokenBucket { rate: 5, per: Unit::Second, burst: 9 }));
        assert_eq!((c.max_keys, c.response_headers), (64, ResponseHeaders::Always));
        let c = ok(r#"{"rules": [{"dry_run": true, "limits": [{"fixed_window": {"requests": 1}}]},
                                  {"limits": [{"fixed_window": {"requests": 1}}]}]}"#);
        assert!(c.rules[0].limits[0].dry_run);
        assert!(!c.rules[1].limits[0].dry_run);
        assert!(ok("").rules.is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_field_and_value() {
        let limit = |l: &str| {
            format!(r#"{{"rules": [{{"name": "r", "match": {{"prefix": "/a"}}, "limits": [{l}]}}]}}"#)
        };
        one(r#"{"mode": "distributed"}"#, "mode", r#""distributed": must be "local" or "global""#);
        one(r#"{"domain": "my domain"}"#, "domain", r#""my domain""#);
        one(r#"{"domain": ""}"#, "domain", "must be 1 to 64");
        one(r#"{"max_keys": 0}"#, "max_keys", "0: must be 1 to 1000000");
        one(r#"{"max_keys": 5000000}"#, "max_keys", "5000000");
        one(r#"{"response_headers": "sometimes"}"#, "response_headers", r#""sometimes""#);
        one(r#"{"global": {"cluster": "rls"}}"#, "global", "only with \"mode\": \"global\"");
        one(r#"{"rules": [{"name": "r"}]}"#, "rules[0].limits", "limits nothing");
        one(r#"{"rules": [{"name": "a b", "limits": []}]}"#, "rules[0].name", r#""a b""#);
        one(&limit(r#"{"descriptors": ["host"]}"#), "rules[0].limits[0]", "exactly one of `token_bucket`");
        one(
            &limit(r#"{"token_bucket": {"rate": 1}, "fixed_window": {"requests": 1}}"#),
            "rules[0].limits[0]",
            "exactly one of",
        );
        one(
            &limit(r#"{"token_bucket": {"per": "second"}}"#),
            "rules[0].limits[0].token_bucket.rate",
            "required",
        );
        one(
            &limit(r#"{"token_bucket": {"rate": 0}}"#),
            "rules[0].limits[0].token_bucket.rate",
            "0: must be 1 to 100000000",
        );
        one(
            &limit(r#"{"token_bucket": {"rate": 1, "per": "fortnight"}}"#),
            "rules[0].limits[0].token_bucket.per",
            r#""fortnight": must be `second`"#,
        );
        one(
            &limit(r#"{"token_bucket": {"rate": 1, "burst": 0}}"#),
            "rules[0].limits[0].token_bucket.burst",
            "0:",
        );
        one(
            &limit(r#"{"fixed_window": {"requests": 100000001}}"#),
            "rules[0].limits[0].fixed_window.requests",
            "100000001",
        );
        one(
            &limit(r#"{"fixed_window": {"requests": 5, "per": "week"}}"#),
            "rules[0].limits[0].fixed_window.per",
            r#""week""#,
        );
        one(&limit(r#"{"concurrency": {}}"#), "rules[0].limits[0].concurrency.max", "required");
        one(
            &limit(r#"{"concurrency": {"max": 2, "retry_after_seconds": 0}}"#),
            "rules[0].limits[0].concurrency.retry_after_seconds",
            "0: must be 1 to 3600",
        );
        one(
            &limit(r#"{"concurrency": {"max": 2}, "hits_addend": 2}"#),
            "rules[0].limits[0].hits_addend",
            "one each",
        );
        one(
            &limit(r#"{"fixed_window": {"requests": 5}, "hits_addend": 6}"#),
            "rules[0].limits[0].hits_addend",
            "6: must be 1 to 5",
        );
        one(
            &limit(r#"{"token_bucket": {"rate": 5}, "hits_addend": 0}"#),
            "rules[0].limits[0].hits_addend",
            "0:",
        );
        one(
            &limit(
                r#"{"name": "x", "fixed_window": {"requests": 1}}, {"name": "x", "fixed_window": {"requests": 1}}"#,
            ),
            "rules[0].limits[1].name",
            "limit names are unique within a rule",
        );
        one(
            &limit(r#"{"name": "", "fixed_window": {"requests": 1}}"#),
            "rules[0].limits[0].name",
            r#""": must be 1 to 64"#,
        );
    }

    #[test]
    fn bad_descriptors_are_refused_naming_field_and_value() {
        let with = |d: &str| {
            format!(
                r#"{{"rules": [{{"name": "r", "limits": [{{"descriptors": [{d}], "fixed_window": {{"requests": 1}}}}]}}]}}"#
            )
        };
        let at = "rules[0].limits[0].descriptors[0]";
        one(&with(r#""cookie""#), at, r#""cookie": unknown descriptor"#);
        one(&with(r#"{"cookie": "session"}"#), at, r#""cookie": unknown descriptor"#);
        one(&with("42"), at, "42: a descriptor is one of");
        one(&with(r#"{"host": {}, "method": {}}"#), at, "exactly one of");
        one(&with(r#"{"key": "k"}"#), at, "exactly one of");
        one(&with(r#""path""#), at, "the rule has none");
        one(
            &with(r#"{"host": "example.com"}"#),
            &format!("{at}.host"),
            r#""example.com": takes no settings"#,
        );
        one(
            &with(r#"{"header": "x api"}"#),
            &format!("{at}.header"),
            r#""x api": not a valid HTTP header name"#,
        );
        one(&with(r#"{"header": ":path"}"#), &format!("{at}.header"), r#"":path": a pseudo-header"#);
        one(&with(r#"{"header": 7}"#), &format!("{at}.header"), "7: the request header's name");
        one(&with(r#"{"jwt_claim_header": ""}"#), &format!("{at}.jwt_claim_header"), r#""":"#);
        one(&with(r#"{"constant": ""}"#), &format!("{at}.constant"), "non-empty string");
        one(
            &with(r#"{"client_address": {"xff_hop": 0}}"#),
            &format!("{at}.client_address.xff_hop"),
            "0: a whole number from 1 to 32",
        );
        one(
            &with(r#"{"client_address": {"ipv6_prefix": 129}}"#),
            &format!("{at}.client_address.ipv6_prefix"),
            "129:",
        );
        one(
            &with(r#"{"client_address": {"ipv4_prefix": "24"}}"#),
            &format!("{at}.client_address.ipv4_prefix"),
            r#""24":"#,
        );
        one(
            &with(r#"{"client_address": {"trusted": 1}}"#),
            &format!("{at}.client_address.trusted"),
            "unknown field",
        );
        one(&with(r#"{"client_address": 1}"#), &format!("{at}.client_address"), "1: an object");
        one(&with(r#"{"header": "x-a", "key": "a b"}"#), &format!("{at}.key"), r#""a b":"#);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        one(
            r#"{"rules": [{"limits": [{"token_bucket": {"rate": 1, "brust": 2}}]}]}"#,
            "rules[0].limits[0].token_bucket.brust",
            "unknown field",
        );
        one(r#"{"dryrun": true}"#, "dryrun", "unknown field");
    }

    #[test]
    fn global_mode_sends_descriptors_to_the_service() {
        let c = ok(r#"{"mode": "global", "domain": "edge",
            "global": {"cluster": "outbound|8081||ratelimit.default.svc.cluster.local", "timeout_ms": 50,
                       "failure_mode": "deny"},
            "rules": [{"name": "api", "limits": [{"descriptors": [{"header": "x-api-key", "key": "api_key"}], "hits_addend": 2}]}]}"#);
        assert_eq!(
            c.global,
            Some(Global {
                cluster: "outbound|8081||ratelimit.default.svc.cluster.local".into(),
                timeout_ms: 50,
                failure_mode: FailureMode::Deny
            })
        );
        let limit = &c.rules[0].limits[0];
        assert_eq!((limit.algorithm.as_ref(), limit.hits, limit.policy.as_str()), (None, 2, "api.0"));
        assert_eq!(limit.descriptors[0].key, "api_key");
        assert_eq!(ok(GATEWAY).global, None);
        let mut e = ConfigErrors::new();
        let checked = super::global(
            &RawGlobal { cluster: Some("rls".into()), timeout_ms: None, failure_mode: None },
            &mut e,
        );
        assert_eq!(
            checked,
            Some(Global { cluster: "rls".into(), timeout_ms: 20, failure_mode: FailureMode::Allow })
        );
        let bad = r#"{"mode": "global", "max_keys": 10, "global": {"cluster": "", "timeout_ms": 0, "failure_mode": "panic"},
            "rules": [{"limits": [{"token_bucket": {"rate": 1}}, {"hits_addend": 0}]}]}"#;
        for (field, needle) in [
            ("global.cluster", r#""": the rate limit service's cluster"#),
            ("global.timeout_ms", "0: must be 1 to 60000"),
            ("global.failure_mode", r#""panic": must be "allow" or "deny""#),
            ("max_keys", "10: only in local mode"),
            ("rules[0].limits[0]", "the rate limit service's configuration holds the limits"),
            ("rules[0].limits[0].descriptors", "give at least one"),
            ("rules[0].limits[1].hits_addend", "0: must be 1 to"),
        ] {
            one(bad, field, needle);
        }
        one(r#"{"mode": "global"}"#, "global", "required with \"mode\": \"global\"");
    }
}
