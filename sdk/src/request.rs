//! Header maps as read from the host ([`HeaderSnapshot`]), and the request view built on one
//! ([`Request`]).
//!
//! Every read from the host is a host call (and Envoy calls back into the module to allocate
//! the answer), so the SDK reads a whole map with one call and answers every lookup from it:
//! [`crate::Stream::request`] is that read for the request headers.

use crate::{host, http};
use std::borrow::Cow;

/// Every header of a map as it was at one moment, read with a single host call
/// ([`crate::HeaderMap::snapshot`]), answering lookups without calling the host again.
///
/// One call plus one allocation callback, however many headers are looked up, where
/// [`crate::HeaderMap::get`] costs that per header looked up. The host's buffer is kept as it came and
/// walked on each lookup (no copy, no allocation per header: on the request path every
/// allocation in the VM shows). Lookups see the map as it was when read, not later changes.
/// Names compare case-insensitively and the first value of a repeated header is the one
/// returned, as with [`crate::HeaderMap::get`]; values that are not UTF-8 read with U+FFFD through the
/// text lookups, and exactly as the host gave them through [`HeaderSnapshot::iter_bytes`] (the
/// way to pass a value on unchanged: an identity must never be rewritten).
#[derive(Debug, Clone)]
pub struct HeaderSnapshot {
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    /// The host's serialized map, checked well-formed and UTF-8 throughout.
    Raw(Vec<u8>),
    /// A serialized map with some name or value that is not UTF-8: the host's bytes, kept for
    /// [`HeaderSnapshot::iter_bytes`], and the pairs decoded lossily for the text lookups.
    Binary { raw: Vec<u8>, text: Vec<(String, String)> },
    /// Text pairs built by hand.
    Owned(Vec<(String, String)>),
}

/// Two snapshots are equal when they hold the same headers, byte for byte, in the same order,
/// however stored.
impl PartialEq for HeaderSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.iter_bytes().eq(other.iter_bytes())
    }
}

impl Eq for HeaderSnapshot {}

impl Default for HeaderSnapshot {
    fn default() -> Self {
        Self { repr: Repr::Owned(Vec::new()) }
    }
}

impl HeaderSnapshot {
    /// A snapshot of a map in the ABI's serialized form; a malformed map reads as empty.
    pub fn from_serialized(raw: Vec<u8>) -> Self {
        match host::check_map(&raw) {
            host::MapCheck::Text => Self { repr: Repr::Raw(raw) },
            host::MapCheck::Binary => {
                let text = host::PairsIter::new(&raw).map(|(k, v)| (lossy_ref(k), lossy_ref(v))).collect();
                Self { repr: Repr::Binary { raw, text } }
            }
            host::MapCheck::Malformed => {
                log::debug!("malformed header map ignored");
                Self::default()
            }
        }
    }

    /// A snapshot of text pairs (tests, and answers built by hand).
    pub fn from_strs(pairs: &[(&str, &str)]) -> Self {
        Self { repr: Repr::Owned(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()) }
    }

    /// A snapshot of raw pairs (names and values as the host gave them); their bytes stay
    /// readable unchanged through [`HeaderSnapshot::iter_bytes`].
    pub fn from_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        Self::from_serialized(host::serialize_pairs(&pairs))
    }

    /// Every header, in order, as text (values that are not UTF-8 read with U+FFFD).
    pub fn iter(&self) -> SnapshotIter<'_> {
        match &self.repr {
            Repr::Raw(raw) => SnapshotIter::Raw(host::PairsIter::new(raw)),
            Repr::Binary { text, .. } | Repr::Owned(text) => SnapshotIter::Owned(text.iter()),
        }
    }

    /// Every header, in order, with names and values exactly as the host gave them: for values
    /// that must pass on unchanged (an identity, a cookie), which the text lookups would
    /// rewrite when they hold bytes that are not UTF-8 (`obs-text`, which Envoy forwards).
    pub fn iter_bytes(&self) -> BytesIter<'_> {
        match &self.repr {
            Repr::Raw(raw) | Repr::Binary { raw, .. } => BytesIter::Raw(host::PairsIter::new(raw)),
            Repr::Owned(pairs) => BytesIter::Owned(pairs.iter()),
        }
    }

    /// Whether some name or value is not UTF-8 (and so reads differently through
    /// [`HeaderSnapshot::iter`] than through [`HeaderSnapshot::iter_bytes`]).
    pub fn has_binary(&self) -> bool {
        matches!(self.repr, Repr::Binary { .. })
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Number of header entries (a repeated header counts once per value).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when the map was empty (or could not be read).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// The headers of a [`HeaderSnapshot`], in order.
#[derive(Debug, Clone)]
pub enum SnapshotIter<'a> {
    /// Over the host's buffer.
    Raw(host::PairsIter<'a>),
    /// Over decoded pairs.
    Owned(std::slice::Iter<'a, (String, String)>),
}

impl<'a> Iterator for SnapshotIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SnapshotIter::Raw(it) => it.next().map(|(k, v)| (checked_before(k), checked_before(v))),
            SnapshotIter::Owned(it) => it.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }
}

/// A name or value of a [`Repr::Raw`] map as text, without checking it again: lookups walk the
/// map once per header asked for, and re-validating every value on the way (a 1 KB `:path` with
/// a token in it, say) was most of a lookup's cost.
fn checked_before(bytes: &[u8]) -> &str {
    // SAFETY: `Repr::Raw` is only built by `HeaderSnapshot::from_serialized`, after
    // `host::check_map` found every key and value of the map UTF-8 (it walks the pairs exactly as
    // `PairsIter` does), and its buffer is never changed afterwards; `PairsIter` yields exactly
    // those key and value slices.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// The headers of a [`HeaderSnapshot`], in order, as bytes.
#[derive(Debug, Clone)]
pub enum BytesIter<'a> {
    /// Over the host's buffer.
    Raw(host::PairsIter<'a>),
    /// Over text pairs built by hand.
    Owned(std::slice::Iter<'a, (String, String)>),
}

impl<'a> Iterator for BytesIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            BytesIter::Raw(it) => it.next(),
            BytesIter::Owned(it) => it.next().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        }
    }
}

fn lossy_ref(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The request as one [`HeaderSnapshot`] read it: method, host, path, query, cookies and
/// headers, each answered without calling the host. Filters get it from
/// [`crate::Stream::request`]; [`Request::from_headers`] builds one for tests of pure logic.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    headers: HeaderSnapshot,
}

impl Request {
    /// The request these headers describe.
    pub fn from_headers(headers: HeaderSnapshot) -> Self {
        Self { headers }
    }

    /// Every request header, pseudo-headers included.
    pub fn headers(&self) -> &HeaderSnapshot {
        &self.headers
    }

    /// The method (`:method`), empty when the host has none.
    pub fn method(&self) -> &str {
        self.headers.get(":method").unwrap_or_default()
    }

    /// The `:authority` as sent (the Host header for HTTP/1.1), port included.
    pub fn authority(&self) -> &str {
        self.headers.get(":authority").unwrap_or_default()
    }

    /// The host: lower-cased, port and trailing dot removed; `None` when the authority is not a
    /// host name or address with an optional port (see [`http::normalize_host`]).
    pub fn host(&self) -> Option<Cow<'_, str>> {
        http::normalize_host(self.authority())
    }

    /// The full `:path`, query included.
    pub fn path_and_query(&self) -> &str {
        self.headers.get(":path").unwrap_or_default()
    }

    /// The path without query string or fragment.
    pub fn path(&self) -> &str {
        http::split_path(self.path_and_query()).0
    }

    /// The raw query string (without `?`), when there is one.
    pub fn query(&self) -> Option<&str> {
        http::split_path(self.path_and_query()).1
    }

    /// The first query parameter named `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        http::query_param(self.query()?, name)
    }

    /// The first cookie named `name` from the first `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        http::cookie(self.headers.get("cookie")?, name)
    }

    /// The first value of request header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lookups() {
        let pairs = [
            (":method", "GET"),
            (":path", "/a/b?c=1"),
            (":authority", "Example.COM:8080"),
            ("x-multi", "1"),
            ("X-Multi", "2"),
            ("cookie", "a=1; sid=xyz"),
        ];
        let s = HeaderSnapshot::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
        );
        assert_eq!(s.len(), 6);
        assert_eq!(s.get("x-multi"), Some("1"));
        assert_eq!(s.get("X-MULTI"), Some("1"));
        assert_eq!(s.get_all("x-multi").collect::<Vec<_>>(), ["1", "2"]);
        assert!(!s.contains("x-absent"));
        let req = Request::from_headers(s);
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query(), Some("c=1"));
        assert_eq!(req.host().as_deref(), Some("example.com"));
        assert_eq!(req.authority(), "Example.COM:8080");
        assert_eq!(req.cookie("sid"), Some("xyz"));
        assert_eq!(req.header("x-multi"), Some("1"));
    }

    #[test]
    fn snapshot_of_non_utf8_values() {
        let s = HeaderSnapshot::from_pairs(vec![
            (b"x-bin".to_vec(), vec![0xff, 0xfe]),
            (b"x-ok".to_vec(), b"fine".to_vec()),
        ]);
        assert_eq!(s.get("x-bin"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(s.get("x-ok"), Some("fine"));
        assert!(s.has_binary());
        // The bytes themselves stay readable, unchanged: two different values never read alike.
        let bytes: Vec<(&[u8], &[u8])> = s.iter_bytes().collect();
        assert_eq!(bytes, [(&b"x-bin"[..], &[0xff, 0xfe][..]), (&b"x-ok"[..], &b"fine"[..])]);
        assert!(HeaderSnapshot::default().is_empty());
        let text = HeaderSnapshot::from_strs(&[("a", "é")]);
        assert!(!text.has_binary());
        assert_eq!(text.iter_bytes().collect::<Vec<_>>(), [(&b"a"[..], "é".as_bytes())]);
    }

    #[test]
    fn serialized_snapshot_reads_in_place() {
        let raw =
            host::serialize_pairs(&[(":path", "/a?b=1"), ("x-multi", "1"), ("x-multi", "2"), ("x-e", "")]);
        let s = HeaderSnapshot::from_serialized(raw);
        assert!(matches!(s.repr, Repr::Raw(_)));
        assert_eq!(s.len(), 4);
        assert_eq!(s.get(":PATH"), Some("/a?b=1"));
        assert_eq!(s.get_all("x-multi").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(s.get("x-e"), Some(""));
        assert_eq!(s.get("x-absent"), None);
    }

    #[test]
    fn serialized_snapshot_with_non_utf8_or_broken_bytes() {
        let mut raw = host::serialize_pairs(&[("x-bin", "ab"), ("x-ok", "fine")]);
        // Make x-bin's value two bytes that are not UTF-8.
        let at = raw.windows(3).position(|w| w == b"ab\0").unwrap();
        raw[at] = 0xff;
        raw[at + 1] = 0xfe;
        let s = HeaderSnapshot::from_serialized(raw.clone());
        assert!(matches!(s.repr, Repr::Binary { .. }));
        assert_eq!(s.get("x-bin"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(s.get("x-ok"), Some("fine"));
        // A value that reads as U+FFFD and one that is U+FFFD stay apart as bytes.
        let fffd = HeaderSnapshot::from_strs(&[("x-bin", "\u{fffd}\u{fffd}"), ("x-ok", "fine")]);
        assert!(s.iter().eq(fffd.iter()), "the text lookups cannot tell them apart");
        assert_ne!(s, fffd);
        assert_eq!(s.iter_bytes().next(), Some((&b"x-bin"[..], &[0xff, 0xfe][..])));
        raw.truncate(raw.len() - 3);
        assert!(HeaderSnapshot::from_serialized(raw).is_empty());
        assert!(HeaderSnapshot::from_serialized(Vec::new()).is_empty());
    }
}
