//! The host's clock.
//!
//! `SystemTime::now()` inside the VM reads WASI's clock, which hosts may freeze or fake; Envoy's
//! `proxy_get_current_time_nanoseconds` is the time the proxy itself uses (and the one the test
//! emulator controls), so expiry checks and timeouts use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The host's wall-clock time; `None` when the host cannot tell.
pub fn now() -> Option<SystemTime> {
    crate::host::current_time().ok()
}

/// Seconds since the Unix epoch by the host's clock; `None` when the host cannot tell.
pub fn unix_seconds() -> Option<u64> {
    now().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs())
}

/// Time elapsed since `earlier` by the host's clock, zero if the clock went backwards.
pub fn since(earlier: SystemTime) -> Duration {
    now().and_then(|n| n.duration_since(earlier).ok()).unwrap_or_default()
}
