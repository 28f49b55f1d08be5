//! Known-answer vectors: RFC 7515 appendix A (HS256, RS256, ES256), RFC 7520 section 4 (RS256,
//! PS384, HS256) and RFC 8037 appendix A.4 (Ed25519). Tokens with a JSON payload go through a
//! provider with the clock frozen at the vectors' time; the others (their payload is prose, not
//! claims) are checked at the signature level.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_auth::config;
use jwt_auth::jwt::Alg;
use jwt_auth::keys::{parse_jwk, verify_with};
use jwt_auth::status::Status;
use serde_json::{json, Value};

/// The payload of RFC 7515's examples: `{"iss":"joe", "exp":1300819380, ...}`.
const NOW: u64 = 1_300_819_000;
const RFC7515_PAYLOAD: &str =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

const A1_KEY: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const A2_SIG: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const A3_SIG: &str = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

const RFC7520_N: &str = "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw";
const RFC7520_PAYLOAD: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";
const RFC7520_41: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9|MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";
const RFC7520_42: &str = "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9|cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw";
const RFC7520_44: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9|s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";
const RFC7520_HMAC: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";

const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
const RFC8037_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
const RFC8037_SIG: &str =
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

/// One provider with this JWKS, any issuer, the default skew.
fn verify(jwks: Value, token: &str, now: u64) -> Status {
    let cfg =
        json!({"providers": {"p": {"local_jwks": jwks}}, "rules": [{"requires": {"provider_name": "p"}}]});
    let c = config::parse(cfg.to_string().as_bytes()).unwrap();
    match c.providers[0].verify(token, now, None, None) {
        Ok(_) => Status::Ok,
        Err(s) => s,
    }
}

fn flip_last(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

#[test]
fn rfc7515_a1_hs256() {
    let jwks = json!({"keys": [{"kty": "oct", "k": A1_KEY}]});
    assert_eq!(verify(jwks.clone(), A1_TOKEN, NOW), Status::Ok);
    assert_eq!(verify(jwks.clone(), &flip_last(A1_TOKEN), NOW), Status::VerificationFailed);
    // exp 1300819380, 60 s skew.
    assert_eq!(verify(jwks.clone(), A1_TOKEN, 1_300_819_440), Status::Ok);
    assert_eq!(verify(jwks, A1_TOKEN, 1_300_819_441), Status::Expired);
}

#[test]
fn rfc7515_a2_rs256() {
    let token = format!("eyJhbGciOiJSUzI1NiJ9.{RFC7515_PAYLOAD}.{A2_SIG}");
    let jwks = json!({"keys": [{"kty": "RSA", "n": A2_N, "e": "AQAB"}]});
    assert_eq!(verify(jwks.clone(), &token, NOW), Status::Ok);
    assert_eq!(verify(jwks, &flip_last(&token), NOW), Status::VerificationFailed);
}

#[test]
fn rfc7515_a3_es256() {
    let token = format!("eyJhbGciOiJFUzI1NiJ9.{RFC7515_PAYLOAD}.{A3_SIG}");
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y}]});
    assert_eq!(verify(jwks.clone(), &token, NOW), Status::Ok);
    assert_eq!(verify(jwks, &flip_last(&token), NOW), Status::VerificationFailed);
}

fn signature_ok(jwk: Value, alg: Alg, vector: &str) -> bool {
    let (header, sig) = vector.split_once('|').unwrap();
    let key = parse_jwk(&jwk).unwrap().unwrap();
    let input = format!("{header}.{RFC7520_PAYLOAD}");
    verify_with(&key.material, alg, input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
}

#[test]
fn rfc7520_section_4() {
    let rsa = json!({"kty": "RSA", "n": RFC7520_N, "e": "AQAB"});
    assert!(signature_ok(rsa.clone(), Alg::RS256, RFC7520_41), "4.1 RS256");
    assert!(signature_ok(rsa.clone(), Alg::PS384, RFC7520_42), "4.2 PS384");
    assert!(!signature_ok(rsa.clone(), Alg::PS256, RFC7520_42), "PS384 signature is not PS256");
    assert!(!signature_ok(rsa, Alg::RS384, RFC7520_42), "PSS signature is not PKCS#1 v1.5");
    let oct = json!({"kty": "oct", "k": RFC7520_HMAC});
    assert!(signature_ok(oct.clone(), Alg::HS256, RFC7520_44), "4.4 HS256");
    assert!(!signature_ok(oct, Alg::HS256, RFC7520_41.replace("MRjd", "MRje").as_str()));
}

#[test]
fn rfc8037_a4_ed25519() {
    let key = parse_jwk(&json!({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})).unwrap().unwrap();
    let sig = URL_SAFE_NO_PAD.decode(RFC8037_SIG).unwrap();
    assert!(verify_with(&key.material, Alg::EdDSA, RFC8037_INPUT.as_bytes(), &sig));
    assert!(!verify_with(&key.material, Alg::EdDSA, b"tampered", &sig));
}

mod common;

/// The Montgomery fast path (src/rsa_public.rs) against the `rsa` crate: signatures the crate
/// makes (PKCS#1 v1.5 and PSS, three hashes, two keys) verify, and every altered one fails, as
/// the crate's own verification says.
#[test]
fn rsa_fast_path_agrees_with_the_rsa_crate() {
    use rsa::{Pkcs1v15Sign, Pss};
    use sha2::{Digest, Sha256, Sha384, Sha512};
    for private in [common::rsa_key(), common::rsa_key_2()] {
        let public = private.to_public_key();
        let key = jwt_auth::rsa_public::RsaKey::new(public.clone());
        let msg = b"eyJhbGciOiJQUzI1NiJ9.eyJzdWIiOiJ4In0";
        let mut rng = rand::rngs::OsRng;
        let cases: Vec<(Alg, Vec<u8>)> = vec![
            (Alg::RS256, private.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg)).unwrap()),
            (Alg::RS384, private.sign(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg)).unwrap()),
            (Alg::RS512, private.sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg)).unwrap()),
            (
                Alg::PS256,
                private.sign_with_rng(&mut rng, Pss::new::<Sha256>(), &Sha256::digest(msg)).unwrap(),
            ),
            (
                Alg::PS384,
                private.sign_with_rng(&mut rng, Pss::new::<Sha384>(), &Sha384::digest(msg)).unwrap(),
            ),
            (
                Alg::PS512,
                private.sign_with_rng(&mut rng, Pss::new::<Sha512>(), &Sha512::digest(msg)).unwrap(),
            ),
        ];
        for (alg, sig) in &cases {
            assert!(key.verify(*alg, msg, sig), "{alg:?}");
            assert!(!key.verify(*alg, b"other message", sig), "{alg:?}");
            for other in [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512] {
                assert_eq!(key.verify(other, msg, sig), other == *alg, "{alg:?} as {other:?}");
            }
            for i in [0, 1, sig.len() / 2, sig.len() - 1] {
                let mut bad = sig.clone();
                bad[i] ^= 0x01;
                assert!(!key.verify(*alg, msg, &bad), "{alg:?} byte {i}");
            }
            assert!(!key.verify(*alg, msg, &sig[1..]), "short");
            let mut long = sig.clone();
            long.insert(0, 0);
            assert!(!key.verify(*alg, msg, &long), "long");
        }
        // A value at or above the modulus is not a signature.
        let n = rsa::traits::PublicKeyParts::n(&public).to_bytes_be();
        assert!(!key.verify(Alg::RS256, msg, &n));
        assert!(!key.verify(Alg::RS256, msg, &vec![0xff; n.len()]));
    }
}

/// The joint scalar multiplication (src/ec_verify.rs) against the `p256`/`p384` crates' own
/// verification: random keys and messages, their signatures (and the high-S twin, which ECDSA
/// accepts) verify, altered ones and other keys' do not, exactly as the crates decide.
#[test]
fn ecdsa_fast_path_agrees_with_the_curve_crates() {
    use p256::ecdsa::signature::{Signer as _, Verifier as _};
    use sha2::{Digest, Sha256, Sha384};
    let mut rng = rand::rngs::OsRng;
    for round in 0..40 {
        let msg = format!("header.payload-{round}");
        // P-256
        let sk = p256::ecdsa::SigningKey::random(&mut rng);
        let key = jwt_auth::ec_verify::p256v::Key::new(*sk.verifying_key());
        let sig: p256::ecdsa::Signature = sk.sign(msg.as_bytes());
        let h = Sha256::digest(msg.as_bytes());
        assert!(key.verify_prehash(&h, &sig.to_bytes()));
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(*r, -*s).unwrap();
        assert_eq!(
            key.verify_prehash(&h, &high.to_bytes()),
            sk.verifying_key().verify(msg.as_bytes(), &high).is_ok()
        );
        let mut bad = sig.to_bytes().to_vec();
        bad[round % 64] ^= 1 << (round % 8);
        let crate_says = p256::ecdsa::Signature::from_slice(&bad)
            .is_ok_and(|s| sk.verifying_key().verify(msg.as_bytes(), &s).is_ok());
        assert_eq!(key.verify_prehash(&h, &bad), crate_says);
        assert!(!key.verify_prehash(&Sha256::digest(b"other"), &sig.to_bytes()));
        let other =
            jwt_auth::ec_verify::p256v::Key::new(*p256::ecdsa::SigningKey::random(&mut rng).verifying_key());
        assert!(!other.verify_prehash(&h, &sig.to_bytes()));
        assert!(!key.verify_prehash(&h, &sig.to_bytes()[..63]));
        assert!(!key.verify_prehash(&h, &[0u8; 64]), "r = s = 0");
        // P-384
        let sk = p384::ecdsa::SigningKey::random(&mut rng);
        let key = jwt_auth::ec_verify::p384v::Key::new(*sk.verifying_key());
        let sig: p384::ecdsa::Signature = sk.sign(msg.as_bytes());
        let h = Sha384::digest(msg.as_bytes());
        assert!(key.verify_prehash(&h, &sig.to_bytes()));
        let mut bad = sig.to_bytes().to_vec();
        bad[round % 96] ^= 1 << (round % 8);
        let crate_says = p384::ecdsa::Signature::from_slice(&bad)
            .is_ok_and(|s| sk.verifying_key().verify(msg.as_bytes(), &s).is_ok());
        assert_eq!(key.verify_prehash(&h, &bad), crate_says);
        assert!(!key.verify_prehash(&Sha384::digest(b"other"), &sig.to_bytes()));
    }
}
