//! The ABI's serialized header-map format: a count, a (name length, value length) table, then
//! each name and value followed by NUL. Hosts write it; the SDK reads it in place.

use proxy_wasm::types::Bytes;

/// The pairs of a serialized map, borrowed from it. Stops at the first malformed entry; use
/// [`is_well_formed`] first to tell a short map from a broken one.
#[derive(Debug, Clone)]
pub struct PairsIter<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    pos: usize,
}

impl<'a> PairsIter<'a> {
    /// Iterates the pairs of `bytes` (an empty slice is an empty map).
    pub fn new(bytes: &'a [u8]) -> Self {
        let count = read_u32(bytes, 0).map_or(0, |c| c as usize);
        let pos = count.checked_mul(8).and_then(|n| n.checked_add(4)).unwrap_or(usize::MAX);
        Self { bytes, index: 0, count, pos }
    }
}

impl<'a> Iterator for PairsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = self.index.checked_mul(8)?.checked_add(4)?;
        let klen = read_u32(self.bytes, sizes)? as usize;
        let vlen = read_u32(self.bytes, sizes.checked_add(4)?)? as usize;
        let key_end = self.pos.checked_add(klen)?;
        let key = self.bytes.get(self.pos..key_end)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(vlen)?;
        let value = self.bytes.get(value_start..value_end)?;
        self.pos = value_end.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

/// What [`check_map`] found in a serialized map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapCheck {
    /// A declared pair is missing or cut.
    Malformed,
    /// Complete, and every name and value is UTF-8.
    Text,
    /// Complete, with some name or value that is not UTF-8.
    Binary,
}

/// Checks a serialized map in one walk over its size table and one UTF-8 check of its text,
/// instead of one check per name and value (most of the cost of reading a map in the VM). The
/// text (names and values, each followed by its NUL) is checked whole: where every separator is
/// NUL, a whole that is UTF-8 means every piece is, since NUL is a character of its own and ends
/// no other. A map whose separators are not NUL (no host writes one) is checked piece by piece.
pub fn check_map(bytes: &[u8]) -> MapCheck {
    if bytes.is_empty() {
        return MapCheck::Text;
    }
    let Some(count) = read_u32(bytes, 0) else { return MapCheck::Malformed };
    let Some(text_start) = (count as usize).checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return MapCheck::Malformed;
    };
    let mut pos = text_start;
    let mut nul_separated = true;
    for i in 0..count as usize {
        let Some(sizes) = i.checked_mul(8).and_then(|n| n.checked_add(4)) else { return MapCheck::Malformed };
        let (Some(klen), Some(vlen)) =
            (read_u32(bytes, sizes), sizes.checked_add(4).and_then(|at| read_u32(bytes, at)))
        else {
            return MapCheck::Malformed;
        };
        for (piece, len) in [klen, vlen].into_iter().enumerate() {
            let Some(sep) = pos.checked_add(len as usize) else { return MapCheck::Malformed };
            match bytes.get(sep) {
                Some(0) => pos = sep + 1,
                Some(_) => {
                    nul_separated = false;
                    pos = sep + 1;
                }
                // The last NUL may be missing, as `PairsIter` allows; anything else missing is
                // a cut map.
                None if sep == bytes.len() && i + 1 == count as usize && piece == 1 => pos = sep,
                None => return MapCheck::Malformed,
            }
        }
    }
    let text = bytes.get(text_start..pos).unwrap_or_default();
    let utf8 = if nul_separated {
        std::str::from_utf8(text).is_ok()
    } else {
        PairsIter::new(bytes).all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok())
    };
    if utf8 {
        MapCheck::Text
    } else {
        MapCheck::Binary
    }
}

/// True when `bytes` is a complete serialized map (every declared pair present).
pub fn is_well_formed(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let Some(count) = read_u32(bytes, 0) else { return false };
    PairsIter::new(bytes).count() == count as usize
}

/// Serializes header pairs in the ABI's map format: count, then (key len, value len) pairs, then
/// each key and value followed by NUL. Names and values are text or bytes (values a host gave,
/// kept unchanged).
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let body: usize = pairs.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + body);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&len_u32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    // Lengths on wasm32 are at most u32::MAX; saturating keeps native builds total.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses the ABI's map format into owned pairs; `None` when the bytes are not a well-formed map.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut pos = count.checked_mul(8)?.checked_add(4)?;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: refuse absurd counts before allocating.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let sizes = 4 + i * 8;
        let klen = read_u32(bytes, sizes)? as usize;
        let vlen = read_u32(bytes, sizes + 4)? as usize;
        let key = bytes.get(pos..pos.checked_add(klen)?)?.to_vec();
        pos = pos.checked_add(klen)?.checked_add(1)?;
        let value = bytes.get(pos..pos.checked_add(vlen)?)?.to_vec();
        pos = pos.checked_add(vlen)?.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs = [(":path", "/a"), ("x-k", ""), ("", "v")];
        let bytes = serialize_pairs(&pairs);
        let back = deserialize_pairs(&bytes).unwrap();
        let back: Vec<(&str, &str)> = back
            .iter()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(back, pairs);
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[1, 0]), None);
        assert_eq!(deserialize_pairs(&[255, 255, 255, 255]), None);
        let mut bytes = serialize_pairs(&[("a", "b")]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(deserialize_pairs(&bytes), None);
        // A declared length beyond the buffer.
        let mut bytes = serialize_pairs(&[("a", "b")]);
        bytes[4] = 200;
        assert_eq!(deserialize_pairs(&bytes), None);
    }

    /// A map serialized as Envoy does, but with byte strings.
    fn raw_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let count = u32::try_from(pairs.len()).unwrap();
        let mut out = count.to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend(u32::try_from(k.len()).unwrap().to_le_bytes());
            out.extend(u32::try_from(v.len()).unwrap().to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn check_map_tells_text_from_binary_from_malformed() {
        assert_eq!(check_map(&[]), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[])), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[(b":path", b"/caf\xc3\xa9"), (b"x", b"")])), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[(b"x", b"\xff")])), MapCheck::Binary);
        // A character cut by the end of a value is not UTF-8, even though the next byte is NUL.
        assert_eq!(check_map(&raw_map(&[(b"x", b"\xc3"), (b"y", b"1")])), MapCheck::Binary);
        // Sizes that do not add up, or a size table cut short.
        let mut cut = raw_map(&[(b"a", b"b")]);
        cut.truncate(cut.len() - 2);
        assert_eq!(check_map(&cut), MapCheck::Malformed);
        assert_eq!(check_map(&[2, 0, 0, 0, 1, 0]), MapCheck::Malformed);
        assert_eq!(check_map(&[255, 255, 255, 255]), MapCheck::Malformed);
        // Without the last NUL, as `PairsIter` reads it.
        let mut unterminated = raw_map(&[(b"a", b"b")]);
        unterminated.pop();
        assert!(is_well_formed(&unterminated));
        assert_eq!(check_map(&unterminated), MapCheck::Text);
    }

    /// With a separator that is not NUL, a UTF-8 whole can hide a piece that is not: each piece
    /// is then checked on its own, so the unchecked reads of a snapshot stay sound.
    #[test]
    fn check_map_checks_each_piece_when_separators_are_not_nul() {
        // Key "\xc3" followed, where the NUL belongs, by "\xa9": together "é", apart invalid.
        let mut bytes = raw_map(&[(b"\xc3", b"v")]);
        let sep = 4 + 8 + 1;
        bytes[sep] = 0xa9;
        assert!(std::str::from_utf8(&bytes[12..]).is_ok(), "the whole text is UTF-8");
        assert_eq!(check_map(&bytes), MapCheck::Binary);
        let mut ok = raw_map(&[(b"k", b"v")]);
        ok[sep] = b'=';
        assert_eq!(check_map(&ok), MapCheck::Text);
    }

    /// On random maps (bytes drawn mostly from multi-byte UTF-8 pieces, separators sometimes not
    /// NUL, sometimes cut), the one-pass check agrees with checking every piece on its own.
    #[test]
    fn check_map_agrees_with_checking_each_piece() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet: [&[u8]; 6] = [b"a", b"\0", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe2\x82\xac"];
        for _ in 0..20_000 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..next(4))
                .map(|_| {
                    let mut piece =
                        || (0..next(4)).flat_map(|_| alphabet[next(alphabet.len())].to_vec()).collect();
                    (piece(), piece())
                })
                .collect();
            let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let mut bytes = raw_map(&refs);
            if next(3) == 0 && bytes.len() > 4 {
                let at = 4 + next(bytes.len() - 4);
                bytes[at] = alphabet[next(alphabet.len())][0];
            }
            if next(5) == 0 {
                bytes.truncate(next(bytes.len() + 1));
            }
            let expected = if !is_well_formed(&bytes) {
                MapCheck::Malformed
            } else if PairsIter::new(&bytes)
                .all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok())
            {
                MapCheck::Text
            } else {
                MapCheck::Binary
            };
            assert_eq!(check_map(&bytes), expected, "{bytes:?}");
        }
    }
}
