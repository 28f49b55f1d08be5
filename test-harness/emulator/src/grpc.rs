//! gRPC calls as Envoy 1.40's Wasm host makes them (`proxy_grpc_call`): what a test answers
//! for the service ([`GrpcResponse`], the HTTP/2 answer frame by frame), and what Envoy's gRPC
//! client makes of it for the module ([`Outcome`]): the message for `proxy_on_grpc_receive`,
//! or the code and message for `proxy_on_grpc_close` and `proxy_get_status`. The model follows
//! `Grpc::AsyncStreamImpl` and `AsyncRequestImpl` (`source/common/grpc/async_client_impl.cc`)
//! and was checked answer by answer against Envoy with the probe filter (`tests/probe.rs`,
//! `grpc_like_envoy_side_by_side`).

use std::time::Duration;

/// The service's answer to a gRPC call, as HTTP/2 frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcResponse {
    /// `:status`.
    pub status: u16,
    /// Response headers (`:status` aside).
    pub headers: Vec<(String, String)>,
    /// Data frames, in order.
    pub data: Vec<Vec<u8>>,
    /// Trailers; `None`: the stream ends with the last data frame (or the headers).
    pub trailers: Option<Vec<(String, String)>>,
}

/// The 5-byte gRPC frame header (not compressed, big-endian length) followed by `message`.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

impl GrpcResponse {
    /// A successful answer: `200`, `content-type: application/grpc`, `message` in one frame,
    /// trailers `grpc-status: 0`.
    pub fn message(message: &[u8]) -> Self {
        GrpcResponse {
            status: 200,
            headers: vec![("content-type".to_string(), "application/grpc".to_string())],
            data: vec![grpc_frame(message)],
            trailers: Some(vec![("grpc-status".to_string(), "0".to_string())]),
        }
    }

    /// An error status in trailers after the headers (`grpc-message` as given: raw,
    /// percent-encoded when it needs to be).
    pub fn status(code: u32, message: &str) -> Self {
        let mut trailers = vec![("grpc-status".to_string(), code.to_string())];
        if !message.is_empty() {
            trailers.push(("grpc-message".to_string(), message.to_string()));
        }
        GrpcResponse { data: Vec::new(), trailers: Some(trailers), ..GrpcResponse::message(b"") }
    }

    /// A trailers-only answer: the status in the headers, which end the stream.
    pub fn trailers_only(code: u32, message: &str) -> Self {
        let mut response = GrpcResponse::status(code, message);
        response.headers.extend(response.trailers.take().unwrap_or_default());
        response
    }

    /// A plain HTTP answer (not gRPC): `status` and `body`, no trailers.
    pub fn http(status: u16, body: &[u8]) -> Self {
        GrpcResponse {
            status,
            headers: vec![("content-type".to_string(), "text/plain".to_string())],
            data: if body.is_empty() { Vec::new() } else { vec![body.to_vec()] },
            trailers: None,
        }
    }

    /// Replaces the data frames (raw: frame them with [`grpc_frame`], or not).
    pub fn data(mut self, data: Vec<Vec<u8>>) -> Self {
        self.data = data;
        self
    }

    /// Replaces the trailers (`None`: the stream ends with the data).
    pub fn trailers(mut self, trailers: Option<&[(&str, &str)]>) -> Self {
        self.trailers =
            trailers.map(|t| t.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect());
        self
    }
}

/// What Envoy hands the module when a call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `proxy_on_grpc_receive` with this message.
    Message(Vec<u8>),
    /// `proxy_on_grpc_close` with this code, `proxy_get_status` answering this message.
    Close(u32, Vec<u8>),
}

/// Envoy's answers that do not come from the service: its router's local replies to the
/// call's HTTP stream, as gRPC (`UNAVAILABLE` and a message), and their response code details.
pub(crate) mod router {
    /// The call's timeout passed.
    pub const TIMEOUT: (&str, &str) = ("upstream request timeout", "response_timeout");
    /// The connection to the service was refused.
    pub const REFUSED: (&str, &str) = (
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
        "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
    );
    /// The service reset the stream before its headers.
    pub const RESET: (&str, &str) = (
        "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
        "upstream_reset_before_response_started{remote_reset}",
    );
    /// `GrpcService` naming a cluster Envoy does not have: the client fails the call at once.
    pub const NO_CLUSTER: &str = "Cluster not available";
}

/// Envoy appends the answer's response code details to a close's message
/// (`enhancedGrpcMessage`), or gives the details alone for an empty message.
fn enhanced(message: &[u8], details: &str) -> Vec<u8> {
    if message.is_empty() {
        return details.as_bytes().to_vec();
    }
    if details.is_empty() {
        return message.to_vec();
    }
    [message, b"{", details.as_bytes(), b"}"].concat()
}

/// The close of one of Envoy's router replies (`router::TIMEOUT`, ...).
pub(crate) fn router_close((message, details): (&str, &str)) -> Outcome {
    Outcome::Close(14, enhanced(message.as_bytes(), details))
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// `grpc-status` as Envoy reads it: absent or empty `None`; not a number, or above 16, -1.
fn grpc_status(pairs: &[(String, String)]) -> Option<u32> {
    let value = find(pairs, "grpc-status").filter(|v| !v.is_empty())?;
    Some(match value.parse::<u64>() {
        Ok(code) if code <= 16 => code as u32,
        _ => u32::MAX,
    })
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`: gRPC's code for an HTTP status.
pub(crate) fn http_to_grpc_status(status: u64) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// What Envoy 1.40 hands the module for the service's `response` (response code details
/// `via_upstream`).
pub(crate) fn outcome(response: &GrpcResponse) -> Outcome {
    const DETAILS: &str = "via_upstream";
    let close = |code: u32, message: &[u8]| Outcome::Close(code, enhanced(message, DETAILS));
    // Trailers (or headers ending the stream): their status, or the message when it is OK.
    let on_trailers = |trailers: &[(String, String)], message: Option<Vec<u8>>| {
        let status = grpc_status(trailers).unwrap_or(2);
        if status != 0 {
            return close(status, find(trailers, "grpc-message").unwrap_or_default().as_bytes());
        }
        match message {
            Some(message) => Outcome::Message(message),
            // OK without a message: AsyncRequestImpl fails it, its message not enhanced.
            None => Outcome::Close(13, Vec::new()),
        }
    };
    let headers_end = response.data.is_empty() && response.trailers.is_none();
    if response.status != 200 {
        if headers_end && grpc_status(&response.headers).is_some() {
            return on_trailers(&response.headers, None);
        }
        return close(http_to_grpc_status(u64::from(response.status)), b"");
    }
    if headers_end {
        return on_trailers(&response.headers, None);
    }
    // Each data frame is decoded as it arrives; a frame split over data frames waits.
    let mut pending = Vec::new();
    let mut message = None;
    for chunk in &response.data {
        pending.extend_from_slice(chunk);
        while let Some(&flags) = pending.first() {
            if flags & !1 != 0 {
                return close(13, b"");
            }
            let Some(&[a, b, c, d]) = pending.get(1..5) else { break };
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            let Some(payload) = pending.get(5..5 + len) else { break };
            if len > 0 && flags != 0 {
                return close(13, b"");
            }
            message = Some(payload.to_vec());
            pending.drain(..5 + len);
        }
    }
    match &response.trailers {
        Some(trailers) => on_trailers(trailers, message),
        // The stream ended with data: UNKNOWN.
        None => close(2, b""),
    }
}

/// What the `upstream` argument of `proxy_grpc_call` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// Not a protobuf message: a cluster name.
    Cluster(String),
    /// A `GrpcService` naming this Envoy gRPC cluster.
    Service(String),
    /// A protobuf message naming no cluster: Envoy 1.40 aborts ("panic: unset oneof").
    Unusable,
}

/// A varint and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// The top-level fields of a protobuf message as (field, wire type, length-delimited bytes);
/// `None` when the bytes do not parse. Groups are not modelled: a message with one reads as
/// not parsing.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (tag, rest) = varint(bytes)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return None;
        }
        let (value, rest): (&[u8], &[u8]) = match wire {
            0 => {
                let (_, after) = varint(rest)?;
                (&[], after)
            }
            1 => (&[], rest.get(8..)?),
            2 => {
                let (len, after) = varint(rest)?;
                let len = usize::try_from(len).ok()?;
                (after.get(..len)?, after.get(len..)?)
            }
            5 => (&[], rest.get(4..)?),
            _ => return None,
        };
        out.push((field, wire, value));
        bytes = rest;
    }
    Some(out)
}

/// How Envoy 1.40 reads `proxy_grpc_call`'s `upstream`: as a serialized `GrpcService` when it
/// parses as one (`envoy_grpc` is field 1, its `cluster_name` field 1), else as a cluster name.
pub(crate) fn upstream(bytes: &[u8]) -> Upstream {
    let Some(top) = fields(bytes) else {
        return Upstream::Cluster(String::from_utf8_lossy(bytes).into_owned());
    };
    let cluster = top
        .iter()
        .filter(|(field, wire, _)| *field == 1 && *wire == 2)
        .filter_map(|(_, _, envoy_grpc)| fields(envoy_grpc))
        .flat_map(|inner| inner.into_iter().filter(|(field, wire, _)| *field == 1 && *wire == 2))
        .filter_map(|(_, _, name)| std::str::from_utf8(name).ok().map(str::to_string))
        .next_back();
    match cluster {
        Some(cluster) => Upstream::Service(cluster),
        None => Upstream::Unusable,
    }
}

/// Envoy's timeout for a call: none for 0 ms (it sends `grpc-timeout: 0m` and sets no timer).
pub(crate) fn timeout(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(code: u32, message: &str) -> Outcome {
        Outcome::Close(code, message.as_bytes().to_vec())
    }

    #[test]
    fn answers_reach_the_module_as_envoy_hands_them_on() {
        // Each pinned to what the probe filter got from Envoy 1.40 for the same answer.
        let ok: &[(&str, &str)] = &[("grpc-status", "0")];
        assert_eq!(outcome(&GrpcResponse::message(b"hi")), Outcome::Message(b"hi".to_vec()));
        assert_eq!(outcome(&GrpcResponse::status(7, "denied %25")), close(7, "denied %25{via_upstream}"));
        assert_eq!(outcome(&GrpcResponse::status(7, "")), close(7, "via_upstream"));
        assert_eq!(outcome(&GrpcResponse::trailers_only(7, "only")), close(7, "only{via_upstream}"));
        let bad_flags = GrpcResponse::message(b"").data(vec![vec![2, 0, 0, 0, 1, b'x']]);
        assert_eq!(outcome(&bad_flags), close(13, "via_upstream"));
        let compressed = GrpcResponse::message(b"").data(vec![vec![1, 0, 0, 0, 1, b'x']]);
        assert_eq!(outcome(&compressed), close(13, "via_upstream"));
        let truncated = GrpcResponse::message(b"").data(vec![vec![0, 0, 0, 0, 9, b'x']]);
        assert_eq!(outcome(&truncated), close(13, ""));
        assert_eq!(outcome(&GrpcResponse::status(0, "")), close(13, ""));
        assert_eq!(outcome(&GrpcResponse::message(b"m").trailers(None)), close(2, "via_upstream"));
        assert_eq!(outcome(&GrpcResponse::http(404, b"no")), close(12, "via_upstream"));
        assert_eq!(outcome(&GrpcResponse::http(503, b"busy")), close(14, "via_upstream"));
        assert_eq!(outcome(&GrpcResponse::http(200, b"")), close(2, "via_upstream"));
        assert_eq!(outcome(&GrpcResponse::status(99, "weird")), close(u32::MAX, "weird{via_upstream}"));
        let nan = GrpcResponse::message(b"x").trailers(Some(&[("grpc-status", "abc")]));
        assert_eq!(outcome(&nan), close(u32::MAX, "via_upstream"));
        let two = GrpcResponse::message(b"").data(vec![grpc_frame(b"one"), grpc_frame(b"two")]);
        assert_eq!(outcome(&two), Outcome::Message(b"two".to_vec()));
        let split = GrpcResponse::message(b"").data(vec![vec![0, 0, 0, 0], vec![3, b'a'], vec![b'b', b'c']]);
        assert_eq!(outcome(&split.trailers(Some(ok))), Outcome::Message(b"abc".to_vec()));
        assert_eq!(router_close(router::TIMEOUT), close(14, "upstream request timeout{response_timeout}"));
    }

    #[test]
    fn upstream_reads_as_envoy_reads_it() {
        assert_eq!(upstream(b"grpc"), Upstream::Cluster("grpc".into()));
        assert_eq!(
            upstream(b"outbound|8081||rls.default"),
            Upstream::Cluster("outbound|8081||rls.default".into())
        );
        assert_eq!(upstream(&[0x0a, 6, 0x0a, 4, b'g', b'r', b'p', b'c']), Upstream::Service("grpc".into()));
        // `empty` is a fixed32 field 12 with four bytes: a message naming no cluster.
        assert_eq!(upstream(b"empty"), Upstream::Unusable);
        assert_eq!(timeout(0), None);
        assert_eq!(timeout(300), Some(Duration::from_millis(300)));
    }
}
