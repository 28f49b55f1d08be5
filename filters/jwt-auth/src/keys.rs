//! Verification keys: JWKS documents (RFC 7517), PEM public keys and HMAC secrets, and the
//! signature check itself.
//!
//! A key has one kind (HMAC secret, RSA, P-256, P-384, Ed25519) and is only ever used for the
//! algorithms of that kind: an RSA public key can never serve as an HMAC secret, whatever the
//! token's header says. Key selection follows Envoy's `jwt_authn`: a key whose `kid` differs
//! from the token's is skipped (keys without `kid` are tried), a key whose `alg` differs is
//! skipped, and when no key is left the answer is "no key to match kid or alg".

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::host_crypto;
use crate::jwt::{Alg, Jwt, KeyKind};
use crate::rsa_public::RsaKey;
use crate::status::Status;

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A; RFC 7518 section 3.3).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: bounds the cost of one verification.
pub const MAX_RSA_BITS: usize = 8192;
/// Smallest HMAC secret accepted, in bytes (RFC 7518 section 3.2: at least the hash size;
/// HS384/HS512 also check their own size when verifying).
pub const MIN_HMAC_BYTES: usize = 32;

/// Public key material, by kind.
#[derive(Debug, Clone)]
pub enum Material {
    /// A shared secret for HS256/384/512.
    Hmac(Vec<u8>),
    /// An RSA public key for RS* and PS*.
    Rsa(Box<RsaKey>),
    /// A P-256 key for ES256.
    P256(Box<crate::ec_verify::p256v::Key>),
    /// A P-384 key for ES384.
    P384(Box<crate::ec_verify::p384v::Key>),
    /// An Ed25519 key for EdDSA.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl Material {
    /// The kind of key.
    pub fn kind(&self) -> KeyKind {
        match self {
            Material::Hmac(_) => KeyKind::Hmac,
            Material::Rsa(_) => KeyKind::Rsa,
            Material::P256(_) => KeyKind::P256,
            Material::P384(_) => KeyKind::P384,
            Material::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    /// The key as DER SubjectPublicKeyInfo, for the host's `verify_signature`; `None` for a
    /// secret, an Ed25519 key, or a key the crates could not encode.
    pub fn spki(&self) -> Option<&[u8]> {
        match self {
            Material::Rsa(k) => k.spki(),
            Material::P256(k) => k.spki(),
            Material::P384(k) => k.spki(),
            Material::Hmac(_) | Material::Ed25519(_) => None,
        }
    }
}

/// One verification key.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its `kid`, when it has one.
    pub kid: Option<String>,
    /// The one algorithm it may be used with, when it names one.
    pub alg: Option<Alg>,
    /// The key.
    pub material: Material,
    /// The key as AWS-LC holds it, in native builds (parsed on first use).
    #[cfg(not(target_arch = "wasm32"))]
    native: crate::native_crypto::NativeKey,
}

impl Key {
    /// A key of `material`, with its `kid` and `alg` when it names them.
    pub fn new(kid: Option<String>, alg: Option<Alg>, material: Material) -> Self {
        Self {
            kid,
            alg,
            material,
            #[cfg(not(target_arch = "wasm32"))]
            native: Default::default(),
        }
    }

    /// Whether `sig` is a valid `alg` signature of `msg` by this key, checked in the module: by
    /// [`verify_with`], or natively by AWS-LC for RS* and ES* (`native_crypto`).
    fn verify_here(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(valid) = self.material.spki().and_then(|spki| self.native.verify(spki, alg, msg, sig)) {
            return valid;
        }
        verify_with(&self.material, alg, msg, sig)
    }
}

/// A provider's keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// In the order configured or served.
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Whether some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Verifies the token's signature with the keys that may verify it (see the module docs),
    /// asking `host` for the signatures it can check ([`SignatureCheck`]).
    pub fn verify(&self, jwt: &Jwt<'_>, host: Option<SignatureCheck<'_>>) -> Status {
        let mut failure = Status::KidAlgMismatch;
        for key in &self.keys {
            if let (Some(want), Some(have)) = (&jwt.kid, &key.kid) {
                if want != have {
                    continue;
                }
            }
            if key.alg.is_some_and(|a| a != jwt.alg) || key.material.kind() != jwt.alg.key_kind() {
                continue;
            }
            if let Material::Hmac(secret) = &key.material {
                if secret.len() < hash_len(jwt.alg) {
                    continue;
                }
            }
            if failure == Status::KidAlgMismatch {
                failure = Status::VerificationFailed;
            }
            // Envoy's own answer for this case (jwt_verify_lib), whatever the other keys say.
            if jwt.alg == Alg::EdDSA && jwt.signature.len() != 64 {
                failure = Status::Ed25519SignatureWrongLength;
                continue;
            }
            let msg = jwt.signed.as_bytes();
            let module = || key.verify_here(jwt.alg, msg, &jwt.signature);
            let valid = match host {
                Some(check) => match host_crypto::request(
                    key.material.kind(),
                    key.material.spki(),
                    jwt.alg,
                    msg,
                    &jwt.signature,
                ) {
                    host_crypto::Request::Invalid => false,
                    host_crypto::Request::Arguments(args) => check(&args).unwrap_or_else(module),
                    host_crypto::Request::NotForHost => module(),
                },
                None => module(),
            };
            if valid {
                return Status::Ok;
            }
        }
        failure
    }
}

fn hash_len(alg: Alg) -> usize {
    match alg {
        Alg::HS384 | Alg::RS384 | Alg::PS384 | Alg::ES384 => 48,
        Alg::HS512 | Alg::RS512 | Alg::PS512 => 64,
        _ => 32,
    }
}

/// Asks the host whether a signature is valid, given [`host_crypto::request`]'s arguments:
/// `Some(answer)`, or `None` when the host has no such function (the module then checks it).
/// The filter passes one per request, built on its stream; without one the module checks
/// every signature itself.
pub type SignatureCheck<'h> = &'h dyn Fn(&[u8]) -> Option<bool>;

/// Whether `sig` is a valid signature of `msg` by `key` under `alg` (the kinds already match),
/// checked by the module's own code.
pub fn verify_with(key: &Material, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
    use ed25519_dalek::Signature as EdSignature;
    match (key, alg) {
        (Material::Hmac(k), Alg::HS256) => hmac_ok::<Hmac<Sha256>>(k, msg, sig),
        (Material::Hmac(k), Alg::HS384) => hmac_ok::<Hmac<Sha384>>(k, msg, sig),
        (Material::Hmac(k), Alg::HS512) => hmac_ok::<Hmac<Sha512>>(k, msg, sig),
        (Material::Rsa(k), alg) => k.verify(alg, msg, sig),
        // JWS carries R || S (RFC 7518 section 3.4), not DER.
        (Material::P256(k), Alg::ES256) => k.verify_prehash(&Sha256::digest(msg), sig),
        (Material::P384(k), Alg::ES384) => k.verify_prehash(&Sha384::digest(msg), sig),
        (Material::Ed25519(k), Alg::EdDSA) => {
            EdSignature::from_slice(sig).is_ok_and(|s| k.verify_strict(msg, &s).is_ok())
        }
        _ => false,
    }
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match <M as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(msg);
            // Constant-time comparison.
            mac.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

/// What a JWKS document does with a weak key (RSA under [`MIN_RSA_BITS`], an `oct` secret
/// under [`MIN_HMAC_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakKeys {
    /// The document is refused: inline keys, which an operator can fix before loading them.
    Refuse,
    /// The key is skipped and counted: a remote set, where refusing the whole document would
    /// turn one weak key in a provider's rotation into an outage.
    Skip,
}

/// A parsed JWKS document.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The usable keys (at least one).
    pub set: KeySet,
    /// Keys that are not for signatures or of a kind not supported here.
    pub skipped: usize,
    /// Weak keys skipped ([`WeakKeys::Skip`]).
    pub weak: usize,
}

/// Why a JWK cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwkError {
    /// A well-formed key too weak to trust (see [`WeakKeys`]).
    Weak(String),
    /// A key that claims to be usable and is malformed.
    Invalid(String),
}

impl std::fmt::Display for JwkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwkError::Weak(why) | JwkError::Invalid(why) => f.write_str(why),
        }
    }
}

impl From<String> for JwkError {
    fn from(why: String) -> Self {
        JwkError::Invalid(why)
    }
}

impl From<&str> for JwkError {
    fn from(why: &str) -> Self {
        JwkError::Invalid(why.to_string())
    }
}

/// Parses a JWKS document. Keys that cannot be used for signatures here (`use` other than
/// `sig`, unknown `kty`, `crv` or `alg`) are skipped and counted; a weak key is refused or
/// skipped as `weak` says; a key that claims to be usable but is malformed is an error.
pub fn parse_jwks(text: &str, weak: WeakKeys) -> Result<Jwks, String> {
    let doc: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let keys = match doc.get("keys") {
        Some(Value::Array(keys)) => keys,
        _ => return Err("no `keys` array".into()),
    };
    let mut jwks = Jwks { set: KeySet::default(), skipped: 0, weak: 0 };
    for (i, key) in keys.iter().enumerate() {
        match parse_jwk(key) {
            Ok(Some(k)) => jwks.set.keys.push(k),
            Ok(None) => jwks.skipped += 1,
            Err(JwkError::Weak(_)) if weak == WeakKeys::Skip => jwks.weak += 1,
            Err(e) => return Err(format!("keys[{i}]: {e}")),
        }
    }
    if jwks.set.keys.is_empty() {
        let weak =
            if jwks.weak > 0 { format!(" ({} weak key(s) skipped)", jwks.weak) } else { String::new() };
        return Err(format!("no usable signature key{weak}"));
    }
    Ok(jwks)
}

fn member<'a>(key: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match key.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

fn b64_member(key: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let v = member(key, name)?.ok_or_else(|| format!("`{name}` is required"))?;
    // Some servers pad their base64url; the value is still unambiguous.
    URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).map_err(|_| format!("`{name}` is not base64url"))
}

/// One JWK; `Ok(None)` for a key that is not for signatures or of a kind not supported here.
pub fn parse_jwk(value: &Value) -> Result<Option<Key>, JwkError> {
    let key = value.as_object().ok_or("a key must be a JSON object")?;
    if member(key, "use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kid = member(key, "kid")?.map(str::to_string);
    let alg = match member(key, "alg")? {
        None => None,
        Some(name) => match Alg::parse(name) {
            Some(a) => Some(a),
            None => return Ok(None),
        },
    };
    let material = match member(key, "kty")?.ok_or("`kty` is required")? {
        "RSA" => {
            let n = BigUint::from_bytes_be(&b64_member(key, "n")?);
            let e = BigUint::from_bytes_be(&b64_member(key, "e")?);
            Material::Rsa(Box::new(RsaKey::new(rsa_key(n, e)?)))
        }
        "EC" => {
            let x = b64_member(key, "x")?;
            let y = b64_member(key, "y")?;
            match member(key, "crv")? {
                Some("P-256") => {
                    Material::P256(Box::new(crate::ec_verify::p256v::Key::new(ec_key_p256(&x, &y)?)))
                }
                Some("P-384") => {
                    Material::P384(Box::new(crate::ec_verify::p384v::Key::new(ec_key_p384(&x, &y)?)))
                }
                _ => return Ok(None),
            }
        }
        "OKP" => match member(key, "crv")? {
            Some("Ed25519") => {
                let x: [u8; 32] = b64_member(key, "x")?.try_into().map_err(|_| "`x` must be 32 bytes")?;
                Material::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "`x` is not an Ed25519 point")?,
                )
            }
            _ => return Ok(None),
        },
        "oct" => {
            let k = b64_member(key, "k")?;
            if k.len() < MIN_HMAC_BYTES {
                return Err(JwkError::Weak(format!(
                    "`k` is {} bytes; HMAC secrets need at least {MIN_HMAC_BYTES}",
                    k.len()
                )));
            }
            Material::Hmac(k)
        }
        _ => return Ok(None),
    };
    if let Some(a) = alg {
        if a.key_kind() != material.kind() {
            return Err(format!("`alg` {} does not fit a key of this kind", a.name()).into());
        }
    }
    Ok(Some(Key::new(kid, alg, material)))
}

fn rsa_key(n: BigUint, e: BigUint) -> Result<RsaPublicKey, JwkError> {
    // The size first: a small modulus is weak whatever else the `rsa` crate says of it.
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(JwkError::Weak(format!(
            "RSA modulus is {bits} bits; at least {MIN_RSA_BITS} are required"
        )));
    }
    RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS).map_err(|e| format!("not an RSA key: {e}").into())
}

fn ec_key_p256(x: &[u8], y: &[u8]) -> Result<p256::ecdsa::VerifyingKey, String> {
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 coordinates must be 32 bytes".into());
    }
    let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|_| "not a P-256 point".into())
}

fn ec_key_p384(x: &[u8], y: &[u8]) -> Result<p384::ecdsa::VerifyingKey, String> {
    if x.len() != 48 || y.len() != 48 {
        return Err("P-384 coordinates must be 48 bytes".into());
    }
    let point = p384::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
    p384::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|_| "not a P-384 point".into())
}

/// A PEM public key: `PUBLIC KEY` (SubjectPublicKeyInfo: RSA, P-256, P-384 or Ed25519) or
/// `RSA PUBLIC KEY` (PKCS#1).
pub fn parse_pem(pem: &str) -> Result<Material, String> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::pkcs8::DecodePublicKey as _;
    let pem = pem.trim();
    if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        let key =
            RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA public key: {e}"))?;
        return rsa_key(key.n().clone(), key.e().clone())
            .map(|k| Material::Rsa(Box::new(RsaKey::new(k))))
            .map_err(|e| e.to_string());
    }
    if !pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        return Err("expected `-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----` (private keys are refused)".into());
    }
    if let Ok(key) = RsaPublicKey::from_public_key_pem(pem) {
        return rsa_key(key.n().clone(), key.e().clone())
            .map(|k| Material::Rsa(Box::new(RsaKey::new(k))))
            .map_err(|e| e.to_string());
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::P256(Box::new(crate::ec_verify::p256v::Key::new(key))));
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::P384(Box::new(crate::ec_verify::p384v::Key::new(key))));
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::Ed25519(key));
    }
    Err("not an RSA, P-256, P-384 or Ed25519 public key".into())
}

/// An HMAC secret given as text, or as base64 (standard or URL-safe alphabet) when `base64`.
pub fn parse_secret(secret: &str, base64: bool) -> Result<Vec<u8>, String> {
    let bytes = if base64 {
        let s = secret.trim().trim_end_matches('=');
        URL_SAFE_NO_PAD
            .decode(s)
            .or_else(|_| STANDARD.decode(format!("{s}{}", "=".repeat((4 - s.len() % 4) % 4))))
            .map_err(|_| "not base64".to_string())?
    } else {
        secret.as_bytes().to_vec()
    };
    if bytes.len() < MIN_HMAC_BYTES {
        return Err(format!(
            "the secret is {} bytes; HMAC secrets need at least {MIN_HMAC_BYTES} (RFC 7518 section 3.2)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwks_skips_what_is_not_for_signatures() {
        let doc = json!({"keys": [
            {"kty": "oct", "k": URL_SAFE_NO_PAD.encode([7u8; 32]), "kid": "h"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "oct", "alg": "A128KW", "k": "AA"},
            {"kty": "XYZ"}
        ]});
        let Jwks { set, skipped, weak } = parse_jwks(&doc.to_string(), WeakKeys::Refuse).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!((skipped, weak), (4, 0));
        assert!(set.has_kid("h"));
        assert!(!set.has_kid("x"));
    }

    #[test]
    fn jwks_errors() {
        let refuse = |doc: &str| parse_jwks(doc, WeakKeys::Refuse).unwrap_err();
        assert!(parse_jwks("[]", WeakKeys::Skip).is_err());
        assert!(parse_jwks("{}", WeakKeys::Skip).is_err());
        assert!(refuse(r#"{"keys": []}"#).contains("no usable"));
        let short = json!({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]});
        assert!(refuse(&short.to_string()).contains("at least 32"));
        let small_rsa =
            json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"}]});
        assert!(refuse(&small_rsa.to_string()).contains("2048"));
        let bad_point = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([1u8; 32])}]});
        assert!(parse_jwks(&bad_point.to_string(), WeakKeys::Skip).is_err(), "malformed is not weak");
        let wrong_alg =
            json!({"keys": [{"kty": "oct", "alg": "RS256", "k": URL_SAFE_NO_PAD.encode([1u8; 32])}]});
        assert!(parse_jwks(&wrong_alg.to_string(), WeakKeys::Skip).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn weak_keys_refuse_inline_sets_and_are_skipped_in_remote_ones() {
        let good = json!({"kty": "oct", "kid": "good", "k": URL_SAFE_NO_PAD.encode([7u8; 32])});
        let rsa_1024 =
            json!({"kty": "RSA", "kid": "old", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"});
        let short_secret = json!({"kty": "oct", "kid": "short", "k": URL_SAFE_NO_PAD.encode([1u8; 16])});
        let doc = json!({"keys": [rsa_1024, good, short_secret]}).to_string();
        let err = parse_jwks(&doc, WeakKeys::Refuse).unwrap_err();
        assert!(err.starts_with("keys[0]: RSA modulus is 1024 bits"), "{err}");
        let Jwks { set, skipped, weak } = parse_jwks(&doc, WeakKeys::Skip).unwrap();
        assert_eq!((set.keys.len(), skipped, weak), (1, 0, 2));
        assert!(set.has_kid("good") && !set.has_kid("old"));
        // Only weak keys: nothing to verify with, a failed fetch (the last good set stays).
        let only_weak = json!({"keys": [rsa_1024]}).to_string();
        assert!(parse_jwks(&only_weak, WeakKeys::Skip).unwrap_err().contains("1 weak key(s) skipped"));
    }

    #[test]
    fn secrets() {
        assert!(parse_secret("short", false).is_err());
        assert_eq!(parse_secret(&"s".repeat(32), false).unwrap().len(), 32);
        let b = STANDARD.encode([0xfbu8; 40]);
        assert_eq!(parse_secret(&b, true).unwrap(), vec![0xfb; 40]);
        let u = URL_SAFE_NO_PAD.encode([0xfbu8; 40]);
        assert_eq!(parse_secret(&u, true).unwrap(), vec![0xfb; 40]);
        assert!(parse_secret("***", true).is_err());
    }

    #[test]
    fn pem_refuses_private_keys_and_garbage() {
        assert!(parse_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err());
        assert!(parse_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
        assert!(parse_pem("hello").is_err());
    }
}
