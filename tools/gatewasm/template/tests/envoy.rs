//! The same filter in a real Envoy, as a Wasm module and as a native dynamic module (each test
//! runs once per target). `Target::filter` builds the module first when needed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatewasm_envoy::{for_each_target, EchoUpstream, EnvoyBuilder, HttpFilter, Request, Target};
use serde_json::json;

fn filter(target: Target, config: serde_json::Value) -> HttpFilter {
    target.filter("{{name}}", "{{lib}}", &config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(guards_and_counts_in_envoy);

fn guards_and_counts_in_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, json!({"allowed": ["acme"]})))
        .upstream(upstream.addr())
        .bootstrap_patch(json!({"stats_config": {"stats_tags": [
            {"tag_name": "tenant", "regex": "(;tenant=([^;]*))"},
            {"tag_name": "decision", "regex": "(;decision=([^;]*))"},
        ]}}))
        .start()
        .unwrap();
    let response = envoy.send(&Request::get("/x").header("x-tenant", "acme")).unwrap();
    assert_eq!(response.status, 200);
    let response = envoy.send(&Request::get("/x").header("x-tenant", "initech")).unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.json().unwrap()["code"], "tenant_denied");
    envoy
        .prometheus_until(&[
            "\n{{lib}}_requests_total{tenant=\"acme\",decision=\"allowed\"} 1\n",
            "\n{{lib}}_requests_total{tenant=\"other\",decision=\"denied\"} 1\n",
        ])
        .unwrap();
}

/// envoy.yaml, with its module path pointed at the module the tests built, is a configuration
/// Envoy accepts (validation loads the module and configures the plugin).
#[test]
fn the_standalone_config_is_valid() {
    let module = gatewasm_emulator::wasm_path("{{name}}").unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy.yaml")).unwrap();
    let text = text.replace("target/wasm32-wasip1/release/{{lib}}.wasm", &module.display().to_string());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, text).unwrap();
    let validation = gatewasm_envoy::validate_config_file(&config).unwrap();
    assert!(validation.ok, "{}", validation.output);
}
