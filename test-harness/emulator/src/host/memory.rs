//! Values crossing the VM boundary: reading the module's memory, and handing a value back the
//! way Envoy does, through an allocation in the module.

use super::import::C;
use crate::abi::status;
use crate::wasi::{write, write_u32};
use wasmtime::{format_err as anyhow, Result};

/// Name under which [`HostState::host_calls`](super::state::HostState::host_calls) counts the host's allocation callbacks into the
/// module (`proxy_on_memory_allocate` or `malloc`), made for every value a host call returns.
pub const ALLOCATE_CALLBACK: &str = "proxy_on_memory_allocate";

/// Allocates in the module with its `malloc`/`proxy_on_memory_allocate` and copies `data`
/// there, writing the pointer and size, as proxy-wasm-cpp-host's `copyToPointerSize` does.
pub(super) fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> Result<u32> {
    let mut ptr = 0u32;
    if !data.is_empty() {
        let malloc = c
            .data()
            .malloc
            .clone()
            .ok_or_else(|| anyhow!("the module exports neither malloc nor proxy_on_memory_allocate"))?;
        // In Envoy this is a second crossing: the host calls back into the VM to allocate.
        c.data_mut().count_host_call(ALLOCATE_CALLBACK);
        ptr = malloc.call(&mut *c, data.len() as u32)?;
        if ptr == 0 || !write(c, ptr, data) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
    }
    if !write_u32(c, ptr_ptr, ptr) || !write_u32(c, size_ptr, data.len() as u32) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    Ok(status::OK)
}

macro_rules! mem {
    ($c:expr, $ptr:expr, $len:expr) => {
        match read($c, $ptr, $len) {
            Some(v) => v,
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        }
    };
}

pub(crate) use mem;
