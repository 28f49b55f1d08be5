//! Request matching: host, path, method and headers, all of which must match.

use regex_lite::Regex;

use gatewasm::matcher;
pub use gatewasm::matcher::{full_match_regex, HostPattern, PathMatch};

use crate::template::Values;

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
    /// Whether the request's header satisfies the condition.
    pub fn matches(&self, values: &Values<'_>) -> bool {
        let value = values.request_header(self.slot);
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

    /// Whether the request matches. Cheap checks first; the host is normalized only when a
    /// condition names hosts.
    pub fn matches(&self, values: &Values<'_>) -> bool {
        let request = values.request;
        if !self.methods.is_empty() && !matcher::method_matches(&self.methods, request.method()) {
            return false;
        }
        if !self.hosts.is_empty() && !request.host().is_some_and(|h| matcher::host_matches(&self.hosts, &h)) {
            return false;
        }
        if let Some(path) = &self.path {
            if !path.matches(request.path()) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(values))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use gatewasm::{HeaderSnapshot, Request};

    /// The slot table of the tests' header conditions.
    fn names() -> Vec<String> {
        ["x-env", "x-debug", "x-version"].map(String::from).to_vec()
    }

    /// A request with `x-env: prod` and `x-version: v2.3`.
    fn req(method: &str, host: &str, path: &str) -> Request {
        with(method, host, path, &[("x-env", "prod"), ("x-version", "v2.3")])
    }

    fn with(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut all = vec![(":method", method), (":authority", host), (":path", path)];
        all.extend_from_slice(headers);
        Request::from_headers(HeaderSnapshot::from_strs(&all))
    }

    fn matches(m: &Match, request: &Request) -> bool {
        m.matches(&Values { request, names: &names(), response: None })
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
        assert!(matches(&m, &req("GET", "api.example.com", "/v1/x")));
        assert!(matches(&m, &req("POST", "svc.internal:8080", "/v1/?q=1")));
        assert!(!matches(&m, &req("DELETE", "api.example.com", "/v1/x")));
        assert!(!matches(&m, &req("GET", "other.example.com", "/v1/x")));
        assert!(!matches(&m, &req("GET", "api.example.com", "/v2/x")));
        let r = |headers: &[(&str, &str)]| with("GET", "api.example.com", "/v1/x", headers);
        assert!(!matches(&m, &r(&[("x-env", "staging"), ("x-version", "v2.3")])));
        assert!(
            !matches(&m, &r(&[("x-env", "prod"), ("x-debug", "1"), ("x-version", "v2.3")])),
            "header that must be absent is present"
        );
        assert!(
            !matches(&m, &r(&[("x-env", "prod"), ("x-version", "v2.3-beta")])),
            "regex must match the whole value"
        );
        assert!(!matches(&m, &r(&[("x-env", "prod")])));
        assert!(matches(&Match::default(), &r(&[])), "an empty match matches everything");
    }

    #[test]
    fn presence() {
        let present = HeaderMatch { slot: 0, value: ValueMatch::Present };
        let r = req("GET", "h", "/");
        let names = names();
        let values = Values { request: &r, names: &names, response: None };
        assert!(present.matches(&values));
        let missing = HeaderMatch { slot: 1, value: ValueMatch::Present };
        assert!(!missing.matches(&values));
    }
}
