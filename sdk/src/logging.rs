//! The `log` crate's records, written to the host's log through the ABI.
//!
//! The `proxy-wasm` crate's logger unwraps the host's answer, and its panic hook unwraps the log
//! call made while panicking; this one drops a line the host refuses instead.

use std::sync::atomic::{AtomicBool, Ordering};

use proxy_wasm::types::LogLevel;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the logger (once per VM) and sets the level below which records are dropped in the
/// VM, before any formatting or host call.
pub(crate) fn init(level: LogLevel) {
    if !INSTALLED.swap(true, Ordering::Relaxed) {
        // Fails only if another logger was installed first; that one then keeps logging.
        let _ = log::set_logger(&LOGGER);
    }
    log::set_max_level(match level {
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Critical => log::LevelFilter::Off,
    });
}

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = crate::host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
