//! The gateway model side by side with Envoy 1.40: the probe filter four times (tagged `a`,
//! `b`, `c`, `d`, each in its own VM) in the runner's HCM configuration, in front of a
//! scripted upstream and a callout cluster `svc`, and the same chain in a
//! [`gatewasm_emulator::gateway::Gateway`] whose route and cluster answer as those servers do.
//! Each case sends one request to both and requires the same: the headers the first filter
//! saw, what the upstream received, what the client received (status, headers in order, body),
//! the order of `on_log`, and the properties the filters read. Only the request id, the date
//! and the connection's `connection: close` differ by nature and are left out.
//! Build the module first: cargo build --release --target wasm32-wasip1 -p probe-filter

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use gatewasm_emulator::gateway::{self, Gateway, Source, UpstreamRequest};
use gatewasm_emulator::{wasm_path, Emulator, LogLevel};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

const TAGS: [&str; 4] = ["a", "b", "c", "d"];
const ROUTE_TIMEOUT: Duration = Duration::from_secs(1);
const SLOW: Duration = Duration::from_millis(1500);

/// The upstream's script: path -> (status, headers, body, delay); what a hyper server sends
/// after them (`content-length`, `date`) is added by [`as_hyper_sends`].
fn script(path: &str) -> (u16, Vec<(&'static str, &'static str)>, &'static str, Duration) {
    match path.split('?').next().unwrap_or_default() {
        "/hop" => (
            201,
            vec![("x-up", "1"), ("keep-alive", "timeout=5"), ("proxy-connection", "x")],
            "hi",
            Duration::ZERO,
        ),
        "/slow" => (200, vec![], "late", SLOW),
        "/check" => (200, vec![], "allowed", Duration::ZERO),
        _ => (200, vec![("x-up", "1")], "ok", Duration::ZERO),
    }
}

/// The reply as the scripted (hyper) server sends it: its headers, then `content-length` and
/// `date`.
fn as_hyper_sends(path: &str) -> gateway::Reply {
    let (status, headers, body, delay) = script(path);
    let mut r = gateway::Reply::status(status).body(body).latency(delay);
    for (n, v) in headers {
        r = r.header(n, v);
    }
    r.header("content-length", &body.len().to_string()).header("date", "Mon, 01 Jan 2024 00:00:00 GMT")
}

struct Envoy {
    envoy: gatewasm_envoy::Envoy,
    upstream: gatewasm_envoy::ScriptedUpstream,
    _svc: gatewasm_envoy::ScriptedUpstream,
}

fn envoy() -> Envoy {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    let upstream = gatewasm_envoy::ScriptedUpstream::start().unwrap();
    let svc = gatewasm_envoy::ScriptedUpstream::start().unwrap();
    for (server, paths) in [(&upstream, &["/p", "/hop", "/slow"][..]), (&svc, &["/check"][..])] {
        for path in paths {
            let (status, headers, body, delay) = script(path);
            let mut reply = gatewasm_envoy::Reply::status(status).body(body).delay(delay);
            for (n, v) in headers {
                reply = reply.header(n, v);
            }
            server.set(path, reply);
        }
    }
    let mut builder = gatewasm_envoy::EnvoyBuilder::new();
    for tag in TAGS {
        builder = builder.wasm(
            gatewasm_envoy::WasmFilter::new(&wasm)
                .name(format!("probe_{tag}"))
                .vm_id(format!("vm_{tag}"))
                .configuration(format!("tag={tag}")),
        );
    }
    let envoy = builder
        .upstream(upstream.addr())
        .cluster(gatewasm_envoy::Cluster::new("svc", svc.addr()))
        .route_timeout(ROUTE_TIMEOUT)
        .log_level("info")
        .start()
        .unwrap();
    Envoy { envoy, upstream, _svc: svc }
}

struct Chain {
    gw: Gateway,
    received: Rc<RefCell<Vec<UpstreamRequest>>>,
}

fn chain(upstream: &str, listener: &str) -> Chain {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    let received = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&received);
    let mut builder = Gateway::builder()
        .route(move |req: &UpstreamRequest| {
            seen.borrow_mut().push(req.clone());
            as_hyper_sends(&req.path)
        })
        .route_timeout(ROUTE_TIMEOUT)
        .upstream_address(upstream)
        .destination_address(listener)
        .cluster("svc", |req: &UpstreamRequest| as_hyper_sends(&req.path));
    for tag in TAGS {
        let module = Emulator::load(&wasm)
            .plugin_config(format!("tag={tag}"))
            .vm_id(&format!("vm_{tag}"))
            .log_level(LogLevel::Info);
        builder = builder.filter(&format!("probe_{tag}"), module);
    }
    Chain { gw: builder.build().unwrap(), received }
}

/// What a client got, headers in order with lower-case names.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// Sends a raw HTTP/1.1 request (with `connection: close`) to Envoy.
fn through_envoy(
    envoy: &gatewasm_envoy::Envoy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let mut conn = std::net::TcpStream::connect(envoy.listener_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("connection: close\r\n\r\n");
    req.push_str(body);
    conn.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A reset stream closes the connection without an answer (or resets it).
    let _ = conn.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        // Per connection: the client asked to close it.
        .filter(|(n, _)| n != "connection")
        .collect();
    Got { status, headers, body: body.to_string() }
}

fn through_chain(
    c: &mut Chain,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Got, Source) {
    let mut req = gateway::Request::new(method, path).body(body.as_bytes().to_vec());
    for (n, v) in headers {
        req = req.header(n, v);
    }
    req = req.header("connection", "close");
    let r = c.gw.send(&req).unwrap();
    (
        Got { status: r.status, headers: r.headers, body: String::from_utf8_lossy(&r.body).into_owned() },
        r.source,
    )
}

/// Replaces what differs by nature: UUIDs (request ids) by `<id>`, the date, the upstream
/// service time (Envoy's is measured), and a probe's hex-dumped header maps by their text.
fn scrub(got: &Got) -> Got {
    let headers = got
        .headers
        .iter()
        .map(|(n, v)| {
            let v = match n.as_str() {
                "date" => "<date>".to_string(),
                "x-envoy-upstream-service-time" => "<ms>".to_string(),
                _ => scrub_text(v),
            };
            (n.clone(), v)
        })
        .collect();
    Got { status: got.status, headers, body: scrub_text(&got.body) }
}

fn scrub_text(s: &str) -> String {
    let s = unhex_maps(s);
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if is_uuid(&b[i..]) {
            out.push_str("<id>");
            i += 36;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() >= 36
        && b[..36].iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `map=0,0x...` results as `map=0,{name: value, ...}`.
fn unhex_maps(s: &str) -> String {
    s.split(" | ")
        .map(|part| match part.strip_prefix("map=0,0x") {
            Some(hex) => {
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                format!("map=0,{:?}", pairs(&bytes))
            }
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn pairs(b: &[u8]) -> Vec<(String, String)> {
    let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
    let mut sizes = Vec::new();
    for i in 0..n {
        let at = 4 + 8 * i;
        let k = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let v = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        sizes.push((k, v));
    }
    let mut pos = 4 + 8 * n;
    let mut out = Vec::new();
    for (k, v) in sizes {
        let key = String::from_utf8_lossy(&b[pos..pos + k]).into_owned();
        let value = String::from_utf8_lossy(&b[pos + k + 1..pos + k + 1 + v]).into_owned();
        out.push((key, value));
        pos += k + v + 2;
    }
    out
}

/// The probes' `on_log` lines Envoy logged after `before` lines, in order, once `expect`
/// filters logged; and their log-phase and response-body results, sorted.
fn envoy_on_logs(envoy: &gatewasm_envoy::Envoy, before: usize, expect: usize) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = envoy.log();
        let lines: Vec<&str> = log.lines().skip(before).collect();
        let order: Vec<String> = lines
            .iter()
            .filter_map(|l| l.split_once("probe ").map(|(_, r)| r))
            .filter_map(|r| r.strip_suffix(": on_log"))
            .map(str::to_string)
            .collect();
        if order.len() >= expect {
            let mut results: Vec<String> = lines
                .iter()
                .filter_map(|l| l.split_once("probe: ").map(|(_, r)| r))
                .filter(|r| r.starts_with("log results=") || r.starts_with("response body results="))
                .map(scrub_text)
                .collect();
            results.sort();
            return (order, results);
        }
        assert!(Instant::now() < deadline, "Envoy logged {order:?} of {expect} on_log lines");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same from the chain: which filters logged `on_log` for this request (the gateway logs
/// in chain order), and their log-phase and response-body results (sorted: Envoy interleaves
/// the filters' lines in time order, the emulators keep one log each).
fn chain_on_logs(c: &Chain) -> (Vec<String>, Vec<String>) {
    let mut order = Vec::new();
    let mut results = Vec::new();
    for tag in TAGS {
        let emu = c.gw.emulator(&format!("probe_{tag}")).unwrap();
        for l in emu.take_logs() {
            if l.message == format!("probe {tag}: on_log") {
                order.push(tag.to_string());
            }
            if let Some(r) = l.message.strip_prefix("probe: ") {
                if r.starts_with("log results=") || r.starts_with("response body results=") {
                    results.push(scrub_text(r));
                }
            }
        }
    }
    results.sort();
    (order, results)
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    /// Filters that log (a failed VM does not).
    logging: usize,
    source: fn(&Source) -> bool,
}

fn upstream_view(r: &UpstreamRequest) -> Vec<(String, String)> {
    r.headers.iter().map(|(n, v)| (n.clone(), scrub_text(v))).collect()
}

fn envoy_upstream_view(r: &gatewasm_envoy::Received) -> Vec<(String, String)> {
    r.headers.iter().map(|(n, v)| (n.clone(), scrub_text(v))).collect()
}

const PROPS: &str = "prop:request.scheme;prop:request.protocol;prop:request.host;prop:request.method;prop:request.path;prop:request.url_path;prop:request.query;prop:request.id;prop:request.headers.x-mixed-case;prop:request.headers.x-request-id;prop:request.size;prop:request.total_size;prop:xds.cluster_name;prop:xds.route_name;prop:xds.virtual_host_name;prop:xds.listener_direction;prop:xds.route_metadata;prop:connection.mtls;prop:connection.requested_server_name;prop:destination.address;prop:destination.port;prop:upstream.address;prop:response.code";
const LOG_PROPS: &str = "prop:response.code;prop:response.code_details;prop:upstream.address;prop:upstream.port;prop:upstream.request_attempt_count;prop:request.path;prop:request.id;prop:request.headers.x-chain;prop:response.headers.x-up;prop:response.headers.server;prop:response.size;prop:response.flags;prop:xds.cluster_name";

#[test]
fn the_chain_runs_as_envoy_runs_it() {
    let e = envoy();
    let mut c = chain(&e.upstream.addr().to_string(), &e.envoy.listener_addr().to_string());
    let props = Box::leak(format!("map:req;{PROPS}").into_boxed_str());
    let cases = vec![
        // The HCM's additions before the first filter, the router's on the way upstream, the
        // order of decoding (x-chain a, b, c, d upstream) and encoding (x-chain-resp d, c, b, a).
        Case {
            name: "plain GET",
            method: "GET",
            path: "/p?q=1",
            headers: vec![
                ("Host", "Example.COM"),
                ("X-Mixed-Case", "v"),
                ("x-probe-a", props),
                ("x-probe-log-a", LOG_PROPS),
                ("x-probe-respbody-b", "ctx"),
            ],
            body: "",
            logging: 4,
            source: |s| *s == Source::Upstream,
        },
        // What the client's own ids, x-forwarded-*, x-envoy-* and hop-by-hop headers become.
        Case {
            name: "POST with given ids and hop-by-hop headers",
            method: "POST",
            path: "/p",
            headers: vec![
                ("x-first", "1"),
                ("Host", "h"),
                ("x-request-id", "given-id"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-envoy-foo", "1"),
                ("x-envoy-original-path", "/orig"),
                ("x-envoy-expected-rq-timeout-ms", "5"),
                ("x-envoy-internal", "true"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("content-length", "3"),
                ("x-probe-a", "map:req;prop:request.scheme;prop:request.size;prop:request.total_size"),
            ],
            body: "abc",
            logging: 4,
            source: |s| *s == Source::Upstream,
        },
        Case {
            name: "te other than trailers",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("te", "gzip"), ("x-probe-b", "map:req")],
            body: "",
            logging: 4,
            source: |s| *s == Source::Upstream,
        },
        // An upstream's keep-alive never reaches the filters; its proxy-connection does, not
        // the client.
        Case {
            name: "upstream hop-by-hop headers",
            method: "GET",
            path: "/hop",
            headers: vec![("host", "h")],
            body: "",
            logging: 4,
            source: |s| *s == Source::Upstream,
        },
        // An upgrade the route does not allow: Envoy refuses it before any filter, which only
        // log.
        Case {
            name: "upgrade request",
            method: "GET",
            path: "/u",
            headers: vec![
                ("host", "h"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("x-probe-log-a", LOG_PROPS),
            ],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::Envoy { .. }),
        },
        // A local reply from b's request headers: b's and a's response paths run, c and d's
        // never; every filter logs, in chain order.
        Case {
            name: "local reply from the request path",
            method: "GET",
            path: "/r",
            headers: vec![
                ("host", "h"),
                ("x-probe-b", "reply:403,nope"),
                ("x-probe-log-b", LOG_PROPS),
                ("x-probe-log-d", LOG_PROPS),
            ],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::LocalReply { filter, details } if filter == "probe_b" && details == "probe_reply"),
        },
        Case {
            name: "local reply without a body",
            method: "GET",
            path: "/r",
            headers: vec![("host", "h"), ("x-probe-c", "reply:204,")],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::LocalReply { filter, .. } if filter == "probe_c"),
        },
        // A local reply from b's response headers replaces the response, straight to the client.
        Case {
            name: "local reply from the response path",
            method: "GET",
            path: "/p",
            headers: vec![
                ("host", "h"),
                ("x-probe-resp-b", "reply:418,teapot"),
                ("x-probe-log-a", LOG_PROPS),
            ],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::LocalReply { filter, .. } if filter == "probe_b"),
        },
        // b pauses for a callout; its answer resumes the chain at c.
        Case {
            name: "a paused filter resumes the chain",
            method: "GET",
            path: "/p",
            headers: vec![
                ("host", "h"),
                ("x-probe-b", "http_call:svc,svc.local,/check,1000"),
                ("x-probe-callresp-b", "get:callresp,:status;buf:4"),
                ("x-probe-c", "map:req"),
            ],
            body: "",
            logging: 4,
            source: |s| *s == Source::Upstream,
        },
        // b closes the stream: the client gets no answer; every filter logs.
        Case {
            name: "a filter resets the stream",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("x-probe-b", "close:0"), ("x-probe-log-a", LOG_PROPS)],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::Reset { filter } if filter == "probe_b"),
        },
        // The route timeout: Envoy's 504 through every filter.
        Case {
            name: "route timeout",
            method: "GET",
            path: "/slow",
            headers: vec![("host", "h"), ("x-probe-log-a", LOG_PROPS)],
            body: "",
            logging: 4,
            source: |s| matches!(s, Source::Envoy { details } if details == "response_timeout"),
        },
        // d traps in its response headers: 503 straight to the client; d logs no more.
        Case {
            name: "a VM traps on the response path",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("x-probe-resp-d", "panic:boom"), ("x-probe-log-a", LOG_PROPS)],
            body: "",
            logging: 3,
            source: |s| matches!(s, Source::FailedVm { filter, .. } if filter == "probe_d"),
        },
        // d's VM is gone: every request that reaches it gets the 503 through c, b, a.
        Case {
            name: "a request reaching a failed VM",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("x-probe-log-a", LOG_PROPS)],
            body: "",
            logging: 3,
            source: |s| matches!(s, Source::FailedVm { filter, .. } if filter == "probe_d"),
        },
        // b traps in its request headers: 503 through a only.
        Case {
            name: "a VM traps on the request path",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("x-probe-b", "panic:boom"), ("x-probe-log-a", LOG_PROPS)],
            body: "",
            logging: 2,
            source: |s| matches!(s, Source::FailedVm { filter, .. } if filter == "probe_b"),
        },
        // a answers before the request reaches b's failed VM.
        Case {
            name: "a filter before a failed VM answers",
            method: "GET",
            path: "/p",
            headers: vec![("host", "h"), ("x-probe-a", "reply:401,a")],
            body: "",
            logging: 2,
            source: |s| matches!(s, Source::LocalReply { filter, .. } if filter == "probe_a"),
        },
    ];
    for case in cases {
        let upstream_before = e.upstream.received().len();
        let chain_before = c.received.borrow().len();
        let log_before = e.envoy.log().lines().count();
        let from_envoy = scrub(&through_envoy(&e.envoy, case.method, case.path, &case.headers, case.body));
        let (from_chain, source) = through_chain(&mut c, case.method, case.path, &case.headers, case.body);
        let from_chain = scrub(&from_chain);
        assert_eq!(from_chain, from_envoy, "{}: what the client received", case.name);
        assert!((case.source)(&source), "{}: answered by {source:?}", case.name);
        let up_envoy: Vec<_> =
            e.upstream.received().iter().skip(upstream_before).map(envoy_upstream_view).collect();
        let up_chain: Vec<_> = c.received.borrow().iter().skip(chain_before).map(upstream_view).collect();
        assert_eq!(up_chain, up_envoy, "{}: what the upstream received", case.name);
        let bodies_envoy: Vec<_> =
            e.upstream.received().iter().skip(upstream_before).map(|r| r.body.clone()).collect();
        let bodies_chain: Vec<_> =
            c.received.borrow().iter().skip(chain_before).map(|r| r.body.clone()).collect();
        assert_eq!(bodies_chain, bodies_envoy, "{}: the upstream's body", case.name);
        let (order_envoy, results_envoy) = envoy_on_logs(&e.envoy, log_before, case.logging);
        let (order_chain, results_chain) = chain_on_logs(&c);
        assert_eq!(order_chain, order_envoy, "{}: on_log order", case.name);
        assert_eq!(results_chain, results_envoy, "{}: log-phase properties", case.name);
    }
}

#[test]
fn clusters_answer_after_their_latency_and_ticks_share_one_clock() {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    let mut gw = Gateway::builder()
        .cluster("svc", |_| gateway::Reply::status(200).body("late").latency(Duration::from_millis(300)))
        .filter("probe_a", Emulator::load(&wasm).plugin_config("tag=a"))
        .filter("probe_b", Emulator::load(&wasm).plugin_config("tag=b"))
        .build()
        .unwrap();
    let start = gw.now();
    // a starts a 100 ms tick; b's callout takes 300 ms: the request waits for it while a ticks.
    let r = gw
        .send(
            &gateway::Request::get("/p")
                .header("x-probe-a", "tick:100")
                .header("x-probe-b", "http_call:svc,svc.local,/check,1000")
                .header("x-probe-callresp-b", "get:callresp,:status"),
        )
        .unwrap();
    assert_eq!(r.source, Source::Upstream);
    assert_eq!(gw.now().duration_since(start).unwrap(), Duration::from_millis(300));
    let ticks = |gw: &Gateway| {
        gw.emulator("probe_a")
            .unwrap()
            .logs()
            .iter()
            .filter(|l| l.message.starts_with("probe: tick at"))
            .count()
    };
    assert_eq!(ticks(&gw), 3);
    gw.advance(Duration::from_millis(250)).unwrap();
    assert_eq!(ticks(&gw), 5);
    // A callout slower than its timeout gets Envoy's 504 at the timeout; the late answer is
    // dropped.
    let r = gw
        .send(
            &gateway::Request::get("/p")
                .header("x-probe-b", "http_call:svc,svc.local,/check,100")
                .header("x-probe-callresp-b", "get:callresp,:status"),
        )
        .unwrap();
    assert!(r.header("x-probe-results-b").unwrap().contains("get=0,'504'"), "{r:?}");
    // A cluster not declared: BadArgument at once, as in Envoy.
    let r = gw.send(&gateway::Request::get("/p").header("x-probe-b", "http_call:nowhere,h,/x,100")).unwrap();
    assert_eq!(r.header("x-probe-results-b"), Some("http_call=2,0"));
    // The route's cluster: the route's upstream answers (here the default 200).
    let r = gw
        .send(
            &gateway::Request::get("/p")
                .header("x-probe-b", "http_call:upstream,h,/x,100")
                .header("x-probe-callresp-b", "get:callresp,:status"),
        )
        .unwrap();
    assert!(r.header("x-probe-results-b").unwrap().ends_with("get=0,'200'"), "{r:?}");
}

#[test]
fn a_filter_that_holds_the_request_with_nothing_pending_is_an_error() {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    let mut gw =
        Gateway::builder().filter("probe_a", Emulator::load(&wasm).plugin_config("tag=a")).build().unwrap();
    let err = gw.send(&gateway::Request::get("/p").header("x-probe-a", "pause")).unwrap_err();
    assert!(err.to_string().contains("probe_a holds the stream"), "{err}");
}

#[test]
fn grpc_clusters_answer_unary_calls_after_their_latency() {
    let wasm = wasm_path("probe-filter").unwrap_or_else(|e| panic!("{e}"));
    let services = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&services);
    let mut gw = Gateway::builder()
        .grpc_cluster("ratelimit", move |call: &gatewasm_emulator::GrpcCall| {
            seen.borrow_mut().push(format!("{}/{} {:?}", call.service, call.method, call.message));
            (gatewasm_emulator::GrpcResponse::message(b"pong"), Duration::from_millis(50))
        })
        .filter("probe_a", Emulator::load(&wasm).plugin_config("tag=a"))
        .build()
        .unwrap();
    let start = gw.now();
    let r = gw
        .send(&gateway::Request::get("/p").header("x-probe-a", "grpc_call:ratelimit,svc.S,Check,1000,ping"))
        .unwrap();
    assert_eq!(r.source, Source::Upstream);
    assert_eq!(r.header("x-probe-results-a"), Some("grpc_call=0,5 | grpcresp=5,0,4"));
    assert_eq!(*services.borrow(), ["svc.S/Check [112, 105, 110, 103]"]);
    assert_eq!(gw.now().duration_since(start).unwrap(), Duration::from_millis(50));
}
