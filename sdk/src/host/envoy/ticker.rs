//! Ticks for the main thread's plugin: Envoy 1.40 gives a dynamic module no timer, but a
//! configuration scheduler whose events run on the main thread
//! (`on_http_filter_config_scheduled`). A module thread sleeps for the period and commits one
//! event per tick; the scheduler is deleted (and the thread stopped) before the configuration
//! goes, under the lock the thread commits under, so no commit can use a deleted scheduler.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use proxy_wasm::types::Status;

use super::abi::{self, ConfigSchedulerPtr};
use super::ConfigShared;

/// The event id of a tick.
pub(super) const TICK: u64 = 1;

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
        .name(format!("gatewasm-tick-{}", config.name))
        .spawn(move || run(&shared, period))
        .map_err(|_| Status::InternalFailure);
    let thread = match thread {
        Ok(thread) => thread,
        Err(status) => {
            Ticker { state, thread: None }.stop();
            return Err(status);
        }
    };
    *slot = Some(Ticker { state, thread: Some(thread) });
    Ok(())
}

fn run(state: &(Mutex<State>, Condvar), period: Duration) {
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
            unsafe { (api.http_filter_config_scheduler_commit)(scheduler.0, TICK) };
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
