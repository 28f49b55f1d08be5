//! Host calls per request, counted by the emulator (each crossing into Envoy costs about 1 µs):
//! the benchmark's configuration must read every request header once and write only the output
//! header (the clock is read on the tick, not per request). Counts, not timings.
//! Build first: cargo build --release --target wasm32-wasip1 -p jwt-auth

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use gatewasm_emulator::{for_module, host_call_counts as calls, Action, Emulator, LogLevel};
use gatewasm_envoy::bench::Scenario;
use serde_json::Value;

fn scenario() -> Scenario {
    serde_json::from_str(include_str!("../../../test-harness/envoy/bench/jwt-auth.json")).unwrap()
}

fn row_config(key: &str) -> Value {
    scenario().wasm_configuration(key).unwrap()
}

fn emulator(config: &Value) -> Emulator {
    let emu = for_module("jwt-auth", config.to_string())
        .and_then(|b| b.log_level(LogLevel::Info).build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

/// The request phase's host calls of the second request (the first warms the cache and
/// defines nothing new: metrics are defined at configure time).
fn request_calls(emu: &Emulator, extra: &[(&str, &str)]) -> (BTreeMap<String, u64>, Option<String>) {
    let s = scenario();
    let path = s.path.as_str();
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "localhost:10000"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "7b0d6f0e-8a4e-4b8e-9d5c-3c1e4d2f9a10"),
    ];
    headers.extend_from_slice(extra);
    let mut result = None;
    for _ in 0..2 {
        emu.reset_host_calls();
        let mut st = emu.stream();
        assert_eq!(st.request_headers(&headers, true).unwrap(), Action::Continue, "{:?}", st.local_reply());
        result = Some((st.host_calls(), st.request_header("x-jwt-sub")));
        st.response_headers(&[(":status", "200")], true).unwrap();
        st.log().unwrap();
    }
    result.unwrap()
}

const PAIRS: &str = "proxy_get_header_map_pairs";
const ALLOC: &str = "proxy_on_memory_allocate";
const SET: &str = "proxy_replace_header_map_value";
const REMOVE: &str = "proxy_remove_header_map_value";

const FOREIGN: &str = "proxy_call_foreign_function";

#[test]
fn bench_request_reads_once_and_writes_the_claim() {
    for key in ["wasm-rs256-cache", "wasm-es256-cache"] {
        let emu = emulator(&row_config(key));
        let (req, sub) = request_calls(&emu, &[]);
        assert_eq!(sub.as_deref(), Some("bench-user"), "{key}");
        assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1), (SET, 1)]), "{key}");
    }
}

#[test]
fn without_the_cache_the_host_checks_the_signature_in_one_call() {
    for key in ["wasm-rs256", "wasm-es256"] {
        let emu = emulator(&row_config(key));
        let (req, sub) = request_calls(&emu, &[]);
        assert_eq!(sub.as_deref(), Some("bench-user"), "{key}");
        assert_eq!(req, calls(&[(PAIRS, 1), (FOREIGN, 1), (ALLOC, 2), (SET, 1)]), "{key}");
    }
}

#[test]
fn host_crypto_off_checks_in_the_module() {
    let mut config = row_config("wasm-es256");
    config["host_crypto"] = serde_json::json!(false);
    let emu = emulator(&config);
    let (req, sub) = request_calls(&emu, &[]);
    assert_eq!(sub.as_deref(), Some("bench-user"));
    assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1), (SET, 1)]));
}

#[test]
fn a_spoofed_output_costs_one_removal() {
    let emu = emulator(&row_config("wasm-es256-cache"));
    let (req, sub) = request_calls(&emu, &[("x-jwt-sub", "admin")]);
    assert_eq!(sub.as_deref(), Some("bench-user"));
    assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1), (REMOVE, 1), (SET, 1)]));
}

/// The benchmark's "host calls alone" row makes exactly the cached path's calls.
#[test]
fn the_calls_row_makes_the_cached_paths_calls() {
    let calls_row = {
        let config = row_config("calls");
        let emu = for_module("calls-filter", config.to_string())
            .and_then(|b| b.build())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(emu.configured(), "{:?}", emu.logs());
        emu
    };
    let (alone, sub) = request_calls(&calls_row, &[]);
    assert_eq!(sub.as_deref(), Some("bench-user"));
    let (filter, _) = request_calls(&emulator(&row_config("wasm-rs256-cache")), &[]);
    assert_eq!(alone, filter);
}
