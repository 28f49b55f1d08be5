//! Makes per request exactly the host calls kafka-log makes for its default record, through the
//! same SDK functions, and nothing else: a clock read when the request headers arrive; at the
//! end of the stream the response header map, the request header map, the six attributes of the
//! default fields and a second clock read. The values are dropped unread; there is no buffer,
//! no JSON, no tick and no callout.
//!
//! Between the Wasm floor (noop filter) and kafka-log, this row tells what the host crossings
//! themselves cost, so the benchmark shows which part of the filter's cost is its own work.

// `proxy_wasm::main!` defines the undocumented `_initialize` export.
#![allow(missing_docs)]

use gatewasm::host;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Calls) });
}}

/// The attributes of kafka-log's default fields, in its field order, split as it splits them.
const ATTRIBUTES: [&[&str]; 6] = [
    &["request", "protocol"],
    &["response", "flags"],
    &["upstream", "address"],
    &["xds", "cluster_name"],
    &["xds", "route_name"],
    &["source", "address"],
];

struct Calls;

impl Context for Calls {}

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = hostcalls::get_current_time();
        Action::Continue
    }

    fn on_log(&mut self) {
        let _ = host::header_pairs_raw(MapType::HttpResponseHeaders);
        let _ = host::header_pairs_raw(MapType::HttpRequestHeaders);
        for path in ATTRIBUTES {
            let _ = host::property(path);
        }
        let _ = hostcalls::get_current_time();
    }
}

impl RootContext for Calls {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Calls))
    }
}
