//! The demo gateway: Envoy with the project's filters, in front of an echo upstream that answers
//! every request with what it received, so each filter's effect is visible with `curl`.
//!
//! `gatewasm-demo` runs until interrupted; `gatewasm-demo --check` sends the printed requests
//! itself, checks the answers and exits (the test suite runs it, so the README's lines stay true).
//! `--native` runs the same filters, from the same source, as native Envoy dynamic modules.

use std::time::Duration;

use anyhow::{ensure, Context};
use gatewasm_envoy::auth_service::{AuthService, ADMIN_TOKEN};
use gatewasm_envoy::{target_dir, Cluster, EchoUpstream, Envoy, EnvoyBuilder, LocalProcess, Request, Target};
use serde_json::json;

/// An HS256 token for the demo secret: `{"name":"Admin","email":"admin@qq.com","id":1}`, valid
/// until 2100.
const DEMO_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiQWRtaW4iLCJlbWFpbCI6ImFkbWluQHFxLmNvbSIsImlkIjoxLCJpYXQiOjE3NjQwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.iK8q66hzQBfVMzUR11JlMVw-PCysHjJTqkOl1TiVp90";

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

/// The services the filters call: the auth service for ext-auth, the Kafka bridge for kafka-log.
struct Services {
    upstream: EchoUpstream,
    auth: AuthService,
    bridge: LocalProcess,
}

/// Starts the Kafka bridge without brokers: it appends each record to `log` as a JSON line.
fn start_bridge(log: &std::path::Path) -> anyhow::Result<LocalProcess> {
    let args = ["--listen".into(), "{addr}".into(), "--output".into(), log.display().to_string()];
    LocalProcess::start(
        &target_dir().join("release/gatewasm-kafka-bridge"),
        &args,
        Some("cargo build --release -p gatewasm-kafka-bridge"),
        None,
    )
}

/// Starts Envoy with the seven filters built for `target`: Wasm modules in Envoy's V8, or native
/// Envoy dynamic modules (`--native`).
fn start(target: Target, listener: u16, admin: u16, services: &Services) -> anyhow::Result<Envoy> {
    let header_rewrite = target.filter(
        "header-rewrite",
        "header_rewrite",
        &json!({
            "rules": [{
                "name": "api",
                "match": {"path": {"prefix": "/api/"}},
                "host_rewrite": "backend.internal",
                "path_rewrite": {"prefix": "/v2/"},
                "request": {"remove": ["x-debug"], "set": [{"name": "x-gateway", "value": "gatewasm"}]},
                "response": {"set": [{"name": "x-served-by", "value": "gatewasm %METHOD% %PATH%"}]}
            }]
        }),
    )?;
    let hello =
        target.filter("hello", "hello", &json!({"greeting": "hello from", "blocked_prefix": "/admin"}))?;
    // Measures every request as it arrived, before the others act on it: known hosts keep their
    // name, /api/* is one route, other paths are normalised ({id} for numbers, UUIDs, hex).
    let http_metrics = target.filter(
        "http-metrics",
        "http_metrics",
        &json!({"hosts": ["shop.example.com"], "routes": [{"prefix": "/api/"}]}),
    )?;
    // /jwt/* needs a token signed with the demo secret, from the id_token cookie, a bearer header
    // or ?token=; its id and email claims go upstream as x-user-id / x-user-email. Each filter
    // removes client copies of the identity headers it sets from every request, so the two
    // identity sources of this demo use different headers (ext-auth owns x-admin-*).
    let jwt_auth = target.filter(
        "jwt-auth",
        "jwt_auth",
        &json!({
            "providers": {"login": {
                "keys": [{"secret": "gatewasm-demo-secret-change-me-0123456789"}],
                "from_cookies": ["id_token"],
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["token"],
                "claim_to_headers": [
                    {"header_name": "x-user-id", "claim_name": "id"},
                    {"header_name": "x-user-email", "claim_name": "email"}
                ]
            }},
            "rules": [
                // A valid token is not enough here: it must grant this scope (the demo's does not).
                {"match": {"prefix": "/jwt/billing/"}, "requires": {"provider_name": "login", "scopes": ["billing:read"]}},
                {"match": {"prefix": "/jwt/"}, "requires": {"provider_name": "login"}}
            ]
        }),
    )?;
    // The login and /nodebackend/ are asked of the auth service (the user story's Ambassador
    // AuthService setup); everything else passes unchecked.
    let ext_auth = target.filter(
        "ext-auth",
        "ext_auth",
        &json!({
            "cluster": "ext_auth", "path_prefix": "/extauth", "timeout_ms": 1000,
            "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
            "default": "skip",
            "rules": [
                {"name": "login", "match": {"path": {"exact": "/login"}, "methods": ["POST"]}, "action": "check"},
                {"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}
            ]
        }),
    )?;
    // /limited/*: 5 requests a minute per client address (a bucket of 5, refilled at 5 a minute),
    // counted by every worker together; the RateLimit fields on every counted response.
    let rate_limit = target.filter(
        "rate-limit",
        "rate_limit",
        &json!({
            "domain": "demo", "response_headers": "always",
            "rules": [{"name": "demo", "match": {"prefix": "/limited/"}, "limits": [
                {"name": "per-client", "descriptors": ["client_address"], "token_bucket": {"rate": 5, "per": "minute"}}
            ]}]
        }),
    )?;
    // Last in the chain: one JSON record per request, batched to the bridge from the root
    // context's tick; the client's Authorization is copied as [REDACTED].
    let kafka_log = target.filter(
        "kafka-log",
        "kafka_log",
        &json!({
            "cluster": "kafka-bridge", "topic": "access-logs", "key_field": "request_id",
            "flush_interval_ms": 200,
            "fields": {"request_headers": {"auth": "authorization"}, "values": {"gateway": "gatewasm-demo"}}
        }),
    )?;
    let tags: Vec<_> = ["host", "path", "method", "code", "rule", "limit", "result", "provider", "reason"]
        .iter()
        .map(|t| json!({"tag_name": t, "regex": format!("(;{t}=([^;]*))")}))
        .collect();
    EnvoyBuilder::new()
        .filter(http_metrics)
        .filter(jwt_auth)
        .filter(rate_limit)
        .filter(ext_auth)
        .filter(hello)
        .filter(header_rewrite)
        .filter(kafka_log)
        .upstream(services.upstream.addr())
        .cluster(Cluster::new("ext_auth", services.auth.addr()))
        .cluster(Cluster::new("kafka-bridge", services.bridge.addr()))
        .listener_port(listener)
        .admin_port(admin)
        .log_level("warning")
        .bootstrap_patch(json!({"stats_config": {"stats_tags": tags}}))
        .start()
}

/// Sends the requests the banner shows and checks what each filter did.
fn check(envoy: &Envoy, access_log: &std::path::Path) -> anyhow::Result<()> {
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

    for (how, request) in [
        ("cookie", Request::get("/jwt/profile").header("cookie", &format!("id_token={DEMO_JWT}"))),
        ("bearer", Request::get("/jwt/profile").header("authorization", &format!("Bearer {DEMO_JWT}"))),
        ("query", Request::get(&format!("/jwt/profile?token={DEMO_JWT}"))),
    ] {
        let r = envoy.send(&request.header("x-user-id", "999"))?;
        ensure!(r.status == 200, "GET /jwt/profile with a {how} token: status {} {}", r.status, r.text());
        let echo = r.echo()?;
        ensure!(echo.header("x-user-id") == Some("1"), "{how}: x-user-id {:?}", echo.header("x-user-id"));
        ensure!(echo.header("x-user-email") == Some("admin@qq.com"), "{how}: x-user-email missing");
    }
    let r =
        envoy.send(&Request::get("/jwt/billing/").header("authorization", &format!("Bearer {DEMO_JWT}")))?;
    ensure!(
        r.status == 403
            && r.header("www-authenticate").is_some_and(|w| w.ends_with("error=\"insufficient_scope\"")),
        "GET /jwt/billing/ with a token lacking the scope: status {} {:?}",
        r.status,
        r.header("www-authenticate")
    );
    let r = envoy.get("/jwt/profile")?;
    ensure!(r.status == 401, "GET /jwt/profile without a token: status {}", r.status);
    ensure!(
        r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer realm=")),
        "no WWW-Authenticate"
    );

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

    let r = envoy.send(
        &Request::get("/api/orders/7")
            .header("host", "shop.example.com")
            .header("authorization", "Bearer s3cret"),
    )?;
    ensure!(r.status == 200, "GET /api/orders/7: status {}", r.status);
    check_access_log(access_log)?;

    let statuses: Vec<u16> =
        (0..7).map(|_| envoy.get("/limited/").map(|r| r.status)).collect::<anyhow::Result<_>>()?;
    ensure!(statuses == [200, 200, 200, 200, 200, 429, 429], "GET /limited/ seven times: {statuses:?}");
    let r = envoy.get("/limited/")?;
    ensure!(r.status == 429, "GET /limited/ again: status {}", r.status);
    ensure!(
        r.json()?.get("code").and_then(|c| c.as_str()) == Some("too_many_requests"),
        "429 body {}",
        r.text()
    );
    ensure!(r.header("retry-after").is_some(), "no Retry-After");
    ensure!(
        r.header("ratelimit-policy") == Some(r#""demo.per-client";q=5;w=60"#),
        "RateLimit-Policy {:?}",
        r.header("ratelimit-policy")
    );
    ensure!(r.header("ratelimit").is_some_and(|f| f.starts_with(r#""demo.per-client";r=0;t="#)), "RateLimit");

    // header-rewrite's rule counters reach Envoy from its 1 s tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let wanted = [
        // hello sees the requests ext-auth lets through: the login's 201 and the 401 are answers
        // from the auth service, which ext-auth counts as denials.
        "hello_requests_total{method=\"GET\"} 13",
        "ext_auth_checks_total{result=\"allowed\"} 1",
        "ext_auth_checks_total{result=\"denied\"} 2",
        "header_rewrite_rules_applied_total{rule=\"api\"} 2",
        "rate_limit_requests_total{rule=\"demo\",limit=\"per-client\",result=\"allowed\"} 5",
        "rate_limit_requests_total{rule=\"demo\",limit=\"per-client\",result=\"limited\"} 3",
        "gatewasm_http_requests_total{host=\"shop.example.com\",path=\"/api/*\",method=\"GET\",code=\"200\"} 2",
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

/// kafka-log's record of the last request reaches the bridge's file within a flush or two.
fn check_access_log(path: &std::path::Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found =
            text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|r| {
                let record = r.get("value").unwrap_or(r);
                record.get("path").and_then(|p| p.as_str()) == Some("/api/orders/7")
            });
        if let Some(found) = found {
            let record = found.get("value").unwrap_or(&found);
            ensure!(record["auth"] == "[REDACTED]", "Authorization not redacted: {found}");
            // As Envoy's %REQ(:AUTHORITY)%: the host header-rewrite set; the path is the original.
            ensure!(record["authority"] == "backend.internal", "authority: {found}");
            ensure!(record["response_code"] == 200, "response_code: {found}");
            ensure!(record["gateway"] == "gatewasm-demo", "gateway: {found}");
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no record for /api/orders/7 in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn banner(target: Target, listener: u16, admin: u16, access_log: &std::path::Path) -> String {
    let access_log = access_log.display();
    let built = match target {
        Target::Wasm => {
            "Wasm modules in Envoy's V8; ./scripts/demo --native runs the same filters as native modules"
        }
        Target::Native => "native Envoy dynamic modules (lib<filter>.so); ./scripts/demo runs them as Wasm",
    };
    format!(
        r#"
gatewasm demo gateway: Envoy on 127.0.0.1:{listener} (admin 127.0.0.1:{admin}), filters http-metrics,
jwt-auth, rate-limit, ext-auth, hello, header-rewrite and kafka-log, in front of an echo upstream that
answers with the request it received; an auth service for ext-auth; the Kafka bridge for kafka-log, writing JSON
lines to {access_log} (no Kafka needed). The filters run as {built}.

  # header-rewrite: /api/* goes upstream as /v2/* with Host backend.internal, x-debug removed,
  # x-gateway added, x-envoy-original-path kept; the answer carries x-served-by.
  # hello: x-greeting names the host.
  curl -si 'localhost:{listener}/api/users?id=7' -H 'Host: Shop.Example.com' -H 'x-debug: 1'

  # hello: paths under /admin are refused with the SDK's JSON reply.
  curl -si localhost:{listener}/admin/settings

  # jwt-auth: /jwt/* needs a token (cookie id_token, bearer or ?token=); its claims become
  # x-user-id / x-user-email upstream, the client's own copies are removed.
  TOKEN={DEMO_JWT}
  curl -si localhost:{listener}/jwt/profile -H "Cookie: id_token=$TOKEN" -H 'x-user-id: 999'
  curl -si localhost:{listener}/jwt/profile -H "Authorization: Bearer $TOKEN"
  curl -si "localhost:{listener}/jwt/profile?token=$TOKEN"
  curl -si localhost:{listener}/jwt/profile          # 401 with WWW-Authenticate
  curl -si localhost:{listener}/jwt/billing/ -H "Authorization: Bearer $TOKEN"  # 403 insufficient_scope: no billing:read scope

  # ext-auth: the login is answered by the auth service itself: 201, the token and its cookie.
  curl -si -X POST localhost:{listener}/login -u admin@qq.com:123

  # ext-auth: with the token the upstream gets x-admin-id/x-admin-email from the auth service;
  # the client's forged x-admin-id is removed. Without a token, the service's 401 reaches you.
  curl -si localhost:{listener}/nodebackend/ -H 'Cookie: id_token={ADMIN_TOKEN}' -H 'x-admin-id: 999'
  curl -si localhost:{listener}/nodebackend/

  # rate-limit: /limited/* allows 5 requests a minute per client address (5 at once, then one
  # every 12 s), counted by all workers together: five 200s, then 429 with Retry-After.
  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' localhost:{listener}/limited/; done; echo
  curl -si localhost:{listener}/limited/             # 429: JSON body, Retry-After, RateLimit-Policy, RateLimit

  # http-metrics: numbers in paths become {{id}}, the query never reaches a label.
  curl -s 'localhost:{listener}/orders/12345/items?page=2' -o /dev/null

  # kafka-log: one JSON record per request, batched to the bridge; Authorization is redacted.
  curl -s localhost:{listener}/api/orders/7 -H 'Host: shop.example.com' -H 'Authorization: Bearer s3cret' -o /dev/null
  sleep 1; tail -n 1 {access_log}

  # Per-host/route/method/code series, per-method and per-rule counters, as Prometheus labels.
  curl -s localhost:{admin}/stats/prometheus | grep -E '^(gatewasm_http_requests_total|jwt_auth|ext_auth_checks|kafka_log|hello|header_rewrite|rate_limit)'

Ctrl-C stops the gateway.
"#
    )
}

fn main() -> anyhow::Result<()> {
    let mut check_only = false;
    let mut target = Target::Wasm;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check_only = true,
            "--native" => target = Target::Native,
            other => anyhow::bail!("unknown argument {other:?} (expected --check and/or --native)"),
        }
    }
    let (listener, admin) = if check_only {
        (0, 0)
    } else {
        (port("GATEWASM_DEMO_PORT", DEFAULT_PORT)?, port("GATEWASM_DEMO_ADMIN_PORT", DEFAULT_ADMIN_PORT)?)
    };
    // The check writes its access log to a temporary directory; the demo keeps it in target/demo.
    let scratch = tempfile::tempdir()?;
    let access_log = if check_only {
        scratch.path().join("access-log.jsonl")
    } else {
        let dir = target_dir().join("demo");
        std::fs::create_dir_all(&dir)?;
        dir.join("access-log.jsonl")
    };
    let services = Services {
        upstream: EchoUpstream::start()?,
        auth: AuthService::start()?,
        bridge: start_bridge(&access_log)?,
    };
    let envoy = start(target, listener, admin, &services)?;
    if check_only {
        check(&envoy, &access_log)?;
        println!("demo check ({target:?}): 1 passed, 0 failed");
        return Ok(());
    }
    // Envoy dies with this process whatever kills it; waiting for Ctrl-C or SIGTERM instead of
    // dying of it lets the destructors stop the services and remove Envoy's temporary files.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    print!("{}", banner(target, envoy.listener_addr().port(), envoy.admin_addr().port(), &access_log));
    if let Some(signal) = signals.forever().next() {
        eprintln!("signal {signal}: stopping the gateway");
    }
    drop(envoy);
    drop(services);
    Ok(())
}
