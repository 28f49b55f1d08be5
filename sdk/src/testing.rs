//! A fake host, to unit-test a filter natively by driving its real callbacks.
//!
//! [`Harness`] configures a [`Plugin`] on a [`FakeHost`] through the same root and stream
//! contexts the SDK registers in a Wasm module, so a test runs exactly the code Envoy runs,
//! with no per-filter test seam:
//!
//! ```
//! # use std::rc::Rc;
//! # use gatewasm::{config, ConfigErrors, Flow, HttpFilter, Plugin, Root, Stream};
//! # #[derive(serde::Deserialize, Default)] struct Greeting {}
//! # impl config::Validate for Greeting {}
//! # impl Plugin for Greeting {
//! #     const NAME: &'static str = "greeting";
//! #     type Filter = Greeter;
//! #     fn configure(raw: &[u8], _root: &Root) -> Result<Self, ConfigErrors> { config::parse(raw) }
//! #     fn new_filter(self: &Rc<Self>) -> Greeter { Greeter }
//! # }
//! # struct Greeter;
//! # impl HttpFilter for Greeter {
//! #     fn on_request_headers(&mut self, stream: &mut Stream, _eos: bool) -> Flow {
//! #         let _ = stream.request_headers().set("x-hello", "world");
//! #         Flow::Continue
//! #     }
//! # }
//! use gatewasm::testing::{Action, Harness};
//!
//! # fn main() -> Result<(), String> {
//! let gateway = Harness::<Greeting>::new("{}")?;
//! let mut stream = gateway.stream();
//! assert_eq!(stream.request_headers(&[(":path", "/")], true), Action::Continue);
//! assert_eq!(stream.request_header("x-hello").as_deref(), Some("world"));
//! # Ok(())
//! # }
//! ```
//!
//! The fake answers as Envoy does where a filter can tell (names are case-insensitive and kept
//! lower-cased, a repeated header reads as its first value, a replace keeps the first position,
//! absent properties and headers are `None`, unknown metric ids and shared-data versions are
//! refused), and counts every host call, so a test can pin what a request costs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::traits::{Context as _, HttpContext as _, RootContext as _};
pub use proxy_wasm::types::Action;
use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

use crate::context::{RootContext, StreamContext};
use crate::grpc::GrpcCall;
use crate::host::{serialize_pairs, Half, Host};
use crate::{Plugin, Root};

/// A local reply a filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentReply {
    /// HTTP status.
    pub status: u32,
    /// Response code details (`<plugin>_<code>`).
    pub details: String,
    /// Body.
    pub body: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

impl SentReply {
    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A callout a filter or plugin sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCallout {
    /// The token the host gave it.
    pub token: u32,
    /// Target cluster.
    pub cluster: String,
    /// Headers, pseudo-headers first, as sent.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Timeout.
    pub timeout: Duration,
}

impl SentCallout {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An answer to a callout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Headers, `:status` included; none for a reset.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// An answer with `status`, `headers` and `body`.
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        let mut all = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        all.extend(headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())));
        Self { headers: all, body: body.into() }
    }

    /// The connection failed or was reset: no headers at all.
    pub fn reset() -> Self {
        Self::default()
    }

    /// Envoy's own answer to a callout whose timeout passed.
    pub fn timeout() -> Self {
        Self::new(504, &[("content-type", "text/plain")], crate::callout::ENVOY_TIMEOUT_BODY)
    }
}

/// A gRPC call a filter or plugin sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentGrpcCall {
    /// The token the host gave it.
    pub token: u32,
    /// Target cluster.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata, as sent.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// The serialized request message.
    pub message: Vec<u8>,
    /// Timeout.
    pub timeout: Duration,
}

impl SentGrpcCall {
    /// The first value of metadata `name`.
    pub fn metadata(&self, name: &str) -> Option<&[u8]> {
        self.metadata.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

/// What the fake host delivers for a gRPC call: what Envoy's Wasm host delivers, so the SDK's
/// reading of it runs as in Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAnswer {
    /// The response message (`proxy_on_grpc_receive`).
    Message(Vec<u8>),
    /// The call closed with a status other than `OK` and its message
    /// (`proxy_on_grpc_close`, `proxy_get_status`).
    Close {
        /// The status code.
        code: u32,
        /// The message (`grpc-message`, as the service sent it).
        message: Vec<u8>,
    },
}

impl GrpcAnswer {
    /// The service answered `message`.
    pub fn message(message: impl Into<Vec<u8>>) -> Self {
        Self::Message(message.into())
    }

    /// The service answered the error status `code` with `message` (its `grpc-message`).
    pub fn status(code: u32, message: &str) -> Self {
        Self::Close { code, message: message.as_bytes().to_vec() }
    }

    /// Envoy's own answer when the call's timeout passed.
    pub fn timeout() -> Self {
        Self::status(14, crate::grpc::ENVOY_TIMEOUT_MESSAGE)
    }

    /// Envoy's own answer when the connection to the service was refused.
    pub fn unavailable() -> Self {
        Self::status(
            14,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        )
    }

    /// Envoy's answer to a response it cannot decode (a broken frame).
    pub fn malformed() -> Self {
        Self::status(13, "")
    }

    /// Puts the answer where the host's calls read it, and returns the status and size the
    /// answer callback gets.
    fn deliver(&self, maps: &mut Maps, status: &RefCell<Option<(u32, Bytes)>>) -> (u32, usize) {
        match self {
            Self::Message(message) => {
                maps.buffers.insert(BufferType::GrpcReceiveBuffer as u32, message.clone());
                (0, message.len())
            }
            Self::Close { code, message } => {
                *status.borrow_mut() = Some((*code, message.clone()));
                (*code, 0)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct FakeMetric {
    kind: MetricType,
    name: String,
    value: i64,
    records: Vec<u64>,
}

/// A header map's pairs, names lower-cased, values as bytes.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Header maps and buffers of one context (a stream, or the root for its callouts).
#[derive(Debug, Default)]
struct Maps {
    maps: HashMap<u32, Pairs>,
    buffers: HashMap<u32, Vec<u8>>,
}

impl Maps {
    fn map(&self, map: MapType) -> Result<&Pairs, Status> {
        self.maps.get(&(map as u32)).ok_or(Status::NotFound)
    }

    fn map_mut(&mut self, map: MapType) -> Result<&mut Pairs, Status> {
        self.maps.get_mut(&(map as u32)).ok_or(Status::NotFound)
    }

    fn set_map(&mut self, map: MapType, pairs: Vec<(Vec<u8>, Vec<u8>)>) {
        let lower = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        self.maps.insert(map as u32, lower);
    }

    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        let name = name.as_bytes();
        Ok(self.map(map)?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()))
    }

    fn pairs(&self, map: MapType) -> Result<Bytes, Status> {
        Ok(serialize_pairs(self.map(map)?))
    }

    fn add(&mut self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.map_mut(map)?.push((name.as_bytes().to_ascii_lowercase(), value.to_vec()));
        Ok(())
    }

    fn set(&mut self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        let name = name.as_bytes().to_ascii_lowercase();
        let pairs = self.map_mut(map)?;
        // Envoy keeps the first entry's place and drops the others.
        let mut seen = false;
        pairs.retain_mut(|(k, v)| {
            if *k != name {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.to_vec();
            true
        });
        if !seen {
            pairs.push((name, value.to_vec()));
        }
        Ok(())
    }

    fn remove(&mut self, map: MapType, name: &str) -> Result<(), Status> {
        let name = name.as_bytes().to_ascii_lowercase();
        self.map_mut(map)?.retain(|(k, _)| *k != name);
        Ok(())
    }

    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Bytes {
        let Some(buffer) = self.buffers.get(&(kind as u32)) else { return Vec::new() };
        let start = start.min(buffer.len());
        let end = start.saturating_add(max).min(buffer.len());
        buffer.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

type Foreign = Box<dyn Fn(&[u8]) -> Result<Bytes, Status>>;

/// The plugin-wide side of a fake host: clock, properties, metrics, shared data, callouts,
/// ticks, logs and foreign functions. Streams get their own header maps ([`FakeStream`]).
pub struct FakeHost {
    now: Cell<SystemTime>,
    calls: Cell<u64>,
    root: RefCell<Maps>,
    properties: RefCell<HashMap<String, Bytes>>,
    foreign: RefCell<HashMap<String, Foreign>>,
    metrics: RefCell<Vec<FakeMetric>>,
    shared: RefCell<HashMap<String, (Bytes, u32)>>,
    lose_cas: Cell<u32>,
    callouts: RefCell<Vec<SentCallout>>,
    grpc_calls: RefCell<Vec<SentGrpcCall>>,
    /// The status of the gRPC close being delivered to the plugin.
    grpc_status: RefCell<Option<(u32, Bytes)>>,
    next_token: Cell<u32>,
    tick: Cell<Option<Duration>>,
    done: Cell<u32>,
    logs: RefCell<Vec<(LogLevel, String)>>,
    /// Clusters callouts may go to; `None` for any.
    clusters: RefCell<Option<Vec<String>>>,
    /// Whether plugins on this host tick (`Root::ticks`); the queues they hand work over in.
    ticks: Cell<bool>,
    queues: RefCell<HashMap<String, std::collections::VecDeque<Bytes>>>,
}

/// 2026-01-01T00:00:00Z: the fake clock's start, fixed so tests are repeatable.
pub const START: Duration = Duration::from_secs(1_767_225_600);

impl FakeHost {
    /// A host at [`START`] with nothing configured.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            now: Cell::new(UNIX_EPOCH + START),
            calls: Cell::new(0),
            root: RefCell::new(Maps::default()),
            properties: RefCell::new(HashMap::new()),
            foreign: RefCell::new(HashMap::new()),
            metrics: RefCell::new(Vec::new()),
            shared: RefCell::new(HashMap::new()),
            lose_cas: Cell::new(0),
            callouts: RefCell::new(Vec::new()),
            grpc_calls: RefCell::new(Vec::new()),
            grpc_status: RefCell::new(None),
            next_token: Cell::new(1),
            tick: Cell::new(None),
            done: Cell::new(0),
            logs: RefCell::new(Vec::new()),
            clusters: RefCell::new(None),
            ticks: Cell::new(true),
            queues: RefCell::new(HashMap::new()),
        })
    }

    /// Plugins configured from now on this host see `Root::ticks` as `ticks` (false: a native
    /// module's worker instance), with the process's queues (`Root::queue_push`), which are
    /// not proxy-wasm host calls and are not counted.
    pub fn set_ticks(&self, ticks: bool) {
        self.ticks.set(ticks);
    }

    fn count(&self) {
        self.calls.set(self.calls.get() + 1);
    }

    /// Host calls made so far, by the plugin and every stream.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// The host clock.
    pub fn now(&self) -> SystemTime {
        self.now.get()
    }

    /// Sets the host clock.
    pub fn set_now(&self, now: SystemTime) {
        self.now.set(now);
    }

    /// Moves the host clock on.
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }

    /// Sets a property every context reads (a stream's own properties come first).
    pub fn set_property(&self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.properties.borrow_mut().insert(path.join("\0"), value.into());
    }

    /// Registers a foreign function.
    pub fn set_foreign_function(
        &self,
        name: &str,
        function: impl Fn(&[u8]) -> Result<Bytes, Status> + 'static,
    ) {
        self.foreign.borrow_mut().insert(name.to_string(), Box::new(function));
    }

    /// Only these clusters accept callouts (others are refused as Envoy refuses an unknown
    /// cluster: `BadArgument` for an HTTP callout, `ParseFailure` for a gRPC call).
    pub fn set_clusters(&self, clusters: &[&str]) {
        *self.clusters.borrow_mut() = Some(clusters.iter().map(|c| (*c).to_string()).collect());
    }

    fn metric(&self, name: &str, kind: MetricType) -> Option<FakeMetric> {
        self.metrics.borrow().iter().find(|m| m.name == name && m.kind == kind).cloned()
    }

    /// A counter's value; `None` when no counter of that name was defined.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.metric(name, MetricType::Counter).map(|m| m.value.unsigned_abs())
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.metric(name, MetricType::Gauge).map(|m| m.value)
    }

    /// Every value recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.metric(name, MetricType::Histogram).map(|m| m.records)
    }

    /// Names of every metric defined, in order of definition.
    pub fn metric_names(&self) -> Vec<String> {
        self.metrics.borrow().iter().map(|m| m.name.clone()).collect()
    }

    /// A shared-data value.
    pub fn shared(&self, key: &str) -> Option<Bytes> {
        self.shared.borrow().get(key).map(|(v, _)| v.clone())
    }

    /// The next `n` conditional shared-data writes fail with `CasMismatch`, as when another VM
    /// wrote first (the entry's version moves on).
    pub fn lose_cas_races(&self, n: u32) {
        self.lose_cas.set(n);
    }

    /// Every callout sent so far, by the plugin and every stream.
    pub fn callouts(&self) -> Vec<SentCallout> {
        self.callouts.borrow().clone()
    }

    /// Every gRPC call sent so far, by the plugin and every stream.
    pub fn grpc_calls(&self) -> Vec<SentGrpcCall> {
        self.grpc_calls.borrow().clone()
    }

    /// The tick period last asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        self.tick.get()
    }

    /// How many times the plugin said it was done.
    pub fn done_calls(&self) -> u32 {
        self.done.get()
    }

    /// What was written to the host's log through [`Host::log`].
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.borrow().clone()
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        let known = self.clusters.borrow().as_ref().is_none_or(|c| c.iter().any(|k| k == cluster));
        let has = |name: &str| headers.iter().any(|(k, v)| *k == name && !v.is_empty());
        if !known || !has(":method") || !has(":path") || !has(":authority") {
            return Err(Status::BadArgument);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.callouts.borrow_mut().push(SentCallout {
            token,
            cluster: cluster.to_string(),
            headers: headers.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
            body: body.map(<[u8]>::to_vec).unwrap_or_default(),
            timeout,
        });
        Ok(token)
    }
}

impl FakeHost {
    fn dispatch_grpc(&self, call: &GrpcCall<'_>) -> Result<u32, Status> {
        if !self.clusters.borrow().as_ref().is_none_or(|c| c.iter().any(|k| *k == call.cluster)) {
            return Err(Status::ParseFailure);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.grpc_calls.borrow_mut().push(SentGrpcCall {
            token,
            cluster: call.cluster.to_string(),
            service: call.service.to_string(),
            method: call.method.to_string(),
            metadata: call.metadata.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
            message: call.message.clone(),
            timeout: call.timeout,
        });
        Ok(token)
    }
}

impl Host for FakeHost {
    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        self.count();
        self.root.borrow().header(map, name)
    }
    fn header_pairs(&self, map: MapType) -> Result<Bytes, Status> {
        self.count();
        self.root.borrow().pairs(map)
    }
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.count();
        self.root.borrow_mut().add(map, name, value)
    }
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.count();
        self.root.borrow_mut().set(map, name, value)
    }
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.count();
        self.root.borrow_mut().remove(map, name)
    }
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
        self.count();
        Ok(self.root.borrow().buffer(kind, start, max))
    }
    fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        self.count();
        Ok(self.properties.borrow().get(&path.join("\0")).cloned())
    }
    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
        self.count();
        match self.foreign.borrow().get(name) {
            Some(function) => function(arguments),
            None => Err(Status::NotFound),
        }
    }
    fn send_local_response(&self, _: u32, _: &str, _: &[u8], _: &[(&str, &str)]) -> Result<(), Status> {
        // The root context has no stream to answer.
        self.count();
        Err(Status::BadArgument)
    }
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        self.count();
        self.dispatch(cluster, headers, body, timeout)
    }
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, Status> {
        self.count();
        self.dispatch_grpc(call)
    }
    fn grpc_status(&self) -> Result<(u32, Bytes), Status> {
        self.count();
        Ok(self.grpc_status.borrow().clone().unwrap_or_default())
    }
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        self.count();
        let mut metrics = self.metrics.borrow_mut();
        if let Some(at) = metrics.iter().position(|m| m.name == name && m.kind == kind) {
            return u32::try_from(at).map_err(|_| Status::InternalFailure);
        }
        metrics.push(FakeMetric { kind, name: name.to_string(), value: 0, records: Vec::new() });
        u32::try_from(metrics.len() - 1).map_err(|_| Status::InternalFailure)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        self.count();
        let mut metrics = self.metrics.borrow_mut();
        let metric = metrics.get_mut(id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter if offset < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                metric.value = metric.value.saturating_add(offset);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        }
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        self.count();
        let mut metrics = self.metrics.borrow_mut();
        let metric = metrics.get_mut(id as usize).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Histogram => metric.records.push(value),
            _ => metric.value = i64::try_from(value).unwrap_or(i64::MAX),
        }
        Ok(())
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        self.count();
        Ok(match self.shared.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.count();
        let mut shared = self.shared.borrow_mut();
        let current = shared.get(key).map(|(_, c)| *c);
        if let Some(cas) = cas.filter(|c| *c != 0) {
            if self.lose_cas.get() > 0 {
                self.lose_cas.set(self.lose_cas.get() - 1);
                if let Some(entry) = shared.get_mut(key) {
                    entry.1 += 1;
                }
                return Err(Status::CasMismatch);
            }
            if current != Some(cas) {
                return Err(Status::CasMismatch);
            }
        }
        shared.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        Ok(())
    }
    fn ticks(&self) -> bool {
        self.ticks.get()
    }
    fn queue_push(&self, name: &str, item: &[u8], capacity: usize) -> Result<bool, Status> {
        if self.ticks.get() {
            return Err(Status::NotFound);
        }
        let mut queues = self.queues.borrow_mut();
        let queue = queues.entry(name.to_string()).or_default();
        if queue.len() >= capacity {
            return Ok(false);
        }
        queue.push_back(item.to_vec());
        Ok(true)
    }
    fn queue_drain(&self, name: &str) -> Result<Vec<Bytes>, Status> {
        Ok(self.queues.borrow_mut().get_mut(name).map(|q| q.drain(..).collect()).unwrap_or_default())
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        self.count();
        self.tick.set((!period.is_zero()).then_some(period));
        Ok(())
    }
    fn current_time(&self) -> Result<SystemTime, Status> {
        self.count();
        Ok(self.now.get())
    }
    fn done(&self) -> Result<(), Status> {
        self.count();
        self.done.set(self.done.get() + 1);
        Ok(())
    }
    fn log(&self, level: LogLevel, message: &str) -> Result<(), Status> {
        self.count();
        self.logs.borrow_mut().push((level, message.to_string()));
        Ok(())
    }
    fn resume(&self, _half: Half) -> Result<(), Status> {
        self.count();
        Err(Status::BadArgument)
    }
    fn reset(&self) -> Result<(), Status> {
        self.count();
        Err(Status::BadArgument)
    }
}

/// One stream's side of the fake host: its header maps, bodies and own properties, and what
/// the filter did to it; everything else goes to the plugin's [`FakeHost`].
struct StreamHost {
    plugin: Rc<FakeHost>,
    calls: Cell<u64>,
    maps: RefCell<Maps>,
    properties: RefCell<HashMap<String, Bytes>>,
    reply: RefCell<Option<SentReply>>,
    resumed: RefCell<Vec<Half>>,
    reset: Cell<bool>,
    tokens: RefCell<Vec<u32>>,
    grpc_tokens: RefCell<Vec<u32>>,
    /// The status of the gRPC close being delivered to the stream.
    grpc_status: RefCell<Option<(u32, Bytes)>>,
}

impl StreamHost {
    fn count(&self) {
        self.calls.set(self.calls.get() + 1);
        self.plugin.count();
    }
}

impl Host for StreamHost {
    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        self.count();
        self.maps.borrow().header(map, name)
    }
    fn header_pairs(&self, map: MapType) -> Result<Bytes, Status> {
        self.count();
        self.maps.borrow().pairs(map)
    }
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.count();
        self.maps.borrow_mut().add(map, name, value)
    }
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.count();
        self.maps.borrow_mut().set(map, name, value)
    }
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.count();
        self.maps.borrow_mut().remove(map, name)
    }
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
        self.count();
        Ok(self.maps.borrow().buffer(kind, start, max))
    }
    fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        if let Some(value) = self.properties.borrow().get(&path.join("\0")) {
            self.count();
            return Ok(Some(value.clone()));
        }
        self.calls.set(self.calls.get() + 1);
        self.plugin.property(path)
    }
    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.foreign_function(name, arguments)
    }
    fn send_local_response(
        &self,
        status: u32,
        details: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), Status> {
        self.count();
        let mut reply = self.reply.borrow_mut();
        if reply.is_some() {
            return Err(Status::BadArgument);
        }
        *reply = Some(SentReply {
            status,
            details: details.to_string(),
            body: body.to_vec(),
            headers: headers.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        });
        Ok(())
    }
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        self.count();
        let token = self.plugin.dispatch(cluster, headers, body, timeout)?;
        self.tokens.borrow_mut().push(token);
        Ok(token)
    }
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> Result<u32, Status> {
        self.count();
        let token = self.plugin.dispatch_grpc(call)?;
        self.grpc_tokens.borrow_mut().push(token);
        Ok(token)
    }
    fn grpc_status(&self) -> Result<(u32, Bytes), Status> {
        self.count();
        Ok(self.grpc_status.borrow().clone().unwrap_or_default())
    }
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.increment_metric(id, offset)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.record_metric(id, value)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.set_shared_data(key, value, cas)
    }
    fn set_tick_period(&self, _period: Duration) -> Result<(), Status> {
        // Envoy sets ticks on root contexts only.
        self.count();
        Err(Status::BadArgument)
    }
    fn current_time(&self) -> Result<SystemTime, Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.current_time()
    }
    fn done(&self) -> Result<(), Status> {
        self.count();
        Err(Status::NotFound)
    }
    fn log(&self, level: LogLevel, message: &str) -> Result<(), Status> {
        self.calls.set(self.calls.get() + 1);
        self.plugin.log(level, message)
    }
    fn resume(&self, half: Half) -> Result<(), Status> {
        self.count();
        self.resumed.borrow_mut().push(half);
        Ok(())
    }
    fn reset(&self) -> Result<(), Status> {
        self.count();
        self.reset.set(true);
        Ok(())
    }
}

/// A [`Plugin`] configured on a [`FakeHost`], through the SDK's own root context.
pub struct Harness<P: Plugin> {
    host: Rc<FakeHost>,
    root: RootContext<P>,
    plugin: Rc<P>,
    handle: Root,
}

impl<P: Plugin> Harness<P> {
    /// Configures the plugin with `config` on a new [`FakeHost`]; `Err` with the plugin's
    /// configuration errors (as Envoy would log them) when it refuses the configuration.
    pub fn new(config: &str) -> Result<Self, String> {
        Self::with_host(FakeHost::new(), config)
    }

    /// Configures the plugin with `config` on `host` (set up first: clock, properties,
    /// clusters).
    pub fn with_host(host: Rc<FakeHost>, config: &str) -> Result<Self, String> {
        host.root
            .borrow_mut()
            .buffers
            .insert(BufferType::PluginConfiguration as u32, config.as_bytes().to_vec());
        let shared: Rc<dyn Host> = host.clone();
        let mut root = RootContext::<P>::with_host(shared);
        // What `on_configure` does, with the message it would log returned instead.
        root.configure()?;
        let (plugin, handle) = root
            .configured()
            .map(|(plugin, handle)| (Rc::clone(plugin), handle.clone()))
            .ok_or_else(|| format!("{}: not configured", P::NAME))?;
        Ok(Self { host, root, plugin, handle })
    }

    /// The fake host.
    pub fn host(&self) -> &Rc<FakeHost> {
        &self.host
    }

    /// The configured plugin.
    pub fn plugin(&self) -> &Rc<P> {
        &self.plugin
    }

    /// The plugin's root handle.
    pub fn root(&self) -> &Root {
        &self.handle
    }

    /// One host tick (the clock is not moved: see [`FakeHost::advance`]).
    pub fn tick(&mut self) {
        self.root.on_tick();
    }

    /// Answers a callout the plugin sent from its root context.
    pub fn answer(&mut self, token: u32, answer: &Answer) {
        let headers = answer.headers.clone();
        let count = headers.len();
        {
            let mut maps = self.host.root.borrow_mut();
            maps.set_map(MapType::HttpCallResponseHeaders, headers);
            maps.buffers.insert(BufferType::HttpCallResponseBody as u32, answer.body.clone());
        }
        self.root.on_http_call_response(token, count, answer.body.len(), 0);
    }

    /// Answers a gRPC call the plugin sent from its root context.
    pub fn answer_grpc(&mut self, token: u32, answer: &GrpcAnswer) {
        let (status, size) = answer.deliver(&mut self.host.root.borrow_mut(), &self.host.grpc_status);
        self.root.on_grpc_call_response(token, status, size);
        self.host.grpc_status.borrow_mut().take();
    }

    /// The host asks the plugin to finish (`proxy_on_done`); true when it may go at once.
    pub fn done(&mut self) -> bool {
        self.root.on_done()
    }

    /// A new stream.
    pub fn stream(&self) -> FakeStream<P> {
        let host = Rc::new(StreamHost {
            plugin: Rc::clone(&self.host),
            calls: Cell::new(0),
            maps: RefCell::new(Maps::default()),
            properties: RefCell::new(HashMap::new()),
            reply: RefCell::new(None),
            resumed: RefCell::new(Vec::new()),
            reset: Cell::new(false),
            tokens: RefCell::new(Vec::new()),
            grpc_tokens: RefCell::new(Vec::new()),
            grpc_status: RefCell::new(None),
        });
        let shared: Rc<dyn Host> = host.clone();
        FakeStream {
            context: self.root.stream(shared),
            host,
            request_body: Vec::new(),
            response_body: Vec::new(),
        }
    }
}

/// One request through the plugin: each method delivers one event to the filter's real
/// callbacks, and the accessors show what the filter did.
pub struct FakeStream<P: Plugin> {
    context: StreamContext<P>,
    host: Rc<StreamHost>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

impl<P: Plugin> FakeStream<P> {
    /// Request headers arrive.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.request_headers_bytes(owned(headers), end_of_stream)
    }

    /// Request headers with raw bytes arrive (values that are not UTF-8).
    pub fn request_headers_bytes(&mut self, headers: Vec<(Vec<u8>, Vec<u8>)>, end_of_stream: bool) -> Action {
        let count = headers.len();
        self.host.maps.borrow_mut().set_map(MapType::HttpRequestHeaders, headers);
        self.context.on_http_request_headers(count, end_of_stream)
    }

    /// A chunk of request body arrives (added to what is buffered).
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.request_body.extend_from_slice(chunk);
        let size = self.request_body.len();
        self.host
            .maps
            .borrow_mut()
            .buffers
            .insert(BufferType::HttpRequestBody as u32, self.request_body.clone());
        self.context.on_http_request_body(size, end_of_stream)
    }

    /// Request trailers arrive.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        self.host.maps.borrow_mut().set_map(MapType::HttpRequestTrailers, owned(trailers));
        self.context.on_http_request_trailers(trailers.len())
    }

    /// Response headers arrive.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.host.maps.borrow_mut().set_map(MapType::HttpResponseHeaders, owned(headers));
        self.context.on_http_response_headers(headers.len(), end_of_stream)
    }

    /// A chunk of response body arrives.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.response_body.extend_from_slice(chunk);
        let size = self.response_body.len();
        self.host
            .maps
            .borrow_mut()
            .buffers
            .insert(BufferType::HttpResponseBody as u32, self.response_body.clone());
        self.context.on_http_response_body(size, end_of_stream)
    }

    /// Answers the stream's last callout.
    pub fn answer(&mut self, answer: &Answer) {
        let Some(token) = self.host.tokens.borrow().last().copied() else { return };
        {
            let mut maps = self.host.maps.borrow_mut();
            maps.set_map(MapType::HttpCallResponseHeaders, answer.headers.clone());
            maps.buffers.insert(BufferType::HttpCallResponseBody as u32, answer.body.clone());
        }
        self.context.on_http_call_response(token, answer.headers.len(), answer.body.len(), 0);
    }

    /// Answers the stream's last gRPC call.
    pub fn answer_grpc(&mut self, answer: &GrpcAnswer) {
        let Some(token) = self.host.grpc_tokens.borrow().last().copied() else { return };
        let (status, size) = answer.deliver(&mut self.host.maps.borrow_mut(), &self.host.grpc_status);
        self.context.on_grpc_call_response(token, status, size);
        self.host.grpc_status.borrow_mut().take();
    }

    /// The last gRPC call this stream sent.
    pub fn grpc_call(&self) -> Option<SentGrpcCall> {
        let token = self.host.grpc_tokens.borrow().last().copied()?;
        self.host.plugin.grpc_calls.borrow().iter().find(|c| c.token == token).cloned()
    }

    /// The stream completes (access-log time).
    pub fn log(&mut self) {
        self.context.on_log();
    }

    /// Sets a property of this stream (`["response", "code"]`, ...).
    pub fn set_property(&self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.host.properties.borrow_mut().insert(path.join("\0"), value.into());
    }

    /// The local reply the filter sent, if any.
    pub fn reply(&self) -> Option<SentReply> {
        self.host.reply.borrow().clone()
    }

    /// The last callout this stream sent.
    pub fn callout(&self) -> Option<SentCallout> {
        let token = self.host.tokens.borrow().last().copied()?;
        self.host.plugin.callouts.borrow().iter().find(|c| c.token == token).cloned()
    }

    /// A request header as it is now (as it would go upstream).
    pub fn request_header(&self, name: &str) -> Option<String> {
        let value = self.host.maps.borrow().header(MapType::HttpRequestHeaders, name).ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// A request header's raw bytes as it is now.
    pub fn request_header_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.host.maps.borrow().header(MapType::HttpRequestHeaders, name).ok()?
    }

    /// Every value of request header `name`, as it is now.
    pub fn request_header_all(&self, name: &str) -> Vec<String> {
        let maps = self.host.maps.borrow();
        let Ok(pairs) = maps.map(MapType::HttpRequestHeaders) else { return Vec::new() };
        pairs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Every request header as it is now.
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        self.pairs(MapType::HttpRequestHeaders)
    }

    /// A response header as it is now (as it would go to the client).
    pub fn response_header(&self, name: &str) -> Option<String> {
        let value = self.host.maps.borrow().header(MapType::HttpResponseHeaders, name).ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// Every response header as it is now.
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        self.pairs(MapType::HttpResponseHeaders)
    }

    fn pairs(&self, map: MapType) -> Vec<(String, String)> {
        let maps = self.host.maps.borrow();
        let Ok(pairs) = maps.map(map) else { return Vec::new() };
        pairs
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Which halves the SDK resumed after a callout, in order.
    pub fn resumed(&self) -> Vec<Half> {
        self.host.resumed.borrow().clone()
    }

    /// Whether the stream was reset.
    pub fn was_reset(&self) -> bool {
        self.host.reset.get()
    }

    /// Host calls this stream made so far.
    pub fn calls(&self) -> u64 {
        self.host.calls.get()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::metrics::{Counter, Family, LocalCounter};
    use crate::{
        config, Callout, CalloutId, CalloutResult, ConfigErrors, Flow, GrpcError, GrpcResult, GrpcStatus,
        HttpFilter, LocalReply, Stream,
    };

    #[derive(serde::Deserialize)]
    struct Probe {
        cluster: String,
        #[serde(default)]
        tick_ms: Option<u64>,
        #[serde(skip)]
        seen: Option<LocalCounter>,
        #[serde(skip)]
        by_method: Option<Family<Counter>>,
        #[serde(skip)]
        answers: Cell<u32>,
        #[serde(skip)]
        grpc_results: std::cell::RefCell<Vec<(CalloutId, GrpcResult)>>,
    }

    impl config::Validate for Probe {
        fn validate(&self, errors: &mut ConfigErrors) {
            if self.cluster.is_empty() {
                errors.add("cluster", &self.cluster, "must not be empty");
            }
        }
    }

    impl Plugin for Probe {
        const NAME: &'static str = "probe";
        type Filter = ProbeFilter;
        fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors> {
            let mut probe: Probe = config::parse(raw)?;
            probe.seen = Some(root.metrics().local_counter("probe_seen_total"));
            probe.by_method = Some(root.metrics().family("probe_requests_total", &["method"], 1));
            Ok(probe)
        }
        fn new_filter(self: &Rc<Self>) -> ProbeFilter {
            ProbeFilter(Rc::clone(self))
        }
        fn tick_period(&self) -> Option<Duration> {
            self.tick_ms.map(Duration::from_millis)
        }
        fn on_tick(self: &Rc<Self>, root: &Root) {
            let _ = root.dispatch(&Callout::get(&self.cluster, "bg.local", "/bg"));
            let _ = root.dispatch_grpc(&GrpcCall::new(&self.cluster, "bg.Svc", "Get", b"bg".to_vec()));
        }
        fn on_grpc_result(self: &Rc<Self>, _root: &Root, id: CalloutId, result: GrpcResult) {
            self.grpc_results.borrow_mut().push((id, result));
        }
        fn on_callout(self: &Rc<Self>, _root: &Root, _id: CalloutId, result: CalloutResult) {
            if result.is_ok_and(|r| r.status == 200) {
                self.answers.set(self.answers.get() + 1);
            }
        }
        fn on_done(self: &Rc<Self>, root: &Root) -> bool {
            let _ = root.done();
            false
        }
    }

    struct ProbeFilter(Rc<Probe>);

    impl HttpFilter for ProbeFilter {
        fn on_request_headers(&mut self, stream: &mut Stream, _end_of_stream: bool) -> Flow {
            if let Some(seen) = &self.0.seen {
                seen.inc();
            }
            let req = stream.request();
            if let Some(family) = &self.0.by_method {
                family.get(&[req.method()]).0.inc();
            }
            match req.path() {
                "/reply" => Flow::Reply(LocalReply::new(403, "nope", "no").header("x-why", "test")),
                "/call" => match stream.dispatch(&Callout::get(&self.0.cluster, "auth.local", "/check")) {
                    Ok(()) => Flow::Pause,
                    Err(e) => Flow::Reply(LocalReply::new(500, "dispatch", format!("{e:?}"))),
                },
                "/grpc" => {
                    let mut call = GrpcCall::new(&self.0.cluster, "test.Auth", "Check", b"req".to_vec());
                    call.metadata.push(("x-id".into(), b"7".as_slice().into()));
                    call.max_response_bytes = 4;
                    match stream.dispatch_grpc(&call) {
                        Ok(()) => Flow::Pause,
                        Err(e) => Flow::Reply(LocalReply::new(500, "dispatch", format!("{e:?}"))),
                    }
                }
                _ => {
                    let host = req.host().unwrap_or_default().into_owned();
                    let headers = stream.request_headers();
                    let _ = headers.set("x-host", &host);
                    // The write is seen by the next read.
                    let again = stream.request();
                    let _ = headers.set("x-seen", again.header("x-host").unwrap_or("<stale>"));
                    Flow::Continue
                }
            }
        }

        fn on_callout(&mut self, stream: &mut Stream, result: CalloutResult) -> Flow {
            match result {
                Ok(r) if r.status == 200 => {
                    let _ = stream.request_headers().set("x-auth", &String::from_utf8_lossy(&r.body));
                    Flow::Continue
                }
                Ok(r) => Flow::Reply(LocalReply::new(403, "denied", format!("{}", r.status))),
                Err(e) => Flow::Reply(LocalReply::new(502, "failed", format!("{e:?}"))),
            }
        }

        fn on_grpc_result(&mut self, stream: &mut Stream, result: GrpcResult) -> Flow {
            match result {
                Ok(message) => {
                    let _ = stream.request_headers().set("x-grpc", &String::from_utf8_lossy(&message));
                    Flow::Continue
                }
                Err(e) => Flow::Reply(LocalReply::new(502, "grpc_failed", format!("{e:?}"))),
            }
        }
    }

    const REQUEST: &[(&str, &str)] =
        &[(":method", "GET"), (":path", "/a?b=1"), (":authority", "API.example.com:80")];

    #[test]
    fn bad_config_names_the_field() {
        let Err(message) = Harness::<Probe>::new(r#"{"cluster": ""}"#) else { panic!("accepted") };
        assert!(message.starts_with("probe: "), "{message}");
        assert!(message.contains("cluster"), "{message}");
        assert!(Harness::<Probe>::new("{").is_err());
    }

    #[test]
    fn one_read_serves_every_lookup_and_writes_are_seen() {
        let gw = Harness::<Probe>::new(r#"{"cluster": "auth"}"#).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(REQUEST, true), Action::Continue);
        assert_eq!(s.request_header("x-host").as_deref(), Some("api.example.com"));
        assert_eq!(s.request_header("x-seen").as_deref(), Some("api.example.com"));
        // One read of the map, two writes, one read again after the first write.
        assert_eq!(s.calls(), 4);
        // The family's metric counts at once; the local counter waits for the SDK's flush.
        assert_eq!(gw.host().counter("probe_requests_total;method=GET"), Some(1));
        assert_eq!(gw.host().counter("probe_seen_total"), Some(0));
    }

    #[test]
    fn local_counters_are_flushed_by_the_sdk_tick() {
        let mut gw = Harness::<Probe>::new(r#"{"cluster": "auth"}"#).unwrap();
        assert_eq!(gw.host().tick_period(), Some(crate::metrics::FLUSH_PERIOD));
        for _ in 0..3 {
            gw.stream().request_headers(REQUEST, true);
        }
        gw.tick();
        assert_eq!(gw.host().counter("probe_seen_total"), Some(3));
        gw.stream().request_headers(REQUEST, true);
        // Shutdown flushes what is left.
        assert!(!gw.done());
        assert_eq!(gw.host().counter("probe_seen_total"), Some(4));
        assert_eq!(gw.host().done_calls(), 1);
    }

    #[test]
    fn family_cap_sends_new_label_sets_to_overflow() {
        let gw = Harness::<Probe>::new(r#"{"cluster": "auth"}"#).unwrap();
        gw.stream().request_headers(REQUEST, true);
        gw.stream().request_headers(&[(":method", "POST"), (":path", "/")], true);
        assert_eq!(gw.host().counter("probe_requests_total;method=GET"), Some(1));
        assert_eq!(gw.host().counter("probe_requests_total;method=overflow"), Some(1));
        assert_eq!(gw.host().counter("probe_requests_total;method=POST"), None);
    }

    #[test]
    fn local_reply_is_sent_with_its_details() {
        let gw = Harness::<Probe>::new(r#"{"cluster": "auth"}"#).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&[(":method", "GET"), (":path", "/reply")], true), Action::Pause);
        let reply = s.reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (403, "probe_nope"));
        assert_eq!(reply.header("x-why"), Some("test"));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(reply.body_text().contains("\"code\":\"nope\""));
    }

    #[test]
    fn stream_callout_resumes_or_replies() {
        let gw = Harness::<Probe>::new(r#"{"cluster": "auth"}"#).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&[(":method", "GET"), (":path", "/call")], true), Action::Pause);
        let call = s.callout().unwrap();
        assert_eq!(call.cluster, "auth");
        assert_eq!(call.header(":path"), Some("/check"));
        s.answer(&Answer::new(200, &[], "alice"));
        assert_eq!(s.resumed(), [Half::Request]);
        assert_eq!(s.request_header("x-auth").as_deref(), Some("alice"));

        let mut s = gw.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/call")], true);
        s.answer(&Answer::timeout());
        assert_eq!(s.reply().unwrap().details, "probe_failed");
        assert!(s.reply().unwrap().body_text().contains("Timeout"));
        assert!(s.resumed().is_empty());

        let mut s = gw.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/call")], true);
        s.answer(&Answer::reset());
        assert!(s.reply().unwrap().body_text().contains("Failed"));
    }

    #[test]
    fn unknown_cluster_is_refused_at_dispatch() {
        let host = FakeHost::new();
        host.set_clusters(&["other"]);
        let gw = Harness::<Probe>::with_host(host, r#"{"cluster": "auth"}"#).unwrap();
        for (path, error) in [("/call", "BadArgument"), ("/grpc", "UnknownCluster")] {
            let mut s = gw.stream();
            s.request_headers(&[(":method", "GET"), (":path", path)], true);
            assert!(s.reply().unwrap().body_text().contains(error), "{path}");
        }
        assert!(gw.host().callouts().is_empty() && gw.host().grpc_calls().is_empty());
    }

    #[test]
    fn root_callouts_run_on_the_plugin_tick() {
        let mut gw = Harness::<Probe>::new(r#"{"cluster": "auth", "tick_ms": 3000}"#).unwrap();
        // The host ticks every second for the flush; the plugin every third tick.
        assert_eq!(gw.host().tick_period(), Some(crate::metrics::FLUSH_PERIOD));
        gw.tick();
        gw.tick();
        assert!(gw.host().callouts().is_empty());
        gw.tick();
        let calls = gw.host().callouts();
        assert_eq!(calls.len(), 1);
        // The HTTP callout and the gRPC call the tick sent.
        assert_eq!(gw.root().in_flight(), 2);
        gw.answer(calls[0].token, &Answer::new(200, &[], "ok"));
        assert_eq!(gw.plugin().answers.get(), 1);
        assert_eq!(gw.root().in_flight(), 1);
        // An answer nobody waits for is ignored.
        gw.answer(99, &Answer::new(200, &[], "ok"));
        assert_eq!(gw.plugin().answers.get(), 1);
    }

    #[test]
    fn stream_grpc_calls_resume_or_reply_with_typed_errors() {
        let gw = Harness::<Probe>::new(r#"{"cluster": "rls"}"#).unwrap();
        let mut s = gw.stream();
        assert_eq!(s.request_headers(&[(":method", "GET"), (":path", "/grpc")], true), Action::Pause);
        let call = s.grpc_call().unwrap();
        assert_eq!(
            (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
            ("rls", "test.Auth", "Check")
        );
        assert_eq!((call.message.as_slice(), call.metadata("x-id")), (&b"req"[..], Some(&b"7"[..])));
        assert_eq!(call.timeout, Duration::from_secs(1));
        s.answer_grpc(&GrpcAnswer::message("ok"));
        assert_eq!(s.resumed(), [Half::Request]);
        assert_eq!(s.request_header("x-grpc").as_deref(), Some("ok"));

        let cases = [
            (GrpcAnswer::message("12345"), format!("{:?}", GrpcError::TooLarge { size: 5 })),
            (GrpcAnswer::timeout(), format!("{:?}", GrpcError::Timeout)),
            (GrpcAnswer::malformed(), format!("{:?}", GrpcError::Malformed)),
            (
                GrpcAnswer::status(7, "denied %25"),
                format!("{:?}", GrpcError::Status(GrpcStatus { code: 7, message: "denied %".into() })),
            ),
        ];
        for (answer, want) in cases {
            let mut s = gw.stream();
            s.request_headers(&[(":method", "GET"), (":path", "/grpc")], true);
            s.answer_grpc(&answer);
            assert!(s.resumed().is_empty());
            let reply = s.reply().unwrap();
            assert_eq!(reply.details, "probe_grpc_failed");
            assert!(reply.body_text().contains(&want.replace('"', "\\\"")), "{} ~ {want}", reply.body_text());
        }
        let mut s = gw.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/grpc")], true);
        s.answer_grpc(&GrpcAnswer::unavailable());
        assert!(s.reply().unwrap().body_text().contains("Unavailable(\\\"upstream connect error"));
    }

    #[test]
    fn root_grpc_calls_answer_the_plugin() {
        let mut gw = Harness::<Probe>::new(r#"{"cluster": "rls", "tick_ms": 1000}"#).unwrap();
        gw.tick();
        let calls = gw.host().grpc_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(gw.root().in_flight(), 2, "an HTTP callout and a gRPC call");
        gw.answer_grpc(calls[0].token, &GrpcAnswer::status(14, "redis down"));
        gw.answer_grpc(calls[0].token, &GrpcAnswer::message("late"));
        let results = gw.plugin().grpc_results.borrow().clone();
        assert_eq!(
            results,
            vec![(CalloutId(calls[0].token), Err(GrpcError::Unavailable("redis down".into())))]
        );
        assert_eq!(gw.root().in_flight(), 1);
    }

    #[test]
    fn fake_maps_answer_as_envoy_does() {
        let mut maps = Maps::default();
        let req = MapType::HttpRequestHeaders;
        assert_eq!(maps.header(req, "a"), Err(Status::NotFound));
        maps.set_map(req, owned(&[("X-A", "1"), ("x-b", "2"), ("x-a", "3")]));
        assert_eq!(maps.header(req, "X-a").unwrap().as_deref(), Some(&b"1"[..]));
        maps.set(req, "x-a", b"4").unwrap();
        assert_eq!(maps.map(req).unwrap().as_slice(), owned(&[("x-a", "4"), ("x-b", "2")]).as_slice());
        maps.add(req, "X-C", b"5").unwrap();
        maps.remove(req, "x-b").unwrap();
        assert_eq!(maps.map(req).unwrap().as_slice(), owned(&[("x-a", "4"), ("x-c", "5")]).as_slice());
        assert_eq!(maps.buffer(BufferType::HttpRequestBody, 0, 10), Vec::<u8>::new());
    }

    #[test]
    fn shared_data_versions() {
        let host = FakeHost::new();
        assert_eq!(host.shared_data("k"), Ok((None, None)));
        host.set_shared_data("k", b"1", None).unwrap();
        let (_, cas) = host.shared_data("k").unwrap();
        assert_eq!(host.set_shared_data("k", b"2", cas.map(|c| c + 1)), Err(Status::CasMismatch));
        host.set_shared_data("k", b"2", cas).unwrap();
        assert_eq!(host.shared("k").as_deref(), Some(&b"2"[..]));
    }
}
