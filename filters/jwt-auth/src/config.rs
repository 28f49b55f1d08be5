//! The configuration as written (JSON, [`RawConfig`], named after Envoy's `jwt_authn` where the
//! concept is the same) and as used on the request path ([`Compiled`]).
//!
//! Every problem is reported at once with its JSON path and value
//! (`providers.idp.claim_to_headers[0].header_name = "x y": not a valid HTTP header name`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

use gatewasm::config::{self, ConfigErrors};
use gatewasm::matcher::RawMatch;

use crate::authz::{self, ClaimCheck, ClaimRules, ClaimTest};
use crate::extractor::{default_locations, Location};
use crate::jwks_cache::{self, KeySource, RemoteConfig, RemoteJwks, TokenCache};
use crate::jwt::Alg;
use crate::keys::{self, Key, KeySet};
use crate::rules::{Requirement, Rule};
use crate::verifier::{normalize_audience, Outputs, Provider};

/// Default `clock_skew_seconds` (Envoy's).
pub const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Default `max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default `cache_size` (Envoy's `jwt_cache_size` default).
pub const DEFAULT_CACHE_SIZE: usize = 100;
/// Largest `cache_size`: bounds the memory of a VM (`cache_size` x `max_token_bytes`).
pub const MAX_CACHE_SIZE: usize = 100_000;

/// The plugin configuration.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    /// Providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Rules in order; the first that matches decides. At least one is required.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Let CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without a token. Default false, as Envoy.
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    /// Check RS256/384/512 and ES256/384 signatures with the host's `verify_signature` (Envoy's
    /// BoringSSL, one host call) when the host has it; off: every signature is checked by the
    /// module's own code. Default true.
    pub host_crypto: Option<bool>,
}

/// One issuer and how to verify its tokens (Envoy's `JwtProvider`).
#[derive(Debug, Deserialize, Default)]
pub struct RawProvider {
    /// The token's `iss` must equal this; unset: any issuer.
    pub issuer: Option<String>,
    /// The token's `aud` must contain one of these; empty: not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Algorithms accepted; empty: every algorithm a configured key fits.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// An inline JWKS: a JSON object, or a string holding one.
    pub local_jwks: Option<Value>,
    /// Keys given one by one: PEM public keys or HMAC secrets.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// A JWKS fetched through an Envoy cluster.
    pub remote_jwks: Option<RawRemoteJwks>,
    /// Headers that carry tokens.
    #[serde(default)]
    pub from_headers: Vec<RawHeaderLocation>,
    /// Query parameters that carry tokens.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies that carry tokens.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Tolerance for `exp` and `nbf`, seconds (default 60).
    pub clock_skew_seconds: Option<u64>,
    /// Refuse tokens without `exp`.
    #[serde(default)]
    pub require_expiration: bool,
    /// Refuse tokens whose `exp` is more than this after `iat` (or `nbf`, or now); implies
    /// `require_expiration`.
    pub max_lifetime_seconds: Option<u64>,
    /// Keep the token in the request going upstream (default false: it is removed).
    #[serde(default)]
    pub forward: bool,
    /// Header that receives the verified payload (base64url).
    pub forward_payload_header: Option<String>,
    /// Claims copied to request headers.
    #[serde(default)]
    pub claim_to_headers: Vec<RawClaimToHeader>,
    /// Largest token accepted, bytes (default 8192); larger ones are refused with 401.
    pub max_token_bytes: Option<usize>,
    /// Verified tokens kept per VM (default 100; 0 turns the cache off).
    pub cache_size: Option<usize>,
}

/// A key given alone: exactly one of `pem` and `secret`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// A PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub pem: Option<String>,
    /// An HMAC secret (text, or base64 with `base64: true`); at least 32 bytes.
    pub secret: Option<String>,
    /// The secret is base64 (standard or URL-safe).
    #[serde(default)]
    pub base64: bool,
    /// Only tokens with this `kid` (or without one) use the key.
    pub kid: Option<String>,
    /// The one algorithm the key may verify.
    pub alg: Option<String>,
}

/// Envoy's `RemoteJwks`, or OpenID Connect discovery: exactly one of `http_uri` and
/// `discovery`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteJwks {
    /// Where the JWKS is.
    pub http_uri: Option<RawHttpUri>,
    /// Find the JWKS through the provider's `issuer`: its
    /// `/.well-known/openid-configuration` document names it (`jwks_uri`).
    pub discovery: Option<RawDiscovery>,
    /// Refresh period of a good key set, seconds (default 600).
    pub cache_duration_seconds: Option<u64>,
    /// Wait after a failed fetch before the next, seconds (default 5).
    pub retry_interval_seconds: Option<u64>,
    /// Least time between fetches caused by tokens with an unknown `kid`, seconds (default 30).
    pub refetch_unknown_kid_seconds: Option<u64>,
    /// Largest JWKS document read, bytes (default 65536).
    pub max_bytes: Option<usize>,
}

/// Envoy's `HttpUri`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHttpUri {
    /// The JWKS URL; its host becomes `:authority` and its path the request path.
    #[serde(default)]
    pub uri: String,
    /// The Envoy cluster that reaches it (in Istio, `outbound|443||idp.example.com`).
    #[serde(default)]
    pub cluster: String,
    /// Fetch timeout, milliseconds (default 1000).
    pub timeout_ms: Option<u64>,
}

/// OpenID Connect discovery of a provider's JWKS.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// The Envoy cluster that reaches the issuer (and its `jwks_uri`): both fetches go through
    /// it.
    #[serde(default)]
    pub cluster: String,
    /// Timeout of each fetch, milliseconds (default 1000).
    pub timeout_ms: Option<u64>,
}

/// Envoy's `JwtHeader`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderLocation {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Text before the token (`Bearer `), matched case-insensitively.
    pub value_prefix: Option<String>,
}

/// Envoy's `JwtClaimToHeader`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawClaimToHeader {
    /// Request header to set.
    #[serde(default)]
    pub header_name: String,
    /// Claim to copy; dots reach into nested objects (`realm.role`).
    #[serde(default)]
    pub claim_name: String,
}

/// A rule: a match and a requirement.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Conditions, the SDK's one shape (`gatewasm::matcher::RawMatch`): hosts, path, methods,
    /// headers; absent: every request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// What the request needs; absent: nothing (the request is not checked).
    pub requires: Option<RawRequirement>,
}

/// Envoy's `JwtRequirement`: exactly one field.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequirement {
    /// A valid token of this provider.
    pub provider_name: Option<String>,
    /// A valid token of this provider, with these audiences instead of the provider's.
    pub provider_and_audiences: Option<RawProviderAndAudiences>,
    /// Any one of the requirements.
    pub requires_any: Option<RawRequirementList>,
    /// All of the requirements.
    pub requires_all: Option<RawRequirementList>,
    /// A missing token passes; a present one must verify.
    pub allow_missing: Option<RawEmpty>,
    /// Missing and invalid tokens pass; valid ones still produce outputs.
    pub allow_missing_or_failed: Option<RawEmpty>,
    /// With `provider_name` or `provider_and_audiences`: claims the provider's tokens must also
    /// carry, by claim path (dots reach into objects): a string, boolean or integer the claim
    /// equals, `{"any_of": [...]}` or `{"all_of": [...]}`. A valid token without them: 403.
    pub claims: Option<Value>,
    /// With `provider_name` or `provider_and_audiences`: OAuth scopes the provider's tokens must
    /// all grant (`scope`, space-separated, or `scp`). A valid token without them: 403.
    pub scopes: Option<Vec<String>>,
}

/// Envoy's `ProviderWithAudiences`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawProviderAndAudiences {
    /// Provider name.
    #[serde(default)]
    pub provider_name: String,
    /// Audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// Envoy's `JwtRequirementOrList` / `JwtRequirementAndList`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequirementList {
    /// At least two requirements.
    #[serde(default)]
    pub requirements: Vec<RawRequirement>,
}

/// `{}`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEmpty {}

/// The configuration the request path uses.
#[derive(Debug)]
pub struct Compiled {
    /// Providers, in name order.
    pub providers: Vec<Provider>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Whether CORS preflights pass unchecked.
    pub bypass_cors_preflight: bool,
    /// Every header a provider sets, lower-case: removed from every request first.
    pub output_headers: Vec<String>,
    /// Whether the host checks the signatures it can.
    pub host_crypto: bool,
}

/// Parses and compiles a configuration, reporting every problem.
pub fn parse(bytes: &[u8]) -> Result<Compiled, ConfigErrors> {
    config::parse_with(bytes, compile)
}

/// Compiles a parsed configuration, recording every problem in `errors`.
pub fn compile(raw: RawConfig, errors: &mut ConfigErrors) -> Compiled {
    let names: Vec<&String> = raw.providers.keys().collect();
    let mut providers = Vec::new();
    for (name, p) in &raw.providers {
        if let Some(p) = provider(&format!("providers.{name}"), name, p, errors) {
            providers.push(p);
        }
    }
    if raw.providers.is_empty() {
        errors.add_field("providers", "at least one provider is required");
    }
    if raw.rules.is_empty() {
        errors.add_field("rules", "at least one rule is required: without rules no request is checked");
    }
    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let matcher = r.matcher.compile(&format!("{at}.match"), errors);
        let requires =
            r.requires.as_ref().and_then(|q| requirement(&format!("{at}.requires"), q, &names, errors));
        rules.push(Rule { matcher, requires });
    }
    let mut output_headers: Vec<String> = Vec::new();
    for p in &providers {
        let names =
            p.outputs.claim_to_headers.iter().map(|(h, _)| h).chain(&p.outputs.forward_payload_header);
        for h in names {
            if !output_headers.contains(h) {
                output_headers.push(h.clone());
            }
        }
    }
    Compiled {
        providers,
        rules,
        bypass_cors_preflight: raw.bypass_cors_preflight,
        output_headers,
        host_crypto: raw.host_crypto.unwrap_or(true),
    }
}

/// Headers a provider may not write (or read a token from, for the pseudo-headers).
fn reserved_output(name: &str) -> bool {
    name.starts_with(':')
        || matches!(
            name,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "upgrade"
                | "te"
                | "keep-alive"
                | "cookie"
        )
}

fn provider(at: &str, name: &str, raw: &RawProvider, errors: &mut ConfigErrors) -> Option<Provider> {
    let before = errors.errors().len();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        errors.add(at, name, "provider names are letters, digits, `-`, `_` and `.`");
    }
    let mut algorithms = Vec::new();
    for (i, a) in raw.algorithms.iter().enumerate() {
        match Alg::parse(a) {
            Some(alg) => algorithms.push(alg),
            None => errors.add(
                format!("{at}.algorithms[{i}]"),
                a,
                "not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA; `none` is never accepted)",
            ),
        }
    }
    let keys = key_source(at, raw, errors);

    let mut locations = Vec::new();
    for (i, h) in raw.from_headers.iter().enumerate() {
        let name = h.name.to_ascii_lowercase();
        if !config::is_header_name(&name) || name.starts_with(':') {
            errors.add(
                format!("{at}.from_headers[{i}].name"),
                &h.name,
                "not a header name a token can be read from",
            );
        }
        if let Some(p) = &h.value_prefix {
            config::check_header_value(errors, format!("{at}.from_headers[{i}].value_prefix"), p);
        }
        locations.push(Location::Header { name, prefix: h.value_prefix.clone().filter(|p| !p.is_empty()) });
    }
    for (i, c) in raw.from_cookies.iter().enumerate() {
        if !config::is_header_name(c) {
            errors.add(format!("{at}.from_cookies[{i}]"), c, "not a cookie name (RFC 6265 token)");
        }
        locations.push(Location::Cookie(c.clone()));
    }
    for (i, q) in raw.from_params.iter().enumerate() {
        if q.is_empty() {
            errors.add(format!("{at}.from_params[{i}]"), q, "must not be empty");
        }
        locations.push(Location::Param(q.clone()));
    }
    if locations.is_empty() {
        locations = default_locations();
    }

    let mut claim_to_headers = Vec::new();
    for (i, c) in raw.claim_to_headers.iter().enumerate() {
        let h = c.header_name.to_ascii_lowercase();
        check_output(
            &format!("{at}.claim_to_headers[{i}].header_name"),
            &c.header_name,
            &h,
            &locations,
            errors,
        );
        if c.claim_name.is_empty() {
            errors.add(format!("{at}.claim_to_headers[{i}].claim_name"), &c.claim_name, "must not be empty");
        }
        claim_to_headers.push((h, c.claim_name.clone()));
    }
    let forward_payload_header = raw.forward_payload_header.as_ref().map(|h| {
        let lower = h.to_ascii_lowercase();
        check_output(&format!("{at}.forward_payload_header"), h, &lower, &locations, errors);
        lower
    });

    let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(64..=65536).contains(&max_token_bytes) {
        errors.add(format!("{at}.max_token_bytes"), max_token_bytes, "must be between 64 and 65536");
    }
    let cache_size = raw.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
    if cache_size > MAX_CACHE_SIZE {
        errors.add(format!("{at}.cache_size"), cache_size, format!("must be at most {MAX_CACHE_SIZE}"));
    }
    if let Some(i) = &raw.issuer {
        if i.is_empty() {
            errors.add(format!("{at}.issuer"), i, "must not be empty (leave it out to accept any issuer)");
        }
    }
    let keys = keys?;
    if errors.errors().len() > before {
        return None;
    }
    Some(Provider {
        name: name.to_string(),
        issuer: raw.issuer.clone(),
        audiences: raw.audiences.iter().map(|a| normalize_audience(a).to_string()).collect(),
        algorithms,
        locations,
        clock_skew: raw.clock_skew_seconds.unwrap_or(DEFAULT_CLOCK_SKEW),
        require_expiration: raw.require_expiration || raw.max_lifetime_seconds.is_some(),
        max_lifetime: raw.max_lifetime_seconds,
        max_token_bytes,
        outputs: Outputs { claim_to_headers, forward_payload_header, forward: raw.forward },
        keys,
        cache: RefCell::new(TokenCache::new(cache_size)),
    })
}

fn check_output(at: &str, raw: &str, lower: &str, locations: &[Location], errors: &mut ConfigErrors) {
    if !config::is_header_name(lower) || reserved_output(lower) {
        errors.add(at, raw, "not a header name this filter may set");
    } else if locations.iter().any(|l| matches!(l, Location::Header { name, .. } if name == lower)) {
        errors.add(at, raw, "the provider reads tokens from this header; it cannot also be an output");
    }
}

fn key_source(at: &str, raw: &RawProvider, errors: &mut ConfigErrors) -> Option<KeySource> {
    let given = usize::from(raw.local_jwks.is_some())
        + usize::from(!raw.keys.is_empty())
        + usize::from(raw.remote_jwks.is_some());
    if given != 1 {
        errors.add_field(at, "give exactly one of `local_jwks`, `keys`, `remote_jwks`");
        return None;
    }
    if let Some(jwks) = &raw.local_jwks {
        let text = match jwks {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return match keys::parse_jwks(&text, keys::WeakKeys::Refuse) {
            Ok(jwks) => Some(KeySource::Local(Rc::new(jwks.set))),
            Err(e) => {
                // Never quote the document: an `oct` key is a secret.
                errors.add(format!("{at}.local_jwks"), "<redacted>", e);
                None
            }
        };
    }
    if let Some(remote) = &raw.remote_jwks {
        return remote_jwks(&format!("{at}.remote_jwks"), remote, raw.issuer.as_ref(), errors)
            .map(|r| KeySource::Remote(Box::new(r)));
    }
    let mut set = KeySet::default();
    for (i, k) in raw.keys.iter().enumerate() {
        let at = format!("{at}.keys[{i}]");
        let alg = match &k.alg {
            None => None,
            Some(a) => match Alg::parse(a) {
                Some(alg) => Some(alg),
                None => {
                    errors.add(format!("{at}.alg"), a, "not a supported algorithm");
                    continue;
                }
            },
        };
        let material = match (&k.pem, &k.secret) {
            (Some(pem), None) => keys::parse_pem(pem).map_err(|e| (format!("{at}.pem"), e)),
            (None, Some(secret)) => keys::parse_secret(secret, k.base64)
                .map(keys::Material::Hmac)
                .map_err(|e| (format!("{at}.secret"), e)),
            _ => {
                errors.add_field(at, "give exactly one of `pem` and `secret`");
                continue;
            }
        };
        match material {
            Ok(material) => {
                if let Some(a) = alg {
                    if a.key_kind() != material.kind() {
                        errors.add(format!("{at}.alg"), a.name(), "does not fit this kind of key");
                        continue;
                    }
                }
                set.keys.push(Key::new(k.kid.clone(), alg, material));
            }
            // Never quote a secret back.
            Err((field, e)) => errors.add(field, "<redacted>", e),
        }
    }
    Some(KeySource::Local(Rc::new(set)))
}

fn remote_jwks(
    at: &str,
    raw: &RawRemoteJwks,
    issuer: Option<&String>,
    errors: &mut ConfigErrors,
) -> Option<RemoteJwks> {
    // Where the fetches go: the JWKS URL, or (discovery) the issuer's document.
    let (field, cluster, timeout_ms, authority, path, discovery) = match (&raw.http_uri, &raw.discovery) {
        (Some(h), None) => {
            let (authority, path) = jwks_cache::split_url(&h.uri)
                .map_err(|e| errors.add(format!("{at}.http_uri.uri"), &h.uri, e))
                .ok()?;
            ("http_uri", &h.cluster, h.timeout_ms, authority, path, None)
        }
        (None, Some(d)) => {
            let Some(issuer) = issuer else {
                errors.add_field(
                    format!("{at}.discovery"),
                    "needs the provider's `issuer`: its discovery document names the JWKS",
                );
                return None;
            };
            let at_issuer = at.strip_suffix(".remote_jwks").unwrap_or(at);
            jwks_cache::discovery_url(issuer)
                .map_err(|e| {
                    errors.add(
                        format!("{at_issuer}.issuer"),
                        issuer,
                        format!("{e} (discovery reads its document)"),
                    )
                })
                .ok()?;
            ("discovery", &d.cluster, d.timeout_ms, String::new(), String::new(), Some(issuer.clone()))
        }
        _ => {
            errors.add_field(at, "give exactly one of `http_uri` and `discovery`");
            return None;
        }
    };
    if cluster.is_empty() {
        errors.add_field(
            format!("{at}.{field}.cluster"),
            "the Envoy cluster that reaches the JWKS is required",
        );
        return None;
    }
    let secs = |v: Option<u64>, default: u64| v.unwrap_or(default).saturating_mul(1000);
    let timeout_ms = timeout_ms.unwrap_or(1000);
    if !(1..=60_000).contains(&timeout_ms) {
        errors.add(format!("{at}.{field}.timeout_ms"), timeout_ms, "must be between 1 and 60000");
    }
    let cache_duration_ms = secs(raw.cache_duration_seconds, 600);
    if cache_duration_ms == 0 {
        errors.add(format!("{at}.cache_duration_seconds"), 0, "must be at least 1");
    }
    Some(RemoteJwks::new(RemoteConfig {
        cluster: cluster.clone(),
        authority,
        path,
        timeout_ms,
        cache_duration_ms,
        retry_interval_ms: secs(raw.retry_interval_seconds, 5).max(100),
        refetch_unknown_kid_ms: secs(raw.refetch_unknown_kid_seconds, 30),
        max_bytes: raw.max_bytes.unwrap_or(65536).clamp(256, 1 << 20),
        discovery,
    }))
}

/// A JSON value quoted in an error as its JSON text.
struct Json<'v>(&'v Value);

impl std::fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `claims` and `scopes` of a requirement: `Some(None)` when it has neither, `None` when
/// they are wrong (recorded in `errors`).
#[allow(clippy::option_option)] // ok: "none given" and "refused" are different answers.
fn claim_rules(at: &str, raw: &RawRequirement, errors: &mut ConfigErrors) -> Option<Option<Box<ClaimRules>>> {
    if raw.claims.is_none() && raw.scopes.is_none() {
        return Some(None);
    }
    if raw.provider_name.is_none() && raw.provider_and_audiences.is_none() {
        let field = if raw.claims.is_some() { "claims" } else { "scopes" };
        errors.add_field(
            format!("{at}.{field}"),
            "applies to a provider: put it next to `provider_name` or `provider_and_audiences` (in each alternative of `requires_any`/`requires_all`)",
        );
        return None;
    }
    let before = errors.errors().len();
    let mut rules = ClaimRules::default();
    const FORMS: &str = "must be a string, boolean or integer the claim equals, or {\"any_of\": [...]} or {\"all_of\": [...]} of them";
    // A JSON object, read here rather than by serde: one `Value` parser serves `local_jwks` too.
    let empty = serde_json::Map::new();
    let claims = match &raw.claims {
        None => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => {
            errors.add(format!("{at}.claims"), Json(other), "must be an object of claim paths");
            &empty
        }
    };
    for (path, want) in claims {
        let field = format!("{at}.claims.{path}");
        if path.is_empty() || path.starts_with('.') || path.ends_with('.') || path.contains("..") {
            errors.add(format!("{at}.claims"), path, "not a claim path (names joined by single dots)");
            continue;
        }
        let test = match want {
            v if authz::is_comparable(v) => ClaimTest::Equals(v.clone()),
            Value::Object(o) if o.len() == 1 => {
                let (form, list) = o.iter().next().map_or(("", &Value::Null), |(k, v)| (k.as_str(), v));
                let items = match list {
                    Value::Array(items) if !items.is_empty() => items,
                    other => {
                        errors.add(format!("{field}.{form}"), Json(other), "must be a non-empty list");
                        continue;
                    }
                };
                if let Some((i, bad)) = items.iter().enumerate().find(|(_, v)| !authz::is_comparable(v)) {
                    errors.add(
                        format!("{field}.{form}[{i}]"),
                        Json(bad),
                        "must be a string, boolean or integer",
                    );
                    continue;
                }
                match form {
                    "any_of" => ClaimTest::AnyOf(items.clone()),
                    "all_of" => ClaimTest::AllOf(items.clone()),
                    _ => {
                        errors.add(&field, Json(want), FORMS);
                        continue;
                    }
                }
            }
            Value::Array(_) => {
                errors.add(
                    &field,
                    Json(want),
                    "a list is ambiguous: write {\"any_of\": [...]} or {\"all_of\": [...]}",
                );
                continue;
            }
            other => {
                errors.add(&field, Json(other), FORMS);
                continue;
            }
        };
        rules.claims.push(ClaimCheck { path: path.clone(), test });
    }
    if matches!(&raw.claims, Some(Value::Object(o)) if o.is_empty()) {
        errors.add_field(format!("{at}.claims"), "must name at least one claim (leave it out otherwise)");
    }
    for (i, scope) in raw.scopes.iter().flatten().enumerate() {
        if !authz::is_scope_token(scope) {
            errors.add(
                format!("{at}.scopes[{i}]"),
                scope,
                "not a scope (one word of printable ASCII, no spaces, quotes or backslashes)",
            );
        }
        rules.scopes.push(scope.clone());
    }
    if raw.scopes.as_ref().is_some_and(Vec::is_empty) {
        errors.add_field(format!("{at}.scopes"), "must name at least one scope (leave it out otherwise)");
    }
    (errors.errors().len() == before).then_some(Some(Box::new(rules)))
}

fn requirement(
    at: &str,
    raw: &RawRequirement,
    names: &[&String],
    errors: &mut ConfigErrors,
) -> Option<Requirement> {
    let given = [
        raw.provider_name.is_some(),
        raw.provider_and_audiences.is_some(),
        raw.requires_any.is_some(),
        raw.requires_all.is_some(),
        raw.allow_missing.is_some(),
        raw.allow_missing_or_failed.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        errors.add_field(
            at,
            "give exactly one of `provider_name`, `provider_and_audiences`, `requires_any`, `requires_all`, `allow_missing`, `allow_missing_or_failed`",
        );
        return None;
    }
    let index =
        |field: String, name: &str, errors: &mut ConfigErrors| match names.iter().position(|n| *n == name) {
            Some(i) => Some(i),
            None => {
                errors.add(field, name, "no provider has this name");
                None
            }
        };
    let claims = claim_rules(at, raw, errors);
    if let Some(name) = &raw.provider_name {
        let provider = index(format!("{at}.provider_name"), name, errors)?;
        return Some(Requirement::Provider { provider, audiences: None, claims: claims? });
    }
    if let Some(pa) = &raw.provider_and_audiences {
        let provider =
            index(format!("{at}.provider_and_audiences.provider_name"), &pa.provider_name, errors)?;
        let audiences = pa.audiences.iter().map(|a| normalize_audience(a).to_string()).collect();
        return Some(Requirement::Provider { provider, audiences: Some(audiences), claims: claims? });
    }
    if raw.allow_missing.is_some() {
        return Some(Requirement::AllowMissing);
    }
    if raw.allow_missing_or_failed.is_some() {
        return Some(Requirement::AllowMissingOrFailed);
    }
    let (field, list) = match (&raw.requires_any, &raw.requires_all) {
        (Some(l), _) => ("requires_any", l),
        (_, Some(l)) => ("requires_all", l),
        _ => return None,
    };
    if list.requirements.len() < 2 {
        errors.add_field(format!("{at}.{field}.requirements"), "at least two requirements are needed");
        return None;
    }
    let children: Vec<Requirement> = list
        .requirements
        .iter()
        .enumerate()
        .filter_map(|(i, r)| requirement(&format!("{at}.{field}.requirements[{i}]"), r, names, errors))
        .collect();
    if children.len() != list.requirements.len() {
        return None;
    }
    Some(if field == "requires_any" { Requirement::Any(children) } else { Requirement::All(children) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn fields(v: serde_json::Value) -> Vec<String> {
        parse(v.to_string().as_bytes()).unwrap_err().errors().iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn the_seeds_configuration() {
        let c = parse(
            json!({
                "providers": {"login": {
                    "keys": [{"secret": SECRET}],
                    "from_cookies": ["id_token"],
                    "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                    "from_params": ["token"],
                    "claim_to_headers": [
                        {"header_name": "x-admin-id", "claim_name": "id"},
                        {"header_name": "X-Admin-Email", "claim_name": "email"}
                    ]
                }},
                "rules": [{"match": {"prefix": "/extauth/nodebackend"}, "requires": {"provider_name": "login"}}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let p = &c.providers[0];
        assert_eq!(p.locations.len(), 3);
        assert_eq!(p.clock_skew, 60);
        assert!(!p.outputs.forward);
        assert_eq!(c.output_headers, ["x-admin-id", "x-admin-email"]);
        assert_eq!(
            c.rules[0].requires,
            Some(Requirement::Provider { provider: 0, audiences: None, claims: None })
        );
    }

    #[test]
    fn defaults_to_envoys_locations() {
        let c = parse(
            json!({"providers": {"a": {"keys": [{"secret": SECRET}]}}, "rules": [{"requires": {"allow_missing": {}}}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.providers[0].locations, default_locations());
    }

    #[test]
    fn every_error_is_named() {
        let f = fields(json!({
            "providers": {
                "a": {
                    "keys": [{"secret": "short"}, {"pem": "x", "secret": SECRET}, {"secret": SECRET, "alg": "RS256"}],
                    "algorithms": ["none"],
                    "claim_to_headers": [{"header_name": "bad name", "claim_name": ""}, {"header_name": "authorization", "claim_name": "sub"}],
                    "from_headers": [{"name": ":path"}]
                },
                "b": {"local_jwks": {"keys": []}},
                "c": {},
                "d": {"remote_jwks": {"http_uri": {"uri": "ftp://x", "cluster": "c"}}}
            },
            "rules": [
                {"match": {"prefix": "/", "path": "/x", "regex": "("}, "requires": {"provider_name": "zz"}},
                {"requires": {"requires_any": {"requirements": [{"provider_name": "a"}]}}},
                {"requires": {"provider_name": "a", "allow_missing": {}}},
                {"match": {"hosts": ["a.com:80"], "methods": ["GE T"]}}
            ],
            "unknown": 1
        }));
        for want in [
            "unknown",
            "providers.a.algorithms[0]",
            "providers.a.keys[0].secret",
            "providers.a.keys[1]",
            "providers.a.keys[2].alg",
            "providers.a.from_headers[0].name",
            "providers.a.claim_to_headers[0].header_name",
            "providers.a.claim_to_headers[0].claim_name",
            "providers.b.local_jwks",
            "providers.c",
            "providers.d.remote_jwks.http_uri.uri",
            "rules[0].match",
            "rules[0].requires.provider_name",
            "rules[1].requires.requires_any.requirements",
            "rules[2].requires",
            "rules[3].match.hosts[0]",
            "rules[3].match.methods[0]",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
    }

    #[test]
    fn secrets_are_never_quoted() {
        let err = parse(
            json!({"providers": {"a": {"keys": [{"secret": "hunter2"}]}}, "rules": [{}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn remote_jwks_url() {
        let c = parse(
            json!({"providers": {"idp": {
                "issuer": "https://idp.example.com",
                "remote_jwks": {"http_uri": {"uri": "https://idp.example.com/.well-known/jwks.json?v=1", "cluster": "outbound|443||idp.example.com"}}
            }}, "rules": [{"requires": {"provider_name": "idp"}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let KeySource::Remote(r) = &c.providers[0].keys else { panic!("remote") };
        assert_eq!(r.config.authority, "idp.example.com");
        assert_eq!(r.config.path, "/.well-known/jwks.json?v=1");
        assert_eq!(r.config.cache_duration_ms, 600_000);
    }

    #[test]
    fn discovery_needs_an_issuer_url_and_a_cluster() {
        let remote = |issuer: Value, remote: Value| {
            let mut p = json!({"remote_jwks": remote});
            if !issuer.is_null() {
                p["issuer"] = issuer;
            }
            parse(
                json!({"providers": {"idp": p}, "rules": [{"requires": {"provider_name": "idp"}}]})
                    .to_string()
                    .as_bytes(),
            )
        };
        let c = remote(
            json!("https://idp.example.com/realms/a"),
            json!({"discovery": {"cluster": "idp"}, "max_bytes": 4096}),
        )
        .unwrap();
        let KeySource::Remote(r) = &c.providers[0].keys else { panic!("remote") };
        assert_eq!(r.config.discovery.as_deref(), Some("https://idp.example.com/realms/a"));
        assert_eq!(r.target().path, "/realms/a/.well-known/openid-configuration");
        assert_eq!(r.config.max_bytes, 4096);
        for (issuer, jwks, want) in [
            (
                Value::Null,
                json!({"discovery": {"cluster": "idp"}}),
                "`providers.idp.remote_jwks.discovery`: needs the provider's `issuer`",
            ),
            (
                json!("idp.example.com"),
                json!({"discovery": {"cluster": "idp"}}),
                "`providers.idp.issuer` = \"idp.example.com\": must be an http:// or https:// URL",
            ),
            (
                json!("https://idp.example.com/?x"),
                json!({"discovery": {"cluster": "idp"}}),
                "`providers.idp.issuer` = \"https://idp.example.com/?x\": an issuer has no query",
            ),
            (
                json!("https://i"),
                json!({"discovery": {}}),
                "`providers.idp.remote_jwks.discovery.cluster`: the Envoy cluster",
            ),
            (
                json!("https://i"),
                json!({"discovery": {"cluster": "c", "timeout_ms": 0}}),
                "`providers.idp.remote_jwks.discovery.timeout_ms` = 0",
            ),
            (
                json!("https://i"),
                json!({"discovery": {"cluster": "c"}, "http_uri": {"uri": "https://i/k", "cluster": "c"}}),
                "`providers.idp.remote_jwks`: give exactly one of `http_uri` and `discovery`",
            ),
            (
                json!("https://i"),
                json!({"cache_duration_seconds": 5}),
                "`providers.idp.remote_jwks`: give exactly one",
            ),
            (
                json!("https://i"),
                json!({"discovery": {"cluster": "c", "uri": "https://i/x"}}),
                "unknown field `uri`, expected `cluster` or `timeout_ms`",
            ),
        ] {
            let err = remote(issuer, jwks).unwrap_err().to_string();
            assert!(err.contains(want), "{want} not in {err}");
        }
    }

    /// Envoy's `jwt_authn` shorthand (`prefix`, `path`, `regex` beside `hosts`) and the SDK's
    /// object form compile to the same conditions.
    #[test]
    fn both_match_forms() {
        let rules = |m: serde_json::Value| {
            let c = json!({"providers": {"a": {"keys": [{"secret": SECRET}]}}, "rules": [{"match": m}]});
            parse(c.to_string().as_bytes()).map(|c| c.rules)
        };
        use gatewasm::matcher::{MatchRequest, RequestParts};
        let get = |path| RequestParts {
            method: "GET",
            host: Some("api.example.com"),
            path,
            query: None,
            headers: None,
        };
        for (short, object) in [
            (json!({"prefix": "/api/"}), json!({"path": {"prefix": "/api/"}})),
            (json!({"path": "/api/x"}), json!({"path": {"exact": "/api/x"}})),
            (json!({"regex": "/api/[a-z]"}), json!({"path": {"regex": "/api/[a-z]"}})),
        ] {
            let (a, b) = (rules(short.clone()).unwrap(), rules(object).unwrap());
            for path in ["/api/x", "/api/", "/apix"] {
                let req = get(path);
                assert_eq!(
                    a[0].matcher.matches(&req),
                    b[0].matcher.matches(&req),
                    "{short} on {}",
                    req.path()
                );
            }
        }
        let t = rules(json!({"hosts": ["*"], "path": {"template": "/users/{id}/**"}, "headers": [{"name": "x-a", "invert": true}]}))
            .unwrap();
        assert!(t[0].matcher.matches(&get("/users/7/orders")));
        assert!(!t[0].matcher.matches(&get("/users")));
        let err = rules(json!({"prefix": "api"})).unwrap_err().to_string();
        assert!(err.contains("`rules[0].match.prefix` = \"api\": must start with `/`"), "{err}");
    }

    #[test]
    fn claims_and_scopes_compile_next_to_a_provider() {
        let c = parse(
            json!({"providers": {"a": {"keys": [{"secret": SECRET}]}}, "rules": [
                {"requires": {"provider_name": "a", "claims": {"tenant": "acme", "org.unit": {"any_of": ["eu", 7]}, "groups": {"all_of": ["dev"]}}, "scopes": ["orders:read"]}},
                {"requires": {"provider_and_audiences": {"provider_name": "a", "audiences": ["x"]}, "scopes": ["w"]}}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let Some(Requirement::Provider { claims: Some(rules), .. }) = &c.rules[0].requires else {
            panic!("claims")
        };
        assert_eq!(rules.scopes, ["orders:read"]);
        assert_eq!(
            rules.claims,
            [
                ClaimCheck { path: "groups".into(), test: ClaimTest::AllOf(vec![json!("dev")]) },
                ClaimCheck { path: "org.unit".into(), test: ClaimTest::AnyOf(vec![json!("eu"), json!(7)]) },
                ClaimCheck { path: "tenant".into(), test: ClaimTest::Equals(json!("acme")) },
            ]
        );
        assert!(
            matches!(&c.rules[1].requires, Some(Requirement::Provider { claims: Some(r), .. }) if r.scopes == ["w"])
        );
    }

    #[test]
    fn claim_errors_name_the_field_and_the_value() {
        let err = parse(
            json!({"providers": {"a": {"keys": [{"secret": SECRET}]}}, "rules": [
                {"requires": {"provider_name": "a", "claims": {
                    "groups": ["a", "b"], "n": 1.5, "o": {"one_of": ["x"]}, "e": {"any_of": []},
                    "x": {"all_of": ["a", {"b": 1}]}, "a..b": "x", "z": null
                }, "scopes": ["read write", ""]}},
                {"requires": {"allow_missing": {}, "claims": {"tenant": "acme"}}},
                {"requires": {"requires_any": {"requirements": [{"provider_name": "a"}, {"allow_missing": {}}]}, "scopes": ["r"]}},
                {"requires": {"provider_name": "a", "claims": {}, "scopes": []}},
                {"requires": {"provider_name": "a", "claims": "tenant=acme"}}
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap_err()
        .to_string();
        for want in [
            "`rules[0].requires.claims.groups` = [\"a\",\"b\"]: a list is ambiguous",
            "`rules[0].requires.claims.n` = 1.5: must be a string, boolean or integer",
            "`rules[0].requires.claims.o` = {\"one_of\":[\"x\"]}: must be",
            "`rules[0].requires.claims.e.any_of` = []: must be a non-empty list",
            "`rules[0].requires.claims.x.all_of[1]` = {\"b\":1}: must be a string, boolean or integer",
            "`rules[0].requires.claims` = \"a..b\": not a claim path",
            "`rules[0].requires.claims.z` = null",
            "`rules[0].requires.scopes[0]` = \"read write\": not a scope",
            "`rules[0].requires.scopes[1]` = \"\": not a scope",
            "`rules[1].requires.claims`: applies to a provider",
            "`rules[2].requires.scopes`: applies to a provider",
            "`rules[3].requires.claims`: must name at least one claim",
            "`rules[3].requires.scopes`: must name at least one scope",
            "`rules[4].requires.claims` = \"tenant=acme\": must be an object of claim paths",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }

    #[test]
    fn empty_configuration_is_refused() {
        let f = fields(json!({}));
        assert!(f.contains(&"providers".to_string()) && f.contains(&"rules".to_string()));
    }
}
