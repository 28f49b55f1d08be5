//! The built module in the emulator: the check request the auth service gets, and what the
//! upstream and the client see for each kind of answer.
//! Build it first: cargo build --release --target wasm32-wasip1 -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

mod emu;

use emu::{emulator, emulator_holding_headers};
use gatewasm_emulator::{for_module, Action, Emulator, HttpCall, Stream};
use serde_json::{json, Value};

fn seed_config() -> Value {
    json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "timeout_ms": 500,
        "allowed_request_headers": ["x-qotm-session"],
        "allowed_upstream_headers": ["x-qotm-session", "x-admin-id", "x-admin-email"],
        "rules": [{"name": "health", "match": {"path": {"exact": "/healthz"}}, "action": "skip"}]
    })
}

/// A GET (no body) with `extra` headers; the filter must pause for its check.
fn get(emu: &Emulator, path: &str, extra: &[(&str, &str)]) -> (Stream, HttpCall) {
    let mut s = emu.stream();
    let mut headers =
        vec![(":method", "GET"), (":path", path), (":authority", "shop.example.com"), (":scheme", "http")];
    headers.extend_from_slice(extra);
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Pause);
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1, "one check per request");
    (s, calls[0].clone())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn check_request_has_method_prefixed_path_and_only_allowed_headers() {
    let emu = emulator(&seed_config());
    let (_s, call) = get(
        &emu,
        "/extauth/nodebackend/?a=1",
        &[
            ("authorization", "Bearer tok"),
            ("cookie", "id_token=tok"),
            ("user-agent", "curl/8"),
            ("x-qotm-session", "s1"),
            ("x-request-id", "r1"),
            ("x-secret", "s"),
        ],
    );
    assert_eq!(call.cluster, "auth");
    assert_eq!(call.timeout, Some(Duration::from_millis(500)));
    assert!(call.body.is_empty());
    let h = &call.headers;
    assert_eq!(header(h, ":method"), Some("GET"));
    assert_eq!(header(h, ":path"), Some("/extauth/extauth/nodebackend/?a=1"));
    assert_eq!(header(h, ":authority"), Some("shop.example.com"));
    assert_eq!(header(h, "content-length"), Some("0"));
    assert_eq!(header(h, "authorization"), Some("Bearer tok"));
    assert_eq!(header(h, "cookie"), Some("id_token=tok"));
    assert_eq!(header(h, "user-agent"), Some("curl/8"));
    assert_eq!(header(h, "x-qotm-session"), Some("s1"));
    assert_eq!(header(h, "x-request-id"), None);
    assert_eq!(header(h, "x-secret"), None);
}

#[test]
fn allow_copies_identity_headers_and_strips_the_clients_copies() {
    let emu = emulator(&seed_config());
    let (s, call) = get(
        &emu,
        "/extauth/nodebackend/",
        &[
            ("authorization", "Bearer tok"),
            ("x-admin-id", "999"),
            ("x-admin-email", "evil@x"),
            ("x-qotm-session", "s1"),
        ],
    );
    // The spoofed copies are gone before the answer comes.
    assert_eq!(s.request_header("x-admin-id"), None);
    assert_eq!(s.request_header("x-admin-email"), None);
    emu.respond_http_call(
        call.token,
        &[(":status", "200"), ("x-admin-id", "1"), ("x-admin-email", "admin@qq.com"), ("x-other", "no")],
        b"",
        &[],
    )
    .unwrap();
    assert!(!s.request_paused());
    let up = s.request_headers_now();
    assert_eq!(all(&up, "x-admin-id"), ["1"]);
    assert_eq!(all(&up, "x-admin-email"), ["admin@qq.com"]);
    assert_eq!(
        all(&up, "x-qotm-session"),
        Vec::<&str>::new(),
        "not in the answer: the client's copy is not kept"
    );
    assert_eq!(header(&up, "x-other"), None);
    assert_eq!(header(&up, "authorization"), Some("Bearer tok"));
    assert!(s.local_reply().is_none());
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_checks_total;result=allowed"), Some(1));
}

/// Outcomes are counted in the VM and reach the host's counters from the 1 s tick, never per
/// request; the latency histogram exists only when `duration_histogram` asks for it.
#[test]
fn counters_reach_the_host_from_the_tick_and_the_histogram_is_opt_in() {
    const ALLOWED: &str = "ext_auth_checks_total;result=allowed";
    const DENIED: &str = "ext_auth_checks_total;result=denied";
    for histogram in [false, true] {
        let mut config = seed_config();
        config["duration_histogram"] = json!(histogram);
        let emu = emulator(&config);
        for status in ["200", "200", "200", "401"] {
            let (_s, call) = get(&emu, "/nodebackend/", &[]);
            emu.advance_clock(Duration::from_millis(3)).unwrap();
            emu.respond_http_call(call.token, &[(":status", status)], b"", &[]).unwrap();
        }
        // Defined at configuration, still zero: nothing was sent to the host per request.
        assert_eq!(emu.metric(ALLOWED), Some(0));
        assert_eq!(emu.metric(DENIED), Some(0));
        emu.advance_clock(Duration::from_millis(1100)).unwrap();
        assert_eq!(emu.metric(ALLOWED), Some(3), "histogram {histogram}");
        assert_eq!(emu.metric(DENIED), Some(1));
        // A tick with nothing new adds nothing.
        emu.advance_clock(Duration::from_secs(1)).unwrap();
        assert_eq!(emu.metric(ALLOWED), Some(3));
        let durations = emu.metrics().into_iter().find(|m| m.name == "ext_auth_check_duration_us");
        if histogram {
            let recorded = durations.expect("histogram defined").recorded;
            assert_eq!(recorded, [3000, 3000, 3000, 3000], "microseconds from dispatch to answer");
        } else {
            assert!(durations.is_none(), "no histogram unless asked for");
        }
    }
}

#[test]
fn a_login_answered_201_reaches_the_client_unchanged() {
    let emu = emulator(&seed_config());
    let (s, call) = get(&emu, "/extauth/login", &[("authorization", "Basic YWRtaW5AcXEuY29tOjEyMw==")]);
    let body = br#"{"admin":{"name":"Admin","email":"admin@qq.com","id":1},"id_token":"tok"}"#;
    emu.respond_http_call(
        call.token,
        &[
            (":status", "201"),
            ("content-type", "application/json; charset=utf-8"),
            ("set-cookie", "id_token=tok; Max-Age=86400; Path=/; HttpOnly"),
            ("x-powered-by", "Express"),
        ],
        body,
        &[],
    )
    .unwrap();
    let reply = s.local_reply().expect("the answer goes to the client");
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, body);
    assert_eq!(reply.details, "ext_auth_denied");
    assert_eq!(header(&reply.headers, "set-cookie"), Some("id_token=tok; Max-Age=86400; Path=/; HttpOnly"));
    assert_eq!(all(&reply.headers, "content-type"), ["application/json; charset=utf-8"]);
    assert_eq!(header(&reply.headers, "x-powered-by"), None);
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_checks_total;result=denied"), Some(1));
}

#[test]
fn allowed_statuses_and_client_headers_on_success() {
    let mut config = seed_config();
    config["allowed_statuses"] = json!([200, 202]);
    config["allowed_client_headers_on_success"] = json!(["set-cookie"]);
    let emu = emulator(&config);
    let (mut s, call) = get(&emu, "/oauth2/x", &[]);
    emu.respond_http_call(call.token, &[(":status", "202"), ("set-cookie", "_oauth2_proxy=1")], b"", &[])
        .unwrap();
    assert!(!s.request_paused());
    assert_eq!(
        s.response_headers(&[(":status", "200"), ("set-cookie", "app=1")], true).unwrap(),
        Action::Continue
    );
    assert_eq!(all(&s.response_headers_now(), "set-cookie"), ["app=1", "_oauth2_proxy=1"]);
}

#[test]
fn failures_refuse_with_status_on_error() {
    let mut config = seed_config();
    config["status_on_error"] = json!(503);
    let emu = emulator(&config);
    // Timeout: Envoy answers the callout with a 504 at the deadline.
    let (s, _) = get(&emu, "/a", &[]);
    emu.advance_clock(Duration::from_millis(600)).unwrap();
    let reply = s.local_reply().expect("refused");
    assert_eq!((reply.status, reply.details.as_str()), (503, "ext_auth_auth_timeout"));
    // A reset.
    let (s, call) = get(&emu, "/a", &[]);
    emu.fail_http_call(call.token).unwrap();
    assert_eq!(s.local_reply().unwrap().details, "ext_auth_auth_error");
    // 5xx from the auth service (or Envoy's 503 for a refused connection).
    let (s, call) = get(&emu, "/a", &[]);
    emu.respond_http_call(call.token, &[(":status", "500")], b"boom", &[]).unwrap();
    let reply = s.local_reply().unwrap();
    assert_eq!(reply.status, 503);
    assert!(!String::from_utf8_lossy(&reply.body).contains("boom"), "the auth service's error is not shown");
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_checks_total;result=timeout"), Some(1));
    assert_eq!(emu.metric("ext_auth_checks_total;result=error"), Some(2));
}

#[test]
fn failure_mode_allow_lets_through_marked() {
    let mut config = seed_config();
    config["failure_mode_allow"] = json!(true);
    let emu = emulator(&config);
    let (s, call) = get(&emu, "/a", &[("x-envoy-auth-failure-mode-allowed", "false"), ("x-admin-id", "7")]);
    emu.respond_http_call(call.token, &[(":status", "503")], b"", &[]).unwrap();
    assert!(!s.request_paused());
    assert!(s.local_reply().is_none());
    let up = s.request_headers_now();
    assert_eq!(all(&up, "x-envoy-auth-failure-mode-allowed"), ["true"]);
    assert_eq!(header(&up, "x-admin-id"), None, "no identity without a check");
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_failure_mode_allowed_total"), Some(1));
    // Without the marker.
    let mut config = seed_config();
    config["failure_mode_allow"] = json!(true);
    config["failure_mode_allow_header_add"] = json!(false);
    let emu = emulator(&config);
    let (s, _) = get(&emu, "/a", &[]);
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert!(!s.request_paused());
    assert_eq!(s.request_header("x-envoy-auth-failure-mode-allowed"), None);
}

#[test]
fn skipped_requests_are_not_checked_but_still_stripped() {
    let emu = emulator(&seed_config());
    let mut s = emu.stream();
    let a = s
        .request_headers(
            &[(":method", "GET"), (":path", "/healthz"), (":authority", "h"), ("x-admin-id", "1")],
            true,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    assert!(emu.http_calls().is_empty());
    assert_eq!(s.request_header("x-admin-id"), None);
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_skipped_total"), Some(1));
}

#[test]
fn unknown_cluster_fails_closed_at_once() {
    let emu = emulator(&json!({"cluster": "nowhere"}));
    let mut s = emu.stream();
    s.request_headers(&[(":method", "GET"), (":path", "/"), (":authority", "h")], true).unwrap();
    assert_eq!(s.local_reply().unwrap().status, 403);
}

#[test]
fn bad_config_is_refused_with_fields() {
    let emu = for_module("ext-auth", json!({"timeout_ms": 0, "allowed_statuses": [500]}).to_string())
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!emu.configured());
    let logs = format!("{:?}", emu.logs());
    for field in ["`cluster`", "`timeout_ms`", "`allowed_statuses[0]`"] {
        assert!(logs.contains(field), "{field} not named in {logs}");
    }
}

#[test]
fn a_body_that_never_arrives_is_explained_in_the_log() {
    // The emulator holds data while a filter holds the headers, as Envoy does without
    // `allow_on_headers_stop_iteration`: the body never reaches the filter.
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 100});
    let emu = emulator(&config);
    let mut s = emu.stream();
    let headers = [(":method", "POST"), (":path", "/upload"), (":authority", "h")];
    assert_eq!(s.request_headers(&headers, false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"allow", true).unwrap(), Action::Pause);
    assert!(emu.http_calls().is_empty());
    emu.advance_clock(Duration::from_secs(5)).unwrap();
    assert!(!emu.logged("allow_on_headers_stop_iteration"));
    emu.advance_clock(Duration::from_secs(6)).unwrap();
    assert!(emu.logged("allow_on_headers_stop_iteration"), "{:?}", emu.logs());
}

#[test]
fn a_long_denial_body_is_cut_at_the_bound() {
    let mut config = seed_config();
    config["max_denied_body_bytes"] = json!(10);
    let emu = emulator(&config);
    let (s, call) = get(&emu, "/a", &[]);
    emu.respond_http_call(
        call.token,
        &[(":status", "401"), ("content-type", "text/plain")],
        &[b'x'; 30],
        &[],
    )
    .unwrap();
    let reply = s.local_reply().unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, b"xxxxxxxxxx");
}

#[test]
fn headers_to_remove_from_an_allowing_answer() {
    let emu = emulator(&seed_config());
    let (s, call) = get(&emu, "/a", &[("authorization", "Bearer tok"), ("x-internal", "1")]);
    emu.respond_http_call(
        call.token,
        &[(":status", "200"), ("x-envoy-auth-headers-to-remove", "authorization, X-Internal, :path")],
        b"",
        &[],
    )
    .unwrap();
    let up = s.request_headers_now();
    assert_eq!(header(&up, "authorization"), None);
    assert_eq!(header(&up, "x-internal"), None);
    assert_eq!(header(&up, ":path"), Some("/a"));
}

fn post(emu: &Emulator, path: &str) -> Stream {
    let mut s = emu.stream();
    let headers = [(":method", "POST"), (":path", path), (":authority", "h"), ("x-admin-id", "9")];
    assert_eq!(s.request_headers(&headers, false).unwrap(), Action::Pause);
    s
}

#[test]
fn with_request_body_the_body_is_buffered_then_sent() {
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 32});
    let emu = emulator_holding_headers(&config);
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_header("x-admin-id"), None, "stripped at once");
    assert_eq!(s.request_body(b"please ", false).unwrap(), Action::Pause);
    assert!(emu.http_calls().is_empty(), "waits for the end of the body");
    assert_eq!(s.request_body(b"allow me", true).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().unwrap();
    assert_eq!(call.body, b"please allow me");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("false"));
    assert_eq!(header(&call.headers, ":method"), Some("POST"));
    emu.respond_http_call(call.token, &[(":status", "200"), ("x-admin-id", "1")], b"", &[]).unwrap();
    assert!(!s.request_paused());
    assert_eq!(s.request_body_now(), b"please allow me");
    assert_eq!(all(&s.request_headers_now(), "x-admin-id"), ["1"]);
}

#[test]
fn with_request_body_too_large_or_partial() {
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 8});
    let emu = emulator_holding_headers(&config);
    let mut s = post(&emu, "/upload");
    s.request_body(b"0123456789", false).unwrap();
    let reply = s.local_reply().expect("413");
    assert_eq!((reply.status, reply.details.as_str()), (413, "ext_auth_body_too_large"));
    assert!(emu.http_calls().is_empty());

    config["with_request_body"] = json!({"max_bytes": 8, "allow_partial": true});
    let emu = emulator_holding_headers(&config);
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_body(b"0123456789", false).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("sent once max_bytes arrived");
    assert_eq!(call.body, b"01234567");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("true"));
    // More body while the check is out is held too, then everything goes on.
    assert_eq!(s.request_body(b"abc", true).unwrap(), Action::Pause);
    emu.respond_http_call(call.token, &[(":status", "200")], b"", &[]).unwrap();
    assert!(!s.request_paused());
    assert_eq!(s.request_body_now(), b"0123456789abc");
}

#[test]
fn with_request_body_trailers_end_the_body() {
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 32});
    let emu = emulator_holding_headers(&config);
    let mut s = post(&emu, "/upload");
    s.request_body(b"grpc-ish", false).unwrap();
    assert_eq!(s.request_trailers(&[("x-checksum", "1")]).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("sent at the trailers");
    assert_eq!(call.body, b"grpc-ish");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("false"));
    emu.respond_http_call(call.token, &[(":status", "403")], b"no", &[]).unwrap();
    assert_eq!(s.local_reply().unwrap().status, 403);
}

#[test]
fn a_host_no_rule_can_read_is_refused_not_skipped() {
    // Only api.example.com is checked; everything else is skipped by default.
    let mut config = seed_config();
    config["rules"] = json!([{"name": "api", "match": {"hosts": ["api.example.com"]}, "action": "check"}]);
    config["default"] = json!("skip");
    let emu = emulator(&config);
    let ask = |authority: &str| {
        let mut s = emu.stream();
        let headers = [(":method", "GET"), (":path", "/x"), (":authority", authority), (":scheme", "http")];
        let action = s.request_headers(&headers, true).unwrap();
        (s, action)
    };
    let unreadable = [
        "api.example.com:abc",
        "api.example.com..",
        "a.example.com:443:443",
        "user@api.example.com",
        "api%2eexample.com",
    ];
    for host in unreadable {
        let (s, action) = ask(host);
        assert_eq!(action, Action::Pause, "{host}");
        let reply = s.local_reply().unwrap();
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!((reply.status, body["code"].as_str()), (400, Some("invalid_host")), "{host}");
    }
    assert!(emu.http_calls().is_empty(), "refused before any check");
    // Every spelling of the checked host is checked.
    for host in ["api.example.com", "API.example.com.", "api.example.com:8443"] {
        assert_eq!(ask(host).1, Action::Pause, "{host}");
    }
    assert_eq!(emu.http_calls().len(), 3);
    assert_eq!(ask("www.example.com").1, Action::Continue);
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_invalid_host_total"), Some(unreadable.len() as u64));
}

/// The upstream's values of `name`, as bytes.
fn all_bytes(headers: &[(String, Vec<u8>)], name: &str) -> Vec<Vec<u8>> {
    headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
}

/// An identity that is not UTF-8 reaches the upstream byte for byte: one that differs from
/// another only there stays different (read as text, both would be U+FFFD).
#[test]
fn identity_bytes_reach_the_upstream_unchanged() {
    let emu = emulator(&seed_config());
    for email in [&b"adm\xffin@qq.com"[..], &b"adm\xfein@qq.com"[..], "adm\u{fffd}in@qq.com".as_bytes()] {
        let (s, call) = get(&emu, "/a", &[("x-admin-email", "evil@x")]);
        emu.respond_http_call_bytes(
            call.token,
            &[(":status", b"200"), ("x-admin-email", email), ("x-admin-id", b"\x80\x81")],
            b"",
        )
        .unwrap();
        assert!(!s.request_paused());
        assert!(s.local_reply().is_none());
        let up = s.request_headers_now_bytes();
        assert_eq!(all_bytes(&up, "x-admin-email"), [email.to_vec()]);
        assert_eq!(all_bytes(&up, "x-admin-id"), [b"\x80\x81".to_vec()]);
    }
}

/// Envoy's `ext_authz` sets each allowed header of the answer in turn: the upstream gets one
/// line, with the last value, so an upstream reading the first line sees Envoy's identity.
#[test]
fn a_repeated_identity_header_reaches_the_upstream_once_with_its_last_value() {
    let emu = emulator(&seed_config());
    let (s, call) = get(&emu, "/a", &[("x-admin-id", "999")]);
    emu.respond_http_call(
        call.token,
        &[(":status", "200"), ("x-admin-id", "1"), ("x-admin-email", "a@qq.com"), ("x-admin-id", "2")],
        b"",
        &[],
    )
    .unwrap();
    let up = s.request_headers_now();
    assert_eq!(all(&up, "x-admin-id"), ["2"]);
    assert_eq!(all(&up, "x-admin-email"), ["a@qq.com"]);
}

/// A denial whose header for the client is not UTF-8 cannot be passed on unaltered (a local
/// reply carries text): refused as an auth error instead.
#[test]
fn a_denial_that_cannot_reach_the_client_unaltered_is_an_auth_error() {
    let emu = emulator(&seed_config());
    let (s, call) = get(&emu, "/login", &[]);
    emu.respond_http_call_bytes(call.token, &[(":status", b"201"), ("set-cookie", b"id_token=\xff")], b"{}")
        .unwrap();
    let reply = s.local_reply().expect("refused");
    assert_eq!((reply.status, reply.details.as_str()), (403, "ext_auth_auth_error"));
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_checks_total;result=error"), Some(1));
}

/// With `default_request_headers: false` only the listed headers go to the auth service, as a
/// native `allowed_headers` list sends them; names match whatever their case.
#[test]
fn default_request_headers_switched_off_sends_only_the_list() {
    let config = json!({
        "cluster": "auth",
        "default_request_headers": false,
        "allowed_request_headers": ["Authorization", "X-Tenant", "x-auth-*"]
    });
    let emu = emulator(&config);
    let (_s, call) = get(
        &emu,
        "/a",
        &[
            ("authorization", "Bearer t"),
            ("cookie", "sid=1"),
            ("user-agent", "curl"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-tenant", "t1"),
            ("x-auth-user", "u"),
            ("x-other", "o"),
        ],
    );
    let names: Vec<&str> =
        call.headers.iter().map(|(n, _)| n.as_str()).filter(|n| !n.starts_with(':')).collect();
    assert_eq!(names, ["authorization", "x-tenant", "x-auth-user", "content-length"]);
}

/// A body of exactly `max_bytes` is whole when nothing follows it (`false`, as Envoy says),
/// however its end arrives; partial when more follows.
#[test]
fn a_body_of_exactly_max_bytes_is_not_partial() {
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 8, "allow_partial": true});
    let emu = emulator_holding_headers(&config);

    // The end of the stream arrives on its own, after exactly max_bytes.
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_body(b"01234567", false).unwrap(), Action::Pause);
    assert!(emu.http_calls().is_empty(), "exactly max_bytes: the next piece tells whether it is cut");
    assert_eq!(s.request_body(b"", true).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("sent at the end");
    assert_eq!(call.body, b"01234567");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("false"));
    emu.respond_http_call(call.token, &[(":status", "200")], b"", &[]).unwrap();
    assert_eq!(s.request_body_now(), b"01234567");

    // With the end in the same piece.
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_body(b"01234567", true).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("sent at the end");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("false"));
    emu.respond_http_call(call.token, &[(":status", "200")], b"", &[]).unwrap();

    // More after exactly max_bytes: cut, and said so.
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_body(b"01234567", false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"8", false).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("sent once more than max_bytes arrived");
    assert_eq!(call.body, b"01234567");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("true"));
    assert_eq!(s.request_body(b"9", true).unwrap(), Action::Pause);
    emu.respond_http_call(call.token, &[(":status", "200")], b"", &[]).unwrap();
    assert_eq!(s.request_body_now(), b"0123456789");

    // Without allow_partial, exactly max_bytes is no reason for a 413.
    config["with_request_body"] = json!({"max_bytes": 8});
    let emu = emulator_holding_headers(&config);
    let mut s = post(&emu, "/upload");
    assert_eq!(s.request_body(b"01234567", false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"", true).unwrap(), Action::Pause);
    assert!(s.local_reply().is_none());
    let call = emu.http_calls().pop().expect("sent at the end");
    assert_eq!(header(&call.headers, "x-envoy-auth-partial-body"), Some("false"));
}

/// When the answer's identities take the request over the header limits, the request is refused
/// with 500 before anything is set (native `ext_authz` answers 500 there); an answer that sets
/// nothing is not measured.
#[test]
fn identities_over_the_header_limits_are_refused_with_500() {
    let mut config = seed_config();
    config["max_request_headers_count"] = json!(7);
    config["max_request_headers_kb"] = json!(1);
    let emu = emulator(&config);
    // :method, :path, :authority, :scheme, x-a, x-b; the forged x-admin-id is removed on arrival.
    let extra = [("x-a", "1"), ("x-b", "2"), ("x-admin-id", "999")];
    let (s, call) = get(&emu, "/a", &extra);
    emu.respond_http_call(call.token, &[(":status", "200"), ("x-admin-id", "1")], b"", &[]).unwrap();
    assert!(s.local_reply().is_none(), "7 headers: at the limit");
    assert_eq!(all(&s.request_headers_now(), "x-admin-id"), ["1"]);

    let (s, call) = get(&emu, "/a", &extra);
    emu.respond_http_call(
        call.token,
        &[(":status", "200"), ("x-admin-id", "1"), ("x-admin-email", "e")],
        b"",
        &[],
    )
    .unwrap();
    let reply = s.local_reply().expect("refused");
    assert_eq!((reply.status, reply.details.as_str()), (500, "ext_auth_request_headers_too_large"));
    assert_eq!(s.request_header("x-admin-email"), None, "nothing set");

    let big = "e".repeat(1024);
    let (s, call) = get(&emu, "/a", &[]);
    emu.respond_http_call(call.token, &[(":status", "200"), ("x-admin-email", &big)], b"", &[]).unwrap();
    assert_eq!(s.local_reply().expect("over 1 KiB").status, 500);

    let many: Vec<(String, String)> = (0..10).map(|i| (format!("x-h-{i}"), "v".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let (s, call) = get(&emu, "/a", &many);
    emu.respond_http_call(call.token, &[(":status", "200"), ("x-other", "1")], b"", &[]).unwrap();
    assert!(s.local_reply().is_none(), "an answer that sets nothing is not measured");
    assert!(!s.request_paused());
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_checks_total;result=error"), Some(2));
}

/// A client value the check would carry that is not UTF-8 (a callout carries text, so it could
/// reach the auth service only altered) refuses the request with 400, before any check; other
/// headers with such bytes go upstream untouched.
#[test]
fn client_values_that_cannot_reach_the_auth_service_unaltered_are_refused() {
    let emu = emulator(&seed_config());
    let base: [(&str, &[u8]); 4] = [
        (":method", b"GET"),
        (":path", b"/nodebackend/"),
        (":authority", b"shop.example.com"),
        (":scheme", b"http"),
    ];
    for (name, value) in [
        ("cookie", &b"id_token=tok\xff"[..]),
        ("authorization", b"Bearer \xfftok"),
        ("x-qotm-session", b"\x80"),
    ] {
        let mut s = emu.stream();
        let mut headers = base.to_vec();
        headers.push((name, value));
        assert_eq!(s.request_headers_bytes(&headers, true).unwrap(), Action::Pause);
        let reply = s.local_reply().unwrap_or_else(|| panic!("{name}: not refused"));
        assert_eq!((reply.status, reply.details.as_str()), (400, "ext_auth_header_not_text"), "{name}");
        assert!(emu.http_calls().is_empty(), "{name}: no check");
    }
    // Not sent to the auth service: checked as usual, and passed upstream as it came.
    let mut s = emu.stream();
    let mut headers = base.to_vec();
    headers.push(("x-other", b"caf\xe9"));
    assert_eq!(s.request_headers_bytes(&headers, true).unwrap(), Action::Pause);
    let call = emu.http_calls().pop().expect("checked");
    emu.respond_http_call(call.token, &[(":status", "200")], b"", &[]).unwrap();
    assert_eq!(all_bytes(&s.request_headers_now_bytes(), "x-other"), [b"caf\xe9".to_vec()]);
    emu.advance_clock(Duration::from_secs(2)).unwrap();
    assert_eq!(emu.metric("ext_auth_header_not_text_total"), Some(3));
}
