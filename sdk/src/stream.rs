//! [`Stream`]: the handle a filter reaches one request through: its headers, bodies,
//! properties, callouts and gRPC calls, the clock and its plugin's [`Root`].

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use proxy_wasm::types::{BufferType, Bytes, MapType, Status};

use crate::callout::{self, Callout, CalloutError};
use crate::grpc::{self, GrpcCall, GrpcError};
use crate::host::{Half, Host};
use crate::request::{HeaderSnapshot, Request};
use crate::Root;

/// The SDK's side of one stream, handed to every [`crate::HttpFilter`] callback: the only way a
/// filter reaches the request, the response and the host while handling it.
pub struct Stream {
    pub(crate) host: Rc<dyn Host>,
    root: Root,
    pub(crate) half: Half,
    pub(crate) pending: Option<callout::Pending>,
    pub(crate) pending_grpc: Option<grpc::Pending>,
    pub(crate) replied: bool,
    pub(crate) callout_elapsed: Option<Duration>,
    /// The request headers as read in the running callback: one host call the first time a
    /// callback asks, none after, until the filter changes them.
    request: RefCell<Option<Rc<Request>>>,
}

impl Stream {
    pub(crate) fn new(host: Rc<dyn Host>, root: Root) -> Self {
        Self {
            host,
            root,
            half: Half::Request,
            pending: None,
            pending_grpc: None,
            replied: false,
            callout_elapsed: None,
            request: RefCell::new(None),
        }
    }

    /// Starts a callback: what was read in the previous one may have changed since.
    pub(crate) fn enter(&mut self, half: Half) {
        self.half = half;
        self.request.get_mut().take();
    }

    /// The request as it is now: every request header read with one host call and kept for
    /// the rest of this callback, so any number of lookups (method, host, path, cookies,
    /// headers) cost that one call. Writes through [`Stream::request_headers`] make the next
    /// call read again; a new callback always reads again (another filter may have changed the
    /// request in between).
    pub fn request(&self) -> Rc<Request> {
        if let Some(request) = self.request.borrow().as_ref() {
            return Rc::clone(request);
        }
        let request = Rc::new(Request::from_headers(self.snapshot(MapType::HttpRequestHeaders)));
        *self.request.borrow_mut() = Some(Rc::clone(&request));
        request
    }

    /// The request headers, to read one value or to change them.
    pub fn request_headers(&self) -> HeaderMap<'_> {
        HeaderMap { stream: self, map: MapType::HttpRequestHeaders }
    }

    /// The response headers (in response callbacks and at log time).
    pub fn response_headers(&self) -> HeaderMap<'_> {
        HeaderMap { stream: self, map: MapType::HttpResponseHeaders }
    }

    /// The request trailers.
    pub fn request_trailers(&self) -> HeaderMap<'_> {
        HeaderMap { stream: self, map: MapType::HttpRequestTrailers }
    }

    /// The response trailers.
    pub fn response_trailers(&self) -> HeaderMap<'_> {
        HeaderMap { stream: self, map: MapType::HttpResponseTrailers }
    }

    /// Up to `max` bytes of the request body buffered so far (in request body callbacks).
    pub fn request_body(&self, max: usize) -> Result<Bytes, Status> {
        self.host.buffer(BufferType::HttpRequestBody, 0, max)
    }

    /// Up to `max` bytes of the response body buffered so far (in response body callbacks).
    pub fn response_body(&self, max: usize) -> Result<Bytes, Status> {
        self.host.buffer(BufferType::HttpResponseBody, 0, max)
    }

    /// A property of the stream (`["response", "code"]`, `["xds", "cluster_name"]`, ...);
    /// `None` when the host has none. A host error reads as absent, and is logged at debug.
    pub fn property(&self, path: &[&str]) -> Option<Bytes> {
        self.host.property(path).unwrap_or_else(|status| {
            log::debug!("reading property {path:?} failed: {status:?}");
            None
        })
    }

    /// Calls a function the host registered by name; `Err(NotFound)` when the host has none,
    /// so a filter can fall back to its own code.
    pub fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
        self.host.foreign_function(name, arguments)
    }

    /// The host's wall clock; `None` when the host cannot tell.
    pub fn now(&self) -> Option<SystemTime> {
        self.host.current_time().ok()
    }

    /// The plugin this stream belongs to: its metrics, shared data and background callouts.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// In [`crate::HttpFilter::on_callout`]: how long the callout being answered took, from
    /// dispatch to answer by the host clock; `None` unless the callout was [`Callout::timed`]
    /// (and the host has a clock).
    pub fn callout_elapsed(&self) -> Option<Duration> {
        self.callout_elapsed
    }

    /// In [`crate::HttpFilter::on_callout`]: up to `max` bytes of the answer's body, for a
    /// filter that wants more of it than [`Callout::max_response_bytes`] read for every answer
    /// (only after seeing the status, say). Readable until `on_callout` returns.
    pub fn callout_body(&self, max: usize) -> Result<Bytes, Status> {
        self.host.buffer(BufferType::HttpCallResponseBody, 0, max)
    }

    /// Sends `callout`; its answer arrives in [`crate::HttpFilter::on_callout`]. One callout at
    /// a time: a second one while the first is pending is refused with `BadArgument`.
    pub fn dispatch(&mut self, callout: &Callout<'_>) -> Result<(), CalloutError> {
        if self.pending.is_some() {
            return Err(CalloutError::Dispatch(Status::BadArgument));
        }
        let pending = callout::Pending::send(&*self.host, callout).map_err(CalloutError::Dispatch)?;
        self.pending = Some(pending);
        Ok(())
    }

    /// Sends the unary gRPC `call`; its answer arrives in [`crate::HttpFilter::on_grpc_result`].
    /// One gRPC call at a time (besides one HTTP callout): a second while the first is pending
    /// is refused with `Dispatch(BadArgument)`.
    pub fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<(), GrpcError> {
        if self.pending_grpc.is_some() {
            return Err(GrpcError::Dispatch(Status::BadArgument));
        }
        self.pending_grpc = Some(grpc::Pending::send(&*self.host, call)?);
        Ok(())
    }

    /// In a headers callback that returns [`crate::Flow::Pause`]: hold the headers only and let
    /// the body reach the body callbacks, where the filter buffers it (pausing them) before it
    /// lets the request go on. Without it a paused headers callback holds the body too. Native
    /// modules do it for that request; a Wasm filter needs Envoy's
    /// `allow_on_headers_stop_iteration: true`, without which Envoy holds the body regardless.
    pub fn let_body_through(&self) {
        if let Err(status) = self.host.let_body_through() {
            log::warn!(
                "{}: letting the body through a paused headers callback failed: {status:?}",
                self.plugin_name()
            );
        }
    }

    /// True once the filter sent a local reply on this stream.
    pub fn replied(&self) -> bool {
        self.replied
    }

    /// The name of the plugin that owns this stream.
    pub fn plugin_name(&self) -> &'static str {
        self.root.name()
    }

    fn snapshot(&self, map: MapType) -> HeaderSnapshot {
        match self.host.header_pairs(map) {
            Ok(raw) => HeaderSnapshot::from_serialized(raw),
            Err(status) => {
                log::debug!("reading header map failed: {status:?}");
                HeaderSnapshot::default()
            }
        }
    }
}

/// One header map of a [`Stream`]. Reading one value costs a host call; reading several,
/// [`HeaderMap::snapshot`] (or [`Stream::request`]) costs one for all.
#[derive(Clone, Copy)]
pub struct HeaderMap<'s> {
    stream: &'s Stream,
    map: MapType,
}

impl HeaderMap<'_> {
    /// The value of `name` (case-insensitive, as Envoy stores names lower-cased); when the
    /// header is repeated, the first value (Envoy's answer). Bytes that are not UTF-8 become
    /// U+FFFD (see [`HeaderMap::get_bytes`] for the raw value). A host error reads as absent,
    /// and is logged at debug.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name).map(|bytes| match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The raw value of `name`, for values that must pass through unchanged (obs-text bytes).
    pub fn get_bytes(&self, name: &str) -> Option<Bytes> {
        self.stream.host.header(self.map, name).unwrap_or_else(|status| {
            log::debug!("reading header {name:?} failed: {status:?}");
            None
        })
    }

    /// Every header as it is now, read with one host call (an empty map on a host error, which
    /// is logged at debug).
    pub fn snapshot(&self) -> HeaderSnapshot {
        self.stream.snapshot(self.map)
    }

    /// Sets `name` to `value`, replacing every existing value.
    pub fn set(&self, name: &str, value: &str) -> Result<(), Status> {
        self.set_bytes(name, value.as_bytes())
    }

    /// Sets `name` to raw bytes, replacing every existing value.
    pub fn set_bytes(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.changed();
        self.stream.host.set_header(self.map, name, value)
    }

    /// Appends a value for `name`, keeping existing ones.
    pub fn add(&self, name: &str, value: &str) -> Result<(), Status> {
        self.add_bytes(name, value.as_bytes())
    }

    /// Appends a raw value for `name`, keeping existing ones.
    pub fn add_bytes(&self, name: &str, value: &[u8]) -> Result<(), Status> {
        self.changed();
        self.stream.host.add_header(self.map, name, value)
    }

    /// Removes every value of `name`.
    pub fn remove(&self, name: &str) -> Result<(), Status> {
        self.changed();
        self.stream.host.remove_header(self.map, name)
    }

    fn changed(&self) {
        if self.map == MapType::HttpRequestHeaders {
            self.stream.request.borrow_mut().take();
        }
    }
}
