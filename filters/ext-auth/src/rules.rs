//! Which requests are checked: rules on host, path, method and headers, the first matching one
//! decides.

use gatewasm::matcher::{RequestMatch, RequestParts};
use gatewasm::HeaderSnapshot;

use serde::Deserialize;

/// Check or skip.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Ask the auth service.
    #[default]
    Check,
    /// Let the request through without asking (health checks, public assets).
    Skip,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name (or index) for logs.
    pub name: String,
    /// Conditions.
    pub matcher: RequestMatch,
    /// What to do.
    pub action: Action,
}

/// The action for a request (normalized host, `:path` with its query, headers as the client
/// sent them): the first matching rule's, else `default`.
pub fn decide(
    rules: &[Rule],
    default: Action,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &HeaderSnapshot,
) -> Action {
    let (path, query) = gatewasm::http::split_path(path_and_query);
    let req = RequestParts { method, host: Some(host), path, query, headers: Some(headers) };
    rules.iter().find(|r| r.matcher.matches(&req)).map_or(default, |r| r.action)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gatewasm::matcher::{HeaderCondition, HostPattern, PathMatch, QueryCondition, ValueMatch};

    fn rule(matcher: RequestMatch, action: Action) -> Rule {
        Rule { name: "r".into(), matcher, action }
    }

    #[test]
    fn first_matching_rule_decides_and_default_applies_otherwise() {
        let rules = vec![
            rule(
                RequestMatch {
                    path: Some(PathMatch::Exact("/healthz".into())),
                    methods: vec!["GET".into()],
                    ..Default::default()
                },
                Action::Skip,
            ),
            rule(
                RequestMatch { hosts: vec![HostPattern::parse("*.internal").unwrap()], ..Default::default() },
                Action::Skip,
            ),
            rule(
                RequestMatch {
                    headers: vec![HeaderCondition {
                        name: "upgrade".into(),
                        value: ValueMatch::Exact("websocket".into()),
                        invert: false,
                    }],
                    ..Default::default()
                },
                Action::Skip,
            ),
            rule(
                RequestMatch { path: Some(PathMatch::Prefix("/".into())), ..Default::default() },
                Action::Check,
            ),
        ];
        let none = HeaderSnapshot::default();
        let ws = HeaderSnapshot::from_strs(&[("upgrade", "websocket")]);
        let decide =
            |rules: &[Rule], default, method, host, path| decide(rules, default, method, host, path, &none);
        assert_eq!(decide(&rules, Action::Check, "GET", "shop.example.com", "/healthz"), Action::Skip);
        assert_eq!(decide(&rules, Action::Check, "POST", "shop.example.com", "/healthz"), Action::Check);
        assert_eq!(decide(&rules, Action::Check, "GET", "a.internal", "/x"), Action::Skip);
        assert_eq!(decide(&rules, Action::Skip, "GET", "shop.example.com", "/x"), Action::Check);
        assert_eq!(decide(&[], Action::Skip, "GET", "h", "/x"), Action::Skip);
        assert_eq!(decide(&[], Action::Check, "GET", "h", "/x"), Action::Check);
        assert_eq!(super::decide(&rules, Action::Check, "GET", "shop.example.com", "/x", &ws), Action::Skip);
        // The path is matched without its query; query conditions read the query.
        assert_eq!(
            decide(&rules, Action::Check, "GET", "shop.example.com", "/healthz?probe=1"),
            Action::Skip
        );
        let preview = rule(
            RequestMatch {
                query_params: vec![QueryCondition {
                    name: "preview".into(),
                    value: ValueMatch::Present,
                    invert: false,
                }],
                ..Default::default()
            },
            Action::Skip,
        );
        assert_eq!(
            decide(std::slice::from_ref(&preview), Action::Check, "GET", "h", "/p?preview"),
            Action::Skip
        );
        assert_eq!(decide(&[preview], Action::Check, "GET", "h", "/p?previews=1"), Action::Check);
    }
}
