//! gatewasm: panic-free building blocks for proxy-wasm HTTP filters, on top of the `proxy-wasm`
//! crate. The same filter source builds as a proxy-wasm module (`wasm32-wasip1`) and as a native
//! Envoy dynamic module (the host target, `lib<crate>.so`); the SDK hides which.
//!
//! This page is the reference: what runs when, what each callback's answer means, and what a
//! filter can reach. The SDK's README (`sdk/README.md`) has the configuration, matching, metrics
//! and deployment details that concern a gateway's operator as much as a filter's author.
//! `cargo doc -p gatewasm-sdk --open` builds and opens these pages.
//!
//! # Shape of a filter
//!
//! A filter is two types:
//! - a [`Plugin`]: the parsed, validated configuration and any state shared by all streams of a
//!   VM (one per Envoy worker), built once by [`Plugin::configure`];
//! - an [`HttpFilter`]: per-request state, created for each stream by [`Plugin::new_filter`]
//!   with an `Rc` of the plugin.
//!
//! [`export!`] wires them to the host. The SDK then
//! - rejects bad configuration when the plugin is configured, logging every problem with its
//!   field, so Envoy refuses the filter instead of running it half-configured;
//! - hands each callback a handle to what it may touch: [`Stream`] for a request, [`Root`] for
//!   the plugin; every host call goes through them, and none can panic;
//! - reads the request with one host call however many parts a filter looks at
//!   ([`Stream::request`]);
//! - sends local replies of one JSON shape ([`LocalReply`]);
//! - runs HTTP callouts and unary gRPC calls and resumes or replies when they answer;
//! - flushes [`metrics::LocalCounter`]s on its own tick;
//! - runs the same callbacks on a fake host in unit tests ([`testing`]);
//! - logs through the `log` crate, and logs a panic at critical (natively it also answers the
//!   request 500 and goes on serving).
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
//!
//! # `HttpFilter` callbacks
//!
//! Every callback has a default that does nothing and returns [`Flow::Continue`], so a filter
//! implements only those it needs. They run in this order on one stream, each at most once
//! except the body callbacks:
//!
//! | callback | runs when |
//! |---|---|
//! | [`on_request_headers`](HttpFilter::on_request_headers) | the request headers arrived; `end_of_stream` when the request has no body |
//! | [`on_request_body`](HttpFilter::on_request_body) | a chunk of request body arrived (once per chunk); `body_size` is what is buffered so far, read it with [`Stream::request_body`] |
//! | [`on_request_trailers`](HttpFilter::on_request_trailers) | the request trailers arrived (only a request that has them) |
//! | [`on_response_headers`](HttpFilter::on_response_headers) | the response headers arrived, from upstream or from a local reply (see below) |
//! | [`on_response_body`](HttpFilter::on_response_body) | a chunk of response body arrived; read it with [`Stream::response_body`] |
//! | [`on_callout`](HttpFilter::on_callout) | a callout sent with [`Stream::dispatch`] answered, failed or timed out |
//! | [`on_grpc_result`](HttpFilter::on_grpc_result) | a gRPC call sent with [`Stream::dispatch_grpc`] answered, failed or timed out |
//! | [`on_log`](HttpFilter::on_log) | the stream is complete (access-log time): request, response and properties are final; it returns nothing |
//!
//! Each callback but `on_log` returns a [`Flow`], what the stream does next:
//!
//! | `Flow` | from a headers, body or trailers callback | from `on_callout` / `on_grpc_result` |
//! |---|---|---|
//! | [`Continue`](Flow::Continue) | the request or response goes on to the next filter | the SDK resumes the half of the stream that was paused |
//! | [`Pause`](Flow::Pause) | a headers callback holds the stream until a callout or gRPC call answers (return it only with one pending); a body callback holds the body and has Envoy buffer it, so the next body callback sees everything so far | the stream stays paused: the filter sent another call |
//! | [`Reply`](Flow::Reply) | the SDK sends the [`LocalReply`]; from a request callback the request never goes upstream | the same, for the request (or response) that waited |
//!
//! A paused headers callback holds the body as well, so a body callback cannot let the
//! request go on before the call it waits for has answered; a filter that must read the body
//! before deciding calls [`Stream::let_body_through`] there. After a reply,
//! [`Stream::replied`] is true for the rest of the stream.
//!
//! **A filter's own local reply and its response callbacks.** A local reply passes through the
//! encode half of Envoy's filter chain. On proxy-wasm, Envoy 1.40 runs the replying filter's own
//! `on_response_headers` (and `on_response_body`) for it, as for any response
//! (`Context::encodeHeaders` has no guard for it); check [`Stream::replied`] there to tell the
//! filter's own answer from upstream's. As a native Envoy dynamic module it does not:
//! `DynamicModuleHttpFilter::encodeHeaders` returns at once once the module has sent a local
//! reply, so the replying filter sees no response callback for it (only `on_log`).
//! header-rewrite's Envoy tests show both. Responses from upstream or from Envoy's router (a
//! `direct_response`, a 503 without a healthy upstream) reach the response callbacks on both
//! targets.
//!
//! # `Plugin` callbacks
//!
//! | item | runs when |
//! |---|---|
//! | [`NAME`](Plugin::NAME) | names the plugin in logs, in response code details (`<name>_<code>`) and, natively, as the `filter_name` that selects it |
//! | [`configure`](Plugin::configure) | once per configuration, in the root context, never on the request path: parse the JSON ([`config::parse`] / [`config::parse_with`]) and define metrics through the [`Root`]. `Err` refuses the configuration: every error is logged and Envoy refuses the filter |
//! | [`new_filter`](Plugin::new_filter) | once per stream, for its [`HttpFilter`] |
//! | [`tick_period`](Plugin::tick_period) / [`on_tick`](Plugin::on_tick) | periodic work (refreshing keys, flushing batches) on every VM on proxy-wasm, on the main thread's instance only natively ([`Root::ticks`]) |
//! | [`on_callout`](Plugin::on_callout) / [`on_grpc_result`](Plugin::on_grpc_result) | a call sent with [`Root::dispatch`] / [`Root::dispatch_grpc`] answered, with the id the dispatch returned |
//! | [`on_done`](Plugin::on_done) | the host removes the plugin: `true` lets it go at once, `false` finishes work first and then calls [`Root::done`] (not native: Envoy does not wait for a module) |
//!
//! The plugin is shared by every stream of its VM through an `Rc`: state its callbacks change
//! lives in `Cell`/`RefCell` fields.
//!
//! # `Root` and `Stream`: what a filter can reach
//!
//! [`Root`] is the plugin's handle, given to `configure` and every plugin callback and reachable
//! from each stream ([`Stream::root`]); a cheap clone:
//! - [`Root::metrics`]: counters, gauges, histograms, labelled families (define them in
//!   `configure` and keep the handles);
//! - [`Root::shared_data`] / [`Root::set_shared_data`]: data shared by every VM of the module,
//!   with compare-and-swap versions;
//! - [`Root::dispatch`] / [`Root::dispatch_grpc`]: background calls, at most
//!   [`MAX_ROOT_CALLOUTS`] in flight;
//! - [`Root::now`], [`Root::unix_seconds`], [`Root::since`]: the host's clock;
//! - [`Root::property`], [`Root::ticks`], [`Root::queue_push`] / [`Root::queue_drain`] (work a
//!   native worker leaves for the ticking instance), [`Root::done`].
//!
//! [`Stream`] is one request's handle, given to every [`HttpFilter`] callback:
//! - [`Stream::request`]: the request (method, host, path, query, cookies, headers) read with
//!   one host call and kept for the rest of the callback;
//! - [`Stream::request_headers`], [`Stream::response_headers`] and the trailers: a
//!   [`HeaderMap`] to read or change (`get`, `get_bytes`, `snapshot`, `set`, `add`, `remove`,
//!   and their byte forms);
//! - [`Stream::request_body`] / [`Stream::response_body`]: the body buffered so far;
//! - [`Stream::dispatch`] / [`Stream::dispatch_grpc`]: one HTTP callout and one gRPC call at a
//!   time, answered in the filter's `on_callout` / `on_grpc_result`, cancelled with the stream;
//!   [`Stream::callout_elapsed`] and [`Stream::callout_body`] there;
//! - [`Stream::property`] (Envoy's attributes: `["response", "code"]`, ...),
//!   [`Stream::foreign_function`], [`Stream::now`], [`Stream::let_body_through`],
//!   [`Stream::replied`], [`Stream::root`].
//!
//! # Callouts and gRPC calls
//!
//! An HTTP callout is a [`Callout`] (cluster, method, path, authority, headers, body, timeout,
//! a bound on the answer's size); its answer is a [`CalloutResult`]: a [`CalloutResponse`]
//! (status, headers, body) or a [`CalloutError`] (`Timeout`, `Failed`, `Dispatch`). A gRPC call
//! is a [`GrpcCall`] (cluster, service, method, metadata, the serialized request message); its
//! answer is a [`GrpcResult`]: the response message's bytes or a [`GrpcError`]. The SDK carries
//! bytes only, so no protobuf library lands in a module that does not want one. The same answer
//! gives the same result on both targets; [`callout`] and [`grpc`] say how each of Envoy's
//! failures is reported. A stream's call is sent with [`Stream::dispatch`] or
//! [`Stream::dispatch_grpc`] from a callback that then returns [`Flow::Pause`]; the answer's
//! callback returns the next [`Flow`]. A plugin's background call is sent with [`Root::dispatch`]
//! or [`Root::dispatch_grpc`] and answered in [`Plugin::on_callout`] or
//! [`Plugin::on_grpc_result`] with its [`CalloutId`].
//!
//! # Metrics
//!
//! [`metrics::Metrics`] (from [`Root::metrics`]) defines each metric once, in `configure`:
//! [`counter`](metrics::Metrics::counter), [`gauge`](metrics::Metrics::gauge),
//! [`histogram`](metrics::Metrics::histogram), [`local_counter`](metrics::Metrics::local_counter)
//! (counted in the VM, flushed by the SDK every [`metrics::FLUSH_PERIOD`]: no host call per
//! request), and labelled [`family`](metrics::Metrics::family) /
//! [`shared_family`](metrics::Metrics::shared_family) with a hard cap on their series (per VM,
//! or over every VM with a [`metrics::SharedCap`]). Labels become Prometheus labels (the
//! [`metrics`] module shows the Envoy `stats_tags` they need on proxy-wasm; natively they are
//! real labels). A metric the host refuses to define is logged once and counts nothing.
//!
//! # Configuration
//!
//! [`config::parse`] reads the JSON configuration into a typed struct, reports every unknown
//! field with its JSON path and stops at the first type error, naming its path and the value
//! (`` `rules[0].limits[1].token_bucket.rate`: invalid type: string "fast", expected u64 ``);
//! [`config::Validate`] (or the build step of [`config::parse_with`]) records every further
//! problem with its field and value. [`matcher`] compiles the request conditions every filter
//! with rules shares.
//!
//! # Testing
//!
//! [`testing::Harness`] configures a plugin on a [`testing::FakeHost`] through the SDK's own
//! root and stream contexts, so a native unit test drives the filter's real callbacks:
//! [`Harness::stream`](testing::Harness::stream) starts a request whose events
//! ([`request_headers`](testing::FakeStream::request_headers),
//! [`answer`](testing::FakeStream::answer), ...) return the host [`testing::Action`], and whose
//! accessors show what the filter did ([`reply`](testing::FakeStream::reply),
//! [`callout`](testing::FakeStream::callout), headers, metrics, host calls counted). The fake
//! host answers as Envoy does where a filter can tell; what only Envoy can show stays in the
//! emulator and Envoy tests.
//!
//! # Targets
//!
//! `cargo build --release --target wasm32-wasip1 -p <crate>` gives the proxy-wasm module,
//! `cargo build --release -p <crate>` the native Envoy dynamic module. Natively each worker
//! thread gets its own plugin instance (as each gets a VM on proxy-wasm), every hook catches a
//! panic and answers that request 500, and the differences left are listed in the SDK's README
//! ("Two targets").

// Every public item is documented: this page and its items are the SDK's reference.
#![warn(missing_docs)]

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

    /// Response headers arrived from upstream, or from a local reply: on proxy-wasm also the
    /// filter's own ([`Stream::replied`] tells), natively not (see the crate docs).
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
