//! The built module in the emulator: answers, counters shared by VMs, host calls, logs.
//! Build it first: cargo build --release --target wasm32-wasip1 -p rate-limit

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use gatewasm_emulator::{for_module, Action, Emulator, Group, LogLevel, Stream};
use serde_json::{json, Value};

fn build(config: &Value, group: Option<&Group>, source: Option<&str>) -> Emulator {
    let mut b = for_module("rate-limit", config.to_string())
        .unwrap_or_else(|e| panic!("{e}"))
        .log_level(LogLevel::Info);
    if let Some(g) = group {
        b = b.group(g);
    }
    if let Some(address) = source {
        b = b.source_address(address);
    }
    let emu = b.build().unwrap();
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

fn emulator(config: &Value) -> Emulator {
    build(config, None, None)
}

fn send(emu: &Emulator, path: &str, extra: &[(&str, &str)]) -> Stream {
    let mut s = emu.stream();
    let mut headers =
        vec![(":method", "GET"), (":path", path), (":authority", "api.example.com"), (":scheme", "http")];
    headers.extend_from_slice(extra);
    s.request_headers(&headers, true).unwrap();
    s
}

/// What the client gets: the filter's reply status, or 200 from upstream.
fn status(s: &Stream) -> u32 {
    s.local_reply().map_or(200, |r| r.status)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn per_key() -> Value {
    json!({"rules": [{"name": "api", "match": {"prefix": "/api/"}, "limits": [
        {"name": "per-key", "descriptors": [{"header": "x-api-key"}], "token_bucket": {"rate": 2, "per": "minute"}}]}]})
}

#[test]
fn over_the_limit_the_answer_is_429_with_retry_after_and_the_ratelimit_fields() {
    let emu = emulator(&per_key());
    let key = [("x-api-key", "k-1")];
    assert_eq!(status(&send(&emu, "/api/a", &key)), 200);
    assert_eq!(status(&send(&emu, "/api/a", &key)), 200);
    let mut s = emu.stream();
    let action = s
        .request_headers(
            &[(":method", "GET"), (":path", "/api/a"), (":authority", "h"), ("x-api-key", "k-1")],
            true,
        )
        .unwrap();
    assert_eq!(action, Action::Pause);
    let reply = s.local_reply().unwrap();
    assert_eq!((reply.status, reply.details.as_str()), (429, "rate_limit_too_many_requests"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"status": 429, "code": "too_many_requests",
        "message": "too many requests: limit api.per-key reached, retry in 30 s"})
    );
    assert_eq!(header(&reply.headers, "content-type"), Some("application/json"));
    assert_eq!(header(&reply.headers, "retry-after"), Some("30"));
    assert_eq!(header(&reply.headers, "ratelimit-policy"), Some(r#""api.per-key";q=2;w=60"#));
    assert_eq!(header(&reply.headers, "ratelimit"), Some(r#""api.per-key";r=0;t=30"#));
    // The reply runs through this filter's response callback: nothing is added twice.
    assert_eq!(reply.headers.iter().filter(|(n, _)| n == "ratelimit").count(), 1);
    emu.advance_clock(Duration::from_secs(30)).unwrap();
    assert_eq!(status(&send(&emu, "/api/a", &key)), 200);
    assert_eq!(status(&send(&emu, "/api/a", &key)), 429);
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("rate_limit_requests_total;rule=api;limit=per-key;result=allowed"), Some(3));
    assert_eq!(emu.metric("rate_limit_requests_total;rule=api;limit=per-key;result=limited"), Some(2));
}

#[test]
fn vms_of_one_envoy_share_every_counter() {
    let group = Group::new();
    let one = build(&per_key(), Some(&group), None);
    let two = build(&per_key(), Some(&group), None);
    let key = [("x-api-key", "shared")];
    let statuses: Vec<u32> =
        [&one, &two, &one, &two].iter().map(|vm| status(&send(vm, "/api/x", &key))).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    // The second VM found every bucket the first created: it created none.
    assert!(one.logged("(12500 created here)"), "{:?}", one.logs());
    assert!(two.logged("(0 created here)"), "{:?}", two.logs());
}

#[test]
fn host_calls_per_request() {
    let emu = emulator(&per_key());
    emu.reset_host_calls();
    let s = send(&emu, "/api/a", &[("x-api-key", "k")]);
    // The request headers (and the module's allocation of them), the clock, the bucket read (and
    // its allocation), the write. Nothing on the response.
    let calls = s.host_calls();
    assert_eq!(calls.get("proxy_get_header_map_pairs"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("proxy_get_current_time_nanoseconds"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("proxy_get_shared_data"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("proxy_set_shared_data"), Some(&1), "{calls:?}");
    assert_eq!(s.host_call_count(), 6, "{calls:?}");
    let s = send(&emu, "/other", &[("x-api-key", "k")]);
    assert_eq!(s.host_call_count(), 2, "no rule matched: the request read only: {:?}", s.host_calls());
}

#[test]
fn concurrency_is_released_when_the_stream_ends() {
    let emu = emulator(&json!({"rules": [{"name": "up", "limits": [
        {"name": "c", "descriptors": ["client_address"], "concurrency": {"max": 1}}]}]}));
    let mut first = send(&emu, "/", &[]);
    assert_eq!(status(&first), 200);
    let refused = send(&emu, "/", &[]);
    assert_eq!(status(&refused), 429);
    assert_eq!(header(&refused.local_reply().unwrap().headers, "retry-after"), Some("1"));
    first.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(status(&send(&emu, "/", &[])), 429, "still in flight until the stream ends");
    first.log().unwrap();
    let mut next = send(&emu, "/", &[]);
    assert_eq!(status(&next), 200);
    next.log().unwrap();
}

#[test]
fn the_downstream_address_and_forwarded_hops() {
    let config = json!({"rules": [{"name": "login", "match": {"path": "/login"}, "limits": [
        {"name": "ip", "descriptors": [{"client_address": {"xff_hop": 1}}], "fixed_window": {"requests": 1, "per": "minute"}}]}]});
    let emu = build(&config, None, Some("10.0.0.9:5000"));
    // Without a forwarded entry: the downstream address (the emulator's connection).
    assert_eq!(status(&send(&emu, "/login", &[])), 200);
    assert_eq!(status(&send(&emu, "/login", &[])), 429);
    // The entry the proxy in front wrote, whatever the client put before it.
    assert_eq!(status(&send(&emu, "/login", &[("x-forwarded-for", "6.6.6.6, 198.51.100.1")])), 200);
    assert_eq!(status(&send(&emu, "/login", &[("x-forwarded-for", "7.7.7.7, 198.51.100.1")])), 429);
}

#[test]
fn dry_run_lets_everything_through_and_logs_one_line_a_second_without_keys() {
    let emu = emulator(&json!({"dry_run": true, "rules": [{"name": "api", "limits": [
        {"name": "per-key", "descriptors": [{"header": "x-api-key"}], "fixed_window": {"requests": 1, "per": "hour"}}]}]}));
    for _ in 0..5 {
        let mut s = send(&emu, "/", &[("x-api-key", "sk_live_secret")]);
        assert_eq!(status(&s), 200);
        s.response_headers(&[(":status", "200")], true).unwrap();
        s.log().unwrap();
    }
    let mut s = send(&emu, "/", &[("x-api-key", "sk_live_secret")]);
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(s.response_header("ratelimit").as_deref(), Some(r#""api.per-key";r=0;t=3600"#));
    let lines: Vec<String> =
        emu.logs().into_iter().map(|l| l.message).filter(|m| m.contains("dry run")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("api.per-key would have refused 1 request(s)"), "{lines:?}");
    assert!(emu.logs().iter().all(|l| !l.message.contains("sk_live_secret")), "{:?}", emu.logs());
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    send(&emu, "/", &[("x-api-key", "sk_live_secret")]);
    assert!(emu.logged("would have refused 5 request(s)"), "{:?}", emu.logs());
    assert_eq!(
        emu.metric("rate_limit_requests_total;rule=api;limit=per-key;result=dry_run_limited"),
        Some(5)
    );
}

#[test]
fn bad_config_is_refused_with_every_field_named() {
    let config = json!({
        "mode": "global",
        "global": {"cluster": "rls", "failure_mode": "closed"},
        "rules": [{"name": "r", "limits": [{"descriptors": [{"cookie": "id"}]}]}],
        "colour": "blue"
    });
    let emu = for_module("rate-limit", config.to_string())
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.configured());
    let logs = emu.logs().into_iter().map(|l| l.message).collect::<Vec<_>>().join("\n");
    for needle in [
        "`colour`: unknown field",
        r#"`global.failure_mode` = "closed": must be "allow" or "deny""#,
        r#"`rules[0].limits[0].descriptors[0]` = "cookie": unknown descriptor"#,
    ] {
        assert!(logs.contains(needle), "{needle} not in {logs}");
    }
}

/// Global mode's call and answers in the emulator, the messages Envoy's own types
/// (`envoy-types`) encode and decode.
#[test]
fn global_mode_asks_the_service_and_follows_its_answer() {
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        rate_limit::Unit, Code, DescriptorStatus, RateLimit,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
    use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
    use gatewasm_emulator::GrpcResponse;
    use prost::Message as _;

    let emu = build(
        &json!({"mode": "global", "domain": "edge", "global": {"cluster": "rls", "timeout_ms": 40},
                "rules": [{"name": "api", "limits": [{"name": "per-ip", "descriptors": ["client_address"]}]}]}),
        None,
        Some("192.0.2.7:4000"),
    );
    let mut s = emu.stream();
    let headers =
        [(":method", "GET"), (":path", "/api/a"), (":authority", "api.example.com"), (":scheme", "http")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let calls = emu.grpc_calls();
    let call = &calls[0];
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
    );
    assert_eq!(call.timeout, Some(Duration::from_millis(40)));
    let sent = RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(sent.domain, "edge");
    assert_eq!(
        (sent.descriptors[0].entries[0].key.as_str(), sent.descriptors[0].entries[0].value.as_str()),
        ("remote_address", "192.0.2.7")
    );
    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                requests_per_unit: 3,
                unit: Unit::Second as i32,
                ..Default::default()
            }),
            limit_remaining: 0,
            duration_until_reset: Some(ProtoDuration { seconds: 0, nanos: 300_000_000 }),
            ..Default::default()
        }],
        ..Default::default()
    };
    emu.respond_grpc_call(call.token, &GrpcResponse::message(&over.encode_to_vec())).unwrap();
    let reply = s.local_reply().expect("429");
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply.headers, "retry-after"), Some("1"));
    assert_eq!(header(&reply.headers, "ratelimit-policy"), Some(r#""api.per-ip";q=3;w=1"#));
    assert_eq!(header(&reply.headers, "ratelimit"), Some(r#""api.per-ip";r=0;t=1"#));

    // The service is late: Envoy's timeout, and the request goes on (failure_mode allow).
    let mut s = emu.stream();
    s.request_headers(&headers, true).unwrap();
    assert!(s.request_paused());
    emu.advance_clock(Duration::from_millis(40)).unwrap();
    assert!(!s.request_paused() && s.local_reply().is_none());
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("rate_limit_service_failures_total;reason=timeout;result=allowed"), Some(1));
    assert_eq!(emu.metric("rate_limit_requests_total;rule=api;limit=per-ip;result=limited"), Some(1));
    assert!(emu.logged("did not decide 1 request(s)"), "{:?}", emu.logs());
}
