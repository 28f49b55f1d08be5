//! RS* and ES* signatures checked by the host: Envoy (1.35 and later) registers a foreign
//! function, `verify_signature`, that runs BoringSSL's `EVP_DigestVerify` on a DER public key.
//! One host call there costs a few microseconds where the same check in 32-bit Wasm costs tens
//! (RSA) to hundreds (P-256) of them, and it is the same code Envoy's own `jwt_authn` runs.
//!
//! What stays in the module: HMAC (a shared secret never leaves the module), PS* (the host
//! function takes no padding choice and uses PKCS #1 v1.5 for RSA keys), EdDSA (BoringSSL's
//! Ed25519 takes no digest, and `verify_signature` always names one), and every host without
//! the function, where [`check`] says so and the module's own code runs.
//!
//! The wire format is protobuf (`source/extensions/common/wasm/ext/verify_signature.proto`):
//! arguments `hash_function = 1` (string), `public_key = 2` (DER SubjectPublicKeyInfo),
//! `signature = 3`, `text = 4`; the answer `result = 1` (bool), `error = 2` (string). The few
//! fields involved are encoded and read here rather than through a protobuf crate.

use crate::jwt::{Alg, KeyKind};

/// The name Envoy registers the function under.
pub const FUNCTION: &str = "verify_signature";

/// What the module asks the host for one signature.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The host cannot check this algorithm or key (see the module docs): the module checks it.
    NotForHost,
    /// The signature cannot be valid for this key whatever the host says (an ES* signature that
    /// is not `R || S` of the curve's size, or a zero `R` or `S`).
    Invalid,
    /// The encoded arguments of `verify_signature`.
    Arguments(Vec<u8>),
}

/// The host's digest name for `alg`, for the algorithms the host checks.
fn hash_name(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 => Some("sha512"),
        _ => None,
    }
}

/// The arguments that ask the host whether `sig` is the `alg` signature of `msg` by a key of
/// `kind` whose SubjectPublicKeyInfo is `spki` (`None` for a key the crates could not encode,
/// or one that has none). JWS carries ECDSA signatures as `R || S` (RFC 7518 section 3.4);
/// BoringSSL reads DER, so they are re-encoded here.
pub fn request(kind: KeyKind, spki: Option<&[u8]>, alg: Alg, msg: &[u8], sig: &[u8]) -> Request {
    let Some(hash) = hash_name(alg) else {
        return Request::NotForHost;
    };
    let der_sig;
    let signature = match (kind, alg) {
        (KeyKind::Rsa, Alg::RS256 | Alg::RS384 | Alg::RS512) => sig,
        (KeyKind::P256, Alg::ES256) => match p256::ecdsa::Signature::from_slice(sig) {
            Ok(s) => {
                der_sig = s.to_der().as_bytes().to_vec();
                &der_sig
            }
            Err(_) => return Request::Invalid,
        },
        (KeyKind::P384, Alg::ES384) => match p384::ecdsa::Signature::from_slice(sig) {
            Ok(s) => {
                der_sig = s.to_der().as_bytes().to_vec();
                &der_sig
            }
            Err(_) => return Request::Invalid,
        },
        _ => return Request::NotForHost,
    };
    // A key the crates could not encode (none in practice) is checked by the module.
    let Some(spki) = spki else {
        return Request::NotForHost;
    };
    let mut out = Vec::with_capacity(hash.len() + spki.len() + signature.len() + msg.len() + 16);
    bytes_field(&mut out, 1, hash.as_bytes());
    bytes_field(&mut out, 2, spki);
    bytes_field(&mut out, 3, signature);
    bytes_field(&mut out, 4, msg);
    Request::Arguments(out)
}

/// A length-delimited protobuf field (wire type 2); field numbers here are below 16, so the tag
/// is one byte.
fn bytes_field(out: &mut Vec<u8>, number: u8, data: &[u8]) {
    out.push((number << 3) | 2);
    let mut len = data.len();
    loop {
        // The low seven bits, so the cast keeps every bit it is given.
        let low = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
    out.extend_from_slice(data);
}

/// Reads a base-128 varint at the start of `bytes`: its value and length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads a `VerifySignatureResult`: its `result` (false unless present and set) and its `error`
/// text; `None` when the bytes are not a well-formed message.
fn answer(bytes: &[u8]) -> Option<(bool, Option<&[u8]>)> {
    let (mut rest, mut result, mut error) = (bytes, false, None);
    while !rest.is_empty() {
        let (tag, used) = varint(rest)?;
        rest = rest.get(used..)?;
        let (value, used) = varint(rest)?;
        rest = rest.get(used..)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => result = value != 0,
            (_, 0) => {}
            (number, 2) => {
                let n = usize::try_from(value).ok()?;
                if number == 2 {
                    error = Some(rest.get(..n)?);
                }
                rest = rest.get(n..)?;
            }
            _ => return None,
        }
    }
    Some((result, error))
}

/// Whether the host's answer says the signature is valid: `result` present and true. Anything
/// else, an unreadable answer included, is a failed verification (fail closed).
pub fn verified(answer_bytes: &[u8]) -> bool {
    answer(answer_bytes).is_some_and(|(result, _)| result)
}

/// The error text in the host's answer, for the debug log.
pub fn error_text(answer_bytes: &[u8]) -> Option<String> {
    answer(answer_bytes)?.1.map(|e| String::from_utf8_lossy(e).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_envoy_writes_them() {
        assert!(verified(&[0x08, 0x01]));
        assert!(!verified(&[0x08, 0x00]));
        assert!(!verified(&[]));
        let mut failed = vec![0x12, 5];
        failed.extend_from_slice(b"nope!");
        assert!(!verified(&failed));
        assert_eq!(error_text(&failed).as_deref(), Some("nope!"));
        // Unknown fields are skipped; truncated input is a failure.
        assert!(verified(&[0x1a, 2, b'x', b'y', 0x08, 0x01]));
        assert!(!verified(&[0x08]));
        assert!(!verified(&[0x12, 9, b'a']));
        assert!(!verified(&[0x0d, 0, 0, 0, 0]));
    }

    #[test]
    fn long_fields_carry_multi_byte_lengths() {
        let mut out = Vec::new();
        bytes_field(&mut out, 4, &[7u8; 300]);
        assert_eq!(&out[..3], &[0x22, 0xac, 0x02]);
        assert_eq!(out.len(), 303);
    }
}
