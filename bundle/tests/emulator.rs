//! The bundle module in the emulator: each root id runs its filter as that filter's own module
//! does, and a root id the module does not have is refused.
//! Build it first: cargo build --profile bundle --target wasm32-wasip1 -p gatewasm-bundle

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, UNIX_EPOCH};

use gatewasm_emulator::{Action, Emulator, EmulatorBuilder, LogLevel, MetricType, Stream};
use serde_json::{json, Value};

/// An HS256 token for the demo secret: `{"name":"Admin","email":"admin@qq.com","id":1}`, valid
/// until 2100.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiQWRtaW4iLCJlbWFpbCI6ImFkbWluQHFxLmNvbSIsImlkIjoxLCJpYXQiOjE3NjQwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.iK8q66hzQBfVMzUR11JlMVw-PCysHjJTqkOl1TiVp90";

const ROOT_IDS: [&str; 5] = ["jwt-auth", "ext-auth", "header-rewrite", "http-metrics", "kafka-log"];

fn builder(root_id: &str, config: &Value) -> EmulatorBuilder {
    let path =
        gatewasm_paths::wasm_file("gatewasm.wasm", "gatewasm-bundle").unwrap_or_else(|e| panic!("{e}"));
    Emulator::load(path)
        .root_id(root_id)
        .plugin_config(config.to_string())
        .log_level(LogLevel::Info)
        // 2026-01-15, after the token's iat.
        .time(UNIX_EPOCH + Duration::from_secs(1_768_435_200))
}

fn emulator(root_id: &str, config: &Value) -> Emulator {
    let emu = builder(root_id, config).build().unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "{root_id}: configuration refused: {:?}", emu.logs());
    emu
}

fn request(emu: &Emulator, method: &str, path: &str, extra: &[(&str, &str)]) -> (Stream, Action) {
    let mut s = emu.stream();
    let mut headers =
        vec![(":method", method), (":path", path), (":authority", "shop.example.com"), (":scheme", "http")];
    headers.extend_from_slice(extra);
    let action = s.request_headers(&headers, true).unwrap();
    (s, action)
}

fn jwt_config() -> Value {
    json!({
        "providers": {"login": {
            "keys": [{"secret": "gatewasm-demo-secret-change-me-0123456789"}],
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "claim_to_headers": [{"header_name": "x-user-id", "claim_name": "id"}]
        }},
        "rules": [{"match": {"prefix": "/jwt/"}, "requires": {"provider_name": "login"}}]
    })
}

#[test]
fn jwt_auth_verifies_tokens() {
    let emu = emulator("jwt-auth", &jwt_config());
    let (s, action) = request(&emu, "GET", "/jwt/profile", &[("x-user-id", "999")]);
    assert_eq!(action, Action::Pause);
    let reply = s.local_reply().expect("a 401 without a token");
    assert_eq!(reply.status, 401);

    let bearer = format!("Bearer {TOKEN}");
    let (s, action) =
        request(&emu, "GET", "/jwt/profile", &[("authorization", &bearer), ("x-user-id", "999")]);
    assert_eq!(action, Action::Continue, "{:?}", s.local_reply());
    assert_eq!(s.request_header("x-user-id").as_deref(), Some("1"), "the claim replaces the client's copy");
}

#[test]
fn ext_auth_asks_the_auth_service() {
    let config = json!({
        "cluster": "ext_auth", "path_prefix": "/extauth", "timeout_ms": 1000,
        "allowed_upstream_headers": ["x-admin-id"],
        "default": "skip",
        "rules": [{"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}]
    });
    let emu = builder("ext-auth", &config).cluster("ext_auth").build().unwrap();
    assert!(emu.configured(), "{:?}", emu.logs());

    let (_s, action) = request(&emu, "GET", "/public", &[]);
    assert_eq!(action, Action::Continue, "the default skips the check");
    assert!(emu.http_calls().is_empty());

    let (s, action) = request(&emu, "GET", "/nodebackend/x", &[("x-admin-id", "999")]);
    assert_eq!(action, Action::Pause);
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "ext_auth");
    let path = calls[0].headers.iter().find(|(n, _)| n == ":path").map(|(_, v)| v.as_str());
    assert_eq!(path, Some("/extauth/nodebackend/x"));
    emu.respond_http_call(calls[0].token, &[(":status", "200"), ("x-admin-id", "1")], b"", &[]).unwrap();
    assert!(!s.request_paused());
    assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));
}

#[test]
fn header_rewrite_rewrites() {
    let config = json!({"rules": [{
        "name": "api",
        "match": {"path": {"prefix": "/api/"}},
        "path_rewrite": {"prefix": "/v2/"},
        "request": {"remove": ["x-debug"], "set": [{"name": "x-gateway", "value": "gatewasm"}]}
    }]});
    let emu = emulator("header-rewrite", &config);
    let (s, action) = request(&emu, "GET", "/api/users?id=7", &[("x-debug", "1")]);
    assert_eq!(action, Action::Continue);
    assert_eq!(s.request_header(":path").as_deref(), Some("/v2/users?id=7"));
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/api/users?id=7"));
    assert_eq!(s.request_header("x-gateway").as_deref(), Some("gatewasm"));
    assert_eq!(s.request_header("x-debug"), None);
}

#[test]
fn http_metrics_counts_requests() {
    let emu = emulator("http-metrics", &json!({"hosts": ["shop.example.com"]}));
    let (mut s, _) = request(&emu, "GET", "/orders/12345", &[]);
    s.response_headers(&[(":status", "200")], true).unwrap();
    s.log().unwrap();
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let counted: Vec<(String, u64)> = emu
        .metrics()
        .into_iter()
        .filter(|m| m.kind == MetricType::Counter && m.name.starts_with("gatewasm_http_requests_total"))
        .map(|m| (m.name, m.value))
        .collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    let (name, value) = &counted[0];
    assert_eq!(*value, 1);
    assert!(name.contains("host=shop.example.com") && name.contains("path=/orders/{id}"), "{name}");
}

#[test]
fn kafka_log_batches_records_to_the_bridge() {
    let config = json!({"cluster": "kafka-bridge", "topic": "access-logs", "flush_interval_ms": 200});
    let emu = builder("kafka-log", &config).cluster("kafka-bridge").build().unwrap();
    assert!(emu.configured(), "{:?}", emu.logs());
    let (mut s, _) = request(&emu, "GET", "/api/orders/7", &[("authorization", "Bearer s3cret")]);
    s.response_headers(&[(":status", "200")], true).unwrap();
    s.log().unwrap();
    assert!(emu.http_calls().is_empty(), "nothing is sent from the request path");
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "kafka-bridge");
    let body: Value = serde_json::from_slice(&calls[0].body).unwrap();
    let records = body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"]["path"], "/api/orders/7", "{body}");
}

#[test]
fn every_filter_keeps_refusing_its_bad_configuration() {
    for root_id in ROOT_IDS {
        let emu = builder(root_id, &json!({"no_such_field": 1})).build().unwrap();
        assert!(!emu.configured(), "{root_id} accepted an unknown field");
        assert!(emu.logged("no_such_field"), "{root_id}: {:?}", emu.logs());
    }
}

#[test]
fn a_root_id_the_module_lacks_is_refused_naming_it_and_the_plugins() {
    for root_id in ["jwt_auth", "", "hello"] {
        let emu = builder(root_id, &json!({})).build().unwrap();
        assert!(!emu.configured(), "root id {root_id:?} was accepted");
        let wanted = format!("root_id {root_id:?} names no plugin of this module");
        assert!(emu.logged(&wanted), "{wanted}: {:?}", emu.logs());
        assert!(
            emu.logged("jwt-auth, ext-auth, header-rewrite, http-metrics, kafka-log"),
            "{:?}",
            emu.logs()
        );
        // Envoy creates no stream for a refused configuration; a host that did would see every
        // request refused, none passed on unfiltered.
        let (s, action) = request(&emu, "GET", "/", &[]);
        assert_eq!(action, Action::Pause);
        assert_eq!(s.local_reply().map(|r| r.status), Some(500));
    }
}
