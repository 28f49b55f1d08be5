//! Request and response headers of the current stream, and a request view that reads each
//! pseudo-header at most once.
//!
//! Every read is a host call (and Envoy calls back into the module to allocate the answer), so
//! [`Request`] caches what it has read: a filter asking for the path three times pays once.

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

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// A read-through view of the current request; each part is fetched on first use.
#[derive(Debug, Default)]
pub struct Request {
    method: OnceCell<String>,
    authority: OnceCell<String>,
    path: OnceCell<String>,
    cookie: OnceCell<Option<String>>,
}

impl Request {
    /// A view of the current stream's request; reads nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The method (`:method`), empty when the host has none.
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| REQUEST_HEADERS.get(":method").unwrap_or_default())
    }

    /// The `:authority` as sent (the Host header for HTTP/1.1), port included.
    pub fn authority(&self) -> &str {
        self.authority.get_or_init(|| REQUEST_HEADERS.get(":authority").unwrap_or_default())
    }

    /// The host: lower-cased, port and trailing dot removed.
    pub fn host(&self) -> Cow<'_, str> {
        http::normalize_host(self.authority())
    }

    /// The full `:path`, query included.
    pub fn path_and_query(&self) -> &str {
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
        let header = self.cookie.get_or_init(|| REQUEST_HEADERS.get("cookie")).as_deref()?;
        http::cookie(header, name)
    }

    /// A request header (see [`Headers::get`]); not cached.
    pub fn header(&self, name: &str) -> Option<String> {
        REQUEST_HEADERS.get(name)
    }

    /// Forgets what was read, after the filter itself changed the request.
    pub fn invalidate(&mut self) {
        *self = Self::default();
    }
}
