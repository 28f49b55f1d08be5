//! The SDK's one binding to the host: every call a filter or the SDK makes into Envoy goes
//! through this module, and every host status comes back as a `Result`, never a panic.
//!
//! `proxy_wasm::hostcalls` turns a header value that is not UTF-8 into a panic
//! (`String::from_utf8` followed by `unwrap`), and any status it did not expect into another. Envoy
//! forwards `obs-text` bytes (0x80-0xFF) in header values, so a client could trap the VM with one
//! header, and a host that answers a status the crate did not foresee (`done` outside a plugin's
//! shutdown, a metric call on an unknown id) would trap it too. This module declares the ABI 0.2.1
//! imports itself and returns errors instead. The calls it leaves to the crate are
//! [`dispatch_http_call`] and [`dispatch_grpc_call`], whose answers the crate's dispatcher must
//! route back to the calling context (it registers the token); Envoy answers them only with the
//! statuses the crate maps to errors.
//!
//! Memory the host returns was allocated by the guest's `proxy_on_memory_allocate` (exported by
//! the `proxy-wasm` crate) as a boxed `[u8]` of exactly the returned size, which is what makes
//! `Vec::from_raw_parts(ptr, len, len)` sound here.

use std::ptr::{null, null_mut};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

use super::{serialize_pairs, Half, Host};

#[cfg(target_arch = "wasm32")]
mod sys {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub(crate) fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub(crate) fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub(crate) fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub(crate) fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub(crate) fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub(crate) fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub(crate) fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub(crate) fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        pub(crate) fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub(crate) fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub(crate) fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub(crate) fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub(crate) fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            value: *mut *mut u8,
            value_size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub(crate) fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub(crate) fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub(crate) fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub(crate) fn proxy_done() -> u32;
        pub(crate) fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
        pub(crate) fn proxy_continue_stream(stream: u32) -> u32;
        pub(crate) fn proxy_close_stream(stream: u32) -> u32;
        pub(crate) fn proxy_get_status(
            return_code: *mut u32,
            return_message_data: *mut *mut u8,
            return_message_size: *mut usize,
        ) -> u32;
    }
}

/// Native builds (unit tests of pure logic) have no host: every call reports an error, none
/// pretends to succeed.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod sys {
    const UNAVAILABLE: u32 = 10; // InternalFailure

    pub unsafe fn proxy_get_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_add_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_replace_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_call_foreign_function(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        UNAVAILABLE
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_record_metric(_: u32, _: u64) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_shared_data(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
        _: *mut u32,
    ) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_set_shared_data(_: *const u8, _: usize, _: *const u8, _: usize, _: u32) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_done() -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_continue_stream(_: u32) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_close_stream(_: u32) -> u32 {
        UNAVAILABLE
    }
    pub unsafe fn proxy_get_status(_: *mut u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        UNAVAILABLE
    }
}

fn status(code: u32) -> Status {
    match code {
        0 => Status::Ok,
        1 => Status::NotFound,
        2 => Status::BadArgument,
        3 => Status::SerializationFailure,
        4 => Status::ParseFailure,
        7 => Status::Empty,
        8 => Status::CasMismatch,
        _ => Status::InternalFailure,
    }
}

fn unit(code: u32) -> Result<(), Status> {
    match status(code) {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// Takes ownership of a buffer the host wrote through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or a pointer the host returned for exactly `size` bytes allocated by the
/// guest allocator, not yet owned by anything else.
unsafe fn take(data: *mut u8, size: usize) -> Bytes {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: per this function's contract, the allocation is a boxed slice of `size` bytes.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// One header's value as bytes; `Ok(None)` when the header is absent.
fn header_bytes(map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe {
        sys::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
        Status::Ok => Ok(Some(unsafe { take(data, size) })),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Every header of a map in the ABI's serialized form, exactly as the host wrote it: one host
/// call and one allocation; [`super::PairsIter`] reads it without copying.
fn header_pairs_raw(map: MapType) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { sys::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    unit(code)?;
    // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
    Ok(unsafe { take(data, size) })
}

/// Appends a header (a second value when the name exists).
fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        sys::proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Sets a header, replacing every existing value (adding it when absent).
fn set_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        sys::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a header; removing an absent header succeeds.
fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice for the duration of the call.
    unit(unsafe { sys::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Up to `max` bytes of a buffer from `start`; empty when the buffer is absent or empty.
fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { sys::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
        Status::Ok => Ok(unsafe { take(data, size) }),
        Status::NotFound | Status::Empty => Ok(Vec::new()),
        other => Err(other),
    }
}

/// A property (`request.id`, `source.address`, ...) by path segments; `Ok(None)` when unknown.
fn property(path: &[&str]) -> Result<Option<Bytes>, Status> {
    let mut serialized = Vec::with_capacity(path.iter().map(|s| s.len() + 1).sum());
    for segment in path {
        serialized.extend_from_slice(segment.as_bytes());
        serialized.push(0);
    }
    // Envoy's path format has no trailing separator.
    serialized.pop();
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code =
        unsafe { sys::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
        Status::Ok => Ok(Some(unsafe { take(data, size) })),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Calls a function the host registered by name (Envoy's are in
/// `source/extensions/common/wasm/foreign.cc`: `verify_signature`, `compress`, ...), with
/// `arguments` in whatever encoding that function reads. `Err(Status::NotFound)` when the host
/// has no function of that name, so a module can fall back to its own code on another host.
fn foreign_function(name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe {
        sys::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        )
    };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes (or nothing).
        Status::Ok => Ok(unsafe { take(data, size) }),
        other => Err(other),
    }
}

/// Sends a local reply; `details` lands in Envoy's `%RESPONSE_CODE_DETAILS%`.
fn send_local_response(
    status_code: u32,
    details: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<(), Status> {
    let serialized = serialize_pairs(headers);
    let (body_ptr, body_len) = if body.is_empty() { (null(), 0) } else { (body.as_ptr(), body.len()) };
    let (details_ptr, details_len) =
        if details.is_empty() { (null(), 0) } else { (details.as_ptr(), details.len()) };
    // SAFETY: pointers and lengths describe live slices (or are null with length 0).
    unit(unsafe {
        sys::proxy_send_local_response(
            status_code,
            details_ptr,
            details_len,
            body_ptr,
            body_len,
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    })
}

/// Defines a metric and returns its id.
fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the name pointer and length describe a live string; `id` is a valid out pointer.
    unit(unsafe { sys::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` to a counter or gauge.
fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values only.
    unit(unsafe { sys::proxy_increment_metric(id, offset) })
}

/// Sets a gauge or records a histogram value.
fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values only.
    unit(unsafe { sys::proxy_record_metric(id, value) })
}

/// A shared-data entry and its compare-and-swap version; `(None, None)` when the key is absent.
fn shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { sys::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status(code) {
        Status::Ok => {
            // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
            let value = unsafe { take(data, size) };
            Ok((Some(value), (cas != 0).then_some(cas)))
        }
        Status::NotFound => Ok((None, None)),
        other => Err(other),
    }
}

/// Writes a shared-data entry; with `cas`, only if the entry is still at that version
/// (`Err(CasMismatch)` otherwise).
fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: the pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
    })
}

/// Asks for `on_tick` every `period` (zero stops it); whole milliseconds, at most `u32::MAX`.
fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value only.
    unit(unsafe { sys::proxy_set_tick_period_milliseconds(ms) })
}

/// The host's wall clock (Envoy's, which tests can move; not WASI's).
fn current_time() -> Result<SystemTime, Status> {
    let mut ns = 0u64;
    // SAFETY: `ns` is a valid out pointer.
    unit(unsafe { sys::proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Tells the host a plugin that asked to finish its work on shutdown has finished it.
fn done() -> Result<(), Status> {
    // SAFETY: no arguments.
    unit(unsafe { sys::proxy_done() })
}

/// Writes a line to the host's log.
pub(crate) fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: the pointer and length describe a live string.
    unit(unsafe { sys::proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The ABI's stream kinds (`proxy_continue_stream`, `proxy_close_stream`).
const HTTP_REQUEST: u32 = 0;
const HTTP_RESPONSE: u32 = 1;

/// Lets a paused request go on.
fn resume_http_request() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { sys::proxy_continue_stream(HTTP_REQUEST) })
}

/// Lets a paused response go on.
fn resume_http_response() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { sys::proxy_continue_stream(HTTP_RESPONSE) })
}

/// Resets the stream (the client sees the connection's stream end without an answer).
fn reset_http_request() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { sys::proxy_close_stream(HTTP_REQUEST) })
}

/// Sends an HTTP callout and returns its token. Goes through the `proxy-wasm` crate, whose
/// dispatcher must know the token to hand the answer to the calling context; Envoy answers this
/// call with Ok, BadArgument or InternalFailure only, which the crate returns as they are.
fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    #[cfg(target_arch = "wasm32")]
    return proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout);
    // Native builds have no host (and the crate's wrapper would not link there).
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (cluster, headers, body, timeout);
        Err(Status::InternalFailure)
    }
}

/// Sends a unary gRPC call and returns its token. Goes through the `proxy-wasm` crate, whose
/// dispatcher must know the token to hand the answer to the calling context. Envoy reads the
/// `upstream` argument as a serialized `GrpcService` when it parses as one, else as a cluster
/// name (unknown: `ParseFailure`); a name that would parse is sent as the `GrpcService` naming
/// it, since Envoy 1.40 aborts on one that names no cluster. Envoy then answers Ok,
/// ParseFailure or InternalFailure only (`BadArgument` needs a `GrpcService` Envoy cannot build
/// a client for, which this never sends), the statuses the crate returns as they are.
fn dispatch_grpc_call(call: &crate::grpc::GrpcCall<'_>) -> Result<u32, Status> {
    let proto;
    let upstream = if crate::grpc::may_parse_as_protobuf(call.cluster.as_bytes()) {
        // The crate takes the argument as text: a name of 126 bytes or more encodes its
        // lengths in bytes that are not UTF-8, and is refused.
        proto =
            String::from_utf8(crate::grpc::grpc_service(&call.cluster)).map_err(|_| Status::BadArgument)?;
        proto.as_str()
    } else {
        &call.cluster
    };
    let metadata: Vec<(&str, &[u8])> = call.metadata.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    // The crate's wrapper sends the timeout as `as_millis() as u32`: keep it in range.
    let timeout = Duration::from_millis(
        u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX).min(u64::from(u32::MAX)),
    );
    #[cfg(target_arch = "wasm32")]
    return proxy_wasm::hostcalls::dispatch_grpc_call(
        upstream,
        &call.service,
        &call.method,
        metadata,
        Some(&call.message),
        timeout,
    );
    // Native builds have no host (and the crate's wrapper would not link there).
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (upstream, metadata, timeout);
        Err(Status::InternalFailure)
    }
}

/// The code and message of the gRPC call being closed (`proxy_get_status`), read raw (the
/// crate's wrapper panics on a message that is not UTF-8), without the response code details
/// Envoy appends to it.
fn grpc_status() -> Result<(u32, Bytes), Status> {
    let mut code = 0u32;
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    unit(unsafe { sys::proxy_get_status(&mut code, &mut data, &mut size) })?;
    // SAFETY: on Ok the host returned a guest allocation of `size` bytes (or nothing).
    let message = unsafe { take(data, size) };
    Ok((code, crate::grpc::strip_envoy_details(&message).to_vec()))
}

/// The proxy-wasm ABI 0.2.1 host: the proxy the module is loaded in. Holds nothing: the ABI
/// is a set of imported functions, and the host tracks which context is current.
#[derive(Debug, Clone, Copy, Default)]
pub struct Abi;

impl Host for Abi {
    fn header(&self, map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
        header_bytes(map, name)
    }
    fn header_pairs(&self, map: MapType) -> Result<Bytes, Status> {
        header_pairs_raw(map)
    }
    fn add_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        add_header(map, name, value)
    }
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        set_header(map, name, value)
    }
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        remove_header(map, name)
    }
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
        buffer(kind, start, max)
    }
    fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        property(path)
    }
    fn foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
        foreign_function(name, arguments)
    }
    fn send_local_response(
        &self,
        status: u32,
        details: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), Status> {
        send_local_response(status, details, body, headers)
    }
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        dispatch_http_call(cluster, headers.to_vec(), body, timeout)
    }
    fn dispatch_grpc_call(&self, call: &crate::grpc::GrpcCall<'_>) -> Result<u32, Status> {
        // Envoy reads the whole message; the SDK bounds what it takes of it.
        dispatch_grpc_call(call)
    }
    fn grpc_status(&self) -> Result<(u32, Bytes), Status> {
        grpc_status()
    }
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        increment_metric(id, offset)
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        record_metric(id, value)
    }
    fn shared_data(&self, key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        set_shared_data(key, value, cas)
    }
    fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
        set_tick_period(period)
    }
    fn current_time(&self) -> Result<SystemTime, Status> {
        current_time()
    }
    fn done(&self) -> Result<(), Status> {
        done()
    }
    fn log(&self, level: LogLevel, message: &str) -> Result<(), Status> {
        log(level, message)
    }
    fn resume(&self, half: Half) -> Result<(), Status> {
        match half {
            Half::Request => resume_http_request(),
            Half::Response => resume_http_response(),
        }
    }
    fn reset(&self) -> Result<(), Status> {
        reset_http_request()
    }
}

// Only native builds: on wasm32 the ABI host is the real one.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn native_builds_have_no_abi_host() {
        assert_eq!(Abi.header(MapType::HttpRequestHeaders, ":path"), Err(Status::InternalFailure));
    }
}
