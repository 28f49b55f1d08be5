//! gRPC calls (`proxy_grpc_call`, `proxy_grpc_cancel`, `proxy_get_status`), as Envoy 1.40's Wasm
//! host answers them; what Envoy's gRPC client makes of the service's answer is `crate::grpc`.
//! Streams (`proxy_grpc_stream`, `proxy_grpc_send`, `proxy_grpc_close`) are left undefined:
//! the emulator links them to a stub that traps naming the call.

use super::import::import;
use super::memory::{copy_out, mem};
use super::state::{AfterCall, GrpcCall, HostState};
use crate::abi::{deserialize_pairs, status};
use crate::grpc::{self, router, Upstream};
use crate::wasi::{read, write_u32};
use wasmtime::{format_err as anyhow, Linker, Result};

/// Registers the gRPC imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_grpc_call", |c,
                                        up: u32,
                                        us: u32,
                                        sp: u32,
                                        ss: u32,
                                        mp: u32,
                                        ms: u32,
                                        hp: u32,
                                        hs: u32,
                                        bp: u32,
                                        bs: u32,
                                        timeout: u32,
                                        token_ptr: u32| {
        let upstream = mem!(&mut c, up, us);
        let service = mem!(&mut c, sp, ss);
        let method = mem!(&mut c, mp, ms);
        let metadata = mem!(&mut c, hp, hs);
        let message = mem!(&mut c, bp, bs);
        let st = c.data_mut();
        let cluster = match grpc::upstream(&upstream) {
            // Envoy: a name it does not know is ParseFailure, and uses no token.
            Upstream::Cluster(name) => {
                if st.clusters.as_ref().is_some_and(|known| !known.contains(&name)) {
                    return Ok(status::PARSE_FAILURE);
                }
                Some(name)
            }
            Upstream::Service(name) => Some(name),
            Upstream::Unusable => {
                return Err(anyhow!(
                    "proxy_grpc_call: the upstream argument {:?} parses as a GrpcService naming no cluster: Envoy 1.40 aborts on it (\"panic: unset oneof\")",
                    String::from_utf8_lossy(&upstream)
                ))
            }
        };
        // Envoy: token ids step by 4 from 5 per VM (the probe: 5, 9, 13), also for a call it
        // fails at once.
        st.next_grpc_token += 4;
        let token = st.next_grpc_token;
        let known = match (&cluster, &st.clusters) {
            (Some(name), Some(clusters)) => clusters.contains(name),
            _ => true,
        };
        if !known {
            // A GrpcService naming an unknown cluster: the client fails the call inline
            // ("Cluster not available"), so the call returns InternalFailure and the close
            // for the token the module never got follows after the VM call.
            let message = router::NO_CLUSTER.as_bytes().to_vec();
            st.after.push(AfterCall::GrpcClose(token, 14, message));
            return Ok(status::INTERNAL_FAILURE);
        }
        let timeout = grpc::timeout(timeout);
        let call = GrpcCall {
            token,
            cluster: cluster.unwrap_or_default(),
            service: String::from_utf8_lossy(&service).into_owned(),
            method: String::from_utf8_lossy(&method).into_owned(),
            metadata: deserialize_pairs(&metadata)
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
                .collect(),
            message,
            timeout,
            deadline: timeout.map(|t| st.monotonic_ns + t.as_nanos() as u64),
            context_id: st.root_id,
        };
        st.grpc_calls.insert(token, call);
        Ok(if write_u32(&mut c, token_ptr, token) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_grpc_cancel", |c, token: u32| {
        // Envoy cancels a pending call (no answer comes); any other token is NotFound.
        Ok(match c.data_mut().grpc_calls.remove(&token) {
            Some(_) => status::OK,
            None => status::NOT_FOUND,
        })
    })?;
    import!(linker, "proxy_get_status", |c, code_ptr: u32, ptr_ptr: u32, size_ptr: u32| {
        // Envoy keeps the last close's code on the root context; the message only while the
        // close is being delivered (the probe: `0,14,''` in a later receive).
        let (code, message) = c.data().grpc_status.clone();
        if !write_u32(&mut c, code_ptr, code) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        copy_out(&mut c, &message.unwrap_or_default(), ptr_ptr, size_ptr)
    })?;
    Ok(())
}
