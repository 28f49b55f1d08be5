//! Stream control: continuing, closing and answering a stream locally. Envoy defers each to
//! after the VM call returns, so they go to the after-call queue.

use super::import::import;
use super::memory::mem;
use super::state::{AfterCall, HostState, LocalReply};
use crate::abi::{deserialize_pairs, status};
use crate::wasi::read;
use wasmtime::{Linker, Result};

/// Registers the stream control imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_continue_stream", |c, t: u32| {
        let st = c.data_mut();
        let ctx = st.ctx();
        match t {
            // Envoy defers continueDecoding/Encoding until the VM call returns.
            0 | 1 => {
                if st.streams.contains_key(&ctx) {
                    st.after.push(AfterCall::Continue(ctx, t));
                }
                Ok(status::OK)
            }
            2 => Ok(status::OK),
            3 => Ok(status::UNIMPLEMENTED),
            // The probe: continue_stream(9) -> BadArgument.
            _ => Ok(status::BAD_ARGUMENT),
        }
    })?;
    import!(linker, "proxy_close_stream", |c, t: u32| {
        let st = c.data_mut();
        let ctx = st.ctx();
        match t {
            0..=3 => {
                if st.streams.contains_key(&ctx) && t <= 1 {
                    st.after.push(AfterCall::Close(ctx));
                }
                Ok(status::OK)
            }
            _ => Ok(status::BAD_ARGUMENT),
        }
    })?;
    import!(
        linker,
        "proxy_send_local_response",
        |c, code: u32, dp: u32, ds: u32, bp: u32, bs: u32, hp: u32, hs: u32, grpc: i32| {
            let details = mem!(&mut c, dp, ds);
            let body = mem!(&mut c, bp, bs);
            let headers = mem!(&mut c, hp, hs);
            let st = c.data_mut();
            let ctx = st.ctx();
            let extra: Vec<(String, String)> = deserialize_pairs(&headers)
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).to_ascii_lowercase(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            let reply = LocalReply {
                status: code,
                // Envoy: StringUtil::replaceAllEmptySpace on the details.
                details: String::from_utf8_lossy(&details).replace(char::is_whitespace, "_"),
                body,
                headers: extra,
                grpc_status: grpc,
            };
            // exports.cc: the callback's return value is then ignored (stopNextIteration).
            st.stop_iteration = true;
            if st.streams.contains_key(&ctx) {
                st.after.push(AfterCall::LocalReply(ctx, reply));
            }
            Ok(status::OK)
        }
    )?;
    Ok(())
}
