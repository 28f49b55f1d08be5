//! The public API: [`Emulator`] (the VM and what a test asks of it), [`Stream`] (one HTTP
//! stream through the plugin) and [`PropertyPath`].

use super::driver::{Inner, Side};
use crate::abi::{Action, MetricType};
use crate::group::Group;
use crate::grpc::{self, GrpcResponse};
use crate::host::{GrpcCall, HeaderMap, HttpCall, LocalReply, LogEntry, Metric, StreamState};
use crate::wasi::Sink;
use crate::Error;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Result<T> = std::result::Result<T, Error>;

fn path_key(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// The response a client got: headers (`:status` among them) and body.
pub(crate) type ClientResponse<'a> = (&'a [(String, String)], &'a [u8]);

/// A property path: `"request.path"` (dot-separated) or `&["request", "path"]`.
pub trait PropertyPath {
    /// The NUL-separated form the ABI uses.
    fn key(&self) -> Vec<u8>;
}

impl PropertyPath for &str {
    fn key(&self) -> Vec<u8> {
        path_key(&self.split('.').collect::<Vec<_>>())
    }
}

impl PropertyPath for String {
    fn key(&self) -> Vec<u8> {
        self.as_str().key()
    }
}

impl PropertyPath for &[&str] {
    fn key(&self) -> Vec<u8> {
        path_key(self)
    }
}

impl<const N: usize> PropertyPath for [&str; N] {
    fn key(&self) -> Vec<u8> {
        path_key(self)
    }
}

impl<const N: usize> PropertyPath for &[&str; N] {
    fn key(&self) -> Vec<u8> {
        path_key(*self)
    }
}

/// An emulated Envoy worker's Wasm VM running one plugin. See the crate documentation.
pub struct Emulator {
    inner: Rc<RefCell<Inner>>,
}

/// An HTTP stream (one request/response) going through the plugin. Cheap handle: the
/// [`Emulator`] it came from can still be used while it exists.
pub struct Stream {
    inner: Rc<RefCell<Inner>>,
    id: u32,
}

impl Emulator {
    /// Wraps a started VM.
    pub(super) fn from_inner(inner: Inner) -> Emulator {
        Emulator { inner: Rc::new(RefCell::new(inner)) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.borrow_mut())
    }

    /// Whether `proxy_on_vm_start` and `proxy_on_configure` both returned true (Envoy refuses
    /// the plugin otherwise; [`Emulator::logs`] usually say why).
    pub fn configured(&self) -> bool {
        self.with(|i| i.configured)
    }

    /// The failure that killed the VM, if it trapped.
    pub fn failure(&self) -> Option<String> {
        self.with(|i| i.failed.clone())
    }

    /// A new HTTP stream. `proxy_on_context_create` runs with its first headers, as in Envoy.
    pub fn stream(&self) -> Stream {
        let id = self.with(|i| {
            let id = i.next_context_id;
            i.next_context_id += 1;
            id
        });
        Stream { inner: self.inner.clone(), id }
    }

    /// Removes the plugin as Envoy 1.40 does once the plugin's listener has drained after a
    /// configuration change or removal: `proxy_on_done` on the root context. Returns true when
    /// the module let it go at once (`proxy_on_delete` ran). False when it asked to finish
    /// first: callout answers and ticks still arrive (in Envoy, as long as another plugin keeps
    /// the VM) until the module calls `proxy_done`; the root context is then deleted, its
    /// timer stopped and its pending callouts cancelled.
    pub fn remove_plugin(&self) -> Result<bool> {
        self.with(Inner::remove_plugin)
    }

    /// Whether the root context was deleted after [`Emulator::remove_plugin`] (at once, or when
    /// the module called `proxy_done`).
    pub fn plugin_removed(&self) -> bool {
        self.with(|i| i.store.data().root_deleted)
    }

    /// The root context id (1, as in Envoy).
    pub fn root_context_id(&self) -> u32 {
        self.with(|i| i.store.data().root_id)
    }

    /// Every log line recorded so far (including WASI stdout at info and stderr at error).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.with(|i| i.store.data().logs.clone())
    }

    /// Log lines recorded so far, clearing them.
    pub fn take_logs(&self) -> Vec<LogEntry> {
        self.with(|i| std::mem::take(&mut i.store.data_mut().logs))
    }

    /// Whether some log message contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.with(|i| i.store.data().logs.iter().any(|l| l.message.contains(text)))
    }

    /// What the module wrote to WASI stdout.
    pub fn stdout(&self) -> String {
        self.with(|i| match &i.store.data().wasi.stdout {
            Sink::Capture(b) => String::from_utf8_lossy(b).into_owned(),
            Sink::Inherit => String::new(),
        })
    }

    /// What the module wrote to WASI stderr.
    pub fn stderr(&self) -> String {
        self.with(|i| match &i.store.data().wasi.stderr {
            Sink::Capture(b) => String::from_utf8_lossy(b).into_owned(),
            Sink::Inherit => String::new(),
        })
    }

    /// HTTP calls waiting for an answer, oldest first.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.with(|i| i.store.data().http_calls.values().cloned().collect())
    }

    /// Answers a pending HTTP call: `proxy_on_http_call_response` runs, then whatever it
    /// resumed. `headers` should include `:status`.
    pub fn respond_http_call(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<()> {
        let h = HeaderMap::from_pairs(headers, false);
        let t = if trailers.is_empty() { None } else { Some(HeaderMap::from_pairs(trailers, false)) };
        self.with(|i| i.deliver_call_response(token, Some((h, body.to_vec(), t))))
    }

    /// [`Emulator::respond_http_call`] with header values as bytes: an answer whose values are
    /// not UTF-8 (`obs-text`, which Envoy passes on), no trailers.
    pub fn respond_http_call_bytes(&self, token: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<()> {
        let h = HeaderMap::from_pairs(headers, false);
        self.with(|i| i.deliver_call_response(token, Some((h, body.to_vec(), None))))
    }

    /// Fails a pending HTTP call as Envoy does on a reset: the response callback gets 0
    /// headers, 0 body bytes and 0 trailers. (Connection failures and timeouts are not this:
    /// Envoy answers them with a 503 or 504 response; see [`Emulator::advance_clock`].)
    pub fn fail_http_call(&self, token: u32) -> Result<()> {
        self.with(|i| i.deliver_call_response(token, None))
    }

    /// gRPC calls waiting for an answer, oldest first.
    pub fn grpc_calls(&self) -> Vec<GrpcCall> {
        self.with(|i| i.store.data().grpc_calls.values().cloned().collect())
    }

    /// Answers a pending gRPC call with the service's `response`: the module gets what Envoy
    /// 1.40's gRPC client makes of it (`proxy_on_grpc_receive` with the message, or
    /// `proxy_on_grpc_close` with a status code and Envoy's message), then whatever that
    /// resumed runs.
    pub fn respond_grpc_call(&self, token: u32, response: &GrpcResponse) -> Result<()> {
        self.with(|i| i.deliver_grpc(token, grpc::outcome(response)))
    }

    /// Fails a pending gRPC call as Envoy does when the connection to the service is refused:
    /// `UNAVAILABLE` (14) with its router's `upstream connect error ...` message.
    pub fn fail_grpc_call(&self, token: u32) -> Result<()> {
        self.with(|i| i.deliver_grpc(token, grpc::router_close(grpc::router::REFUSED)))
    }

    /// Fails a pending gRPC call as Envoy does when the service resets the stream before its
    /// headers: `UNAVAILABLE` (14), `... reset reason: remote reset`.
    pub fn reset_grpc_call(&self, token: u32) -> Result<()> {
        self.with(|i| i.deliver_grpc(token, grpc::router_close(grpc::router::RESET)))
    }

    /// Advances the emulated clock, firing each tick and callout timeout in time order. A
    /// timed-out HTTP call gets what Envoy gives it: status 504, `content-length: 24`,
    /// `content-type: text/plain`, body `upstream request timeout`; a timed-out gRPC call
    /// `proxy_on_grpc_close` with `UNAVAILABLE` (14) and `upstream request timeout{response_timeout}`.
    pub fn advance_clock(&self, by: Duration) -> Result<()> {
        self.with(|i| i.advance_clock(by))
    }

    /// Sets the wall clock (`proxy_get_current_time_nanoseconds`, WASI realtime) without
    /// firing anything.
    pub fn set_time(&self, time: SystemTime) {
        self.with(|i| {
            let st = i.store.data_mut();
            st.realtime_ns = time.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            st.sync_clock();
        })
    }

    /// How long until this VM's next tick or callout timeout, if it has one (the gateway
    /// interleaves the clocks of its modules with it).
    pub(crate) fn next_event(&self) -> Option<Duration> {
        self.with(|i| {
            let st = i.store.data();
            let http = st.http_calls.values().filter_map(|c| c.deadline);
            let grpc = st.grpc_calls.values().filter_map(|c| c.deadline);
            let next = http.chain(grpc).chain(st.next_tick).min()?;
            Some(Duration::from_nanos(next.saturating_sub(st.monotonic_ns)))
        })
    }

    /// The current emulated wall-clock time.
    pub fn now(&self) -> SystemTime {
        self.with(|i| UNIX_EPOCH + Duration::from_nanos(i.store.data().realtime_ns))
    }

    /// The tick period the module set (None when 0 / never set).
    pub fn tick_period(&self) -> Option<Duration> {
        self.with(|i| match i.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        })
    }

    /// Value of the counter or gauge (or last histogram value) named `name`.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.with(|i| i.store.data().metrics.get(name).map(|m| m.value))
    }

    /// A gauge's value as Envoy's signed view of it (u64 wrapped below 0).
    pub fn gauge(&self, name: &str) -> Option<i64> {
        self.with(|i| {
            i.store.data().metrics.get(name).filter(|m| m.kind == MetricType::Gauge).map(|m| m.value as i64)
        })
    }

    /// Host calls the module made since the emulator was built or [`Emulator::reset_host_calls`],
    /// by import name (`proxy_get_header_map_value`, `fd_write`, ...). Each value a host call
    /// returns also counts one `proxy_on_memory_allocate`: Envoy calls back into the module to
    /// allocate it, a second VM crossing. Calls made in every context are included (root
    /// context, streams, `on_tick`); see [`Stream::host_calls`] for one stream's.
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.with(|i| i.store.data().host_calls.clone())
    }

    /// The total of [`Emulator::host_calls`].
    pub fn host_call_count(&self) -> u64 {
        self.with(|i| i.store.data().host_calls.values().sum())
    }

    /// Starts counting host calls from zero (for every context).
    pub fn reset_host_calls(&self) {
        self.with(|i| {
            let st = i.store.data_mut();
            st.host_calls.clear();
            st.host_calls_by_context.clear();
        })
    }

    /// Every metric the module defined.
    pub fn metrics(&self) -> Vec<Metric> {
        self.with(|i| i.store.data().metrics.values().cloned().collect())
    }

    /// Sets a property for every context (see [`crate::EmulatorBuilder::property`]).
    pub fn set_property(&self, path: impl PropertyPath, value: impl AsRef<[u8]>) {
        self.with(|i| {
            i.store.data_mut().properties.insert(path.key(), value.as_ref().to_vec());
        })
    }

    /// The group this VM belongs to (shared data and queues).
    pub fn group(&self) -> Group {
        self.with(|i| Group { state: i.store.data().group.clone() })
    }

    /// Shared data under `key` in this VM's namespace: value and CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().shared_data(&vm, key)
    }

    /// Sets shared data in this VM's namespace (CAS 0: unconditional); returns the ABI status.
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> u32 {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().set_shared_data(&vm, key, value, cas)
    }

    /// Id of the queue `name` registered in this VM's namespace.
    pub fn queue_id(&self, name: &str) -> Option<u32> {
        let vm = self.with(|i| i.store.data().vm_id.clone());
        self.group().queue_id(&vm, name)
    }

    /// Enqueues as another VM would, then delivers `proxy_on_queue_ready` if the queue is this
    /// VM's. Returns the ABI status.
    pub fn enqueue(&self, queue_id: u32, value: &[u8]) -> Result<u32> {
        let st = self.group().enqueue(queue_id, value);
        self.run_pending()?;
        Ok(st)
    }

    /// Delivers what is waiting for this VM: queue notifications (e.g. from another VM of the
    /// group) and deferred stream actions.
    pub fn run_pending(&self) -> Result<()> {
        self.with(Inner::pump)
    }
}

impl Stream {
    fn with<R>(&self, f: impl FnOnce(&mut Inner, u32) -> R) -> R {
        f(&mut self.inner.borrow_mut(), self.id)
    }

    fn drive(&self, side: Side, f: impl FnOnce(&mut Inner, u32) -> Result<Action>) -> Result<Action> {
        self.with(|i, id| i.drive(id, side, f))
    }

    /// The stream's context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    /// Host calls the module made in this stream's context (see [`Emulator::host_calls`]),
    /// since the stream started or the last [`Emulator::reset_host_calls`].
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.inner.borrow().store.data().host_calls_by_context.get(&self.id).cloned().unwrap_or_default()
    }

    /// The total of [`Stream::host_calls`].
    pub fn host_call_count(&self) -> u64 {
        self.host_calls().values().sum()
    }

    /// Request headers arrive (`proxy_on_request_headers`). Names are lower-cased as Envoy does;
    /// give pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) as the test needs them
    /// (Envoy itself adds `x-request-id`, `x-forwarded-proto` and `:scheme`). Returns the action
    /// Envoy acts on: Pause if the module returned Pause or sent a local reply.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, true);
        self.drive(Side::Request, |i, id| {
            if i.stream(id)?.req.headers_seen {
                return Err(Error::Usage("request headers were already sent on this stream".to_string()));
            }
            i.headers(id, Side::Request, h, end_of_stream)
        })
    }

    /// [`Stream::request_headers`] with values as bytes (`obs-text`, which Envoy's codec accepts
    /// from clients).
    pub fn request_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, true);
        self.drive(Side::Request, |i, id| {
            if i.stream(id)?.req.headers_seen {
                return Err(Error::Usage("request headers were already sent on this stream".to_string()));
            }
            i.headers(id, Side::Request, h, end_of_stream)
        })
    }

    /// A request body chunk arrives. While the filter has the request stopped (headers paused),
    /// the data waits and is given to it when it resumes, as in Envoy. After a Pause from a body
    /// callback the next call sees the buffered data plus the new chunk.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.drive(Side::Request, |i, id| {
            // Envoy counts what it read from the client, whether or not the filter has it yet.
            i.stream(id)?.bytes_received += chunk.len() as u64;
            i.body(id, Side::Request, chunk, end_of_stream)
        })
    }

    /// Request trailers arrive (end of the request).
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let t = HeaderMap::from_pairs(trailers, true);
        self.drive(Side::Request, |i, id| i.trailers(id, Side::Request, t))
    }

    /// Response headers arrive from upstream (`proxy_on_response_headers`).
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action> {
        let h = HeaderMap::from_pairs(headers, false);
        self.drive(Side::Response, |i, id| {
            i.stream(id)?.code_details.get_or_insert_with(|| "via_upstream".to_string());
            i.headers(id, Side::Response, h, end_of_stream)
        })
    }

    /// A response body chunk arrives.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.drive(Side::Response, |i, id| i.body(id, Side::Response, chunk, end_of_stream))
    }

    /// Response trailers arrive.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action> {
        let t = HeaderMap::from_pairs(trailers, false);
        self.drive(Side::Response, |i, id| i.trailers(id, Side::Response, t))
    }

    /// Ends the stream: `proxy_on_log` (with the access-log view of the headers), then
    /// `proxy_on_done` and `proxy_on_delete`.
    pub fn log(&mut self) -> Result<()> {
        self.with(|i, id| i.log_stream(id))
    }

    fn read<R>(&self, f: impl FnOnce(&StreamState) -> R) -> Option<R> {
        self.with(|i, id| i.store.data().streams.get(&id).map(f))
    }

    /// The request headers now (what the upstream gets once the filter lets them go).
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.req.headers.to_strings()).unwrap_or_default()
    }

    /// The request headers now with their values as bytes, unchanged (`request_headers_now`
    /// reads bytes that are not UTF-8 as U+FFFD).
    pub fn request_headers_now_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.req.headers.entries.clone()).unwrap_or_default()
    }

    /// The response headers now with their values as bytes, unchanged.
    pub fn response_headers_now_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.resp.headers.entries.clone()).unwrap_or_default()
    }

    /// One request header now (first value; `host` means `:authority`).
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.req.headers.get(name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned()))
            .flatten()
    }

    /// Request body that went past the filter so far.
    pub fn request_body_now(&self) -> Vec<u8> {
        self.read(|s| s.req.forwarded.clone()).unwrap_or_default()
    }

    /// Request body the filter holds buffered (it returned Pause from a body callback).
    pub fn request_body_buffered(&self) -> Vec<u8> {
        self.read(|s| s.req.body.clone()).unwrap_or_default()
    }

    /// Request trailers now.
    pub fn request_trailers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.req.trailers.as_ref().map(HeaderMap::to_strings).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The response headers now (what the client gets; for a local reply, its headers).
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.resp.headers.to_strings()).unwrap_or_default()
    }

    /// One response header now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.resp.headers.get(name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned()))
            .flatten()
    }

    /// Response body that went past the filter so far.
    pub fn response_body_now(&self) -> Vec<u8> {
        self.read(|s| s.resp.forwarded.clone()).unwrap_or_default()
    }

    /// Response trailers now.
    pub fn response_trailers_now(&self) -> Vec<(String, String)> {
        self.read(|s| s.resp.trailers.as_ref().map(HeaderMap::to_strings).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The local reply the module sent, if any.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.read(|s| s.local_reply.clone()).flatten()
    }

    /// Whether the module reset the stream (`proxy_close_stream`).
    pub fn was_reset(&self) -> bool {
        self.read(|s| s.reset).unwrap_or(false)
    }

    /// Whether the filter is holding the request (headers or trailers paused, not resumed).
    pub fn request_paused(&self) -> bool {
        self.read(|s| s.req.stopped || s.req.buffering || s.req.held).unwrap_or(false)
    }

    /// Whether the filter is holding the response.
    pub fn response_paused(&self) -> bool {
        self.read(|s| s.resp.stopped || s.resp.buffering || s.resp.held).unwrap_or(false)
    }

    /// Whether the filter will be called no more for this stream (local reply, reset, logged).
    pub fn ended(&self) -> bool {
        self.with(|i, id| i.store.data().streams.contains_key(&id) && i.ended(id))
    }

    /// Sets a property for this stream only (e.g. `source.address`, `connection.id`).
    pub fn set_property(&self, path: impl PropertyPath, value: impl AsRef<[u8]>) {
        self.with(|i, id| {
            let _ = i.ensure_created(id);
            if let Some(s) = i.store.data_mut().streams.get_mut(&id) {
                s.properties.insert(path.key(), value.as_ref().to_vec());
            }
        })
    }

    /// Sets `response.flags` for this stream (Envoy's response flags, e.g. 4 for a route
    /// timeout).
    pub(crate) fn set_response_flags(&self, flags: u64) {
        self.with(|i, id| {
            if let Some(s) = i.store.data_mut().streams.get_mut(&id) {
                s.response_flags = flags;
            }
        })
    }

    /// Sets `response.code_details` for this stream: what Envoy's stream info says of a
    /// response another filter (or Envoy itself) produced.
    pub(crate) fn set_code_details(&self, details: &str) {
        self.with(|i, id| {
            let _ = i.ensure_created(id);
            if let Some(s) = i.store.data_mut().streams.get_mut(&id) {
                s.code_details = Some(details.to_string());
            }
        })
    }

    /// Gives the log phase Envoy's access-log view: the request headers as the connection
    /// manager holds them after every filter, and the response the client got (one
    /// map for the whole chain in Envoy; one copy per VM here). Creates the context when the
    /// filter never saw the request, as Envoy does for logging.
    /// `upstream_answered`: the route's upstream answered (the `upstream.*` properties then
    /// answer for every filter, as Envoy's one stream info does).
    pub(crate) fn set_log_view(
        &self,
        request: &[(String, String)],
        response: Option<ClientResponse<'_>>,
        upstream_answered: bool,
    ) {
        self.with(|i, id| {
            let _ = i.ensure_created(id);
            if let Some(s) = i.store.data_mut().streams.get_mut(&id) {
                s.upstream_answered = upstream_answered;
                s.req.headers = HeaderMap::from_pairs(request, true);
                s.req.headers_seen = true;
                if let Some((headers, body)) = response {
                    s.resp.headers = HeaderMap::from_pairs(headers, false);
                    s.resp.headers_seen = true;
                    // `response.size`: what went to the client (the probe: 6 for a
                    // response-path reply's `teapot` in a filter that never saw it).
                    s.resp.forwarded = body.to_vec();
                }
            }
        })
    }

    /// A property the module set on this stream with `proxy_set_property` (Envoy filter state).
    pub fn filter_state(&self, path: impl PropertyPath) -> Option<Vec<u8>> {
        self.read(|s| s.filter_state.get(&path.key()).cloned()).flatten()
    }
}
