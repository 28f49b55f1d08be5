//! A record as bytes, for the queue from an instance that never ticks (a native module's
//! worker) to the one that sends: when it was buffered, where its key is, its text.

use crate::outbox::Entry;

/// No key: both ends of the range.
const NO_KEY: u32 = u32::MAX;
/// `at_ms` (8 bytes), key start and end (4 bytes each), then the text.
const HEADER: usize = 16;

/// The bytes of `entry`.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entry.text.len());
    out.extend_from_slice(&entry.at_ms.to_le_bytes());
    let (start, end) = entry
        .key
        .as_ref()
        .and_then(|k| Some((u32::try_from(k.start).ok()?, u32::try_from(k.end).ok()?)))
        .unwrap_or((NO_KEY, NO_KEY));
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&end.to_le_bytes());
    out.extend_from_slice(entry.text.as_bytes());
    out
}

/// The entry `bytes` encode; `None` for bytes [`encode`] did not write.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    let at_ms = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let start = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let end = u32::from_le_bytes(bytes.get(12..HEADER)?.try_into().ok()?);
    let text = String::from_utf8(bytes.get(HEADER..)?.to_vec()).ok()?;
    let key = if start == NO_KEY {
        None
    } else {
        let range = usize::try_from(start).ok()?..usize::try_from(end).ok()?;
        // A key outside the text would not read; refuse it here rather than later.
        text.get(range.clone())?;
        Some(range)
    };
    Some(Entry { text, key, at_ms })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_as_they_went() {
        for entry in [
            Entry { text: r#"{"k":"v","a":1}"#.into(), key: Some(5..8), at_ms: 1_767_225_600_123 },
            Entry { text: "{}".into(), key: None, at_ms: 0 },
        ] {
            assert_eq!(decode(&encode(&entry)), Some(entry));
        }
    }

    #[test]
    fn bytes_it_did_not_write_are_refused() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0; 15]), None);
        let mut bad_key = encode(&Entry { text: "{}".into(), key: Some(0..2), at_ms: 1 });
        bad_key[12] = 9;
        assert_eq!(decode(&bad_key), None);
        let mut not_utf8 = encode(&Entry { text: "{}".into(), key: None, at_ms: 1 });
        not_utf8.push(0xff);
        assert_eq!(decode(&not_utf8), None);
    }
}
