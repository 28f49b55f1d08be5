//! What the service's tests start: the service itself in-process (its own runtime, a free
//! 127.0.0.1 port), a Redis server of their own (Debian's `redis-server`, loopback, no
//! persistence), and a gRPC client; each stopped when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use gatewasm_envoy::LocalProcess;
use gatewasm_ratelimit::{serve, Limiter, Limits, Service, Store};
use tonic::transport::Channel;

/// The services' Redis timeout: long enough for a loaded test machine, short against the bounds
/// the tests put on an error's arrival.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(300);

/// `OK` and `OVER_LIMIT` as the protocol numbers them.
pub const OK: i32 = 1;
/// See [`OK`].
pub const OVER: i32 = 2;

/// The service, running on a runtime of its own in a thread of its own.
pub struct RunningService {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningService {
    /// Serves `limits` (one domain's file) with counters in `redis` (a URL) or in memory.
    pub fn start(limits: &str, redis: Option<&str>, response_headers: bool) -> RunningService {
        let mut parsed = Limits::default();
        parsed.add("limits.yaml", limits).unwrap();
        let redis = redis.map(str::to_string);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let store = match redis {
                    Some(url) => Store::redis(&url, STORE_TIMEOUT).await.unwrap(),
                    None => Store::memory(100_000).unwrap(),
                };
                let limiter = Limiter::new(parsed, store, response_headers);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, Service::new(limiter), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("the service did not start");
        RunningService { addr, stop: Some(stop), thread: Some(thread) }
    }

    /// A client of this service.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A tonic client of the service.
#[derive(Clone)]
pub struct Client(RateLimitServiceClient<Channel>);

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        Client(RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap())
    }

    /// One `ShouldRateLimit` call.
    pub async fn call(&mut self, request: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        self.0.should_rate_limit(request).await.map(|r| r.into_inner())
    }

    /// One call with one descriptor of `entries` in `domain`.
    pub async fn check(
        &mut self,
        domain: &str,
        entries: &[(&str, &str)],
    ) -> Result<RateLimitResponse, tonic::Status> {
        self.call(request(domain, vec![descriptor(entries)])).await
    }
}

/// A descriptor of `entries`.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..Default::default()
    }
}

/// A request in `domain`.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 0 }
}

/// The `redis-server` binary: `$REDIS_SERVER_BIN`, else `redis-server` on `PATH`.
pub fn redis_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no redis-server: ./scripts/test installs it (apt-get install redis-server), or set REDIS_SERVER_BIN")
        })
}

/// A Redis server of the test's own: 127.0.0.1, a free port, nothing saved to disk.
pub struct Redis {
    process: Option<LocalProcess>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new().prefix("gatewasm-redis-").tempdir().unwrap();
        let process = LocalProcess::start(&redis_binary(), &Redis::args(&dir), None, None).unwrap();
        Redis { addr: process.addr(), process: Some(process), dir }
    }

    fn args(dir: &tempfile::TempDir) -> Vec<String> {
        [
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().to_string_lossy(),
            "--logfile",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops it as a crash would (SIGKILL); its counters are gone with it.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.process = Some(
            LocalProcess::start_on(self.addr, &redis_binary(), &Redis::args(&self.dir), None, None).unwrap(),
        );
    }

    /// Stalls it (SIGSTOP): connections stay open, nothing is answered until [`Redis::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(process) = &self.process {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(process.id() as libc::pid_t, signal);
            }
        }
    }
}
