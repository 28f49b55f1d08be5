//! The demo gateway: Envoy with the project's filters, in front of an echo upstream that answers
//! every request with what it received, so each filter's effect is visible with `curl`.
//!
//! `gatewasm-demo` runs until interrupted; `gatewasm-demo --check` sends the printed requests
//! itself, checks the answers and exits (the test suite runs it, so the README's lines stay true).

use std::time::Duration;

use anyhow::{ensure, Context};
use gatewasm_envoy::auth_service::{AuthService, ADMIN_TOKEN};
use gatewasm_envoy::{wasm_artifact, Cluster, EchoUpstream, Envoy, EnvoyBuilder, Request, WasmFilter};
use serde_json::json;

/// Where the gateway listens unless `GATEWASM_DEMO_PORT` says otherwise.
const DEFAULT_PORT: u16 = 10000;
/// Envoy's admin endpoint unless `GATEWASM_DEMO_ADMIN_PORT` says otherwise.
const DEFAULT_ADMIN_PORT: u16 = 9901;

fn port(var: &str, default: u16) -> anyhow::Result<u16> {
    match std::env::var(var) {
        Ok(v) => v.parse().with_context(|| format!("{var}={v:?} is not a port number")),
        Err(_) => Ok(default),
    }
}

fn start(listener: u16, admin: u16, upstream: &EchoUpstream, auth: &AuthService) -> anyhow::Result<Envoy> {
    let header_rewrite = WasmFilter::new(wasm_artifact("header_rewrite.wasm", "header-rewrite")?)
        .name("header-rewrite")
        .json_configuration(&json!({
            "rules": [{
                "name": "api",
                "match": {"path": {"prefix": "/api/"}},
                "host_rewrite": "backend.internal",
                "path_rewrite": {"prefix": "/v2/"},
                "request": {"remove": ["x-debug"], "set": [{"name": "x-gateway", "value": "gatewasm"}]},
                "response": {"set": [{"name": "x-served-by", "value": "gatewasm %METHOD% %PATH%"}]}
            }]
        }));
    let hello = WasmFilter::new(wasm_artifact("hello.wasm", "hello")?)
        .name("hello")
        .json_configuration(&json!({"greeting": "hello from", "blocked_prefix": "/admin"}));
    // Measures every request as it arrived, before the others act on it: known hosts keep their
    // name, /api/* is one route, other paths are normalised ({id} for numbers, UUIDs, hex).
    let http_metrics = WasmFilter::new(wasm_artifact("http_metrics.wasm", "http-metrics")?)
        .name("http-metrics")
        .json_configuration(&json!({"hosts": ["shop.example.com"], "routes": [{"prefix": "/api/"}]}));
    // The login and /nodebackend/ are asked of the auth service (the user story's Ambassador
    // AuthService setup); everything else passes unchecked.
    let ext_auth = WasmFilter::new(wasm_artifact("ext_auth.wasm", "ext-auth")?)
        .name("ext-auth")
        .json_configuration(&json!({
            "cluster": "ext_auth", "path_prefix": "/extauth", "timeout_ms": 1000,
            "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
            "default": "skip",
            "rules": [
                {"name": "login", "match": {"path": {"exact": "/login"}, "methods": ["POST"]}, "action": "check"},
                {"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}
            ]
        }));
    let tags: Vec<_> = ["host", "path", "method", "code", "rule", "result"]
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!("(;{t}=([^;]*))")}))
        .collect();
    EnvoyBuilder::new()
        .wasm(http_metrics)
        .wasm(ext_auth)
        .wasm(hello)
        .wasm(header_rewrite)
        .upstream(upstream.addr())
        .cluster(Cluster::new("ext_auth", auth.addr()))
        .listener_port(listener)
        .admin_port(admin)
        .log_level("warning")
        .bootstrap_patch(json!({"stats_config": {"stats_tags": tags}}))
        .start()
}

/// Sends the requests the banner shows and checks what each filter did.
fn check(envoy: &Envoy) -> anyhow::Result<()> {
    let r = envoy
        .send(&Request::get("/api/users?id=7").header("host", "Shop.Example.com").header("x-debug", "1"))?;
    ensure!(r.status == 200, "GET /api/users: status {}", r.status);
    ensure!(
        r.header("x-served-by") == Some("gatewasm GET /api/users"),
        "x-served-by: {:?}",
        r.header("x-served-by")
    );
    let echo = r.echo()?;
    ensure!(echo.path == "/v2/users?id=7", "upstream path {}", echo.path);
    ensure!(echo.header("host") == Some("backend.internal"), "upstream host {:?}", echo.header("host"));
    ensure!(echo.header("x-envoy-original-path") == Some("/api/users?id=7"), "original path missing");
    ensure!(echo.header("x-gateway") == Some("gatewasm"), "x-gateway missing");
    ensure!(echo.header("x-debug").is_none(), "x-debug was not removed");
    ensure!(
        echo.header("x-greeting") == Some("hello from shop.example.com"),
        "x-greeting {:?}",
        echo.header("x-greeting")
    );

    let r = envoy.get("/admin/settings")?;
    ensure!(r.status == 403, "GET /admin/settings: status {}", r.status);
    ensure!(r.json()?.get("code").and_then(|c| c.as_str()) == Some("blocked_path"), "403 body {}", r.text());

    let r = envoy.send(
        &Request::post("/login", Vec::new()).header("authorization", "Basic YWRtaW5AcXEuY29tOjEyMw=="),
    )?;
    ensure!(r.status == 201, "POST /login: status {} {}", r.status, r.text());
    ensure!(r.text().contains(ADMIN_TOKEN), "POST /login: no token in {}", r.text());
    ensure!(r.header("set-cookie").is_some_and(|c| c.starts_with("id_token=")), "POST /login: no cookie");

    let r = envoy.send(
        &Request::get("/nodebackend/")
            .header("cookie", &format!("id_token={ADMIN_TOKEN}"))
            .header("x-admin-id", "999"),
    )?;
    ensure!(r.status == 200, "GET /nodebackend/ with the token: status {}", r.status);
    let echo = r.echo()?;
    ensure!(echo.header("x-admin-id") == Some("1"), "x-admin-id upstream {:?}", echo.header("x-admin-id"));
    ensure!(echo.header("x-admin-email") == Some("admin@qq.com"), "x-admin-email missing");

    let r = envoy.get("/nodebackend/")?;
    ensure!(r.status == 401, "GET /nodebackend/ without a token: status {}", r.status);
    ensure!(r.text().contains("No token!"), "401 body {}", r.text());

    let r = envoy.get("/orders/12345/items?page=2")?;
    ensure!(r.status == 200, "GET /orders/12345/items: status {}", r.status);

    // header-rewrite's rule counters reach Envoy from its 1 s tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let wanted = [
        // hello sees the requests ext-auth lets through: the login's 201 and the 401 are answers
        // from the auth service, which ext-auth counts as denials.
        "hello_requests_total{method=\"GET\"} 4",
        "ext_auth_checks_total{result=\"allowed\"} 1",
        "ext_auth_checks_total{result=\"denied\"} 2",
        "header_rewrite_rules_applied_total{rule=\"api\"} 1",
        "gatewasm_http_requests_total{host=\"shop.example.com\",path=\"/api/*\",method=\"GET\",code=\"200\"} 1",
        "gatewasm_http_requests_total{host=\"other\",path=\"/admin/settings\",method=\"GET\",code=\"403\"} 1",
        "gatewasm_http_requests_total{host=\"other\",path=\"/orders/{id}/items\",method=\"GET\",code=\"200\"} 1",
    ];
    loop {
        let scrape = envoy.admin_get("/stats/prometheus")?;
        let missing: Vec<&str> = wanted.iter().copied().filter(|w| !scrape.contains(w)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "metrics missing: {missing:?}\n{scrape}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn banner(listener: u16, admin: u16) -> String {
    format!(
        r#"
gatewasm demo gateway: Envoy on 127.0.0.1:{listener} (admin 127.0.0.1:{admin}), filters http-metrics,
ext-auth, hello and header-rewrite, in front of an echo upstream that answers with the request it
received, and an auth service for ext-auth.

  # header-rewrite: /api/* goes upstream as /v2/* with Host backend.internal, x-debug removed,
  # x-gateway added, x-envoy-original-path kept; the answer carries x-served-by.
  # hello: x-greeting names the host.
  curl -si 'localhost:{listener}/api/users?id=7' -H 'Host: Shop.Example.com' -H 'x-debug: 1'

  # hello: paths under /admin are refused with the SDK's JSON reply.
  curl -si localhost:{listener}/admin/settings

  # ext-auth: the login is answered by the auth service itself: 201, the token and its cookie.
  curl -si -X POST localhost:{listener}/login -u admin@qq.com:123

  # ext-auth: with the token the upstream gets x-admin-id/x-admin-email from the auth service;
  # the client's forged x-admin-id is removed. Without a token, the service's 401 reaches you.
  curl -si localhost:{listener}/nodebackend/ -H 'Cookie: id_token={ADMIN_TOKEN}' -H 'x-admin-id: 999'
  curl -si localhost:{listener}/nodebackend/

  # http-metrics: numbers in paths become {{id}}, the query never reaches a label.
  curl -s 'localhost:{listener}/orders/12345/items?page=2' -o /dev/null

  # Per-host/route/method/code series, per-method and per-rule counters, as Prometheus labels.
  curl -s localhost:{admin}/stats/prometheus | grep -E '^(gatewasm_http_requests_total|ext_auth_checks|hello|header_rewrite)'

Ctrl-C stops the gateway.
"#
    )
}

fn main() -> anyhow::Result<()> {
    let check_only = std::env::args().any(|a| a == "--check");
    let (listener, admin) = if check_only {
        (0, 0)
    } else {
        (port("GATEWASM_DEMO_PORT", DEFAULT_PORT)?, port("GATEWASM_DEMO_ADMIN_PORT", DEFAULT_ADMIN_PORT)?)
    };
    let upstream = EchoUpstream::start()?;
    let auth = AuthService::start()?;
    let envoy = start(listener, admin, &upstream, &auth)?;
    if check_only {
        check(&envoy)?;
        println!("demo check: 1 passed, 0 failed");
        return Ok(());
    }
    print!("{}", banner(envoy.listener_addr().port(), envoy.admin_addr().port()));
    // Envoy is tied to this process (it dies with it), so waiting is all there is to do.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
