//! Path rewrites: prefix replacement (Istio `rewrite.uri`, Envoy `prefix_rewrite`) and regex
//! replacement (Envoy `regex_rewrite`). Both work on the path without the query string; the
//! caller puts a query back ([`join_path`]), the request's or the one query operations left.

use std::borrow::Cow;

use regex_lite::Regex;

pub use gatewasm::matcher::is_path_text;
use gatewasm::matcher::one_line;

/// A compiled path rewrite.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the rule's matched prefix `matched` with `replacement`.
    Prefix {
        /// The rule's `match.path.prefix`.
        matched: String,
        /// What replaces it.
        replacement: String,
    },
    /// Replace every match of `regex` with `substitution` (regex-lite `${N}` syntax).
    Regex {
        /// The pattern (not anchored: it may match anywhere, several times).
        regex: Regex,
        /// Substitution translated from Envoy's `\N` syntax.
        substitution: String,
    },
}

impl PathRewrite {
    /// The path (without query) as the rewrite leaves it: `None` when it does not apply (the
    /// prefix is not there) or the result is empty, as Envoy's `rewritePathByPrefixOrRegex`
    /// leaves the path alone then. Not checked for anything else: callers decide what an
    /// acceptable path is.
    pub fn rewrite<'p>(&self, path: &'p str) -> Option<Cow<'p, str>> {
        let out = match self {
            PathRewrite::Prefix { matched, replacement } => {
                let rest = path.strip_prefix(matched.as_str())?;
                let mut out = String::with_capacity(replacement.len() + rest.len());
                out.push_str(replacement);
                out.push_str(rest);
                Cow::Owned(out)
            }
            PathRewrite::Regex { regex, substitution } => regex.replace_all(path, substitution.as_str()),
        };
        (!out.is_empty()).then_some(out)
    }

    /// The new path (without query) for the upstream, or `None` when the rewrite leaves `path` as
    /// it is, or would produce something that is not an origin-form path (not starting with
    /// `/`, or with whitespace or control characters); the request then goes on unchanged.
    pub fn apply(&self, path: &str) -> Option<String> {
        let out = self.rewrite(path)?;
        if !out.starts_with('/') || !gatewasm::config::is_header_value(&out) || out.contains([' ', '\t']) {
            return None;
        }
        (out != path).then(|| out.into_owned())
    }
}

/// `path` and `query` as one `:path`: `?` and the query when there is one (an empty query keeps
/// its `?`).
pub fn join_path(path: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Translates an Envoy/RE2 substitution (`\1` for group 1, `\\` for a backslash) into regex-lite
/// replacement syntax (`${1}`, `$$` for a dollar), checking group numbers against `regex`.
pub fn envoy_substitution(regex: &Regex, substitution: &str) -> Result<String, String> {
    let groups = regex.captures_len().saturating_sub(1);
    let mut out = String::with_capacity(substitution.len() + 8);
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some(d @ '0'..='9') => {
                    let n = d.to_digit(10).unwrap_or(0) as usize;
                    if n > groups {
                        return Err(format!(
                            "`\\{n}` refers to group {n} but the pattern has {groups} capture group(s)"
                        ));
                    }
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some(other) => {
                    return Err(format!(
                        "invalid escape `\\{other}` (use `\\1`..`\\9` for groups, `\\\\` for a backslash)"
                    ))
                }
                None => return Err("ends with a lone `\\`".to_string()),
            },
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Compiles an unanchored rewrite pattern.
pub fn rewrite_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| one_line(&e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn prefix(m: &str, r: &str) -> PathRewrite {
        PathRewrite::Prefix { matched: m.into(), replacement: r.into() }
    }

    fn regex(p: &str, s: &str) -> PathRewrite {
        let regex = rewrite_regex(p).unwrap();
        let substitution = envoy_substitution(&regex, s).unwrap();
        PathRewrite::Regex { regex, substitution }
    }

    #[test]
    fn prefix_replaces_the_matched_prefix() {
        let r = prefix("/api/v1/", "/v2/");
        assert_eq!(r.apply("/api/v1/users").as_deref(), Some("/v2/users"));
        assert_eq!(r.apply("/api/v1/").as_deref(), Some("/v2/"));
        assert_eq!(r.apply("/other"), None);
        // As in Envoy and Istio: a prefix without trailing slash rewritten to "/" doubles it.
        assert_eq!(prefix("/api", "/").apply("/api/x").as_deref(), Some("//x"));
        assert_eq!(prefix("/api", "/").apply("/api").as_deref(), Some("/"));
        // Unchanged is not a rewrite.
        assert_eq!(prefix("/a", "/a").apply("/a/x"), None);
        assert_eq!(join_path("/v2/a", Some("x=1&y")), "/v2/a?x=1&y");
        assert_eq!(join_path("/v2/a", Some("")), "/v2/a?", "an empty query keeps its `?`");
        assert_eq!(join_path("/v2/a", None), "/v2/a");
    }

    #[test]
    fn regex_replaces_every_match() {
        let r = regex(r"^/users/([0-9]+)/profile$", r"/profiles/\1");
        assert_eq!(r.apply("/users/42/profile").as_deref(), Some("/profiles/42"));
        assert_eq!(r.apply("/users/x/profile"), None);
        let all = regex("o", "0");
        assert_eq!(all.apply("/foo/boo").as_deref(), Some("/f00/b00"));
        // `$` in the substitution is literal, as in Envoy.
        let dollar = regex("^/a$", r"/cost$1");
        assert_eq!(dollar.apply("/a").as_deref(), Some("/cost$1"));
        let swap = regex(r"^/(\w+)/(\w+)$", r"/\2/\1\\");
        assert_eq!(swap.apply("/a/b").as_deref(), Some(r"/b/a\"));
    }

    #[test]
    fn bad_results_leave_the_path_alone() {
        assert_eq!(regex("^/.*$", "").apply("/x"), None, "empty path");
        assert_eq!(regex("^/.*$", "").rewrite("/x"), None, "empty is no rewrite, as in Envoy");
        assert_eq!(regex("^/", "x").apply("/x"), None, "not starting with /");
        assert_eq!(regex("^/", "x").rewrite("/x").as_deref(), Some("xx"), "a redirect decides itself");
    }

    #[test]
    fn substitution_errors() {
        let re = rewrite_regex("^/(a)$").unwrap();
        assert_eq!(envoy_substitution(&re, r"/\1/\0").unwrap(), "/${1}/${0}");
        assert!(envoy_substitution(&re, r"/\2").unwrap_err().contains("1 capture group"));
        assert!(envoy_substitution(&re, r"/\q").unwrap_err().contains("invalid escape"));
        assert!(envoy_substitution(&re, "/\\").unwrap_err().contains("lone"));
        assert!(rewrite_regex("[").is_err());
    }

    #[test]
    fn path_text() {
        assert!(is_path_text("/v2/"));
        assert!(!is_path_text("/a b"));
        assert!(!is_path_text("/a?b"));
        assert!(!is_path_text("/a\r\n"));
    }
}
