//! Pure parsing of request parts: path and query, query parameters, cookies, host.
//!
//! Nothing here calls the host, so it is unit-tested natively and on wasm32; [`crate::request`]
//! feeds it the values Envoy hands over. Every function takes client input and never panics.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Splits a `:path` into the path and the query string (without `?`); a fragment, which clients
/// should not send but sometimes do, is dropped.
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    let path = match path.find('#') {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    };
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// Decodes one query-string component: `%XX` escapes and `+` as a space
/// (`application/x-www-form-urlencoded`). Invalid escapes are kept as written; bytes that do not
/// form UTF-8 become U+FFFD.
pub fn decode_query_component(raw: &str) -> Cow<'_, str> {
    if !has_percent_or_plus(raw.as_bytes()) {
        return Cow::Borrowed(raw);
    }
    let plus_decoded: Cow<'_, [u8]> = if raw.contains('+') {
        Cow::Owned(raw.bytes().map(|b| if b == b'+' { b' ' } else { b }).collect())
    } else {
        Cow::Borrowed(raw.as_bytes())
    };
    let decoded: Vec<u8> = percent_decode(&plus_decoded).collect();
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

/// Whether `bytes` holds `%` or `+`, eight bytes at a time: query values are often long tokens
/// with neither, and a byte-by-byte scan of a 1 KB token was most of finding it.
fn has_percent_or_plus(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Exactly "some byte of `word` is zero": a borrow can only start at a zero byte.
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        if has_zero(word ^ (ONES * u64::from(b'%'))) || has_zero(word ^ (ONES * u64::from(b'+'))) {
            return true;
        }
    }
    chunks.remainder().iter().any(|b| *b == b'%' || *b == b'+')
}

/// The bytes of one query-string component as [`decode_query_component`] decodes it (`+` a
/// space, `%XX` its byte, an invalid escape as written), one at a time: comparisons against a
/// decoded value need no decoded copy.
pub fn decoded_query_bytes(raw: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = raw.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        let byte = *bytes.get(at)?;
        at += 1;
        Some(match byte {
            b'+' => b' ',
            b'%' => match (bytes.get(at).and_then(hex), bytes.get(at + 1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    at += 2;
                    high << 4 | low
                }
                _ => b'%',
            },
            other => other,
        })
    })
}

fn hex(byte: &u8) -> Option<u8> {
    (*byte as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Whether the raw query component `raw` decodes to exactly `decoded`, without decoding a copy.
pub fn query_component_eq(raw: &str, decoded: &str) -> bool {
    // A decoded component is never longer than its raw form.
    raw.len() >= decoded.len() && decoded_query_bytes(raw).eq(decoded.bytes())
}

/// Whether the raw query component `raw` decodes to text starting with `prefix`, without
/// decoding a copy.
pub fn query_component_starts_with(raw: &str, prefix: &str) -> bool {
    let mut decoded = decoded_query_bytes(raw);
    prefix.bytes().all(|want| decoded.next() == Some(want))
}

/// The raw value of the first parameter of `query` whose name decodes to `name`; `Some("")` for
/// a parameter without `=`. Nothing is decoded into a copy.
pub fn raw_query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').filter(|p| !p.is_empty()).find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        query_component_eq(n, name).then_some(v)
    })
}

/// The query parameters of a query string, in order, decoded. A parameter without `=` has an
/// empty value; empty pieces (`a=1&&b=2`) are skipped.
pub fn query_params(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query_component(name), decode_query_component(value))
    })
}

/// The value of the first query parameter named `name` (compared after decoding), decoded.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query_params(query).find(|(n, _)| n == name).map(|(_, v)| v)
}

/// The cookies of a `Cookie` header value, as `(name, value)` pairs in order.
///
/// Parsed as a server does under RFC 6265 section 5.4 and 6265bis: pairs are separated by `;`,
/// surrounding whitespace is trimmed, the name ends at the first `=`, a value wrapped in double
/// quotes is unwrapped, and a piece with no `=` or an empty name is skipped. Values are not
/// percent-decoded: RFC 6265 gives cookie values no encoding.
pub fn cookies(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|piece| {
        let (name, value) = piece.split_once('=')?;
        let name = name.trim_matches(is_cookie_ws);
        if name.is_empty() {
            return None;
        }
        let value = value.trim_matches(is_cookie_ws);
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        Some((name, value))
    })
}

fn is_cookie_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The value of the first cookie named `name` (names are case-sensitive, as browsers send them).
pub fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    cookies(header).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// The host of an `:authority`/`Host` value, as rules compare it: lower-cased, the port and one
/// trailing dot removed; IPv6 literals keep their brackets (`[::1]:8080` gives `[::1]`).
///
/// `None` when the value is not a host this way can name: empty, a port that is not a number
/// up to 65535, two ports, userinfo (`user@host`), percent-encoding, empty labels (`a..b`,
/// `host..`), a bare IPv6 address, or any byte outside a host name's. Envoy's router takes such
/// values as they are and sends them to a catch-all virtual host (checked in Envoy 1.40), so a
/// filter must not read them as "no host rule matched": a weaker rule would then apply to a
/// request a well-formed host would have had checked. Filters with host conditions refuse them
/// ([`crate::LocalReply::invalid_host`]).
pub fn normalize_host(authority: &str) -> Option<Cow<'_, str>> {
    let host = strip_port(authority)?;
    let host = host.strip_suffix('.').unwrap_or(host);
    if !is_host_name(host) && !is_ipv6_literal(host) {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The authority without its port; `None` when the port is not a number up to 65535.
fn strip_port(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    // An empty port is allowed and means the default (RFC 3986 section 3.2.3). `parse` alone
    // would take a sign (`+80`), so the digits are checked first.
    let port_ok =
        |p: &str| p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    port.is_none_or(port_ok).then_some(host)
}

/// Dot-separated labels of letters, digits, `-` and `_` (as names of services are written), none
/// empty. IPv4 addresses are names of this form too.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `[` hex digits, colons and dots `]`: the form of an IPv6 literal, without checking the
/// address itself (Envoy compares the text).
fn is_ipv6_literal(host: &str) -> bool {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|inner| {
        inner.contains(':') && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query() {
        assert_eq!(split_path("/a/b?x=1&y"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_path("/a"), ("/a", None));
        assert_eq!(split_path("/a?"), ("/a", Some("")));
        assert_eq!(split_path("/a#frag?x"), ("/a", None));
        assert_eq!(split_path("/a?q=1#f"), ("/a", Some("q=1")));
        assert_eq!(split_path(""), ("", None));
    }

    #[test]
    fn query_decoding() {
        let q = "token=a%2Eb%2ec&name=J%C3%B6rg+S&flag&&empty=&bad=%zz%4";
        let all: Vec<_> = query_params(q).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
        assert_eq!(
            all,
            [
                ("token".into(), "a.b.c".into()),
                ("name".into(), "Jörg S".into()),
                ("flag".into(), String::new()),
                ("empty".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
        assert_eq!(query_param(q, "token").as_deref(), Some("a.b.c"));
        assert_eq!(query_param("a%20b=1", "a b").as_deref(), Some("1"));
        assert_eq!(query_param("x=%FF", "x").as_deref(), Some("\u{FFFD}"));
        assert!(query_param(q, "missing").is_none());
    }

    #[test]
    fn decoded_comparisons_agree_with_decoding() {
        let raws = ["", "a", "a+b", "a%20b", "%2B", "%zz%4", "J%C3%B6rg", "%", "%4", "%41%42c", "x%2", "%ff"];
        for raw in raws {
            let decoded = decode_query_component(raw);
            let bytes: Vec<u8> = decoded_query_bytes(raw).collect();
            if !decoded.contains('\u{fffd}') {
                assert_eq!(bytes, decoded.as_bytes(), "{raw:?}");
                assert!(query_component_eq(raw, &decoded), "{raw:?}");
                for end in 0..=decoded.len() {
                    if let Some(prefix) = decoded.get(..end) {
                        assert!(query_component_starts_with(raw, prefix), "{raw:?} {prefix:?}");
                    }
                }
            }
            assert!(!query_component_eq(raw, &format!("{decoded}x")), "{raw:?}");
            assert!(!query_component_starts_with(raw, &format!("{decoded}x")), "{raw:?}");
        }
        assert!(query_component_eq("a+b", "a b"));
        assert!(!query_component_eq("a%2Bb", "a b"), "an encoded plus stays a plus");
        assert!(query_component_eq("a%2Bb", "a+b"));
        assert!(!query_component_eq("ab", "a"));
        assert_eq!(raw_query_param("a=1&b%20c=2&b+c=3&flag&&d=", "b c"), Some("2"));
        assert_eq!(raw_query_param("a=1&flag", "flag"), Some(""));
        assert_eq!(raw_query_param("a=1&flag", "fla"), None);
        assert_eq!(raw_query_param("", "a"), None);
    }

    #[test]
    fn cookie_parsing() {
        let h = "id_token=eyJ.a.b; theme=\"dark\";  empty=; =nameless; novalue; sp = x ;last=1=2";
        let all: Vec<_> = cookies(h).collect();
        assert_eq!(
            all,
            [("id_token", "eyJ.a.b"), ("theme", "dark"), ("empty", ""), ("sp", "x"), ("last", "1=2")]
        );
        assert_eq!(cookie(h, "id_token"), Some("eyJ.a.b"));
        assert_eq!(cookie(h, "ID_TOKEN"), None);
        assert_eq!(cookie("", "a"), None);
        assert_eq!(cookie("a=\"", "a"), Some("\""));
    }

    #[test]
    fn hosts() {
        let n = |a| normalize_host(a).map(Cow::into_owned);
        assert_eq!(n("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(n("example.com.").as_deref(), Some("example.com"));
        assert_eq!(n("example.com.:443").as_deref(), Some("example.com"));
        assert_eq!(n("example.com:").as_deref(), Some("example.com"));
        assert_eq!(n("example.com:0080").as_deref(), Some("example.com"));
        assert_eq!(n("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(n("[::FFFF:10.0.0.1]").as_deref(), Some("[::ffff:10.0.0.1]"));
        assert_eq!(n("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(n("svc_a.internal").as_deref(), Some("svc_a.internal"));
        assert!(matches!(normalize_host("plain.example"), Some(Cow::Borrowed(_))));
        for bad in [
            "",
            ":80",
            ".",
            "host:abc",
            "host:+80",
            "host:65536",
            "host:999999",
            "a.example.com:443:443",
            "api.example.com..",
            "api..example.com",
            ".api.example.com",
            "user@api.example.com",
            "api%2eexample.com",
            "api.example.com/x",
            " api.example.com",
            "api.example.com\0",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[]",
            "[zz::1]",
            "::1",
            "é.example.com",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    /// Every spelling of a well-formed host normalizes to it; everything else normalizes to a
    /// well-formed host or to `None`, never to something a rule could mistake for another host.
    #[test]
    fn authority_corpus() {
        let hosts = ["api.example.com", "a.b", "x", "10.1.2.3", "[::1]", "[2001:db8::7]", "svc_1.ns-2.local"];
        let ports = ["", ":", ":1", ":80", ":443", ":8080", ":65535", ":00080"];
        for host in hosts {
            for dot in ["", "."] {
                if host.starts_with('[') && !dot.is_empty() {
                    continue;
                }
                for port in ports {
                    for upper in [false, true] {
                        let mut a = format!("{host}{dot}{port}");
                        if upper {
                            a = a.to_ascii_uppercase();
                        }
                        assert_eq!(normalize_host(&a).as_deref(), Some(host), "{a:?}");
                    }
                }
            }
        }
        // Every byte in every position of a few authorities: the answer is None or a host that
        // is itself in normal form (normalizing it again gives it back).
        let bases = ["api.example.com:443", "[::1]:80", "a.b."];
        for base in bases {
            for at in 0..=base.len() {
                for byte in 0u8..=255 {
                    let mut bytes = base.as_bytes().to_vec();
                    bytes.insert(at, byte);
                    let Ok(a) = String::from_utf8(bytes) else { continue };
                    if let Some(h) = normalize_host(&a) {
                        assert_eq!(normalize_host(&h).as_deref(), Some(&*h), "{a:?}");
                        assert!(!h.contains(['@', '%', ' ', '/']) && !h.ends_with('.'), "{a:?} -> {h:?}");
                        assert!(!h.bytes().any(|b| b.is_ascii_uppercase()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod scan_tests {
    use super::has_percent_or_plus;

    #[test]
    fn finds_either_byte_anywhere() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(!has_percent_or_plus(&clean), "{len}");
            for at in 0..len {
                for byte in [b'%', b'+'] {
                    let mut v = clean.clone();
                    v[at] = byte;
                    assert!(has_percent_or_plus(&v), "{len} {at} {byte}");
                }
            }
        }
        // Neighbouring and high bytes are not mistaken for them.
        assert!(!has_percent_or_plus(b"$&*,$&*,\x80\xff$&*,$&*,$&*,"));
        assert!(!has_percent_or_plus("\u{e9}\u{2b2b}\u{2525}xyzwxyzwxyzw".as_bytes()));
    }
}
