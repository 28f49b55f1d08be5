//! A proxy-wasm HTTP filter that performs host calls named in request headers and reports the raw
//! results, so the emulator and a real Envoy can be compared call by call.
//!
//! It uses the `proxy-wasm` crate only for the dispatcher (context lifecycle); every probed host
//! call goes through the raw ABI imports declared below, so the status codes are observed as the
//! host returned them (the crate's wrappers panic on statuses they do not expect).
//!
//! Request headers:
//! - `x-probe`: ops run in `on_http_request_headers`, separated by `;`.
//! - `x-probe-body`: ops run in `on_http_request_body`.
//! - `x-probe-resp`: ops run in `on_http_response_headers`.
//! - `x-probe-respbody`: ops run in `on_http_response_body` (each chunk); their results are
//!   logged (info level) as `probe: response body results=...`, the response headers being gone.
//! - `x-probe-log`: ops run in `on_log`; their results are logged (info level) as
//!   `probe: log results=...`, since no response is left to carry them.
//! - `x-probe-callresp`: ops run in `on_http_call_response` (in the HTTP context, after the SDK set
//!   the effective context).
//! - `x-probe-grpcresp`: ops run when a `grpc_call` answers (`on_grpc_call_response`, after the
//!   crate set the effective context), after a result `grpcresp=TOKEN,STATUS,SIZE`.
//!
//! An op is `name` or `name:arg,arg,...`. Every op appends one result line `name=...`; values
//! are shown as `'text'`, or as `0x` and hex when they are not text (integers, maps). Results
//! are returned in the response header `x-probe-results` (joined by ` | `) when the response
//! passes through `on_http_response_headers`, or in the body of a local reply (`reply:CODE` op).
//! The names of the response headers the filter saw are also reported as `x-probe-resp-seen`.
//!
//! A plugin configuration `tag=NAME` makes one instance of several in a chain tell itself apart:
//! it reads its ops from the same headers with `-NAME` appended (`x-probe-NAME`,
//! `x-probe-resp-NAME`, ...), reports in `x-probe-results-NAME` / `x-probe-resp-seen-NAME`,
//! appends `NAME` to the request header `x-chain` when its request headers run and to the
//! response header `x-chain-resp` when its response headers run (the order the chain ran them),
//! and logs `probe NAME: on_log` in its log phase.
//!
//! Ops that end the request phase: `pause` (return Pause), `reply:CODE[,BODY]` (send a local reply
//! with the results so far). `http_call:...` and `grpc_call:...` pause the request until the
//! call answers.

// A test instrument, loaded only by tests: it panics when a request asks it to (that is how the
// emulator's trap handling is checked against Envoy), and it indexes ABI buffers it has
// length-checked; the production lints for filters do not apply to it.
#![allow(clippy::panic, clippy::indexing_slicing)]
#![allow(clippy::missing_safety_doc)]
// `proxy_wasm::main!` defines the undocumented `_initialize` export.
#![allow(missing_docs)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::RefCell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(ret: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        t: u32,
        start: usize,
        max: usize,
        ret: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_status(t: u32, len: *mut usize, flags: *mut u32) -> u32;
    fn proxy_set_buffer_bytes(t: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_header_map_pairs(t: u32, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        ret: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        t: u32,
        k: *const u8,
        ks: usize,
        ret: *mut *mut u8,
        ret_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(t: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
    fn proxy_replace_header_map_value(t: u32, k: *const u8, ks: usize, v: *const u8, vs: usize) -> u32;
    fn proxy_remove_header_map_value(t: u32, k: *const u8, ks: usize) -> u32;
    fn proxy_set_header_map_pairs(t: u32, d: *const u8, s: usize) -> u32;
    fn proxy_get_property(p: *const u8, ps: usize, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_set_property(p: *const u8, ps: usize, v: *const u8, vs: usize) -> u32;
    fn proxy_get_shared_data(
        k: *const u8,
        ks: usize,
        ret: *mut *mut u8,
        ret_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(k: *const u8, ks: usize, v: *const u8, vs: usize, cas: u32) -> u32;
    fn proxy_register_shared_queue(n: *const u8, ns: usize, ret: *mut u32) -> u32;
    fn proxy_resolve_shared_queue(vm: *const u8, vms: usize, n: *const u8, ns: usize, ret: *mut u32) -> u32;
    fn proxy_dequeue_shared_queue(id: u32, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_enqueue_shared_queue(id: u32, v: *const u8, vs: usize) -> u32;
    fn proxy_continue_stream(t: u32) -> u32;
    fn proxy_close_stream(t: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        code: u32,
        d: *const u8,
        ds: usize,
        b: *const u8,
        bs: usize,
        h: *const u8,
        hs: usize,
        grpc: i32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_grpc_call(
        u: *const u8,
        us: usize,
        s: *const u8,
        ss: usize,
        m: *const u8,
        ms: usize,
        h: *const u8,
        hs: usize,
        b: *const u8,
        bs: usize,
        timeout: u32,
        ret: *mut u32,
    ) -> u32;
    fn proxy_grpc_stream(
        u: *const u8,
        us: usize,
        s: *const u8,
        ss: usize,
        m: *const u8,
        ms: usize,
        h: *const u8,
        hs: usize,
        ret: *mut u32,
    ) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_get_status(code: *mut u32, ret: *mut *mut u8, ret_size: *mut usize) -> u32;
    fn proxy_define_metric(t: u32, n: *const u8, ns: usize, ret: *mut u32) -> u32;
    fn proxy_get_metric(id: u32, ret: *mut u64) -> u32;
    fn proxy_record_metric(id: u32, v: u64) -> u32;
    fn proxy_increment_metric(id: u32, v: i64) -> u32;
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(ProbeRoot { context_id, config: Vec::new(), tag: String::new() })
    });
}}

thread_local! {
    /// Results of ops run on the root context (tick, queue ready), reported by the next stream.
    static ROOT_RESULTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct ProbeRoot {
    context_id: u32,
    config: Vec<u8>,
    /// `tag=NAME` in the configuration: this instance's name in a chain (empty: untagged).
    tag: String,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let (st, data) = get_buffer(7, 0, size);
        self.config = data;
        self.tag = std::str::from_utf8(&self.config)
            .ok()
            .and_then(|c| c.strip_prefix("tag="))
            .unwrap_or_default()
            .to_string();
        // A plugin configuration of exactly "reject" is refused, so tests can check that path.
        if self.config == b"reject" {
            log(4, "probe: configuration rejected");
            return false;
        }
        log(2, &format!("probe: configured root={} status={} size={}", self.context_id, st, size));
        true
    }

    fn on_tick(&mut self) {
        let mut now = 0u64;
        unsafe { proxy_get_current_time_nanoseconds(&mut now) };
        log(2, &format!("probe: tick at {now}"));
        ROOT_RESULTS.with(|r| r.borrow_mut().push(format!("tick={now}")));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let (st, v) = dequeue(queue_id);
        log(2, &format!("probe: queue ready {queue_id} dequeue={st} {}", show(&v)));
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            context_id,
            tag: self.tag.clone(),
            results: Vec::new(),
            body_ops: String::new(),
            resp_ops: String::new(),
            callresp_ops: String::new(),
            grpcresp_ops: String::new(),
            last_grpc_token: 0,
            log_ops: String::new(),
            respbody_ops: String::new(),
        }))
    }
}

struct Probe {
    context_id: u32,
    /// The instance's tag (see the crate documentation); empty when untagged.
    tag: String,
    results: Vec<String>,
    body_ops: String,
    resp_ops: String,
    callresp_ops: String,
    grpcresp_ops: String,
    /// The token of the last `grpc_call` this stream made.
    last_grpc_token: u32,
    log_ops: String,
    respbody_ops: String,
}

/// What an op asks the callback to do after it.
#[derive(PartialEq)]
enum Flow {
    Go,
    Pause,
    Stop,
}

fn log(level: u32, msg: &str) {
    unsafe { proxy_log(level, msg.as_ptr(), msg.len()) };
}

fn take(ptr: *mut u8, size: usize) -> Vec<u8> {
    if ptr.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes with proxy_on_memory_allocate (the global allocator).
    unsafe { Vec::from_raw_parts(ptr, size, size) }
}

fn get_buffer(t: u32, start: usize, max: usize) -> (u32, Vec<u8>) {
    let mut p = std::ptr::null_mut();
    let mut s = 0;
    let st = unsafe { proxy_get_buffer_bytes(t, start, max, &mut p, &mut s) };
    (st, take(p, s))
}

fn dequeue(id: u32) -> (u32, Vec<u8>) {
    let mut p = std::ptr::null_mut();
    let mut s = 0;
    let st = unsafe { proxy_dequeue_shared_queue(id, &mut p, &mut s) };
    (st, take(p, s))
}

/// Shows a value: UTF-8 text as is, anything else (e.g. an 8-byte integer) as hex.
fn show(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.contains('\0') => format!("'{s}'"),
        _ => {
            let mut out = String::from("0x");
            for b in v {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn count_pairs(data: &[u8]) -> String {
    match data.get(0..4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string(),
        None => "empty".to_string(),
    }
}

fn map_type(name: &str) -> u32 {
    match name {
        "req" => 0,
        "reqtr" => 1,
        "resp" => 2,
        "resptr" => 3,
        "grpcinit" => 4,
        "grpctrail" => 5,
        "callresp" => 6,
        "calltr" => 7,
        other => other.parse().unwrap_or(99),
    }
}

fn num<T: std::str::FromStr + Default>(s: Option<&&str>) -> T {
    s.and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// An argument as bytes: `hex:...` decoded, anything else as its text.
fn bytes_arg(arg: &str) -> Vec<u8> {
    match arg.strip_prefix("hex:") {
        Some(hex) => (0..hex.len() / 2)
            .filter_map(|i| hex.get(2 * i..2 * i + 2))
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect(),
        None => arg.as_bytes().to_vec(),
    }
}

impl Probe {
    fn run(&mut self, ops: &str) -> Flow {
        let mut flow = Flow::Go;
        for op in ops.split(';').map(str::trim).filter(|o| !o.is_empty()) {
            let (name, args) = op.split_once(':').unwrap_or((op, ""));
            let a: Vec<&str> = if args.is_empty() { Vec::new() } else { args.split(',').collect() };
            let mut p = std::ptr::null_mut();
            let mut s = 0usize;
            let result = match name {
                "ctx" => format!("{}", self.context_id),
                "log_level" => {
                    let mut l = 0;
                    let st = unsafe { proxy_get_log_level(&mut l) };
                    format!("{st},{l}")
                }
                "log" => {
                    let msg = a.get(1).copied().unwrap_or("");
                    let st = unsafe { proxy_log(num(a.first()), msg.as_ptr(), msg.len()) };
                    format!("{st}")
                }
                "time" => {
                    let mut t = 0;
                    let st = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
                    format!("{st},{}", t > 1_500_000_000_000_000_000)
                }
                "tick" => format!("{}", unsafe { proxy_set_tick_period_milliseconds(num(a.first())) }),
                "root_results" => {
                    ROOT_RESULTS.with(|r| r.borrow_mut().drain(..).collect::<Vec<_>>().join(","))
                }
                "get" => {
                    let k = a.get(1).copied().unwrap_or("");
                    let st = unsafe {
                        proxy_get_header_map_value(
                            map_type(a.first().copied().unwrap_or("")),
                            k.as_ptr(),
                            k.len(),
                            &mut p,
                            &mut s,
                        )
                    };
                    format!("{st},{}", show(&take(p, s)))
                }
                "pairs" => {
                    let st = unsafe {
                        proxy_get_header_map_pairs(map_type(a.first().copied().unwrap_or("")), &mut p, &mut s)
                    };
                    let d = take(p, s);
                    format!("{st},{},{}", count_pairs(&d), d.len())
                }
                "map" => {
                    // map:TYPE: the whole serialized map (hex), so a test can replay exactly
                    // the headers the filter saw.
                    let st = unsafe {
                        proxy_get_header_map_pairs(map_type(a.first().copied().unwrap_or("")), &mut p, &mut s)
                    };
                    format!("{st},{}", show(&take(p, s)))
                }
                "add" | "replace" => {
                    let t = map_type(a.first().copied().unwrap_or(""));
                    let k = a.get(1).copied().unwrap_or("");
                    let v = a.get(2).copied().unwrap_or("");
                    let st = unsafe {
                        if name == "add" {
                            proxy_add_header_map_value(t, k.as_ptr(), k.len(), v.as_ptr(), v.len())
                        } else {
                            proxy_replace_header_map_value(t, k.as_ptr(), k.len(), v.as_ptr(), v.len())
                        }
                    };
                    format!("{st}")
                }
                "remove" => {
                    let k = a.get(1).copied().unwrap_or("");
                    format!("{}", unsafe {
                        proxy_remove_header_map_value(
                            map_type(a.first().copied().unwrap_or("")),
                            k.as_ptr(),
                            k.len(),
                        )
                    })
                }
                "set_pairs" => {
                    let d = serialize_pairs(&[("x-only", "1")]);
                    format!("{}", unsafe {
                        proxy_set_header_map_pairs(
                            map_type(a.first().copied().unwrap_or("")),
                            d.as_ptr(),
                            d.len(),
                        )
                    })
                }
                "prop" => {
                    let path = a.first().copied().unwrap_or("").replace('.', "\0");
                    let st = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut p, &mut s) };
                    format!("{st},{}", show(&take(p, s)))
                }
                "foreign" => {
                    // foreign:NAME,HEXARGS: the status and the result bytes in hex.
                    let name = a.first().copied().unwrap_or("");
                    let hex = a.get(1).copied().unwrap_or("");
                    let args: Vec<u8> = (0..hex.len() / 2)
                        .filter_map(|i| hex.get(2 * i..2 * i + 2))
                        .filter_map(|h| u8::from_str_radix(h, 16).ok())
                        .collect();
                    let st = unsafe {
                        proxy_call_foreign_function(
                            name.as_ptr(),
                            name.len(),
                            args.as_ptr(),
                            args.len(),
                            &mut p,
                            &mut s,
                        )
                    };
                    let out: String = take(p, s).iter().map(|b| format!("{b:02x}")).collect();
                    format!("{st},0x{out}")
                }
                "set_prop" => {
                    let path = a.first().copied().unwrap_or("").replace('.', "\0");
                    let v = a.get(1).copied().unwrap_or("");
                    format!("{}", unsafe {
                        proxy_set_property(path.as_ptr(), path.len(), v.as_ptr(), v.len())
                    })
                }
                "buf" => {
                    let t = num(a.first());
                    let mut len = 0usize;
                    let mut flags = 0u32;
                    let st0 = unsafe { proxy_get_buffer_status(t, &mut len, &mut flags) };
                    let (st, d) = get_buffer(
                        t,
                        num(a.get(1)),
                        a.get(2).and_then(|x| x.parse().ok()).unwrap_or(usize::MAX / 2),
                    );
                    format!("{st0},{len},{st},{}", show(&d))
                }
                "buf_set" => {
                    let d = a.get(3).copied().unwrap_or("");
                    format!("{}", unsafe {
                        proxy_set_buffer_bytes(
                            num(a.first()),
                            num(a.get(1)),
                            num(a.get(2)),
                            d.as_ptr(),
                            d.len(),
                        )
                    })
                }
                "shared_set" => {
                    let k = a.first().copied().unwrap_or("");
                    let v = a.get(1).copied().unwrap_or("");
                    format!("{}", unsafe {
                        proxy_set_shared_data(k.as_ptr(), k.len(), v.as_ptr(), v.len(), num(a.get(2)))
                    })
                }
                "shared_get" => {
                    let k = a.first().copied().unwrap_or("");
                    let mut cas = 0u32;
                    let st = unsafe { proxy_get_shared_data(k.as_ptr(), k.len(), &mut p, &mut s, &mut cas) };
                    format!("{st},{},{cas}", show(&take(p, s)))
                }
                "q_register" => {
                    let n = a.first().copied().unwrap_or("");
                    let mut id = 0u32;
                    let st = unsafe { proxy_register_shared_queue(n.as_ptr(), n.len(), &mut id) };
                    format!("{st},{id}")
                }
                "q_resolve" => {
                    let vm = a.first().copied().unwrap_or("");
                    let n = a.get(1).copied().unwrap_or("");
                    let mut id = 0u32;
                    let st = unsafe {
                        proxy_resolve_shared_queue(vm.as_ptr(), vm.len(), n.as_ptr(), n.len(), &mut id)
                    };
                    format!("{st},{id}")
                }
                "q_enqueue" => {
                    let v = a.get(1).copied().unwrap_or("");
                    format!("{}", unsafe { proxy_enqueue_shared_queue(num(a.first()), v.as_ptr(), v.len()) })
                }
                "q_dequeue" => {
                    let (st, v) = dequeue(num(a.first()));
                    format!("{st},{}", show(&v))
                }
                "metric_define" => {
                    let n = a.get(1).copied().unwrap_or("");
                    let mut id = 0u32;
                    let st = unsafe { proxy_define_metric(num(a.first()), n.as_ptr(), n.len(), &mut id) };
                    format!("{st},{id}")
                }
                "metric_inc" => {
                    format!("{}", unsafe { proxy_increment_metric(num(a.first()), num(a.get(1))) })
                }
                "metric_record" => {
                    format!("{}", unsafe { proxy_record_metric(num(a.first()), num(a.get(1))) })
                }
                "metric_get" => {
                    let mut v = 0u64;
                    let st = unsafe { proxy_get_metric(num(a.first()), &mut v) };
                    format!("{st},{v}")
                }
                "continue" => format!("{}", unsafe { proxy_continue_stream(num(a.first())) }),
                "close" => format!("{}", unsafe { proxy_close_stream(num(a.first())) }),
                "http_call" => {
                    // http_call:CLUSTER,AUTHORITY(- to omit),PATH(- to omit),TIMEOUT_MS[,BODY]
                    // Made through the SDK so its dispatcher routes the response to this context.
                    let cluster = a.first().copied().unwrap_or("");
                    let mut headers = vec![(":method", "GET")];
                    if let Some(&auth) = a.get(1) {
                        if auth != "-" {
                            headers.push((":authority", auth));
                        }
                    }
                    if let Some(&path) = a.get(2) {
                        if path != "-" {
                            headers.push((":path", path));
                        }
                    }
                    let body = a.get(4).map(|b| b.as_bytes());
                    let timeout = std::time::Duration::from_millis(num(a.get(3)));
                    match self.dispatch_http_call(cluster, headers, body, vec![], timeout) {
                        Ok(token) => {
                            flow = Flow::Pause;
                            format!("0,{token}")
                        }
                        Err(st) => format!("{},0", st as u32),
                    }
                }
                "grpc_call" | "grpc_raw" => {
                    // grpc_call:UPSTREAM,SERVICE,METHOD,TIMEOUT_MS[,MESSAGE[,KEY=VALUE...]]: through
                    // the crate, whose dispatcher routes the answer to this context (it panics on
                    // a status other than Ok, ParseFailure and InternalFailure); grpc_raw: the
                    // same through the raw import, for the status alone (the answer is dropped).
                    // UPSTREAM and MESSAGE may be `hex:...`.
                    let upstream = bytes_arg(a.first().copied().unwrap_or(""));
                    let service = a.get(1).copied().unwrap_or("");
                    let method = a.get(2).copied().unwrap_or("");
                    let timeout: u32 = num(a.get(3));
                    let message = bytes_arg(a.get(4).copied().unwrap_or(""));
                    let metadata: Vec<(&str, &[u8])> = a
                        .iter()
                        .skip(5)
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k, v.as_bytes()))
                        .collect();
                    if name == "grpc_call" {
                        let upstream = String::from_utf8_lossy(&upstream).into_owned();
                        match self.dispatch_grpc_call(
                            &upstream,
                            service,
                            method,
                            metadata,
                            Some(&message),
                            std::time::Duration::from_millis(u64::from(timeout)),
                        ) {
                            Ok(token) => {
                                flow = Flow::Pause;
                                self.last_grpc_token = token;
                                format!("0,{token}")
                            }
                            Err(st) => format!("{},0", st as u32),
                        }
                    } else {
                        let pairs: Vec<(&str, &str)> =
                            a.iter().skip(5).filter_map(|kv| kv.split_once('=')).collect();
                        let h = serialize_pairs(&pairs);
                        let mut token = 0u32;
                        let st = unsafe {
                            proxy_grpc_call(
                                upstream.as_ptr(),
                                upstream.len(),
                                service.as_ptr(),
                                service.len(),
                                method.as_ptr(),
                                method.len(),
                                h.as_ptr(),
                                h.len(),
                                message.as_ptr(),
                                message.len(),
                                timeout,
                                &mut token,
                            )
                        };
                        format!("{st},{token}")
                    }
                }
                "grpc_stream" => {
                    let c = a.first().copied().unwrap_or("");
                    let mut token = 0u32;
                    let e: &[u8] = b"";
                    let st = unsafe {
                        proxy_grpc_stream(
                            c.as_ptr(),
                            c.len(),
                            c.as_ptr(),
                            c.len(),
                            c.as_ptr(),
                            c.len(),
                            e.as_ptr(),
                            0,
                            &mut token,
                        )
                    };
                    format!("{st},{token}")
                }
                "grpc_cancel" => {
                    // grpc_cancel[:TOKEN]: the last grpc_call's token without one.
                    let token = if a.is_empty() { self.last_grpc_token } else { num(a.first()) };
                    format!("{}", unsafe { proxy_grpc_cancel(token) })
                }
                "grpc_status" => {
                    let mut code = 0u32;
                    let st = unsafe { proxy_get_status(&mut code, &mut p, &mut s) };
                    format!("{st},{code},{}", show(&take(p, s)))
                }
                "reply" => {
                    let code: u32 = num(a.first());
                    self.results.push("reply".to_string());
                    let body = match a.get(1) {
                        Some(b) => b.to_string(),
                        None => self.results.join("\n"),
                    };
                    let h = serialize_pairs(&[("x-probe-local", "1"), ("X-Upper", "Yes")]);
                    let d = "probe_reply";
                    let st = unsafe {
                        proxy_send_local_response(
                            code,
                            d.as_ptr(),
                            d.len(),
                            body.as_ptr(),
                            body.len(),
                            h.as_ptr(),
                            h.len(),
                            -1,
                        )
                    };
                    flow = Flow::Stop;
                    format!("{st}")
                }
                "pause" => {
                    flow = Flow::Pause;
                    "1".to_string()
                }
                "panic" => panic!("probe asked to panic: {}", a.first().copied().unwrap_or("")),
                other => format!("unknown op {other}"),
            };
            self.results.push(format!("{name}={result}"));
            if flow == Flow::Stop {
                break;
            }
        }
        flow
    }

    fn header(&self, name: &str) -> String {
        self.get_http_request_header(&self.named(name)).unwrap_or_default()
    }

    /// `name`, or `name-TAG` for a tagged instance.
    fn named(&self, name: &str) -> String {
        if self.tag.is_empty() {
            name.to_string()
        } else {
            format!("{name}-{}", self.tag)
        }
    }

    /// Appends this instance's tag to `header` in map `map` (a tagged instance only).
    fn mark(&self, map: u32, header: &str) {
        if !self.tag.is_empty() {
            unsafe {
                proxy_add_header_map_value(
                    map,
                    header.as_ptr(),
                    header.len(),
                    self.tag.as_ptr(),
                    self.tag.len(),
                );
            }
        }
    }
}

impl Context for Probe {
    fn on_http_call_response(&mut self, token: u32, nh: usize, bs: usize, nt: usize) {
        self.results.push(format!("callresp={token},{nh},{bs},{nt}"));
        let ops = std::mem::take(&mut self.callresp_ops);
        let flow = self.run(&ops);
        if flow == Flow::Go {
            self.resume_http_request();
        }
    }

    /// The crate calls this for `proxy_on_grpc_receive` (status 0, the message size) and for
    /// `proxy_on_grpc_close` (the status, size 0) of a call made with `grpc_call`.
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.results.push(format!("grpcresp={token},{status},{size}"));
        let ops = std::mem::take(&mut self.grpcresp_ops);
        let flow = self.run(&ops);
        if flow == Flow::Go {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _num_headers: usize, _eos: bool) -> Action {
        let ops = self.header("x-probe");
        self.body_ops = self.header("x-probe-body");
        self.resp_ops = self.header("x-probe-resp");
        self.callresp_ops = self.header("x-probe-callresp");
        self.grpcresp_ops = self.header("x-probe-grpcresp");
        self.log_ops = self.header("x-probe-log");
        self.respbody_ops = self.header("x-probe-respbody");
        self.mark(0, "x-chain");
        match self.run(&ops) {
            Flow::Go => Action::Continue,
            Flow::Pause | Flow::Stop => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.results.push(format!("body_cb={size},{eos}"));
        let ops = std::mem::take(&mut self.body_ops);
        match self.run(&ops) {
            Flow::Go => Action::Continue,
            Flow::Pause | Flow::Stop => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _eos: bool) -> Action {
        let mut p = std::ptr::null_mut();
        let mut s = 0usize;
        let st = unsafe { proxy_get_header_map_pairs(2, &mut p, &mut s) };
        let d = take(p, s);
        let names = names_of(&d);
        let ops = std::mem::take(&mut self.resp_ops);
        self.run(&ops);
        let seen = format!("{st}:{}", names.join(","));
        let results = self.results.join(" | ");
        let k = self.named("x-probe-results");
        let k2 = self.named("x-probe-resp-seen");
        self.mark(2, "x-chain-resp");
        unsafe {
            proxy_add_header_map_value(2, k.as_ptr(), k.len(), results.as_ptr(), results.len());
            proxy_add_header_map_value(2, k2.as_ptr(), k2.len(), seen.as_ptr(), seen.len());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.respbody_ops.is_empty() {
            let ops = self.respbody_ops.clone();
            let saved = std::mem::take(&mut self.results);
            self.run(&ops);
            log(2, &format!("probe: response body results=body={size},{eos} | {}", self.results.join(" | ")));
            self.results = saved;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if !self.tag.is_empty() {
            log(2, &format!("probe {}: on_log", self.tag));
        }
        log(2, &format!("probe: on_log ctx={} results={}", self.context_id, self.results.join(" | ")));
        let ops = std::mem::take(&mut self.log_ops);
        if !ops.is_empty() {
            self.results.clear();
            self.run(&ops);
            log(2, &format!("probe: log results={}", self.results.join(" | ")));
        }
    }
}

/// Names of the pairs in a serialized map.
fn names_of(d: &[u8]) -> Vec<String> {
    let n = match d.get(0..4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
        None => return Vec::new(),
    };
    let mut sizes = Vec::new();
    for i in 0..n {
        let at = 4 + i * 8;
        let (Some(k), Some(v)) = (d.get(at..at + 4), d.get(at + 4..at + 8)) else { return Vec::new() };
        sizes.push((
            u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as usize,
            u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize,
        ));
    }
    let mut pos = 4 + n * 8;
    let mut out = Vec::new();
    for (ks, vs) in sizes {
        out.push(String::from_utf8_lossy(d.get(pos..pos + ks).unwrap_or(b"?")).to_string());
        pos += ks + 1 + vs + 1;
    }
    out
}

// Pure-logic tests; they also exercise the emulator's `wasi-run` runner:
// CARGO_TARGET_WASM32_WASIP1_RUNNER=$PWD/target/debug/wasi-run cargo test --target wasm32-wasip1 -p probe-filter
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_text_and_binary() {
        assert_eq!(show(b"abc"), "'abc'");
        assert_eq!(show(&200u64.to_le_bytes()), "0xc800000000000000");
    }

    #[test]
    fn reads_names_of_serialized_pairs() {
        let d = serialize_pairs(&[(":status", "200"), ("x-a", "b")]);
        assert_eq!(names_of(&d), vec![":status".to_string(), "x-a".to_string()]);
        assert_eq!(count_pairs(&d), "2");
        assert!(names_of(&d[..6]).is_empty());
    }
}
