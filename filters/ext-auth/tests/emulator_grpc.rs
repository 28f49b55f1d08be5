//! The gRPC mode of the built module in the emulator: each check the module sends is decoded
//! with Envoy's generated types and answered by the tests' tonic auth service (`authz_grpc`,
//! its `Authorization::check` called in-process), as the emulator answers gRPC calls the way
//! Envoy does; timeouts and refused connections as Envoy reports them.
//! Build it first: cargo build --release --target wasm32-wasip1 -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod authz_grpc;

use std::time::Duration;

use authz_grpc::Scripted;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use gatewasm_emulator::{for_module, Action, Emulator, GrpcResponse, LogLevel, Stream};
use prost::Message as _;
use serde_json::json;

fn emulator(config: serde_json::Value) -> Emulator {
    let emu = for_module("ext-auth", config.to_string())
        .and_then(|b| b.cluster("authz").source_address("10.0.0.7:4321").log_level(LogLevel::Info).build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

fn config() -> serde_json::Value {
    json!({
        "grpc_service": {"cluster": "authz", "timeout_ms": 300},
        "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
    })
}

/// Sends `GET path`; the module must pause for its check, which is returned decoded.
fn get(emu: &Emulator, path: &str) -> (Stream, u32, CheckRequest) {
    let mut s = emu.stream();
    let headers = [
        (":method", "GET"),
        (":path", path),
        (":authority", "shop.example.com"),
        (":scheme", "http"),
        ("x-admin-id", "999"),
    ];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let call = emu.grpc_calls().pop().expect("a check");
    assert_eq!(
        (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
        ("authz", "envoy.service.auth.v3.Authorization", "Check")
    );
    assert_eq!(call.timeout, Some(Duration::from_millis(300)));
    (s, call.token, CheckRequest::decode(call.message.as_slice()).unwrap())
}

/// The service's answer to `check`, as the emulator's upstream sends it.
fn serve(check: CheckRequest) -> GrpcResponse {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match runtime.block_on(Scripted::default().check(tonic::Request::new(check))) {
        Ok(response) => GrpcResponse::message(&response.into_inner().encode_to_vec()),
        Err(status) => GrpcResponse::status(status.code() as u32, status.message()),
    }
}

#[test]
fn the_service_allows_with_identity_and_denies_with_its_answer() {
    let emu = emulator(config());
    let (s, token, check) = get(&emu, "/allow");
    let http =
        check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()).unwrap();
    assert_eq!(http.headers.get(":authority").map(String::as_str), Some("shop.example.com"));
    assert!(!http.headers.contains_key("x-admin-id"), "the forged identity is removed before the check");
    assert_eq!(http.protocol, "HTTP/1.1");
    let source = format!("{:?}", check.attributes.as_ref().unwrap().source);
    assert!(source.contains("10.0.0.7") && source.contains("4321"), "{source}");
    emu.respond_grpc_call(token, &serve(check)).unwrap();
    assert!(!s.request_paused());
    assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));
    assert_eq!(s.request_header("x-admin-email").as_deref(), Some("admin@qq.com"));

    let (s, token, check) = get(&emu, "/deny");
    emu.respond_grpc_call(token, &serve(check)).unwrap();
    let reply = s.local_reply().expect("denied");
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, br#"{"error":"no token"}"#);
}

#[test]
fn failures_refuse_with_status_on_error() {
    let emu = emulator(config());
    let (s, token, check) = get(&emu, "/error");
    emu.respond_grpc_call(token, &serve(check)).unwrap();
    assert_eq!(
        s.local_reply().map(|r| (r.status, r.details)),
        Some((403, "ext_auth_auth_error".to_string()))
    );

    let (s, token, _) = get(&emu, "/slow");
    let _ = token;
    emu.advance_clock(Duration::from_millis(301)).unwrap();
    assert_eq!(s.local_reply().map(|r| r.details), Some("ext_auth_auth_timeout".to_string()));

    let (s, token, _) = get(&emu, "/a");
    emu.fail_grpc_call(token).unwrap();
    assert_eq!(s.local_reply().map(|r| r.status), Some(403));

    let mut unknown = config();
    unknown["grpc_service"]["cluster"] = json!("nowhere");
    unknown["status_on_error"] = json!(503);
    let emu = emulator(unknown);
    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/"), (":authority", "h")];
    s.request_headers(&headers, true).unwrap();
    assert_eq!(s.local_reply().map(|r| r.status), Some(503));
    assert!(emu.grpc_calls().is_empty());
}
