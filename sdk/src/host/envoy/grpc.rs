//! Unary gRPC natively. Envoy 1.40 gives dynamic modules no gRPC call, so the SDK makes one
//! the way Envoy's own gRPC client does: an HTTP/2 stream to the cluster (`POST
//! /<service>/<method>`, `content-type: application/grpc`, `te: trailers`, `grpc-timeout`, the
//! message in one length-prefixed frame), whose answer [`Decoder`] reads exactly as Envoy's
//! `Grpc::AsyncStreamImpl` and `AsyncRequestImpl` read it (`source/common/grpc/
//! async_client_impl.cc`): so a filter gets the same code, message and bytes it gets from
//! `proxy_grpc_call` on Wasm, checked case by case in the SDK fixture's Envoy tests.
//!
//! What differs from Envoy's client: the request carries `x-forwarded-for` (Envoy's async
//! stream adds its placeholder address to a module's streams, as to its HTTP callouts), and
//! the status message is the service's `grpc-message` without the response code details Envoy
//! appends on Wasm (the Wasm backend removes them, so both read the same).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;

use crate::grpc::code;

/// Largest value of `grpc-timeout` in one unit (the protocol allows eight digits).
const MAX_TIMEOUT_VALUE: u64 = 99_999_999;

/// `grpc-timeout` for `timeout` as Envoy writes it: milliseconds while they fit eight digits,
/// then seconds, minutes, hours (clipped).
pub(crate) fn grpc_timeout(timeout: Duration) -> String {
    let mut time = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut units = ['m', 'S', 'M', 'H'].into_iter();
    let mut unit = 'm';
    if time > MAX_TIMEOUT_VALUE {
        time /= 1000;
        units.next();
        unit = units.next().unwrap_or('S');
    }
    while time > MAX_TIMEOUT_VALUE {
        match units.next() {
            Some(next) => {
                time /= 60;
                unit = next;
            }
            None => time = MAX_TIMEOUT_VALUE,
        }
    }
    format!("{time}{unit}")
}

/// The request's headers, in the order Envoy's gRPC client sends them; a `-bin` metadata
/// value base64-encoded, as Envoy encodes it.
pub(crate) fn request_headers(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    timeout: Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":path".to_vec(), format!("/{service}/{method}").into_bytes()),
        (b":authority".to_vec(), cluster.as_bytes().to_vec()),
        (b"content-type".to_vec(), b"application/grpc".to_vec()),
        (b"te".to_vec(), b"trailers".to_vec()),
        (b"grpc-timeout".to_vec(), grpc_timeout(timeout).into_bytes()),
    ];
    for (name, value) in metadata {
        let value = if name.ends_with("-bin") {
            base64::engine::general_purpose::STANDARD.encode(value).into_bytes()
        } else {
            value.to_vec()
        };
        headers.push((name.as_bytes().to_vec(), value));
    }
    headers
}

/// `message` in one uncompressed gRPC frame; `None` for one longer than a frame can say.
pub(crate) fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// How a call ended, as Envoy's gRPC client hands it to a Wasm module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The response message: `bytes` holds it unless it is longer than the call's bound (then
    /// nothing), `len` is its length.
    Message { bytes: Vec<u8>, len: usize },
    /// Closed with a status other than `OK` and the `grpc-message` (raw).
    Close { code: u32, message: Vec<u8> },
}

impl Outcome {
    fn close(code: u32) -> Self {
        Outcome::Close { code, message: Vec::new() }
    }
}

/// The frame being read.
#[derive(Debug, Default)]
struct Frame {
    flags: u8,
    len: usize,
    /// Payload bytes still to come.
    remaining: usize,
    /// The payload, while it stays within the bound.
    bytes: Option<Vec<u8>>,
}

/// Reads one unary gRPC answer from the stream's events, as Envoy's gRPC client does.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Longest message kept (a longer one is only measured).
    max: usize,
    /// Bytes of a frame header not yet complete.
    header: Vec<u8>,
    frame: Option<Frame>,
    /// The last complete message (Envoy keeps the last of several): its bytes if kept, and
    /// its length.
    response: Option<(Vec<u8>, usize)>,
}

/// A header's value by name, as bytes.
fn find<'a>(headers: &'a [(&[u8], &[u8])], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// `grpc-status` as Envoy reads it: absent or empty `None`; not a number, or above 16, its
/// invalid code.
fn grpc_status(headers: &[(&[u8], &[u8])]) -> Option<u32> {
    let value = find(headers, b"grpc-status").filter(|v| !v.is_empty())?;
    let parsed = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
    Some(match parsed {
        Some(code) if code <= 16 => u32::try_from(code).unwrap_or(code::INVALID),
        _ => code::INVALID,
    })
}

/// gRPC's mapping of an HTTP status to a status code (`Grpc::Utility::httpToGrpcStatus`).
fn http_to_grpc(status: u64) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

impl Decoder {
    /// A decoder keeping messages of up to `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        Self { max, header: Vec::with_capacity(5), frame: None, response: None }
    }

    /// Response headers arrived: an error status or a trailers-only answer ends the call.
    pub(crate) fn on_headers(&mut self, headers: &[(&[u8], &[u8])], end_stream: bool) -> Option<Outcome> {
        let http_status = find(headers, b":status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if http_status != 200 {
            if end_stream && grpc_status(headers).is_some() {
                return Some(self.on_trailers(headers));
            }
            return Some(Outcome::close(http_to_grpc(http_status)));
        }
        end_stream.then(|| self.on_trailers(headers))
    }

    /// Body data arrived: frames are read; a frame Envoy cannot decode, or the end of the
    /// stream without trailers, ends the call.
    pub(crate) fn on_data(&mut self, mut data: &[u8], end_stream: bool) -> Option<Outcome> {
        let mut broken = false;
        while !data.is_empty() {
            let Some(frame) = &mut self.frame else {
                let take = (5 - self.header.len()).min(data.len());
                let (head, rest) = data.split_at(take);
                self.header.extend_from_slice(head);
                data = rest;
                if let [flags, a, b, c, d] = self.header[..] {
                    self.header.clear();
                    // Reserved flag bits: Envoy's decoder refuses the data.
                    if flags & !1 != 0 {
                        return Some(Outcome::close(code::INTERNAL));
                    }
                    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
                    let bytes = (len <= self.max).then(|| Vec::with_capacity(len.min(64 * 1024)));
                    self.frame = Some(Frame { flags, len, remaining: len, bytes });
                    self.finish_frame(&mut broken);
                }
                continue;
            };
            let take = frame.remaining.min(data.len());
            let (payload, rest) = data.split_at(take);
            if let Some(bytes) = &mut frame.bytes {
                bytes.extend_from_slice(payload);
            }
            frame.remaining -= take;
            data = rest;
            self.finish_frame(&mut broken);
        }
        if broken {
            // A compressed message: Envoy's client has no decompressor.
            return Some(Outcome::close(code::INTERNAL));
        }
        end_stream.then(|| Outcome::close(code::UNKNOWN))
    }

    /// Keeps the current frame as the response once it is whole.
    fn finish_frame(&mut self, broken: &mut bool) {
        if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            if let Some(frame) = self.frame.take() {
                if frame.len > 0 && frame.flags != 0 {
                    *broken = true;
                }
                self.response = Some((frame.bytes.unwrap_or_default(), frame.len));
            }
        }
    }

    /// Trailers arrived (or headers that end the stream): the call ends with their status, or
    /// with the message when it is `OK`.
    pub(crate) fn on_trailers(&mut self, trailers: &[(&[u8], &[u8])]) -> Outcome {
        let status = grpc_status(trailers).unwrap_or(code::UNKNOWN);
        if status != code::OK {
            let message = find(trailers, b"grpc-message").unwrap_or_default().to_vec();
            return Outcome::Close { code: status, message };
        }
        match self.response.take() {
            Some((bytes, len)) => Outcome::Message { bytes, len },
            // `OK` without a message: Envoy's unary client fails it.
            None => Outcome::close(code::INTERNAL),
        }
    }

    /// The stream was reset after the answer started (Envoy's router answers a reset before
    /// it with its own `UNAVAILABLE`).
    pub(crate) fn on_reset(&mut self) -> Outcome {
        Outcome::close(code::INTERNAL)
    }
}

/// A call in flight, keyed by who owns its stream (a filter or a configuration, as an
/// address) and Envoy's stream id.
type Key = (usize, u64);

/// What the SDK knows of a call in flight.
struct Call {
    token: u32,
    decoder: Decoder,
}

thread_local! {
    /// This thread's calls in flight (Envoy delivers a stream's events on the thread that
    /// started it).
    static CALLS: RefCell<HashMap<Key, Call>> = RefCell::new(HashMap::new());
    /// The owner starting a stream right now, and whether Envoy answered it before the start
    /// returned.
    static STARTING: Cell<Option<usize>> = const { Cell::new(None) };
    static ANSWERED_INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `start` (which starts a stream for `owner`) and says whether Envoy already ended the
/// stream inside it (a cluster without a healthy endpoint answers at once): Envoy's Wasm gRPC
/// call fails then, and so does the native one.
pub(crate) fn starting<T>(owner: usize, start: impl FnOnce() -> T) -> (T, bool) {
    let previous = STARTING.with(|s| s.replace(Some(owner)));
    ANSWERED_INLINE.with(|a| a.set(false));
    let result = start();
    STARTING.with(|s| s.set(previous));
    (result, ANSWERED_INLINE.with(|a| a.replace(false)))
}

/// Keeps a started call.
pub(crate) fn track(owner: usize, stream: u64, token: u32, max: usize) {
    CALLS.with(|c| c.borrow_mut().insert((owner, stream), Call { token, decoder: Decoder::new(max) }));
}

/// Forgets every call of `owner` (a filter or configuration Envoy destroys).
pub(crate) fn forget(owner: usize) {
    CALLS.with(|c| c.borrow_mut().retain(|(o, _), _| *o != owner));
}

/// An event of one call's stream.
pub(crate) enum Event<'a> {
    Headers(&'a [(&'a [u8], &'a [u8])], bool),
    Data(&'a [u8], bool),
    Trailers(&'a [(&'a [u8], &'a [u8])]),
    /// The stream completed; anything that ends here without an outcome had no answer.
    Complete,
    Reset,
}

/// Feeds `event` to the call on `owner`'s stream; when it ends the call, the call is forgotten
/// and its token and outcome returned, for the SDK to deliver. Events of streams that are not
/// calls (or have ended) are ignored, except while one is being started.
pub(crate) fn on_event(owner: usize, stream: u64, event: Event<'_>) -> Option<(u32, Outcome)> {
    let outcome = CALLS.with(|c| {
        let mut calls = c.borrow_mut();
        let Some(call) = calls.get_mut(&(owner, stream)) else {
            if STARTING.with(Cell::get) == Some(owner) {
                ANSWERED_INLINE.with(|a| a.set(true));
            }
            return None;
        };
        let outcome = match event {
            Event::Headers(headers, end_stream) => call.decoder.on_headers(headers, end_stream),
            Event::Data(data, end_stream) => call.decoder.on_data(data, end_stream),
            Event::Trailers(trailers) => Some(call.decoder.on_trailers(trailers)),
            Event::Complete => Some(Outcome::close(code::UNKNOWN)),
            Event::Reset => Some(call.decoder.on_reset()),
        };
        outcome.map(|outcome| (call.token, outcome))
    })?;
    CALLS.with(|c| c.borrow_mut().remove(&(owner, stream)));
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<'a>(headers: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
    }

    const OK_HEADERS: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/grpc")];

    /// Runs headers, data chunks and trailers through a decoder, as the answers the probe
    /// filter got from Envoy 1.40 for the same upstream answers.
    fn decode(chunks: &[&[u8]], trailers: Option<&[(&str, &str)]>) -> Outcome {
        let mut d = Decoder::new(1024);
        assert_eq!(d.on_headers(&pairs(OK_HEADERS), false), None);
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len() && trailers.is_none();
            if let Some(outcome) = d.on_data(chunk, last) {
                return outcome;
            }
        }
        d.on_trailers(&pairs(trailers.unwrap_or_default()))
    }

    fn message(m: &[u8]) -> Outcome {
        Outcome::Message { bytes: m.to_vec(), len: m.len() }
    }

    fn close(code: u32, message: &str) -> Outcome {
        Outcome::Close { code, message: message.as_bytes().to_vec() }
    }

    #[test]
    fn answers_decode_as_envoy_decodes_them() {
        let ok: &[(&str, &str)] = &[("grpc-status", "0")];
        let good = frame(b"hello-answer").unwrap();
        assert_eq!(decode(&[&good], Some(ok)), message(b"hello-answer"));
        // Split anywhere, even inside the frame header.
        assert_eq!(decode(&[&[0, 0, 0, 0], &[3, b'a'], b"bc"], Some(ok)), message(b"abc"));
        // Several messages: the last one.
        let two = [frame(b"one").unwrap(), frame(b"two").unwrap()].concat();
        assert_eq!(decode(&[&two], Some(ok)), message(b"two"));
        assert_eq!(decode(&[&frame(b"").unwrap()], Some(ok)), message(b""));
        // Reserved flags, a compressed message: INTERNAL.
        assert_eq!(decode(&[&[2, 0, 0, 0, 1, b'x']], Some(ok)), close(13, ""));
        assert_eq!(decode(&[&[1, 0, 0, 0, 1, b'x']], Some(ok)), close(13, ""));
        // A frame cut short then OK, or OK without a message: INTERNAL.
        assert_eq!(decode(&[&[0, 0, 0, 0, 9, b'x']], Some(ok)), close(13, ""));
        assert_eq!(decode(&[], Some(ok)), close(13, ""));
        // No trailers: UNKNOWN.
        assert_eq!(decode(&[&good], None), close(2, ""));
        // A status: its code and raw message.
        let denied: &[(&str, &str)] = &[("grpc-status", "7"), ("grpc-message", "denied %25")];
        assert_eq!(decode(&[], Some(denied)), close(7, "denied %25"));
        assert_eq!(decode(&[], Some(&[("grpc-status", "99")])), close(u32::MAX, ""));
        assert_eq!(decode(&[&good], Some(&[("grpc-status", "abc")])), close(u32::MAX, ""));
        assert_eq!(decode(&[], Some(&[])), close(2, ""));
    }

    #[test]
    fn header_only_answers_decode_as_envoy_decodes_them() {
        let mut d = Decoder::new(8);
        let only = pairs(&[(":status", "200"), ("grpc-status", "7"), ("grpc-message", "only")]);
        assert_eq!(d.on_headers(&only, true), Some(close(7, "only")));
        // HTTP errors map to gRPC codes; a status in them counts when they end the stream.
        for (status, code) in [("404", 12), ("503", 14), ("400", 13), ("401", 16), ("403", 7), ("500", 2)] {
            let mut d = Decoder::new(8);
            assert_eq!(
                d.on_headers(&pairs(&[(":status", status)]), false),
                Some(close(code, "")),
                "{status}"
            );
        }
        let mut d = Decoder::new(8);
        let timeout = pairs(&[(":status", "504"), ("grpc-status", "14"), ("grpc-message", "t")]);
        assert_eq!(d.on_headers(&timeout, true), Some(close(14, "t")));
        // 200 ending without a status: UNKNOWN.
        let mut d = Decoder::new(8);
        assert_eq!(d.on_headers(&pairs(&[(":status", "200")]), true), Some(close(2, "")));
        assert_eq!(Decoder::new(8).on_reset(), close(13, ""));
    }

    #[test]
    fn a_message_over_the_bound_is_measured_not_kept() {
        let mut d = Decoder::new(4);
        let big = frame(&[b'a'; 100]).unwrap();
        assert_eq!(d.on_data(&big, false), None);
        assert_eq!(
            d.on_trailers(&pairs(&[("grpc-status", "0")])),
            Outcome::Message { bytes: Vec::new(), len: 100 }
        );
    }

    #[test]
    fn requests_are_framed_and_headed_as_envoy_sends_them() {
        assert_eq!(frame(b"hi"), Some(vec![0, 0, 0, 0, 2, b'h', b'i']));
        assert_eq!(grpc_timeout(Duration::from_millis(1000)), "1000m");
        assert_eq!(grpc_timeout(Duration::from_millis(99_999_999)), "99999999m");
        assert_eq!(grpc_timeout(Duration::from_millis(100_000_000)), "100000S");
        assert_eq!(grpc_timeout(Duration::from_millis(u64::from(u32::MAX))), "4294967S");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX / 2000)), "99999999H");
        let headers = request_headers(
            "rls",
            "a.B",
            "C",
            &[("x-a", b"1"), ("x-bin-bin", b"abc")],
            Duration::from_secs(1),
        );
        let text: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let want = [
            (":method", "POST"),
            (":path", "/a.B/C"),
            (":authority", "rls"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "1000m"),
            ("x-a", "1"),
            ("x-bin-bin", "YWJj"),
        ];
        let want: Vec<(String, String)> =
            want.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        assert_eq!(text, want);
    }

    #[test]
    fn events_reach_the_call_of_their_stream_once() {
        track(1, 7, 42, 64);
        let ok = pairs(OK_HEADERS);
        assert_eq!(on_event(1, 7, Event::Headers(&ok, false)), None);
        assert_eq!(on_event(1, 7, Event::Data(&frame(b"x").unwrap(), false)), None);
        let trailers = pairs(&[("grpc-status", "0")]);
        assert_eq!(on_event(1, 7, Event::Trailers(&trailers)), Some((42, message(b"x"))));
        // Ended: the stream's completion is nobody's.
        assert_eq!(on_event(1, 7, Event::Complete), None);
        // Another owner's stream of the same id is not this call.
        track(2, 7, 43, 64);
        assert_eq!(on_event(1, 7, Event::Reset), None);
        forget(2);
        assert_eq!(on_event(2, 7, Event::Reset), None);
        // Answered while starting: noticed, not delivered.
        let ((), inline) = starting(3, || {
            assert_eq!(on_event(3, 1, Event::Headers(&ok, true)), None);
        });
        assert!(inline);
        let ((), inline) = starting(3, || {});
        assert!(!inline);
    }
}
