//! The demo gateway: Envoy with the project's filters, in front of an echo upstream that answers
//! every request with what it received, so each filter's effect is visible with `curl`.
//!
//! `gatewasm-demo` runs until interrupted; `gatewasm-demo --check` sends the printed requests
//! itself, checks the answers and exits (the test suite runs it, so the README's lines stay true).
//! `--native` runs the same filters, from the same source, as native Envoy dynamic modules.
//! The filters' configurations and the checks are in the library (`src/lib.rs`), which
//! `tests/chain.rs` also runs against the emulator's chain of the same modules.

use std::time::Duration;

use anyhow::Context;
use gatewasm_demo::{
    check, filters, parse_prometheus, same_labels, DemoGateway, AUTH_CLUSTER, BRIDGE_CLUSTER, DEMO_JWT,
    STATS_TAGS,
};
use gatewasm_envoy::auth_service::{AuthService, ADMIN_TOKEN};
use gatewasm_envoy::{
    target_dir, Cluster, EchoUpstream, Envoy, EnvoyBuilder, LocalProcess, Request, Response, Target,
};
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
    let tags: Vec<_> =
        STATS_TAGS.iter().map(|t| json!({"tag_name": t, "regex": format!("(;{t}=([^;]*))")})).collect();
    let mut builder = EnvoyBuilder::new();
    for f in filters() {
        builder = builder.filter(target.filter(f.package, f.name, &f.config)?);
    }
    builder
        .upstream(services.upstream.addr())
        .cluster(Cluster::new(AUTH_CLUSTER, services.auth.addr()))
        .cluster(Cluster::new(BRIDGE_CLUSTER, services.bridge.addr()))
        .listener_port(listener)
        .admin_port(admin)
        .log_level("warning")
        .bootstrap_patch(json!({"stats_config": {"stats_tags": tags}}))
        .start()
}

/// The demo's checks against the real Envoy: its Prometheus counters, the bridge's file.
struct EnvoyDemo<'a> {
    envoy: &'a Envoy,
    access_log: &'a std::path::Path,
}

impl DemoGateway for EnvoyDemo<'_> {
    fn send(&mut self, request: &Request) -> anyhow::Result<Response> {
        self.envoy.send(request)
    }

    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<u64>> {
        let scrape = self.envoy.admin_get("/stats/prometheus")?;
        Ok(parse_prometheus(&scrape)
            .into_iter()
            .find(|s| s.name == name && same_labels(&s.labels, labels))
            .map(|s| s.value))
    }

    fn access_log(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.access_log).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| r.get("value").cloned().unwrap_or(r))
            .collect())
    }

    fn wait(&mut self, time: Duration) -> anyhow::Result<()> {
        std::thread::sleep(time);
        Ok(())
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
        check(&mut EnvoyDemo { envoy: &envoy, access_log: &access_log })?;
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
