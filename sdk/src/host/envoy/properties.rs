//! Properties on the native backend: the proxy-wasm attribute paths filters read, mapped onto
//! Envoy's attribute ids, and encoded as Envoy's Wasm filter encodes them (strings as their
//! bytes, integers as 8 little-endian bytes, booleans as one byte), so a filter reads the same bytes on both targets.
//! Every entry is compared with the Wasm target's answer in the SDK fixture's Envoy tests; a path
//! not in the table reads as absent.
//!
//! `request.duration` is the one the module measures itself at log time: Envoy 1.40 calls a
//! module's `stream_complete` before it records the request's end, so Envoy has no duration
//! there. The module's is the time from the stream's filter creation (Envoy creates it when the
//! request headers have arrived) to the log hook, in nanoseconds, as the Wasm filter's.

use std::time::Duration;

use proxy_wasm::types::{Bytes, Status};

use super::abi::{self, EnvoyBuffer};

/// How an attribute is read and encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
}

/// The path the module times itself at log time.
const DURATION: &str = "request.duration";

/// `envoy_dynamic_module_type_attribute_id` values (Envoy 1.40) by proxy-wasm path.
const ATTRIBUTES: &[(&str, u32, Kind)] = &[
    ("request.path", 0, Kind::Str),
    ("request.url_path", 1, Kind::Str),
    ("request.host", 2, Kind::Str),
    ("request.scheme", 3, Kind::Str),
    ("request.method", 4, Kind::Str),
    ("request.referer", 6, Kind::Str),
    ("request.useragent", 7, Kind::Str),
    ("request.id", 9, Kind::Str),
    ("request.protocol", 10, Kind::Str),
    ("request.query", 11, Kind::Str),
    (DURATION, 12, Kind::Int),
    ("request.size", 13, Kind::Int),
    ("request.total_size", 14, Kind::Int),
    ("response.code", 15, Kind::Int),
    ("response.code_details", 16, Kind::Str),
    ("response.flags", 17, Kind::Int),
    ("response.grpc_status", 18, Kind::Int),
    ("response.size", 21, Kind::Int),
    ("response.total_size", 22, Kind::Int),
    ("source.address", 24, Kind::Str),
    ("source.port", 25, Kind::Int),
    ("destination.address", 26, Kind::Str),
    ("destination.port", 27, Kind::Int),
    ("connection.id", 28, Kind::Int),
    ("connection.mtls", 29, Kind::Bool),
    ("upstream.address", 41, Kind::Str),
    ("upstream.port", 42, Kind::Int),
    ("xds.cluster_name", 57, Kind::Str),
    ("xds.route_name", 61, Kind::Str),
];

/// The attribute at `path` for the stream `filter`; `Ok(None)` when Envoy has none (or the
/// path is not mapped). `log_elapsed` is the stream's age in the log hook (`None` elsewhere).
pub(super) fn read(
    filter: abi::FilterEnvoyPtr,
    path: &[&str],
    log_elapsed: Option<Duration>,
) -> Result<Option<Bytes>, Status> {
    let api = super::api()?;
    let joined = path.join(".");
    let Some((name, id, kind)) = ATTRIBUTES.iter().find(|(name, _, _)| *name == joined) else {
        return Ok(None);
    };
    let found = match kind {
        Kind::Str => {
            let mut value = EnvoyBuffer::EMPTY;
            // SAFETY: a live stream; `value` is a valid out pointer.
            let found = unsafe { (api.http_filter_get_attribute_string)(filter, *id, &mut value) };
            // SAFETY: Envoy filled `value` just now; it is copied here.
            found.then(|| unsafe { value.as_slice() }.to_vec())
        }
        Kind::Int => {
            let mut value = 0u64;
            // SAFETY: a live stream; `value` is a valid out pointer.
            let found = unsafe { (api.http_filter_get_attribute_int)(filter, *id, &mut value) };
            found.then(|| value.to_le_bytes().to_vec())
        }
        Kind::Bool => {
            let mut value = false;
            // SAFETY: a live stream; `value` is a valid out pointer.
            let found = unsafe { (api.http_filter_get_attribute_bool)(filter, *id, &mut value) };
            // Envoy 1.40 answers `connection.mtls` (the one boolean mapped) only on a TLS
            // connection; the Wasm filter reads false on any other, so does this.
            Some(vec![u8::from(found && value)])
        }
    };
    Ok(match (found, log_elapsed) {
        (None, Some(elapsed)) if *name == DURATION => {
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            Some(nanos.to_le_bytes().to_vec())
        }
        (found, _) => found,
    })
}
