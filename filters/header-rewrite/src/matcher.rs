//! Request matching: host, path, method and headers, all of which must match.

use regex_lite::Regex;

use crate::template::Source;

/// One host pattern.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// `api.example.com` (stored lower-case).
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any subdomain, not the bare domain.
    Suffix(String),
    /// `*`: any host.
    Any,
}

impl HostPattern {
    /// Whether a normalized host (lower-case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }
}

/// How the path (without query) is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix of the path (plain string prefix, as Envoy's `prefix`).
    Prefix(String),
    /// A regex that must match the whole path.
    Regex(Regex),
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// What a header must look like.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Present, any value.
    Present,
    /// Absent.
    Absent,
    /// Present with exactly this (first) value.
    Exact(String),
    /// Present with a (first) value the regex matches in full.
    Regex(Regex),
}

/// A header condition.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Slot of the header name in the plugin's request header table.
    pub slot: usize,
    /// The condition on its value.
    pub value: ValueMatch,
}

impl HeaderMatch {
    /// Whether the header in `src` satisfies the condition.
    pub fn matches(&self, src: &dyn Source) -> bool {
        let value = src.request_header(self.slot);
        match (&self.value, value) {
            (ValueMatch::Absent, v) => v.is_none(),
            (_, None) => false,
            (ValueMatch::Present, Some(_)) => true,
            (ValueMatch::Exact(e), Some(v)) => v == e,
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

/// A rule's conditions; empty lists and `None` match everything.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// Any of these hosts.
    pub hosts: Vec<HostPattern>,
    /// The path.
    pub path: Option<PathMatch>,
    /// Any of these methods (upper-case).
    pub methods: Vec<String>,
    /// All of these headers.
    pub headers: Vec<HeaderMatch>,
}

impl Match {
    /// True when there is no condition (every request matches).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.path.is_none() && self.methods.is_empty() && self.headers.is_empty()
    }

    /// Whether the request matches. Cheap checks first; each request value is read only when a
    /// condition needs it (and the [`Source`] caches it).
    pub fn matches(&self, src: &dyn Source) -> bool {
        if !self.methods.is_empty() {
            let method = src.method();
            if !self.methods.iter().any(|m| m == method) {
                return false;
            }
        }
        if !self.hosts.is_empty() {
            let host = src.host();
            if !self.hosts.iter().any(|h| h.matches(&host)) {
                return false;
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(src.path()) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(src))
    }
}

/// Compiles `pattern` to match a whole string (`^(?:pattern)$`).
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    // Compiled alone first: a pattern such as `a)|(.*` is invalid alone but would be valid, and
    // match anything, once wrapped.
    Regex::new(pattern).map_err(|e| one_line(&e.to_string()))?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| one_line(&e.to_string()))
}

/// A regex error message on one line (regex-lite's messages span several).
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Req {
        method: &'static str,
        host: &'static str,
        path: &'static str,
        headers: Vec<Option<&'static str>>,
    }

    impl Source for Req {
        fn method(&self) -> &str {
            self.method
        }
        fn host(&self) -> std::borrow::Cow<'_, str> {
            self.host.into()
        }
        fn authority(&self) -> &str {
            self.host
        }
        fn path(&self) -> &str {
            self.path
        }
        fn request_header(&self, slot: usize) -> Option<&str> {
            self.headers.get(slot).copied().flatten()
        }
        fn response_header(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn req(method: &'static str, host: &'static str, path: &'static str) -> Req {
        Req { method, host, path, headers: vec![Some("prod"), None, Some("v2.3")] }
    }

    #[test]
    fn hosts() {
        let exact = HostPattern::Exact("api.example.com".into());
        let wild = HostPattern::Suffix(".example.com".into());
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("xapi.example.com"));
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(HostPattern::Any.matches(""));
    }

    #[test]
    fn paths() {
        assert!(PathMatch::Exact("/a".into()).matches("/a"));
        assert!(!PathMatch::Exact("/a".into()).matches("/a/"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/x"));
        assert!(!PathMatch::Prefix("/api/".into()).matches("/api"));
        let r = PathMatch::Regex(full_match_regex("/users/[0-9]+").unwrap());
        assert!(r.matches("/users/42"));
        assert!(!r.matches("/users/42/x"), "regex must match the whole path");
        assert!(!r.matches("/v1/users/42"));
        // Alternation stays inside the anchors.
        let alt = PathMatch::Regex(full_match_regex("/a|/b").unwrap());
        assert!(!alt.matches("/a/x"));
        assert!(alt.matches("/b"));
        assert!(full_match_regex("(").is_err());
        assert!(full_match_regex(")|(.*").is_err(), "must not escape the anchors");
        assert!(full_match_regex("a)(").is_err());
    }

    #[test]
    fn all_conditions_must_hold() {
        let m = Match {
            hosts: vec![
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Suffix(".internal".into()),
            ],
            path: Some(PathMatch::Prefix("/v1/".into())),
            methods: vec!["GET".into(), "POST".into()],
            headers: vec![
                HeaderMatch { slot: 0, value: ValueMatch::Exact("prod".into()) },
                HeaderMatch { slot: 1, value: ValueMatch::Absent },
                HeaderMatch { slot: 2, value: ValueMatch::Regex(full_match_regex(r"v2\.[0-9]+").unwrap()) },
            ],
        };
        assert!(m.matches(&req("GET", "api.example.com", "/v1/x")));
        assert!(m.matches(&req("POST", "svc.internal", "/v1/")));
        assert!(!m.matches(&req("DELETE", "api.example.com", "/v1/x")));
        assert!(!m.matches(&req("GET", "other.example.com", "/v1/x")));
        assert!(!m.matches(&req("GET", "api.example.com", "/v2/x")));
        let mut r = req("GET", "api.example.com", "/v1/x");
        r.headers = vec![Some("staging"), None, Some("v2.3")];
        assert!(!m.matches(&r));
        r.headers = vec![Some("prod"), Some("1"), Some("v2.3")];
        assert!(!m.matches(&r), "header that must be absent is present");
        r.headers = vec![Some("prod"), None, Some("v2.3-beta")];
        assert!(!m.matches(&r), "regex must match the whole value");
        r.headers = vec![Some("prod"), None, None];
        assert!(!m.matches(&r));
        assert!(Match::default().matches(&r), "an empty match matches everything");
    }

    #[test]
    fn presence() {
        let present = HeaderMatch { slot: 0, value: ValueMatch::Present };
        let r = req("GET", "h", "/");
        assert!(present.matches(&r));
        let missing = HeaderMatch { slot: 1, value: ValueMatch::Present };
        assert!(!missing.matches(&r));
    }
}
