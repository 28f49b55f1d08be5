//! Runs a real Envoy (V8 Wasm runtime) with proxy-wasm filters built by this workspace in front
//! of Rust test upstreams, for plain synchronous `#[test]`s.
//!
//! ```no_run
//! use gatewasm_envoy::{EchoUpstream, EnvoyBuilder, Request, WasmFilter};
//!
//! let upstream = EchoUpstream::start()?;
//! let envoy = EnvoyBuilder::new()
//!     .wasm(WasmFilter::new(gatewasm_envoy::noop_filter_wasm()?).configuration("{}"))
//!     .upstream(upstream.addr())
//!     .start()?;
//! let response = envoy.send(&Request::get("/hello").header("x-a", "1"))?;
//! assert_eq!(response.status, 200);
//! assert_eq!(response.echo()?.header("x-a"), Some("1"));
//! # anyhow::Ok(())
//! ```
//!
//! See `README.md` next to this crate for the whole API.

pub mod auth_service;
pub mod bench;
mod client;
mod config;
mod grpc_upstream;
mod process;
pub mod registry;
mod runner;
mod upstream;

pub use client::{send, Echo, Request, Response};
pub use config::{
    duration, merge, Backend, BootstrapSpec, Cluster, HttpFilter, NativeFilter, Target, WasmFilter, BUNDLED,
    BUNDLE_VAR, HCM_STAT_PREFIX, NATIVE_REFUSAL, STRIP_MODULE_STAT_PREFIX, UPSTREAM_CLUSTER,
};
pub use gatewasm_paths::native_module;
pub use grpc_upstream::{grpc_frame, GrpcReply, GrpcUpstream};
pub use process::LocalProcess;
pub use runner::{
    envoy_binary, noop_filter_wasm, target_dir, validate_config_file, wasm_artifact, workspace_root, Envoy,
    EnvoyBuilder, Validation,
};
pub use upstream::{echo_reply, ClosedPort, EchoUpstream, FixedUpstream, Received, Reply, ScriptedUpstream};

/// Runs one test body once per [`Target`]: `for_each_target!(fn_name)` for a
/// `fn fn_name(target: Target)` defines the tests `fn_name::wasm` and `fn_name::native`. A case
/// a target cannot do is its own test, named for what differs, never a skipped run.
#[macro_export]
macro_rules! for_each_target {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                #[test]
                fn wasm() {
                    super::$body($crate::Target::Wasm);
                }

                #[test]
                fn native() {
                    super::$body($crate::Target::Native);
                }
            }
        )*
    };
}
