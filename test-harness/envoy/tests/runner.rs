//! The runner against a real Envoy: forwarding, wasm, direct response, native filters, refused
//! configuration and teardown.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::Duration;

use gatewasm_envoy::{
    noop_filter_wasm, Cluster, EchoUpstream, EnvoyBuilder, HttpFilter, Reply, Request, ScriptedUpstream,
    WasmFilter,
};
use serde_json::json;

/// The noop module; fails (does not skip) with the build command when it is missing.
fn noop() -> PathBuf {
    match noop_filter_wasm() {
        Ok(path) => path,
        Err(err) => panic!("{err:#}"),
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; the runner reaps, so existence means alive.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn assert_echo_forwarding(builder: EnvoyBuilder) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = builder.upstream(upstream.addr()).start().unwrap();
    let response = envoy
        .send(
            &Request::post("/some/path?q=1", "hello body")
                .header("x-single", "one")
                .header("x-multi", "a")
                .header("x-multi", "b"),
        )
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-echo-upstream"), Some("1"));
    let echo = response.echo().unwrap();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.path, "/some/path?q=1");
    assert_eq!(echo.body, "hello body");
    assert_eq!(echo.header("x-single"), Some("one"));
    assert_eq!(echo.header_all("x-multi"), vec!["a", "b"]);
    assert_eq!(echo.header("host"), Some("localhost"));
    // Envoy adds its own request headers on the way.
    assert!(echo.header("x-request-id").is_some(), "{echo:?}");
}

#[test]
fn bare_envoy_forwards_to_echo_upstream() {
    assert_echo_forwarding(EnvoyBuilder::new());
}

#[test]
fn noop_wasm_filter_forwards_the_same() {
    let builder = EnvoyBuilder::new().wasm(WasmFilter::new(noop()).configuration("{}"));
    assert_echo_forwarding(builder);
}

#[test]
fn two_wasm_filters_with_vm_ids_forward() {
    let builder = EnvoyBuilder::new()
        .wasm(WasmFilter::new(noop()).name("first").vm_id("a"))
        .wasm(WasmFilter::new(noop()).name("second").vm_id("b"));
    assert_echo_forwarding(builder);
}

#[test]
fn direct_response_route() {
    let envoy = EnvoyBuilder::new().direct_response(418, "teapot").start().unwrap();
    let response = envoy.get("/anything").unwrap();
    assert_eq!(response.status, 418);
    assert_eq!(response.text(), "teapot");
    assert_eq!(response.header("server"), Some("envoy"));
}

#[test]
fn native_header_mutation_filter() {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(HttpFilter::header_mutation(json!({
            "request_mutations": [
                { "append": { "header": { "key": "x-added", "value": "yes" } } },
                { "remove": "x-drop-me" }
            ],
            "response_mutations": [
                { "append": { "header": { "key": "x-served-by", "value": "gatewasm" } } }
            ]
        })))
        .upstream(upstream.addr())
        .start()
        .unwrap();
    let response = envoy.send(&Request::get("/").header("x-drop-me", "1")).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-served-by"), Some("gatewasm"));
    let echo = response.echo().unwrap();
    assert_eq!(echo.header("x-added"), Some("yes"));
    assert_eq!(echo.header("x-drop-me"), None);
}

#[test]
fn lua_filter_and_admin_stats() {
    let envoy = EnvoyBuilder::new()
        .filter(HttpFilter::lua(
            r#"function envoy_on_response(handle) handle:headers():add("x-lua", "1") end"#,
        ))
        .bootstrap_patch(json!({ "stats_config": { "stats_tags": [
            { "tag_name": "gatewasm_test", "fixed_value": "yes" }
        ] } }))
        .start()
        .unwrap();
    for _ in 0..3 {
        let response = envoy.get("/").unwrap();
        assert_eq!(response.header("x-lua"), Some("1"));
    }
    assert_eq!(envoy.stat("http.ingress_http.downstream_rq_2xx").unwrap(), Some(3));
    let prometheus = envoy.admin_get("/stats/prometheus").unwrap();
    assert!(prometheus.contains("gatewasm_test=\"yes\""), "fixed stats tag missing");
}

#[test]
fn extra_cluster_reaches_scripted_upstream() {
    // A route patch points the route at the extra cluster: the same mechanism later filters use
    // for callouts (JWKS, ext-auth) reaches this cluster by name.
    let scripted = ScriptedUpstream::start().unwrap();
    scripted.set("/jwks", Reply::json(&json!({ "keys": [] })).header("x-script", "1"));
    scripted.set("/slow", Reply::status(204).delay(Duration::from_millis(300)));
    let envoy = EnvoyBuilder::new()
        .cluster(Cluster::new("auth", scripted.addr()).connect_timeout(Duration::from_millis(500)))
        .route_patch(json!({ "direct_response": null, "route": { "cluster": "auth", "timeout": "5s" } }))
        .start()
        .unwrap();
    let response = envoy.get("/jwks?x=1").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-script"), Some("1"));
    assert_eq!(response.json().unwrap(), json!({ "keys": [] }));
    assert_eq!(envoy.get("/slow").unwrap().status, 204);
    assert_eq!(envoy.get("/unknown").unwrap().status, 404);
    let received = scripted.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].path, "/jwks?x=1");
}

#[test]
fn non_wasm_module_is_refused_with_a_clear_log() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, "this is not a wasm module").unwrap();
    let log =
        EnvoyBuilder::new().wasm(WasmFilter::new(&bogus).name("bogus")).start_expecting_failure().unwrap();
    assert!(log.contains("Failed to load Wasm code") || log.contains("corrupted Wasm module"), "{log}");
    assert!(log.contains("Unable to create Wasm plugin bogus"), "{log}");

    // And `start` reports the same as an error carrying the log tail.
    let err = EnvoyBuilder::new().wasm(WasmFilter::new(&bogus).name("bogus")).start().err().unwrap();
    assert!(format!("{err:#}").contains("Unable to create Wasm plugin bogus"));
}

#[test]
fn missing_module_is_refused() {
    let log = EnvoyBuilder::new()
        .wasm(WasmFilter::new("/nonexistent/missing.wasm"))
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("missing.wasm"), "{log}");
}

#[test]
fn start_expecting_failure_errors_when_envoy_starts() {
    let err = EnvoyBuilder::new().start_expecting_failure().err().unwrap();
    assert!(format!("{err:#}").contains("failure was expected"));
}

#[test]
fn teardown_leaves_no_envoy_process() {
    let envoy = EnvoyBuilder::new().wasm(WasmFilter::new(noop())).start().unwrap();
    let pid = envoy.pid().unwrap();
    assert!(process_alive(pid));
    drop(envoy);
    assert!(!process_alive(pid), "envoy {pid} survived drop");

    let envoy = EnvoyBuilder::new().start().unwrap();
    let pid = envoy.pid().unwrap();
    let log = envoy.stop();
    assert!(!process_alive(pid), "envoy {pid} survived stop");
    assert!(log.contains("starting main dispatch loop"), "{log}");
}

#[test]
fn teardown_on_panic_kills_envoy() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let mut envoy = EnvoyBuilder::new().start().unwrap();
        envoy.keep_on_panic(false);
        tx.send(envoy.pid().unwrap()).unwrap();
        panic!("deliberate panic with a live Envoy");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().unwrap();
    assert!(!process_alive(pid), "envoy {pid} survived a panicking test");
}

#[test]
fn validate_mode() {
    let builder = EnvoyBuilder::new().wasm(WasmFilter::new(noop()));
    let ok = builder.validate().unwrap();
    assert!(ok.ok, "{}", ok.output);

    let bad = EnvoyBuilder::new()
        .raw_filter(json!({ "name": "envoy.filters.http.no_such_filter", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.no_such.v3.Nope" } }))
        .validate()
        .unwrap();
    assert!(!bad.ok, "{}", bad.output);
}

#[test]
fn concurrency_is_configurable() {
    let envoy = EnvoyBuilder::new().concurrency(2).start().unwrap();
    let stats = envoy.stats().unwrap();
    assert_eq!(stats.get("server.concurrency"), Some(&2));
}

#[test]
fn a_closed_port_refuses_connections_and_cannot_be_taken() {
    let closed = gatewasm_envoy::ClosedPort::new().unwrap();
    let err = std::net::TcpStream::connect(closed.addr()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // std binds with SO_REUSEADDR, as servers (and Envoy) do: still refused.
    assert!(std::net::TcpListener::bind(closed.addr()).is_err());
}
