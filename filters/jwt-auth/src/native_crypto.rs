//! RS* and ES* signatures in native builds, where there is no host `verify_signature` (Envoy
//! registers it for Wasm only): aws-lc-rs, AWS's maintained binding of AWS-LC (a BoringSSL
//! fork, the library family native `jwt_authn` runs). Chosen by measurement over `ring` and the
//! RustCrypto code the Wasm build uses (README, "Performance"). Each key is parsed once per
//! algorithm it is used with and kept with the key.
//!
//! PS*, EdDSA and HMAC stay with the module's own code, as on Wasm.

use std::cell::OnceCell;

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};

use crate::jwt::Alg;

/// A public key's parsed forms, one per algorithm slot (see [`algorithm`]), made on first use.
#[derive(Debug, Clone, Default)]
pub struct NativeKey {
    parsed: [OnceCell<Option<ParsedPublicKey>>; 3],
}

/// AWS-LC's algorithm for `alg` and the slot its parsed key goes in; `None` for algorithms left
/// to the module's own code. A key serves one family (RSA, P-256 or P-384), so the slots of
/// the families do not meet.
fn algorithm(alg: Alg) -> Option<(&'static dyn VerificationAlgorithm, usize)> {
    Some(match alg {
        Alg::RS256 => (&signature::RSA_PKCS1_2048_8192_SHA256, 0),
        Alg::RS384 => (&signature::RSA_PKCS1_2048_8192_SHA384, 1),
        Alg::RS512 => (&signature::RSA_PKCS1_2048_8192_SHA512, 2),
        // JWS carries R || S of the curve's size (RFC 7518 section 3.4): the fixed forms.
        Alg::ES256 => (&signature::ECDSA_P256_SHA256_FIXED, 0),
        Alg::ES384 => (&signature::ECDSA_P384_SHA384_FIXED, 1),
        _ => return None,
    })
}

impl NativeKey {
    /// Whether `sig` is the `alg` signature of `msg` by the key whose SubjectPublicKeyInfo is
    /// `spki`; `None` when `alg` is left to the module's own code. A key AWS-LC refuses (none
    /// that the JWK parser accepts, in practice) verifies nothing.
    pub fn verify(&self, spki: &[u8], alg: Alg, msg: &[u8], sig: &[u8]) -> Option<bool> {
        let (algorithm, slot) = algorithm(alg)?;
        let parsed = self.parsed.get(slot)?.get_or_init(|| ParsedPublicKey::new(algorithm, spki).ok());
        Some(parsed.as_ref().is_some_and(|key| key.verify_sig(msg, sig).is_ok()))
    }
}
