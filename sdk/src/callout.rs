//! HTTP callouts to an Envoy cluster.
//!
//! A filter describes the call with [`Callout`] and hands it to [`crate::Stream::dispatch`]; the
//! SDK keeps the token, pauses nothing by itself (the filter returns [`crate::Flow::Pause`]), and
//! when Envoy answers it calls [`crate::HttpFilter::on_callout`] with a [`CalloutResult`]. The
//! filter then says what happens next with a [`crate::Flow`]: continue (the SDK resumes the
//! request or response), reply, or pause again for another callout.
//!
//! How Envoy reports failures: the callout runs through Envoy's async HTTP client and router, so
//! a timeout usually arrives as a `504` the router generated and a connection failure as a `503`;
//! a reset arrives as an answer with no headers at all. The SDK reports
//! [`CalloutError::Timeout`] when the answer came at the deadline (within a tenth of the timeout,
//! at most 50 ms: Envoy's timer runs on another clock than the one it reports) and is a 504 or
//! empty,
//! [`CalloutError::Failed`] for any other empty answer, and everything else as a response for the
//! filter to judge.

use std::time::Duration;

use proxy_wasm::types::{BufferType, MapType, Status};

use crate::host;

/// Default for [`Callout::max_response_bytes`].
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An HTTP request to send to an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// Envoy cluster name (in Istio, `outbound|PORT||HOST`).
    pub cluster: String,
    /// Request method.
    pub method: String,
    /// Request path, query included.
    pub path: String,
    /// `:authority` to send; Envoy requires one.
    pub authority: String,
    /// Other request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Envoy gives up after this long and answers the callout itself.
    pub timeout: Duration,
    /// Response body bytes read back; the rest is ignored.
    pub max_response_bytes: usize,
}

impl Callout {
    /// A `GET /` to `cluster` with `authority`, a 1 s timeout and no extra headers.
    pub fn get(cluster: impl Into<String>, authority: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            method: "GET".into(),
            path: path.into(),
            authority: authority.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(1),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    pub(crate) fn dispatch(&self) -> Result<u32, Status> {
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(self.headers.len() + 3);
        headers.push((":method", &self.method));
        headers.push((":path", &self.path));
        headers.push((":authority", &self.authority));
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = if self.body.is_empty() { None } else { Some(self.body.as_slice()) };
        // Through the proxy-wasm crate so its dispatcher routes the answer to this context; it
        // returns BadArgument/InternalFailure as errors, which is all Envoy answers besides Ok.
        proxy_wasm::hostcalls::dispatch_http_call(&self.cluster, headers, body, vec![], self.timeout)
    }
}

/// A callout's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutResponse {
    /// The `:status`, or 0 when the answer had none.
    pub status: u16,
    /// Response headers, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// Response body, up to the callout's `max_response_bytes`.
    pub body: Vec<u8>,
    /// True when the body was longer than `max_response_bytes` and was cut.
    pub truncated: bool,
}

impl CalloutResponse {
    /// The first value of header `name` (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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

/// Names a callout sent from the root context with [`dispatch`]; [`crate::Plugin::on_callout`]
/// receives it with the answer, so a plugin with several callouts in flight tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CalloutId(u32);

/// Most root-context callouts in flight per VM; [`dispatch`] refuses more, so a plugin that
/// dispatches on every tick while its cluster hangs cannot grow this table without bound.
pub const MAX_ROOT_CALLOUTS: usize = 64;

thread_local! {
    // One VM is one thread: Envoy never calls into a VM from two threads at once.
    static ROOT_PENDING: std::cell::RefCell<Vec<Pending>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends `callout` from the root context: the answer arrives in [`crate::Plugin::on_callout`]
/// with the returned id. Call it from [`crate::Plugin::on_tick`] or [`crate::Plugin::on_callout`]
/// (background work: key refreshes, batch uploads). From a stream callback use
/// [`crate::Stream::dispatch`] instead: a callout belongs to the context that sent it, and Envoy
/// cancels it when that stream ends.
///
/// Refused with `BadArgument` when [`MAX_ROOT_CALLOUTS`] are already in flight.
pub fn dispatch(callout: &Callout) -> Result<CalloutId, CalloutError> {
    let full = ROOT_PENDING.with(|p| p.borrow().len() >= MAX_ROOT_CALLOUTS);
    if full {
        return Err(CalloutError::Dispatch(Status::BadArgument));
    }
    let token = callout.dispatch().map_err(CalloutError::Dispatch)?;
    ROOT_PENDING.with(|p| p.borrow_mut().push(Pending::new(token, callout)));
    Ok(CalloutId(token))
}

/// Number of root-context callouts in flight.
pub fn in_flight() -> usize {
    ROOT_PENDING.with(|p| p.borrow().len())
}

/// Removes and returns the pending root callout with `token`.
pub(crate) fn take_root(token: u32) -> Option<(CalloutId, Pending)> {
    ROOT_PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let at = pending.iter().position(|c| c.token == token)?;
        Some((CalloutId(token), pending.swap_remove(at)))
    })
}

pub(crate) struct Pending {
    pub token: u32,
    pub started: Option<std::time::SystemTime>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    /// How long the callout took, set by [`Pending::read`] from the clock reading it makes anyway.
    pub elapsed: std::cell::Cell<Option<Duration>>,
}

impl Pending {
    pub(crate) fn new(token: u32, callout: &Callout) -> Self {
        Self {
            token,
            started: crate::clock::now(),
            timeout: callout.timeout,
            max_response_bytes: callout.max_response_bytes,
            elapsed: std::cell::Cell::new(None),
        }
    }

    /// Reads the answer Envoy is delivering for this callout.
    pub(crate) fn read(&self, num_headers: usize, body_size: usize) -> CalloutResult {
        // Envoy's timer and the clock it reports are not the same clock: its timeout can fire a
        // little before `timeout` has passed by `get_current_time` (seen in Envoy 1.40: a 300 ms
        // timeout answered after 299.x ms). Allow a tenth of the timeout, at most 50 ms.
        let slack = (self.timeout / 10).min(Duration::from_millis(50));
        let elapsed = match (self.started, crate::clock::now()) {
            (Some(start), Some(now)) => now.duration_since(start).ok(),
            _ => None,
        };
        self.elapsed.set(elapsed);
        let late = elapsed.is_some_and(|d| d + slack >= self.timeout);
        if num_headers == 0 {
            return Err(if late { CalloutError::Timeout } else { CalloutError::Failed });
        }
        let headers: Vec<(String, String)> = host::header_pairs(MapType::HttpCallResponseHeaders)
            .map_err(|_| CalloutError::Failed)?
            .into_iter()
            .map(|(k, v)| {
                (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())
            })
            .collect();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .unwrap_or(0);
        if late && status == 504 {
            return Err(CalloutError::Timeout);
        }
        let want = body_size.min(self.max_response_bytes);
        let body = if want == 0 {
            Vec::new()
        } else {
            host::buffer(BufferType::HttpCallResponseBody, 0, want).map_err(|_| CalloutError::Failed)?
        };
        Ok(CalloutResponse { status, headers, body, truncated: body_size > want })
    }
}
