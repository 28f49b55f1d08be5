//! The SDK's one binding to the host: every call a filter or the SDK makes into Envoy goes
//! through this module, and every host status comes back as a `Result`, never a panic.
//!
//! `proxy_wasm::hostcalls` turns a header value that is not UTF-8 into a panic
//! (`String::from_utf8` followed by `unwrap`), and any status it did not expect into another. Envoy
//! forwards `obs-text` bytes (0x80-0xFF) in header values, so a client could trap the VM with one
//! header, and a host that answers a status the crate did not foresee (`done` outside a plugin's
//! shutdown, a metric call on an unknown id) would trap it too. This module declares the ABI 0.2.1
//! imports itself and returns errors instead. The one call it leaves to the crate is
//! [`dispatch_http_call`], whose answer the crate's dispatcher must route back to the calling
//! context (it registers the token); Envoy answers that call only with the statuses the crate
//! maps to errors.
//!
//! Memory the host returns was allocated by the guest's `proxy_on_memory_allocate` (exported by
//! the `proxy-wasm` crate) as a boxed `[u8]` of exactly the returned size, which is what makes
//! `Vec::from_raw_parts(ptr, len, len)` sound here.

use std::ptr::{null, null_mut};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

#[cfg(target_arch = "wasm32")]
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            value: *mut *mut u8,
            value_size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_close_stream(stream: u32) -> u32;
    }
}

/// Native builds (unit tests of pure logic) have no host: every call reports an error, none
/// pretends to succeed.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod abi {
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
pub fn header_bytes(map: MapType, name: &str) -> Result<Option<Bytes>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
        Status::Ok => Ok(Some(unsafe { take(data, size) })),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// One header's value as text; a value that is not UTF-8 is decoded lossily (U+FFFD).
pub fn header(map: MapType, name: &str) -> Result<Option<String>, Status> {
    Ok(header_bytes(map, name)?.map(|b| match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// Every header of a map, in order, as raw bytes.
pub fn header_pairs(map: MapType) -> Result<Vec<(Bytes, Bytes)>, Status> {
    deserialize_pairs(&header_pairs_raw(map)?).ok_or(Status::SerializationFailure)
}

/// Every header of a map in the ABI's serialized form, exactly as the host wrote it: one host
/// call and one allocation; [`PairsIter`] reads it without copying.
pub fn header_pairs_raw(map: MapType) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    unit(code)?;
    // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
    Ok(unsafe { take(data, size) })
}

/// The pairs of a serialized map, borrowed from it. Stops at the first malformed entry; use
/// [`is_well_formed`] first to tell a short map from a broken one.
#[derive(Debug, Clone)]
pub struct PairsIter<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    pos: usize,
}

impl<'a> PairsIter<'a> {
    /// Iterates the pairs of `bytes` (an empty slice is an empty map).
    pub fn new(bytes: &'a [u8]) -> Self {
        let count = read_u32(bytes, 0).map_or(0, |c| c as usize);
        let pos = count.checked_mul(8).and_then(|n| n.checked_add(4)).unwrap_or(usize::MAX);
        Self { bytes, index: 0, count, pos }
    }
}

impl<'a> Iterator for PairsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = self.index.checked_mul(8)?.checked_add(4)?;
        let klen = read_u32(self.bytes, sizes)? as usize;
        let vlen = read_u32(self.bytes, sizes.checked_add(4)?)? as usize;
        let key_end = self.pos.checked_add(klen)?;
        let key = self.bytes.get(self.pos..key_end)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(vlen)?;
        let value = self.bytes.get(value_start..value_end)?;
        self.pos = value_end.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

/// What [`check_map`] found in a serialized map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapCheck {
    /// A declared pair is missing or cut.
    Malformed,
    /// Complete, and every name and value is UTF-8.
    Text,
    /// Complete, with some name or value that is not UTF-8.
    Binary,
}

/// Checks a serialized map in one walk over its size table and one UTF-8 check of its text,
/// instead of one check per name and value (most of the cost of reading a map in the VM). The
/// text (names and values, each followed by its NUL) is checked whole: where every separator is
/// NUL, a whole that is UTF-8 means every piece is, since NUL is a character of its own and ends
/// no other. A map whose separators are not NUL (no host writes one) is checked piece by piece.
pub fn check_map(bytes: &[u8]) -> MapCheck {
    if bytes.is_empty() {
        return MapCheck::Text;
    }
    let Some(count) = read_u32(bytes, 0) else { return MapCheck::Malformed };
    let Some(text_start) = (count as usize).checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return MapCheck::Malformed;
    };
    let mut pos = text_start;
    let mut nul_separated = true;
    for i in 0..count as usize {
        let Some(sizes) = i.checked_mul(8).and_then(|n| n.checked_add(4)) else { return MapCheck::Malformed };
        let (Some(klen), Some(vlen)) =
            (read_u32(bytes, sizes), sizes.checked_add(4).and_then(|at| read_u32(bytes, at)))
        else {
            return MapCheck::Malformed;
        };
        for (piece, len) in [klen, vlen].into_iter().enumerate() {
            let Some(sep) = pos.checked_add(len as usize) else { return MapCheck::Malformed };
            match bytes.get(sep) {
                Some(0) => pos = sep + 1,
                Some(_) => {
                    nul_separated = false;
                    pos = sep + 1;
                }
                // The last NUL may be missing, as `PairsIter` allows; anything else missing is
                // a cut map.
                None if sep == bytes.len() && i + 1 == count as usize && piece == 1 => pos = sep,
                None => return MapCheck::Malformed,
            }
        }
    }
    let text = bytes.get(text_start..pos).unwrap_or_default();
    let utf8 = if nul_separated {
        std::str::from_utf8(text).is_ok()
    } else {
        PairsIter::new(bytes).all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok())
    };
    if utf8 {
        MapCheck::Text
    } else {
        MapCheck::Binary
    }
}

/// True when `bytes` is a complete serialized map (every declared pair present).
pub fn is_well_formed(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let Some(count) = read_u32(bytes, 0) else { return false };
    PairsIter::new(bytes).count() == count as usize
}

/// Appends a header (a second value when the name exists).
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        abi::proxy_add_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Sets a header, replacing every existing value (adding it when absent).
pub fn set_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        abi::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a header; removing an absent header succeeds.
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length describe a live slice for the duration of the call.
    unit(unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Up to `max` bytes of a buffer from `start`; empty when the buffer is absent or empty.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { abi::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    match status(code) {
        // SAFETY: on Ok the host returned a guest allocation of `size` bytes.
        Status::Ok => Ok(unsafe { take(data, size) }),
        Status::NotFound | Status::Empty => Ok(Vec::new()),
        other => Err(other),
    }
}

/// A property (`request.id`, `source.address`, ...) by path segments; `Ok(None)` when unknown.
pub fn property(path: &[&str]) -> Result<Option<Bytes>, Status> {
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
        unsafe { abi::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
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
pub fn foreign_function(name: &str, arguments: &[u8]) -> Result<Bytes, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe {
        abi::proxy_call_foreign_function(
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
pub fn send_local_response(
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
        abi::proxy_send_local_response(
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
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: the name pointer and length describe a live string; `id` is a valid out pointer.
    unit(unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` to a counter or gauge.
pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: plain values only.
    unit(unsafe { abi::proxy_increment_metric(id, offset) })
}

/// Sets a gauge or records a histogram value.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values only.
    unit(unsafe { abi::proxy_record_metric(id, value) })
}

/// A shared-data entry and its compare-and-swap version; `(None, None)` when the key is absent.
pub fn shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: the pointers are valid for the call; the host fills them per ABI 0.2.1.
    let code = unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
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
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: the pointers and lengths describe live slices for the duration of the call.
    unit(unsafe {
        abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
    })
}

/// Asks for `on_tick` every `period` (zero stops it); whole milliseconds, at most `u32::MAX`.
pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value only.
    unit(unsafe { abi::proxy_set_tick_period_milliseconds(ms) })
}

/// The host's wall clock (Envoy's, which tests can move; not WASI's).
pub fn current_time() -> Result<SystemTime, Status> {
    let mut ns = 0u64;
    // SAFETY: `ns` is a valid out pointer.
    unit(unsafe { abi::proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Tells the host a plugin that asked to finish its work on shutdown has finished it.
pub fn done() -> Result<(), Status> {
    // SAFETY: no arguments.
    unit(unsafe { abi::proxy_done() })
}

/// Writes a line to the host's log.
pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: the pointer and length describe a live string.
    unit(unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The ABI's stream kinds (`proxy_continue_stream`, `proxy_close_stream`).
const HTTP_REQUEST: u32 = 0;
const HTTP_RESPONSE: u32 = 1;

/// Lets a paused request go on.
pub fn resume_http_request() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { abi::proxy_continue_stream(HTTP_REQUEST) })
}

/// Lets a paused response go on.
pub fn resume_http_response() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { abi::proxy_continue_stream(HTTP_RESPONSE) })
}

/// Resets the stream (the client sees the connection's stream end without an answer).
pub fn reset_http_request() -> Result<(), Status> {
    // SAFETY: plain value only.
    unit(unsafe { abi::proxy_close_stream(HTTP_REQUEST) })
}

/// Sends an HTTP callout and returns its token. Goes through the `proxy-wasm` crate, whose
/// dispatcher must know the token to hand the answer to the calling context; Envoy answers this
/// call with Ok, BadArgument or InternalFailure only, which the crate returns as they are.
pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, Status> {
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
}

/// Serializes header pairs in the ABI's map format: count, then (key len, value len) pairs, then
/// each key and value followed by NUL. Names and values are text or bytes (values a host gave,
/// kept unchanged).
pub fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let body: usize = pairs.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + body);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&len_u32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    // Lengths on wasm32 are at most u32::MAX; saturating keeps native builds total.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses the ABI's map format into owned pairs; `None` when the bytes are not a well-formed map.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(Bytes, Bytes)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let mut pos = count.checked_mul(8)?.checked_add(4)?;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: refuse absurd counts before allocating.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let sizes = 4 + i * 8;
        let klen = read_u32(bytes, sizes)? as usize;
        let vlen = read_u32(bytes, sizes + 4)? as usize;
        let key = bytes.get(pos..pos.checked_add(klen)?)?.to_vec();
        pos = pos.checked_add(klen)?.checked_add(1)?;
        let value = bytes.get(pos..pos.checked_add(vlen)?)?.to_vec();
        pos = pos.checked_add(vlen)?.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs = [(":path", "/a"), ("x-k", ""), ("", "v")];
        let bytes = serialize_pairs(&pairs);
        let back = deserialize_pairs(&bytes).unwrap();
        let back: Vec<(&str, &str)> = back
            .iter()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(back, pairs);
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        assert_eq!(deserialize_pairs(&[]), Some(vec![]));
        assert_eq!(deserialize_pairs(&[1, 0]), None);
        assert_eq!(deserialize_pairs(&[255, 255, 255, 255]), None);
        let mut bytes = serialize_pairs(&[("a", "b")]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(deserialize_pairs(&bytes), None);
        // A declared length beyond the buffer.
        let mut bytes = serialize_pairs(&[("a", "b")]);
        bytes[4] = 200;
        assert_eq!(deserialize_pairs(&bytes), None);
    }

    /// A map serialized as Envoy does, but with byte strings.
    fn raw_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let count = u32::try_from(pairs.len()).unwrap();
        let mut out = count.to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend(u32::try_from(k.len()).unwrap().to_le_bytes());
            out.extend(u32::try_from(v.len()).unwrap().to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn check_map_tells_text_from_binary_from_malformed() {
        assert_eq!(check_map(&[]), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[])), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[(b":path", b"/caf\xc3\xa9"), (b"x", b"")])), MapCheck::Text);
        assert_eq!(check_map(&raw_map(&[(b"x", b"\xff")])), MapCheck::Binary);
        // A character cut by the end of a value is not UTF-8, even though the next byte is NUL.
        assert_eq!(check_map(&raw_map(&[(b"x", b"\xc3"), (b"y", b"1")])), MapCheck::Binary);
        // Sizes that do not add up, or a size table cut short.
        let mut cut = raw_map(&[(b"a", b"b")]);
        cut.truncate(cut.len() - 2);
        assert_eq!(check_map(&cut), MapCheck::Malformed);
        assert_eq!(check_map(&[2, 0, 0, 0, 1, 0]), MapCheck::Malformed);
        assert_eq!(check_map(&[255, 255, 255, 255]), MapCheck::Malformed);
        // Without the last NUL, as `PairsIter` reads it.
        let mut unterminated = raw_map(&[(b"a", b"b")]);
        unterminated.pop();
        assert!(is_well_formed(&unterminated));
        assert_eq!(check_map(&unterminated), MapCheck::Text);
    }

    /// With a separator that is not NUL, a UTF-8 whole can hide a piece that is not: each piece
    /// is then checked on its own, so the unchecked reads of a snapshot stay sound.
    #[test]
    fn check_map_checks_each_piece_when_separators_are_not_nul() {
        // Key "\xc3" followed, where the NUL belongs, by "\xa9": together "é", apart invalid.
        let mut bytes = raw_map(&[(b"\xc3", b"v")]);
        let sep = 4 + 8 + 1;
        bytes[sep] = 0xa9;
        assert!(std::str::from_utf8(&bytes[12..]).is_ok(), "the whole text is UTF-8");
        assert_eq!(check_map(&bytes), MapCheck::Binary);
        let mut ok = raw_map(&[(b"k", b"v")]);
        ok[sep] = b'=';
        assert_eq!(check_map(&ok), MapCheck::Text);
    }

    /// On random maps (bytes drawn mostly from multi-byte UTF-8 pieces, separators sometimes not
    /// NUL, sometimes cut), the one-pass check agrees with checking every piece on its own.
    #[test]
    fn check_map_agrees_with_checking_each_piece() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet: [&[u8]; 6] = [b"a", b"\0", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe2\x82\xac"];
        for _ in 0..20_000 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..next(4))
                .map(|_| {
                    let mut piece =
                        || (0..next(4)).flat_map(|_| alphabet[next(alphabet.len())].to_vec()).collect();
                    (piece(), piece())
                })
                .collect();
            let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            let mut bytes = raw_map(&refs);
            if next(3) == 0 && bytes.len() > 4 {
                let at = 4 + next(bytes.len() - 4);
                bytes[at] = alphabet[next(alphabet.len())][0];
            }
            if next(5) == 0 {
                bytes.truncate(next(bytes.len() + 1));
            }
            let expected = if !is_well_formed(&bytes) {
                MapCheck::Malformed
            } else if PairsIter::new(&bytes)
                .all(|(k, v)| std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok())
            {
                MapCheck::Text
            } else {
                MapCheck::Binary
            };
            assert_eq!(check_map(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn native_builds_have_no_host() {
        assert_eq!(header(MapType::HttpRequestHeaders, ":path"), Err(Status::InternalFailure));
    }
}
