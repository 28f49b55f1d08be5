//! Foreign functions: `verify_signature` as Envoy runs it (see `crate::foreign`); the others trap.

use super::import::{import, unimplemented};
use super::memory::{copy_out, mem};
use super::state::HostState;
use crate::abi::status;
use crate::wasi::read;
use wasmtime::{Linker, Result};

/// Registers the foreign function imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(
        linker,
        "proxy_call_foreign_function",
        |c, np: u32, ns: u32, ap: u32, asz: u32, ptr_ptr: u32, size_ptr: u32| {
            let name = mem!(&mut c, np, ns);
            let args = mem!(&mut c, ap, asz);
            if !c.data().foreign_functions {
                return Ok(status::NOT_FOUND);
            }
            match crate::foreign::call(&String::from_utf8_lossy(&name), &args) {
                crate::foreign::Answer::Ok(result) => copy_out(&mut c, &result, ptr_ptr, size_ptr),
                crate::foreign::Answer::Status(code) => Ok(code),
                crate::foreign::Answer::Unimplemented(what) => Err(unimplemented(&what)),
            }
        }
    )?;
    Ok(())
}
