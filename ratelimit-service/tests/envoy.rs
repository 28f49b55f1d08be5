//! Envoy's own rate limit filter (`envoy.filters.http.ratelimit`, gRPC, V3) pointed at this
//! service, counters in Redis: the protocol as Envoy speaks it, 429s past the limit, the
//! service's headers on Envoy's answers, and Envoy's failure mode when Redis is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use gatewasm_envoy::{Cluster, EchoUpstream, Envoy, EnvoyBuilder, Request};
use serde_json::json;
use support::{Redis, RunningService};

/// The limits file as JSON, which the service reads as well as YAML.
const LIMITS: &str = r#"{"domain": "gateway", "descriptors": [
    {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": 3}},
    {"key": "remote_address", "rate_limit": {"unit": "minute", "requests_per_unit": 1000}}
]}"#;

fn envoy_with_native_ratelimit(service: &RunningService, upstream: &EchoUpstream) -> Envoy {
    EnvoyBuilder::new()
        .raw_filter(json!({
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "gateway",
                "timeout": "1s",
                "failure_mode_deny": false,
                "rate_limit_service": {
                    "transport_api_version": "V3",
                    "grpc_service": { "envoy_grpc": { "cluster_name": "ratelimit" } }
                }
            }
        }))
        .cluster(Cluster::new("ratelimit", service.addr).http2())
        .upstream(upstream.addr())
        // Three descriptors per request: one no rule matches (first, so the statuses after it must
        // stay paired with their own descriptors), the client's address, its API key when it
        // sends one.
        .route_patch(json!({ "route": { "rate_limits": [
            { "actions": [{ "generic_key": { "descriptor_value": "unlisted" } }] },
            { "actions": [{ "remote_address": {} }] },
            { "actions": [{ "request_headers": { "header_name": "x-api-key", "descriptor_key": "api_key" } }] }
        ] } }))
        .start()
        .unwrap()
}

fn get(envoy: &Envoy, key: Option<&str>) -> gatewasm_envoy::Response {
    let mut request = Request::get("/api/items").timeout(Duration::from_secs(10));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    envoy.send(&request).unwrap()
}

#[test]
fn envoys_native_filter_gets_429_past_the_limit() {
    let mut redis = Redis::start();
    let service = RunningService::start(LIMITS, Some(&redis.url()), true);
    let upstream = EchoUpstream::start().unwrap();
    let envoy = envoy_with_native_ratelimit(&service, &upstream);

    let statuses: Vec<u16> = (0..5).map(|_| get(&envoy, Some("key-a")).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{}", envoy.log_tail(40));
    let limited = get(&envoy, Some("key-a"));
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-envoy-ratelimited"), Some("true"));
    // The service's headers reach the client through Envoy, on the 429 and on allowed answers.
    assert_eq!(limited.header("ratelimit-limit"), Some("3"));
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    let other = get(&envoy, Some("key-b"));
    assert_eq!(other.status, 200, "another key, another counter");
    assert_eq!(other.header("ratelimit-remaining"), Some("2"));
    assert_eq!(get(&envoy, None).status, 200, "no key: only the address limit");
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.over_limit").unwrap(), Some(3));
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.ok").unwrap(), Some(5));

    // Redis gone: the service answers UNAVAILABLE at once and Envoy fails open, as configured.
    redis.stop();
    let started = Instant::now();
    assert_eq!(get(&envoy, Some("key-a")).status, 200);
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.error").unwrap(), Some(1));
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.failure_mode_allowed").unwrap(), Some(1));

    // Back, empty: counting starts again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&envoy, Some("key-c"));
        if r.header("ratelimit-limit").is_some() {
            assert_eq!(r.header("ratelimit-remaining"), Some("2"));
            break;
        }
        assert!(Instant::now() < deadline, "no recovery in 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
