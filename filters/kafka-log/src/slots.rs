//! The header values a record needs, found in one pass over a header map as the host serialized
//! it (`proxy_get_header_map_pairs`).
//!
//! A record looks up a handful of names (seven request headers and two response headers with the
//! default fields), most of them absent. Walking the whole map once and keeping where each wanted
//! name's first value lies costs one comparison per header and wanted name, with no copy and no
//! UTF-8 check of values nobody reads. Lookups then agree with
//! [`gatewasm::HeaderSnapshot::get`]: names compare case-insensitively, the first value of a
//! repeated header wins, a value that is not UTF-8 reads with U+FFFD, and a malformed map reads
//! as empty.

use gatewasm::host::PairsIter;

/// Where one wanted header's first value is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Absent,
    /// Byte range of a UTF-8 value in the map.
    Text(usize, usize),
    /// A value with bytes that are not UTF-8, decoded with U+FFFD.
    Lossy(String),
}

/// The first value of each wanted name in one header map.
#[derive(Debug, Clone)]
pub struct Slots<'a> {
    names: &'a [String],
    raw: Vec<u8>,
    slots: Vec<Slot>,
}

impl<'a> Slots<'a> {
    /// Finds `names` (lower-case) in `raw`, a serialized header map (empty: no headers).
    pub fn find(names: &'a [String], raw: Vec<u8>) -> Self {
        let mut slots = vec![Slot::Absent; names.len()];
        let mut left = names.len();
        let mut seen = 0usize;
        let base = raw.as_ptr() as usize;
        for (key, value) in PairsIter::new(&raw) {
            seen += 1;
            if left == 0 {
                // Keep walking only to tell a complete map from a malformed one.
                continue;
            }
            for (name, slot) in names.iter().zip(slots.iter_mut()) {
                // Envoy stores names lower-case: the exact comparison almost always decides.
                if *slot == Slot::Absent
                    && (key == name.as_bytes() || key.eq_ignore_ascii_case(name.as_bytes()))
                {
                    // `value` borrows `raw`: its offset is its address minus the buffer's.
                    let start = value.as_ptr() as usize - base;
                    *slot = match std::str::from_utf8(value) {
                        Ok(_) => Slot::Text(start, start + value.len()),
                        Err(_) => Slot::Lossy(String::from_utf8_lossy(value).into_owned()),
                    };
                    left -= 1;
                    break;
                }
            }
        }
        // As `gatewasm::host::is_well_formed`: every declared pair present (an empty map is
        // well formed).
        let declared = raw.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
        if !raw.is_empty() && declared.map(|d| d as usize) != Some(seen) {
            slots.iter_mut().for_each(|s| *s = Slot::Absent);
        }
        Slots { names, raw, slots }
    }

    /// No map: every name absent.
    pub fn none(names: &'a [String]) -> Self {
        Slots { names, raw: Vec::new(), slots: vec![Slot::Absent; names.len()] }
    }

    /// The first value of `name`, when it is one of the wanted names and present.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Callers pass the wanted names themselves: the exact comparison finds them.
        let at = match self.names.iter().position(|n| n == name) {
            Some(at) => at,
            None => self.names.iter().position(|n| n.eq_ignore_ascii_case(name))?,
        };
        match self.slots.get(at)? {
            Slot::Absent => None,
            Slot::Text(start, end) => {
                let value = self.raw.get(*start..*end)?;
                // SAFETY: `find` checked these bytes are UTF-8 before recording the range, and
                // `raw` (private) is never changed after `find`.
                Some(unsafe { std::str::from_utf8_unchecked(value) })
            }
            Slot::Lossy(text) => Some(text),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use gatewasm::host::serialize_pairs;
    use gatewasm::HeaderSnapshot;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Every wanted name reads as `HeaderSnapshot` reads it.
    fn agrees(wanted: &[String], raw: Vec<u8>) {
        let snapshot = HeaderSnapshot::from_serialized(raw.clone());
        let slots = Slots::find(wanted, raw);
        for name in wanted {
            assert_eq!(slots.get(name), snapshot.get(name), "{name}");
        }
    }

    #[test]
    fn first_values_case_insensitively_and_absent_names() {
        let wanted = names(&[":path", "x-multi", "user-agent", "x-absent", "x-empty"]);
        let raw = serialize_pairs(&[
            (":path", "/a?b=1"),
            ("X-Multi", "1"),
            ("x-multi", "2"),
            ("user-agent", "curl/8 \"q\""),
            ("x-empty", ""),
        ]);
        let slots = Slots::find(&wanted, raw.clone());
        assert_eq!(slots.get(":path"), Some("/a?b=1"));
        assert_eq!(slots.get("x-multi"), Some("1"));
        assert_eq!(slots.get("x-empty"), Some(""));
        assert_eq!(slots.get("x-absent"), None);
        assert_eq!(slots.get("not-wanted"), None);
        agrees(&wanted, raw);
    }

    #[test]
    fn non_utf8_empty_and_malformed_maps_read_as_the_snapshot_reads_them() {
        let wanted = names(&["x-bin", "x-ok"]);
        let mut raw = serialize_pairs(&[("x-bin", "ab"), ("x-ok", "fine")]);
        let at = raw.windows(3).position(|w| w == b"ab\0").unwrap();
        raw[at] = 0xff;
        raw[at + 1] = 0xfe;
        let slots = Slots::find(&wanted, raw.clone());
        assert_eq!(slots.get("x-bin"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(slots.get("x-ok"), Some("fine"));
        agrees(&wanted, raw.clone());
        raw.truncate(raw.len() - 3);
        assert_eq!(Slots::find(&wanted, raw.clone()).get("x-bin"), None);
        agrees(&wanted, raw);
        agrees(&wanted, Vec::new());
        agrees(&wanted, vec![1, 0]);
        assert_eq!(Slots::none(&wanted).get("x-ok"), None);
    }
}
