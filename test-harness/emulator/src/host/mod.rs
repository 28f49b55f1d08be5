//! The host side: state kept per VM, and the `env` imports with Envoy's semantics, one module per
//! ABI area, each registering its own imports with `import!`, which counts every call under the
//! import's own name.
//!
//! Where Envoy's answer is not obvious, the comment says what Envoy 1.40 did when the probe filter
//! (`test-harness/probe-filter`) made the same call (`probe.sh`), or which source it follows.

mod callouts;
mod foreign;
mod grpc;
mod headers;
mod import;
mod lifecycle;
mod memory;
mod metrics;
mod properties;
mod shared;
mod state;
mod stream;

pub(crate) use import::unimplemented_import;
pub(crate) use state::{AfterCall, Dir, Downstream, HeaderMap, HostState, Phase, StreamState, UpstreamModel};
pub use state::{GrpcCall, HttpCall, LocalReply, LogEntry, Metric};

use wasmtime::{Linker, Result};

/// Defines the `env` imports. gRPC streams (`proxy_grpc_stream`, `_send`, `_close`) are left
/// undefined on purpose: `Emulator` links every import it does not define to a stub that traps
/// naming the call.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    lifecycle::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    callouts::add_to_linker(linker)?;
    grpc::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    foreign::add_to_linker(linker)?;
    Ok(())
}
