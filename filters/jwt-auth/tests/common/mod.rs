//! Test keys and token minting. The RSA key is RFC 7520's (section 3.4) so no test waits for
//! RSA key generation; EC and Ed25519 keys are generated per test run.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The HS256 secret tests use (32 bytes).
pub const SECRET: &str = "gatewasm-test-secret-0123456789!";

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn d(s: &str) -> BigUint {
    BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(s).unwrap())
}

/// RFC 7520 section 3.4's RSA key.
pub fn rsa_key() -> RsaPrivateKey {
    let n = "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw";
    let dd = "bWUC9B-EFRIo8kpGfh0ZuyGPvMNKvYWNtB_ikiH9k20eT-O1q_I78eiZkpXxXQ0UTEs2LsNRS-8uJbvQ-A1irkwMSMkK1J3XTGgdrhCku9gRldY7sNA_AKZGh-Q661_42rINLRCe8W-nZ34ui_qOfkLnK9QWDDqpaIsA-bMwWWSDFu2MUBYwkHTMEzLYGqOe04noqeq1hExBTHBOBdkMXiuFhUq1BU6l-DqEiWxqg82sXt2h-LMnT3046AOYJoRioz75tSUQfGCshWTBnP5uDjd18kKhyv07lhfSJdrPdM5Plyl21hsFf4L_mHCuoFau7gdsPfHPxxjVOcOpBrQzwQ";
    let p = "3Slxg_DwTXJcb6095RoXygQCAZ5RnAvZlno1yhHtnUex_fp7AZ_9nRaO7HX_-SFfGQeutao2TDjDAWU4Vupk8rw9JR0AzZ0N2fvuIAmr_WCsmGpeNqQnev1T7IyEsnh8UMt-n5CafhkikzhEsrmndH6LxOrvRJlsPp6Zv8bUq0k";
    let q = "uKE2dh-cTf6ERF4k4e_jy78GfPYUIaUyoSSJuBzp3Cubk3OCqs6grT8bR_cu0Dm1MZwWmtdqDyI95HrUeq3MP15vMMON8lHTeZu2lmKvwqW7anV5UzhM1iZ7z4yMkuUwFWoBvyY898EXvRD-hdqRxHlSqAZ192zB3pVFJ0s7pFc";
    RsaPrivateKey::from_components(d(n), d("AQAB"), d(dd), vec![d(p), d(q)]).unwrap()
}

/// A second RSA key (RFC 7515 appendix A.2), for rotations; primes recovered from `d`.
pub fn rsa_key_2() -> RsaPrivateKey {
    let n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    let dd = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
    RsaPrivateKey::from_components(d(n), d("AQAB"), d(dd), vec![]).unwrap()
}

/// A signing key of any kind.
pub enum Signer {
    Hmac(Vec<u8>),
    Rsa(RsaPrivateKey),
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl Signer {
    pub fn hmac() -> Self {
        Signer::Hmac(SECRET.as_bytes().to_vec())
    }
    pub fn rsa() -> Self {
        Signer::Rsa(rsa_key())
    }
    pub fn p256() -> Self {
        Signer::P256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }
    pub fn ed25519() -> Self {
        Signer::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Hmac(_) => "HS256",
            Signer::Rsa(_) => "RS256",
            Signer::P256(_) => "ES256",
            Signer::Ed25519(_) => "EdDSA",
        }
    }

    /// The public JWK (for HMAC, the secret as an `oct` key).
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Hmac(k) => json!({"kty": "oct", "kid": kid, "k": b64(k)}),
            Signer::Rsa(k) => {
                json!({"kty": "RSA", "kid": kid, "n": b64(k.n().to_bytes_be()), "e": b64(k.e().to_bytes_be())})
            }
            Signer::P256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
            }
            Signer::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.verifying_key().to_bytes())})
            }
        }
    }

    /// A JWKS with this key alone.
    pub fn jwks(&self, kid: &str) -> Value {
        json!({"keys": [self.jwk(kid)]})
    }

    /// Signs `signing_input` with this key's algorithm.
    pub fn sign_raw(&self, signing_input: &[u8]) -> Vec<u8> {
        match self {
            Signer::Hmac(k) => {
                let mut m = Hmac::<Sha256>::new_from_slice(k).unwrap();
                m.update(signing_input);
                m.finalize().into_bytes().to_vec()
            }
            Signer::Rsa(k) => k.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(signing_input)).unwrap(),
            Signer::P256(k) => {
                use p256::ecdsa::signature::Signer as _;
                let s: p256::ecdsa::Signature = k.sign(signing_input);
                s.to_bytes().to_vec()
            }
            Signer::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(signing_input).to_bytes().to_vec()
            }
        }
    }

    /// A token with this header (its `alg` set unless given) and claims.
    pub fn token_with_header(&self, mut header: Value, claims: &Value) -> String {
        if header.get("alg").is_none() {
            header["alg"] = json!(self.alg());
        }
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self.sign_raw(input.as_bytes());
        format!("{input}.{}", b64(sig))
    }

    /// A token with header `{"alg", "kid"}` and these claims.
    pub fn token(&self, kid: &str, claims: &Value) -> String {
        self.token_with_header(json!({"kid": kid, "typ": "JWT"}), claims)
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The seed's login provider: an HS256 secret, the token in the `id_token` cookie, a bearer
/// header or the `token` parameter; `id` and `email` to `x-admin-id` and `x-admin-email`;
/// `/extauth/login` open, `/extauth/nodebackend` protected.
pub fn seed_config() -> Value {
    json!({
        "providers": {"login": {
            "keys": [{"secret": SECRET}],
            "from_cookies": ["id_token"],
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "from_params": ["token"],
            "claim_to_headers": [
                {"header_name": "x-admin-id", "claim_name": "id"},
                {"header_name": "x-admin-email", "claim_name": "email"}
            ]
        }},
        "rules": [
            {"match": {"prefix": "/extauth/login"}},
            {"match": {"prefix": "/extauth/nodebackend"}, "requires": {"provider_name": "login"}}
        ]
    })
}

/// A provider `idp` (issuer `https://idp.test`) with its keys at `uri` through cluster `idp`,
/// `sub` to `x-user`; intervals in seconds: refresh, retry, unknown-kid refetch.
pub fn remote_config(uri: &str, timeout_ms: u64, intervals: [u64; 3]) -> Value {
    json!({
        "providers": {"idp": {
            "issuer": "https://idp.test",
            "remote_jwks": {
                "http_uri": {"uri": uri, "cluster": "idp", "timeout_ms": timeout_ms},
                "cache_duration_seconds": intervals[0],
                "retry_interval_seconds": intervals[1],
                "refetch_unknown_kid_seconds": intervals[2]
            },
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [{"requires": {"provider_name": "idp"}}]
    })
}
