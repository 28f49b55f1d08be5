//! Local programs the tests, the benchmarks and the demo start beside Envoy (the Kafka bridge,
//! say): on a free loopback port, waited for until they accept connections, killed on drop.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a program may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running local program; it is killed when this is dropped.
#[derive(Debug)]
pub struct LocalProcess {
    child: Child,
    addr: SocketAddr,
}

impl LocalProcess {
    /// Starts `command` with `args`, where `{addr}` becomes the `127.0.0.1:<free port>` it must
    /// listen on (and `{port}` that port alone), and waits until it accepts connections. `build`
    /// is the command that builds `command`, for the error when it is missing. Output goes to
    /// `log` when given.
    pub fn start(
        command: &Path,
        args: &[String],
        build: Option<&str>,
        log: Option<&Path>,
    ) -> anyhow::Result<LocalProcess> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        LocalProcess::start_on(addr, command, args, build, log)
    }

    /// [`LocalProcess::start`] on a given loopback address: a program restarted where its
    /// clients still look for it.
    pub fn start_on(
        addr: SocketAddr,
        command: &Path,
        args: &[String],
        build: Option<&str>,
        log: Option<&Path>,
    ) -> anyhow::Result<LocalProcess> {
        if !command.is_file() {
            let build = build.map_or(String::new(), |b| format!("; build it with `{b}`"));
            bail!("{} not found{build}", command.display());
        }
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address; local programs listen on loopback only");
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{addr}", &addr.to_string()).replace("{port}", &addr.port().to_string()))
            .collect();
        let (stdout, stderr) = match log {
            Some(path) => {
                let file =
                    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new(command);
        cmd.args(&args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // Killed with its parent even when the parent is killed by a signal and runs no Drop.
        die_with_parent(&mut cmd, None);
        let child = cmd.spawn().with_context(|| format!("starting {}", command.display()))?;
        // Owned at once, so an early return below still stops it.
        let mut process = LocalProcess { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || process.child.try_wait()?.is_some() {
                bail!("{} {args:?} did not listen on {addr}", command.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(process)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes the child get SIGKILL when the thread that spawns it dies, and pins it to `cpu_set`
/// when given: no child outlives the test, benchmark or demo that started it.
pub(crate) fn die_with_parent(command: &mut Command, cpu_set: Option<libc::cpu_set_t>) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, sched_setaffinity) on values computed before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(set) = &cpu_set {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
