//! Runs the probe filter (raw host calls) in the emulator and checks the answers Envoy 1.40 gave
//! to the same probes (see test-harness/probe-filter/envoy/probe.sh); the property tests also
//! run the probe in a real Envoy (found as gatewasm-envoy's README says) next to the emulator.
//! Build the modules first: cargo build --release --target wasm32-wasip1 -p probe-filter -p noop-filter

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewasm_emulator::{wasm_path, Action, Emulator, Error, LogLevel};
use std::time::Duration;

fn probe() -> gatewasm_emulator::EmulatorBuilder {
    let path = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    Emulator::load(path)
        .plugin_config("probe-config")
        .vm_id("probe_vm")
        .root_id("probe_root")
        .property("plugin_name", "probe_plugin")
}

fn results(s: &gatewasm_emulator::Stream) -> String {
    s.response_header("x-probe-results").unwrap_or_default()
}

fn run(emu: &Emulator, extra: &[(&str, &str)]) -> gatewasm_emulator::Stream {
    let mut s = emu.stream();
    let mut h =
        vec![(":method", "GET"), (":path", "/a?b=1"), (":authority", "example.com"), ("x-mixed", "AbC")];
    h.extend_from_slice(extra);
    s.request_headers(&h, true).unwrap();
    if s.local_reply().is_none() && !s.request_paused() {
        s.response_headers(
            &[(":status", "200"), ("content-length", "11"), ("content-type", "text/plain")],
            false,
        )
        .unwrap();
    }
    s
}

#[test]
fn headers_like_envoy() {
    let emu = probe().log_level(LogLevel::Info).build().unwrap();
    assert!(emu.configured());
    let s = run(
        &emu,
        &[(
            "x-probe",
            "ctx;log_level;time;get:req,:path;get:req,X-Missing;get:req,Host;get:resp,x;pairs:resp;get:99,x",
        )],
    );
    // Envoy: ctx=2 for the first stream; info=2; missing header NotFound; host = :authority;
    // response map during the request BadArgument; unavailable pairs are empty; bad type BadArgument.
    assert_eq!(
        results(&s),
        "ctx=2 | log_level=0,2 | time=0,true | get=0,'/a?b=1' | get=1,'' | get=0,'example.com' | get=2,'' | pairs=0,empty,0 | get=2,''"
    );
    assert_eq!(s.response_header("x-probe-resp-seen").unwrap(), "0::status,content-length,content-type");
}

#[test]
fn request_headers_gone_after_continue() {
    let emu = probe().build().unwrap();
    let s = run(
        &emu,
        &[(
            "x-probe-resp",
            "get:req,x-mixed;pairs:req;get:resp,:status;prop:request.path;prop:response.code;buf:1",
        )],
    );
    // Envoy: exactly this in on_response_headers after the request headers returned Continue.
    assert_eq!(
        results(&s),
        "get=2,'' | pairs=0,empty,0 | get=0,'200' | prop=1,'' | prop=0,0xc800000000000000 | buf=0,0,0,''"
    );
}

#[test]
fn local_reply_runs_through_own_response_path() {
    let emu = probe().build().unwrap();
    let s = run(
        &emu,
        &[("x-probe", "reply:403"), ("x-probe-resp", "get:req,x-mixed;get:resp,:status;pairs:resp")],
    );
    let reply = s.local_reply().expect("local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, b"reply");
    assert_eq!(reply.details, "probe_reply");
    // Envoy: x-probe-results: reply | reply=0 | get=0,'AbC' ... (the request headers are still
    // there because the callback stopped) and the filter saw its own reply's headers.
    assert_eq!(
        s.response_header("x-probe-resp-seen").unwrap(),
        "0::status,x-probe-local,x-upper,content-length,content-type"
    );
    assert_eq!(s.response_header("x-upper").unwrap(), "Yes");
    assert_eq!(results(&s), "reply | reply=0 | get=0,'AbC' | get=0,'403' | pairs=0,5,125");
}

#[test]
fn local_reply_from_response_replaces_response() {
    let emu = probe().build().unwrap();
    let s = run(&emu, &[("x-probe-resp", "reply:418,fromresp")]);
    let reply = s.local_reply().unwrap();
    assert_eq!(reply.status, 418);
    assert_eq!(reply.body, b"fromresp");
    assert_eq!(s.response_header("x-probe-results"), None);
    assert_eq!(s.response_header(":status").unwrap(), "418");
}

#[test]
fn local_reply_from_body_and_without_body() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[(":method", "POST"), (":path", "/up"), (":authority", "h"), ("x-probe-body", "reply:402,frombody")],
        false,
    )
    .unwrap();
    s.request_body(b"xyz", false).unwrap();
    // Envoy: x-probe-results: body_cb=3,false | reply | reply=0, and the filter saw its reply.
    assert_eq!(results(&s), "body_cb=3,false | reply | reply=0");
    assert_eq!(s.local_reply().unwrap().body, b"frombody");
    assert_eq!(s.request_body(b"more", true).unwrap(), Action::Pause);
    let s = run(&emu, &[("x-probe", "reply:403,")]);
    // Envoy: no content-length / content-type for an empty local reply body.
    assert_eq!(s.response_header("x-probe-resp-seen").unwrap(), "0::status,x-probe-local,x-upper");
}

#[test]
fn replace_moves_header_to_end() {
    let emu = probe().build().unwrap();
    let s = run(&emu, &[("x-probe-resp", "add:resp,x-d,1;add:resp,x-e,2;add:resp,x-d,3;replace:resp,x-d,4")]);
    let names: Vec<String> = s.response_headers_now().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(names[3..5], ["x-e=2".to_string(), "x-d=4".to_string()]);
}

#[test]
fn body_callbacks_see_no_headers() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/"),
            (":authority", "h"),
            ("x-mixed", "AbC"),
            ("x-probe-body", "get:req,x-mixed;get:reqtr,x"),
        ],
        false,
    )
    .unwrap();
    s.request_body(b"hello", false).unwrap();
    s.response_headers(&[(":status", "200")], true).unwrap();
    // Envoy (route to a cluster, curl -d): get=2,'' | get=2,'' in a body callback.
    assert_eq!(results(&s), "body_cb=5,false | get=2,'' | get=2,''");
}

#[test]
fn metrics_like_envoy() {
    let emu = probe().build().unwrap();
    let s = run(&emu, &[("x-probe", "metric_define:0,c1;metric_define:1,g1;metric_define:2,h1;metric_define:0,c1;metric_define:3,bad;metric_inc:4,1;metric_inc:4,0;metric_inc:4,-1;metric_record:4,5;metric_get:4;metric_inc:5,-3;metric_get:5;metric_record:5,7;metric_get:5;metric_inc:6,1;metric_record:6,9;metric_get:6;metric_get:100;metric_inc:100,1;metric_record:100,1")]);
    assert_eq!(results(&s), "metric_define=0,4 | metric_define=0,5 | metric_define=0,6 | metric_define=0,8 | metric_define=2,0 | metric_inc=0 | metric_inc=2 | metric_inc=2 | metric_record=0 | metric_get=0,6 | metric_inc=0 | metric_get=0,18446744073709551613 | metric_record=0 | metric_get=0,7 | metric_inc=2 | metric_record=0 | metric_get=2,0 | metric_get=1,0 | metric_inc=1 | metric_record=1");
    assert_eq!(emu.metric("c1"), Some(6));
    assert_eq!(emu.gauge("g1"), Some(7));
}

#[test]
fn shared_data_and_queues_like_envoy() {
    let emu = probe().build().unwrap();
    let s = run(&emu, &[("x-probe", "shared_get:k;shared_set:k,v1,0;shared_get:k;shared_set:k,v2,12345;shared_get:k;shared_set:k,v3,1;shared_get:k;shared_set:k,,0;shared_get:k")]);
    assert_eq!(results(&s), "shared_get=1,'',0 | shared_set=0 | shared_get=0,'v1',1 | shared_set=8 | shared_get=0,'v1',1 | shared_set=0 | shared_get=0,'v3',2 | shared_set=0 | shared_get=0,'',3");
    let s = run(&emu, &[("x-probe", "q_register:q1;q_register:q1;q_resolve:probe_vm,q1;q_resolve:,q1;q_resolve:other,q1;q_dequeue:1;q_enqueue:1,a;q_dequeue:1;q_dequeue:1;q_dequeue:77;q_enqueue:77,x")]);
    assert_eq!(results(&s), "q_register=0,1 | q_register=0,1 | q_resolve=0,1 | q_resolve=0,1 | q_resolve=1,0 | q_dequeue=7,'' | q_enqueue=0 | q_dequeue=0,'a' | q_dequeue=7,'' | q_dequeue=1,'' | q_enqueue=1");
}

#[test]
fn properties_like_envoy() {
    let emu = probe().build().unwrap();
    let s = run(&emu, &[("x-probe", "set_prop:foo,bar;prop:foo;set_prop:a.b,c;prop:a.b;prop:a;continue:9;close:9;tick:0;prop:request.path;prop:request.method;prop:plugin_name;prop:plugin_root_id;prop:plugin_vm_id;prop:nope;prop:request.headers.x-mixed")]);
    assert_eq!(results(&s), "set_prop=0 | prop=0,'bar' | set_prop=0 | prop=1,'' | prop=1,'' | continue=2 | close=2 | tick=0 | prop=0,'/a?b=1' | prop=0,'GET' | prop=0,'probe_plugin' | prop=0,'probe_root' | prop=0,'probe_vm' | prop=1,'' | prop=0,'AbC'");
}

#[test]
fn http_call_errors_like_envoy() {
    let emu = probe().cluster("upstream").build().unwrap();
    for (op, want) in [
        ("http_call:nocluster,h,/p,1000", "http_call=2,0"),
        ("http_call:upstream,-,/p,1000", "http_call=2,0"),
        ("http_call:upstream,h,-,1000", "http_call=2,0"),
    ] {
        let s = run(&emu, &[("x-probe", op)]);
        assert_eq!(results(&s), want, "{op}");
    }
}

#[test]
fn http_call_response_resumes_request() {
    let emu = probe().cluster("upstream").build().unwrap();
    let mut s = emu.stream();
    let a = s
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/a?b=1"),
                (":authority", "h"),
                ("x-probe", "http_call:upstream,h,/p,0"),
                ("x-probe-callresp", "get:callresp,:status;buf:4;get:req,:path;pairs:calltr"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].token, 4);
    assert_eq!(calls[0].cluster, "upstream");
    assert_eq!(calls[0].timeout, None);
    emu.respond_http_call(4, &[(":status", "200"), ("content-length", "12")], b"callout-body", &[]).unwrap();
    assert!(!s.request_paused());
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(results(&s), "http_call=0,4 | callresp=4,2,12,0 | get=0,'200' | buf=0,12,0,'callout-body' | get=0,'/a?b=1' | pairs=0,empty,0");
}

#[test]
fn http_call_timeout_is_a_504() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "h"),
            ("x-probe", "http_call:blackhole,h,/p,300"),
            ("x-probe-callresp", "get:callresp,:status;pairs:callresp;buf:4"),
        ],
        true,
    )
    .unwrap();
    emu.advance_clock(Duration::from_millis(299)).unwrap();
    assert!(s.request_paused());
    emu.advance_clock(Duration::from_millis(1)).unwrap();
    s.response_headers(&[(":status", "200")], true).unwrap();
    // Envoy, blackhole cluster, timeout 300 ms: exactly this.
    assert_eq!(results(&s), "http_call=0,4 | callresp=4,3,24,0 | get=0,'504' | pairs=0,3,82 | buf=0,24,0,'upstream request timeout'");
}

#[test]
fn ticks_follow_the_clock() {
    let emu = probe().build().unwrap();
    let _s = run(&emu, &[("x-probe", "tick:100")]);
    assert_eq!(emu.tick_period(), Some(Duration::from_millis(100)));
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let ticks = emu.logs().iter().filter(|l| l.message.starts_with("probe: tick at")).count();
    assert_eq!(ticks, 2);
    let s = run(&emu, &[("x-probe", "tick:0;root_results")]);
    assert!(results(&s).contains("tick="), "{}", results(&s));
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.logs().iter().filter(|l| l.message.starts_with("probe: tick at")).count(), 2);
}

#[test]
fn body_buffering_and_set_buffer() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/"),
            (":authority", "h"),
            ("x-probe-body", "buf:0;buf:0,2,3;buf_set:0,0,0,PRE;buf:0;buf_set:0,2,1,X"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(s.request_body(b"hello", true).unwrap(), Action::Continue);
    assert_eq!(s.request_body_now(), b"PREhello");
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(
        results(&s),
        "body_cb=5,true | buf=0,5,0,'hello' | buf=0,5,0,'llo' | buf_set=0 | buf=0,8,0,'PREhello' | buf_set=2"
    );
}

#[test]
fn data_waits_while_headers_paused() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[(":method", "POST"), (":path", "/"), (":authority", "h"), ("x-probe", "pause")],
        false,
    )
    .unwrap();
    assert_eq!(s.request_body(b"abc", true).unwrap(), Action::Pause);
    assert!(s.request_body_now().is_empty());
}

#[test]
fn panic_is_reported_and_vm_dies() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    let err = s.request_headers(&[(":path", "/"), ("x-probe", "panic:boom")], true).unwrap_err();
    match &err {
        Error::Trap { call, panic, .. } => {
            assert_eq!(call, "proxy_on_request_headers");
            assert!(panic.as_deref().unwrap_or("").contains("probe asked to panic: boom"), "{err}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut s2 = emu.stream();
    assert!(matches!(s2.request_headers(&[(":path", "/")], true), Err(Error::VmFailed(_))));
}

#[test]
fn unimplemented_call_fails_loudly() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    let err = s.request_headers(&[(":path", "/"), ("x-probe", "grpc_stream:c")], true).unwrap_err();
    assert!(err.to_string().contains("proxy_grpc_stream"), "{err}");
    assert!(err.to_string().contains("not implemented"), "{err}");
}

#[test]
fn rejected_config_is_reported() {
    let emu = probe().plugin_config("reject").build().unwrap();
    assert!(!emu.configured());
    assert!(emu.logged("configuration rejected"));
}

#[test]
fn group_shares_data_between_workers() {
    let group = gatewasm_emulator::Group::new();
    let a = probe().group(&group).build().unwrap();
    let b = probe().group(&group).build().unwrap();
    run(&a, &[("x-probe", "shared_set:k,from-a,0;q_register:q")]);
    let s = run(&b, &[("x-probe", "shared_get:k;q_resolve:,q;q_enqueue:1,hi")]);
    assert_eq!(results(&s), "shared_get=0,'from-a',1 | q_resolve=0,1 | q_enqueue=0");
    a.run_pending().unwrap();
    assert!(a.logged("probe: queue ready 1 dequeue=0 'hi'"), "{:?}", a.logs());
}

#[test]
fn noop_filter_runs() {
    let emu = Emulator::load(wasm_path("noop-filter").unwrap_or_else(|e| panic!("{e}"))).build().unwrap();
    let mut s = emu.stream();
    assert_eq!(s.request_headers(&[(":path", "/")], false).unwrap(), Action::Continue);
    assert_eq!(s.request_body(b"x", true).unwrap(), Action::Continue);
    assert_eq!(s.request_body_now(), b"x");
    s.log().unwrap();
}

#[test]
fn verify_signature_like_envoy() {
    let emu = probe().build().unwrap();
    let cases = include_str!("fixtures/verify_signature.txt");
    let lines: Vec<&str> = cases.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2 * 17, "an op and Envoy's answer per case");
    for pair in lines.chunks(2) {
        let s = run(&emu, &[("x-probe", pair[0])]);
        assert_eq!(results(&s), pair[1], "{}", &pair[0][..pair[0].len().min(60)]);
    }
}

#[test]
fn foreign_functions_envoy_has_and_the_emulator_lacks_trap() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    let err = s.request_headers(&[(":path", "/"), ("x-probe", "foreign:compress,00")], true).unwrap_err();
    assert!(err.to_string().contains("compress"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Properties, side by side with Envoy: every attribute of Envoy's list, read by the probe filter
// in the request-headers, response-headers and log phases, in a real Envoy 1.40 over plaintext
// HTTP/1.1 and in the emulator given exactly the request and response the filter saw in Envoy
// (its `map:req`/`map:resp` dumps) and the same client and listener addresses. Each answer
// (status, bytes and encoding) must be the same, except where the value is the moment or the
// connection (see `same_answer`).

/// Every attribute a filter can read, as Envoy 1.40 names them (the older top-level names
/// `cluster_name`, `route_name`, `node`, ... are NotFound there: they moved under `xds`).
const PROPERTIES: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.headers",
    "request.headers.x-mixed",
    "request.headers.X-Mixed",
    "request.headers.host",
    "request.headers.x-absent",
    "request.headers.bad name",
    "request.referer",
    "request.useragent",
    "request.time",
    "request.id",
    "request.protocol",
    "request.query",
    "request.duration",
    "request.size",
    "request.total_size",
    "request.nope",
    "request",
    "response.code",
    "response.code_details",
    "response.flags",
    "response.grpc_status",
    "response.headers",
    "response.headers.content-type",
    "response.trailers",
    "response.size",
    "response.total_size",
    "response.backend_latency",
    "response",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "source",
    "connection.id",
    "connection_id",
    "connection.mtls",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.subject_local_certificate",
    "connection.subject_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "connection.uri_san_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.termination_details",
    "connection.transport_failure_reason",
    "connection",
    "upstream.address",
    "upstream.port",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "upstream.request_attempt_count",
    "upstream.num_endpoints",
    "upstream",
    "xds.cluster_name",
    "xds.cluster_metadata",
    "xds.route_name",
    "xds.route_metadata",
    "xds.virtual_host_metadata",
    "xds.filter_chain_name",
    "xds.listener_direction",
    "xds.listener_metadata",
    "xds.upstream_host_metadata",
    "xds.node.id",
    "xds.node.cluster",
    "xds",
    "metadata",
    "filter_state",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "cluster_name",
    "route_name",
    "listener_direction",
    "node",
];

/// What Envoy added after the filter chain, in its log-phase view: request headers the router
/// set for the upstream, and the bytes of the response headers its connection manager set.
struct LogExtra {
    router: Vec<(String, String)>,
    codec_bytes: i64,
}

impl LogExtra {
    fn router_bytes(&self) -> i64 {
        self.router.iter().map(|(k, v)| (k.len() + v.len()) as i64).sum()
    }
}

/// What Envoy's connection manager sets on every response after the filter chain.
const CODEC_HEADERS: [&str; 3] = ["date", "server", "connection"];

/// The body Envoy's direct response answers with.
const DIRECT_BODY: &str = "upstream-ok";

fn prop_ops(props: &[&str]) -> String {
    props.iter().map(|p| format!("prop:{p}")).collect::<Vec<_>>().join(";")
}

fn start_envoy() -> gatewasm_envoy::Envoy {
    envoy_builder().direct_response(200, DIRECT_BODY).start().unwrap()
}

fn envoy_builder() -> gatewasm_envoy::EnvoyBuilder {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    gatewasm_envoy::EnvoyBuilder::new().wasm(
        gatewasm_envoy::WasmFilter::new(wasm)
            .name("probe_plugin")
            .root_id("probe_root")
            .vm_id("probe_vm")
            .configuration("probe-config"),
    )
}

/// What one request through Envoy showed: the probe's results from the response header and
/// from the log phase, and the client's address.
struct Seen {
    results: Vec<String>,
    log_results: Vec<String>,
    source: std::net::SocketAddr,
    /// The response body the client got.
    body: Vec<u8>,
}

fn log_results(log: &str) -> Vec<&str> {
    log.lines().filter_map(|l| l.split_once("probe: log results=").map(|(_, r)| r)).collect()
}

/// Sends one HTTP/1.1 request on its own connection (so the test knows the client port) and
/// waits for the probe's log-phase line.
fn through_envoy(
    envoy: &gatewasm_envoy::Envoy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Seen {
    use std::io::{Read, Write};
    let logged_before = log_results(&envoy.log()).len();
    let mut conn = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let source = conn.local_addr().unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    // Envoy answers (directly) before it reads a request body, and may reset the connection
    // when it closes with that body unread: the answer is whatever arrived before.
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if !response.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading Envoy's answer: {e}"),
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let results = response
        .lines()
        .find_map(|l| l.strip_prefix("x-probe-results: "))
        .unwrap_or_else(|| panic!("no x-probe-results in {response}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log_line = loop {
        let log = envoy.log();
        if let Some(line) = log_results(&log).get(logged_before) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no log-phase results in Envoy's log");
        std::thread::sleep(Duration::from_millis(20));
    };
    let body = match response.split_once("\r\n\r\n") {
        Some((_, b)) => b.as_bytes().to_vec(),
        None => Vec::new(),
    };
    Seen { results: split_results(results), log_results: split_results(&log_line), source, body }
}

/// HPACK integer with a 7-bit prefix (RFC 7541 5.1), the first byte's high bit clear.
fn hpack_int(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// Sends one GET over cleartext HTTP/2 (prior knowledge) on its own connection: the preface, an
/// empty SETTINGS frame and one HEADERS frame of literal fields (no Huffman, no indexing).
/// Envoy's HPACK-encoded answer is not decoded: the probe's results come from its log lines
/// (`on_log ... results=` holds the request- and response-phase results).
fn through_envoy_h2(envoy: &gatewasm_envoy::Envoy, path: &str, headers: &[(&str, &str)]) -> Seen {
    use std::io::{Read, Write};
    let log = envoy.log();
    let (on_log_before, logged_before) = (on_log_results(&log).len(), log_results(&log).len());
    let mut conn = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let source = conn.local_addr().unwrap();
    let mut block = Vec::new();
    let pseudo = [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "example.com")];
    for (k, v) in pseudo.iter().chain(headers) {
        block.push(0);
        hpack_int(&mut block, k.len());
        block.extend_from_slice(k.as_bytes());
        hpack_int(&mut block, v.len());
        block.extend_from_slice(v.as_bytes());
    }
    assert!(block.len() < 16384, "one HEADERS frame of the default maximum size");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let len = (block.len() as u32).to_be_bytes();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&[len[1], len[2], len[3], 1, 5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    conn.write_all(&out).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut sink = [0u8; 16384];
    loop {
        // Keep reading Envoy's frames so it is never blocked on a full socket.
        let _ = conn.read(&mut sink);
        let log = envoy.log();
        if let (Some(main), Some(logged)) =
            (on_log_results(&log).get(on_log_before), log_results(&log).get(logged_before))
        {
            // Only direct responses are sent this way.
            let body = DIRECT_BODY.as_bytes().to_vec();
            return Seen { results: split_results(main), log_results: split_results(logged), source, body };
        }
        assert!(std::time::Instant::now() < deadline, "no log-phase results in Envoy's log");
    }
}

fn on_log_results(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| {
            l.split_once("probe: on_log ctx=").and_then(|(_, r)| r.split_once(" results=")).map(|(_, r)| r)
        })
        .collect()
}

fn split_results(r: &str) -> Vec<String> {
    if r.is_empty() {
        Vec::new()
    } else {
        r.split(" | ").map(str::to_string).collect()
    }
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// A `map=0,0x...` result as the header pairs it holds, in order.
fn map_result(r: &str) -> Vec<(String, String)> {
    let hex = r.strip_prefix("map=0,0x").unwrap_or_else(|| panic!("not a map dump: {r}"));
    let d = unhex(hex);
    let n = u32::from_le_bytes(d[0..4].try_into().unwrap()) as usize;
    let mut pos = 4 + 8 * n;
    (0..n)
        .map(|i| {
            let k = u32::from_le_bytes(d[4 + 8 * i..8 + 8 * i].try_into().unwrap()) as usize;
            let v = u32::from_le_bytes(d[8 + 8 * i..12 + 8 * i].try_into().unwrap()) as usize;
            let pair = (
                String::from_utf8(d[pos..pos + k].to_vec()).unwrap(),
                String::from_utf8(d[pos + k + 1..pos + k + 1 + v].to_vec()).unwrap(),
            );
            pos += k + v + 2;
            pair
        })
        .collect()
}

/// A property answer `prop=STATUS,VALUE` as (status, value bytes).
fn answer(r: &str) -> (String, Vec<u8>) {
    let rest = r.strip_prefix("prop=").unwrap_or_else(|| panic!("not a property answer: {r}"));
    let (status, value) = rest.split_once(',').unwrap();
    let bytes = match value.strip_prefix("0x") {
        Some(h) => unhex(h),
        None => value.trim_matches('\'').as_bytes().to_vec(),
    };
    (status.to_string(), bytes)
}

/// Serialized proxy-wasm pairs, sorted (Envoy lists a header map's names in hash order).
fn sorted_pairs(v: &[u8]) -> Vec<(String, String)> {
    let mut pairs =
        map_result(&format!("map=0,0x{}", v.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    pairs.sort();
    pairs
}

/// Compares one answer. The same status and bytes, except: maps compare as sets of pairs;
/// `request.time` is the emulator's clock there and Envoy's wall clock here, and
/// `request.duration`, `response.backend_latency`-free timing and the connection id are the
/// moment or the process's connection count: both must be 8-byte integers. In the log phase
/// Envoy's response headers also hold `date` and `server`, which its connection manager adds after the
/// filter chain (and `connection: close` here; `log_extra` holds them); the emulator's log view
/// is what the filter chain produced.
fn same_answer(phase: &str, prop: &str, envoy: &str, emu: &str, log_extra: Option<&LogExtra>) {
    let (es, ev) = answer(envoy);
    let (ms, mv) = answer(emu);
    assert_eq!(es, ms, "{phase} {prop}: status (Envoy {envoy}, emulator {emu})");
    match prop {
        "request.time"
        | "request.duration"
        | "response.backend_latency"
        | "connection.id"
        | "connection_id"
            if es == "0" =>
        {
            assert_eq!((ev.len(), mv.len()), (8, 8), "{phase} {prop}: Envoy {envoy}, emulator {emu}")
        }
        "request.headers" | "response.headers" | "response.trailers" if es == "0" => {
            let mut envoy_pairs = sorted_pairs(&ev);
            let mut emu_pairs = sorted_pairs(&mv);
            if let (Some(extra), "request.headers") = (log_extra, prop) {
                envoy_pairs.retain(|p| !extra.router.contains(p));
            }
            if prop == "response.headers" {
                if log_extra.is_some() {
                    for pairs in [&mut envoy_pairs, &mut emu_pairs] {
                        pairs.retain(|(k, _)| !CODEC_HEADERS.contains(&k.as_str()));
                    }
                }
                // The probe's own results header repeats the volatile answers above (the
                // time, the connection id): the same width is all that can match.
                for pairs in [&mut envoy_pairs, &mut emu_pairs] {
                    for (k, v) in pairs.iter_mut() {
                        if k == "x-probe-results" {
                            *v = format!("<{} bytes>", v.len());
                        }
                    }
                }
            }
            assert_eq!(envoy_pairs, emu_pairs, "{phase} {prop}");
        }
        "response.total_size" | "request.total_size" if log_extra.is_some() => {
            let n = |v: &[u8]| i64::from_le_bytes(v.try_into().unwrap());
            let extra = log_extra
                .map(|e| if prop == "request.total_size" { e.router_bytes() } else { e.codec_bytes })
                .unwrap_or(0);
            assert_eq!(n(&ev), n(&mv) + extra, "{phase} {prop}: Envoy {envoy}, emulator {emu}");
        }
        // An ephemeral port of Envoy's connection to the upstream.
        "upstream.local_address" if es == "0" => {
            assert!(
                ev.starts_with(b"127.0.0.1:") && mv.starts_with(b"127.0.0.1:"),
                "{phase} {prop}: Envoy {envoy}, emulator {emu}"
            )
        }
        _ => assert_eq!(ev, mv, "{phase} {prop}: Envoy {envoy}, emulator {emu}"),
    }
}

/// One case: a request through Envoy, then the same through the emulator, every property
/// compared in each of the three phases.
fn compare_case(
    envoy: &gatewasm_envoy::Envoy,
    upstream: Option<std::net::SocketAddr>,
    protocol: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let ops = prop_ops(PROPERTIES);
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    let req_ops = format!("map:req;{ops}");
    let resp_ops = format!("map:resp;{ops}");
    h.push(("x-probe", &req_ops));
    h.push(("x-probe-resp", &resp_ops));
    h.push(("x-probe-log", &ops));
    let seen = if protocol == "HTTP/2" {
        assert!(method == "GET" && body.is_empty(), "the h2c client sends GETs only");
        through_envoy_h2(envoy, path, &h)
    } else {
        through_envoy(envoy, method, path, &h, body)
    };
    let n = PROPERTIES.len();
    assert_eq!(seen.results.len(), 2 * n + 2, "{:?}", seen.results);
    let req_headers = map_result(&seen.results[0]);
    let resp_headers = map_result(&seen.results[n + 1]);

    // The harness's bootstrap names its node `gatewasm-test` (cluster too).
    let emu = probe()
        .source_address(&seen.source.to_string())
        .destination_address(&envoy.listener_addr().to_string())
        .protocol(protocol)
        .property("xds.node.id", "gatewasm-test")
        .property("xds.node.cluster", "gatewasm-test");
    // The harness names the cluster of its upstream route `upstream`.
    let emu = match upstream {
        Some(addr) => emu.upstream("upstream", &addr.to_string()),
        None => emu,
    };
    let emu = emu.build().unwrap();
    let mut s = emu.stream();
    let pairs =
        |v: &[(String, String)]| v.iter().map(|(k, val)| (k.clone(), val.clone())).collect::<Vec<_>>();
    let rh = pairs(&req_headers);
    let rh: Vec<(&str, &str)> = rh.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Envoy's direct response answers at the request headers: the filter never gets the body
    // (no `body_cb` in Envoy's results), so the emulator is not given it either.
    assert!(upstream.is_none() || body.is_empty(), "upstream cases send no body");
    s.request_headers(&rh, body.is_empty()).unwrap();
    if upstream.is_none() {
        // The response is Envoy's direct response, where the emulator's responses model an
        // upstream's (`via_upstream`, one attempt): say so, as a test of a direct route would.
        s.set_property("response.code_details", "direct_response");
        s.set_property("upstream.request_attempt_count", 0u64.to_le_bytes());
    }
    let ph = pairs(&resp_headers);
    let ph: Vec<(&str, &str)> = ph.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    s.response_headers(&ph, false).unwrap();
    s.response_body(&seen.body, true).unwrap();
    let emu_results = split_results(&results(&s));
    s.log().unwrap();
    let emu_log = emu
        .logs()
        .iter()
        .find_map(|l| l.message.strip_prefix("probe: log results=").map(split_results))
        .expect("the emulator's log-phase results");

    assert_eq!(emu_results[0], seen.results[0], "the emulator saw the request Envoy's filter saw");
    assert_eq!(emu_results[n + 1], seen.results[n + 1], "the emulator saw the response Envoy's filter saw");
    for (i, prop) in PROPERTIES.iter().enumerate() {
        same_answer("request headers:", prop, &seen.results[i + 1], &emu_results[i + 1], None);
        same_answer("response headers:", prop, &seen.results[n + 2 + i], &emu_results[n + 2 + i], None);
    }
    // What Envoy's connection manager set on the response after the filter chain: `date`,
    // `server: envoy` and (the client asked to close) `connection: close`.
    let log_view =
        answer(&seen.log_results[PROPERTIES.iter().position(|p| *p == "response.headers").unwrap()]).1;
    let managed = |pairs: &[(String, String)]| -> i64 {
        pairs
            .iter()
            .filter(|(k, _)| CODEC_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.len() + v.len()) as i64)
            .sum()
    };
    let envoy_view = sorted_pairs(&log_view);
    assert!(envoy_view.iter().any(|(k, v)| k == "server" && v == "envoy"), "{envoy_view:?}");
    assert!(envoy_view.iter().any(|(k, _)| k == "date"), "{envoy_view:?}");
    // And what the router set on the request it sent upstream (x-envoy-expected-rq-timeout-ms).
    let req_view =
        answer(&seen.log_results[PROPERTIES.iter().position(|p| *p == "request.headers").unwrap()]).1;
    let router: Vec<(String, String)> = sorted_pairs(&req_view)
        .into_iter()
        .filter(|(k, _)| !req_headers.iter().any(|(n, _)| n == k))
        .collect();
    assert!(router.iter().all(|(k, _)| k.starts_with("x-envoy-")), "{router:?}");
    assert_eq!(router.is_empty(), upstream.is_none(), "{router:?}");
    let extra = LogExtra { router, codec_bytes: managed(&envoy_view) - managed(&resp_headers) };
    for (i, prop) in PROPERTIES.iter().enumerate() {
        same_answer("log:", prop, &seen.log_results[i], &emu_log[i], Some(&extra));
    }
}

#[test]
fn properties_like_envoy_side_by_side() {
    let envoy = start_envoy();
    // A query, repeated headers (joined with a comma), a referer and a user agent.
    compare_case(
        &envoy,
        None,
        "HTTP/1.1",
        "GET",
        "/a/b?c=1&d=2",
        &[("x-mixed", "AbC"), ("x-mixed", "2"), ("user-agent", "probe-test"), ("referer", "http://r/")],
        b"",
    );
    // A body with its content-length; no query.
    compare_case(&envoy, None, "HTTP/1.1", "POST", "/submit", &[("x-mixed", "x")], b"abcdefg");
    // An empty query.
    compare_case(&envoy, None, "HTTP/1.1", "GET", "/plain?", &[], b"");
    // HTTP/2 without TLS (prior knowledge): request.protocol `HTTP/2`, `:scheme` from the client.
    compare_case(
        &envoy,
        None,
        "HTTP/2",
        "GET",
        "/h2?x=1",
        &[("x-mixed", "h2"), ("user-agent", "probe-test")],
        b"",
    );
}

/// A property answer as the probe shows it, for the pinned tests below.
fn props_of(s: &gatewasm_emulator::Stream) -> Vec<String> {
    split_results(&results(s))
}

#[test]
fn request_model_defaults_answer_as_envoy_on_plaintext_http1() {
    let emu = probe().build().unwrap();
    // No :scheme, no x-request-id, no referer given: Envoy always adds :scheme (http on a
    // plaintext listener); the others stay NotFound as in Envoy without them.
    let s = run(
        &emu,
        &[(
            "x-probe",
            "prop:request.scheme;prop:request.query;prop:request.url_path;prop:request.protocol;prop:source.address;prop:source.port;prop:destination.address;prop:destination.port;prop:connection.mtls;prop:connection.requested_server_name;prop:connection.tls_version;prop:request.id;prop:request.referer;prop:request.time;prop:request.duration;prop:response.code;prop:response.grpc_status;prop:response.headers;prop:upstream.request_attempt_count;prop:request;prop:xds.cluster_name;prop:cluster_name",
        )],
    );
    let time =
        1_704_067_200_000_000_000i64.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        props_of(&s),
        [
            "prop=0,'http'",
            "prop=0,'b=1'",
            "prop=0,'/a'",
            "prop=0,'HTTP/1.1'",
            "prop=0,'127.0.0.1:40000'",
            "prop=0,0x409c000000000000",
            "prop=0,'127.0.0.1:10000'",
            "prop=0,0x1027000000000000",
            "prop=0,0x00",
            "prop=0,''",
            "prop=1,''",
            "prop=1,''",
            "prop=1,''",
            &format!("prop=0,0x{time}"),
            "prop=1,''",
            "prop=1,''",
            "prop=1,''",
            "prop=0,0x00000000",
            "prop=0,0x0000000000000000",
            "prop=3,''",
            "prop=1,''",
            "prop=1,''",
        ]
    );
}

#[test]
fn query_without_fragment_and_empty_without_question_mark() {
    let emu = probe().build().unwrap();
    for (path, want) in [("/a?x=1&y#frag", "prop=0,'x=1&y'"), ("/a", "prop=0,''"), ("/a?", "prop=0,''")] {
        let mut s = emu.stream();
        s.request_headers(
            &[(":method", "GET"), (":path", path), (":authority", "h"), ("x-probe", "prop:request.query")],
            true,
        )
        .unwrap();
        s.response_headers(&[(":status", "200")], true).unwrap();
        assert_eq!(results(&s), want, "{path}");
    }
}

#[test]
fn connection_model_and_protocol_are_configurable() {
    let emu = probe()
        .source_address("[::1]:5555")
        .destination_address("10.0.0.1:443")
        .protocol("HTTP/2")
        .build()
        .unwrap();
    let s = run(
        &emu,
        &[("x-probe", "prop:source.address;prop:source.port;prop:destination.port;prop:request.protocol;prop:connection.id;prop:connection_id")],
    );
    // Envoy over h2c (curl --http2-prior-knowledge): request.protocol 'HTTP/2'. The connection
    // id is a u64; the emulator's is the stream's context id.
    assert_eq!(
        results(&s),
        "prop=0,'[::1]:5555' | prop=0,0xb315000000000000 | prop=0,0xbb01000000000000 | prop=0,'HTTP/2' | prop=0,0x0200000000000000 | prop=0,0x0200000000000000"
    );
}

#[test]
fn local_reply_properties_like_envoy() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "h"),
            ("x-probe", "reply:403,nope"),
            ("x-probe-resp", "prop:response.code_details;prop:response.code;prop:upstream.request_attempt_count;prop:response.grpc_status;prop:response.size;prop:response.total_size;prop:response.flags"),
            ("x-probe-log", "prop:response.code_details;prop:response.size;prop:response.flags;prop:request.size;prop:response.grpc_status"),
        ],
        true,
    )
    .unwrap();
    // Envoy 1.40, the same headers through probe.sh's Envoy: exactly these.
    assert_eq!(
        results(&s),
        "reply | reply=0 | prop=0,'probe_reply' | prop=0,0x9301000000000000 | prop=0,0x0000000000000000 | prop=0,0x0700000000000000 | prop=0,0x0000000000000000 | prop=0,0x4700000000000000 | prop=0,0x0000000000000000"
    );
    s.log().unwrap();
    assert!(
        emu.logged("probe: log results=prop=0,'probe_reply' | prop=0,0x0400000000000000 | prop=0,0x0000000000000000 | prop=0,0x0000000000000000 | prop=0,0x0700000000000000"),
        "{:?}",
        emu.logs()
    );
}

#[test]
fn sizes_duration_and_grpc_status_follow_the_stream() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/x"),
            (":authority", "h"),
            ("x-probe-resp", "prop:request.size;prop:request.total_size;prop:response.grpc_status;prop:response.headers.grpc-status"),
            ("x-probe-log", "prop:request.size;prop:request.duration;prop:response.size;prop:response.grpc_status;prop:response.trailers.grpc-status"),
        ],
        false,
    )
    .unwrap();
    s.request_body(b"abc", false).unwrap();
    s.request_body(b"de", true).unwrap();
    emu.advance_clock(Duration::from_millis(7)).unwrap();
    s.response_headers(&[(":status", "200"), ("grpc-status", "5")], false).unwrap();
    s.response_body(b"xyz", false).unwrap();
    s.response_trailers(&[("grpc-status", "9")]).unwrap();
    // No content-length: the body bytes read (Envoy: 0 in the response phase of a GET, the
    // bytes read otherwise); request headers are gone there, so total_size is the body alone.
    assert_eq!(
        results(&s),
        "body_cb=3,false | body_cb=2,true | prop=0,0x0500000000000000 | prop=0,0x0500000000000000 | prop=0,0x0500000000000000 | prop=0,'5'"
    );
    s.log().unwrap();
    // Trailers win over headers (Envoy's getGrpcStatus); the duration is the emulated clock's.
    assert!(
        emu.logged("probe: log results=prop=0,0x0500000000000000 | prop=0,0xc0cf6a0000000000 | prop=0,0x0300000000000000 | prop=0,0x0900000000000000 | prop=0,'9'"),
        "{:?}",
        emu.logs()
    );
}

#[test]
fn response_properties_in_a_body_callback_like_envoy() {
    let emu = probe().build().unwrap();
    let mut s = emu.stream();
    s.request_headers(
        &[
            (":method", "GET"),
            (":path", "/x"),
            (":authority", "h"),
            (
                "x-probe-respbody",
                "prop:response.headers.content-type;prop:response.headers;prop:response.code;prop:response.total_size;prop:response.size;prop:request.path;prop:response.trailers;get:resp,content-type",
            ),
        ],
        true,
    )
    .unwrap();
    s.response_headers(
        &[(":status", "200"), ("content-length", "11"), ("content-type", "text/plain")],
        false,
    )
    .unwrap();
    s.response_body(b"upstream-ok", true).unwrap();
    // Envoy 1.40 (probe.sh, direct response): the response headers are gone once their callback
    // returned Continue, for properties as for the header map; the code stays.
    assert!(
        emu.logged("probe: response body results=body=11,true | prop=1,'' | prop=0,0x00000000 | prop=0,0xc800000000000000 | prop=0,0x0000000000000000 | prop=0,0x0000000000000000 | prop=1,'' | prop=0,0x00000000 | get=2,''"),
        "{:?}",
        emu.logs()
    );
}

#[test]
fn grpc_status_and_codes_like_envoy_side_by_side() {
    // A 404: response.grpc_status is the HTTP status mapped (12, Unimplemented).
    let envoy = envoy_builder().direct_response(404, DIRECT_BODY).start().unwrap();
    compare_case(&envoy, None, "HTTP/1.1", "GET", "/missing", &[], b"");
    drop(envoy);
    // A grpc-status header wins over the status; above 16 it is InvalidCode (-1).
    for value in ["5", "17"] {
        let envoy = envoy_builder()
            .direct_response(200, DIRECT_BODY)
            .route_patch(serde_json::json!({
                "response_headers_to_add": [{ "header": { "key": "grpc-status", "value": value } }]
            }))
            .start()
            .unwrap();
        compare_case(&envoy, None, "HTTP/1.1", "GET", "/grpc", &[], b"");
    }
}

#[test]
fn upstream_properties_like_envoy_side_by_side() {
    // A route to a cluster: xds.cluster_name and upstream.num_endpoints from the request
    // headers on, the host and one attempt once it answered, the backend latency at the end.
    let upstream = gatewasm_envoy::EchoUpstream::start().unwrap();
    let envoy = envoy_builder().upstream(upstream.addr()).start().unwrap();
    compare_case(&envoy, Some(upstream.addr()), "HTTP/1.1", "GET", "/up?q=1", &[("x-mixed", "up")], b"");
}
