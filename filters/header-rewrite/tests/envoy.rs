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

/// The configuration error line of an Envoy that refused `config` (it must refuse it), and
/// Envoy's whole log.
fn refusal(target: Target, config: &Value) -> (String, String) {
    let log = EnvoyBuilder::new().filter(filter(target, config)).start_expecting_failure().unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("header_rewrite: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in Envoy's log:\n{log}"))
        .to_string();
    (line, log)
}

for_each_target!(
    rewritten_request_reaches_upstream_and_response_headers_reach_client,
    spoofed_original_path_is_removed,
    rewritten_path_is_routed_again,
    bad_config_is_refused_with_the_field_named,
    response_operations_apply_to_envoy_generated_replies,
    a_host_no_rule_can_read_is_refused_in_envoy,
    redirects_match_envoys_own_route_redirects,
    direct_responses_match_envoys_own_direct_response,
    response_operations_apply_to_the_filters_own_answer_on_wasm_only,
    query_operations_reach_the_upstream_and_the_route_table,
    bad_answers_are_refused_with_the_field_named,
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
    let (line, log) = refusal(target, &bad);
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

/// One redirect, as Envoy's route `redirect` takes it (the filter reads the same fields), a
/// request, and the one answer both Envoy's route and the filter must give.
struct RedirectCase {
    /// The route's `match.prefix` (and the rule's `match.path.prefix`).
    prefix: &'static str,
    redirect: Value,
    path: &'static str,
    host: &'static str,
    /// `x-forwarded-proto` sent by the client, if any.
    proto: Option<&'static str>,
    status: u16,
    location: &'static str,
}

#[rustfmt::skip] // One case a line: the table reads as a table.
fn redirect_cases() -> Vec<RedirectCase> {
    let case = |prefix, redirect, path, host, status, location| RedirectCase { prefix, redirect, path, host, proto: None, status, location };
    vec![
        // Path replaced, the query kept; 301 by default.
        case("/c1", json!({"path_redirect": "/new"}), "/c1?x=1&y=%20", "a.example.com", 301, "http://a.example.com/new?x=1&y=%20"),
        // https: the default port of the scheme the request came with goes, any other stays.
        case("/c2", json!({"https_redirect": true}), "/c2/p?q=1", "a.example.com:80", 301, "https://a.example.com/c2/p?q=1"),
        case("/c3", json!({"https_redirect": true}), "/c3", "a.example.com:8080", 301, "https://a.example.com:8080/c3"),
        case("/c4", json!({"https_redirect": true}), "/c4", "a.example.com:443", 301, "https://a.example.com:443/c4"),
        RedirectCase { proto: Some("https"), ..case("/c5", json!({"https_redirect": true}), "/c5", "a.example.com:443", 301, "https://a.example.com:443/c5") },
        // IPv6 hosts keep their brackets; a new port replaces theirs.
        case("/c6", json!({"scheme_redirect": "https", "port_redirect": 8443}), "/c6", "[::1]:80", 301, "https://[::1]:8443/c6"),
        case("/c7", json!({"https_redirect": true}), "/c7", "[::1]", 301, "https://[::1]/c7"),
        case("/c8", json!({"https_redirect": true}), "/c8", "[2001:db8::1]:80", 301, "https://[2001:db8::1]/c8"),
        // A new host drops the request's port; a new port is added to it.
        case("/c9", json!({"host_redirect": "b.example.org", "port_redirect": 9000}), "/c9", "a.example.com:81", 301, "http://b.example.org:9000/c9"),
        case("/c10", json!({"host_redirect": "b.example.org"}), "/c10?k=v", "a.example.com:8080", 301, "http://b.example.org/c10?k=v"),
        case("/c11", json!({"host_redirect": "[2001:db8::2]", "port_redirect": 8080}), "/c11", "a.example.com", 301, "http://[2001:db8::2]:8080/c11"),
        // A path with its own query keeps it, even with strip_query; without one the request's
        // query goes with strip_query.
        case("/c12", json!({"path_redirect": "/new?from=c12", "strip_query": true}), "/c12?x=1", "a.example.com", 301, "http://a.example.com/new?from=c12"),
        case("/c13", json!({"path_redirect": "/new", "strip_query": true}), "/c13?x=1", "a.example.com", 301, "http://a.example.com/new"),
        case("/c14", json!({"strip_query": true, "https_redirect": true}), "/c14/a?x=1&y", "a.example.com", 301, "https://a.example.com/c14/a"),
        // Prefix and regex rewrites of the path, the query kept; a result without `/` gets one.
        case("/c15/", json!({"prefix_rewrite": "/v2/"}), "/c15/a/b?x=1", "a.example.com", 301, "http://a.example.com/v2/a/b?x=1"),
        case("/c16/", json!({"regex_rewrite": {"pattern": {"regex": "^/c16/([0-9]+)$"}, "substitution": "/items/\\1"}}), "/c16/42?y", "a.example.com", 301, "http://a.example.com/items/42?y"),
        case("/c17/", json!({"regex_rewrite": {"pattern": {"regex": "^/c17/([0-9]+)$"}, "substitution": "/items/\\1"}}), "/c17/x", "a.example.com", 301, "http://a.example.com/c17/x"),
        case("/c18/", json!({"regex_rewrite": {"pattern": {"regex": "^/c18/(.*)$"}, "substitution": "\\1"}}), "/c18/abc?z=1", "a.example.com", 301, "http://a.example.com/abc?z=1"),
        case("/c19/", json!({"regex_rewrite": {"pattern": {"regex": "o"}, "substitution": "0"}}), "/c19/foo/boo?o=o", "a.example.com", 301, "http://a.example.com/c19/f00/b00?o=o"),
        // Every status.
        case("/c20", json!({"path_redirect": "/n", "response_code": "FOUND"}), "/c20", "a.example.com", 302, "http://a.example.com/n"),
        case("/c21", json!({"path_redirect": "/n", "response_code": "SEE_OTHER"}), "/c21", "a.example.com", 303, "http://a.example.com/n"),
        case("/c22", json!({"path_redirect": "/n", "response_code": "TEMPORARY_REDIRECT"}), "/c22", "a.example.com", 307, "http://a.example.com/n"),
        case("/c23", json!({"path_redirect": "/n", "response_code": "PERMANENT_REDIRECT"}), "/c23", "a.example.com", 308, "http://a.example.com/n"),
        // The host's case kept; the same scheme keeps even a default port; an empty query
        // keeps its `?`.
        case("/c24", json!({"https_redirect": true}), "/c24", "A.Example.COM:80", 301, "https://A.Example.COM/c24"),
        case("/c25", json!({"scheme_redirect": "http", "path_redirect": "/n"}), "/c25", "a.example.com:80", 301, "http://a.example.com:80/n"),
        case("/c26", json!({"path_redirect": "/n"}), "/c26?", "a.example.com", 301, "http://a.example.com/n?"),
    ]
}

/// The filter's form of an Envoy `redirect`: the same fields, the regex's pattern as a string.
fn filter_redirect(envoy: &Value) -> Value {
    let mut ours = envoy.clone();
    if let Some(pattern) = envoy.pointer("/regex_rewrite/pattern/regex") {
        ours["regex_rewrite"]["pattern"] = pattern.clone();
    }
    ours
}

/// Every case through Envoy's own route redirects and through the filter, each answer compared
/// with the case's one expectation.
fn redirects_match_envoys_own_route_redirects(target: Target) {
    let cases = redirect_cases();
    let case_header = |i: usize| json!([{"name": "x-case", "string_match": {"exact": i.to_string()}}]);
    let routes: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"match": {"prefix": c.prefix, "headers": case_header(i)}, "redirect": c.redirect}))
        .collect();
    let native = EnvoyBuilder::new()
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all", "domains": ["*"], "routes": routes
        }]}}))
        .start()
        .unwrap();
    let rules: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"match": {"path": {"prefix": c.prefix}, "headers": [{"name": "x-case", "exact": i.to_string()}]},
                   "redirect": filter_redirect(&c.redirect)})
        })
        .collect();
    let filtered = EnvoyBuilder::new().filter(filter(target, &json!({"rules": rules}))).start().unwrap();
    let mut wrong = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut request = Request::get(c.path).header("host", c.host).header("x-case", &i.to_string());
        if let Some(proto) = c.proto {
            request = request.header("x-forwarded-proto", proto);
        }
        for (who, envoy) in [("Envoy's route", &native), ("the filter", &filtered)] {
            let response = envoy.send(&request).unwrap();
            let got = (response.status, response.header("location").unwrap_or_default().to_string());
            if got != (c.status, c.location.to_string()) {
                wrong.push(format!(
                    "{} {} (host {}): {who} answered {} {:?}, expected {} {:?}",
                    c.prefix, c.path, c.host, got.0, got.1, c.status, c.location
                ));
            }
            assert!(response.body.is_empty(), "{who}: {}", response.text());
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The filter's direct response next to Envoy's route `direct_response` with the same status,
/// body and headers (`response_headers_to_add` there, `direct_response.headers` here): what the
/// client gets is the same, HEAD included.
fn direct_responses_match_envoys_own_direct_response(target: Target) {
    let body = r#"{"error":"teapot","id":7}"#;
    let native = EnvoyBuilder::new()
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/json"}, "direct_response": {"status": 418, "body": {"inline_string": body}},
                 "response_headers_to_add": [
                     {"header": {"key": "content-type", "value": "application/json"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                     {"header": {"key": "cache-control", "value": "no-store"}}]},
                {"match": {"prefix": "/text"}, "direct_response": {"status": 200, "body": {"inline_string": "hello\n"}}},
                {"match": {"prefix": "/empty"}, "direct_response": {"status": 503}}
            ]
        }]}}))
        .start()
        .unwrap();
    let filtered = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({"rules": [
                {"match": {"prefix": "/json"}, "direct_response": {"status": 418, "json": {"error": "teapot", "id": 7},
                 "headers": [{"name": "cache-control", "value": "no-store"}]}},
                {"match": {"prefix": "/text"}, "direct_response": {"status": 200, "body": "hello\n"}},
                {"match": {"prefix": "/empty"}, "direct_response": {"status": 503}}
            ]}),
        ))
        .start()
        .unwrap();
    for request in [
        Request::get("/json?x=1"),
        Request::new("HEAD", "/json"),
        Request::get("/text"),
        Request::get("/empty"),
    ] {
        let shown = |r: &gatewasm_envoy::Response| {
            let headers: Vec<String> = ["content-type", "content-length", "cache-control", "location"]
                .iter()
                .map(|n| format!("{n}: {:?}", r.header(n)))
                .collect();
            format!("{} {} {:?}", r.status, headers.join(", "), r.text())
        };
        let (a, b) = (native.send(&request).unwrap(), filtered.send(&request).unwrap());
        assert_eq!(shown(&b), shown(&a), "{} {}", request.method, request.path);
    }
    let json = filtered.get("/json").unwrap();
    assert_eq!((json.status, json.text().as_str()), (418, body));
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(filtered.get("/text").unwrap().header("content-type"), Some("text/plain"));
}

/// Envoy 1.40 runs a Wasm filter's own local reply through that filter's response callback
/// (`Context::encodeHeaders` has no guard for it), as its router runs a route's
/// `response_headers_to_add` on its `direct_response`; a dynamic module's it does not
/// (`DynamicModuleHttpFilter::encodeHeaders` returns at once once the module sent a local
/// reply). So the response operations of the rules that matched apply to the filter's direct
/// responses and redirects on Wasm only; `direct_response.headers` reach the client on both.
fn response_operations_apply_to_the_filters_own_answer_on_wasm_only(target: Target) {
    let envoy = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({"match_mode": "all", "rules": [
                {"response": {"set": [{"name": "x-every", "value": "1"}]}},
                {"match": {"prefix": "/moved"}, "redirect": {"path_redirect": "/new"},
                 "response": {"set": [{"name": "x-served-by", "value": "gw %PATH%"}]}},
                {"match": {"prefix": "/teapot"}, "direct_response": {"status": 418, "headers": [{"name": "x-given", "value": "1"}]},
                 "response": {"set": [{"name": "x-served-by", "value": "gw %PATH%"}]}}
            ]}),
        ))
        .start()
        .unwrap();
    let moved = envoy.get("/moved").unwrap();
    let teapot = envoy.get("/teapot").unwrap();
    assert_eq!((moved.status, teapot.status), (301, 418));
    assert_eq!(teapot.header("x-given"), Some("1"));
    let applied = |r: &gatewasm_envoy::Response| {
        (r.header("x-every").is_some(), r.header("x-served-by").map(str::to_string))
    };
    match target {
        Target::Wasm => {
            assert_eq!(applied(&moved), (true, Some("gw /moved".to_string())));
            assert_eq!(applied(&teapot), (true, Some("gw /teapot".to_string())));
        }
        Target::Native => {
            assert_eq!(applied(&moved), (false, None));
            assert_eq!(applied(&teapot), (false, None));
        }
    }
    // A request the filter does not answer gets them on both (the router's answer here).
    assert_eq!(envoy.get("/other").unwrap().header("x-every"), Some("1"));
}

/// Query operations reach the upstream, with `:path` rewritten once, and Envoy routes the
/// rewritten query (its route `query_parameters` see the new one).
fn query_operations_reach_the_upstream_and_the_route_table(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({"match_mode": "all", "rules": [
                {"query": {"remove": ["utm_source"], "set": [{"name": "api version", "value": "2"}]}},
                {"match": {"path": {"prefix": "/beta"}, "query_params": [{"name": "beta", "exact": "on"}]},
                 "path_rewrite": {"prefix": "/v2"}, "query": {"set": [{"name": "channel", "value": "beta"}]}}
            ]}),
        ))
        .upstream(upstream.addr())
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/", "query_parameters": [{"name": "channel", "string_match": {"exact": "beta"}}]},
                 "direct_response": {"status": 299, "body": {"inline_string": "beta channel"}}},
                {"match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER}}
            ]
        }]}}))
        .start()
        .unwrap();
    let echo =
        envoy.get("/items?utm_source=mail&q=caf%C3%A9&api+version=1&tag=a&tag=b").unwrap().echo().unwrap();
    assert_eq!(echo.path, "/items?q=caf%C3%A9&api%20version=2&tag=a&tag=b");
    assert_eq!(echo.header("x-envoy-original-path"), None);
    let response = envoy.get("/beta/x?beta=on").unwrap();
    assert_eq!((response.status, response.text().as_str()), (299, "beta channel"), "routed on the new query");
    let echo = envoy.get("/beta/x?beta=off").unwrap().echo().unwrap();
    assert_eq!(echo.path, "/beta/x?beta=off&api%20version=2");
}

fn bad_answers_are_refused_with_the_field_named(target: Target) {
    let bad = json!({"rules": [
        {"redirect": {"response_code": 300, "port_redirect": 0}},
        {"direct_response": {"status": 200, "body": "x".repeat(5000)}},
        {"query": {"keep": [""]}}
    ]});
    let (line, _) = refusal(target, &bad);
    for needle in [
        "(4 errors)",
        "`rules[0].redirect.port_redirect` = 0: a port from 1 to 65535",
        "`rules[0].redirect.response_code` = 300: a redirect answers 301, 302, 303, 307 or 308",
        "`rules[1].direct_response.body` = \"xxxx",
        "5000 bytes: at most 4096",
        "`rules[2].query.keep[0]` = \"\": a query parameter name is the decoded name",
    ] {
        assert!(line.contains(needle), "missing {needle:?} in {line}");
    }
}
