//! Makes, on each request, the host calls its configuration lists, through the SDK functions the
//! filters use, and nothing else: the values read are dropped unread. Put in a benchmark next to
//! a filter with the same calls, it separates what the host crossings cost from the filter's own
//! work (the Wasm floor, the noop filter, is the row with no call at all).
//!
//! Configuration: `{"request_headers": [op, ...], "callout_answer": [op, ...],
//! "response_headers": [op, ...], "log": [op, ...]}`, ops run in order when the request headers
//! arrive, when a callout answers, when the response headers arrive, and at the end of the
//! stream. An op is `pairs` (read every request header), `response_pairs`, `answer_pairs`
//! (read every header of the callout's answer), `get:NAME` (read one request header),
//! `replace:NAME=VALUE` (set a request header), `response_replace:NAME=VALUE` (set a response
//! header), `remove:NAME`, `time` (read the clock), `property:a.b` (read an attribute),
//! `shared:KEY:SIZE` (read shared-data entry KEY and write it back at the version read, as a
//! compare-and-swap update does; a missing entry is written with SIZE zero bytes) or
//! `callout:CLUSTER:PATH` (send `GET PATH` to `CLUSTER` with `content-length: 0`, 1 s timeout,
//! and hold the request until the answer, after which the `callout_answer` ops run and the
//! request resumes).

// `proxy_wasm::main!` defines the undocumented `_initialize` export.
#![allow(missing_docs)]

use std::rc::Rc;
use std::time::Duration;

use gatewasm::host::{Abi, Host};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root(Rc::default())) });
}}

/// One host call.
#[derive(Debug, Clone)]
enum Op {
    Pairs,
    ResponsePairs,
    AnswerPairs,
    Get(String),
    Replace(String, String),
    Remove(String),
    ResponseReplace(String, String),
    Shared(String, usize),
    Time,
    Property(Vec<String>),
    Callout { cluster: String, path: String },
}

impl Op {
    fn parse(text: &str) -> Result<Op, String> {
        let (name, arg) = text.split_once(':').unwrap_or((text, ""));
        Ok(match name {
            "pairs" => Op::Pairs,
            "response_pairs" => Op::ResponsePairs,
            "answer_pairs" => Op::AnswerPairs,
            "get" => Op::Get(arg.to_string()),
            "replace" => {
                let (k, v) = arg.split_once('=').ok_or_else(|| format!("`{text}`: replace:NAME=VALUE"))?;
                Op::Replace(k.to_string(), v.to_string())
            }
            "remove" => Op::Remove(arg.to_string()),
            "response_replace" => {
                let (k, v) =
                    arg.split_once('=').ok_or_else(|| format!("`{text}`: response_replace:NAME=VALUE"))?;
                Op::ResponseReplace(k.to_string(), v.to_string())
            }
            "shared" => {
                let (key, size) = arg.rsplit_once(':').ok_or_else(|| format!("`{text}`: shared:KEY:SIZE"))?;
                let size = size.parse().map_err(|_| format!("`{text}`: SIZE is a number of bytes"))?;
                Op::Shared(key.to_string(), size)
            }
            "time" => Op::Time,
            "property" => Op::Property(arg.split('.').map(str::to_string).collect()),
            "callout" => {
                let (cluster, path) =
                    arg.split_once(':').ok_or_else(|| format!("`{text}`: callout:CLUSTER:PATH"))?;
                Op::Callout { cluster: cluster.to_string(), path: path.to_string() }
            }
            _ => return Err(format!("unknown op `{text}`")),
        })
    }

    /// Runs the op; true when it sent a callout (the request is then held).
    fn run(&self) -> bool {
        let req = MapType::HttpRequestHeaders;
        match self {
            Op::Pairs => drop(Abi.header_pairs(req)),
            Op::ResponsePairs => drop(Abi.header_pairs(MapType::HttpResponseHeaders)),
            Op::AnswerPairs => drop(Abi.header_pairs(MapType::HttpCallResponseHeaders)),
            Op::Get(name) => drop(Abi.header(req, name)),
            Op::Replace(name, value) => drop(Abi.set_header(req, name, value.as_bytes())),
            Op::Remove(name) => drop(Abi.remove_header(req, name)),
            Op::ResponseReplace(name, value) => {
                let _ = Abi.set_header(MapType::HttpResponseHeaders, name, value.as_bytes());
            }
            Op::Shared(key, size) => match hostcalls::get_shared_data(key) {
                Ok((Some(value), cas)) => drop(hostcalls::set_shared_data(key, Some(&value), cas)),
                _ => drop(hostcalls::set_shared_data(key, Some(&vec![0; *size]), None)),
            },
            Op::Time => drop(hostcalls::get_current_time()),
            Op::Property(path) => {
                let segments: Vec<&str> = path.iter().map(String::as_str).collect();
                drop(Abi.property(&segments));
            }
            Op::Callout { cluster, path } => {
                let headers = vec![
                    (":method", "GET"),
                    (":path", path.as_str()),
                    (":authority", cluster.as_str()),
                    ("content-length", "0"),
                ];
                return hostcalls::dispatch_http_call(cluster, headers, None, vec![], Duration::from_secs(1))
                    .is_ok();
            }
        }
        false
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request_headers: Vec<String>,
    #[serde(default)]
    callout_answer: Vec<String>,
    #[serde(default)]
    response_headers: Vec<String>,
    #[serde(default)]
    log: Vec<String>,
}

#[derive(Debug, Default)]
struct Ops {
    request_headers: Vec<Op>,
    callout_answer: Vec<Op>,
    response_headers: Vec<Op>,
    log: Vec<Op>,
}

struct Root(Rc<Ops>);

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let raw: RawConfig = if bytes.is_empty() {
            RawConfig::default()
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(raw) => raw,
                Err(e) => {
                    log_error(&format!("calls_filter: bad configuration: {e}"));
                    return false;
                }
            }
        };
        let parse = |ops: &[String]| ops.iter().map(|o| Op::parse(o)).collect::<Result<Vec<_>, _>>();
        match (
            parse(&raw.request_headers),
            parse(&raw.callout_answer),
            parse(&raw.response_headers),
            parse(&raw.log),
        ) {
            (Ok(request_headers), Ok(callout_answer), Ok(response_headers), Ok(log)) => {
                self.0 = Rc::new(Ops { request_headers, callout_answer, response_headers, log });
                true
            }
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                log_error(&format!("calls_filter: {e}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream(Rc::clone(&self.0))))
    }
}

fn log_error(message: &str) {
    let _ = hostcalls::log(LogLevel::Error, message);
}

struct Stream(Rc<Ops>);

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        for op in &self.0.callout_answer {
            op.run();
        }
        let _ = hostcalls::resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut held = false;
        for op in &self.0.request_headers {
            held |= op.run();
        }
        if held {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for op in &self.0.response_headers {
            op.run();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        for op in &self.0.log {
            op.run();
        }
    }
}
