//! End to end through Envoy 1.40: requests in, `/stats/prometheus` out, parsed with a Prometheus
//! text-format parser; each test once with the Wasm module (V8) and once with the native dynamic
//! module, one set of expectations for both. Build first: cargo build --release --target
//! wasm32-wasip1 -p http-metrics, and cargo build --release -p http-metrics

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gatewasm_envoy::{
    for_each_target, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Request, Target, NATIVE_REFUSAL,
};
use openmetrics_parser::{MetricNumber, PrometheusType, PrometheusValue};
use serde_json::{json, Value};

fn filter(target: Target, config: &Value) -> HttpFilter {
    target.filter("http-metrics", "http_metrics", config).unwrap_or_else(|e| panic!("{e:#}"))
}

for_each_target!(
    a_mix_of_hosts_and_paths_becomes_labelled_series,
    envoy_and_earlier_filter_replies_are_counted,
    ten_thousand_random_paths_and_hosts_stay_within_the_cap,
    bad_config_is_refused_with_the_field_named,
    istio_extra_stat_tags_give_the_same_labels,
    labels_are_the_request_as_it_reached_the_filter,
);

/// The shipped `stats_config`, given to Envoy exactly as the README tells users to:
/// `--config-yaml "$(cat filters/http-metrics/envoy-stats.json)"`.
fn shipped_stats_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy-stats.json")).unwrap()
}

/// Envoy with the filter and the shipped stats settings; histograms merged every 100 ms so a
/// scrape sees them quickly (Envoy's default is every 5 s).
fn envoy(target: Target, config: &Value, upstream: &EchoUpstream, workers: u32) -> Envoy {
    EnvoyBuilder::new()
        .filter(filter(target, config))
        .upstream(upstream.addr())
        .concurrency(workers)
        .arg("--config-yaml")
        .arg(&shipped_stats_config())
        .bootstrap_patch(json!({"stats_flush_interval": "0.100s"}))
        .start()
        .unwrap()
}

/// One parsed sample: its labels and value.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Number(f64),
    Histogram { count: u64, buckets: Vec<(f64, f64)> },
}

/// Every family of the scrape by name: its type and samples (labels → value).
type Families = BTreeMap<String, (PrometheusType, Vec<(BTreeMap<String, String>, Val)>)>;

fn number(n: &MetricNumber) -> f64 {
    n.as_f64()
}

fn scrape(envoy: &Envoy) -> Families {
    let text = envoy.admin_get("/stats/prometheus").unwrap();
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("Envoy's /stats/prometheus does not parse: {e:?}\n{text}"));
    let mut out = Families::new();
    for (name, family) in exposition.families {
        let samples = family
            .iter_samples()
            .map(|s| {
                let labels: BTreeMap<String, String> =
                    s.get_labelset().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let value = match &s.value {
                    PrometheusValue::Counter(c) => Val::Number(number(&c.value)),
                    PrometheusValue::Gauge(g) | PrometheusValue::Unknown(g) => Val::Number(number(g)),
                    PrometheusValue::Histogram(h) => Val::Histogram {
                        count: h.count.unwrap_or(0),
                        buckets: h.buckets.iter().map(|b| (b.upper_bound, number(&b.count))).collect(),
                    },
                    PrometheusValue::Summary(_) => Val::Number(f64::NAN),
                };
                (labels, value)
            })
            .collect();
        out.insert(name, (family.family_type.clone(), samples));
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Counter samples of a family, by label set.
fn counters(f: &Families, name: &str) -> BTreeMap<BTreeMap<String, String>, u64> {
    let Some((kind, samples)) = f.get(name) else { return BTreeMap::new() };
    assert_eq!(*kind, PrometheusType::Counter, "{name}");
    samples
        .iter()
        .map(|(l, v)| match v {
            Val::Number(n) => (l.clone(), *n as u64),
            other => panic!("{name}: {other:?}"),
        })
        .collect()
}

/// A histogram's count and its buckets (upper bound, cumulative count).
type Hist = (u64, Vec<(f64, f64)>);

/// Histogram samples of a family, by label set.
fn histograms(f: &Families, name: &str) -> BTreeMap<BTreeMap<String, String>, Hist> {
    let Some((kind, samples)) = f.get(name) else { return BTreeMap::new() };
    assert_eq!(*kind, PrometheusType::Histogram, "{name}");
    samples
        .iter()
        .map(|(l, v)| match v {
            Val::Histogram { count, buckets } => (l.clone(), (*count, buckets.clone())),
            other => panic!("{name}: {other:?}"),
        })
        .collect()
}

/// Scrapes until `done` holds (counters are flushed from a 1 s tick, histograms merged every
/// 100 ms), or 10 s passed; returns the last scrape.
fn scrape_until(envoy: &Envoy, done: impl Fn(&Families) -> bool) -> Families {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = scrape(envoy);
        if done(&f) || Instant::now() > deadline {
            return f;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn total(f: &Families, name: &str) -> u64 {
    counters(f, name).values().sum()
}

fn send(envoy: &Envoy, request: Request) -> u16 {
    envoy.send(&request).unwrap().status
}

fn a_mix_of_hosts_and_paths_becomes_labelled_series(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = envoy(
        target,
        &json!({
            "hosts": ["api.example.com", "*.shop.example.com"],
            "routes": [{"template": "/users/{id}/orders/{order}"}, {"prefix": "/static/"}],
            "upstream_cluster": true
        }),
        &upstream,
        1,
    );
    for i in 0..3 {
        let r = Request::get(&format!("/users/{i}/orders/{}?token=secret", i * 7))
            .header("host", "API.example.com");
        assert_eq!(send(&envoy, r), 200);
    }
    let post = Request::post("/users/5/orders/6", "0123456789").header("host", "api.example.com");
    assert_eq!(send(&envoy, post), 200);
    for _ in 0..2 {
        assert_eq!(
            send(&envoy, Request::get("/static/app.js?v=1").header("host", "eu.shop.example.com:8080")),
            200
        );
    }
    assert_eq!(
        send(&envoy, Request::get("/items/123e4567-e89b-12d3-a456-426614174000").header("host", "evil.test")),
        200
    );
    // Label values that Envoy's own tag extractors or a naive escaping could misread.
    assert_eq!(
        send(&envoy, Request::get("/x;code=999/cache.v1/y_rq_200").header("host", "api.example.com")),
        200
    );

    // The series gauge is set by the plugin's tick, which may come after the counts (a native
    // module counts at once).
    let f = scrape_until(&envoy, |f| {
        total(f, "gatewasm_http_requests_total") == 8
            && histograms(f, "gatewasm_http_request_duration_ms").values().map(|(c, _)| c).sum::<u64>() == 8
            && matches!(f.get("gatewasm_http_series").map(|(_, s)| &s[0].1), Some(Val::Number(n)) if *n == 5.0)
    });
    let series = |host: &str, path: &str, method: &str, n: u64| {
        (
            labels(&[
                ("host", host),
                ("path", path),
                ("method", method),
                ("cluster", "upstream"),
                ("code", "200"),
            ]),
            n,
        )
    };
    let want: BTreeMap<_, _> = [
        series("api.example.com", "/users/{id}/orders/{order}", "GET", 3),
        series("api.example.com", "/users/{id}/orders/{order}", "POST", 1),
        series("*.shop.example.com", "/static/*", "GET", 2),
        series("other", "/items/{id}", "GET", 1),
        series("api.example.com", "/x%3Bcode%3D999/cache.v1/y_rq_200", "GET", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counters(&f, "gatewasm_http_requests_total"), want);

    // One histogram family each, with the same label sets and counts.
    for family in
        ["gatewasm_http_request_duration_ms", "gatewasm_http_request_bytes", "gatewasm_http_response_bytes"]
    {
        let h = histograms(&f, family);
        let counts: BTreeMap<_, _> = h.iter().map(|(l, (c, _))| (l.clone(), *c)).collect();
        assert_eq!(counts, want, "{family}");
    }
    // The request body bytes of the POST (10) fall in the shipped buckets' `le="100"`, not in
    // `le="1"`; the GETs had none.
    let bytes = histograms(&f, "gatewasm_http_request_bytes");
    let (_, post_buckets) = &bytes[&series("api.example.com", "/users/{id}/orders/{order}", "POST", 0).0];
    let bounds: Vec<f64> = post_buckets.iter().map(|(b, _)| *b).collect();
    assert_eq!(bounds, [1.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6, 1e7, 1e8, f64::INFINITY]);
    assert_eq!(post_buckets[0].1, 0.0);
    assert_eq!(post_buckets[1].1, 1.0);
    let (_, get_buckets) = &bytes[&series("api.example.com", "/users/{id}/orders/{order}", "GET", 0).0];
    assert_eq!(get_buckets[0].1, 3.0, "no body: 0 bytes, in le=1");
    // The response bytes are the echo upstream's bodies: more than 100 bytes each.
    let resp = histograms(&f, "gatewasm_http_response_bytes");
    let (_, b) = &resp[&series("other", "/items/{id}", "GET", 0).0];
    assert_eq!(b[1].1, 0.0);

    // The filter's own gauges.
    let gauge = |name: &str| match f.get(name).map(|(_, s)| &s[0].1) {
        Some(Val::Number(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(gauge("gatewasm_http_series"), 5.0);
    let memory = gauge("gatewasm_http_vm_memory_bytes");
    match target {
        // A VM's linear memory: at least one 64 KiB page.
        Target::Wasm => assert!(memory >= 65536.0, "{memory}"),
        // A native module runs in Envoy's own memory: there is no VM to report.
        Target::Native => assert_eq!(memory, 0.0),
    }
}

fn envoy_and_earlier_filter_replies_are_counted(target: Target) {
    let closed = EchoUpstream::start().unwrap().addr();
    let upstream = EchoUpstream::start().unwrap();
    let config = json!({"status": "class", "unmatched_paths": "fixed", "routes": [{"prefix": "/api/"}]});
    // An unreachable upstream: the router's own 503.
    let dead = EnvoyBuilder::new()
        .filter(filter(target, &config))
        .upstream(closed)
        .arg("--config-yaml")
        .arg(&shipped_stats_config())
        .start()
        .unwrap();
    assert_eq!(send(&dead, Request::get("/api/a")), 503);
    assert_eq!(send(&dead, Request::get("/elsewhere")), 503);
    let f = scrape_until(&dead, |f| total(f, "gatewasm_http_requests_total") == 2);
    let l = |path: &str| labels(&[("host", "other"), ("path", path), ("method", "GET"), ("code", "5xx")]);
    assert_eq!(
        counters(&f, "gatewasm_http_requests_total"),
        [(l("/api/*"), 1), (l("other"), 1)].into_iter().collect()
    );
    drop(upstream);

    // A filter before this one answers on its own (as an auth filter's 401 does): this filter's
    // request side never runs, and the request is still counted with its host and path.
    let upstream = EchoUpstream::start().unwrap();
    let guarded = EnvoyBuilder::new()
        .filter(HttpFilter::lua(
            "function envoy_on_request(h)\n  if h:headers():get(\":path\") == \"/api/private\" then\n    h:respond({[\":status\"] = \"401\"}, \"no\")\n  end\nend\n",
        ))
        .filter(filter(target, &json!({"hosts": ["api.example.com"], "routes": [{"prefix": "/api/"}]})))
        .upstream(upstream.addr())
        .arg("--config-yaml")
        .arg(&shipped_stats_config())
        .start()
        .unwrap();
    assert_eq!(send(&guarded, Request::get("/api/private").header("host", "api.example.com")), 401);
    assert_eq!(send(&guarded, Request::get("/api/public").header("host", "api.example.com")), 200);
    let f = scrape_until(&guarded, |f| total(f, "gatewasm_http_requests_total") == 2);
    let l = |code: &str| {
        labels(&[("host", "api.example.com"), ("path", "/api/*"), ("method", "GET"), ("code", code)])
    };
    assert_eq!(
        counters(&f, "gatewasm_http_requests_total"),
        [(l("401"), 1), (l("200"), 1)].into_iter().collect()
    );
}

/// 10,000 requests with random paths and hosts over two workers: the series stay within the cap
/// (shared by both workers' VMs), every request is counted, and the VMs' memory stays small.
fn ten_thousand_random_paths_and_hosts_stay_within_the_cap(target: Target) {
    const N: u64 = 10_000;
    const CAP: usize = 50;
    let upstream = EchoUpstream::start().unwrap();
    let envoy = envoy(target, &json!({"hosts": ["*.example.com"], "max_series": CAP}), &upstream, 2);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let allocated = |envoy: &Envoy| {
        let memory: Value = serde_json::from_str(&envoy.admin_get("/memory").unwrap()).unwrap();
        memory["allocated"].as_str().unwrap_or("?").to_string()
    };
    let allocated_before = allocated(&envoy);
    for _ in 0..N {
        let (a, b, c) = (next(), next(), next());
        let path = format!("/{:x}/w{}/{}?q={c}", a % 100_000, b % 1000, c % 7);
        let host = if a % 2 == 0 { format!("h{}.example.com", b % 5000) } else { format!("x{b}.test") };
        assert_eq!(send(&envoy, Request::get(&path).header("host", &host)), 200);
    }
    let f = scrape_until(&envoy, |f| total(f, "gatewasm_http_requests_total") == N);
    let series = counters(&f, "gatewasm_http_requests_total");
    assert_eq!(series.values().sum::<u64>(), N, "every request counted");
    let overflow =
        labels(&[("host", "overflow"), ("path", "overflow"), ("method", "overflow"), ("code", "overflow")]);
    assert!(series.contains_key(&overflow));
    assert_eq!(series.len(), CAP + 1, "the cap and the overflow set, across both workers");
    let overflowed = match f.get("gatewasm_http_series_overflow_total").map(|(_, s)| &s[0].1) {
        Some(Val::Number(n)) => *n as u64,
        other => panic!("{other:?}"),
    };
    assert_eq!(overflowed, series[&overflow]);
    for family in
        ["gatewasm_http_request_duration_ms", "gatewasm_http_request_bytes", "gatewasm_http_response_bytes"]
    {
        assert_eq!(histograms(&f, family).len(), CAP + 1, "{family}");
    }
    let memory = match f.get("gatewasm_http_vm_memory_bytes").map(|(_, s)| &s[0].1) {
        Some(Val::Number(n)) => *n,
        other => panic!("{other:?}"),
    };
    eprintln!(
        "after {N} requests: linear memory of the plugin's VMs (two workers and the main thread) {memory} bytes; Envoy heap allocated {allocated_before} before, {} after",
        allocated(&envoy)
    );
    assert!(memory <= 6.0 * 1024.0 * 1024.0, "the VMs hold {memory} bytes");
}

fn bad_config_is_refused_with_the_field_named(target: Target) {
    let log = EnvoyBuilder::new()
        .filter(filter(target, &json!({"hosts": ["a.example.com:80"], "max_series": 0, "colour": 1})))
        .start_expecting_failure()
        .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("http_metrics: invalid plugin configuration"))
        .unwrap_or_else(|| panic!("no configuration error in Envoy's log:\n{log}"));
    for needle in
        ["(3 errors)", "`colour`: unknown field", "`hosts[0]` = \"a.example.com:80\"", "`max_series` = 0"]
    {
        assert!(line.contains(needle), "missing {needle:?} in {line}");
    }
    match target {
        Target::Wasm => assert!(log.contains("Unable to create Wasm plugin http_metrics"), "{log}"),
        Target::Native => assert!(log.contains(NATIVE_REFUSAL), "{log}"),
    }
}

/// The `stats_config` an Istio proxy gets from Istio's bootstrap template
/// (`tools/packaging/common/envoy_bootstrap.json`) with
/// `proxy.istio.io/config: {extraStatTags: [host, path, method, code]}` and
/// `sidecar.istio.io/statsHistogramBuckets: {"wasmcustom.gatewasm_http_request_bytes": [...]}`:
/// Istio's own tags, unanchored ones included, then one `(<tag>=\.=(.*?);\.;)` per extra tag.
fn istio_stats_config() -> Value {
    let mut tags = vec![
        json!({"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"}),
        json!({"tag_name": "tcp_prefix", "regex": "^tcp\\.((.*?)\\.)\\w+?$"}),
        json!({"tag_name": "response_code", "regex": "_rq(_(\\d{3}))$"}),
        json!({"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"}),
        json!({"tag_name": "http_conn_manager_listener_prefix", "regex": "^listener(?=\\.).*?\\.http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}),
        json!({"tag_name": "http_conn_manager_prefix", "regex": "^http\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}),
        json!({"tag_name": "listener_address", "regex": "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"}),
        json!({"tag_name": "mongo_prefix", "regex": "^mongo\\.(.+?)\\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"}),
    ];
    for tag in ["host", "path", "method", "code"] {
        tags.push(json!({"tag_name": tag, "regex": format!("({tag}=\\.=(.*?);\\.;)")}));
    }
    tags.extend([
        json!({"tag_name": "cache", "regex": "(cache\\.(.+?)\\.)"}),
        json!({"tag_name": "component", "regex": "(component\\.(.+?)\\.)"}),
        json!({"tag_name": "tag", "regex": "(tag\\.(.+?);\\.)"}),
        json!({"tag_name": "wasm_filter", "regex": "(wasm_filter\\.(.+?)\\.)"}),
        json!({"tag_name": "authz_enforce_result", "regex": "rbac(\\.(allowed|denied))"}),
        json!({"tag_name": "authz_dry_run_action", "regex": "(\\.istio_dry_run_(allow|deny)_)"}),
        json!({"tag_name": "authz_dry_run_result", "regex": "(\\.shadow_(allowed|denied))"}),
    ]);
    json!({
        "stats_config": {
            "use_all_default_tags": false,
            "stats_tags": tags,
            "histogram_bucket_settings": [
                {"match": {"prefix": "wasmcustom.gatewasm_http_request_bytes"}, "buckets": [1, 100, 1000]},
                {"match": {"prefix": "dynamicmodulescustom.gatewasm_http_request_bytes"}, "buckets": [1, 100, 1000]}
            ],
            // The last prefix is what `proxyStatsMatcher: {inclusionPrefixes:
            // [dynamicmodulescustom.]}` adds: Istio's own list keeps `wasm*` stats only, and a
            // native module's are `dynamicmodulescustom.*`.
            "stats_matcher": {"inclusion_list": {"patterns": [
                {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
                {"prefix": "server"}, {"prefix": "cluster.xds-grpc"}, {"prefix": "wasm"},
                {"prefix": "component"}, {"prefix": "istio"}, {"prefix": "dynamicmodulescustom."}
            ]}}
        },
        "stats_flush_interval": "0.100s"
    })
}

/// `stat_names: istio` on an Istio-shaped proxy: the same labels through `extraStatTags`, and
/// values that Istio's own unanchored tags would otherwise cut into.
fn istio_extra_stat_tags_give_the_same_labels(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(
            target,
            &json!({
                "stat_names": "istio",
                "hosts": ["api.example.com", "cache.example.com"],
                "routes": [{"template": "/users/{id}"}]
            }),
        ))
        .upstream(upstream.addr())
        .bootstrap_patch(istio_stats_config())
        .start()
        .unwrap();
    for _ in 0..2 {
        assert_eq!(send(&envoy, Request::get("/users/7").header("host", "api.example.com")), 200);
    }
    assert_eq!(
        send(
            &envoy,
            Request::post("/component.v1/rbac.allowed/x", "abc").header("host", "cache.example.com")
        ),
        200
    );
    let f = scrape_until(&envoy, |f| {
        total(f, "gatewasm_http_requests_total") == 3
            && histograms(f, "gatewasm_http_request_bytes").values().map(|(c, _)| c).sum::<u64>() == 3
    });
    let l = |host: &str, path: &str, method: &str| {
        labels(&[("host", host), ("path", path), ("method", method), ("code", "200")])
    };
    let want: BTreeMap<_, _> = [
        (l("api.example.com", "/users/{id}", "GET"), 2),
        (l("cache%2Eexample.com", "/component%2Ev1/rbac%2Eallowed/x", "POST"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counters(&f, "gatewasm_http_requests_total"), want);
    let bytes = histograms(&f, "gatewasm_http_request_bytes");
    let (count, buckets) = &bytes[&l("cache%2Eexample.com", "/component%2Ev1/rbac%2Eallowed/x", "POST")];
    assert_eq!(*count, 1);
    let bounds: Vec<f64> = buckets.iter().map(|(b, _)| *b).collect();
    assert_eq!(bounds, [1.0, 100.0, 1000.0, f64::INFINITY], "the bucket setting matched the family's prefix");
    assert_eq!(histograms(&f, "gatewasm_http_request_duration_ms").len(), 2);
}

/// The standalone example is a valid Envoy 1.40 configuration and carries the same tags and
/// buckets as `envoy-stats.json` (which the tests above run with).
#[test]
fn standalone_example_is_valid_and_matches_the_shipped_stats_config() {
    let root = gatewasm_envoy::workspace_root();
    let out = std::process::Command::new(gatewasm_envoy::envoy_binary().unwrap())
        .args(["--mode", "validate", "-c", "filters/http-metrics/envoy.yaml"])
        .current_dir(&root)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("OK"), "{text}");

    let example = std::fs::read_to_string(root.join("filters/http-metrics/envoy.yaml")).unwrap();
    // The README shows the same bootstrap with the module where an operator installs it.
    let readme = std::fs::read_to_string(root.join("filters/http-metrics/README.md")).unwrap();
    let without_comments: String =
        example.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    let shown = without_comments.replace("target/wasm32-wasip1/release/", "/etc/envoy/");
    assert!(
        readme.contains(&format!("```yaml\n{shown}```")),
        "README.md's Standalone Envoy block differs from envoy.yaml"
    );
    let shipped: Value = serde_json::from_str(&shipped_stats_config()).unwrap();
    for tag in shipped["stats_config"]["stats_tags"].as_array().unwrap() {
        let line = format!(
            "{{tag_name: {}, regex: \"{}\"}}",
            tag["tag_name"].as_str().unwrap(),
            tag["regex"].as_str().unwrap()
        );
        assert!(example.contains(&line), "envoy.yaml lacks {line}");
    }
    for setting in shipped["stats_config"]["histogram_bucket_settings"].as_array().unwrap() {
        let prefix = setting["match"]["prefix"].as_str().unwrap();
        let buckets: Vec<String> =
            setting["buckets"].as_array().unwrap().iter().map(Value::to_string).collect();
        let block = format!("- match: {{prefix: {prefix}}}\n    buckets: [{}]", buckets.join(", "));
        assert!(example.contains(&block), "envoy.yaml lacks {block}");
    }
}

/// A filter after this one rewrites the path and host (as header-rewrite does): the labels are
/// still what the client called.
fn labels_are_the_request_as_it_reached_the_filter(target: Target) {
    let upstream = EchoUpstream::start().unwrap();
    let envoy = EnvoyBuilder::new()
        .filter(filter(target, &json!({"hosts": ["api.example.com", "backend.internal"], "routes": [{"prefix": "/api/"}]})))
        .filter(HttpFilter::lua(
            "function envoy_on_request(h)\n  h:headers():replace(\":path\", \"/v2/users\")\n  h:headers():replace(\":authority\", \"backend.internal\")\nend\n",
        ))
        .upstream(upstream.addr())
        .arg("--config-yaml")
        .arg(&shipped_stats_config())
        .start()
        .unwrap();
    let response = envoy.send(&Request::get("/api/users?id=7").header("host", "api.example.com")).unwrap();
    assert_eq!(response.echo().unwrap().path, "/v2/users", "the later filter did rewrite");
    let f = scrape_until(&envoy, |f| total(f, "gatewasm_http_requests_total") == 1);
    let want = labels(&[("host", "api.example.com"), ("path", "/api/*"), ("method", "GET"), ("code", "200")]);
    assert_eq!(counters(&f, "gatewasm_http_requests_total"), [(want, 1)].into_iter().collect());
}
