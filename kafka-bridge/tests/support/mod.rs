//! What the bridge's tests start: the bridge itself, a `tansu` Kafka-protocol broker with
//! memory storage, and an independent consumer (kafka-python), all on 127.0.0.1 with free
//! ports, each stopped when dropped (and killed with the test process if it dies).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls (prctl,
    // getppid) on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            // Dies with the test process, so nothing outlives a run.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn().unwrap_or_else(|e| panic!("spawning {command:?}: {e}"))
}

/// SIGTERM, then SIGKILL after `grace`; returns whether it exited by itself in time.
fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn wait_listening(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            panic!("{what} not listening on {addr}; log:\n{}", read_lossy(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The tansu binary: `$TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file());
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path.or(home.filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!(
            "no tansu broker: ./scripts/test installs it (cargo install --locked --version 0.6.0 tansu \
             --features dynostore), or set TANSU_BIN"
        )
    })
}

/// A tansu broker with memory storage on 127.0.0.1.
pub struct Broker {
    child: Option<Child>,
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a free port.
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// Starts a broker on `port` (a restart uses the same one, as clients remember it).
    pub fn start_on(port: u16) -> Broker {
        let dir = tempfile::Builder::new().prefix("gatewasm-tansu-").tempdir().unwrap();
        let mut broker = Broker { child: None, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        broker.launch();
        broker
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn launch(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let mut command = Command::new(tansu_binary());
        command
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("memory://tansu/");
        self.child = Some(spawn(&mut command, &self.log()));
        wait_listening(self.addr, "tansu", &self.log());
    }

    /// Creates `topic` with `partitions` partitions, unless a client's request created it
    /// first.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let output = Command::new(tansu_binary())
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.addr)])
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(output.status.success() || text.contains("exist"), "creating topic {topic}: {text}");
    }

    /// Stops the broker as a crash would (SIGKILL: tansu's own shutdown waits seconds for its
    /// clients); its memory storage is gone with it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stalls the broker as a long GC pause or a frozen VM would (SIGSTOP): connections stay
    /// open, requests wait in its sockets, nothing is answered until [`Broker::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused broker run again (SIGCONT); it then handles what waited in its sockets.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- tansu log ----\n{}", read_lossy(&self.log()));
        }
    }
}

/// The bridge binary: the one Cargo built for these tests, else (for the example, which Cargo
/// gives no binary path) `target/release/gatewasm-kafka-bridge`.
pub fn bridge_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_gatewasm-kafka-bridge") {
        Some(path) => PathBuf::from(path),
        None => {
            let path = gatewasm_envoy::target_dir().join("release/gatewasm-kafka-bridge");
            assert!(
                path.is_file(),
                "{} not found: cargo build --release -p gatewasm-kafka-bridge",
                path.display()
            );
            path
        }
    }
}

/// The bridge binary, started with arguments.
pub struct Bridge {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    args: Vec<String>,
    dir: tempfile::TempDir,
    starts: u32,
}

impl Bridge {
    /// Starts the bridge on a free port with `args` (besides `--listen`).
    pub fn start(args: &[&str]) -> Bridge {
        let dir = tempfile::Builder::new().prefix("gatewasm-bridge-").tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut bridge =
            Bridge { child: None, addr, args: args.iter().map(|s| s.to_string()).collect(), dir, starts: 0 };
        bridge.launch();
        bridge
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("bridge-{}.log", self.starts))
    }

    fn launch(&mut self) {
        self.starts += 1;
        let mut command = Command::new(bridge_binary());
        command.arg("--listen").arg(self.addr.to_string()).args(&self.args);
        self.child = Some(spawn(&mut command, &self.log()));
        wait_listening(self.addr, "the bridge", &self.log());
    }

    /// SIGTERM and wait for it to finish what is in flight; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => terminate(&mut child, Duration::from_secs(15)).is_some_and(|s| s.success()),
            None => true,
        }
    }

    /// Kills it as a crash would (SIGKILL): produce requests in flight get no answer.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its `GET /healthz` answer.
    pub fn health(&self) -> Value {
        let response = gatewasm_envoy::send(self.addr, &gatewasm_envoy::Request::get("/healthz")).unwrap();
        response.json().unwrap()
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_stop(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Starts it again on the same address with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The current run's log (stderr and stdout).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log())
    }

    /// The directory for files the test wants next to the bridge's logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("---- bridge log ----\n{}", self.log_text());
        }
    }
}

/// One message as the independent consumer read it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Partition.
    pub partition: i64,
    /// Offset.
    pub offset: i64,
    /// Key bytes as text.
    pub key: Option<String>,
    /// The value parsed as JSON.
    pub value: Value,
}

/// The Python with kafka-python: `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let python = gatewasm_envoy::workspace_root().join(".venv/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import kafka: ./scripts/test installs kafka-python into .venv \
         (.venv/bin/pip install kafka-python==3.0.12)",
        python.display()
    );
    python
}

/// Reads every message of `topic` with kafka-python (not the bridge's code), waiting until
/// `expected` arrived and two quiet seconds passed, or `timeout`.
pub fn consume(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Message> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/consume.py");
    let output = Command::new(python())
        .arg(script)
        .args([bootstrap, topic, &expected.to_string(), &timeout.as_secs().to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "consumer failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let m: Value = serde_json::from_str(line).unwrap();
            let value = m["value"].as_str().map_or(Value::Null, |v| serde_json::from_str(v).unwrap());
            Message {
                partition: m["partition"].as_i64().unwrap(),
                offset: m["offset"].as_i64().unwrap(),
                key: m["key"].as_str().map(str::to_string),
                value,
            }
        })
        .collect()
}
