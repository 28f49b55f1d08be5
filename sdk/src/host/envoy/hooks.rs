//! The `envoy_dynamic_module_on_*` hooks Envoy calls, driving the SDK's root and stream
//! contexts. Every hook catches unwinding: a panic in a filter must never cross into Envoy,
//! where it aborts the process. A stream whose filter panicked is answered 500 (when its
//! response has not started), counted in `gatewasm_panics_total{plugin}`, and the filter sees
//! none of its later events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use proxy_wasm::traits::{Context as _, HttpContext as _, RootContext as _};
use proxy_wasm::types::{Action, LogLevel, MetricType};

use super::abi::{self, EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer, ModuleHttpHeader};
use super::grpc::{self, Event, Outcome};
use super::{
    body_size, with_body_view, with_log_elapsed, Answer, BodyView, ConfigShared, Effect, EnvoyHost,
    GrpcAnswer, ANSWER, EFFECTS, FILTER, GRPC_ANSWER, ROUTE_DIRTY,
};
use crate::context::{RootContext, StreamContext};
use crate::host::{Half, Host};
use crate::{LocalReply, Plugin};

/// The series counting panics caught in filters, one per plugin.
const PANICS: &str = "gatewasm_panics_total";

/// Configures a plugin instance of one configuration on the calling thread.
type Configure = fn(Arc<ConfigShared>) -> Result<Box<dyn ErasedRoot>, String>;

/// A plugin the module offers, chosen by the filter configuration's `filter_name`.
struct Registration {
    name: &'static str,
    level: LogLevel,
    configure: Configure,
}

static PLUGINS: Mutex<Vec<Registration>> = Mutex::new(Vec::new());

/// Registers `P` with the module (called by `export!` when the library is loaded): Envoy's
/// `filter_name` then selects it.
pub fn register<P: Plugin>(level: LogLevel) {
    let mut plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
    if plugins.iter().all(|p| p.name != P::NAME) {
        plugins.push(Registration { name: P::NAME, level, configure: configure::<P> });
    }
}

/// A configured plugin instance, with its type erased so the hooks need no type parameter.
trait ErasedRoot {
    fn stream(&self, host: Rc<dyn Host>) -> Box<dyn ErasedStream>;
    fn tick(&mut self);
    fn callout(&mut self, token: u32, headers: usize, body: usize);
    fn grpc(&mut self, token: u32, status: u32, size: usize);
}

impl<P: Plugin> ErasedRoot for RootContext<P> {
    fn stream(&self, host: Rc<dyn Host>) -> Box<dyn ErasedStream> {
        Box::new(RootContext::stream(self, host))
    }
    fn tick(&mut self) {
        self.on_tick();
    }
    fn callout(&mut self, token: u32, headers: usize, body: usize) {
        self.on_http_call_response(token, headers, body, 0);
    }
    fn grpc(&mut self, token: u32, status: u32, size: usize) {
        self.on_grpc_call_response(token, status, size);
    }
}

/// One stream's context, type erased.
trait ErasedStream {
    fn request_headers(&mut self, end_of_stream: bool) -> Action;
    fn body(&mut self, half: Half, size: usize, end_of_stream: bool) -> Action;
    fn request_trailers(&mut self) -> Action;
    fn response_headers(&mut self, end_of_stream: bool) -> Action;
    fn callout(&mut self, token: u32, headers: usize, body: usize);
    fn grpc(&mut self, token: u32, status: u32, size: usize);
    fn log(&mut self);
}

impl<P: Plugin> ErasedStream for StreamContext<P> {
    fn request_headers(&mut self, end_of_stream: bool) -> Action {
        self.on_http_request_headers(0, end_of_stream)
    }
    fn body(&mut self, half: Half, size: usize, end_of_stream: bool) -> Action {
        match half {
            Half::Request => self.on_http_request_body(size, end_of_stream),
            Half::Response => self.on_http_response_body(size, end_of_stream),
        }
    }
    fn request_trailers(&mut self) -> Action {
        self.on_http_request_trailers(0)
    }
    fn response_headers(&mut self, end_of_stream: bool) -> Action {
        self.on_http_response_headers(0, end_of_stream)
    }
    fn callout(&mut self, token: u32, headers: usize, body: usize) {
        self.on_http_call_response(token, headers, body, 0);
    }
    fn grpc(&mut self, token: u32, status: u32, size: usize) {
        self.on_grpc_call_response(token, status, size);
    }
    fn log(&mut self) {
        self.on_log();
    }
}

fn configure<P: Plugin>(config: Arc<ConfigShared>) -> Result<Box<dyn ErasedRoot>, String> {
    let host: Rc<dyn Host> = Rc::new(EnvoyHost::new(config));
    let mut root = RootContext::<P>::with_host(host);
    root.configure()?;
    Ok(Box::new(root))
}

/// A plugin instance of one configuration on one thread, and the host its streams use.
struct Instance {
    root: RefCell<Box<dyn ErasedRoot>>,
    host: Rc<dyn Host>,
    config: Arc<ConfigShared>,
}

thread_local! {
    /// This thread's plugin instances, by configuration id.
    static INSTANCES: RefCell<HashMap<u64, Rc<Instance>>> = RefCell::new(HashMap::new());
}

/// The configurations Envoy holds, by address: a scheduled event or a callout answer may name
/// one Envoy has just destroyed, which must then not be touched.
static LIVE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn is_live(config: *const c_void) -> bool {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner).contains(&(config as usize))
}

/// The main thread's instance of a live configuration, for its ticks and callouts.
fn main_instance(config: *const c_void) -> Option<Rc<Instance>> {
    if !is_live(config) {
        return None;
    }
    // SAFETY: a live pointer `config_new` returned (checked just above, on the main thread,
    // which is also the only thread that destroys it).
    let native = unsafe { config.cast::<NativeConfig>().as_ref() }?;
    INSTANCES.with(|i| i.borrow().get(&native.shared.id).cloned())
}

/// What Envoy holds as the filter configuration (shared by every thread).
struct NativeConfig {
    shared: Arc<ConfigShared>,
    configure: Configure,
}

impl NativeConfig {
    /// This thread's instance, configured on first use; `None` (logged) when it cannot be.
    fn instance(&self) -> Option<Rc<Instance>> {
        if let Some(instance) = INSTANCES.with(|i| i.borrow().get(&self.shared.id).cloned()) {
            return Some(instance);
        }
        match (self.configure)(Arc::clone(&self.shared)) {
            Ok(root) => {
                let host: Rc<dyn Host> = Rc::new(EnvoyHost::new(Arc::clone(&self.shared)));
                let instance =
                    Rc::new(Instance { root: RefCell::new(root), host, config: Arc::clone(&self.shared) });
                INSTANCES.with(|i| i.borrow_mut().insert(self.shared.id, Rc::clone(&instance)));
                Some(instance)
            }
            Err(message) => {
                log::error!("{message}");
                None
            }
        }
    }
}

/// Drops this thread's instances of configurations Envoy destroyed.
fn sweep() {
    // Instances whose configuration is gone hold nothing Envoy will ask for again.
    INSTANCES
        .with(|i| i.borrow_mut().retain(|_, instance| !instance.config.destroyed.load(Ordering::Acquire)));
}

/// What Envoy holds for one stream.
struct NativeStream {
    /// Keeps the plugin instance alive as long as its streams.
    _instance: Rc<Instance>,
    /// Envoy's filter of this stream, which owns the stream's gRPC calls.
    envoy: usize,
    context: RefCell<Box<dyn ErasedStream>>,
    config: Arc<ConfigShared>,
    /// Set once the filter panicked on this stream: it sees nothing more.
    poisoned: std::cell::Cell<bool>,
    /// Set once the response started (the 500 for a panic can no longer be sent).
    responding: std::cell::Cell<bool>,
    /// Whether the filter's last request body callback paused, so Envoy buffered that data for
    /// it and the next callback sees it before the new data.
    buffering_request: std::cell::Cell<bool>,
    /// The same for the response body.
    buffering_response: std::cell::Cell<bool>,
    /// When Envoy created the stream's filter (the request headers had arrived): the start of
    /// the module's own `request.duration`.
    created: std::time::Instant,
}

/// Runs `f` on the stream's context with `filter` as the current stream, then does what the
/// filter deferred; returns the status for Envoy.
fn run(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    f: impl FnOnce(&mut dyn ErasedStream) -> Action,
) -> u32 {
    // SAFETY: Envoy passes back the pointer `http_filter_new` returned, live until destroy.
    let Some(stream) = (unsafe { module.cast::<NativeStream>().as_ref() }) else {
        return abi::status::CONTINUE;
    };
    if stream.poisoned.get() {
        return abi::status::CONTINUE;
    }
    let Ok(mut context) = stream.context.try_borrow_mut() else {
        // Envoy called back into a stream whose callback is running: leave it alone.
        return abi::status::CONTINUE;
    };
    // A request to let the body through counts only for the callback about to run.
    super::take_body_through();
    let previous = FILTER.with(|f| f.replace(filter));
    let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut **context)));
    FILTER.with(|f| f.set(previous));
    drop(context);
    let effects = EFFECTS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    let route_dirty = ROUTE_DIRTY.with(|d| d.replace(false));
    let Some(api) = abi::callbacks() else { return abi::status::CONTINUE };
    match outcome {
        Ok(action) => {
            if route_dirty {
                // SAFETY: the stream is live (its hook is running).
                unsafe { (api.http_clear_route_cache)(filter) };
            }
            for effect in effects {
                apply(api, filter, effect);
            }
            match action {
                Action::Continue => abi::status::CONTINUE,
                _ => abi::status::STOP,
            }
        }
        Err(_) => {
            stream.poisoned.set(true);
            panicked(api, filter, stream);
            abi::status::STOP
        }
    }
}

fn apply(api: &abi::Callbacks, filter: abi::FilterEnvoyPtr, effect: Effect) {
    match effect {
        Effect::Reply { status, details, body, headers } => {
            let mut headers: Vec<ModuleHttpHeader> =
                headers.iter().map(|(k, v)| ModuleHttpHeader::of(k.as_bytes(), v.as_bytes())).collect();
            // SAFETY: the stream is live; every buffer lives for the call (Envoy copies).
            unsafe {
                (api.http_send_response)(
                    filter,
                    status,
                    headers.as_mut_ptr(),
                    headers.len(),
                    ModuleBuffer::of(&body),
                    ModuleBuffer::of(details.as_bytes()),
                );
            }
        }
        // SAFETY: the stream is live.
        Effect::Resume(Half::Request) => unsafe { (api.http_filter_continue_decoding)(filter) },
        // SAFETY: the stream is live.
        Effect::Resume(Half::Response) => unsafe { (api.http_filter_continue_encoding)(filter) },
    }
}

/// A filter panicked on this stream: count it, and answer 500 unless the response started.
fn panicked(api: &abi::Callbacks, filter: abi::FilterEnvoyPtr, stream: &NativeStream) {
    if let Some(id) = stream.config.panics.get() {
        let _ = super::metrics::increment(&stream.config, *id, 1);
    }
    if stream.responding.get() {
        return;
    }
    let reply = LocalReply::new(500, "filter_panicked", "the filter failed on this request");
    let details = format!("{}_{}", stream.config.name, reply.code);
    apply(
        api,
        filter,
        Effect::Reply {
            status: 500,
            details,
            body: reply.json_body(),
            headers: vec![("content-type".to_string(), "application/json".to_string())],
        },
    );
}

/// Runs a hook body that must not unwind into Envoy; `fallback` when it panicked.
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Envoy loads the module: resolve its callbacks, install the logger and the panic hook.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(std::ptr::null(), || match abi::load() {
        Ok(_) => {
            let level = PLUGINS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first()
                .map_or(LogLevel::Info, |p| p.level);
            crate::init_logging(level);
            abi::ABI_VERSION.as_ptr()
        }
        Err(missing) => {
            // No Envoy log without the callbacks: standard error is what is left.
            eprintln!(
                "gatewasm: this Envoy lacks {missing}: the module was built for Envoy 1.40 (ABI v0.2.0)"
            );
            std::ptr::null()
        }
    })
}

/// Envoy loads a filter configuration (main thread): configure the plugin named by
/// `filter_name` on this thread; null (Envoy refuses the configuration) when it cannot be.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: abi::ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers are live for this hook.
        let (name, raw) = unsafe { (name.as_slice(), config.as_slice()) };
        let name = String::from_utf8_lossy(name);
        let plugins = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(plugin) = plugins.iter().find(|p| p.name == name) else {
            let offered: Vec<&str> = plugins.iter().map(|p| p.name).collect();
            log::error!(
                "filter_name {name:?} is not a plugin of this module (it has {})",
                offered.join(", ")
            );
            return std::ptr::null();
        };
        let shared = Arc::new(ConfigShared::new(config_envoy, plugin.name, raw.to_vec()));
        let host = EnvoyHost::new(Arc::clone(&shared));
        let panics = host.define_family(MetricType::Counter, PANICS, &["plugin"]).and_then(|()| {
            host.define_metric(
                MetricType::Counter,
                &crate::metrics::series_name(PANICS, &[("plugin", plugin.name)]),
            )
        });
        if let Ok(id) = panics {
            let _ = shared.panics.set(id);
        }
        let native = NativeConfig { shared, configure: plugin.configure };
        drop(plugins);
        // The main thread's instance: it refuses a bad configuration at load.
        if native.instance().is_none() {
            return std::ptr::null();
        }
        if super::ticker::start_flush(&native.shared).is_err() {
            log::error!("{}: cannot start the counter flush", native.shared.name);
            return std::ptr::null();
        }
        let pointer: *const c_void = Box::into_raw(Box::new(native)).cast_const().cast();
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).push(pointer as usize);
        pointer
    })
}

/// Envoy drops a filter configuration (main thread, after its last stream).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard((), || {
        if config.is_null() {
            return;
        }
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).retain(|live| *live != config as usize);
        // SAFETY: the pointer `config_new` returned, given back once.
        let native = unsafe { Box::from_raw(config.cast::<NativeConfig>().cast_mut()) };
        native.shared.destroyed.store(true, Ordering::Release);
        grpc::forget(native.shared.envoy as usize);
        for slot in [&native.shared.ticker, &native.shared.flusher] {
            let ticker = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(ticker) = ticker {
                ticker.stop();
            }
        }
        // Counts since the last flush: Envoy keeps the stats of a configuration it replaced.
        super::metrics::flush(&native.shared);
        sweep();
    });
}

/// A stream starts (on its worker): this worker's instance makes its context.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    filter: abi::FilterEnvoyPtr,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: the pointer `config_new` returned, live while Envoy creates streams from it.
        let Some(native) = (unsafe { config.cast::<NativeConfig>().as_ref() }) else {
            return std::ptr::null();
        };
        sweep();
        let Some(instance) = native.instance() else { return std::ptr::null() };
        let Ok(root) = instance.root.try_borrow() else { return std::ptr::null() };
        let context = root.stream(Rc::clone(&instance.host));
        drop(root);
        let stream = NativeStream {
            _instance: instance,
            envoy: filter as usize,
            context: RefCell::new(context),
            config: Arc::clone(&native.shared),
            poisoned: std::cell::Cell::new(false),
            responding: std::cell::Cell::new(false),
            buffering_request: std::cell::Cell::new(false),
            buffering_response: std::cell::Cell::new(false),
            created: std::time::Instant::now(),
        };
        Box::into_raw(Box::new(stream)).cast_const().cast()
    })
}

/// The stream is gone.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    guard((), || {
        if !module.is_null() {
            // SAFETY: the pointer `http_filter_new` returned, given back once.
            let stream = unsafe { Box::from_raw(module.cast::<NativeStream>().cast_mut()) };
            // Envoy delivers nothing more for the stream's calls.
            grpc::forget(stream.envoy);
        }
    });
}

/// Request headers arrived.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::status::CONTINUE, || headers_status(run(filter, module, |s| s.request_headers(end_of_stream))))
}

/// A paused headers callback holds the body too (`StopAllIterationAndWatermark`), as Envoy's
/// Wasm filter does: with a plain `StopIteration` Envoy would hand the filter the body, and a
/// body callback that continues would let the request (or response) go on before the callout
/// the filter paused for has answered. A filter that buffers the body before its callout asks
/// for the plain `StopIteration` (`Stream::let_body_through`).
fn headers_status(status: u32) -> u32 {
    let body_through = super::take_body_through();
    if status == abi::status::STOP && !body_through {
        abi::status::STOP_ALL_WATERMARK
    } else {
        status
    }
}

/// Request body data arrived.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::status::CONTINUE, || body(filter, module, Half::Request, end_of_stream))
}

/// A body callback with the body seen as proxy-wasm shows it (see `BodyView`).
fn body(filter: abi::FilterEnvoyPtr, module: *const c_void, half: Half, end_of_stream: bool) -> u32 {
    // SAFETY: as in `run`.
    let Some(stream) = (unsafe { module.cast::<NativeStream>().as_ref() }) else {
        return abi::status::CONTINUE;
    };
    let buffering = match half {
        Half::Request => &stream.buffering_request,
        Half::Response => &stream.buffering_response,
    };
    let view = if buffering.get() { BodyView::BufferedAndReceived } else { BodyView::Received };
    let status = with_body_view(view, || {
        let size = body_size(filter, half, view);
        run(filter, module, |s| s.body(half, size, end_of_stream))
    });
    // A paused body callback is Envoy's StopIterationAndBuffer: it keeps the data for us.
    buffering.set(status == abi::status::STOP);
    status
}

/// Request trailers arrived.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
) -> u32 {
    guard(abi::status::CONTINUE, || run(filter, module, |s| s.request_trailers()))
}

/// Response headers arrived (from upstream or a local reply).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::status::CONTINUE, || {
        // SAFETY: as in `run`.
        if let Some(stream) = unsafe { module.cast::<NativeStream>().as_ref() } {
            stream.responding.set(true);
        }
        headers_status(run(filter, module, |s| s.response_headers(end_of_stream)))
    })
}

/// Response body data arrived.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::status::CONTINUE, || body(filter, module, Half::Response, end_of_stream))
}

/// Response trailers arrived (the SDK has no callback for them).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter: abi::FilterEnvoyPtr,
    _module: *const c_void,
) -> u32 {
    abi::status::CONTINUE
}

/// The stream is complete (access-log time).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
) {
    guard((), || {
        // SAFETY: as in `run`.
        let Some(stream) = (unsafe { module.cast::<NativeStream>().as_ref() }) else { return };
        with_log_elapsed(stream.created.elapsed(), || {
            run(filter, module, |s| {
                s.log();
                Action::Continue
            })
        });
    });
}

/// A stream's callout answered, failed or timed out.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter: abi::FilterEnvoyPtr,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard((), || {
        // SAFETY: Envoy's arrays are live for this hook, with the sizes given (or null).
        let answer = unsafe { answer(result, headers, headers_size, body_chunks, body_chunks_size) };
        let (count, size) = (answer.headers.len(), answer.body.len());
        let Ok(token) = u32::try_from(callout_id) else { return };
        ANSWER.with(|a| *a.borrow_mut() = Some(answer));
        run(filter, module, |s| {
            s.callout(token, count, size);
            Action::Continue
        });
        ANSWER.with(|a| a.borrow_mut().take());
    });
}

/// An array Envoy passed, as a slice (empty for null).
///
/// # Safety
/// `data` must be null or point to `len` initialised entries live for the returned lifetime.
unsafe fn slice<'a, T>(data: *const T, len: usize) -> &'a [T] {
    if data.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: per this function's contract.
    unsafe { std::slice::from_raw_parts(data, len) }
}

/// A tick of the main thread's plugin or a counter flush (the configuration scheduler's events,
/// on the main thread).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: abi::ConfigEnvoyPtr,
    config: *const c_void,
    event_id: u64,
) {
    guard((), || {
        if event_id == super::ticker::FLUSH {
            if let Some(instance) = main_instance(config) {
                super::metrics::flush(&instance.config);
            }
            return;
        }
        if event_id != super::ticker::TICK {
            return;
        }
        let Some(instance) = main_instance(config) else { return };
        if let Ok(mut root) = instance.root.try_borrow_mut() {
            if catch_unwind(AssertUnwindSafe(|| root.tick())).is_err() {
                log::error!("{}: the plugin panicked in its tick", instance.config.name);
            }
        };
    });
}

/// A callout of the main thread's plugin answered, failed or timed out.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: abi::ConfigEnvoyPtr,
    config: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard((), || {
        let Some(instance) = main_instance(config) else { return };
        let Ok(token) = u32::try_from(callout_id) else { return };
        // SAFETY: Envoy's arrays are live for this hook, with the sizes given (or null).
        let answer = unsafe { answer(result, headers, headers_size, body_chunks, body_chunks_size) };
        let (count, size) = (answer.headers.len(), answer.body.len());
        ANSWER.with(|a| *a.borrow_mut() = Some(answer));
        if let Ok(mut root) = instance.root.try_borrow_mut() {
            if catch_unwind(AssertUnwindSafe(|| root.callout(token, count, size))).is_err() {
                log::error!("{}: the plugin panicked in a callout answer", instance.config.name);
            }
        }
        ANSWER.with(|a| a.borrow_mut().take());
    });
}

/// Copies a callout answer Envoy is delivering.
///
/// # Safety
/// The arrays must be live for the running hook, with the sizes given (or null).
unsafe fn answer(
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) -> Answer {
    let mut answer = Answer::default();
    if result != abi::callout_result::SUCCESS {
        return answer;
    }
    // SAFETY: per this function's contract.
    for header in unsafe { slice(headers, headers_size) } {
        // SAFETY: an entry Envoy filled for this hook.
        let (key, value) = unsafe { header.pair() };
        answer.headers.push((key.to_vec(), value.to_vec()));
    }
    // SAFETY: per this function's contract.
    for chunk in unsafe { slice(body_chunks, body_chunks_size) } {
        // SAFETY: a chunk Envoy filled for this hook.
        answer.body.extend_from_slice(unsafe { chunk.as_slice() });
    }
    answer
}

/// Envoy's headers as pairs of byte slices.
///
/// # Safety
/// `headers` must be null or point to `size` entries Envoy filled for the running hook.
unsafe fn pairs<'a>(headers: *const EnvoyHttpHeader, size: usize) -> Vec<(&'a [u8], &'a [u8])> {
    // SAFETY: per this function's contract.
    unsafe { slice(headers, size) }
        .iter()
        // SAFETY: entries Envoy filled for this hook.
        .map(|h| unsafe { h.pair() })
        .collect()
}

/// Feeds each chunk of a data event to the call, until one ends it.
///
/// # Safety
/// `data` must be null or point to `count` buffers Envoy filled for the running hook.
unsafe fn data_event(
    owner: usize,
    stream_id: u64,
    data: *const EnvoyBuffer,
    count: usize,
    end_stream: bool,
) -> Option<(u32, Outcome)> {
    // SAFETY: per this function's contract.
    let chunks = unsafe { slice(data, count) };
    if chunks.is_empty() {
        return grpc::on_event(owner, stream_id, Event::Data(&[], end_stream));
    }
    for (i, chunk) in chunks.iter().enumerate() {
        // SAFETY: a chunk Envoy filled for this hook.
        let bytes = unsafe { chunk.as_slice() };
        let ended = grpc::on_event(owner, stream_id, Event::Data(bytes, end_stream && i + 1 == chunks.len()));
        if ended.is_some() {
            return ended;
        }
    }
    None
}

/// Runs `deliver` with a gRPC call's outcome where the SDK's reads find it; `deliver` gets the
/// status and size proxy-wasm's answer callback would get.
fn with_grpc_answer(outcome: Outcome, deliver: impl FnOnce(u32, usize)) {
    let (answer, status, size) = match outcome {
        Outcome::Message { bytes, len } => (GrpcAnswer { message: bytes, status: (0, Vec::new()) }, 0, len),
        Outcome::Close { code, message } => {
            (GrpcAnswer { message: Vec::new(), status: (code, message) }, code, 0)
        }
    };
    GRPC_ANSWER.with(|a| *a.borrow_mut() = Some(answer));
    deliver(status, size);
    GRPC_ANSWER.with(|a| a.borrow_mut().take());
}

/// Hands a stream's gRPC call its outcome, when the event ended it.
fn stream_grpc(filter: abi::FilterEnvoyPtr, module: *const c_void, ended: Option<(u32, Outcome)>) {
    let Some((token, outcome)) = ended else { return };
    with_grpc_answer(outcome, |status, size| {
        run(filter, module, |s| {
            s.grpc(token, status, size);
            Action::Continue
        });
    });
}

/// Hands a call of the main thread's plugin its outcome, when the event ended it.
fn config_grpc(_config_envoy: abi::ConfigEnvoyPtr, config: *const c_void, ended: Option<(u32, Outcome)>) {
    let Some((token, outcome)) = ended else { return };
    let Some(instance) = main_instance(config) else { return };
    with_grpc_answer(outcome, |status, size| {
        if let Ok(mut root) = instance.root.try_borrow_mut() {
            if catch_unwind(AssertUnwindSafe(|| root.grpc(token, status, size))).is_err() {
                log::error!("{}: the plugin panicked in a gRPC answer", instance.config.name);
            }
        }
    });
}

/// The hooks of the HTTP streams that carry gRPC calls: one family for a stream's calls (its
/// filter owns them), one for the plugin's (its configuration owns them), each feeding the
/// call's decoder and handing the call its outcome through `$deliver` once an event ends it.
macro_rules! grpc_stream_hooks {
    ($who:literal, $deliver:ident, $headers:ident, $data:ident, $trailers:ident, $complete:ident, $reset:ident) => {
        #[doc = concat!("A gRPC call of ", $who, " got its response headers.")]
        #[no_mangle]
        pub extern "C" fn $headers(
            owner: *mut c_void,
            module: *const c_void,
            stream_id: u64,
            headers: *const EnvoyHttpHeader,
            headers_size: usize,
            end_stream: bool,
        ) {
            guard((), || {
                // SAFETY: Envoy's array is live for this hook, with the size given (or null).
                let headers = unsafe { pairs(headers, headers_size) };
                let event = Event::Headers(&headers, end_stream);
                $deliver(owner, module, grpc::on_event(owner as usize, stream_id, event));
            });
        }

        #[doc = concat!("A gRPC call of ", $who, " got response data.")]
        #[no_mangle]
        pub extern "C" fn $data(
            owner: *mut c_void,
            module: *const c_void,
            stream_id: u64,
            data: *const EnvoyBuffer,
            data_count: usize,
            end_stream: bool,
        ) {
            guard((), || {
                // SAFETY: Envoy's buffers are live for this hook, with the count given (or null).
                let ended = unsafe { data_event(owner as usize, stream_id, data, data_count, end_stream) };
                $deliver(owner, module, ended);
            });
        }

        #[doc = concat!("A gRPC call of ", $who, " got response trailers.")]
        #[no_mangle]
        pub extern "C" fn $trailers(
            owner: *mut c_void,
            module: *const c_void,
            stream_id: u64,
            trailers: *const EnvoyHttpHeader,
            trailers_size: usize,
        ) {
            guard((), || {
                // SAFETY: Envoy's array is live for this hook, with the size given (or null).
                let trailers = unsafe { pairs(trailers, trailers_size) };
                $deliver(
                    owner,
                    module,
                    grpc::on_event(owner as usize, stream_id, Event::Trailers(&trailers)),
                );
            });
        }

        #[doc = concat!("The HTTP stream of a gRPC call of ", $who, " completed.")]
        #[no_mangle]
        pub extern "C" fn $complete(owner: *mut c_void, module: *const c_void, stream_id: u64) {
            guard((), || $deliver(owner, module, grpc::on_event(owner as usize, stream_id, Event::Complete)));
        }

        #[doc = concat!("The HTTP stream of a gRPC call of ", $who, " was reset.")]
        #[no_mangle]
        pub extern "C" fn $reset(
            owner: *mut c_void,
            module: *const c_void,
            stream_id: u64,
            _reason: abi::StreamResetReason,
        ) {
            guard((), || $deliver(owner, module, grpc::on_event(owner as usize, stream_id, Event::Reset)));
        }
    };
}

grpc_stream_hooks!(
    "a stream",
    stream_grpc,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset
);

grpc_stream_hooks!(
    "the main thread's plugin",
    config_grpc,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset
);

/// Stream-scheduled events are not used by the SDK; Envoy requires the hook.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: abi::FilterEnvoyPtr,
    _module: *const c_void,
    _event_id: u64,
) {
}

/// Watermarks concern terminal filters only; Envoy requires the hook.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: abi::FilterEnvoyPtr,
    _module: *const c_void,
) {
}

/// Watermarks concern terminal filters only; Envoy requires the hook.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: abi::FilterEnvoyPtr,
    _module: *const c_void,
) {
}
