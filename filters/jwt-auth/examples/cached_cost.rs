//! Time the VM spends per request on the cached check beyond its host calls, measured in the
//! emulator (wasmtime): jwt-auth with the benchmark's cached RS256 row against `calls-filter`
//! with the benchmark's "host calls alone" row, which makes the same three crossings and nothing
//! else. Both see the same request, so the difference is the filter's own work (header parsing,
//! rule matching, token extraction, cache lookup, claim formatting); see
//! `gatewasm_emulator::cost` for the modes.
//!
//! cargo build --release --target wasm32-wasip1 -p jwt-auth -p calls-filter
//! cargo run --release -p jwt-auth --example cached_cost [-- REQUESTS [calls|filter]]

use gatewasm_emulator::cost::{self, CostResult, Side};
use gatewasm_emulator::Emulator;
use gatewasm_envoy::bench::Scenario;

fn main() -> CostResult<()> {
    let scenario: Scenario =
        serde_json::from_str(include_str!("../../../test-harness/envoy/bench/jwt-auth.json"))?;
    let headers = cost::wrk_request(&scenario.path);
    let build = |side: Side| -> CostResult<Emulator> {
        let (package, row) = match side {
            Side::Calls => ("calls-filter", "calls"),
            Side::Filter => ("jwt-auth", "wasm-rs256-cache"),
        };
        cost::row_emulator(package, scenario.wasm_configuration(row).map(|c| c.to_string()), &[])
    };
    cost::main("jwt-auth, cached", 100_000, build, |emu| {
        let mut s = emu.stream();
        s.request_headers(&headers, true)?;
        s.response_headers(&[(":status", "200"), ("content-length", "2")], true)?;
        s.log()?;
        Ok(())
    })
}
