//! Decisions per second and latency of the service binary with counters in Redis (or in memory):
//! a tonic client keeps `--concurrency` calls in flight over `--connections` HTTP/2 connections
//! for `--duration` seconds, each call one descriptor of a `remote_address` out of 10,000, and
//! prints the rate, the latency percentiles and how many calls were allowed and limited.
//!
//! ```sh
//! cargo build --release -p gatewasm-ratelimit
//! cargo run --release -p gatewasm-ratelimit --example bench -- --duration 10 [--memory]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewasm_envoy::LocalProcess;
use support::{Client, Redis, OK, OVER};

const USAGE: &str = "\
bench [options]

  --duration SECS     load time (default 10)
  --concurrency N     calls in flight (default 32)
  --connections N     HTTP/2 connections (default 4)
  --memory            counters in memory instead of Redis
  --service ADDR      load a service already running there (its limits must have domain
                      bench, key remote_address) instead of starting Redis and the binary
";

/// Limits that a run of this length never reaches for most addresses: the cost measured is the
/// counting path, not the refusal.
const LIMITS: &str = "
domain: bench
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1000}
";

fn main() {
    let (mut duration, mut concurrency, mut connections, mut memory) = (10u64, 32usize, 4usize, false);
    let mut running: Option<std::net::SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--service" {
            running =
                Some(args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("--service ADDR")));
            continue;
        }
        let mut value =
            || args.next().unwrap_or_else(|| panic!("{arg} needs a value")).parse::<u64>().unwrap();
        match arg.as_str() {
            "--duration" => duration = value(),
            "--concurrency" => concurrency = value() as usize,
            "--connections" => connections = value() as usize,
            "--memory" => memory = true,
            _ => {
                eprint!("{USAGE}");
                std::process::exit(2);
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits.yaml");
    std::fs::write(&limits, LIMITS).unwrap();
    let redis = (!memory && running.is_none()).then(Redis::start);
    let mut service_args = vec!["--listen".to_string(), "{addr}".to_string(), "--config".to_string()];
    service_args.push(limits.to_string_lossy().into_owned());
    if let Some(redis) = &redis {
        service_args.extend(["--redis".to_string(), redis.url()]);
    }
    let binary = gatewasm_envoy::target_dir().join("release/gatewasm-ratelimit");
    let service = match running {
        Some(_) => None,
        None => Some(
            LocalProcess::start(
                &binary,
                &service_args,
                Some("cargo build --release -p gatewasm-ratelimit"),
                None,
            )
            .unwrap(),
        ),
    };
    let addr = running.or(service.as_ref().map(LocalProcess::addr)).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (latencies, allowed, limited, errors, elapsed) =
        runtime.block_on(load(addr, duration, concurrency, connections));
    let mut latencies = latencies;
    latencies.sort_unstable();
    let calls = latencies.len();
    let percentile = |p: f64| {
        let i = ((calls as f64 * p).ceil() as usize).clamp(1, calls.max(1)) - 1;
        latencies.get(i).map_or(0.0, |d: &Duration| d.as_secs_f64() * 1e3)
    };
    let store = match (running, memory) {
        (Some(addr), _) => format!("the service at {addr}"),
        (None, true) => "memory".to_string(),
        (None, false) => "Redis".to_string(),
    };
    println!(
        "counters in {store}: {calls} decisions in {:.2} s = {:.0}/s ({concurrency} in flight, {connections} connections)",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(0.999),
        percentile(1.0)
    );
    println!("allowed {allowed}, limited {limited}, errors {errors}");
    drop(service);
    drop(redis);
}

async fn load(
    addr: std::net::SocketAddr,
    duration: u64,
    concurrency: usize,
    connections: usize,
) -> (Vec<Duration>, u64, u64, u64, Duration) {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(Client::connect(addr).await);
    }
    // Warm up: connections open, scripts loaded.
    for client in &mut clients {
        client.check("bench", &[("remote_address", "warm-up")]).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = clients[worker % clients.len()].clone();
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let (mut latencies, mut allowed, mut limited, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
            let mut n = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                let address = format!("10.0.{}.{}", (n / 100) % 100, n % 100);
                n += concurrency as u64;
                let sent = Instant::now();
                match client.check("bench", &[("remote_address", &address)]).await {
                    Ok(r) if r.overall_code == OK => allowed += 1,
                    Ok(r) if r.overall_code == OVER => limited += 1,
                    _ => errors += 1,
                }
                latencies.push(sent.elapsed());
            }
            (latencies, allowed, limited, errors)
        });
    }
    tokio::time::sleep(Duration::from_secs(duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = (Vec::new(), 0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        let (latencies, allowed, limited, errors) = done.unwrap();
        all.0.extend(latencies);
        all.1 += allowed;
        all.2 += limited;
        all.3 += errors;
    }
    let elapsed = started.elapsed();
    (all.0, all.1, all.2, all.3, elapsed)
}
