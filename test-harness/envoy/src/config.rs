//! The Envoy bootstrap the runner generates: one listener with an HTTP connection manager whose
//! filter chain is the configured filters followed by the router, in front of an upstream
//! cluster or a `direct_response` route.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

/// Name of the cluster that points at [`Backend::Upstream`].
pub const UPSTREAM_CLUSTER: &str = "upstream";

/// Stat prefix of the HTTP connection manager (`http.ingress_http.*` stats).
pub const HCM_STAT_PREFIX: &str = "ingress_http";

/// A proxy-wasm HTTP filter (`envoy.filters.http.wasm`, V8 runtime, code from a local file).
#[derive(Debug, Clone, PartialEq)]
pub struct WasmFilter {
    /// Path to the `.wasm` module.
    pub path: PathBuf,
    /// Plugin name (`config.name`); defaults to the file stem.
    pub name: Option<String>,
    /// Root id the module registers its root context under (often empty).
    pub root_id: String,
    /// Plugin configuration, passed to the module as a string (usually JSON).
    pub configuration: String,
    /// VM id; filters with the same VM id and code share one VM.
    pub vm_id: Option<String>,
    /// VM configuration passed to `on_vm_start` (rarely needed).
    pub vm_configuration: Option<String>,
}

impl WasmFilter {
    /// A filter for a module with empty root id and empty configuration.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        WasmFilter {
            path: path.into(),
            name: None,
            root_id: String::new(),
            configuration: String::new(),
            vm_id: None,
            vm_configuration: None,
        }
    }

    /// Sets the plugin configuration string.
    pub fn configuration(mut self, configuration: impl Into<String>) -> Self {
        self.configuration = configuration.into();
        self
    }

    /// Sets the plugin configuration to serialized JSON.
    pub fn json_configuration(self, configuration: &Value) -> Self {
        self.configuration(configuration.to_string())
    }

    /// Sets the root id.
    pub fn root_id(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = root_id.into();
        self
    }

    /// Sets the VM id.
    pub fn vm_id(mut self, vm_id: impl Into<String>) -> Self {
        self.vm_id = Some(vm_id.into());
        self
    }

    /// Sets the plugin name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The HTTP filter entry (`{"name": "envoy.filters.http.wasm", "typed_config": ...}`).
    ///
    /// With `$GATEWASM_ENVOY_BUNDLE` set (see [`BUNDLE_VAR`]), a filter whose module is one of the
    /// bundle's runs from the bundle module instead, under the filter's root id.
    pub fn to_json(&self) -> Value {
        let name = self.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "wasm".to_string())
        });
        let (path, root_id) = match bundle_substitute(&self.path, &self.root_id) {
            Some((bundle, root_id)) => (bundle, root_id),
            None => (self.path.clone(), self.root_id.clone()),
        };
        let mut vm_config = serde_json::Map::new();
        vm_config.insert("runtime".into(), json!("envoy.wasm.runtime.v8"));
        vm_config.insert("code".into(), json!({ "local": { "filename": path.to_string_lossy() } }));
        if let Some(vm_id) = &self.vm_id {
            vm_config.insert("vm_id".into(), json!(vm_id));
        }
        if let Some(vm_configuration) = &self.vm_configuration {
            vm_config.insert("configuration".into(), string_value(vm_configuration));
        }
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "root_id": root_id,
                    "configuration": string_value(&self.configuration),
                    "vm_config": vm_config,
                }
            }
        })
    }
}

/// Environment variable that runs the filters' own Envoy tests against the bundle module: its
/// path (relative to the workspace root), or `1` for `gatewasm.wasm` in the modules' directory.
/// Every [`WasmFilter`] whose module is one of [`BUNDLED`] then loads the bundle with that
/// filter's root id (unless the test set a root id of its own).
pub const BUNDLE_VAR: &str = "GATEWASM_ENVOY_BUNDLE";

/// The single-filter modules the bundle holds, with the root id that selects each in it.
pub const BUNDLED: [(&str, &str); 5] = [
    ("jwt_auth.wasm", "jwt-auth"),
    ("ext_auth.wasm", "ext-auth"),
    ("header_rewrite.wasm", "header-rewrite"),
    ("http_metrics.wasm", "http-metrics"),
    ("kafka_log.wasm", "kafka-log"),
];

fn bundle_substitute(path: &std::path::Path, root_id: &str) -> Option<(PathBuf, String)> {
    let bundle = std::env::var_os(BUNDLE_VAR).filter(|v| !v.is_empty())?;
    let file = path.file_name()?.to_str()?;
    let (_, id) = BUNDLED.iter().find(|(f, _)| *f == file)?;
    let bundle = if bundle == "1" {
        // A missing bundle leaves the path as it would be; Envoy's load error then names it.
        gatewasm_paths::wasm_file("gatewasm.wasm", gatewasm_paths::BUNDLE_PACKAGE)
            .unwrap_or_else(|missing| missing.path)
    } else {
        gatewasm_paths::workspace_root().join(bundle)
    };
    let root_id = if root_id.is_empty() { id.to_string() } else { root_id.to_string() };
    Some((bundle, root_id))
}

/// A filter built as a native Envoy dynamic module (`envoy.filters.http.dynamic_modules`):
/// `lib<name>.so`, found by Envoy under `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` (the runner sets it
/// to the module's directory), the plugin chosen by `filter_name`, its configuration passed as a
/// `google.protobuf.StringValue` (the same JSON a Wasm filter gets).
#[derive(Debug, Clone, PartialEq)]
pub struct NativeFilter {
    /// Path to the `.so`.
    pub path: PathBuf,
    /// The plugin in the module (`filter_name`: the plugin's name, `Plugin::NAME`).
    pub filter_name: String,
    /// Plugin configuration, passed as a string (usually JSON).
    pub configuration: String,
}

/// The runtime flag that makes Envoy 1.40 strip a dynamic module's metrics namespace in
/// `/stats/prometheus` (and not add `envoy_`), as it does for Wasm's: with it the native and
/// Wasm targets show the same Prometheus series. The runner sets it whenever a native filter is
/// in the chain.
pub const STRIP_MODULE_STAT_PREFIX: &str =
    "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

impl NativeFilter {
    /// A filter for the module at `path` serving plugin `filter_name`, empty configuration.
    pub fn new(path: impl Into<PathBuf>, filter_name: impl Into<String>) -> Self {
        NativeFilter { path: path.into(), filter_name: filter_name.into(), configuration: String::new() }
    }

    /// Sets the plugin configuration string.
    pub fn configuration(mut self, configuration: impl Into<String>) -> Self {
        self.configuration = configuration.into();
        self
    }

    /// Sets the plugin configuration to serialized JSON.
    pub fn json_configuration(self, configuration: &Value) -> Self {
        self.configuration(configuration.to_string())
    }

    /// The library name (`libhello.so` → `hello`), Envoy's `dynamic_module_config.name`.
    pub fn module_name(&self) -> String {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        stem.strip_prefix("lib").unwrap_or(&stem).to_string()
    }

    /// The directory Envoy must search for the module.
    pub fn dir(&self) -> PathBuf {
        self.path.parent().map(PathBuf::from).unwrap_or_default()
    }

    /// The HTTP filter entry.
    pub fn to_json(&self) -> Value {
        json!({
            "name": "envoy.filters.http.dynamic_modules",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": { "name": self.module_name() },
                "filter_name": self.filter_name,
                "filter_config": string_value(&self.configuration),
            }
        })
    }
}

/// What Envoy 1.40 logs when a dynamic module's configuration hook refuses the configuration
/// (the module's own message, naming the field, comes before it).
pub const NATIVE_REFUSAL: &str = "Failed to create filter config: Failed to initialize dynamic module";

/// Which build of a filter a test runs: the proxy-wasm module or the native dynamic module.
/// A filter's Envoy tests take one and run once per target ([`crate::for_each_target!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `<package>.wasm` in Envoy's V8 (`envoy.filters.http.wasm`).
    Wasm,
    /// `lib<package>.so` as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`).
    Native,
}

impl Target {
    /// The filter entry for `package`'s module on this target, serving plugin `name` (the
    /// Wasm plugin name and the native `filter_name`) with `configuration`. The module is built
    /// first when missing or older than its sources (`gatewasm_paths`: once per process, under
    /// a lock parallel tests share); errors name the build command and why when it cannot be.
    pub fn filter(self, package: &str, name: &str, configuration: &Value) -> anyhow::Result<HttpFilter> {
        Ok(match self {
            Target::Wasm => {
                let path = gatewasm_paths::wasm_module(package)?;
                HttpFilter::Wasm(WasmFilter::new(path).name(name).json_configuration(configuration))
            }
            Target::Native => {
                let path = gatewasm_paths::native_module(package)?;
                HttpFilter::Native(NativeFilter::new(path, name).json_configuration(configuration))
            }
        })
    }
}

fn string_value(value: &str) -> Value {
    json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": value })
}

/// One entry of the HTTP filter chain (before the router, in the order added).
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilter {
    /// A proxy-wasm filter.
    Wasm(WasmFilter),
    /// A native filter (Envoy dynamic module).
    Native(NativeFilter),
    /// Any other filter as raw JSON: `{"name": ..., "typed_config": {"@type": ..., ...}}`.
    Raw(Value),
}

impl HttpFilter {
    /// `envoy.filters.http.header_mutation` with the given `mutations` object
    /// (`{"request_mutations": [...], "response_mutations": [...]}`).
    pub fn header_mutation(mutations: Value) -> Self {
        HttpFilter::Raw(json!({
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": mutations,
            }
        }))
    }

    /// `envoy.filters.http.lua` with inline Lua source.
    pub fn lua(source: &str) -> Self {
        HttpFilter::Raw(json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": { "inline_string": source },
            }
        }))
    }

    /// The HTTP filter entry as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            HttpFilter::Wasm(wasm) => wasm.to_json(),
            HttpFilter::Native(native) => native.to_json(),
            HttpFilter::Raw(raw) => raw.clone(),
        }
    }
}

impl From<WasmFilter> for HttpFilter {
    fn from(wasm: WasmFilter) -> Self {
        HttpFilter::Wasm(wasm)
    }
}

/// Where the listener's single route goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Forward to the `upstream` cluster at this loopback address.
    Upstream(SocketAddr),
    /// Answer from Envoy itself.
    DirectResponse {
        /// Status code.
        status: u16,
        /// Body (inline string).
        body: String,
    },
}

/// An extra cluster (for callouts from filters: JWKS, auth service, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Cluster name, as filters refer to it.
    pub name: String,
    /// Loopback address of the single endpoint.
    pub addr: SocketAddr,
    /// Connect timeout (default 1 s).
    pub connect_timeout: Option<Duration>,
    /// Speak HTTP/2 to the endpoint (gRPC services: Envoy's `ext_authz`, `ratelimit`, ...).
    pub http2: bool,
    /// List no endpoint (`addr` unused): a cluster with no healthy host, which Envoy fails a
    /// request to at once.
    pub no_endpoints: bool,
}

impl Cluster {
    /// A cluster with one endpoint.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Cluster { name: name.into(), addr, connect_timeout: None, http2: false, no_endpoints: false }
    }

    /// Lists no endpoint: Envoy fails every request to the cluster at once ("no healthy
    /// upstream").
    pub fn without_endpoints(mut self) -> Self {
        self.no_endpoints = true;
        self
    }

    /// Speaks HTTP/2 (prior knowledge, no TLS) to the endpoint, as a gRPC service needs.
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    fn to_json(&self) -> anyhow::Result<Value> {
        let mut cluster =
            cluster_json(&self.name, self.addr, self.connect_timeout.unwrap_or(Duration::from_secs(1)))?;
        if self.no_endpoints {
            merge(&mut cluster, &json!({ "load_assignment": { "endpoints": [] } }));
        }
        if self.http2 {
            merge(
                &mut cluster,
                &json!({ "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                }}),
            );
        }
        Ok(cluster)
    }
}

fn cluster_json(name: &str, addr: SocketAddr, connect_timeout: Duration) -> anyhow::Result<Value> {
    if !addr.ip().is_loopback() {
        bail!("cluster {name}: {addr} is not a loopback address; tests may only target loopback");
    }
    Ok(json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration(connect_timeout),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(addr) } }] }]
        }
    }))
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// A protobuf JSON duration string (`"1.500s"`).
pub fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// Everything that goes into the generated bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapSpec {
    /// HTTP filters before the router, in order.
    pub filters: Vec<HttpFilter>,
    /// Where the route goes.
    pub backend: Backend,
    /// Extra clusters.
    pub clusters: Vec<Cluster>,
    /// Route timeout for [`Backend::Upstream`].
    pub route_timeout: Duration,
    /// Merged into the HTTP connection manager's typed config (e.g. `access_log`).
    pub hcm_patches: Vec<Value>,
    /// Merged into the route (e.g. `typed_per_filter_config`, `request_headers_to_add`).
    pub route_patches: Vec<Value>,
    /// Merged into the bootstrap at the top level (e.g. `stats_config`).
    pub bootstrap_patches: Vec<Value>,
    /// Listener port on 127.0.0.1; 0 (the default, and what tests use) picks a free one.
    pub listener_port: u16,
    /// Admin port on 127.0.0.1; 0 (the default) picks a free one.
    pub admin_port: u16,
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        BootstrapSpec {
            filters: Vec::new(),
            backend: Backend::DirectResponse { status: 200, body: String::new() },
            clusters: Vec::new(),
            route_timeout: Duration::from_secs(30),
            hcm_patches: Vec::new(),
            route_patches: Vec::new(),
            bootstrap_patches: Vec::new(),
            listener_port: 0,
            admin_port: 0,
        }
    }
}

impl BootstrapSpec {
    /// The directory of the native filters' modules (Envoy's `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`);
    /// `None` without native filters. Every native filter of one Envoy comes from one directory.
    pub fn native_dir(&self) -> Option<PathBuf> {
        self.filters.iter().find_map(|f| match f {
            HttpFilter::Native(native) => Some(native.dir()),
            _ => None,
        })
    }

    /// The bootstrap JSON. Listener and admin bind to 127.0.0.1 port 0; the runner reads the
    /// real ports back.
    pub fn to_json(&self) -> anyhow::Result<Value> {
        let mut route = match &self.backend {
            Backend::Upstream(_) => json!({
                "match": { "prefix": "/" },
                "route": { "cluster": UPSTREAM_CLUSTER, "timeout": duration(self.route_timeout) },
            }),
            Backend::DirectResponse { status, body } => json!({
                "match": { "prefix": "/" },
                "direct_response": { "status": status, "body": { "inline_string": body } },
            }),
        };
        for patch in &self.route_patches {
            merge(&mut route, patch);
        }

        let mut http_filters: Vec<Value> = self.filters.iter().map(HttpFilter::to_json).collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
        }));

        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": HCM_STAT_PREFIX,
            "route_config": {
                "name": "local_route",
                "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route] }]
            },
            "http_filters": http_filters,
        });
        for patch in &self.hcm_patches {
            merge(&mut hcm, patch);
        }

        let mut clusters = Vec::new();
        if let Backend::Upstream(addr) = &self.backend {
            clusters.push(cluster_json(UPSTREAM_CLUSTER, *addr, Duration::from_secs(1))?);
        }
        for cluster in &self.clusters {
            clusters.push(cluster.to_json()?);
        }

        let loopback =
            |port: u16| json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
        let mut bootstrap = json!({
            "node": { "id": "gatewasm-test", "cluster": "gatewasm-test" },
            "admin": { "address": loopback(self.admin_port) },
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": loopback(self.listener_port),
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }]
                    }]
                }],
                "clusters": clusters,
            }
        });
        if self.native_dir().is_some() {
            merge(
                &mut bootstrap,
                &json!({"layered_runtime": {"layers": [{
                    "name": "gatewasm-native",
                    "static_layer": { STRIP_MODULE_STAT_PREFIX: true }
                }]}}),
            );
        }
        for patch in &self.bootstrap_patches {
            merge(&mut bootstrap, patch);
        }
        Ok(bootstrap)
    }
}

/// Deep-merges `patch` into `target`: objects merge key by key, anything else (arrays included)
/// replaces. A `null` in the patch removes the key.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_cluster_says_so() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let plain = Cluster::new("c", addr).to_json().unwrap();
        assert!(plain.get("typed_extension_protocol_options").is_none());
        let h2 = Cluster::new("c", addr).http2().to_json().unwrap();
        let options =
            &h2["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(options["explicit_http_config"], json!({ "http2_protocol_options": {} }));
        assert_eq!(h2["load_assignment"], plain["load_assignment"]);
    }

    #[test]
    fn merge_is_deep_and_null_removes() {
        let mut a = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut a, &json!({"a": {"b": 3, "c": null}, "d": [2, 3]}));
        assert_eq!(a, json!({"a": {"b": 3}, "d": [2, 3]}));
    }

    #[test]
    fn non_loopback_cluster_is_refused() {
        let spec = BootstrapSpec {
            clusters: vec![Cluster::new("x", "10.0.0.1:80".parse().unwrap())],
            ..Default::default()
        };
        assert!(spec.to_json().is_err());
    }
}
