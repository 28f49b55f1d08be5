//! A scripted gRPC upstream: cleartext HTTP/2 on 127.0.0.1 whose answer per path
//! (`/<service>/<method>`) the test sets frame by frame, so a test can send what no well-behaved
//! gRPC server sends (a broken frame, an answer without `grpc-status`, a reset after the
//! headers) as well as ordinary answers and error statuses. Every request is recorded.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::upstream::{Received, Scripts, Server};

/// The 5-byte gRPC frame header (not compressed, big-endian length) followed by `message`.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// An answer, as HTTP/2 frames: headers, data chunks, trailers (or a reset in their place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcReply {
    /// `:status`.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Data frames, in order.
    pub data: Vec<Vec<u8>>,
    /// Trailers; `None` ends the stream with the last data frame (or the headers).
    pub trailers: Option<Vec<(String, String)>>,
    /// Reset the stream (RST_STREAM) after the headers and data instead of ending it.
    pub reset: bool,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl GrpcReply {
    /// A successful unary answer: `200`, `content-type: application/grpc`, `message` in one
    /// frame, and trailers `grpc-status: 0`.
    pub fn message(message: &[u8]) -> Self {
        GrpcReply {
            status: 200,
            headers: vec![("content-type".to_string(), "application/grpc".to_string())],
            data: vec![grpc_frame(message)],
            trailers: Some(vec![("grpc-status".to_string(), "0".to_string())]),
            reset: false,
            delay: Duration::ZERO,
        }
    }

    /// An error status in trailers after the headers, no message: what a gRPC server sends
    /// when its handler fails. `message` goes in `grpc-message`, percent-encoded as the
    /// protocol wants.
    pub fn status(code: u32, message: &str) -> Self {
        let mut trailers = vec![("grpc-status".to_string(), code.to_string())];
        if !message.is_empty() {
            trailers.push(("grpc-message".to_string(), percent_encode(message)));
        }
        GrpcReply { data: Vec::new(), trailers: Some(trailers), ..GrpcReply::message(b"") }
    }

    /// A trailers-only answer: `grpc-status` (and `grpc-message`) in the headers, which end the
    /// stream.
    pub fn trailers_only(code: u32, message: &str) -> Self {
        let mut reply = GrpcReply::status(code, message);
        reply.headers.extend(reply.trailers.take().unwrap_or_default());
        reply
    }

    /// A plain HTTP answer (not gRPC): `status`, and `body` as one data frame, no trailers.
    pub fn http(status: u16, body: &[u8]) -> Self {
        GrpcReply {
            status,
            headers: vec![("content-type".to_string(), "text/plain".to_string())],
            data: if body.is_empty() { Vec::new() } else { vec![body.to_vec()] },
            trailers: None,
            reset: false,
            delay: Duration::ZERO,
        }
    }

    /// Replaces the data frames (raw bytes: frame them with [`grpc_frame`], or not).
    pub fn data(mut self, data: Vec<Vec<u8>>) -> Self {
        self.data = data;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the trailers (`None`: the stream ends with the data).
    pub fn trailers(mut self, trailers: Option<&[(&str, &str)]>) -> Self {
        self.trailers =
            trailers.map(|t| t.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect());
        self
    }

    /// Resets the stream after the headers and data instead of ending it.
    pub fn reset_after_data(mut self) -> Self {
        self.reset = true;
        self.trailers = None;
        self
    }

    /// Waits `delay` before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// `grpc-message` encoding: printable ASCII but `%` as is, every other byte `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The frames of an answer, handed to hyper one by one.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    reset: bool,
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.frames.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            // A body error makes hyper reset the stream (RST_STREAM INTERNAL_ERROR).
            None if self.reset => {
                self.reset = false;
                Poll::Ready(Some(Err(std::io::Error::other("scripted reset"))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.reset
    }
}

/// A gRPC upstream whose answer per path the test sets; unknown paths get a trailers-only
/// `UNIMPLEMENTED` (12), as a gRPC server answers a method it lacks. Stops on drop.
pub struct GrpcUpstream {
    server: Server,
    script: Scripts<GrpcReply>,
}

impl GrpcUpstream {
    /// Starts it on 127.0.0.1 with an ephemeral port and no scripted paths.
    pub fn start() -> anyhow::Result<GrpcUpstream> {
        let script = Scripts::new();
        let shared = script.clone();
        let server = Server::listen("gatewasm-grpc-upstream", move |stream| {
            let script = shared.clone();
            async move {
                let service = service_fn(move |req| answer(script.clone(), req));
                // A client that goes away is not the upstream's business.
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })?;
        Ok(GrpcUpstream { server, script })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Sets (or replaces) the answer for a path (`/<service>/<method>`).
    pub fn set(&self, path: &str, reply: GrpcReply) {
        self.script.set(path, reply);
    }

    /// Every request received so far, in order (the body as sent: framed).
    pub fn received(&self) -> Vec<Received> {
        self.script.received()
    }
}

async fn answer(
    script: Scripts<GrpcReply>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Frames>, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let reply = script
        .answer(&path, Received { method, path: path.clone(), headers, body })
        .unwrap_or_else(|| GrpcReply::trailers_only(12, "no script for this method"));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut frames: VecDeque<Frame<Bytes>> =
        reply.data.into_iter().map(|d| Frame::data(Bytes::from(d))).collect();
    if let Some(trailers) = reply.trailers {
        frames.push_back(Frame::trailers(header_map(&trailers)));
    }
    let mut response = hyper::Response::new(Frames { frames, reset: reply.reset });
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = header_map(&reply.headers);
    Ok(response)
}

fn header_map(pairs: &[(String, String)]) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_encodes_as_grpc_does() {
        assert_eq!(grpc_frame(b"ab"), vec![0, 0, 0, 0, 2, b'a', b'b']);
        assert_eq!(percent_encode("a b%\u{e9}"), "a b%25%C3%A9");
        let only = GrpcReply::trailers_only(7, "no");
        assert!(only.trailers.is_none() && only.data.is_empty());
        assert!(only.headers.contains(&("grpc-status".to_string(), "7".to_string())));
    }
}
