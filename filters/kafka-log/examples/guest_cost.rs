//! Time the VM spends per logged request beyond its host calls, measured in the emulator
//! (wasmtime): kafka-log with its default fields against `calls-filter` with the benchmark's `calls` row, which makes the
//! same host calls and nothing else. Both see the same stream, so the difference is the filter's
//! own work (record writing, buffering, batching on the tick, reading the produce answers). The
//! emulator's host calls are not Envoy's: compare the two figures of one run, not with Envoy.
//!
//! cargo build --release --target wasm32-wasip1 -p kafka-log -p calls-filter
//! cargo run --release -p kafka-log --example guest_cost [-- REQUESTS [FILTER.wasm]]
//!
//! Timing on a loaded machine moves by a microsecond; instruction counts do not. With a third
//! argument, `calls` or `filter`, only that module runs, once, printing nothing: run it under
//! `valgrind --tool=callgrind --smc-check=all` with two request counts, and the difference of
//! the totals over the difference of the counts is the instructions per request.

// Five timed rounds, sorted: the median is at index 2.
#![allow(clippy::indexing_slicing)]

use std::error::Error;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatewasm_emulator::{wasm_path, Emulator, LogLevel};

/// Request headers as Envoy hands a wrk request to the filter chain.
const REQUEST: [(&str, &str); 7] = [
    (":authority", "127.0.0.1:10000"),
    (":path", "/bench/item?id=1"),
    (":method", "GET"),
    (":scheme", "http"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01"),
    ("x-envoy-expected-rq-timeout-ms", "15000"),
];
const RESPONSE: [(&str, &str); 4] = [
    (":status", "200"),
    ("content-length", "2"),
    ("date", "Tue, 24 Nov 2026 00:00:00 GMT"),
    ("server", "envoy"),
];

fn emulator(path: PathBuf, config: &str) -> Result<Emulator, Box<dyn Error>> {
    let emu = Emulator::load(path)
        .plugin_config(config)
        .cluster("kafka-bridge")
        .property("request.protocol", "HTTP/1.1")
        .property("response.flags", 0u64.to_le_bytes())
        .property("xds.cluster_name", "upstream")
        .property("xds.route_name", "bench")
        .property("upstream.address", "127.0.0.1:8080")
        .property("source.address", "127.0.0.1:40000")
        .log_level(LogLevel::Warn)
        .build()?;
    if !emu.configured() {
        return Err(format!("configuration refused: {:?}", emu.logs()).into());
    }
    Ok(emu)
}

/// Runs `requests` streams, advancing the clock 10 µs per request (so ticks fire and batches
/// leave as under ~100k req/s) and answering every produce request at once; returns the time per
/// request.
fn run(emu: &Emulator, requests: u32) -> Result<Duration, Box<dyn Error>> {
    let started = Instant::now();
    for i in 0..requests {
        let mut s = emu.stream();
        s.request_headers(&REQUEST, true)?;
        s.response_headers(&RESPONSE, false)?;
        s.response_body(b"ok", true)?;
        s.log()?;
        drop(s);
        if i % 1000 == 999 {
            emu.advance_clock(Duration::from_millis(10))?;
            for call in emu.http_calls() {
                emu.respond_http_call(
                    call.token,
                    &[(":status", "200"), ("content-type", "application/vnd.kafka.v2+json")],
                    b"{}",
                    &[],
                )?;
            }
        }
    }
    Ok(started.elapsed() / requests.max(1))
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let requests: u32 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("REQUESTS `{n}`: {e}"))?,
        None => 200_000,
    };
    let filter = match args.next() {
        Some(path) => PathBuf::from(path),
        None => wasm_path("kafka-log")?,
    };
    let config = r#"{"cluster": "kafka-bridge", "topic": "access-logs"}"#;
    let scenario: gatewasm_envoy::bench::Scenario =
        serde_json::from_str(include_str!("../../../test-harness/envoy/bench/kafka-log.json"))?;
    let calls_config =
        scenario.wasm_configuration("calls").ok_or("kafka-log.json has no `calls` row")?.to_string();
    match args.next().as_deref() {
        Some("calls") => {
            run(&emulator(wasm_path("calls-filter")?, &calls_config)?, requests)?;
            return Ok(());
        }
        Some("filter") => {
            run(&emulator(filter, config)?, requests)?;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown mode {other}: calls or filter").into()),
        None => {}
    }
    let calls = emulator(wasm_path("calls-filter")?, &calls_config)?;
    let kafka = emulator(filter, config)?;
    // Warm-up, then alternate so drift hits both alike.
    run(&calls, requests / 10)?;
    run(&kafka, requests / 10)?;
    let (mut c, mut k) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        c.push(run(&calls, requests / 5)?);
        k.push(run(&kafka, requests / 5)?);
    }
    c.sort();
    k.sort();
    let sent = kafka.metric(kafka_log::SENT).unwrap_or(0);
    println!("host calls alone: {:>8.2?} per request (median of 5)", c[2]);
    println!("kafka-log:        {:>8.2?} per request (median of 5)", k[2]);
    println!(
        "difference:       {:>8.0} ns per request; records sent {sent}",
        k[2].as_nanos() as f64 - c[2].as_nanos() as f64
    );
    Ok(())
}
