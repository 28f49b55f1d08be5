//! The built module in the emulator: the seed's three token locations, outputs and spoofing,
//! Envoy's answers, remote JWKS (first fetch, rotation, failures, timeouts), expiry on the host
//! clock, counters, refused configurations.
//! Build it first: cargo build --release --target wasm32-wasip1 -p jwt-auth

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{remote_config, seed_config, Signer, SECRET};
use gatewasm_emulator::{for_module, Action, Emulator, LogLevel, Stream};
use serde_json::{json, Value};

/// The emulator's clock starts here (2030-01-01T00:00:00Z).
const T0: u64 = 1_893_456_000;

fn emulator(config: &Value) -> Emulator {
    let emu = build(config);
    assert!(emu.configured(), "configuration refused: {:?}", emu.logs());
    emu
}

fn build(config: &Value) -> Emulator {
    for_module("jwt-auth", config.to_string())
        .and_then(|b| {
            b.cluster("idp").time(UNIX_EPOCH + Duration::from_secs(T0)).log_level(LogLevel::Info).build()
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn request(emu: &Emulator, path: &str, extra: &[(&str, &str)]) -> (Stream, Action) {
    let mut s = emu.stream();
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "gw.example.com"),
        (":scheme", "http"),
        ("x-forwarded-proto", "https"),
    ];
    headers.extend_from_slice(extra);
    let action = s.request_headers(&headers, true).unwrap();
    (s, action)
}

/// The login endpoint's token: `{name, email, id, iat, exp: iat + 24 h}`.
fn login_token(iat: u64) -> String {
    Signer::hmac().token_with_header(
        json!({"typ": "JWT"}),
        &json!({"name": "Admin", "email": "admin@qq.com", "id": 1, "iat": iat, "exp": iat + 86_400}),
    )
}

fn reply_json(s: &Stream) -> (u32, Value, Option<String>) {
    let r = s.local_reply().expect("a local reply");
    let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.clone());
    (r.status, serde_json::from_slice(&r.body).unwrap(), www)
}

#[test]
fn the_seeds_three_token_locations_set_the_admin_headers() {
    let emu = emulator(&seed_config());
    let token = login_token(T0);

    let cookie = format!("theme=dark; id_token={token}");
    let (s, a) = request(&emu, "/extauth/nodebackend/", &[("cookie", &cookie), ("x-admin-id", "999")]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"), "the claim, not the client's copy");
    assert_eq!(s.request_header("x-admin-email").as_deref(), Some("admin@qq.com"));
    assert_eq!(s.request_header("cookie").as_deref(), Some("theme=dark"), "the token cookie is removed");

    let bearer = format!("Bearer {token}");
    let (s, a) = request(&emu, "/extauth/nodebackend/", &[("authorization", &bearer)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-admin-id").as_deref(), Some("1"));
    assert_eq!(s.request_header("authorization"), None, "removed unless `forward`");

    let (s, a) = request(&emu, &format!("/extauth/nodebackend/?a=1&token={token}"), &[]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-admin-email").as_deref(), Some("admin@qq.com"));
    assert_eq!(s.request_header(":path").as_deref(), Some("/extauth/nodebackend/?a=1"));
}

#[test]
fn spoofed_admin_headers_are_removed_everywhere() {
    let emu = emulator(&seed_config());
    // Not protected: no token needed, but the client's x-admin-id never passes.
    let (s, a) = request(
        &emu,
        "/extauth/login",
        &[("x-admin-id", "1"), ("X-Admin-Email", "boss@example.com"), ("x-other", "kept")],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-admin-id"), None);
    assert_eq!(s.request_header("x-admin-email"), None);
    assert_eq!(s.request_header("x-other").as_deref(), Some("kept"));
    // No rule at all.
    let (s, _) = request(&emu, "/elsewhere", &[("x-admin-id", "1")]);
    assert_eq!(s.request_header("x-admin-id"), None);
    // Refused requests never go upstream, spoofed header or not.
    let (s, a) = request(&emu, "/extauth/nodebackend/", &[("x-admin-id", "1")]);
    assert_eq!(a, Action::Pause);
    assert_eq!(s.local_reply().unwrap().status, 401);
    // A token without an `email` claim: the header is not set, and the client's copy is gone.
    let t = Signer::hmac().token("k", &json!({"id": 7, "exp": T0 + 60}));
    let (s, a) = request(
        &emu,
        "/extauth/nodebackend/",
        &[("authorization", &format!("Bearer {t}")), ("x-admin-email", "x@y")],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-admin-id").as_deref(), Some("7"));
    assert_eq!(s.request_header("x-admin-email"), None);
}

#[test]
fn answers_as_envoy_gives_them() {
    let emu = emulator(&seed_config());
    let (s, a) = request(&emu, "/extauth/nodebackend/x?token=&q=1", &[]);
    assert_eq!(a, Action::Pause);
    let (status, body, www) = reply_json(&s);
    assert_eq!(status, 401);
    assert_eq!(body, json!({"status": 401, "code": "missing_token", "message": "Jwt is missing"}));
    assert_eq!(www.as_deref(), Some("Bearer realm=\"https://gw.example.com/extauth/nodebackend/x\""));
    assert_eq!(s.local_reply().unwrap().details, "jwt_auth_missing_token");

    let wrong = Signer::Hmac(vec![7; 32]).token("k", &json!({"id": 1, "exp": T0 + 60}));
    let (s, _) = request(&emu, &format!("/extauth/nodebackend/?token={wrong}"), &[]);
    let (status, body, www) = reply_json(&s);
    assert_eq!(status, 401);
    assert_eq!(body["message"], "Jwt verification fails");
    assert_eq!(body["code"], "invalid_token");
    assert_eq!(
        www.as_deref(),
        Some("Bearer realm=\"https://gw.example.com/extauth/nodebackend/\", error=\"invalid_token\""),
        "the realm never carries the query (nor the token in it)"
    );

    let expired = login_token(T0 - 86_400 - 61);
    let (s, _) = request(&emu, "/extauth/nodebackend/", &[("authorization", &format!("Bearer {expired}"))]);
    assert_eq!(reply_json(&s).1["message"], "Jwt is expired");

    let (s, _) = request(&emu, "/extauth/nodebackend/", &[("authorization", "Bearer not-a-jwt")]);
    assert_eq!(
        reply_json(&s).1["message"],
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );

    let big = format!("Bearer {}", "a".repeat(9000));
    let (s, _) = request(&emu, "/extauth/nodebackend/", &[("authorization", &big)]);
    assert_eq!(reply_json(&s).0, 401);
}

#[test]
fn audience_mismatch_is_forbidden() {
    let emu = emulator(&json!({
        "providers": {"p": {"issuer": "https://issuer.test", "audiences": ["api"], "keys": [{"secret": SECRET}]}},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    let t = Signer::hmac().token("k", &json!({"iss": "https://issuer.test", "aud": "other", "exp": T0 + 60}));
    let (s, _) = request(&emu, "/a", &[("authorization", &format!("Bearer {t}"))]);
    let (status, body, www) = reply_json(&s);
    assert_eq!(status, 403);
    assert_eq!(body["message"], "Audiences in Jwt are not allowed");
    assert_eq!(body["code"], "forbidden");
    assert_eq!(www.as_deref(), Some("Bearer realm=\"https://gw.example.com/a\", error=\"invalid_token\""));
}

#[test]
fn expiry_follows_the_host_clock_even_for_cached_tokens() {
    let emu = emulator(&seed_config());
    let t = Signer::hmac().token("k", &json!({"id": 1, "exp": T0 + 30}));
    let h = format!("Bearer {t}");
    assert_eq!(request(&emu, "/extauth/nodebackend/", &[("authorization", &h)]).1, Action::Continue);
    assert_eq!(request(&emu, "/extauth/nodebackend/", &[("authorization", &h)]).1, Action::Continue);
    emu.advance_clock(Duration::from_secs(30 + 60)).unwrap();
    assert_eq!(request(&emu, "/extauth/nodebackend/", &[("authorization", &h)]).1, Action::Continue, "skew");
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    let (s, a) = request(&emu, "/extauth/nodebackend/", &[("authorization", &h)]);
    assert_eq!(a, Action::Pause);
    assert_eq!(reply_json(&s).1["message"], "Jwt is expired");
}

#[test]
fn cors_preflight_can_pass() {
    let mut cfg = seed_config();
    cfg["bypass_cors_preflight"] = json!(true);
    let emu = emulator(&cfg);
    let mut s = emu.stream();
    let headers = [
        (":method", "OPTIONS"),
        (":path", "/extauth/nodebackend/"),
        (":authority", "gw"),
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "GET"),
    ];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Continue);
    let mut s = emu.stream();
    assert_eq!(s.request_headers(&headers[..4], true).unwrap(), Action::Pause, "not a preflight");
}

#[test]
fn counters_by_reason() {
    let emu = emulator(&seed_config());
    let good = format!("Bearer {}", login_token(T0));
    request(&emu, "/extauth/nodebackend/", &[("authorization", &good)]);
    request(&emu, "/extauth/nodebackend/", &[]);
    request(&emu, "/extauth/nodebackend/", &[]);
    request(&emu, "/extauth/nodebackend/", &[("authorization", "Bearer a.b")]);
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_allowed_total"), Some(1));
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=missing"), Some(2));
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=malformed"), Some(1));
}

#[test]
fn bad_configuration_is_refused_naming_each_field() {
    let emu = build(&json!({
        "providers": {"p": {"keys": [{"secret": "short"}], "algorithms": ["none"]}},
        "rules": [{"requires": {"provider_name": "q"}}]
    }));
    assert!(!emu.configured());
    for field in
        ["providers.p.keys[0].secret", "providers.p.algorithms[0]", "rules[0].requires.provider_name"]
    {
        assert!(emu.logged(field), "{field}: {:?}", emu.logs());
    }
    assert!(!emu.logged("short"), "a secret is never logged");
}

fn bearer_for(signer: &Signer, kid: &str, sub: &str) -> String {
    format!("Bearer {}", signer.token(kid, &json!({"iss": "https://idp.test", "sub": sub, "exp": T0 + 3600})))
}

fn jwks_calls(emu: &Emulator) -> Vec<u32> {
    emu.http_calls().into_iter().filter(|c| c.cluster == "idp").map(|c| c.token).collect()
}

/// Advances the clock in small steps until a JWKS fetch is in flight; how long that took.
fn advance_until_fetch(emu: &Emulator, max: Duration) -> Duration {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while jwks_calls(emu).is_empty() && waited < max {
        emu.advance_clock(step).unwrap();
        waited += step;
    }
    assert_eq!(jwks_calls(emu).len(), 1, "no fetch within {max:?}");
    waited
}

fn answer(emu: &Emulator, token: u32, status: &str, body: &Value) {
    emu.respond_http_call(
        token,
        &[(":status", status), ("content-type", "application/json")],
        body.to_string().as_bytes(),
        &[],
    )
    .unwrap();
}

#[test]
fn remote_jwks_fail_closed_then_fetched_rotated_and_kept_on_failure() {
    let emu = emulator(&remote_config("https://idp.test/.well-known/jwks.json", 500, [300, 2, 10]));
    let k1 = Signer::rsa();
    let k2 = Signer::p256();

    // Before the first fetch: refused, never let through.
    let (s, a) = request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k1", "alice"))]);
    assert_eq!(a, Action::Pause);
    assert_eq!(reply_json(&s).1["message"], "Jwks remote fetch is failed");

    // The first tick sends the fetch, from the root context.
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let calls = emu.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.context_id, emu.root_context_id());
    let header = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(header(":path").as_deref(), Some("/.well-known/jwks.json"));
    assert_eq!(header(":authority").as_deref(), Some("idp.test"));
    assert_eq!(call.timeout, Some(Duration::from_millis(500)));
    answer(&emu, call.token, "200", &k1.jwks("k1"));

    let (s, a) = request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k1", "alice"))]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));

    // Rotation: a token with a new kid is refused and asks for a refetch, sent at the next tick.
    let (s, _) = request(&emu, "/a", &[("authorization", &bearer_for(&k2, "k2", "bob"))]);
    assert_eq!(reply_json(&s).1["message"], "Jwks doesn't have key to match kid or alg from Jwt");
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let calls = jwks_calls(&emu);
    assert_eq!(calls.len(), 1, "one refetch");
    answer(&emu, calls[0], "200", &json!({"keys": [k2.jwk("k2")]}));
    let (s, a) = request(&emu, "/a", &[("authorization", &bearer_for(&k2, "k2", "bob"))]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("bob"));
    let (s, _) = request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k1", "alice"))]);
    assert_eq!(reply_json(&s).0, 401, "the retired key no longer verifies (cache cleared)");

    // Unknown kids do not hammer the JWKS server: at most one refetch per 10 s.
    for _ in 0..5 {
        request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k9", "eve"))]);
        emu.advance_clock(Duration::from_millis(250)).unwrap();
    }
    let calls = jwks_calls(&emu);
    assert!(calls.is_empty(), "rate-limited: {calls:?}");
    let waited = advance_until_fetch(&emu, Duration::from_secs(12));
    assert!(waited >= Duration::from_secs(8), "{waited:?}");
    let calls = jwks_calls(&emu);

    // That fetch fails (reset): the last good set stays.
    emu.fail_http_call(calls[0]).unwrap();
    assert_eq!(request(&emu, "/a", &[("authorization", &bearer_for(&k2, "k2", "bob"))]).1, Action::Continue);
    // The retry (2 s later) answers 500: still kept.
    let waited = advance_until_fetch(&emu, Duration::from_secs(3));
    assert!(waited >= Duration::from_millis(1500), "retried after retry_interval, not before: {waited:?}");
    answer(&emu, jwks_calls(&emu)[0], "500", &json!({}));
    // The next one times out (500 ms): still kept.
    advance_until_fetch(&emu, Duration::from_secs(3));
    emu.advance_clock(Duration::from_millis(600)).unwrap();
    assert!(jwks_calls(&emu).is_empty(), "timed out");
    // Then a garbage document: still kept.
    advance_until_fetch(&emu, Duration::from_secs(3));
    answer(&emu, jwks_calls(&emu)[0], "200", &json!({"keys": "nope"}));
    let new = format!(
        "Bearer {}",
        k2.token("k2", &json!({"iss": "https://idp.test", "sub": "carol", "exp": T0 + 3600}))
    );
    let (s, a) = request(&emu, "/a", &[("authorization", &new)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("carol"));

    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_jwks_fetches_total;provider=idp;result=ok"), Some(2));
    assert_eq!(emu.metric("jwt_auth_jwks_fetches_total;provider=idp;result=failed"), Some(4));
    assert!(emu.logged("JWKS fetch failed"), "{:?}", emu.logs());
}

#[test]
fn remote_jwks_refreshes_on_its_interval() {
    let emu = emulator(&remote_config("https://idp.test/.well-known/jwks.json", 500, [300, 2, 10]));
    let k1 = Signer::ed25519();
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    answer(&emu, jwks_calls(&emu)[0], "200", &k1.jwks("k1"));
    emu.advance_clock(Duration::from_secs(299)).unwrap();
    assert!(jwks_calls(&emu).is_empty());
    assert!(
        advance_until_fetch(&emu, Duration::from_secs(2)) < Duration::from_secs(2),
        "refreshed after cache_duration"
    );
    let now = emu.now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert!(now > T0);
    let (_, a) = request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k1", "alice"))]);
    assert_eq!(a, Action::Continue, "keys stay usable while the refresh is in flight");
}

#[test]
fn outputs_payload_header_nested_claims_and_forward() {
    let emu = emulator(&json!({
        "providers": {"p": {
            "keys": [{"secret": SECRET, "kid": "k1", "alg": "HS256"}],
            "forward": true,
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [
                {"header_name": "x-tenant", "claim_name": "org.tenant"},
                {"header_name": "x-admin", "claim_name": "admin"},
                {"header_name": "x-level", "claim_name": "level"},
                {"header_name": "x-roles", "claim_name": "roles"},
                {"header_name": "x-evil", "claim_name": "evil"}
            ]
        }},
        "rules": [{"match": {"prefix": "/api/", "methods": ["GET"]}, "requires": {"provider_name": "p"}}]
    }));
    let claims = json!({"org": {"tenant": "acme"}, "admin": true, "level": 3.5, "roles": ["a", "b"], "evil": "x\r\ny", "exp": T0 + 60});
    let t = Signer::hmac().token("k1", &claims);
    let bearer = format!("Bearer {t}");
    let (s, a) = request(
        &emu,
        "/api/x",
        &[("authorization", &bearer), ("x-jwt-payload", "forged"), ("x-roles", "admin")],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(
        s.request_header("authorization").as_deref(),
        Some(bearer.as_str()),
        "forward keeps the token"
    );
    assert_eq!(s.request_header("x-jwt-payload").as_deref(), t.split('.').nth(1));
    assert_eq!(s.request_header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(s.request_header("x-admin").as_deref(), Some("true"));
    assert_eq!(s.request_header("x-level").as_deref(), Some("3.5"));
    assert_eq!(
        s.request_header("x-roles").as_deref(),
        Some("WyJhIiwiYiJd"),
        "a list as Envoy sends it (base64 of its JSON), never the client's copy"
    );
    assert_eq!(s.request_header("x-evil"), None, "values a header cannot carry are not copied");
    // Other methods and paths are not checked.
    let mut st = emu.stream();
    let headers = [(":method", "POST"), (":path", "/api/x"), (":authority", "gw")];
    assert_eq!(st.request_headers(&headers, true).unwrap(), Action::Continue);
    let (_, a) = request(&emu, "/other", &[]);
    assert_eq!(a, Action::Continue);
    // A key bound to HS256 and kid k1 does not verify another kid.
    let t2 = Signer::hmac().token("k2", &claims);
    let (s, a) = request(&emu, "/api/x", &[("authorization", &format!("Bearer {t2}"))]);
    assert_eq!(a, Action::Pause);
    assert_eq!(reply_json(&s).1["message"], "Jwks doesn't have key to match kid or alg from Jwt");
}

/// On a host without `verify_signature` (Envoy before 1.35, other hosts) the module checks RS*
/// and ES* itself, with the same answers, and asks the host only once.
#[test]
fn a_host_without_verify_signature_gets_the_modules_check() {
    let signers = [("rs", Signer::rsa()), ("es", Signer::p256())];
    let jwks = json!({"keys": signers.iter().map(|(kid, s)| s.jwk(kid)).collect::<Vec<_>>()});
    let config = json!({
        "providers": {"p": {"local_jwks": jwks, "cache_size": 0}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]
    });
    for registered in [true, false] {
        let emu = for_module("jwt-auth", config.to_string())
            .and_then(|b| b.time(UNIX_EPOCH + Duration::from_secs(T0)).foreign_functions(registered).build())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut asked = 0;
        for (kid, signer) in &signers {
            let good = signer.token(kid, &json!({"sub": "u", "exp": T0 + 600}));
            let other = signer.token(kid, &json!({"sub": "admin", "exp": T0 + 600}));
            let forged =
                format!("{}.{}", good.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
            for (token, want) in [(&good, Action::Continue), (&forged, Action::Pause)] {
                emu.reset_host_calls();
                let (s, action) = request(&emu, "/a", &[("authorization", &format!("Bearer {token}"))]);
                assert_eq!(action, want, "{kid}, host function registered: {registered}");
                if want == Action::Pause {
                    assert_eq!(reply_json(&s).1["message"], "Jwt verification fails");
                }
                asked += s.host_calls().get("proxy_call_foreign_function").copied().unwrap_or(0);
            }
        }
        // Registered: asked for every signature; missing: asked once, then never again.
        assert_eq!(asked, if registered { 4 } else { 1 }, "host function registered: {registered}");
    }
}

/// The hosts an attacker can send that no host rule can read (Envoy 1.40 routes each of them to
/// a catch-all virtual host rather than refusing it).
const UNREADABLE_HOSTS: [&str; 6] = [
    "api.example.com:abc",
    "api.example.com..",
    "a.example.com:443:443",
    "user@api.example.com",
    "api%2eexample.com",
    "api.example.com:65536",
];

#[test]
fn a_host_no_rule_can_read_never_falls_through_to_a_weaker_rule() {
    let mut config = seed_config();
    config["rules"] = json!([
        {"match": {"hosts": ["api.example.com"], "prefix": "/api/"}, "requires": {"provider_name": "login"}},
        {"match": {"prefix": "/"}, "requires": {"allow_missing": {}}}
    ]);
    let emu = emulator(&config);
    let ask = |authority: &str| {
        let mut s = emu.stream();
        let headers =
            [(":method", "GET"), (":path", "/api/x"), (":authority", authority), (":scheme", "http")];
        let action = s.request_headers(&headers, true).unwrap();
        (s, action)
    };
    for host in UNREADABLE_HOSTS {
        let (s, action) = ask(host);
        assert_eq!(action, Action::Pause, "{host}");
        let (status, body, _) = reply_json(&s);
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_host")), "{host}");
    }
    // Every spelling of the protected host still reaches its rule: no token, 401.
    for host in
        ["api.example.com", "API.Example.COM", "api.example.com.", "api.example.com:8443", "api.example.com:"]
    {
        let (s, _) = ask(host);
        assert_eq!(reply_json(&s).0, 401, "{host}");
    }
    // Another host falls to the fallback rule, as before.
    assert_eq!(ask("www.example.com").1, Action::Continue);
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=invalid_host"), Some(UNREADABLE_HOSTS.len() as u64));

    // Without host rules the host is never read, and such a request is not refused.
    let emu = emulator(&seed_config());
    let mut s = emu.stream();
    let headers = [(":method", "GET"), (":path", "/extauth/login"), (":authority", "api.example.com:abc")];
    assert_eq!(s.request_headers(&headers, true).unwrap(), Action::Continue);
}

/// A provider reading all three locations, forwarding its tokens (`forward: true`), `sub` and
/// `n` to headers, the payload to `x-jwt-payload`; `/soft` lets failed tokens through.
fn three_locations_forwarded() -> Value {
    json!({
        "providers": {"p": {
            "keys": [{"secret": SECRET}],
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["token"],
            "from_cookies": ["id_token"],
            "forward": true,
            "forward_payload_header": "x-jwt-payload",
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [
            {"match": {"prefix": "/soft"}, "requires": {"allow_missing_or_failed": {}}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}
        ]
    })
}

fn user_token(sub: &str, exp: u64) -> String {
    Signer::hmac().token("k", &json!({"sub": sub, "exp": exp}))
}

/// Security: a second credential in the token's header value (after a comma, as Envoy joins two
/// `Authorization` headers, or after a space) makes the value malformed, even with `forward`,
/// so the unverified one never travels upstream.
#[test]
fn a_second_credential_in_the_header_value_is_refused_even_with_forward() {
    let emu = emulator(&three_locations_forwarded());
    let good = user_token("alice", T0 + 600);
    let forged = Signer::Hmac(vec![9; 32]).token("k", &json!({"sub": "admin", "exp": T0 + 600}));
    let (s, a) = request(&emu, "/a", &[("authorization", &format!("Bearer {good}"))]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("authorization"), Some(format!("Bearer {good}")), "forwarded as it came");
    let cases = [
        (
            format!("Bearer {good},{forged}"),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            format!("Bearer {good},Bearer {forged}"),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (format!("Bearer {good} junk"), "Jwt signature is an invalid Base64url encoded"),
        (format!("Bearer {good},"), "Jwt signature is an invalid Base64url encoded"),
    ];
    for (value, message) in &cases {
        let (s, a) = request(&emu, "/a", &[("authorization", value)]);
        assert_eq!(a, Action::Pause, "{value}");
        let (status, body, www) = reply_json(&s);
        assert_eq!((status, body["message"].as_str()), (401, Some(*message)), "{value}");
        assert!(www.unwrap().ends_with("error=\"invalid_token\""));
    }
    // Under `allow_missing_or_failed` the malformed value passes but is removed, forward or not.
    let (s, a) = request(&emu, "/soft?x=1", &[("authorization", &cases[0].0)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("authorization"), None);
    assert_eq!(s.request_header("x-user"), None);
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=malformed"), Some(4));
}

/// `allow_missing_or_failed`: valid tokens keep their outputs and stay (forward), failed ones are
/// taken out of every location before the request goes upstream.
#[test]
fn failed_tokens_never_reach_the_upstream() {
    let emu = emulator(&three_locations_forwarded());
    let good = user_token("alice", T0 + 600);
    let expired = user_token("alice", T0 - 3600);
    let cookie = format!("theme=dark; id_token={expired}");
    let (s, a) = request(
        &emu,
        &format!("/soft/x?a=1&token={expired}&b=2"),
        &[("authorization", &format!("Bearer {good}")), ("cookie", &cookie)],
    );
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    assert_eq!(s.request_header("authorization"), Some(format!("Bearer {good}")), "verified, forwarded");
    assert_eq!(s.request_header(":path").as_deref(), Some("/soft/x?a=1&b=2"));
    assert_eq!(s.request_header("cookie").as_deref(), Some("theme=dark"));
}

/// Security: two verified tokens naming different users are refused with their own reason;
/// the same user in two places passes, and the payload header carries the first token's.
#[test]
fn tokens_naming_different_identities_are_refused() {
    let emu = emulator(&three_locations_forwarded());
    let alice = user_token("alice", T0 + 600);
    let alice_later = user_token("alice", T0 + 900);
    let mallory = user_token("mallory", T0 + 600);
    let bearer = format!("Bearer {alice}");
    for path in [format!("/a?token={mallory}"), format!("/soft?token={mallory}")] {
        let (s, a) = request(&emu, &path, &[("authorization", &bearer)]);
        assert_eq!(a, Action::Pause, "{path}");
        let (status, body, www) = reply_json(&s);
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"status": 401, "code": "invalid_token", "message": "Jwts in the request name different identities"})
        );
        assert!(www.unwrap().ends_with("error=\"invalid_token\""));
    }
    let (s, a) =
        request(&emu, "/a", &[("authorization", &bearer), ("cookie", &format!("id_token={mallory}"))]);
    assert_eq!(a, Action::Pause);
    assert_eq!(s.local_reply().unwrap().status, 401);

    let (s, a) = request(&emu, &format!("/a?token={alice_later}"), &[("authorization", &bearer)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    assert_eq!(s.request_header("x-jwt-payload").as_deref(), alice.split('.').nth(1), "the first token's");
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=identity_conflict"), Some(3));
    assert_eq!(emu.metric("jwt_auth_allowed_total"), Some(1));
}

/// `claim_to_headers` value forms through the module (see `src/outputs.rs` for each decision).
#[test]
fn claim_value_forms() {
    let names = ["s", "empty", "f15", "f10", "e3", "m0", "neg", "big", "pi", "list", "obj", "nul", "t"];
    let emu = emulator(&json!({
        "providers": {"p": {
            "keys": [{"secret": SECRET}],
            "claim_to_headers": names.iter().map(|n| json!({"header_name": format!("x-{n}"), "claim_name": n})).collect::<Vec<_>>()
        }},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    // Raw JSON, so the number forms are exactly these texts.
    let payload = format!(
        r#"{{"s":"alice","empty":"","f15":1.5,"f10":1.0,"e3":1e3,"m0":-0,"neg":-5,"big":9007199254740993,"pi":3.14159265,"list":["a","b"],"obj":{{"a":1}},"nul":null,"t":true,"exp":{}}}"#,
        T0 + 600
    );
    let input = format!("{}.{}", common::b64(r#"{"alg":"HS256"}"#), common::b64(&payload));
    let t = format!("{input}.{}", common::b64(Signer::hmac().sign_raw(input.as_bytes())));
    let (s, a) = request(&emu, "/a", &[("authorization", &format!("Bearer {t}")), ("x-empty", "client")]);
    assert_eq!(a, Action::Continue, "{:?}", s.local_reply());
    let want = [
        ("s", Some("alice")),
        ("empty", None),
        ("f15", Some("1.5")),
        ("f10", Some("1")),
        ("e3", Some("1000")),
        ("m0", Some("0")),
        ("neg", Some("-5")),
        ("big", Some("9007199254740993")),
        ("pi", Some("3.14159265")),
        ("list", Some("WyJhIiwiYiJd")),
        ("obj", Some("eyJhIjoxfQ==")),
        ("nul", None),
        ("t", Some("true")),
    ];
    for (n, v) in want {
        assert_eq!(s.request_header(&format!("x-{n}")).as_deref(), v, "{n}");
    }
}

/// Duplicate member names and deep nesting in a signed token: refused as Envoy refuses them.
#[test]
fn duplicate_members_and_deep_nesting_are_refused() {
    let emu = emulator(&json!({
        "providers": {"p": {"keys": [{"secret": SECRET}], "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]}},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    let signed = |header: &str, payload: &str| {
        let input = format!("{}.{}", common::b64(header), common::b64(payload));
        format!("{input}.{}", common::b64(Signer::hmac().sign_raw(input.as_bytes())))
    };
    let exp = T0 + 600;
    let h = r#"{"alg":"HS256"}"#;
    let deep = |levels: usize| {
        format!(r#"{{"sub":"a","exp":{exp},"d":{}1{}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1))
    };
    let cases = [
        (
            signed(h, &format!(r#"{{"sub":"alice","sub":"admin","exp":{exp}}}"#)),
            Some("Jwt payload is an invalid JSON"),
        ),
        (
            signed(r#"{"alg":"HS256","alg":"HS256"}"#, &format!(r#"{{"sub":"a","exp":{exp}}}"#)),
            Some("Jwt header is an invalid JSON"),
        ),
        (signed(h, &deep(100)), None),
        (signed(h, &deep(101)), Some("Jwt payload is an invalid JSON")),
    ];
    for (token, want) in cases {
        let (s, a) = request(&emu, "/a", &[("authorization", &format!("Bearer {token}"))]);
        match want {
            None => assert_eq!(a, Action::Continue),
            Some(message) => {
                assert_eq!(a, Action::Pause);
                assert_eq!(reply_json(&s).1["message"], message);
            }
        }
    }
}

/// A weak key in a fetched JWKS (RSA under 2048 bits) is skipped with a warning and a counter;
/// the other keys are used. Inline, the same key refuses the configuration.
#[test]
fn a_weak_remote_key_is_skipped_not_an_outage() {
    let weak = json!({"kty": "RSA", "kid": "old", "n": common::b64([0xc5u8; 128]), "e": "AQAB"});
    let k1 = Signer::rsa();
    let emu = emulator(&remote_config("https://idp.test/jwks", 500, [300, 2, 10]));
    emu.advance_clock(Duration::from_millis(250)).unwrap();
    let calls = jwks_calls(&emu);
    assert_eq!(calls.len(), 1);
    answer(&emu, calls[0], "200", &json!({"keys": [weak, k1.jwk("k1")]}));
    let (s, a) = request(&emu, "/a", &[("authorization", &bearer_for(&k1, "k1", "alice"))]);
    assert_eq!(a, Action::Continue, "{:?}", s.local_reply());
    assert!(emu.logged("skipped 1 weak key(s)"), "{:?}", emu.logs());
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_jwks_weak_keys_total;provider=idp"), Some(1));
    assert_eq!(emu.metric("jwt_auth_jwks_fetches_total;provider=idp;result=ok"), Some(1));

    let inline = build(&json!({
        "providers": {"p": {"local_jwks": {"keys": [weak, k1.jwk("k1")]}}},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    assert!(!inline.configured());
    assert!(inline.logged("providers.p.local_jwks"), "{:?}", inline.logs());
    assert!(inline.logged("RSA modulus is 1024 bits"), "{:?}", inline.logs());
}

/// `requires_any`: the request passes with the second provider's token; a token only the first
/// provider reads, which failed or was never checked, is removed even though that provider
/// forwards its tokens.
#[test]
fn tokens_of_an_alternative_that_failed_are_removed() {
    let emu = emulator(&json!({
        "providers": {
            "cookie": {"issuer": "https://c", "keys": [{"secret": SECRET}], "from_cookies": ["sess"], "forward": true},
            "bearer": {"issuer": "https://b", "keys": [{"secret": SECRET}], "forward": true,
                       "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]}
        },
        "rules": [{"requires": {"requires_any": {"requirements": [{"provider_name": "cookie"}, {"provider_name": "bearer"}]}}}]
    }));
    let b = Signer::hmac().token("k", &json!({"iss": "https://b", "sub": "alice", "exp": T0 + 600}));
    let forged =
        Signer::Hmac(vec![9; 32]).token("k", &json!({"iss": "https://c", "sub": "admin", "exp": T0 + 600}));
    let bearer = format!("Bearer {b}");
    let cookie = format!("theme=dark; sess={forged}");
    let (s, a) = request(&emu, "/a", &[("authorization", &bearer), ("cookie", &cookie)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    assert_eq!(s.request_header("authorization"), Some(bearer), "verified and forwarded");
    assert_eq!(s.request_header("cookie").as_deref(), Some("theme=dark"), "the failed token is gone");
}

#[test]
fn claims_and_scopes_are_required_per_rule() {
    let signer = Signer::hmac();
    let emu = emulator(&json!({
        "providers": {"idp": {
            "issuer": "https://idp.test", "local_jwks": signer.jwks("k"),
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}, {"header_name": "x-groups", "claim_name": "groups"}]
        }},
        "rules": [
            {"match": {"prefix": "/orders/"}, "requires": {"provider_name": "idp", "scopes": ["orders:read"], "claims": {"tenant": "acme", "groups": {"all_of": ["buyers"]}}}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}
        ]
    }));
    let bearer = |claims: Value| {
        let mut c = claims;
        c["iss"] = json!("https://idp.test");
        c["exp"] = json!(T0 + 3600);
        format!("Bearer {}", signer.token("k", &c))
    };
    let alice = bearer(
        json!({"sub": "alice", "tenant": "acme", "groups": ["buyers", "staff"], "scope": "openid orders:read"}),
    );
    let (s, a) = request(&emu, "/orders/7", &[("authorization", &alice)]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    // A list claim's header is the base64 of its JSON, as Envoy 1.40 writes it.
    assert_eq!(s.request_header("x-groups").as_deref(), Some("WyJidXllcnMiLCJzdGFmZiJd"));

    for (claims, why) in [
        (
            json!({"sub": "bob", "tenant": "acme", "groups": ["buyers"], "scope": "orders:readwrite"}),
            "scope substring",
        ),
        (
            json!({"sub": "bob", "tenant": "acme", "groups": ["staff"], "scope": "orders:read"}),
            "group missing",
        ),
        (
            json!({"sub": "bob", "tenant": {"name": "acme"}, "groups": ["buyers"], "scope": "orders:read"}),
            "object tenant",
        ),
        (
            json!({"sub": "bob", "tenant": "acme", "groups": "buyers staff", "scp": ["orders:read"]}),
            "groups as one string",
        ),
    ] {
        let token = bearer(claims);
        let (s, a) = request(&emu, "/orders/7", &[("authorization", &token), ("x-user", "alice")]);
        assert_eq!(a, Action::Pause, "{why}");
        let (status, body, www) = reply_json(&s);
        assert_eq!(status, 403, "{why}");
        assert_eq!(body["code"], "insufficient_scope");
        assert_eq!(
            www.as_deref(),
            Some("Bearer realm=\"https://gw.example.com/orders/7\", error=\"insufficient_scope\"")
        );
        assert_eq!(s.request_header("x-user"), None, "{why}: no identity upstream");
        // The same token is good where only a valid token is needed.
        assert_eq!(request(&emu, "/other", &[("authorization", &token)]).1, Action::Continue, "{why}");
    }
    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_denied_total;reason=insufficient_scope"), Some(4));
}

#[test]
fn oidc_discovery_finds_the_jwks_keeps_keys_on_failure_and_recovers() {
    let issuer = "https://idp.test/tenant-a";
    let emu = emulator(&json!({
        "providers": {"idp": {
            "issuer": issuer,
            "remote_jwks": {"discovery": {"cluster": "idp", "timeout_ms": 500}, "cache_duration_seconds": 300,
                            "retry_interval_seconds": 2, "max_bytes": 2048},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [{"requires": {"provider_name": "idp"}}]
    }));
    let k1 = Signer::p256();
    let bearer = |sub: &str| {
        format!("Bearer {}", k1.token("k1", &json!({"iss": issuer, "sub": sub, "exp": T0 + 3600})))
    };
    let path_of = |emu: &Emulator| {
        let call = emu.http_calls().into_iter().find(|c| c.cluster == "idp").expect("a fetch");
        let path = call.headers.iter().find(|(k, _)| k == ":path").map(|(_, v)| v.clone()).unwrap();
        (call.token, path)
    };
    let doc = |iss: &str| json!({"issuer": iss, "jwks_uri": "https://idp.test/tenant-a/keys"});

    // Before any keys: refused.
    assert_eq!(reply_json(&request(&emu, "/a", &[("authorization", &bearer("alice"))]).0).0, 401);
    // A document naming another issuer is refused; the retry gets a good one.
    advance_until_fetch(&emu, Duration::from_secs(1));
    let (token, path) = path_of(&emu);
    assert_eq!(path, "/tenant-a/.well-known/openid-configuration");
    answer(&emu, token, "200", &doc("https://idp.test/tenant-b"));
    assert_eq!(reply_json(&request(&emu, "/a", &[("authorization", &bearer("alice"))]).0).0, 401);
    advance_until_fetch(&emu, Duration::from_secs(3));
    let (token, _) = path_of(&emu);
    answer(&emu, token, "200", &doc(issuer));
    advance_until_fetch(&emu, Duration::from_secs(1));
    let (token, path) = path_of(&emu);
    assert_eq!(path, "/tenant-a/keys");
    answer(&emu, token, "200", &k1.jwks("k1"));
    let (s, a) = request(&emu, "/a", &[("authorization", &bearer("alice"))]);
    assert_eq!(a, Action::Continue);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));

    // The refresh fails, then the document is too large: the keys stay.
    emu.advance_clock(Duration::from_secs(299)).unwrap();
    advance_until_fetch(&emu, Duration::from_secs(2));
    let (token, path) = path_of(&emu);
    assert_eq!(path, "/tenant-a/keys");
    emu.fail_http_call(token).unwrap();
    advance_until_fetch(&emu, Duration::from_secs(3));
    let (token, path) = path_of(&emu);
    assert_eq!(path, "/tenant-a/.well-known/openid-configuration");
    let mut huge = doc(issuer);
    huge["padding"] = json!("x".repeat(4096));
    answer(&emu, token, "200", &huge);
    assert_eq!(request(&emu, "/a", &[("authorization", &bearer("bob"))]).1, Action::Continue);

    emu.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(emu.metric("jwt_auth_discovery_fetches_total;provider=idp;result=ok"), Some(1));
    assert_eq!(emu.metric("jwt_auth_discovery_fetches_total;provider=idp;result=failed"), Some(2));
    assert_eq!(emu.metric("jwt_auth_jwks_fetches_total;provider=idp;result=failed"), Some(1));
    assert!(emu.logged("discovery document names another issuer"), "{:?}", emu.logs());
}
