//! End to end through a real Envoy, once with the Wasm module (V8) and once with the native
//! dynamic module: one set of expectations for both.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p rate-limit, and
//! cargo build --release -p rate-limit

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use gatewasm_envoy::bench::{run_wrk, WrkOptions};
use gatewasm_envoy::{
    for_each_target, ClosedPort, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply, Request,
    ScriptedUpstream, Target, NATIVE_REFUSAL, UPSTREAM_CLUSTER,
};
use serde_json::{json, Value};

fn filter(target: Target, config: &Value) -> HttpFilter {
    target.filter("rate-limit", "rate_limit", config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(
    limited_requests_get_429_with_the_json_body_and_the_ratelimit_fields,
    every_worker_counts_against_the_same_limit,
    requests_in_flight_are_released_however_the_stream_ends,
    the_client_address_is_envoys_trusted_one_or_a_forwarded_hop,
    bad_config_is_refused_with_the_field_named,
    two_workers_under_load_count_every_request_exactly_once,
    two_gateways_share_one_global_limit_through_the_service_and_redis,
    two_gateways_under_load_allow_exactly_the_global_limit,
);

// The rate limit service and Redis as the service's own tests start them (in-process service,
// a Redis of the test's own on a free loopback port).
#[path = "../../../ratelimit-service/tests/support/mod.rs"]
mod support;

/// Turns the filter's `;label=value` pairs into Prometheus labels on the Wasm target (the native
/// target has real labels).
fn stats_tags() -> Value {
    let tags: Vec<Value> = ["rule", "limit", "result", "state", "reason", "hook"]
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!("(;{t}=([^;]*))")}))
        .collect();
    json!({"stats_config": {"stats_tags": tags}})
}

/// The value of the Prometheus series of `family` holding every label of `labels`, once the
/// scrape shows it at `at_least`, or after 5 s (Wasm counters reach Envoy on a 1 s tick).
fn series(envoy: &Envoy, family: &str, labels: &[(&str, &str)], at_least: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = envoy.admin_get("/stats/prometheus").unwrap();
        let value = scrape.lines().find_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (inner, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let all = labels.iter().all(|(k, v)| inner.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.trim().parse::<u64>().ok()).flatten()
        });
        if value.is_some_and(|v| v >= at_least) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn decisions(envoy: &Envoy, rule: &str, limit: &str, result: &str, at_least: u64) -> Option<u64> {
    series(
        envoy,
        "rate_limit_requests_total",
        &[("rule", rule), ("limit", limit), ("result", result)],
        at_least,
    )
}

fn limited_requests_get_429_with_the_json_body_and_the_ratelimit_fields(target: Target) {
    let config = json!({"response_headers": "always", "rules": [{"name": "api", "match": {"prefix": "/api/"},
        "limits": [{"name": "per-key", "descriptors": [{"header": "x-api-key"}],
                    "token_bucket": {"rate": 2, "per": "minute"}}]}]});
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .direct_response(200, "ok")
        .bootstrap_patch(stats_tags())
        .start()
        .unwrap();
    let get = |key: &str| envoy.send(&Request::get("/api/items").header("x-api-key", key)).unwrap();
    let first = get("k1");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("ratelimit-policy"), Some(r#""api.per-key";q=2;w=60"#));
    assert_eq!(first.header("ratelimit"), Some(r#""api.per-key";r=1;t=30"#));
    assert_eq!(get("k1").status, 200);
    let limited = get("k1");
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(
        limited.json().unwrap(),
        json!({"status": 429, "code": "too_many_requests", "message": "too many requests: limit api.per-key reached, retry in 30 s"})
    );
    assert_eq!(limited.header("content-type"), Some("application/json"));
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert_eq!(limited.header("ratelimit-policy"), Some(r#""api.per-key";q=2;w=60"#));
    assert_eq!(limited.header_all("ratelimit"), [format!(r#""api.per-key";r=0;t={retry}"#)]);
    assert_eq!(get("k2").status, 200, "another key has its own counter");
    assert_eq!(envoy.get("/health").unwrap().status, 200, "no rule matches");
    // Envoy's access log field for the reply's details.
    assert_eq!(decisions(&envoy, "api", "per-key", "allowed", 3), Some(3));
    assert_eq!(decisions(&envoy, "api", "per-key", "limited", 1), Some(1));
}

fn every_worker_counts_against_the_same_limit(target: Target) {
    let config = json!({"rules": [{"name": "all", "limits": [{"name": "hourly", "token_bucket": {"rate": 10, "per": "hour"}}]}]});
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .direct_response(200, "ok")
        .concurrency(2)
        .start()
        .unwrap();
    // Every request on a new connection: Envoy spreads them over both workers.
    let statuses: Vec<u16> = (0..30).map(|_| envoy.get("/").unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 20, "{statuses:?}");
    assert!(both_workers_served(&envoy), "{:?}", envoy.stats().unwrap());
}

/// Whether both workers of a `--concurrency 2` Envoy accepted connections.
fn both_workers_served(envoy: &Envoy) -> bool {
    let stats = envoy.stats().unwrap();
    let worker = |n: u32| {
        stats
            .iter()
            .filter(|(k, _)| {
                k.starts_with("listener.") && k.ends_with(&format!(".worker_{n}.downstream_cx_total"))
            })
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    worker(0) > 0 && worker(1) > 0
}

/// Requests in flight the filter released at `hook` (`log` or `destroy`), once Envoy shows at
/// least `at_least` (a native series appears at its first count: none reads as 0).
fn releases(envoy: &Envoy, hook: &str, at_least: u64) -> u64 {
    series(envoy, "rate_limit_releases_total", &[("hook", hook)], at_least).unwrap_or(0)
}

/// Waits until `f` holds, for up to 5 s.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Envoy 1.40 runs the stream's log callback however a request ends, on both targets: the
/// filter releases there (and counts each release by hook); the release when the context is
/// destroyed is for a stream that ends without it, which none of these cases is.
fn requests_in_flight_are_released_however_the_stream_ends(target: Target) {
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/ok", Reply::status(200).body("ok"));
    upstream.set("/slow", Reply::status(200).body("late").delay(Duration::from_secs(3)));
    let refused = ClosedPort::new().unwrap();
    let config =
        json!({"rules": [{"name": "one", "limits": [{"name": "at-a-time", "concurrency": {"max": 1}}]}]});
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .upstream(upstream.addr())
        .cluster(Cluster::new("down", refused.addr()))
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/down"}, "route": {"cluster": "down"}},
                {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER, "timeout": "0.5s"}}
            ]
        }]}}))
        .bootstrap_patch(stats_tags())
        .start()
        .unwrap();
    // The released count once it reaches `n`, and that nothing was released at destruction.
    let released = |n: u64| {
        assert_eq!(releases(&envoy, "destroy", 0), 0, "every release came from the log callback");
        releases(&envoy, "log", n)
    };
    // One request on its own: allowed once the slot is free again.
    let free = || envoy.get("/ok").unwrap().status == 200;

    // 1. A request that completes (and the check that the slot is free: each case releases
    // two requests, its own and that check).
    assert_eq!(envoy.get("/ok").unwrap().status, 200);
    assert!(eventually(free), "released after a complete stream");
    assert_eq!(released(2), 2);

    // 2. The client goes away while the upstream is still answering.
    let gone = envoy.send(&Request::get("/slow?client-gone").timeout(Duration::from_millis(200)));
    assert!(gone.is_err(), "the client gave up: {gone:?}");
    assert!(eventually(free), "released after the client's reset");
    assert_eq!(released(4), 4);

    // 3. The upstream is too slow: the router's timeout answers 504.
    assert_eq!(envoy.get("/slow?timeout").unwrap().status, 504);
    assert!(eventually(free), "released after an upstream timeout");
    assert_eq!(released(6), 6);

    // 4. The upstream refuses the connection: the router answers 503.
    assert_eq!(envoy.get("/down").unwrap().status, 503);
    assert!(eventually(free), "released after an upstream connection failure");
    assert_eq!(released(8), 8);

    // 5. A second request while one is in flight is refused; the first still ends.
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| envoy.get("/slow?held").unwrap().status);
        assert!(eventually(|| upstream.received().iter().any(|r| r.path == "/slow?held")), "in flight");
        let second = envoy.get("/ok").unwrap();
        assert_eq!(second.status, 429, "{}", second.text());
        assert_eq!(second.header("ratelimit"), Some(r#""one.at-a-time";r=0"#));
        slow.join().unwrap()
    });
    assert_eq!(slow, 504);
    assert!(eventually(free));
    assert_eq!(released(10), 10);
}

fn the_client_address_is_envoys_trusted_one_or_a_forwarded_hop(target: Target) {
    let limit = |descriptor: Value| {
        json!({"rules": [{"name": "login", "limits": [{"name": "ip", "descriptors": [descriptor],
            "fixed_window": {"requests": 1, "per": "minute"}}]}]})
    };
    // Envoy trusts one proxy in front (Istio's numTrustedProxies: 1): its `source.address` is
    // the entry that proxy wrote, and the filter counts by it.
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &limit(json!("client_address"))))
        .direct_response(200, "ok")
        .hcm_patch(json!({"use_remote_address": true, "xff_num_trusted_hops": 1}))
        .start()
        .unwrap();
    let login = |envoy: &Envoy, xff: &str| {
        envoy.send(&Request::get("/login").header("x-forwarded-for", xff)).unwrap().status
    };
    assert_eq!(login(&envoy, "6.6.6.6, 198.51.100.7"), 200);
    assert_eq!(login(&envoy, "7.7.7.7, 198.51.100.7"), 429, "the client's own entry changes nothing");
    assert_eq!(login(&envoy, "198.51.100.8"), 200);
    drop(envoy);

    // Envoy left as it is: the filter takes the second entry from the right, since Envoy
    // appends the connection's address (the proxy in front) to what that proxy sent.
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &limit(json!({"client_address": {"xff_hop": 2}}))))
        .direct_response(200, "ok")
        .hcm_patch(json!({"use_remote_address": true}))
        .start()
        .unwrap();
    assert_eq!(login(&envoy, "6.6.6.6, 198.51.100.7"), 200);
    assert_eq!(login(&envoy, "7.7.7.7, 198.51.100.7"), 429);
    assert_eq!(login(&envoy, "198.51.100.8"), 200);
}

fn bad_config_is_refused_with_the_field_named(target: Target) {
    let bad = json!({
        "mode": "global",
        "global": {"cluster": "ratelimit", "failure_mode": "open"},
        "rules": [{"name": "api", "limits": [{"descriptors": [{"header": "x api"}]}]}],
    });
    let log = EnvoyBuilder::new().filter(filter(target, &bad)).start_expecting_failure().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("rate_limit: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in Envoy's log:\n{log}"));
    for needle in [
        "(2 errors)",
        r#"`global.failure_mode` = "open": must be "allow" or "deny""#,
        r#"`rules[0].limits[0].descriptors[0].header` = "x api": not a valid HTTP header name"#,
    ] {
        assert!(line.contains(needle), "missing {needle:?} in {line}");
    }
    match target {
        Target::Wasm => assert!(log.contains("Unable to create Wasm plugin rate_limit"), "{log}"),
        Target::Native => assert!(log.contains(NATIVE_REFUSAL), "{log}"),
    }
}

/// One load test at a time (two would share the two cores).
static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The proof that counters shared through compare-and-swap lose no update: two workers and wrk
/// with many connections on one counter for a few seconds. First every request is allowed and
/// counted (a write each, both workers writing one bucket): the counter must hold exactly the
/// number of requests Envoy answered. Then a limit of 1,000: every request is answered allowed
/// or limited, and exactly 1,000 are allowed.
fn two_workers_under_load_count_every_request_exactly_once(target: Target) {
    let _alone = LOAD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const LIMIT: u64 = 1_000;
    const BIG: u64 = 100_000_000;
    // One token a day: no refill during the run (under one token), so what the bucket holds is
    // exactly its burst less what was taken.
    let config = json!({"response_headers": "always", "rules": [
        {"name": "count", "match": {"prefix": "/count"}, "limits": [{"name": "all",
            "token_bucket": {"rate": 1, "per": "day", "burst": BIG}}]},
        {"name": "load", "match": {"prefix": "/limit"}, "limits": [{"name": "all",
            "token_bucket": {"rate": 1, "per": "day", "burst": LIMIT}}]}]});
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .direct_response(200, "ok")
        .bootstrap_patch(stats_tags())
        .concurrency(2)
        .start()
        .unwrap();
    let stat = |name: &str| envoy.stat(&format!("http.ingress_http.{name}")).unwrap().unwrap_or(0);
    let load = |path: &str| {
        let options = WrkOptions { threads: 2, connections: 32, duration_secs: 4, cpus: None, script: None };
        run_wrk(&envoy.url(path), &options).unwrap()
    };

    // 1. Every request counted, by both workers at once.
    let wrk = load("/count");
    let last = envoy.get("/count").unwrap();
    let left: u64 = last
        .header("ratelimit")
        .and_then(|f| f.strip_prefix(r#""count.all";r="#))
        .and_then(|f| f.split(';').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{:?}", last.headers));
    let answered = stat("downstream_rq_2xx");
    let retries = series(&envoy, "rate_limit_cas_retries_total", &[], 1).unwrap_or(0);
    eprintln!("{target:?}: every request counted: wrk {wrk:?}; Envoy answered {answered}, the counter holds {}, {retries} compare-and-swap retries", BIG - left);
    // Enough requests that both workers write the counter at once, whatever else the machine runs.
    assert!(wrk.requests > 2 * LIMIT, "not enough load: {wrk:?}");
    assert_eq!(stat("downstream_rq_total"), answered, "all allowed");
    assert_eq!(BIG - left, answered, "the shared counter holds every request Envoy answered");
    assert!(both_workers_served(&envoy), "{:?}", envoy.stats().unwrap());

    // 2. A limit: exactly that many allowed, every other request limited.
    let wrk = load("/limit");
    let (ok, limited, total) = (
        stat("downstream_rq_2xx") - answered,
        stat("downstream_rq_4xx"),
        stat("downstream_rq_total") - answered,
    );
    eprintln!("{target:?}: a limit of {LIMIT}: wrk {wrk:?}; Envoy 2xx {ok}, 4xx {limited}, total {total}");
    assert!(wrk.requests > 2 * LIMIT, "not enough load to go over the limit: {wrk:?}");
    // wrk leaves out what was in flight when it stopped (one per connection) and what it timed
    // out; Envoy counts those as started, never answered.
    let unseen = 32 + wrk.socket_errors;
    assert!(
        ok + limited <= total && total <= ok + limited + unseen,
        "every request answered was allowed or limited"
    );
    assert!(wrk.requests <= total && total <= wrk.requests + unseen, "wrk {wrk:?} vs Envoy {total}");
    let untracked = ["full", "contention", "host"]
        .iter()
        // A native series appears at its first count: none reads as 0.
        .map(|r| series(&envoy, "rate_limit_untracked_total", &[("reason", r)], 0).unwrap_or(0))
        .sum::<u64>();
    assert_eq!(untracked, 0, "every request was counted");
    assert_eq!(ok, LIMIT, "exactly the limit was allowed: no update was lost");
    assert_eq!(decisions(&envoy, "load", "all", "allowed", LIMIT), Some(LIMIT));
    assert_eq!(decisions(&envoy, "load", "all", "limited", limited), Some(limited));
}

/// The standalone example is a valid Envoy 1.40 configuration, and the README shows it with the
/// module where an operator installs it.
#[test]
fn standalone_example_is_valid_and_shown_in_the_readme() {
    let root = gatewasm_envoy::workspace_root();
    // From the repository root, where the example's relative module path points.
    let out = std::process::Command::new(gatewasm_envoy::envoy_binary().unwrap())
        .args(["--mode", "validate", "--disable-hot-restart", "-c", "filters/rate-limit/envoy.yaml"])
        .current_dir(&root)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");
    let example = std::fs::read_to_string(root.join("filters/rate-limit/envoy.yaml")).unwrap();
    let readme = std::fs::read_to_string(root.join("filters/rate-limit/README.md")).unwrap();
    let shown: String = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("target/wasm32-wasip1/release/", "/etc/envoy/");
    assert!(
        readme.contains(&format!("```yaml\n{shown}```")),
        "README.md's In Envoy block differs from envoy.yaml"
    );
    // The example's filter configuration is the README's first example.
    let start = readme.find("```json\n").unwrap() + 8;
    let json: Value =
        serde_json::from_str(&readme[start..start + readme[start..].find("```").unwrap()]).unwrap();
    let value = example.split("value: |\n").nth(1).unwrap().split("vm_config").next().unwrap();
    assert_eq!(serde_json::from_str::<Value>(value).unwrap(), json);
}

/// Global mode across two gateway replicas: two Envoys, each with the filter, one rate limit
/// service counting in Redis. One limit is shared (requests to either gateway count against it),
/// Redis stopped mid-run makes the service fail at once and each gateway follows its failure
/// mode (the `deny` one answering as Envoy's own `ratelimit` filter with `failure_mode_deny`
/// does, checked on a third Envoy), a stalled Redis makes the call time out, and the limit comes
/// back with Redis.
fn two_gateways_share_one_global_limit_through_the_service_and_redis(target: Target) {
    const LIMITS: &str = r#"{"domain": "edge", "descriptors": [
        {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": 5}}]}"#;
    let mut redis = support::Redis::start();
    let service = support::RunningService::start(LIMITS, Some(&redis.url()), false);
    // The service gives Redis 300 ms (`support::STORE_TIMEOUT`) before it answers UNAVAILABLE:
    // the `allow` gateway waits longer than that, the `deny` one less.
    let config = |failure_mode: &str, timeout_ms: u64| {
        json!({"mode": "global", "domain": "edge",
               "global": {"cluster": "ratelimit", "timeout_ms": timeout_ms, "failure_mode": failure_mode},
               "response_headers": "always",
               "rules": [{"name": "api", "match": {"prefix": "/api/"},
                          "limits": [{"name": "per-key", "descriptors": [{"header": "x-api-key", "key": "api_key"}]}]}]})
    };
    let gateway = |failure_mode: &str, timeout_ms: u64| {
        EnvoyBuilder::new()
            .filter(filter(target, &config(failure_mode, timeout_ms)))
            .cluster(Cluster::new("ratelimit", service.addr).http2())
            .direct_response(200, "ok")
            .bootstrap_patch(stats_tags())
            .start()
            .unwrap()
    };
    let (open, closed) = (gateway("allow", 3_000), gateway("deny", 50));
    let get = |envoy: &Envoy, key: &str| {
        envoy
            .send(&Request::get("/api/items").header("x-api-key", key).timeout(Duration::from_secs(10)))
            .unwrap()
    };

    // Five a minute for key k1, counted across both gateways.
    let statuses: Vec<u16> =
        (0..8).map(|i| get(if i % 2 == 0 { &open } else { &closed }, "k1").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "{}", open.log_tail(30));
    let allowed = get(&open, "k2");
    assert_eq!(allowed.status, 200, "another key, another counter");
    assert_eq!(allowed.header("ratelimit-policy"), Some(r#""api.per-key";q=5;w=60"#));
    assert_eq!(allowed.header("ratelimit").map(|r| r.starts_with(r#""api.per-key";r=4;t="#)), Some(true));
    let limited = get(&closed, "k1");
    assert_eq!(limited.status, 429);
    let body = limited.json().unwrap();
    assert_eq!(
        body["message"].as_str().map(|m| m.starts_with("too many requests: limit api.per-key reached")),
        Some(true)
    );
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.header("ratelimit").map(|r| r.starts_with(r#""api.per-key";r=0;t="#)), Some(true));
    assert_eq!(decisions(&open, "api", "per-key", "allowed", 4), Some(4));
    assert_eq!(decisions(&closed, "api", "per-key", "limited", 3), Some(3));

    // Redis gone: the service says UNAVAILABLE; one gateway lets requests through, the other
    // refuses them (after its own timeout, or the service's answer if that comes first).
    redis.stop();
    let echo = EchoUpstream::start().unwrap();
    let native_deny = EnvoyBuilder::new()
        .raw_filter(json!({
            "name": "envoy.filters.http.ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "edge", "timeout": "0.1s", "failure_mode_deny": true,
                "rate_limit_service": {"transport_api_version": "V3",
                                       "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}}}}))
        .cluster(Cluster::new("ratelimit", service.addr).http2())
        // Route actions need a forwarding route, not a direct response.
        .upstream(echo.addr())
        .route_patch(json!({"route": {"rate_limits": [{"actions": [
            {"request_headers": {"header_name": "x-api-key", "descriptor_key": "api_key"}}]}]}}))
        .start()
        .unwrap();
    let envoys_own = get(&native_deny, "k3").status;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&open, "k1").status, 200, "failure_mode allow");
        let refused = get(&closed, "k1");
        assert_eq!(refused.status, envoys_own, "failure_mode deny answers as Envoy's own filter");
        assert_eq!(refused.status, 500);
        assert!(refused.text().contains("\"code\":\"service_error\""), "{}", refused.text());
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    let failures = |envoy: &Envoy, reason: &str, result: &str, at_least: u64| {
        series(
            envoy,
            "rate_limit_service_failures_total",
            &[("reason", reason), ("result", result)],
            at_least,
        )
    };
    assert_eq!(failures(&open, "unavailable", "allowed", 3), Some(3));
    // Past its 50 ms the `deny` gateway's call ends by Envoy's timer or by the service's own
    // answer to the deadline it was sent (tonic's CANCELLED, a timeout too), or, when the
    // service answers first, as unavailable.
    let denied = |reason: &str| failures(&closed, reason, "denied", 0).unwrap_or(0);
    let all_denied = || ["timeout", "unavailable"].map(denied).iter().sum::<u64>();
    let eventually = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while all_denied() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        all_denied()
    };
    assert_eq!(eventually(3), 3);

    // Back, empty: the limit counts again from zero, shared as before.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&open, "k4").header("ratelimit").is_none() {
        assert!(Instant::now() < deadline, "no recovery in 15 s: {}", open.log_tail(30));
        std::thread::sleep(Duration::from_millis(200));
    }
    let statuses: Vec<u16> =
        (0..6).map(|i| get(if i % 2 == 0 { &closed } else { &open }, "k5").status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);

    // Redis stalled: the service waits 300 ms for it; the `deny` gateway's 50 ms decides first,
    // the `allow` gateway gets the service's UNAVAILABLE.
    // (Failures of the recovery above are counted too: take the count once it has reached Envoy.)
    std::thread::sleep(Duration::from_millis(1_500));
    let (open_before, closed_before) =
        (failures(&open, "unavailable", "allowed", 0).unwrap_or(0), all_denied());
    redis.pause();
    let started = Instant::now();
    assert_eq!(get(&closed, "k5").status, 500);
    assert_eq!(get(&open, "k5").status, 200);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    redis.resume();
    assert_eq!(failures(&open, "unavailable", "allowed", open_before + 1), Some(open_before + 1));
    assert_eq!(eventually(closed_before + 1), closed_before + 1);
}

/// Global mode under load: wrk on two gateways at once, one limit in the rate limit service
/// (Redis). Every request is answered allowed (200) or limited (429), none fails (the `deny`
/// failure mode would show a failure as a 500), and exactly the limit is allowed across both.
fn two_gateways_under_load_allow_exactly_the_global_limit(target: Target) {
    let _alone = LOAD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const LIMIT: u64 = 500;
    let redis = support::Redis::start();
    let limits = format!(
        r#"{{"domain": "load", "descriptors": [{{"key": "generic_key", "value": "all",
            "rate_limit": {{"unit": "day", "requests_per_unit": {LIMIT}}}}}]}}"#
    );
    let service = support::RunningService::start(&limits, Some(&redis.url()), false);
    let config = json!({"mode": "global", "domain": "load",
        "global": {"cluster": "ratelimit", "timeout_ms": 5_000, "failure_mode": "deny"},
        "rules": [{"name": "load", "limits": [{"name": "all", "descriptors": [{"constant": "all"}]}]}]});
    let gateways: Vec<Envoy> = (0..2)
        .map(|_| {
            EnvoyBuilder::new()
                .filter(filter(target, &config))
                .cluster(Cluster::new("ratelimit", service.addr).http2())
                .direct_response(200, "ok")
                .bootstrap_patch(stats_tags())
                .start()
                .unwrap()
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = gateways
            .iter()
            .map(|envoy| {
                scope.spawn(move || {
                    let options =
                        WrkOptions { threads: 1, connections: 8, duration_secs: 3, cpus: None, script: None };
                    run_wrk(&envoy.url("/load"), &options).unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let stat =
        |envoy: &Envoy, name: &str| envoy.stat(&format!("http.ingress_http.{name}")).unwrap().unwrap_or(0);
    let sum = |name: &str| gateways.iter().map(|e| stat(e, name)).sum::<u64>();
    let (ok, limited, failed, total) = (
        sum("downstream_rq_2xx"),
        sum("downstream_rq_4xx"),
        sum("downstream_rq_5xx"),
        sum("downstream_rq_total"),
    );
    eprintln!("{target:?}: global limit {LIMIT} on two gateways: wrk {results:?}; 2xx {ok}, 4xx {limited}, 5xx {failed}, total {total}");
    assert!(results.iter().map(|r| r.requests).sum::<u64>() > 2 * LIMIT, "not enough load: {results:?}");
    // Requests in flight when wrk stopped (one per connection at most) were started, never answered.
    assert!(
        ok + limited <= total && total <= ok + limited + 16,
        "every request answered was allowed or limited"
    );
    assert!(results.iter().map(|r| r.requests).sum::<u64>() <= ok + limited, "{results:?}");
    assert_eq!(failed, 0, "no decision failed");
    assert_eq!(ok, LIMIT, "exactly the limit was allowed across both gateways");
    for envoy in &gateways {
        let allowed = stat(envoy, "downstream_rq_2xx");
        assert!(allowed > 0, "both gateways took part");
        assert_eq!(decisions(envoy, "load", "all", "allowed", allowed), Some(allowed));
    }
}
