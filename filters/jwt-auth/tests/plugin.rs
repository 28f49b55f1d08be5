//! The plugin's own dealings with its host, through its real callbacks on a fake host: a remote
//! JWKS fetched by a root callout on the tick (fail closed until it arrives, weak keys skipped
//! and counted, a failed fetch keeping the last key set), and signatures checked by the host's
//! `verify_signature` when it has one, by the module when it has none or `host_crypto` is off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use common::{b64, now, remote_config, rsa_key_2, Signer};
use gatewasm::testing::{Answer, FakeHost, FakeStream, Harness};
use jwt_auth::JwtAuth;
use serde_json::{json, Value};

/// The filter configured with `cfg` on `host`, its clock set to now.
fn gateway(host: Rc<FakeHost>, cfg: &Value) -> Harness<JwtAuth> {
    host.set_now(UNIX_EPOCH + Duration::from_secs(now()));
    Harness::with_host(host, &cfg.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn bearer(g: &Harness<JwtAuth>, token: &str) -> FakeStream<JwtAuth> {
    let mut s = g.stream();
    let auth = format!("Bearer {token}");
    s.request_headers(
        &[(":method", "GET"), (":path", "/"), (":authority", "gw.test"), ("authorization", &auth)],
        true,
    );
    s
}

/// The status of the filter's answer; 200 when the request went upstream.
fn status(s: &FakeStream<JwtAuth>) -> u32 {
    s.reply().map_or(200, |r| r.status)
}

fn message(s: &FakeStream<JwtAuth>) -> String {
    let body: Value = serde_json::from_slice(&s.reply().unwrap().body).unwrap();
    body["message"].as_str().unwrap().to_string()
}

#[test]
fn remote_keys_arrive_through_a_root_callout() {
    let signer = Signer::rsa();
    let mut g =
        gateway(FakeHost::new(), &remote_config("https://idp.test/.well-known/jwks.json", 500, [300, 2, 10]));
    let token = signer.token("k", &json!({"iss": "https://idp.test", "sub": "alice", "exp": now() + 600}));
    // Fail closed before the first key set.
    let s = bearer(&g, &token);
    assert_eq!((status(&s), message(&s)), (401, "Jwks remote fetch is failed".to_string()));

    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent.len(), 1, "the first fetch goes out on the first tick");
    let fetch = &sent[0];
    assert_eq!(fetch.cluster, "idp");
    assert_eq!(fetch.header(":path"), Some("/.well-known/jwks.json"));
    assert_eq!(fetch.header(":authority"), Some("idp.test"));
    assert_eq!(fetch.header("accept"), Some("application/json"));
    assert_eq!(fetch.timeout, Duration::from_millis(500));
    g.tick();
    assert_eq!(g.host().callouts().len(), 1, "one fetch in flight at a time");

    // A weak key next to the good one is skipped and counted; the good one is used.
    let weak = json!({"kty": "RSA", "kid": "old", "n": b64([0xffu8; 128]), "e": "AQAB"});
    let jwks = json!({"keys": [weak, signer.jwk("k")]}).to_string();
    g.answer(fetch.token, &Answer::new(200, &[("content-type", "application/json")], jwks));
    let s = bearer(&g, &token);
    assert_eq!(status(&s), 200);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
    let host = g.host();
    assert_eq!(host.counter("jwt_auth_jwks_fetches_total;provider=idp;result=ok"), Some(1));
    assert_eq!(host.counter("jwt_auth_jwks_fetches_total;provider=idp;result=failed"), Some(0));
    assert_eq!(host.counter("jwt_auth_jwks_weak_keys_total;provider=idp"), Some(1));

    // A token signed by a key the set lacks asks for a refetch (rate-limited); a failed
    // refetch keeps the keys that work.
    let stranger = Signer::Rsa(rsa_key_2())
        .token("new", &json!({"iss": "https://idp.test", "sub": "eve", "exp": now() + 600}));
    assert_eq!(status(&bearer(&g, &stranger)), 401);
    g.host().advance(Duration::from_secs(11));
    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent.len(), 2, "an unknown kid is fetched again");
    g.answer(sent[1].token, &Answer::new(500, &[], "down"));
    assert_eq!(g.host().counter("jwt_auth_jwks_fetches_total;provider=idp;result=failed"), Some(1));
    assert_eq!(status(&bearer(&g, &token)), 200, "the last key set is kept");
}

/// An ES256 provider checking every token (no cache), on `host`.
fn es256(host: Rc<FakeHost>, signer: &Signer, host_crypto: bool) -> Harness<JwtAuth> {
    gateway(
        host,
        &json!({
            "providers": {"p": {"local_jwks": signer.jwks("k"), "cache_size": 0}},
            "rules": [{"requires": {"provider_name": "p"}}],
            "host_crypto": host_crypto
        }),
    )
}

#[test]
fn the_hosts_verify_signature_decides_when_it_has_one() {
    let signer = Signer::p256();
    let good = signer.token("k", &json!({"sub": "alice", "exp": now() + 600}));
    let forged = Signer::p256().token("k", &json!({"sub": "admin", "exp": now() + 600}));
    let host = FakeHost::new();
    let asked = Rc::new(Cell::new(0));
    let valid = Rc::new(Cell::new(true));
    let (a, v) = (Rc::clone(&asked), Rc::clone(&valid));
    host.set_foreign_function("verify_signature", move |args| {
        assert!(!args.is_empty());
        a.set(a.get() + 1);
        // Envoy's VerifySignatureResult: `result` (field 1) true, or an error text (field 2).
        Ok(if v.get() { vec![0x08, 0x01] } else { vec![0x12, 3, b'b', b'a', b'd'] })
    });
    let g = es256(host, &signer, true);
    assert_eq!(status(&bearer(&g, &forged)), 200, "the host's word is taken");
    valid.set(false);
    let s = bearer(&g, &good);
    assert_eq!(
        (status(&s), message(&s)),
        (401, "Jwt verification fails".to_string()),
        "fail closed on its no"
    );
    assert_eq!(asked.get(), 2);

    // With host_crypto off the host is never asked; the module checks.
    let host = FakeHost::new();
    let a = Rc::clone(&asked);
    host.set_foreign_function("verify_signature", move |_| {
        a.set(a.get() + 1);
        Ok(vec![0x08, 0x01])
    });
    let g = es256(host, &signer, false);
    assert_eq!(status(&bearer(&g, &good)), 200);
    assert_eq!(status(&bearer(&g, &forged)), 401);
    assert_eq!(asked.get(), 2);
}

#[test]
fn without_verify_signature_the_module_checks_and_stops_asking() {
    let signer = Signer::p256();
    let good = signer.token("k", &json!({"sub": "alice", "exp": now() + 600}));
    let forged = Signer::p256().token("k", &json!({"sub": "admin", "exp": now() + 600}));
    let mut g = es256(FakeHost::new(), &signer, true);
    // The clock is read on the tick, not per request.
    g.tick();
    let first = bearer(&g, &good);
    assert_eq!(status(&first), 200);
    let second = bearer(&g, &good);
    assert_eq!(status(&second), 200);
    assert_eq!(second.calls() + 1, first.calls(), "only the first request asks the host");
    assert_eq!(status(&bearer(&g, &forged)), 401);
}

/// Provider `idp` with OIDC discovery through cluster `idp`: refresh every 300 s, retry after 2.
fn discovery_config(issuer: &str) -> Value {
    json!({
        "providers": {"idp": {
            "issuer": issuer,
            "remote_jwks": {"discovery": {"cluster": "idp", "timeout_ms": 500}, "cache_duration_seconds": 300,
                            "retry_interval_seconds": 2, "max_bytes": 4096},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [{"requires": {"provider_name": "idp"}}]
    })
}

fn document(issuer: &str, jwks_uri: &str) -> String {
    json!({"issuer": issuer, "jwks_uri": jwks_uri, "id_token_signing_alg_values_supported": ["RS256"]})
        .to_string()
}

#[test]
fn discovery_reads_the_issuers_document_then_its_jwks() {
    let signer = Signer::rsa();
    let issuer = "https://idp.test/realms/shop";
    let mut g = gateway(FakeHost::new(), &discovery_config(issuer));
    let token = signer.token("k", &json!({"iss": issuer, "sub": "alice", "exp": now() + 600}));
    assert_eq!(status(&bearer(&g, &token)), 401, "fail closed before any keys");

    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].cluster, "idp");
    assert_eq!(sent[0].header(":authority"), Some("idp.test"));
    assert_eq!(sent[0].header(":path"), Some("/realms/shop/.well-known/openid-configuration"));
    assert_eq!(sent[0].timeout, Duration::from_millis(500));
    g.answer(sent[0].token, &Answer::new(200, &[], document(issuer, "https://idp.test/realms/shop/certs")));
    assert_eq!(status(&bearer(&g, &token)), 401, "no keys until the JWKS arrives");

    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent.len(), 2, "the JWKS fetch follows at the next tick");
    assert_eq!(sent[1].header(":path"), Some("/realms/shop/certs"));
    assert_eq!(sent[1].cluster, "idp");
    g.answer(sent[1].token, &Answer::new(200, &[], signer.jwks("k").to_string()));
    let s = bearer(&g, &token);
    assert_eq!(status(&s), 200);
    assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));

    // A refresh goes straight to the JWKS.
    g.host().advance(Duration::from_secs(301));
    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].header(":path"), Some("/realms/shop/certs"));
    // It fails: the keys stay, and the retry reads the document again.
    g.answer(sent[2].token, &Answer::new(503, &[], "down"));
    assert_eq!(status(&bearer(&g, &token)), 200);
    g.host().advance(Duration::from_secs(3));
    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent[3].header(":path"), Some("/realms/shop/.well-known/openid-configuration"));

    let host = g.host();
    assert_eq!(host.counter("jwt_auth_discovery_fetches_total;provider=idp;result=ok"), Some(1));
    assert_eq!(host.counter("jwt_auth_jwks_fetches_total;provider=idp;result=ok"), Some(1));
    assert_eq!(host.counter("jwt_auth_jwks_fetches_total;provider=idp;result=failed"), Some(1));
}

#[test]
fn a_document_for_another_issuer_or_too_large_is_refused_until_a_good_one_comes() {
    let signer = Signer::rsa();
    let issuer = "https://idp.test";
    let mut g = gateway(FakeHost::new(), &discovery_config(issuer));
    let token = signer.token("k", &json!({"iss": issuer, "sub": "alice", "exp": now() + 600}));
    let huge =
        json!({"issuer": issuer, "jwks_uri": "https://idp.test/jwks", "pad": "x".repeat(5000)}).to_string();
    let bad = [
        Answer::new(200, &[], document("https://evil.test", "https://evil.test/jwks")),
        Answer::new(200, &[], document("https://idp.test/", "https://idp.test/jwks")),
        Answer::new(200, &[], document("https://IDP.test", "https://idp.test/jwks")),
        Answer::new(200, &[], huge),
        Answer::new(200, &[], json!({"issuer": issuer, "jwks_uri": 7}).to_string()),
        Answer::new(200, &[], json!({"issuer": issuer, "jwks_uri": "file:///etc/jwks"}).to_string()),
        Answer::new(200, &[], "<html>".to_string()),
        Answer::new(404, &[], document(issuer, "https://idp.test/jwks")),
    ];
    for (i, answer) in bad.iter().enumerate() {
        g.host().advance(Duration::from_secs(3));
        g.tick();
        let sent = g.host().callouts();
        assert_eq!(sent.len(), i + 1, "one attempt per retry interval");
        assert_eq!(sent[i].header(":path"), Some("/.well-known/openid-configuration"), "attempt {i}");
        g.answer(sent[i].token, answer);
        assert_eq!(status(&bearer(&g, &token)), 401, "attempt {i}: still no keys");
    }
    assert_eq!(
        g.host().counter("jwt_auth_discovery_fetches_total;provider=idp;result=failed"),
        Some(bad.len() as u64)
    );
    // Recovery.
    g.host().advance(Duration::from_secs(3));
    g.tick();
    let n = bad.len();
    g.answer(
        g.host().callouts()[n].token,
        &Answer::new(200, &[], document(issuer, "https://keys.idp.test/jwks")),
    );
    g.tick();
    let sent = g.host().callouts();
    assert_eq!(sent[n + 1].header(":authority"), Some("keys.idp.test"), "the document's host");
    g.answer(sent[n + 1].token, &Answer::new(200, &[], signer.jwks("k").to_string()));
    assert_eq!(status(&bearer(&g, &token)), 200);
    assert_eq!(g.host().counter("jwt_auth_discovery_fetches_total;provider=idp;result=ok"), Some(1));
}
