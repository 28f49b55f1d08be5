//! Runs a `wasm32-wasip1` command module (e.g. a `cargo test --target wasm32-wasip1` test
//! binary) with the emulator's WASI: arguments, this process's environment, stdout/stderr
//! forwarded, real clocks, random bytes, no file system. Exits with the module's exit code.
//!
//! Use it as the Cargo runner:
//! `CARGO_TARGET_WASM32_WASIP1_RUNNER=/path/to/wasi-run cargo test --target wasm32-wasip1 -p CRATE`

use gatewasm_emulator::wasi::{self, Clock, ProcExit, Sink, WasiCtx, WasiView};
use std::process::ExitCode;
use wasmtime::{ExternType, Linker, Module, Store};

struct RunState {
    wasi: WasiCtx,
}

impl WasiView for RunState {
    fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }
}

fn run() -> Result<i32, String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: wasi-run MODULE.wasm [ARGS...]")?;
    let engine = gatewasm_emulator::engine();
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let module = Module::new(engine, &bytes).map_err(|e| format!("{path}: {e:#}"))?;
    let mut ctx = WasiCtx::captured();
    ctx.args = std::iter::once(path.clone()).chain(args).collect();
    ctx.env = std::env::vars().collect();
    ctx.stdout = Sink::Inherit;
    ctx.stderr = Sink::Inherit;
    ctx.clock = Clock::Real;
    let mut store = Store::new(engine, RunState { wasi: ctx });
    let mut linker: Linker<RunState> = Linker::new(engine);
    wasi::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    for import in module.imports() {
        if linker.get_by_import(&mut store, &import).is_some() {
            continue;
        }
        if let ExternType::Func(ty) = import.ty() {
            let name = format!("{}.{}", import.module(), import.name());
            linker
                .func_new(import.module(), import.name(), ty, move |_, _, _| {
                    Err(wasmtime::format_err!("import `{name}` is not implemented by wasi-run"))
                })
                .map_err(|e| format!("{e:#}"))?;
        }
    }
    let instance = linker.instantiate(&mut store, &module).map_err(|e| format!("{path}: {e:#}"))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|_| format!("{path} exports no _start: not a WASI command module"))?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<ProcExit>() {
            Some(ProcExit(code)) => Ok(*code),
            None => {
                eprintln!("wasi-run: {path} trapped: {e:#}");
                // Like a native process killed by abort(): what a panic=abort test binary does.
                Ok(134)
            }
        },
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("wasi-run: {e}");
            ExitCode::from(2)
        }
    }
}
