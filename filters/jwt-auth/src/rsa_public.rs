//! RSA signature checks (RS* and PS*) with the public-key operation done in Montgomery form by
//! `crypto-bigint` for moduli up to 4096 bits.
//!
//! Why not `rsa::RsaPublicKey::verify` alone: its `num-bigint-dig` exponentiation is generic
//! (a windowed ladder with division-based setup) and costs about 116 µs natively for a 2048-bit
//! key; verification only ever raises to the public exponent (65537: 16 squarings and one
//! multiplication), which `crypto-bigint`'s fixed-size Montgomery arithmetic does several times
//! faster, and the Montgomery parameters are computed once per key, not per token. Everything
//! here works on public values (signature, key, message), so it need not be constant-time.
//! Keys larger than 4096 bits, or with an exponent above 32 bits, go through the `rsa` crate.
//!
//! The encodings are checked as RFC 8017 specifies: EMSA-PKCS1-v1_5 by building the expected
//! encoded message and comparing (section 8.2.2), EMSA-PSS with MGF1 and a salt as long as the
//! hash (section 9.1.2, as RFC 7518 section 3.5 requires for PS256/384/512).

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048, U3072, U4096};
use rsa::traits::PublicKeyParts as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::digest::{Digest, FixedOutputReset};
use sha2::{Sha256, Sha384, Sha512};

use crate::jwt::Alg;

/// Montgomery parameters for one modulus size.
#[derive(Debug, Clone)]
enum Params {
    B2048(Box<DynResidueParams<{ U2048::LIMBS }>>),
    B3072(Box<DynResidueParams<{ U3072::LIMBS }>>),
    B4096(Box<DynResidueParams<{ U4096::LIMBS }>>),
}

/// An RSA public key ready for verification.
#[derive(Debug, Clone)]
pub struct RsaKey {
    key: RsaPublicKey,
    /// The public exponent, when it fits 32 bits (it is 65537 in practice).
    e: Option<u32>,
    /// Bytes of the modulus (`k` in RFC 8017).
    k: usize,
    /// Bits of the modulus.
    bits: usize,
    params: Option<Params>,
    /// The key as DER SubjectPublicKeyInfo, for the host's `verify_signature`.
    spki: Option<Vec<u8>>,
}

/// `bytes` left-padded with zeros to `len` (callers pass `bytes.len() <= len`).
fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.saturating_sub(bytes.len())];
    v.extend_from_slice(bytes);
    v
}

impl RsaKey {
    /// Prepares `key`: the Montgomery parameters of its modulus, computed once.
    pub fn new(key: RsaPublicKey) -> Self {
        let n = key.n().to_bytes_be();
        let bits = key.n().bits();
        let k = bits.div_ceil(8);
        let e_bytes = key.e().to_bytes_be();
        let e = (e_bytes.len() <= 4).then(|| e_bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)));
        // Montgomery form needs an odd modulus (every RSA modulus is; an even one takes the
        // slow path, where it fails).
        let odd = n.last().is_some_and(|b| b & 1 == 1);
        let params = match bits {
            _ if !odd => None,
            0..=2048 => {
                Some(Params::B2048(Box::new(DynResidueParams::new(&U2048::from_be_slice(&padded(&n, 256))))))
            }
            2049..=3072 => {
                Some(Params::B3072(Box::new(DynResidueParams::new(&U3072::from_be_slice(&padded(&n, 384))))))
            }
            3073..=4096 => {
                Some(Params::B4096(Box::new(DynResidueParams::new(&U4096::from_be_slice(&padded(&n, 512))))))
            }
            _ => None,
        };
        let spki = rsa::pkcs8::EncodePublicKey::to_public_key_der(&key).ok().map(|d| d.into_vec());
        Self { key, e, k, bits, params, spki }
    }

    /// The key as DER SubjectPublicKeyInfo (what BoringSSL's `EVP_parse_public_key` reads).
    pub fn spki(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }

    /// The key.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.key
    }

    /// `sig^e mod n` as `k` bytes, or `None` when `sig` is not a number below `n` of `k` bytes.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.k {
            return None;
        }
        let (Some(e), Some(params)) = (self.e, &self.params) else {
            return None;
        };
        let out = match params {
            Params::B2048(p) => pow::<{ U2048::LIMBS }>(&U2048::from_be_slice(&padded(sig, 256)), p, e)
                .map(|u| u.to_be_bytes().to_vec()),
            Params::B3072(p) => pow::<{ U3072::LIMBS }>(&U3072::from_be_slice(&padded(sig, 384)), p, e)
                .map(|u| u.to_be_bytes().to_vec()),
            Params::B4096(p) => pow::<{ U4096::LIMBS }>(&U4096::from_be_slice(&padded(sig, 512)), p, e)
                .map(|u| u.to_be_bytes().to_vec()),
        }?;
        // The value has at most k significant bytes; drop the padding of the fixed width.
        out.get(out.len().saturating_sub(self.k)..).map(<[u8]>::to_vec)
    }

    /// Whether `sig` is a valid `alg` signature of `msg`.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        if self.params.is_none() || self.e.is_none() {
            return self.verify_slow(alg, msg, sig);
        }
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        match alg {
            Alg::RS256 => pkcs1v15(&em, &Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg)),
            Alg::RS384 => pkcs1v15(&em, &Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg)),
            Alg::RS512 => pkcs1v15(&em, &Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg)),
            Alg::PS256 => pss::<Sha256>(&em, self.bits, &Sha256::digest(msg)),
            Alg::PS384 => pss::<Sha384>(&em, self.bits, &Sha384::digest(msg)),
            Alg::PS512 => pss::<Sha512>(&em, self.bits, &Sha512::digest(msg)),
            _ => false,
        }
    }

    /// The `rsa` crate's own check, for keys outside the fast path.
    fn verify_slow(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        use rsa::Pss;
        let k = &self.key;
        match alg {
            Alg::RS256 => k.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig).is_ok(),
            Alg::RS384 => k.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig).is_ok(),
            Alg::RS512 => k.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig).is_ok(),
            Alg::PS256 => k.verify(Pss::new::<Sha256>(), &Sha256::digest(msg), sig).is_ok(),
            Alg::PS384 => k.verify(Pss::new::<Sha384>(), &Sha384::digest(msg), sig).is_ok(),
            Alg::PS512 => k.verify(Pss::new::<Sha512>(), &Sha512::digest(msg), sig).is_ok(),
            _ => false,
        }
    }
}

/// `x^e mod n` by left-to-right square-and-multiply over the bits of the public exponent;
/// `None` when `x >= n` (RFC 8017 section 5.2.2: the signature must be below the modulus).
fn pow<const LIMBS: usize>(
    x: &crypto_bigint::Uint<LIMBS>,
    params: &DynResidueParams<LIMBS>,
    e: u32,
) -> Option<crypto_bigint::Uint<LIMBS>> {
    if x >= params.modulus() || e == 0 {
        return None;
    }
    let base = DynResidue::new(x, *params);
    let mut acc = base;
    let top = 31 - e.leading_zeros();
    for i in (0..top).rev() {
        acc = acc.square();
        if (e >> i) & 1 == 1 {
            acc = acc.mul(&base);
        }
    }
    Some(acc.retrieve())
}

/// EMSA-PKCS1-v1_5: `em` must be `00 01 FF.. 00 || DigestInfo prefix || hash`.
fn pkcs1v15(em: &[u8], scheme: &Pkcs1v15Sign, hashed: &[u8]) -> bool {
    let t_len = scheme.prefix.len() + hashed.len();
    if em.len() < t_len + 11 {
        return false;
    }
    let mut expected = Vec::with_capacity(em.len());
    expected.extend_from_slice(&[0x00, 0x01]);
    expected.resize(em.len() - t_len - 1, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(&scheme.prefix);
    expected.extend_from_slice(hashed);
    expected == em
}

/// MGF1 (RFC 8017 appendix B.2.1) of `seed`, XORed into `out`.
fn mgf1_xor<D: Digest + FixedOutputReset>(seed: &[u8], out: &mut [u8]) {
    let mut hasher = D::new();
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(<D as Digest>::output_size())) {
        Digest::update(&mut hasher, seed);
        Digest::update(&mut hasher, counter.to_be_bytes());
        let block = hasher.finalize_reset();
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= m;
        }
    }
}

/// EMSA-PSS verification with MGF1 and a salt as long as the hash.
fn pss<D: Digest + FixedOutputReset>(em_k: &[u8], mod_bits: usize, m_hash: &[u8]) -> bool {
    let h_len = <D as Digest>::output_size();
    let s_len = h_len;
    let em_bits = mod_bits.saturating_sub(1);
    let em_len = em_bits.div_ceil(8);
    // When emLen < k the leading byte of the k-byte value must be zero (RFC 8017 8.1.2 step 2c).
    let Some(cut) = em_k.len().checked_sub(em_len) else {
        return false;
    };
    let (lead, em) = em_k.split_at(cut);
    if lead.iter().any(|b| *b != 0) || em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let db_len = em_len - h_len - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let h = rest.get(..h_len).unwrap_or_default();
    let zero_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8.checked_shr(u32::try_from(zero_bits).unwrap_or(8)).unwrap_or(0);
    if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
        return false;
    }
    let mut db = masked_db.to_vec();
    mgf1_xor::<D>(h, &mut db);
    if let Some(b) = db.first_mut() {
        *b &= top_mask;
    }
    let ps_len = em_len - h_len - s_len - 2;
    let (ps, tail) = db.split_at(ps_len);
    if ps.iter().any(|b| *b != 0) || tail.first() != Some(&0x01) {
        return false;
    }
    let salt = tail.get(1..).unwrap_or_default();
    let mut hasher = D::new();
    Digest::update(&mut hasher, [0u8; 8]);
    Digest::update(&mut hasher, m_hash);
    Digest::update(&mut hasher, salt);
    hasher.finalize().as_slice() == h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use rsa::BigUint;

    /// The Montgomery exponentiation agrees with `num-bigint-dig` for moduli of every size
    /// class, including moduli with leading zero limbs in the fixed width.
    #[test]
    fn public_op_matches_modpow() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for bits in [1024usize, 2048, 2056, 3072, 3500, 4096] {
            let bytes: Vec<u8> = (0..bits / 8).map(|_| next() as u8).collect();
            let mut n_bytes = bytes.clone();
            n_bytes[0] |= 0x80;
            *n_bytes.last_mut().unwrap() |= 1;
            let n = BigUint::from_bytes_be(&n_bytes);
            let key = RsaKey::new(RsaPublicKey::new_unchecked(n.clone(), BigUint::from(65537u32)));
            assert!(key.params.is_some(), "{bits}");
            for _ in 0..3 {
                let mut x: Vec<u8> = (0..bits / 8).map(|_| next() as u8).collect();
                x[0] &= 0x7f;
                let want = BigUint::from_bytes_be(&x).modpow(&BigUint::from(65537u32), &n);
                let got = key.public_op(&x).unwrap();
                assert_eq!(BigUint::from_bytes_be(&got), want, "{bits}");
                assert_eq!(got.len(), bits / 8);
            }
            assert!(key.public_op(&n_bytes).is_none(), "x = n is refused");
            assert!(key.public_op(&[1, 2, 3]).is_none(), "wrong length is refused");
        }
    }
}
