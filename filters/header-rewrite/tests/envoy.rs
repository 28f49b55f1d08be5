//! End to end through a real Envoy in front of the echo upstream, once with the Wasm module (V8)
//! and once with the native dynamic module: one set of expectations for both.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p header-rewrite, and
//! cargo build --release -p header-rewrite

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewasm_envoy::{
    for_each_target, EchoUpstream, EnvoyBuilder, HttpFilter, Request, Target, NATIVE_REFUSAL,
    UPSTREAM_CLUSTER,
};
use serde_json::{json, Value};

fn filter(target: Target, config: &Value) -> HttpFilter {
    target.filter("header-rewrite", "header_rewrite", config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(
    rewritten_request_reaches_upstream_and_response_headers_reach_client,
    spoofed_original_path_is_removed,
    rewritten_path_is_routed_again,
    bad_config_is_refused_with_the_field_named,
    response_operations_apply_to_envoy_generated_replies,
    a_host_no_rule_can_read_is_refused_in_envoy,
);

fn config() -> Value {
    json!({"rules": [
        {
            "name": "api",
            "match": {"hosts": ["*.example.com"], "path": {"prefix": "/api/v1/"}, "methods": ["GET", "POST"]},
            "host_rewrite": "backend.internal",
            "path_rewrite": {"prefix": "/v2/"},
            "request": {
                "remove": ["x-secret"],
                "rename": [{"from": "x-old", "to": "x-new"}],
                "set": [{"name": "x-original-host", "value": "%HOST%"}, {"name": "x-user", "value": "u:%REQ(x-user-id)%"}],
                "add": [{"name": "x-via", "value": "gatewasm"}]
            },
            "response": {
                "set": [{"name": "x-rewritten-from", "value": "%METHOD% %PATH%"}],
                "add": [{"name": "x-served-by", "value": "gatewasm"}]
            }
        },
        {
            "name": "users",
            "match": {"path": {"regex": "/users/[0-9]+"}},
            "path_rewrite": {"regex": {"pattern": "^/users/([0-9]+)$", "substitution": "/u/\\1"}}
        }
    ]})
}

fn rewritten_request_reaches_upstream_and_response_headers_reach_client(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &config()))
        .upstream(upstream.addr())
        .bootstrap_patch(
            json!({"stats_config": {"stats_tags": [{"tag_name": "rule", "regex": "(;rule=([^;]*))"}]}}),
        )
        .start()
        .unwrap();

    let response = envoy
        .send(
            &Request::get("/api/v1/items/9?limit=5&x=%20")
                .header("host", "Shop.Example.com:8080")
                .header("x-secret", "s3cr3t")
                .header("x-old", "a")
                .header("x-user-id", "alice")
                .header("x-via", "edge"),
        )
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-rewritten-from"), Some("GET /api/v1/items/9"));
    assert_eq!(response.header("x-served-by"), Some("gatewasm"));

    let echo = response.echo().unwrap();
    assert_eq!(echo.path, "/v2/items/9?limit=5&x=%20");
    assert_eq!(echo.header("host"), Some("backend.internal"));
    assert_eq!(echo.header("x-envoy-original-path"), Some("/api/v1/items/9?limit=5&x=%20"));
    assert_eq!(echo.header("x-secret"), None);
    assert_eq!(echo.header("x-old"), None);
    assert_eq!(echo.header("x-new"), Some("a"));
    assert_eq!(echo.header("x-original-host"), Some("shop.example.com"));
    assert_eq!(echo.header("x-user"), Some("u:alice"));
    assert_eq!(echo.header_all("x-via"), ["edge", "gatewasm"]);

    // Regex rewrite, query kept.
    let echo = envoy.get("/users/42?full=1").unwrap().echo().unwrap();
    assert_eq!(echo.path, "/u/42?full=1");
    assert_eq!(echo.header("x-envoy-original-path"), Some("/users/42?full=1"));

    // Nothing matches: untouched, and no response headers added.
    let response = envoy.send(&Request::get("/api/v1/x").header("host", "other.org")).unwrap();
    assert_eq!(response.header("x-served-by"), None);
    let echo = response.echo().unwrap();
    assert_eq!(echo.path, "/api/v1/x");
    assert_eq!(echo.header("host"), Some("other.org"));

    // Rule counters reach Envoy from the filter's 1 s tick (Wasm) or at once (native), as the
    // same Prometheus series.
    let wanted = [
        "\nheader_rewrite_rules_applied_total{rule=\"api\"} 1\n",
        "\nheader_rewrite_rules_applied_total{rule=\"users\"} 1\n",
    ];
    let stats = wait_for_stats(&envoy, &wanted);
    for line in wanted {
        assert!(stats.contains(line), "{stats}");
    }
}

fn spoofed_original_path_is_removed(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy =
        EnvoyBuilder::new().filter(filter(target, &config())).upstream(upstream.addr()).start().unwrap();
    // No rule matches this request.
    let echo = envoy
        .send(&Request::get("/plain").header("x-envoy-original-path", "/admin/delete-everything"))
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!(echo.header("x-envoy-original-path"), None, "{echo:?}");
    // A rule rewrites: the upstream sees the real original path, once.
    let echo = envoy
        .send(&Request::get("/users/7").header("x-envoy-original-path", "/admin"))
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!(echo.header_all("x-envoy-original-path"), ["/users/7"]);
}

/// Envoy's Wasm filter clears the route cache whenever a filter changes request headers, so the
/// router picks the route again for the rewritten `:path`/`:authority`; the native backend clears
/// it after a callback that changed them, to the same effect.
fn rewritten_path_is_routed_again(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &json!({"rules": [{
            "match": {"path": {"prefix": "/old/"}},
            "path_rewrite": {"prefix": "/rerouted/"}
        }]})))
        .upstream(upstream.addr())
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/rerouted/"}, "direct_response": {"status": 299, "body": {"inline_string": "rerouted"}}},
                {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER}}
            ]
        }]}}))
        .start()
        .unwrap();
    let response = envoy.get("/old/thing").unwrap();
    assert_eq!(response.status, 299, "route not re-selected: {}", response.text());
    assert_eq!(response.text(), "rerouted");
    // Control: a path the filter leaves alone goes upstream.
    assert_eq!(envoy.get("/other").unwrap().echo().unwrap().path, "/other");
}

fn bad_config_is_refused_with_the_field_named(target: Target) {
    let bad = json!({"rules": [{
        "match": {"path": {"regex": "(unclosed"}},
        "request": {
            "set": [{"name": "x y", "value": "v"}, {"name": "x-ok", "value": "a\r\nb"}],
            "add": [{"name": "x-a", "value": "%BOGUS%"}]
        },
        "colour": "blue"
    }]});
    let log = EnvoyBuilder::new().filter(filter(target, &bad)).start_expecting_failure().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("header_rewrite: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in Envoy's log:\n{log}"));
    for needle in [
        "(5 errors)",
        "`rules[0].colour`: unknown field",
        "`rules[0].match.path.regex` = \"(unclosed\"",
        "`rules[0].request.set[0].name` = \"x y\"",
        "`rules[0].request.set[1].value` = \"a\\r\\nb\"",
        "`rules[0].request.add[0].value` = \"%BOGUS%\": unknown substitution",
    ] {
        assert!(line.contains(needle), "missing {needle:?} in {line}");
    }
    // How Envoy 1.40 then refuses the filter differs by extension; the line above is the same.
    match target {
        // "Wasm VM failed Failed to configure base Wasm plugin", then the server exits with
        // "Unable to create Wasm plugin header_rewrite".
        Target::Wasm => {
            assert!(log.contains("Failed to configure base Wasm plugin"), "{log}");
            assert!(log.contains("Unable to create Wasm plugin header_rewrite"), "{log}");
        }
        Target::Native => assert!(log.contains(NATIVE_REFUSAL), "{log}"),
    }
}

/// Why the filter strips the header: Envoy 1.40 with default settings forwards a client's
/// `x-envoy-original-path` to the upstream as it is.
#[test]
fn without_the_filter_envoy_forwards_a_spoofed_original_path() {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new().upstream(upstream.addr()).start().unwrap();
    let echo = envoy
        .send(&Request::get("/plain").header("x-envoy-original-path", "/admin"))
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!(echo.header("x-envoy-original-path"), Some("/admin"));
}

/// Envoy's own replies (here the router's 503 for an unreachable upstream) pass through the
/// filter's response side too.
fn response_operations_apply_to_envoy_generated_replies(target: Target) {
    let closed = {
        let upstream = EchoUpstream::start().unwrap();
        upstream.addr()
    };
    let envoy = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({"rules": [{"response": {"set": [{"name": "x-served-by", "value": "gatewasm"}]}}]}),
        ))
        .upstream(closed)
        .start()
        .unwrap();
    let response = envoy.get("/").unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("x-served-by"), Some("gatewasm"));
}

/// The Prometheus scrape once it contains every `wanted` line, or after 5 s (the caller's
/// assertions then show what was there).
fn wait_for_stats(envoy: &gatewasm_envoy::Envoy, wanted: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stats = envoy.admin_get("/stats/prometheus").unwrap();
        if wanted.iter().all(|w| stats.contains(w)) || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Envoy hands the filter the client's `Host` unchanged, and routes hosts no rule can read to
/// the catch-all virtual host: the filter refuses them rather than let them meet a later rule.
fn a_host_no_rule_can_read_is_refused_in_envoy(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy =
        EnvoyBuilder::new().filter(filter(target, &config())).upstream(upstream.addr()).start().unwrap();
    for host in
        ["shop.example.com:abc", "shop.example.com..", "a.example.com:443:443", "user@shop.example.com"]
    {
        let response = envoy.send(&Request::get("/users/7").header("host", host)).unwrap();
        assert_eq!(response.status, 400, "{host}: {}", response.text());
        let body: Value = response.json().unwrap();
        assert_eq!(body["code"], "invalid_host", "{host}");
    }
    let echo = envoy
        .send(&Request::get("/users/7").header("host", "Shop.Example.com.:8080"))
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!(echo.path, "/u/7");
}
