//! What the host keeps for one VM: streams, header maps, callouts, metrics, logs and the
//! clock, as the imports read and change them.

use crate::abi::{serialize_pairs, LogLevel, MetricType};
use crate::group::GroupState;
use crate::wasi::{WasiCtx, WasiView};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::TypedFunc;

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
    /// The route's upstream answered this stream's request, whatever the client finally got
    /// (a gateway sets it for every filter; a lone emulator knows it from `via_upstream`).
    pub upstream_answered: bool,
    /// `response.flags`: Envoy's response flags (a gateway sets them; 0 otherwise).
    pub response_flags: u64,
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

/// An outgoing `proxy_grpc_call` waiting for the test's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    /// Token the module got back.
    pub token: u32,
    /// The cluster: the `upstream` argument, or the cluster of the `GrpcService` it held.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata as the module gave it (Envoy base64-encodes `-bin` values on the wire).
    pub metadata: Vec<(String, Vec<u8>)>,
    /// The serialized request message (Envoy frames it).
    pub message: Vec<u8>,
    /// Timeout; `None` when the module passed 0 (Envoy then sets no timer).
    pub timeout: Option<Duration>,
    /// Emulated monotonic time at which it times out.
    pub(crate) deadline: Option<u64>,
    /// Context the answer goes to (Envoy makes gRPC calls on the root context).
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
    /// A gRPC close Envoy defers to after the VM call (token, code, message): the close of a
    /// call its client failed while the module was making it.
    GrpcClose(u32, u32, Vec<u8>),
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
    pub grpc_calls: BTreeMap<u32, GrpcCall>,
    pub next_grpc_token: u32,
    /// The message of the gRPC answer being delivered (`proxy_on_grpc_receive`).
    pub grpc_receive: Option<Vec<u8>>,
    /// What `proxy_get_status` answers: the last close's code, and its message while that
    /// close is being delivered.
    pub grpc_status: (u32, Option<Vec<u8>>),
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
    pub(crate) fn ctx(&self) -> u32 {
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
