//! Label values: the host, the path template, the method and the status as they go into a stat
//! name. Everything here is pure and runs natively in unit tests.
//!
//! Every value that reaches a stat name is built so that two different inputs never give the same
//! value and no value can forge another label:
//! - bytes outside `[A-Za-z0-9._/{}*~+@-]` become `%XX` (the SDK's escaping), so `;` and `=`
//!   (label delimiters), `:` (rewritten by Envoy in stat names) and quotes never appear, and
//!   `%` itself is escaped, so an escaped value cannot be mistaken for another escaped value;
//! - in paths, the markers this filter inserts (`{id}`, a trailing `/*`) cannot come from the
//!   client: a client's own `{`, `}` or `*` is escaped;
//! - fixed values (`other`, `overflow`, `none`) cannot come from the client: a client value equal
//!   to one of them has its first byte escaped (`%6Fther`);
//! - a value longer than [`MAX_LABEL_VALUE`] is cut and ends with `%~` and a 64-bit hash of the
//!   whole value (`%~` is never produced by escaping), instead of being silently truncated into
//!   another value.

use regex_lite::Regex;

pub use gatewasm::matcher::{HostPattern, PathTemplate};
pub use gatewasm::metrics::{MAX_LABEL_VALUE, OVERFLOW_VALUE};

/// Value of an optional label (`cluster`, the request header) when the request has none.
pub const NONE_VALUE: &str = "none";

/// Default value for hosts that are not configured and paths no route matches (when unmatched
/// paths are not normalised), and for request header values not in the allow list.
pub const OTHER_VALUE: &str = "other";

/// Methods kept as they are; any other method is [`OTHER_VALUE`] (methods are client input).
pub const METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Bytes kept as they are in label values (the SDK's safe set).
fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'.' | b'-' | b'_' | b'/' | b'{' | b'}' | b'*' | b'~' | b'+' | b'@')
}

/// Bytes kept as they are in a literal path segment: the safe set without the path markers.
fn is_safe_in_segment(b: u8) -> bool {
    is_safe(b) && !matches!(b, b'{' | b'}' | b'*' | b'/')
}

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(hex_upper(b >> 4));
    out.push(hex_upper(b & 0xf));
}

fn hex_upper(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// Appends `bytes` escaped: bytes for which `keep` is false become `%XX`.
fn escape_into(out: &mut String, bytes: &[u8], keep: fn(u8) -> bool) {
    for &b in bytes {
        if keep(b) {
            out.push(char::from(b));
        } else {
            push_escaped(out, b);
        }
    }
}

/// FNV-1a, 64 bits: a stable hash for cut values (no dependency, same on every VM).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Cuts `value` (already escaped) to at most [`MAX_LABEL_VALUE`] bytes: the first part, then
/// `%~` and the hash of the whole value in 16 hex digits.
fn bound(value: &mut String) {
    if value.len() <= MAX_LABEL_VALUE {
        return;
    }
    let hash = fnv1a(value.as_bytes());
    let mut keep = MAX_LABEL_VALUE - 18;
    // Never cut inside a `%XX` escape (the bytes are ASCII, so any index is a char boundary).
    let bytes = value.as_bytes();
    for back in 1..=2 {
        if keep >= back && bytes.get(keep - back) == Some(&b'%') {
            keep -= back;
            break;
        }
    }
    value.truncate(keep);
    value.push_str("%~");
    for shift in (0..16).rev() {
        let nibble = u8::try_from((hash >> (shift * 4)) & 0xf).unwrap_or(0);
        value.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
    }
}

/// A label value from arbitrary input (a header value, a cluster name): escaped, fixed values
/// made unambiguous, bounded.
pub fn value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_LABEL_VALUE));
    if raw.is_empty() {
        // Prometheus treats an empty label value as an absent label: `%` alone, which no escaped
        // value can be (the SDK's convention).
        out.push('%');
        return out;
    }
    let reserved = [OTHER_VALUE, OVERFLOW_VALUE, NONE_VALUE].contains(&raw);
    for (i, &b) in raw.as_bytes().iter().enumerate() {
        if is_safe(b) && !(reserved && i == 0) {
            out.push(char::from(b));
        } else {
            push_escaped(&mut out, b);
        }
    }
    bound(&mut out);
    out
}

/// True when `s` can be used as a label value as written (configured names and fixed values).
pub fn is_plain_value(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LABEL_VALUE && s.bytes().all(is_safe)
}

/// Words that Istio's own `stats_tags` (bootstrap template, `use_all_default_tags: false`) look
/// for before a `.` without anchoring: `(cache\.(.+?)\.)`, `(component\.(.+?)\.)`,
/// `(tag\.(.+?);\.)`, `(wasm_filter\.(.+?)\.)`, `rbac(\.(allowed|denied))`.
const ISTIO_WORDS_BEFORE_DOT: [&str; 5] = ["cache", "component", "tag", "wasm_filter", "rbac"];
/// And after a `.`: `(\.istio_dry_run_(allow|deny)_)`, `(\.shadow_(allowed|denied))`.
const ISTIO_WORDS_AFTER_DOT: [&str; 2] = ["istio_dry_run_", "shadow_"];

/// A value made safe inside an Istio proxy's stat name: every `.` that one of Istio's own
/// unanchored tag regexes could take as the start or end of its tag becomes `%2E`
/// (`cache.example.com` is `cache%2Eexample.com`), so no Istio tag cuts into it. Unambiguous: a
/// client's own `%2E` is `%252E` by then.
pub fn istio_safe(value: &str) -> std::borrow::Cow<'_, str> {
    let risky = |i: usize| {
        let (before, after) = (value.get(..i).unwrap_or(""), value.get(i + 1..).unwrap_or(""));
        ISTIO_WORDS_BEFORE_DOT.iter().any(|w| before.ends_with(w))
            || ISTIO_WORDS_AFTER_DOT.iter().any(|w| after.starts_with(w))
    };
    if !value.char_indices().any(|(i, c)| c == '.' && risky(i)) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 6);
    for (i, c) in value.char_indices() {
        if c == '.' && risky(i) {
            out.push_str("%2E");
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One configured host and the `host` label of the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLabel {
    /// `api.example.com`, or `*.example.com`: any subdomain, not the bare domain.
    pub pattern: HostPattern,
    /// The host (lower case), or the pattern as written (`*.example.com`), so subdomains cannot
    /// create series.
    pub label: String,
}

/// The `host` label: the configured host or pattern the request's host matches, else `other`.
pub fn host_label<'a>(hosts: &'a [HostLabel], authority: &str, other: &'a str) -> &'a str {
    // A host that cannot be read counts as `other`: it names no configured host.
    let Some(host) = gatewasm::http::normalize_host(authority) else { return other };
    hosts.iter().find(|h| h.pattern.matches(&host)).map_or(other, |h| h.label.as_str())
}

/// The `method` label: a standard method as it is, anything else `other`.
pub fn method_label(method: &str) -> &'static str {
    METHODS.iter().copied().find(|m| *m == method).unwrap_or(OTHER_VALUE)
}

/// The status label: the code (`200`), or its class (`2xx`); `0` when there was no response
/// (the stream was reset before one), as Envoy's `%RESPONSE_CODE%`.
pub fn status_label(code: Option<u64>, class: bool, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    match code {
        Some(c @ 100..=599) if class => {
            let _ = write!(out, "{}xx", c / 100);
        }
        Some(c @ 1..=999) => {
            let _ = write!(out, "{c}");
        }
        _ => out.push('0'),
    }
}

/// A configured route: how a path maps to its template.
#[derive(Debug, Clone)]
pub enum Route {
    /// `/users/{id}/orders/{order}`: the SDK's path template (literal segments equal, `{name}`
    /// or `*` one non-empty segment, a last `**` the rest: zero or more segments).
    Template {
        /// The template.
        template: PathTemplate,
        /// The label: the template as written.
        label: String,
    },
    /// A string prefix of the path.
    Prefix {
        /// The prefix.
        prefix: String,
        /// The label (default: the prefix followed by `*`).
        label: String,
    },
    /// A regex that must match the whole path.
    Regex {
        /// Anchored at both ends.
        regex: Regex,
        /// The label.
        label: String,
    },
}

impl Route {
    /// The label when `path` (no query) matches.
    pub fn matches(&self, path: &str) -> Option<&str> {
        match self {
            Route::Template { template, label } => template.matches(path).then_some(label.as_str()),
            Route::Prefix { prefix, label } => path.starts_with(prefix.as_str()).then_some(label.as_str()),
            Route::Regex { regex, label } => regex.is_match(path).then_some(label.as_str()),
        }
    }

    /// The label this route gives.
    pub fn label(&self) -> &str {
        match self {
            Route::Template { label, .. } | Route::Prefix { label, .. } | Route::Regex { label, .. } => label,
        }
    }
}

/// Parses a template (`/users/{id}/files/**`, the SDK's syntax) whose text is usable as a label;
/// the error says what is wrong.
pub fn parse_template(template: &str) -> Result<Route, String> {
    if !template.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if !is_plain_value(template) {
        return Err(format!(
            "may contain only letters, digits and `._-~+@/{{}}*`, at most {MAX_LABEL_VALUE} bytes (it is the label value)"
        ));
    }
    Ok(Route::Template { template: PathTemplate::parse(template)?, label: template.to_string() })
}

/// How unmatched paths become labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalize {
    /// Segments kept; deeper paths end in `/*`.
    pub max_depth: usize,
    /// Hex segments at least this long become `{id}`.
    pub min_hex_len: usize,
}

/// True for a segment that is an identifier: all digits, a UUID, or a long hex string.
pub fn is_id(segment: &str, min_hex_len: usize) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() == 36 {
        let dashes = [8, 13, 18, 23];
        let uuid =
            b.iter()
                .enumerate()
                .all(|(i, c)| if dashes.contains(&i) { *c == b'-' } else { c.is_ascii_hexdigit() });
        if uuid {
            return true;
        }
    }
    b.len() >= min_hex_len && b.iter().all(u8::is_ascii_hexdigit)
}

/// The label for a path no route matched: identifiers become `{id}`, segments beyond
/// `max_depth` become one `*`, literal bytes are escaped (so `{id}` and `*` are only ever the
/// filter's markers). `None` for a path that is not origin-form (`*`, empty).
pub fn normalize(path: &str, n: Normalize, out: &mut String) -> bool {
    out.clear();
    let Some(body) = path.strip_prefix('/') else {
        return false;
    };
    out.push('/');
    for (i, segment) in body.split('/').enumerate() {
        if i >= n.max_depth {
            out.push_str("/*");
            break;
        }
        if i > 0 {
            out.push('/');
        }
        if is_id(segment, n.min_hex_len) {
            out.push_str("{id}");
        } else {
            escape_into(out, segment.as_bytes(), is_safe_in_segment);
        }
    }
    bound(out);
    true
}

/// The path without query string or fragment.
pub fn strip_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const N: Normalize = Normalize { max_depth: 3, min_hex_len: 16 };

    fn norm(path: &str) -> String {
        let mut out = String::new();
        assert!(normalize(strip_query(path), N, &mut out), "{path}");
        out
    }

    #[test]
    fn normalisation_replaces_ids_and_limits_depth() {
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/users/42"), "/users/{id}");
        assert_eq!(norm("/users/42/"), "/users/{id}/");
        assert_eq!(norm("/users/42?x=1&token=secret"), "/users/{id}");
        assert_eq!(norm("/a/b#frag"), "/a/b");
        assert_eq!(norm("/o/123e4567-e89b-12d3-a456-426614174000/items"), "/o/{id}/items");
        assert_eq!(norm("/blob/0123456789abcdef0123"), "/blob/{id}");
        assert_eq!(norm("/blob/abcdef"), "/blob/abcdef", "short hex is a word");
        assert_eq!(norm("/a/b/c/d/e"), "/a/b/c/*");
        assert_eq!(norm("/a/b/c/"), "/a/b/c/*", "a fourth (empty) segment is beyond the depth");
        assert_eq!(norm("/a/b/c"), "/a/b/c");
        assert_eq!(norm("//x"), "//x");
        let mut out = String::new();
        assert!(!normalize("*", N, &mut out));
        assert!(!normalize("", N, &mut out));
    }

    #[test]
    fn client_markers_and_delimiters_are_escaped() {
        // A client cannot produce the filter's own markers.
        assert_eq!(norm("/users/{id}"), "/users/%7Bid%7D");
        assert_eq!(norm("/a/*"), "/a/%2A");
        // Nor forge a label or break the stat name.
        assert_eq!(norm("/x;host=evil"), "/x%3Bhost%3Devil");
        assert_eq!(norm("/p%20q"), "/p%2520q", "an escape in the path is not the same as the byte");
        assert_eq!(norm("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(norm("/a:b\"c\\d"), "/a%3Ab%22c%5Cd");
    }

    #[test]
    fn long_values_are_cut_without_colliding() {
        let a = format!("/{}", "z".repeat(300));
        let b = format!("/{}y", "z".repeat(299));
        let (na, nb) = (norm(&a), norm(&b));
        assert!(na.len() <= MAX_LABEL_VALUE && nb.len() <= MAX_LABEL_VALUE);
        assert_ne!(na, nb);
        assert!(na.contains("%~"));
        // Cutting never splits an escape.
        let c = format!("/{}", "\u{e9}".repeat(200));
        let nc = norm(&c);
        let cut = nc.split("%~").next().unwrap();
        assert!(cut.ends_with(|ch: char| ch.is_ascii_hexdigit()), "{nc}");
        assert!(cut.len() % 3 == 1 || cut.ends_with("A9"), "{nc}");
        let v = value(&"x".repeat(500));
        assert_eq!(v.len(), MAX_LABEL_VALUE);
        assert_ne!(v, value(&"x".repeat(501)));
    }

    #[test]
    fn values_escape_fixed_words_and_empty() {
        assert_eq!(value("gold"), "gold");
        assert_eq!(value("other"), "%6Fther");
        assert_eq!(value("overflow"), "%6Fverflow");
        assert_eq!(value("none"), "%6Eone");
        assert_eq!(value(""), "%");
        assert_eq!(value("a b;c=d"), "a%20b%3Bc%3Dd");
        assert_ne!(value("%6Fther"), value("other"));
        assert_eq!(
            value("outbound|8080||svc.ns.svc.cluster.local"),
            "outbound%7C8080%7C%7Csvc.ns.svc.cluster.local"
        );
    }

    /// Random inputs, biased towards the bytes that matter (delimiters, escapes, markers, dots,
    /// ID-like runs, long values): outputs keep to the label alphabet and the length bound, and
    /// no two different inputs share an output.
    #[test]
    fn random_inputs_never_collide() {
        let alphabet: &[&str] = &[
            "a",
            "Z",
            "0",
            "7",
            "f",
            "-",
            ".",
            "/",
            "%",
            "%2",
            "%25",
            "{",
            "}",
            "{id}",
            "*",
            ";",
            "=",
            ":",
            "\"",
            "\\",
            " ",
            "\n",
            "\u{e9}",
            "\u{1F600}",
            "other",
            "none",
            "overflow",
            "cache.",
            ".shadow_",
            "~",
            "%~",
            "123e4567-e89b-12d3-a456-426614174000",
            "deadbeefdeadbeef",
            "x".repeat(40).leak(),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let allowed = |out: &str| out.bytes().all(|b| is_safe(b) || b == b'%');
        let mut seen_values = std::collections::HashMap::new();
        let mut seen_paths = std::collections::HashMap::new();
        let mut seen_istio = std::collections::HashMap::new();
        for _ in 0..30_000 {
            let len = (next() % 12) as usize;
            let input: String =
                (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();

            let v = value(&input);
            assert!(allowed(&v) && v.len() <= MAX_LABEL_VALUE, "{input:?} -> {v:?}");
            if let Some(other) = seen_values.insert(v.clone(), input.clone()) {
                assert_eq!(other, input, "two values share {v:?}");
            }
            let i = istio_safe(&v).into_owned();
            if let Some(other) = seen_istio.insert(i.clone(), input.clone()) {
                assert_eq!(other, input, "two values share {i:?} in the istio form");
            }

            let path = format!("/{input}");
            let mut out = String::new();
            assert!(normalize(strip_query(&path), N, &mut out));
            assert!(allowed(&out) && out.len() <= MAX_LABEL_VALUE, "{path:?} -> {out:?}");
            // Normalisation merges on purpose (IDs, depth); a path with neither must keep its
            // own label.
            let plain = !path.contains(['?', '#'])
                && path.split('/').skip(1).all(|seg| !is_id(seg, N.min_hex_len))
                && path.matches('/').count() <= N.max_depth;
            if plain {
                if let Some(other) = seen_paths.insert(out.clone(), path.clone()) {
                    assert_eq!(other, path, "two paths share {out:?}");
                }
            }
        }
    }

    #[test]
    fn istio_words_lose_their_dot() {
        assert_eq!(istio_safe("api.example.com"), "api.example.com");
        assert_eq!(istio_safe("cache.example.com"), "cache%2Eexample.com");
        assert_eq!(istio_safe("/mycache.v1/component.x/tag.y"), "/mycache%2Ev1/component%2Ex/tag%2Ey");
        assert_eq!(istio_safe("/a/rbac.allowed"), "/a/rbac%2Eallowed");
        assert_eq!(
            istio_safe("/a.shadow_denied.b.istio_dry_run_allow_"),
            "/a%2Eshadow_denied.b%2Eistio_dry_run_allow_"
        );
        assert_eq!(istio_safe("wasm_filter."), "wasm_filter%2E");
    }

    #[test]
    fn hosts() {
        let hosts = vec![
            HostLabel {
                pattern: HostPattern::Exact("api.example.com".into()),
                label: "api.example.com".into(),
            },
            HostLabel {
                pattern: HostPattern::Subdomain(".example.org".into()),
                label: "*.example.org".into(),
            },
        ];
        assert_eq!(host_label(&hosts, "API.Example.COM:8443", "other"), "api.example.com");
        assert_eq!(host_label(&hosts, "api.example.com.", "other"), "api.example.com");
        assert_eq!(host_label(&hosts, "a.b.example.org", "other"), "*.example.org");
        assert_eq!(host_label(&hosts, "example.org", "other"), "other");
        assert_eq!(host_label(&hosts, "evil.com", "other"), "other");
        assert_eq!(host_label(&hosts, "", "other"), "other");
        // A host no pattern can read is `other`, never a configured host.
        assert_eq!(host_label(&hosts, "api.example.com:abc", "other"), "other");
        assert_eq!(host_label(&hosts, "api.example.com..", "other"), "other");
    }

    #[test]
    fn methods_and_status() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("get"), "other");
        assert_eq!(method_label("PROPFIND"), "other");
        let mut s = String::new();
        status_label(Some(204), false, &mut s);
        assert_eq!(s, "204");
        status_label(Some(204), true, &mut s);
        assert_eq!(s, "2xx");
        status_label(Some(503), true, &mut s);
        assert_eq!(s, "5xx");
        status_label(None, true, &mut s);
        assert_eq!(s, "0");
        status_label(Some(0), false, &mut s);
        assert_eq!(s, "0");
    }

    #[test]
    fn templates() {
        let t = parse_template("/users/{id}/orders/{order}").unwrap();
        assert_eq!(t.matches("/users/7/orders/9"), Some("/users/{id}/orders/{order}"));
        assert_eq!(t.matches("/users/7/orders/9/x"), None);
        assert_eq!(t.matches("/users/7/orders/"), None, "a variable needs a non-empty segment");
        assert_eq!(t.matches("/users/7/orders"), None);
        assert_eq!(t.matches("/Users/7/orders/9"), None);
        let r = parse_template("/files/{bucket}/**").unwrap();
        assert_eq!(r.matches("/files/b"), Some("/files/{bucket}/**"));
        assert_eq!(r.matches("/files/b/x/y/z"), Some("/files/{bucket}/**"));
        assert_eq!(r.matches("/files"), None);
        let root = parse_template("/").unwrap();
        assert_eq!(root.matches("/"), Some("/"));
        assert_eq!(root.matches("/a"), None);
        assert!(parse_template("users").is_err());
        assert!(parse_template("/a/**/b").is_err());
        assert!(parse_template("/a/{}").is_err());
        assert!(parse_template("/a/x{id}").is_err());
        assert!(parse_template("/a b").is_err());
        assert!(parse_template("/a;b").is_err());
        let p = Route::Prefix { prefix: "/static/".into(), label: "/static/*".into() };
        assert_eq!(p.matches("/static/app.js"), Some("/static/*"));
        assert_eq!(p.matches("/static"), None);
    }

    #[test]
    fn ids() {
        assert!(is_id("0", 16));
        assert!(is_id("123e4567-e89b-12d3-a456-426614174000", 16));
        assert!(is_id("123E4567-E89B-12D3-A456-426614174000", 16));
        assert!(!is_id("123e4567-e89b-12d3-a456-42661417400z", 16));
        assert!(is_id("deadbeefdeadbeef", 16));
        assert!(!is_id("deadbeefdeadbee", 16));
        assert!(!is_id("v1", 16));
        assert!(!is_id("", 16));
    }
}
