//! The host side: state kept per VM, and the `env` imports with Envoy's semantics.
//!
//! Where Envoy's answer is not obvious, the comment says what Envoy 1.40 did when the probe filter
//! (`test-harness/probe-filter`) made the same call (`probe.sh`), or which source it follows.

use crate::abi::{deserialize_pairs, serialize_pairs, status, LogLevel, MetricType};
use crate::group::{GroupState, QueueKey};
use crate::wasi::{read, write, write_u32, write_u64, WasiCtx, WasiView};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{format_err as anyhow, Result};
use wasmtime::{Caller, Linker, TypedFunc};

/// A header map: keys lower-cased as Envoy stores them, values as bytes, order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HeaderMap {
    pub entries: Vec<(String, Vec<u8>)>,
    /// Request header maps treat `host` as `:authority`, as Envoy does.
    pub request: bool,
}

impl HeaderMap {
    pub fn new(request: bool) -> Self {
        HeaderMap { entries: Vec::new(), request }
    }

    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)], request: bool) -> Self {
        let mut m = HeaderMap::new(request);
        for (k, v) in pairs {
            m.add(k.as_ref(), v.as_ref());
        }
        m
    }

    pub fn key(&self, k: &[u8]) -> String {
        let k = String::from_utf8_lossy(k).to_ascii_lowercase();
        if self.request && k == "host" {
            ":authority".to_string()
        } else {
            k
        }
    }

    pub fn get(&self, k: &[u8]) -> Option<&[u8]> {
        let k = self.key(k);
        self.entries.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_slice())
    }

    pub fn add(&mut self, k: &[u8], v: &[u8]) {
        let k = self.key(k);
        self.entries.push((k, v.to_vec()));
    }

    pub fn remove(&mut self, k: &[u8]) {
        let k = self.key(k);
        self.entries.retain(|(n, _)| *n != k);
    }

    /// Envoy's `setCopy`: every entry of the name is removed and the new value appended (the
    /// probe: x-d:1, x-e:2, x-d:3 then replace x-d:4 gave x-e:2, x-d:4).
    pub fn replace(&mut self, k: &[u8], v: &[u8]) {
        self.remove(k);
        self.add(k, v);
    }

    pub fn serialize(&self) -> Vec<u8> {
        let pairs: Vec<(&[u8], &[u8])> =
            self.entries.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
        serialize_pairs(&pairs)
    }

    pub fn to_strings(&self) -> Vec<(String, String)> {
        self.entries.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()
    }
}

/// One direction (request or response) of an HTTP stream.
#[derive(Debug, Default)]
pub(crate) struct Dir {
    pub headers: HeaderMap,
    /// Envoy keeps a pointer to the headers only while its callback has not returned Continue
    /// (and until the module calls continue_stream): outside that, the module gets BadArgument.
    pub headers_live: bool,
    pub headers_seen: bool,
    /// The buffer the body callback sees (buffered data plus the new chunk).
    pub body: Vec<u8>,
    pub body_live: bool,
    /// Body data that went past this filter.
    pub forwarded: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    pub trailers_live: bool,
    /// A headers or trailers callback returned Pause (StopAllIteration): data waits in `queued_*`.
    pub stopped: bool,
    /// The last body callback returned Pause (StopIterationAndBuffer).
    pub buffering: bool,
    /// A headers callback returned Pause with `allow_on_headers_stop_iteration`: the headers
    /// wait, body data and trailers still go to the filter.
    pub held: bool,
    pub queued_body: Option<(Vec<u8>, bool)>,
    pub queued_trailers: Option<HeaderMap>,
    /// End of stream seen by the filter.
    pub complete: bool,
}

/// A local reply sent by the module with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status: u32,
    /// Response code details (Envoy replaces spaces with underscores).
    pub details: String,
    /// Body.
    pub body: Vec<u8>,
    /// The headers the client receives: `:status`, the module's extra headers (names lower-cased),
    /// `content-length` and, unless the module gave one, `content-type: text/plain` when there is
    /// a body (with no body Envoy adds neither; its codec later sends `content-length: 0`), and
    /// whatever this filter's own `on_http_response_headers` changed (Envoy runs the reply
    /// through it).
    pub headers: Vec<(String, String)>,
    /// The gRPC status argument (-1: none).
    pub grpc_status: i32,
}

/// Which phase a stream is in, for availability rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    #[default]
    Open,
    Log,
    Done,
}

#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub req: Dir,
    pub resp: Dir,
    pub local_reply: Option<LocalReply>,
    /// Set while the local reply is being encoded through this filter.
    pub local_reply_pending: bool,
    pub reset: bool,
    pub phase: Phase,
    /// Properties set by the test for this stream (NUL-joined path).
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Properties set by the module (Envoy filter state `wasm.<path>`).
    pub filter_state: HashMap<Vec<u8>, Vec<u8>>,
    /// Envoy's stream info, which the `request.*`/`response.*` properties read: wall clock
    /// (`request.time`) and monotonic time when the stream started, monotonic time when it
    /// completed (`request.duration`, known from the log phase on).
    pub start_realtime_ns: u64,
    pub start_monotonic_ns: u64,
    pub end_monotonic_ns: Option<u64>,
    /// Request body bytes read from the client (Envoy's `bytesReceived`).
    pub bytes_received: u64,
    /// `response.code_details`: `via_upstream` for a response the test gave, the module's
    /// details for its local reply.
    pub code_details: Option<String>,
}

/// The downstream connection every stream arrives on, as Envoy's stream info describes it:
/// what `source.*`, `destination.*`, `connection.*` and `request.protocol` answer. Plaintext
/// (no TLS), one connection per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Downstream {
    /// The client's address, `ip:port` (`[ip]:port` for IPv6), as Envoy prints it.
    pub source: String,
    /// The listener address the client connected to.
    pub destination: String,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    pub protocol: String,
    /// The cluster the route sends requests to and its one endpoint (`xds.cluster_name`,
    /// `upstream.*`); `None`: a route without a cluster (a direct response), as far as the
    /// properties tell.
    pub upstream: Option<UpstreamModel>,
}

/// A routed cluster with one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamModel {
    pub cluster: String,
    pub address: String,
}

/// The local address of the emulated connection to the upstream (Envoy's is an ephemeral
/// port of the host's address).
pub(crate) const UPSTREAM_LOCAL_ADDRESS: &str = "127.0.0.1:50000";

impl Default for Downstream {
    fn default() -> Self {
        Downstream {
            source: "127.0.0.1:40000".to_string(),
            destination: "127.0.0.1:10000".to_string(),
            protocol: "HTTP/1.1".to_string(),
            upstream: None,
        }
    }
}

/// A log line from the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Level.
    pub level: LogLevel,
    /// Message.
    pub message: String,
    /// Context the call was made in (0 for the VM context).
    pub context_id: u32,
}

/// An outgoing `proxy_http_call` waiting for the test's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Token the module got back.
    pub token: u32,
    /// The `upstream` argument: the Envoy cluster name.
    pub cluster: String,
    /// Request headers (names lower-cased, as Envoy builds the request map).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// Timeout; `None` when the module passed 0 (Envoy then sets no timeout).
    pub timeout: Option<Duration>,
    /// Emulated monotonic time at which it times out.
    pub(crate) deadline: Option<u64>,
    /// Context that made the call (Envoy attaches callouts to the root context).
    pub context_id: u32,
}

/// A metric the module defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// Name as the module defined it.
    pub name: String,
    /// Type.
    pub kind: MetricType,
    /// Counter or gauge value (u64, gauges wrap below zero as in Envoy); histogram: last value.
    pub value: u64,
    /// Every value recorded into a histogram.
    pub recorded: Vec<u64>,
}

#[derive(Debug)]
pub(crate) enum AfterCall {
    Continue(u32, u32),
    LocalReply(u32, LocalReply),
    Close(u32),
    /// `proxy_done` accepted: delete the root context once the call returns (Envoy defers it).
    DeleteRoot,
}

/// Everything the host keeps for one VM (one `Emulator`).
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub malloc: Option<TypedFunc<u32, u32>>,
    pub root_id: u32,
    pub current: u32,
    pub effective: Option<u32>,
    pub streams: HashMap<u32, StreamState>,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub in_configure: bool,
    pub call_response: Option<(HeaderMap, Vec<u8>, Option<HeaderMap>)>,
    pub logs: Vec<LogEntry>,
    pub log_level: LogLevel,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub downstream: Downstream,
    pub metric_ids: HashMap<u32, String>,
    pub metrics: BTreeMap<String, Metric>,
    pub next_metric_id: [u32; 3],
    pub http_calls: BTreeMap<u32, HttpCall>,
    pub next_http_token: u32,
    pub clusters: Option<HashSet<String>>,
    /// Envoy's `allow_on_headers_stop_iteration`.
    pub hold_headers: bool,
    /// Whether foreign functions are registered (see `EmulatorBuilder::foreign_functions`).
    pub foreign_functions: bool,
    pub tick_period_ms: u32,
    pub next_tick: Option<u64>,
    pub realtime_ns: u64,
    pub monotonic_ns: u64,
    pub group: Arc<Mutex<GroupState>>,
    pub member: usize,
    pub vm_id: String,
    pub after: Vec<AfterCall>,
    pub stop_iteration: bool,
    pub done_called: bool,
    /// The root context's `proxy_on_done` returned false: `proxy_done` is awaited.
    pub root_pending_done: bool,
    /// The root context was deleted (plugin removed): no more ticks or callout answers.
    pub root_deleted: bool,
    /// Host calls made by the module (imports, plus the host's allocation callbacks into it),
    /// by name: since build or the last reset, and by the context they were made in.
    pub host_calls: BTreeMap<String, u64>,
    pub host_calls_by_context: HashMap<u32, BTreeMap<String, u64>>,
}

impl WasiView for HostState {
    fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }

    fn count_host_call(&mut self, name: &str) {
        HostState::count_host_call(self, name);
    }
}

impl HostState {
    fn ctx(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    pub fn log(&mut self, level: LogLevel, message: String) {
        let context_id = self.ctx();
        if level >= self.log_level {
            self.logs.push(LogEntry { level, message, context_id });
        }
    }

    /// Counts one host call (an import, or an allocation callback into the module).
    pub fn count_host_call(&mut self, name: &str) {
        let ctx = self.ctx();
        *self.host_calls.entry(name.to_string()).or_default() += 1;
        *self.host_calls_by_context.entry(ctx).or_default().entry(name.to_string()).or_default() += 1;
    }

    /// Keeps WASI's clock on the emulated clock.
    pub fn sync_clock(&mut self) {
        self.wasi.clock =
            crate::wasi::Clock::Fixed { realtime: self.realtime_ns, monotonic: self.monotonic_ns };
    }
}

type C<'a> = Caller<'a, HostState>;

fn group<'a>(c: &'a C<'_>) -> Result<std::sync::MutexGuard<'a, GroupState>> {
    c.data().group.lock().map_err(|_| anyhow!("the emulator group's shared state was poisoned by a panic"))
}

/// Name under which [`HostState::host_calls`] counts the host's allocation callbacks into the
/// module (`proxy_on_memory_allocate` or `malloc`), made for every value a host call returns.
pub const ALLOCATE_CALLBACK: &str = "proxy_on_memory_allocate";

/// Allocates in the module with its `malloc`/`proxy_on_memory_allocate` and copies `data`
/// there, writing the pointer and size, as proxy-wasm-cpp-host's `copyToPointerSize` does.
fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> Result<u32> {
    let mut ptr = 0u32;
    if !data.is_empty() {
        let malloc = c
            .data()
            .malloc
            .clone()
            .ok_or_else(|| anyhow!("the module exports neither malloc nor proxy_on_memory_allocate"))?;
        // In Envoy this is a second crossing: the host calls back into the VM to allocate.
        c.data_mut().count_host_call(ALLOCATE_CALLBACK);
        ptr = malloc.call(&mut *c, data.len() as u32)?;
        if ptr == 0 || !write(c, ptr, data) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
    }
    if !write_u32(c, ptr_ptr, ptr) || !write_u32(c, size_ptr, data.len() as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

macro_rules! mem {
    ($c:expr, $ptr:expr, $len:expr) => {
        match read($c, $ptr, $len) {
            Some(v) => v,
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        }
    };
}

/// Which header map a map type names, and whether it is mutable in the current callback.
enum MapRef {
    Stream(u32, u8),
    CallHeaders,
    CallTrailers,
}

fn map_ref(st: &HostState, t: u32) -> Option<MapRef> {
    let ctx = st.ctx();
    match t {
        0..=3 if ctx != st.root_id => Some(MapRef::Stream(ctx, t as u8)),
        6 => Some(MapRef::CallHeaders),
        7 => Some(MapRef::CallTrailers),
        _ => None,
    }
}

/// The map for reading; `None` if Envoy has no map there. In the log phase Envoy reads the
/// access-log copies: request headers, response headers and trailers (no request trailers).
fn const_map(st: &HostState, t: u32) -> Option<&HeaderMap> {
    match map_ref(st, t)? {
        MapRef::Stream(ctx, t) => {
            let s = st.streams.get(&ctx)?;
            let log = s.phase == Phase::Log;
            match t {
                0 if s.req.headers_live || (log && s.req.headers_seen) => Some(&s.req.headers),
                1 if s.req.trailers_live && !log => s.req.trailers.as_ref(),
                2 if s.resp.headers_live || (log && s.resp.headers_seen) => Some(&s.resp.headers),
                3 if s.resp.trailers_live || log => s.resp.trailers.as_ref(),
                _ => None,
            }
        }
        MapRef::CallHeaders => st.call_response.as_ref().map(|r| &r.0),
        MapRef::CallTrailers => st.call_response.as_ref().and_then(|r| r.2.as_ref()),
    }
}

/// The map for writing; `None` (BadArgument) where Envoy has no mutable map.
fn mut_map(st: &mut HostState, t: u32) -> Option<&mut HeaderMap> {
    match map_ref(st, t)? {
        MapRef::Stream(ctx, t) => {
            let s = st.streams.get_mut(&ctx)?;
            if s.phase != Phase::Open {
                return None;
            }
            match t {
                0 if s.req.headers_live => Some(&mut s.req.headers),
                1 if s.req.trailers_live => s.req.trailers.as_mut(),
                // Envoy adds request trailers when asked for them in the last body callback.
                1 if s.req.body_live && s.req.complete => {
                    Some(s.req.trailers.get_or_insert_with(|| HeaderMap::new(true)))
                }
                2 if s.resp.headers_live => Some(&mut s.resp.headers),
                3 if s.resp.trailers_live => s.resp.trailers.as_mut(),
                3 if s.resp.body_live && s.resp.complete => {
                    Some(s.resp.trailers.get_or_insert_with(|| HeaderMap::new(false)))
                }
                _ => None,
            }
        }
        // Call responses are read-only in Envoy (const maps).
        _ => None,
    }
}

enum Buf {
    Body(u32, bool),
    Const(Vec<u8>),
    Empty,
}

fn buffer(st: &HostState, t: u32) -> Option<Buf> {
    let ctx = st.ctx();
    Some(match t {
        0 | 1 => {
            let req = t == 0;
            match st.streams.get(&ctx) {
                Some(s) if (if req { s.req.body_live } else { s.resp.body_live }) => Buf::Body(ctx, req),
                // Envoy: `buffer_.set(nullptr)`: an empty buffer (status Ok, size 0), not
                // NotFound; the probe saw 0,0 for the response body in on_response_headers.
                _ => Buf::Empty,
            }
        }
        2 | 3 | 5 | 8 => Buf::Empty,
        4 => Buf::Const(st.call_response.as_ref()?.1.clone()),
        6 => Buf::Const(st.vm_config.clone()),
        7 if st.in_configure => Buf::Const(st.plugin_config.clone()),
        7 => return None,
        _ => return None,
    })
}

fn property_path(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Envoy's header map `byteSize()`: the bytes of every name and value.
fn byte_size(m: &HeaderMap) -> u64 {
    m.entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// Envoy's `headerNameIsValid` for a `request.headers.<name>` key: an HTTP token, or a
/// pseudo-header name (a leading `:`). Anything else is NotFound.
fn header_name_is_valid(name: &str) -> bool {
    let name = name.strip_prefix(':').unwrap_or(name);
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header map as a CEL map, the way Envoy serializes `request.headers`/`response.headers`:
/// proxy-wasm pairs, one per distinct name, its values joined with `,` (Envoy's
/// `getAllOfHeaderAsString`). Envoy lists the names in hash order, which changes from request
/// to request; the emulator keeps their first appearance.
fn header_map_value(m: Option<&HeaderMap>) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(m) = m {
        for (k, _) in &m.entries {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let values: Vec<Vec<u8>> = names.iter().map(|n| joined(m, n).unwrap_or_default()).collect();
    let pairs: Vec<(&[u8], &[u8])> =
        names.iter().zip(&values).map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
    serialize_pairs(&pairs)
}

/// Every value of a header, joined with `,` (Envoy's `getAllOfHeaderAsString`).
fn joined(m: Option<&HeaderMap>, name: &str) -> Option<Vec<u8>> {
    let m = m?;
    let key = m.key(name.as_bytes());
    let mut out: Option<Vec<u8>> = None;
    for (_, v) in m.entries.iter().filter(|(k, _)| *k == key) {
        match &mut out {
            Some(o) => {
                o.push(b',');
                o.extend_from_slice(v);
            }
            None => out = Some(v.clone()),
        }
    }
    out
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(code: u64) -> i64 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy's `Grpc::Common::getGrpcStatus` on one map: the `grpc-status` value, -1 (InvalidCode)
/// when it is not a number or above 16.
fn grpc_status_of(m: Option<&HeaderMap>) -> Option<i64> {
    let v = m?.get(b"grpc-status")?;
    Some(match std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) if n <= 16 => n as i64,
        _ => -1,
    })
}

/// The port of an `ip:port` / `[ip]:port` address.
fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':')?.1.parse::<u16>().ok().map(i64::from)
}

fn int(v: i64) -> std::result::Result<Vec<u8>, u32> {
    Ok(v.to_le_bytes().to_vec())
}

/// The value of a property, following Envoy 1.40's attribute names and answers (each checked
/// with the probe filter, see the README). Test-set values win. `Err` is the status: NotFound
/// for an unknown attribute or one not available now, SerializationFailure for a whole
/// attribute group (`request`, `connection`, ...), which Envoy cannot serialize either.
fn get_property(st: &HostState, raw: &[u8]) -> std::result::Result<Vec<u8>, u32> {
    const NF: u32 = status::NOT_FOUND;
    let ctx = st.ctx();
    let stream = st.streams.get(&ctx);
    if let Some(s) = stream {
        if let Some(v) = s.properties.get(raw) {
            return Ok(v.clone());
        }
    }
    if let Some(v) = st.properties.get(raw) {
        return Ok(v.clone());
    }
    let path = property_path(raw);
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let ["plugin_vm_id"] = parts.as_slice() {
        return Ok(st.vm_id.clone().into_bytes());
    }
    let s = stream.ok_or(NF)?;
    // Envoy: set_property stores filter state `wasm.<path>`, and get_property finds it only by
    // a single-segment path (the probe: set a.b then get a.b -> NotFound).
    if parts.len() == 1 {
        if let Some(v) = s.filter_state.get(raw) {
            return Ok(v.clone());
        }
    }
    let log = s.phase == Phase::Log;
    // Envoy reads request.* from the request headers it still points to (NotFound after the
    // headers callback returned Continue; the access-log copy in on_log), and response.* from
    // the response headers/trailers in the same way.
    let req = if s.req.headers_live || (log && s.req.headers_seen) { Some(&s.req.headers) } else { None };
    let resp = if s.resp.headers_live || (log && s.resp.headers_seen) { Some(&s.resp.headers) } else { None };
    let resp_trailers = if s.resp.trailers_live || log { s.resp.trailers.as_ref() } else { None };
    let hdr =
        |m: Option<&HeaderMap>, k: &str| m.and_then(|m| m.get(k.as_bytes())).map(<[u8]>::to_vec).ok_or(NF);
    let path_value = || req.and_then(|m| m.get(b":path")).ok_or(NF);
    let response_code = || -> Option<u64> {
        if !s.resp.headers_seen {
            return None;
        }
        std::str::from_utf8(s.resp.headers.get(b":status")?).ok()?.parse().ok()
    };
    let down = &st.downstream;
    let upstream = down.upstream.as_ref();
    let answered = s.code_details.as_deref() == Some("via_upstream");
    match parts.as_slice() {
        ["request" | "response" | "connection" | "source" | "destination" | "upstream" | "xds"
        | "filter_state"] => Err(status::SERIALIZATION_FAILURE),
        ["request", "path"] => hdr(req, ":path"),
        ["request", "url_path"] => {
            Ok(path_value()?.split(|b| *b == b'?').next().unwrap_or_default().to_vec())
        }
        // The query without its fragment; "" without a `?` (the probe: `c=1&d=2` for
        // `/a/b?c=1&d=2`).
        ["request", "query"] => {
            let p = path_value()?;
            Ok(match p.iter().position(|b| *b == b'?') {
                Some(i) => {
                    let q = p.get(i + 1..).unwrap_or_default();
                    q.split(|b| *b == b'#').next().unwrap_or_default().to_vec()
                }
                None => Vec::new(),
            })
        }
        ["request", "host"] => hdr(req, ":authority"),
        ["request", "method"] => hdr(req, ":method"),
        // Envoy adds `:scheme` to every request before the filters run (`http` on a plaintext
        // listener); a test that gives none gets that default.
        ["request", "scheme"] => {
            let m = req.ok_or(NF)?;
            Ok(m.get(b":scheme").map(<[u8]>::to_vec).unwrap_or_else(|| b"http".to_vec()))
        }
        ["request", "id"] => hdr(req, "x-request-id"),
        ["request", "referer"] => hdr(req, "referer"),
        ["request", "useragent"] => hdr(req, "user-agent"),
        ["request", "headers"] => Ok(header_map_value(req)),
        ["request", "headers", name] if header_name_is_valid(name) => joined(req, name).ok_or(NF),
        ["request", "time"] => int(s.start_realtime_ns as i64),
        ["request", "protocol"] => Ok(down.protocol.clone().into_bytes()),
        ["request", "duration"] => {
            let end = s.end_monotonic_ns.ok_or(NF)?;
            int(end.saturating_sub(s.start_monotonic_ns) as i64)
        }
        // content-length while the headers are there (NotFound if it is not a number),
        // otherwise the body bytes read so far.
        ["request", "size"] => match req.and_then(|m| m.get(b"content-length")) {
            Some(v) => int(std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).ok_or(NF)?),
            None => int(s.bytes_received as i64),
        },
        ["request", "total_size"] => int((s.bytes_received + req.map(byte_size).unwrap_or(0)) as i64),
        ["response", "code"] => int(response_code().ok_or(NF)? as i64),
        ["response", "code_details"] => s.code_details.clone().map(String::into_bytes).ok_or(NF),
        ["response", "flags"] => int(0),
        // Trailers first, then headers, then the HTTP status mapped to a gRPC one (Envoy's
        // getGrpcStatus): a plain 200 answers 2 (Unknown).
        ["response", "grpc_status"] => match grpc_status_of(resp_trailers).or_else(|| grpc_status_of(resp)) {
            Some(g) => int(g),
            None => int(http_to_grpc_status(response_code().ok_or(NF)?)),
        },
        ["response", "headers"] => Ok(header_map_value(resp)),
        ["response", "headers", name] if header_name_is_valid(name) => joined(resp, name).ok_or(NF),
        ["response", "trailers"] => Ok(header_map_value(resp_trailers)),
        ["response", "trailers", name] if header_name_is_valid(name) => joined(resp_trailers, name).ok_or(NF),
        ["response", "size"] => int(s.resp.forwarded.len() as i64),
        ["response", "total_size"] => int((s.resp.forwarded.len() as u64
            + resp.map(byte_size).unwrap_or(0)
            + resp_trailers.map(byte_size).unwrap_or(0)) as i64),
        // One plaintext connection per stream: its id is the stream's context id (Envoy's is a
        // process-wide counter), no TLS, no SNI.
        ["connection", "id"] | ["connection_id"] => Ok(u64::from(ctx).to_le_bytes().to_vec()),
        ["connection", "mtls"] => Ok(vec![0]),
        ["connection", "requested_server_name"] => Ok(Vec::new()),
        ["source", "address"] => Ok(down.source.clone().into_bytes()),
        ["source", "port"] => int(port_of(&down.source).ok_or(NF)?),
        ["destination", "address"] => Ok(down.destination.clone().into_bytes()),
        ["destination", "port"] => int(port_of(&down.destination).ok_or(NF)?),
        // One attempt once the test gave a response (from upstream), none for a local reply or
        // before. With a routed cluster (`EmulatorBuilder::upstream`), Envoy knows the cluster
        // from the request headers on (the route is resolved before the filters run) and the
        // host once it answered; the backend latency only at the end (the log phase).
        ["upstream", "request_attempt_count"] => int(i64::from(answered)),
        ["xds", "cluster_name"] => Ok(upstream.ok_or(NF)?.cluster.clone().into_bytes()),
        ["xds", "cluster_metadata"] if upstream.is_some() => Ok(Vec::new()),
        ["upstream", "num_endpoints"] if upstream.is_some() => int(1),
        ["upstream", "address"] if answered => Ok(upstream.ok_or(NF)?.address.clone().into_bytes()),
        ["upstream", "port"] if answered => int(port_of(&upstream.ok_or(NF)?.address).ok_or(NF)?),
        ["upstream", "local_address"] if answered && upstream.is_some() => {
            Ok(UPSTREAM_LOCAL_ADDRESS.as_bytes().to_vec())
        }
        ["upstream", "transport_failure_reason" | "locality"] if answered && upstream.is_some() => {
            Ok(Vec::new())
        }
        // Envoy 1.40 cannot serialize the host's (absent) metadata.
        ["xds", "upstream_host_metadata"] if answered && upstream.is_some() => {
            Err(status::SERIALIZATION_FAILURE)
        }
        ["response", "backend_latency"] if answered && upstream.is_some() => {
            let end = s.end_monotonic_ns.ok_or(NF)?;
            int(end.saturating_sub(s.start_monotonic_ns) as i64)
        }
        // What Envoy answers for a listener, filter chain, route and node without names or
        // metadata (empty protobuf messages serialize to nothing).
        ["xds", "route_name"
        | "filter_chain_name"
        | "listener_metadata"
        | "route_metadata"
        | "virtual_host_metadata"]
        | ["xds", "node", "id" | "cluster"]
        | ["metadata"] => Ok(Vec::new()),
        ["xds", "listener_direction"] => int(0),
        _ => Err(NF),
    }
}

fn define_metric(st: &mut HostState, kind: u32, name: String) -> Option<u32> {
    let (k, idx) = match kind {
        0 => (MetricType::Counter, 0),
        1 => (MetricType::Gauge, 1),
        2 => (MetricType::Histogram, 2),
        _ => return None,
    };
    // Envoy: ids step by 4 from the type (counter 4, 8, ...; gauge 5; histogram 6); defining
    // the same name again gives a new id for the same stat (the probe: c1 -> 4, then 8).
    let slot = st.next_metric_id.get_mut(idx)?;
    *slot += 4;
    let id = *slot;
    st.metric_ids.insert(id, name.clone());
    st.metrics.entry(name.clone()).or_insert(Metric { name, kind: k, value: 0, recorded: Vec::new() });
    Some(id)
}

fn metric_mut(st: &mut HostState, id: u32) -> Option<&mut Metric> {
    let name = st.metric_ids.get(&id)?;
    st.metrics.get_mut(name)
}

fn unimplemented(name: &str) -> wasmtime::Error {
    anyhow!(
        "host call `{name}` is not implemented by gatewasm-emulator (the test cannot pretend it succeeded)"
    )
}

/// Defines the `env` imports.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    let env = "env";
    linker.func_wrap(env, "proxy_log", |mut c: C<'_>, level: u32, ptr: u32, len: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_log");
        let Some(level) = LogLevel::from_u32(level) else { return Ok(status::BAD_ARGUMENT) };
        let msg = mem!(&mut c, ptr, len);
        c.data_mut().log(level, String::from_utf8_lossy(&msg).into_owned());
        Ok(status::OK)
    })?;
    linker.func_wrap(env, "proxy_get_log_level", |mut c: C<'_>, out: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_get_log_level");
        let l = c.data().log_level.as_u32();
        Ok(if write_u32(&mut c, out, l) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    linker.func_wrap(env, "proxy_get_current_time_nanoseconds", |mut c: C<'_>, out: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_get_current_time_nanoseconds");
        let t = c.data().realtime_ns;
        Ok(if write_u64(&mut c, out, t) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    linker.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_set_tick_period_milliseconds");
            // Envoy (Wasm::setTimerPeriod): a new period restarts the timer from now; 0 stops it.
            // Ticks go to the root context whichever context set the period.
            let st = c.data_mut();
            st.tick_period_ms = period;
            st.next_tick =
                if period > 0 { Some(st.monotonic_ns + u64::from(period) * 1_000_000) } else { None };
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_status",
        |mut c: C<'_>, t: u32, len_ptr: u32, flags_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_buffer_status");
            let len = match buffer(c.data(), t) {
                None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
                Some(Buf::Body(ctx, req)) => c
                    .data()
                    .streams
                    .get(&ctx)
                    .map(|s| if req { s.req.body.len() } else { s.resp.body.len() })
                    .unwrap_or(0),
                Some(Buf::Const(v)) => v.len(),
                Some(Buf::Empty) => 0,
            };
            Ok(if write_u32(&mut c, len_ptr, len as u32) && write_u32(&mut c, flags_ptr, 0) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, max: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_buffer_bytes");
            let data = match buffer(c.data(), t) {
                None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
                Some(Buf::Body(ctx, req)) => c
                    .data()
                    .streams
                    .get(&ctx)
                    .map(|s| if req { s.req.body.clone() } else { s.resp.body.clone() })
                    .unwrap_or_default(),
                Some(Buf::Const(v)) => v,
                Some(Buf::Empty) => Vec::new(),
            };
            // exports.cc: overflow of start+length is BadArgument; reads are clipped to the buffer.
            if start.checked_add(max).is_none() {
                return Ok(status::BAD_ARGUMENT);
            }
            let s = (start as usize).min(data.len());
            let e = (start as usize).saturating_add(max as usize).min(data.len());
            let slice = data.get(s..e).unwrap_or(&[]);
            copy_out(&mut c, slice, ptr_ptr, size_ptr)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, t: u32, start: u32, len: u32, ptr: u32, size: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_set_buffer_bytes");
            let (ctx, req) = match buffer(c.data(), t) {
                None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
                Some(Buf::Body(ctx, req)) => (ctx, req),
                // Immutable or absent buffers: BadArgument (Envoy's Buffer::copyFrom).
                Some(_) => return Ok(status::BAD_ARGUMENT),
            };
            let data = mem!(&mut c, ptr, size);
            let Some(s) = c.data_mut().streams.get_mut(&ctx) else { return Ok(status::BAD_ARGUMENT) };
            let body = if req { &mut s.req.body } else { &mut s.resp.body };
            // Envoy's Buffer::copyFrom: start 0 and length 0 prepends; start 0 and length >= size
            // replaces everything; start >= size appends; anything else (a middle splice) is
            // BadArgument.
            let (start, len) = (start as usize, len as usize);
            if start == 0 {
                if len == 0 {
                    let mut v = data;
                    v.extend_from_slice(body);
                    *body = v;
                } else if len >= body.len() {
                    *body = data;
                } else {
                    return Ok(status::BAD_ARGUMENT);
                }
            } else if start >= body.len() {
                body.extend_from_slice(&data);
            } else {
                return Ok(status::BAD_ARGUMENT);
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, t: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_header_map_pairs");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            // Envoy: a map that is not available reads as empty (status Ok, null pointer, size 0).
            let data = match const_map(c.data(), t) {
                Some(m) if !m.entries.is_empty() => m.serialize(),
                _ => Vec::new(),
            };
            copy_out(&mut c, &data, ptr_ptr, size_ptr)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, t: u32, ptr: u32, size: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_set_header_map_pairs");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let data = mem!(&mut c, ptr, size);
            let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
            m.entries.clear();
            for (k, v) in deserialize_pairs(&data) {
                m.add(&k, &v);
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_header_map_value");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let key = mem!(&mut c, kp, ks);
            let st = c.data();
            let value = match const_map(st, t) {
                Some(m) => m.get(&key).map(<[u8]>::to_vec),
                None => {
                    let log = st.streams.get(&st.ctx()).map(|s| s.phase == Phase::Log).unwrap_or(false);
                    // Envoy: no map here is BadArgument (the probe: response headers during the
                    // request, request headers after their callback returned Continue), except in
                    // the access-log phase, where it is NotFound.
                    return Ok(if log { status::NOT_FOUND } else { status::BAD_ARGUMENT });
                }
            };
            match value {
                Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
                // Envoy, ABI 0.2.x: a missing header is NotFound (the probe: 1).
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_add_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_add_header_map_value");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let key = mem!(&mut c, kp, ks);
            let value = mem!(&mut c, vp, vs);
            let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
            m.add(&key, &value);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_replace_header_map_value");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let key = mem!(&mut c, kp, ks);
            let value = mem!(&mut c, vp, vs);
            let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
            m.replace(&key, &value);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, t: u32, kp: u32, ks: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_remove_header_map_value");
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let key = mem!(&mut c, kp, ks);
            let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
            m.remove(&key);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(env, "proxy_get_header_map_size", |mut c: C<'_>, t: u32, out: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_get_header_map_size");
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        let size: usize = m.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(if write_u32(&mut c, out, size as u32) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    linker.func_wrap(
        env,
        "proxy_get_property",
        |mut c: C<'_>, pp: u32, ps: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_property");
            let path = mem!(&mut c, pp, ps);
            match get_property(c.data(), &path) {
                Ok(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
                // Envoy: an unknown attribute, or one not available in this context, is NotFound.
                Err(st) => Ok(st),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_property",
        |mut c: C<'_>, pp: u32, ps: u32, vp: u32, vs: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_set_property");
            let path = mem!(&mut c, pp, ps);
            let value = mem!(&mut c, vp, vs);
            let st = c.data_mut();
            let ctx = st.ctx();
            // Envoy: no stream info (root context) is NotFound; otherwise stored as filter state.
            match st.streams.get_mut(&ctx) {
                Some(s) => {
                    s.filter_state.insert(path, value);
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(env, "proxy_continue_stream", |mut c: C<'_>, t: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_continue_stream");
        let st = c.data_mut();
        let ctx = st.ctx();
        match t {
            // Envoy defers continueDecoding/Encoding until the VM call returns.
            0 | 1 => {
                if st.streams.contains_key(&ctx) {
                    st.after.push(AfterCall::Continue(ctx, t));
                }
                Ok(status::OK)
            }
            2 => Ok(status::OK),
            3 => Ok(status::UNIMPLEMENTED),
            // The probe: continue_stream(9) -> BadArgument.
            _ => Ok(status::BAD_ARGUMENT),
        }
    })?;
    linker.func_wrap(env, "proxy_close_stream", |mut c: C<'_>, t: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_close_stream");
        let st = c.data_mut();
        let ctx = st.ctx();
        match t {
            0..=3 => {
                if st.streams.contains_key(&ctx) && t <= 1 {
                    st.after.push(AfterCall::Close(ctx));
                }
                Ok(status::OK)
            }
            _ => Ok(status::BAD_ARGUMENT),
        }
    })?;
    linker.func_wrap(
        env,
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: u32,
         dp: u32,
         ds: u32,
         bp: u32,
         bs: u32,
         hp: u32,
         hs: u32,
         grpc: i32|
         -> Result<u32> {
            c.data_mut().count_host_call("proxy_send_local_response");
            let details = mem!(&mut c, dp, ds);
            let body = mem!(&mut c, bp, bs);
            let headers = mem!(&mut c, hp, hs);
            let st = c.data_mut();
            let ctx = st.ctx();
            let extra: Vec<(String, String)> = deserialize_pairs(&headers)
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).to_ascii_lowercase(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            let reply = LocalReply {
                status: code,
                // Envoy: StringUtil::replaceAllEmptySpace on the details.
                details: String::from_utf8_lossy(&details).replace(char::is_whitespace, "_"),
                body,
                headers: extra,
                grpc_status: grpc,
            };
            // exports.cc: the callback's return value is then ignored (stopNextIteration).
            st.stop_iteration = true;
            if st.streams.contains_key(&ctx) {
                st.after.push(AfterCall::LocalReply(ctx, reply));
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_http_call",
        |mut c: C<'_>,
         up: u32,
         us: u32,
         hp: u32,
         hs: u32,
         bp: u32,
         bs: u32,
         tp: u32,
         ts: u32,
         timeout: u32,
         token_ptr: u32|
         -> Result<u32> {
            c.data_mut().count_host_call("proxy_http_call");
            let cluster = mem!(&mut c, up, us);
            let body = mem!(&mut c, bp, bs);
            let headers = mem!(&mut c, hp, hs);
            let trailers = mem!(&mut c, tp, ts);
            // exports.cc writes the token slot first to check the pointer.
            if !write_u32(&mut c, token_ptr, 0) {
                return Ok(status::INVALID_MEMORY_ACCESS);
            }
            let cluster = String::from_utf8_lossy(&cluster).into_owned();
            let st = c.data_mut();
            // Envoy: an unknown cluster, or a request without :path, :method or :authority, is
            // BadArgument (the probe: all three -> 2, token 0).
            if let Some(known) = &st.clusters {
                if !known.contains(&cluster) {
                    return Ok(status::BAD_ARGUMENT);
                }
            }
            let headers = HeaderMap::from_pairs(&deserialize_pairs(&headers), true);
            if headers.get(b":path").is_none()
                || headers.get(b":method").is_none()
                || headers.get(b":authority").is_none()
            {
                return Ok(status::BAD_ARGUMENT);
            }
            let mut headers = headers;
            if !body.is_empty() {
                headers.replace(b"content-length", body.len().to_string().as_bytes());
            }
            // Envoy: token ids step by 4 per VM (the probe: 4, 8, 12).
            st.next_http_token += 4;
            let token = st.next_http_token;
            let timeout = if timeout > 0 { Some(Duration::from_millis(u64::from(timeout))) } else { None };
            let call = HttpCall {
                token,
                cluster,
                headers: headers.to_strings(),
                body,
                trailers: HeaderMap::from_pairs(&deserialize_pairs(&trailers), true).to_strings(),
                timeout,
                deadline: timeout.map(|t| st.monotonic_ns + t.as_nanos() as u64),
                context_id: st.root_id,
            };
            st.http_calls.insert(token, call);
            Ok(if write_u32(&mut c, token_ptr, token) { status::OK } else { status::INVALID_MEMORY_ACCESS })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_define_metric",
        |mut c: C<'_>, kind: u32, np: u32, ns: u32, out: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_define_metric");
            let name = String::from_utf8_lossy(&mem!(&mut c, np, ns)).into_owned();
            // The probe: type 3 -> BadArgument.
            let Some(id) = define_metric(c.data_mut(), kind, name) else { return Ok(status::BAD_ARGUMENT) };
            Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
        },
    )?;
    linker.func_wrap(env, "proxy_increment_metric", |mut c: C<'_>, id: u32, offset: i64| -> Result<u32> {
        c.data_mut().count_host_call("proxy_increment_metric");
        let kind = id & 3;
        let Some(m) = metric_mut(c.data_mut(), id) else {
            // The probe: an unknown counter id -> NotFound; histogram ids never increment.
            return Ok(if kind == 2 || kind == 3 { status::BAD_ARGUMENT } else { status::NOT_FOUND });
        };
        match m.kind {
            // The probe: counter += 0 or += -1 -> BadArgument.
            MetricType::Counter if offset > 0 => m.value = m.value.wrapping_add(offset as u64),
            MetricType::Counter => return Ok(status::BAD_ARGUMENT),
            // The probe: gauge -3 from 0 reads 18446744073709551613 (u64 wrap).
            MetricType::Gauge => m.value = m.value.wrapping_add(offset as u64),
            // The probe: increment on a histogram -> BadArgument.
            MetricType::Histogram => return Ok(status::BAD_ARGUMENT),
        }
        Ok(status::OK)
    })?;
    linker.func_wrap(env, "proxy_record_metric", |mut c: C<'_>, id: u32, value: u64| -> Result<u32> {
        c.data_mut().count_host_call("proxy_record_metric");
        let Some(m) = metric_mut(c.data_mut(), id) else { return Ok(status::NOT_FOUND) };
        match m.kind {
            // The probe: record 5 on a counter adds 5.
            MetricType::Counter => m.value = m.value.wrapping_add(value),
            MetricType::Gauge => m.value = value,
            MetricType::Histogram => {
                m.value = value;
                m.recorded.push(value);
            }
        }
        Ok(status::OK)
    })?;
    linker.func_wrap(env, "proxy_get_metric", |mut c: C<'_>, id: u32, out: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_get_metric");
        let kind = id & 3;
        if kind >= 2 {
            // The probe: get on a histogram -> BadArgument.
            return Ok(status::BAD_ARGUMENT);
        }
        let Some(v) = metric_mut(c.data_mut(), id).map(|m| m.value) else { return Ok(status::NOT_FOUND) };
        Ok(if write_u64(&mut c, out, v) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    linker.func_wrap(
        env,
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: u32, ks: u32, ptr_ptr: u32, size_ptr: u32, cas_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_shared_data");
            let key = mem!(&mut c, kp, ks);
            let vm = c.data().vm_id.clone();
            let found = group(&c)?.shared_data.get(&(vm, key)).cloned();
            // The probe: a missing key -> NotFound.
            let Some((value, cas)) = found else { return Ok(status::NOT_FOUND) };
            let st = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            if st != status::OK {
                return Ok(st);
            }
            Ok(if write_u32(&mut c, cas_ptr, cas) { status::OK } else { status::INVALID_MEMORY_ACCESS })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_set_shared_data");
            let key = mem!(&mut c, kp, ks);
            let value = mem!(&mut c, vp, vs);
            let vm = c.data().vm_id.clone();
            Ok(group(&c)?.set_shared_data(vm, key, value, cas))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: u32, ns: u32, out: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_register_shared_queue");
            let name = mem!(&mut c, np, ns);
            let (vm, member, root) = (c.data().vm_id.clone(), c.data().member, c.data().root_id);
            let id = group(&c)?.register_queue(QueueKey { vm_id: vm, name }, member, root);
            Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: u32, vs: u32, np: u32, ns: u32, out: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_resolve_shared_queue");
            let vm = mem!(&mut c, vp, vs);
            let name = mem!(&mut c, np, ns);
            // An empty vm_id means this VM's (the probe: "" and "probe_vm" resolve the same queue).
            let vm_id = if vm.is_empty() {
                c.data().vm_id.clone()
            } else {
                String::from_utf8_lossy(&vm).into_owned()
            };
            let id = group(&c)?.queue_ids.get(&QueueKey { vm_id, name }).copied();
            let Some(id) = id else { return Ok(status::NOT_FOUND) };
            Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: u32, vp: u32, vs: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_enqueue_shared_queue");
            let value = mem!(&mut c, vp, vs);
            Ok(group(&c)?.enqueue(id, value))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_dequeue_shared_queue");
            let r = group(&c)?.dequeue(id);
            match r {
                Ok(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
                Err(st) => Ok(st),
            }
        },
    )?;
    linker.func_wrap(env, "proxy_set_effective_context", |mut c: C<'_>, id: u32| -> Result<u32> {
        c.data_mut().count_host_call("proxy_set_effective_context");
        let st = c.data_mut();
        if id == st.root_id || st.streams.contains_key(&id) {
            st.effective = Some(id);
            Ok(status::OK)
        } else {
            Ok(status::BAD_ARGUMENT)
        }
    })?;
    linker.func_wrap(env, "proxy_done", |mut c: C<'_>| -> Result<u32> {
        c.data_mut().count_host_call("proxy_done");
        // Envoy (WasmBase::done): Ok only while the plugin's root context waits in pending_done
        // (its on_done returned false); the root context is deleted after the call returns.
        let st = c.data_mut();
        if !st.root_pending_done {
            return Ok(status::NOT_FOUND);
        }
        st.root_pending_done = false;
        st.done_called = true;
        st.after.push(AfterCall::DeleteRoot);
        Ok(status::OK)
    })?;
    linker.func_wrap(
        env,
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: u32, ns: u32, ap: u32, asz: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_call_foreign_function");
            let name = mem!(&mut c, np, ns);
            let args = mem!(&mut c, ap, asz);
            if !c.data().foreign_functions {
                return Ok(status::NOT_FOUND);
            }
            match crate::foreign::call(&String::from_utf8_lossy(&name), &args) {
                crate::foreign::Answer::Ok(result) => copy_out(&mut c, &result, ptr_ptr, size_ptr),
                crate::foreign::Answer::Status(code) => Ok(code),
                crate::foreign::Answer::Unimplemented(what) => Err(unimplemented(&what)),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: u32, ptr_ptr: u32, size_ptr: u32| -> Result<u32> {
            c.data_mut().count_host_call("proxy_get_status");
            if !write_u32(&mut c, code_ptr, 0) {
                return Ok(status::INVALID_MEMORY_ACCESS);
            }
            copy_out(&mut c, b"", ptr_ptr, size_ptr)
        },
    )?;
    for name in
        ["proxy_grpc_call", "proxy_grpc_stream", "proxy_grpc_send", "proxy_grpc_cancel", "proxy_grpc_close"]
    {
        // Left undefined on purpose: `Emulator` links every import it does not define to a
        // stub that traps naming the call (see `unimplemented`).
        let _ = name;
    }
    Ok(())
}

/// A trap for an import the emulator does not implement.
pub(crate) fn unimplemented_import(module: &str, name: &str) -> wasmtime::Error {
    unimplemented(&format!("{module}.{name}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(pairs, true)
    }

    #[test]
    fn header_maps_serialize_one_pair_per_name_values_joined() {
        let m = map(&[(":path", "/"), ("x-a", "1"), ("X-A", "2"), ("x-b", "")]);
        let want: &[(&[u8], &[u8])] = &[(b":path", b"/"), (b"x-a", b"1,2"), (b"x-b", b"")];
        assert_eq!(header_map_value(Some(&m)), serialize_pairs(want));
        // No map (Envoy no longer holds it): an empty map, 4 zero bytes (the probe: 0x00000000).
        assert_eq!(header_map_value(None), vec![0, 0, 0, 0]);
        assert_eq!(joined(Some(&m), "x-a"), Some(b"1,2".to_vec()));
        assert_eq!(joined(Some(&m), "host"), None);
        assert_eq!(joined(Some(&map(&[(":authority", "h")])), "host"), Some(b"h".to_vec()));
        assert_eq!(byte_size(&m), 5 + 1 + 3 + 1 + 3 + 1 + 3);
    }

    #[test]
    fn header_names_valid_as_envoy_checks_them() {
        for ok in ["x-a", "X-Mixed", ":authority", "a.b_c~!"] {
            assert!(header_name_is_valid(ok), "{ok}");
        }
        for bad in ["", ":", "bad name", "a:b", "x\u{e9}", "a\"b"] {
            assert!(!header_name_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn grpc_status_from_trailers_headers_or_http_status() {
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "5")]))), Some(5));
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "17")]))), Some(-1));
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "x")]))), Some(-1));
        assert_eq!(grpc_status_of(Some(&map(&[]))), None);
        assert_eq!(grpc_status_of(None), None);
        let mapped: Vec<i64> =
            [200, 400, 401, 403, 404, 429, 500, 502, 503, 504].map(http_to_grpc_status).to_vec();
        assert_eq!(mapped, [2, 13, 16, 7, 12, 14, 2, 14, 14, 14]);
    }

    #[test]
    fn ports_of_addresses() {
        assert_eq!(port_of("127.0.0.1:40000"), Some(40000));
        assert_eq!(port_of("[::1]:8080"), Some(8080));
        assert_eq!(port_of("/tmp/socket"), None);
        assert_eq!(port_of("h:99999"), None);
    }
}
