//! The compiled filter in the emulator: records, batching from the root context's tick, the
//! three proxies' per-record answers, retries with backoff, buffer bounds, sampling, the status
//! condition and redaction. Build first: cargo build --release --target wasm32-wasip1 -p kafka-log

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use gatewasm_emulator::{for_module, Emulator, HttpCall, LogLevel};
use serde_json::{json, Value};

const CLUSTER: &str = "kafka-bridge";

fn emulator(config: &Value) -> Emulator {
    let emu = for_module("kafka-log", config.to_string())
        .and_then(|b| {
            b.cluster(CLUSTER)
                .property("request.protocol", "HTTP/1.1")
                .property("response.flags", 0u64.to_le_bytes())
                .property("xds.cluster_name", "upstream")
                .property("xds.route_name", "all")
                .property("source.address", "127.0.0.1:40000")
                .log_level(LogLevel::Info)
                .build()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

fn base(extra: Value) -> Value {
    let mut config =
        json!({"cluster": CLUSTER, "topic": "access-logs", "batch_max_size": 3, "flush_interval_ms": 1000});
    gatewasm_envoy::merge(&mut config, &extra);
    config
}

/// One complete request through the filter.
fn request(emu: &Emulator, id: &str, status: &str, extra: &[(&str, &str)]) {
    let mut s = emu.stream();
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/api/items?x=1"),
        (":authority", "shop.example.com"),
        ("user-agent", "curl/8"),
        ("x-request-id", id),
        ("x-forwarded-for", "10.0.0.9"),
    ];
    headers.extend_from_slice(extra);
    s.request_headers(&headers, false).unwrap();
    s.request_body(b"0123456789", true).unwrap();
    emu.advance_clock(Duration::from_millis(7)).unwrap();
    s.response_headers(&[(":status", status), ("x-envoy-upstream-service-time", "5")], false).unwrap();
    s.response_body(b"abcd", true).unwrap();
    s.log().unwrap();
}

fn body(call: &HttpCall) -> Value {
    serde_json::from_slice(&call.body).unwrap()
}

fn ids(call: &HttpCall) -> Vec<String> {
    body(call)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"]["request_id"].as_str().unwrap().to_string())
        .collect()
}

fn header<'a>(call: &'a HttpCall, name: &str) -> Option<&'a str> {
    call.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn stored(n: usize) -> Vec<u8> {
    let offsets: Vec<Value> =
        (0..n).map(|i| json!({"partition": 0, "offset": i, "error_code": null, "error": null})).collect();
    json!({"key_schema_id": null, "value_schema_id": null, "offsets": offsets}).to_string().into_bytes()
}

fn answer(emu: &Emulator, call: &HttpCall, status: &str, body: &[u8]) {
    emu.respond_http_call(call.token, &[(":status", status)], body, &[]).unwrap();
}

/// Lets a tick run (and with it the counters' flush).
fn tick(emu: &Emulator) {
    emu.advance_clock(Duration::from_millis(100)).unwrap();
}

#[test]
fn a_full_batch_leaves_on_the_next_tick_with_every_field() {
    let emu = emulator(&base(json!({"key_field": "request_id"})));
    assert_eq!(emu.tick_period(), Some(Duration::from_millis(100)));
    for i in 0..3 {
        request(&emu, &format!("id-{i}"), "200", &[]);
    }
    assert!(emu.http_calls().is_empty(), "nothing is sent from the request path");
    tick(&emu);
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, CLUSTER);
    assert_eq!(call.context_id, emu.root_context_id());
    assert_eq!(header(call, ":method"), Some("POST"));
    assert_eq!(header(call, ":path"), Some("/topics/access-logs"));
    assert_eq!(header(call, ":authority"), Some(CLUSTER));
    assert_eq!(header(call, "content-type"), Some("application/vnd.kafka.json.v2+json"));
    assert_eq!(call.timeout, Some(Duration::from_secs(10)));
    assert_eq!(ids(call), ["id-0", "id-1", "id-2"]);
    let record = &body(call)["records"][0];
    assert_eq!(record["key"], "id-0");
    let value = &record["value"];
    let start = value["start_time"].as_str().unwrap();
    assert!(start.starts_with("2024-01-01T00:00:00.") && start.ends_with('Z'), "{start}");
    let mut value = value.clone();
    value.as_object_mut().unwrap().remove("start_time");
    assert_eq!(
        value,
        json!({
            "method": "POST", "path": "/api/items?x=1", "protocol": "HTTP/1.1", "response_code": 200,
            "response_flags": "-", "bytes_received": 10, "bytes_sent": 4, "duration": 7,
            "upstream_service_time": "5", "x_forwarded_for": "10.0.0.9", "user_agent": "curl/8",
            "request_id": "id-0", "authority": "shop.example.com", "upstream_host": null,
            "upstream_cluster": "upstream", "route_name": "all", "downstream_remote_address": "127.0.0.1:40000",
        })
    );
    answer(&emu, call, "200", &stored(3));
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_sent_total"), Some(3));
    assert_eq!(emu.gauge("kafka_log_records_buffered"), Some(0));
    assert!(emu.http_calls().is_empty());
}

#[test]
fn a_partial_batch_leaves_after_the_flush_interval() {
    let emu = emulator(&base(json!({})));
    request(&emu, "only", "200", &[]);
    emu.advance_clock(Duration::from_millis(850)).unwrap();
    assert!(emu.http_calls().is_empty());
    assert_eq!(emu.gauge("kafka_log_records_buffered"), Some(1));
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(ids(&calls[0]), ["only"]);
    assert!(body(&calls[0])["records"][0].get("key").is_none(), "no key_field: no key");
}

#[test]
fn retriable_record_errors_are_retried_alone_with_backoff() {
    let emu = emulator(&base(json!({"retry": {"initial_backoff_ms": 400, "max_backoff_ms": 400}})));
    for i in 0..3 {
        request(&emu, &format!("r{i}"), "200", &[]);
    }
    tick(&emu);
    let call = emu.http_calls().remove(0);
    // Confluent shape: r1 retriable, r2 not.
    let answer_body = json!({"offsets": [
        {"partition": 0, "offset": 1, "error_code": null, "error": null},
        {"partition": null, "offset": null, "error_code": 2, "error": "Local: Message timed out"},
        {"partition": null, "offset": null, "error_code": 1, "error": "Broker: Message size too large"},
    ]});
    answer(&emu, &call, "200", answer_body.to_string().as_bytes());
    // Backoff 400 ms with equal jitter: 200 to 400 ms, sent on the next 100 ms tick.
    emu.advance_clock(Duration::from_millis(150)).unwrap();
    assert!(emu.http_calls().is_empty());
    emu.advance_clock(Duration::from_millis(350)).unwrap();
    let retry = emu.http_calls().remove(0);
    assert_eq!(ids(&retry), ["r1"]);
    // Another request: the proxy answered the first, so the retry has a key of its own.
    assert_ne!(header(&retry, "idempotency-key"), header(&call, "idempotency-key"));
    answer(&emu, &retry, "200", &stored(1));
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_sent_total"), Some(2));
    assert_eq!(emu.metric("kafka_log_records_failed_total"), Some(1));
    assert_eq!(emu.metric("kafka_log_records_retried_total"), Some(1));
    // The per-record retriable failure is counted and logged, without the record.
    assert_eq!(emu.metric("kafka_log_records_retriable_total"), Some(1));
    assert_eq!(emu.metric("kafka_log_records_unconfirmed_total"), Some(0));
    assert!(
        emu.logged("1 record(s) not stored by the proxy (retriable) since the last warning, e.g. \"Local: Message timed out\""),
        "{:?}",
        emu.logs()
    );
    assert!(!emu.logs().iter().any(|l| l.message.contains("\"r1\"")), "a log line holds a record");
}

#[test]
fn strimzi_and_redpanda_answers_are_read_per_record() {
    let emu = emulator(&base(json!({"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 10}})));
    for i in 0..3 {
        request(&emu, &format!("s{i}"), "200", &[]);
    }
    tick(&emu);
    let call = emu.http_calls().remove(0);
    let strimzi = json!({"offsets": [
        {"partition": 0, "offset": 3},
        {"error_code": 500, "message": "Topic not present in metadata"},
        {"error_code": 422, "message": "The record is not valid."},
    ]});
    answer(&emu, &call, "200", strimzi.to_string().as_bytes());
    tick(&emu);
    let retry = emu.http_calls().remove(0);
    assert_eq!(ids(&retry), ["s1"]);
    let redpanda = json!({"offsets": [{"partition": 0, "error_code": 6, "offset": -1}]});
    answer(&emu, &retry, "200", redpanda.to_string().as_bytes());
    tick(&emu);
    let again = emu.http_calls().remove(0);
    assert_eq!(ids(&again), ["s1"]);
    answer(&emu, &again, "200", json!({"offsets": [{"partition": 0, "offset": 4}]}).to_string().as_bytes());
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_sent_total"), Some(2));
    assert_eq!(emu.metric("kafka_log_records_failed_total"), Some(1));
    assert_eq!(emu.metric("kafka_log_records_retried_total"), Some(2));
}

#[test]
fn unavailable_and_timeouts_retry_the_whole_batch_and_4xx_drops_it() {
    let emu = emulator(&base(
        json!({"timeout_ms": 300, "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 100}}),
    ));
    for i in 0..3 {
        request(&emu, &format!("t{i}"), "200", &[]);
    }
    tick(&emu);
    let call = emu.http_calls().remove(0);
    answer(&emu, &call, "503", br#"{"error_code":50301,"message":"queue full"}"#);
    assert!(emu.logged("HTTP 503: queue full"), "{:?}", emu.logs());
    tick(&emu);
    let second = emu.http_calls().remove(0);
    assert_eq!(ids(&second), ["t0", "t1", "t2"]);
    let key = |call: &HttpCall| header(call, "idempotency-key").unwrap().to_string();
    assert_ne!(key(&second), key(&call), "the proxy said nothing was stored: a new request");
    // No answer: Envoy times the callout out (504) and the batch goes again, the same request
    // under the same key, so a proxy that took the first can answer it instead of storing twice.
    emu.advance_clock(Duration::from_millis(500)).unwrap();
    let third = emu.http_calls().remove(0);
    assert_eq!(ids(&third), ["t0", "t1", "t2"]);
    assert_eq!(key(&third), key(&second));
    assert_eq!(third.body, second.body);
    answer(&emu, &third, "404", br#"{"error_code":40401,"message":"Topic not found"}"#);
    assert!(emu.logged("refused (HTTP 404: Topic not found)"), "{:?}", emu.logs());
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_failed_total"), Some(3));
    assert_eq!(emu.metric("kafka_log_records_retried_total"), Some(6));
    assert_eq!(emu.metric("kafka_log_records_retriable_total"), Some(3), "the proxy's 503");
    assert_eq!(emu.metric("kafka_log_records_unconfirmed_total"), Some(3), "the timeout");
    assert_eq!(emu.metric("kafka_log_records_failed_unconfirmed_total"), Some(0), "refused by the proxy");
    assert_eq!(emu.gauge("kafka_log_records_buffered"), Some(0));
}

#[test]
fn a_reset_or_an_envoy_503_is_unconfirmed_and_keeps_the_key_until_the_proxy_answers() {
    let emu = emulator(&base(json!({"retry": {"initial_backoff_ms": 100, "max_backoff_ms": 100}})));
    for i in 0..3 {
        request(&emu, &format!("u{i}"), "200", &[]);
    }
    tick(&emu);
    let first = emu.http_calls().remove(0);
    let key = header(&first, "idempotency-key").unwrap().to_string();
    let (prefix, n) = key.split_once('-').unwrap();
    assert!(prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    assert!(n.parse::<u64>().is_ok(), "{key}");
    // Envoy's own answer when the connection to the proxy broke: text, not the proxy's JSON.
    answer(
        &emu,
        &first,
        "503",
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
    );
    tick(&emu);
    let second = emu.http_calls().remove(0);
    assert_eq!(header(&second, "idempotency-key"), Some(key.as_str()));
    // An answer with no headers at all (a reset).
    emu.respond_http_call(second.token, &[], b"", &[]).unwrap();
    tick(&emu);
    let third = emu.http_calls().remove(0);
    assert_eq!(header(&third, "idempotency-key"), Some(key.as_str()));
    answer(&emu, &third, "200", &stored(3));
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_unconfirmed_total"), Some(6));
    assert_eq!(emu.metric("kafka_log_records_sent_total"), Some(3));
    assert!(emu.logged("outcome unknown, sent again under the same idempotency key"), "{:?}", emu.logs());
    // The next batch has another key.
    for i in 3..6 {
        request(&emu, &format!("u{i}"), "200", &[]);
    }
    tick(&emu);
    let next = emu.http_calls().remove(0);
    assert_ne!(header(&next, "idempotency-key"), Some(key.as_str()));
}

#[test]
fn a_full_buffer_drops_counts_and_warns_once() {
    let emu = emulator(&base(json!({"buffer_max_records": 5, "max_in_flight": 1})));
    for i in 0..20 {
        request(&emu, &format!("b{i}"), "200", &[]);
    }
    tick(&emu);
    // Only the first 5 records were kept; in flight one batch at a time.
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(ids(&calls[0]), ["b0", "b1", "b2"]);
    assert_eq!(emu.metric("kafka_log_records_dropped_total"), Some(15));
    assert_eq!(emu.gauge("kafka_log_records_buffered"), Some(5));
    let warnings = |emu: &Emulator| emu.logs().iter().filter(|l| l.message.contains("dropped")).count();
    assert_eq!(warnings(&emu), 1, "{:?}", emu.logs());
    // More drops within 10 s: counted, not logged again.
    for i in 20..25 {
        request(&emu, &format!("b{i}"), "200", &[]);
    }
    tick(&emu);
    assert_eq!(emu.metric("kafka_log_records_dropped_total"), Some(20));
    assert_eq!(warnings(&emu), 1);
    emu.advance_clock(Duration::from_secs(11)).unwrap();
    assert_eq!(warnings(&emu), 2);
}

#[test]
fn memory_stays_bounded_by_bytes() {
    let emu = emulator(&base(json!({
        "buffer_max_bytes": 4000, "buffer_max_records": 10000, "batch_max_size": 10000,
        "fields": {"request_headers": {"big": "x-big"}},
    })));
    let big = "x".repeat(600);
    for i in 0..50 {
        request(&emu, &format!("m{i}"), "200", &[("x-big", &big)]);
    }
    tick(&emu);
    let kept = emu.gauge("kafka_log_records_buffered").unwrap();
    assert!((1..=4).contains(&kept), "{kept} records of about 1 KB in 4000 bytes");
    assert_eq!(emu.metric("kafka_log_records_dropped_total"), Some(50 - kept as u64));
}

#[test]
fn sampling_and_status_condition() {
    let emu = emulator(&base(json!({"sample_rate": 0.0})));
    for i in 0..5 {
        request(&emu, &format!("n{i}"), "200", &[]);
    }
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert!(emu.http_calls().is_empty());
    assert_eq!(emu.gauge("kafka_log_records_buffered").unwrap_or(0), 0);

    let emu = emulator(&base(json!({"status": {"min": 400}})));
    request(&emu, "ok", "200", &[]);
    request(&emu, "missing", "404", &[]);
    request(&emu, "broken", "503", &[]);
    request(&emu, "fine", "204", &[]);
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(ids(&emu.http_calls()[0]), ["missing", "broken"]);
}

#[test]
fn credentials_are_redacted_unless_allowed() {
    let config = base(json!({
        "fields": {"request_headers": {"auth": "authorization", "cookie": "cookie", "tenant": "x-tenant"},
                   "properties": {"cookie_prop": "request.headers.cookie"},
                   "values": {"gateway": "eu-1"}},
        "allow_sensitive_headers": ["cookie"],
        "flush_interval_ms": 100,
    }));
    let emu = emulator(&config);
    request(
        &emu,
        "c",
        "200",
        &[("authorization", "Bearer s3cret"), ("cookie", "session=abc"), ("x-tenant", "t1")],
    );
    tick(&emu);
    tick(&emu);
    let call = emu.http_calls().remove(0);
    let value = &body(&call)["records"][0]["value"];
    assert_eq!(value["auth"], "[REDACTED]");
    assert_eq!(value["cookie"], "session=abc");
    assert_eq!(value["cookie_prop"], "session=abc");
    assert_eq!(value["tenant"], "t1");
    assert_eq!(value["gateway"], "eu-1");
    assert!(!String::from_utf8_lossy(&call.body).contains("s3cret"));
}

#[test]
fn bad_configuration_is_refused_with_the_field() {
    let emu = for_module("kafka-log", r#"{"cluster": "k", "topic": "bad topic", "batch_max_size": 0}"#)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.configured());
    assert!(emu.logged("`topic` = \"bad topic\""), "{:?}", emu.logs());
    assert!(emu.logged("`batch_max_size` = 0"), "{:?}", emu.logs());
}

#[test]
fn produce_requests_carry_the_configured_authority_prefix_and_headers() {
    let config = base(json!({
        "authority": "rest-proxy.logging",
        "path_prefix": "/kafka",
        "headers": {"Authorization": "Basic Z2F0ZXdheTpzM2NyZXQ="},
        "flush_interval_ms": 100,
    }));
    let emu = emulator(&config);
    request(&emu, "h", "200", &[]);
    tick(&emu);
    tick(&emu);
    let call = emu.http_calls().remove(0);
    assert_eq!(header(&call, ":authority"), Some("rest-proxy.logging"));
    assert_eq!(header(&call, ":path"), Some("/kafka/topics/access-logs"));
    assert_eq!(header(&call, "authorization"), Some("Basic Z2F0ZXdheTpzM2NyZXQ="));
    assert_eq!(header(&call, "accept"), Some("application/vnd.kafka.v2+json"));
}

#[test]
fn an_unknown_cluster_is_retried_and_warned_about_at_most_every_ten_seconds() {
    // The emulator refuses callouts to clusters it was not told about, as Envoy does.
    let emu =
        for_module("kafka-log", base(json!({"cluster": "missing", "flush_interval_ms": 100})).to_string())
            .and_then(|b| b.cluster(CLUSTER).log_level(LogLevel::Info).build())
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured());
    request(&emu, "u", "200", &[]);
    emu.advance_clock(Duration::from_secs(5)).unwrap();
    let warned = |emu: &Emulator| {
        emu.logs().iter().filter(|l| l.message.contains("cannot send to cluster missing")).count()
    };
    assert_eq!(warned(&emu), 1, "{:?}", emu.logs());
    // Backoff is at most 5 s by default: a retry, and its warning, come within the next 10 s.
    emu.advance_clock(Duration::from_secs(10)).unwrap();
    assert_eq!(warned(&emu), 2);
    assert_eq!(emu.gauge("kafka_log_records_buffered"), Some(1), "kept for when the cluster exists");
    assert!(emu.metric("kafka_log_records_retried_total").unwrap() > 5);
}

#[test]
fn a_removed_plugin_sends_what_it_holds_at_once_then_lets_go() {
    let emu = emulator(&base(json!({"flush_interval_ms": 60_000, "max_in_flight": 1})));
    for i in 0..4 {
        request(&emu, &format!("id-{i}"), "200", &[]);
    }
    tick(&emu);
    // One full batch is out; its answer is a retriable failure, so it waits for a retry.
    let first = emu.http_calls();
    assert_eq!(first.len(), 1);
    answer(&emu, &first[0], "503", b"");
    assert!(emu.http_calls().is_empty());
    assert!(!emu.remove_plugin().unwrap(), "records held: the plugin finishes first");
    assert!(emu.logged("plugin removed; sending the 4 record(s) it holds"), "{:?}", emu.logs());
    // The young record leaves at once; the batch waiting for a retry is given up.
    let last = emu.http_calls();
    assert_eq!(last.len(), 1);
    assert_eq!(ids(&last[0]), ["id-3"]);
    assert!(!emu.plugin_removed());
    answer(&emu, &last[0], "200", &stored(1));
    assert!(emu.plugin_removed(), "proxy_done after the last answer");
    assert_eq!(emu.host_calls().get("proxy_done"), Some(&1));
    assert_eq!(emu.metric(kafka_log::SENT), Some(1));
    assert_eq!(emu.metric(kafka_log::FAILED), Some(3));
    // Envoy's bodiless 503 did not say what the proxy stored: the three may be in Kafka.
    assert_eq!(emu.metric(kafka_log::FAILED_UNCONFIRMED), Some(3));
    assert_eq!(emu.gauge(kafka_log::BUFFERED), Some(0));
}

#[test]
fn a_removed_plugin_with_nothing_held_lets_go_at_once() {
    let emu = emulator(&base(json!({})));
    assert!(emu.remove_plugin().unwrap());
    assert!(emu.plugin_removed());
    let emu = emulator(&base(json!({"flush_interval_ms": 60_000})));
    request(&emu, "only", "200", &[]);
    assert!(!emu.remove_plugin().unwrap());
    let calls = emu.http_calls();
    assert_eq!(ids(&calls[0]), ["only"]);
    // A failed answer while closing is not retried: the plugin lets go all the same.
    answer(&emu, &calls[0], "503", b"");
    assert!(emu.plugin_removed());
    assert_eq!(emu.metric(kafka_log::FAILED), Some(1));
}
