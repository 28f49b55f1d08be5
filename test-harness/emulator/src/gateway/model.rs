//! What goes in and out of a [`super::Gateway`]: the client's request and what it receives,
//! the request an upstream or a cluster receives and its answer, and what Envoy's HTTP
//! connection manager (HCM) and router do to them around the filter chain.
//!
//! Every rule here was observed in Envoy 1.40 with the probe filter, three instances tagged
//! `a`, `b`, `c` in the HCM configuration `gatewasm_envoy::EnvoyBuilder` generates (plaintext
//! HTTP/1.1 listener, one route `prefix: /` to the `upstream` cluster with a 30 s timeout,
//! `use_remote_address` unset): `tests/gateway.rs` sends the same requests to that Envoy and to
//! a [`super::Gateway`] and compares what the filters saw, what the upstream got and what the
//! client received.

use std::time::Duration;

/// A request as the client sends it (HTTP/1.1 on a plaintext connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers as the client sends them, in order (names in any case; `host` among them, or
    /// `localhost` is sent).
    pub headers: Vec<(String, String)>,
    /// Body; empty for none.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, path: &str) -> Request {
        Request { method: method.to_string(), path: path.to_string(), headers: Vec::new(), body: Vec::new() }
    }

    /// A `GET`.
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// A `POST` with a body.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new("POST", path).body(body)
    }

    /// Adds a header (repeat for several values).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }
}

/// Who produced the response the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The route's upstream answered (and every filter's response path ran on it).
    Upstream,
    /// A filter sent a local reply: `filter` is its name, `details` its response code details.
    LocalReply {
        /// The filter's name in the chain.
        filter: String,
        /// `response.code_details` (the details the filter gave).
        details: String,
    },
    /// The filter's VM had failed (it trapped on this request or earlier): Envoy 1.40's Wasm
    /// filter, with its default fail-closed policy, answers 503 with no body and the details
    /// `wasm_fail_stream`.
    FailedVm {
        /// The filter's name in the chain.
        filter: String,
        /// Why the VM failed (the trap, with the module's panic message when it logged one).
        reason: String,
    },
    /// Envoy answered by itself, e.g. the route timeout's 504 (`details`: `response_timeout`).
    Envoy {
        /// `response.code_details`.
        details: String,
    },
    /// A filter reset the stream (`proxy_close_stream`): the client gets no response (details
    /// `wasm_close_stream`).
    Reset {
        /// The filter's name in the chain.
        filter: String,
    },
}

/// What the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (0 for a reset stream).
    pub status: u16,
    /// Headers as the client receives them, in order, lower-case names (`:status` not among
    /// them).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Who answered.
    pub source: Source,
}

impl Response {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request as an upstream (the route's, or a cluster's for a callout) receives it over
/// HTTP/1.1: `:authority` is the `host` header again, the other pseudo-headers are the method
/// and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers in order, lower-case names, `host` first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl UpstreamRequest {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// From a header map with pseudo-headers (what the last filter let go, or a callout).
    pub(crate) fn from_map(map: &[(String, String)], body: Vec<u8>) -> UpstreamRequest {
        let pseudo = |name: &str| first(map, name).unwrap_or_default().to_string();
        let mut headers = Vec::with_capacity(map.len());
        if let Some(host) = first(map, ":authority") {
            headers.push(("host".to_string(), host.to_string()));
        }
        headers.extend(map.iter().filter(|(n, _)| !n.starts_with(':')).cloned());
        UpstreamRequest { method: pseudo(":method"), path: pseudo(":path"), headers, body }
    }
}

/// What an upstream or a cluster answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers (without `:status`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// How long it takes to answer, on the gateway's virtual clock (ticks and other callouts
    /// run meanwhile).
    pub latency: Duration,
}

impl Reply {
    /// A reply with a status, no headers, no body, no latency.
    pub fn status(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new(), latency: Duration::ZERO }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }

    /// Sets the latency.
    pub fn latency(mut self, latency: Duration) -> Reply {
        self.latency = latency;
        self
    }

    /// The response headers Envoy's router hands the filters (or a callout's caller):
    /// `:status`, the upstream's headers, `content-length` when the upstream sent none (an
    /// HTTP/1.1 upstream sending a whole body, as the probe's upstream did), then the router's
    /// `x-envoy-upstream-service-time` in milliseconds (the probe: after the upstream's own
    /// `date`, before any filter's additions; in a callout's answer too: 6 headers for the echo
    /// upstream's 4). An upstream's `keep-alive` is dropped.
    pub(crate) fn router_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![(":status".to_string(), self.status.to_string())];
        // The probe: an upstream's `keep-alive` never reached the filters (its
        // `proxy-connection` did, and is dropped on the way to the client).
        h.extend(
            self.headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .filter(|(n, _)| n != "keep-alive"),
        );
        if first(&h, "content-length").is_none() {
            h.push(("content-length".to_string(), self.body.len().to_string()));
        }
        h.push(("x-envoy-upstream-service-time".to_string(), self.latency.as_millis().to_string()));
        h
    }
}

pub(crate) fn first<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Headers an HTTP/1.1 hop consumes; Envoy's codec and HCM drop them before the first filter
/// (the probe: `connection`, the names `connection` lists, `keep-alive`, `proxy-connection`,
/// `transfer-encoding` never reached filter `a`). `te` is dropped too unless it is `trailers`
/// (the probe: `te: gzip` gone, `te: trailers` kept and sent upstream).
const HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding"];

/// `x-envoy-*` headers the HCM removes from a client's request (the probe: these two were gone
/// at the first filter while `x-envoy-foo` and `x-envoy-original-path` arrived and went
/// upstream unchanged). Envoy's `cleanInternalHeaders` removes more of the family on an edge
/// request; only the probed ones are modelled.
const REMOVED_ENVOY_HEADERS: [&str; 2] = ["x-envoy-internal", "x-envoy-expected-rq-timeout-ms"];

/// The request headers the first filter sees, from what the client sent, as Envoy's HTTP/1.1
/// codec and HCM build them (each point seen at filter `a` with `map:req`):
/// - the pseudo-headers first, in this order: `:authority` (the `host` header's value, case
///   kept), `:path`, `:method`, `:scheme`, wherever `host` was in the request;
/// - then the client's headers in their order, names lower-cased, hop-by-hop ones and the
///   removed `x-envoy-*` ones dropped;
/// - `:scheme` is `http` on this plaintext listener, or the client's `x-forwarded-proto` when
///   it sent one (`https` made `:scheme: https`);
/// - `x-forwarded-proto: http` is appended when the client sent none (a given one is kept);
/// - `x-request-id` is appended (a UUID v4) when the client sent none; a given one is kept as
///   it is;
/// - `x-forwarded-for` is neither added nor changed (`use_remote_address` is unset).
pub(crate) fn hcm_request_headers(request: &Request, request_id: &str) -> Vec<(String, String)> {
    let lower: Vec<(String, String)> =
        request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
    let mut nominated: Vec<String> = Vec::new();
    for (n, v) in &lower {
        if n == "connection" {
            nominated.extend(v.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()));
        }
    }
    let authority = first(&lower, "host").unwrap_or("localhost").to_string();
    let forwarded_proto = first(&lower, "x-forwarded-proto").map(str::to_string);
    let mut out = vec![
        (":authority".to_string(), authority),
        (":path".to_string(), request.path.clone()),
        (":method".to_string(), request.method.clone()),
        (":scheme".to_string(), forwarded_proto.clone().unwrap_or_else(|| "http".to_string())),
    ];
    for (n, v) in lower {
        let dropped = n == "host"
            || HOP_BY_HOP.contains(&n.as_str())
            || REMOVED_ENVOY_HEADERS.contains(&n.as_str())
            || nominated.contains(&n)
            || (n == "te" && !v.trim().eq_ignore_ascii_case("trailers"));
        if !dropped {
            out.push((n, v));
        }
    }
    if forwarded_proto.is_none() {
        out.push(("x-forwarded-proto".to_string(), "http".to_string()));
    }
    if first(&out, "x-request-id").is_none() {
        out.push(("x-request-id".to_string(), request_id.to_string()));
    }
    out
}

/// What the router adds on the way upstream: `x-envoy-expected-rq-timeout-ms` with the route's
/// timeout (the probe: `30000` for the runner's 30 s route, whatever the client sent), and no
/// `x-forwarded-for`, no `x-envoy-original-path` of its own (a filter's or the client's goes
/// through as it is).
pub(crate) fn router_request_headers(
    mut headers: Vec<(String, String)>,
    timeout: Duration,
) -> Vec<(String, String)> {
    headers.retain(|(n, _)| n != "x-envoy-expected-rq-timeout-ms");
    headers.push(("x-envoy-expected-rq-timeout-ms".to_string(), timeout.as_millis().to_string()));
    headers
}

/// What the HCM and the HTTP/1.1 codec do to the response after the last encoder filter (the
/// probe, for an upstream answer, a local reply, a trapped VM's 503): `date` set (in place
/// when the upstream sent one, else appended), `server: envoy` appended, and `content-length`
/// appended when there is none (the codec's `content-length: 0` on the 503); a
/// `proxy-connection` the filters saw from the upstream does not reach the client. The
/// `:status` pseudo-header goes on the status line.
pub(crate) fn hcm_response_headers(headers: &[(String, String)], date: &str) -> (u16, Vec<(String, String)>) {
    let status = first(headers, ":status").and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut out: Vec<(String, String)> =
        headers.iter().filter(|(n, _)| !n.starts_with(':') && n != "proxy-connection").cloned().collect();
    match out.iter_mut().find(|(n, _)| n == "date") {
        Some(d) => d.1 = date.to_string(),
        None => out.push(("date".to_string(), date.to_string())),
    }
    out.push(("server".to_string(), "envoy".to_string()));
    (status, out)
}

/// The codec's `content-length` for a body without one; none on a 204 (the probe: a bodiless
/// local reply got `content-length: 0` with 403 and 503, nothing with 204).
pub(crate) fn with_content_length(
    mut headers: Vec<(String, String)>,
    status: u16,
    body: &[u8],
) -> Vec<(String, String)> {
    if status != 204 && first(&headers, "content-length").is_none() {
        headers.push(("content-length".to_string(), body.len().to_string()));
    }
    headers
}

/// An IMF-fixdate (`Mon, 07 Dec 2026 09:00:31 GMT`), as Envoy's `date` header.
pub(crate) fn http_date(time: std::time::SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

/// Request ids as Envoy generates them: random UUID v4 (`8-4-4-4-12` lower-case hex, version
/// 4, variant 10), here from a seeded generator so runs repeat.
#[derive(Debug, Clone)]
pub(crate) struct RequestIds(u64);

impl RequestIds {
    pub(crate) fn new(seed: u64) -> RequestIds {
        RequestIds(seed)
    }

    /// splitmix64: small, and enough for ids that only need to look like Envoy's.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version 4 UUID, as Envoy generates them, from the next 16 bytes of the sequence.
    pub(crate) fn next_id(&mut self) -> String {
        let bytes = (u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_634_031);
        assert_eq!(http_date(t), "Mon, 07 Dec 2026 09:00:31 GMT");
        assert_eq!(
            http_date(std::time::UNIX_EPOCH + Duration::from_secs(1_704_067_200)),
            "Mon, 01 Jan 2024 00:00:00 GMT"
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let mut ids = RequestIds::new(1);
        let id = ids.next_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'));
        assert!("89ab".contains(&parts[3][..1]));
        assert_ne!(ids.next_id(), id);
    }
}
