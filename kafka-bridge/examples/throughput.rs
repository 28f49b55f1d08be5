//! End-to-end access-log throughput: wrk loads a real Envoy with the kafka-log filter, which
//! batches to the bridge, which produces to a tansu broker (memory storage, loopback). Reports
//! the gateway's requests/s and the records/s stored in Kafka from the start of the load until
//! the last record was acknowledged.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 -p kafka-log
//! cargo build --release -p gatewasm-kafka-bridge
//! cargo run --release -p gatewasm-kafka-bridge --example throughput -- --duration 10
//! ```
//!
//! `--native` runs the filter as a native dynamic module (`cargo build --release -p kafka-log`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use gatewasm_envoy::bench::{run_wrk, WrkOptions};
use gatewasm_envoy::{Cluster, Envoy, EnvoyBuilder, Target, HCM_STAT_PREFIX};
use serde_json::json;

const USAGE: &str = "\
throughput [options]

  --duration SECS     wrk run (default 10)
  --connections N     wrk -c (default 16)
  --workers N         Envoy --concurrency (default 1)
  --verify            read the topic back with kafka-python and count the records
  --native            the filter as a native Envoy dynamic module instead of Wasm
";

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stats().unwrap().iter().filter(|(k, _)| k.ends_with(name)).map(|(_, v)| *v).sum()
}

fn main() {
    let (mut duration, mut connections, mut workers, mut verify) = (10u32, 16u32, 1u32, false);
    let mut target = Target::Wasm;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value =
            || args.next().unwrap_or_else(|| panic!("{arg} needs a value")).parse::<u32>().unwrap();
        match arg.as_str() {
            "--duration" => duration = value(),
            "--connections" => connections = value(),
            "--workers" => workers = value(),
            "--verify" => verify = true,
            "--native" => target = Target::Native,
            _ => {
                eprint!("{USAGE}");
                std::process::exit(2);
            }
        }
    }

    let broker = support::Broker::start();
    broker.create_topic("throughput", 2);
    let bridge = support::Bridge::start(&["--brokers", &broker.bootstrap()]);
    let config = json!({
        "cluster": "kafka-bridge", "topic": "throughput", "key_field": "request_id",
        "batch_max_size": 500, "flush_interval_ms": 200, "max_in_flight": 4,
        "buffer_max_records": 50000, "buffer_max_bytes": 64 << 20,
    });
    let envoy = EnvoyBuilder::new()
        .filter(target.filter("kafka-log", "kafka_log", &config).unwrap())
        .direct_response(200, "ok")
        .cluster(Cluster::new("kafka-bridge", bridge.addr))
        .concurrency(workers)
        .log_level("warning")
        .component_log_level(None)
        .start()
        .unwrap();

    let options = WrkOptions { threads: 1, connections, duration_secs: duration, cpus: None, script: None };
    let started = Instant::now();
    let wrk = run_wrk(&envoy.url("/throughput"), &options).unwrap();
    let load_ended = started.elapsed();
    let answered = envoy.stat(&format!("http.{HCM_STAT_PREFIX}.downstream_rq_2xx")).unwrap().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut sent, mut dropped, mut failed) = (0, 0, 0);
    while Instant::now() < deadline {
        sent = stat(&envoy, "kafka_log_records_sent_total");
        dropped = stat(&envoy, "kafka_log_records_dropped_total");
        failed = stat(&envoy, "kafka_log_records_failed_total");
        if sent + dropped + failed >= answered {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = started.elapsed();
    let retried = stat(&envoy, "kafka_log_records_retried_total");
    println!("filter: {target:?}; Envoy workers: {workers}; wrk -t1 -c{connections} -d{duration}s");
    println!("gateway: {:.0} requests/s ({} requests answered)", wrk.rps, answered);
    println!(
        "Kafka: {sent} records stored in {:.2} s from the start of the load ({:.2} s of load, {:.2} s to drain): {:.0} records/s",
        drained.as_secs_f64(),
        load_ended.as_secs_f64(),
        (drained - load_ended).as_secs_f64(),
        sent as f64 / drained.as_secs_f64()
    );
    println!("dropped {dropped}, failed {failed}, retried {retried}");
    if verify {
        let messages =
            support::consume(&broker.bootstrap(), "throughput", sent as usize, Duration::from_secs(300));
        println!("kafka-python read {} records back", messages.len());
    }
}
