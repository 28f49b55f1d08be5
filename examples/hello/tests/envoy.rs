//! The same example filter in a real Envoy gives the same answers as in the emulator, built as a
//! Wasm module and as a native dynamic module (each test runs once per target).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewasm_envoy::{for_each_target, EchoUpstream, EnvoyBuilder, HttpFilter, Request, Target};
use serde_json::json;

fn filter(target: Target, config: serde_json::Value) -> HttpFilter {
    target.filter("hello", "hello", &config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(
    greets_blocks_and_counts_in_envoy,
    envoy_refuses_bad_config_with_a_log_line_naming_the_field,
    two_workers_count_into_one_series,
);

fn greets_blocks_and_counts_in_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, json!({"greeting": "hi", "blocked_prefix": "/admin"})))
        .upstream(upstream.addr())
        .bootstrap_patch(
            json!({"stats_config": {"stats_tags": [{"tag_name": "method", "regex": "(;method=([^;]*))"}]}}),
        )
        .start()
        .unwrap();
    let response = envoy.send(&Request::get("/x").header("host", "Shop.Example.com:8080")).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.echo().unwrap().header("x-greeting"), Some("hi shop.example.com"));

    let response = envoy.send(&Request::post("/admin/users", "x")).unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json().unwrap()["code"], "blocked_path");

    envoy
        .prometheus_until(&[
            "\nhello_requests_total{method=\"GET\"} 1\n",
            "\nhello_requests_total{method=\"POST\"} 1\n",
        ])
        .unwrap();
}

fn envoy_refuses_bad_config_with_a_log_line_naming_the_field(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let log = EnvoyBuilder::new()
        .filter(filter(target, json!({"blocked_prefix": "admin"})))
        .upstream(upstream.addr())
        .start_expecting_failure()
        .unwrap();
    assert!(
        log.contains(
            "hello: invalid plugin configuration: `blocked_prefix` = \"admin\": must start with '/'"
        ),
        "{log}"
    );
}

/// With two workers each has its own plugin (a VM, or a native plugin instance), and their
/// counts land in the same Prometheus series.
fn two_workers_count_into_one_series(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, json!({"greeting": "hi"})))
        .upstream(upstream.addr())
        .concurrency(2)
        .bootstrap_patch(
            json!({"stats_config": {"stats_tags": [{"tag_name": "method", "regex": "(;method=([^;]*))"}]}}),
        )
        .start()
        .unwrap();
    // Each request is a connection of its own, so the kernel spreads them over both workers.
    let requests = 40;
    for _ in 0..requests {
        let response = envoy.get("/x").unwrap();
        assert_eq!(response.echo().unwrap().header("x-greeting"), Some("hi localhost"));
    }
    envoy.prometheus_until(&[&format!("\nhello_requests_total{{method=\"GET\"}} {requests}\n")]).unwrap();
    // Both workers served (the listener's per-worker connection counters), so both plugins
    // counted.
    let per_worker = envoy.admin_get("/stats?filter=worker_.*downstream_cx_total").unwrap();
    let busy = per_worker.lines().filter(|l| !l.trim_end().ends_with(": 0")).count();
    assert_eq!(busy, 2, "{per_worker}");
}

#[test]
fn the_standalone_config_is_valid() {
    validate_standalone("examples/hello/envoy.yaml");
}

/// Envoy's validation loads the native module and runs its configuration hook.
#[test]
fn the_standalone_native_config_is_valid() {
    validate_standalone("examples/hello/envoy-native.yaml");
}

fn validate_standalone(config: &str) {
    // Run from the repository root, as the config's comment tells users to: the module path in
    // it is relative to there.
    let root = gatewasm_envoy::workspace_root();
    let native = gatewasm_envoy::native_module("hello").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(gatewasm_envoy::envoy_binary().unwrap())
        .args(["--mode", "validate", "-c", config])
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native.parent().unwrap())
        .current_dir(&root)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}
