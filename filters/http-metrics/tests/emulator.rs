//! The built module in the emulator: which series a request lands in, the cap, escaping.
//! Build it first: cargo build --release --target wasm32-wasip1 -p http-metrics

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::Duration;

use gatewasm_emulator::{for_module, Action, Emulator, Group, LogLevel, MetricType};
use serde_json::{json, Value};

fn build(config: &Value, group: Option<&Group>) -> Emulator {
    let mut b = for_module("http-metrics", config.to_string())
        .unwrap_or_else(|e| panic!("{e}"))
        .log_level(LogLevel::Info);
    if let Some(g) = group {
        b = b.group(g);
    }
    let emu = b.build().unwrap();
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

fn emulator(config: &Value) -> Emulator {
    build(config, None)
}

/// One finished request: what the client sent, what came back, how long it took.
struct Req<'a> {
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
    status: &'a str,
    response_body: &'a [u8],
    duration_ms: u64,
    cluster: Option<&'a str>,
}

fn get<'a>(authority: &'a str, path: &'a str) -> Req<'a> {
    Req {
        method: "GET",
        authority,
        path,
        headers: vec![],
        body: b"",
        status: "200",
        response_body: b"",
        duration_ms: 7,
        cluster: None,
    }
}

fn send(emu: &Emulator, r: &Req) {
    let mut s = emu.stream();
    let mut headers =
        vec![(":method", r.method), (":path", r.path), (":authority", r.authority), (":scheme", "http")];
    headers.extend_from_slice(&r.headers);
    assert_eq!(s.request_headers(&headers, r.body.is_empty()).unwrap(), Action::Continue);
    if !r.body.is_empty() {
        // In two chunks, as a client may send it.
        let (a, b) = r.body.split_at(r.body.len() / 2);
        assert_eq!(s.request_body(a, false).unwrap(), Action::Continue);
        assert_eq!(s.request_body(b, true).unwrap(), Action::Continue);
    }
    assert_eq!(
        s.response_headers(&[(":status", r.status)], r.response_body.is_empty()).unwrap(),
        Action::Continue
    );
    if !r.response_body.is_empty() {
        assert_eq!(s.response_body(r.response_body, true).unwrap(), Action::Continue);
    }
    // Envoy's values at access-log time, which the emulator does not compute.
    s.set_property("request.duration", (r.duration_ms * 1_000_000 + 123_456).to_le_bytes());
    if let Some(c) = r.cluster {
        s.set_property("xds.cluster_name", c);
    }
    s.log().unwrap();
}

/// Counters after the flush tick, by name, for names starting with `prefix`.
fn counters(emu: &Emulator, prefix: &str) -> BTreeMap<String, u64> {
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    emu.metrics()
        .into_iter()
        .filter(|m| m.kind == MetricType::Counter && m.name.starts_with(prefix))
        .map(|m| (m.name, m.value))
        .collect()
}

fn recorded(emu: &Emulator, name: &str) -> Vec<u64> {
    emu.metrics().into_iter().find(|m| m.name == name).map(|m| m.recorded).unwrap_or_default()
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[test]
fn hosts_routes_and_normalised_paths() {
    let emu = emulator(&json!({
        "hosts": ["api.example.com", "*.shop.example.com"],
        "routes": [
            {"template": "/users/{id}/orders/{order}"},
            {"prefix": "/static/"},
            {"regex": "/v[0-9]+/health", "label": "/vN/health"}
        ]
    }));
    send(&emu, &get("API.Example.com:8443", "/users/42/orders/a7?expand=1"));
    send(&emu, &get("api.example.com", "/users/43/orders/b8"));
    send(&emu, &get("eu.shop.example.com", "/static/app.js?v=3"));
    send(&emu, &get("us.shop.example.com", "/v2/health"));
    send(&emu, &get("api.example.com", "/items/123e4567-e89b-12d3-a456-426614174000/reviews/9?page=2"));
    send(&emu, &get("attacker.test", "/a/b/c/d/e/f"));
    send(&emu, &Req { method: "PROPFIND", ..get("api.example.com", "/") });
    send(&emu, &Req { method: "POST", status: "201", ..get("api.example.com", "/users/1/orders/2") });
    let p = "gatewasm_http_requests_total";
    assert_eq!(
        counters(&emu, p),
        expected(&[
            (&format!("{p};host=api.example.com;path=/users/{{id}}/orders/{{order}};method=GET;code=200"), 2),
            (
                &format!("{p};host=api.example.com;path=/users/{{id}}/orders/{{order}};method=POST;code=201"),
                1
            ),
            (&format!("{p};host=*.shop.example.com;path=/static/*;method=GET;code=200"), 1),
            (&format!("{p};host=*.shop.example.com;path=/vN/health;method=GET;code=200"), 1),
            (&format!("{p};host=api.example.com;path=/items/{{id}}/reviews/*;method=GET;code=200"), 1),
            (&format!("{p};host=other;path=/a/b/c/*;method=GET;code=200"), 1),
            (&format!("{p};host=api.example.com;path=/;method=other;code=200"), 1),
        ])
    );
    assert_eq!(emu.gauge("gatewasm_http_series"), Some(7));
    let vm = emu.gauge("gatewasm_http_vm_memory_bytes").unwrap();
    assert!(vm >= 65536, "the VM's linear memory, {vm}");
}

#[test]
fn histograms_record_duration_and_body_bytes() {
    let emu = emulator(&json!({"hosts": ["api.example.com"]}));
    let r = Req {
        method: "PUT",
        body: b"0123456789",
        response_body: b"hello world!",
        duration_ms: 42,
        ..get("api.example.com", "/files/x")
    };
    send(&emu, &r);
    send(&emu, &Req { duration_ms: 0, ..r });
    let labels = ";host=api.example.com;path=/files/x;method=PUT;code=200";
    assert_eq!(recorded(&emu, &format!("gatewasm_http_request_duration_ms{labels}")), [42, 0]);
    assert_eq!(recorded(&emu, &format!("gatewasm_http_request_bytes{labels}")), [10, 10]);
    assert_eq!(recorded(&emu, &format!("gatewasm_http_response_bytes{labels}")), [12, 12]);
    assert_eq!(counters(&emu, "gatewasm_http_requests_total").values().sum::<u64>(), 2);
}

#[test]
fn status_class_cluster_and_header_labels() {
    let emu = emulator(&json!({
        "metric_prefix": "edge",
        "hosts": ["api.example.com"],
        "unmatched_paths": "fixed",
        "routes": [{"prefix": "/api/", "label": "/api"}],
        "status": "class",
        "upstream_cluster": true,
        "request_header": {"name": "X-Tenant", "label": "tenant", "values": ["gold", "silver"]}
    }));
    let base = || get("api.example.com", "/api/x");
    send(
        &emu,
        &Req { headers: vec![("x-tenant", "gold")], cluster: Some("outbound|80||shop.svc"), ..base() },
    );
    send(
        &emu,
        &Req {
            headers: vec![("x-tenant", "gold")],
            cluster: Some("outbound|80||shop.svc"),
            status: "204",
            ..base()
        },
    );
    send(&emu, &Req { headers: vec![("x-tenant", "bronze")], status: "503", ..base() });
    send(&emu, &Req { path: "/elsewhere/1", ..base() });
    let p = "edge_requests_total;host=api.example.com";
    assert_eq!(
        counters(&emu, "edge_requests_total"),
        expected(&[
            (
                &format!("{p};path=/api;method=GET;cluster=outbound%7C80%7C%7Cshop.svc;tenant=gold;code=2xx"),
                2
            ),
            (&format!("{p};path=/api;method=GET;cluster=none;tenant=other;code=5xx"), 1),
            (&format!("{p};path=other;method=GET;cluster=none;tenant=none;code=2xx"), 1),
        ])
    );
}

#[test]
fn free_header_values_are_escaped_and_cannot_pose_as_fixed_values() {
    let emu = emulator(&json!({"request_header": {"name": "x-client"}, "histograms": []}));
    for v in ["web", "other", "none", "a;code=999", "x\"y"] {
        send(&emu, &Req { headers: vec![("x-client", v)], ..get("h", "/") });
    }
    send(&emu, &get("h", "/"));
    let p = "gatewasm_http_requests_total;host=other;path=/;method=GET";
    assert_eq!(
        counters(&emu, "gatewasm_http_requests_total"),
        expected(&[
            (&format!("{p};x_client=web;code=200"), 1),
            (&format!("{p};x_client=%6Fther;code=200"), 1),
            (&format!("{p};x_client=%6Eone;code=200"), 1),
            (&format!("{p};x_client=a%3Bcode%3D999;code=200"), 1),
            (&format!("{p};x_client=x%22y;code=200"), 1),
            (&format!("{p};x_client=none;code=200"), 1),
        ])
    );
}

#[test]
fn hostile_paths_never_break_the_stat_name() {
    let emu = emulator(&json!({"histograms": []}));
    let paths = [
        "/x;host=evil",
        "/a=b",
        "/users/{id}",
        "/star/*",
        "/caf\u{e9}",
        "/sp%20ace",
        "/q\"uote\\",
        "/cluster.upstream.x_rq_200",
        "*",
    ];
    for p in paths {
        send(&emu, &get("h", p));
    }
    let names = counters(&emu, "gatewasm_http_requests_total");
    assert_eq!(names.len(), paths.len(), "{names:#?}");
    for name in names.keys() {
        let parts: Vec<&str> = name.split(';').collect();
        assert_eq!(parts.len(), 5, "{name}");
        for (part, label) in parts[1..].iter().zip(["host", "path", "method", "code"]) {
            let (l, v) = part.split_once('=').unwrap();
            assert_eq!(l, label);
            assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/{}*~+@-%".contains(&b)), "{name}");
        }
    }
    let path_of = |p: &str| names.keys().any(|n| n.contains(&format!(";path={p};")));
    assert!(path_of("/x%3Bhost%3Devil"));
    assert!(path_of("/users/%7Bid%7D"), "a client's `{{id}}` is not the filter's marker");
    assert!(path_of("/star/%2A"));
    assert!(path_of("/sp%2520ace"));
    assert!(path_of("other"), "`*` is not an origin-form path");
}

#[test]
fn the_cap_sends_new_label_sets_to_overflow() {
    let emu = emulator(&json!({"max_series": 3}));
    for i in 0..10 {
        send(&emu, &get("h", &format!("/page-{i}")));
    }
    send(&emu, &get("h", "/page-0"));
    let p = "gatewasm_http_requests_total";
    assert_eq!(
        counters(&emu, p),
        expected(&[
            (&format!("{p};host=other;path=/page-0;method=GET;code=200"), 2),
            (&format!("{p};host=other;path=/page-1;method=GET;code=200"), 1),
            (&format!("{p};host=other;path=/page-2;method=GET;code=200"), 1),
            (&format!("{p};host=overflow;path=overflow;method=overflow;code=overflow"), 7),
        ])
    );
    assert_eq!(emu.metric("gatewasm_http_series_overflow_total"), Some(7));
    assert_eq!(emu.gauge("gatewasm_http_series"), Some(3));
    let overflow =
        "gatewasm_http_request_duration_ms;host=overflow;path=overflow;method=overflow;code=overflow";
    assert_eq!(recorded(&emu, overflow).len(), 7, "overflow requests still have their latency recorded");
}

#[test]
fn the_cap_is_shared_by_every_worker() {
    let group = Group::new();
    let config = json!({"max_series": 4, "histograms": []});
    let vm1 = build(&config, Some(&group));
    let vm2 = build(&config, Some(&group));
    for i in 0..4 {
        send(&vm1, &get("h", &format!("/w1-{i}")));
        send(&vm2, &get("h", &format!("/w2-{i}")));
    }
    // Both VMs write the same stats in Envoy: count the distinct names either defined.
    let mut names: Vec<String> = [&vm1, &vm2]
        .iter()
        .flat_map(|vm| counters(vm, "gatewasm_http_requests_total;").into_keys())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 5, "four label sets and overflow, not eight: {names:#?}");
    let overflowed = vm1.metric("gatewasm_http_series_overflow_total").unwrap_or(0)
        + vm2.metric("gatewasm_http_series_overflow_total").unwrap_or(0);
    assert_eq!(overflowed, 4);
}

#[test]
fn bad_config_is_refused_with_every_field_named() {
    let config = json!({
        "hosts": ["a.example.com:80"],
        "routes": [{"regex": "("}],
        "max_series": 0,
        "colour": "blue"
    });
    let emu = for_module("http-metrics", config.to_string())
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.configured());
    let logs: Vec<String> = emu.logs().into_iter().map(|l| l.message).collect();
    let logs = logs.join("\n");
    for needle in [
        "`colour`: unknown field",
        "`hosts[0]` = \"a.example.com:80\"",
        "`routes[0].label`",
        "`max_series` = 0",
    ] {
        assert!(logs.contains(needle), "missing {needle} in {logs}");
    }
}

/// The VM's memory with the default cap full and 3,000 distinct paths seen: the registry keeps
/// at most `max_series` label sets, so memory stops growing at the cap.
#[test]
fn memory_is_bounded_by_the_cap() {
    let emu = emulator(&json!({"histograms": []}));
    send(&emu, &get("h", "/warm-up"));
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let fresh = emu.gauge("gatewasm_http_vm_memory_bytes").unwrap();
    for i in 0..1_000 {
        send(&emu, &get("h", &format!("/a-long-enough-page-name-{i}/and-a-second-segment")));
    }
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let at_cap = emu.gauge("gatewasm_http_vm_memory_bytes").unwrap();
    for i in 1_000..3_000 {
        send(&emu, &get("h", &format!("/a-long-enough-page-name-{i}/and-a-second-segment")));
    }
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let after = emu.gauge("gatewasm_http_vm_memory_bytes").unwrap();
    eprintln!("VM linear memory: {fresh} bytes after one request, {at_cap} at the cap (1,000 label sets), {after} after 2,000 more distinct paths");
    assert_eq!(emu.gauge("gatewasm_http_series"), Some(1000));
    assert_eq!(after, at_cap, "nothing more is kept beyond the cap");
    assert!(at_cap < 4 * 1024 * 1024, "{at_cap}");
}
