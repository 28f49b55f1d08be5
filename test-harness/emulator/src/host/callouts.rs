//! HTTP callouts.

use super::import::import;
use super::memory::mem;
use super::state::{HeaderMap, HostState, HttpCall};
use crate::abi::{deserialize_pairs, status};
use crate::wasi::{read, write_u32};
use std::time::Duration;
use wasmtime::{Linker, Result};

/// Registers the callout imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_http_call", |c,
                                        up: u32,
                                        us: u32,
                                        hp: u32,
                                        hs: u32,
                                        bp: u32,
                                        bs: u32,
                                        tp: u32,
                                        ts: u32,
                                        timeout: u32,
                                        token_ptr: u32| {
        let cluster = mem!(&mut c, up, us);
        let body = mem!(&mut c, bp, bs);
        let headers = mem!(&mut c, hp, hs);
        let trailers = mem!(&mut c, tp, ts);
        // exports.cc writes the token slot first to check the pointer.
        if !write_u32(&mut c, token_ptr, 0) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        let cluster = String::from_utf8_lossy(&cluster).into_owned();
        let st = c.data_mut();
        // Envoy: an unknown cluster, or a request without :path, :method or :authority, is
        // BadArgument (the probe: all three -> 2, token 0).
        if let Some(known) = &st.clusters {
            if !known.contains(&cluster) {
                return Ok(status::BAD_ARGUMENT);
            }
        }
        let headers = HeaderMap::from_pairs(&deserialize_pairs(&headers), true);
        if headers.get(b":path").is_none()
            || headers.get(b":method").is_none()
            || headers.get(b":authority").is_none()
        {
            return Ok(status::BAD_ARGUMENT);
        }
        let mut headers = headers;
        if !body.is_empty() {
            headers.replace(b"content-length", body.len().to_string().as_bytes());
        }
        // Envoy: token ids step by 4 per VM (the probe: 4, 8, 12).
        st.next_http_token += 4;
        let token = st.next_http_token;
        let timeout = if timeout > 0 { Some(Duration::from_millis(u64::from(timeout))) } else { None };
        let call = HttpCall {
            token,
            cluster,
            headers: headers.to_strings(),
            body,
            trailers: HeaderMap::from_pairs(&deserialize_pairs(&trailers), true).to_strings(),
            timeout,
            deadline: timeout.map(|t| st.monotonic_ns + t.as_nanos() as u64),
            context_id: st.root_id,
        };
        st.http_calls.insert(token, call);
        Ok(if write_u32(&mut c, token_ptr, token) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    Ok(())
}
