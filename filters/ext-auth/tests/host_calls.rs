//! Host calls per request, counted by the emulator: each one crosses from the VM into Envoy
//! (about 1 µs in Envoy 1.40 with V8), so a change that adds one shows up here as a failing
//! count. Counts, not timings.
//! Build first: cargo build --release --target wasm32-wasip1 -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;

mod emu;

use emu::emulator;
use gatewasm_emulator::{host_call_counts as calls, Action, Emulator};
use gatewasm_envoy::bench::Scenario;
use serde_json::json;

const REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/bench/item?id=1"),
    (":authority", "localhost:10000"),
    (":scheme", "http"),
    ("user-agent", "wrk"),
    ("authorization", "Bearer tok"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "7b0d6f0e-8a4e-4b8e-9d5c-3c1e4d2f9a10"),
];

/// Host calls of one allowed request (after a warm-up stream): request headers, the answer, the
/// response headers.
fn allowed_request(emu: &Emulator, answer: &[(&str, &str)], body: &[u8]) -> [BTreeMap<String, u64>; 3] {
    let mut out = None;
    for _ in 0..2 {
        emu.reset_host_calls();
        let mut s = emu.stream();
        assert_eq!(s.request_headers(REQUEST, true).unwrap(), Action::Pause);
        let req = s.host_calls();
        let token = emu.http_calls()[0].token;
        emu.reset_host_calls();
        emu.respond_http_call(token, answer, body, &[]).unwrap();
        let callout = emu.host_calls();
        assert!(!s.request_paused());
        emu.reset_host_calls();
        assert_eq!(s.response_headers(&[(":status", "200")], true).unwrap(), Action::Continue);
        s.log().unwrap();
        let resp = s.host_calls();
        out = Some([req, callout, resp]);
    }
    out.unwrap()
}

const PAIRS: &str = "proxy_get_header_map_pairs";
const ALLOC: &str = "proxy_on_memory_allocate";
const DISPATCH: &str = "proxy_http_call";
const TIME: &str = "proxy_get_current_time_nanoseconds";
const SET: &str = "proxy_replace_header_map_value";
const RECORD: &str = "proxy_record_metric";
const CONTINUE: &str = "proxy_continue_stream";
const EFFECTIVE: &str = "proxy_set_effective_context";
const BUFFER: &str = "proxy_get_buffer_bytes";

/// The configuration of benchmark row `key`.
fn bench_config(key: &str) -> serde_json::Value {
    serde_json::from_str::<Scenario>(include_str!("../../../test-harness/envoy/bench/ext-auth.json"))
        .unwrap()
        .wasm_configuration(key)
        .unwrap()
}

const ANSWER: &[(&str, &str)] = &[(":status", "200"), ("x-user-id", "1")];

#[test]
fn bench_config_allowed_request() {
    let emu = emulator(&bench_config("wasm"));
    let [req, callout, resp] = allowed_request(&emu, ANSWER, b"");
    // One read of every request header (and the allocation Envoy calls back for) and the
    // callout. No clock: a timeout is told by Envoy's answer, and the histogram is off by default.
    assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1), (DISPATCH, 1)]), "request headers");
    // Back on the stream's context, the answer's headers, one header set, and resuming the
    // request.
    assert_eq!(callout, calls(&[(EFFECTIVE, 1), (PAIRS, 1), (ALLOC, 1), (SET, 1), (CONTINUE, 1)]), "answer");
    // Nothing on the response path; counters are counted in the VM and flushed from the tick.
    assert_eq!(resp, calls(&[]), "response headers");
}

/// The benchmark's "host calls alone" row (`calls-filter`) makes exactly the crossings of an
/// allowed check, so the difference between the two rows is the filter's own work.
#[test]
fn the_calls_row_makes_the_allowed_checks_calls() {
    let calls_row = gatewasm_emulator::for_module("calls-filter", bench_config("calls").to_string())
        .and_then(|b| b.cluster("ext_auth").build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(calls_row.configured(), "{:?}", calls_row.logs());
    let alone = allowed_request(&calls_row, ANSWER, b"");
    let filter = allowed_request(&emulator(&bench_config("wasm")), ANSWER, b"");
    assert_eq!(alone, filter);
}

#[test]
fn the_duration_histogram_costs_two_clock_reads_and_one_record_per_check() {
    let config = bench_config("wasm-histogram");
    assert_eq!(config["duration_histogram"], json!(true));
    let emu = emulator(&config);
    let [req, callout, resp] = allowed_request(&emu, ANSWER, b"");
    // The latency costs a clock read when the check is sent and when it answers, and a record.
    assert_eq!(req, calls(&[(PAIRS, 1), (ALLOC, 1), (DISPATCH, 1), (TIME, 1)]), "request headers");
    assert_eq!(
        callout,
        calls(&[(EFFECTIVE, 1), (PAIRS, 1), (ALLOC, 1), (TIME, 1), (SET, 1), (RECORD, 1), (CONTINUE, 1)]),
        "answer"
    );
    assert_eq!(resp, calls(&[]), "response headers");
}

/// The answer's body stays in Envoy unless it is a denial's, which the client gets: an auth
/// service that allows with a body (the seed's says `OK (authenticated)`) costs no more.
#[test]
fn only_a_denial_reads_the_answer_body() {
    let emu = emulator(&bench_config("wasm"));
    let [_, callout, _] = allowed_request(&emu, ANSWER, b"OK (authenticated)");
    assert_eq!(
        callout,
        calls(&[(EFFECTIVE, 1), (PAIRS, 1), (ALLOC, 1), (SET, 1), (CONTINUE, 1)]),
        "allowed with a body"
    );
    let mut s = emu.stream();
    s.request_headers(REQUEST, true).unwrap();
    let token = emu.http_calls()[0].token;
    emu.reset_host_calls();
    emu.respond_http_call(
        token,
        &[(":status", "401"), ("www-authenticate", "Bearer")],
        b"{\"error\":1}",
        &[],
    )
    .unwrap();
    let denial = emu.host_calls();
    assert_eq!(denial.get(BUFFER), Some(&1), "the denial's body, once: {denial:?}");
    assert_eq!(denial.get(ALLOC), Some(&2), "the answer's headers and its body");
    assert_eq!(s.local_reply().unwrap().body, b"{\"error\":1}");
}

#[test]
fn a_spoofed_header_costs_one_remove() {
    let emu = emulator(&json!({"cluster": "auth", "allowed_upstream_headers": ["x-user-id"]}));
    let mut s = emu.stream();
    let mut request = REQUEST.to_vec();
    request.push(("x-user-id", "evil"));
    emu.reset_host_calls();
    s.request_headers(&request, true).unwrap();
    assert_eq!(s.host_calls().get("proxy_remove_header_map_value"), Some(&1));
}
