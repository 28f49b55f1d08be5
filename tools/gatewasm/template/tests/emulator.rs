//! The module in the emulator: milliseconds, no Envoy. `for_module` builds `{{lib}}.wasm` first
//! when it is missing or older than its sources.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatewasm_emulator::{for_module, Action, Emulator};

fn guard(config: &str) -> Emulator {
    for_module("{{name}}", config).and_then(|b| b.build()).unwrap()
}

#[test]
fn allowed_tenants_pass_and_others_get_403() {
    let emu = guard(r#"{"allowed": ["acme"], "header": "x-org"}"#);
    let mut s = emu.stream();
    let allowed = [(":method", "GET"), (":path", "/"), (":authority", "a"), ("x-org", "acme")];
    assert_eq!(s.request_headers(&allowed, true).unwrap(), Action::Continue);

    let mut s = emu.stream();
    s.request_headers(&[(":method", "GET"), (":path", "/"), (":authority", "a"), ("x-org", "evil")], true)
        .unwrap();
    let reply = s.local_reply().expect("a 403");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.details, "{{lib}}_tenant_denied");
    assert_eq!(emu.metric("{{lib}}_requests_total;tenant=acme;decision=allowed"), Some(1));
    assert_eq!(emu.metric("{{lib}}_requests_total;tenant=other;decision=denied"), Some(1));
}

#[test]
fn bad_config_is_refused_naming_the_field() {
    let emu = guard(r#"{"allowed": []}"#);
    assert!(!emu.configured());
    assert!(emu.logged("`allowed` = \"[]\": name at least one tenant"), "{:?}", emu.logs());
}
