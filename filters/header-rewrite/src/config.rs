//! The configuration as written (JSON, [`RawConfig`]) and as used on the request path
//! ([`Compiled`]: regexes compiled, templates parsed, names lower-cased).
//!
//! [`compile`] reports every problem at once, each with its JSON path and value
//! (`rules[1].request.set[0].name = "x y": not a valid HTTP header name`).

use serde::Deserialize;

use gatewasm::config::{self, ConfigErrors};
use gatewasm::matcher::{self, PathMatch, RawMatch, RequestMatch};

use crate::rewrite::{envoy_substitution, is_path_text, rewrite_regex, PathRewrite};
use crate::template::Template;

/// The plugin configuration.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    /// `first` (default): only the first rule whose `match` matches applies, as routes are
    /// chosen in Envoy and Istio. `all`: every matching rule applies, in order.
    #[serde(default)]
    pub match_mode: MatchMode,
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Remove every `x-envoy-original-path` a client sends. Default: on when some rule has a
    /// `path_rewrite` (the filter then sets that header itself, so upstreams must be able to
    /// trust it), off otherwise (Envoy's own behaviour: it forwards the header). Checking costs
    /// a header read per request (about 1 µs).
    #[serde(default)]
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
#[derive(Debug, Deserialize, Default)]
pub struct RawRule {
    /// Name used in logs and in the `rule` label of the metric (default: the rule's index).
    pub name: Option<String>,
    /// Conditions, the SDK's one shape (`gatewasm::matcher::RawMatch`): hosts, path, methods,
    /// headers, all of which must hold; absent means every request.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// Operations on the request headers (what the upstream sees).
    #[serde(default)]
    pub request: RawOps,
    /// Operations on the response headers (what the client sees) of requests this rule matched.
    #[serde(default)]
    pub response: RawOps,
    /// Replaces `:authority` (the Host header) going upstream, like Ambassador's `host_rewrite`.
    pub host_rewrite: Option<String>,
    /// Rewrites the path going upstream; the query string is kept.
    pub path_rewrite: Option<RawPathRewrite>,
}

/// Header operations, applied in this order: `remove`, `rename`, `set`, `add`.
#[derive(Debug, Deserialize, Default)]
pub struct RawOps {
    /// Names of headers to remove (every value).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to move to a new name: the target is replaced by every value of the source.
    #[serde(default)]
    pub rename: Vec<RawRename>,
    /// Headers to set, replacing any existing value.
    #[serde(default)]
    pub set: Vec<RawHeader>,
    /// Headers to append, keeping existing values.
    #[serde(default)]
    pub add: Vec<RawHeader>,
}

/// A header name and a value template.
#[derive(Debug, Deserialize, Default)]
pub struct RawHeader {
    /// Header name.
    #[serde(default)]
    pub name: String,
    /// Value, with substitutions (see the README).
    pub value: Option<String>,
}

/// A rename.
#[derive(Debug, Deserialize, Default)]
pub struct RawRename {
    /// Current name.
    #[serde(default)]
    pub from: String,
    /// New name.
    #[serde(default)]
    pub to: String,
}

/// Exactly one of `prefix`, `regex`.
#[derive(Debug, Deserialize, Default)]
pub struct RawPathRewrite {
    /// Replaces the rule's `match.path.prefix` (required) with this.
    pub prefix: Option<String>,
    /// Replaces every match of a regex in the path.
    pub regex: Option<RawRegexRewrite>,
}

/// Envoy's `regex_rewrite`.
#[derive(Debug, Deserialize, Default)]
pub struct RawRegexRewrite {
    /// Pattern (regex-lite syntax), matched anywhere in the path, every match replaced.
    #[serde(default)]
    pub pattern: String,
    /// Replacement: `\1`..`\9` insert groups, `\\` a backslash.
    #[serde(default)]
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
}

/// The configuration as the request path uses it.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Which matching rules apply.
    pub mode: MatchMode,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Request header names read by matches and templates; a slot is an index here.
    pub request_headers: Vec<String>,
    /// Whether a client's `x-envoy-original-path` is removed (explicit, or because some rule
    /// rewrites the path).
    pub strip_original_path: bool,
}

/// Headers that header operations may not touch, and why.
fn reserved(name: &str) -> Option<&'static str> {
    match name {
        "host" => Some("the Host header is `:authority` in Envoy: use `host_rewrite`"),
        "x-envoy-original-path" => Some("set by this filter itself when it rewrites the path"),
        "content-length" | "transfer-encoding" | "connection" | "upgrade" | "keep-alive" | "te"
        | "proxy-connection" => Some("hop-by-hop or framing header: changing it can corrupt the message"),
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
        let rule = Rule { name, matcher, request, response, host_rewrite, path_rewrite };
        if self.errors.errors().len() > before {
            return None;
        }
        if rule.request.is_empty()
            && rule.response.is_empty()
            && rule.host_rewrite.is_none()
            && rule.path_rewrite.is_none()
        {
            self.errors.add_field(
                at,
                "the rule does nothing: give it `request` or `response` operations, `host_rewrite` or `path_rewrite`",
            );
            return None;
        }
        Some(rule)
    }

    fn path_rewrite(
        &mut self,
        at: &str,
        raw: &RawPathRewrite,
        matcher: &RequestMatch,
    ) -> Option<PathRewrite> {
        match (raw.prefix.clone(), &raw.regex) {
            (Some(replacement), None) => {
                if !replacement.starts_with('/') || !is_path_text(&replacement) {
                    self.errors.add(format!("{at}.prefix"), &replacement, matcher::NOT_A_PATH);
                    return None;
                }
                match &matcher.path {
                    Some(PathMatch::Prefix(matched)) => {
                        Some(PathRewrite::Prefix { matched: matched.clone(), replacement })
                    }
                    _ => {
                        self.errors.add(
                            format!("{at}.prefix"),
                            &replacement,
                            "a prefix rewrite replaces the matched prefix: the rule needs `match.path.prefix`",
                        );
                        None
                    }
                }
            }
            (None, Some(rx)) => {
                let regex = match rewrite_regex(&rx.pattern) {
                    Ok(r) => r,
                    Err(e) => {
                        self.errors.add(
                            format!("{at}.regex.pattern"),
                            &rx.pattern,
                            format!("invalid regex: {e}"),
                        );
                        return None;
                    }
                };
                if rx.pattern.is_empty() {
                    self.errors.add(format!("{at}.regex.pattern"), &rx.pattern, "must not be empty");
                    return None;
                }
                if !is_path_text(&rx.substitution) && !rx.substitution.is_empty() {
                    self.errors.add(
                        format!("{at}.regex.substitution"),
                        &rx.substitution,
                        "must contain no whitespace, control characters, `?` or `#`",
                    );
                    return None;
                }
                match envoy_substitution(&regex, &rx.substitution) {
                    Ok(substitution) => Some(PathRewrite::Regex { regex, substitution }),
                    Err(e) => {
                        self.errors.add(format!("{at}.regex.substitution"), &rx.substitution, e);
                        None
                    }
                }
            }
            _ => {
                self.errors.add_field(at, "give exactly one of `prefix`, `regex`");
                None
            }
        }
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
                let Some(value) = &h.value else {
                    self.errors.add_field(format!("{at}.value"), "missing (use \"\" for an empty value)");
                    continue;
                };
                let before = self.errors.errors().len();
                config::check_header_value(self.errors, format!("{at}.value"), value);
                if self.errors.errors().len() > before {
                    continue;
                }
                let headers = &mut self.request_headers;
                match Template::parse(value, response_side, &mut |n| Self::slot(headers, n)) {
                    Ok(template) => {
                        if let Some(name) = name {
                            list.push(HeaderOp { name, value: template });
                        }
                    }
                    Err(e) => self.errors.add(format!("{at}.value"), value, e.0),
                }
            }
        }
        ops
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
