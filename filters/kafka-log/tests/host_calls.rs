//! Host calls per request, counted by the emulator: each crosses from the VM into Envoy (about
//! 1 µs in Envoy 1.40 with V8). Pins what one logged request costs with the default fields, and
//! that sampled-out and status-filtered requests cost (almost) nothing.
//! Build first: cargo build --release --target wasm32-wasip1 -p kafka-log -p calls-filter

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use gatewasm_emulator::{for_module, host_call_counts as calls, Emulator, LogLevel};
use serde_json::{json, Value};

fn emulator(config: &Value) -> Emulator {
    module("kafka-log", config)
}

fn module(name: &str, config: &Value) -> Emulator {
    let emu = for_module(name, config.to_string())
        .and_then(|b| {
            b.cluster("kafka-bridge")
                .property("request.protocol", "HTTP/1.1")
                .property("response.flags", 0u64.to_le_bytes())
                .property("xds.cluster_name", "upstream")
                .property("xds.route_name", "all")
                .property("upstream.address", "127.0.0.1:8080")
                .property("source.address", "127.0.0.1:40000")
                .log_level(LogLevel::Info)
                .build()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

/// Host calls of one request (after a warm-up request): request headers, response headers
/// and body, and `on_log`.
fn per_request(emu: &Emulator, status: &str) -> [BTreeMap<String, u64>; 3] {
    let mut out: [BTreeMap<String, u64>; 3] = Default::default();
    for _ in 0..2 {
        let mut s = emu.stream();
        emu.reset_host_calls();
        s.request_headers(
            &[(":method", "GET"), (":path", "/"), (":authority", "h"), ("x-request-id", "r")],
            true,
        )
        .unwrap();
        out[0] = s.host_calls();
        emu.reset_host_calls();
        s.response_headers(&[(":status", status)], false).unwrap();
        s.response_body(b"ok", true).unwrap();
        out[1] = s.host_calls();
        emu.reset_host_calls();
        s.log().unwrap();
        out[2] = s.host_calls();
    }
    out
}

const BASE: &str = r#"{"cluster": "kafka-bridge", "topic": "access-logs"}"#;

#[test]
fn default_fields_cost_two_map_reads_six_attributes_and_two_clock_reads() {
    let emu = emulator(&serde_json::from_str(BASE).unwrap());
    let [request, response, log] = per_request(&emu, "200");
    assert_eq!(request, calls(&[("proxy_get_current_time_nanoseconds", 1)]));
    assert_eq!(response, calls(&[]), "body sizes are counted in the VM");
    assert_eq!(
        log,
        calls(&[
            ("proxy_get_header_map_pairs", 2),
            ("proxy_get_property", 6),
            ("proxy_get_current_time_nanoseconds", 1),
            // Envoy calls into the VM to allocate each value it returns.
            ("proxy_on_memory_allocate", 8),
        ])
    );
}

#[test]
fn the_benchmark_host_call_row_makes_the_same_calls_as_the_default_record() {
    let filter = per_request(&emulator(&serde_json::from_str(BASE).unwrap()), "200");
    let scenario: gatewasm_envoy::bench::Scenario =
        serde_json::from_str(include_str!("../../../test-harness/envoy/bench/kafka-log.json")).unwrap();
    let calls_only =
        per_request(&module("calls-filter", &scenario.wasm_configuration("calls").unwrap()), "200");
    assert_eq!(calls_only, filter);
}

#[test]
fn fewer_fields_cost_fewer_calls() {
    let config = json!({"cluster": "kafka-bridge", "topic": "access-logs",
        "fields": {"exclude": ["protocol", "response_flags", "upstream_host", "upstream_cluster", "route_name",
                               "downstream_remote_address"]}});
    let [_, _, log] = per_request(&emulator(&config), "200");
    assert_eq!(
        log,
        calls(&[
            ("proxy_get_header_map_pairs", 2),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_on_memory_allocate", 2),
        ])
    );
}

#[test]
fn filtered_out_requests_stop_after_the_status_read_and_unsampled_ones_cost_nothing() {
    let config = json!({"cluster": "kafka-bridge", "topic": "access-logs", "status": {"min": 400}});
    let [_, _, log] = per_request(&emulator(&config), "200");
    assert_eq!(log, calls(&[("proxy_get_header_map_pairs", 1), ("proxy_on_memory_allocate", 1)]));

    let config = json!({"cluster": "kafka-bridge", "topic": "access-logs", "sample_rate": 0.0});
    let [request, response, log] = per_request(&emulator(&config), "200");
    assert!(request.is_empty() && response.is_empty() && log.is_empty(), "{request:?} {response:?} {log:?}");
}
