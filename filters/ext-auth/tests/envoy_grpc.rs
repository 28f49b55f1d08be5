//! The gRPC mode through a real Envoy 1.40, once with the Wasm module and once with the native
//! module, each side by side with Envoy's native `ext_authz` in gRPC mode: both Envoys in front
//! of the same tonic auth service (`authz_grpc`) and the same echo upstream, case by case (allow
//! with headers written every way a `HeaderValueOption` can say, headers removed, response
//! headers, deny with status, headers and body, the service's error status, a timeout, an
//! unknown cluster), and the `CheckRequest` each one sends.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p ext-auth, and
//! cargo build --release -p ext-auth

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod authz_grpc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use authz_grpc::AuthzServer;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use gatewasm_envoy::{
    for_each_target, EchoUpstream, Envoy, EnvoyBuilder, HttpFilter, Request, Response, Target,
};
use gatewasm_envoy::{ClosedPort, Cluster};
use serde_json::{json, Value};

for_each_target!(
    answers_match_native_ext_authz_case_by_case,
    the_check_request_carries_what_native_ext_authz_sends,
    failures_follow_the_failure_policy_as_native_ext_authz,
    the_body_reaches_the_auth_service_as_native_ext_authz_sends_it,
);

/// Every header name the scripted answers write upstream.
const WRITTEN: [&str; 9] = [
    "x-admin-id",
    "x-admin-email",
    "x-add",
    "x-set",
    "x-append",
    "x-if-absent",
    "x-overwrite",
    "x-if-exists",
    "x-existing",
];

/// The filter's configuration: the gRPC service `authz` (or `cluster`), every header the
/// answers write allowed upstream, `x-resp` and `x-resp-set` allowed on the client's response.
fn config(cluster: &str, timeout_ms: u64) -> Value {
    json!({
        "grpc_service": {"cluster": cluster, "timeout_ms": timeout_ms},
        "allowed_upstream_headers": WRITTEN,
        "allowed_client_headers_on_success": ["x-resp", "x-resp-set"],
    })
}

/// Native `ext_authz` with the same gRPC service, plus `extra` merged into its typed config.
fn native(cluster: &str, timeout_ms: u64, extra: &Value) -> HttpFilter {
    let mut json = json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": cluster},
                "timeout": format!("{}s", timeout_ms as f64 / 1000.0)
            }
        }
    });
    gatewasm_envoy::merge(&mut json, &json!({"typed_config": extra}));
    HttpFilter::Raw(json)
}

fn ours(target: Target, config: &Value) -> HttpFilter {
    let filter = target.filter("ext-auth", "ext_auth", config).unwrap_or_else(|e| panic!("{e:#}"));
    match filter {
        // Holding the headers while the body is read needs this on Wasm.
        HttpFilter::Wasm(wasm) if config.get("with_request_body").is_some() => {
            let mut json = wasm.to_json();
            gatewasm_envoy::merge(
                &mut json,
                &json!({"typed_config": {"config": {"allow_on_headers_stop_iteration": true}}}),
            );
            HttpFilter::Raw(json)
        }
        other => other,
    }
}

/// The two Envoys (this filter, then native), with the auth service's cluster `authz` (HTTP/2)
/// and a closed port as `refused` (kept closed while they run).
struct Pair {
    envoys: [Envoy; 2],
    _closed: ClosedPort,
}

impl std::ops::Deref for Pair {
    type Target = [Envoy; 2];
    fn deref(&self) -> &[Envoy; 2] {
        &self.envoys
    }
}

fn side_by_side(ours: HttpFilter, native: HttpFilter, authz: SocketAddr, upstream: SocketAddr) -> Pair {
    let closed = ClosedPort::new().unwrap();
    let envoys = [ours, native].map(|filter| {
        EnvoyBuilder::new()
            .filter(filter)
            .cluster(Cluster::new("authz", authz).http2())
            .cluster(Cluster::new("refused", closed.addr()).http2())
            .upstream(upstream)
            .start()
            .unwrap()
    });
    Pair { envoys, _closed: closed }
}

/// What a client and the upstream saw of one request: the status, each written header's lines
/// upstream (empty when the request never went up), `x-remove-me` upstream, the client's
/// `x-resp` lines, and the denial's headers and body.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    status: u16,
    upstream: Vec<(String, Vec<String>)>,
    client: Vec<(String, Vec<String>)>,
    body: String,
}

fn outcome(response: &Response) -> Outcome {
    let upstream = match response.echo() {
        Ok(echo) => WRITTEN
            .iter()
            .chain(["x-remove-me", "x-unlisted"].iter())
            .map(|n| (n.to_string(), echo.header_all(n).iter().map(|v| v.to_string()).collect()))
            .filter(|(_, v): &(String, Vec<String>)| !v.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    };
    let client = ["x-resp", "www-authenticate", "content-type", "set-cookie"]
        .iter()
        .map(|n| (n.to_string(), response.header_all(n).iter().map(|v| v.to_string()).collect()))
        .filter(|(_, v): &(String, Vec<String>)| !v.is_empty())
        .collect();
    let body = if response.echo().is_ok() { String::new() } else { response.text() };
    Outcome { status: response.status, upstream, client, body }
}

/// Allows with headers written each way, removals and response headers; denials with and
/// without a `DeniedHttpResponse`: the client and the upstream see the same from both.
fn answers_match_native_ext_authz_case_by_case(target: Target) {
    let authz = AuthzServer::start();
    let upstream = EchoUpstream::start().unwrap();
    let envoys = side_by_side(
        ours(target, &config("authz", 1000)),
        native("authz", 1000, &json!({})),
        authz.addr(),
        upstream.addr(),
    );
    for path in ["/allow", "/ops", "/deny", "/deny-default", "/public"] {
        let request = Request::get(path).header("x-remove-me", "gone");
        let seen: Vec<Outcome> = envoys.iter().map(|e| outcome(&e.send(&request).unwrap())).collect();
        assert_eq!(seen[0], seen[1], "{path}: ext-auth, then native");
        match path {
            "/ops" => {
                let up = &seen[0].upstream;
                assert!(up.contains(&("x-add".into(), vec!["2".into()])), "{up:?}");
                assert!(up.contains(&("x-set".into(), vec!["2,3".into()])), "{up:?}");
                assert!(!up.iter().any(|(n, _)| n == "x-append" || n == "x-remove-me"), "{up:?}");
                assert!(seen[0].client.contains(&("x-resp".into(), vec!["r1".into(), "r2".into()])));
            }
            "/deny" => assert_eq!((seen[0].status, seen[0].body.as_str()), (401, r#"{"error":"no token"}"#)),
            "/deny-default" => assert_eq!((seen[0].status, seen[0].body.as_str()), (403, "")),
            _ => assert_eq!(seen[0].status, 200),
        }
    }
    // The response header set twice with `append: false` is set once.
    let set: Vec<Vec<String>> = envoys
        .iter()
        .map(|e| e.get("/ops").unwrap().header_all("x-resp-set").iter().map(|v| v.to_string()).collect())
        .collect();
    assert_eq!(set[0], set[1], "ext-auth, then native");

    // The differences: the client's copy of a header the auth service may write never reaches
    // the upstream, nor does a header the filter is not configured to pass on.
    let spoofed = Request::get("/public").header("x-existing", "client");
    let seen: Vec<Outcome> = envoys.iter().map(|e| outcome(&e.send(&spoofed).unwrap())).collect();
    assert!(seen[0].upstream.is_empty(), "ext-auth: {:?}", seen[0]);
    assert_eq!(seen[1].upstream, [("x-existing".to_string(), vec!["client".to_string()])], "native");
    let seen: Vec<Outcome> = envoys.iter().map(|e| outcome(&e.get("/unlisted").unwrap())).collect();
    assert_eq!(seen[0].upstream, [("x-admin-id".to_string(), vec!["1".to_string()])], "ext-auth");
    assert!(seen[1].upstream.contains(&("x-unlisted".to_string(), vec!["u".to_string()])), "native");
}

fn http(check: &CheckRequest) -> HttpRequest {
    check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.clone()).unwrap()
}

/// `(address, port)` of the source (`true`) or destination peer.
fn peer(check: &CheckRequest, source: bool) -> (String, u32) {
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    let attributes = check.attributes.as_ref().unwrap();
    let peer = if source { &attributes.source } else { &attributes.destination };
    match peer.as_ref().and_then(|p| p.address.as_ref()).and_then(|a| a.address.as_ref()) {
        Some(Address::SocketAddress(s)) => match s.port_specifier {
            Some(PortSpecifier::PortValue(port)) => (s.address.clone(), port),
            _ => (s.address.clone(), 0),
        },
        other => panic!("no socket address: {other:?}"),
    }
}

/// The `CheckRequest`s of one request through both: the same method, path, host, scheme,
/// protocol and header map (pseudo-headers included, a repeated header joined with `,`), the
/// client's address, the listener's address and port, and the time; `id` is Envoy's stream id
/// natively and the `x-request-id` here.
fn the_check_request_carries_what_native_ext_authz_sends(target: Target) {
    let authz = AuthzServer::start();
    let upstream = EchoUpstream::start().unwrap();
    let envoys = side_by_side(
        ours(target, &config("authz", 1000)),
        native("authz", 1000, &json!({})),
        authz.addr(),
        upstream.addr(),
    );
    let mut checks = Vec::new();
    for envoy in envoys.iter() {
        let request = Request::get("/check?q=1")
            .header("authorization", "Bearer t")
            .header("x-tenant", "a")
            .header("x-tenant", "b")
            .header("x-request-id", "req-1");
        let before = Instant::now();
        assert_eq!(envoy.send(&request).unwrap().status, 200);
        let check = authz.last("/check?q=1").expect("checked");
        let time = check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.time).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let age = now.as_secs().saturating_sub(u64::try_from(time.seconds).unwrap());
        assert!(age <= before.elapsed().as_secs() + 1, "time {time:?}");
        assert_eq!(peer(&check, false), ("127.0.0.1".to_string(), u32::from(envoy.listener_addr().port())));
        assert_eq!(peer(&check, true).0, "127.0.0.1");
        checks.push(check);
    }
    let [ours, native] = [http(&checks[0]), http(&checks[1])];
    assert_eq!(ours.id, "req-1");
    assert_ne!(native.id, "req-1", "native sends its stream id");
    let same = |h: &HttpRequest| {
        (
            h.method.clone(),
            h.path.clone(),
            h.host.clone(),
            h.scheme.clone(),
            h.protocol.clone(),
            h.headers.clone(),
        )
    };
    assert_eq!(same(&ours), same(&native), "ext-auth, then native");
    assert_eq!(ours.headers["x-tenant"], "a,b");
    assert_eq!(ours.headers[":path"], "/check?q=1");
}

/// The service's error status, a timeout, a refused connection and an unknown cluster are
/// failures: `status_on_error` (403), or through with `failure_mode_allow`, marked.
fn failures_follow_the_failure_policy_as_native_ext_authz(target: Target) {
    let authz = AuthzServer::start();
    let upstream = EchoUpstream::start().unwrap();
    for (cluster, path) in [
        ("authz", "/error"),
        ("authz", "/unavailable"),
        ("authz", "/slow"),
        ("refused", "/a"),
        ("nowhere", "/a"),
    ] {
        let envoys = side_by_side(
            ours(target, &config(cluster, 300)),
            native(cluster, 300, &json!({})),
            authz.addr(),
            upstream.addr(),
        );
        let started = Instant::now();
        let statuses: Vec<u16> = envoys.iter().map(|e| e.get(path).unwrap().status).collect();
        assert_eq!(statuses, [403, 403], "{cluster} {path}: ext-auth, then native");
        assert!(started.elapsed() < Duration::from_secs(3), "{cluster} {path}: {:?}", started.elapsed());
        let mut open = config(cluster, 300);
        open["failure_mode_allow"] = json!(true);
        let extra = json!({"failure_mode_allow": true, "failure_mode_allow_header_add": true});
        let envoys =
            side_by_side(ours(target, &open), native(cluster, 300, &extra), authz.addr(), upstream.addr());
        for envoy in envoys.iter() {
            let response = envoy.get(path).unwrap();
            assert_eq!(response.status, 200, "{cluster} {path}");
            assert_eq!(response.echo().unwrap().header("x-envoy-auth-failure-mode-allowed"), Some("true"));
        }
    }
    // The body of the failure: the project's JSON here, empty natively.
    let envoys = side_by_side(
        ours(target, &config("authz", 300)),
        native("authz", 300, &json!({})),
        authz.addr(),
        upstream.addr(),
    );
    assert_eq!(envoys[0].get("/slow").unwrap().json().unwrap()["code"], "auth_timeout");
    assert_eq!(envoys[1].get("/slow").unwrap().text(), "");
}

/// With the body: whole, and cut when partial bodies are allowed, in `body` with
/// `x-envoy-auth-partial-body` in the header map, as native sends it.
fn the_body_reaches_the_auth_service_as_native_ext_authz_sends_it(target: Target) {
    let authz = AuthzServer::start();
    let upstream = EchoUpstream::start().unwrap();
    let mut with_body = config("authz", 1000);
    with_body["with_request_body"] = json!({"max_bytes": 16, "allow_partial": true});
    let extra = json!({"with_request_body": {"max_request_bytes": 16, "allow_partial_message": true}});
    let envoys =
        side_by_side(ours(target, &with_body), native("authz", 1000, &extra), authz.addr(), upstream.addr());
    for body in ["hello", "0123456789abcdefXYZ"] {
        let mut seen = Vec::new();
        for envoy in envoys.iter() {
            let response = envoy.send(&Request::post("/upload", body)).unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.echo().unwrap().body, body, "the whole body goes upstream");
            let check = http(&authz.last("/upload").unwrap());
            seen.push((check.body.clone(), check.headers.get("x-envoy-auth-partial-body").cloned()));
        }
        assert_eq!(seen[0], seen[1], "{body}: ext-auth, then native");
        let cut = &body[..body.len().min(16)];
        assert_eq!(seen[0], (cut.to_string(), Some((body.len() > 16).to_string())));
    }
}
