//! The host a filter runs in, as one trait: every call the SDK makes into the proxy goes through
//! a [`Host`], and every host status comes back as a `Result`, never a panic.
//!
//! Filters never see a `Host`: they reach the proxy through the handles the SDK passes to each
//! callback ([`crate::Stream`] for a request, [`crate::Root`] for the plugin). The SDK builds
//! those handles on [`Abi`] in a Wasm module (the proxy-wasm ABI 0.2.1) and on
//! [`crate::testing::FakeHost`] in unit tests, so a filter's callbacks run unchanged on either;
//! natively, `envoy::EnvoyHost` implements it on Envoy's dynamic-module ABI, so the same filter
//! also builds as an Envoy dynamic module.

mod abi;
#[cfg(not(target_arch = "wasm32"))]
pub mod envoy;
mod pairs;

use std::time::{Duration, SystemTime};

use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

#[cfg(target_arch = "wasm32")]
pub(crate) use abi::log;
pub use abi::Abi;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use envoy::log;
pub use pairs::{check_map, deserialize_pairs, is_well_formed, serialize_pairs, MapCheck, PairsIter};

/// Which half of a stream a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// The request (client to upstream).
    Request,
    /// The response (upstream to client).
    Response,
}

/// What the SDK asks of the proxy. Each method is one host call; errors are the host's status.
/// The calls that act on "the current stream" act on the stream whose callback is running (the
/// ABI has no stream argument: the host tracks which context is current).
pub trait Host {
    /// One header's value as bytes; `Ok(None)` when the header is absent. Repeated headers: the
    /// first value (Envoy's behaviour).
    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status>;
    /// Every header of a map in the ABI's serialized form (see [`PairsIter`]).
    fn header_pairs(&self, map: MapType) -> Result<Bytes, Status>;
    /// Appends a header (a second value when the name exists).
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status>;
    /// Sets a header, replacing every existing value (adding it when absent).
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status>;
    /// Removes every value of a header; removing an absent header succeeds.
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status>;
    /// Up to `max` bytes of a buffer from `start`; empty when the buffer is absent or empty.
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status>;
    /// A property (`request.id`, `source.address`, ...) by path segments; `Ok(None)` when
    /// unknown.
    fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status>;
    /// Calls a function the host registered by name; `Err(NotFound)` when it has none.
    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Bytes, Status>;
    /// Sends a local reply on the current stream; `details` is Envoy's
    /// `%RESPONSE_CODE_DETAILS%`.
    fn send_local_response(
        &self,
        status: u32,
        details: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), Status>;
    /// Sends an HTTP callout to `cluster` and returns its token; the answer is delivered to the
    /// context that sent it.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status>;
    /// Sends the unary gRPC `call` (`/<service>/<method>` on its cluster, its metadata as
    /// initial metadata, its message framed by the host) and returns its token; the answer is
    /// delivered to the context that sent it: the message (status 0 and its size, read from
    /// `BufferType::GrpcReceiveBuffer`) or the call's close (a status, its message from
    /// [`Host::grpc_status`]). `ParseFailure` when the cluster is unknown (Envoy's answer). A
    /// host that reads the answer itself keeps at most the call's `max_response_bytes` of the
    /// message (the SDK refuses a longer one).
    fn dispatch_grpc_call(&self, call: &crate::grpc::GrpcCall<'_>) -> Result<u32, Status>;
    /// The status code and message (`grpc-message`, as the service sent it) of the gRPC call
    /// whose close is being delivered.
    fn grpc_status(&self) -> Result<(u32, Bytes), Status>;
    /// Declares a labelled metric family before its series are defined (in `configure`): a host
    /// with real labels defines it there; one whose names carry the labels (proxy-wasm) has
    /// nothing to do, and makes no call.
    fn define_family(&self, kind: MetricType, name: &str, labels: &[&str]) -> Result<(), Status> {
        let _ = (kind, name, labels);
        Ok(())
    }
    /// Whether this plugin instance gets ticks and the answers to its own callouts: every
    /// proxy-wasm VM does; a native module's worker instances do not (only the main thread's
    /// instance ticks). Not a host call.
    fn ticks(&self) -> bool {
        true
    }
    /// Appends `item` to the queue `name`, shared by every plugin instance of the process,
    /// unless it holds `capacity` items already (`Ok(false)`). For a host whose instances do not
    /// all tick (see [`Host::ticks`]); others have no such queue (`NotFound`, no call).
    fn queue_push(&self, name: &str, item: &[u8], capacity: usize) -> Result<bool, Status> {
        let _ = (name, item, capacity);
        Err(Status::NotFound)
    }
    /// Takes every item of the queue `name`, oldest first (see [`Host::queue_push`]).
    fn queue_drain(&self, name: &str) -> Result<Vec<Bytes>, Status> {
        let _ = name;
        Err(Status::NotFound)
    }
    /// Whether the SDK should batch local counters in the module and flush them on a tick
    /// (where a host call crosses a VM boundary), or send each update at once. Not a host call.
    fn batches_counters(&self) -> bool {
        true
    }
    /// Defines a metric (or finds the one of that name) and returns its id.
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    /// Adds `offset` to a counter or gauge.
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status>;
    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    /// A shared-data entry and its compare-and-swap version; `(None, None)` when absent.
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status>;
    /// Writes a shared-data entry; with `cas`, only if it is still at that version
    /// (`Err(CasMismatch)` otherwise).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
    /// Asks for a tick every `period` (zero stops it).
    fn set_tick_period(&self, period: Duration) -> Result<(), Status>;
    /// The host's wall clock (the one the proxy uses, which tests can move).
    fn current_time(&self) -> Result<SystemTime, Status>;
    /// Tells the host a plugin that delayed its shutdown has finished.
    fn done(&self) -> Result<(), Status>;
    /// Writes a line to the host's log.
    fn log(&self, level: LogLevel, message: &str) -> Result<(), Status>;
    /// Lets a paused half of the current stream go on.
    fn resume(&self, half: Half) -> Result<(), Status>;
    /// Resets the current stream (the client sees it end without an answer).
    fn reset(&self) -> Result<(), Status>;
    /// Makes the pause the current headers callback returns hold the headers only, so the body
    /// still reaches the filter's body callbacks (to buffer it before a callout). On proxy-wasm
    /// the host's configuration decides (Envoy's `allow_on_headers_stop_iteration`): nothing
    /// to do here.
    fn let_body_through(&self) -> Result<(), Status> {
        Ok(())
    }
}
