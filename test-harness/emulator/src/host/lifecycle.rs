//! Logging, the clock and its ticks, the effective context, and `proxy_done`.

use super::import::import;
use super::memory::mem;
use super::state::{AfterCall, HostState};
use crate::abi::{status, LogLevel};
use crate::wasi::{read, write_u32, write_u64};
use wasmtime::{Linker, Result};

/// Registers the logging, clock and lifecycle imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_log", |c, level: u32, ptr: u32, len: u32| {
        let Some(level) = LogLevel::from_u32(level) else { return Ok(status::BAD_ARGUMENT) };
        let msg = mem!(&mut c, ptr, len);
        c.data_mut().log(level, String::from_utf8_lossy(&msg).into_owned());
        Ok(status::OK)
    })?;
    import!(linker, "proxy_get_log_level", |c, out: u32| {
        let l = c.data().log_level.as_u32();
        Ok(if write_u32(&mut c, out, l) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_get_current_time_nanoseconds", |c, out: u32| {
        let t = c.data().realtime_ns;
        Ok(if write_u64(&mut c, out, t) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_set_tick_period_milliseconds", |c, period: u32| {
        // Envoy (Wasm::setTimerPeriod): a new period restarts the timer from now; 0 stops it.
        // Ticks go to the root context whichever context set the period.
        let st = c.data_mut();
        st.tick_period_ms = period;
        st.next_tick = if period > 0 { Some(st.monotonic_ns + u64::from(period) * 1_000_000) } else { None };
        Ok(status::OK)
    })?;
    import!(linker, "proxy_set_effective_context", |c, id: u32| {
        let st = c.data_mut();
        if id == st.root_id || st.streams.contains_key(&id) {
            st.effective = Some(id);
            Ok(status::OK)
        } else {
            Ok(status::BAD_ARGUMENT)
        }
    })?;
    import!(linker, "proxy_done", |c| {
        // Envoy (WasmBase::done): Ok only while the plugin's root context waits in pending_done
        // (its on_done returned false); the root context is deleted after the call returns.
        let st = c.data_mut();
        if !st.root_pending_done {
            return Ok(status::NOT_FOUND);
        }
        st.root_pending_done = false;
        st.done_called = true;
        st.after.push(AfterCall::DeleteRoot);
        Ok(status::OK)
    })?;
    Ok(())
}
