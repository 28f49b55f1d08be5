//! The configuration as written (JSON, [`RawConfig`]) and as used on the request path
//! ([`Compiled`]: regexes compiled, templates parsed, names lower-cased).
//!
//! [`compile`] reports every problem at once, each with its JSON path and value
//! (`rules[1].request.set[0].name = "x y": not a valid HTTP header name`).

use serde::Deserialize;

use gatewasm::config::{self, ConfigErrors};
use gatewasm::matcher::{self, PathMatch, RawMatch, RequestMatch};

use crate::answer::{Answer, DirectResponse, Redirect, RedirectPath};
use crate::query::{self, QueryOp, QueryOps};
use crate::rewrite::{envoy_substitution, is_path_text, rewrite_regex, PathRewrite};
use crate::template::Template;

/// Largest direct response body: Envoy's default `max_direct_response_body_size_bytes` for its
/// own `direct_response`.
pub const MAX_BODY_BYTES: usize = 4096;

/// `Deserialize` for a configuration object through [`config::read_map`]: each key read into its
/// field with `next_value`, an absent key leaving the field's default, an unknown one left for
/// `config::parse` to report. Written out instead of derived: the derived form costs the module
/// several kilobytes per struct (a sequence form and a field enum no configuration uses).
macro_rules! deserialize_object {
    ($ty:ident, $what:literal, { $($key:literal => $field:ident),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            // Each object's reading is a function of its own: inlined into the rule's, they made
            // one function of over 20 KB, and V8 compiles a module with memory that grows with
            // its largest functions.
            #[inline(never)]
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;

                impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        config::read_map(map, $ty::default(), |object, key, map| {
                            match key {
                                $($key => object.$field = map.next_value()?,)*
                                _ => return Ok(false),
                            }
                            Ok(true)
                        })
                    }
                }

                deserializer.deserialize_map(ObjectVisitor)
            }
        }
    };
}

deserialize_object!(RawConfig, r#"the header-rewrite configuration `{"rules": [...]}`"#, {
    "match_mode" => match_mode,
    "rules" => rules,
    "strip_original_path" => strip_original_path,
});
deserialize_object!(RawRule, r#"a rule `{"match": ..., "request": ..., ...}`"#, {
    "name" => name,
    "match" => matcher,
    "request" => request,
    "response" => response,
    "host_rewrite" => host_rewrite,
    "path_rewrite" => path_rewrite,
    "query" => query,
    "redirect" => redirect,
    "direct_response" => direct_response,
});
deserialize_object!(RawQueryOps, r#"query operations `{"remove", "keep", "set", "add"}`"#, {
    "remove" => remove,
    "keep" => keep,
    "set" => set,
    "add" => add,
});
deserialize_object!(RawRedirect, r#"a redirect `{"https_redirect", "host_redirect", ...}`"#, {
    "https_redirect" => https_redirect,
    "scheme_redirect" => scheme_redirect,
    "host_redirect" => host_redirect,
    "port_redirect" => port_redirect,
    "path_redirect" => path_redirect,
    "prefix_rewrite" => prefix_rewrite,
    "regex_rewrite" => regex_rewrite,
    "response_code" => response_code,
    "strip_query" => strip_query,
});
deserialize_object!(RawDirectResponse, r#"a direct response `{"status", "body", "json", "headers"}`"#, {
    "status" => status,
    "body" => body,
    "json" => json,
    "headers" => headers,
});
deserialize_object!(RawOps, r#"header operations `{"remove", "rename", "set", "add"}`"#, {
    "remove" => remove,
    "rename" => rename,
    "set" => set,
    "add" => add,
});
deserialize_object!(RawHeader, r#"`{"name": ..., "value": ...}`"#, {
    "name" => name,
    "value" => value,
});
deserialize_object!(RawRename, r#"`{"from": ..., "to": ...}`"#, {
    "from" => from,
    "to" => to,
});
deserialize_object!(RawPathRewrite, r#"a path rewrite `{"prefix"}` or `{"regex"}`"#, {
    "prefix" => prefix,
    "regex" => regex,
});
deserialize_object!(RawRegexRewrite, r#"`{"pattern": ..., "substitution": ...}`"#, {
    "pattern" => pattern,
    "substitution" => substitution,
});

/// The plugin configuration.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// `first` (default): only the first rule whose `match` matches applies, as routes are
    /// chosen in Envoy and Istio. `all`: every matching rule applies, in order.
    pub match_mode: MatchMode,
    /// The rules, in order.
    pub rules: Vec<RawRule>,
    /// Remove every `x-envoy-original-path` a client sends. Default: on when some rule has a
    /// `path_rewrite` (the filter then sets that header itself, so upstreams must be able to
    /// trust it), off otherwise (Envoy's own behaviour: it forwards the header). Checking costs
    /// a header read per request (about 1 µs).
    pub strip_original_path: Option<bool>,
}

/// Which matching rules apply.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// The first matching rule only.
    #[default]
    First,
    /// Every matching rule, in order.
    All,
}

/// One rule: conditions and what to do when they hold.
#[derive(Debug, Default)]
pub struct RawRule {
    /// Name used in logs and in the `rule` label of the metric (default: the rule's index).
    pub name: Option<String>,
    /// Conditions, the SDK's one shape (`gatewasm::matcher::RawMatch`): hosts, path, methods,
    /// headers, all of which must hold; absent means every request.
    pub matcher: RawMatch,
    /// Operations on the request headers (what the upstream sees).
    pub request: RawOps,
    /// Operations on the response headers (what the client sees) of requests this rule matched.
    pub response: RawOps,
    /// Replaces `:authority` (the Host header) going upstream, like Ambassador's `host_rewrite`.
    pub host_rewrite: Option<String>,
    /// Rewrites the path going upstream; the query string is kept.
    pub path_rewrite: Option<RawPathRewrite>,
    /// Query parameter operations on the request (or on a redirect's `Location`).
    pub query: RawQueryOps,
    /// Answers the request with a redirect, as Envoy's route `redirect` (its field names).
    pub redirect: Option<RawRedirect>,
    /// Answers the request with a fixed response, as Envoy's route `direct_response`.
    pub direct_response: Option<RawDirectResponse>,
}

/// Query parameter operations, applied in this order: `remove`, `keep`, `set`, `add`. Names are
/// the decoded names.
#[derive(Debug, Default)]
pub struct RawQueryOps {
    /// Names of parameters to remove (every occurrence).
    pub remove: Vec<String>,
    /// When given, only parameters with these names are kept (`[]`: none).
    pub keep: Option<Vec<String>>,
    /// Parameters to set: the first occurrence gets the value in place, later ones are removed,
    /// appended when absent.
    pub set: Vec<RawHeader>,
    /// Parameters to append, keeping existing ones.
    pub add: Vec<RawHeader>,
}

impl RawQueryOps {
    /// Whether any operation is given (valid or not).
    fn is_given(&self) -> bool {
        !self.remove.is_empty() || self.keep.is_some() || !self.set.is_empty() || !self.add.is_empty()
    }
}

/// Envoy's `RedirectAction`, with its field names.
#[derive(Debug, Default)]
pub struct RawRedirect {
    /// Redirect to `https` (at most one of this and `scheme_redirect`).
    pub https_redirect: bool,
    /// Redirect to this scheme.
    pub scheme_redirect: Option<String>,
    /// Redirect to this host (no port: `port_redirect`).
    pub host_redirect: Option<String>,
    /// Redirect to this port.
    pub port_redirect: Option<RawInt>,
    /// Redirect to this path (its own query, if it has one, replaces the request's).
    pub path_redirect: Option<String>,
    /// Replace the rule's `match.path.prefix` with this.
    pub prefix_rewrite: Option<String>,
    /// Replace every match of a regex in the path.
    pub regex_rewrite: Option<RawRegexRewrite>,
    /// 301 (default), 302, 303, 307 or 308, or Envoy's names for them.
    pub response_code: Option<RawResponseCode>,
    /// Drop the request's query.
    pub strip_query: bool,
}

/// An integer field as written: an integer, or the number, text or boolean that was there
/// instead (as written), so that a wrong type is reported with its field like any other bad
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInt(pub Result<i64, String>);

impl<'de> Deserialize<'de> for RawInt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl serde::de::Visitor<'_> for IntVisitor {
            type Value = RawInt;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawInt, E> {
                Ok(RawInt(Ok(v)))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawInt, E> {
                Ok(RawInt(i64::try_from(v).map_err(|_| v.to_string())))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawInt, E> {
                // Written as JSON writes it (the standard library's float formatting would add
                // its own code to the module).
                Ok(RawInt(Err(serde_json::to_string(&v).map_err(E::custom)?)))
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawInt, E> {
                Ok(RawInt(Err(v.to_string())))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawInt, E> {
                Ok(RawInt(Err(format!("{v:?}"))))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}

impl RawInt {
    /// The integer if it is one in `range`; otherwise records `why` for `field` and the value.
    fn within(
        &self,
        range: std::ops::RangeInclusive<i64>,
        errors: &mut ConfigErrors,
        field: String,
        why: &str,
    ) -> Option<i64> {
        match &self.0 {
            Ok(n) if range.contains(n) => Some(*n),
            Ok(n) => {
                errors.add(field, n, why);
                None
            }
            Err(text) => {
                errors.add(field, format_args!("{text}"), why);
                None
            }
        }
    }
}

/// Any JSON value, kept as compact JSON text: written while it is read, with no
/// `serde_json::Value` in between (whose reading alone costs the module kilobytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawJson(pub String);

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = String::new();
        serde::de::DeserializeSeed::deserialize(JsonText(&mut out), deserializer)?;
        Ok(RawJson(out))
    }
}

/// Writes the JSON value it reads into its string.
struct JsonText<'a>(&'a mut String);

impl<'de> serde::de::DeserializeSeed<'de> for JsonText<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonText<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        // JSON has no NaN or infinity, so a parsed number is finite; written as JSON writes it.
        self.0.push_str(&serde_json::to_string(&v).map_err(E::custom)?);
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push_str(&serde_json::to_string(v).map_err(E::custom)?);
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let at = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(JsonText(self.0))?.is_none() {
                self.0.truncate(at);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push('{');
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                self.0.push(',');
            }
            first = false;
            self.0.push_str(&serde_json::to_string(&key).map_err(serde::de::Error::custom)?);
            self.0.push(':');
            map.next_value_seed(JsonText(self.0))?;
        }
        self.0.push('}');
        Ok(())
    }
}

/// A redirect status as a number (`308`) or by Envoy's `RedirectResponseCode` name
/// (`PERMANENT_REDIRECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawResponseCode {
    /// `301`.
    Number(i64),
    /// `"MOVED_PERMANENTLY"`.
    Name(String),
}

impl<'de> Deserialize<'de> for RawResponseCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl serde::de::Visitor<'_> for CodeVisitor {
            type Value = RawResponseCode;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a redirect status (301, 302, 303, 307, 308) or Envoy's name for it")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawResponseCode, E> {
                Ok(RawResponseCode::Number(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawResponseCode, E> {
                Ok(RawResponseCode::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawResponseCode, E> {
                Ok(RawResponseCode::Name(v.to_string()))
            }
        }

        deserializer.deserialize_any(CodeVisitor)
    }
}

/// Redirect statuses, by number and by Envoy's `RedirectResponseCode` name.
const REDIRECT_CODES: [(u16, &str); 5] = [
    (301, "MOVED_PERMANENTLY"),
    (302, "FOUND"),
    (303, "SEE_OTHER"),
    (307, "TEMPORARY_REDIRECT"),
    (308, "PERMANENT_REDIRECT"),
];

/// Envoy's `DirectResponseAction`: a status and an optional body, with headers.
#[derive(Debug, Default)]
pub struct RawDirectResponse {
    /// Status, 200 to 599 (required).
    pub status: Option<RawInt>,
    /// Body text (at most one of `body`, `json`).
    pub body: Option<String>,
    /// Body as JSON, serialized once at load; `content-type: application/json` unless `headers`
    /// give one.
    pub json: Option<RawJson>,
    /// Response headers with literal values (`content-type`, `cache-control`, ...).
    pub headers: Vec<RawHeader>,
}

/// Header operations, applied in this order: `remove`, `rename`, `set`, `add`.
#[derive(Debug, Default)]
pub struct RawOps {
    /// Names of headers to remove (every value).
    pub remove: Vec<String>,
    /// Headers to move to a new name: the target is replaced by every value of the source.
    pub rename: Vec<RawRename>,
    /// Headers to set, replacing any existing value.
    pub set: Vec<RawHeader>,
    /// Headers to append, keeping existing values.
    pub add: Vec<RawHeader>,
}

/// A header name and a value template.
#[derive(Debug, Default)]
pub struct RawHeader {
    /// Header name.
    pub name: String,
    /// Value, with substitutions (see the README).
    pub value: Option<String>,
}

/// A rename.
#[derive(Debug, Default)]
pub struct RawRename {
    /// Current name.
    pub from: String,
    /// New name.
    pub to: String,
}

/// Exactly one of `prefix`, `regex`.
#[derive(Debug, Default)]
pub struct RawPathRewrite {
    /// Replaces the rule's `match.path.prefix` (required) with this.
    pub prefix: Option<String>,
    /// Replaces every match of a regex in the path.
    pub regex: Option<RawRegexRewrite>,
}

/// Envoy's `regex_rewrite`.
#[derive(Debug, Default)]
pub struct RawRegexRewrite {
    /// Pattern (regex-lite syntax), matched anywhere in the path, every match replaced.
    pub pattern: String,
    /// Replacement: `\1`..`\9` insert groups, `\\` a backslash.
    pub substitution: String,
}

/// One header operation with a parsed value.
#[derive(Debug, Clone)]
pub struct HeaderOp {
    /// Lower-cased name.
    pub name: String,
    /// Value template.
    pub value: Template,
}

/// Compiled operations on one header map.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    /// Names to remove.
    pub remove: Vec<String>,
    /// `(from, to)` pairs.
    pub rename: Vec<(String, String)>,
    /// Headers to set.
    pub set: Vec<HeaderOp>,
    /// Headers to append.
    pub add: Vec<HeaderOp>,
}

impl Ops {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Every value template.
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set.iter().chain(&self.add).map(|op| &op.value)
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name (or index) for logs and metrics.
    pub name: String,
    /// Conditions.
    pub matcher: RequestMatch,
    /// Request operations.
    pub request: Ops,
    /// Response operations.
    pub response: Ops,
    /// New `:authority`.
    pub host_rewrite: Option<String>,
    /// Path rewrite.
    pub path_rewrite: Option<PathRewrite>,
    /// Query parameter operations.
    pub query: QueryOps,
    /// The answer, when the rule answers the request itself.
    pub answer: Option<Answer>,
}

/// The configuration as the request path uses it.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Which matching rules apply.
    pub mode: MatchMode,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Request header names read by matches, templates and redirects; a slot is an index here.
    pub request_headers: Vec<String>,
    /// Whether a client's `x-envoy-original-path` is removed (explicit, or because some rule
    /// rewrites the path).
    pub strip_original_path: bool,
}

/// Hop-by-hop and framing headers: setting one can corrupt the message.
const FRAMING: [&str; 7] =
    ["content-length", "transfer-encoding", "connection", "upgrade", "keep-alive", "te", "proxy-connection"];

/// Headers that header operations may not touch, and why.
fn reserved(name: &str) -> Option<&'static str> {
    match name {
        "host" => Some("the Host header is `:authority` in Envoy: use `host_rewrite`"),
        "x-envoy-original-path" => Some("set by this filter itself when it rewrites the path"),
        _ if FRAMING.contains(&name) => {
            Some("hop-by-hop or framing header: changing it can corrupt the message")
        }
        _ => None,
    }
}

/// Parses and compiles a configuration, reporting every problem.
pub fn parse(bytes: &[u8]) -> Result<Compiled, ConfigErrors> {
    config::parse_with(bytes, |raw: RawConfig, errors| compile(&raw, errors))
}

/// Compiles a parsed configuration, recording every problem in `errors`.
pub fn compile(raw: &RawConfig, errors: &mut ConfigErrors) -> Compiled {
    let names = matcher::rule_names(errors, "rules", raw.rules.iter().map(|r| r.name.as_deref()));
    let mut c = Compiler { errors, request_headers: Vec::new() };
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, (rule, name)) in raw.rules.iter().zip(names).enumerate() {
        if let Some(rule) = c.rule(&format!("rules[{i}]"), name, rule) {
            rules.push(rule);
        }
    }
    let strip_original_path =
        raw.strip_original_path.unwrap_or_else(|| rules.iter().any(|r: &Rule| r.path_rewrite.is_some()));
    Compiled { mode: raw.match_mode, rules, request_headers: c.request_headers, strip_original_path }
}

struct Compiler<'e> {
    errors: &'e mut ConfigErrors,
    request_headers: Vec<String>,
}

impl Compiler<'_> {
    fn slot(request_headers: &mut Vec<String>, name: &str) -> usize {
        match request_headers.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                request_headers.push(name.to_string());
                request_headers.len() - 1
            }
        }
    }

    fn rule(&mut self, at: &str, name: String, raw: &RawRule) -> Option<Rule> {
        let before = self.errors.errors().len();
        let matcher = raw.matcher.compile(&format!("{at}.match"), self.errors);
        // Header conditions read request headers through the slot table, as templates do.
        for h in &matcher.headers {
            Self::slot(&mut self.request_headers, &h.name);
        }
        let request = self.ops(&format!("{at}.request"), &raw.request, false);
        let response = self.ops(&format!("{at}.response"), &raw.response, true);
        let host_rewrite = raw.host_rewrite.clone().filter(|h| {
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
            if !ok {
                self.errors.add(
                    format!("{at}.host_rewrite"),
                    h,
                    "must be a host name or address, optionally with a port (letters, digits, `-._:[]`)",
                );
            }
            ok
        });
        let path_rewrite = raw
            .path_rewrite
            .as_ref()
            .and_then(|p| self.path_rewrite(&format!("{at}.path_rewrite"), p, &matcher));
        let query = self.query_ops(&format!("{at}.query"), &raw.query);
        let answer = self.answer(at, raw, &matcher);
        let rule = Rule { name, matcher, request, response, host_rewrite, path_rewrite, query, answer };
        self.answering(at, &rule, raw);
        if self.errors.errors().len() > before {
            return None;
        }
        if rule.request.is_empty()
            && rule.response.is_empty()
            && rule.host_rewrite.is_none()
            && rule.path_rewrite.is_none()
            && rule.query.is_empty()
            && rule.answer.is_none()
        {
            self.errors.add_field(
                at,
                "the rule does nothing: give it `request`, `response` or `query` operations, `host_rewrite`, `path_rewrite`, `redirect` or `direct_response`",
            );
            return None;
        }
        Some(rule)
    }

    /// Records what a rule that answers the request cannot also have (whether or not its answer
    /// is valid itself).
    fn answering(&mut self, at: &str, rule: &Rule, raw: &RawRule) {
        if raw.redirect.is_none() && raw.direct_response.is_none() {
            return;
        }
        const UPSTREAM: &str = "the rule answers the request itself (`redirect` or `direct_response`): nothing goes upstream for this to change";
        if !rule.request.is_empty() {
            self.errors.add_field(format!("{at}.request"), UPSTREAM);
        }
        if let Some(host) = &raw.host_rewrite {
            self.errors.add(format!("{at}.host_rewrite"), host, UPSTREAM);
        }
        if raw.path_rewrite.is_some() {
            self.errors.add_field(format!("{at}.path_rewrite"), UPSTREAM);
        }
        if raw.query.is_given() {
            match &raw.redirect {
                None => self.errors.add_field(format!("{at}.query"), "a direct response has no query to change"),
                Some(r) if r.strip_query => self.errors.add_field(
                    format!("{at}.query"),
                    "`redirect.strip_query` drops the query these operations change (for a new query use `keep: []` and `set`)",
                ),
                Some(_) => {}
            }
        }
    }

    /// The rule's `redirect` or `direct_response`, at most one. The compile functions of a rule's
    /// parts stay functions of their own (`inline(never)`): one rule function of them all was
    /// V8's largest to compile.
    fn answer(&mut self, at: &str, raw: &RawRule, matcher: &RequestMatch) -> Option<Answer> {
        match (&raw.redirect, &raw.direct_response) {
            (Some(_), Some(_)) => {
                self.errors.add_field(at, "give at most one of `redirect`, `direct_response`");
                None
            }
            (Some(r), None) => self.redirect(&format!("{at}.redirect"), r, matcher).map(Answer::Redirect),
            (None, Some(d)) => self.direct_response(&format!("{at}.direct_response"), d).map(Answer::Direct),
            (None, None) => None,
        }
    }

    #[inline(never)]
    fn redirect(&mut self, at: &str, raw: &RawRedirect, matcher: &RequestMatch) -> Option<Redirect> {
        let before = self.errors.errors().len();
        let scheme = match (raw.https_redirect, &raw.scheme_redirect) {
            (true, Some(_)) => {
                self.errors.add_field(at, "give at most one of `https_redirect`, `scheme_redirect`");
                None
            }
            (true, None) => Some("https".to_string()),
            (false, Some(scheme)) if is_scheme(scheme) => Some(scheme.clone()),
            (false, Some(scheme)) => {
                self.errors.add(
                    format!("{at}.scheme_redirect"),
                    scheme,
                    "not a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-` or `.`)",
                );
                None
            }
            (false, None) => None,
        };
        let host = raw.host_redirect.as_ref().filter(|host| match redirect_host_error(host) {
            None => true,
            Some(why) => {
                self.errors.add(format!("{at}.host_redirect"), host, why);
                false
            }
        });
        let port = raw.port_redirect.as_ref().and_then(|port| {
            let why = "a port from 1 to 65535 (Envoy reads 0 as no port: leave the field out)";
            port.within(1..=65535, self.errors, format!("{at}.port_redirect"), why).map(|p| format!(":{p}"))
        });
        let path = match (&raw.path_redirect, &raw.prefix_rewrite, &raw.regex_rewrite) {
            (None, None, None) => Some(RedirectPath::Request),
            (Some(path), None, None) => {
                if path.starts_with('/') && path.bytes().all(|b| b > b' ' && b != 0x7f && b != b'#') {
                    Some(RedirectPath::Replace { path: path.clone(), has_query: path.contains('?') })
                } else {
                    self.errors.add(
                        format!("{at}.path_redirect"),
                        path,
                        "must start with `/` and contain no whitespace, control characters or `#` (a `?` starts a query of its own)",
                    );
                    None
                }
            }
            (None, Some(prefix), None) => self
                .prefix_rewrite(&format!("{at}.prefix_rewrite"), prefix, matcher)
                .map(RedirectPath::Rewrite),
            (None, None, Some(rx)) => {
                self.regex_rewrite(&format!("{at}.regex_rewrite"), rx).map(RedirectPath::Rewrite)
            }
            _ => {
                self.errors
                    .add_field(at, "give at most one of `path_redirect`, `prefix_rewrite`, `regex_rewrite`");
                None
            }
        };
        let status = match &raw.response_code {
            None => Some(301),
            Some(code) => {
                let known = REDIRECT_CODES.iter().find(|(number, name)| match code {
                    RawResponseCode::Number(n) => i64::from(*number) == *n,
                    RawResponseCode::Name(s) => s == name,
                });
                if known.is_none() {
                    let why = "a redirect answers 301, 302, 303, 307 or 308 (Envoy's MOVED_PERMANENTLY, FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT)";
                    match code {
                        RawResponseCode::Number(n) => self.errors.add(format!("{at}.response_code"), n, why),
                        RawResponseCode::Name(s) => self.errors.add(format!("{at}.response_code"), s, why),
                    }
                }
                known.map(|(number, _)| *number)
            }
        };
        if self.errors.errors().len() > before {
            return None;
        }
        // Envoy's Location reads the scheme the request came with to drop a default port.
        Self::slot(&mut self.request_headers, "x-forwarded-proto");
        Some(Redirect {
            scheme,
            host: host.cloned(),
            port,
            path: path?,
            strip_query: raw.strip_query,
            status: status?,
        })
    }

    #[inline(never)]
    fn direct_response(&mut self, at: &str, raw: &RawDirectResponse) -> Option<DirectResponse> {
        let before = self.errors.errors().len();
        let status = match &raw.status {
            Some(status) => {
                let why = "a status from 200 to 599 (an informational 1xx cannot end a response)";
                status
                    .within(200..=599, self.errors, format!("{at}.status"), why)
                    .and_then(|s| u16::try_from(s).ok())
            }
            None => {
                self.errors
                    .add_field(format!("{at}.status"), "missing: the status of the answer (200 to 599)");
                None
            }
        };
        let (field, body) = match (&raw.body, &raw.json) {
            (Some(_), Some(_)) => {
                self.errors.add_field(at, "give at most one of `body`, `json`");
                ("body", Vec::new())
            }
            (Some(text), None) => ("body", text.as_bytes().to_vec()),
            (None, Some(json)) => ("json", json.0.as_bytes().to_vec()),
            (None, None) => ("body", Vec::new()),
        };
        let shown = || String::from_utf8_lossy(&body).into_owned();
        if body.len() > MAX_BODY_BYTES {
            self.errors.add(
                format!("{at}.{field}"),
                shown(),
                format!(
                    "{} bytes: at most {MAX_BODY_BYTES} (Envoy's default `max_direct_response_body_size_bytes`)",
                    body.len()
                ),
            );
        }
        if !body.is_empty() && matches!(status, Some(204 | 304)) {
            self.errors.add(format!("{at}.{field}"), shown(), "a 204 or 304 response has no body");
        }
        let mut headers = Vec::with_capacity(raw.headers.len() + 1);
        for (i, h) in raw.headers.iter().enumerate() {
            let at = format!("{at}.headers[{i}]");
            let name = self.answer_header_name(format!("{at}.name"), &h.name);
            let Some(value) = &h.value else {
                self.errors.add_field(format!("{at}.value"), "missing (use \"\" for an empty value)");
                continue;
            };
            config::check_header_value(self.errors, format!("{at}.value"), value);
            if let Some(name) = name {
                headers.push((name, value.clone()));
            }
        }
        if raw.json.is_some() && !headers.iter().any(|(n, _)| n == "content-type") {
            headers.push(("content-type".to_string(), "application/json".to_string()));
        }
        if self.errors.errors().len() > before {
            return None;
        }
        Some(DirectResponse { status: status?, headers, body })
    }

    #[inline(never)]
    fn query_ops(&mut self, at: &str, raw: &RawQueryOps) -> QueryOps {
        let mut ops = QueryOps::default();
        for (i, name) in raw.remove.iter().enumerate() {
            if self.query_name(format!("{at}.remove[{i}]"), name) {
                ops.remove.push(name.clone());
            }
        }
        if let Some(keep) = &raw.keep {
            let names =
                keep.iter().enumerate().filter(|(i, name)| self.query_name(format!("{at}.keep[{i}]"), name));
            ops.keep = Some(names.map(|(_, name)| name.clone()).collect());
        }
        for (list, raw_list, kind) in [(&mut ops.set, &raw.set, "set"), (&mut ops.add, &raw.add, "add")] {
            for (i, p) in raw_list.iter().enumerate() {
                let at = format!("{at}.{kind}[{i}]");
                let named = self.query_name(format!("{at}.name"), &p.name);
                // Written values are percent-encoded, so any text is safe in them.
                if let (Some(value), true) = (self.template(&at, p.value.as_deref(), false, false), named) {
                    list.push(QueryOp {
                        name: p.name.clone(),
                        encoded_name: query::encode(&p.name).into_owned(),
                        value,
                    });
                }
            }
        }
        ops
    }

    /// Records an error unless `name` is a query parameter name; whether it is.
    fn query_name(&mut self, at: String, name: &str) -> bool {
        let ok = matcher::is_query_name(name);
        if !ok {
            self.errors.add(at, name, matcher::NOT_A_QUERY_NAME);
        }
        ok
    }

    /// The value template of `{at}.value`: required, checked as a header value when it becomes
    /// one, `%RESP(...)%` only on the response side.
    fn template(
        &mut self,
        at: &str,
        value: Option<&str>,
        header: bool,
        response_side: bool,
    ) -> Option<Template> {
        let Some(value) = value else {
            self.errors.add_field(format!("{at}.value"), "missing (use \"\" for an empty value)");
            return None;
        };
        if header {
            let before = self.errors.errors().len();
            config::check_header_value(self.errors, format!("{at}.value"), value);
            if self.errors.errors().len() > before {
                return None;
            }
        }
        let headers = &mut self.request_headers;
        match Template::parse(value, response_side, &mut |n| Self::slot(headers, n)) {
            Ok(template) => Some(template),
            Err(e) => {
                self.errors.add(format!("{at}.value"), value, e.0);
                None
            }
        }
    }

    fn path_rewrite(
        &mut self,
        at: &str,
        raw: &RawPathRewrite,
        matcher: &RequestMatch,
    ) -> Option<PathRewrite> {
        match (&raw.prefix, &raw.regex) {
            (Some(replacement), None) => self.prefix_rewrite(&format!("{at}.prefix"), replacement, matcher),
            (None, Some(rx)) => self.regex_rewrite(&format!("{at}.regex"), rx),
            _ => {
                self.errors.add_field(at, "give exactly one of `prefix`, `regex`");
                None
            }
        }
    }

    /// A rewrite of the rule's matched prefix into `replacement` (`at` names the field).
    fn prefix_rewrite(&mut self, at: &str, replacement: &str, matcher: &RequestMatch) -> Option<PathRewrite> {
        if !replacement.starts_with('/') || !is_path_text(replacement) {
            self.errors.add(at, replacement, matcher::NOT_A_PATH);
            return None;
        }
        match &matcher.path {
            Some(PathMatch::Prefix(matched)) => {
                Some(PathRewrite::Prefix { matched: matched.clone(), replacement: replacement.to_string() })
            }
            _ => {
                self.errors.add(
                    at,
                    replacement,
                    "a prefix rewrite replaces the matched prefix: the rule needs `match.path.prefix`",
                );
                None
            }
        }
    }

    /// Envoy's `regex_rewrite` (`at` names the object).
    fn regex_rewrite(&mut self, at: &str, rx: &RawRegexRewrite) -> Option<PathRewrite> {
        let regex = match rewrite_regex(&rx.pattern) {
            Ok(r) => r,
            Err(e) => {
                self.errors.add(format!("{at}.pattern"), &rx.pattern, format!("invalid regex: {e}"));
                return None;
            }
        };
        if rx.pattern.is_empty() {
            self.errors.add(format!("{at}.pattern"), &rx.pattern, "must not be empty");
            return None;
        }
        if !is_path_text(&rx.substitution) && !rx.substitution.is_empty() {
            self.errors.add(
                format!("{at}.substitution"),
                &rx.substitution,
                "must contain no whitespace, control characters, `?` or `#`",
            );
            return None;
        }
        match envoy_substitution(&regex, &rx.substitution) {
            Ok(substitution) => Some(PathRewrite::Regex { regex, substitution }),
            Err(e) => {
                self.errors.add(format!("{at}.substitution"), &rx.substitution, e);
                None
            }
        }
    }

    /// Records an error unless `name` is a header a direct response may carry; returns it
    /// lower-cased.
    fn answer_header_name(&mut self, at: String, name: &str) -> Option<String> {
        let before = self.errors.errors().len();
        config::check_header_name(self.errors, at.clone(), name);
        if self.errors.errors().len() > before {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        if let Some(why) = reserved(&lower).filter(|_| FRAMING.contains(&lower.as_str())) {
            self.errors.add(at, name, why);
            return None;
        }
        Some(lower)
    }

    /// Records an error unless `name` is a header operations may change; returns it lower-cased.
    fn op_name(&mut self, at: String, name: &str) -> Option<String> {
        if name.starts_with(':') {
            self.errors.add(
                at,
                name,
                "pseudo-headers cannot be changed by header operations: use `host_rewrite` or `path_rewrite`",
            );
            return None;
        }
        let before = self.errors.errors().len();
        config::check_header_name(self.errors, at.clone(), name);
        if self.errors.errors().len() > before {
            return None;
        }
        let lower = name.to_ascii_lowercase();
        if let Some(why) = reserved(&lower) {
            self.errors.add(at, name, why);
            return None;
        }
        Some(lower)
    }

    #[inline(never)]
    fn ops(&mut self, at: &str, raw: &RawOps, response_side: bool) -> Ops {
        let mut ops = Ops::default();
        for (i, name) in raw.remove.iter().enumerate() {
            if let Some(n) = self.op_name(format!("{at}.remove[{i}]"), name) {
                ops.remove.push(n);
            }
        }
        for (i, r) in raw.rename.iter().enumerate() {
            let from = self.op_name(format!("{at}.rename[{i}].from"), &r.from);
            let to = self.op_name(format!("{at}.rename[{i}].to"), &r.to);
            if let (Some(from), Some(to)) = (from, to) {
                if from == to {
                    self.errors.add(format!("{at}.rename[{i}].to"), &r.to, "same name as `from`");
                } else {
                    ops.rename.push((from, to));
                }
            }
        }
        for (list, raw_list, kind) in [(&mut ops.set, &raw.set, "set"), (&mut ops.add, &raw.add, "add")] {
            for (i, h) in raw_list.iter().enumerate() {
                let at = format!("{at}.{kind}[{i}]");
                let name = self.op_name(format!("{at}.name"), &h.name);
                if let (Some(value), Some(name)) =
                    (self.template(&at, h.value.as_deref(), true, response_side), name)
                {
                    list.push(HeaderOp { name, value });
                }
            }
        }
        ops
    }
}

/// RFC 3986 scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// Why `host` cannot be a redirect's host, if it cannot: a host name or a bracketed IPv6
/// address, without port.
fn redirect_host_error(host: &str) -> Option<&'static str> {
    if host.contains(':') && !host.starts_with('[') {
        return Some("no port here (give it in `port_redirect`); an IPv6 address goes in brackets (`[::1]`)");
    }
    if host.starts_with('[') && !host.ends_with(']') {
        return Some("no port here: give it in `port_redirect`");
    }
    if gatewasm::http::normalize_host(host).is_none() {
        return Some("not a host name (letters, digits, `-`, `_`, `.`) or a bracketed IPv6 address");
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use gatewasm::matcher::HostPattern;

    fn errors(json: &str) -> Vec<(String, String)> {
        match parse(json.as_bytes()) {
            Ok(_) => panic!("config was accepted: {json}"),
            Err(e) => e
                .errors()
                .iter()
                .map(|e| (e.field.clone(), format!("{} {}", e.value.as_deref().unwrap_or(""), e.message)))
                .collect(),
        }
    }

    fn fields(json: &str) -> Vec<String> {
        errors(json).into_iter().map(|(f, _)| f).collect()
    }

    const GOOD: &str = r#"{
        "match_mode": "all",
        "rules": [
          {
            "name": "users-v2",
            "match": {
              "hosts": ["API.example.com", "*.example.org", "*"],
              "path": {"prefix": "/api/v1/"},
              "methods": ["get", "POST"],
              "headers": [
                {"name": "X-Env", "exact": "prod"},
                {"name": "x-debug"},
                {"name": "x-internal", "present": false},
                {"name": "x-version", "regex": "v[0-9]+"}
              ]
            },
            "request": {
              "remove": ["X-Drop"],
              "rename": [{"from": "x-old", "to": "x-new"}],
              "set": [{"name": "x-user", "value": "%REQ(x-user-id)%@%HOST%"}],
              "add": [{"name": "x-via", "value": "gatewasm"}]
            },
            "response": {"set": [{"name": "x-upstream", "value": "%RESP(server)% for %METHOD% %PATH%"}]},
            "host_rewrite": "backend.internal:8080",
            "path_rewrite": {"prefix": "/v2/"}
          },
          {
            "match": {"path": {"regex": "/users/[0-9]+"}},
            "path_rewrite": {"regex": {"pattern": "^/users/([0-9]+)$", "substitution": "/u/\\1"}}
          }
        ]
    }"#;

    #[test]
    fn good_config_compiles() {
        let c = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.mode, MatchMode::All);
        assert_eq!(c.rules.len(), 2);
        let r = &c.rules[0];
        assert_eq!(r.name, "users-v2");
        assert_eq!(c.rules[1].name, "1");
        assert_eq!(r.matcher.methods, ["GET", "POST"]);
        assert!(matches!(&r.matcher.hosts[0], HostPattern::Exact(h) if h == "api.example.com"));
        assert!(matches!(&r.matcher.hosts[1], HostPattern::Subdomain(h) if h == ".example.org"));
        assert!(matches!(r.matcher.hosts[2], HostPattern::Any));
        assert_eq!(r.request.remove, ["x-drop"]);
        assert_eq!(r.request.rename, [("x-old".to_string(), "x-new".to_string())]);
        assert_eq!(c.request_headers, ["x-env", "x-debug", "x-internal", "x-version", "x-user-id"]);
        assert!(matches!(&r.path_rewrite, Some(PathRewrite::Prefix { matched, replacement })
            if matched == "/api/v1/" && replacement == "/v2/"));
        assert_eq!(r.host_rewrite.as_deref(), Some("backend.internal:8080"));
    }

    #[test]
    fn empty_config_is_valid() {
        let c = parse(b"").unwrap();
        assert!(c.rules.is_empty());
        assert_eq!(c.mode, MatchMode::First);
    }

    #[test]
    fn every_error_is_reported_with_its_path_and_value() {
        let errs = errors(
            r#"{"rules": [
                {"request": {"add": [{"name": "ok", "value": "fine"}]}},
                {
                  "match": {"path": {"regex": "(unclosed"}, "hosts": ["api.example.com:443"]},
                  "request": {
                    "set": [{"name": "x y", "value": "v"}, {"name": "x-crlf", "value": "a\r\nSet-Cookie: x=1"}],
                    "add": [{"name": "x-sub", "value": "%NOPE%"}]
                  },
                  "response": {"remove": [":status"]},
                  "colour": "blue"
                }
            ]}"#,
        );
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules[1].colour",
                "rules[1].match.hosts[0]",
                "rules[1].match.path.regex",
                "rules[1].request.set[0].name",
                "rules[1].request.set[1].value",
                "rules[1].request.add[0].value",
                "rules[1].response.remove[0]",
            ],
            "{errs:#?}"
        );
        let text: Vec<&str> = errs.iter().map(|(_, t)| t.as_str()).collect();
        assert!(text[0].contains("unknown field"));
        assert!(text[1].contains("\"api.example.com:443\"") && text[1].contains("port"));
        assert!(text[2].contains("\"(unclosed\"") && text[2].contains("invalid regex"));
        assert!(text[3].contains("\"x y\"") && text[3].contains("not a valid HTTP header name"));
        assert!(text[4].contains(r#""a\r\nSet-Cookie: x=1""#) && text[4].contains("CR, LF"), "{}", text[4]);
        assert!(text[5].contains("\"%NOPE%\"") && text[5].contains("unknown substitution `%NOPE%`"));
        assert!(text[6].contains("pseudo-headers"));
    }

    #[test]
    fn error_display_names_field_and_value() {
        let err =
            parse(br#"{"rules": [{"request": {"set": [{"name": "x y", "value": "v"}]}}]}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`rules[0].request.set[0].name` = \"x y\""), "{text}");
    }

    #[test]
    fn reserved_headers() {
        let errs = errors(
            r#"{"rules": [{"request": {
                "set": [{"name": "Host", "value": "x"}, {"name": "content-length", "value": "1"}],
                "remove": ["x-envoy-original-path"]
            }}]}"#,
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        // `remove` is checked before `set`.
        assert!(errs[0].1.contains("set by this filter"));
        assert!(errs[1].1.contains("host_rewrite"));
        assert!(errs[2].1.contains("framing"));
    }

    #[test]
    fn path_rules() {
        assert_eq!(
            fields(r#"{"rules": [{"path_rewrite": {"prefix": "/v2/"}}]}"#),
            ["rules[0].path_rewrite.prefix"]
        );
        assert_eq!(
            fields(
                r#"{"rules": [{"match": {"path": {"exact": "/a", "prefix": "/a"}}, "host_rewrite": "h"}]}"#
            ),
            ["rules[0].match.path"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"match": {"path": {"prefix": "api"}}, "host_rewrite": "h"}]}"#),
            ["rules[0].match.path.prefix"]
        );
        assert_eq!(
            fields(
                r#"{"rules": [{"path_rewrite": {"regex": {"pattern": "^/(a)$", "substitution": "/\\2"}}}]}"#
            ),
            ["rules[0].path_rewrite.regex.substitution"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"path_rewrite": {"regex": {"pattern": "[", "substitution": "/"}}}]}"#),
            ["rules[0].path_rewrite.regex.pattern"]
        );
        assert_eq!(fields(r#"{"rules": [{"path_rewrite": {}}]}"#), ["rules[0].path_rewrite"]);
    }

    #[test]
    fn answers_and_query_operations_compile() {
        let c = parse(
            br#"{"match_mode": "all", "rules": [
                {"name": "tidy", "query": {"remove": ["utm_source"], "keep": ["id", "q s"],
                    "set": [{"name": "v", "value": "2"}], "add": [{"name": "by", "value": "%REQ(x-user)%"}]}},
                {"name": "moved", "match": {"path": {"prefix": "/old/"}, "query_params": [{"name": "legacy"}]},
                 "redirect": {"https_redirect": true, "host_redirect": "new.example.com", "port_redirect": 8443,
                              "prefix_rewrite": "/new/", "response_code": "PERMANENT_REDIRECT"},
                 "query": {"remove": ["legacy"]}, "response": {"set": [{"name": "x-moved", "value": "1"}]}},
                {"name": "ipv6", "redirect": {"scheme_redirect": "ws", "host_redirect": "[::1]",
                              "path_redirect": "/x?y=1", "strip_query": true, "response_code": 307}},
                {"name": "teapot", "direct_response": {"status": 418, "json": {"error": "teapot"},
                              "headers": [{"name": "Cache-Control", "value": "no-store"}]}},
                {"name": "text", "direct_response": {"status": 200, "body": "ok",
                              "headers": [{"name": "content-type", "value": "text/html"}]}}
            ]}"#,
        )
        .unwrap();
        let r = &c.rules;
        assert_eq!(r[0].query.remove, ["utm_source"]);
        assert_eq!(r[0].query.keep.as_deref(), Some(&["id".to_string(), "q s".to_string()][..]));
        assert_eq!((r[0].query.set[0].name.as_str(), r[0].query.add[0].encoded_name.as_str()), ("v", "by"));
        let Some(Answer::Redirect(moved)) = &r[1].answer else { panic!("{:?}", r[1].answer) };
        assert_eq!(moved.scheme.as_deref(), Some("https"));
        assert_eq!((moved.host.as_deref(), moved.port.as_deref()), (Some("new.example.com"), Some(":8443")));
        assert_eq!(moved.status, 308);
        assert!(matches!(&moved.path, RedirectPath::Rewrite(PathRewrite::Prefix { matched, replacement })
            if matched == "/old/" && replacement == "/new/"));
        assert_eq!(r[1].matcher.query_params.len(), 1);
        let Some(Answer::Redirect(ipv6)) = &r[2].answer else { panic!() };
        assert_eq!(
            (ipv6.scheme.as_deref(), ipv6.host.as_deref(), ipv6.status),
            (Some("ws"), Some("[::1]"), 307)
        );
        assert!(matches!(&ipv6.path, RedirectPath::Replace { path, has_query: true } if path == "/x?y=1"));
        let Some(Answer::Direct(teapot)) = &r[3].answer else { panic!() };
        assert_eq!(teapot.status, 418);
        assert_eq!(teapot.body, br#"{"error":"teapot"}"#);
        let pairs =
            |d: &DirectResponse| d.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect::<Vec<_>>();
        assert_eq!(pairs(teapot), ["cache-control: no-store", "content-type: application/json"]);
        let Some(Answer::Direct(text)) = &r[4].answer else { panic!() };
        assert_eq!(
            (text.body.as_slice(), pairs(text)),
            (&b"ok"[..], vec!["content-type: text/html".to_string()])
        );
        assert!(c.request_headers.contains(&"x-forwarded-proto".to_string()), "a redirect reads it");
        // Every redirect status by number and by Envoy's name; 301 by default.
        for (number, name) in REDIRECT_CODES {
            for code in [number.to_string(), format!("\"{name}\"")] {
                let c = parse(
                    format!(r#"{{"rules": [{{"redirect": {{"response_code": {code}}}}}]}}"#).as_bytes(),
                )
                .unwrap();
                assert!(
                    matches!(&c.rules[0].answer, Some(Answer::Redirect(r)) if r.status == number),
                    "{code}"
                );
            }
        }
        let c = parse(br#"{"rules": [{"redirect": {}}]}"#).unwrap();
        assert!(matches!(&c.rules[0].answer, Some(Answer::Redirect(r)) if r.status == 301
            && r.scheme.is_none() && r.host.is_none() && matches!(r.path, RedirectPath::Request)));
    }

    /// Every refusal of the answers and query operations, word for word, with its field and value.
    #[test]
    fn every_answer_and_query_error_names_the_field_and_the_value() {
        let one = |rule: &str| -> Vec<String> {
            match parse(format!(r#"{{"rules": [{rule}]}}"#).as_bytes()) {
                Ok(_) => panic!("accepted: {rule}"),
                Err(e) => e.errors().iter().map(ToString::to_string).collect(),
            }
        };
        const UPSTREAM: &str = "the rule answers the request itself (`redirect` or `direct_response`): nothing goes upstream for this to change";
        const CODES: &str = "a redirect answers 301, 302, 303, 307 or 308 (Envoy's MOVED_PERMANENTLY, FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT)";
        const PORT: &str = "a port from 1 to 65535 (Envoy reads 0 as no port: leave the field out)";
        const STATUS: &str = "a status from 200 to 599 (an informational 1xx cannot end a response)";
        const QNAME: &str = "a query parameter name is the decoded name: not empty, no control characters";
        let upstream = |field: &str| format!("`rules[0].{field}`: {UPSTREAM}");
        let cases: Vec<(&str, Vec<String>)> = vec![
            (r#"{"redirect": {}, "direct_response": {"status": 200}}"#,
             vec!["`rules[0]`: give at most one of `redirect`, `direct_response`".into()]),
            (r#"{"redirect": {}, "request": {"remove": ["x-a"]}}"#, vec![upstream("request")]),
            (r#"{"redirect": {}, "host_rewrite": "h"}"#, vec![format!("`rules[0].host_rewrite` = \"h\": {UPSTREAM}")]),
            (r#"{"direct_response": {"status": 200}, "path_rewrite": {"regex": {"pattern": "a", "substitution": "b"}}}"#,
             vec![upstream("path_rewrite")]),
            (r#"{"direct_response": {"status": 200}, "query": {"remove": ["a"]}}"#,
             vec!["`rules[0].query`: a direct response has no query to change".into()]),
            (r#"{"redirect": {"strip_query": true}, "query": {"set": [{"name": "a", "value": "1"}]}}"#,
             vec!["`rules[0].query`: `redirect.strip_query` drops the query these operations change (for a new query use `keep: []` and `set`)".into()]),
            (r#"{"redirect": {"https_redirect": true, "scheme_redirect": "https"}}"#,
             vec!["`rules[0].redirect`: give at most one of `https_redirect`, `scheme_redirect`".into()]),
            (r#"{"redirect": {"scheme_redirect": "ht tp"}}"#,
             vec!["`rules[0].redirect.scheme_redirect` = \"ht tp\": not a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-` or `.`)".into()]),
            (r#"{"redirect": {"host_redirect": "a.com:8080"}}"#,
             vec!["`rules[0].redirect.host_redirect` = \"a.com:8080\": no port here (give it in `port_redirect`); an IPv6 address goes in brackets (`[::1]`)".into()]),
            (r#"{"redirect": {"host_redirect": "::1"}}"#,
             vec!["`rules[0].redirect.host_redirect` = \"::1\": no port here (give it in `port_redirect`); an IPv6 address goes in brackets (`[::1]`)".into()]),
            (r#"{"redirect": {"host_redirect": "[::1]:80"}}"#,
             vec!["`rules[0].redirect.host_redirect` = \"[::1]:80\": no port here: give it in `port_redirect`".into()]),
            (r#"{"redirect": {"host_redirect": "a b"}}"#,
             vec!["`rules[0].redirect.host_redirect` = \"a b\": not a host name (letters, digits, `-`, `_`, `.`) or a bracketed IPv6 address".into()]),
            (r#"{"redirect": {"port_redirect": 0}}"#, vec![format!("`rules[0].redirect.port_redirect` = 0: {PORT}")]),
            (r#"{"redirect": {"port_redirect": 65536}}"#, vec![format!("`rules[0].redirect.port_redirect` = 65536: {PORT}")]),
            (r#"{"redirect": {"port_redirect": -1}}"#, vec![format!("`rules[0].redirect.port_redirect` = -1: {PORT}")]),
            (r#"{"redirect": {"path_redirect": "new"}}"#,
             vec!["`rules[0].redirect.path_redirect` = \"new\": must start with `/` and contain no whitespace, control characters or `#` (a `?` starts a query of its own)".into()]),
            (r#"{"redirect": {"path_redirect": "/a#b"}}"#,
             vec!["`rules[0].redirect.path_redirect` = \"/a#b\": must start with `/` and contain no whitespace, control characters or `#` (a `?` starts a query of its own)".into()]),
            (r#"{"match": {"prefix": "/a"}, "redirect": {"path_redirect": "/b", "prefix_rewrite": "/c"}}"#,
             vec!["`rules[0].redirect`: give at most one of `path_redirect`, `prefix_rewrite`, `regex_rewrite`".into()]),
            (r#"{"redirect": {"prefix_rewrite": "/new/"}}"#,
             vec!["`rules[0].redirect.prefix_rewrite` = \"/new/\": a prefix rewrite replaces the matched prefix: the rule needs `match.path.prefix`".into()]),
            (r#"{"match": {"prefix": "/a"}, "redirect": {"prefix_rewrite": "b"}}"#,
             vec!["`rules[0].redirect.prefix_rewrite` = \"b\": must start with `/` and contain no whitespace, control characters, `?` or `#`".into()]),
            (r#"{"redirect": {"regex_rewrite": {"pattern": "^/(a)$", "substitution": "/\\2"}}}"#,
             vec!["`rules[0].redirect.regex_rewrite.substitution` = \"/\\\\2\": `\\2` refers to group 2 but the pattern has 1 capture group(s)".into()]),
            (r#"{"redirect": {"response_code": 300}}"#, vec![format!("`rules[0].redirect.response_code` = 300: {CODES}")]),
            (r#"{"redirect": {"response_code": "MOVED"}}"#, vec![format!("`rules[0].redirect.response_code` = \"MOVED\": {CODES}")]),
            (r#"{"redirect": {"colour": "red"}}"#, vec!["`rules[0].redirect.colour`: unknown field".into()]),
            (r#"{"direct_response": {}}"#,
             vec!["`rules[0].direct_response.status`: missing: the status of the answer (200 to 599)".into()]),
            (r#"{"direct_response": {"status": 101}}"#, vec![format!("`rules[0].direct_response.status` = 101: {STATUS}")]),
            (r#"{"direct_response": {"status": 600}}"#, vec![format!("`rules[0].direct_response.status` = 600: {STATUS}")]),
            (r#"{"direct_response": {"status": 200, "body": "a", "json": 1}}"#,
             vec!["`rules[0].direct_response`: give at most one of `body`, `json`".into()]),
            (r#"{"direct_response": {"status": 204, "body": "x"}}"#,
             vec!["`rules[0].direct_response.body` = \"x\": a 204 or 304 response has no body".into()]),
            (r#"{"direct_response": {"status": 304, "json": [1]}}"#,
             vec!["`rules[0].direct_response.json` = \"[1]\": a 204 or 304 response has no body".into()]),
            (r#"{"direct_response": {"status": 200, "headers": [{"name": "x y", "value": "1"}]}}"#,
             vec!["`rules[0].direct_response.headers[0].name` = \"x y\": not a valid HTTP header name (RFC 9110 token)".into()]),
            (r#"{"direct_response": {"status": 200, "headers": [{"name": ":status", "value": "1"}]}}"#,
             vec!["`rules[0].direct_response.headers[0].name` = \":status\": pseudo-headers cannot be set this way".into()]),
            (r#"{"direct_response": {"status": 200, "headers": [{"name": "Content-Length", "value": "1"}]}}"#,
             vec!["`rules[0].direct_response.headers[0].name` = \"Content-Length\": hop-by-hop or framing header: changing it can corrupt the message".into()]),
            (r#"{"direct_response": {"status": 200, "headers": [{"name": "x-a"}]}}"#,
             vec!["`rules[0].direct_response.headers[0].value`: missing (use \"\" for an empty value)".into()]),
            (r#"{"direct_response": {"status": 200, "headers": [{"name": "x-a", "value": "a\nb"}]}}"#,
             vec!["`rules[0].direct_response.headers[0].value` = \"a\\nb\": header values may not contain CR, LF, NUL or other control characters".into()]),
            (r#"{"direct_response": {"status": 200, "text": "x"}}"#, vec!["`rules[0].direct_response.text`: unknown field".into()]),
            (r#"{"query": {"remove": [""]}}"#, vec![format!("`rules[0].query.remove[0]` = \"\": {QNAME}")]),
            (r#"{"query": {"keep": ["a", "b\n"]}}"#, vec![format!("`rules[0].query.keep[1]` = \"b\\n\": {QNAME}")]),
            (r#"{"query": {"set": [{"name": "", "value": "1"}]}}"#, vec![format!("`rules[0].query.set[0].name` = \"\": {QNAME}")]),
            (r#"{"query": {"set": [{"name": "a"}]}}"#,
             vec!["`rules[0].query.set[0].value`: missing (use \"\" for an empty value)".into()]),
            (r#"{"query": {"add": [{"name": "a", "value": "%RESP(server)%"}]}}"#,
             vec!["`rules[0].query.add[0].value` = \"%RESP(server)%\": `%RESP(server)%` reads a response header: only response operations may use it".into()]),
            (r#"{"query": {"drop": ["a"], "add": [{"name": "a", "value": "1"}]}}"#,
             vec!["`rules[0].query.drop`: unknown field".into()]),
        ];
        for (rule, want) in &cases {
            assert_eq!(&one(rule), want, "{rule}");
        }
        // Long bodies are quoted shortened, with their size.
        let long =
            one(&format!(r#"{{"direct_response": {{"status": 200, "body": "{}"}}}}"#, "a".repeat(4097)));
        assert!(long[0].starts_with("`rules[0].direct_response.body` = \"aaaa"), "{long:?}");
        assert!(
            long[0].ends_with(
                ": 4097 bytes: at most 4096 (Envoy's default `max_direct_response_body_size_bytes`)"
            ),
            "{long:?}"
        );
        let json =
            one(&format!(r#"{{"direct_response": {{"status": 200, "json": ["{}"]}}}}"#, "a".repeat(4093)));
        assert!(
            json[0].starts_with("`rules[0].direct_response.json` = ") && json[0].contains(": 4097 bytes: "),
            "{json:?}"
        );
        assert!(parse(
            format!(
                r#"{{"rules": [{{"direct_response": {{"status": 200, "body": "{}"}}}}]}}"#,
                "a".repeat(4096)
            )
            .as_bytes()
        )
        .is_ok());
        // A regex that does not compile is named with regex-lite's message.
        let rx = one(r#"{"redirect": {"regex_rewrite": {"pattern": "(", "substitution": "/"}}}"#);
        assert!(
            rx[0].starts_with("`rules[0].redirect.regex_rewrite.pattern` = \"(\": invalid regex: "),
            "{rx:?}"
        );
        // Types serde refuses are reported with their field.
        let typed = one(r#"{"redirect": {"response_code": true}}"#);
        assert!(
            typed[0].contains("a redirect status (301, 302, 303, 307, 308) or Envoy's name for it"),
            "{typed:?}"
        );
        assert_eq!(
            one(r#"{"direct_response": {"status": "200"}}"#),
            [format!("`rules[0].direct_response.status` = \"200\": {STATUS}")]
        );
        assert_eq!(
            one(r#"{"redirect": {"port_redirect": 80.5}}"#),
            [format!("`rules[0].redirect.port_redirect` = 80.5: {PORT}")]
        );
    }

    #[test]
    fn a_json_body_is_compact_and_keeps_what_was_written() {
        let body = |json: &str| {
            let c = parse(
                format!(r#"{{"rules": [{{"direct_response": {{"status": 200, "json": {json}}}}}]}}"#)
                    .as_bytes(),
            )
            .unwrap();
            match &c.rules[0].answer {
                Some(Answer::Direct(d)) => String::from_utf8(d.body.clone()).unwrap(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            body(r#" { "z": 1, "a": [true, false, null, -2, 1.5, 1e3, "x\"\n\u00e9"], "m": {}, "l": [] } "#),
            r#"{"z":1,"a":[true,false,null,-2,1.5,1000.0,"x\"\né"],"m":{},"l":[]}"#,
            "keys in the order written, whitespace gone, text escaped as JSON"
        );
        assert_eq!(body("\"text\""), "\"text\"");
        assert_eq!(body("18446744073709551615"), "18446744073709551615");
        // What is written reads back as the value given.
        let back: serde_json::Value =
            serde_json::from_str(&body(r#"{"a": {"b": [1, {"c": "d"}]}}"#)).unwrap();
        assert_eq!(back, serde_json::json!({"a": {"b": [1, {"c": "d"}]}}));
    }

    #[test]
    fn misc_errors() {
        assert_eq!(fields(r#"{"rules": [{}]}"#), ["rules[0]"]);
        assert_eq!(fields(r#"{"rules": [{"host_rewrite": "a b"}]}"#), ["rules[0].host_rewrite"]);
        assert_eq!(
            fields(r#"{"rules": [{"match": {"methods": ["GET", "BAD METHOD"]}, "host_rewrite": "h"}]}"#),
            ["rules[0].match.methods[1]"]
        );
        assert_eq!(
            fields(
                r#"{"rules": [{"match": {"headers": [{"name": "x", "exact": "a", "regex": "b"}]}, "host_rewrite": "h"}]}"#
            ),
            ["rules[0].match.headers[0]"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"request": {"set": [{"name": "x-a"}]}}]}"#),
            ["rules[0].request.set[0].value"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"request": {"rename": [{"from": "x-a", "to": "X-A"}]}}]}"#),
            ["rules[0].request.rename[0].to"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"match": {"hosts": ["a.*.com"]}, "host_rewrite": "h"}]}"#),
            ["rules[0].match.hosts[0]"]
        );
        assert_eq!(
            fields(r#"{"rules": [{"request": {"set": [{"name": "x", "value": "%RESP(server)%"}]}}]}"#),
            ["rules[0].request.set[0].value"]
        );
        // A type error stops serde; it is still reported.
        assert_eq!(errors(r#"{"match_mode": "sometimes"}"#).len(), 1);
    }
}
