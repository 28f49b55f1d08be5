//! Attacks and edge cases against the verifier and the requirement logic (native, no host):
//! `alg: none`, key confusion, tampering, malformed parts, claim types, skew boundaries, `crit`,
//! hostile `kid`s, embedded keys, oversized tokens, several tokens, the cache.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{b64, now, Signer, SECRET};
use jwt_auth::config::{self, Compiled};
use jwt_auth::extractor::RequestView;
use jwt_auth::status::Status;
use jwt_auth::verifier::Evaluation;
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
    match c.providers[0].verify(token, now(), None) {
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
        match c.providers[0].verify(&t, n, None) {
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
    assert!(c.providers[0].verify(&t, n, None).is_ok());
    assert_eq!(c.providers[0].cache.borrow().len(), 1);
    assert!(c.providers[0].verify(&t, n + 70, None).is_ok(), "within skew");
    assert_eq!(c.providers[0].cache.borrow().hits(), 1);
    assert_eq!(c.providers[0].verify(&t, n + 71, None).unwrap_err(), Status::Expired);
    assert_eq!(c.providers[0].cache.borrow().len(), 0, "expired entries leave the cache");
    // A cached token is still checked against the audiences of the requirement.
    let t = s.token("k", &claims(json!({})));
    assert!(c.providers[0].verify(&t, now(), None).is_ok());
    let other = vec!["other".to_string()];
    assert_eq!(c.providers[0].verify(&t, now(), Some(&other)).unwrap_err(), Status::AudienceNotAllowed);
}

struct Req(Vec<(&'static str, String)>, Option<String>);

impl RequestView for Req {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }
    fn query(&self) -> Option<&str> {
        self.1.as_deref()
    }
}

fn two_providers(rules: Value) -> Compiled {
    let a = Signer::hmac();
    compile(json!({
        "providers": {
            "a": {"issuer": "https://a", "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}], "from_params": ["token"], "from_cookies": ["id_token"]},
            "b": {"issuer": "https://b", "audiences": ["b-api"], "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]}
        },
        "rules": rules
    }))
}

fn run(c: &Compiled, rule: usize, req: &Req) -> (Status, usize) {
    let mut out = Vec::new();
    let r = c.rules[rule].requires.as_ref().unwrap();
    let s = Evaluation::new(&c.providers, req, now()).run(r, &mut out);
    (s, out.len())
}

fn tok(iss: &str, aud: &str) -> String {
    Signer::hmac().token("k", &json!({"iss": iss, "aud": aud, "exp": now() + 600}))
}

#[test]
fn every_token_must_verify() {
    let c = two_providers(json!([{"requires": {"provider_name": "a"}}]));
    let good = tok("https://a", "x");
    let bad = Signer::Hmac(vec![9; 32]).token("k", &json!({"iss": "https://a", "exp": now() + 600}));
    let req =
        |h: &str, q: &str| Req(vec![("authorization", format!("Bearer {h}"))], Some(format!("token={q}")));
    assert_eq!(run(&c, 0, &req(&good, &good)), (Status::Ok, 2));
    assert_eq!(run(&c, 0, &req(&good, &bad)).0, Status::VerificationFailed, "a bad token next to a good one");
    assert_eq!(run(&c, 0, &req(&bad, &good)).0, Status::VerificationFailed);
    let other = tok("https://a", "y");
    assert_eq!(run(&c, 0, &req(&good, &other)), (Status::Ok, 2), "two different good tokens");
    assert_eq!(run(&c, 0, &Req(vec![], None)).0, Status::Missing);
    let cookie = Req(vec![("cookie", format!("x=1; id_token={good}"))], None);
    assert_eq!(run(&c, 0, &cookie), (Status::Ok, 1));
}

#[test]
fn requirement_combinations() {
    let c = two_providers(json!([
        {"requires": {"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
        {"requires": {"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}},
        {"requires": {"allow_missing": {}}},
        {"requires": {"allow_missing_or_failed": {}}},
        {"requires": {"requires_any": {"requirements": [{"provider_name": "b"}, {"allow_missing": {}}]}}},
        {"requires": {"provider_and_audiences": {"provider_name": "b", "audiences": ["other"]}}}
    ]));
    let bearer = |t: &str| Req(vec![("authorization", format!("Bearer {t}"))], None);
    let a = tok("https://a", "x");
    let b = tok("https://b", "b-api");
    let b_wrong_aud = tok("https://b", "nope");
    let c_iss = tok("https://c", "x");
    let none = Req(vec![], None);

    assert_eq!(run(&c, 0, &bearer(&a)).0, Status::Ok, "any: a");
    assert_eq!(run(&c, 0, &bearer(&b)).0, Status::Ok, "any: b");
    assert_eq!(run(&c, 0, &bearer(&b_wrong_aud)).0, Status::AudienceNotAllowed, "any: the telling failure");
    assert_eq!(run(&c, 0, &bearer(&c_iss)).0, Status::UnknownIssuer);
    assert_eq!(run(&c, 0, &none).0, Status::Missing);

    assert_eq!(run(&c, 1, &bearer(&a)).0, Status::UnknownIssuer, "all: b fails on a's token");
    let both = Req(vec![("authorization", format!("Bearer {b}"))], Some(format!("token={a}")));
    assert_eq!(
        run(&c, 1, &both).0,
        Status::UnknownIssuer,
        "a reads both locations: b's token in its header fails a's issuer check"
    );

    assert_eq!(run(&c, 2, &none), (Status::Ok, 0), "allow_missing: nothing");
    assert_eq!(run(&c, 2, &bearer(&a)), (Status::Ok, 1));
    assert_eq!(run(&c, 2, &bearer(&b)), (Status::Ok, 1), "the provider of the token's issuer");
    assert_eq!(run(&c, 2, &bearer(&c_iss)).0, Status::UnknownIssuer, "as Envoy 1.40 answers");
    assert_eq!(run(&c, 2, &bearer(&b_wrong_aud)).0, Status::AudienceNotAllowed);
    assert_eq!(run(&c, 2, &bearer("garbage")).0, Status::BadFormat);

    assert_eq!(run(&c, 3, &bearer("garbage")), (Status::Ok, 0), "allow_missing_or_failed");
    assert_eq!(run(&c, 3, &bearer(&a)), (Status::Ok, 1));

    assert_eq!(run(&c, 4, &bearer(&c_iss)).0, Status::UnknownIssuer, "as Envoy 1.40 answers");
    assert_eq!(run(&c, 4, &none).0, Status::Ok);

    assert_eq!(run(&c, 5, &bearer(&b)).0, Status::AudienceNotAllowed, "audiences replaced");
}

/// `decide`, as the filter runs it: the requirement, then the identity check.
fn decide(c: &Compiled, rule: usize, req: &Req) -> (Status, Vec<String>) {
    let mut out = Vec::new();
    let r = c.rules[rule].requires.as_ref().unwrap();
    let s = Evaluation::new(&c.providers, req, now()).decide(r, &mut out);
    (s, out.iter().map(|s| s.verified.claims.get("sub").map(|v| v.to_string()).unwrap_or_default()).collect())
}

fn sub_token(sub: &str) -> String {
    Signer::hmac().token("k", &json!({"iss": "https://a", "sub": sub, "exp": now() + 600}))
}

/// A header value holds exactly one token after the scheme: a second credential in the same
/// value (joined by a comma, as Envoy joins two `Authorization` headers, or after a space) makes
/// the whole value a malformed token, so no unverified credential rides along a good one.
#[test]
fn a_header_value_holds_one_token_or_is_malformed() {
    let c = compile(json!({
        "providers": {"a": {"issuer": "https://a", "local_jwks": Signer::hmac().jwks("k"), "forward": true}},
        "rules": [{"requires": {"provider_name": "a"}}, {"requires": {"allow_missing": {}}}]
    }));
    let good = sub_token("alice");
    let forged = Signer::Hmac(vec![9; 32])
        .token("k", &json!({"iss": "https://a", "sub": "admin", "exp": now() + 600}));
    let bearer = |v: String| Req(vec![("authorization", v)], None);
    assert_eq!(decide(&c, 0, &bearer(format!("Bearer {good}"))).0, Status::Ok);
    assert_eq!(decide(&c, 0, &bearer(format!("Bearer  {good} "))).0, Status::Ok, "spaces around it");
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
            assert_eq!(decide(&c, rule, &bearer(value.clone())).0, want, "rule {rule}: {value}");
        }
    }
    // The scheme must start the value.
    assert_eq!(decide(&c, 0, &bearer(format!("Basic dXNlcg==, Bearer {good}"))).0, Status::Missing);
    // Separate header lines (HTTP/2) are separate values: each one must verify.
    let two = Req(
        vec![("authorization", format!("Bearer {good}")), ("authorization", format!("Bearer {forged}"))],
        None,
    );
    assert_eq!(decide(&c, 0, &two).0, Status::VerificationFailed);
}

/// Verified tokens that name different identities are refused: the last location read must not
/// decide who the request is. The same identity in several places passes.
#[test]
fn verified_tokens_must_name_one_identity() {
    let a = Signer::hmac();
    let c = compile(json!({
        "providers": {
            "a": {"issuer": "https://a", "local_jwks": a.jwks("k"), "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}], "from_params": ["token"], "from_cookies": ["id_token"],
                  "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}, {"header_name": "x-num", "claim_name": "n"}]},
            "quiet": {"issuer": "https://q", "local_jwks": a.jwks("k"), "from_headers": [{"name": "x-other"}]}
        },
        "rules": [
            {"requires": {"provider_name": "a"}},
            {"requires": {"allow_missing": {}}},
            {"requires": {"allow_missing_or_failed": {}}},
            {"requires": {"requires_all": {"requirements": [{"provider_name": "a"}, {"provider_name": "quiet"}]}}}
        ]
    }));
    let alice = sub_token("alice");
    let alice_again = a.token("k", &json!({"iss": "https://a", "sub": "alice", "exp": now() + 900}));
    let mallory = sub_token("mallory");
    let nobody = a.token("k", &json!({"iss": "https://a", "exp": now() + 600}));
    let req =
        |h: &str, q: &str| Req(vec![("authorization", format!("Bearer {h}"))], Some(format!("token={q}")));
    for rule in [0, 1, 2] {
        assert_eq!(decide(&c, rule, &req(&alice, &mallory)).0, Status::IdentityConflict, "rule {rule}");
        assert_eq!(
            decide(&c, rule, &req(&alice, &nobody)).0,
            Status::IdentityConflict,
            "a missing claim differs"
        );
        assert_eq!(decide(&c, rule, &req(&alice, &alice)).0, Status::Ok, "one token, two places");
        assert_eq!(decide(&c, rule, &req(&alice, &alice_again)).0, Status::Ok, "two tokens, one identity");
    }
    let cookie = Req(vec![("cookie", format!("id_token={alice}; id_token={mallory}"))], None);
    assert_eq!(decide(&c, 0, &cookie).0, Status::IdentityConflict);
    // Numbers compare in their header form: 1 and 1.0 are one identity.
    let one = a.token("k", &json!({"iss": "https://a", "sub": "alice", "n": 1, "exp": now() + 600}));
    let one_f = a.token("k", &json!({"iss": "https://a", "sub": "alice", "n": 1.0, "exp": now() + 600}));
    assert_eq!(decide(&c, 0, &req(&one, &one_f)).0, Status::Ok);
    // A provider without claim headers names no identity to disagree with.
    let q = a.token("k", &json!({"iss": "https://q", "sub": "someone-else", "exp": now() + 600}));
    let both = Req(vec![("authorization", format!("Bearer {alice}")), ("x-other", q)], None);
    let (status, subs) = decide(&c, 3, &both);
    assert_eq!(status, Status::Ok);
    assert_eq!(subs.len(), 2);
}

/// A request that passes without some token it carried (it failed under
/// `allow_missing_or_failed`, or in an alternative of `requires_any` that another one made
/// unnecessary) reports it, so the filter removes it: an upstream never receives an unverified
/// credential.
#[test]
fn tokens_the_request_passed_without_are_reported_for_removal() {
    let c = two_providers(json!([
        {"requires": {"allow_missing_or_failed": {}}},
        {"requires": {"provider_name": "a"}},
        {"requires": {"requires_any": {"requirements": [{"provider_name": "a"}, {"provider_name": "b"}]}}}
    ]));
    let good = tok("https://a", "x");
    let bad = Signer::Hmac(vec![9; 32]).token("k", &json!({"iss": "https://a", "exp": now() + 600}));
    let evaluate = |rule: usize, req: &Req| {
        let mut out = Vec::new();
        let mut e = Evaluation::new(&c.providers, req, now());
        let status = e.decide(c.rules[rule].requires.as_ref().unwrap(), &mut out);
        (status, out.len(), e.unverified(&out))
    };
    let req = Req(vec![("authorization", format!("Bearer {good}"))], Some(format!("token={bad}")));
    // Provider a (index 0), its query parameter (location 2: header, cookie, parameter).
    assert_eq!(evaluate(0, &req), (Status::Ok, 1, vec![(0, 2)]));
    assert_eq!(evaluate(1, &req).0, Status::VerificationFailed);
    // Every token verified: nothing to remove.
    let both_good = Req(vec![("authorization", format!("Bearer {good}"))], Some(format!("token={good}")));
    assert_eq!(evaluate(0, &both_good), (Status::Ok, 2, vec![]));
    assert_eq!(evaluate(1, &both_good), (Status::Ok, 2, vec![]));
    // requires_any: a fails on b's token in the shared header, b passes; the bad `?token=` that
    // only a reads was never verified by anyone.
    let b = tok("https://b", "b-api");
    let req = Req(vec![("authorization", format!("Bearer {b}"))], Some(format!("token={bad}")));
    assert_eq!(evaluate(2, &req), (Status::Ok, 1, vec![(0, 2)]));
    let req = Req(vec![("authorization", format!("Bearer {b}"))], None);
    assert_eq!(evaluate(2, &req), (Status::Ok, 1, vec![]), "b's token, verified by b, stays");
}
