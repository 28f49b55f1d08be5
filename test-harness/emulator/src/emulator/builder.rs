//! The builder: what an emulator is configured with before its module starts.

use super::api::{Emulator, PropertyPath};
use super::driver::Inner;
use super::modules::{load_module, load_module_bytes};
use crate::abi::LogLevel;
use crate::group::Group;
use crate::host::{Downstream, HostState, UpstreamModel};
use crate::wasi::WasiCtx;
use crate::Error;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::Module;

type Result<T> = std::result::Result<T, Error>;

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
    pub(super) fn new(module: Result<Module>) -> Self {
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

    /// Whether a property was set (the gateway gives defaults only where the test did not).
    pub(crate) fn has_property(&self, path: impl PropertyPath) -> bool {
        self.properties.contains_key(&path.key())
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
            grpc_calls: BTreeMap::new(),
            next_grpc_token: 1,
            grpc_receive: None,
            grpc_status: (0, None),
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
        Ok(Emulator::from_inner(Inner::start(module, state)?))
    }
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
}
