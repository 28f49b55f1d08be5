//! The filter in a real Envoy 1.40 with two workers, sending to a scripted REST proxy: every
//! field as Envoy really fills it, one record per request whichever worker served it, response
//! flags on a failed upstream, and a refused configuration. The end-to-end run through the
//! bridge into a Kafka-protocol broker is `kafka-bridge/tests/end_to_end.rs`.
//! Build first: cargo build --release --target wasm32-wasip1 -p kafka-log

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use gatewasm_envoy::{
    wasm_artifact, Cluster, EchoUpstream, Envoy, EnvoyBuilder, Reply, Request, ScriptedUpstream, WasmFilter,
};
use serde_json::{json, Value};

const PROXY: &str = "kafka-rest";

fn filter(config: &Value) -> WasmFilter {
    WasmFilter::new(wasm_artifact("kafka_log.wasm", "kafka-log").unwrap()).json_configuration(config)
}

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

fn envoy(upstream: SocketAddr, proxy: &ScriptedUpstream, config: &Value) -> Envoy {
    EnvoyBuilder::new()
        .wasm(filter(config))
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

#[test]
fn every_field_as_envoy_fills_it_one_record_per_request() {
    let upstream = EchoUpstream::start().unwrap();
    let proxy = rest_proxy();
    let envoy = envoy(upstream.addr(), &proxy, &config());
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

#[test]
fn a_failed_upstream_is_logged_with_its_response_flag() {
    // A port nobody listens on: Envoy answers 503 with the UF (connection failure) flag.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = rest_proxy();
    let envoy = envoy(dead, &proxy, &config());
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

#[test]
fn envoy_refuses_a_bad_configuration_naming_the_field() {
    let log = EnvoyBuilder::new()
        .wasm(filter(&json!({"cluster": PROXY, "topic": "no spaces allowed"})))
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("`topic` = \"no spaces allowed\""), "{log}");
}
