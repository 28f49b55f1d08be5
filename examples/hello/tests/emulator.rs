//! The example filter in the emulator: milliseconds, no Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use gatewasm_emulator::{for_module, Action, Emulator};

fn hello(config: &str) -> Emulator {
    for_module("hello", config).and_then(|b| b.build()).unwrap()
}

#[test]
fn greets_the_upstream_with_the_host() {
    let emu = hello(r#"{"greeting": "hi"}"#);
    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/x"), (":authority", "Shop.Example.com:8080")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Continue);
    assert_eq!(s.request_header("x-greeting").as_deref(), Some("hi shop.example.com"));
    assert_eq!(emu.metric("hello_requests_total;method=GET"), Some(1));
}

#[test]
fn refuses_the_blocked_prefix() {
    let emu = hello(r#"{"blocked_prefix": "/admin"}"#);
    let mut s = emu.stream();
    s.request_headers(&[(":method", "POST"), (":path", "/admin/users?x=1"), (":authority", "a")], true)
        .unwrap();
    let reply = s.local_reply().expect("a 403");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.details, "hello_blocked_path");
    assert_eq!(emu.metric("hello_requests_total;method=POST"), Some(1));
}

#[test]
fn bad_config_is_refused_naming_each_field() {
    let emu = hello(r#"{"blocked_prefix": "admin", "greeting": "a\r\nb", "colour": 1}"#);
    assert!(!emu.configured());
    assert!(emu.logged("`colour`: unknown field"), "{:?}", emu.logs());
    assert!(emu.logged("`blocked_prefix` = \"admin\": must start with '/'"), "{:?}", emu.logs());
    assert!(emu.logged("`greeting` = \"a\\r\\nb\""), "{:?}", emu.logs());
}
