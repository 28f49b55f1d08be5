//! Time the VM spends per request on the cached check beyond its host calls, measured in the
//! emulator (wasmtime): jwt-auth with the benchmark's cached RS256 row against `calls-filter`
//! with the benchmark's "host calls alone" row, which makes the same three crossings and nothing
//! else. Both see the same request, so the difference is the filter's own work (header parsing,
//! rule matching, token extraction, cache lookup, claim formatting). The emulator's host calls
//! are not Envoy's: compare the two figures of one run, not with Envoy.
//!
//! cargo build --release --target wasm32-wasip1 -p jwt-auth -p calls-filter
//! cargo run --release -p jwt-auth --example cached_cost [-- REQUESTS [calls|filter]]
//!
//! Timing on a loaded machine moves by microseconds; instruction counts do not. With `calls` or
//! `filter`, only that module runs, once, printing nothing: run it under `valgrind
//! --tool=callgrind --smc-check=all` with two request counts, and the difference of the totals
//! over the difference of the counts is the instructions per request.

// Five timed rounds, sorted: the median is at index 2.
#![allow(clippy::indexing_slicing)]

use std::error::Error;
use std::time::{Duration, Instant};

use gatewasm_emulator::{wasm_path, Emulator, LogLevel};
use gatewasm_envoy::bench::Scenario;

fn emulator(package: &str, scenario: &Scenario, row: &str) -> Result<Emulator, Box<dyn Error>> {
    let config =
        scenario.wasm_configuration(row).ok_or_else(|| format!("jwt-auth.json has no `{row}` row"))?;
    let emu = Emulator::load(wasm_path(package)?)
        .plugin_config(config.to_string())
        .log_level(LogLevel::Warn)
        .build()?;
    if !emu.configured() {
        return Err(format!("configuration refused: {:?}", emu.logs()).into());
    }
    Ok(emu)
}

fn run(emu: &Emulator, headers: &[(&str, &str)], requests: u32) -> Result<Duration, Box<dyn Error>> {
    let started = Instant::now();
    for _ in 0..requests {
        let mut s = emu.stream();
        s.request_headers(headers, true)?;
        s.response_headers(&[(":status", "200"), ("content-length", "2")], true)?;
        s.log()?;
    }
    Ok(started.elapsed() / requests.max(1))
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let requests: u32 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("REQUESTS `{n}`: {e}"))?,
        None => 100_000,
    };
    let only = args.next();
    let scenario: Scenario =
        serde_json::from_str(include_str!("../../../test-harness/envoy/bench/jwt-auth.json"))?;
    let headers = [
        (":authority", "127.0.0.1:10000"),
        (":path", scenario.path.as_str()),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ];
    match only.as_deref() {
        Some("calls") => {
            run(&emulator("calls-filter", &scenario, "calls")?, &headers, requests)?;
            return Ok(());
        }
        Some("filter") => {
            run(&emulator("jwt-auth", &scenario, "wasm-rs256-cache")?, &headers, requests)?;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown mode {other}: calls or filter").into()),
        None => {}
    }
    let calls = emulator("calls-filter", &scenario, "calls")?;
    let filter = emulator("jwt-auth", &scenario, "wasm-rs256-cache")?;
    run(&calls, &headers, requests / 10)?;
    run(&filter, &headers, requests / 10)?;
    let (mut c, mut f) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        c.push(run(&calls, &headers, requests / 5)?);
        f.push(run(&filter, &headers, requests / 5)?);
    }
    c.sort();
    f.sort();
    println!("host calls alone:   {:>8.2?} per request (median of 5)", c[2]);
    println!("jwt-auth, cached:   {:>8.2?} per request (median of 5)", f[2]);
    println!("difference:         {:>8.0} ns per request", f[2].as_nanos() as f64 - c[2].as_nanos() as f64);
    Ok(())
}
