//! Host calls per request, counted by the emulator: each one crosses from the VM into Envoy
//! (about 1 µs in Envoy 1.40 with V8, a read that returns a value about 2 µs with the allocation
//! callback), so a change that adds one shows up here as a failing count. Counts, not timings.
//! Build first: cargo build --release --target wasm32-wasip1 -p http-metrics

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::Duration;

use gatewasm_emulator::{for_module, host_call_counts as calls, Action, Emulator, LogLevel};
use gatewasm_envoy::bench::Scenario;
use serde_json::{json, Value};

fn emulator(config: &Value) -> Emulator {
    let emu = for_module("http-metrics", config.to_string())
        .and_then(|b| b.log_level(LogLevel::Info).build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

const BENCH_REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/bench/item?id=1"),
    (":authority", "localhost:10000"),
    (":scheme", "http"),
    ("user-agent", "wrk"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "7b0d6f0e-8a4e-4b8e-9d5c-3c1e4d2f9a10"),
];

/// Host calls of one request, by phase: request (headers and body), response (headers and
/// body), and `on_log`. The path given replaces the bench request's.
fn one_request(emu: &Emulator, path: &str) -> [BTreeMap<String, u64>; 3] {
    let mut request = BENCH_REQUEST.to_vec();
    request[1] = (":path", path);
    let mut s = emu.stream();
    emu.reset_host_calls();
    assert_eq!(s.request_headers(&request, false).unwrap(), Action::Continue);
    assert_eq!(s.request_body(b"payload", true).unwrap(), Action::Continue);
    let req = emu.host_calls();
    emu.reset_host_calls();
    assert_eq!(s.response_headers(&[(":status", "200")], false).unwrap(), Action::Continue);
    assert_eq!(s.response_body(b"ok", true).unwrap(), Action::Continue);
    let resp = emu.host_calls();
    s.set_property("request.duration", 1_500_000u64.to_le_bytes());
    s.set_property("xds.cluster_name", "upstream");
    emu.reset_host_calls();
    s.log().unwrap();
    [req, resp, emu.host_calls()]
}

const PAIRS: &str = "proxy_get_header_map_pairs";
const PROPERTY: &str = "proxy_get_property";
const ALLOC: &str = "proxy_on_memory_allocate";
const RECORD: &str = "proxy_record_metric";
const INCREMENT: &str = "proxy_increment_metric";
const DEFINE: &str = "proxy_define_metric";
const SHARED_GET: &str = "proxy_get_shared_data";
const SHARED_SET: &str = "proxy_set_shared_data";

fn bench_config() -> Value {
    serde_json::from_str::<Scenario>(include_str!("../../../test-harness/envoy/bench/http-metrics.json"))
        .unwrap()
        .wasm_configuration("wasm")
        .unwrap()
}

#[test]
fn a_known_label_set_costs_three_reads_and_one_record_per_histogram() {
    let emu = emulator(&bench_config());
    one_request(&emu, "/bench/item");
    let [req, resp, log] = one_request(&emu, "/bench/item");
    // Every request header in one read (with the allocation callback for the answer), kept for
    // the end; nothing for the bodies (their sizes come with the callbacks) or the response.
    assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1)]));
    assert!(resp.is_empty(), "{resp:?}");
    // At the end: `response.code`, `request.duration` (each with its allocation callback), three
    // histogram records. The request counter is counted in the VM.
    assert_eq!(log, calls(&[(PROPERTY, 2), (ALLOC, 2), (RECORD, 3)]));
}

#[test]
fn optional_labels_and_histograms_change_the_count() {
    // The cluster label is one more property read; the header label comes from the same read.
    let emu = emulator(&json!({"upstream_cluster": true, "request_header": {"name": "user-agent"}}));
    one_request(&emu, "/a");
    let [_, _, log] = one_request(&emu, "/a");
    assert_eq!(log, calls(&[(PROPERTY, 3), (ALLOC, 3), (RECORD, 3)]));
    // Histograms left out cost nothing; without the duration histogram the duration is not read.
    let emu = emulator(&json!({"histograms": ["duration"]}));
    one_request(&emu, "/a");
    let [_, _, log] = one_request(&emu, "/a");
    assert_eq!(log, calls(&[(PROPERTY, 2), (ALLOC, 2), (RECORD, 1)]));
    let emu = emulator(&json!({"histograms": []}));
    one_request(&emu, "/a");
    let [_, _, log] = one_request(&emu, "/a");
    assert_eq!(log, calls(&[(PROPERTY, 1), (ALLOC, 1)]));
}

#[test]
fn a_new_label_set_is_admitted_and_defined_once() {
    let emu = emulator(&json!({}));
    one_request(&emu, "/a");
    let [_, _, log] = one_request(&emu, "/b");
    // Admission: is the set known to another worker (no), read the count (with its allocation),
    // raise it, mark the set; then the counter and three histograms are defined.
    assert_eq!(
        log,
        calls(&[(PROPERTY, 2), (ALLOC, 3), (SHARED_GET, 2), (SHARED_SET, 2), (DEFINE, 4), (RECORD, 3)])
    );
}

#[test]
fn beyond_the_cap_a_request_costs_no_more_than_a_known_one() {
    let emu = emulator(&json!({"max_series": 1}));
    one_request(&emu, "/a");
    one_request(&emu, "/b"); // defines the overflow series
    let [_, _, log] = one_request(&emu, "/c");
    // The VM holds the whole cap itself, so it needs not ask the other workers.
    assert_eq!(log, calls(&[(PROPERTY, 2), (ALLOC, 2), (RECORD, 3)]));
}

#[test]
fn counters_reach_envoy_from_the_tick() {
    let emu = emulator(&bench_config());
    for _ in 0..5 {
        one_request(&emu, "/bench/item");
    }
    let name = "gatewasm_http_requests_total;host=localhost;path=/bench/item;method=GET;code=200";
    assert_eq!(emu.metric(name), Some(0), "nothing before the tick");
    emu.reset_host_calls();
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric(name), Some(5));
    // One increment for the series and one for the memory gauge's first report; the series
    // gauge is a read of the shared count and a set.
    let tick = emu.host_calls();
    assert_eq!(tick.get(INCREMENT), Some(&2), "{tick:?}");
    emu.reset_host_calls();
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let idle = emu.host_calls();
    assert_eq!(idle.get(INCREMENT), None, "nothing counted, memory unchanged: nothing sent: {idle:?}");
}
