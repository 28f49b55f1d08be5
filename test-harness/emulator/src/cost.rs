//! The driver of the `*_cost` examples: how much time the VM spends per request on a filter's
//! own work, beyond its host calls. A filter is run against `calls-filter` configured to make
//! exactly the same host calls (each filter's `tests/host_calls.rs` pins that), on the same
//! requests, so the difference of the two is the filter's own work. The emulator's host calls
//! are not Envoy's: compare the two figures of one run, never with Envoy.

use std::error::Error;
use std::time::{Duration, Instant};

use crate::{wasm_path, Emulator, LogLevel};

/// Request headers as Envoy hands a wrk request for `path` to the filter chain.
pub fn wrk_request(path: &str) -> [(&str, &str); 7] {
    [
        (":authority", "127.0.0.1:10000"),
        (":path", path),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "2f7c1b8e-0d6b-4a65-9d38-5b1c1f2a9e01"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ]
}

/// `package`'s module configured with a benchmark row's configuration (`None` when the
/// scenario has no such row), with `clusters` known; refused configuration is an error.
pub fn row_emulator(package: &str, configuration: Option<String>, clusters: &[&str]) -> CostResult<Emulator> {
    let config = configuration.ok_or_else(|| format!("the scenario has no row for {package}"))?;
    let mut builder = Emulator::load(wasm_path(package)?).plugin_config(config).log_level(LogLevel::Warn);
    for cluster in clusters {
        builder = builder.cluster(cluster);
    }
    let emu = builder.build()?;
    if !emu.configured() {
        return Err(format!("{package}: configuration refused: {:?}", emu.logs()).into());
    }
    Ok(emu)
}

/// Which module a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `calls-filter`, making the filter's host calls and nothing else.
    Calls,
    /// The filter itself.
    Filter,
}

/// Result type of the cost examples.
pub type CostResult<T> = Result<T, Box<dyn Error>>;

/// Parses `[REQUESTS [calls|filter]]` from the command line and either runs one side only, once,
/// printing nothing (for `valgrind --tool=callgrind --smc-check=all` with two request counts: the
/// difference of the totals over the difference of the counts is the instructions per request),
/// or times both sides in five interleaved rounds and prints the medians and their difference.
/// `build` makes the emulator of a side; `request` drives one request through it.
pub fn main(
    label: &str,
    default_requests: u32,
    build: impl Fn(Side) -> CostResult<Emulator>,
    request: impl Fn(&Emulator) -> CostResult<()>,
) -> CostResult<()> {
    let mut args = std::env::args().skip(1);
    let requests: u32 = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("REQUESTS `{n}`: {e}"))?,
        None => default_requests,
    };
    let run = |emu: &Emulator, n: u32| -> CostResult<Duration> {
        let started = Instant::now();
        for _ in 0..n {
            request(emu)?;
        }
        Ok(started.elapsed() / n.max(1))
    };
    match args.next().as_deref() {
        Some("calls") => return run(&build(Side::Calls)?, requests).map(drop),
        Some("filter") => return run(&build(Side::Filter)?, requests).map(drop),
        Some(other) => return Err(format!("unknown mode {other}: calls or filter").into()),
        None => {}
    }
    let calls = build(Side::Calls)?;
    let filter = build(Side::Filter)?;
    run(&calls, requests / 10)?;
    run(&filter, requests / 10)?;
    let (mut c, mut f) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        c.push(run(&calls, requests / 5)?);
        f.push(run(&filter, requests / 5)?);
    }
    c.sort();
    f.sort();
    let (c, f) = (median(&c), median(&f));
    println!("host calls alone:   {c:>8.2?} per request (median of 5)");
    println!("{:<20}{f:>8.2?} per request (median of 5)", format!("{label}:"));
    println!("difference:         {:>8.0} ns per request", f.as_nanos() as f64 - c.as_nanos() as f64);
    Ok(())
}

fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
