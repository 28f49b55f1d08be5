//! Request matching shared by filters: the one configuration shape of a rule's conditions
//! ([`RawMatch`], compiled once by [`RawMatch::compile`] with one error wording), what it
//! compiles to ([`RequestMatch`]: hosts, path, methods, query parameters, headers), the check
//! of rule names
//! ([`rule_names`]), and the pieces they are built of.
//!
//! Every matcher compares with the request as [`crate::request::Request`] gives it: the host
//! normalized by [`crate::http::normalize_host`] (lower-case, no port, no trailing dot), the path
//! without its query string, the method as sent. The request comes through [`MatchRequest`], so
//! a filter reads from the host only what a rule needs.

mod names;
mod schema;
mod template;

pub use names::{rule_names, MAX_RULE_NAME};
pub use schema::{RawHeaderMatch, RawMatch, RawPath, RawPathMatch, RawQueryMatch, NOT_A_PATH};
pub use template::PathTemplate;

use std::borrow::Cow;

use crate::http;
use crate::request::HeaderSnapshot;

use regex_lite::Regex;

/// One host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com` (stored lower-case, without trailing dot).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the domain itself.
    Subdomain(String),
    /// `*`: any host.
    Any,
}

/// Why a host pattern was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Empty, or a `*` other than a leading `*.` (or the whole pattern).
    Malformed,
    /// A port is given; hosts are compared without port.
    Port,
    /// A character other than letters, digits, `-`, `.` and `_`.
    NotAHostName,
}

impl HostPattern {
    /// Parses a pattern as written in a configuration: `api.example.com`, `*.example.com` or `*`,
    /// case-insensitive, a trailing dot ignored. A bracketed IPv6 literal (`[::1]`) is taken as
    /// written; filters that do not match on addresses reject it with [`HostPattern::is_ip_literal`].
    pub fn parse(text: &str) -> Result<Self, HostError> {
        let lower = text.to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        // Stripped first, as `normalize_host` strips it from the request's host.
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.contains('*') {
            return Err(HostError::Malformed);
        }
        if !name.starts_with('[') {
            if name.contains(':') {
                return Err(HostError::Port);
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                return Err(HostError::NotAHostName);
            }
        }
        Ok(if wild {
            HostPattern::Subdomain(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// True for a bracketed address pattern (`[::1]`), which only some filters accept.
    pub fn is_ip_literal(&self) -> bool {
        match self {
            HostPattern::Exact(h) => h.starts_with('['),
            HostPattern::Subdomain(s) => s.starts_with(".["),
            HostPattern::Any => false,
        }
    }

    /// Whether a normalized host (lower-case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Subdomain(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }
}

/// A condition on the path without its query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A plain string prefix, as Envoy's route `prefix` (`/api` also matches `/apix`).
    Prefix(String),
    /// A regex that must match the whole path.
    Regex(Regex),
    /// A path template (`/users/{id}/orders/*`).
    Template(PathTemplate),
}

/// Why a path condition was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not exactly one of `exact`, `prefix`, `regex` was given.
    Count,
    /// The `exact` or `prefix` text (named) does not start with `/` or contains whitespace, a
    /// control character, `?` or `#`.
    NotAPath(&'static str),
    /// The regex does not compile; regex-lite's message on one line.
    Regex(String),
}

impl PathError {
    /// The configuration field the error is about (`exact`, `prefix`, `regex`); none for
    /// [`PathError::Count`].
    pub fn field(&self) -> Option<&'static str> {
        match self {
            PathError::Count => None,
            PathError::NotAPath(field) => Some(field),
            PathError::Regex(_) => Some("regex"),
        }
    }
}

impl PathMatch {
    /// Builds the condition from exactly one of its three forms.
    pub fn parse(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> Result<Self, PathError> {
        match (exact, prefix, regex) {
            (Some(p), None, None) if is_path_literal(p) => Ok(PathMatch::Exact(p.to_string())),
            (Some(_), None, None) => Err(PathError::NotAPath("exact")),
            (None, Some(p), None) if is_path_literal(p) => Ok(PathMatch::Prefix(p.to_string())),
            (None, Some(_), None) => Err(PathError::NotAPath("prefix")),
            (None, None, Some(r)) => full_match_regex(r).map(PathMatch::Regex).map_err(PathError::Regex),
            _ => Err(PathError::Count),
        }
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }
}

/// True for text usable as a literal path: starts with `/`, no whitespace, control character,
/// `?` (the query is not part of the matched path) or `#`.
pub fn is_path_literal(text: &str) -> bool {
    text.starts_with('/') && is_path_text(text)
}

/// True for text without whitespace, control characters, `?` or `#` (path pieces, rewrites).
pub fn is_path_text(text: &str) -> bool {
    text.bytes().all(|b| b > b' ' && b != 0x7f && b != b'?' && b != b'#')
}

/// True for a query parameter name as configurations write it: the decoded name, not empty,
/// without control characters.
pub fn is_query_name(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(char::is_control)
}

/// The wording of a query parameter name's error, shared by every field that takes one.
pub const NOT_A_QUERY_NAME: &str =
    "a query parameter name is the decoded name: not empty, no control characters";

/// Compiles `pattern` to match a whole string (`^(?:pattern)$`); on error, the message on one line.
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    // Compiled alone first: a pattern such as `a)|(.*` is invalid alone but would be valid, and
    // match anything, once wrapped.
    Regex::new(pattern).map_err(|e| one_line(&e.to_string()))?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| one_line(&e.to_string()))
}

/// A message on one line (regex-lite's span several, which a log line or a config error should not).
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A configured method upper-cased, or `None` when it is not an RFC 9110 token.
pub fn parse_method(text: &str) -> Option<String> {
    (crate::config::is_header_name(text) && !text.starts_with(':')).then(|| text.to_ascii_uppercase())
}

/// Whether `method` is one of `methods` (upper-case, from [`parse_method`]); an empty list matches
/// every method.
pub fn method_matches(methods: &[String], method: &str) -> bool {
    methods.is_empty() || methods.iter().any(|m| m == method)
}

/// Whether a normalized host matches one of `hosts`; an empty list matches every host.
pub fn host_matches(hosts: &[HostPattern], host: &str) -> bool {
    hosts.is_empty() || hosts.iter().any(|h| h.matches(host))
}

/// The request as conditions read it. Each part is asked for only when a condition needs it,
/// so an implementation that reads from the host lazily makes no call a rule does not need.
pub trait MatchRequest {
    /// The method as sent (`GET`).
    fn method(&self) -> &str;
    /// The host normalized ([`crate::http::normalize_host`]); `None` when it cannot be read,
    /// which no host condition matches (filters with host conditions refuse such a request
    /// first, with [`crate::LocalReply::invalid_host`]).
    fn host(&self) -> Option<Cow<'_, str>>;
    /// The path without its query string.
    fn path(&self) -> &str;
    /// The query string as sent (without `?`, not decoded), when the path has one.
    fn query(&self) -> Option<&str>;
    /// The first value of a request header (`name` is lower-case).
    fn header(&self, name: &str) -> Option<&str>;
}

/// A request already read: its method, host and path, and its headers when a rule has header
/// conditions (`None` reads as no header at all).
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a str,
    /// The normalized host, `None` when it cannot be read.
    pub host: Option<&'a str>,
    /// The path without query.
    pub path: &'a str,
    /// The query string (without `?`), when there is one.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: Option<&'a HeaderSnapshot>,
}

impl MatchRequest for RequestParts<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn host(&self) -> Option<Cow<'_, str>> {
        self.host.map(Cow::Borrowed)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.and_then(|h| h.get(name))
    }
}

/// What a header's first value must be.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Anything: the header is present.
    Present,
    /// Exactly this.
    Exact(String),
    /// Starting with this.
    Prefix(String),
    /// Matched in full by this regex.
    Regex(Regex),
}

/// A condition on one request header.
#[derive(Debug, Clone)]
pub struct HeaderCondition {
    /// Lower-case name.
    pub name: String,
    /// The condition on its first value; a missing header fails it.
    pub value: ValueMatch,
    /// The result is negated (a missing header then holds).
    pub invert: bool,
}

impl HeaderCondition {
    /// Whether the request holds the condition.
    pub fn matches<R: MatchRequest + ?Sized>(&self, req: &R) -> bool {
        let held = match (&self.value, req.header(&self.name)) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(e), Some(v)) => v == e,
            (ValueMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
        };
        held != self.invert
    }
}

/// A condition on one query parameter, compared percent-decoded (`%XX` and `+` as a space, as
/// [`crate::http::query_params`] reads them) on both its name and its value.
#[derive(Debug, Clone)]
pub struct QueryCondition {
    /// The parameter's name, decoded.
    pub name: String,
    /// The condition on the value of its first occurrence; a missing parameter fails it, a
    /// parameter without `=` has the empty value.
    pub value: ValueMatch,
    /// The result is negated (a missing parameter then holds).
    pub invert: bool,
}

impl QueryCondition {
    /// Whether the request holds the condition. Nothing is decoded into a new copy: a regex on a
    /// value with escapes reads it from a buffer kept for that.
    pub fn matches<R: MatchRequest + ?Sized>(&self, req: &R) -> bool {
        let raw = req.query().and_then(|q| http::raw_query_param(q, &self.name));
        let held = match (&self.value, raw) {
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(e), Some(v)) => http::query_component_eq(v, e),
            (ValueMatch::Prefix(p), Some(v)) => http::query_component_starts_with(v, p),
            (ValueMatch::Regex(r), Some(v)) => regex_on_decoded(r, v),
        };
        held != self.invert
    }
}

thread_local! {
    /// Where a query value with escapes is decoded for a regex: kept from one request to the
    /// next, so matching allocates only until it has held the longest value.
    static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `regex` matches the decoded raw query component `raw` in full.
fn regex_on_decoded(regex: &Regex, raw: &str) -> bool {
    if !raw.contains(['%', '+']) {
        return regex.is_match(raw);
    }
    DECODED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            buf.extend(http::decoded_query_bytes(raw));
            match std::str::from_utf8(&buf) {
                Ok(text) => regex.is_match(text),
                // Bytes that are not UTF-8 read as U+FFFD, as `decode_query_component` gives them.
                Err(_) => regex.is_match(&String::from_utf8_lossy(&buf)),
            }
        }
        Err(_) => regex.is_match(&http::decode_query_component(raw)),
    })
}

/// Conditions on host, path, method, query parameters and headers, all of which must hold;
/// empty lists and no path match everything. Built by [`RawMatch::compile`].
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    /// Any of these hosts.
    pub hosts: Vec<HostPattern>,
    /// The path.
    pub path: Option<PathMatch>,
    /// Any of these methods (upper-case, from [`parse_method`]).
    pub methods: Vec<String>,
    /// All of these query parameters.
    pub query_params: Vec<QueryCondition>,
    /// All of these headers.
    pub headers: Vec<HeaderCondition>,
}

impl RequestMatch {
    /// Whether the request matches. The method is compared first, then the host, the path, the
    /// query parameters and the headers; a part no condition names is never asked for.
    pub fn matches<R: MatchRequest + ?Sized>(&self, req: &R) -> bool {
        (self.methods.is_empty() || method_matches(&self.methods, req.method()))
            && (self.hosts.is_empty() || req.host().is_some_and(|h| host_matches(&self.hosts, &h)))
            && self.path.as_ref().is_none_or(|p| p.matches(req.path()))
            && self.query_params.iter().all(|q| q.matches(req))
            && self.headers.iter().all(|h| h.matches(req))
    }

    /// True when there is no condition (every request matches).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.path.is_none()
            && self.methods.is_empty()
            && self.query_params.is_empty()
            && self.headers.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_parse() {
        assert_eq!(HostPattern::parse("API.example.com."), Ok(HostPattern::Exact("api.example.com".into())));
        assert_eq!(HostPattern::parse("*.Example.org"), Ok(HostPattern::Subdomain(".example.org".into())));
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(HostPattern::parse("svc_a.internal"), Ok(HostPattern::Exact("svc_a.internal".into())));
        assert_eq!(HostPattern::parse(""), Err(HostError::Malformed));
        assert_eq!(HostPattern::parse("*."), Err(HostError::Malformed));
        assert_eq!(HostPattern::parse("."), Err(HostError::Malformed));
        assert_eq!(HostPattern::parse("a*.b"), Err(HostError::Malformed));
        assert_eq!(HostPattern::parse("*.*.b"), Err(HostError::Malformed));
        assert_eq!(HostPattern::parse("a.com:80"), Err(HostError::Port));
        assert_eq!(HostPattern::parse("a b"), Err(HostError::NotAHostName));
        assert_eq!(HostPattern::parse("a/b"), Err(HostError::NotAHostName));
        let ip = HostPattern::parse("[::1]").unwrap();
        assert_eq!(ip, HostPattern::Exact("[::1]".into()));
        assert!(ip.is_ip_literal());
        assert!(HostPattern::parse("*.[x]").unwrap().is_ip_literal());
        assert!(!HostPattern::parse("a.b").unwrap().is_ip_literal());
        assert!(!HostPattern::Any.is_ip_literal());
    }

    #[test]
    fn hosts_match() {
        let exact = HostPattern::parse("api.example.com").unwrap();
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("xapi.example.com"));
        assert!(sub.matches("a.example.com"));
        assert!(sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com"), "the domain itself is not a subdomain");
        assert!(!sub.matches(".example.com"));
        assert!(!sub.matches("badexample.com"));
        assert!(HostPattern::Any.matches(""));
        assert!(host_matches(&[], "anything"));
        assert!(host_matches(&[exact.clone(), sub.clone()], "x.example.com"));
        assert!(!host_matches(&[exact, sub], "example.com"));
    }

    #[test]
    fn paths() {
        let exact = PathMatch::parse(Some("/a"), None, None).unwrap();
        assert!(exact.matches("/a"));
        assert!(!exact.matches("/a/"));
        let prefix = PathMatch::parse(None, Some("/api"), None).unwrap();
        assert!(prefix.matches("/api/x"));
        assert!(prefix.matches("/apix"), "a plain string prefix, as Envoy's");
        assert!(!prefix.matches("/ap"));
        let re = PathMatch::parse(None, None, Some("/users/[0-9]+")).unwrap();
        assert!(re.matches("/users/42"));
        assert!(!re.matches("/users/42/x"), "the regex matches the whole path");
        assert!(!re.matches("/v1/users/42"));
        let alt = PathMatch::parse(None, None, Some("/a|/b")).unwrap();
        assert!(!alt.matches("/a/x"), "alternation stays inside the anchors");
        assert!(alt.matches("/b"));
    }

    #[test]
    fn path_errors_name_the_field() {
        let err = |e: Option<&str>, p: Option<&str>, r: Option<&str>| PathMatch::parse(e, p, r).unwrap_err();
        assert_eq!(err(None, None, None), PathError::Count);
        assert_eq!(err(Some("/a"), Some("/b"), None), PathError::Count);
        assert_eq!(err(Some("/a"), None, Some("/b")).field(), None);
        assert_eq!(err(Some("x"), None, None), PathError::NotAPath("exact"));
        assert_eq!(err(None, Some("/a?b"), None), PathError::NotAPath("prefix"));
        assert_eq!(err(None, Some("/a b"), None).field(), Some("prefix"));
        assert_eq!(err(Some("/a#b"), None, None).field(), Some("exact"));
        let regex = err(None, None, Some("("));
        assert_eq!(regex.field(), Some("regex"));
        assert!(matches!(&regex, PathError::Regex(m) if !m.contains('\n') && !m.is_empty()));
        assert!(full_match_regex(")|(.*").is_err(), "must not escape the anchors");
        assert!(full_match_regex("a)(").is_err());
        assert!(is_path_text("/é"));
        assert!(!is_path_text("/\u{7f}"));
    }

    #[test]
    fn methods() {
        assert_eq!(parse_method("get").as_deref(), Some("GET"));
        assert_eq!(parse_method("PURGE").as_deref(), Some("PURGE"));
        assert_eq!(parse_method("G T"), None);
        assert_eq!(parse_method(":method"), None);
        assert_eq!(parse_method(""), None);
        assert!(method_matches(&[], "DELETE"));
        let list = ["GET".to_string(), "POST".to_string()];
        assert!(method_matches(&list, "POST"));
        assert!(!method_matches(&list, "get"), "methods are case-sensitive");
    }

    fn req<'a>(
        method: &'a str,
        host: Option<&'a str>,
        path: &'a str,
        h: &'a HeaderSnapshot,
    ) -> RequestParts<'a> {
        RequestParts { method, host, path, query: None, headers: Some(h) }
    }

    #[test]
    fn every_condition_must_hold() {
        let m = RequestMatch {
            hosts: vec![
                HostPattern::parse("api.example.com").unwrap(),
                HostPattern::parse("*.internal").unwrap(),
            ],
            path: Some(PathMatch::parse(None, Some("/v1/"), None).unwrap()),
            methods: vec!["GET".into()],
            headers: vec![HeaderCondition {
                name: "x-env".into(),
                value: ValueMatch::Present,
                invert: false,
            }],
            ..RequestMatch::default()
        };
        let h = HeaderSnapshot::from_strs(&[("X-Env", "prod")]);
        assert!(m.matches(&req("GET", Some("api.example.com"), "/v1/x", &h)));
        assert!(m.matches(&req("GET", Some("a.internal"), "/v1/", &h)));
        assert!(!m.matches(&req("GET", Some("internal"), "/v1/x", &h)));
        assert!(!m.matches(&req("GET", None, "/v1/x", &h)), "a host no rule can read matches no host");
        assert!(!m.matches(&req("POST", Some("api.example.com"), "/v1/x", &h)));
        assert!(!m.matches(&req("GET", Some("api.example.com"), "/v2/x", &h)));
        let none = HeaderSnapshot::default();
        assert!(!m.matches(&req("GET", Some("api.example.com"), "/v1/x", &none)));
        let no_headers = RequestParts {
            method: "GET",
            host: Some("api.example.com"),
            path: "/v1/x",
            query: None,
            headers: None,
        };
        assert!(!m.matches(&no_headers));
        assert!(!m.is_empty());
        assert!(RequestMatch::default().is_empty());
        assert!(
            RequestMatch::default().matches(&req("", None, "", &none)),
            "no condition matches everything"
        );
    }

    /// A request that counts what is asked of it: parts no condition names are never read.
    struct Counting<'a>(RequestParts<'a>, std::cell::Cell<u32>);

    impl MatchRequest for Counting<'_> {
        fn method(&self) -> &str {
            self.1.set(self.1.get() + 1);
            self.0.method
        }
        fn host(&self) -> Option<Cow<'_, str>> {
            self.1.set(self.1.get() + 10);
            self.0.host()
        }
        fn path(&self) -> &str {
            self.1.set(self.1.get() + 100);
            self.0.path
        }
        fn query(&self) -> Option<&str> {
            self.1.set(self.1.get() + 10_000);
            self.0.query
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.1.set(self.1.get() + 1000);
            self.0.header(name)
        }
    }

    #[test]
    fn only_what_a_condition_names_is_read() {
        let h = HeaderSnapshot::default();
        let reads = |m: &RequestMatch| {
            let r = Counting(req("GET", Some("h"), "/p", &h), std::cell::Cell::new(0));
            let _ = m.matches(&r);
            r.1.get()
        };
        assert_eq!(reads(&RequestMatch::default()), 0);
        let path = RequestMatch { path: Some(PathMatch::Prefix("/".into())), ..RequestMatch::default() };
        assert_eq!(reads(&path), 100);
        let method = RequestMatch { methods: vec!["POST".into()], ..path.clone() };
        assert_eq!(reads(&method), 1, "a failed method stops before the path");
        let host = RequestMatch { hosts: vec![HostPattern::Any], ..path.clone() };
        assert_eq!(reads(&host), 110);
        let query = RequestMatch {
            query_params: vec![QueryCondition { name: "a".into(), value: ValueMatch::Present, invert: true }],
            ..path
        };
        assert_eq!(reads(&query), 10_100);
    }

    #[test]
    fn query_conditions_compare_decoded_names_and_values() {
        let h = HeaderSnapshot::default();
        let at = |query: &'static str| RequestParts {
            method: "GET",
            host: Some("h"),
            path: "/",
            query: Some(query),
            headers: Some(&h),
        };
        let cond =
            |name: &str, value: ValueMatch, invert: bool| QueryCondition { name: name.into(), value, invert };
        let q = at("debug=1&user+id=J%C3%B6rg&debug=2&flag&tag=v2.3&enc=%31%32");
        assert!(cond("debug", ValueMatch::Exact("1".into()), false).matches(&q));
        assert!(!cond("debug", ValueMatch::Exact("2".into()), false).matches(&q), "the first occurrence");
        assert!(cond("user id", ValueMatch::Exact("Jörg".into()), false).matches(&q), "decoded");
        assert!(cond("user id", ValueMatch::Prefix("J\u{f6}".into()), false).matches(&q));
        assert!(cond("enc", ValueMatch::Exact("12".into()), false).matches(&q));
        assert!(cond("flag", ValueMatch::Present, false).matches(&q));
        assert!(cond("flag", ValueMatch::Exact(String::new()), false).matches(&q), "no `=`: empty");
        assert!(!cond("fla", ValueMatch::Present, false).matches(&q));
        assert!(cond("missing", ValueMatch::Present, true).matches(&q), "absent");
        assert!(cond("missing", ValueMatch::Exact("x".into()), true).matches(&q));
        assert!(cond("tag", ValueMatch::Regex(full_match_regex(r"v2\.[0-9]+").unwrap()), false).matches(&q));
        assert!(cond("enc", ValueMatch::Regex(full_match_regex("[0-9]{2}").unwrap()), false).matches(&q));
        assert!(
            !cond("tag", ValueMatch::Regex(full_match_regex("v2").unwrap()), false).matches(&q),
            "in full"
        );
        let odd = at("v=%FF%2B");
        assert!(cond("v", ValueMatch::Regex(full_match_regex("\u{fffd}[+]").unwrap()), false).matches(&odd));
        let none = RequestParts { query: None, ..q };
        assert!(!cond("debug", ValueMatch::Present, false).matches(&none));
        assert!(cond("debug", ValueMatch::Present, true).matches(&none));
    }

    #[test]
    fn header_conditions() {
        let h = HeaderSnapshot::from_strs(&[("x-env", "prod-eu"), ("x-env", "staging"), ("x-ver", "v2.3")]);
        let r = req("GET", Some("h"), "/", &h);
        let cond = |name: &str, value: ValueMatch, invert: bool| HeaderCondition {
            name: name.into(),
            value,
            invert,
        };
        let re = |p: &str| ValueMatch::Regex(full_match_regex(p).unwrap());
        assert!(cond("x-env", ValueMatch::Present, false).matches(&r));
        assert!(!cond("x-env", ValueMatch::Present, true).matches(&r));
        assert!(!cond("x-gone", ValueMatch::Present, false).matches(&r));
        assert!(cond("x-gone", ValueMatch::Present, true).matches(&r), "absent");
        assert!(cond("x-env", ValueMatch::Exact("prod-eu".into()), false).matches(&r));
        assert!(!cond("x-env", ValueMatch::Exact("staging".into()), false).matches(&r), "the first value");
        assert!(!cond("x-env", ValueMatch::Exact("Prod-eu".into()), false).matches(&r), "case-sensitive");
        assert!(cond("x-env", ValueMatch::Prefix("prod".into()), false).matches(&r));
        assert!(!cond("x-env", ValueMatch::Prefix("eu".into()), false).matches(&r));
        assert!(cond("x-ver", re(r"v2\.[0-9]+"), false).matches(&r));
        assert!(!cond("x-ver", re("v2"), false).matches(&r), "the regex matches the whole value");
        assert!(cond("x-ver", re("v3.*"), true).matches(&r));
        assert!(
            cond("x-gone", ValueMatch::Exact("x".into()), true).matches(&r),
            "inverted: a missing header holds"
        );
    }

    #[test]
    fn templates_are_a_path_condition() {
        let m = PathMatch::Template(PathTemplate::parse("/users/{id}/orders/*").unwrap());
        assert!(m.matches("/users/7/orders/9"));
        assert!(!m.matches("/users/7/orders"));
    }
}
