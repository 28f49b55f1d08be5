//! ECDSA verification (ES256, ES384) on the `p256`/`p384` crates' field and group arithmetic,
//! with the two scalar multiplications of verification done together (Shamir's trick over
//! width-5 NAFs, tables of odd multiples in affine form, mixed additions).
//!
//! Why not `VerifyingKey::verify` alone: it computes `u1·G + u2·Q` as two separate
//! constant-time multiplications (4-bit windows, a constant-time table scan per window), which
//! is right for secret scalars; in verification every input is public (the signature, the
//! key, the message), so variable time is safe, and sharing the doublings and skipping zero
//! digits does the same work about three times faster. The tables of `G` and `Q` are computed
//! once per key. The steps are those of SEC 1 section 4.1.4 / FIPS 186-5 section 6.4.2:
//! `r, s` in `[1, n-1]` (checked when the signature is parsed), `e` the hash reduced mod `n`,
//! `u1 = e·s⁻¹`, `u2 = r·s⁻¹`, `X = u1·G + u2·Q` not the identity, `x(X) mod n == r`. The
//! complete addition formulas of `primeorder` need no special case for the identity.

/// Signed digits of a non-negative integer (little-endian 64-bit limbs, the top limb left zero
/// for carries) in width-5 NAF: each digit is 0 or odd in `[-15, 15]`, and non-zero digits are
/// at least five positions apart.
fn wnaf<const L: usize>(mut k: [u64; L], out: &mut [i8]) -> usize {
    let mut len = 0;
    let is_zero = |k: &[u64; L]| k.iter().all(|l| *l == 0);
    while !is_zero(&k) && len < out.len() {
        let low = k.first().copied().unwrap_or(0);
        let mut digit = 0i8;
        if low & 1 == 1 {
            let m = (low & 31) as i8;
            digit = if m > 16 { m - 32 } else { m };
            // k -= digit (a negative digit adds |digit|, carrying upwards).
            let mut borrow_or_carry = u64::from(digit.unsigned_abs());
            for limb in k.iter_mut() {
                let (v, overflow) = if digit > 0 {
                    limb.overflowing_sub(borrow_or_carry)
                } else {
                    limb.overflowing_add(borrow_or_carry)
                };
                *limb = v;
                borrow_or_carry = u64::from(overflow);
                if borrow_or_carry == 0 {
                    break;
                }
            }
        }
        if let Some(slot) = out.get_mut(len) {
            *slot = digit;
        }
        len += 1;
        // k >>= 1
        let mut from_above = 0u64;
        for limb in k.iter_mut().rev() {
            let v = *limb;
            *limb = (v >> 1) | (from_above << 63);
            from_above = v & 1;
        }
    }
    len
}

macro_rules! curve {
    ($module:ident, $krate:ident, $uint:ident, $bytes:expr, $limbs:expr, $doc:expr) => {
        #[doc = $doc]
        pub mod $module {
            use $krate::ecdsa::{Signature, VerifyingKey};
            use $krate::elliptic_curve::group::Group as _;
            use $krate::elliptic_curve::ops::{Invert, Reduce};
            use $krate::elliptic_curve::point::AffineCoordinates as _;
            use $krate::elliptic_curve::PrimeField as _;
            use $krate::{$uint, AffinePoint, FieldBytes, ProjectivePoint, Scalar};

            /// Odd multiples `P, 3P, ..., 15P` in affine form.
            type Table = [AffinePoint; 8];

            fn table(p: ProjectivePoint) -> Table {
                let twice = p.double();
                let mut out = [AffinePoint::IDENTITY; 8];
                let mut cur = p;
                for slot in out.iter_mut() {
                    *slot = cur.to_affine();
                    cur += twice;
                }
                out
            }

            /// A public key with its table and the generator's.
            #[derive(Debug, Clone)]
            pub struct Key {
                /// The key as the crate holds it.
                pub key: VerifyingKey,
                q: Box<Table>,
                g: Box<Table>,
                /// The key as DER SubjectPublicKeyInfo, for the host's `verify_signature`.
                spki: Option<Vec<u8>>,
            }

            impl Key {
                /// Prepares the tables (once per key).
                pub fn new(key: VerifyingKey) -> Self {
                    let q = Box::new(table(ProjectivePoint::from(*key.as_affine())));
                    let g = Box::new(table(ProjectivePoint::GENERATOR));
                    let spki =
                        $krate::pkcs8::EncodePublicKey::to_public_key_der(&key).ok().map(|d| d.into_vec());
                    Self { key, q, g, spki }
                }

                /// The key as DER SubjectPublicKeyInfo.
                pub fn spki(&self) -> Option<&[u8]> {
                    self.spki.as_deref()
                }

                /// Whether `sig` (`r || s`, fixed size) is a valid signature of the prehashed
                /// message `hash` (as long as the curve's field).
                pub fn verify_prehash(&self, hash: &[u8], sig: &[u8]) -> bool {
                    let (Ok(sig), Some(hash)) = (
                        Signature::from_slice(sig),
                        (hash.len() == $bytes).then(|| FieldBytes::clone_from_slice(hash)),
                    ) else {
                        return false;
                    };
                    let (r, s) = sig.split_scalars();
                    let e = <Scalar as Reduce<$uint>>::reduce_bytes(&hash);
                    // `s` is non-zero, so it has an inverse; `s` is public, so the variable-time
                    // inversion (binary extended Euclid where the crate has one) is safe.
                    let Some(s_inv) = Option::<Scalar>::from(Invert::invert_vartime(&*s)) else {
                        return false;
                    };
                    let u1 = e * s_inv;
                    let u2 = *r * s_inv;
                    let x = self.lincomb(&u1, &u2);
                    if bool::from(x.is_identity()) {
                        return false;
                    }
                    let xr = <Scalar as Reduce<$uint>>::reduce_bytes(&x.to_affine().x());
                    xr == *r
                }

                /// `u1·G + u2·Q`, variable time.
                fn lincomb(&self, u1: &Scalar, u2: &Scalar) -> ProjectivePoint {
                    let mut d1 = [0i8; $bytes * 8 + 1];
                    let mut d2 = [0i8; $bytes * 8 + 1];
                    let n1 = wnaf_of(u1, &mut d1);
                    let n2 = wnaf_of(u2, &mut d2);
                    let mut acc = ProjectivePoint::IDENTITY;
                    for i in (0..n1.max(n2)).rev() {
                        acc = acc.double();
                        for (digits, table) in [(&d1, &self.g), (&d2, &self.q)] {
                            let d = digits.get(i).copied().unwrap_or(0);
                            if d != 0 {
                                let idx = usize::from(d.unsigned_abs() / 2);
                                if let Some(p) = table.get(idx) {
                                    acc = if d > 0 { acc + p } else { acc + &-*p };
                                }
                            }
                        }
                    }
                    acc
                }
            }

            fn wnaf_of(k: &Scalar, out: &mut [i8]) -> usize {
                let be = k.to_repr();
                let mut limbs = [0u64; $limbs + 1];
                for (i, chunk) in be.rchunks(8).enumerate() {
                    let mut word = [0u8; 8];
                    word.get_mut(8 - chunk.len()..).unwrap_or_default().copy_from_slice(chunk);
                    if let Some(l) = limbs.get_mut(i) {
                        *l = u64::from_be_bytes(word);
                    }
                }
                super::wnaf(limbs, out)
            }
        }
    };
}

curve!(p256v, p256, U256, 32, 4, "ES256 (P-256, SHA-256).");
curve!(p384v, p384, U384, 48, 6, "ES384 (P-384, SHA-384).");

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn value(digits: &[i8]) -> i128 {
        digits.iter().rev().fold(0i128, |acc, d| acc * 2 + i128::from(*d))
    }

    #[test]
    fn wnaf_digits_are_sparse_odd_and_sum_back() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let k = [seed >> (seed % 64), 0];
            let mut out = [0i8; 80];
            let n = wnaf(k, &mut out);
            let digits = &out[..n];
            assert_eq!(value(digits), i128::from(k[0]), "{k:?}");
            for (i, d) in digits.iter().enumerate() {
                if *d != 0 {
                    assert!(d % 2 != 0 && (-15..=15).contains(d));
                    assert!(digits[i + 1..].iter().take(4).all(|x| *x == 0));
                }
            }
        }
        let mut out = [0i8; 8];
        assert_eq!(wnaf([0u64, 0], &mut out), 0);
    }
}
