//! Rules: which requests need which tokens. As in Envoy's `jwt_authn`, the first rule whose
//! match holds decides, and a request no rule matches is not checked.

use regex_lite::Regex;

/// A host condition.
#[derive(Debug, Clone)]
pub enum Host {
    /// One host, lower-case, without port.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any subdomain, not the domain itself.
    Subdomain(String),
}

/// A path condition on the path without query.
#[derive(Debug, Clone)]
pub enum Path {
    /// The whole path.
    Exact(String),
    /// A string prefix (`/api` also matches `/apix`, as Envoy's `prefix`).
    Prefix(String),
    /// A regex matching the whole path.
    Regex(Regex),
}

/// What a request must look like for a rule to apply; empty parts match everything.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// Any of these hosts.
    pub hosts: Vec<Host>,
    /// The path.
    pub path: Option<Path>,
    /// Any of these methods (upper-case).
    pub methods: Vec<String>,
}

impl Match {
    /// Whether a request with this (normalized) host, path without query, and method matches.
    pub fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        let host_ok = self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h {
                Host::Exact(e) => host == e,
                Host::Subdomain(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            });
        let path_ok = match &self.path {
            None => true,
            Some(Path::Exact(p)) => path == p,
            Some(Path::Prefix(p)) => path.starts_with(p.as_str()),
            Some(Path::Regex(r)) => r.is_match(path),
        };
        host_ok && path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// What a matched request needs (Envoy's `JwtRequirement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A valid token of this provider (index), with the provider's audiences or these.
    Provider {
        /// Provider index.
        provider: usize,
        /// Audiences replacing the provider's (`provider_and_audiences`).
        audiences: Option<Vec<String>>,
    },
    /// Any one of these.
    Any(Vec<Requirement>),
    /// All of these.
    All(Vec<Requirement>),
    /// Tokens are optional; a token present must be valid for the provider of its issuer.
    AllowMissing,
    /// Tokens are optional and an invalid one is ignored; valid ones still produce outputs.
    AllowMissingOrFailed,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// When it applies.
    pub matcher: Match,
    /// What it needs; `None` lets the request through unchecked.
    pub requires: Option<Requirement>,
}

/// The first rule matching the request.
pub fn first_match<'r>(rules: &'r [Rule], host: &str, path: &str, method: &str) -> Option<&'r Rule> {
    rules.iter().find(|r| r.matcher.matches(host, path, method))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let m = Match {
            hosts: vec![Host::Exact("api.example.com".into()), Host::Subdomain(".internal".into())],
            path: Some(Path::Prefix("/nodebackend".into())),
            methods: vec!["GET".into()],
        };
        assert!(m.matches("api.example.com", "/nodebackend/x", "GET"));
        assert!(m.matches("a.internal", "/nodebackend", "GET"));
        assert!(!m.matches("internal", "/nodebackend", "GET"));
        assert!(!m.matches("api.example.com", "/other", "GET"));
        assert!(!m.matches("api.example.com", "/nodebackend", "POST"));
        let r = Match { path: Some(Path::Regex(Regex::new("^/u/[0-9]+$").unwrap())), ..Match::default() };
        assert!(r.matches("h", "/u/12", "PUT"));
        assert!(!r.matches("h", "/u/12/x", "PUT"));
        assert!(Match::default().matches("", "", ""));
        let e = Match { path: Some(Path::Exact("/login".into())), ..Match::default() };
        assert!(!e.matches("h", "/login/", "GET"));
    }

    #[test]
    fn first_rule_wins() {
        let rules = vec![
            Rule {
                matcher: Match { path: Some(Path::Exact("/login".into())), ..Match::default() },
                requires: None,
            },
            Rule { matcher: Match::default(), requires: Some(Requirement::AllowMissing) },
        ];
        assert!(first_match(&rules, "h", "/login", "POST").unwrap().requires.is_none());
        assert_eq!(first_match(&rules, "h", "/x", "GET").unwrap().requires, Some(Requirement::AllowMissing));
        assert!(first_match(&rules[..1], "h", "/x", "GET").is_none());
    }
}
