//! End to end through a real Envoy (V8) with a real auth service
//! (`gatewasm_envoy::auth_service`) and the echo upstream: the seed's login and protected-path flow, spoofed identity headers, a slow,
//! down or failing auth service, and request bodies.
//! Build the module first: cargo build --release --target wasm32-wasip1 -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatewasm_envoy::auth_service::{self, AuthService, ADMIN_BASIC, ADMIN_TOKEN};
use gatewasm_envoy::{
    merge, wasm_artifact, ClosedPort, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply, Request,
    ScriptedUpstream, WasmFilter,
};
use serde_json::{json, Value};

fn module() -> PathBuf {
    wasm_artifact("ext_auth.wasm", "ext-auth").unwrap_or_else(|e| panic!("{e:#}"))
}

/// The filter, optionally with Envoy's `allow_on_headers_stop_iteration` (needed to hold the
/// request headers while the body is buffered for the check).
fn filter(config: &Value, stop_iteration: bool) -> HttpFilter {
    let wasm = WasmFilter::new(module()).name("ext_auth").json_configuration(config);
    let mut json = wasm.to_json();
    if stop_iteration {
        merge(&mut json, &json!({"typed_config": {"config": {"allow_on_headers_stop_iteration": true}}}));
    }
    HttpFilter::Raw(json)
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

fn start(config: &Value, auth: SocketAddr, upstream: SocketAddr, stop_iteration: bool) -> Envoy {
    EnvoyBuilder::new()
        .filter(filter(config, stop_iteration))
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

#[test]
fn seed_flow_login_then_protected_path_with_identity_headers() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let envoy = start(&seed_config(), auth.addr(), upstream.addr(), false);

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
#[test]
fn the_duration_histogram_is_opt_in() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["duration_histogram"] = json!(true);
    let envoy = start(&config, auth.addr(), upstream.addr(), false);
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

#[test]
fn slow_failing_or_down_auth_service_is_refused_promptly() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["timeout_ms"] = json!(300);
    let envoy = start(&config, auth.addr(), upstream.addr(), false);

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
    let envoy = start(&config, closed.addr(), upstream.addr(), false);
    let started = Instant::now();
    let down = envoy.send(&Request::get("/nodebackend/").header("cookie", "id_token=x")).unwrap();
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.json().unwrap()["code"], "auth_error");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(envoy);

    // Down with failure_mode_allow: through, marked, without identity.
    let mut config = seed_config();
    config["failure_mode_allow"] = json!(true);
    let envoy = start(&config, closed.addr(), upstream.addr(), false);
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

#[test]
fn without_with_request_body_the_body_goes_upstream_only_after_the_check() {
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/nodebackend/orders", Reply::status(200).body("created"));
    let envoy = start(&seed_config(), auth.addr(), upstream.addr(), false);

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

#[test]
fn with_request_body_the_auth_service_judges_the_body() {
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/upload", Reply::status(200).body("stored"));
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 64});
    let envoy = start(&config, auth.addr(), upstream.addr(), true);

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
    let envoy = start(&config, auth.addr(), upstream.addr(), true);
    let long = format!("allow{}", "-".repeat(200));
    let ok = envoy.send(&Request::post("/upload", long.as_str())).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let check = auth.seen().pop().unwrap();
    assert_eq!(check.body.len(), 64);
    assert_eq!(check.header("x-envoy-auth-partial-body"), Some("true"));
    assert_eq!(upstream.received().last().unwrap().body.len(), long.len());
}

#[test]
fn bad_configuration_is_refused_naming_the_fields() {
    let log = EnvoyBuilder::new()
        .filter(filter(
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

#[test]
fn a_body_in_several_chunks_is_sent_whole() {
    // Envoy hands a buffering Wasm filter the whole body buffered so far in each callback
    // (body_size grows: 7, then 15), and the check goes once the body ends.
    let auth = AuthService::start().unwrap();
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set("/upload", Reply::status(200).body("stored"));
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 1024});
    let envoy = start(&config, auth.addr(), upstream.addr(), true);
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
#[test]
fn identity_headers_can_choose_the_route() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(&seed_config(), false))
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
#[test]
fn default_skip_checks_only_the_listed_paths() {
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
    let envoy = start(&config, auth.addr(), upstream.addr(), false);
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

/// Without `allow_on_headers_stop_iteration`, Envoy turns the filter's hold on the headers into
/// "stop everything": the body never reaches the filter, the request waits, and the filter's
/// log says why.
#[test]
fn with_request_body_without_stop_iteration_is_explained() {
    let auth = AuthService::start().unwrap();
    let upstream = EchoUpstream::start().unwrap();
    let mut config = seed_config();
    config["with_request_body"] = json!({"max_bytes": 64});
    let envoy = start(&config, auth.addr(), upstream.addr(), false);
    let waited = envoy.send(&Request::post("/upload", "please allow this").timeout(Duration::from_secs(1)));
    assert!(waited.is_err(), "answered: {:?}", waited.map(|r| r.status));
    assert!(auth.seen().is_empty(), "no check without the body");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !envoy.log().contains("allow_on_headers_stop_iteration") {
        assert!(Instant::now() < deadline, "no explanation in the log:\n{}", envoy.log_tail(20));
        std::thread::sleep(Duration::from_millis(250));
    }
}
