//! The demo gateway's filters and the checks of what it answers, shared by the two gateways
//! that run them: a real Envoy (`gatewasm-demo --check`, `src/main.rs`) and the emulator's
//! chain (`tests/chain.rs`). Both go through [`DemoGateway`], so the same requests must get
//! the same answers from each.

use std::time::Duration;

use anyhow::ensure;
use gatewasm_envoy::auth_service::ADMIN_TOKEN;
use gatewasm_envoy::{Request, Response};
use serde_json::{json, Value};

/// An HS256 token for the demo secret: `{"name":"Admin","email":"admin@qq.com","id":1}`, valid
/// until 2100.
pub const DEMO_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiQWRtaW4iLCJlbWFpbCI6ImFkbWluQHFxLmNvbSIsImlkIjoxLCJpYXQiOjE3NjQwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.iK8q66hzQBfVMzUR11JlMVw-PCysHjJTqkOl1TiVp90";

/// The cluster of ext-auth's auth service.
pub const AUTH_CLUSTER: &str = "ext_auth";
/// The cluster of kafka-log's Kafka bridge.
pub const BRIDGE_CLUSTER: &str = "kafka-bridge";
/// The tags Envoy extracts from the filters' `name;tag=value` metric names (its
/// `stats_config.stats_tags`), which become Prometheus labels.
pub const STATS_TAGS: [&str; 9] =
    ["host", "path", "method", "code", "rule", "limit", "result", "provider", "reason"];

/// One filter of the demo chain.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoFilter {
    /// The Cargo package that builds it.
    pub package: &'static str,
    /// Its plugin name (Wasm) and filter name (native).
    pub name: &'static str,
    /// Its configuration.
    pub config: Value,
}

/// The seven filters in chain order, with their configurations.
pub fn filters() -> Vec<DemoFilter> {
    vec![
        // Measures every request as it arrived, before the others act on it: known hosts keep
        // their name, /api/* is one route, other paths are normalised ({id} for numbers, UUIDs,
        // hex).
        DemoFilter {
            package: "http-metrics",
            name: "http_metrics",
            config: json!({"hosts": ["shop.example.com"], "routes": [{"prefix": "/api/"}]}),
        },
        // /jwt/* needs a token signed with the demo secret, from the id_token cookie, a bearer
        // header or ?token=; its id and email claims go upstream as x-user-id / x-user-email.
        // Each filter removes client copies of the identity headers it sets from every request,
        // so the two identity sources of this demo use different headers (ext-auth owns
        // x-admin-*).
        DemoFilter {
            package: "jwt-auth",
            name: "jwt_auth",
            config: json!({
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
                    // A valid token is not enough here: it must grant this scope (the demo's
                    // does not).
                    {"match": {"prefix": "/jwt/billing/"}, "requires": {"provider_name": "login", "scopes": ["billing:read"]}},
                    {"match": {"prefix": "/jwt/"}, "requires": {"provider_name": "login"}}
                ]
            }),
        },
        // /limited/*: 5 requests a minute per client address (a bucket of 5, refilled at 5 a
        // minute), counted by every worker together; the RateLimit fields on every counted
        // response.
        DemoFilter {
            package: "rate-limit",
            name: "rate_limit",
            config: json!({
                "domain": "demo", "response_headers": "always",
                "rules": [{"name": "demo", "match": {"prefix": "/limited/"}, "limits": [
                    {"name": "per-client", "descriptors": ["client_address"], "token_bucket": {"rate": 5, "per": "minute"}}
                ]}]
            }),
        },
        // The login and /nodebackend/ are asked of the auth service (the user story's
        // Ambassador AuthService setup); everything else passes unchecked.
        DemoFilter {
            package: "ext-auth",
            name: "ext_auth",
            config: json!({
                "cluster": AUTH_CLUSTER, "path_prefix": "/extauth", "timeout_ms": 1000,
                "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
                "default": "skip",
                "rules": [
                    {"name": "login", "match": {"path": {"exact": "/login"}, "methods": ["POST"]}, "action": "check"},
                    {"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}
                ]
            }),
        },
        DemoFilter {
            package: "hello",
            name: "hello",
            config: json!({"greeting": "hello from", "blocked_prefix": "/admin"}),
        },
        DemoFilter {
            package: "header-rewrite",
            name: "header_rewrite",
            config: json!({
                "rules": [{
                    "name": "api",
                    "match": {"path": {"prefix": "/api/"}},
                    "host_rewrite": "backend.internal",
                    "path_rewrite": {"prefix": "/v2/"},
                    "request": {"remove": ["x-debug"], "set": [{"name": "x-gateway", "value": "gatewasm"}]},
                    "response": {"set": [{"name": "x-served-by", "value": "gatewasm %METHOD% %PATH%"}]}
                }]
            }),
        },
        // Last in the chain: one JSON record per request, batched to the bridge from the root
        // context's tick; the client's Authorization is copied as [REDACTED].
        DemoFilter {
            package: "kafka-log",
            name: "kafka_log",
            config: json!({
                "cluster": BRIDGE_CLUSTER, "topic": "access-logs", "key_field": "request_id",
                "flush_interval_ms": 200,
                "fields": {"request_headers": {"auth": "authorization"}, "values": {"gateway": "gatewasm-demo"}}
            }),
        },
    ]
}

/// A gateway running the demo's filters in front of the echo upstream, with the auth service
/// on [`AUTH_CLUSTER`] and the Kafka bridge on [`BRIDGE_CLUSTER`].
pub trait DemoGateway {
    /// Sends a request as the client does and returns what it received.
    fn send(&mut self, request: &Request) -> anyhow::Result<Response>;

    /// A counter's value by its Prometheus name and labels (in any order); `None` while it
    /// does not exist.
    fn counter(&mut self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<u64>>;

    /// The access-log records the Kafka bridge has received so far (each record's value).
    fn access_log(&mut self) -> anyhow::Result<Vec<Value>>;

    /// Lets `time` pass (real or virtual), for what the filters do on their ticks.
    fn wait(&mut self, time: Duration) -> anyhow::Result<()>;

    /// A `GET`.
    fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.send(&Request::get(path))
    }
}

/// How long the checks wait for what filters send from their ticks (metrics, access logs).
const PATIENCE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

/// Sends the requests the banner shows and checks what each filter did.
pub fn check(gw: &mut impl DemoGateway) -> anyhow::Result<()> {
    let r =
        gw.send(&Request::get("/api/users?id=7").header("host", "Shop.Example.com").header("x-debug", "1"))?;
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

    let r = gw.get("/admin/settings")?;
    ensure!(r.status == 403, "GET /admin/settings: status {}", r.status);
    ensure!(r.json()?.get("code").and_then(|c| c.as_str()) == Some("blocked_path"), "403 body {}", r.text());

    for (how, request) in [
        ("cookie", Request::get("/jwt/profile").header("cookie", &format!("id_token={DEMO_JWT}"))),
        ("bearer", Request::get("/jwt/profile").header("authorization", &format!("Bearer {DEMO_JWT}"))),
        ("query", Request::get(&format!("/jwt/profile?token={DEMO_JWT}"))),
    ] {
        let r = gw.send(&request.header("x-user-id", "999"))?;
        ensure!(r.status == 200, "GET /jwt/profile with a {how} token: status {} {}", r.status, r.text());
        let echo = r.echo()?;
        ensure!(echo.header("x-user-id") == Some("1"), "{how}: x-user-id {:?}", echo.header("x-user-id"));
        ensure!(echo.header("x-user-email") == Some("admin@qq.com"), "{how}: x-user-email missing");
    }
    let r = gw.send(&Request::get("/jwt/billing/").header("authorization", &format!("Bearer {DEMO_JWT}")))?;
    ensure!(
        r.status == 403
            && r.header("www-authenticate").is_some_and(|w| w.ends_with("error=\"insufficient_scope\"")),
        "GET /jwt/billing/ with a token lacking the scope: status {} {:?}",
        r.status,
        r.header("www-authenticate")
    );
    let r = gw.get("/jwt/profile")?;
    ensure!(r.status == 401, "GET /jwt/profile without a token: status {}", r.status);
    ensure!(
        r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer realm=")),
        "no WWW-Authenticate"
    );

    let r = gw.send(
        &Request::post("/login", Vec::new()).header("authorization", "Basic YWRtaW5AcXEuY29tOjEyMw=="),
    )?;
    ensure!(r.status == 201, "POST /login: status {} {}", r.status, r.text());
    ensure!(r.text().contains(ADMIN_TOKEN), "POST /login: no token in {}", r.text());
    ensure!(r.header("set-cookie").is_some_and(|c| c.starts_with("id_token=")), "POST /login: no cookie");

    let r = gw.send(
        &Request::get("/nodebackend/")
            .header("cookie", &format!("id_token={ADMIN_TOKEN}"))
            .header("x-admin-id", "999"),
    )?;
    ensure!(r.status == 200, "GET /nodebackend/ with the token: status {}", r.status);
    let echo = r.echo()?;
    ensure!(echo.header("x-admin-id") == Some("1"), "x-admin-id upstream {:?}", echo.header("x-admin-id"));
    ensure!(echo.header("x-admin-email") == Some("admin@qq.com"), "x-admin-email missing");

    let r = gw.get("/nodebackend/")?;
    ensure!(r.status == 401, "GET /nodebackend/ without a token: status {}", r.status);
    ensure!(r.text().contains("No token!"), "401 body {}", r.text());

    let r = gw.get("/orders/12345/items?page=2")?;
    ensure!(r.status == 200, "GET /orders/12345/items: status {}", r.status);

    let r = gw.send(
        &Request::get("/api/orders/7")
            .header("host", "shop.example.com")
            .header("authorization", "Bearer s3cret"),
    )?;
    ensure!(r.status == 200, "GET /api/orders/7: status {}", r.status);
    check_access_log(gw)?;

    let statuses: Vec<u16> =
        (0..7).map(|_| gw.get("/limited/").map(|r| r.status)).collect::<anyhow::Result<_>>()?;
    ensure!(statuses == [200, 200, 200, 200, 200, 429, 429], "GET /limited/ seven times: {statuses:?}");
    let r = gw.get("/limited/")?;
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

    check_metrics(gw)
}

/// The counters the requests above leave (header-rewrite's rule counters reach the host from
/// its 1 s tick).
fn check_metrics(gw: &mut impl DemoGateway) -> anyhow::Result<()> {
    type Wanted<'a> = (&'a str, &'a [(&'a str, &'a str)], u64);
    let wanted: [Wanted<'_>; 9] = [
        // hello sees the requests ext-auth lets through: the login's 201 and the 401 are
        // answers from the auth service, which ext-auth counts as denials.
        ("hello_requests_total", &[("method", "GET")], 13),
        ("ext_auth_checks_total", &[("result", "allowed")], 1),
        ("ext_auth_checks_total", &[("result", "denied")], 2),
        ("header_rewrite_rules_applied_total", &[("rule", "api")], 2),
        ("rate_limit_requests_total", &[("rule", "demo"), ("limit", "per-client"), ("result", "allowed")], 5),
        ("rate_limit_requests_total", &[("rule", "demo"), ("limit", "per-client"), ("result", "limited")], 3),
        (
            "gatewasm_http_requests_total",
            &[("host", "shop.example.com"), ("path", "/api/*"), ("method", "GET"), ("code", "200")],
            2,
        ),
        (
            "gatewasm_http_requests_total",
            &[("host", "other"), ("path", "/admin/settings"), ("method", "GET"), ("code", "403")],
            1,
        ),
        (
            "gatewasm_http_requests_total",
            &[("host", "other"), ("path", "/orders/{id}/items"), ("method", "GET"), ("code", "200")],
            1,
        ),
    ];
    let mut waited = Duration::ZERO;
    loop {
        let mut wrong = Vec::new();
        for (name, labels, value) in wanted {
            let got = gw.counter(name, labels)?;
            if got != Some(value) {
                wrong.push(format!("{name}{labels:?}: {got:?}, wanted {value}"));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        ensure!(waited < PATIENCE, "metrics: {wrong:?}");
        gw.wait(POLL)?;
        waited += POLL;
    }
}

/// kafka-log's record of the last request reaches the bridge within a flush or two.
fn check_access_log(gw: &mut impl DemoGateway) -> anyhow::Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        let records = gw.access_log()?;
        let found = records.iter().find(|r| r.get("path").and_then(|p| p.as_str()) == Some("/api/orders/7"));
        if let Some(record) = found {
            ensure!(record["auth"] == "[REDACTED]", "Authorization not redacted: {record}");
            // As Envoy's %REQ(:AUTHORITY)%: the host header-rewrite set; the path is the original.
            ensure!(record["authority"] == "backend.internal", "authority: {record}");
            ensure!(record["response_code"] == 200, "response_code: {record}");
            ensure!(record["gateway"] == "gatewasm-demo", "gateway: {record}");
            return Ok(());
        }
        ensure!(waited < PATIENCE, "no record for /api/orders/7 in {records:?}");
        gw.wait(POLL)?;
        waited += POLL;
    }
}

/// One sample of Envoy's `/stats/prometheus` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The series name.
    pub name: String,
    /// Its labels, in the order Envoy printed them.
    pub labels: Vec<(String, String)>,
    /// Its value (counters and gauges; other samples are skipped).
    pub value: u64,
}

/// The integer samples of Envoy's `/stats/prometheus` text. Written here rather than with the
/// parser the tests use (`openmetrics-parser`, LGPL-3.0), which stays out of every binary the
/// project builds; the demo's check needs only integer counters.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
            None => (series, Vec::new()),
        };
        out.push(Sample { name: name.to_string(), labels, value });
    }
    out
}

/// `k="v",k2="v2"` (values with `\"` and `\\` escapes).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = after.get(end..).unwrap_or_default();
    }
    out
}

/// Whether a sample's labels are exactly `wanted`, in any order.
pub fn same_labels(labels: &[(String, String)], wanted: &[(&str, &str)]) -> bool {
    labels.len() == wanted.len()
        && wanted.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn prometheus_samples_parse_with_their_labels() {
        let text = "# TYPE x counter\nhello_requests_total{method=\"GET\"} 13\nplain 2\nq{path=\"/a,\\\"b\",code=\"200\"} 1\n";
        let samples = parse_prometheus(text);
        assert_eq!(samples.len(), 3);
        assert!(same_labels(&samples[0].labels, &[("method", "GET")]));
        assert_eq!(samples[0].value, 13);
        assert_eq!(samples[1], Sample { name: "plain".to_string(), labels: Vec::new(), value: 2 });
        assert!(same_labels(&samples[2].labels, &[("code", "200"), ("path", "/a,\"b")]));
    }
}
