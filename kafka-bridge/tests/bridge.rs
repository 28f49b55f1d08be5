//! The bridge binary on its own: the v2 produce API and its errors, the bounded queue, JSON
//! lines without brokers, acknowledgements from a tansu broker read back by an independent
//! consumer, a SIGTERM that finishes the batch in flight, and requests sent again under their
//! idempotency key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use gatewasm_envoy::{send, Request, Response};
use serde_json::{json, Value};
use support::{consume, Bridge, Broker};

const V2: &str = "application/vnd.kafka.json.v2+json";

fn produce(bridge: &Bridge, topic: &str, body: &Value) -> Response {
    let request = Request::post(&format!("/topics/{topic}"), body.to_string())
        .header("content-type", V2)
        .timeout(Duration::from_secs(30));
    send(bridge.addr, &request).unwrap()
}

fn records(n: usize, prefix: &str) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("{prefix}-{i}"), "value": {"n": i, "id": format!("{prefix}-{i}")}}))
        .collect();
    json!({ "records": records })
}

#[test]
fn without_brokers_records_become_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut bridge = Bridge::start(&["--output", &out.to_string_lossy()]);
    let health = send(bridge.addr, &Request::get("/healthz")).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json().unwrap()["mode"], "lines");

    let response = produce(&bridge, "access-logs", &records(3, "a"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/vnd.kafka.v2+json"));
    let answer = response.json().unwrap();
    assert_eq!(answer["offsets"][2], json!({"partition": 0, "offset": 2, "error_code": null, "error": null}));
    let response = produce(&bridge, "access-logs", &json!({"records": [{"value": {"n": 9}}]}));
    assert_eq!(response.json().unwrap()["offsets"][0]["offset"], 3);

    assert!(bridge.stop(), "SIGTERM: clean exit");
    let lines: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        json!({"topic": "access-logs", "partition": 0, "offset": 0, "key": "a-0", "value": {"n": 0, "id": "a-0"}})
    );
    assert_eq!(lines[3]["key"], Value::Null);
}

#[test]
fn bad_requests_are_refused_with_rest_proxy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let bridge = Bridge::start(&[
        "--output",
        &out.to_string_lossy(),
        "--max-queued-records",
        "5",
        "--max-body-bytes",
        "2000",
    ]);
    let status = |r: Response| (r.status, r.json().map(|v| v["error_code"].clone()).unwrap_or(Value::Null));

    let wrong_type =
        Request::post("/topics/t", records(1, "x").to_string()).header("content-type", "text/plain");
    assert_eq!(status(send(bridge.addr, &wrong_type).unwrap()), (415, json!(41501)));
    assert_eq!(status(produce(&bridge, "bad%20topic", &records(1, "x"))), (422, json!(42202)));
    assert_eq!(status(produce(&bridge, "t", &json!({"records": []}))), (422, json!(42201)));
    assert_eq!(
        status(produce(&bridge, "t", &json!({"records": [{"value": 1, "colour": 2}]}))),
        (422, json!(42201))
    );
    assert_eq!(
        status(produce(&bridge, "t", &records(6, "q"))),
        (503, json!(50301)),
        "more than the queue holds"
    );
    let big = json!({"records": [{"value": "x".repeat(3000)}]});
    assert_eq!(status(produce(&bridge, "t", &big)), (413, json!(41301)));
    assert_eq!(status(send(bridge.addr, &Request::get("/topics/t")).unwrap()), (405, json!(40501)));
    assert_eq!(status(send(bridge.addr, &Request::get("/nope")).unwrap()), (404, json!(40401)));
    // The queue is free again after a refusal.
    assert_eq!(produce(&bridge, "t", &records(5, "ok")).status, 200);
    assert!(!std::fs::read_to_string(&out).unwrap().contains("\"q-0\""));
}

#[test]
fn kafka_acknowledges_before_the_answer_and_sigterm_finishes_the_batch() {
    let broker = Broker::start();
    broker.create_topic("bridge-test", 2);
    let bridge =
        Bridge::start(&["--brokers", &broker.bootstrap(), "--compression", "gzip", "--linger-ms", "50"]);
    let answer = produce(&bridge, "bridge-test", &records(100, "k")).json().unwrap();
    let offsets = answer["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 100);
    assert!(offsets.iter().all(|o| o["error_code"].is_null() && o["offset"].as_i64().is_some()), "{answer}");

    // A batch in flight when SIGTERM arrives is still acknowledged, then the bridge exits 0.
    let addr = bridge.addr;
    let in_flight = std::thread::spawn(move || {
        let request = Request::post("/topics/bridge-test", records(200, "late").to_string())
            .header("content-type", V2)
            .timeout(Duration::from_secs(30));
        send(addr, &request).unwrap()
    });
    std::thread::sleep(Duration::from_millis(20));
    let mut bridge = bridge;
    bridge.signal_stop();
    let late = in_flight.join().unwrap();
    assert_eq!(late.status, 200, "{}", late.text());
    let deadline = Instant::now() + Duration::from_secs(15);
    assert!(bridge.stop(), "clean exit after SIGTERM");
    assert!(Instant::now() < deadline);
    assert!(bridge.log_text().contains("stopped"), "{}", bridge.log_text());

    let messages = consume(&broker.bootstrap(), "bridge-test", 300, Duration::from_secs(30));
    assert_eq!(messages.len(), 300);
    let first = messages.iter().find(|m| m.value["id"] == "k-7").unwrap();
    assert_eq!(first.key.as_deref(), Some("\"k-7\""), "keys are stored as JSON, as REST Proxy does");
    assert_eq!(first.value, json!({"n": 7, "id": "k-7"}));
}

#[test]
fn a_broker_that_never_answers_is_a_retriable_error_per_record() {
    let port = support::free_port();
    let bridge = Bridge::start(&["--brokers", &format!("127.0.0.1:{port}"), "--delivery-timeout-ms", "500"]);
    let answer = produce(&bridge, "t", &records(2, "lost")).json().unwrap();
    for entry in answer["offsets"].as_array().unwrap() {
        assert_eq!(entry["error_code"], 2, "{answer}");
        let error = entry["error"].as_str().unwrap();
        assert!(error.to_lowercase().contains("timed out"), "{answer}");
        // Never sent to a broker: a retry cannot store it twice.
        assert!(!error.contains("possibly stored"), "{answer}");
    }
}

fn produce_keyed(
    addr: std::net::SocketAddr,
    topic: &str,
    key: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let request = Request::post(&format!("/topics/{topic}"), body.to_string())
        .header("content-type", V2)
        .header("idempotency-key", key)
        .timeout(timeout);
    send(addr, &request)
}

#[test]
fn a_request_sent_again_with_its_idempotency_key_joins_or_gets_the_first_answer() {
    let broker = Broker::start();
    broker.create_topic("keyed", 1);
    let bridge = Bridge::start(&["--brokers", &broker.bootstrap()]);
    let addr = bridge.addr;
    let first = records(3, "first");
    let answered = produce_keyed(addr, "keyed", "batch-1", &first, Duration::from_secs(30)).unwrap();
    assert_eq!(answered.status, 200, "{}", answered.text());
    // The same request again: the first answer, nothing produced.
    let again = produce_keyed(addr, "keyed", "batch-1", &first, Duration::from_secs(30)).unwrap();
    assert_eq!(again.json().unwrap(), answered.json().unwrap());
    // The same key with another body is refused, and nothing is produced.
    let other =
        produce_keyed(addr, "keyed", "batch-1", &records(1, "other"), Duration::from_secs(30)).unwrap();
    assert_eq!((other.status, other.json().unwrap()["error_code"].clone()), (409, json!(40901)));
    let bad = produce_keyed(addr, "keyed", "has space", &first, Duration::from_secs(30)).unwrap();
    assert_eq!(bad.status, 400);

    // The broker stalls: a client gives up on its request, sends it again with the same key
    // while Kafka still holds the first, and gets the answer of the first produce.
    broker.pause();
    let second = records(4, "second");
    let timed_out = produce_keyed(addr, "keyed", "batch-2", &second, Duration::from_millis(500));
    assert!(timed_out.is_err(), "answered while the broker was stopped: {:?}", timed_out.map(|r| r.text()));
    let retry = {
        let second = second.clone();
        std::thread::spawn(move || produce_keyed(addr, "keyed", "batch-2", &second, Duration::from_secs(60)))
    };
    std::thread::sleep(Duration::from_millis(1500));
    broker.resume();
    let retried = retry.join().unwrap().unwrap();
    assert_eq!(retried.status, 200, "{}", retried.text());
    let offsets = retried.json().unwrap()["offsets"].as_array().unwrap().clone();
    assert!(offsets.iter().all(|o| o["error_code"].is_null()), "{offsets:?}");

    let health = bridge.health();
    assert_eq!(health["requests"]["answered_again"], 1, "{health}");
    assert_eq!(health["requests"]["joined"], 1, "{health}");
    assert_eq!(health["records"]["stored"], 7, "{health}");
    let messages = consume(&broker.bootstrap(), "keyed", 7, Duration::from_secs(30));
    let mut ids: Vec<&str> = messages.iter().map(|m| m.value["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["first-0", "first-1", "first-2", "second-0", "second-1", "second-2", "second-3"]);
}
