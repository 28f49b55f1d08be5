//! End to end through a real Envoy with a real auth service (`gatewasm_envoy::auth_service`)
//! and the echo upstream, once with the Wasm module (V8) and once with the native dynamic module,
//! one set of expectations for both: the seed's login and protected-path flow, spoofed identity
//! headers, a slow, down or failing auth service, request bodies, and side by side with Envoy's
//! native `ext_authz`.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p ext-auth, and
//! cargo build --release -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatewasm_envoy::auth_service::{self, AuthService, ADMIN_BASIC, ADMIN_TOKEN};
use gatewasm_envoy::{
    for_each_target, merge, ClosedPort, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply,
    Request, ScriptedUpstream, Target,
};
use serde_json::{json, Value};

for_each_target!(
    seed_flow_login_then_protected_path_with_identity_headers,
    the_duration_histogram_is_opt_in,
    slow_failing_or_down_auth_service_is_refused_promptly,
    without_with_request_body_the_body_goes_upstream_only_after_the_check,
    with_request_body_the_auth_service_judges_the_body,
    bad_configuration_is_refused_naming_the_fields,
    a_body_in_several_chunks_is_sent_whole,
    identity_headers_can_choose_the_route,
    default_skip_checks_only_the_listed_paths,
    identity_headers_reach_the_upstream_as_native_ext_authz_sends_them,
    header_limits_after_the_answer_match_native_ext_authz,
    a_native_allowed_headers_list_can_be_reproduced,
    a_body_of_exactly_the_limit_is_not_partial_as_in_native_ext_authz,
    a_client_credential_that_is_not_text_is_refused_where_native_ext_authz_rewrites_it,
);

/// The filter on `target`. On Wasm, `stop_iteration` sets Envoy's
/// `allow_on_headers_stop_iteration` (needed to hold the request headers while the body is
/// buffered for the check); a native module asks for that per request, so it needs no option.
fn filter(target: Target, config: &Value, stop_iteration: bool) -> HttpFilter {
    let filter = target.filter("ext-auth", "ext_auth", config).unwrap_or_else(|e| panic!("{e:#}"));
    match filter {
        HttpFilter::Wasm(wasm) if stop_iteration => {
            let mut json = wasm.to_json();
            merge(&mut json, &json!({"typed_config": {"config": {"allow_on_headers_stop_iteration": true}}}));
            HttpFilter::Raw(json)
        }
        other => other,
    }
}

/// The seed's AuthService as this filter's configuration.
fn seed_config() -> Value {
    json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "timeout_ms": 1000,
        "allowed_request_headers": ["x-qotm-session"],
        "allowed_upstream_headers": ["x-qotm-session", "x-admin-id", "x-admin-email"],
        "rules": [{"name": "health", "match": {"path": {"exact": "/healthz"}}, "action": "skip"}]
    })
}

fn start(
    target: Target,
    config: &Value,
    auth: SocketAddr,
    upstream: SocketAddr,
    stop_iteration: bool,
) -> Envoy {
    EnvoyBuilder::new()
        .filter(filter(target, config, stop_iteration))
        .cluster(Cluster::new("auth", auth).connect_timeout(Duration::from_millis(250)))
        .upstream(upstream)
        .bootstrap_patch(json!({
            "stats_flush_interval": "1s",
            "stats_config": {"stats_tags": [
                {"tag_name": "result", "regex": gatewasm::metrics::tag_regex("result")}
            ]}
        }))
        .start()
        .unwrap()
}

/// Waits until Envoy's Prometheus output has every `wanted` line: the filter's counters reach
/// Envoy from a 1 s tick, histograms at the next stats flush.
fn assert_stats(envoy: &Envoy, wanted: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let text = envoy.admin_get("/stats/prometheus").unwrap();
        let missing: Vec<&&str> = wanted.iter().filter(|w| !text.lines().any(|l| l == **w)).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let ours: Vec<&str> = text.lines().filter(|l| l.starts_with("ext_auth")).collect();
            panic!("missing {missing:?} in:\n{}", ours.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn seed_flow_login_then_protected_path_with_identity_headers(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let envoy = start(target, &seed_config(), auth.addr(), upstream.addr(), false);

    // The login is answered by the auth service itself, 201 with the token, as the client gets it.
    let login = envoy.send(&Request::post("/login", "").header("authorization", ADMIN_BASIC)).unwrap();
    assert_eq!(login.status, 201, "{}\n{}", login.text(), envoy.log_tail(30));
    let body = login.json().unwrap();
    assert_eq!(body["id_token"], ADMIN_TOKEN);
    assert_eq!(body["admin"]["email"], "admin@qq.com");
    assert_eq!(login.header_all("content-type"), ["application/json; charset=utf-8"]);
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("id_token={ADMIN_TOKEN};")), "{cookie}");
    assert_eq!(login.header("x-powered-by"), None, "not an allowed client header");
    assert_eq!(login.header("x-echo-upstream"), None, "the upstream never saw the login");
    let check = auth.seen().pop().unwrap();
    assert_eq!((check.method.as_str(), check.path.as_str()), ("POST", "/extauth/login"));
    assert_eq!(check.header("content-length"), Some("0"));
    assert!(check.body.is_empty());

    let wrong = envoy
        .send(&Request::post("/login", "").header("authorization", "Basic YWRtaW5AcXEuY29tOndyb25n"))
        .unwrap();
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json().unwrap()["message"], "Username or password is incorrect");

    // The protected path with the cookie: allowed, identity from the auth service only.
    let ok = envoy
        .send(
            &Request::get("/nodebackend/?x=1")
                .header("cookie", &format!("id_token={ADMIN_TOKEN}"))
                .header("x-admin-id", "999")
                .header("x-admin-email", "evil@example.com")
                .header("x-qotm-session", "q1"),
        )
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let echo = ok.echo().unwrap();
    assert_eq!(echo.path, "/nodebackend/?x=1");
    assert_eq!(echo.header_all("x-admin-id"), ["1"]);
    assert_eq!(echo.header_all("x-admin-email"), ["admin@qq.com"]);
    assert!(echo.header_all("x-qotm-session").is_empty(), "the auth service did not send it");
    assert_eq!(echo.header("x-powered-by"), None);
    let check = auth.seen().pop().unwrap();
    assert_eq!(check.path, "/extauth/nodebackend/?x=1");
    assert_eq!(check.header("x-qotm-session"), Some("q1"));
    assert_eq!(check.header("x-admin-id"), None, "the spoofed header never reaches the auth service either");

    // Bearer and query tokens work too (the seed's middleware).
    let bearer = envoy
        .send(&Request::get("/nodebackend/").header("authorization", &format!("Bearer {ADMIN_TOKEN}")))
        .unwrap();
    assert_eq!(bearer.echo().unwrap().header("x-admin-id"), Some("1"));
    let query = envoy.send(&Request::get(&format!("/nodebackend/?token={ADMIN_TOKEN}"))).unwrap();
    assert_eq!(query.status, 200);

    // No token: the auth service's 401 and its JSON body reach the client.
    let denied = envoy.send(&Request::get("/nodebackend/").header("x-admin-id", "1")).unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json().unwrap()["error"]["msg"], "No token!");
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert_eq!(denied.header("x-echo-upstream"), None);

    // Any other path: allowed by the auth service without identity; spoofed copies are gone.
    let other = envoy.send(&Request::get("/public").header("x-admin-id", "1")).unwrap();
    assert_eq!(other.status, 200);
    assert!(other.echo().unwrap().header_all("x-admin-id").is_empty());

    // Health checks skip the check, and are still stripped.
    let before = auth.seen().len();
    let health = envoy.send(&Request::get("/healthz").header("x-admin-email", "evil@example.com")).unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.echo().unwrap().header("x-admin-email"), None);
    assert_eq!(auth.seen().len(), before);

    assert_stats(
        &envoy,
        &[
            "ext_auth_checks_total{result=\"allowed\"} 4",
            "ext_auth_checks_total{result=\"denied\"} 3",
            "ext_auth_skipped_total{} 1",
        ],
    );
    let stats = envoy.admin_get("/stats/prometheus").unwrap();
    assert!(!stats.contains("ext_auth_check_duration_us"), "the histogram is opt-in");
}

/// With `duration_histogram`, every check's latency is recorded; Envoy's own timing of the auth
/// cluster, which the default relies on, counts the same checks.
fn the_duration_histogram_is_opt_in(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["duration_histogram"] = json!(true);
    let envoy = start(target, &config, auth.addr(), upstream.addr(), false);
    for _ in 0..3 {
        assert_eq!(envoy.send(&Request::get("/public")).unwrap().status, 200);
    }
    assert_eq!(envoy.send(&Request::get("/nodebackend/")).unwrap().status, 401);
    assert_stats(
        &envoy,
        &[
            "ext_auth_checks_total{result=\"allowed\"} 3",
            "ext_auth_checks_total{result=\"denied\"} 1",
            "ext_auth_check_duration_us_count{} 4",
            "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"auth\"} 4",
        ],
    );
}

fn slow_failing_or_down_auth_service_is_refused_promptly(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["timeout_ms"] = json!(300);
    let envoy = start(target, &config, auth.addr(), upstream.addr(), false);

    let started = Instant::now();
    let slow = envoy.send(&Request::get("/slow")).unwrap();
    assert_eq!(slow.status, 403, "{}", slow.text());
    assert!(started.elapsed() < auth_service::SLOW, "answered after {:?}", started.elapsed());
    assert_eq!(slow.json().unwrap()["code"], "auth_timeout");

    let boom = envoy.send(&Request::get("/boom")).unwrap();
    assert_eq!(boom.status, 403);
    assert!(!boom.text().contains("stack trace"), "a 5xx is not passed to the client: {}", boom.text());
    assert_eq!(boom.json().unwrap()["code"], "auth_error");

    assert_stats(
        &envoy,
        &["ext_auth_checks_total{result=\"timeout\"} 1", "ext_auth_checks_total{result=\"error\"} 1"],
    );
    // Envoy's own count of the timed-out check, for users without `duration_histogram`.
    assert_eq!(envoy.stat("cluster.auth.upstream_rq_timeout").unwrap(), Some(1));
    drop(envoy);

    // Down: connection refused, with a configured status.
    config["status_on_error"] = json!(503);
    let closed = ClosedPort::new().unwrap();
    let envoy = start(target, &config, closed.addr(), upstream.addr(), false);
    let started = Instant::now();
    let down = envoy.send(&Request::get("/nodebackend/").header("cookie", "id_token=x")).unwrap();
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.json().unwrap()["code"], "auth_error");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(envoy);

    // Down with failure_mode_allow: through, marked, without identity.
    let mut config = seed_config();
    config["failure_mode_allow"] = json!(true);
    let envoy = start(target, &config, closed.addr(), upstream.addr(), false);
    let through = envoy
        .send(
            &Request::get("/nodebackend/")
                .header("x-admin-id", "1")
                .header("x-envoy-auth-failure-mode-allowed", "false"),
        )
        .unwrap();
    assert_eq!(through.status, 200, "{}", through.text());
    let echo = through.echo().unwrap();
    assert_eq!(echo.header_all("x-envoy-auth-failure-mode-allowed"), ["true"]);
    assert_eq!(echo.header("x-admin-id"), None);
}

fn without_with_request_body_the_body_goes_upstream_only_after_the_check(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/nodebackend/orders", Reply::status(200).body("created"));
    let envoy = start(target, &seed_config(), auth.addr(), upstream.addr(), false);

    let body = "x".repeat(100_000);
    let ok = envoy
        .send(
            &Request::post("/nodebackend/orders", body.as_str())
                .header("content-type", "text/plain")
                .header("cookie", &format!("id_token={ADMIN_TOKEN}")),
        )
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.len(), 100_000);
    assert_eq!(got[0].header("x-admin-id"), Some("1"));
    let check = auth.seen().pop().unwrap();
    assert_eq!(check.method, "POST");
    assert_eq!(check.header("content-length"), Some("0"));
    assert!(check.body.is_empty(), "the body is not sent by default");

    // Larger than Envoy's 1 MiB buffer limit: held by flow control, not refused with 413.
    let big = "y".repeat(3 << 20);
    let ok = envoy
        .send(
            &Request::post("/nodebackend/orders", big.as_str())
                .header("cookie", &format!("id_token={ADMIN_TOKEN}")),
        )
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(upstream.received().last().unwrap().body.len(), 3 << 20);

    // Denied: the upstream never sees the request, nor its body.
    let denied = envoy.send(&Request::post("/nodebackend/orders", body.as_str())).unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(upstream.received().len(), 2);
}

fn with_request_body_the_auth_service_judges_the_body(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/upload", Reply::status(200).body("stored"));
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 64});
    let envoy = start(target, &config, auth.addr(), upstream.addr(), true);

    let ok = envoy.send(&Request::post("/upload", "please allow this").header("x-admin-id", "9")).unwrap();
    assert_eq!(ok.status, 200, "{}\n{}", ok.text(), envoy.log_tail(30));
    let check = auth.seen().pop().unwrap();
    assert_eq!(check.body, b"please allow this");
    assert_eq!(check.header("content-length"), Some("17"));
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("false"));
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"please allow this");
    assert_eq!(got[0].header("x-admin-id"), Some("1"), "identity set while the body was held");

    let denied = envoy.send(&Request::post("/upload", "no way")).unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "forbidden body");
    assert_eq!(upstream.received().len(), 1, "the upstream never saw the denied request");

    let large = envoy.send(&Request::post("/upload", "allow ".repeat(20).as_str())).unwrap();
    assert_eq!(large.status, 413, "{}", large.text());
    assert_eq!(large.json().unwrap()["code"], "body_too_large");
    assert_eq!(upstream.received().len(), 1);

    // A request without a body is checked at once.
    let get = envoy.send(&Request::get("/upload")).unwrap();
    assert_eq!(get.status, 403);
    assert!(auth.seen().pop().unwrap().header("x-envoy-auth-partial-body").is_none());
    drop(envoy);

    // Partial bodies: the first 64 bytes are judged, the whole body goes upstream.
    config["with_request_body"] = json!({"max_bytes": 64, "allow_partial": true});
    let envoy = start(target, &config, auth.addr(), upstream.addr(), true);
    let long = format!("allow{}", "-".repeat(200));
    let ok = envoy.send(&Request::post("/upload", long.as_str())).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let check = auth.seen().pop().unwrap();
    assert_eq!(check.body.len(), 64);
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("true"));
    assert_eq!(upstream.received().last().unwrap().body.len(), long.len());
}

fn bad_configuration_is_refused_naming_the_fields(target: Target) {
    let log = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({"cluster": "auth", "allowed_statuses": [503], "rules": [{"match": {"hosts": ["a:1"]}}]}),
            false,
        ))
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("allowed_statuses[0]"), "{log}");
    assert!(log.contains("rules[0].match.hosts[0]"), "{log}");
}

/// Sends a chunked POST in separate writes, so Envoy delivers the body in several callbacks.
fn chunked_post(envoy: &Envoy, path: &str, chunks: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    for chunk in chunks {
        write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len()).unwrap();
        conn.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    conn.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

fn a_body_in_several_chunks_is_sent_whole(target: Target) {
    // Envoy hands a buffering Wasm filter the whole body buffered so far in each callback
    // (body_size grows: 7, then 15), and the check goes once the body ends.
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/upload", Reply::status(200).body("stored"));
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 1024});
    let envoy = start(target, &config, auth.addr(), upstream.addr(), true);
    let answer = chunked_post(&envoy, "/upload", &["please ", "allow me", "!"]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{}", envoy.log_tail(30));
    let checks: Vec<_> = auth.seen().into_iter().filter(|s| s.path == "/extauth/upload").collect();
    assert_eq!(checks.len(), 1, "one check per request");
    assert_eq!(checks[0].body, b"please allow me!");
    assert_eq!(checks[0].header("x-envoy-auth-partial-body"), Some("false"));
    assert_eq!(upstream.received()[0].body, b"please allow me!");
}

/// Headers copied from the answer can choose the route: Envoy's Wasm host clears the route cache
/// when a filter changes request headers, as Ambassador's `clear_route_cache: true` does.
fn identity_headers_can_choose_the_route(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &seed_config(), false))
        .cluster(Cluster::new("auth", auth.addr()))
        .upstream(upstream.addr())
        .hcm_patch(json!({"route_config": {"name": "local_route", "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/", "headers": [{"name": "x-admin-id", "string_match": {"exact": "1"}}]},
                 "direct_response": {"status": 299, "body": {"inline_string": "admin route"}}},
                {"match": {"prefix": "/"}, "route": {"cluster": gatewasm_envoy::UPSTREAM_CLUSTER}}
            ]
        }]}}))
        .start()
        .unwrap();
    let admin = envoy
        .send(&Request::get("/nodebackend/").header("cookie", &format!("id_token={ADMIN_TOKEN}")))
        .unwrap();
    assert_eq!(admin.status, 299, "route not re-selected: {}", admin.text());
    // A forged header does not reach the route match either.
    let forged = envoy.send(&Request::get("/public").header("x-admin-id", "1")).unwrap();
    assert_eq!(forged.status, 200, "{}", forged.text());
    assert!(forged.echo().is_ok());
}

/// `default: skip` with rules naming what to check: the gateway's other paths never reach the
/// auth service (the configuration proposed for the demo gateway).
fn default_skip_checks_only_the_listed_paths(target: Target) {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let config = json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
        "default": "skip",
        "rules": [
            {"name": "login", "match": {"path": {"exact": "/login"}, "methods": ["POST"]}, "action": "check"},
            {"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}
        ]
    });
    let envoy = start(target, &config, auth.addr(), upstream.addr(), false);
    let other = envoy.send(&Request::get("/api/users?id=7").header("x-admin-id", "1")).unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(other.echo().unwrap().header("x-admin-id"), None, "stripped even when skipped");
    assert!(auth.seen().is_empty(), "not checked");
    let login = envoy.send(&Request::post("/login", "").header("authorization", ADMIN_BASIC)).unwrap();
    assert_eq!(login.status, 201);
    let ok = envoy
        .send(&Request::get("/nodebackend/").header("cookie", &format!("id_token={ADMIN_TOKEN}")))
        .unwrap();
    assert_eq!(ok.echo().unwrap().header("x-admin-email"), Some("admin@qq.com"));
    let denied = envoy.send(&Request::get("/nodebackend/")).unwrap();
    assert_eq!(denied.status, 401);
    assert_eq!(auth.seen().len(), 3);
}

/// Wasm only: without `allow_on_headers_stop_iteration`, Envoy turns the filter's hold on the
/// headers into "stop everything": the body never reaches the filter, the request waits, and the
/// filter's log says why. A native module has no such option to forget (the next test).
#[test]
fn on_wasm_with_request_body_without_stop_iteration_is_explained() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 64});
    let envoy = start(Target::Wasm, &config, auth.addr(), upstream.addr(), false);
    let waited = envoy.send(&Request::post("/upload", "please allow this").timeout(Duration::from_secs(1)));
    assert!(waited.is_err(), "answered: {:?}", waited.map(|r| r.status));
    assert!(auth.seen().is_empty(), "no check without the body");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !envoy.log().contains("allow_on_headers_stop_iteration") {
        assert!(Instant::now() < deadline, "no explanation in the log:\n{}", envoy.log_tail(20));
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Native only: the module lets the body through its paused headers for the requests it buffers,
/// with no Envoy option, so the check gets the body.
#[test]
fn natively_with_request_body_needs_no_envoy_option() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 64});
    let envoy = start(Target::Native, &config, auth.addr(), upstream.addr(), false);
    let ok = envoy.send(&Request::post("/upload", "please allow this").header("x-admin-id", "9")).unwrap();
    assert_eq!(ok.status, 200, "{}\n{}", ok.text(), envoy.log_tail(30));
    assert_eq!(auth.seen().pop().unwrap().body, b"please allow this");
    assert_eq!(ok.echo().unwrap().body, "please allow this");
}

mod raw_http;

use raw_http::{response, RawRequest, RawServer};

/// Envoy's native `ext_authz` (HTTP service) configured as `config` configures this filter (its
/// `path_prefix` and `allowed_upstream_headers`), plus `extra` merged into its typed config.
fn native_ext_authz(config: &Value, extra: &Value) -> HttpFilter {
    let patterns: Vec<Value> = config["allowed_upstream_headers"]
        .as_array()
        .map(|names| names.iter().map(|n| json!({"exact": n})).collect())
        .unwrap_or_default();
    let mut json = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "http_service": {
                "server_uri": {"uri": "http://auth", "cluster": "auth", "timeout": "1s"},
                "path_prefix": config["path_prefix"].as_str().unwrap_or("")
            }
        }
    });
    // Envoy refuses an empty list.
    if !patterns.is_empty() {
        json["typed_config"]["http_service"]["authorization_response"] =
            json!({"allowed_upstream_headers": {"patterns": patterns}});
    }
    merge(&mut json, &json!({"typed_config": extra}));
    HttpFilter::Raw(json)
}

/// Two Envoys in front of the same auth service and upstream: one with this filter, one with
/// native `ext_authz`.
fn side_by_side(ours: HttpFilter, native: HttpFilter, auth: SocketAddr, upstream: SocketAddr) -> [Envoy; 2] {
    [ours, native].map(|filter| {
        EnvoyBuilder::new()
            .filter(filter)
            .cluster(Cluster::new("auth", auth))
            .upstream(upstream)
            .start()
            .unwrap()
    })
}

/// The upstream's `x-admin-id` and `x-admin-email` lines for one request.
type IdentityLines = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The scripted auth answers of the identity tests, by path.
fn identity_answers(request: &RawRequest) -> Vec<u8> {
    match request.path.as_str() {
        // Identities that are not UTF-8.
        "/extauth/bytes" => {
            response("200 OK", &[("x-admin-email", b"adm\xffin@qq.com"), ("x-admin-id", b"\x80\x81")], b"")
        }
        // The same identity written with U+FFFD: must stay different from the one above.
        "/extauth/fffd" => response(
            "200 OK",
            &[("x-admin-email", "adm\u{fffd}in@qq.com".as_bytes()), ("x-admin-id", b"\x80\x81")],
            b"",
        ),
        // One identity header twice.
        "/extauth/twice" => response(
            "200 OK",
            &[("x-admin-id", b"1"), ("x-admin-email", b"a@qq.com"), ("x-admin-id", b"2")],
            b"",
        ),
        _ => response("403 Forbidden", &[], b"no"),
    }
}

/// Security: the identities an auth service gives reach the upstream byte for byte, one line
/// per name with the answer's last value, exactly as native `ext_authz` sends them (run side by
/// side in Envoy 1.40).
fn identity_headers_reach_the_upstream_as_native_ext_authz_sends_them(target: Target) {
    let auth = RawServer::start(identity_answers);
    let upstream = RawServer::ok();
    let config = json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "allowed_upstream_headers": ["x-admin-id", "x-admin-email"]
    });
    let envoys = side_by_side(
        filter(target, &config, false),
        native_ext_authz(&config, &json!({})),
        auth.addr(),
        upstream.addr(),
    );
    let mut seen: Vec<Vec<IdentityLines>> = Vec::new();
    for envoy in &envoys {
        let mut per_path = Vec::new();
        for path in ["/bytes", "/fffd", "/twice"] {
            let got = envoy.send(&Request::get(path).header("x-admin-id", "999")).unwrap();
            assert_eq!(got.status, 200, "{path}: {}\n{}", got.text(), envoy.log_tail(20));
            let up = upstream.last(path).expect("reached the upstream");
            per_path.push((up.values("x-admin-id"), up.values("x-admin-email")));
        }
        seen.push(per_path);
    }
    let expected = vec![
        (vec![b"\x80\x81".to_vec()], vec![b"adm\xffin@qq.com".to_vec()]),
        (vec![b"\x80\x81".to_vec()], vec!["adm\u{fffd}in@qq.com".as_bytes().to_vec()]),
        (vec![b"2".to_vec()], vec![b"a@qq.com".to_vec()]),
    ];
    assert_eq!(seen[1], expected, "native ext_authz");
    assert_eq!(seen[0], expected, "ext-auth");
}

/// Security, and how Envoy answers when the identities break its header limits: a request whose
/// headers plus the answer's are over Envoy's 100 headers or 60 KiB is refused with 500 by
/// native `ext_authz`; the filter refuses it at the same point (and lets through the same
/// requests when the answer sets nothing).
fn header_limits_after_the_answer_match_native_ext_authz(target: Target) {
    let auth = RawServer::start(|r: &RawRequest| {
        if r.path.starts_with("/extauth/identity") {
            response("200 OK", &[("x-admin-id", b"1"), ("x-admin-email", &[b'e'; 30_000])], b"")
        } else {
            response("200 OK", &[], b"")
        }
    });
    let upstream = RawServer::ok();
    let config = json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "allowed_upstream_headers": ["x-admin-id", "x-admin-email"]
    });
    let envoys = side_by_side(
        filter(target, &config, false),
        native_ext_authz(&config, &json!({})),
        auth.addr(),
        upstream.addr(),
    );
    let statuses = |envoy: &Envoy, path: &str, extra: usize, pad: usize| {
        let mut req = Request::get(path).header("x-pad", &"p".repeat(pad));
        for i in 0..extra {
            req = req.header(&format!("x-h-{i}"), "v");
        }
        envoy.send(&req).unwrap().status
    };
    let mut by_count = Vec::new();
    let mut by_size = Vec::new();
    for envoy in &envoys {
        let count: Vec<(u16, u16)> = (86..=96)
            .map(|n| {
                (statuses(envoy, &format!("/identity{n}"), n, 1), statuses(envoy, &format!("/none{n}"), n, 1))
            })
            .collect();
        by_count.push(count);
        let size: Vec<u16> = [28, 29, 30, 31, 32]
            .iter()
            .map(|kb| statuses(envoy, &format!("/identity-kb{kb}"), 0, kb * 1024))
            .collect();
        by_size.push(size);
    }
    // The sweeps straddle native Envoy's limits.
    let native: Vec<u16> = by_count[1].iter().map(|(identity, _)| *identity).collect();
    assert!(native.contains(&200) && native.contains(&500), "native by count: {native:?}");
    assert!(by_count[1].iter().all(|(_, none)| *none == 200), "native without identities: {:?}", by_count[1]);
    assert!(by_size[1].contains(&200) && by_size[1].contains(&500), "native by size: {:?}", by_size[1]);
    assert_eq!(by_count[0], by_count[1], "by count: ext-auth, then native");
    assert_eq!(by_size[0], by_size[1], "by size: ext-auth, then native");
    let refused =
        envoys[0].send(&Request::get("/identity-big").header("x-pad", &"p".repeat(40 * 1024))).unwrap();
    assert_eq!(refused.status, 500);
    assert_eq!(refused.json().unwrap()["code"], "request_headers_too_large");
}

/// `default_request_headers: false` with `allowed_request_headers` reproduces a native
/// `allowed_headers` list (`exact` as the name, `prefix` as `name*`; native always adds
/// `Authorization`, listed here); side by side, the auth service gets the same headers.
fn a_native_allowed_headers_list_can_be_reproduced(target: Target) {
    let auth = RawServer::start(|_| response("200 OK", &[], b""));
    let upstream = RawServer::ok();
    let config = json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "default_request_headers": false,
        "allowed_request_headers": ["authorization", "x-tenant", "x-auth-*"]
    });
    let native = native_ext_authz(
        &config,
        &json!({"allowed_headers": {"patterns": [{"exact": "x-tenant"}, {"prefix": "x-auth-"}]}}),
    );
    let envoys = side_by_side(filter(target, &config, false), native, auth.addr(), upstream.addr());
    let mut sent = Vec::new();
    let mut forwarded_for = Vec::new();
    for (i, envoy) in envoys.iter().enumerate() {
        let path = format!("/headers{i}");
        let got = envoy
            .send(
                &Request::get(&path)
                    .header("authorization", "Bearer t")
                    .header("cookie", "sid=1")
                    .header("user-agent", "curl")
                    .header("x-forwarded-for", "10.0.0.1")
                    .header("from", "me")
                    .header("x-tenant", "t1")
                    .header("x-auth-user", "u")
                    .header("x-other", "o"),
            )
            .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        let check = auth.last(&format!("/extauth{path}")).expect("checked");
        let mut names: Vec<String> = check
            .headers
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != "host" && n != "content-length" && !n.starts_with("x-envoy-"))
            .filter(|n| n != "x-forwarded-for")
            .collect();
        names.sort();
        sent.push(names);
        forwarded_for.push(check.values("x-forwarded-for"));
    }
    assert_eq!(sent[1], ["authorization", "x-auth-user", "x-tenant"], "native ext_authz");
    assert_eq!(sent[0], sent[1], "ext-auth");
    assert!(forwarded_for[1].is_empty(), "native ext_authz: {:?}", forwarded_for[1]);
    // Envoy 1.40 sends a dynamic module's callouts through its async client with
    // `x-forwarded-for: 192.0.2.2` (the async client's placeholder address, never the client's
    // header), and a Wasm filter's without: a difference of the native target the module cannot
    // turn off.
    let ours: Vec<String> =
        forwarded_for[0].iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    match target {
        Target::Wasm => assert!(ours.is_empty(), "{ours:?}"),
        Target::Native => assert_eq!(ours, ["192.0.2.2"]),
    }
}

/// A body of exactly the limit is whole (`x-envoy-auth-partial-body: false`) even when its end
/// arrives on its own, as native `ext_authz` says; a longer one arriving at once is partial in
/// both. Where exactly the limit arrives first and more follows, native `ext_authz` checks at
/// once and says `false`; the filter waits for the next piece and says `true` (a difference the
/// README lists: the auth service never takes a cut body for a whole one).
fn a_body_of_exactly_the_limit_is_not_partial_as_in_native_ext_authz(target: Target) {
    let auth = RawServer::start(|_| response("200 OK", &[], b""));
    let upstream = RawServer::ok();
    let config = json!({
        "cluster": "auth",
        "path_prefix": "/extauth",
        "with_request_body": {"max_bytes": 16, "allow_partial": true}
    });
    let native = native_ext_authz(
        &config,
        &json!({"with_request_body": {"max_request_bytes": 16, "allow_partial_message": true}}),
    );
    let envoys = side_by_side(filter(target, &config, true), native, auth.addr(), upstream.addr());
    let cases: [(&str, &[&str]); 3] = [
        ("exact", &["0123456789abcdef"]),
        ("over-at-once", &["0123456789abcdefg"]),
        ("over-later", &["0123456789abcdef", "g"]),
    ];
    let mut marks = Vec::new();
    for (i, envoy) in envoys.iter().enumerate() {
        let mut per_case = Vec::new();
        for (case, chunks) in cases {
            let path = format!("/{case}{i}");
            let answer = chunked_post(envoy, &path, chunks);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{}", envoy.log_tail(20));
            let check = auth.last(&format!("/extauth{path}")).expect("checked");
            let mark = check.values("x-envoy-auth-partial-body");
            per_case.push(String::from_utf8(mark.concat()).unwrap());
        }
        marks.push(per_case);
    }
    assert_eq!(marks[1], ["false", "true", "false"], "native ext_authz");
    assert_eq!(marks[0], ["false", "true", "true"], "ext-auth");
}

/// Sends `GET path` with one raw header line and returns the status line and the rest.
fn get_with_raw_header(envoy: &Envoy, path: &str, header: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n").into_bytes();
    request.extend_from_slice(header);
    request.extend_from_slice(b"\r\n\r\n");
    conn.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client credential with a byte that is not UTF-8: native `ext_authz` sends it to the auth
/// service rewritten (each such byte becomes `!`, so `t\xffk` and `t!k` arrive alike); the
/// filter refuses the request with 400 and sends nothing, never a rewritten credential.
fn a_client_credential_that_is_not_text_is_refused_where_native_ext_authz_rewrites_it(target: Target) {
    let auth = RawServer::start(|_| response("200 OK", &[], b""));
    let upstream = RawServer::ok();
    let config = json!({"cluster": "auth", "path_prefix": "/extauth"});
    let envoys = side_by_side(
        filter(target, &config, false),
        native_ext_authz(&config, &json!({})),
        auth.addr(),
        upstream.addr(),
    );
    let native = get_with_raw_header(&envoys[1], "/native", b"authorization: Bearer t\xffk");
    assert!(native.starts_with("HTTP/1.1 200"), "{native}");
    let check = auth.last("/extauth/native").expect("checked");
    assert_eq!(check.values("authorization"), [b"Bearer t!k".to_vec()], "native ext_authz rewrites it");

    let ours = get_with_raw_header(&envoys[0], "/ours", b"authorization: Bearer t\xffk");
    assert!(ours.starts_with("HTTP/1.1 400"), "{ours}");
    assert!(ours.contains("header_not_text"), "{ours}");
    assert!(auth.last("/extauth/ours").is_none(), "no check sent");
    assert!(upstream.last("/ours").is_none());
}
