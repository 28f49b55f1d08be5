//! Request matching: host, path, method and headers, all of which must match.

use regex_lite::Regex;

use gatewasm::matcher;
pub use gatewasm::matcher::{full_match_regex, HostPattern, PathMatch};

use crate::template::Source;

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
        // The emptiness checks come first, so a value no condition needs is never read.
        if !self.methods.is_empty() && !matcher::method_matches(&self.methods, src.method()) {
            return false;
        }
        if !self.hosts.is_empty() && !src.host().is_some_and(|h| matcher::host_matches(&self.hosts, &h)) {
            return false;
        }
        if let Some(path) = &self.path {
            if !path.matches(src.path()) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(src))
    }
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
        fn host(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.host.into())
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
    fn all_conditions_must_hold() {
        let m = Match {
            hosts: vec![
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Subdomain(".internal".into()),
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
