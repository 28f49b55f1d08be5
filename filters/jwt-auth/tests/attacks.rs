//! Attacks and edge cases: against the verifier (`alg: none`, key confusion, tampering,
//! malformed parts, claim types, skew boundaries, `crit`, hostile `kid`s, embedded keys,
//! oversized tokens, the cache), and through the filter's own callbacks on a fake host (forged
//! tokens next to good ones, requirement combinations, a second credential in a header, two
//! identities, unverified tokens stripped, a host no rule can read).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{b64, now, Signer, SECRET};
use gatewasm::testing::{Action, FakeHost, FakeStream, Harness};
use jwt_auth::config::{self, Compiled};
use jwt_auth::status::Status;
use jwt_auth::JwtAuth;
use rsa::pkcs8::EncodePublicKey as _;
use serde_json::{json, Value};

fn compile(cfg: Value) -> Compiled {
    config::parse(cfg.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn provider_cfg(jwks: Value) -> Value {
    json!({
        "providers": {"p": {"issuer": "https://issuer.test", "audiences": ["api"], "local_jwks": jwks}},
        "rules": [{"requires": {"provider_name": "p"}}]
    })
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://issuer.test", "aud": "api", "sub": "u1", "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn check(c: &Compiled, token: &str) -> Status {
    match c.providers[0].verify(token, now(), None, None) {
        Ok(_) => Status::Ok,
        Err(s) => s,
    }
}

#[test]
fn alg_none_in_every_case_is_refused() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let unsigned =
            format!("{}.{}.", b64(json!({"alg": alg}).to_string()), b64(claims(json!({})).to_string()));
        // No signature section: not a JWS at all (Envoy's answer too).
        assert_eq!(check(&c, &unsigned), Status::BadFormat, "{alg}");
        let signed = s.token_with_header(json!({"alg": alg}), &claims(json!({})));
        assert_eq!(check(&c, &signed), Status::HeaderNotImplementedAlg, "{alg}");
    }
}

#[test]
fn rsa_public_key_is_never_an_hmac_secret() {
    let rsa = Signer::rsa();
    let Signer::Rsa(private) = &rsa else { unreachable!() };
    let public = private.to_public_key();
    let pem = public.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let der = public.to_public_key_der().unwrap();
    let c = compile(provider_cfg(rsa.jwks("k")));
    assert_eq!(check(&c, &rsa.token("k", &claims(json!({})))), Status::Ok);
    for secret in [pem.as_bytes().to_vec(), der.as_bytes().to_vec()] {
        let forged = Signer::Hmac(secret).token("k", &claims(json!({})));
        assert_eq!(check(&c, &forged), Status::KidAlgMismatch);
    }
    // The same with the key given as PEM.
    let c = compile(json!({
        "providers": {"p": {"keys": [{"pem": pem}]}}, "rules": [{"requires": {"provider_name": "p"}}]
    }));
    let forged = Signer::Hmac(pem.as_bytes().to_vec()).token("k", &claims(json!({})));
    assert_eq!(check(&c, &forged), Status::KidAlgMismatch);
    // And an HMAC key never verifies RS256.
    let c = compile(provider_cfg(Signer::hmac().jwks("k")));
    assert_eq!(check(&c, &rsa.token("k", &claims(json!({})))), Status::KidAlgMismatch);
}

#[test]
fn tampering_and_malformed_parts() {
    let s = Signer::p256();
    let c = compile(provider_cfg(s.jwks("k")));
    let good = s.token("k", &claims(json!({})));
    assert_eq!(check(&c, &good), Status::Ok);
    let parts: Vec<&str> = good.split('.').collect();
    let evil = b64(claims(json!({"sub": "admin"})).to_string());
    assert_eq!(check(&c, &format!("{}.{evil}.{}", parts[0], parts[2])), Status::VerificationFailed);
    assert_eq!(
        check(&c, &format!("{}.{}.{}", parts[0], parts[1], b64([0u8; 64]))),
        Status::VerificationFailed
    );
    assert_eq!(
        check(&c, &format!("{}.{}.{}", parts[0], parts[1], b64([1u8; 10]))),
        Status::VerificationFailed
    );
    assert_eq!(check(&c, &format!("{}.{}.%%%", parts[0], parts[1])), Status::SignatureBadBase64);
    assert_eq!(check(&c, &format!("{}.@@.{}", parts[0], parts[2])), Status::PayloadBadBase64);
    assert_eq!(check(&c, &format!("$$.{}.{}", parts[1], parts[2])), Status::HeaderBadBase64);
    assert_eq!(check(&c, "a.b"), Status::BadFormat);
    assert_eq!(check(&c, ""), Status::BadFormat);
    assert_eq!(check(&c, "...."), Status::BadFormat);
}

#[test]
fn registered_claims_must_be_numbers() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    for (claim, status) in [
        ("exp", Status::PayloadExpNotNumber),
        ("nbf", Status::PayloadNbfNotNumber),
        ("iat", Status::PayloadIatNotNumber),
    ] {
        for bad in [json!("1999999999"), json!(null), json!([1]), json!(-5)] {
            let t = s.token("k", &claims(json!({claim: bad})));
            assert_eq!(check(&c, &t), status, "{claim}={bad}");
        }
    }
    let t = s.token("k", &claims(json!({"iss": 7})));
    assert_eq!(check(&c, &t), Status::PayloadIssNotString);
}

#[test]
fn exp_and_nbf_on_the_skew_boundaries() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    let n = 2_000_000_000;
    let at = |claims_extra: Value| {
        let t = s.token("k", &claims(claims_extra));
        match c.providers[0].verify(&t, n, None, None) {
            Ok(_) => Status::Ok,
            Err(s) => s,
        }
    };
    assert_eq!(at(json!({"exp": n - 60})), Status::Ok);
    assert_eq!(at(json!({"exp": n - 61})), Status::Expired);
    assert_eq!(at(json!({"exp": n + 600, "nbf": n + 60})), Status::Ok);
    assert_eq!(at(json!({"exp": n + 600, "nbf": n + 61})), Status::NotYetValid);
}

#[test]
fn crit_kid_and_embedded_keys() {
    let s = Signer::rsa();
    let c = compile(provider_cfg(s.jwks("k")));
    let t = s.token_with_header(json!({"kid": "k", "crit": ["exp"], "exp": 1}), &claims(json!({})));
    assert_eq!(check(&c, &t), Status::HeaderUnknownCrit);
    for kid in ["../../../../etc/passwd", "' OR 1=1 --", "k\0", "k/../k", &"k".repeat(5000)] {
        let t = s.token(kid, &claims(json!({})));
        assert_eq!(check(&c, &t), Status::KidAlgMismatch, "{kid:.20}");
    }
    // An attacker's key embedded in the header (jwk), or pointed to (jku, x5u), is never used.
    let attacker = Signer::p256();
    let header = json!({"alg": "ES256", "kid": "k", "jwk": attacker.jwk("k"), "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/x"});
    let t = attacker.token_with_header(header, &claims(json!({})));
    assert_eq!(check(&c, &t), Status::KidAlgMismatch);
    let mixed = compile(provider_cfg(json!({"keys": [s.jwk("k"), Signer::p256().jwk("k")]})));
    let t = attacker
        .token_with_header(json!({"alg": "ES256", "kid": "k", "jwk": attacker.jwk("k")}), &claims(json!({})));
    assert_eq!(check(&mixed, &t), Status::VerificationFailed);
}

#[test]
fn issuer_audience_lifetime_and_algorithms() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    assert_eq!(check(&c, &s.token("k", &claims(json!({"iss": "https://other"})))), Status::UnknownIssuer);
    let mut no_iss = claims(json!({}));
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(check(&c, &s.token("k", &no_iss)), Status::UnknownIssuer);
    assert_eq!(check(&c, &s.token("k", &claims(json!({"aud": "other"})))), Status::AudienceNotAllowed);
    assert_eq!(check(&c, &s.token("k", &claims(json!({"aud": ["x", "https://api/"]})))), Status::Ok);
    assert_eq!(Status::AudienceNotAllowed.http_status(), 403);

    let strict = compile(json!({
        "providers": {"p": {"keys": [{"secret": SECRET}], "max_lifetime_seconds": 3600, "algorithms": ["HS512"]}},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    let n = now();
    assert_eq!(check(&strict, &s.token("k", &json!({"exp": n + 60}))), Status::AlgNotAllowed);
    let s512 = |c: &Value| {
        let input = format!("{}.{}", b64(json!({"alg": "HS512"}).to_string()), b64(c.to_string()));
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha512>::new_from_slice(SECRET.as_bytes()).unwrap();
        m.update(input.as_bytes());
        format!("{input}.{}", b64(m.finalize().into_bytes()))
    };
    // A 32-byte secret is too short for HS512 (RFC 7518 section 3.2).
    assert_eq!(check(&strict, &s512(&json!({"exp": n + 60}))), Status::KidAlgMismatch);
    let long = compile(json!({
        "providers": {"p": {"keys": [{"secret": "x".repeat(64)}], "max_lifetime_seconds": 3600, "require_expiration": true}},
        "rules": [{"requires": {"provider_name": "p"}}]
    }));
    let hs512 = |c: &Value| {
        let input = format!("{}.{}", b64(json!({"alg": "HS512"}).to_string()), b64(c.to_string()));
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha512>::new_from_slice("x".repeat(64).as_bytes()).unwrap();
        m.update(input.as_bytes());
        format!("{input}.{}", b64(m.finalize().into_bytes()))
    };
    assert_eq!(check(&long, &hs512(&json!({"exp": n + 60, "iat": n}))), Status::Ok);
    assert_eq!(check(&long, &hs512(&json!({"iat": n}))), Status::MissingExpiration);
    assert_eq!(check(&long, &hs512(&json!({"exp": n + 7200, "iat": n}))), Status::LifetimeExceeded);
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    let big = s.token("k", &claims(json!({"pad": "x".repeat(1 << 20)})));
    assert!(big.len() > 1_000_000);
    assert_eq!(check(&c, &big), Status::TooLarge);
    assert_eq!(Status::TooLarge.http_status(), 401);
}

#[test]
fn cached_tokens_still_expire() {
    let s = Signer::hmac();
    let c = compile(provider_cfg(s.jwks("k")));
    let n = 2_000_000_000;
    let t = s.token("k", &claims(json!({"exp": n + 10})));
    assert!(c.providers[0].verify(&t, n, None, None).is_ok());
    assert_eq!(c.providers[0].cache.borrow().len(), 1);
    assert!(c.providers[0].verify(&t, n + 70, None, None).is_ok(), "within skew");
    assert_eq!(c.providers[0].cache.borrow().hits(), 1);
    assert_eq!(c.providers[0].verify(&t, n + 71, None, None).unwrap_err(), Status::Expired);
    assert_eq!(c.providers[0].cache.borrow().len(), 0, "expired entries leave the cache");
    // A cached token is still checked against the audiences of the requirement.
    let t = s.token("k", &claims(json!({})));
    assert!(c.providers[0].verify(&t, now(), None, None).is_ok());
    let other = vec!["other".to_string()];
    assert_eq!(c.providers[0].verify(&t, now(), Some(&other), None).unwrap_err(), Status::AudienceNotAllowed);
}

/// The filter configured with `cfg` on a fake host whose clock reads now.
fn gateway(cfg: &Value) -> Harness<JwtAuth> {
    let host = FakeHost::new();
    host.set_now(UNIX_EPOCH + Duration::from_secs(now()));
    Harness::with_host(host, &cfg.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// One request through the filter's callbacks: `path` (query included) on `gw.test`, and
/// `headers`.
fn send(g: &Harness<JwtAuth>, path: &str, headers: &[(&str, &str)]) -> FakeStream<JwtAuth> {
    let mut all = vec![(":method", "GET"), (":path", path), (":authority", "gw.test"), (":scheme", "https")];
    all.extend_from_slice(headers);
    let mut stream = g.stream();
    let action = stream.request_headers(&all, true);
    assert_eq!(action == Action::Continue, stream.reply().is_none(), "goes upstream or is answered");
    stream
}

/// What the filter decided: `(200, "OK")` when the request went upstream, otherwise the status
/// and message of its answer.
fn answer(stream: &FakeStream<JwtAuth>) -> (u32, String) {
    match stream.reply() {
        None => outcome(Status::Ok),
        Some(reply) => {
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            (reply.status, body["message"].as_str().unwrap_or_default().to_string())
        }
    }
}

/// The answer that means `status`.
fn outcome(status: Status) -> (u32, String) {
    let code = if status == Status::Ok { 200 } else { u32::from(status.http_status()) };
    (code, status.message().to_string())
}

/// Rules chosen by path: requirement `i` applies under `/i/`.
fn by_path(requirements: &[Value]) -> Value {
    requirements
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"match": {"prefix": format!("/{i}/")}, "requires": r}))
        .collect()
}

/// Provider `a` (issuer `https://a`; bearer header, `?token=`, cookie `id_token`) and `b`
/// (issuer `https://b`, audience `b-api`, bearer header), one key; each names its issuer in a
/// header of its own, so which provider verified a token shows upstream.
fn two_providers(requirements: &[Value], forward: bool) -> Harness<JwtAuth> {
    let a = Signer::hmac();
    gateway(&json!({
        "providers": {
            "a": {"issuer": "https://a", "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}], "from_params": ["token"], "from_cookies": ["id_token"],
                  "claim_to_headers": [{"header_name": "x-a-iss", "claim_name": "iss"}], "forward": forward},
            "b": {"issuer": "https://b", "audiences": ["b-api"], "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                  "claim_to_headers": [{"header_name": "x-b-iss", "claim_name": "iss"}], "forward": forward}
        },
        "rules": by_path(requirements)
    }))
}

fn tok(iss: &str, aud: &str) -> String {
    Signer::hmac().token("k", &json!({"iss": iss, "aud": aud, "exp": now() + 600}))
}

/// A token of issuer `https://a` signed with another key than the one configured.
fn forged() -> String {
    Signer::Hmac(vec![9; 32]).token("k", &json!({"iss": "https://a", "sub": "admin", "exp": now() + 600}))
}

#[test]
fn every_token_must_verify() {
    let g = two_providers(&[json!({"provider_name": "a"})], false);
    let good = tok("https://a", "x");
    let bad = forged();
    let req =
        |h: &str, q: &str| send(&g, &format!("/0/?token={q}"), &[("authorization", &format!("Bearer {h}"))]);
    let s = req(&good, &good);
    assert_eq!(answer(&s), outcome(Status::Ok));
    // Both verified: both removed, the issuer passed on.
    assert_eq!(s.request_header("authorization"), None);
    assert_eq!(s.request_header(":path").as_deref(), Some("/0/"));
    assert_eq!(s.request_header("x-a-iss").as_deref(), Some("https://a"));
    assert_eq!(
        answer(&req(&good, &bad)),
        outcome(Status::VerificationFailed),
        "a bad token next to a good one"
    );
    assert_eq!(answer(&req(&bad, &good)), outcome(Status::VerificationFailed));
    let other = tok("https://a", "y");
    assert_eq!(answer(&req(&good, &other)), outcome(Status::Ok), "two different good tokens");
    assert_eq!(answer(&send(&g, "/0/", &[])), outcome(Status::Missing));
    let s = send(&g, "/0/", &[("cookie", &format!("x=1; id_token={good}"))]);
    assert_eq!(answer(&s), outcome(Status::Ok));
    assert_eq!(s.request_header("cookie").as_deref(), Some("x=1"));
    assert_eq!(s.request_header("x-a-iss").as_deref(), Some("https://a"));
}

#[test]
fn requirement_combinations() {
    let g = two_providers(
        &[
            json!({"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}),
            json!({"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}),
            json!({"allow_missing": {}}),
            json!({"allow_missing_or_failed": {}}),
            json!({"requires_any": {"requirements": [{"provider_name": "b"}, {"allow_missing": {}}]}}),
            json!({"provider_and_audiences": {"provider_name": "b", "audiences": ["other"]}}),
        ],
        false,
    );
    let bearer =
        |rule: usize, t: &str| send(&g, &format!("/{rule}/"), &[("authorization", &format!("Bearer {t}"))]);
    let none = |rule: usize| send(&g, &format!("/{rule}/"), &[]);
    let verified_by = |s: &FakeStream<JwtAuth>| (s.request_header("x-a-iss"), s.request_header("x-b-iss"));
    let a = tok("https://a", "x");
    let b = tok("https://b", "b-api");
    let b_wrong_aud = tok("https://b", "nope");
    let c_iss = tok("https://c", "x");
    let (by_a, by_b) = ((Some("https://a".to_string()), None), (None, Some("https://b".to_string())));

    assert_eq!(answer(&bearer(0, &a)), outcome(Status::Ok), "any: a");
    assert_eq!(answer(&bearer(0, &b)), outcome(Status::Ok), "any: b");
    assert_eq!(
        answer(&bearer(0, &b_wrong_aud)),
        outcome(Status::AudienceNotAllowed),
        "any: the telling failure"
    );
    assert_eq!(answer(&bearer(0, &c_iss)), outcome(Status::UnknownIssuer));
    assert_eq!(answer(&none(0)), outcome(Status::Missing));

    assert_eq!(answer(&bearer(1, &a)), outcome(Status::UnknownIssuer), "all: b fails on a's token");
    let both = send(&g, &format!("/1/?token={a}"), &[("authorization", &format!("Bearer {b}"))]);
    assert_eq!(
        answer(&both),
        outcome(Status::UnknownIssuer),
        "a reads both locations: b's token in its header fails a's issuer check"
    );

    let s = none(2);
    assert_eq!((answer(&s), verified_by(&s)), (outcome(Status::Ok), (None, None)), "allow_missing: nothing");
    let s = bearer(2, &a);
    assert_eq!((answer(&s), verified_by(&s)), (outcome(Status::Ok), by_a.clone()));
    let s = bearer(2, &b);
    assert_eq!(
        (answer(&s), verified_by(&s)),
        (outcome(Status::Ok), by_b),
        "the provider of the token's issuer"
    );
    assert_eq!(answer(&bearer(2, &c_iss)), outcome(Status::UnknownIssuer), "as Envoy 1.40 answers");
    assert_eq!(answer(&bearer(2, &b_wrong_aud)), outcome(Status::AudienceNotAllowed));
    assert_eq!(answer(&bearer(2, "garbage")), outcome(Status::BadFormat));

    let s = bearer(3, "garbage");
    assert_eq!((answer(&s), verified_by(&s)), (outcome(Status::Ok), (None, None)), "allow_missing_or_failed");
    let s = bearer(3, &a);
    assert_eq!((answer(&s), verified_by(&s)), (outcome(Status::Ok), by_a));

    assert_eq!(answer(&bearer(4, &c_iss)), outcome(Status::UnknownIssuer), "as Envoy 1.40 answers");
    assert_eq!(answer(&none(4)), outcome(Status::Ok));

    assert_eq!(answer(&bearer(5, &b)), outcome(Status::AudienceNotAllowed), "audiences replaced");
}

fn sub_token(sub: &str) -> String {
    Signer::hmac().token("k", &json!({"iss": "https://a", "sub": sub, "exp": now() + 600}))
}

/// A header value holds exactly one token after the scheme: a second credential in the same
/// value (joined by a comma, as Envoy joins two `Authorization` headers, or after a space) makes
/// the whole value a malformed token, so no unverified credential rides along a good one.
#[test]
fn a_header_value_holds_one_token_or_is_malformed() {
    let g = gateway(&json!({
        "providers": {"a": {"issuer": "https://a", "local_jwks": Signer::hmac().jwks("k"), "forward": true}},
        "rules": by_path(&[json!({"provider_name": "a"}), json!({"allow_missing": {}})])
    }));
    let good = sub_token("alice");
    let forged = forged();
    let bearer = |rule: usize, v: &str| answer(&send(&g, &format!("/{rule}/"), &[("authorization", v)]));
    assert_eq!(bearer(0, &format!("Bearer {good}")), outcome(Status::Ok));
    assert_eq!(bearer(0, &format!("Bearer  {good} ")), outcome(Status::Ok), "spaces around it");
    for (value, want) in [
        (format!("Bearer {good},{forged}"), Status::BadFormat),
        (format!("Bearer {good}, {forged}"), Status::BadFormat),
        (format!("Bearer {good},Bearer {forged}"), Status::BadFormat),
        (format!("Bearer {good},{good}"), Status::BadFormat),
        (format!("Bearer {good} junk"), Status::SignatureBadBase64),
        (format!("Bearer {good},"), Status::SignatureBadBase64),
        (format!("Bearer {good},Basic dXNlcg=="), Status::SignatureBadBase64),
    ] {
        for rule in [0, 1] {
            assert_eq!(bearer(rule, &value), outcome(want), "rule {rule}: {value}");
        }
    }
    // The scheme must start the value.
    assert_eq!(bearer(0, &format!("Basic dXNlcg==, Bearer {good}")), outcome(Status::Missing));
    // Separate header lines (HTTP/2) are separate values: each one must verify.
    let two = send(
        &g,
        "/0/",
        &[("authorization", &format!("Bearer {good}")), ("authorization", &format!("Bearer {forged}"))],
    );
    assert_eq!(answer(&two), outcome(Status::VerificationFailed));
}

/// Verified tokens that name different identities are refused: the last location read must not
/// decide who the request is. The same identity in several places passes.
#[test]
fn verified_tokens_must_name_one_identity() {
    let a = Signer::hmac();
    let g = gateway(&json!({
        "providers": {
            "a": {"issuer": "https://a", "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}], "from_params": ["token"], "from_cookies": ["id_token"],
                  "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}, {"header_name": "x-num", "claim_name": "n"}]},
            "quiet": {"issuer": "https://q", "local_jwks": a.jwks("k"), "from_headers": [{"name": "x-other"}]}
        },
        "rules": by_path(&[
            json!({"provider_name": "a"}),
            json!({"allow_missing": {}}),
            json!({"allow_missing_or_failed": {}}),
            json!({"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "quiet"}]}})
        ])
    }));
    let alice = sub_token("alice");
    let alice_again = a.token("k", &json!({"iss": "https://a", "sub": "alice", "exp": now() + 900}));
    let mallory = sub_token("mallory");
    let nobody = a.token("k", &json!({"iss": "https://a", "exp": now() + 600}));
    let req = |rule: usize, h: &str, q: &str| {
        send(&g, &format!("/{rule}/?token={q}"), &[("authorization", &format!("Bearer {h}"))])
    };
    for rule in [0, 1, 2] {
        let s = req(rule, &alice, &mallory);
        assert_eq!(answer(&s), outcome(Status::IdentityConflict), "rule {rule}");
        assert_eq!(s.reply().unwrap().details, "jwt_auth_invalid_token");
        assert_eq!(
            answer(&req(rule, &alice, &nobody)),
            outcome(Status::IdentityConflict),
            "a missing claim differs"
        );
        let s = req(rule, &alice, &alice);
        assert_eq!(answer(&s), outcome(Status::Ok), "one token, two places");
        assert_eq!(s.request_header("x-user").as_deref(), Some("alice"));
        assert_eq!(answer(&req(rule, &alice, &alice_again)), outcome(Status::Ok), "two tokens, one identity");
    }
    let cookie = send(&g, "/0/", &[("cookie", &format!("id_token={alice}; id_token={mallory}"))]);
    assert_eq!(answer(&cookie), outcome(Status::IdentityConflict));
    // Numbers compare in their header form: 1 and 1.0 are one identity.
    let one = a.token("k", &json!({"iss": "https://a", "sub": "alice", "n": 1, "exp": now() + 600}));
    let one_f = a.token("k", &json!({"iss": "https://a", "sub": "alice", "n": 1.0, "exp": now() + 600}));
    let s = req(0, &one, &one_f);
    assert_eq!(answer(&s), outcome(Status::Ok));
    assert_eq!(s.request_header("x-num").as_deref(), Some("1"));
    // A provider without claim headers names no identity to disagree with.
    let q = a.token("k", &json!({"iss": "https://q", "sub": "someone-else", "exp": now() + 600}));
    let both = send(&g, "/3/", &[("authorization", &format!("Bearer {alice}")), ("x-other", &q)]);
    assert_eq!(answer(&both), outcome(Status::Ok));
    // Both verified (and removed); the identity is alice's.
    assert_eq!(both.request_header("x-user").as_deref(), Some("alice"));
    assert_eq!((both.request_header("authorization"), both.request_header("x-other")), (None, None));
}

/// A request that passes without some token it carried (it failed under
/// `allow_missing_or_failed`, or in an alternative of `requires_any` that another one made
/// unnecessary) loses it, `forward` or not: an upstream never receives an unverified credential.
#[test]
fn tokens_the_request_passed_without_are_removed() {
    let g = two_providers(
        &[
            json!({"allow_missing_or_failed": {}}),
            json!({"provider_name": "a"}),
            json!({"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}),
        ],
        true,
    );
    let good = tok("https://a", "x");
    let bad = forged();
    let req = |rule: usize, h: &str, q: Option<&str>| {
        let path = q.map_or_else(|| format!("/{rule}/"), |q| format!("/{rule}/?token={q}"));
        send(&g, &path, &[("authorization", &format!("Bearer {h}"))])
    };
    // Kept: what went upstream of the bearer header and the query.
    let kept = |s: &FakeStream<JwtAuth>| (s.request_header("authorization"), s.request_header(":path"));
    let s = req(0, &good, Some(&bad));
    assert_eq!(answer(&s), outcome(Status::Ok));
    assert_eq!(
        kept(&s),
        (Some(format!("Bearer {good}")), Some("/0/".into())),
        "the failed ?token= is removed"
    );
    assert_eq!(answer(&req(1, &good, Some(&bad))), outcome(Status::VerificationFailed));
    // Every token verified (and forwarded): nothing removed.
    for rule in [0, 1] {
        let s = req(rule, &good, Some(&good));
        assert_eq!(answer(&s), outcome(Status::Ok));
        assert_eq!(kept(&s), (Some(format!("Bearer {good}")), Some(format!("/{rule}/?token={good}"))));
    }
    // requires_any: a fails on b's token in the shared header, b passes; the bad `?token=` that
    // only a reads was never verified by anyone.
    let b = tok("https://b", "b-api");
    let s = req(2, &b, Some(&bad));
    assert_eq!(answer(&s), outcome(Status::Ok));
    assert_eq!(kept(&s), (Some(format!("Bearer {b}")), Some("/2/".into())));
    let s = req(2, &b, None);
    assert_eq!(answer(&s), outcome(Status::Ok));
    assert_eq!(
        kept(&s),
        (Some(format!("Bearer {b}")), Some("/2/".into())),
        "b's token, verified by b, stays"
    );
}

/// A host no rule can read is refused when rules name hosts, and counted; it would otherwise
/// skip the host's rule and fall through to a weaker one.
#[test]
fn an_unreadable_host_is_refused_when_rules_name_hosts() {
    let mut g = gateway(&json!({
        "providers": {"a": {"issuer": "https://a", "local_jwks": Signer::hmac().jwks("k")}},
        "rules": [
            {"match": {"hosts": ["api.example.com"], "prefix": "/api/"}, "requires": {"provider_name": "a"}},
            {"match": {"prefix": "/"}, "requires": {"allow_missing": {}}}
        ]
    }));
    let ask = |authority: &str| {
        let mut s = g.stream();
        s.request_headers(&[(":method", "GET"), (":path", "/api/x"), (":authority", authority)], true);
        s
    };
    for host in ["a:1:2", "user@api.example.com", "api%2eexample.com"] {
        let reply = ask(host).reply().unwrap();
        assert_eq!((reply.status, reply.details.as_str()), (400, "jwt_auth_invalid_host"), "{host}");
    }
    assert_eq!(ask("API.Example.com:8443").reply().unwrap().status, 401, "the protected host's rule");
    assert!(ask("www.example.com").reply().is_none(), "another host falls to the fallback rule");
    g.tick();
    assert_eq!(g.host().counter("jwt_auth_denied_total;reason=invalid_host"), Some(3));
    assert_eq!(g.host().counter("jwt_auth_denied_total;reason=missing"), Some(1));
    assert_eq!(g.host().counter("jwt_auth_allowed_total"), Some(1));
}
