//! The bundle module in a real Envoy: the five filters configured from it share one VM per
//! worker (Envoy's own `wasm` stats), each behaves as from its own module, and a root id the
//! module lacks is refused with a log line naming it.
//! Build first: cargo build --profile bundle --target wasm32-wasip1 -p gatewasm-bundle
//! and, for the five-module comparison, each filter (scripts/lib.sh builds them all).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gatewasm_envoy::auth_service::{AuthService, ADMIN_TOKEN};
use gatewasm_envoy::{
    wasm_artifact, Cluster, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Reply, Request, ScriptedUpstream,
    Target, WasmFilter, BUNDLED,
};
use serde_json::{json, Value};

/// An HS256 token for the demo secret: `{"name":"Admin","email":"admin@qq.com","id":1}`, valid
/// until 2100.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiQWRtaW4iLCJlbWFpbCI6ImFkbWluQHFxLmNvbSIsImlkIjoxLCJpYXQiOjE3NjQwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.iK8q66hzQBfVMzUR11JlMVw-PCysHjJTqkOl1TiVp90";

/// Envoy's gauge of live V8 VMs: per distinct module and VM configuration, the base VM plus a
/// clone on the main thread and on each worker.
const ACTIVE_VMS: &str = "wasm.envoy.wasm.runtime.v8.active";

fn bundle() -> PathBuf {
    wasm_artifact("gatewasm.wasm", "gatewasm-bundle").unwrap_or_else(|e| panic!("{e:#}"))
}

/// The single-filter module of a root id (`jwt-auth` → `jwt_auth.wasm`).
fn own_module(root_id: &str) -> PathBuf {
    let (file, _) = BUNDLED.iter().find(|(_, id)| *id == root_id).unwrap();
    wasm_artifact(file, root_id).unwrap_or_else(|e| panic!("{e:#}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// Every filter from gatewasm.wasm, selected by root id.
    Bundle,
    /// Every filter from its own module.
    Modules,
    /// Every filter as its native Envoy dynamic module (`lib<filter>.so`), for the memory
    /// comparison.
    Native,
}

/// The gateway's chain, as the demo runs it: root id and configuration of each filter.
fn chain() -> Vec<(&'static str, Value)> {
    vec![
        ("http-metrics", json!({"hosts": ["shop.example.com"], "routes": [{"prefix": "/api/"}]})),
        (
            "jwt-auth",
            json!({
                "providers": {"login": {
                    "keys": [{"secret": "gatewasm-demo-secret-change-me-0123456789"}],
                    "from_cookies": ["id_token"],
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    "claim_to_headers": [
                        {"header_name": "x-user-id", "claim_name": "id"},
                        {"header_name": "x-user-email", "claim_name": "email"}
                    ]
                }},
                "rules": [{"match": {"prefix": "/jwt/"}, "requires": {"provider_name": "login"}}]
            }),
        ),
        (
            "ext-auth",
            json!({
                "cluster": "ext_auth", "path_prefix": "/extauth", "timeout_ms": 1000,
                "allowed_upstream_headers": ["x-admin-id", "x-admin-email"],
                "default": "skip",
                "rules": [{"name": "protected", "match": {"path": {"prefix": "/nodebackend/"}}, "action": "check"}]
            }),
        ),
        (
            "header-rewrite",
            json!({"rules": [{
                "name": "api",
                "match": {"path": {"prefix": "/api/"}},
                "host_rewrite": "backend.internal",
                "path_rewrite": {"prefix": "/v2/"},
                "request": {"remove": ["x-debug"], "set": [{"name": "x-gateway", "value": "gatewasm"}]}
            }]}),
        ),
        (
            "kafka-log",
            json!({"cluster": "kafka-bridge", "topic": "access-logs", "flush_interval_ms": 200,
                   "fields": {"request_headers": {"auth": "authorization"}}}),
        ),
    ]
}

fn filter(source: Source, root_id: &str, config: &Value) -> HttpFilter {
    let filter = match source {
        Source::Bundle => WasmFilter::new(bundle()).root_id(root_id),
        Source::Modules => WasmFilter::new(own_module(root_id)),
        Source::Native => {
            // The package is the root id; the plugin's name has underscores (`jwt_auth`).
            let name = root_id.replace('-', "_");
            return Target::Native.filter(root_id, &name, config).unwrap_or_else(|e| panic!("{e:#}"));
        }
    };
    HttpFilter::Wasm(filter.name(root_id).json_configuration(config))
}

struct Services {
    upstream: EchoUpstream,
    auth: AuthService,
    bridge: ScriptedUpstream,
}

impl Services {
    fn start() -> Self {
        let bridge = ScriptedUpstream::start().unwrap();
        bridge.set("/topics/access-logs", Reply::json(&json!({})));
        Services { upstream: EchoUpstream::start().unwrap(), auth: AuthService::start().unwrap(), bridge }
    }

    fn gateway(&self, filters: Vec<HttpFilter>, workers: u32) -> Envoy {
        let mut builder = EnvoyBuilder::new();
        for f in filters {
            builder = builder.filter(f);
        }
        builder
            .upstream(self.upstream.addr())
            .cluster(Cluster::new("ext_auth", self.auth.addr()))
            .cluster(Cluster::new("kafka-bridge", self.bridge.addr()))
            .concurrency(workers)
            .start()
            .unwrap()
    }

    fn chain(&self, source: Source, workers: u32) -> Envoy {
        self.gateway(chain().iter().map(|(id, config)| filter(source, id, config)).collect(), workers)
    }
}

fn active_vms(envoy: &Envoy) -> u64 {
    envoy.stat(ACTIVE_VMS).unwrap().unwrap_or_else(|| panic!("no {ACTIVE_VMS}:\n{:?}", envoy.stats()))
}

/// Sends a few requests, so every worker that takes one has its VM running.
fn warm(envoy: &Envoy) {
    for _ in 0..8 {
        assert_eq!(envoy.get("/warm").unwrap().status, 200);
    }
}

#[test]
fn the_five_filters_of_the_bundle_share_one_vm_per_worker() {
    let services = Services::start();
    for workers in [1, 2] {
        let (root_id, config) = chain().swap_remove(3);
        let one = services.gateway(vec![filter(Source::Modules, root_id, &config)], workers);
        warm(&one);
        let one_module = active_vms(&one);
        drop(one);
        // The base VM, and a clone on each thread Envoy runs filters' thread-local state on:
        // the main thread and every worker.
        assert_eq!(one_module, 2 + u64::from(workers), "the base VM, the main thread's and one per worker");

        let modules = services.chain(Source::Modules, workers);
        warm(&modules);
        let five_modules = active_vms(&modules);
        drop(modules);

        let bundled = services.chain(Source::Bundle, workers);
        warm(&bundled);
        let bundle = active_vms(&bundled);
        assert_eq!(five_modules, 5 * one_module, "{workers} workers: five modules, five VMs each");
        assert_eq!(bundle, one_module, "{workers} workers: the bundle's five filters cost one module's VMs");
        // Each filter configuration has its own root context in the shared VM.
        let log = bundled.log();
        for (root_id, _) in chain() {
            assert!(!log.contains(&format!("root_id \"{root_id}\" names no plugin")), "{log}");
        }
    }
}

#[test]
fn each_filter_behaves_in_the_bundle_as_in_its_own_module() {
    let services = Services::start();
    let envoy = services.chain(Source::Bundle, 2);

    // jwt-auth: a token's claims go upstream, the client's copy does not; no token, 401.
    let r = envoy
        .send(
            &Request::get("/jwt/profile")
                .header("authorization", &format!("Bearer {TOKEN}"))
                .header("x-user-id", "999"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo().unwrap();
    assert_eq!(echo.header("x-user-id"), Some("1"));
    assert_eq!(echo.header("x-user-email"), Some("admin@qq.com"));
    let r = envoy.get("/jwt/profile").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer realm=")));

    // ext-auth: the auth service's identity goes upstream; without a token its 401 comes back.
    let r = envoy
        .send(
            &Request::get("/nodebackend/")
                .header("cookie", &format!("id_token={ADMIN_TOKEN}"))
                .header("x-admin-id", "999"),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo().unwrap();
    assert_eq!(echo.header("x-admin-id"), Some("1"));
    assert_eq!(echo.header("x-admin-email"), Some("admin@qq.com"));
    let r = envoy.get("/nodebackend/").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.text().contains("No token!"), "{}", r.text());

    // header-rewrite: path and host rewritten, headers set and removed.
    let r = envoy
        .send(
            &Request::get("/api/orders/7")
                .header("host", "shop.example.com")
                .header("x-debug", "1")
                .header("authorization", "Bearer s3cret"),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let echo = r.echo().unwrap();
    assert_eq!(echo.path, "/v2/orders/7");
    assert_eq!(echo.header("host"), Some("backend.internal"));
    assert_eq!(echo.header("x-envoy-original-path"), Some("/api/orders/7"));
    assert_eq!(echo.header("x-gateway"), Some("gatewasm"));
    assert_eq!(echo.header("x-debug"), None);

    // kafka-log: the record of that request reaches the bridge, Authorization redacted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let found = services.bridge.received().iter().find_map(|req| {
            let body: Value = serde_json::from_slice(&req.body).ok()?;
            body["records"].as_array()?.iter().find(|r| r["value"]["path"] == "/api/orders/7").cloned()
        });
        if let Some(record) = found {
            break record;
        }
        assert!(Instant::now() < deadline, "no record for /api/orders/7: {:?}", services.bridge.received());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(record["value"]["auth"], "[REDACTED]", "{record}");
    assert_eq!(record["value"]["response_code"], 200, "{record}");

    // http-metrics: every request above, labelled by host, route, method and code.
    let deadline = Instant::now() + Duration::from_secs(5);
    let wanted: [&[&str]; 2] = [
        &["gatewasm_http_requests_total", "host=shop.example.com", "method=GET", "code=200"],
        &["gatewasm_http_requests_total", "host=other", "code=401"],
    ];
    loop {
        let stats = envoy.stats().unwrap();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|parts| !stats.keys().any(|k| parts.iter().all(|p| k.contains(p))))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in {:?}", stats.keys().collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_root_id_the_bundle_lacks_is_refused_naming_it_and_the_plugins() {
    let log = EnvoyBuilder::new()
        .wasm(WasmFilter::new(bundle()).root_id("jwt_auth").json_configuration(&json!({})))
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("root_id \"jwt_auth\" names no plugin of this module"), "{log}");
    assert!(log.contains("jwt-auth, ext-auth, header-rewrite, http-metrics, kafka-log"), "{log}");
}

#[test]
fn a_bad_configuration_is_refused_by_the_filter_it_selects() {
    let log = EnvoyBuilder::new()
        .wasm(
            WasmFilter::new(bundle())
                .root_id("kafka-log")
                .json_configuration(&json!({"topic": "t", "clusterr": "x"})),
        )
        .start_expecting_failure()
        .unwrap();
    assert!(log.contains("clusterr"), "{log}");
}

/// Envoy's resident memory in kB (`VmRSS` of /proc/<pid>/status).
fn rss_kb(envoy: &Envoy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy.pid().unwrap())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A measurement, not a check (run it with `--ignored --nocapture`): Envoy's RSS at 2 workers
/// bare, with the five filters as five modules, from the bundle and as five native dynamic
/// modules (`cargo build --release -p <filter>`), the median of three starts each, after every
/// worker served requests through the whole chain.
#[test]
#[ignore]
fn measure_rss_of_five_modules_and_the_bundle() {
    let services = Services::start();
    let measure = |make: &dyn Fn() -> Envoy| -> u64 {
        let mut samples: Vec<u64> = (0..3)
            .map(|_| {
                let envoy = make();
                for _ in 0..50 {
                    envoy.get("/api/orders/7").unwrap();
                }
                std::thread::sleep(Duration::from_secs(2));
                rss_kb(&envoy)
            })
            .collect();
        samples.sort_unstable();
        samples[1]
    };
    let bare = measure(&|| services.gateway(Vec::new(), 2));
    let modules = measure(&|| services.chain(Source::Modules, 2));
    let bundle = measure(&|| services.chain(Source::Bundle, 2));
    let native = measure(&|| services.chain(Source::Native, 2));
    let mut shares = Vec::new();
    for source in [Source::Modules, Source::Native] {
        for (root_id, config) in chain() {
            let one = measure(&|| services.gateway(vec![filter(source, root_id, &config)], 2));
            shares.push(format!("{root_id} ({source:?}) +{:.1} MB", (one as f64 - bare as f64) / 1024.0));
        }
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "RSS at --concurrency 2 (median of 3): bare {:.1} MB; five modules {:.1} MB (+{:.1}); bundle {:.1} MB (+{:.1}); five native modules {:.1} MB (+{:.1}); each alone: {}",
        mb(bare),
        mb(modules),
        mb(modules) - mb(bare),
        mb(bundle),
        mb(bundle) - mb(bare),
        mb(native),
        mb(native) - mb(bare),
        shares.join(", ")
    );
    assert!(bundle < modules, "the bundle uses less memory than five modules");
    assert!(native < bundle, "native modules use less memory than the bundle");
}
