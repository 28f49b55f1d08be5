//! The public API: [`Emulator`], its builder, and [`Stream`]s.

use crate::abi::{Action, LogLevel, MetricType};
use crate::group::Group;
use crate::host::{
    self, AfterCall, Dir, Downstream, HeaderMap, HostState, HttpCall, LocalReply, LogEntry, Metric, Phase,
    StreamState, UpstreamModel,
};
use crate::wasi::{Sink, WasiCtx};
use crate::Error;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Engine, ExternType, Linker, Module, Store, TypedFunc};

type Result<T> = std::result::Result<T, Error>;

/// The process-wide engine: every emulator shares it, so compiled modules can be shared too.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(Engine::default)
}

#[derive(Hash, PartialEq, Eq)]
enum CacheKey {
    File(PathBuf, Option<SystemTime>, u64),
    Bytes(u64, usize),
}

fn cache() -> &'static Mutex<HashMap<CacheKey, Module>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Module>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cached(key: CacheKey, load: impl FnOnce() -> Result<Module>) -> Result<Module> {
    // Compiling under the lock makes parallel tests wait for one compile instead of repeating it.
    let mut map = cache().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let m = load()?;
    map.insert(key, m.clone());
    Ok(m)
}

/// Compiles (or takes from the process-wide cache) the module at `path`. The cache key includes
/// the file's modification time, so a rebuilt module is compiled again.
pub fn load_module(path: impl AsRef<Path>) -> Result<Module> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let key = CacheKey::File(canon, meta.modified().ok(), meta.len());
    cached(key, || {
        let bytes = std::fs::read(path).map_err(|e| Error::Load(format!("{}: {e}", path.display())))?;
        Module::new(engine(), &bytes).map_err(|e| Error::Load(format!("{}: {e:#}", path.display())))
    })
}

/// Compiles (or takes from the cache) a module from its bytes (binary or WAT text).
pub fn load_module_bytes(bytes: &[u8]) -> Result<Module> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    cached(CacheKey::Bytes(h.finish(), bytes.len()), || {
        Module::new(engine(), bytes).map_err(|e| Error::Load(format!("{e:#}")))
    })
}

fn path_key(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// A property path: `"request.path"` (dot-separated) or `&["request", "path"]`.
pub trait PropertyPath {
    /// The NUL-separated form the ABI uses.
    fn key(&self) -> Vec<u8>;
}

impl PropertyPath for &str {
    fn key(&self) -> Vec<u8> {
        path_key(&self.split('.').collect::<Vec<_>>())
    }
}

impl PropertyPath for String {
    fn key(&self) -> Vec<u8> {
        self.as_str().key()
    }
}

impl PropertyPath for &[&str] {
    fn key(&self) -> Vec<u8> {
        path_key(self)
    }
}

impl<const N: usize> PropertyPath for [&str; N] {
    fn key(&self) -> Vec<u8> {
        path_key(self)
    }
}

impl<const N: usize> PropertyPath for &[&str; N] {
    fn key(&self) -> Vec<u8> {
        path_key(*self)
    }
}

/// Configures and builds an [`Emulator`].
pub struct EmulatorBuilder {
    module: Result<Module>,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    log_level: LogLevel,
    group: Option<Group>,
    vm_id: String,
    clusters: Option<HashSet<String>>,
    time: SystemTime,
    env: Vec<(String, String)>,
    hold_headers: bool,
    foreign_functions: bool,
    downstream: Downstream,
}

impl EmulatorBuilder {
    fn new(module: Result<Module>) -> Self {
        let mut properties = HashMap::new();
        properties.insert(b"plugin_name".to_vec(), b"plugin".to_vec());
        properties.insert(b"plugin_root_id".to_vec(), Vec::new());
        EmulatorBuilder {
            module,
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            properties,
            log_level: LogLevel::Trace,
            group: None,
            vm_id: String::new(),
            clusters: None,
            // A fixed default start time keeps tests reproducible: 2024-01-01T00:00:00Z.
            time: UNIX_EPOCH + Duration::from_secs(1_704_067_200),
            env: Vec::new(),
            hold_headers: false,
            foreign_functions: true,
            downstream: Downstream::default(),
        }
    }

    /// The client's address (`source.address`, `source.port`), `ip:port` or `[ip]:port` as
    /// Envoy prints it. Default `127.0.0.1:40000`.
    pub fn source_address(mut self, address: &str) -> Self {
        self.downstream.source = address.to_string();
        self
    }

    /// The listener address the client connected to (`destination.address`,
    /// `destination.port`). Default `127.0.0.1:10000`.
    pub fn destination_address(mut self, address: &str) -> Self {
        self.downstream.destination = address.to_string();
        self
    }

    /// The route sends requests to `cluster`, whose one endpoint is `address` (`ip:port`): the
    /// `xds.cluster_name` and `upstream.*` properties answer as Envoy's do for such a route once
    /// the test gives a response (see the README). Without it the properties tell a route
    /// without a cluster.
    pub fn upstream(mut self, cluster: &str, address: &str) -> Self {
        self.downstream.upstream =
            Some(UpstreamModel { cluster: cluster.to_string(), address: address.to_string() });
        self
    }

    /// The downstream protocol (`request.protocol`): `HTTP/1.0`, `HTTP/1.1` (default),
    /// `HTTP/2` or `HTTP/3`.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.downstream.protocol = protocol.to_string();
        self
    }

    /// Envoy's `allow_on_headers_stop_iteration` (Wasm `PluginConfig`, Envoy 1.35+): a Pause
    /// from a headers callback holds the headers while body data and trailers still reach the
    /// filter (Envoy's StopIteration). Off by default, as in Envoy: a Pause stops everything
    /// until the filter resumes.
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.hold_headers = allow;
        self
    }

    /// Whether the host registers its foreign functions (`verify_signature`); `false` emulates a
    /// host without them (Envoy before 1.35 for `verify_signature`, other proxy-wasm hosts):
    /// every `proxy_call_foreign_function` answers NotFound.
    pub fn foreign_functions(mut self, registered: bool) -> Self {
        self.foreign_functions = registered;
        self
    }

    /// The plugin configuration (`configuration` in Envoy's Wasm filter), e.g. a JSON string.
    pub fn plugin_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.plugin_config = config.as_ref().to_vec();
        self
    }

    /// The VM configuration (`vm_config.configuration`).
    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.vm_config = config.as_ref().to_vec();
        self
    }

    /// Sets a property every context can read (e.g. `plugin_name`, `node.id`, `source.address`).
    /// Values are raw bytes as Envoy serializes them (strings as is, integers as 8 bytes LE).
    pub fn property(mut self, path: impl PropertyPath, value: impl AsRef<[u8]>) -> Self {
        self.properties.insert(path.key(), value.as_ref().to_vec());
        self
    }

    /// The host log level: what `proxy_get_log_level` returns and the lowest level recorded.
    /// Default `Trace` (everything); Envoy's default is `Info`.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// The VM id (`vm_config.vm_id`): the `plugin_vm_id` property and the namespace of shared
    /// data and queues. Default empty, as in Envoy without a vm_id.
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_string();
        self
    }

    /// Envoy's `root_id` (the `plugin_root_id` property).
    pub fn root_id(self, root_id: &str) -> Self {
        self.property("plugin_root_id", root_id)
    }

    /// Declares an Envoy cluster `proxy_http_call` may use. Once any cluster is declared, calls
    /// to others fail with BadArgument as in Envoy; with none declared, every name is accepted.
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.get_or_insert_with(HashSet::new).insert(name.to_string());
        self
    }

    /// Joins a [`Group`], sharing its shared data and queues (another worker of the same Envoy).
    pub fn group(mut self, group: &Group) -> Self {
        self.group = Some(group.clone());
        self
    }

    /// Start time of the emulated clock (default 2024-01-01T00:00:00Z).
    pub fn time(mut self, time: SystemTime) -> Self {
        self.time = time;
        self
    }

    /// A WASI environment variable (Envoy: `vm_config.environment_variables`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Instantiates the module and starts it as Envoy does: `_initialize` (or `_start`),
    /// `proxy_on_context_create` for the root context, `proxy_on_vm_start`, `proxy_on_configure`.
    /// A module that traps while starting is an error; one whose `on_vm_start` or
    /// `on_configure` returns false builds, with [`Emulator::configured`] false.
    pub fn build(self) -> Result<Emulator> {
        let module = self.module?;
        let group = self.group.unwrap_or_default();
        let member = {
            let mut g = group.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.members += 1;
            g.members
        };
        let realtime = self.time.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let mut wasi = WasiCtx::captured();
        wasi.env = self.env;
        wasi.record_writes = true;
        let mut state = HostState {
            wasi,
            malloc: None,
            root_id: 1,
            current: 0,
            effective: None,
            streams: HashMap::new(),
            vm_config: self.vm_config,
            plugin_config: self.plugin_config,
            in_configure: false,
            call_response: None,
            logs: Vec::new(),
            log_level: self.log_level,
            properties: self.properties,
            downstream: self.downstream,
            metric_ids: HashMap::new(),
            metrics: BTreeMap::new(),
            next_metric_id: [0, 1, 2],
            http_calls: BTreeMap::new(),
            next_http_token: 0,
            clusters: self.clusters,
            hold_headers: self.hold_headers,
            foreign_functions: self.foreign_functions,
            tick_period_ms: 0,
            next_tick: None,
            realtime_ns: realtime,
            monotonic_ns: 1_000_000_000,
            group: group.state.clone(),
            member,
            vm_id: self.vm_id,
            after: Vec::new(),
            stop_iteration: false,
            done_called: false,
            root_pending_done: false,
            root_deleted: false,
            host_calls: BTreeMap::new(),
            host_calls_by_context: HashMap::new(),
        };
        state.sync_clock();
        let engine = engine();
        let mut store = Store::new(engine, state);
        let mut linker: Linker<HostState> = Linker::new(engine);
        crate::wasi::add_to_linker(&mut linker).map_err(|e| Error::Load(format!("{e:#}")))?;
        host::add_to_linker(&mut linker).map_err(|e| Error::Load(format!("{e:#}")))?;
        for import in module.imports() {
            if linker.get_by_import(&mut store, &import).is_some() {
                continue;
            }
            if let ExternType::Func(ty) = import.ty() {
                let (m, n) = (import.module().to_string(), import.name().to_string());
                linker
                    .func_new(import.module(), import.name(), ty, move |_, _, _| {
                        Err(host::unimplemented_import(&m, &n))
                    })
                    .map_err(|e| Error::Load(format!("{e:#}")))?;
            }
        }
        let instance = linker.instantiate(&mut store, &module).map_err(|e| Error::Load(format!("{e:#}")))?;
        if instance.get_func(&mut store, "proxy_abi_version_0_2_1").is_none() {
            return Err(Error::Load(
                "the module does not export proxy_abi_version_0_2_1 (only Proxy-Wasm ABI 0.2.1 is emulated)"
                    .to_string(),
            ));
        }
        let malloc = instance
            .get_typed_func::<u32, u32>(&mut store, "malloc")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate"))
            .map_err(|_| {
                Error::Load("the module exports neither malloc nor proxy_on_memory_allocate".to_string())
            })?;
        store.data_mut().malloc = Some(malloc);
        macro_rules! get {
            ($name:expr) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let exports = Exports {
            initialize: get!("_initialize"),
            start: get!("_start"),
            context_create: get!("proxy_on_context_create"),
            vm_start: get!("proxy_on_vm_start"),
            configure: get!("proxy_on_configure"),
            request_headers: get!("proxy_on_request_headers"),
            request_body: get!("proxy_on_request_body"),
            request_trailers: get!("proxy_on_request_trailers"),
            response_headers: get!("proxy_on_response_headers"),
            response_body: get!("proxy_on_response_body"),
            response_trailers: get!("proxy_on_response_trailers"),
            log: get!("proxy_on_log"),
            done: get!("proxy_on_done"),
            delete: get!("proxy_on_delete"),
            tick: get!("proxy_on_tick"),
            http_call_response: get!("proxy_on_http_call_response"),
            queue_ready: get!("proxy_on_queue_ready"),
        };
        let mut inner = Inner { store, exports, failed: None, configured: false, next_context_id: 2 };
        let e = &inner.exports;
        let (init, start, create, vm_start, configure) = (
            e.initialize.clone(),
            e.start.clone(),
            e.context_create.clone(),
            e.vm_start.clone(),
            e.configure.clone(),
        );
        if let Some(f) = init {
            inner.call("_initialize", 0, |s| f.call(s, ()))?;
        } else if let Some(f) = start {
            inner.call("_start", 0, |s| f.call(s, ()))?;
        }
        let root = inner.store.data().root_id;
        if let Some(f) = create {
            inner.call("proxy_on_context_create", root, |s| f.call(s, (root, 0)))?;
        }
        let vm_len = inner.store.data().vm_config.len() as u32;
        let started = match vm_start {
            Some(f) => inner.call("proxy_on_vm_start", root, |s| f.call(s, (root, vm_len)))? != 0,
            None => true,
        };
        let mut configured = started;
        if started {
            if let Some(f) = configure {
                let len = inner.store.data().plugin_config.len() as u32;
                inner.store.data_mut().in_configure = true;
                let r = inner.call("proxy_on_configure", root, |s| f.call(s, (root, len)));
                inner.store.data_mut().in_configure = false;
                configured = r? != 0;
            }
        }
        inner.configured = configured;
        inner.pump()?;
        Ok(Emulator { inner: Rc::new(RefCell::new(inner)) })
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

#[derive(Clone)]
struct Exports {
    initialize: Option<TypedFunc<(), ()>>,
    start: Option<TypedFunc<(), ()>>,
    context_create: Option<TypedFunc<(u32, u32), ()>>,
    vm_start: Option<TypedFunc<(u32, u32), u32>>,
    configure: Option<TypedFunc<(u32, u32), u32>>,
    request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    log: Option<TypedFunc<u32, ()>>,
    done: Option<TypedFunc<u32, u32>>,
    delete: Option<TypedFunc<u32, ()>>,
    tick: Option<TypedFunc<u32, ()>>,
    http_call_response: Option<CallResponseFn>,
    queue_ready: Option<TypedFunc<(u32, u32), ()>>,
}

struct Inner {
    store: Store<HostState>,
    exports: Exports,
    failed: Option<String>,
    configured: bool,
    next_context_id: u32,
}

/// Which direction of a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Inner {
    /// Calls into the module for context `ctx`. A trap kills the VM (as in Envoy) and is
    /// reported with the module's panic message, if it logged one.
    fn call<R>(
        &mut self,
        name: &str,
        ctx: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if let Some(reason) = &self.failed {
            return Err(Error::VmFailed(reason.clone()));
        }
        let st = self.store.data_mut();
        st.current = ctx;
        st.effective = None;
        st.stop_iteration = false;
        let log_mark = st.logs.len();
        let result = f(&mut self.store);
        self.drain_wasi_writes();
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let st = self.store.data();
                let mut panic: Vec<String> = st
                    .logs
                    .iter()
                    .skip(log_mark)
                    .filter(|l| l.level == LogLevel::Critical)
                    .map(|l| l.message.clone())
                    .collect();
                if panic.is_empty() {
                    panic = st
                        .logs
                        .iter()
                        .skip(log_mark)
                        .filter(|l| l.message.contains("panicked at"))
                        .map(|l| l.message.clone())
                        .collect();
                }
                let panic = if panic.is_empty() { None } else { Some(panic.join("\n")) };
                let trap = format!("{e:#}");
                let reason = match &panic {
                    Some(p) => format!("{name} trapped: {p}"),
                    None => format!("{name} trapped: {trap}"),
                };
                self.failed = Some(reason);
                Err(Error::Trap { call: name.to_string(), trap, panic })
            }
        }
    }

    /// Envoy logs WASI stdout at info and stderr at error (proxy-wasm-cpp-host `writevImpl`).
    fn drain_wasi_writes(&mut self) {
        let st = self.store.data_mut();
        let writes = std::mem::take(&mut st.wasi.writes);
        for (fd, data) in writes {
            let mut text = String::from_utf8_lossy(&data).into_owned();
            if text.ends_with('\n') {
                text.pop();
            }
            st.log(if fd == 1 { LogLevel::Info } else { LogLevel::Error }, text);
        }
    }

    fn stream(&mut self, id: u32) -> Result<&mut StreamState> {
        self.store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or_else(|| Error::Usage(format!("no stream with context id {id}")))
    }

    fn dir(&mut self, id: u32, side: Side) -> Result<&mut Dir> {
        let s = self.stream(id)?;
        Ok(if side == Side::Request { &mut s.req } else { &mut s.resp })
    }

    fn ended(&self, id: u32) -> bool {
        self.store
            .data()
            .streams
            .get(&id)
            .map(|s| s.reset || s.local_reply.is_some() || s.phase != Phase::Open)
            .unwrap_or(true)
    }

    fn action(&self, raw: u32) -> Action {
        // A local reply makes Envoy ignore the returned value and stop (exports.cc).
        if raw == 0 && !self.store.data().stop_iteration {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    /// Envoy calls `proxy_on_context_create` for a stream when its headers arrive.
    fn ensure_created(&mut self, id: u32) -> Result<()> {
        if self.store.data().streams.contains_key(&id) {
            return Ok(());
        }
        let (start_realtime_ns, start_monotonic_ns) = {
            let st = self.store.data();
            (st.realtime_ns, st.monotonic_ns)
        };
        self.store.data_mut().streams.insert(
            id,
            StreamState {
                req: Dir { headers: HeaderMap::new(true), ..Dir::default() },
                start_realtime_ns,
                start_monotonic_ns,
                ..StreamState::default()
            },
        );
        let root = self.store.data().root_id;
        if let Some(f) = self.exports.context_create.clone() {
            self.call("proxy_on_context_create", id, |s| f.call(s, (id, root)))?;
        }
        Ok(())
    }

    fn headers(&mut self, id: u32, side: Side, headers: HeaderMap, eos: bool) -> Result<Action> {
        let d = self.dir(id, side)?;
        d.headers = headers;
        d.headers_live = true;
        d.headers_seen = true;
        d.complete = eos;
        let n = d.headers.entries.len() as u32;
        let f = if side == Side::Request {
            self.exports.request_headers.clone()
        } else {
            self.exports.response_headers.clone()
        };
        let name =
            if side == Side::Request { "proxy_on_request_headers" } else { "proxy_on_response_headers" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n, u32::from(eos))))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let hold = self.store.data().hold_headers;
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            d.headers_live = false;
        } else if hold {
            // Envoy with allow_on_headers_stop_iteration: the headers wait, data still comes.
            d.held = true;
        } else {
            d.stopped = true;
        }
        Ok(action)
    }

    fn body(&mut self, id: u32, side: Side, chunk: &[u8], eos: bool) -> Result<Action> {
        let d = self.dir(id, side)?;
        if d.stopped {
            // Headers (or trailers) stopped all iteration: Envoy buffers the data and gives it
            // to this filter when it continues.
            let q = d.queued_body.get_or_insert_with(|| (Vec::new(), false));
            q.0.extend_from_slice(chunk);
            q.1 |= eos;
            return Ok(Action::Pause);
        }
        if !d.buffering {
            d.body.clear();
        }
        d.body.extend_from_slice(chunk);
        d.body_live = true;
        d.complete |= eos;
        let n = d.body.len() as u32;
        let f = if side == Side::Request {
            self.exports.request_body.clone()
        } else {
            self.exports.response_body.clone()
        };
        let name = if side == Side::Request { "proxy_on_request_body" } else { "proxy_on_response_body" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n, u32::from(eos))))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            let body = std::mem::take(&mut d.body);
            d.forwarded.extend_from_slice(&body);
            d.body_live = false;
            d.buffering = false;
            // Data that continues takes held headers along (Envoy's filter manager).
            d.held = false;
        } else {
            d.buffering = true;
        }
        Ok(action)
    }

    fn trailers(&mut self, id: u32, side: Side, trailers: HeaderMap) -> Result<Action> {
        let d = self.dir(id, side)?;
        if d.stopped {
            d.queued_trailers = Some(trailers);
            return Ok(Action::Pause);
        }
        d.trailers = Some(trailers);
        d.trailers_live = true;
        d.complete = true;
        let n = d.trailers.as_ref().map(|t| t.entries.len()).unwrap_or(0) as u32;
        let f = if side == Side::Request {
            self.exports.request_trailers.clone()
        } else {
            self.exports.response_trailers.clone()
        };
        let name =
            if side == Side::Request { "proxy_on_request_trailers" } else { "proxy_on_response_trailers" };
        let action = match f {
            Some(f) => {
                let raw = self.call(name, id, |s| f.call(s, (id, n)))?;
                self.action(raw)
            }
            None => Action::Continue,
        };
        let d = self.dir(id, side)?;
        if action == Action::Continue {
            d.trailers_live = false;
            let body = std::mem::take(&mut d.body);
            d.forwarded.extend_from_slice(&body);
            d.body_live = false;
            d.buffering = false;
            d.held = false;
        } else {
            d.stopped = true;
        }
        Ok(action)
    }

    /// `continueDecoding`/`continueEncoding`: buffered body goes on, data that waited while the
    /// filter was stopped is given to it now.
    fn resume(&mut self, id: u32, side: Side) -> Result<()> {
        if self.ended(id) {
            return Ok(());
        }
        let d = self.dir(id, side)?;
        d.stopped = false;
        d.held = false;
        let body = std::mem::take(&mut d.body);
        d.forwarded.extend_from_slice(&body);
        d.buffering = false;
        d.body_live = false;
        let queued_body = d.queued_body.take();
        let queued_trailers = d.queued_trailers.take();
        if let Some((chunk, eos)) = queued_body {
            self.body(id, side, &chunk, eos)?;
        }
        if let Some(t) = queued_trailers {
            if self.ended(id) {
                return Ok(());
            }
            let d = self.dir(id, side)?;
            if d.stopped {
                d.queued_trailers = Some(t);
            } else {
                self.trailers(id, side, t)?;
            }
        }
        Ok(())
    }

    fn local_reply(&mut self, id: u32, mut reply: LocalReply) -> Result<()> {
        if self.ended(id) {
            return Ok(());
        }
        let mut headers = HeaderMap::new(false);
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in &reply.headers {
            headers.add(k.as_bytes(), v.as_bytes());
        }
        // The probe: with a body the filter sees content-length and content-type: text/plain;
        // without one (403 or 204, empty body), neither. A content-type the module gave is kept
        // and no second one added (ext-auth's Envoy tests: one `application/json`).
        if !reply.body.is_empty() {
            headers.add(b"content-length", reply.body.len().to_string().as_bytes());
            if !reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
                headers.add(b"content-type", b"text/plain");
            }
        }
        let request_phase = !self.stream(id)?.resp.headers_seen;
        {
            let s = self.stream(id)?;
            s.code_details = Some(reply.details.clone());
            s.req.stopped = true;
            s.req.headers_live = s.req.headers_live || s.req.stopped;
        }
        if request_phase {
            // Envoy sends a local reply from the request path through the encoder filters,
            // this one included: the probe saw its own reply in on_response_headers (with
            // :status, its extra headers, content-length and content-type).
            let body = std::mem::take(&mut reply.body);
            self.stream(id)?.local_reply_pending = true;
            let r = self.headers(id, Side::Response, headers, body.is_empty());
            if r.is_ok() && !body.is_empty() && !self.stream(id)?.reset {
                let d = self.dir(id, Side::Response)?;
                d.stopped = false;
                self.body(id, Side::Response, &body, true)?;
            }
            r?;
            let s = self.stream(id)?;
            s.local_reply_pending = false;
            let mut out = std::mem::take(&mut s.resp.forwarded);
            out.extend_from_slice(&s.resp.body);
            if body.is_empty() {
                out.clear();
            }
            reply.body = if body.is_empty() { Vec::new() } else { out };
            reply.headers = s.resp.headers.to_strings();
            s.resp.forwarded = reply.body.clone();
        } else {
            // From the response path the reply replaces the response without running this
            // filter again (the probe: its on_response_headers did not see its own 418).
            reply.headers = headers.to_strings();
            let s = self.stream(id)?;
            s.resp.headers = headers;
            s.resp.forwarded = reply.body.clone();
        }
        let s = self.stream(id)?;
        s.resp.complete = true;
        s.local_reply = Some(reply);
        Ok(())
    }

    /// Runs what Envoy defers to after a VM call (continue, close, local reply) and delivers
    /// queue notifications, until nothing is left.
    fn pump(&mut self) -> Result<()> {
        loop {
            let actions = std::mem::take(&mut self.store.data_mut().after);
            let ready: Vec<(u32, u32)> = {
                let member = self.store.data().member;
                let mut g = self.store.data().group.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (mine, rest): (Vec<_>, Vec<_>) = g.ready.drain(..).partition(|(m, _, _)| *m == member);
                g.ready = rest;
                mine.into_iter().map(|(_, root, id)| (root, id)).collect()
            };
            if actions.is_empty() && ready.is_empty() {
                return Ok(());
            }
            for a in actions {
                match a {
                    AfterCall::Continue(id, t) => {
                        // Envoy's continueStream forgets the request headers, body and trailers
                        // pointers whichever direction continues.
                        if let Ok(s) = self.stream(id) {
                            s.req.headers_live = false;
                            s.req.body_live = false;
                            s.req.trailers_live = false;
                        }
                        let side = if t == 0 { Side::Request } else { Side::Response };
                        let stopped =
                            self.dir(id, side).map(|d| d.stopped || d.buffering || d.held).unwrap_or(false);
                        if stopped {
                            self.resume(id, side)?;
                        }
                    }
                    AfterCall::Close(id) => {
                        if let Ok(s) = self.stream(id) {
                            s.reset = true;
                        }
                    }
                    AfterCall::LocalReply(id, reply) => self.local_reply(id, reply)?,
                    AfterCall::DeleteRoot => self.delete_root()?,
                }
            }
            for (root, qid) in ready {
                if let Some(f) = self.exports.queue_ready.clone() {
                    self.call("proxy_on_queue_ready", root, |s| f.call(s, (root, qid)))?;
                }
            }
        }
    }

    /// Deletes the root context as Envoy does when a removed plugin is done: `proxy_on_delete`,
    /// its timer stopped and its pending callouts cancelled (their answers never arrive).
    fn delete_root(&mut self) -> Result<()> {
        let st = self.store.data_mut();
        let root = st.root_id;
        st.root_deleted = true;
        st.tick_period_ms = 0;
        st.next_tick = None;
        st.http_calls.retain(|_, call| call.context_id != root);
        if let Some(f) = self.exports.delete.clone() {
            self.call("proxy_on_delete", root, |s| f.call(s, root))?;
        }
        Ok(())
    }

    fn deliver_call_response(
        &mut self,
        token: u32,
        response: Option<(HeaderMap, Vec<u8>, Option<HeaderMap>)>,
    ) -> Result<()> {
        let call = self
            .store
            .data_mut()
            .http_calls
            .remove(&token)
            .ok_or_else(|| Error::Usage(format!("no pending http call with token {token}")))?;
        let (nh, nb, nt) = match &response {
            Some((h, b, t)) => (
                h.entries.len() as u32,
                b.len() as u32,
                t.as_ref().map(|t| t.entries.len()).unwrap_or(0) as u32,
            ),
            None => (0, 0, 0),
        };
        self.store.data_mut().call_response = response;
        let ctx = call.context_id;
        let r = match self.exports.http_call_response.clone() {
            Some(f) => self.call("proxy_on_http_call_response", ctx, |s| f.call(s, (ctx, token, nh, nb, nt))),
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        r?;
        self.pump()
    }

    fn set_clock(&mut self, monotonic: u64) {
        let st = self.store.data_mut();
        let delta = monotonic.saturating_sub(st.monotonic_ns);
        st.monotonic_ns = monotonic;
        st.realtime_ns = st.realtime_ns.saturating_add(delta);
        st.sync_clock();
    }
}

/// An emulated Envoy worker's Wasm VM running one plugin. See the crate documentation.
pub struct Emulator {
    inner: Rc<RefCell<Inner>>,
}

/// An HTTP stream (one request/response) going through the plugin. Cheap handle: the
/// [`Emulator`] it came from can still be used while it exists.
pub struct Stream {
    inner: Rc<RefCell<Inner>>,
    id: u32,
}

impl Emulator {
    /// Starts building an emulator for the module at `path` (compiled once per process).
    #[allow(clippy::new_ret_no_self)]
    pub fn load(path: impl AsRef<Path>) -> EmulatorBuilder {
        EmulatorBuilder::new(load_module(path))
    }

    /// Starts building an emulator for a module given as bytes (binary or WAT).
    pub fn from_bytes(bytes: &[u8]) -> EmulatorBuilder {
        EmulatorBuilder::new(load_module_bytes(bytes))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.borrow_mut())
    }

    /// Whether `proxy_on_vm_start` and `proxy_on_configure` both returned true (Envoy refuses
    /// the plugin otherwise; [`Emulator::logs`] usually say why).
    pub fn configured(&self) -> bool {
        self.with(|i| i.configured)
    }

    /// The failure that killed the VM, if it trapped.
    pub fn failure(&self) -> Option<String> {
        self.with(|i| i.failed.clone())
    }

    /// A new HTTP stream. `proxy_on_context_create` runs with its first headers, as in Envoy.
    pub fn stream(&self) -> Stream {
        let id = self.with(|i| {
            let id = i.next_context_id;
            i.next_context_id += 1;
            id
        });
        Stream { inner: self.inner.clone(), id }
    }

    /// Removes the plugin as Envoy 1.40 does once the plugin's listener has drained after a
    /// configuration change or removal: `proxy_on_done` on the root context. Returns true when
    /// the module let it go at once (`proxy_on_delete` ran). False when it asked to finish
    /// first: callout answers and ticks still arrive (in Envoy, as long as another plugin keeps
    /// the VM) until the module calls `proxy_done`; the root context is then deleted, its
    /// timer stopped and its pending callouts cancelled.
    pub fn remove_plugin(&self) -> Result<bool> {
        self.with(|i| {
            i.pump()?;
            let root = i.store.data().root_id;
            let now = match i.exports.done.clone() {
                Some(f) => i.call("proxy_on_done", root, |s| f.call(s, root))? != 0,
                None => true,
            };
            if now {
                i.delete_root()?;
            } else {
                i.store.data_mut().root_pending_done = true;
            }
            i.pump()?;
            Ok(now)
        })
    }

    /// Whether the root context was deleted after [`Emulator::remove_plugin`] (at once, or when
    /// the module called `proxy_done`).
    pub fn plugin_removed(&self) -> bool {
        self.with(|i| i.store.data().root_deleted)
    }

    /// The root context id (1, as in Envoy).
    pub fn root_context_id(&self) -> u32 {
        self.with(|i| i.store.data().root_id)
    }

    /// Every log line recorded so far (including WASI stdout at info and stderr at error).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.with(|i| i.store.data().logs.clone())
    }

    /// Log lines recorded so far, clearing them.
    pub fn take_logs(&self) -> Vec<LogEntry> {
        self.with(|i| std::mem::take(&mut i.store.data_mut().logs))
    }

    /// Whether some log message contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.with(|i| i.store.data().logs.iter().any(|l| l.message.contains(text)))
    }

    /// What the module wrote to WASI stdout.
    pub fn stdout(&self) -> String {
        self.with(|i| match &i.store.data().wasi.stdout {
            Sink::Capture(b) => String::from_utf8_lossy(b).into_owned(),
            Sink::Inherit => String::new(),
        })
    }

    /// What the module wrote to WASI stderr.
    pub fn stderr(&self) -> String {
        self.with(|i| match &i.store.data().wasi.stderr {
            Sink::Capture(b) => String::from_utf8_lossy(b).into_owned(),
            Sink::Inherit => String::new(),
        })
    }

    /// HTTP calls waiting for an answer, oldest first.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.with(|i| i.store.data().http_calls.values().cloned().collect())
    }

    /// Answers a pending HTTP call: `proxy_on_http_call_response` runs, then whatever it
    /// resumed. `headers` should include `:status`.
    pub fn respond_http_call(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let h = HeaderMap::from_pairs(headers, false);
        let t = if trailers.is_empty() { None } else { Some(HeaderMap::from_pairs(trailers, false)) };
        self.with(|i| i.deliver_call_response(token, Some((h, body.to_vec(), t))))
    }

    /// [`Emulator::respond_http_call`] with header values as bytes: an answer whose values are
    /// not UTF-8 (`obs-text`, which Envoy passes on), no trailers.
    pub fn respond_http_call_bytes(&self, token: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<()> {
        let h = HeaderMap::from_pairs(headers, false);
        self.with(|i| i.deliver_call_response(token, Some((h, body.to_vec(), None))))
    }

    /// Fails a pending HTTP call as Envoy does on a reset: the response callback gets 0
    /// headers, 0 body bytes and 0 trailers. (Connection failures and timeouts are not this:
    /// Envoy answers them with a 503 or 504 response; see [`Emulator::advance_clock`].)
    pub fn fail_http_call(&self, token: u32) -> Result<()> {
        self.with(|i| i.deliver_call_response(token, None))
    }

    /// Advances the emulated clock, firing each tick and HTTP-call timeout in time order.
    /// A timed-out call gets what Envoy gives it: status 504, `content-length: 24`,
    /// `content-type: text/plain`, body `upstream request timeout`.
    pub fn advance_clock(&self, by: Duration) -> Result<()> {
        self.with(|i| {
            i.pump()?;
            let target = i.store.data().monotonic_ns.saturating_add(by.as_nanos() as u64);
            loop {
                let st = i.store.data();
                let tick = st.next_tick.filter(|t| *t <= target);
                let timeout = st
                    .http_calls
                    .values()
                    .filter_map(|c| c.deadline.map(|d| (d, c.token)))
                    .filter(|(d, _)| *d <= target)
                    .min();
                match (tick, timeout) {
                    (Some(t), to) if to.map(|(d, _)| t <= d).unwrap_or(true) => {
                        i.set_clock(t);
                        let st = i.store.data_mut();
                        st.next_tick = if st.tick_period_ms > 0 {
                            Some(t + u64::from(st.tick_period_ms) * 1_000_000)
                        } else {
                            None
                        };
                        let root = st.root_id;
                        if let Some(f) = i.exports.tick.clone() {
                            i.call("proxy_on_tick", root, |s| f.call(s, root))?;
                        }
                        i.pump()?;
                    }
                    (_, Some((d, token))) => {
                        i.set_clock(d);
                        let h = HeaderMap::from_pairs(
                            &[(":status", "504"), ("content-length", "24"), ("content-type", "text/plain")],
                            false,
                        );
                        i.deliver_call_response(
                            token,
                            Some((h, b"upstream request timeout".to_vec(), None)),
                        )?;
                    }
                    _ => break,
                }
            }
            i.set_clock(target);
            Ok(())
        })
    }

    /// Sets the wall clock (`proxy_get_current_time_nanoseconds`, WASI realtime) without
    /// firing anything.
    pub fn set_time(&self, time: SystemTime) {
        self.with(|i| {
            let st = i.store.data_mut();
            st.realtime_ns = time.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            st.sync_clock();
        })
    }

    /// The current emulated wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.with(|i| UNIX_EPOCH + Duration::from_nanos(i.store.data().realtime_ns))
    }

    /// The tick period the module set (None when 0 / never set).
    pub fn tick_period(&self) -> Option<Duration> {
        self.with(|i| match i.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        })
    }

    /// Value of the counter or gauge (or last histogram value) named `name`.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.with(|i| i.store.data().metrics.get(name).map(|m| m.value))
    }

    /// A gauge's value as Envoy's signed view of it (u64 wrapped below 0).
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.with(|i| {
            i.store.data().metrics.get(name).filter(|m| m.kind == MetricType::Gauge).map(|m| m.value as i64)
        })
    }

    /// Host calls the module made since the emulator was built or [`Emulator::reset_host_calls`],
    /// by import name (`proxy_get_header_map_value`, `fd_write`, ...). Each value a host call
    /// returns also counts one `proxy_on_memory_allocate`: Envoy calls back into the module to
    /// allocate it, a second VM crossing. Calls made in every context are included (root
    /// context, streams, `on_tick`); see [`Stream::host_calls`] for one stream's.
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.with(|i| i.store.data().host_calls.clone())
    }

    /// The total of [`Emulator::host_calls`].
    pub fn host_call_count(&self) -> u64 {
        self.with(|i| i.store.data().host_calls.values().sum())
    }

    /// Starts counting host calls from zero (for every context).
    pub fn reset_host_calls(&self) {
        self.with(|i| {
            let st = i.store.data_mut();
            st.host_calls.clear();
            st.host_calls_by_context.clear();
        })
    }

    /// Every metric the module defined.
    pub fn metrics(&self) -> Vec<Metric> {
        self.with(|i| i.store.data().metrics.values().cloned().collect())
    }

    /// Sets a property for every context (see [`EmulatorBuilder::property`]).
    pub fn set_property(&self, path: impl PropertyPath, value: impl AsRef<[u8]>) {
        self.with(|i| {
            i.store.data_mut().properties.insert(path.key(), value.as_ref().to_vec());
        })
    }

    /// The group this VM belongs to (shared data and queues).
    pub fn group(&self) -> Group {
        self.with(|i| Group { state: i.store.data().group.clone() })
    }

    /// Shared data under `key` in this VM's namespace: value and CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().shared_data(&vm, key)
    }

    /// Sets shared data in this VM's namespace (CAS 0: unconditional); returns the ABI status.
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> u32 {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().set_shared_data(&vm, key, value, cas)
    }

    /// Id of the queue `name` registered in this VM's namespace.
    pub fn queue_id(&self, name: &str) -> Option<u32> {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().queue_id(&vm, name)
    }

    /// Enqueues as another VM would, then delivers `proxy_on_queue_ready` if the queue is this
    /// VM's. Returns the ABI status.
    pub fn enqueue(&self, queue_id: u32, value: &[u8]) -> Result<u32> {
        let st = self.group().enqueue(queue_id, value);
        self.run_pending()?;
        Ok(st)
    }

    /// Delivers what is waiting for this VM: queue notifications (e.g. from another VM of the
    /// group) and deferred stream actions.
    pub fn run_pending(&self) -> Result<()> {
        self.with(Inner::pump)
    }
}

impl Stream {
    fn with<R>(&self, f: impl FnOnce(&mut Inner, u32) -> R) -> R {
        f(&mut self.inner.borrow_mut(), self.id)
    }

    fn drive(&self, side: Side, f: impl FnOnce(&mut Inner, u32) -> Result<Action>) -> Result<Action> {
        self.with(|i, id| {
            i.pump()?;
            i.ensure_created(id)?;
            if i.ended(id) {
                // Envoy calls the filter no more once the stream was reset or answered locally
                // (a response after a local reply never comes).
                return Ok(Action::Pause);
            }
            if side == Side::Response && i.stream(id)?.local_reply_pending {
                return Ok(Action::Pause);
            }
            let a = f(i, id)?;
            i.pump()?;
            Ok(a)
        })
    }

    /// The stream's context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    /// Host calls the module made in this stream's context (see [`Emulator::host_calls`]),
    /// since the stream started or the last [`Emulator::reset_host_calls`].
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.inner.borrow().store.data().host_calls_by_context.get(&self.id).cloned().unwrap_or_default()
    }

    /// The total of [`Stream::host_calls`].
    pub fn host_call_count(&self) -> u64 {
        self.host_calls().values().sum()
    }

    /// Request headers arrive (`proxy_on_request_headers`). Names are lower-cased as Envoy does;
    /// give pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) as the test needs them
    /// (Envoy itself adds `x-request-id`, `x-forwarded-proto` and `:scheme`). Returns the action
    /// Envoy acts on: Pause if the module returned Pause or sent a local reply.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, true);
        self.drive(Side::Request, |i, id| {
            if i.stream(id)?.req.headers_seen {
                return Err(Error::Usage("request headers were already sent on this stream".to_string()));
            }
            i.headers(id, Side::Request, h, end_of_stream)
        })
    }

    /// [`Stream::request_headers`] with values as bytes (`obs-text`, which Envoy's codec accepts
    /// from clients).
    pub fn request_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, true);
        self.drive(Side::Request, |i, id| {
            if i.stream(id)?.req.headers_seen {
                return Err(Error::Usage("request headers were already sent on this stream".to_string()));
            }
            i.headers(id, Side::Request, h, end_of_stream)
        })
    }

    /// A request body chunk arrives. While the filter has the request stopped (headers paused),
    /// the data waits and is given to it when it resumes, as in Envoy. After a Pause from a body
    /// callback the next call sees the buffered data plus the new chunk.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.drive(Side::Request, |i, id| {
            // Envoy counts what it read from the client, whether or not the filter has it yet.
            i.stream(id)?.bytes_received += chunk.len() as u64;
            i.body(id, Side::Request, chunk, end_of_stream)
        })
    }

    /// Request trailers arrive (end of the request).
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let t = HeaderMap::from_pairs(trailers, true);
        self.drive(Side::Request, |i, id| i.trailers(id, Side::Request, t))
    }

    /// Response headers arrive from upstream (`proxy_on_response_headers`).
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, false);
        self.drive(Side::Response, |i, id| {
            i.stream(id)?.code_details.get_or_insert_with(|| "via_upstream".to_string());
            i.headers(id, Side::Response, h, end_of_stream)
        })
    }

    /// A response body chunk arrives.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.drive(Side::Response, |i, id| i.body(id, Side::Response, chunk, end_of_stream))
    }

    /// Response trailers arrive.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let t = HeaderMap::from_pairs(trailers, false);
        self.drive(Side::Response, |i, id| i.trailers(id, Side::Response, t))
    }

    /// Ends the stream: `proxy_on_log` (with the access-log view of the headers), then
    /// `proxy_on_done` and `proxy_on_delete`.
    pub fn log(&mut self) -> Result<()> {
        self.with(|i, id| {
            i.pump()?;
            if !i.store.data().streams.contains_key(&id) {
                // Envoy creates the context for logging a stream it never saw (Context::log).
                i.ensure_created(id)?;
            }
            let ex = i.exports.clone();
            let now = i.store.data().monotonic_ns;
            let s = i.stream(id)?;
            s.phase = Phase::Log;
            // Envoy's requestComplete: request.duration is known from here on.
            s.end_monotonic_ns = Some(now);
            if let Some(f) = ex.log {
                i.call("proxy_on_log", id, |s| f.call(s, id))?;
            }
            i.stream(id)?.phase = Phase::Done;
            if let Some(f) = ex.done {
                i.call("proxy_on_done", id, |s| f.call(s, id))?;
            }
            if let Some(f) = ex.delete {
                i.call("proxy_on_delete", id, |s| f.call(s, id))?;
            }
            i.pump()
        })
    }

    fn read<R>(&self, f: impl FnOnce(&StreamState) -> R) -> Option<R> {
        self.with(|i, id| i.store.data().streams.get(&id).map(f))
    }

    /// The request headers now (what the upstream gets once the filter lets them go).
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.req.headers.to_strings()).unwrap_or_default()
    }

    /// The request headers now with their values as bytes, unchanged (`request_headers_now`
    /// reads bytes that are not UTF-8 as U+FFFD).
    pub fn request_headers_now_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.req.headers.entries.clone()).unwrap_or_default()
    }

    /// The response headers now with their values as bytes, unchanged.
    pub fn response_headers_now_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.resp.headers.entries.clone()).unwrap_or_default()
    }

    /// One request header now (first value; `host` means `:authority`).
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.req.headers.get(name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned()))
            .flatten()
    }

    /// Request body that went past the filter so far.
    pub fn request_body_now(&self) -> Vec<u8> {
        self.read(|s| s.req.forwarded.clone()).unwrap_or_default()
    }

    /// Request body the filter holds buffered (it returned Pause from a body callback).
    pub fn request_body_buffered(&self) -> Vec<u8> {
        self.read(|s| s.req.body.clone()).unwrap_or_default()
    }

    /// Request trailers now.
    pub fn request_trailers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.req.trailers.as_ref().map(HeaderMap::to_strings).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The response headers now (what the client gets; for a local reply, its headers).
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.resp.headers.to_strings()).unwrap_or_default()
    }

    /// One response header now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.resp.headers.get(name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned()))
            .flatten()
    }

    /// Response body that went past the filter so far.
    pub fn response_body_now(&self) -> Vec<u8> {
        self.read(|s| s.resp.forwarded.clone()).unwrap_or_default()
    }

    /// Response trailers now.
    pub fn response_trailers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.resp.trailers.as_ref().map(HeaderMap::to_strings).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The local reply the module sent, if any.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.read(|s| s.local_reply.clone()).flatten()
    }

    /// Whether the module reset the stream (`proxy_close_stream`).
    pub fn was_reset(&self) -> bool {
        self.read(|s| s.reset).unwrap_or(false)
    }

    /// Whether the filter is holding the request (headers or trailers paused, not resumed).
    pub fn request_paused(&self) -> bool {
        self.read(|s| s.req.stopped || s.req.buffering || s.req.held).unwrap_or(false)
    }

    /// Whether the filter is holding the response.
    pub fn response_paused(&self) -> bool {
        self.read(|s| s.resp.stopped || s.resp.buffering || s.resp.held).unwrap_or(false)
    }

    /// Whether the filter will be called no more for this stream (local reply, reset, logged).
    pub fn ended(&self) -> bool {
        self.with(|i, id| i.store.data().streams.contains_key(&id) && i.ended(id))
    }

    /// Sets a property for this stream only (e.g. `source.address`, `connection.id`).
    pub fn set_property(&self, path: impl PropertyPath, value: impl AsRef<[u8]>) {
        self.with(|i, id| {
            let _ = i.ensure_created(id);
            if let Some(s) = i.store.data_mut().streams.get_mut(&id) {
                s.properties.insert(path.key(), value.as_ref().to_vec());
            }
        })
    }

    /// A property the module set on this stream with `proxy_set_property` (Envoy filter state).
    pub fn filter_state(&self, path: impl PropertyPath) -> Option<Vec<u8>> {
        self.read(|s| s.filter_state.get(&path.key()).cloned()).flatten()
    }
}
