//! Properties: Envoy 1.40's attributes as it answers them, and filter state the module sets.

use super::import::import;
use super::memory::{copy_out, mem};
use super::state::{HeaderMap, HostState, Phase, UPSTREAM_LOCAL_ADDRESS};
use crate::abi::{serialize_pairs, status};
use crate::grpc::http_to_grpc_status;
use crate::wasi::read;
use wasmtime::{Linker, Result};

fn property_path(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Envoy's header map `byteSize()`: the bytes of every name and value.
fn byte_size(m: &HeaderMap) -> u64 {
    m.entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

/// Envoy's `headerNameIsValid` for a `request.headers.<name>` key: an HTTP token, or a
/// pseudo-header name (a leading `:`). Anything else is NotFound.
fn header_name_is_valid(name: &str) -> bool {
    let name = name.strip_prefix(':').unwrap_or(name);
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header map as a CEL map, the way Envoy serializes `request.headers`/`response.headers`:
/// proxy-wasm pairs, one per distinct name, its values joined with `,` (Envoy's
/// `getAllOfHeaderAsString`). Envoy lists the names in hash order, which changes from request
/// to request; the emulator keeps their first appearance.
fn header_map_value(m: Option<&HeaderMap>) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(m) = m {
        for (k, _) in &m.entries {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    let values: Vec<Vec<u8>> = names.iter().map(|n| joined(m, n).unwrap_or_default()).collect();
    let pairs: Vec<(&[u8], &[u8])> =
        names.iter().zip(&values).map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
    serialize_pairs(&pairs)
}

/// Every value of a header, joined with `,` (Envoy's `getAllOfHeaderAsString`).
fn joined(m: Option<&HeaderMap>, name: &str) -> Option<Vec<u8>> {
    let m = m?;
    let key = m.key(name.as_bytes());
    let mut out: Option<Vec<u8>> = None;
    for (_, v) in m.entries.iter().filter(|(k, _)| *k == key) {
        match &mut out {
            Some(o) => {
                o.push(b',');
                o.extend_from_slice(v);
            }
            None => out = Some(v.clone()),
        }
    }
    out
}

/// Envoy's `Grpc::Common::getGrpcStatus` on one map: the `grpc-status` value, -1 (InvalidCode)
/// when it is not a number or above 16.
fn grpc_status_of(m: Option<&HeaderMap>) -> Option<i64> {
    let v = m?.get(b"grpc-status")?;
    Some(match std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(n) if n <= 16 => n as i64,
        _ => -1,
    })
}

/// The port of an `ip:port` / `[ip]:port` address.
fn port_of(addr: &str) -> Option<i64> {
    addr.rsplit_once(':')?.1.parse::<u16>().ok().map(i64::from)
}

fn int(v: i64) -> std::result::Result<Vec<u8>, u32> {
    Ok(v.to_le_bytes().to_vec())
}

/// The value of a property, following Envoy 1.40's attribute names and answers (each checked
/// with the probe filter, see the README). Test-set values win. `Err` is the status: NotFound
/// for an unknown attribute or one not available now, SerializationFailure for a whole
/// attribute group (`request`, `connection`, ...), which Envoy cannot serialize either.
fn get_property(st: &HostState, raw: &[u8]) -> std::result::Result<Vec<u8>, u32> {
    const NF: u32 = status::NOT_FOUND;
    let ctx = st.ctx();
    let stream = st.streams.get(&ctx);
    if let Some(s) = stream {
        if let Some(v) = s.properties.get(raw) {
            return Ok(v.clone());
        }
    }
    if let Some(v) = st.properties.get(raw) {
        return Ok(v.clone());
    }
    let path = property_path(raw);
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let ["plugin_vm_id"] = parts.as_slice() {
        return Ok(st.vm_id.clone().into_bytes());
    }
    let s = stream.ok_or(NF)?;
    // Envoy: set_property stores filter state `wasm.<path>`, and get_property finds it only by
    // a single-segment path (the probe: set a.b then get a.b -> NotFound).
    if parts.len() == 1 {
        if let Some(v) = s.filter_state.get(raw) {
            return Ok(v.clone());
        }
    }
    let log = s.phase == Phase::Log;
    // Envoy reads request.* from the request headers it still points to (NotFound after the
    // headers callback returned Continue; the access-log copy in on_log), and response.* from
    // the response headers/trailers in the same way.
    let req = if s.req.headers_live || (log && s.req.headers_seen) { Some(&s.req.headers) } else { None };
    let resp = if s.resp.headers_live || (log && s.resp.headers_seen) { Some(&s.resp.headers) } else { None };
    let resp_trailers = if s.resp.trailers_live || log { s.resp.trailers.as_ref() } else { None };
    let hdr =
        |m: Option<&HeaderMap>, k: &str| m.and_then(|m| m.get(k.as_bytes())).map(<[u8]>::to_vec).ok_or(NF);
    let path_value = || req.and_then(|m| m.get(b":path")).ok_or(NF);
    let response_code = || -> Option<u64> {
        if !s.resp.headers_seen {
            return None;
        }
        std::str::from_utf8(s.resp.headers.get(b":status")?).ok()?.parse().ok()
    };
    let down = &st.downstream;
    let upstream = down.upstream.as_ref();
    let answered = s.upstream_answered || s.code_details.as_deref() == Some("via_upstream");
    match parts.as_slice() {
        ["request" | "response" | "connection" | "source" | "destination" | "upstream" | "xds"
        | "filter_state"] => Err(status::SERIALIZATION_FAILURE),
        ["request", "path"] => hdr(req, ":path"),
        ["request", "url_path"] => {
            Ok(path_value()?.split(|b| *b == b'?').next().unwrap_or_default().to_vec())
        }
        // The query without its fragment; "" without a `?` (the probe: `c=1&d=2` for
        // `/a/b?c=1&d=2`).
        ["request", "query"] => {
            let p = path_value()?;
            Ok(match p.iter().position(|b| *b == b'?') {
                Some(i) => {
                    let q = p.get(i + 1..).unwrap_or_default();
                    q.split(|b| *b == b'#').next().unwrap_or_default().to_vec()
                }
                None => Vec::new(),
            })
        }
        ["request", "host"] => hdr(req, ":authority"),
        ["request", "method"] => hdr(req, ":method"),
        // Envoy adds `:scheme` to every request before the filters run (`http` on a plaintext
        // listener); a test that gives none gets that default.
        ["request", "scheme"] => {
            let m = req.ok_or(NF)?;
            Ok(m.get(b":scheme").map(<[u8]>::to_vec).unwrap_or_else(|| b"http".to_vec()))
        }
        ["request", "id"] => hdr(req, "x-request-id"),
        ["request", "referer"] => hdr(req, "referer"),
        ["request", "useragent"] => hdr(req, "user-agent"),
        ["request", "headers"] => Ok(header_map_value(req)),
        ["request", "headers", name] if header_name_is_valid(name) => joined(req, name).ok_or(NF),
        ["request", "time"] => int(s.start_realtime_ns as i64),
        ["request", "protocol"] => Ok(down.protocol.clone().into_bytes()),
        ["request", "duration"] => {
            let end = s.end_monotonic_ns.ok_or(NF)?;
            int(end.saturating_sub(s.start_monotonic_ns) as i64)
        }
        // content-length while the headers are there (NotFound if it is not a number),
        // otherwise the body bytes read so far.
        ["request", "size"] => match req.and_then(|m| m.get(b"content-length")) {
            Some(v) => int(std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).ok_or(NF)?),
            None => int(s.bytes_received as i64),
        },
        ["request", "total_size"] => int((s.bytes_received + req.map(byte_size).unwrap_or(0)) as i64),
        ["response", "code"] => int(response_code().ok_or(NF)? as i64),
        ["response", "code_details"] => s.code_details.clone().map(String::into_bytes).ok_or(NF),
        ["response", "flags"] => int(s.response_flags as i64),
        // Trailers first, then headers, then the HTTP status mapped to a gRPC one (Envoy's
        // getGrpcStatus): a plain 200 answers 2 (Unknown).
        ["response", "grpc_status"] => match grpc_status_of(resp_trailers).or_else(|| grpc_status_of(resp)) {
            Some(g) => int(g),
            None => int(i64::from(http_to_grpc_status(response_code().ok_or(NF)?))),
        },
        ["response", "headers"] => Ok(header_map_value(resp)),
        ["response", "headers", name] if header_name_is_valid(name) => joined(resp, name).ok_or(NF),
        ["response", "trailers"] => Ok(header_map_value(resp_trailers)),
        ["response", "trailers", name] if header_name_is_valid(name) => joined(resp_trailers, name).ok_or(NF),
        ["response", "size"] => int(s.resp.forwarded.len() as i64),
        ["response", "total_size"] => int((s.resp.forwarded.len() as u64
            + resp.map(byte_size).unwrap_or(0)
            + resp_trailers.map(byte_size).unwrap_or(0)) as i64),
        // One plaintext connection per stream: its id is the stream's context id (Envoy's is a
        // process-wide counter), no TLS, no SNI.
        ["connection", "id"] | ["connection_id"] => Ok(u64::from(ctx).to_le_bytes().to_vec()),
        ["connection", "mtls"] => Ok(vec![0]),
        ["connection", "requested_server_name"] => Ok(Vec::new()),
        ["source", "address"] => Ok(down.source.clone().into_bytes()),
        ["source", "port"] => int(port_of(&down.source).ok_or(NF)?),
        ["destination", "address"] => Ok(down.destination.clone().into_bytes()),
        ["destination", "port"] => int(port_of(&down.destination).ok_or(NF)?),
        // One attempt once the test gave a response (from upstream), none for a local reply or
        // before. With a routed cluster (`EmulatorBuilder::upstream`), Envoy knows the cluster
        // from the request headers on (the route is resolved before the filters run) and the
        // host once it answered; the backend latency only at the end (the log phase).
        ["upstream", "request_attempt_count"] => int(i64::from(answered)),
        ["xds", "cluster_name"] => Ok(upstream.ok_or(NF)?.cluster.clone().into_bytes()),
        ["xds", "cluster_metadata"] if upstream.is_some() => Ok(Vec::new()),
        ["upstream", "num_endpoints"] if upstream.is_some() => int(1),
        ["upstream", "address"] if answered => Ok(upstream.ok_or(NF)?.address.clone().into_bytes()),
        ["upstream", "port"] if answered => int(port_of(&upstream.ok_or(NF)?.address).ok_or(NF)?),
        ["upstream", "local_address"] if answered && upstream.is_some() => {
            Ok(UPSTREAM_LOCAL_ADDRESS.as_bytes().to_vec())
        }
        ["upstream", "transport_failure_reason" | "locality"] if answered && upstream.is_some() => {
            Ok(Vec::new())
        }
        // Envoy 1.40 cannot serialize the host's (absent) metadata.
        ["xds", "upstream_host_metadata"] if answered && upstream.is_some() => {
            Err(status::SERIALIZATION_FAILURE)
        }
        ["response", "backend_latency"] if answered && upstream.is_some() => {
            let end = s.end_monotonic_ns.ok_or(NF)?;
            int(end.saturating_sub(s.start_monotonic_ns) as i64)
        }
        // What Envoy answers for a listener, filter chain, route and node without names or
        // metadata (empty protobuf messages serialize to nothing).
        ["xds", "route_name"
        | "filter_chain_name"
        | "listener_metadata"
        | "route_metadata"
        | "virtual_host_metadata"]
        | ["xds", "node", "id" | "cluster"]
        | ["metadata"] => Ok(Vec::new()),
        ["xds", "listener_direction"] => int(0),
        _ => Err(NF),
    }
}

/// Registers the property imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_get_property", |c, pp: u32, ps: u32, ptr_ptr: u32, size_ptr: u32| {
        let path = mem!(&mut c, pp, ps);
        match get_property(c.data(), &path) {
            Ok(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
            // Envoy: an unknown attribute, or one not available in this context, is NotFound.
            Err(st) => Ok(st),
        }
    })?;
    import!(linker, "proxy_set_property", |c, pp: u32, ps: u32, vp: u32, vs: u32| {
        let path = mem!(&mut c, pp, ps);
        let value = mem!(&mut c, vp, vs);
        let st = c.data_mut();
        let ctx = st.ctx();
        // Envoy: no stream info (root context) is NotFound; otherwise stored as filter state.
        match st.streams.get_mut(&ctx) {
            Some(s) => {
                s.filter_state.insert(path, value);
                Ok(status::OK)
            }
            None => Ok(status::NOT_FOUND),
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        HeaderMap::from_pairs(pairs, true)
    }

    #[test]
    fn header_maps_serialize_one_pair_per_name_values_joined() {
        let m = map(&[(":path", "/"), ("x-a", "1"), ("X-A", "2"), ("x-b", "")]);
        let want: &[(&[u8], &[u8])] = &[(b":path", b"/"), (b"x-a", b"1,2"), (b"x-b", b"")];
        assert_eq!(header_map_value(Some(&m)), serialize_pairs(want));
        // No map (Envoy no longer holds it): an empty map, 4 zero bytes (the probe: 0x00000000).
        assert_eq!(header_map_value(None), vec![0, 0, 0, 0]);
        assert_eq!(joined(Some(&m), "x-a"), Some(b"1,2".to_vec()));
        assert_eq!(joined(Some(&m), "host"), None);
        assert_eq!(joined(Some(&map(&[(":authority", "h")])), "host"), Some(b"h".to_vec()));
        assert_eq!(byte_size(&m), 5 + 1 + 3 + 1 + 3 + 1 + 3);
    }

    #[test]
    fn header_names_valid_as_envoy_checks_them() {
        for ok in ["x-a", "X-Mixed", ":authority", "a.b_c~!"] {
            assert!(header_name_is_valid(ok), "{ok}");
        }
        for bad in ["", ":", "bad name", "a:b", "x\u{e9}", "a\"b"] {
            assert!(!header_name_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn grpc_status_from_trailers_headers_or_http_status() {
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "5")]))), Some(5));
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "17")]))), Some(-1));
        assert_eq!(grpc_status_of(Some(&map(&[("grpc-status", "x")]))), Some(-1));
        assert_eq!(grpc_status_of(Some(&map(&[]))), None);
        assert_eq!(grpc_status_of(None), None);
        let mapped: Vec<i64> = [200, 400, 401, 403, 404, 429, 500, 502, 503, 504]
            .map(|c| i64::from(http_to_grpc_status(c)))
            .to_vec();
        assert_eq!(mapped, [2, 13, 16, 7, 12, 14, 2, 14, 14, 14]);
    }

    #[test]
    fn ports_of_addresses() {
        assert_eq!(port_of("127.0.0.1:40000"), Some(40000));
        assert_eq!(port_of("[::1]:8080"), Some(8080));
        assert_eq!(port_of("/tmp/socket"), None);
        assert_eq!(port_of("h:99999"), None);
    }
}
