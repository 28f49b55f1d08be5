//! Definitions, for native builds, of the proxy-wasm host functions the `proxy-wasm` crate
//! imports.
//!
//! The crate's `proxy_on_*` entry points are `#[no_mangle]`, so a native `cdylib` exports them,
//! and with them the crate's references to the ABI's `proxy_*` imports, which no native process
//! defines: without these the dynamic loader refuses the module ("undefined symbol"). Envoy
//! calls a dynamic module only through `envoy_dynamic_module_on_*`, so none of these ever runs;
//! each answers `InternalFailure` (10) should anything call it.

macro_rules! unavailable {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc(hidden)]
            #[no_mangle]
            pub extern "C" fn $name() -> u32 {
                10
            }
        )*
    };
}

unavailable!(
    proxy_call_foreign_function,
    proxy_dequeue_shared_queue,
    proxy_done,
    proxy_enqueue_shared_queue,
    proxy_get_buffer_bytes,
    proxy_get_current_time_nanoseconds,
    proxy_get_header_map_pairs,
    proxy_get_header_map_value,
    proxy_get_property,
    proxy_get_shared_data,
    proxy_get_status,
    proxy_grpc_call,
    proxy_grpc_cancel,
    proxy_grpc_close,
    proxy_grpc_send,
    proxy_grpc_stream,
    proxy_http_call,
    proxy_register_shared_queue,
    proxy_resolve_shared_queue,
    proxy_set_effective_context,
    proxy_set_property,
    proxy_set_shared_data,
    proxy_set_tick_period_milliseconds,
    proxy_log,
    proxy_add_header_map_value,
    proxy_replace_header_map_value,
    proxy_remove_header_map_value,
    proxy_set_header_map_pairs,
    proxy_set_buffer_bytes,
    proxy_send_local_response,
    proxy_continue_stream,
    proxy_close_stream,
    proxy_get_log_level,
    proxy_define_metric,
    proxy_increment_metric,
    proxy_record_metric,
    proxy_get_metric,
);
