//! Shared data and shared queues, kept by the VM's group (the other workers of one Envoy).

use super::import::{import, C};
use super::memory::{copy_out, mem};
use super::state::HostState;
use crate::abi::status;
use crate::group::{GroupState, QueueKey};
use crate::wasi::{read, write_u32};
use wasmtime::format_err as anyhow;
use wasmtime::{Linker, Result};

pub(super) fn group<'a>(c: &'a C<'_>) -> Result<std::sync::MutexGuard<'a, GroupState>> {
    c.data().group.lock().map_err(|_| anyhow!("the emulator group's shared state was poisoned by a panic"))
}

/// Registers the shared data and queue imports.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    import!(linker, "proxy_get_shared_data", |c,
                                              kp: u32,
                                              ks: u32,
                                              ptr_ptr: u32,
                                              size_ptr: u32,
                                              cas_ptr: u32| {
        let key = mem!(&mut c, kp, ks);
        let vm = c.data().vm_id.clone();
        let found = group(&c)?.shared_data.get(&(vm, key)).cloned();
        // The probe: a missing key -> NotFound.
        let Some((value, cas)) = found else { return Ok(status::NOT_FOUND) };
        let st = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
        if st != status::OK {
            return Ok(st);
        }
        Ok(if write_u32(&mut c, cas_ptr, cas) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_set_shared_data", |c, kp: u32, ks: u32, vp: u32, vs: u32, cas: u32| {
        let key = mem!(&mut c, kp, ks);
        let value = mem!(&mut c, vp, vs);
        let vm = c.data().vm_id.clone();
        Ok(group(&c)?.set_shared_data(vm, key, value, cas))
    })?;
    import!(linker, "proxy_register_shared_queue", |c, np: u32, ns: u32, out: u32| {
        let name = mem!(&mut c, np, ns);
        let (vm, member, root) = (c.data().vm_id.clone(), c.data().member, c.data().root_id);
        let id = group(&c)?.register_queue(QueueKey { vm_id: vm, name }, member, root);
        Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_resolve_shared_queue", |c, vp: u32, vs: u32, np: u32, ns: u32, out: u32| {
        let vm = mem!(&mut c, vp, vs);
        let name = mem!(&mut c, np, ns);
        // An empty vm_id means this VM's (the probe: "" and "probe_vm" resolve the same queue).
        let vm_id =
            if vm.is_empty() { c.data().vm_id.clone() } else { String::from_utf8_lossy(&vm).into_owned() };
        let id = group(&c)?.queue_ids.get(&QueueKey { vm_id, name }).copied();
        let Some(id) = id else { return Ok(status::NOT_FOUND) };
        Ok(if write_u32(&mut c, out, id) { status::OK } else { status::INVALID_MEMORY_ACCESS })
    })?;
    import!(linker, "proxy_enqueue_shared_queue", |c, id: u32, vp: u32, vs: u32| {
        let value = mem!(&mut c, vp, vs);
        Ok(group(&c)?.enqueue(id, value))
    })?;
    import!(linker, "proxy_dequeue_shared_queue", |c, id: u32, ptr_ptr: u32, size_ptr: u32| {
        let r = group(&c)?.dequeue(id);
        match r {
            Ok(v) => copy_out(&mut c, &v, ptr_ptr, size_ptr),
            Err(st) => Ok(st),
        }
    })?;
    Ok(())
}
