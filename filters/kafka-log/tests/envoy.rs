//! The filter in a real Envoy 1.40 with two workers, sending to a scripted REST proxy: every
//! field as Envoy really fills it, one record per request whichever worker served it, response
//! flags on a failed upstream, a refused configuration, and the records a plugin holds when its
//! listener is removed (sent from `on_done`). The end-to-end run through the
//! bridge into a Kafka-protocol broker is `kafka-bridge/tests/end_to_end.rs`. Each test runs
//! with the Wasm module and with the native dynamic module, one set of expectations for both,
//! except the removed listener's (Envoy does not wait for a native module's `on_done`).
//! Build first: cargo build --release --target wasm32-wasip1 -p kafka-log, and cargo build
//! --release -p kafka-log

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use gatewasm_envoy::{
    for_each_target, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply, Request,
    ScriptedUpstream, Target, NATIVE_REFUSAL,
};
use serde_json::{json, Value};

const PROXY: &str = "kafka-rest";

fn filter(target: Target, config: &Value) -> HttpFilter {
    target.filter("kafka-log", "kafka_log", config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(
    every_field_as_envoy_fills_it_one_record_per_request,
    a_failed_upstream_is_logged_with_its_response_flag,
    envoy_refuses_a_bad_configuration_naming_the_field,
);

fn rest_proxy() -> ScriptedUpstream {
    let proxy = ScriptedUpstream::start().unwrap();
    // An accepted batch without per-record results: every record stored.
    proxy.set("/topics/access-logs", Reply::json(&json!({})));
    proxy
}

fn config() -> Value {
    json!({"cluster": PROXY, "topic": "access-logs", "flush_interval_ms": 200, "key_field": "request_id",
           "fields": {"request_headers": {"auth": "authorization"}, "properties": {"mtls": "connection.mtls"}}})
}

fn envoy(target: Target, upstream: SocketAddr, proxy: &ScriptedUpstream, config: &Value) -> Envoy {
    EnvoyBuilder::new()
        .filter(filter(target, config))
        .upstream(upstream)
        .cluster(Cluster::new(PROXY, proxy.addr()))
        .route_patch(json!({"name": "orders"}))
        .concurrency(2)
        .start()
        .unwrap()
}

/// Every record the proxy received so far, with the produce request's headers checked.
fn records(proxy: &ScriptedUpstream) -> Vec<Value> {
    let mut out = Vec::new();
    for req in proxy.received() {
        assert_eq!(req.method, "POST");
        assert_eq!(req.header("content-type"), Some("application/vnd.kafka.json.v2+json"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        out.extend(body["records"].as_array().unwrap().iter().cloned());
    }
    out
}

fn wait_for(proxy: &ScriptedUpstream, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = records(proxy);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn every_field_as_envoy_fills_it_one_record_per_request(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let proxy = rest_proxy();
    let envoy = envoy(target, upstream.addr(), &proxy, &config());
    let mut sent = Vec::new();
    for i in 0..40 {
        let id = format!("req-{i:03}");
        let response = envoy
            .send(
                &Request::post(&format!("/items/{i}?q=1"), "0123456789")
                    .header("x-request-id", &id)
                    .header("user-agent", "gatewasm-test")
                    .header("host", "shop.example.com")
                    .header("authorization", "Bearer never-logged"),
            )
            .unwrap();
        assert_eq!(response.status, 200);
        sent.push((id, response.body.len()));
    }
    let got = wait_for(&proxy, 40);
    assert_eq!(got.len(), 40, "{got:#?}");
    for (id, body_len) in &sent {
        let matching: Vec<&Value> = got.iter().filter(|r| r["value"]["request_id"] == json!(id)).collect();
        assert_eq!(matching.len(), 1, "{id}");
        let record = matching[0];
        assert_eq!(record["key"], json!(id));
        let v = &record["value"];
        let i: usize = id.trim_start_matches("req-").parse().unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], format!("/items/{i}?q=1"));
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["bytes_received"], 10);
        assert_eq!(v["bytes_sent"], *body_len as u64);
        assert!(v["duration"].as_u64().unwrap() < 5000);
        assert!(v["upstream_service_time"].as_str().unwrap().parse::<u64>().is_ok(), "{v}");
        assert_eq!(v["user_agent"], "gatewasm-test");
        assert_eq!(v["authority"], "shop.example.com");
        assert_eq!(v["upstream_host"], upstream.addr().to_string());
        assert_eq!(v["upstream_cluster"], "upstream");
        assert!(v["downstream_remote_address"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
        assert_eq!(v["auth"], "[REDACTED]");
        assert_eq!(v["mtls"], false);
        let start = v["start_time"].as_str().unwrap();
        assert!(start.len() == 24 && start.ends_with('Z'), "{start}");
        assert_eq!(v["route_name"], "orders");
        assert!(v["x_forwarded_for"].is_null() || v["x_forwarded_for"].is_string(), "{v}");
    }
    let stats = envoy.stats().unwrap();
    let sent_counter =
        stats.iter().find(|(k, _)| k.ends_with("kafka_log_records_sent_total")).map(|(_, v)| *v);
    // Counters reach Envoy on the next tick after the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sent_counter = sent_counter.unwrap_or(0);
    while sent_counter < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        sent_counter = envoy
            .stats()
            .unwrap()
            .iter()
            .find(|(k, _)| k.ends_with("kafka_log_records_sent_total"))
            .map_or(0, |(_, v)| *v);
    }
    assert_eq!(sent_counter, 40);
    assert!(!String::from_utf8_lossy(
        &proxy.received().iter().flat_map(|r| r.body.clone()).collect::<Vec<u8>>()
    )
    .contains("never-logged"));
}

fn a_failed_upstream_is_logged_with_its_response_flag(target: Target) {
    // A port nobody listens on: Envoy answers 503 with the UF (connection failure) flag.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = rest_proxy();
    let envoy = envoy(target, dead, &proxy, &config());
    let response = envoy.send(&Request::get("/down").header("x-request-id", "dead-1")).unwrap();
    assert_eq!(response.status, 503);
    let got = wait_for(&proxy, 1);
    let v = &got[0]["value"];
    assert_eq!(v["response_code"], 503);
    let flags = v["response_flags"].as_str().unwrap();
    assert!(flags.split(',').any(|f| f == "UF"), "{flags}");
    assert_eq!(v["upstream_host"], dead.to_string());
    assert_eq!(v["bytes_sent"], response.body.len() as u64);
}

fn envoy_refuses_a_bad_configuration_naming_the_field(target: Target) {
    let log = EnvoyBuilder::new()
        .filter(filter(target, &json!({"cluster": PROXY, "topic": "no spaces allowed"})))
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("`topic` = \"no spaces allowed\""), "{log}");
    if target == Target::Native {
        assert!(log.contains(NATIVE_REFUSAL), "{log}");
    }
}

/// Sets the plugin configuration of every Wasm filter in `value` (a listener).
fn set_plugin_configuration(value: &mut Value, configuration: &Value) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".wasm.v3.Wasm")) {
                if let Some(c) = map.get_mut("config") {
                    c["configuration"]["value"] = json!(configuration.to_string());
                }
            }
            map.values_mut().for_each(|v| set_plugin_configuration(v, configuration));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| set_plugin_configuration(v, configuration)),
        _ => {}
    }
}

/// Replaces the listeners Envoy reads from `dir/lds.json` (a rename, which Envoy watches for).
fn write_lds(dir: &Path, listeners: &[Value]) {
    let response = json!({"version_info": format!("{:?}", Instant::now()), "resources": listeners});
    std::fs::write(dir.join("lds.tmp"), response.to_string()).unwrap();
    std::fs::rename(dir.join("lds.tmp"), dir.join("lds.json")).unwrap();
}

/// The address Envoy bound for listener `name` (from the admin `/listeners`).
fn listener_addr(envoy: &Envoy, name: &str) -> Option<SocketAddr> {
    let listeners: Value = serde_json::from_str(&envoy.admin_get("/listeners?format=json").ok()?).ok()?;
    let status = listeners["listener_statuses"].as_array()?.iter().find(|s| s["name"] == name)?;
    let socket = &status["local_address"]["socket_address"];
    format!("{}:{}", socket["address"].as_str()?, socket["port_value"].as_u64()?).parse().ok()
}

/// Envoy calls `on_done` on a removed plugin once its listener has drained, and keeps the
/// plugin while another plugin keeps the VM: here the static listener runs the same module with
/// the same VM configuration, and a second listener from LDS runs it with a plugin
/// configuration that holds records for a minute. Removing the second listener must not lose
/// what it holds. Wasm only: Envoy 1.40 does not wait for a native module (no `on_done`).
#[test]
fn records_held_by_a_removed_listener_reach_the_proxy_in_wasm() {
    let upstream = EchoUpstream::start().unwrap();
    let proxy = rest_proxy();
    let dir = tempfile::tempdir().unwrap();
    let builder = EnvoyBuilder::new()
        .filter(filter(Target::Wasm, &config()))
        .upstream(upstream.addr())
        .cluster(Cluster::new(PROXY, proxy.addr()))
        .concurrency(2)
        .arg("--drain-time-s")
        .arg("1")
        .arg("--drain-strategy")
        .arg("immediate");
    let bootstrap = builder.bootstrap().unwrap();
    let mut removable = bootstrap["static_resources"]["listeners"][0].clone();
    removable["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    removable["name"] = json!("removable");
    removable["address"]["socket_address"]["port_value"] = json!(0);
    set_plugin_configuration(
        &mut removable,
        &json!({"cluster": PROXY, "topic": "access-logs", "flush_interval_ms": 60_000, "key_field": "request_id"}),
    );
    write_lds(dir.path(), &[removable]);
    let lds = json!({"path_config_source": {"path": dir.path().join("lds.json"),
                                            "watched_directory": {"path": dir.path()}},
                     "resource_api_version": "V3"});
    let envoy = builder.bootstrap_patch(json!({"dynamic_resources": {"lds_config": lds}})).start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        match listener_addr(&envoy, "removable") {
            Some(addr) => break addr,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("listener not up: {}", envoy.log_tail(40)),
        }
    };
    for i in 0..20 {
        let response = gatewasm_envoy::send(
            addr,
            &Request::get(&format!("/held/{i}")).header("x-request-id", &format!("held-{i}")),
        )
        .unwrap();
        assert_eq!(response.status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(records(&proxy).is_empty(), "the records wait for their flush interval");

    write_lds(dir.path(), &[]);
    let got = wait_for(&proxy, 20);
    let mut ids: Vec<String> =
        got.iter().map(|r| r["value"]["request_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("held-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "{}", envoy.log_tail(40));
    assert!(envoy.log().contains("plugin removed; sending the"), "{}", envoy.log_tail(40));
    // The static listener's plugin still logs.
    envoy.send(&Request::get("/after").header("x-request-id", "after-1")).unwrap();
    assert!(wait_for(&proxy, 21).iter().any(|r| r["value"]["request_id"] == "after-1"));
}
