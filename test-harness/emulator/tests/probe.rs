//! Runs the probe filter (raw host calls) in the emulator and checks the answers Envoy 1.40 gave
//! to the same probes (see test-harness/probe-filter/envoy/probe.sh).
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
    let err = s.request_headers(&[(":path", "/"), ("x-probe", "grpc_call:c")], true).unwrap_err();
    assert!(err.to_string().contains("proxy_grpc_call"), "{err}");
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
