//! Rules that answer the request themselves instead of sending it upstream: a direct response
//! (Envoy's route `direct_response`) or a redirect (Envoy's route `redirect`), both sent as the
//! SDK's local reply. The `Location` of a redirect is built as Envoy 1.40 builds it
//! (`Http::Utility::newUri` and `processRequestHost` in `source/common/http/utility.cc`, the
//! path rewrites of `rewritePathByPrefixOrRegex` in `source/common/router/config_impl.cc`),
//! compared case by case with Envoy's own redirects in `tests/envoy.rs`.

use std::borrow::Cow;

use gatewasm::{LocalReply, Request};

use crate::query::QueryOps;
use crate::rewrite::PathRewrite;
use crate::template::Values;

/// What a rule answers with.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A fixed response.
    Direct(DirectResponse),
    /// A redirect.
    Redirect(Redirect),
}

/// A fixed response: status, headers and body, all checked when the configuration was loaded.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    /// Status, 200 to 599.
    pub status: u16,
    /// Headers (lower-case names, literal values).
    pub headers: Vec<(String, String)>,
    /// Body, at most [`crate::config::MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

impl DirectResponse {
    /// The reply; Envoy adds `content-length`, and `content-type: text/plain` for a body when
    /// `headers` name no type, as it does for its own `direct_response`.
    pub fn reply(&self) -> LocalReply {
        let reply =
            LocalReply::new(self.status, "direct_response", String::new()).raw_body(self.body.clone());
        self.headers.iter().fold(reply, |reply, (name, value)| reply.header(name.as_str(), value.as_str()))
    }
}

/// Where a redirect's path comes from.
#[derive(Debug, Clone)]
pub enum RedirectPath {
    /// The request's `:path`.
    Request,
    /// `path_redirect`: this path; the request's query is kept unless this one has its own.
    Replace {
        /// The path, starting with `/`.
        path: String,
        /// It has a query of its own (which `strip_query` does not remove, as in Envoy).
        has_query: bool,
    },
    /// `prefix_rewrite` or `regex_rewrite` of the request's path, its query kept.
    Rewrite(PathRewrite),
}

/// A compiled redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `scheme_redirect`, or `https` for `https_redirect`; the request's `:scheme` when `None`.
    pub scheme: Option<String>,
    /// `host_redirect` (without port); the request's `:authority` when `None`.
    pub host: Option<String>,
    /// `port_redirect` as written into the URL (`:8443`).
    pub port: Option<String>,
    /// The path.
    pub path: RedirectPath,
    /// Drop the query (not one `path_redirect` gives).
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

impl Redirect {
    /// The reply to `request`. `query` (the rule's query operations) changes the query the
    /// `Location` keeps.
    pub fn reply(&self, request: &Request, query: &QueryOps, values: &Values<'_>) -> LocalReply {
        LocalReply::redirect(self.status, self.location(request, query, values))
    }

    /// The `Location` for `request`, as Envoy's `newUri`: scheme, host (the request's port
    /// dropped when a new port is given, or when the scheme changes and the port is the default
    /// of the request's `x-forwarded-proto`), new port, path and query.
    pub fn location(&self, request: &Request, query: &QueryOps, values: &Values<'_>) -> String {
        let scheme = match &self.scheme {
            Some(scheme) => scheme.as_str(),
            None => request.header(":scheme").unwrap_or_default(),
        };
        let port = self.port.as_deref().unwrap_or_default();
        let host = match &self.host {
            Some(host) => host.as_str(),
            None => request_host(
                request.authority(),
                request.header("x-forwarded-proto").unwrap_or_default(),
                scheme,
                !port.is_empty(),
            ),
        };
        let original = request.path_and_query();
        let mut path: Cow<'_, str> = match &self.path {
            RedirectPath::Request => Cow::Borrowed(original),
            RedirectPath::Replace { path, has_query: true } => Cow::Borrowed(path),
            RedirectPath::Replace { path, has_query: false } => match original.find('?') {
                Some(at) => Cow::Owned(format!("{path}{}", original.get(at..).unwrap_or_default())),
                None => Cow::Borrowed(path),
            },
            RedirectPath::Rewrite(rewrite) => {
                let end = original.find(['?', '#']).unwrap_or(original.len());
                let (only, rest) = original.split_at(end);
                match rewrite.rewrite(only) {
                    Some(new) => Cow::Owned(format!("{new}{rest}")),
                    None => Cow::Borrowed(original),
                }
            }
        };
        if !path.starts_with('/') {
            path = Cow::Owned(format!("/{path}"));
        }
        let own_query = matches!(self.path, RedirectPath::Replace { has_query: true, .. });
        if self.strip_query && !own_query {
            if let Some(at) = path.find('?') {
                path = Cow::Owned(path.get(..at).unwrap_or_default().to_string());
            }
        }
        if !query.is_empty() {
            let (only, q) = path.split_once('?').unwrap_or((&path, ""));
            if let Some(new) = query.apply(q, values, &mut String::new()) {
                let q = (!new.is_empty()).then_some(new.as_str());
                path = Cow::Owned(crate::rewrite::join_path(only, q));
            }
        }
        format!("{scheme}://{host}{port}{path}")
    }
}

/// The request's authority for a redirect's `Location` (Envoy's `processRequestHost`): without
/// its port when a new port is given, or when the scheme changes and the port is the default one
/// of the scheme the request came with (`x-forwarded-proto`, so `http://a:80` over TLS keeps it).
fn request_host<'a>(authority: &'a str, forwarded_proto: &str, new_scheme: &str, new_port: bool) -> &'a str {
    let port_at = if authority.starts_with('[') {
        authority.rfind("]:").map(|at| at + 1)
    } else {
        authority.rfind(':')
    };
    let Some(at) = port_at else { return authority };
    let (host, port) = authority.split_at(at);
    let default_port = new_scheme != forwarded_proto
        && ((forwarded_proto.eq_ignore_ascii_case("https") && port == ":443")
            || (forwarded_proto.eq_ignore_ascii_case("http") && port == ":80"));
    if new_port || default_port {
        host
    } else {
        authority
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gatewasm::HeaderSnapshot;

    use super::*;
    use crate::rewrite::{envoy_substitution, rewrite_regex};

    fn redirect(edit: impl FnOnce(&mut Redirect)) -> Redirect {
        let mut r = Redirect {
            scheme: None,
            host: None,
            port: None,
            path: RedirectPath::Request,
            strip_query: false,
            status: 301,
        };
        edit(&mut r);
        r
    }

    fn location(r: &Redirect, scheme: &str, authority: &str, path: &str, proto: &str) -> String {
        let request = Request::from_headers(HeaderSnapshot::from_strs(&[
            (":scheme", scheme),
            (":authority", authority),
            (":path", path),
            ("x-forwarded-proto", proto),
        ]));
        let values = Values { request: &request, names: &[], response: None };
        r.location(&request, &QueryOps::default(), &values)
    }

    #[test]
    fn the_request_host_loses_a_default_port_only_when_the_scheme_changes() {
        let https = redirect(|r| r.scheme = Some("https".into()));
        assert_eq!(location(&https, "http", "a.com:80", "/x?q=1", "http"), "https://a.com/x?q=1");
        assert_eq!(location(&https, "http", "a.com:8080", "/x", "http"), "https://a.com:8080/x");
        assert_eq!(location(&https, "http", "a.com:443", "/x", "http"), "https://a.com:443/x");
        assert_eq!(location(&https, "https", "a.com:443", "/x", "https"), "https://a.com:443/x");
        assert_eq!(location(&https, "http", "[::1]:80", "/", "http"), "https://[::1]/");
        assert_eq!(location(&https, "http", "[::1]", "/", "http"), "https://[::1]/");
        let same = redirect(|r| r.path = RedirectPath::Replace { path: "/y".into(), has_query: false });
        assert_eq!(location(&same, "http", "a.com:80", "/x?q", "http"), "http://a.com:80/y?q");
        let port = redirect(|r| r.port = Some(":8443".into()));
        assert_eq!(location(&port, "http", "[::1]:80", "/", "http"), "http://[::1]:8443/");
        assert_eq!(location(&port, "http", "A.com", "/", "http"), "http://A.com:8443/");
        let host = redirect(|r| {
            r.host = Some("b.org".into());
            r.port = Some(":8080".into());
        });
        assert_eq!(location(&host, "https", "a.com:9", "/p", "https"), "https://b.org:8080/p");
    }

    #[test]
    fn paths_and_queries() {
        let replace = |path: &str| {
            redirect(|r| {
                r.path = RedirectPath::Replace { path: path.into(), has_query: path.contains('?') };
                r.strip_query = true;
            })
        };
        assert_eq!(location(&replace("/new"), "http", "a", "/old?x=1", "http"), "http://a/new");
        assert_eq!(location(&replace("/new?y=2"), "http", "a", "/old?x=1", "http"), "http://a/new?y=2");
        let prefix = redirect(|r| {
            r.path = RedirectPath::Rewrite(PathRewrite::Prefix {
                matched: "/old/".into(),
                replacement: "/new/".into(),
            })
        });
        assert_eq!(location(&prefix, "http", "a", "/old/a/b?x=/old/", "http"), "http://a/new/a/b?x=/old/");
        let regex = rewrite_regex("^/u/([0-9]+)$").unwrap();
        let substitution = envoy_substitution(&regex, r"users/\1").unwrap();
        let rx = redirect(|r| r.path = RedirectPath::Rewrite(PathRewrite::Regex { regex, substitution }));
        assert_eq!(
            location(&rx, "http", "a", "/u/7?x", "http"),
            "http://a/users/7?x",
            "a `/` is put in front"
        );
        assert_eq!(
            location(&rx, "http", "a", "/u/x?x", "http"),
            "http://a/u/x?x",
            "no match: the path as it is"
        );
    }
}
