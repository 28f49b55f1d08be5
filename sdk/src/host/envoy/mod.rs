//! The native backend: the same [`crate::Plugin`]s and [`crate::HttpFilter`]s built as an Envoy
//! dynamic module (`envoy.filters.http.dynamic_modules`, ABI `v0.2.0`, Envoy 1.40) instead of a
//! proxy-wasm module.
//!
//! - [`abi`]: the SDK's own bindings to Envoy's callbacks, resolved when Envoy loads the module;
//! - `EnvoyHost`: the [`Host`] over those callbacks. "The current stream" is the stream whose
//!   hook is running on this thread (a thread-local the hooks set); effects that make Envoy call
//!   back into the same stream (a local reply, resuming it) are deferred until the filter's
//!   callback has returned, as a Wasm host defers them until the VM returns;
//! - `hooks`: the `envoy_dynamic_module_on_*` functions Envoy calls, driving the same root and
//!   stream contexts as the proxy-wasm glue, each behind `catch_unwind`.
//!
//! Plugin instances follow proxy-wasm's model (a plugin is `!Sync`): one configured on the main
//! thread when Envoy loads the configuration (it refuses a bad one), and one per worker thread,
//! configured from the same bytes the first time a stream of that configuration reaches the
//! worker. See the SDK README ("Native modules") for ticks, callouts and shared data.

pub mod abi;
mod grpc;
mod hooks;
mod metrics;
mod properties;
mod proxy_wasm_imports;
mod shared_data;
mod ticker;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime};

use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

use self::abi::{header_type, EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer, ModuleHttpHeader};
use super::{serialize_pairs, Half, Host};

#[doc(hidden)]
pub use hooks::register;

/// One Envoy filter configuration, shared by the main thread and every worker.
pub(crate) struct ConfigShared {
    /// Tells this configuration's plugin instances apart in each thread's registry.
    id: u64,
    /// Envoy's `DynamicModuleHttpFilterConfig`, valid until `config_destroy`.
    envoy: abi::ConfigEnvoyPtr,
    /// The plugin's name.
    name: &'static str,
    /// The configuration bytes (`filter_config`), read by each instance's `configure`.
    raw: Vec<u8>,
    /// The thread that loaded the configuration: the only one that may define metrics.
    main: ThreadId,
    metrics: metrics::Table,
    /// Set when Envoy destroyed the configuration: workers drop their instances of it.
    destroyed: AtomicBool,
    /// The `gatewasm_panics_total{plugin}` series.
    panics: OnceLock<u32>,
    /// The main-thread plugin's ticks, when it asked for them.
    ticker: std::sync::Mutex<Option<ticker::Ticker>>,
    /// The counter flush (see `metrics`).
    flusher: std::sync::Mutex<Option<ticker::Ticker>>,
}

// SAFETY: the Envoy pointer is only used with callbacks Envoy allows from any thread (metrics
// on the configuration) or on the main thread (checked by `main`); the rest is `Sync` itself.
unsafe impl Send for ConfigShared {}
// SAFETY: as above.
unsafe impl Sync for ConfigShared {}

impl ConfigShared {
    fn new(envoy: abi::ConfigEnvoyPtr, name: &'static str, raw: Vec<u8>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            envoy,
            name,
            raw,
            main: std::thread::current().id(),
            metrics: metrics::Table::default(),
            destroyed: AtomicBool::new(false),
            panics: OnceLock::new(),
            ticker: std::sync::Mutex::new(None),
            flusher: std::sync::Mutex::new(None),
        }
    }

    fn on_main_thread(&self) -> bool {
        std::thread::current().id() == self.main
    }
}

/// Something the filter asked for that makes Envoy call back into the same stream, done once
/// the filter's callback has returned.
#[derive(Debug)]
enum Effect {
    Reply { status: u32, details: String, body: Vec<u8>, headers: Vec<(String, String)> },
    Resume(Half),
}

/// A callout answer being delivered: copies of Envoy's headers and body, read by the SDK's
/// callout code through [`Host::header_pairs`] and [`Host::buffer`].
#[derive(Debug, Default)]
struct Answer {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

/// A gRPC answer being delivered, read by the SDK's gRPC code through [`Host::buffer`]
/// (`GrpcReceiveBuffer`) and [`Host::grpc_status`].
#[derive(Debug, Default)]
struct GrpcAnswer {
    message: Vec<u8>,
    status: (u32, Vec<u8>),
}

thread_local! {
    static GRPC_ANSWER: RefCell<Option<GrpcAnswer>> = const { RefCell::new(None) };
    /// The stream whose hook runs on this thread (null outside stream hooks).
    static FILTER: Cell<abi::FilterEnvoyPtr> = const { Cell::new(std::ptr::null_mut()) };
    static EFFECTS: RefCell<Vec<Effect>> = const { RefCell::new(Vec::new()) };
    /// Set when the filter changed request headers: the route is picked again, as Envoy's Wasm
    /// filter does after any request-header change.
    static ROUTE_DIRTY: Cell<bool> = const { Cell::new(false) };
    static ANSWER: RefCell<Option<Answer>> = const { RefCell::new(None) };
    /// Set when the running headers callback asked its pause to let the body through.
    static BODY_THROUGH: Cell<bool> = const { Cell::new(false) };
    /// Which of Envoy's body buffers make the body the filter sees now.
    static BODY_VIEW: Cell<BodyView> = const { Cell::new(BodyView::Buffered) };
    /// In the log hook: how long the stream has lived (from its filter's creation), the
    /// module's own `request.duration` (see `properties`).
    static LOG_ELAPSED: Cell<Option<std::time::Duration>> = const { Cell::new(None) };
}

/// Runs `f` with `elapsed` as the logged stream's duration (in the log hook).
pub(crate) fn with_log_elapsed<T>(elapsed: std::time::Duration, f: impl FnOnce() -> T) -> T {
    let previous = LOG_ELAPSED.with(|e| e.replace(Some(elapsed)));
    let result = f();
    LOG_ELAPSED.with(|e| e.set(previous));
    result
}

/// The body a filter sees, as proxy-wasm shows it: in a body callback the data that arrived,
/// after the buffered data when the filter's previous body callback paused (Envoy buffered that
/// for it); elsewhere what Envoy has buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyView {
    Buffered,
    Received,
    BufferedAndReceived,
}

/// The chunks of a stream's body for `half` and `view`, as Envoy's buffers (valid until the hook
/// returns or the body changes).
fn body_chunks(filter: abi::FilterEnvoyPtr, half: Half, view: BodyView) -> Result<Vec<EnvoyBuffer>, Status> {
    let api = api()?;
    let mut chunks = Vec::new();
    for kind in body_kinds(half, view) {
        // SAFETY: a live stream (its hook is running).
        let count = unsafe { (api.http_get_body_chunks_size)(filter, *kind) };
        if count == 0 {
            continue;
        }
        let mut part = vec![EnvoyBuffer::EMPTY; count];
        // SAFETY: `part` has room for the `count` chunks Envoy reported.
        if unsafe { (api.http_get_body_chunks)(filter, *kind, part.as_mut_ptr()) } {
            chunks.extend(part);
        }
    }
    Ok(chunks)
}

/// Envoy's body types that make up `half`'s body seen as `view`.
fn body_kinds(half: Half, view: BodyView) -> &'static [u32] {
    use abi::body_type::*;
    match (half, view) {
        (Half::Request, BodyView::Buffered) => &[BUFFERED_REQUEST],
        (Half::Request, BodyView::Received) => &[RECEIVED_REQUEST],
        (Half::Request, BodyView::BufferedAndReceived) => &[BUFFERED_REQUEST, RECEIVED_REQUEST],
        (Half::Response, BodyView::Buffered) => &[BUFFERED_RESPONSE],
        (Half::Response, BodyView::Received) => &[RECEIVED_RESPONSE],
        (Half::Response, BodyView::BufferedAndReceived) => &[BUFFERED_RESPONSE, RECEIVED_RESPONSE],
    }
}

/// The size of the body `body_chunks` describes: one call per body type, no chunk list (every
/// body hook asks, whether or not the filter reads bodies).
pub(crate) fn body_size(filter: abi::FilterEnvoyPtr, half: Half, view: BodyView) -> usize {
    let Ok(api) = api() else { return 0 };
    body_kinds(half, view)
        .iter()
        // SAFETY: a live stream (its hook is running).
        .map(|kind| unsafe { (api.http_get_body_size)(filter, *kind) })
        .fold(0usize, usize::saturating_add)
}

/// Runs `f` with the body seen as `view` (in a body hook).
pub(crate) fn with_body_view<T>(view: BodyView, f: impl FnOnce() -> T) -> T {
    let previous = BODY_VIEW.with(|v| v.replace(view));
    let result = f();
    BODY_VIEW.with(|v| v.set(previous));
    result
}

/// The host of one plugin instance: Envoy, through the dynamic-module callbacks.
pub(crate) struct EnvoyHost {
    config: std::sync::Arc<ConfigShared>,
}

impl EnvoyHost {
    fn new(config: Arc<ConfigShared>) -> Self {
        Self { config }
    }
}

fn api() -> Result<&'static abi::Callbacks, Status> {
    abi::callbacks().ok_or(Status::InternalFailure)
}

/// The running stream, or `BadArgument` outside a stream hook.
fn filter() -> Result<abi::FilterEnvoyPtr, Status> {
    let filter = FILTER.with(Cell::get);
    if filter.is_null() {
        Err(Status::BadArgument)
    } else {
        Ok(filter)
    }
}

fn header_type_of(map: MapType) -> Option<u32> {
    match map {
        MapType::HttpRequestHeaders => Some(header_type::REQUEST_HEADERS),
        MapType::HttpRequestTrailers => Some(header_type::REQUEST_TRAILERS),
        MapType::HttpResponseHeaders => Some(header_type::RESPONSE_HEADERS),
        MapType::HttpResponseTrailers => Some(header_type::RESPONSE_TRAILERS),
        _ => None,
    }
}

fn ok(done: bool) -> Result<(), Status> {
    if done {
        Ok(())
    } else {
        Err(Status::NotFound)
    }
}

fn defer(effect: Effect) -> Result<(), Status> {
    filter()?;
    EFFECTS.with(|e| e.borrow_mut().push(effect));
    Ok(())
}

impl EnvoyHost {
    /// Who a callout or gRPC call is made for, as the Envoy object that owns it: the stream
    /// whose hook is running, or outside any stream, on the main thread, the configuration
    /// (`true`: the plugin's own, answered to the main thread's plugin, which is the one that
    /// ticks). Envoy takes a configuration's callouts on the main thread only.
    fn caller(&self) -> Result<(*mut std::ffi::c_void, bool), Status> {
        match filter() {
            Ok(filter) => Ok((filter, false)),
            Err(_) if self.config.on_main_thread() => Ok((self.config.envoy, true)),
            Err(status) => Err(status),
        }
    }

    fn set_or_remove(&self, map: MapType, name: &str, value: ModuleBuffer) -> Result<(), Status> {
        let api = api()?;
        let filter = filter()?;
        let kind = header_type_of(map).ok_or(Status::BadArgument)?;
        if map == MapType::HttpRequestHeaders {
            ROUTE_DIRTY.with(|d| d.set(true));
        }
        // SAFETY: a live stream (its hook is running); Envoy copies the buffers.
        ok(unsafe { (api.http_set_header)(filter, kind, ModuleBuffer::of(name.as_bytes()), value) })
    }
}

impl Host for EnvoyHost {
    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        let api = api()?;
        let filter = filter()?;
        let kind = header_type_of(map).ok_or(Status::BadArgument)?;
        let mut value = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: a live stream; the out pointers are valid for the call.
        let found = unsafe {
            (api.http_get_header)(filter, kind, ModuleBuffer::of(name.as_bytes()), &mut value, 0, &mut count)
        };
        if !found || count == 0 {
            return Ok(None);
        }
        // SAFETY: Envoy filled `value` just now; it is copied before any mutation.
        Ok(Some(unsafe { value.as_slice() }.to_vec()))
    }

    fn header_pairs(&self, map: MapType) -> Result<Bytes, Status> {
        if map == MapType::HttpCallResponseHeaders {
            return ANSWER
                .with(|a| a.borrow().as_ref().map(|a| serialize_pairs(&a.headers)).ok_or(Status::NotFound));
        }
        let api = api()?;
        let filter = filter()?;
        let kind = header_type_of(map).ok_or(Status::BadArgument)?;
        // SAFETY: a live stream.
        let size = unsafe { (api.http_get_headers_size)(filter, kind) };
        let mut headers = vec![EnvoyHttpHeader::EMPTY; size];
        // SAFETY: `headers` has room for the `size` entries Envoy reported.
        if size > 0 && !unsafe { (api.http_get_headers)(filter, kind, headers.as_mut_ptr()) } {
            return Err(Status::NotFound);
        }
        // SAFETY: Envoy filled the entries just now; they are copied here.
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|h| unsafe { h.pair() }).collect();
        Ok(serialize_pairs(&pairs))
    }

    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        let api = api()?;
        let filter = filter()?;
        let kind = header_type_of(map).ok_or(Status::BadArgument)?;
        if map == MapType::HttpRequestHeaders {
            ROUTE_DIRTY.with(|d| d.set(true));
        }
        // SAFETY: a live stream; Envoy copies the buffers.
        ok(unsafe {
            (api.http_add_header)(filter, kind, ModuleBuffer::of(name.as_bytes()), ModuleBuffer::of(value))
        })
    }

    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        self.set_or_remove(map, name, ModuleBuffer::of(value))
    }

    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.set_or_remove(map, name, ModuleBuffer::NULL)
    }

    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
        let slice = |bytes: &[u8]| {
            bytes.get(start..).map(|rest| rest.get(..max).unwrap_or(rest).to_vec()).unwrap_or_default()
        };
        match kind {
            BufferType::PluginConfiguration => Ok(slice(&self.config.raw)),
            BufferType::HttpCallResponseBody => {
                ANSWER.with(|a| a.borrow().as_ref().map(|a| slice(&a.body)).ok_or(Status::NotFound))
            }
            BufferType::GrpcReceiveBuffer => {
                GRPC_ANSWER.with(|a| a.borrow().as_ref().map(|a| slice(&a.message)).ok_or(Status::NotFound))
            }
            BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
                let half = if kind == BufferType::HttpRequestBody { Half::Request } else { Half::Response };
                let chunks = body_chunks(filter()?, half, BODY_VIEW.with(Cell::get))?;
                let mut body = Vec::new();
                for chunk in chunks {
                    // SAFETY: Envoy filled the chunks in this hook; they are copied here.
                    body.extend_from_slice(unsafe { chunk.as_slice() });
                    if body.len() >= start.saturating_add(max) {
                        break;
                    }
                }
                Ok(slice(&body))
            }
            _ => Err(Status::InternalFailure),
        }
    }

    fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        properties::read(filter()?, path, LOG_ELAPSED.with(Cell::get))
    }

    fn foreign_function(&self, _name: &str, _arguments: &[u8]) -> Result<Bytes, Status> {
        // Envoy registers foreign functions for Wasm only: a filter falls back to its own code.
        Err(Status::NotFound)
    }

    fn send_local_response(
        &self,
        status: u32,
        details: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), Status> {
        defer(Effect::Reply {
            status,
            details: details.to_string(),
            body: body.to_vec(),
            headers: headers.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        })
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        let api = api()?;
        let mut module_headers: Vec<ModuleHttpHeader> =
            headers.iter().map(|(k, v)| ModuleHttpHeader::of(k.as_bytes(), v.as_bytes())).collect();
        let mut id = 0u64;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let cluster = ModuleBuffer::of(cluster.as_bytes());
        let body = ModuleBuffer::of(body.unwrap_or_default());
        let (headers, count) = (module_headers.as_mut_ptr(), module_headers.len());
        let (owner, plugin) = self.caller()?;
        let callout = if plugin { api.http_filter_config_http_callout } else { api.http_filter_http_callout };
        // SAFETY: `owner` is live (see `caller`); the header array and buffers live for the
        // call (Envoy copies them).
        let result = unsafe { callout(owner, &mut id, cluster, headers, count, body, timeout_ms) };
        match result {
            abi::callout_init::SUCCESS => u32::try_from(id).map_err(|_| Status::InternalFailure),
            abi::callout_init::MISSING_REQUIRED_HEADERS | abi::callout_init::CLUSTER_NOT_FOUND => {
                Err(Status::BadArgument)
            }
            _ => Err(Status::InternalFailure),
        }
    }

    fn dispatch_grpc_call(&self, call: &crate::grpc::GrpcCall<'_>) -> Result<u32, Status> {
        let api = api()?;
        // Envoy's Wasm call takes whole milliseconds up to `u32::MAX`: so does this one.
        let timeout = Duration::from_millis(
            u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX).min(u64::from(u32::MAX)),
        );
        let metadata: Vec<(&str, &[u8])> =
            call.metadata.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        let headers = grpc::request_headers(&call.cluster, &call.service, &call.method, &metadata, timeout);
        let mut module_headers: Vec<ModuleHttpHeader> =
            headers.iter().map(|(k, v)| ModuleHttpHeader::of(k, v)).collect();
        let framed = grpc::frame(&call.message).ok_or(Status::BadArgument)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let cluster = ModuleBuffer::of(call.cluster.as_bytes());
        let body = ModuleBuffer::of(&framed);
        let (headers, count) = (module_headers.as_mut_ptr(), module_headers.len());
        let (owner, plugin) = self.caller()?;
        let start =
            if plugin { api.http_filter_config_start_http_stream } else { api.http_filter_start_http_stream };
        let mut id = 0u64;
        let (result, answered) = grpc::starting(owner as usize, || {
            // SAFETY: `owner` is live (see `caller`); the header array and buffers live for the
            // call (Envoy copies them).
            unsafe { start(owner, &mut id, cluster, headers, count, body, true, timeout_ms) }
        });
        match result {
            // Envoy ended the stream before the start returned (no healthy endpoint): its
            // Wasm gRPC call fails the same way, with `InternalFailure`.
            abi::callout_init::SUCCESS if answered => Err(Status::InternalFailure),
            abi::callout_init::SUCCESS => {
                let token = u32::try_from(id).map_err(|_| Status::InternalFailure)?;
                grpc::track(owner as usize, id, token, call.max_response_bytes);
                Ok(token)
            }
            // Envoy's Wasm answer for an unknown cluster.
            abi::callout_init::CLUSTER_NOT_FOUND => Err(Status::ParseFailure),
            abi::callout_init::MISSING_REQUIRED_HEADERS => Err(Status::BadArgument),
            _ => Err(Status::InternalFailure),
        }
    }

    fn grpc_status(&self) -> Result<(u32, Bytes), Status> {
        GRPC_ANSWER.with(|a| a.borrow().as_ref().map(|a| a.status.clone()).ok_or(Status::NotFound))
    }

    fn define_family(&self, kind: MetricType, name: &str, labels: &[&str]) -> Result<(), Status> {
        metrics::define_family(&self.config, kind, name, labels)
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        metrics::define(&self.config, kind, name)
    }

    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        metrics::increment(&self.config, id, offset)
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        metrics::record(&self.config, id, value)
    }

    fn batches_counters(&self) -> bool {
        // A counter update is a plain function call here, not a VM crossing.
        false
    }

    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        Ok(shared_data::get(key))
    }

    fn ticks(&self) -> bool {
        // Envoy runs the configuration's scheduler, and so `on_tick`, on the main thread.
        self.config.on_main_thread()
    }

    fn queue_push(&self, name: &str, item: &[u8], capacity: usize) -> Result<bool, Status> {
        Ok(shared_data::queue_push(name, item, capacity))
    }

    fn queue_drain(&self, name: &str) -> Result<Vec<Bytes>, Status> {
        Ok(shared_data::queue_drain(name))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        shared_data::set(key, value, cas)
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        // Only the main thread's plugin ticks (Envoy has no timer for a worker's module code);
        // a worker's plugin sees the main one's work through shared data.
        if !self.config.on_main_thread() {
            return Ok(());
        }
        ticker::set(&self.config, period)
    }

    fn current_time(&self) -> Result<SystemTime, Status> {
        Ok(SystemTime::now())
    }

    fn done(&self) -> Result<(), Status> {
        // Envoy does not wait for a dynamic module's plugin: nothing is waiting.
        Err(Status::NotFound)
    }

    fn log(&self, level: LogLevel, message: &str) -> Result<(), Status> {
        log(level, message)
    }

    fn resume(&self, half: Half) -> Result<(), Status> {
        defer(Effect::Resume(half))
    }

    fn reset(&self) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn let_body_through(&self) -> Result<(), Status> {
        filter()?;
        BODY_THROUGH.with(|b| b.set(true));
        Ok(())
    }
}

/// Whether the headers callback that just ran asked to let the body through (and forgets it).
pub(crate) fn take_body_through() -> bool {
    BODY_THROUGH.with(|b| b.replace(false))
}

/// Writes a line to Envoy's log (component `dynamic_modules`); `InternalFailure` outside Envoy.
pub(crate) fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    let api = api()?;
    let level = match level {
        LogLevel::Trace => abi::log_level::TRACE,
        LogLevel::Debug => abi::log_level::DEBUG,
        LogLevel::Info => abi::log_level::INFO,
        LogLevel::Warn => abi::log_level::WARN,
        LogLevel::Error => abi::log_level::ERROR,
        LogLevel::Critical => abi::log_level::CRITICAL,
    };
    // SAFETY: the buffer lives for the call; Envoy copies it.
    unsafe { (api.log)(level, ModuleBuffer::of(message.as_bytes())) };
    Ok(())
}
