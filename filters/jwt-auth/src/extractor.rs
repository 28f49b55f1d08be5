//! Where tokens are found in a request: headers (with an optional scheme prefix), cookies and
//! query parameters, as Envoy's `jwt_authn` extractor looks for them, and how a token is removed
//! again before the request goes upstream.

use std::borrow::Cow;

use gatewasm::{http, Request};

/// One place a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A request header (name lower-cased), the token after `prefix` when there is one.
    Header {
        /// Header name, lower-case.
        name: String,
        /// Text before the token (`Bearer `), matched case-insensitively.
        prefix: Option<String>,
    },
    /// A cookie, by its exact (case-sensitive) name.
    Cookie(String),
    /// A query parameter, by its decoded name.
    Param(String),
}

/// The locations used when a provider names none: Envoy's default.
pub fn default_locations() -> Vec<Location> {
    vec![
        Location::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
        Location::Param("access_token".into()),
    ]
}

/// A token found in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'r> {
    /// Index of the location in the provider's list.
    pub location: usize,
    /// The token.
    pub token: Cow<'r, str>,
}

/// The token in a header value after `prefix`: the prefix matched case-insensitively (an
/// authentication scheme is case-insensitive, RFC 9110 section 11.1) at the start of the value,
/// spaces after it skipped, and **everything else in the value is the token**. A value holding
/// more than one token (`Bearer a.b.c,d.e.f`, `Bearer a.b.c junk`, or two `Authorization`
/// headers that Envoy joined with a comma) is then not a JWS and is refused as malformed, as
/// Envoy 1.40 refuses it: reading only the first credential would let a second one, never
/// verified, travel upstream next to it.
pub fn after_prefix<'v>(value: &'v str, prefix: Option<&str>) -> Option<&'v str> {
    let rest = match prefix {
        None => value,
        Some(p) => {
            let head = value.get(..p.len())?;
            if !head.eq_ignore_ascii_case(p) {
                return None;
            }
            value.get(p.len()..)?
        }
    };
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

/// Every value of request header `name`, in order, borrowed from the request (not from `name`).
fn values<'r, 'n>(req: &'r Request, name: &'n str) -> impl Iterator<Item = &'r str> + use<'r, 'n> {
    req.headers().iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Every token in `locations`, in location order.
pub fn extract<'r>(locations: &[Location], req: &'r Request) -> Vec<Found<'r>> {
    let mut found = Vec::new();
    for (i, loc) in locations.iter().enumerate() {
        match loc {
            Location::Header { name, prefix } => {
                for value in values(req, name) {
                    if let Some(t) = after_prefix(value, prefix.as_deref()) {
                        found.push(Found { location: i, token: Cow::Borrowed(t) });
                    }
                }
            }
            Location::Cookie(name) => {
                for header in values(req, "cookie") {
                    for (n, v) in http::cookies(header) {
                        if n == name && !v.is_empty() {
                            found.push(Found { location: i, token: Cow::Borrowed(v) });
                        }
                    }
                }
            }
            Location::Param(name) => {
                // Only the names are decoded until one matches: other parameters' values (a
                // second token, say) are never scanned.
                for pair in req.query().unwrap_or_default().split('&') {
                    let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !v.is_empty() && http::decode_query_component(n) == name.as_str() {
                        found.push(Found { location: i, token: http::decode_query_component(v) });
                    }
                }
            }
        }
    }
    found
}

/// A `Cookie` header value without the cookies named `name`; `None` when nothing is left.
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
        .filter(|piece| piece.split_once('=').is_none_or(|(n, _)| n.trim() != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// A `:path` without the query parameters named `name` (compared after decoding).
pub fn without_param(path_and_query: &str, name: &str) -> String {
    let (path, query) = http::split_path(path_and_query);
    let Some(query) = query else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let n = pair.split_once('=').map_or(*pair, |(n, _)| n);
            http::decode_query_component(n) != name
        })
        .collect();
    if kept.is_empty() || kept.iter().all(|p| p.is_empty()) {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    use gatewasm::HeaderSnapshot;

    /// A request with these headers and, when given, this query on `/`.
    fn req(headers: &[(&str, &str)], query: Option<&str>) -> Request {
        let path = query.map_or_else(|| "/".to_string(), |q| format!("/?{q}"));
        let mut all = vec![(":path", path.as_str())];
        all.extend_from_slice(headers);
        Request::from_headers(HeaderSnapshot::from_strs(&all))
    }

    fn tokens(locs: &[Location], req: &Request) -> Vec<(usize, String)> {
        extract(locs, req).into_iter().map(|f| (f.location, f.token.into_owned())).collect()
    }

    #[test]
    fn prefixes() {
        assert_eq!(after_prefix("Bearer a.b.c", Some("Bearer ")), Some("a.b.c"));
        assert_eq!(after_prefix("bearer a.b.c", Some("Bearer ")), Some("a.b.c"));
        assert_eq!(after_prefix("BEARER   a.b.c\t ", Some("Bearer ")), Some("a.b.c"));
        // Anything after the token stays part of it, so the parser refuses the whole value.
        assert_eq!(after_prefix("Bearer a.b.c, other", Some("Bearer ")), Some("a.b.c, other"));
        assert_eq!(after_prefix("Bearer a.b.c,Bearer d.e.f", Some("Bearer ")), Some("a.b.c,Bearer d.e.f"));
        assert_eq!(after_prefix("Bearer a.b.c junk", Some("Bearer ")), Some("a.b.c junk"));
        // The scheme starts the value; Envoy also finds it further in.
        assert_eq!(after_prefix("Basic dXNlcg==, Bearer a.b.c", Some("Bearer ")), None);
        assert_eq!(after_prefix("xBearer a.b.c", Some("Bearer ")), None);
        assert_eq!(after_prefix("Basic dXNlcg==", Some("Bearer ")), None);
        assert_eq!(after_prefix("Bearer ", Some("Bearer ")), None);
        assert_eq!(after_prefix("Bear", Some("Bearer ")), None);
        assert_eq!(after_prefix("é", Some("Bearer ")), None);
        assert_eq!(after_prefix(" a.b.c ", None), Some("a.b.c"));
        assert_eq!(after_prefix("a.b.c, d.e.f", None), Some("a.b.c, d.e.f"));
        assert_eq!(after_prefix(" \t", None), None);
    }

    #[test]
    fn the_seeds_three_locations_in_order() {
        let locs = vec![
            Location::Cookie("id_token".into()),
            Location::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) },
            Location::Param("token".into()),
        ];
        let r = req(
            &[("cookie", "a=1; id_token=C.C.C"), ("authorization", "Bearer H.H.H")],
            Some("x=1&token=Q%2EQ.Q"),
        );
        assert_eq!(tokens(&locs, &r), [(0, "C.C.C".into()), (1, "H.H.H".into()), (2, "Q.Q.Q".into())]);
        assert!(tokens(&locs, &req(&[("cookie", "id_token=")], Some("token="))).is_empty());
        assert!(tokens(&default_locations(), &req(&[], Some("access_token=A.A.A"))).len() == 1);
    }

    #[test]
    fn repeated_headers_and_cookies_all_count() {
        let locs =
            vec![Location::Header { name: "x-jwt".into(), prefix: None }, Location::Cookie("t".into())];
        let r = req(&[("x-jwt", "a"), ("X-JWT", "b"), ("cookie", "t=c"), ("cookie", "t=d; t=e")], None);
        let got: Vec<String> = tokens(&locs, &r).into_iter().map(|(_, t)| t).collect();
        assert_eq!(got, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn removal() {
        assert_eq!(without_cookie("a=1; id_token=x; b=2", "id_token").as_deref(), Some("a=1; b=2"));
        assert_eq!(without_cookie("id_token=x", "id_token"), None);
        assert_eq!(
            without_cookie("id_tokenx=1;novalue", "id_token").as_deref(),
            Some("id_tokenx=1; novalue")
        );
        assert_eq!(without_param("/a?token=x&b=2", "token"), "/a?b=2");
        assert_eq!(without_param("/a?to%6Ben=x", "token"), "/a");
        assert_eq!(without_param("/a?b=1", "token"), "/a?b=1");
        assert_eq!(without_param("/a", "token"), "/a");
    }
}
