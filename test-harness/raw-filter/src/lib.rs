//! The benchmark's header work (read `:path`, add `x-bench: 1` to the request when it starts
//! with `/`, set `x-served-by: gatewasm` on the response) written directly on the `proxy-wasm`
//! crate with the fewest host calls, no SDK, no configuration: the hand-written baseline that
//! shows what the SDK and the header-rewrite filter add on top of the ABI's own cost.
//!
//! With the plugin configuration `pairs`, it reads every request header in one call
//! (`proxy_get_header_map_pairs`, as header-rewrite does to see `:path` and a spoofed
//! `x-envoy-original-path` together) instead of `:path` alone: the bench shows what that read
//! costs by itself.
// `proxy_wasm::main!` defines the undocumented `_initialize` export.
#![allow(missing_docs)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Raw { pairs: false }) });
}}

#[derive(Clone, Copy)]
struct Raw {
    /// Read every header in one call instead of `:path` alone.
    pairs: bool,
}

impl Context for Raw {}

impl HttpContext for Raw {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let starts_with_slash = if self.pairs {
            // Bytes, not String: a non-UTF-8 value must not panic this baseline either.
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
                .ok()
                .and_then(|all| all.into_iter().find(|(k, _)| k == ":path"))
                .is_some_and(|(_, v)| v.first() == Some(&b'/'))
        } else {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
                .ok()
                .flatten()
                .is_some_and(|path| path.first() == Some(&b'/'))
        };
        if starts_with_slash {
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-bench", "1");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, "x-served-by", Some("gatewasm"));
        Action::Continue
    }
}

impl RootContext for Raw {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, 64);
        self.pairs = matches!(config, Ok(Some(c)) if c.as_slice() == b"pairs");
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(*self))
    }
}
