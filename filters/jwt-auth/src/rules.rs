//! Rules: which requests need which tokens. As in Envoy's `jwt_authn`, the first rule whose
//! match holds decides, and a request no rule matches is not checked.

use gatewasm::matcher::{RequestMatch, RequestParts};
use gatewasm::HeaderSnapshot;

use crate::authz::ClaimRules;

/// What a matched request needs (Envoy's `JwtRequirement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A valid token of this provider (index), with the provider's audiences or these.
    Provider {
        /// Provider index.
        provider: usize,
        /// Audiences replacing the provider's (`provider_and_audiences`).
        audiences: Option<Vec<String>>,
        /// Claims and scopes every token of the provider must also carry (`claims`,
        /// `scopes`); a valid token without them fails with 403 `insufficient_scope`.
        claims: Option<Box<ClaimRules>>,
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
    pub matcher: RequestMatch,
    /// What it needs; `None` lets the request through unchecked.
    pub requires: Option<Requirement>,
}

/// The first rule matching the request: its normalized host, `:path` (query included), method
/// and headers (as the client sent them).
pub fn first_match<'r>(
    rules: &'r [Rule],
    host: &str,
    path_and_query: &str,
    method: &str,
    headers: Option<&HeaderSnapshot>,
) -> Option<&'r Rule> {
    let (path, query) = gatewasm::http::split_path(path_and_query);
    let req = RequestParts { method, host: Some(host), path, query, headers };
    rules.iter().find(|r| r.matcher.matches(&req))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gatewasm::matcher::{HeaderCondition, PathMatch, QueryCondition, ValueMatch};

    #[test]
    fn first_rule_wins() {
        let rules = vec![
            Rule {
                matcher: RequestMatch {
                    path: Some(PathMatch::Exact("/login".into())),
                    ..RequestMatch::default()
                },
                requires: None,
            },
            Rule {
                matcher: RequestMatch {
                    headers: vec![HeaderCondition {
                        name: "x-probe".into(),
                        value: ValueMatch::Present,
                        invert: false,
                    }],
                    ..RequestMatch::default()
                },
                requires: None,
            },
            Rule { matcher: RequestMatch::default(), requires: Some(Requirement::AllowMissing) },
        ];
        let probe = HeaderSnapshot::from_strs(&[("x-probe", "1")]);
        assert!(first_match(&rules, "h", "/login", "POST", None).unwrap().requires.is_none());
        assert!(first_match(&rules, "h", "/x", "GET", Some(&probe)).unwrap().requires.is_none());
        assert_eq!(
            first_match(&rules, "h", "/x", "GET", None).unwrap().requires,
            Some(Requirement::AllowMissing)
        );
        assert!(first_match(&rules[..1], "h", "/x", "GET", None).is_none());
        // The path is matched without its query; query conditions read the query.
        assert!(first_match(&rules, "h", "/login?next=/x", "POST", None).unwrap().requires.is_none());
        let public = Rule {
            matcher: RequestMatch {
                query_params: vec![QueryCondition {
                    name: "preview".into(),
                    value: ValueMatch::Exact("1".into()),
                    invert: false,
                }],
                ..RequestMatch::default()
            },
            requires: None,
        };
        let rules =
            [public, Rule { matcher: RequestMatch::default(), requires: Some(Requirement::AllowMissing) }];
        assert!(first_match(&rules, "h", "/doc?a=b&preview=%31", "GET", None).unwrap().requires.is_none());
        assert!(first_match(&rules, "h", "/doc?preview=2", "GET", None).unwrap().requires.is_some());
        assert!(first_match(&rules, "h", "/doc", "GET", None).unwrap().requires.is_some());
    }
}
