//! Request and response headers of the current stream, and a request view that reads each
//! pseudo-header at most once.
//!
//! Every read is a host call (and Envoy calls back into the module to allocate the answer), so
//! [`Request`] caches what it has read: a filter asking for the path three times pays once.
//! A filter that needs two or more request values can read them all with one call:
//! [`Request::snapshot`] (backed by a [`HeaderSnapshot`]) answers every lookup locally.

use std::borrow::Cow;
use std::cell::OnceCell;

use proxy_wasm::types::{MapType, Status};

use crate::{host, http};

/// A header map of the current stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers(MapType);

/// The request headers, as they will go upstream.
pub const REQUEST_HEADERS: Headers = Headers(MapType::HttpRequestHeaders);
/// The response headers, as they will go to the client.
pub const RESPONSE_HEADERS: Headers = Headers(MapType::HttpResponseHeaders);
/// The request trailers.
pub const REQUEST_TRAILERS: Headers = Headers(MapType::HttpRequestTrailers);
/// The response trailers.
pub const RESPONSE_TRAILERS: Headers = Headers(MapType::HttpResponseTrailers);

impl Headers {
    /// The value of `name` (case-insensitive, as Envoy stores names lower-cased); when the
    /// header is repeated, Envoy returns the first value only. Bytes that are not UTF-8 become
    /// U+FFFD (see [`Headers::get_bytes`] for the raw value). A host error reads as absent, and
    /// is logged.
    pub fn get(self, name: &str) -> Option<String> {
        match host::header(self.0, name) {
            Ok(v) => v,
            Err(status) => {
                log::debug!("reading header {name:?} failed: {status:?}");
                None
            }
        }
    }

    /// The raw value of `name`, for values that must pass through unchanged (obs-text bytes).
    pub fn get_bytes(self, name: &str) -> Option<Vec<u8>> {
        match host::header_bytes(self.0, name) {
            Ok(v) => v,
            Err(status) => {
                log::debug!("reading header {name:?} failed: {status:?}");
                None
            }
        }
    }

    /// Every header, in order, with values decoded lossily when they are not UTF-8.
    pub fn all(self) -> Vec<(String, String)> {
        match host::header_pairs(self.0) {
            Ok(pairs) => pairs.into_iter().map(|(k, v)| (lossy(k), lossy(v))).collect(),
            Err(status) => {
                log::debug!("reading header map failed: {status:?}");
                Vec::new()
            }
        }
    }

    /// Sets `name` to `value`, replacing every existing value.
    pub fn set(self, name: &str, value: &str) -> Result<(), Status> {
        host::set_header(self.0, name, value.as_bytes())
    }

    /// Sets `name` to raw bytes, replacing every existing value.
    pub fn set_bytes(self, name: &str, value: &[u8]) -> Result<(), Status> {
        host::set_header(self.0, name, value)
    }

    /// Appends a value for `name`, keeping existing ones.
    pub fn add(self, name: &str, value: &str) -> Result<(), Status> {
        host::add_header(self.0, name, value.as_bytes())
    }

    /// Appends a raw value for `name`, keeping existing ones.
    pub fn add_bytes(self, name: &str, value: &[u8]) -> Result<(), Status> {
        host::add_header(self.0, name, value)
    }

    /// Removes every value of `name`.
    pub fn remove(self, name: &str) -> Result<(), Status> {
        host::remove_header(self.0, name)
    }
}

/// Every header of a map as it was at one moment, read with a single host call
/// (`proxy_get_header_map_pairs`), answering lookups without calling the host again.
///
/// One call plus one allocation callback, however many headers are looked up, where
/// [`Headers::get`] costs that per header present. The host's buffer is kept as it came and
/// walked on each lookup (no copy, no allocation per header: on the request path every
/// allocation in the VM shows). Lookups see the map as it was when read, not later changes.
/// Names compare case-insensitively and the first value of a repeated header is the one
/// returned, as with [`Headers::get`]; values that are not UTF-8 read with U+FFFD through the
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
    /// Reads `headers` now. A host error (no such map in this callback) reads as an empty map,
    /// and is logged at debug.
    pub fn read(headers: Headers) -> Self {
        match host::header_pairs_raw(headers.0) {
            Ok(raw) => Self::from_serialized(raw),
            Err(status) => {
                log::debug!("reading header map failed: {status:?}");
                Self::default()
            }
        }
    }

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

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// A view of the current request. Either read-through ([`Request::new`]: each part fetched
/// on first use, one host call each) or a snapshot ([`Request::snapshot`]: every header read
/// with one host call, every lookup answered locally).
#[derive(Debug, Default)]
pub struct Request {
    method: OnceCell<String>,
    authority: OnceCell<String>,
    path: OnceCell<String>,
    cookie: OnceCell<Option<String>>,
    snapshot: Option<HeaderSnapshot>,
}

impl Request {
    /// A view of the current stream's request; reads nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A view of the current stream's request headers as they are now, read with one host call
    /// ([`HeaderSnapshot`]); nothing is read from the host afterwards, so later changes (by this
    /// filter or others) are not seen. Worth it as soon as two or more values are needed.
    pub fn snapshot() -> Self {
        Self { snapshot: Some(HeaderSnapshot::read(REQUEST_HEADERS)), ..Self::default() }
    }

    /// The headers, when this view is a [`Request::snapshot`].
    pub fn headers(&self) -> Option<&HeaderSnapshot> {
        self.snapshot.as_ref()
    }

    /// The method (`:method`), empty when the host has none.
    pub fn method(&self) -> &str {
        if let Some(s) = &self.snapshot {
            return s.get(":method").unwrap_or_default();
        }
        self.method.get_or_init(|| REQUEST_HEADERS.get(":method").unwrap_or_default())
    }

    /// The `:authority` as sent (the Host header for HTTP/1.1), port included.
    pub fn authority(&self) -> &str {
        if let Some(s) = &self.snapshot {
            return s.get(":authority").unwrap_or_default();
        }
        self.authority.get_or_init(|| REQUEST_HEADERS.get(":authority").unwrap_or_default())
    }

    /// The host: lower-cased, port and trailing dot removed; `None` when the authority is not a
    /// host name or address with an optional port (see [`http::normalize_host`]).
    pub fn host(&self) -> Option<Cow<'_, str>> {
        http::normalize_host(self.authority())
    }

    /// The full `:path`, query included.
    pub fn path_and_query(&self) -> &str {
        if let Some(s) = &self.snapshot {
            return s.get(":path").unwrap_or_default();
        }
        self.path.get_or_init(|| REQUEST_HEADERS.get(":path").unwrap_or_default())
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

    /// The first cookie named `name` from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        if let Some(s) = &self.snapshot {
            return http::cookie(s.get("cookie")?, name);
        }
        let header = self.cookie.get_or_init(|| REQUEST_HEADERS.get("cookie")).as_deref()?;
        http::cookie(header, name)
    }

    /// A request header (see [`Headers::get`]); not cached, except in a snapshot, which answers
    /// it locally.
    pub fn header(&self, name: &str) -> Option<String> {
        if let Some(s) = &self.snapshot {
            return s.get(name).map(str::to_string);
        }
        REQUEST_HEADERS.get(name)
    }

    /// Forgets what was read, after the filter itself changed the request; a snapshot becomes
    /// a read-through view.
    pub fn invalidate(&mut self) {
        *self = Self::default();
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
        let req = Request { snapshot: Some(s), ..Request::default() };
        assert_eq!(req.method(), "GET");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query(), Some("c=1"));
        assert_eq!(req.host().as_deref(), Some("example.com"));
        assert_eq!(req.authority(), "Example.COM:8080");
        assert_eq!(req.cookie("sid"), Some("xyz"));
        assert_eq!(req.header("x-multi").as_deref(), Some("1"));
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
