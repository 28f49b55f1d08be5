//! The VM's own work per allowed check beyond its host calls, measured in the emulator
//! (wasmtime): ext-auth with the benchmark's `wasm` row against `calls-filter` with its `calls`
//! row, which makes the same crossings and nothing else (`tests/host_calls.rs` pins that). Both
//! see the same request and the same answer; see `gatewasm_emulator::cost` for the modes.
//!
//! cargo build --release --target wasm32-wasip1 -p ext-auth -p calls-filter
//! cargo run --release -p ext-auth --example check_cost [-- REQUESTS [calls|filter]]

use gatewasm_emulator::cost::{self, CostResult, Side};
use gatewasm_emulator::Emulator;
use gatewasm_envoy::bench::Scenario;

/// What a local auth service behind Envoy answers.
const ANSWER: &[(&str, &str)] = &[
    (":status", "200"),
    ("x-user-id", "1"),
    ("content-length", "0"),
    ("date", "Tue, 24 Nov 2026 03:00:00 GMT"),
    ("x-envoy-upstream-service-time", "0"),
];

fn main() -> CostResult<()> {
    let scenario: Scenario =
        serde_json::from_str(include_str!("../../../test-harness/envoy/bench/ext-auth.json"))?;
    let headers = cost::wrk_request(&scenario.path);
    let build = |side: Side| -> CostResult<Emulator> {
        let (package, row) = match side {
            Side::Calls => ("calls-filter", "calls"),
            Side::Filter => ("ext-auth", "wasm"),
        };
        cost::row_emulator(package, scenario.wasm_configuration(row).map(|c| c.to_string()), &["ext_auth"])
    };
    cost::main("ext-auth", 50_000, build, |emu| {
        let mut s = emu.stream();
        s.request_headers(&headers, true)?;
        let token = emu.http_calls().first().map(|c| c.token).ok_or("no callout sent")?;
        emu.respond_http_call(token, ANSWER, b"", &[])?;
        if s.request_paused() {
            return Err("the request is still held after the answer".into());
        }
        s.response_headers(&[(":status", "200"), ("content-length", "2")], true)?;
        s.log()?;
        Ok(())
    })
}
