//! [`Root`]: the handle a plugin reaches its host through outside any one request: metrics,
//! shared data, background callouts and gRPC calls, the clock and its own shutdown.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::types::{Bytes, Status};

use crate::callout::{self, Callout, CalloutError, CalloutId};
use crate::grpc::{self, GrpcCall, GrpcError};
use crate::host::Host;
use crate::metrics::Metrics;

/// Most root-context callouts (HTTP and gRPC together) in flight per VM; [`Root::dispatch`]
/// and [`Root::dispatch_grpc`] refuse more, so a plugin that dispatches on every tick while its
/// cluster hangs cannot grow this table without bound.
pub const MAX_ROOT_CALLOUTS: usize = 64;

/// The plugin's handle to its host, handed to [`crate::Plugin::configure`] and to every
/// plugin callback, and reachable from each stream ([`crate::Stream::root`]). Cloning it is
/// cheap (a reference count); clones are the same handle.
#[derive(Clone)]
pub struct Root(Rc<Shared>);

struct Shared {
    name: &'static str,
    host: Rc<dyn Host>,
    pending: RefCell<Vec<callout::Pending>>,
    pending_grpc: RefCell<Vec<grpc::Pending>>,
    metrics: Metrics,
}

impl Root {
    pub(crate) fn new(name: &'static str, host: Rc<dyn Host>) -> Self {
        let metrics = Metrics::new(Rc::clone(&host));
        Self(Rc::new(Shared {
            name,
            host,
            pending: RefCell::new(Vec::new()),
            pending_grpc: RefCell::new(Vec::new()),
            metrics,
        }))
    }

    /// The plugin's name ([`crate::Plugin::NAME`]).
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// The plugin's metrics: define them here (in [`crate::Plugin::configure`]) and keep the
    /// handles.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The host's wall clock; `None` when the host cannot tell.
    pub fn now(&self) -> Option<SystemTime> {
        self.0.host.current_time().ok()
    }

    /// Seconds since the Unix epoch by the host's clock; `None` when the host cannot tell.
    pub fn unix_seconds(&self) -> Option<u64> {
        self.now().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs())
    }

    /// Time elapsed since `earlier` by the host's clock, zero if the clock went backwards or
    /// cannot be read.
    pub fn since(&self, earlier: SystemTime) -> Duration {
        self.now().and_then(|n| n.duration_since(earlier).ok()).unwrap_or_default()
    }

    /// A property of the plugin's context (`["plugin_root_id"]`, `["node", "id"]`, ...);
    /// `None` when the host has none. A host error reads as absent, and is logged at debug.
    pub fn property(&self, path: &[&str]) -> Option<Bytes> {
        self.0.host.property(path).unwrap_or_else(|status| {
            log::debug!("reading property {path:?} failed: {status:?}");
            None
        })
    }

    /// A shared-data entry (shared by every VM of the same VM id, so by every worker) and its
    /// compare-and-swap version; `(None, None)` when absent.
    pub fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        self.0.host.shared_data(key)
    }

    /// Writes a shared-data entry; with `cas`, only if it is still at that version
    /// (`Err(CasMismatch)` otherwise).
    pub fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.0.host.set_shared_data(key, value, cas)
    }

    /// Whether this plugin instance gets [`crate::Plugin::on_tick`] and the answers to its own
    /// callouts: every proxy-wasm VM does; natively only the main thread's instance does, so
    /// work a worker's instance leaves for the tick must reach it (see [`Root::queue_push`]).
    pub fn ticks(&self) -> bool {
        self.0.host.ticks()
    }

    /// Hands `item` to the queue `name`, one per process natively, from an instance that does
    /// not tick to the one that does ([`Root::queue_drain`] in its `on_tick`); `Ok(false)` when
    /// the queue holds `capacity` items already. Only where [`Root::ticks`] is false:
    /// elsewhere `Err(NotFound)`, and no host call.
    pub fn queue_push(&self, name: &str, item: &[u8], capacity: usize) -> Result<bool, Status> {
        self.0.host.queue_push(name, item, capacity)
    }

    /// Takes every item of the queue `name`, oldest first (`Err(NotFound)` where every
    /// instance ticks: nothing is ever queued there).
    pub fn queue_drain(&self, name: &str) -> Result<Vec<Bytes>, Status> {
        self.0.host.queue_drain(name)
    }

    /// Sends `callout` from the plugin: the answer arrives in [`crate::Plugin::on_callout`]
    /// with the returned id. For background work (key refreshes, batch uploads); a callout for
    /// one request goes through [`crate::Stream::dispatch`] instead, since the host cancels a
    /// stream's callouts with the stream. Refused with `BadArgument` when
    /// [`MAX_ROOT_CALLOUTS`] are already in flight.
    ///
    /// Call it from the plugin's own callbacks: the host delivers an answer to the context
    /// that was running when the callout was sent.
    pub fn dispatch(&self, callout: &Callout<'_>) -> Result<CalloutId, CalloutError> {
        if self.in_flight() >= MAX_ROOT_CALLOUTS {
            return Err(CalloutError::Dispatch(Status::BadArgument));
        }
        let pending = callout::Pending::send(&*self.0.host, callout).map_err(CalloutError::Dispatch)?;
        let id = CalloutId(pending.token);
        self.0.pending.borrow_mut().push(pending);
        Ok(id)
    }

    /// Sends the unary gRPC `call` from the plugin: the answer arrives in
    /// [`crate::Plugin::on_grpc_result`] with the returned id. For background work, as
    /// [`Root::dispatch`]; refused with `Dispatch(BadArgument)` when [`MAX_ROOT_CALLOUTS`] are
    /// already in flight.
    pub fn dispatch_grpc(&self, call: &GrpcCall<'_>) -> Result<CalloutId, GrpcError> {
        if self.in_flight() >= MAX_ROOT_CALLOUTS {
            return Err(GrpcError::Dispatch(Status::BadArgument));
        }
        let pending = grpc::Pending::send(&*self.0.host, call)?;
        let id = CalloutId(pending.token);
        self.0.pending_grpc.borrow_mut().push(pending);
        Ok(id)
    }

    /// Number of the plugin's callouts (HTTP and gRPC) in flight.
    pub fn in_flight(&self) -> usize {
        self.0.pending.borrow().len() + self.0.pending_grpc.borrow().len()
    }

    /// Removes and returns the pending callout with `token`.
    pub(crate) fn take_callout(&self, token: u32) -> Option<callout::Pending> {
        let mut pending = self.0.pending.borrow_mut();
        let at = pending.iter().position(|c| c.token == token)?;
        Some(pending.swap_remove(at))
    }

    /// Removes and returns the pending gRPC call with `token`.
    pub(crate) fn take_grpc(&self, token: u32) -> Option<grpc::Pending> {
        let mut pending = self.0.pending_grpc.borrow_mut();
        let at = pending.iter().position(|c| c.token == token)?;
        Some(pending.swap_remove(at))
    }

    /// Tells the host the plugin finished the work it delayed by returning false from
    /// [`crate::Plugin::on_done`]; the host then deletes it. `NotFound` when the host was not
    /// waiting.
    pub fn done(&self) -> Result<(), Status> {
        self.0.host.done()
    }
}
