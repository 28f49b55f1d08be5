//! One access-log record: which fields it has, where each value comes from, and the JSON it is
//! written as, from the stream's [`Values`] at the end of the stream.

use std::fmt::Write as _;

use gatewasm::{HeaderSnapshot, Stream};

/// What a redacted value is logged as.
pub const REDACTED: &str = "[REDACTED]";

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// When the request reached the filter (VM clock), ISO 8601 UTC with milliseconds.
    StartTime,
    /// Milliseconds from [`Source::StartTime`] to the end of the stream.
    Duration,
    /// Request body bytes the filter saw.
    BytesReceived,
    /// Response body bytes the filter saw.
    BytesSent,
    /// `x-envoy-original-path` when present (the path before a rewrite), else `:path`.
    Path,
    /// The response's `:status` (0 when no response was sent).
    ResponseCode,
    /// A request header (lower-case name).
    RequestHeader(String),
    /// A response header (lower-case name).
    ResponseHeader(String),
    /// An Envoy attribute, by path segments, and how its bytes read.
    Property(Vec<String>, PropertyKind),
    /// A fixed JSON value, as text.
    Value(String),
}

/// How Envoy serializes an attribute's value (proxy-wasm `get_property`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyKind {
    /// Bytes of a string.
    Str,
    /// 8-byte little-endian integer.
    Int,
    /// One byte, 0 or 1.
    Bool,
    /// `response.flags`: 8-byte bit set, written as Envoy's short flag names (`UH,UF`, `-`).
    Flags,
    /// 8-byte little-endian nanoseconds since the Unix epoch, written as ISO 8601.
    Timestamp,
}

impl PropertyKind {
    /// The kind of a known attribute; strings for the others.
    pub fn of(path: &str) -> PropertyKind {
        match path {
            "response.flags" => PropertyKind::Flags,
            "request.time" => PropertyKind::Timestamp,
            "connection.mtls" => PropertyKind::Bool,
            "response.code"
            | "response.grpc_status"
            | "request.size"
            | "request.total_size"
            | "response.size"
            | "response.total_size"
            | "request.duration"
            | "connection.id"
            | "source.port"
            | "destination.port"
            | "upstream.port" => PropertyKind::Int,
            _ => PropertyKind::Str,
        }
    }
}

/// A record field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name in the record.
    pub name: String,
    /// `"name":`, escaped once at configuration time.
    pub key_json: String,
    /// Where the value comes from.
    pub source: Source,
    /// Whether a present value is written as [`REDACTED`].
    pub redact: bool,
}

impl Field {
    /// A field named `name`.
    pub fn new(name: &str, source: Source, redact: bool) -> Field {
        let mut key_json = String::with_capacity(name.len() + 3);
        write_str(&mut key_json, name);
        key_json.push(':');
        Field { name: name.to_string(), key_json, source, redact }
    }
}

fn property(path: &str) -> Source {
    Source::Property(path.split('.').map(str::to_string).collect(), PropertyKind::of(path))
}

/// The default fields: the names and meanings of Istio's JSON access log.
pub fn default_fields() -> Vec<Field> {
    let header = |h: &str| Source::RequestHeader(h.to_string());
    vec![
        Field::new("start_time", Source::StartTime, false),
        Field::new("method", header(":method"), false),
        Field::new("path", Source::Path, false),
        Field::new("protocol", property("request.protocol"), false),
        Field::new("response_code", Source::ResponseCode, false),
        Field::new("response_flags", property("response.flags"), false),
        Field::new("bytes_received", Source::BytesReceived, false),
        Field::new("bytes_sent", Source::BytesSent, false),
        Field::new("duration", Source::Duration, false),
        Field::new(
            "upstream_service_time",
            Source::ResponseHeader("x-envoy-upstream-service-time".to_string()),
            false,
        ),
        Field::new("x_forwarded_for", header("x-forwarded-for"), false),
        Field::new("user_agent", header("user-agent"), false),
        Field::new("request_id", header("x-request-id"), false),
        Field::new("authority", header(":authority"), false),
        Field::new("upstream_host", property("upstream.address"), false),
        Field::new("upstream_cluster", property("xds.cluster_name"), false),
        Field::new("route_name", property("xds.route_name"), false),
        Field::new("downstream_remote_address", property("source.address"), false),
    ]
}

/// What the stream measured itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Unix time in nanoseconds when the request reached the filter.
    pub start_ns: Option<u64>,
    /// Unix time in nanoseconds at the end of the stream.
    pub end_ns: Option<u64>,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
}

/// Values of the stream being logged: its header maps (each read once, when a field needs it)
/// and the stream itself for attributes (one host call each).
pub struct Values<'a> {
    /// The request headers (empty when no field needs them).
    pub request: &'a HeaderSnapshot,
    /// The response headers (empty when no field needs them).
    pub response: &'a HeaderSnapshot,
    /// The stream, for attributes.
    pub stream: &'a Stream,
}

/// Attribute paths have two or three segments; longer ones (configured by hand) take a `Vec`.
const SHORT_PATH: usize = 4;

impl Values<'_> {
    fn request_header(&self, name: &str) -> Option<&str> {
        self.request.get(name)
    }

    fn response_header(&self, name: &str) -> Option<&str> {
        self.response.get(name)
    }

    /// An attribute's raw bytes (`None` when Envoy has none).
    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        if path.len() <= SHORT_PATH {
            let mut segments = [""; SHORT_PATH];
            for (to, from) in segments.iter_mut().zip(path) {
                *to = from.as_str();
            }
            return self.stream.property(segments.get(..path.len()).unwrap_or_default());
        }
        self.stream.property(&path.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// Writes one record as a JSON object into `out` (cleared first). Returns the byte range in
/// `out` of the value of field `key` when it is present and not `null`.
pub fn write_record(
    fields: &[Field],
    values: &Values<'_>,
    timing: &Timing,
    key: Option<usize>,
    out: &mut String,
) -> Option<std::ops::Range<usize>> {
    out.clear();
    out.push('{');
    let mut key_range = None;
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.key_json);
        let start = out.len();
        write_value(field, values, timing, out);
        if key == Some(i) && &out[start..] != "null" {
            key_range = Some(start..out.len());
        }
    }
    out.push('}');
    key_range
}

fn write_opt_str(out: &mut String, value: Option<&str>, redact: bool) {
    match value {
        None => out.push_str("null"),
        Some(_) if redact => write_str(out, REDACTED),
        Some(v) => write_str(out, v),
    }
}

fn write_value(field: &Field, values: &Values<'_>, timing: &Timing, out: &mut String) {
    match &field.source {
        Source::StartTime => match timing.start_ns {
            Some(ns) => {
                out.push('"');
                write_iso8601(out, ns);
                out.push('"');
            }
            None => out.push_str("null"),
        },
        Source::Duration => match (timing.start_ns, timing.end_ns) {
            (Some(start), Some(end)) => {
                push_u64(out, end.saturating_sub(start) / 1_000_000, 1);
            }
            _ => out.push_str("null"),
        },
        Source::BytesReceived => {
            push_u64(out, timing.bytes_received, 1);
        }
        Source::BytesSent => {
            push_u64(out, timing.bytes_sent, 1);
        }
        Source::Path => {
            let path =
                values.request_header("x-envoy-original-path").or_else(|| values.request_header(":path"));
            write_opt_str(out, path, field.redact);
        }
        Source::ResponseCode => {
            let code = values.response_header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
            push_u64(out, u64::from(code), 1);
        }
        Source::RequestHeader(name) => write_opt_str(out, values.request_header(name), field.redact),
        Source::ResponseHeader(name) => write_opt_str(out, values.response_header(name), field.redact),
        Source::Property(path, kind) => match values.property(path) {
            None => out.push_str("null"),
            Some(_) if field.redact => write_str(out, REDACTED),
            Some(bytes) => write_property(out, &bytes, *kind),
        },
        Source::Value(json) => out.push_str(json),
    }
}

fn le_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

fn write_property(out: &mut String, bytes: &[u8], kind: PropertyKind) {
    match kind {
        // Checked first: `from_utf8_lossy` walks valid text several times slower.
        PropertyKind::Str => match std::str::from_utf8(bytes) {
            Ok(text) => write_str(out, text),
            Err(_) => write_str(out, &String::from_utf8_lossy(bytes)),
        },
        PropertyKind::Int => match le_u64(bytes) {
            Some(v) => {
                let v = v as i64;
                if v < 0 {
                    out.push('-');
                }
                push_u64(out, v.unsigned_abs(), 1);
            }
            None => out.push_str("null"),
        },
        PropertyKind::Bool => match bytes {
            [0] => out.push_str("false"),
            [_] => out.push_str("true"),
            _ => out.push_str("null"),
        },
        PropertyKind::Flags => match le_u64(bytes) {
            Some(bits) => {
                out.push('"');
                write_flags(out, bits);
                out.push('"');
            }
            None => out.push_str("null"),
        },
        PropertyKind::Timestamp => match le_u64(bytes) {
            Some(ns) => {
                out.push('"');
                write_iso8601(out, ns);
                out.push('"');
            }
            None => out.push_str("null"),
        },
    }
}

/// Envoy's short response flag names, by bit (`envoy/stream_info/stream_info.h`,
/// `CoreResponseFlag`, in order), as `%RESPONSE_FLAGS%` prints them.
pub const RESPONSE_FLAGS: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX",
    "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
];

/// Writes a flag bit set as `%RESPONSE_FLAGS%` does: names joined by `,`, `-` for none.
pub fn write_flags(out: &mut String, bits: u64) {
    if bits == 0 {
        out.push('-');
        return;
    }
    let mut first = true;
    for (bit, name) in RESPONSE_FLAGS.iter().enumerate() {
        if bits & (1u64 << bit) != 0 {
            if !first {
                out.push(',');
            }
            out.push_str(name);
            first = false;
        }
    }
    // Flags newer than this table: their bit number, so nothing is silently lost.
    for bit in RESPONSE_FLAGS.len()..64 {
        if bits & (1u64 << bit) != 0 {
            if !first {
                out.push(',');
            }
            let _ = write!(out, "bit{bit}");
            first = false;
        }
    }
}

/// Writes Unix nanoseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the format of Envoy's `%START_TIME%`
/// in Istio's JSON access log.
pub fn write_iso8601(out: &mut String, unix_ns: u64) {
    let ms = (unix_ns / 1_000_000) % 1000;
    let secs = unix_ns / 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    push_u64(out, y, 4);
    out.push('-');
    push_u64(out, m, 2);
    out.push('-');
    push_u64(out, d, 2);
    out.push('T');
    push_u64(out, rem / 3600, 2);
    out.push(':');
    push_u64(out, (rem % 3600) / 60, 2);
    out.push(':');
    push_u64(out, rem % 60, 2);
    out.push('.');
    push_u64(out, ms, 3);
    out.push('Z');
}

/// Appends `v` in decimal with at least `width` digits (zero-padded, as `{v:0width$}`; at most 20), without
/// `core::fmt`: a record has a dozen numbers, and the formatting machinery costs several times
/// the digits themselves in the VM.
pub fn push_u64(out: &mut String, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut len = 0;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
        len += 1;
        if v == 0 {
            break;
        }
    }
    let start = digits.len() - len.max(width).min(digits.len());
    for &d in digits.get(start..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm, for
/// non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Writes `s` as a JSON string.
pub fn write_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    match first_escaped(s.as_bytes()) {
        // Most values need no escaping: one copy.
        None => out.push_str(s),
        Some(first) => write_escaped(out, s, first),
    }
    out.push('"');
}

/// Whether [`write_str`] escapes byte `b`.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Index of the first byte to escape: eight bytes at a time, then the tail.
fn first_escaped(bytes: &[u8]) -> Option<usize> {
    let mut clean = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
        if needs_escape(word) {
            break;
        }
        clean += 8;
    }
    let rest = bytes.get(clean..).unwrap_or_default();
    rest.iter().position(|&b| escaped(b)).map(|at| clean + at)
}

/// Writes `s` escaped, `first` being the index of its first byte to escape.
fn write_escaped(out: &mut String, s: &str, first: usize) {
    // `run`: start of the bytes not copied yet.
    let mut run = 0;
    for (i, &b) in s.as_bytes().iter().enumerate().skip(first) {
        if !escaped(b) {
            continue;
        }
        out.push_str(s.get(run..i).unwrap_or(""));
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or(""));
}

/// Whether any of the eight bytes of `word` is a control character, `"`, `\\` or DEL (the
/// bytes [`write_str`] escapes). Each test is the classic "has a byte less than n / equal to c"
/// word trick: exact about whether some byte matches, which is all that is asked here.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    let del = has_zero(word ^ (ONES * 0x7f));
    (control | quote | backslash | del) != 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_escaped_once_for_json() {
        let field = Field::new("weird \"name\"", Source::Value("1".into()), false);
        assert_eq!(field.key_json, "\"weird \\\"name\\\"\":");
    }

    #[test]
    fn flags_and_time() {
        let mut s = String::new();
        write_flags(&mut s, 0);
        assert_eq!(s, "-");
        s.clear();
        write_flags(&mut s, (1 << 0) | (1 << 29) | (1 << 40));
        assert_eq!(s, "LH,UDO,bit40");
        s.clear();
        write_iso8601(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        write_iso8601(&mut s, 951_782_400_999_000_000); // 2000-02-29, a leap day
        assert_eq!(s, "2000-02-29T00:00:00.999Z");
        s.clear();
        write_iso8601(&mut s, 4_102_444_799_000_000_000);
        assert_eq!(s, "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn the_word_test_finds_every_escaped_byte_at_every_position() {
        for b in 0..=255u8 {
            let escaped = escaped(b);
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                assert_eq!(needs_escape(u64::from_le_bytes(word)), escaped, "{b:#x} at {at}");
                // Next to bytes with the high bit set (UTF-8), too.
                let mut word = [0xc3; 8];
                word[at] = b;
                assert_eq!(needs_escape(u64::from_le_bytes(word)), escaped, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn numbers_as_core_fmt_writes_them() {
        for v in [0u64, 7, 9, 10, 99, 100, 1234, 99_999, u64::MAX / 3, u64::MAX] {
            for width in [1, 2, 3, 4, 20] {
                let mut s = String::new();
                push_u64(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$}"));
            }
        }
        let mut s = String::new();
        write_iso8601(&mut s, u64::MAX);
        assert_eq!(s, "2554-07-21T23:34:33.709Z");
    }

    #[test]
    fn strings_are_escaped_for_json() {
        let long = "a fairly long value \"quoted\" past eight bytes\u{1}, é ✓ and a tail\\";
        for raw in ["plain", "q\"b\\s", "ctl\u{1}\u{1f}\u{7f}", "tab\tnl\ncr\r", "unicode é ✓", "", long] {
            let mut s = String::new();
            write_str(&mut s, raw);
            assert_eq!(serde_json::from_str::<String>(&s).unwrap(), raw, "{s}");
        }
    }
}
