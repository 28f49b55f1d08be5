//! How an import is registered: [`import!`] counts every call under the import's own name before
//! its body runs, so a count can never land under another import; and the traps for imports the
//! emulator does not implement.

use super::state::HostState;
use wasmtime::{format_err as anyhow, Caller};

/// What every import receives: the module's caller with this VM's [`HostState`].
pub(crate) type C<'a> = Caller<'a, HostState>;

/// Registers the `env` import `$name` on `$linker`. The body is the import's closure; the call is
/// counted in [`HostState::count_host_call`] under `$name` first, the one place a count is taken.
///
/// ```text
/// import!(linker, "proxy_get_log_level", |c, out: u32| { ... })?;
/// ```
macro_rules! import {
    ($linker:expr, $name:literal, |$c:ident $(, $arg:ident: $ty:ty)* $(,)?| $body:block) => {
        $linker.func_wrap(
            "env",
            $name,
            |mut $c: $crate::host::import::C<'_> $(, $arg: $ty)*| -> ::wasmtime::Result<u32> {
                $c.data_mut().count_host_call($name);
                $body
            },
        )
    };
}
pub(crate) use import;

/// A trap for a host call the emulator does not implement: a test never sees a pretend success.
pub(crate) fn unimplemented(name: &str) -> wasmtime::Error {
    anyhow!(
        "host call `{name}` is not implemented by gatewasm-emulator (the test cannot pretend it succeeded)"
    )
}

/// A trap for an import the emulator does not implement.
pub(crate) fn unimplemented_import(module: &str, name: &str) -> wasmtime::Error {
    unimplemented(&format!("{module}.{name}"))
}
