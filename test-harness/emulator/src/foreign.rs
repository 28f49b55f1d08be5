//! Foreign functions (`proxy_call_foreign_function`), answered as Envoy 1.40 answers them
//! (`source/extensions/common/wasm/foreign.cc`, `source/common/crypto/utility_impl.cc`).
//!
//! Implemented: `verify_signature` (BoringSSL's `EVP_DigestVerify` on a DER or PEM public key),
//! for RSA keys (PKCS #1 v1.5, as `EVP_DigestVerifyInit` defaults to for RSA) and P-256/P-384
//! keys (DER-encoded ECDSA signatures), with SHA-224/256/384/512. Names Envoy does not register
//! are `NotFound`, as proxy-wasm-cpp-host answers. Envoy's other functions (`compress`,
//! `expr_create`, ...), SHA-1 and other key types trap naming what is missing: a test never sees
//! a pretend answer.

use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::der::Decode as _;
use sha2::{Digest as _, Sha224, Sha256, Sha384, Sha512};

/// What the host does with one call.
pub(crate) enum Answer {
    /// `Ok`, with these result bytes copied into the module.
    Ok(Vec<u8>),
    /// A status other than `Ok`, no result.
    Status(u32),
    /// Envoy has it, the emulator does not: the call traps with this text.
    Unimplemented(String),
}

const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;

/// Functions Envoy 1.40 registers that the emulator does not implement.
const ENVOY_ONLY: [&str; 9] = [
    "sign",
    "compress",
    "uncompress",
    "set_envoy_filter_state",
    "clear_route_cache",
    "expr_create",
    "expr_evaluate",
    "expr_delete",
    "declare_property",
];

/// Answers a call of function `name` with `arguments`.
pub(crate) fn call(name: &str, arguments: &[u8]) -> Answer {
    match name {
        "verify_signature" => verify_signature(arguments),
        _ if ENVOY_ONLY.contains(&name) => Answer::Unimplemented(format!("foreign function `{name}`")),
        _ => Answer::Status(NOT_FOUND),
    }
}

/// `VerifySignatureArguments`: hash_function = 1, public_key = 2, signature = 3, text = 4,
/// public_key_pem = 5.
#[derive(Default)]
struct Arguments {
    hash: String,
    der: Vec<u8>,
    signature: Vec<u8>,
    text: Vec<u8>,
    pem: String,
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Protobuf's `ParseFromString`: `None` where it returns false (bad wire data, a string field
/// that is not UTF-8 in this proto3 message).
fn parse(bytes: &[u8]) -> Option<Arguments> {
    let mut args = Arguments::default();
    let mut at = 0;
    while at < bytes.len() {
        let tag = varint(bytes, &mut at)?;
        match tag & 7 {
            0 => {
                varint(bytes, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|end| *end <= bytes.len())?,
            5 => at = at.checked_add(4).filter(|end| *end <= bytes.len())?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let data = bytes.get(at..end)?;
                at = end;
                match tag >> 3 {
                    1 => args.hash = String::from_utf8(data.to_vec()).ok()?,
                    2 => args.der = data.to_vec(),
                    3 => args.signature = data.to_vec(),
                    4 => args.text = data.to_vec(),
                    5 => args.pem = String::from_utf8(data.to_vec()).ok()?,
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    Some(args)
}

/// `VerifySignatureResult`: result = 1 (only written when true), error = 2.
fn result(valid: Result<(), String>) -> Answer {
    let mut out = Vec::new();
    match valid {
        Ok(()) => out.extend_from_slice(&[0x08, 0x01]),
        Err(error) => {
            out.push(0x12);
            let mut len = error.len();
            loop {
                let low = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    out.push(low);
                    break;
                }
                out.push(low | 0x80);
            }
            out.extend_from_slice(error.as_bytes());
        }
    }
    Answer::Ok(out)
}

enum Key {
    Rsa(Box<rsa::RsaPublicKey>),
    P256(Box<p256::ecdsa::VerifyingKey>),
    P384(Box<p384::ecdsa::VerifyingKey>),
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// `EVP_parse_public_key` on SubjectPublicKeyInfo DER: `Ok(None)` where BoringSSL returns no key.
fn parse_key(der: &[u8]) -> Result<Option<Key>, String> {
    use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
    let Ok(spki) = SubjectPublicKeyInfoRef::try_from(der) else {
        return Ok(None);
    };
    let oid = spki.algorithm.oid.to_string();
    let curve = spki.algorithm.parameters_oid().ok().map(|o| o.to_string());
    Ok(match (oid.as_str(), curve.as_deref()) {
        (OID_RSA, _) => {
            let Some(bits) = spki.subject_public_key.as_bytes() else {
                return Ok(None);
            };
            // BoringSSL takes RSA keys up to 16384 bits; the crate's default stops at 4096.
            let Ok(pkcs1) = rsa::pkcs1::RsaPublicKey::from_der(bits) else {
                return Ok(None);
            };
            let n = rsa::BigUint::from_bytes_be(pkcs1.modulus.as_bytes());
            let e = rsa::BigUint::from_bytes_be(pkcs1.public_exponent.as_bytes());
            rsa::RsaPublicKey::new_with_max_size(n, e, 16384).ok().map(|k| Key::Rsa(Box::new(k)))
        }
        (OID_EC, Some(OID_P256)) => {
            p256::ecdsa::VerifyingKey::from_public_key_der(der).ok().map(|k| Key::P256(Box::new(k)))
        }
        (OID_EC, Some(OID_P384)) => {
            p384::ecdsa::VerifyingKey::from_public_key_der(der).ok().map(|k| Key::P384(Box::new(k)))
        }
        // Ed25519 and X25519 keys parse in BoringSSL, but `EVP_DigestVerifyInit` with a digest
        // fails on them: the same answer as no key.
        ("1.3.101.112", _) | ("1.3.101.110", _) => None,
        (oid, curve) => return Err(format!("public key algorithm {oid} (curve {curve:?})")),
    })
}

#[derive(Clone, Copy)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn digest(hash: Hash, text: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha224 => Sha224::digest(text).to_vec(),
        Hash::Sha256 => Sha256::digest(text).to_vec(),
        Hash::Sha384 => Sha384::digest(text).to_vec(),
        Hash::Sha512 => Sha512::digest(text).to_vec(),
    }
}

fn verify_signature(arguments: &[u8]) -> Answer {
    let Some(args) = parse(arguments) else {
        return Answer::Status(BAD_ARGUMENT);
    };
    // importPublicKey: both forms, or neither, is no key object at all.
    let der = match (args.der.is_empty(), args.pem.is_empty()) {
        (false, true) => args.der.clone(),
        (true, false) => {
            // PEM_read_bio_PUBKEY: the first PUBLIC KEY block.
            pem_public_key(&args.pem).unwrap_or_default()
        }
        _ => return Answer::Status(BAD_ARGUMENT),
    };
    let hash = match args.hash.to_ascii_lowercase().as_str() {
        "sha224" => Hash::Sha224,
        "sha256" => Hash::Sha256,
        "sha384" => Hash::Sha384,
        "sha512" => Hash::Sha512,
        "sha1" => return Answer::Unimplemented("verify_signature with sha1".into()),
        _ => return result(Err(format!("{} is not supported.", args.hash))),
    };
    let key = match parse_key(&der) {
        Ok(Some(key)) => key,
        Ok(None) => return result(Err("Failed to initialize digest verify.".into())),
        Err(what) => return Answer::Unimplemented(format!("verify_signature with {what}")),
    };
    let valid = match key {
        Key::Rsa(k) => {
            let scheme = match hash {
                Hash::Sha224 => rsa::Pkcs1v15Sign::new::<Sha224>(),
                Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
                Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
            };
            k.verify(scheme, &digest(hash, &args.text), &args.signature).is_ok()
        }
        Key::P256(k) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
            p256::ecdsa::Signature::from_der(&args.signature)
                .is_ok_and(|s| k.verify_prehash(&digest(hash, &args.text), &s).is_ok())
        }
        Key::P384(k) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
            p384::ecdsa::Signature::from_der(&args.signature)
                .is_ok_and(|s| k.verify_prehash(&digest(hash, &args.text), &s).is_ok())
        }
    };
    if valid {
        result(Ok(()))
    } else {
        result(Err("Failed to verify digest. Error code: 0".into()))
    }
}

fn pem_public_key(pem: &str) -> Option<Vec<u8>> {
    let begin = "-----BEGIN PUBLIC KEY-----";
    let start = pem.find(begin)? + begin.len();
    let end = start + pem.get(start..)?.find("-----END PUBLIC KEY-----")?;
    let body: String = pem.get(start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}
