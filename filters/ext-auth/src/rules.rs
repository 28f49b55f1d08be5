//! Which requests are checked: rules on host, path and method, the first matching one decides.

use regex_lite::Regex;

use crate::config::Action;

/// A host pattern, compared with the request's host lower-cased and without its port.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// `api.example.com`.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any subdomain, not the domain itself.
    Subdomain(String),
    /// `*`.
    Any,
}

impl HostPattern {
    /// Parses a pattern as written in the configuration.
    pub fn parse(pattern: &str) -> Result<Self, &'static str> {
        let lower = pattern.to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err("a host is `api.example.com`, `*.example.com` or `*`, without a port");
        }
        Ok(if wild {
            HostPattern::Subdomain(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Whether a normalized host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Subdomain(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }
}

/// A path condition on the path without its query string.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A string prefix, as Envoy's route `prefix`.
    Prefix(String),
    /// A regex matching the whole path.
    Regex(Regex),
}

impl PathMatch {
    /// Builds the condition from exactly one of the three forms; on error, the offending field
    /// (none when the count is wrong) and why.
    pub fn parse(
        exact: Option<&str>,
        prefix: Option<&str>,
        regex: Option<&str>,
    ) -> Result<Self, (Option<&'static str>, String)> {
        match (exact, prefix, regex) {
            (Some(p), None, None) => {
                literal(p).map(|p| PathMatch::Exact(p.to_string())).map_err(|e| (Some("exact"), e))
            }
            (None, Some(p), None) => {
                literal(p).map(|p| PathMatch::Prefix(p.to_string())).map_err(|e| (Some("prefix"), e))
            }
            (None, None, Some(r)) => {
                // Compiled alone first, so a pattern such as `a)|(.*` cannot escape the anchors.
                Regex::new(r)
                    .and_then(|_| Regex::new(&format!("^(?:{r})$")))
                    .map(PathMatch::Regex)
                    .map_err(|e| (Some("regex"), format!("invalid regex: {}", one_line(&e.to_string()))))
            }
            _ => Err((None, "give exactly one of `exact`, `prefix`, `regex`".to_string())),
        }
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

fn literal(p: &str) -> Result<&str, String> {
    if p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#') {
        Ok(p)
    } else {
        Err("must start with `/` and have no whitespace, control characters, `?` or `#`".to_string())
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A rule's conditions; empty lists and no path match everything.
#[derive(Debug, Clone, Default)]
pub struct RuleMatch {
    /// Any of these hosts.
    pub hosts: Vec<HostPattern>,
    /// The path.
    pub path: Option<PathMatch>,
    /// Any of these methods (upper-case).
    pub methods: Vec<String>,
}

impl RuleMatch {
    /// Whether a request with this method, normalized host and path (no query) matches.
    pub fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(host)))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name (or index) for logs.
    pub name: String,
    /// Conditions.
    pub matcher: RuleMatch,
    /// What to do.
    pub action: Action,
}

/// The action for a request: the first matching rule's, else `default`.
pub fn decide(rules: &[Rule], default: Action, method: &str, host: &str, path: &str) -> Action {
    rules.iter().find(|r| r.matcher.matches(method, host, path)).map_or(default, |r| r.action)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(matcher: RuleMatch, action: Action) -> Rule {
        Rule { name: "r".into(), matcher, action }
    }

    #[test]
    fn hosts() {
        let exact = HostPattern::parse("API.example.com.").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("xapi.example.com"));
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches("a.example.com"));
        assert!(!sub.matches("example.com"));
        assert!(!sub.matches("badexample.com"));
        assert!(HostPattern::parse("*").unwrap().matches("anything"));
        assert!(HostPattern::parse("a:80").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("a*.b").is_err());
    }

    #[test]
    fn paths() {
        assert!(PathMatch::parse(Some("/healthz"), None, None).unwrap().matches("/healthz"));
        assert!(!PathMatch::parse(Some("/healthz"), None, None).unwrap().matches("/healthz/x"));
        assert!(PathMatch::parse(None, Some("/public/"), None).unwrap().matches("/public/a.css"));
        let re = PathMatch::parse(None, None, Some("/users/[0-9]+")).unwrap();
        assert!(re.matches("/users/7"));
        assert!(!re.matches("/users/7/x"), "whole path");
        assert!(!PathMatch::parse(None, None, Some("/a|/b")).unwrap().matches("/a/x"));
        assert!(PathMatch::parse(None, None, Some(")|(.*")).is_err());
        assert!(PathMatch::parse(Some("x"), None, None).is_err());
        assert!(PathMatch::parse(Some("/a?b"), None, None).is_err());
        assert_eq!(PathMatch::parse(Some("/a"), Some("/b"), None).unwrap_err().0, None);
        assert_eq!(PathMatch::parse(None, None, None).unwrap_err().0, None);
    }

    #[test]
    fn first_matching_rule_decides_and_default_applies_otherwise() {
        let rules = vec![
            rule(
                RuleMatch {
                    path: Some(PathMatch::Exact("/healthz".into())),
                    methods: vec!["GET".into()],
                    ..Default::default()
                },
                Action::Skip,
            ),
            rule(
                RuleMatch { hosts: vec![HostPattern::parse("*.internal").unwrap()], ..Default::default() },
                Action::Skip,
            ),
            rule(
                RuleMatch { path: Some(PathMatch::Prefix("/".into())), ..Default::default() },
                Action::Check,
            ),
        ];
        assert_eq!(decide(&rules, Action::Check, "GET", "shop.example.com", "/healthz"), Action::Skip);
        assert_eq!(decide(&rules, Action::Check, "POST", "shop.example.com", "/healthz"), Action::Check);
        assert_eq!(decide(&rules, Action::Check, "GET", "a.internal", "/x"), Action::Skip);
        assert_eq!(decide(&rules, Action::Skip, "GET", "shop.example.com", "/x"), Action::Check);
        assert_eq!(decide(&[], Action::Skip, "GET", "h", "/x"), Action::Skip);
        assert_eq!(decide(&[], Action::Check, "GET", "h", "/x"), Action::Check);
    }
}
