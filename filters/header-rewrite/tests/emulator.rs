//! The built module in the emulator: what the upstream and the client would see.
//! Build it first: cargo build --release --target wasm32-wasip1 -p header-rewrite

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewasm_emulator::{for_module, Action, Emulator, LogLevel, Stream};
use serde_json::json;

fn emulator(config: &serde_json::Value) -> Emulator {
    let emu = for_module("header-rewrite", config.to_string())
        .and_then(|b| b.log_level(LogLevel::Info).build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

/// The error line of a module that refused `config` (it must refuse it).
fn refusal(config: &serde_json::Value) -> gatewasm_emulator::LogEntry {
    let emu = for_module("header-rewrite", config.to_string())
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.configured());
    let logs = emu.logs();
    logs.into_iter()
        .find(|l| l.message.contains("invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error logged: {:?}", emu.logs()))
}

fn request(emu: &Emulator, method: &str, authority: &str, path: &str, extra: &[(&str, &str)]) -> Stream {
    let mut s = emu.stream();
    let mut headers =
        vec![(":method", method), (":path", path), (":authority", authority), (":scheme", "http")];
    headers.extend_from_slice(extra);
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Continue);
    s
}

fn respond(s: &mut Stream, extra: &[(&str, &str)]) {
    let mut headers = vec![(":status", "200"), ("server", "echo")];
    headers.extend_from_slice(extra);
    assert_eq!(s.response_headers(&headers, true).unwrap(), Action::Continue);
}

fn all(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
}

#[test]
fn request_operations_and_substitutions() {
    let emu = emulator(&json!({"rules": [{
        "request": {
            "remove": ["x-secret"],
            "rename": [{"from": "x-old-user", "to": "x-user"}],
            "set": [
                {"name": "x-route-info", "value": "%METHOD% %HOST% %PATH% id=%REQUEST_ID% 100%%"},
                {"name": "x-tenant", "value": "t-%REQ(X-Tenant-Id)%"}
            ],
            "add": [{"name": "x-via", "value": "gatewasm"}]
        }
    }]}));
    let s = request(
        &emu,
        "POST",
        "API.Example.com:8443",
        "/v1/items?limit=5",
        &[
            ("x-secret", "s3cr3t"),
            ("x-old-user", "alice"),
            ("x-old-user", "bob"),
            ("x-user", "mallory"),
            ("x-request-id", "req-123"),
            ("x-tenant-id", "acme"),
            ("x-via", "edge"),
        ],
    );
    let up = s.request_headers_now();
    assert!(all(&up, "x-secret").is_empty());
    assert!(all(&up, "x-old-user").is_empty());
    assert_eq!(all(&up, "x-user"), ["alice", "bob"], "rename moves every value and replaces the target");
    assert_eq!(all(&up, "x-route-info"), ["POST api.example.com /v1/items id=req-123 100%"]);
    assert_eq!(all(&up, "x-tenant"), ["t-acme"]);
    assert_eq!(all(&up, "x-via"), ["edge", "gatewasm"], "add appends");
    // Nothing else changed.
    assert_eq!(s.request_header(":path").as_deref(), Some("/v1/items?limit=5"));
    assert_eq!(s.request_header(":authority").as_deref(), Some("API.Example.com:8443"));
    assert_eq!(s.request_header("x-envoy-original-path"), None);
}

#[test]
fn host_and_prefix_path_rewrite_keep_query_and_original_path() {
    let emu = emulator(&json!({"rules": [{
        "match": {"path": {"prefix": "/api/v1/"}},
        "host_rewrite": "backend.internal",
        "path_rewrite": {"prefix": "/v2/"}
    }]}));
    let s = request(&emu, "GET", "api.example.com", "/api/v1/users/7?fields=name&x", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/v2/users/7?fields=name&x"));
    assert_eq!(s.request_header(":authority").as_deref(), Some("backend.internal"));
    assert_eq!(s.request_header("host").as_deref(), Some("backend.internal"));
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/api/v1/users/7?fields=name&x"));

    // Not under the prefix: untouched.
    let s = request(&emu, "GET", "api.example.com", "/api/v10/users", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/api/v10/users"));
    assert_eq!(s.request_header(":authority").as_deref(), Some("api.example.com"));
}

#[test]
fn regex_path_rewrite() {
    let emu = emulator(&json!({"rules": [{
        "match": {"path": {"regex": "/users/[0-9]+/profile"}},
        "path_rewrite": {"regex": {"pattern": "^/users/([0-9]+)/profile$", "substitution": "/profiles/\\1"}}
    }]}));
    let s = request(&emu, "GET", "h", "/users/42/profile?v=1", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/profiles/42?v=1"));
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/users/42/profile?v=1"));
    let s = request(&emu, "GET", "h", "/users/x/profile", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/users/x/profile"));
}

#[test]
fn spoofed_original_path_is_always_removed() {
    let emu = emulator(&json!({"rules": [{
        "match": {"path": {"prefix": "/old/"}},
        "path_rewrite": {"prefix": "/new/"}
    }]}));
    // No rule matches: the spoofed header still goes.
    let s = request(&emu, "GET", "h", "/other", &[("x-envoy-original-path", "/admin")]);
    assert_eq!(s.request_header("x-envoy-original-path"), None);
    // A rule rewrites: the header holds the real original path, once.
    let s = request(&emu, "GET", "h", "/old/x", &[("x-envoy-original-path", "/admin")]);
    assert_eq!(all(&s.request_headers_now(), "x-envoy-original-path"), ["/old/x"]);
    // Asked for explicitly, even with no rules at all.
    let emu = emulator(&json!({"strip_original_path": true}));
    let s = request(&emu, "GET", "h", "/", &[("X-Envoy-Original-Path", "/admin")]);
    assert_eq!(s.request_header("x-envoy-original-path"), None);
}

#[test]
fn without_path_rewrites_the_original_path_header_is_left_as_envoy_leaves_it() {
    // The filter never sets the header then, and checking for it costs a read per request.
    let emu = emulator(&json!({"rules": [{"request": {"set": [{"name": "x-a", "value": "1"}]}}]}));
    let s = request(&emu, "GET", "h", "/", &[("x-envoy-original-path", "/admin")]);
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/admin"));
    let emu = emulator(&json!({"strip_original_path": false, "rules": [{
        "match": {"path": {"prefix": "/old/"}}, "path_rewrite": {"prefix": "/new/"}
    }]}));
    let s = request(&emu, "GET", "h", "/other", &[("x-envoy-original-path", "/admin")]);
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/admin"));
}

#[test]
fn matching_on_host_method_and_headers() {
    let emu = emulator(&json!({"rules": [{
        "match": {
            "hosts": ["*.example.com"],
            "methods": ["GET"],
            "headers": [
                {"name": "x-env", "exact": "prod"},
                {"name": "x-version", "regex": "v[0-9]+"},
                {"name": "x-debug", "present": false}
            ]
        },
        "request": {"set": [{"name": "x-matched", "value": "yes"}]}
    }]}));
    let matched = |method: &str, host: &str, extra: &[(&str, &str)]| {
        request(&emu, method, host, "/", extra).request_header("x-matched").is_some()
    };
    let good = [("x-env", "prod"), ("x-version", "v2")];
    assert!(matched("GET", "API.Example.COM:443", &good), "host is case-insensitive, port ignored");
    assert!(!matched("GET", "example.com", &good), "wildcard needs a subdomain");
    assert!(!matched("POST", "a.example.com", &good));
    assert!(!matched("GET", "a.example.com", &[("x-env", "prod"), ("x-version", "v2-beta")]));
    assert!(!matched("GET", "a.example.com", &[("x-env", "Prod"), ("x-version", "v2")]));
    assert!(!matched("GET", "a.example.com", &[("x-env", "prod"), ("x-version", "v2"), ("x-debug", "1")]));
}

#[test]
fn first_match_by_default_all_on_request() {
    let rules = json!([
        {"match": {"path": {"prefix": "/a"}}, "request": {"add": [{"name": "x-rules", "value": "first"}]}},
        {"request": {"add": [{"name": "x-rules", "value": "catch-all"}]}}
    ]);
    let emu = emulator(&json!({"rules": rules}));
    assert_eq!(all(&request(&emu, "GET", "h", "/a", &[]).request_headers_now(), "x-rules"), ["first"]);
    assert_eq!(all(&request(&emu, "GET", "h", "/b", &[]).request_headers_now(), "x-rules"), ["catch-all"]);

    let emu = emulator(&json!({"match_mode": "all", "rules": rules}));
    assert_eq!(
        all(&request(&emu, "GET", "h", "/a", &[]).request_headers_now(), "x-rules"),
        ["first", "catch-all"]
    );
    assert_eq!(all(&request(&emu, "GET", "h", "/b", &[]).request_headers_now(), "x-rules"), ["catch-all"]);
}

#[test]
fn all_mode_matches_the_original_request() {
    // Rule 0 sets a header rule 1 matches on: rule 1 must still see the request as it arrived.
    let emu = emulator(&json!({"match_mode": "all", "rules": [
        {"request": {"set": [{"name": "x-flag", "value": "on"}]}},
        {"match": {"headers": [{"name": "x-flag", "present": false}]},
         "request": {"set": [{"name": "x-saw-original", "value": "yes"}]}}
    ]}));
    let s = request(&emu, "GET", "h", "/", &[]);
    assert_eq!(s.request_header("x-flag").as_deref(), Some("on"));
    assert_eq!(s.request_header("x-saw-original").as_deref(), Some("yes"));
}

#[test]
fn response_operations_only_for_rules_that_matched_with_request_values() {
    let emu = emulator(&json!({"rules": [
        {
            "name": "api",
            "match": {"path": {"prefix": "/api/"}},
            "path_rewrite": {"prefix": "/"},
            "response": {
                "set": [{"name": "x-served-for", "value": "%REQ(x-user)% %METHOD% %PATH% via %RESP(server)%"}],
                "remove": ["server"],
                "rename": [{"from": "x-internal-id", "to": "x-trace"}]
            }
        },
        {"name": "other", "response": {"add": [{"name": "x-other", "value": "1"}]}}
    ]}));
    let mut s = request(&emu, "DELETE", "h", "/api/thing?q=1", &[("x-user", "alice")]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/thing?q=1"));
    respond(&mut s, &[("x-internal-id", "abc")]);
    let down = s.response_headers_now();
    // Request values are those the request arrived with (before the path rewrite), kept from
    // the request phase: Envoy no longer exposes request headers when the response arrives.
    assert_eq!(all(&down, "x-served-for"), ["alice DELETE /api/thing via echo"]);
    assert!(all(&down, "server").is_empty());
    assert_eq!(all(&down, "x-trace"), ["abc"]);
    assert!(all(&down, "x-internal-id").is_empty());
    assert!(all(&down, "x-other").is_empty(), "first match only");

    let mut s = request(&emu, "GET", "h", "/elsewhere", &[]);
    respond(&mut s, &[]);
    let down = s.response_headers_now();
    assert_eq!(all(&down, "x-other"), ["1"]);
    assert!(all(&down, "x-served-for").is_empty());
    assert_eq!(all(&down, "server"), ["echo"]);
    s.log().unwrap();

    // Rule counters are counted in the VM and reach Envoy on the next tick (1 s).
    assert_eq!(emu.metric("header_rewrite_rules_applied_total;rule=api"), Some(0));
    emu.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("header_rewrite_rules_applied_total;rule=api"), Some(1));
    assert_eq!(emu.metric("header_rewrite_rules_applied_total;rule=other"), Some(1));
}

#[test]
fn non_matching_request_is_untouched() {
    let emu = emulator(&json!({"rules": [{
        "match": {"hosts": ["api.example.com"]},
        "host_rewrite": "backend",
        "request": {"remove": ["x-a"]}
    }]}));
    let mut s = emu.stream();
    let headers = [
        (":method", "GET"),
        (":path", "/p?q"),
        (":authority", "www.example.com"),
        ("x-a", "1"),
        ("x-b", "2"),
    ];
    s.request_headers(&headers, true).unwrap();
    let expected: Vec<(String, String)> =
        headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    assert_eq!(s.request_headers_now(), expected);
}

#[test]
fn substituted_crlf_is_dropped_and_counted() {
    let emu = emulator(&json!({"rules": [{
        "request": {"set": [{"name": "x-copy", "value": "user=%REQ(x-user)%"}, {"name": "x-static", "value": "ok"}]}
    }]}));
    let s = request(&emu, "GET", "h", "/", &[("x-user", "alice\r\nx-admin: true")]);
    assert_eq!(s.request_header("x-copy"), None);
    assert_eq!(s.request_header("x-admin"), None);
    assert_eq!(s.request_header("x-static").as_deref(), Some("ok"));
    assert_eq!(emu.metric("header_rewrite_unsafe_values_dropped_total"), Some(1));
    // A clean value goes through.
    let s = request(&emu, "GET", "h", "/", &[("x-user", "alice")]);
    assert_eq!(s.request_header("x-copy").as_deref(), Some("user=alice"));
}

#[test]
fn bad_config_fails_configure_and_logs_every_field() {
    let config = json!({"rules": [{
        "match": {"path": {"regex": "(unclosed"}},
        "request": {
            "set": [{"name": "x y", "value": "v"}, {"name": "x-ok", "value": "a\r\nb"}],
            "add": [{"name": "x-a", "value": "%BOGUS%"}]
        },
        "colour": "blue"
    }]});
    let line = refusal(&config);
    assert_eq!(line.level, LogLevel::Error);
    for needle in [
        "header_rewrite: invalid plugin configuration (5 errors)",
        "`rules[0].colour`: unknown field",
        "`rules[0].match.path.regex` = \"(unclosed\"",
        "`rules[0].request.set[0].name` = \"x y\"",
        "`rules[0].request.set[1].value` = \"a\\r\\nb\"",
        "`rules[0].request.add[0].value` = \"%BOGUS%\": unknown substitution",
    ] {
        assert!(line.message.contains(needle), "missing {needle:?} in {}", line.message);
    }
}

#[test]
fn a_host_no_rule_can_read_is_refused_when_rules_name_hosts() {
    // The first rule strips an internal header for api.example.com only; the second applies to
    // everything. A host no rule can read must not reach the second rule in its place.
    let emu = emulator(&json!({"rules": [
        {"name": "api", "match": {"hosts": ["api.example.com"]}, "request": {"remove": ["x-internal"]}},
        {"name": "rest", "request": {"set": [{"name": "x-rest", "value": "1"}]}}
    ]}));
    for host in ["api.example.com:abc", "api.example.com..", "a.example.com:443:443", "user@api.example.com"]
    {
        let mut s = emu.stream();
        let headers = [(":method", "GET"), (":path", "/"), (":authority", host), ("x-internal", "1")];
        assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause, "{host}");
        let reply = s.local_reply().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!((reply.status, body["code"].as_str()), (400, Some("invalid_host")), "{host}");
    }
    let s = request(&emu, "GET", "API.example.com:8443", "/", &[("x-internal", "1")]);
    assert_eq!(s.request_header("x-internal"), None, "every spelling of the host meets its rule");
    emu.advance_clock(std::time::Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("header_rewrite_invalid_host_total"), Some(4));

    // Rules without hosts never read the host and never refuse for it.
    let emu = emulator(&json!({"rules": [{"request": {"set": [{"name": "x-a", "value": "%HOST%"}]}}]}));
    let s = request(&emu, "GET", "api.example.com:abc", "/", &[]);
    assert_eq!(s.request_header("x-a"), None, "an unreadable host renders empty, so nothing is set");
}

/// The SDK's match shape in the module: a path template, header prefix and inverted conditions,
/// and Envoy's shorthand `prefix`.
#[test]
fn templates_and_header_conditions_select_rules() {
    let emu = emulator(&json!({"match_mode": "all", "rules": [
        {"name": "orders", "match": {"path": {"template": "/users/{id}/orders/*"},
                                     "headers": [{"name": "x-tenant", "prefix": "eu-"},
                                                 {"name": "x-beta", "exact": "1", "invert": true}]},
         "request": {"set": [{"name": "x-rule", "value": "orders"}]}},
        {"name": "api", "match": {"prefix": "/users/"}, "request": {"add": [{"name": "x-api", "value": "1"}]}}
    ]}));
    let rule = |path: &str, extra: &[(&str, &str)]| {
        let s = request(&emu, "GET", "h", path, extra);
        (s.request_header("x-rule"), s.request_header("x-api"))
    };
    let api = Some("1".to_string());
    assert_eq!(rule("/users/7/orders/9", &[("x-tenant", "eu-1")]), (Some("orders".into()), api.clone()));
    assert_eq!(
        rule("/users/7/orders/9", &[("x-tenant", "eu-1"), ("x-beta", "2")]).0.as_deref(),
        Some("orders")
    );
    assert_eq!(rule("/users/7/orders/9", &[("x-tenant", "eu-1"), ("x-beta", "1")]), (None, api.clone()));
    assert_eq!(rule("/users/7/orders/9", &[("x-tenant", "us-1")]), (None, api.clone()));
    assert_eq!(rule("/users/7/orders", &[("x-tenant", "eu-1")]), (None, api));
    assert_eq!(rule("/other", &[("x-tenant", "eu-1")]), (None, None));
}

/// A rule answers with a fixed response; Envoy runs the reply through the filter's response side
/// (the emulator as Envoy 1.40 does), so the rule's response operations apply to it.
#[test]
fn direct_responses_answer_with_their_status_headers_and_body() {
    let emu = emulator(&json!({"rules": [
        {"name": "teapot", "match": {"path": "/brew"},
         "direct_response": {"status": 418, "json": {"error": "teapot", "n": [1, 2]},
                             "headers": [{"name": "Cache-Control", "value": "no-store"}]},
         "response": {"set": [{"name": "x-served-by", "value": "gw %METHOD% %PATH%"}]}},
        {"name": "text", "match": {"path": "/hello"}, "direct_response": {"status": 200, "body": "hello\n"}},
        {"name": "empty", "match": {"path": "/empty"}, "direct_response": {"status": 503}}
    ]}));
    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/brew?x=1"), (":authority", "h"), (":scheme", "http")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let reply = s.local_reply().unwrap();
    assert_eq!((reply.status, reply.details.as_str()), (418, "header_rewrite_direct_response"));
    assert_eq!(reply.body, br#"{"error":"teapot","n":[1,2]}"#);
    assert_eq!(all(&reply.headers, "content-type"), ["application/json"]);
    assert_eq!(all(&reply.headers, "cache-control"), ["no-store"]);
    assert_eq!(all(&reply.headers, "x-served-by"), ["gw GET /brew"]);

    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/hello"), (":authority", "h")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let reply = s.local_reply().unwrap();
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello\n"[..]));
    assert_eq!(all(&reply.headers, "content-type"), ["text/plain"], "Envoy's type for a body without one");

    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/empty"), (":authority", "h")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let reply = s.local_reply().unwrap();
    assert_eq!((reply.status, reply.body.len()), (503, 0));
    assert!(all(&reply.headers, "content-type").is_empty());

    // Not matched: the request goes on.
    let s = request(&emu, "GET", "h", "/brewing", &[]);
    assert!(s.local_reply().is_none());
    emu.advance_clock(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("header_rewrite_rules_applied_total;rule=teapot"), Some(1));
}

#[test]
fn redirects_build_their_location_from_the_request() {
    let emu = emulator(&json!({"rules": [
        {"match": {"path": {"prefix": "/old/"}}, "redirect": {"prefix_rewrite": "/new/", "response_code": 308}},
        {"match": {"path": {"prefix": "/secure/"}}, "redirect": {"https_redirect": true}},
        {"match": {"path": {"prefix": "/port/"}}, "redirect": {"port_redirect": 8443, "strip_query": true}},
        {"match": {"path": {"prefix": "/moved"}}, "redirect": {"host_redirect": "[2001:db8::1]", "path_redirect": "/here?from=moved", "response_code": "SEE_OTHER"}},
        {"match": {"path": {"regex": "/u/[0-9]+"}}, "redirect": {"regex_rewrite": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/\\1"}, "response_code": 302},
         "query": {"remove": ["utm_source"], "add": [{"name": "via", "value": "old link"}]}}
    ]}));
    let location = |authority: &str, path: &str, proto: &str| {
        let mut s = emu.stream();
        let headers = [
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "http"),
            ("x-forwarded-proto", proto),
        ];
        assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause, "{path}");
        let reply = s.local_reply().unwrap();
        assert_eq!(reply.details, "header_rewrite_redirect");
        assert!(reply.body.is_empty());
        (reply.status, all(&reply.headers, "location").join(","))
    };
    let cases = [
        ("a.example.com", "/old/x?q=1", 308, "http://a.example.com/new/x?q=1"),
        ("a.example.com:80", "/secure/x?q", 301, "https://a.example.com/secure/x?q"),
        ("a.example.com:8080", "/secure/", 301, "https://a.example.com:8080/secure/"),
        ("[::1]:80", "/secure/", 301, "https://[::1]/secure/"),
        ("[::1]:9000", "/port/a?b=1", 301, "http://[::1]:8443/port/a"),
        ("a.example.com", "/moved?x=1", 303, "http://[2001:db8::1]/here?from=moved"),
        (
            "a.example.com",
            "/u/42?utm_source=mail&id=1",
            302,
            "http://a.example.com/users/42?id=1&via=old%20link",
        ),
    ];
    for (authority, path, status, want) in cases {
        assert_eq!(location(authority, path, "http"), (status, want.to_string()), "{authority} {path}");
    }
}

#[test]
fn query_operations_rewrite_the_query_once() {
    let emu = emulator(&json!({"match_mode": "all", "rules": [
        {"query": {"remove": ["utm_source", "utm_medium"], "set": [{"name": "api version", "value": "2&3"}]}},
        {"match": {"path": {"prefix": "/search"}},
         "query": {"keep": ["q", "page", "api version", "tag", "user"], "add": [{"name": "user", "value": "%REQ(x-user)%"}]}}
    ]}));
    let mut s = emu.stream();
    let headers = [
        (":method", "GET"),
        (
            ":path",
            "/search?q=caf%C3%A9+au+lait&utm_source=x&tag=a&debug=1&tag=b&page=2&api+version=1&utm_medium=y",
        ),
        (":authority", "h"),
        ("x-user", "Jörg & co"),
    ];
    s.request_headers(&headers, true).unwrap();
    assert_eq!(
        s.request_header(":path").as_deref(),
        Some("/search?q=caf%C3%A9+au+lait&tag=a&tag=b&page=2&api%20version=2%263&user=J%C3%B6rg%20%26%20co"),
        "order kept, repeated names kept, only written text encoded"
    );
    assert_eq!(s.request_header("x-envoy-original-path"), None, "the path itself did not change");
    assert_eq!(s.host_calls().get("proxy_replace_header_map_value"), Some(&1), "`:path` written once");

    // A request whose query the rules leave as it is: nothing written.
    let s = request(&emu, "GET", "h", "/other?api+version=2%263", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/other?api+version=2%263"));
    assert_eq!(s.host_calls().get("proxy_replace_header_map_value"), None);
}

#[test]
fn query_conditions_select_rules() {
    let emu = emulator(&json!({"rules": [
        {"match": {"query_params": [{"name": "debug", "exact": "1"}, {"name": "user id", "regex": "J.*"}]},
         "request": {"set": [{"name": "x-rule", "value": "debug"}]}},
        {"match": {"query_params": [{"name": "preview", "present": false}]},
         "request": {"set": [{"name": "x-rule", "value": "no-preview"}]}}
    ]}));
    let rule = |path: &str| request(&emu, "GET", "h", path, &[]).request_header("x-rule");
    assert_eq!(rule("/?debug=1&user+id=J%C3%B6rg").as_deref(), Some("debug"));
    assert_eq!(rule("/?debug=%31&user%20id=Jo").as_deref(), Some("debug"), "compared decoded");
    assert_eq!(rule("/?debug=1&user+id=jo").as_deref(), Some("no-preview"));
    assert_eq!(rule("/?preview"), None);
    assert_eq!(rule("/").as_deref(), Some("no-preview"));
}

#[test]
fn bad_answers_and_query_operations_fail_configure_with_every_field_named() {
    let config = json!({"rules": [
        {"redirect": {"response_code": 300, "host_redirect": "a.com:80"}, "request": {"remove": ["x-a"]}},
        {"direct_response": {"status": 99, "body": "x", "json": {}}},
        {"query": {"remove": [""], "set": [{"name": "a", "value": "%NOPE%"}]}, "match": {"query_params": [{"name": "", "exact": "1"}]}}
    ]});
    let line = refusal(&config);
    for needle in [
        "(8 errors)",
        "`rules[0].redirect.host_redirect` = \"a.com:80\": no port here",
        "`rules[0].redirect.response_code` = 300: a redirect answers 301, 302, 303, 307 or 308",
        "`rules[0].request`: the rule answers the request itself",
        "`rules[1].direct_response.status` = 99: a status from 200 to 599",
        "`rules[1].direct_response`: give at most one of `body`, `json`",
        "`rules[2].match.query_params[0].name` = \"\": a query parameter name is the decoded name",
        "`rules[2].query.remove[0]` = \"\": a query parameter name is the decoded name",
        "`rules[2].query.set[0].value` = \"%NOPE%\": unknown substitution",
    ] {
        assert!(line.message.contains(needle), "missing {needle:?} in {}", line.message);
    }
}

/// The README's example configuration, and what the README says it does.
#[test]
fn the_readme_example_does_what_the_readme_says() {
    let readme = include_str!("../README.md");
    let example = readme
        .split("## Example")
        .nth(1)
        .and_then(|rest| rest.split("```json").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the README's example block");
    let emu = emulator(&serde_json::from_str(example).expect("the example is JSON"));
    let mut s = request(
        &emu,
        "GET",
        "api.example.com",
        "/api/v1/items?limit=5",
        &[("x-env", "prod"), ("x-version", "v3"), ("x-internal-token", "t")],
    );
    assert_eq!(s.request_header(":path").as_deref(), Some("/v2/items?limit=5"));
    assert_eq!(s.request_header(":authority").as_deref(), Some("backend.internal"));
    assert_eq!(s.request_header("x-envoy-original-path").as_deref(), Some("/api/v1/items?limit=5"));
    assert_eq!(s.request_header("x-internal-token"), None);
    respond(&mut s, &[]);
    assert_eq!(s.response_header("x-served-for").as_deref(), Some("GET /api/v1/items"));
    assert_eq!(s.response_header("server"), None);

    let s = request(&emu, "GET", "h", "/users/42/profile?utm_source=mail&v=1", &[]);
    assert_eq!(s.request_header(":path").as_deref(), Some("/profiles/42?v=1&view=full"));

    let answer = |authority: &str, path: &str| {
        let mut s = emu.stream();
        let headers = [(":method", "GET"), (":path", path), (":authority", authority), (":scheme", "http")];
        assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause, "{path}");
        s.local_reply().unwrap()
    };
    let moved = answer("shop.example.com", "/docs/v1/intro?lang=en");
    assert_eq!(moved.status, 308);
    assert_eq!(all(&moved.headers, "location"), ["https://docs.example.com/docs/v2/intro?lang=en"]);
    let down = answer("shop.example.com", "/billing/invoices");
    assert_eq!(down.status, 503);
    assert_eq!(all(&down.headers, "retry-after"), ["600"]);
    assert_eq!(all(&down.headers, "content-type"), ["application/json"]);
    assert_eq!(down.body, br#"{"error":"maintenance","retry_after":600}"#);
    let s = request(&emu, "GET", "shop.example.com", "/billing/invoices?preview", &[]);
    assert!(s.local_reply().is_none());
}
