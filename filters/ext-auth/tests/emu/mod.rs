//! The built module in the emulator, configured, with the clusters the tests' configurations use.

#![allow(dead_code)]

use gatewasm_emulator::{for_module, Emulator, LogLevel};
use serde_json::Value;

/// The module with `config`; fails the test if the configuration is refused.
pub fn emulator(config: &Value) -> Emulator {
    build(config, false)
}

/// The same, as Envoy runs it with `allow_on_headers_stop_iteration: true` (needed for
/// `with_request_body`).
pub fn emulator_holding_headers(config: &Value) -> Emulator {
    build(config, true)
}

fn build(config: &Value, hold_headers: bool) -> Emulator {
    let emu = for_module("ext-auth", config.to_string())
        .and_then(|b| {
            b.cluster("auth")
                .cluster("ext_auth")
                .allow_on_headers_stop_iteration(hold_headers)
                .log_level(LogLevel::Info)
                .build()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}
