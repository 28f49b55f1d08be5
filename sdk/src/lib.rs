//! gatewasm: panic-free building blocks for proxy-wasm HTTP filters, on top of the `proxy-wasm`
//! crate.
//!
//! A filter is two types:
//! - a [`Plugin`]: the parsed, validated configuration and any state shared by all streams of a
//!   VM (one per Envoy worker), built once in `on_configure`;
//! - an [`HttpFilter`]: per-request state, created for each stream with an `Rc` of the plugin.
//!
//! [`export!`] wires them to the ABI. The SDK then
//! - rejects bad configuration in `on_configure`, logging every problem with its field, so Envoy
//!   refuses the filter instead of running it half-configured;
//! - reads request parts through [`Request`] without ever panicking on client bytes;
//! - sends local replies of one JSON shape ([`LocalReply`]);
//! - runs HTTP callouts ([`Stream::dispatch`]) and resumes or replies when they answer;
//! - logs through the `log` crate, and logs a panic at critical before the VM aborts.
//!
//! ```no_run
//! use std::rc::Rc;
//! use gatewasm::{config, ConfigErrors, Flow, HttpFilter, Plugin, Stream};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Greeting { header: Option<String> }
//! impl config::Validate for Greeting {}
//!
//! impl Plugin for Greeting {
//!     const NAME: &'static str = "greeting";
//!     type Filter = Greeter;
//!     fn configure(raw: &[u8]) -> Result<Self, ConfigErrors> { config::parse(raw) }
//!     fn new_filter(self: &Rc<Self>) -> Greeter { Greeter(self.clone()) }
//! }
//!
//! struct Greeter(Rc<Greeting>);
//! impl HttpFilter for Greeter {
//!     fn on_request_headers(&mut self, _s: &mut Stream, _eos: bool) -> Flow {
//!         let name = self.0.header.as_deref().unwrap_or("x-hello");
//!         let _ = gatewasm::REQUEST_HEADERS.set(name, "world");
//!         Flow::Continue
//!     }
//! }
//!
//! gatewasm::export!(Greeting);
//! # fn main() {}
//! ```

#[cfg(feature = "bundle")]
pub mod bundle;
pub mod callout;
pub mod clock;
pub mod config;
pub mod host;
pub mod http;
mod logging;
pub mod matcher;
pub mod metrics;
pub mod reply;
pub mod request;

#[cfg(test)]
mod robustness;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

pub use callout::{dispatch, Callout, CalloutError, CalloutId, CalloutResponse, CalloutResult};
pub use config::{ConfigError, ConfigErrors};
pub use reply::LocalReply;
pub use request::{
    HeaderSnapshot, Headers, Request, REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_TRAILERS,
};

/// Re-exported so filters use the exact version the SDK was built against.
pub use proxy_wasm;

/// Largest plugin configuration read, to bound memory even for a mistaken config.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// What the stream does after a filter callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Pass the request or response on.
    Continue,
    /// Hold it (for a callout, or to buffer a body); a later [`HttpFilter::on_callout`] decides.
    Pause,
    /// Answer the client now; the request does not go upstream.
    Reply(LocalReply),
}

/// The configured plugin: one per VM, shared by every stream through an `Rc`.
pub trait Plugin: Sized + 'static {
    /// Name used in logs and in response code details.
    const NAME: &'static str;
    /// The per-stream filter.
    type Filter: HttpFilter;

    /// Parses and validates the plugin configuration (Istio's `pluginConfig` as JSON), reporting
    /// every problem found. Called once per configuration, never on the request path.
    fn configure(raw: &[u8]) -> Result<Self, ConfigErrors>;

    /// A filter for a new stream.
    fn new_filter(self: &Rc<Self>) -> Self::Filter;

    /// How often [`Plugin::on_tick`] runs; `None` for never.
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work in the root context (refreshing keys, flushing batches).
    fn on_tick(self: &Rc<Self>) {}

    /// A callout sent with [`dispatch`] answered, failed or timed out. State it updates lives in
    /// `Cell`/`RefCell` fields: the plugin is shared with every stream.
    fn on_callout(self: &Rc<Self>, id: CalloutId, result: CalloutResult) {
        let _ = (id, result);
    }

    /// The host is removing the plugin (`proxy_on_done` on the root context): return true to
    /// let it go at once, or false to finish work first (a last flush of buffered records, say)
    /// and call [`done`] once finished; callout answers keep arriving meanwhile.
    ///
    /// In Envoy 1.40 this runs on every thread once the plugin's listener has drained after a
    /// configuration change or removal, and at shutdown. The unfinished plugin lives only as
    /// long as its VM: when another plugin configuration keeps the VM (a changed plugin
    /// configuration, or another listener with the same VM) its callouts complete; when the VM
    /// goes with it (its last listener removed, a new VM configuration or module, Envoy
    /// exiting) callouts dispatched here are cancelled.
    fn on_done(self: &Rc<Self>) -> bool {
        true
    }
}

/// Tells the host the plugin finished the work it delayed by returning false from
/// [`Plugin::on_done`]; the host then deletes it. `NotFound` when the host was not waiting.
pub fn done() -> Result<(), proxy_wasm::types::Status> {
    host::done()
}

/// Per-stream callbacks. Each returns what happens next; none can fail the VM.
#[allow(unused_variables)]
pub trait HttpFilter: 'static {
    /// Request headers arrived (`end_of_stream` when there is no body).
    fn on_request_headers(&mut self, stream: &mut Stream, end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// A chunk of request body arrived; `body_size` is what is buffered so far.
    fn on_request_body(&mut self, stream: &mut Stream, body_size: usize, end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// Request trailers arrived.
    fn on_request_trailers(&mut self, stream: &mut Stream) -> Flow {
        Flow::Continue
    }

    /// Response headers arrived from upstream (or from a local reply).
    fn on_response_headers(&mut self, stream: &mut Stream, end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// A chunk of response body arrived.
    fn on_response_body(&mut self, stream: &mut Stream, body_size: usize, end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// A callout dispatched with [`Stream::dispatch`] answered, failed or timed out.
    fn on_callout(&mut self, stream: &mut Stream, result: CalloutResult) -> Flow {
        Flow::Continue
    }

    /// The stream is complete: request and response are final (access-log time).
    fn on_log(&mut self, stream: &mut Stream) {}
}

/// Which half of the stream a paused callout belongs to, so the right one is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

/// The SDK's side of one stream: the pending callout and what the filter already did.
pub struct Stream {
    name: &'static str,
    phase: Phase,
    pending: Option<callout::Pending>,
    replied: bool,
    callout_elapsed: Option<Duration>,
}

impl Stream {
    fn new(name: &'static str) -> Self {
        Self { name, phase: Phase::Request, pending: None, replied: false, callout_elapsed: None }
    }

    /// In [`HttpFilter::on_callout`]: how long the callout being answered took, from dispatch to
    /// answer by the host clock; `None` unless the callout was [`Callout::timed`] (and the host
    /// has a clock).
    pub fn callout_elapsed(&self) -> Option<Duration> {
        self.callout_elapsed
    }

    /// Sends `callout`; its answer arrives in [`HttpFilter::on_callout`]. One callout at a time:
    /// a second one while the first is pending is refused with `BadArgument`.
    pub fn dispatch(&mut self, callout: &Callout<'_>) -> Result<(), CalloutError> {
        if self.pending.is_some() {
            return Err(CalloutError::Dispatch(proxy_wasm::types::Status::BadArgument));
        }
        let token = callout.dispatch().map_err(CalloutError::Dispatch)?;
        self.pending = Some(callout::Pending::new(token, callout));
        Ok(())
    }

    /// True once the filter sent a local reply on this stream.
    pub fn replied(&self) -> bool {
        self.replied
    }

    /// The name of the plugin that owns this stream.
    pub fn plugin_name(&self) -> &'static str {
        self.name
    }
}

/// Installs the logger and a panic hook that logs the panic at critical level; Envoy's log then
/// says why the VM stopped. Called by [`export!`].
pub fn init_logging(level: LogLevel) {
    logging::init(level);
    // Not the proxy-wasm hook, which unwraps the log call and so could panic while panicking.
    std::panic::set_hook(Box::new(|info| {
        let _ = host::log(LogLevel::Critical, &format!("panic: {info}"));
    }));
}

/// The root context the SDK registers for a [`Plugin`].
pub struct Root<P: Plugin> {
    plugin: Option<Rc<P>>,
}

impl<P: Plugin> Root<P> {
    /// An unconfigured root; `on_configure` fills it.
    pub fn new() -> Self {
        Self { plugin: None }
    }
}

impl<P: Plugin> Default for Root<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Context for Root<P> {
    fn on_done(&mut self) -> bool {
        match &self.plugin {
            Some(plugin) => plugin.on_done(),
            None => true,
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((id, pending)) = callout::take_root(token_id) else {
            log::warn!("{}: answer for unknown callout {token_id} ignored", P::NAME);
            return;
        };
        let result = pending.read(num_headers, body_size);
        if let Some(plugin) = &self.plugin {
            plugin.on_callout(id, result);
        }
    }
}

impl<P: Plugin> RootContext for Root<P> {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = match host::buffer(BufferType::PluginConfiguration, 0, MAX_CONFIG_BYTES) {
            Ok(raw) => raw,
            Err(status) => {
                log::error!("{}: cannot read plugin configuration: {status:?}", P::NAME);
                return false;
            }
        };
        match P::configure(&raw) {
            Ok(plugin) => {
                let plugin = Rc::new(plugin);
                if let Some(period) = plugin.tick_period() {
                    if let Err(status) = host::set_tick_period(period) {
                        log::error!("{}: cannot set tick period: {status:?}", P::NAME);
                        return false;
                    }
                }
                self.plugin = Some(plugin);
                true
            }
            Err(errors) => {
                log::error!("{}: {errors}", P::NAME);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.on_tick();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.plugin {
            Some(plugin) => Some(Box::new(StreamContext::<P> {
                filter: plugin.new_filter(),
                stream: Stream::new(P::NAME),
            })),
            // Envoy does not create streams for a plugin whose configure failed; if a host ever
            // does, refuse the request rather than let it through unfiltered.
            None => Some(Box::new(Unconfigured(P::NAME))),
        }
    }
}

struct StreamContext<P: Plugin> {
    filter: P::Filter,
    stream: Stream,
}

impl<P: Plugin> StreamContext<P> {
    fn apply(&mut self, flow: Flow) -> Action {
        match flow {
            Flow::Continue => Action::Continue,
            Flow::Pause => Action::Pause,
            Flow::Reply(reply) => {
                send_reply(P::NAME, &reply);
                self.stream.replied = true;
                Action::Pause
            }
        }
    }
}

fn send_reply(name: &str, reply: &LocalReply) {
    if let Err(status) = reply.send(name) {
        // Without a reply the stream would hang: reset it instead.
        log::warn!("{name}: local reply {} failed ({status:?}); resetting the stream", reply.status);
        let _ = host::reset_http_request();
    }
}

impl<P: Plugin> Context for StreamContext<P> {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let pending = match self.stream.pending.take() {
            Some(p) if p.token == token_id => p,
            other => {
                self.stream.pending = other;
                log::warn!("{}: answer for unknown callout {token_id} ignored", P::NAME);
                return;
            }
        };
        let result = pending.read(num_headers, body_size);
        self.stream.callout_elapsed = pending.elapsed.get();
        let flow = self.filter.on_callout(&mut self.stream, result);
        match flow {
            Flow::Continue => {
                let resumed = match self.stream.phase {
                    Phase::Request => host::resume_http_request(),
                    Phase::Response => host::resume_http_response(),
                };
                if let Err(status) = resumed {
                    log::warn!("{}: resuming the stream failed: {status:?}", P::NAME);
                }
            }
            Flow::Pause => {}
            Flow::Reply(reply) => {
                send_reply(P::NAME, &reply);
                self.stream.replied = true;
            }
        }
    }
}

impl<P: Plugin> HttpContext for StreamContext<P> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream.phase = Phase::Request;
        let flow = self.filter.on_request_headers(&mut self.stream, end_of_stream);
        self.apply(flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream.phase = Phase::Request;
        let flow = self.filter.on_request_body(&mut self.stream, body_size, end_of_stream);
        self.apply(flow)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.stream.phase = Phase::Request;
        let flow = self.filter.on_request_trailers(&mut self.stream);
        self.apply(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.stream.phase = Phase::Response;
        let flow = self.filter.on_response_headers(&mut self.stream, end_of_stream);
        self.apply(flow)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.stream.phase = Phase::Response;
        let flow = self.filter.on_response_body(&mut self.stream, body_size, end_of_stream);
        self.apply(flow)
    }

    fn on_log(&mut self) {
        self.filter.on_log(&mut self.stream);
    }
}

struct Unconfigured(&'static str);

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        send_reply(
            self.0,
            &LocalReply::new(500, "filter_not_configured", "the filter has no valid configuration"),
        );
        Action::Pause
    }
}

/// Registers a [`Plugin`] as the module's root context, with logging at `info` (or the level
/// given) and the panic hook installed.
///
/// ```ignore
/// gatewasm::export!(MyPlugin);
/// gatewasm::export!(MyPlugin, gatewasm::proxy_wasm::types::LogLevel::Debug);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        $crate::export!($plugin, $crate::proxy_wasm::types::LogLevel::Info);
    };
    ($plugin:ty, $level:expr) => {
        // A module of its own keeps the ABI entry point out of the filter's public docs.
        #[doc(hidden)]
        #[allow(missing_docs)]
        mod __gatewasm_entry {
            #[allow(unused_imports)]
            use super::*;
            $crate::proxy_wasm::main! {{
                $crate::init_logging($level);
                $crate::proxy_wasm::set_root_context(
                    |_| -> ::std::boxed::Box<dyn $crate::proxy_wasm::traits::RootContext> {
                        ::std::boxed::Box::new($crate::Root::<$plugin>::new())
                    },
                );
            }}
        }
    };
}
