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

/// The host of an `:authority`/`Host` value: port removed, lower-cased, a trailing dot removed.
/// IPv6 literals keep their brackets (`[::1]:8080` gives `[::1]`).
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = strip_port(authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        // More than one colon without brackets is a bare IPv6 address, not host:port.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
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
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("host:abc"), "host:abc");
        assert_eq!(normalize_host(""), "");
        assert!(matches!(normalize_host("plain.example"), Cow::Borrowed(_)));
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
