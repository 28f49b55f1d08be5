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
//! - hands each callback a handle to what it may touch: [`Stream`] for a request (headers,
//!   bodies, properties, callouts), [`Root`] for the plugin (metrics, shared data, background
//!   callouts, the clock); every host call goes through them, and none can panic;
//! - reads the request with one host call however many parts a filter looks at
//!   ([`Stream::request`]);
//! - sends local replies of one JSON shape ([`LocalReply`]);
//! - runs HTTP callouts ([`Stream::dispatch`]) and unary gRPC calls ([`Stream::dispatch_grpc`])
//!   and resumes or replies when they answer;
//! - flushes [`metrics::LocalCounter`]s on its own tick;
//! - runs the same callbacks on a fake host in unit tests ([`testing`]);
//! - logs through the `log` crate, and logs a panic at critical before the VM aborts.
//!
//! ```no_run
//! use std::rc::Rc;
//! use gatewasm::{config, ConfigErrors, Flow, HttpFilter, Plugin, Root, Stream};
//!
//! #[derive(serde::Deserialize, Default)]
//! struct Greeting { header: Option<String> }
//! impl config::Validate for Greeting {}
//!
//! impl Plugin for Greeting {
//!     const NAME: &'static str = "greeting";
//!     type Filter = Greeter;
//!     fn configure(raw: &[u8], _root: &Root) -> Result<Self, ConfigErrors> { config::parse(raw) }
//!     fn new_filter(self: &Rc<Self>) -> Greeter { Greeter(self.clone()) }
//! }
//!
//! struct Greeter(Rc<Greeting>);
//! impl HttpFilter for Greeter {
//!     fn on_request_headers(&mut self, stream: &mut Stream, _eos: bool) -> Flow {
//!         let name = self.0.header.as_deref().unwrap_or("x-hello");
//!         let _ = stream.request_headers().set(name, "world");
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
pub mod config;
mod context;
pub mod grpc;
pub mod host;
pub mod http;
mod logging;
pub mod matcher;
pub mod metrics;
pub mod reply;
pub mod request;
mod root;
mod stream;
pub mod testing;

#[cfg(test)]
mod robustness;

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::LogLevel;

pub use callout::{Callout, CalloutError, CalloutId, CalloutResponse, CalloutResult};
pub use config::{ConfigError, ConfigErrors};
#[doc(hidden)]
pub use context::RootContext;
pub use grpc::{GrpcCall, GrpcError, GrpcResult, GrpcStatus};
pub use reply::LocalReply;
pub use request::{HeaderSnapshot, Request};
pub use root::{Root, MAX_ROOT_CALLOUTS};
pub use stream::{HeaderMap, Stream};

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
    /// every problem found, and defines the plugin's metrics through `root`. Called once per
    /// configuration, never on the request path.
    fn configure(raw: &[u8], root: &Root) -> Result<Self, ConfigErrors>;

    /// A filter for a new stream.
    fn new_filter(self: &Rc<Self>) -> Self::Filter;

    /// How often [`Plugin::on_tick`] runs; `None` for never. (The SDK may tick more often for
    /// its own work, such as flushing local counters; the plugin's tick keeps this period.)
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work in the root context (refreshing keys, flushing batches).
    fn on_tick(self: &Rc<Self>, root: &Root) {
        let _ = root;
    }

    /// A callout sent with [`Root::dispatch`] answered, failed or timed out. State it updates
    /// lives in `Cell`/`RefCell` fields: the plugin is shared with every stream.
    fn on_callout(self: &Rc<Self>, root: &Root, id: CalloutId, result: CalloutResult) {
        let _ = (root, id, result);
    }

    /// A gRPC call sent with [`Root::dispatch_grpc`] answered, failed or timed out, with the id
    /// the dispatch returned. As [`Plugin::on_callout`], state it updates lives in
    /// `Cell`/`RefCell` fields.
    fn on_grpc_result(self: &Rc<Self>, root: &Root, id: CalloutId, result: GrpcResult) {
        let _ = (root, id, result);
    }

    /// The host is removing the plugin (`proxy_on_done` on the root context): return true to
    /// let it go at once, or false to finish work first (a last flush of buffered records, say)
    /// and call [`Root::done`] once finished; callout answers keep arriving meanwhile. Local
    /// counters are flushed just before this runs.
    ///
    /// In Envoy 1.40 this runs on every thread once the plugin's listener has drained after a
    /// configuration change or removal, and at shutdown. The unfinished plugin lives only as
    /// long as its VM: when another plugin configuration keeps the VM (a changed plugin
    /// configuration, or another listener with the same VM) its callouts complete; when the VM
    /// goes with it (its last listener removed, a new VM configuration or module, Envoy
    /// exiting) callouts dispatched here are cancelled.
    fn on_done(self: &Rc<Self>, root: &Root) -> bool {
        let _ = root;
        true
    }
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

    /// A gRPC call dispatched with [`Stream::dispatch_grpc`] answered, failed or timed out.
    /// `Continue` resumes whichever half of the stream was paused, as for an HTTP callout.
    fn on_grpc_result(&mut self, stream: &mut Stream, result: GrpcResult) -> Flow {
        Flow::Continue
    }

    /// The stream is complete: request and response are final (access-log time).
    fn on_log(&mut self, stream: &mut Stream) {}
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

/// Registers a [`Plugin`] as the module's entry, with logging at `info` (or the level given)
/// and the panic hook installed: compiled to `wasm32`, the proxy-wasm root context; compiled
/// natively, the plugin of the Envoy dynamic module (`lib<crate>.so`), chosen by the filter
/// configuration's `filter_name` (the plugin's [`Plugin::NAME`]).
///
/// Natively the hooks Envoy calls are the SDK's own (defined once, whatever links it); this
/// macro only registers the plugin with them when the library is loaded, so a binary that links
/// several filter crates (tests, a module serving several filters) has no duplicate symbols.
/// A native build must unwind on panic (the workspace's profiles do): the hooks catch a panic
/// and answer the request 500 instead of letting it abort Envoy.
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
        // A module of its own keeps the entry points out of the filter's public docs.
        #[doc(hidden)]
        #[allow(missing_docs)]
        mod __gatewasm_entry {
            #[allow(unused_imports)]
            use super::*;
            #[cfg(target_arch = "wasm32")]
            $crate::proxy_wasm::main! {{
                $crate::init_logging($level);
                $crate::proxy_wasm::set_root_context(
                    |_| -> ::std::boxed::Box<dyn $crate::proxy_wasm::traits::RootContext> {
                        ::std::boxed::Box::new($crate::RootContext::<$plugin>::new())
                    },
                );
            }}

            #[cfg(all(not(target_arch = "wasm32"), panic = "abort"))]
            compile_error!(
                "a native build must unwind on panic (`panic = \"unwind\"`), or a panic in a filter aborts Envoy"
            );

            /// Registers the plugin when the dynamic loader runs the library's initialisers
            /// (before Envoy calls `envoy_dynamic_module_on_program_init`).
            #[cfg(not(target_arch = "wasm32"))]
            #[used]
            #[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
            #[cfg_attr(not(target_vendor = "apple"), link_section = ".init_array")]
            static REGISTER: extern "C" fn() = {
                extern "C" fn register() {
                    // A panic must not unwind out of a loader initialiser.
                    let _ = ::std::panic::catch_unwind(|| {
                        $crate::host::envoy::register::<$plugin>($level);
                    });
                }
                register
            };
        }
    };
}
