//! The SDK's own bindings to Envoy's dynamic-module ABI (`v0.2.0`, Envoy 1.40): the `#[repr(C)]`
//! types, and the subset of `envoy_dynamic_module_callback_*` functions the SDK calls.
//!
//! Every declaration was taken from Envoy's `source/extensions/dynamic_modules/abi/abi.h` (the
//! version nearest 1.40), checked against the symbols the Envoy 1.40 binary exports
//! (`nm -D --defined-only`), and is exercised by a test that runs in Envoy 1.40: a wrong
//! signature is undefined behaviour, not an error, so a callback no test calls is not bound here.
//!
//! The callbacks are resolved by name from the process Envoy loaded the module into, once, in
//! `envoy_dynamic_module_on_program_init` ([`load`]): a name Envoy does not export makes that hook
//! return null, which aborts the load with Envoy's "returned null" error and a log line naming the
//! callback, as cleanly as an undefined symbol would. Resolving at run time rather than linking
//! the names keeps every native binary that links the SDK (unit tests, the emulator) free of
//! undefined symbols; outside Envoy every call reports that no host is there.

use std::ffi::c_void;
use std::sync::OnceLock;

/// The ABI version this SDK is written against; Envoy 1.40 logs "ABI version v0.2.0 matched".
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// Envoy's `DynamicModuleHttpFilter` of one stream.
pub type FilterEnvoyPtr = *mut c_void;
/// Envoy's `DynamicModuleHttpFilterConfig`.
pub type ConfigEnvoyPtr = *mut c_void;
/// Envoy's scheduler for a filter configuration (owned by the module once created).
pub type ConfigSchedulerPtr = *mut c_void;

/// Bytes owned by Envoy (`envoy_dynamic_module_type_envoy_buffer`): valid until the hook
/// returns or the next mutation, not NUL-terminated, not necessarily UTF-8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    /// Start of the bytes; null for none.
    pub ptr: *const u8,
    /// Number of bytes.
    pub length: usize,
}

impl EnvoyBuffer {
    /// An empty buffer for Envoy to fill.
    pub const EMPTY: Self = Self { ptr: std::ptr::null(), length: 0 };

    /// The bytes as a slice.
    ///
    /// # Safety
    /// Envoy must have filled the buffer in the running hook, with no mutation since.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: per this function's contract, Envoy's buffer is live for `length` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// Bytes owned by the module (`envoy_dynamic_module_type_module_buffer`); Envoy copies them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    /// Start of the bytes; null for none.
    pub ptr: *const u8,
    /// Number of bytes.
    pub length: usize,
}

impl ModuleBuffer {
    /// A null buffer (for `http_set_header`, "remove the header").
    pub const NULL: Self = Self { ptr: std::ptr::null(), length: 0 };

    /// Borrows `bytes` for one call.
    pub fn of(bytes: &[u8]) -> Self {
        Self { ptr: bytes.as_ptr(), length: bytes.len() }
    }
}

/// A header owned by the module (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    /// Name bytes.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

impl ModuleHttpHeader {
    /// Borrows a name and a value for one call.
    pub fn of(key: &[u8], value: &[u8]) -> Self {
        Self {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// A header owned by Envoy (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    /// Name bytes.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

impl EnvoyHttpHeader {
    /// An empty entry for Envoy to fill.
    pub const EMPTY: Self =
        Self { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };

    /// Name and value as slices.
    ///
    /// # Safety
    /// Envoy must have filled the entry in the running hook, with no mutation since.
    pub unsafe fn pair<'a>(&self) -> (&'a [u8], &'a [u8]) {
        let key = EnvoyBuffer { ptr: self.key_ptr, length: self.key_length };
        let value = EnvoyBuffer { ptr: self.value_ptr, length: self.value_length };
        // SAFETY: forwarded from this function's contract.
        unsafe { (key.as_slice(), value.as_slice()) }
    }
}

/// `envoy_dynamic_module_type_http_header_type`: which header map of a stream.
pub mod header_type {
    /// Request headers.
    pub const REQUEST_HEADERS: u32 = 0;
    /// Request trailers.
    pub const REQUEST_TRAILERS: u32 = 1;
    /// Response headers.
    pub const RESPONSE_HEADERS: u32 = 2;
    /// Response trailers.
    pub const RESPONSE_TRAILERS: u32 = 3;
}

/// `envoy_dynamic_module_type_http_body_type`: which body of a stream.
pub mod body_type {
    /// The request data of the running body hook.
    pub const RECEIVED_REQUEST: u32 = 0;
    /// The request data buffered so far.
    pub const BUFFERED_REQUEST: u32 = 1;
    /// The response data of the running body hook.
    pub const RECEIVED_RESPONSE: u32 = 2;
    /// The response data buffered so far.
    pub const BUFFERED_RESPONSE: u32 = 3;
}

/// `envoy_dynamic_module_type_log_level`.
pub mod log_level {
    /// Trace.
    pub const TRACE: u32 = 0;
    /// Debug.
    pub const DEBUG: u32 = 1;
    /// Info.
    pub const INFO: u32 = 2;
    /// Warn.
    pub const WARN: u32 = 3;
    /// Error.
    pub const ERROR: u32 = 4;
    /// Critical.
    pub const CRITICAL: u32 = 5;
}

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub mod callout_init {
    /// The callout was sent.
    pub const SUCCESS: u32 = 0;
    /// `:method`, `:path` or host missing.
    pub const MISSING_REQUIRED_HEADERS: u32 = 1;
    /// No cluster of that name.
    pub const CLUSTER_NOT_FOUND: u32 = 2;
}

/// `envoy_dynamic_module_type_http_stream_reset_reason` is passed to the stream reset hooks;
/// Envoy 1.40 always passes `LocalReset` (2), whatever the cause, so the SDK does not read it.
pub type StreamResetReason = u32;

/// `envoy_dynamic_module_type_http_callout_result`.
pub mod callout_result {
    /// An answer arrived.
    pub const SUCCESS: u32 = 0;
}

/// `envoy_dynamic_module_type_metrics_result`.
pub mod metrics_result {
    /// Done.
    pub const SUCCESS: u32 = 0;
}

/// Hook return values (`envoy_dynamic_module_type_on_http_filter_*_status`): the first two
/// values are the same for headers, bodies and trailers of both directions.
pub mod status {
    /// Continue (`FilterHeadersStatus::Continue`, `FilterDataStatus::Continue`, ...).
    pub const CONTINUE: u32 = 0;
    /// Stop iteration (headers and trailers: `StopIteration`; bodies: `StopIterationAndBuffer`).
    pub const STOP: u32 = 1;
    /// Headers only: `StopAllIterationAndWatermark`: the body waits (buffered up to the
    /// watermark) until the filter continues, as Envoy's Wasm filter holds it.
    pub const STOP_ALL_WATERMARK: u32 = 4;
}

/// Declares the callback table: one field per callback, resolved by its exported name.
macro_rules! callbacks {
    ($( $(#[$doc:meta])* $field:ident : fn($($arg:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        /// Envoy's callbacks, resolved from the Envoy process.
        #[allow(clippy::type_complexity)]
        pub struct Callbacks {
            $( $(#[$doc])* pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Callbacks {
            /// Resolves every callback; `Err` names the first one this Envoy does not export.
            fn resolve() -> Result<Self, &'static str> {
                Ok(Self {
                    $( $field: {
                        const NAME: &str = concat!("envoy_dynamic_module_callback_", stringify!($field), "\0");
                        // SAFETY: `NAME` is NUL-terminated; dlsym only reads it.
                        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, NAME.as_ptr().cast()) };
                        if symbol.is_null() {
                            return Err(NAME.trim_end_matches('\0'));
                        }
                        // SAFETY: the symbol is Envoy's function of that name, whose C signature
                        // is the one declared here (checked against Envoy 1.40, see the module
                        // docs); a data pointer and a function pointer have one size on every
                        // platform Envoy runs on.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(symbol)
                        }
                    }, )*
                })
            }
        }
    };
}

callbacks! {
    /// `void log(log_level, module_buffer message)`.
    log: fn(u32, ModuleBuffer);
    /// `bool http_get_header(filter, header_type, module_buffer key, envoy_buffer* result,
    /// size_t index, size_t* optional_size)`.
    http_get_header: fn(FilterEnvoyPtr, u32, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool;
    /// `size_t http_get_headers_size(filter, header_type)`.
    http_get_headers_size: fn(FilterEnvoyPtr, u32) -> usize;
    /// `bool http_get_headers(filter, header_type, envoy_http_header* result)`.
    http_get_headers: fn(FilterEnvoyPtr, u32, *mut EnvoyHttpHeader) -> bool;
    /// `bool http_add_header(filter, header_type, module_buffer key, module_buffer value)`.
    http_add_header: fn(FilterEnvoyPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;
    /// `bool http_set_header(filter, header_type, module_buffer key, module_buffer value)`; a
    /// null value removes the header.
    http_set_header: fn(FilterEnvoyPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;
    /// `void http_send_response(filter, uint32_t status, module_http_header* headers,
    /// size_t headers_size, module_buffer body, module_buffer details)`.
    http_send_response: fn(FilterEnvoyPtr, u32, *mut ModuleHttpHeader, usize, ModuleBuffer, ModuleBuffer);
    /// `size_t http_get_body_chunks_size(filter, body_type)`.
    http_get_body_chunks_size: fn(FilterEnvoyPtr, u32) -> usize;
    /// `bool http_get_body_chunks(filter, body_type, envoy_buffer* result)`.
    http_get_body_chunks: fn(FilterEnvoyPtr, u32, *mut EnvoyBuffer) -> bool;
    /// `size_t http_get_body_size(filter, body_type)`: the bytes of that body, 0 when absent.
    http_get_body_size: fn(FilterEnvoyPtr, u32) -> usize;
    /// `bool http_filter_get_attribute_string(filter, attribute_id, envoy_buffer* result)`.
    http_filter_get_attribute_string: fn(FilterEnvoyPtr, u32, *mut EnvoyBuffer) -> bool;
    /// `bool http_filter_get_attribute_int(filter, attribute_id, uint64_t* result)`.
    http_filter_get_attribute_int: fn(FilterEnvoyPtr, u32, *mut u64) -> bool;
    /// `bool http_filter_get_attribute_bool(filter, attribute_id, bool* result)`.
    http_filter_get_attribute_bool: fn(FilterEnvoyPtr, u32, *mut bool) -> bool;
    /// `void http_clear_route_cache(filter)`.
    http_clear_route_cache: fn(FilterEnvoyPtr);
    /// `void http_filter_continue_decoding(filter)`.
    http_filter_continue_decoding: fn(FilterEnvoyPtr);
    /// `void http_filter_continue_encoding(filter)`.
    http_filter_continue_encoding: fn(FilterEnvoyPtr);
    /// `http_callout_init_result http_filter_http_callout(filter, uint64_t* callout_id_out,
    /// module_buffer cluster, module_http_header* headers, size_t headers_size,
    /// module_buffer body, uint64_t timeout_milliseconds)`.
    http_filter_http_callout: fn(FilterEnvoyPtr, *mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, u64) -> u32;
    /// `metrics_result http_filter_config_define_counter(config, module_buffer name,
    /// module_buffer* label_names, size_t label_names_length, size_t* id)`.
    http_filter_config_define_counter: fn(ConfigEnvoyPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    /// The same for a gauge.
    http_filter_config_define_gauge: fn(ConfigEnvoyPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    /// The same for a histogram.
    http_filter_config_define_histogram: fn(ConfigEnvoyPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    /// `metrics_result http_filter_config_increment_counter(config, size_t id,
    /// module_buffer* label_values, size_t label_values_length, uint64_t value)`.
    http_filter_config_increment_counter: fn(ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    /// The same shape: adds to a gauge.
    http_filter_config_increment_gauge: fn(ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    /// The same shape: subtracts from a gauge.
    http_filter_config_decrement_gauge: fn(ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    /// The same shape: sets a gauge.
    http_filter_config_set_gauge: fn(ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    /// The same shape: records a histogram value.
    http_filter_config_record_histogram_value: fn(ConfigEnvoyPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    /// `http_filter_config_scheduler_module_ptr http_filter_config_scheduler_new(config)`.
    http_filter_config_scheduler_new: fn(ConfigEnvoyPtr) -> ConfigSchedulerPtr;
    /// `void http_filter_config_scheduler_commit(scheduler, uint64_t event_id)`: any thread;
    /// Envoy then calls `on_http_filter_config_scheduled` on the main thread.
    http_filter_config_scheduler_commit: fn(ConfigSchedulerPtr, u64);
    /// `void http_filter_config_scheduler_delete(scheduler)`.
    http_filter_config_scheduler_delete: fn(ConfigSchedulerPtr);
    /// `http_callout_init_result http_filter_config_http_callout(config, uint64_t* callout_id_out,
    /// module_buffer cluster, module_http_header* headers, size_t headers_size,
    /// module_buffer body, uint64_t timeout_milliseconds)`: main thread; the answer comes to
    /// `on_http_filter_config_http_callout_done`.
    http_filter_config_http_callout: fn(ConfigEnvoyPtr, *mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, u64) -> u32;
    /// `http_callout_init_result http_filter_start_http_stream(filter, uint64_t* stream_id_out,
    /// module_buffer cluster, module_http_header* headers, size_t headers_size,
    /// module_buffer body, bool end_stream, uint64_t timeout_milliseconds)`: the answer comes
    /// to `on_http_filter_http_stream_*` (possibly before this returns, when Envoy fails the
    /// stream at once).
    http_filter_start_http_stream: fn(FilterEnvoyPtr, *mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, bool, u64) -> u32;
    /// The same from the configuration (main thread): the answer comes to
    /// `on_http_filter_config_http_stream_*`.
    http_filter_config_start_http_stream: fn(ConfigEnvoyPtr, *mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, bool, u64) -> u32;
}

static CALLBACKS: OnceLock<Result<Callbacks, &'static str>> = OnceLock::new();

/// Resolves the callbacks (once per process); `Err` names one this Envoy lacks.
pub fn load() -> Result<&'static Callbacks, &'static str> {
    CALLBACKS.get_or_init(Callbacks::resolve).as_ref().map_err(|name| *name)
}

/// The callbacks, once [`load`] found them all; `None` outside Envoy (unit tests).
pub fn callbacks() -> Option<&'static Callbacks> {
    CALLBACKS.get().and_then(|c| c.as_ref().ok())
}
