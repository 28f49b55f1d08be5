//! Benchmark scenarios and wrk driving for the `gatewasm-bench` binary.
//!
//! A scenario file (JSON, see `bench/header-rewrite.json`) names the request path, what a
//! filter must have done (request headers the upstream sees, response headers the client sees)
//! and rows, each a filter chain of raw Envoy filters, `{"wasm": {...}}` entries or
//! `{"module": {...}}` entries (the same filter built as a native dynamic module). The bare
//! Envoy row and the Wasm floor row (noop filter) are always added in front, then the native floor
//! row (noop-module) when its `.so` is built.

use crate::LocalProcess;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    noop_filter_wasm, wasm_artifact, workspace_root, Cluster, EchoUpstream, EnvoyBuilder, FixedUpstream,
    HttpFilter, NativeFilter, Reply, Request, WasmFilter,
};

/// Key of the always-present bare Envoy row.
pub const BARE: &str = "bare";
/// Key of the always-present Wasm floor row (noop filter).
pub const FLOOR: &str = "floor";
/// Key of the native floor row (noop-module, an SDK filter that does nothing, as a dynamic
/// module), present whenever `libnoop_module.so` is built.
pub const NATIVE_FLOOR: &str = "native-floor";

/// A benchmark scenario as read from its JSON file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, e.g. `header-rewrite`.
    pub name: String,
    /// What the filters do.
    #[serde(default)]
    pub description: String,
    /// Request path wrk and the checks use.
    #[serde(default = "default_path")]
    pub path: String,
    /// What every row except bare and floor must do, unless the row says itself.
    #[serde(default)]
    pub expect: Expect,
    /// Row key the ratio column compares against (usually `native`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// The scenario's rows (bare and floor are added in front).
    pub rows: Vec<RowSpec>,
    /// Local services the rows call (an auth service, say): each is started once, answers every
    /// request with its reply, and is an Envoy cluster of that name in the scenario's rows.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// A wrk Lua script (`wrk -s`, path relative to the workspace root) for requests that change
    /// from one to the next, a fresh token each, say; `path` is still the request the checks
    /// before timing send.
    #[serde(default)]
    pub wrk_script: Option<PathBuf>,
    /// Local programs the rows call (the Kafka bridge, say): each is started once on a free
    /// loopback port and is an Envoy cluster of that name in the scenario's rows.
    #[serde(default)]
    pub processes: Vec<ProcessSpec>,
    /// Every row (bare and floors too) forwards to a local upstream answering 200 `ok` instead
    /// of answering with a direct response: for filters that act only on routes to a cluster
    /// (Envoy's `ratelimit` skips direct responses).
    #[serde(default)]
    pub upstream: bool,
}

/// A local program a scenario's filters call out to, started by the bench.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Envoy cluster name the filters use.
    pub cluster: String,
    /// Executable, relative to the workspace root (e.g. `target/release/<binary>`).
    pub command: PathBuf,
    /// Cargo package that builds `command` (named in the error when it is missing).
    #[serde(default)]
    pub package: Option<String>,
    /// Arguments; `{addr}` becomes the `127.0.0.1:<port>` it must listen on, `{root}` the
    /// workspace root (for files of the scenario, whatever the directory the bench runs in).
    #[serde(default)]
    pub args: Vec<String>,
    /// The cluster speaks HTTP/2 (a gRPC service).
    #[serde(default)]
    pub http2: bool,
}

impl ProcessSpec {
    /// Starts the program and waits until it accepts connections.
    fn start(&self) -> anyhow::Result<LocalProcess> {
        let build = self.package.as_deref().map(|p| format!("cargo build --release -p {p}"));
        let root = workspace_root();
        let args: Vec<String> =
            self.args.iter().map(|a| a.replace("{root}", &root.to_string_lossy())).collect();
        LocalProcess::start(&root.join(&self.command), &args, build.as_deref(), None)
    }
}

/// A local service a scenario's filters call out to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Envoy cluster name the filters use.
    pub cluster: String,
    /// Status of every answer (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Headers of every answer.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body of every answer.
    #[serde(default)]
    pub body: String,
}

fn default_status() -> u16 {
    200
}

/// The running services and processes of a scenario; they stop when the last row holding them
/// is dropped.
pub struct Services(Vec<FixedUpstream>, Vec<LocalProcess>);

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(FixedUpstream::addr))
            .entries(self.1.iter().map(LocalProcess::id))
            .finish()
    }
}

fn default_path() -> String {
    "/".to_string()
}

/// Effects a filter row must show before it is timed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status the client must get (default 200): a row that answers the request itself
    /// (a redirect, say) gives its own. Bare and floor answer 200.
    #[serde(default)]
    pub status: Option<u16>,
    /// Headers the upstream must receive (checked against the echo upstream).
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Headers the client must receive.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
}

/// One row of a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Short key (`native`, `lua`, `wasm`, …).
    pub key: String,
    /// Label in the table.
    pub label: String,
    /// Footnote for the table.
    #[serde(default)]
    pub note: Option<String>,
    /// The filter chain, before the router: raw Envoy HTTP filters
    /// (`{"name": ..., "typed_config": ...}`), `{"wasm": WasmSpec}` or `{"module": ModuleSpec}`.
    pub filters: Vec<Value>,
    /// Merged into the HTTP connection manager's typed config, for work that is not an HTTP
    /// filter (a native `access_log`, say).
    #[serde(default)]
    pub hcm_patch: Option<Value>,
    /// What this row must do instead of the scenario's `expect`: for rows whose filters show
    /// the same work differently (Envoy's own filter writing its own header names, say).
    #[serde(default)]
    pub expect: Option<Expect>,
    /// Merged into the single route, for work Envoy's route does itself (a `redirect` or a
    /// `direct_response` with headers); `null` removes a key (`"route": null`,
    /// `"direct_response": null`).
    #[serde(default)]
    pub route_patch: Option<Value>,
}

/// A proxy-wasm module in a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmSpec {
    /// Artifact file name in `target/wasm32-wasip1/release/` (with `package`).
    #[serde(default)]
    pub file: Option<String>,
    /// Workspace package that builds `file` (named in the error when it is missing).
    #[serde(default)]
    pub package: Option<String>,
    /// Or an explicit path (relative paths are relative to the workspace root).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Root id.
    #[serde(default)]
    pub root_id: String,
    /// Plugin configuration: a JSON string is passed as is, anything else serialised.
    #[serde(default)]
    pub configuration: Value,
    /// VM id.
    #[serde(default)]
    pub vm_id: Option<String>,
}

impl WasmSpec {
    /// The module path; errors (naming the build command) when it is not built.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.path {
            let path = workspace_root().join(path);
            if !path.is_file() {
                bail!("{} not found", path.display());
            }
            return Ok(path);
        }
        match (&self.file, &self.package) {
            (Some(file), Some(package)) => wasm_artifact(file, package),
            _ => bail!("a wasm entry needs `path`, or `file` and `package`"),
        }
    }

    fn filter(&self) -> anyhow::Result<WasmFilter> {
        let configuration = configuration_text(&self.configuration);
        let mut filter =
            WasmFilter::new(self.resolve()?).root_id(self.root_id.clone()).configuration(configuration);
        if let Some(vm_id) = &self.vm_id {
            filter = filter.vm_id(vm_id.clone());
        }
        Ok(filter)
    }
}

/// A filter built as a native Envoy dynamic module (`lib<package>.so`) in a scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// Workspace package that builds the module (`cargo build --release -p <package>`).
    pub package: String,
    /// The plugin in the module (its `Plugin::NAME`).
    pub filter_name: String,
    /// Plugin configuration: a JSON string is passed as is, anything else serialised.
    #[serde(default)]
    pub configuration: Value,
}

impl ModuleSpec {
    /// The filter; errors (naming the build command) when the module is not built.
    fn filter(&self) -> anyhow::Result<NativeFilter> {
        let path = gatewasm_paths::native_module(&self.package)?;
        Ok(NativeFilter::new(path, self.filter_name.clone())
            .configuration(configuration_text(&self.configuration)))
    }
}

/// A scenario's `configuration` as the string a filter gets: a JSON string as is, anything else
/// serialised.
fn configuration_text(configuration: &Value) -> String {
    match configuration {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A row ready to run: resolved filters.
#[derive(Debug, Clone)]
pub struct Row {
    /// Short key.
    pub key: String,
    /// Label in the table.
    pub label: String,
    /// Footnote.
    pub note: Option<String>,
    /// Whether the row's expectations apply (not for bare and floor).
    pub check_effects: bool,
    /// What the row must do: its own `expect`, or the scenario's.
    pub expect: Expect,
    /// The filter chain.
    pub filters: Vec<HttpFilter>,
    /// Clusters of the scenario's services (empty for bare and floor).
    pub clusters: Vec<Cluster>,
    /// Keeps the services those clusters point at running.
    pub services: Option<std::sync::Arc<Services>>,
    /// Merged into the HTTP connection manager's typed config.
    pub hcm_patch: Option<Value>,
    /// Merged into the route.
    pub route_patch: Option<Value>,
}

impl Row {
    /// An Envoy builder with this row's filters and clusters (backend still to choose).
    pub fn builder(&self) -> EnvoyBuilder {
        let builder = self.filters.iter().cloned().fold(EnvoyBuilder::new(), EnvoyBuilder::filter);
        let builder = self.clusters.iter().cloned().fold(builder, EnvoyBuilder::cluster);
        let builder = self.hcm_patch.iter().cloned().fold(builder, EnvoyBuilder::hcm_patch);
        self.route_patch.iter().cloned().fold(builder, EnvoyBuilder::route_patch)
    }
}

/// A row that cannot run, and why (e.g. its module is not built yet).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// Row label.
    pub label: String,
    /// Reason.
    pub reason: String,
}

impl Scenario {
    /// The `configuration` of the Wasm filter in row `key` (its first filter): what the filters'
    /// host-call tests run, so they pin the calls of exactly the configuration benchmarked.
    pub fn wasm_configuration(&self, key: &str) -> Option<Value> {
        let row = self.rows.iter().find(|r| r.key == key)?;
        row.filters.first()?.get("wasm")?.get("configuration").cloned()
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))
    }

    /// The rows to run: bare, floor, then the scenario's rows. Rows whose modules are missing are
    /// returned as skipped; the floor module is required.
    pub fn rows(&self) -> anyhow::Result<(Vec<Row>, Vec<Skipped>)> {
        let mut started = Vec::new();
        let mut clusters = Vec::new();
        for service in &self.services {
            let reply =
                service.headers.iter().fold(
                    Reply::status(service.status).body(service.body.clone()),
                    |reply, (name, value)| reply.header(name, value),
                );
            let upstream = FixedUpstream::start(reply)
                .with_context(|| format!("starting service for cluster {}", service.cluster))?;
            clusters.push(Cluster::new(service.cluster.clone(), upstream.addr()));
            started.push(upstream);
        }
        let mut children = Vec::new();
        for process in &self.processes {
            // Kept in `children` at once, so an error below still stops what already started.
            match process.start() {
                Ok(child) => {
                    let cluster = Cluster::new(process.cluster.clone(), child.addr());
                    clusters.push(if process.http2 { cluster.http2() } else { cluster });
                    children.push(child);
                }
                Err(err) => {
                    drop(Services(Vec::new(), children));
                    return Err(err.context(format!("process for cluster {}", process.cluster)));
                }
            }
        }
        let services = (!started.is_empty() || !children.is_empty())
            .then(|| std::sync::Arc::new(Services(started, children)));
        let mut rows = vec![
            Row {
                key: BARE.to_string(),
                label: "bare Envoy".to_string(),
                note: None,
                check_effects: false,
                expect: Expect::default(),
                filters: Vec::new(),
                clusters: Vec::new(),
                services: None,
                hcm_patch: None,
                route_patch: None,
            },
            Row {
                key: FLOOR.to_string(),
                label: "Wasm floor (noop filter)".to_string(),
                note: None,
                check_effects: false,
                expect: Expect::default(),
                filters: vec![HttpFilter::Wasm(WasmFilter::new(noop_filter_wasm()?).configuration("{}"))],
                clusters: Vec::new(),
                services: None,
                hcm_patch: None,
                route_patch: None,
            },
        ];
        let mut skipped = Vec::new();
        let native_floor = ModuleSpec {
            package: "noop-module".to_string(),
            filter_name: "noop".to_string(),
            configuration: Value::Null,
        };
        match native_floor.filter() {
            Ok(filter) => rows.push(Row {
                key: NATIVE_FLOOR.to_string(),
                label: "native floor (SDK filter that does nothing, dynamic module)".to_string(),
                note: None,
                check_effects: false,
                expect: Expect::default(),
                route_patch: None,
                filters: vec![HttpFilter::Native(filter)],
                clusters: Vec::new(),
                services: None,
                hcm_patch: None,
            }),
            Err(err) => {
                skipped.push(Skipped { label: "native floor".to_string(), reason: format!("{err:#}") })
            }
        }
        'rows: for spec in &self.rows {
            let mut filters = Vec::new();
            for filter in &spec.filters {
                let resolved = if let Some(wasm) = filter.get("wasm") {
                    let wasm: WasmSpec = serde_json::from_value(wasm.clone())
                        .with_context(|| format!("row {}: bad wasm entry {wasm}", spec.label))?;
                    wasm.filter().map(HttpFilter::Wasm)
                } else if let Some(module) = filter.get("module") {
                    let module: ModuleSpec = serde_json::from_value(module.clone())
                        .with_context(|| format!("row {}: bad module entry {module}", spec.label))?;
                    module.filter().map(HttpFilter::Native)
                } else {
                    filters.push(HttpFilter::Raw(filter.clone()));
                    continue;
                };
                match resolved {
                    Ok(filter) => filters.push(filter),
                    Err(err) => {
                        skipped.push(Skipped { label: spec.label.clone(), reason: format!("{err:#}") });
                        continue 'rows;
                    }
                }
            }
            rows.push(Row {
                key: spec.key.clone(),
                label: spec.label.clone(),
                note: spec.note.clone(),
                check_effects: true,
                expect: spec.expect.clone().unwrap_or_else(|| self.expect.clone()),
                filters,
                clusters: clusters.clone(),
                services: services.clone(),
                hcm_patch: spec.hcm_patch.clone(),
                route_patch: spec.route_patch.clone(),
            });
        }
        Ok((rows, skipped))
    }

    /// The status `row` must answer: the scenario's for rows that do its work, 200 for bare and
    /// floor.
    pub fn expected_status(&self, row: &Row) -> u16 {
        match row.expect.status {
            Some(status) if row.check_effects => status,
            _ => 200,
        }
    }

    /// Runs a row's chain in front of the echo upstream and checks the expected effects.
    pub fn preflight(&self, row: &Row) -> anyhow::Result<()> {
        let upstream = EchoUpstream::start()?;
        let envoy = row
            .builder()
            .upstream(upstream.addr())
            .log_level("warning")
            .start()
            .with_context(|| format!("starting Envoy for row {}", row.label))?;
        let response = envoy.send(&Request::get(&self.path))?;
        if response.status != self.expected_status(row) {
            bail!("row {}: status {} ({})", row.label, response.status, response.text());
        }
        if row.check_effects && !row.expect.request_headers.is_empty() {
            let echo = response.echo()?;
            for (name, value) in &row.expect.request_headers {
                if echo.header(name) != Some(value.as_str()) {
                    bail!(
                        "row {}: upstream did not receive {name}: {value}; it got {:?}",
                        row.label,
                        echo.headers
                    );
                }
            }
        }
        self.check_response_headers(row, &response)?;
        Ok(())
    }

    /// Checks the expected response headers (for rows that have effects).
    pub fn check_response_headers(&self, row: &Row, response: &crate::Response) -> anyhow::Result<()> {
        if !row.check_effects {
            return Ok(());
        }
        for (name, value) in &row.expect.response_headers {
            if response.header(name) != Some(value.as_str()) {
                bail!("row {}: response lacks {name}: {value}; headers {:?}", row.label, response.headers);
            }
        }
        Ok(())
    }
}

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Completed requests.
    pub requests: u64,
    /// Non-2xx/3xx responses.
    pub non_2xx: u64,
    /// Sum of connect/read/write/timeout socket errors.
    pub socket_errors: u64,
    /// Median latency as wrk prints it (e.g. `1.23ms`), if `--latency` was given.
    pub p50: Option<String>,
    /// 99th percentile latency as wrk prints it.
    pub p99: Option<String>,
    /// Envoy's own CPU time (user + system) per request over the timed run, in µs: steadier
    /// than req/s on a shared machine, since time other processes take is not in it.
    pub envoy_cpu_us: Option<f64>,
}

/// CPU time a process has used so far (user + system, all threads), from `/proc/<pid>/stat`;
/// `None` where that cannot be read (not Linux, the process gone).
pub fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing ')' are plain.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|t| *t > 0)?;
    Some(std::time::Duration::from_micros(ticks.saturating_mul(1_000_000) / per_second))
}

/// How to run wrk.
#[derive(Debug, Clone)]
pub struct WrkOptions {
    /// `-t`.
    pub threads: u32,
    /// `-c`.
    pub connections: u32,
    /// `-d` in seconds.
    pub duration_secs: u32,
    /// Pin wrk to these CPUs (via `taskset`).
    pub cpus: Option<Vec<usize>>,
    /// A Lua script for wrk (`-s`).
    pub script: Option<PathBuf>,
}

/// Runs wrk against a URL (which must be on 127.0.0.1) and parses its report.
pub fn run_wrk(url: &str, options: &WrkOptions) -> anyhow::Result<WrkResult> {
    if !url.starts_with("http://127.0.0.1:") {
        bail!("refusing to load anything but 127.0.0.1: {url}");
    }
    let mut command = match &options.cpus {
        Some(cpus) => {
            let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list.join(",")).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    command
        .arg(format!("-t{}", options.threads))
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{}s", options.duration_secs))
        .arg("--latency");
    if let Some(script) = &options.script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let output = command.output().context("running wrk (is it installed? apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text)
}

/// Parses wrk's text report.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut rps = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    let mut p50 = None;
    let mut p99 = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().context("parsing wrk's non-2xx count")?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = Some(rest.trim().to_string());
        }
    }
    match (rps, requests) {
        (Some(rps), Some(requests)) => {
            Ok(WrkResult { rps, requests, non_2xx, socket_errors, p50, p99, envoy_cpu_us: None })
        }
        _ => bail!("could not parse wrk output:\n{text}"),
    }
}

/// The median of a non-empty list (mean of the middle two for even lengths); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match (sorted.get(n / 2), n % 2) {
        (Some(&mid), 1) => mid,
        (Some(&upper), _) => sorted.get(n / 2 - 1).map_or(upper, |&lower| (lower + upper) / 2.0),
        (None, _) => 0.0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n  \
        Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   450.00us  100.00us   2.00ms   90.00%\n  \
        Latency Distribution\n     50%  420.00us\n     75%  480.00us\n     90%  520.00us\n     99%    1.10ms\n  \
        70000 requests in 2.00s, 9.00MB read\n  Non-2xx or 3xx responses: 3\n  \
        Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:  35000.50\nTransfer/sec:      4.50MB\n";

    #[test]
    fn parses_wrk_report() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 70000);
        assert_eq!(r.non_2xx, 3);
        assert_eq!(r.socket_errors, 3);
        assert!((r.rps - 35000.5).abs() < 1e-9);
        assert_eq!(r.p50.as_deref(), Some("420.00us"));
        assert_eq!(r.p99.as_deref(), Some("1.10ms"));
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                Scenario::load(&path).unwrap();
            }
        }
    }
}
