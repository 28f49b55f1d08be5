//! Proxy-Wasm ABI 0.2.1 constants and the serialized header-map format.

/// Results returned by host calls (`WasmResult` in proxy-wasm-cpp-host).
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// The key, map entry, queue or metric does not exist.
    pub const NOT_FOUND: u32 = 1;
    /// An argument is invalid, or the requested map/buffer is not available in this callback.
    pub const BAD_ARGUMENT: u32 = 2;
    /// A property could not be serialized.
    pub const SERIALIZATION_FAILURE: u32 = 3;
    /// A value could not be parsed.
    pub const PARSE_FAILURE: u32 = 4;
    /// A pointer or size from the module is outside its memory.
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    /// The shared queue is empty.
    pub const EMPTY: u32 = 7;
    /// The CAS value of shared data does not match.
    pub const CAS_MISMATCH: u32 = 8;
    /// The host failed internally.
    pub const INTERNAL_FAILURE: u32 = 10;
    /// The call is not implemented by the host for this argument.
    pub const UNIMPLEMENTED: u32 = 12;
}

/// What a stream callback returned (`proxy_wasm::types::Action`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the stream go on to the next filter.
    Continue,
    /// Stop the stream in this filter until it resumes it (or, for bodies, buffer more data).
    Pause,
}

/// Log levels of `proxy_log`, as numbered by the ABI.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4
    Error,
    /// 5
    Critical,
}

impl LogLevel {
    /// The level for an ABI value, if valid.
    pub fn from_u32(v: u32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    /// The ABI value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// Kind of a metric defined by the module.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Gauge (Envoy stores it as u64: decrementing below 0 wraps).
    Gauge,
    /// Histogram (values are recorded, not readable by the module).
    Histogram,
}

/// Serializes pairs in the proxy-wasm map format: count, (key len, value len)*, (key\0 value\0)*.
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn u32_at(data: &[u8], at: usize) -> Option<usize> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as usize)
}

/// Parses the proxy-wasm map format. Like proxy-wasm-cpp-host's `PairsUtil::toPairs`, malformed
/// input (truncated, sizes past the end) yields an empty list rather than an error.
pub fn deserialize_pairs(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn parse(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        if data.is_empty() {
            return Some(Vec::new());
        }
        let n = u32_at(data, 0)?;
        let mut pos = n.checked_mul(8)?.checked_add(4)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for i in 0..n {
            let ks = u32_at(data, 4 + i * 8)?;
            let vs = u32_at(data, 8 + i * 8)?;
            let k = data.get(pos..pos.checked_add(ks)?)?.to_vec();
            pos = pos.checked_add(ks)?.checked_add(1)?;
            let v = data.get(pos..pos.checked_add(vs)?)?.to_vec();
            pos = pos.checked_add(vs)?.checked_add(1)?;
            out.push((k, v));
        }
        Some(out)
    }
    parse(data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = vec![(":method", "GET"), ("x-a", "")];
        let bytes = serialize_pairs(&pairs);
        let back = deserialize_pairs(&bytes);
        assert_eq!(back, vec![(b":method".to_vec(), b"GET".to_vec()), (b"x-a".to_vec(), Vec::new())]);
    }

    #[test]
    fn malformed_pairs_are_empty() {
        assert!(deserialize_pairs(&[5, 0, 0, 0, 1]).is_empty());
        assert!(deserialize_pairs(&[1, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0]).is_empty());
    }
}
