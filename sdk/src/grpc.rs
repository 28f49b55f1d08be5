//! Unary gRPC calls to an Envoy cluster.
//!
//! A filter describes the call with [`GrpcCall`] (cluster, service, method, initial metadata,
//! the serialized request message, a timeout) and hands it to [`crate::Stream::dispatch_grpc`]
//! (or, for background work, [`crate::Root::dispatch_grpc`]). The answer comes back to
//! [`crate::HttpFilter::on_grpc_result`] (or [`crate::Plugin::on_grpc_result`]) as a
//! [`GrpcResult`]: the response message's bytes, or a typed [`GrpcError`]. The SDK carries
//! bytes only: the filter encodes its request and decodes the response itself, so no protobuf
//! library lands in a module that does not want one.
//!
//! The same [`GrpcResult`] arrives for the same answer on both targets. On proxy-wasm the call
//! is Envoy's own gRPC client (`proxy_grpc_call`); natively, where Envoy offers modules no gRPC
//! call, the SDK speaks gRPC over an HTTP/2 stream to the cluster and decodes the answer as
//! Envoy's gRPC client does. How Envoy 1.40 reports each failure, and so what the SDK makes of
//! it (checked against Envoy with the probe filter, see the emulator's README):
//!
//! | what happened | Envoy reports | [`GrpcError`] |
//! |---|---|---|
//! | no cluster of that name | the call is refused at once | [`GrpcError::UnknownCluster`] |
//! | the cluster has no healthy endpoint, or anything else that fails the call as it is sent | refused at once | [`GrpcError::Dispatch`] |
//! | the timeout passed | `UNAVAILABLE` (14), `upstream request timeout` | [`GrpcError::Timeout`] |
//! | the service answered `DEADLINE_EXCEEDED` (4), or `CANCELLED` (1): a server gives up on a call when the deadline it was sent (`grpc-timeout`) passes, and tonic says so with `CANCELLED`, often before Envoy's own timer fires (the client, which sent the deadline, never cancels) | 4 or 1 | [`GrpcError::Timeout`] |
//! | connection refused or reset before an answer, a cluster not speaking HTTP/2 | 14, `upstream connect error or disconnect/reset before headers. ...` | [`GrpcError::Unavailable`] |
//! | the service answered `UNAVAILABLE` | 14 and its message | [`GrpcError::Unavailable`] |
//! | the service answered another error status | that status and its `grpc-message` | [`GrpcError::Status`] |
//! | a frame Envoy cannot decode (reserved flags, compressed), `OK` without a message, no `grpc-status` at all, a `grpc-status` that is not one | `INTERNAL` (13) or `UNKNOWN` (2) without a message, or an invalid code | [`GrpcError::Malformed`] |
//! | a message longer than [`GrpcCall::max_response_bytes`] | the message | [`GrpcError::TooLarge`] |
//! | an HTTP error status instead of a gRPC answer | the status mapped as gRPC maps it (404: 12, 503: 14, ...) | by that code |
//!
//! On proxy-wasm Envoy appends the answer's response code details to the message
//! (`denied{via_upstream}`, or `via_upstream` alone for an empty one): the Wasm backend removes
//! them, and the SDK percent-decodes `grpc-message` as the protocol encodes it, so a message
//! reads as the service wrote it on both targets.

use std::borrow::Cow;
use std::time::Duration;

use proxy_wasm::types::{BufferType, Status};

use crate::host::Host;

/// Default for [`GrpcCall::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// gRPC status codes (`google.rpc.Code`) a filter is likely to look at.
pub mod code {
    /// Not an error.
    pub const OK: u32 = 0;
    /// The operation was cancelled.
    pub const CANCELLED: u32 = 1;
    /// Unknown error (also: an answer without `grpc-status`).
    pub const UNKNOWN: u32 = 2;
    /// The client sent an invalid argument.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// The deadline passed before the operation completed.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// Some requested entity was not found.
    pub const NOT_FOUND: u32 = 5;
    /// The caller may not do this.
    pub const PERMISSION_DENIED: u32 = 7;
    /// Some resource (a quota) is exhausted.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// The service does not implement the method (also: an HTTP 404).
    pub const UNIMPLEMENTED: u32 = 12;
    /// Internal error (also: an answer Envoy cannot decode).
    pub const INTERNAL: u32 = 13;
    /// The service is unavailable (also: no connection, Envoy's timeout).
    pub const UNAVAILABLE: u32 = 14;
    /// The caller is not authenticated.
    pub const UNAUTHENTICATED: u32 = 16;
    /// Envoy's code for a `grpc-status` that is not a number from 0 to 16.
    pub const INVALID: u32 = u32::MAX;
}

/// The message Envoy's router gives a call whose timeout passed (with `UNAVAILABLE`).
pub const ENVOY_TIMEOUT_MESSAGE: &str = "upstream request timeout";

/// A unary gRPC call to send to an Envoy cluster. Its text borrows where it can (`'a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    /// Envoy cluster name (in Istio, `outbound|PORT||HOST`); the cluster must speak HTTP/2.
    pub cluster: Cow<'a, str>,
    /// Fully qualified service name (`envoy.service.ratelimit.v3.RateLimitService`).
    pub service: Cow<'a, str>,
    /// Method name (`ShouldRateLimit`).
    pub method: Cow<'a, str>,
    /// Initial metadata (request headers). Names lower-case; a `-bin` name's value is binary
    /// and goes out base64-encoded, as gRPC wants.
    pub metadata: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
    /// The serialized request message (the SDK frames it).
    pub message: Vec<u8>,
    /// Envoy gives up after this long (and sends it as `grpc-timeout`); must not be zero,
    /// which Envoy would send as a deadline already passed. Whole milliseconds, at most
    /// `u32::MAX`.
    pub timeout: Duration,
    /// Longest response message accepted; a longer one is [`GrpcError::TooLarge`].
    pub max_response_bytes: usize,
}

impl<'a> GrpcCall<'a> {
    /// A call of `service`/`method` on `cluster` with `message`, no metadata, a 1 s timeout and
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new(
        cluster: impl Into<Cow<'a, str>>,
        service: impl Into<Cow<'a, str>>,
        method: impl Into<Cow<'a, str>>,
        message: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            service: service.into(),
            method: method.into(),
            metadata: Vec::new(),
            message: message.into(),
            timeout: Duration::from_secs(1),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The same call owning all its text, to keep past what it borrowed from.
    pub fn into_owned(self) -> GrpcCall<'static> {
        let own = |c: Cow<'a, str>| Cow::Owned(c.into_owned());
        GrpcCall {
            cluster: own(self.cluster),
            service: own(self.service),
            method: own(self.method),
            metadata: self.metadata.into_iter().map(|(k, v)| (own(k), Cow::Owned(v.into_owned()))).collect(),
            message: self.message,
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
        }
    }
}

/// A gRPC status other than `OK`: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The status code (see [`code`]).
    pub code: u32,
    /// The status message as the service wrote it (percent-decoded; bytes that are not UTF-8
    /// read as U+FFFD).
    pub message: String,
}

/// Why a gRPC call has no response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcError {
    /// No cluster of that name: refused when dispatched, the call never left.
    UnknownCluster,
    /// Refused or failed as it was sent (a zero timeout, a call already pending on the
    /// stream, too many plugin calls in flight, a cluster without a healthy endpoint): the
    /// host's status.
    Dispatch(Status),
    /// No answer before the timeout (Envoy's), or the service answered `DEADLINE_EXCEEDED` or
    /// `CANCELLED` (how a server reports the deadline it was sent passing).
    Timeout,
    /// The service could not be reached (connection refused or reset before an answer, a
    /// cluster not speaking HTTP/2), or answered `UNAVAILABLE`: the message says which.
    Unavailable(String),
    /// The service answered another error status.
    Status(GrpcStatus),
    /// The answer was not a well-formed unary gRPC answer: a frame Envoy cannot decode, a
    /// compressed message, `OK` without a message, no `grpc-status`, or one that is not a
    /// status code. (A service's own `INTERNAL` or `UNKNOWN` without a message reads the same.)
    Malformed,
    /// The response message is longer than [`GrpcCall::max_response_bytes`]; it was not read.
    TooLarge {
        /// The message's length.
        size: usize,
    },
}

impl GrpcError {
    /// The gRPC status code the error stands for, as a filter that maps codes (ext-auth's
    /// failure handling, say) wants it: `UNAVAILABLE` for a call that could not be made or
    /// reached, `DEADLINE_EXCEEDED` for a timeout, `INTERNAL` for an answer that could not be
    /// read, the status's own code otherwise.
    pub fn code(&self) -> u32 {
        match self {
            GrpcError::UnknownCluster | GrpcError::Dispatch(_) | GrpcError::Unavailable(_) => {
                code::UNAVAILABLE
            }
            GrpcError::Timeout => code::DEADLINE_EXCEEDED,
            GrpcError::Status(status) => status.code,
            GrpcError::Malformed | GrpcError::TooLarge { .. } => code::INTERNAL,
        }
    }
}

/// What [`crate::HttpFilter::on_grpc_result`] and [`crate::Plugin::on_grpc_result`] receive:
/// the response message's bytes, or why there are none.
pub type GrpcResult = Result<Vec<u8>, GrpcError>;

/// A call in flight: what its answer needs.
pub(crate) struct Pending {
    pub token: u32,
    pub max_response_bytes: usize,
}

impl Pending {
    /// Sends `call` through `host`.
    pub(crate) fn send(host: &dyn Host, call: &GrpcCall<'_>) -> Result<Self, GrpcError> {
        if call.timeout.as_millis() == 0 {
            return Err(GrpcError::Dispatch(Status::BadArgument));
        }
        let token = host.dispatch_grpc_call(call).map_err(|status| match status {
            // Envoy's answer for a cluster it does not know (it kept ABI 0.1's code).
            Status::ParseFailure => GrpcError::UnknownCluster,
            other => GrpcError::Dispatch(other),
        })?;
        Ok(Self { token, max_response_bytes: call.max_response_bytes })
    }

    /// Reads the answer the host is delivering: the message (`status` 0, `size` bytes) or the
    /// call's close with `status`.
    pub(crate) fn read(&self, host: &dyn Host, status: u32, size: usize) -> GrpcResult {
        if status != code::OK {
            let message = host.grpc_status().map(|(_, message)| message).unwrap_or_default();
            return Err(classify(status, &message));
        }
        if size > self.max_response_bytes {
            return Err(GrpcError::TooLarge { size });
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        match host.buffer(BufferType::GrpcReceiveBuffer, 0, size) {
            Ok(message) if message.len() == size => Ok(message),
            _ => Err(GrpcError::Malformed),
        }
    }
}

/// The error for a call closed with `status` and the message the host reported.
pub(crate) fn classify(status: u32, raw_message: &[u8]) -> GrpcError {
    let message = decode_message(raw_message);
    match status {
        // A server answers a call past the deadline it was sent (`grpc-timeout`) with one of
        // these (tonic: `CANCELLED`, "Timeout expired"), racing Envoy's own timer.
        code::DEADLINE_EXCEEDED | code::CANCELLED => GrpcError::Timeout,
        code::UNAVAILABLE if message == ENVOY_TIMEOUT_MESSAGE => GrpcError::Timeout,
        code::UNAVAILABLE => GrpcError::Unavailable(message),
        code::INTERNAL | code::UNKNOWN if message.is_empty() => GrpcError::Malformed,
        code::INVALID => GrpcError::Malformed,
        code => GrpcError::Status(GrpcStatus { code, message }),
    }
}

/// The message without what Envoy's Wasm gRPC client appends to it: its response code details,
/// in braces after the message (`denied{via_upstream}`), or alone when the message was empty.
/// Only the details of an answer that came from the service (`via_upstream`) are taken for a
/// whole message; Envoy's own answers keep their text, which says what happened.
pub(crate) fn strip_envoy_details(message: &[u8]) -> &[u8] {
    const VIA_UPSTREAM: &[u8] = b"via_upstream";
    if message == VIA_UPSTREAM {
        return &[];
    }
    if message.last() != Some(&b'}') {
        return message;
    }
    // The brace that opens the last group, nested groups included.
    let mut depth = 0usize;
    for (at, byte) in message.iter().enumerate().rev() {
        match byte {
            b'}' => depth += 1,
            b'{' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return message.get(..at).unwrap_or(message);
                }
            }
            _ => {}
        }
    }
    message
}

/// `grpc-message` as text: percent-decoded (as gRPC encodes it), lossy UTF-8.
fn decode_message(raw: &[u8]) -> String {
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    match String::from_utf8(decoded) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Whether `bytes` might parse as a protobuf message: a walk over the top-level fields that
/// says yes to whatever it cannot rule out. Envoy's Wasm gRPC call reads its `upstream` argument
/// as a serialized `GrpcService` when it parses as one, and only otherwise as a cluster name; a
/// name that parses (`empty`, `h1`: a valid tag and value) makes Envoy 1.40 build a client for
/// a `GrpcService` naming no cluster, and abort ("unset oneof"). Such names are sent as a
/// `GrpcService` that names them instead ([`grpc_service`]).
pub(crate) fn may_parse_as_protobuf(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((tag, after)) = varint(rest) else { return false };
        if tag >> 3 == 0 {
            return false;
        }
        rest = match tag & 7 {
            0 => match varint(after) {
                Some((_, after)) => after,
                None => return false,
            },
            1 => match after.get(8..) {
                Some(after) => after,
                None => return false,
            },
            2 => {
                let Some((len, after)) = varint(after) else { return false };
                match usize::try_from(len).ok().and_then(|len| after.get(len..)) {
                    Some(after) => after,
                    None => return false,
                }
            }
            // A group: its end is not worth finding; say it may parse.
            3 => return true,
            5 => match after.get(4..) {
                Some(after) => after,
                None => return false,
            },
            // An end-group tag at the top level, or a wire type that does not exist.
            _ => return false,
        };
    }
    // Every field read whole (an empty name parses too: an empty message).
    true
}

/// A protobuf varint and what follows it; `None` when truncated or longer than ten bytes.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..).unwrap_or_default()));
        }
    }
    None
}

/// `envoy.config.core.v3.GrpcService { envoy_grpc { cluster_name: cluster } }`, serialized.
pub(crate) fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut inner = vec![0x0a];
    put_varint(&mut inner, cluster.len());
    inner.extend_from_slice(cluster.as_bytes());
    let mut outer = vec![0x0a];
    put_varint(&mut outer, inner.len());
    outer.extend_from_slice(&inner);
    outer
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    // The casts keep the seven low bits, which is the encoding.
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_details_are_removed_from_messages() {
        // What Envoy 1.40 passed the probe filter, and what the service had written.
        let cases: [(&[u8], &str); 7] = [
            (b"denied %25 %C3%A9 {x}{via_upstream}", "denied % \u{e9} {x}"),
            (b"via_upstream", ""),
            (b"only{via_upstream}", "only"),
            (b"", ""),
            (
                b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure{upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}}",
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            ),
            (b"upstream request timeout{response_timeout}", ENVOY_TIMEOUT_MESSAGE),
            (b"no braces } here", "no braces } here"),
        ];
        for (raw, want) in cases {
            assert_eq!(decode_message(strip_envoy_details(raw)), want, "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(strip_envoy_details(b"unbalanced}"), b"unbalanced}");
        assert_eq!(decode_message(b"bad %FF utf8"), "bad \u{fffd} utf8");
    }

    /// Envoy's Wasm message for a close, as the Wasm backend hands it on.
    fn wasm(status: u32, envoy_message: &[u8]) -> GrpcError {
        classify(status, strip_envoy_details(envoy_message))
    }

    #[test]
    fn closes_are_classified_as_envoy_reports_them() {
        assert_eq!(wasm(14, b"upstream request timeout{response_timeout}"), GrpcError::Timeout);
        assert_eq!(classify(14, b"upstream request timeout"), GrpcError::Timeout);
        assert_eq!(wasm(4, b"too slow{via_upstream}"), GrpcError::Timeout);
        assert_eq!(wasm(1, b"Timeout expired{via_upstream}"), GrpcError::Timeout);
        assert_eq!(wasm(14, b"redis down{via_upstream}"), GrpcError::Unavailable("redis down".into()));
        assert_eq!(wasm(13, b"via_upstream"), GrpcError::Malformed);
        assert_eq!(wasm(13, b""), GrpcError::Malformed);
        assert_eq!(wasm(2, b"via_upstream"), GrpcError::Malformed);
        assert_eq!(wasm(u32::MAX, b"weird{via_upstream}"), GrpcError::Malformed);
        assert_eq!(
            wasm(13, b"boom{via_upstream}"),
            GrpcError::Status(GrpcStatus { code: 13, message: "boom".into() })
        );
        assert_eq!(
            classify(7, b"denied %7Bx%7D {y}"),
            GrpcError::Status(GrpcStatus { code: 7, message: "denied {x} {y}".into() })
        );
        assert_eq!(
            wasm(12, b"via_upstream"),
            GrpcError::Status(GrpcStatus { code: 12, message: String::new() })
        );
        assert_eq!(GrpcError::Timeout.code(), code::DEADLINE_EXCEEDED);
        assert_eq!(GrpcError::UnknownCluster.code(), code::UNAVAILABLE);
    }

    #[test]
    fn names_that_parse_as_protobuf_are_found() {
        // Envoy 1.40 aborted on `empty` (fixed32 field 12); `h1` is a varint field, `xx` too.
        for name in ["empty", "h1", "xx", "", "\u{8}a"] {
            assert!(may_parse_as_protobuf(name.as_bytes()), "{name:?}");
        }
        // Istio's names start with a wire type that does not exist (`o`: 7, `i`: 1 then an
        // end-group tag); the rest run past their end.
        for name in [
            "outbound|8081||ratelimit.default.svc.cluster.local",
            "inbound|8080||",
            "grpc",
            "ratelimit",
            "refused",
            "noendpoints",
            "x",
            "\u{1}a",
        ] {
            assert!(!may_parse_as_protobuf(name.as_bytes()), "{name:?}");
        }
        assert!(may_parse_as_protobuf(&grpc_service("empty")));
    }

    #[test]
    fn grpc_service_names_the_cluster() {
        assert_eq!(grpc_service("ab"), vec![0x0a, 4, 0x0a, 2, b'a', b'b']);
        let long = "c".repeat(200);
        let encoded = grpc_service(&long);
        assert_eq!(encoded.get(..6), Some(&[0x0a, 0xcb, 0x01, 0x0a, 0xc8, 0x01][..]));
        assert_eq!(encoded.len(), 206);
    }

    #[test]
    fn calls_own_their_text() {
        let cluster = String::from("rls");
        let mut call = GrpcCall::new(cluster.as_str(), "s", "m", b"x".to_vec());
        call.metadata.push(("k".into(), b"v".as_slice().into()));
        let owned = call.into_owned();
        drop(cluster);
        assert_eq!(owned.cluster, "rls");
        assert_eq!(owned.metadata, vec![(Cow::Borrowed("k"), Cow::Borrowed(&b"v"[..]))]);
        assert_eq!(owned.timeout, Duration::from_secs(1));
    }
}
