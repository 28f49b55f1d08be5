//! Periodic work on the main thread: Envoy 1.40 gives a dynamic module no timer, but a
//! configuration scheduler whose events run on the main thread
//! (`on_http_filter_config_scheduled`). A module thread sleeps for the period and commits one
//! event per period; the scheduler is deleted (and the thread stopped) before the configuration
//! goes, under the lock the thread commits under, so no commit can use a deleted scheduler.
//! Two such events exist: the main-thread plugin's ticks, when it asks for them, and the flush
//! of the counters workers count in the module (see `metrics`), always.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use proxy_wasm::types::Status;

use super::abi::{self, ConfigSchedulerPtr};
use super::ConfigShared;

/// The event id of a plugin tick.
pub(super) const TICK: u64 = 1;
/// The event id of a counter flush.
pub(super) const FLUSH: u64 = 2;
/// How often counted increments reach Envoy: as often as the Wasm target's local counters.
pub(super) const FLUSH_PERIOD: Duration = Duration::from_secs(1);

struct Scheduler(ConfigSchedulerPtr);

// SAFETY: Envoy's configuration scheduler may be committed from any thread (that is its
// purpose); it is deleted on the main thread, under the same lock as every commit.
unsafe impl Send for Scheduler {}

#[derive(Default)]
struct State {
    scheduler: Option<Scheduler>,
    stopped: bool,
}

/// A running tick thread.
pub(super) struct Ticker {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Ticks the configuration's main-thread plugin every `period` (zero stops it).
pub(super) fn set(config: &ConfigShared, period: Duration) -> Result<(), Status> {
    let mut slot = config.ticker.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(old) = slot.take() {
        old.stop();
    }
    if period.is_zero() {
        return Ok(());
    }
    *slot = Some(start(config, TICK, period)?);
    Ok(())
}

/// Starts the configuration's counter flush (once, while it loads).
pub(super) fn start_flush(config: &ConfigShared) -> Result<(), Status> {
    let mut slot = config.flusher.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = Some(start(config, FLUSH, FLUSH_PERIOD)?);
    }
    Ok(())
}

/// A thread committing `event` to a new scheduler of the configuration every `period`.
fn start(config: &ConfigShared, event: u64, period: Duration) -> Result<Ticker, Status> {
    let api = super::api()?;
    // SAFETY: the configuration is live (its plugin is being configured on the main thread).
    let scheduler = unsafe { (api.http_filter_config_scheduler_new)(config.envoy) };
    if scheduler.is_null() {
        return Err(Status::InternalFailure);
    }
    let state = Arc::new((
        Mutex::new(State { scheduler: Some(Scheduler(scheduler)), stopped: false }),
        Condvar::new(),
    ));
    let shared = Arc::clone(&state);
    let thread = std::thread::Builder::new()
        .name(format!("gatewasm-{}-{}", if event == TICK { "tick" } else { "flush" }, config.name))
        .spawn(move || run(&shared, event, period))
        .map_err(|_| Status::InternalFailure);
    match thread {
        Ok(thread) => Ok(Ticker { state, thread: Some(thread) }),
        Err(status) => {
            Ticker { state, thread: None }.stop();
            Err(status)
        }
    }
}

fn run(state: &(Mutex<State>, Condvar), event: u64, period: Duration) {
    let (lock, wake) = state;
    let mut guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let (next, _) = wake.wait_timeout(guard, period).unwrap_or_else(PoisonError::into_inner);
        guard = next;
        if guard.stopped {
            return;
        }
        if let (Some(scheduler), Some(api)) = (&guard.scheduler, abi::callbacks()) {
            // SAFETY: the scheduler is live: it is deleted only under this lock, after which
            // `stopped` is set and this loop ends.
            unsafe { (api.http_filter_config_scheduler_commit)(scheduler.0, event) };
        }
    }
}

impl Ticker {
    /// Stops the thread and deletes the scheduler (on the main thread).
    pub(super) fn stop(mut self) {
        let (lock, wake) = &*self.state;
        {
            let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            state.stopped = true;
            if let (Some(scheduler), Some(api)) = (state.scheduler.take(), abi::callbacks()) {
                // SAFETY: created by `scheduler_new` for a configuration still live, deleted once.
                unsafe { (api.http_filter_config_scheduler_delete)(scheduler.0) };
            }
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
