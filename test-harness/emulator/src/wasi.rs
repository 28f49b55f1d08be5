//! A small WASI preview 1 implementation: what proxy-wasm modules and `wasm32-wasip1` test
//! binaries import. There is no file system: like Envoy (proxy-wasm-cpp-host `exports.cc`),
//! `fd_prestat_get` answers EBADF, so the module's libc sees no preopened directories.

// Every index below is into a buffer whose length was checked just before (reads of 8 or 48
// bytes, fixed-size arrays), so indexing cannot panic.
#![allow(clippy::indexing_slicing)]

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::{format_err as anyhow, Result};
use wasmtime::{Caller, Extern, Linker};

/// WASI errno values used here.
pub mod errno {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address (pointer out of memory).
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// No such file or directory.
    pub const NOENT: i32 = 44;
    /// Function not supported.
    pub const NOSYS: i32 = 52;
    /// Not supported.
    pub const NOTSUP: i32 = 58;
}

/// Where a module's stdout or stderr goes.
#[derive(Debug)]
pub enum Sink {
    /// Kept in memory, for tests to read.
    Capture(Vec<u8>),
    /// Forwarded to this process's stdout or stderr.
    Inherit,
}

/// Clock source for `clock_time_get`.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The host's clocks.
    Real,
    /// A fixed, test-controlled time: realtime and monotonic nanoseconds.
    Fixed {
        /// Nanoseconds since the Unix epoch.
        realtime: u64,
        /// Monotonic nanoseconds.
        monotonic: u64,
    },
}

/// The WASI state of one instance.
#[derive(Debug)]
pub struct WasiCtx {
    /// Arguments, `args[0]` being the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// File descriptor 1.
    pub stdout: Sink,
    /// File descriptor 2.
    pub stderr: Sink,
    /// Clock for `clock_time_get`.
    pub clock: Clock,
    /// Bytes written to stdout/stderr as complete writes, with the fd, for hosts that also log them.
    pub writes: Vec<(u32, Vec<u8>)>,
    /// Whether to record `writes`.
    pub record_writes: bool,
    /// State of the random generator (xorshift, seeded from the clock unless set).
    pub rng: u64,
}

impl WasiCtx {
    /// A context with captured stdout/stderr, no args and no environment.
    pub fn captured() -> WasiCtx {
        WasiCtx {
            args: Vec::new(),
            env: Vec::new(),
            stdout: Sink::Capture(Vec::new()),
            stderr: Sink::Capture(Vec::new()),
            clock: Clock::Real,
            writes: Vec::new(),
            record_writes: false,
            rng: seed(),
        }
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            // xorshift64*: good enough for hash seeds and ids in tests; not cryptographic.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            *b = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
    }
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    t | 1
}

/// The error a `proc_exit` call ends the module with.
#[derive(Debug, Clone, Copy)]
pub struct ProcExit(pub i32);

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the module called proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

/// Host state types that carry a [`WasiCtx`].
pub trait WasiView: 'static {
    /// The WASI state.
    fn wasi(&mut self) -> &mut WasiCtx;

    /// Called at the start of every WASI import, with its name (the emulator counts host calls).
    fn count_host_call(&mut self, _name: &str) {}
}

pub(crate) fn memory<T>(caller: &mut Caller<'_, T>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// Copies `len` bytes at `ptr` out of the module's memory; `None` if out of bounds.
pub(crate) fn read<T>(caller: &mut Caller<'_, T>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    mem.data(&*caller).get(start..end).map(<[u8]>::to_vec)
}

/// Writes `bytes` at `ptr`; false if out of bounds.
pub(crate) fn write<T>(caller: &mut Caller<'_, T>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(mem) = memory(caller) else { return false };
    let start = ptr as usize;
    let Some(end) = start.checked_add(bytes.len()) else { return false };
    match mem.data_mut(&mut *caller).get_mut(start..end) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

pub(crate) fn write_u32<T>(caller: &mut Caller<'_, T>, ptr: u32, v: u32) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64<T>(caller: &mut Caller<'_, T>, ptr: u32, v: u64) -> bool {
    write(caller, ptr, &v.to_le_bytes())
}

fn clock_now(clock: Clock, id: u32) -> Option<u64> {
    match (clock, id) {
        (Clock::Fixed { realtime, .. }, 0) => Some(realtime),
        (Clock::Fixed { monotonic, .. }, 1) => Some(monotonic),
        (Clock::Real, 0) => Some(SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64),
        (Clock::Real, 1) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            Some(START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64)
        }
        _ => None,
    }
}

fn strings_sizes(items: &[String]) -> (u32, u32) {
    (items.len() as u32, items.iter().map(|s| s.len() as u32 + 1).sum())
}

fn put_strings<T>(caller: &mut Caller<'_, T>, items: &[String], mut array: u32, mut buf: u32) -> i32 {
    for s in items {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        if !write_u32(caller, array, buf) || !write(caller, buf, &bytes) {
            return errno::FAULT;
        }
        array = array.wrapping_add(4);
        buf = buf.wrapping_add(bytes.len() as u32);
    }
    errno::SUCCESS
}

/// Defines the WASI preview 1 functions, under both `wasi_snapshot_preview1` and `wasi_unstable`.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> Result<()> {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        linker.func_wrap(
            m,
            "fd_write",
            |mut c: Caller<'_, T>, fd: i32, iovs: u32, n: u32, nwritten: u32| -> i32 {
                c.data_mut().count_host_call("fd_write");
                if fd != 1 && fd != 2 {
                    return errno::BADF;
                }
                let mut data = Vec::new();
                for i in 0..n {
                    let Some(iov) = read(&mut c, iovs.wrapping_add(i.wrapping_mul(8)), 8) else {
                        return errno::FAULT;
                    };
                    let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    let Some(bytes) = read(&mut c, ptr, len) else { return errno::FAULT };
                    data.extend_from_slice(&bytes);
                }
                let wasi = c.data_mut().wasi();
                let sink = if fd == 1 { &mut wasi.stdout } else { &mut wasi.stderr };
                match sink {
                    Sink::Capture(buf) => buf.extend_from_slice(&data),
                    Sink::Inherit => {
                        let _ = if fd == 1 {
                            std::io::stdout().write_all(&data).and_then(|_| std::io::stdout().flush())
                        } else {
                            std::io::stderr().write_all(&data)
                        };
                    }
                }
                if wasi.record_writes && !data.is_empty() {
                    wasi.writes.push((fd as u32, data.clone()));
                }
                if write_u32(&mut c, nwritten, data.len() as u32) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(
            m,
            "fd_read",
            |mut c: Caller<'_, T>, _fd: i32, _iovs: u32, _n: u32, _nread: u32| -> i32 {
                c.data_mut().count_host_call("fd_read");
                errno::NOSYS
            },
        )?;
        linker.func_wrap(m, "fd_close", |mut c: Caller<'_, T>, _fd: i32| -> i32 {
            c.data_mut().count_host_call("fd_close");
            errno::SUCCESS
        })?;
        linker.func_wrap(
            m,
            "fd_seek",
            |mut c: Caller<'_, T>, _fd: i32, _off: i64, _whence: i32, _new: u32| -> i32 {
                c.data_mut().count_host_call("fd_seek");
                errno::BADF
            },
        )?;
        linker.func_wrap(m, "fd_sync", |mut c: Caller<'_, T>, fd: i32| -> i32 {
            c.data_mut().count_host_call("fd_sync");
            if fd == 1 || fd == 2 {
                errno::SUCCESS
            } else {
                errno::BADF
            }
        })?;
        linker.func_wrap(m, "fd_fdstat_get", |mut c: Caller<'_, T>, fd: i32, out: u32| -> i32 {
            c.data_mut().count_host_call("fd_fdstat_get");
            // As proxy-wasm-cpp-host: only stdout/stderr exist, as character devices with FD_WRITE.
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            let mut stat = [0u8; 24];
            stat[0] = 2; // filetype: character device
            stat[8] = 64; // fs_rights_base: FD_WRITE
            if write(&mut c, out, &stat) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        })?;
        linker.func_wrap(m, "fd_fdstat_set_flags", |mut c: Caller<'_, T>, _fd: i32, _flags: i32| -> i32 {
            c.data_mut().count_host_call("fd_fdstat_set_flags");
            errno::NOSYS
        })?;
        linker.func_wrap(m, "fd_prestat_get", |mut c: Caller<'_, T>, _fd: i32, _out: u32| -> i32 {
            c.data_mut().count_host_call("fd_prestat_get");
            errno::BADF
        })?;
        linker.func_wrap(
            m,
            "fd_prestat_dir_name",
            |mut c: Caller<'_, T>, _fd: i32, _p: u32, _l: u32| -> i32 {
                c.data_mut().count_host_call("fd_prestat_dir_name");
                errno::NOSYS
            },
        )?;
        linker.func_wrap(m, "fd_filestat_get", |mut c: Caller<'_, T>, _fd: i32, _out: u32| -> i32 {
            c.data_mut().count_host_call("fd_filestat_get");
            errno::BADF
        })?;
        linker.func_wrap(
            m,
            "path_open",
            |mut c: Caller<'_, T>,
             _fd: i32,
             _df: i32,
             _p: u32,
             _pl: u32,
             _of: i32,
             _rb: i64,
             _ri: i64,
             _ff: i32,
             _out: u32|
             -> i32 {
                c.data_mut().count_host_call("path_open");
                errno::NOENT
            },
        )?;
        linker.func_wrap(
            m,
            "path_filestat_get",
            |mut c: Caller<'_, T>, _fd: i32, _f: i32, _p: u32, _pl: u32, _out: u32| -> i32 {
                c.data_mut().count_host_call("path_filestat_get");
                errno::NOTSUP
            },
        )?;
        linker.func_wrap(m, "environ_sizes_get", |mut c: Caller<'_, T>, count: u32, size: u32| -> i32 {
            c.data_mut().count_host_call("environ_sizes_get");
            let env: Vec<String> = c.data_mut().wasi().env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let (n, s) = strings_sizes(&env);
            if write_u32(&mut c, count, n) && write_u32(&mut c, size, s) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        })?;
        linker.func_wrap(m, "environ_get", |mut c: Caller<'_, T>, array: u32, buf: u32| -> i32 {
            c.data_mut().count_host_call("environ_get");
            let env: Vec<String> = c.data_mut().wasi().env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            put_strings(&mut c, &env, array, buf)
        })?;
        linker.func_wrap(m, "args_sizes_get", |mut c: Caller<'_, T>, count: u32, size: u32| -> i32 {
            c.data_mut().count_host_call("args_sizes_get");
            let args = c.data_mut().wasi().args.clone();
            let (n, s) = strings_sizes(&args);
            if write_u32(&mut c, count, n) && write_u32(&mut c, size, s) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        })?;
        linker.func_wrap(m, "args_get", |mut c: Caller<'_, T>, array: u32, buf: u32| -> i32 {
            c.data_mut().count_host_call("args_get");
            let args = c.data_mut().wasi().args.clone();
            put_strings(&mut c, &args, array, buf)
        })?;
        linker.func_wrap(
            m,
            "clock_time_get",
            |mut c: Caller<'_, T>, id: i32, _precision: i64, out: u32| -> i32 {
                c.data_mut().count_host_call("clock_time_get");
                let clock = c.data_mut().wasi().clock;
                match clock_now(clock, id as u32) {
                    Some(t) => {
                        if write_u64(&mut c, out, t) {
                            errno::SUCCESS
                        } else {
                            errno::FAULT
                        }
                    }
                    None => errno::NOTSUP,
                }
            },
        )?;
        linker.func_wrap(m, "clock_res_get", |mut c: Caller<'_, T>, id: i32, out: u32| -> i32 {
            c.data_mut().count_host_call("clock_res_get");
            if id != 0 && id != 1 {
                return errno::NOTSUP;
            }
            if write_u64(&mut c, out, 1) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        })?;
        linker.func_wrap(m, "random_get", |mut c: Caller<'_, T>, buf: u32, len: u32| -> i32 {
            c.data_mut().count_host_call("random_get");
            // proxy-wasm-cpp-host caps a single call at 64 KiB.
            if len > 64 * 1024 {
                return errno::INVAL;
            }
            let mut bytes = vec![0u8; len as usize];
            c.data_mut().wasi().fill_random(&mut bytes);
            if write(&mut c, buf, &bytes) {
                errno::SUCCESS
            } else {
                errno::FAULT
            }
        })?;
        linker.func_wrap(m, "sched_yield", |mut c: Caller<'_, T>| -> i32 {
            c.data_mut().count_host_call("sched_yield");
            errno::SUCCESS
        })?;
        linker.func_wrap(
            m,
            "poll_oneoff",
            |mut c: Caller<'_, T>, input: u32, out: u32, n: u32, nevents: u32| -> i32 {
                c.data_mut().count_host_call("poll_oneoff");
                // Clock subscriptions complete at once (a sleeping test thread just goes on); the
                // event records the subscription's userdata, as WASI requires.
                let mut count = 0u32;
                for i in 0..n {
                    let Some(sub) = read(&mut c, input.wrapping_add(i.wrapping_mul(48)), 48) else {
                        return errno::FAULT;
                    };
                    let mut event = [0u8; 32];
                    event[0..8].copy_from_slice(&sub[0..8]);
                    event[10] = sub[8]; // type
                    if !write(&mut c, out.wrapping_add(count.wrapping_mul(32)), &event) {
                        return errno::FAULT;
                    }
                    count += 1;
                }
                if write_u32(&mut c, nevents, count) {
                    errno::SUCCESS
                } else {
                    errno::FAULT
                }
            },
        )?;
        linker.func_wrap(m, "proc_exit", |mut c: Caller<'_, T>, code: i32| -> Result<()> {
            c.data_mut().count_host_call("proc_exit");
            Err(anyhow!(ProcExit(code)))
        })?;
    }
    Ok(())
}
