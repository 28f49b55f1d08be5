//! The registry's host calls in Envoy: metrics and shared data through the ABI directly, so that
//! no host answer can panic the VM (the `proxy-wasm` crate's wrappers panic on statuses they do
//! not expect).

use proxy_wasm::types::{MetricType, Status};

use crate::series::Host;

#[cfg(target_arch = "wasm32")]
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
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
    }
}

/// Native builds (unit tests) have no host: every call fails.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod abi {
    const UNAVAILABLE: u32 = 10;
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
}

fn status(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        8 => Err(Status::CasMismatch),
        _ => Err(Status::InternalFailure),
    }
}

/// Envoy, through the ABI.
#[derive(Debug, Default, Clone, Copy)]
pub struct Envoy;

impl Host for Envoy {
    fn define(&self, kind: MetricType, name: &str) -> Option<u32> {
        let mut id = 0;
        // SAFETY: the name pointer and length describe a live string; `id` is a valid out pointer.
        let code = unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
        match status(code) {
            Ok(()) => Some(id),
            Err(s) => {
                log::warn!("http_metrics: cannot define metric {name}: {s:?}");
                None
            }
        }
    }

    fn increment(&self, id: u32, delta: i64) {
        // SAFETY: plain values only.
        let _ = status(unsafe { abi::proxy_increment_metric(id, delta) });
    }

    fn record(&self, id: u32, value: u64) {
        // SAFETY: plain values only.
        let _ = status(unsafe { abi::proxy_record_metric(id, value) });
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size = 0usize;
        let mut cas = 0u32;
        // SAFETY: the key describes a live string; the out pointers are valid for the call.
        let code =
            unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        match status(code) {
            Ok(()) => {
                let value = if data.is_null() {
                    None
                } else {
                    // SAFETY: on Ok the host wrote `size` bytes into a buffer it obtained from
                    // this module's allocator (`proxy_on_memory_allocate`), now owned by us.
                    Some(unsafe { Vec::from_raw_parts(data, size, size) })
                };
                Ok((value, (cas != 0).then_some(cas)))
            }
            Err(Status::NotFound) => Ok((None, None)),
            Err(s) => Err(s),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        // SAFETY: key and value describe live byte slices.
        status(unsafe {
            abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        })
    }
}

/// This VM's linear memory in bytes (what the VM holds in Envoy's address space).
pub fn vm_memory() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64) * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}
