//! Runs a compiled Proxy-Wasm module (ABI 0.2.1, what the `proxy-wasm` Rust crate 0.2.x
//! targets) in wasmtime with a host that answers like Envoy's, so filter tests run in
//! milliseconds without an Envoy.
//!
//! ```no_run
//! use gatewasm_emulator::{Action, Emulator};
//!
//! # fn main() -> Result<(), gatewasm_emulator::Error> {
//! let emu = Emulator::load("target/wasm32-wasip1/release/probe_filter.wasm")
//!     .plugin_config(r#"{"header": "x-k"}"#)
//!     .property("plugin_name", "my_plugin")
//!     .build()?;
//! assert!(emu.configured());
//! let mut s = emu.stream();
//! let action = s.request_headers(&[(":method", "GET"), (":path", "/a"), (":authority", "example.com")], true)?;
//! assert_eq!(action, Action::Continue);
//! s.response_headers(&[(":status", "200")], true)?;
//! s.log()?;
//! # Ok(()) }
//! ```
//!
//! What the host does where Envoy's behaviour is not obvious is written next to each host call
//! in `host/` (one module per ABI area), from Envoy's source and from running the probe filter
//! in Envoy 1.40. Host calls the emulator does not implement (gRPC streams, foreign functions
//! other than `verify_signature`, and any unknown import) trap with a message naming the call: a
//! test never sees a pretend success.
//! See the README for the full list and the API.

pub mod abi;
pub mod cost;
mod emulator;
mod foreign;
pub mod gateway;
mod group;
mod grpc;
mod host;
pub mod wasi;

pub use abi::{Action, LogLevel, MetricType};
pub use emulator::{
    engine, load_module, load_module_bytes, load_modules, Emulator, EmulatorBuilder, PropertyPath, Stream,
};
pub use group::Group;
pub use grpc::{grpc_frame, GrpcResponse};
pub use host::{GrpcCall, HttpCall, LocalReply, LogEntry, Metric};

/// Errors from the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module could not be read, compiled or instantiated.
    #[error("cannot load the module: {0}")]
    Load(String),
    /// The module trapped (a Rust panic aborts with a trap; an unimplemented host call traps).
    /// `panic` holds the panic message the module logged, if any.
    #[error("the module trapped in {call}: {}", panic.as_deref().unwrap_or(trap))]
    Trap {
        /// The callback that was running.
        call: String,
        /// wasmtime's description of the trap.
        trap: String,
        /// The module's panic message (its critical-level log), if it logged one.
        panic: Option<String>,
    },
    /// The VM trapped earlier; like Envoy, a failed VM runs nothing more.
    #[error("the VM failed earlier and runs nothing more ({0})")]
    VmFailed(String),
    /// The test used the API in a way that cannot happen (e.g. an unknown call token).
    #[error("{0}")]
    Usage(String),
}

/// Host-call counts as [`Emulator::host_calls`] reports them, from `(import name, count)` pairs:
/// what a host-call test expects.
pub fn host_call_counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(name, count)| (name.to_string(), *count)).collect()
}

/// The built module of a package of the crate being tested (`gatewasm_paths`: this workspace's,
/// or a filter crate's outside it, found from `$CARGO_MANIFEST_DIR`): `$GATEWASM_WASM_DIR`, else
/// `<target>/wasm32-wasip1/release` of that crate's target directory (the rule the Envoy runner
/// and packaging follow too). A module missing or older than its sources is built first
/// (`cargo build --release --target wasm32-wasip1 -p <package>`, once per process, under a lock
/// parallel test processes share); a failed build is an error naming the command and why.
pub fn wasm_path(name: &str) -> Result<std::path::PathBuf, Error> {
    gatewasm_paths::wasm_module(name).map_err(|missing| Error::Load(missing.to_string()))
}

/// A builder for the package's module (found, and built when needed, by [`wasm_path`]) with `config` as
/// its plugin configuration: what a filter's tests start from before adding their clusters,
/// clock, properties or log level.
pub fn for_module(package: &str, config: impl AsRef<[u8]>) -> Result<EmulatorBuilder, Error> {
    Ok(Emulator::load(wasm_path(package)?).plugin_config(config))
}
