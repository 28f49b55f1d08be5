//! The one configuration shape of request conditions, and its compile.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    full_match_regex, parse_method, HeaderCondition, HostError, HostPattern, PathMatch, PathTemplate,
    QueryCondition, RequestMatch, ValueMatch,
};
use crate::config::{self, read_map, ConfigErrors};

/// Request conditions as a configuration writes them (a rule's `match`), all of which must hold;
/// an absent or empty `match` holds for every request. Compile with [`RawMatch::compile`].
///
/// The path condition is `path`: an object with one of `exact`, `prefix`, `regex`, `template`,
/// or a string for an exact path. Envoy's route shorthand, `prefix` and `regex` beside `hosts`
/// (Envoy's `jwt_authn` rules and jwt-auth's form), means the same; at most one is given.
#[derive(Debug, Default)]
pub struct RawMatch {
    /// Host patterns, any of which: `api.example.com`, `*.example.com` (any subdomain, not the
    /// domain itself) or `*` (any host), compared case-insensitively without the port.
    pub hosts: Vec<String>,
    /// The path condition, on the path without its query string.
    pub path: Option<RawPath>,
    /// Shorthand for `path.prefix`.
    pub prefix: Option<String>,
    /// Shorthand for `path.regex`.
    pub regex: Option<String>,
    /// Methods, any of which (case-insensitive, compared upper-case).
    pub methods: Vec<String>,
    /// Query parameter conditions, all of which.
    pub query_params: Vec<RawQueryMatch>,
    /// Header conditions, all of which.
    pub headers: Vec<RawHeaderMatch>,
}

/// `path`: a string (an exact path) or [`RawPathMatch`].
#[derive(Debug)]
pub enum RawPath {
    /// `"path": "/login"`.
    Exact(String),
    /// `"path": {"prefix": "/api/"}`.
    Match(RawPathMatch),
}

/// Exactly one of `exact`, `prefix`, `regex`, `template`.
#[derive(Debug, Default)]
pub struct RawPathMatch {
    /// The whole path.
    pub exact: Option<String>,
    /// A string prefix of the path, as Envoy's route `prefix` (`/api` also matches `/apix`).
    pub prefix: Option<String>,
    /// A regex (regex-lite syntax) that must match the whole path.
    pub regex: Option<String>,
    /// A path template, as Envoy's `uri_template` matcher: `/users/{id}/orders/*`, `/files/**`
    /// (see [`PathTemplate`]).
    pub template: Option<String>,
}

/// A header condition: the header is present, or its first value is `exact`, starts with
/// `prefix` or matches `regex` in full; `invert` negates the condition (a missing header then
/// holds). `"present": false` is `invert` on presence.
#[derive(Debug, Default)]
pub struct RawHeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// The first value equals this (case-sensitive).
    pub exact: Option<String>,
    /// The first value starts with this (case-sensitive).
    pub prefix: Option<String>,
    /// The first value matches this regex (regex-lite syntax) in full.
    pub regex: Option<String>,
    /// `true` (default): the header is present; `false`: it is absent.
    pub present: Option<bool>,
    /// Holds when the condition does not.
    pub invert: bool,
}

/// A query parameter condition, in the shape of a header condition ([`RawHeaderMatch`]): the
/// parameter is present, or the value of its first occurrence is `exact`, starts with `prefix` or
/// matches `regex` in full, names and values compared percent-decoded; `invert` negates it.
pub type RawQueryMatch = RawHeaderMatch;

impl<'de> Deserialize<'de> for RawHeaderMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;

        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeaderMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header condition `{\"name\": ...}`")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHeaderMatch, A::Error> {
                read_map(map, RawHeaderMatch::default(), |h, key, map| {
                    match key {
                        "name" => h.name = map.next_value()?,
                        "exact" => h.exact = map.next_value()?,
                        "prefix" => h.prefix = map.next_value()?,
                        "regex" => h.regex = map.next_value()?,
                        "present" => h.present = map.next_value()?,
                        "invert" => h.invert = map.next_value()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })
            }
        }

        deserializer.deserialize_map(HeaderVisitor)
    }
}

impl<'de> Deserialize<'de> for RawMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MatchVisitor;

        impl<'de> Visitor<'de> for MatchVisitor {
            type Value = RawMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("request conditions `{\"hosts\": ..., \"path\": ..., \"methods\": ..., \"query_params\": ..., \"headers\": ...}`")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMatch, A::Error> {
                read_map(map, RawMatch::default(), |m, key, map| {
                    match key {
                        "hosts" => m.hosts = map.next_value()?,
                        "path" => m.path = map.next_value()?,
                        "prefix" => m.prefix = map.next_value()?,
                        "regex" => m.regex = map.next_value()?,
                        "methods" => m.methods = map.next_value()?,
                        "query_params" => m.query_params = map.next_value()?,
                        "headers" => m.headers = map.next_value()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })
            }
        }

        deserializer.deserialize_map(MatchVisitor)
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathVisitor;

        impl<'de> Visitor<'de> for PathVisitor {
            type Value = RawPath;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an exact path or an object with one of `exact`, `prefix`, `regex`, `template`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPath, E> {
                Ok(RawPath::Exact(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPath, A::Error> {
                let path = read_map(map, RawPathMatch::default(), |p, key, map| {
                    match key {
                        "exact" => p.exact = map.next_value()?,
                        "prefix" => p.prefix = map.next_value()?,
                        "regex" => p.regex = map.next_value()?,
                        "template" => p.template = map.next_value()?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(RawPath::Match(path))
            }
        }

        deserializer.deserialize_any(PathVisitor)
    }
}

/// The wording of a path literal's error, shared by every field that takes a path.
pub const NOT_A_PATH: &str = "must start with `/` and contain no whitespace, control characters, `?` or `#`";

impl RawMatch {
    /// Compiles the conditions, recording every problem in `errors` under `at` (the JSON path of
    /// this `match`, such as `rules[2].match`). A condition in error is left out of the result,
    /// so callers drop the rule when `errors` grew.
    pub fn compile(&self, at: &str, errors: &mut ConfigErrors) -> RequestMatch {
        let mut m = RequestMatch::default();
        for (i, host) in self.hosts.iter().enumerate() {
            match HostPattern::parse(host) {
                Ok(p) => m.hosts.push(p),
                Err(e) => errors.add(format!("{at}.hosts[{i}]"), host, host_error(e)),
            }
        }
        m.path = self.path(at, errors);
        for (i, method) in self.methods.iter().enumerate() {
            match parse_method(method) {
                Some(upper) => m.methods.push(upper),
                None => {
                    errors.add(format!("{at}.methods[{i}]"), method, "not an HTTP method (RFC 9110 token)")
                }
            }
        }
        for (i, q) in self.query_params.iter().enumerate() {
            if let Some(c) = q.compile_query(&format!("{at}.query_params[{i}]"), errors) {
                m.query_params.push(c);
            }
        }
        for (i, h) in self.headers.iter().enumerate() {
            if let Some(c) = h.compile(&format!("{at}.headers[{i}]"), errors) {
                m.headers.push(c);
            }
        }
        m
    }

    fn path(&self, at: &str, errors: &mut ConfigErrors) -> Option<PathMatch> {
        let forms = usize::from(self.path.is_some())
            + usize::from(self.prefix.is_some())
            + usize::from(self.regex.is_some());
        if forms > 1 {
            errors.add_field(
                at,
                "give one path condition: `path` (`{\"prefix\": \"/api/\"}`, or `exact`, `regex`, `template`; a string is an exact path), or the shorthand `prefix` or `regex`",
            );
            return None;
        }
        let (field, value, kind) = match (&self.path, &self.prefix, &self.regex) {
            (Some(RawPath::Exact(p)), _, _) => (format!("{at}.path"), p, Kind::Exact),
            (_, Some(p), _) => (format!("{at}.prefix"), p, Kind::Prefix),
            (_, _, Some(r)) => (format!("{at}.regex"), r, Kind::Regex),
            (Some(RawPath::Match(p)), _, _) => {
                let given = [
                    (&p.exact, "exact", Kind::Exact),
                    (&p.prefix, "prefix", Kind::Prefix),
                    (&p.regex, "regex", Kind::Regex),
                    (&p.template, "template", Kind::Template),
                ];
                let mut set =
                    given.into_iter().filter_map(|(v, name, kind)| v.as_ref().map(|v| (v, name, kind)));
                match (set.next(), set.next()) {
                    (Some((v, name, kind)), None) => (format!("{at}.path.{name}"), v, kind),
                    _ => {
                        errors.add_field(
                            format!("{at}.path"),
                            "give exactly one of `exact`, `prefix`, `regex`, `template`",
                        );
                        return None;
                    }
                }
            }
            (None, None, None) => return None,
        };
        let compiled = match kind {
            Kind::Exact => {
                PathMatch::parse(Some(value.as_str()), None, None).map_err(|_| NOT_A_PATH.to_string())
            }
            Kind::Prefix => {
                PathMatch::parse(None, Some(value.as_str()), None).map_err(|_| NOT_A_PATH.to_string())
            }
            Kind::Regex => {
                full_match_regex(value).map(PathMatch::Regex).map_err(|e| format!("invalid regex: {e}"))
            }
            Kind::Template => PathTemplate::parse(value)
                .map(PathMatch::Template)
                .map_err(|e| format!("invalid path template: {e}")),
        };
        compiled.map_err(|why| errors.add(field, value, why)).ok()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Exact,
    Prefix,
    Regex,
    Template,
}

fn host_error(e: HostError) -> &'static str {
    match e {
        HostError::Malformed => {
            "a host pattern is `api.example.com`, `*.example.com` (any subdomain) or `*` (any host)"
        }
        HostError::Port => "hosts are matched without their port: remove the port",
        HostError::NotAHostName => {
            "not a host name: letters, digits, `-`, `_` and `.` (or a bracketed IPv6 address)"
        }
    }
}

impl RawHeaderMatch {
    fn compile(&self, at: &str, errors: &mut ConfigErrors) -> Option<HeaderCondition> {
        if !config::is_header_name(&self.name) {
            errors.add(format!("{at}.name"), &self.name, "not a valid HTTP header name (RFC 9110 token)");
            return None;
        }
        let (value, invert) = self.value_condition(at, errors)?;
        Some(HeaderCondition { name: self.name.to_ascii_lowercase(), value, invert })
    }

    /// The condition as a query parameter's: the name is the decoded parameter name, compared
    /// exactly (case-sensitive, as Envoy's route `query_parameters`).
    fn compile_query(&self, at: &str, errors: &mut ConfigErrors) -> Option<QueryCondition> {
        if !super::is_query_name(&self.name) {
            errors.add(format!("{at}.name"), &self.name, super::NOT_A_QUERY_NAME);
            return None;
        }
        let (value, invert) = self.value_condition(at, errors)?;
        Some(QueryCondition { name: self.name.clone(), value, invert })
    }

    /// The value condition and whether it is negated, shared by headers and query parameters.
    fn value_condition(&self, at: &str, errors: &mut ConfigErrors) -> Option<(ValueMatch, bool)> {
        let given = usize::from(self.exact.is_some())
            + usize::from(self.prefix.is_some())
            + usize::from(self.regex.is_some())
            + usize::from(self.present.is_some());
        if given > 1 {
            errors.add_field(at, "give at most one of `exact`, `prefix`, `regex`, `present`");
            return None;
        }
        let mut invert = self.invert;
        let value = match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), _, _) => ValueMatch::Exact(e.clone()),
            (_, Some(p), _) => ValueMatch::Prefix(p.clone()),
            (_, _, Some(r)) => match full_match_regex(r) {
                Ok(re) => ValueMatch::Regex(re),
                Err(e) => {
                    errors.add(format!("{at}.regex"), r, format!("invalid regex: {e}"));
                    return None;
                }
            },
            _ => {
                invert ^= self.present == Some(false);
                ValueMatch::Present
            }
        };
        Some((value, invert))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::matcher::{MatchRequest, RequestParts};
    use crate::request::HeaderSnapshot;

    /// A rule list as filters hold one: `match` inside each rule, unknown fields reported.
    #[derive(Debug, Deserialize)]
    struct Rules {
        rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    struct Rule {
        #[serde(rename = "match", default)]
        matcher: RawMatch,
    }

    fn compile(json: &str) -> Result<Vec<RequestMatch>, Vec<String>> {
        config::parse_with(json.as_bytes(), |raw: Rules, errors| {
            raw.rules
                .iter()
                .enumerate()
                .map(|(i, r)| r.matcher.compile(&format!("rules[{i}].match"), errors))
                .collect()
        })
        .map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    fn one(json: &str) -> RequestMatch {
        compile(&format!(r#"{{"rules": [{{"match": {json}}}]}}"#)).unwrap().remove(0)
    }

    fn errors(json: &str) -> Vec<String> {
        compile(&format!(r#"{{"rules": [{{"match": {json}}}]}}"#)).unwrap_err()
    }

    fn hit(m: &RequestMatch, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> bool {
        let h = HeaderSnapshot::from_strs(headers);
        m.matches(&RequestParts { method, host: Some(host), path, query: None, headers: Some(&h) })
    }

    #[test]
    fn every_condition_kind_compiles() {
        let m = one(r#"{"hosts": ["API.example.com", "*.example.org", "[::1]"], "methods": ["get", "PURGE"],
                "path": {"template": "/users/{id}/**"},
                "headers": [{"name": "X-Env", "exact": "prod"}, {"name": "x-tenant", "prefix": "eu-"},
                            {"name": "x-ver", "regex": "v[0-9]+"}, {"name": "x-debug"},
                            {"name": "x-internal", "present": false}, {"name": "x-beta", "exact": "1", "invert": true}]}"#);
        assert_eq!(
            m.hosts,
            [
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Subdomain(".example.org".into()),
                HostPattern::Exact("[::1]".into())
            ]
        );
        assert_eq!(m.methods, ["GET", "PURGE"]);
        assert_eq!(m.headers[0].name, "x-env");
        let good = [("x-env", "prod"), ("x-tenant", "eu-1"), ("x-ver", "v2"), ("x-debug", "")];
        assert!(hit(&m, "GET", "api.example.com", "/users/7", &good));
        assert!(hit(&m, "PURGE", "a.example.org", "/users/7/a/b", &good));
        assert!(hit(&m, "GET", "[::1]", "/users/7", &good));
        assert!(!hit(&m, "POST", "api.example.com", "/users/7", &good));
        assert!(!hit(&m, "GET", "example.org", "/users/7", &good));
        assert!(!hit(&m, "GET", "api.example.com", "/users", &good));
        for (i, spoil) in
            [("x-env", "dev"), ("x-tenant", "us-1"), ("x-ver", "v2b"), ("x-internal", "1"), ("x-beta", "1")]
                .into_iter()
                .enumerate()
        {
            let mut h = good.to_vec();
            if i < 3 {
                h[i] = spoil;
            } else {
                h.push(spoil);
            }
            assert!(!hit(&m, "GET", "api.example.com", "/users/7", &h), "{spoil:?}");
        }
        assert!(!hit(&m, "GET", "api.example.com", "/users/7", &good[..3]), "x-debug must be present");
        assert!(hit(
            &m,
            "GET",
            "api.example.com",
            "/users/7",
            &[good.as_slice(), &[("x-beta", "2")]].concat()
        ));
    }

    #[test]
    fn query_conditions_compile_in_the_shape_of_header_conditions() {
        let m =
            one(r#"{"query_params": [{"name": "debug", "exact": "1"}, {"name": "page", "regex": "[0-9]+"},
                {"name": "user id", "prefix": "J"}, {"name": "trace"}, {"name": "internal", "present": false},
                {"name": "beta", "exact": "on", "invert": true}]}"#);
        assert_eq!(m.query_params.len(), 6);
        assert!(!m.is_empty());
        let hit = |query: &str| {
            let h = HeaderSnapshot::default();
            m.matches(&RequestParts {
                method: "GET",
                host: Some("h"),
                path: "/",
                query: Some(query),
                headers: Some(&h),
            })
        };
        assert!(hit("debug=1&page=12&user+id=J%C3%B6rg&trace"));
        assert!(hit("trace=&page=3&debug=%31&user%20id=Jo&beta=off"));
        assert!(!hit("debug=1&page=12&user+id=J&trace&internal=0"), "internal must be absent");
        assert!(!hit("debug=1&page=12&user+id=J&trace&beta=on"));
        assert!(!hit("debug=1&page=1x&user+id=J&trace"));
        assert!(!hit("DEBUG=1&page=1&user+id=J&trace"), "names are case-sensitive");
        assert!(!hit("debug=1&page=1&user+id=J"), "trace must be present");
    }

    #[test]
    fn every_path_form() {
        let exact = [r#"{"path": "/login"}"#, r#"{"path": {"exact": "/login"}}"#];
        for json in exact {
            let m = one(json);
            assert!(hit(&m, "GET", "h", "/login", &[]) && !hit(&m, "GET", "h", "/login/x", &[]), "{json}");
        }
        for json in [r#"{"prefix": "/api"}"#, r#"{"path": {"prefix": "/api"}}"#] {
            let m = one(json);
            assert!(hit(&m, "GET", "h", "/apix", &[]) && !hit(&m, "GET", "h", "/ap", &[]), "{json}");
        }
        for json in [r#"{"regex": "/u/[0-9]+"}"#, r#"{"path": {"regex": "/u/[0-9]+"}}"#] {
            let m = one(json);
            assert!(hit(&m, "GET", "h", "/u/12", &[]) && !hit(&m, "GET", "h", "/u/12/x", &[]), "{json}");
        }
        let t = one(r#"{"path": {"template": "/users/{id}/orders/*"}}"#);
        assert!(
            hit(&t, "GET", "h", "/users/1/orders/2", &[]) && !hit(&t, "GET", "h", "/users/1/orders", &[])
        );
        let all = one("{}");
        assert!(all.is_empty() && hit(&all, "DELETE", "h", "/", &[]));
        let none = compile(r#"{"rules": [{}]}"#).unwrap();
        assert!(none[0].is_empty(), "no `match` at all");
    }

    /// Every message the compile gives, word for word: one wording for every filter.
    #[test]
    fn every_error_names_the_field_and_the_value() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"hosts": ["a.com:80"]}"#, &["`rules[0].match.hosts[0]` = \"a.com:80\": hosts are matched without their port: remove the port"]),
            (r#"{"hosts": ["a.*.com"]}"#, &["`rules[0].match.hosts[0]` = \"a.*.com\": a host pattern is `api.example.com`, `*.example.com` (any subdomain) or `*` (any host)"]),
            (r#"{"hosts": ["a/b"]}"#, &["`rules[0].match.hosts[0]` = \"a/b\": not a host name: letters, digits, `-`, `_` and `.` (or a bracketed IPv6 address)"]),
            (r#"{"methods": ["GE T"]}"#, &["`rules[0].match.methods[0]` = \"GE T\": not an HTTP method (RFC 9110 token)"]),
            (r#"{"path": "api"}"#, &["`rules[0].match.path` = \"api\": must start with `/` and contain no whitespace, control characters, `?` or `#`"]),
            (r#"{"prefix": "/a b"}"#, &["`rules[0].match.prefix` = \"/a b\": must start with `/` and contain no whitespace, control characters, `?` or `#`"]),
            (r#"{"path": {"exact": "/a?b"}}"#, &["`rules[0].match.path.exact` = \"/a?b\": must start with `/` and contain no whitespace, control characters, `?` or `#`"]),
            (r#"{"path": {"prefix": ""}}"#, &["`rules[0].match.path.prefix` = \"\": must start with `/` and contain no whitespace, control characters, `?` or `#`"]),
            (r#"{"path": {"template": "/a/**/b"}}"#, &["`rules[0].match.path.template` = \"/a/**/b\": invalid path template: `**` may only be the last segment"]),
            (r#"{"path": {}}"#, &["`rules[0].match.path`: give exactly one of `exact`, `prefix`, `regex`, `template`"]),
            (r#"{"path": {"exact": "/a", "template": "/b"}}"#, &["`rules[0].match.path`: give exactly one of `exact`, `prefix`, `regex`, `template`"]),
            (r#"{"prefix": "/a", "path": "/b", "regex": "("}"#, &["`rules[0].match`: give one path condition: `path` (`{\"prefix\": \"/api/\"}`, or `exact`, `regex`, `template`; a string is an exact path), or the shorthand `prefix` or `regex`"]),
            (r#"{"headers": [{"name": "x y"}]}"#, &["`rules[0].match.headers[0].name` = \"x y\": not a valid HTTP header name (RFC 9110 token)"]),
            (r#"{"headers": [{"name": "x", "exact": "a", "present": true}]}"#, &["`rules[0].match.headers[0]`: give at most one of `exact`, `prefix`, `regex`, `present`"]),
            (r#"{"headers": [{"name": "x", "colour": "a"}]}"#, &["`rules[0].match.headers[0].colour`: unknown field"]),
            (r#"{"query_params": [{"name": ""}]}"#, &["`rules[0].match.query_params[0].name` = \"\": a query parameter name is the decoded name: not empty, no control characters"]),
            (r#"{"query_params": [{"name": "a\nb"}]}"#, &["`rules[0].match.query_params[0].name` = \"a\\nb\": a query parameter name is the decoded name: not empty, no control characters"]),
            (r#"{"query_params": [{"name": "a", "exact": "1", "prefix": "2"}]}"#, &["`rules[0].match.query_params[0]`: give at most one of `exact`, `prefix`, `regex`, `present`"]),
            (r#"{"query_params": [{"name": "a", "colour": "a"}]}"#, &["`rules[0].match.query_params[0].colour`: unknown field"]),
            (r#"{"path": {"prefix": "/", "colour": "a"}}"#, &["`rules[0].match.path.colour`: unknown field"]),
            (r#"{"colour": "a"}"#, &["`rules[0].match.colour`: unknown field"]),
        ];
        for (json, want) in cases {
            assert_eq!(errors(json), *want, "{json}");
        }
        let regex = errors(r#"{"regex": "("}"#);
        assert_eq!(regex.len(), 1);
        assert!(regex[0].starts_with("`rules[0].match.regex` = \"(\": invalid regex: "), "{regex:?}");
        assert!(!regex[0].contains('\n'));
        let regex = errors(r#"{"path": {"regex": "a)|(.*"}}"#);
        assert!(
            regex[0].starts_with("`rules[0].match.path.regex` = \"a)|(.*\": invalid regex: "),
            "{regex:?}"
        );
        let regex = errors(r#"{"query_params": [{"name": "x", "regex": "["}]}"#);
        assert!(
            regex[0].starts_with("`rules[0].match.query_params[0].regex` = \"[\": invalid regex: "),
            "{regex:?}"
        );
        let regex = errors(r#"{"headers": [{"name": "x", "regex": "["}]}"#);
        assert!(
            regex[0].starts_with("`rules[0].match.headers[0].regex` = \"[\": invalid regex: "),
            "{regex:?}"
        );
        let seq = compile(r#"{"rules": [{"match": ["/a"]}]}"#).unwrap_err();
        assert!(seq[0].contains("invalid type: sequence, expected request conditions"), "{seq:?}");
        let seq = errors(r#"{"headers": [["x-a"]]}"#);
        assert!(seq[0].contains("expected a header condition"), "{seq:?}");
        let typed = errors(r#"{"path": 7}"#);
        assert!(
            typed[0]
                .contains("an exact path or an object with one of `exact`, `prefix`, `regex`, `template`"),
            "{typed:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = errors(
            r#"{"hosts": ["a:1", "b:2"], "methods": ["", "G T"], "path": {"regex": "("}, "headers": [{"name": ""}, {"name": "x", "regex": "("}]}"#,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.split('`').nth(1).unwrap()).collect();
        assert_eq!(
            fields,
            [
                "rules[0].match.hosts[0]",
                "rules[0].match.hosts[1]",
                "rules[0].match.path.regex",
                "rules[0].match.methods[0]",
                "rules[0].match.methods[1]",
                "rules[0].match.headers[0].name",
                "rules[0].match.headers[1].regex",
            ]
        );
    }

    #[test]
    fn counting_request_is_asked_for_headers_by_lower_case_name() {
        struct Upper;
        impl MatchRequest for Upper {
            fn method(&self) -> &str {
                "GET"
            }
            fn host(&self) -> Option<std::borrow::Cow<'_, str>> {
                None
            }
            fn path(&self) -> &str {
                "/"
            }
            fn query(&self) -> Option<&str> {
                None
            }
            fn header(&self, name: &str) -> Option<&str> {
                (name == "x-a").then_some("1")
            }
        }
        assert!(one(r#"{"headers": [{"name": "X-A", "exact": "1"}]}"#).matches(&Upper));
    }
}
