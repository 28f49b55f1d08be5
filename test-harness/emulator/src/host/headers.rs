//! Header maps and body buffers: which map or buffer a type names in the current callback,
//! and the imports that read and change them.

use super::import::import;
use super::memory::{copy_out, mem};
use super::state::{HeaderMap, HostState, Phase};
use crate::abi::{deserialize_pairs, status};
use crate::wasi::{read, write_u32};
use wasmtime::{Linker, Result};

/// Which header map a map type names, and whether it is mutable in the current callback.
enum MapRef {
    Stream(u32, u8),
    CallHeaders,
    CallTrailers,
}

fn map_ref(st: &HostState, t: u32) -> Option<MapRef> {
    let ctx = st.ctx();
    match t {
        0..=3 if ctx != st.root_id => Some(MapRef::Stream(ctx, t as u8)),
        6 => Some(MapRef::CallHeaders),
        7 => Some(MapRef::CallTrailers),
        _ => None,
    }
}

/// The map for reading; `None` if Envoy has no map there. In the log phase Envoy reads the
/// access-log copies: request headers, response headers and trailers (no request trailers).
fn const_map(st: &HostState, t: u32) -> Option<&HeaderMap> {
    match map_ref(st, t)? {
        MapRef::Stream(ctx, t) => {
            let s = st.streams.get(&ctx)?;
            let log = s.phase == Phase::Log;
            match t {
                0 if s.req.headers_live || (log && s.req.headers_seen) => Some(&s.req.headers),
                1 if s.req.trailers_live && !log => s.req.trailers.as_ref(),
                2 if s.resp.headers_live || (log && s.resp.headers_seen) => Some(&s.resp.headers),
                3 if s.resp.trailers_live || log => s.resp.trailers.as_ref(),
                _ => None,
            }
        }
        MapRef::CallHeaders => st.call_response.as_ref().map(|r| &r.0),
        MapRef::CallTrailers => st.call_response.as_ref().and_then(|r| r.2.as_ref()),
    }
}

/// The map for writing; `None` (BadArgument) where Envoy has no mutable map.
fn mut_map(st: &mut HostState, t: u32) -> Option<&mut HeaderMap> {
    match map_ref(st, t)? {
        MapRef::Stream(ctx, t) => {
            let s = st.streams.get_mut(&ctx)?;
            if s.phase != Phase::Open {
                return None;
            }
            match t {
                0 if s.req.headers_live => Some(&mut s.req.headers),
                1 if s.req.trailers_live => s.req.trailers.as_mut(),
                // Envoy adds request trailers when asked for them in the last body callback.
                1 if s.req.body_live && s.req.complete => {
                    Some(s.req.trailers.get_or_insert_with(|| HeaderMap::new(true)))
                }
                2 if s.resp.headers_live => Some(&mut s.resp.headers),
                3 if s.resp.trailers_live => s.resp.trailers.as_mut(),
                3 if s.resp.body_live && s.resp.complete => {
                    Some(s.resp.trailers.get_or_insert_with(|| HeaderMap::new(false)))
                }
                _ => None,
            }
        }
        // Call responses are read-only in Envoy (const maps).
        _ => None,
    }
}

enum Buf {
    Body(u32, bool),
    Const(Vec<u8>),
    Empty,
}

fn buffer(st: &HostState, t: u32) -> Option<Buf> {
    let ctx = st.ctx();
    Some(match t {
        0 | 1 => {
            let req = t == 0;
            match st.streams.get(&ctx) {
                Some(s) if (if req { s.req.body_live } else { s.resp.body_live }) => Buf::Body(ctx, req),
                // Envoy: `buffer_.set(nullptr)`: an empty buffer (status Ok, size 0), not
                // NotFound; the probe saw 0,0 for the response body in on_response_headers.
                _ => Buf::Empty,
            }
        }
        // Envoy: the gRPC message while `proxy_on_grpc_receive` runs, else an empty buffer.
        5 => match &st.grpc_receive {
            Some(message) => Buf::Const(message.clone()),
            None => Buf::Empty,
        },
        2 | 3 | 8 => Buf::Empty,
        4 => Buf::Const(st.call_response.as_ref()?.1.clone()),
        6 => Buf::Const(st.vm_config.clone()),
        7 if st.in_configure => Buf::Const(st.plugin_config.clone()),
        7 => return None,
        _ => return None,
    })
}

/// Registers the header map and buffer imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_get_buffer_status", |c, t: u32, len_ptr: u32, flags_ptr: u32| {
        let len = match buffer(c.data(), t) {
            None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
            Some(Buf::Body(ctx, req)) => c
                .data()
                .streams
                .get(&ctx)
                .map(|s| if req { s.req.body.len() } else { s.resp.body.len() })
                .unwrap_or(0),
            Some(Buf::Const(v)) => v.len(),
            Some(Buf::Empty) => 0,
        };
        Ok(if write_u32(&mut c, len_ptr, len as u32) && write_u32(&mut c, flags_ptr, 0) {
            status::OK
        } else {
            status::INVALID_MEMORY_ACCESS
        })
    })?;
    import!(
        linker,
        "proxy_get_buffer_bytes",
        |c, t: u32, start: u32, max: u32, ptr_ptr: u32, size_ptr: u32| {
            let data = match buffer(c.data(), t) {
                None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
                Some(Buf::Body(ctx, req)) => c
                    .data()
                    .streams
                    .get(&ctx)
                    .map(|s| if req { s.req.body.clone() } else { s.resp.body.clone() })
                    .unwrap_or_default(),
                Some(Buf::Const(v)) => v,
                Some(Buf::Empty) => Vec::new(),
            };
            // exports.cc: overflow of start+length is BadArgument; reads are clipped to the buffer.
            if start.checked_add(max).is_none() {
                return Ok(status::BAD_ARGUMENT);
            }
            let s = (start as usize).min(data.len());
            let e = (start as usize).saturating_add(max as usize).min(data.len());
            let slice = data.get(s..e).unwrap_or(&[]);
            copy_out(&mut c, slice, ptr_ptr, size_ptr)
        }
    )?;
    import!(linker, "proxy_set_buffer_bytes", |c, t: u32, start: u32, len: u32, ptr: u32, size: u32| {
        let (ctx, req) = match buffer(c.data(), t) {
            None => return Ok(if t > 8 { status::BAD_ARGUMENT } else { status::NOT_FOUND }),
            Some(Buf::Body(ctx, req)) => (ctx, req),
            // Immutable or absent buffers: BadArgument (Envoy's Buffer::copyFrom).
            Some(_) => return Ok(status::BAD_ARGUMENT),
        };
        let data = mem!(&mut c, ptr, size);
        let Some(s) = c.data_mut().streams.get_mut(&ctx) else { return Ok(status::BAD_ARGUMENT) };
        let body = if req { &mut s.req.body } else { &mut s.resp.body };
        // Envoy's Buffer::copyFrom: start 0 and length 0 prepends; start 0 and length >= size
        // replaces everything; start >= size appends; anything else (a middle splice) is
        // BadArgument.
        let (start, len) = (start as usize, len as usize);
        if start == 0 {
            if len == 0 {
                let mut v = data;
                v.extend_from_slice(body);
                *body = v;
            } else if len >= body.len() {
                *body = data;
            } else {
                return Ok(status::BAD_ARGUMENT);
            }
        } else if start >= body.len() {
            body.extend_from_slice(&data);
        } else {
            return Ok(status::BAD_ARGUMENT);
        }
        Ok(status::OK)
    })?;
    import!(linker, "proxy_get_header_map_pairs", |c, t: u32, ptr_ptr: u32, size_ptr: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        // Envoy: a map that is not available reads as empty (status Ok, null pointer, size 0).
        let data = match const_map(c.data(), t) {
            Some(m) if !m.entries.is_empty() => m.serialize(),
            _ => Vec::new(),
        };
        copy_out(&mut c, &data, ptr_ptr, size_ptr)
    })?;
    import!(linker, "proxy_set_header_map_pairs", |c, t: u32, ptr: u32, size: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let data = mem!(&mut c, ptr, size);
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        m.entries.clear();
        for (k, v) in deserialize_pairs(&data) {
            m.add(&k, &v);
        }
        Ok(status::OK)
    })?;
    import!(
        linker,
        "proxy_get_header_map_value",
        |c, t: u32, kp: u32, ks: u32, ptr_ptr: u32, size_ptr: u32| {
            if t > 7 {
                return Ok(status::BAD_ARGUMENT);
            }
            let key = mem!(&mut c, kp, ks);
            let st = c.data();
            let value = match const_map(st, t) {
                Some(m) => m.get(&key).map(<[u8]>::to_vec),
                None => {
                    let log = st.streams.get(&st.ctx()).map(|s| s.phase == Phase::Log).unwrap_or(false);
                    // Envoy: no map here is BadArgument (the probe: response headers during the
                    // request, request headers after their callback returned Continue), except in
                    // the access-log phase, where it is NotFound.
                    return Ok(if log { status::NOT_FOUND } else { status::BAD_ARGUMENT });
                }
            };
            match value {
                Some(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
                // Envoy, ABI 0.2.x: a missing header is NotFound (the probe: 1).
                None => Ok(status::NOT_FOUND),
            }
        }
    )?;
    import!(linker, "proxy_add_header_map_value", |c, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let key = mem!(&mut c, kp, ks);
        let value = mem!(&mut c, vp, vs);
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        m.add(&key, &value);
        Ok(status::OK)
    })?;
    import!(linker, "proxy_replace_header_map_value", |c, t: u32, kp: u32, ks: u32, vp: u32, vs: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let key = mem!(&mut c, kp, ks);
        let value = mem!(&mut c, vp, vs);
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        m.replace(&key, &value);
        Ok(status::OK)
    })?;
    import!(linker, "proxy_remove_header_map_value", |c, t: u32, kp: u32, ks: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let key = mem!(&mut c, kp, ks);
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        m.remove(&key);
        Ok(status::OK)
    })?;
    import!(linker, "proxy_get_header_map_size", |c, t: u32, out: u32| {
        if t > 7 {
            return Ok(status::BAD_ARGUMENT);
        }
        let Some(m) = mut_map(c.data_mut(), t) else { return Ok(status::BAD_ARGUMENT) };
        let size: usize = m.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(if write_u32(&mut c, out, size as u32) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    Ok(())
}
