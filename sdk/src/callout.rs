//! HTTP callouts to an Envoy cluster.
//!
//! A filter describes the call with [`Callout`] and hands it to [`crate::Stream::dispatch`] (or,
//! for background work, [`crate::Root::dispatch`]); the
//! SDK keeps the token, pauses nothing by itself (the filter returns [`crate::Flow::Pause`]), and
//! when Envoy answers it calls [`crate::HttpFilter::on_callout`] with a [`CalloutResult`]. The
//! filter then says what happens next with a [`crate::Flow`]: continue (the SDK resumes the
//! request or response), reply, or pause again for another callout.
//!
//! How Envoy reports failures: the callout runs through Envoy's async HTTP client and router, so
//! a timeout arrives as the router's own answer (`504`, body `upstream request timeout`), a
//! connection failure as a `503`, and a reset as an answer with no headers at all. The SDK
//! reports [`CalloutError::Timeout`] for the router's timeout answer, [`CalloutError::Failed`]
//! for an empty one, and everything else as a response for the filter to judge. Recognising the
//! timeout by its answer costs nothing on the common path (only a 504 with a body of that length
//! is read), where timing the callout would cost two clock reads per callout.

use std::borrow::Cow;
use std::time::Duration;

use proxy_wasm::types::{BufferType, MapType, Status};

use crate::host::Host;
use crate::request::HeaderSnapshot;

/// Default for [`Callout::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The body of the answer Envoy's router gives a callout whose timeout passed (with status 504).
pub const ENVOY_TIMEOUT_BODY: &[u8] = b"upstream request timeout";

/// An HTTP request to send to an Envoy cluster. Its text borrows where it can (`'a`): a check
/// built on every request from the configuration and the client's headers need not copy them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout<'a> {
    /// Envoy cluster name (in Istio, `outbound|PORT||HOST`).
    pub cluster: Cow<'a, str>,
    /// Request method.
    pub method: Cow<'a, str>,
    /// Request path, query included.
    pub path: Cow<'a, str>,
    /// `:authority` to send; Envoy requires one.
    pub authority: Cow<'a, str>,
    /// Other request headers.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Envoy gives up after this long and answers the callout itself.
    pub timeout: Duration,
    /// Response body bytes read back; the rest is ignored.
    pub max_response_bytes: usize,
    /// Read the host clock when the callout is sent and when it answers, for
    /// [`crate::Stream::callout_elapsed`]: two host calls per callout, so off unless asked for.
    pub timed: bool,
}

impl<'a> Callout<'a> {
    /// A `GET /` to `cluster` with `authority`, a 1 s timeout and no extra headers.
    pub fn get(
        cluster: impl Into<Cow<'a, str>>,
        authority: impl Into<Cow<'a, str>>,
        path: impl Into<Cow<'a, str>>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            method: Cow::Borrowed("GET"),
            path: path.into(),
            authority: authority.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(1),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timed: false,
        }
    }

    /// The same callout owning all its text, to keep past what it borrowed from.
    pub fn into_owned(self) -> Callout<'static> {
        let own = |c: Cow<'a, str>| Cow::Owned(c.into_owned());
        Callout {
            cluster: own(self.cluster),
            method: own(self.method),
            path: own(self.path),
            authority: own(self.authority),
            headers: self.headers.into_iter().map(|(k, v)| (own(k), own(v))).collect(),
            body: self.body,
            timeout: self.timeout,
            max_response_bytes: self.max_response_bytes,
            timed: self.timed,
        }
    }
}

/// A callout's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutResponse {
    /// The `:status`, or 0 when the answer had none.
    pub status: u16,
    /// Response headers, pseudo-headers included, as the host gave them (one buffer, no copy
    /// per header).
    pub headers: HeaderSnapshot,
    /// Response body, up to the callout's `max_response_bytes`.
    pub body: Vec<u8>,
    /// True when the body was longer than `max_response_bytes` and was cut.
    pub truncated: bool,
}

impl CalloutResponse {
    /// The first value of header `name` (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// Why a callout has no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutError {
    /// Envoy refused to send it (unknown cluster, missing headers): the callout never left.
    Dispatch(Status),
    /// No answer before the timeout.
    Timeout,
    /// The connection failed or was reset.
    Failed,
}

/// What [`crate::HttpFilter::on_callout`] and [`crate::Plugin::on_callout`] receive.
pub type CalloutResult = Result<CalloutResponse, CalloutError>;

/// Names a callout sent with [`crate::Root::dispatch`]; [`crate::Plugin::on_callout`]
/// receives it with the answer, so a plugin with several callouts in flight tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CalloutId(pub(crate) u32);

pub(crate) struct Pending {
    pub token: u32,
    /// When the callout was sent, for [`Callout::timed`] callouts only.
    pub started: Option<std::time::SystemTime>,
    pub max_response_bytes: usize,
    /// How long the callout took, set by [`Pending::read`] for [`Callout::timed`] callouts.
    pub elapsed: std::cell::Cell<Option<Duration>>,
}

impl Pending {
    /// Sends `callout` through `host` and remembers what its answer needs.
    pub(crate) fn send(host: &dyn Host, callout: &Callout<'_>) -> Result<Self, Status> {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(callout.headers.len() + 3);
        headers.push((":method", &callout.method));
        headers.push((":path", &callout.path));
        headers.push((":authority", &callout.authority));
        headers.extend(callout.headers.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        let body = if callout.body.is_empty() { None } else { Some(callout.body.as_slice()) };
        let token = host.dispatch_http_call(&callout.cluster, &headers, body, callout.timeout)?;
        Ok(Self {
            token,
            started: if callout.timed { host.current_time().ok() } else { None },
            max_response_bytes: callout.max_response_bytes,
            elapsed: std::cell::Cell::new(None),
        })
    }

    /// Reads the answer Envoy is delivering for this callout.
    pub(crate) fn read(&self, host: &dyn Host, num_headers: usize, body_size: usize) -> CalloutResult {
        if let Some(start) = self.started {
            let elapsed = host.current_time().ok().and_then(|now| now.duration_since(start).ok());
            self.elapsed.set(Some(elapsed.unwrap_or_default()));
        }
        if num_headers == 0 {
            return Err(CalloutError::Failed);
        }
        let raw = host.header_pairs(MapType::HttpCallResponseHeaders).map_err(|_| CalloutError::Failed)?;
        let headers = HeaderSnapshot::from_serialized(raw);
        let status = headers.get(":status").and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
        let want = body_size.min(self.max_response_bytes);
        // Only a 504 whose body has the length of the router's timeout answer is read in full, to
        // tell Envoy's timeout from an auth service's own 504.
        let maybe_timeout = status == 504 && body_size == ENVOY_TIMEOUT_BODY.len();
        let read = if maybe_timeout { body_size } else { want };
        let mut body = if read == 0 {
            Vec::new()
        } else {
            host.buffer(BufferType::HttpCallResponseBody, 0, read).map_err(|_| CalloutError::Failed)?
        };
        if maybe_timeout && body == ENVOY_TIMEOUT_BODY {
            return Err(CalloutError::Timeout);
        }
        body.truncate(want);
        Ok(CalloutResponse { status, headers, body, truncated: body_size > want })
    }
}
