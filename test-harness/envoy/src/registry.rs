//! An OCI registry for tests: Debian's `docker-registry` with a config of its own, bound to
//! 127.0.0.1 on a free port, its storage in a temporary directory; stopped and removed on drop.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running `docker-registry`.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user`, basic auth from an htpasswd file (bcrypt) holding that
    /// user and password. Fails naming the package to install when `docker-registry` is missing,
    /// and with the registry's log when it does not come up.
    pub fn start(user: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        let installed =
            Command::new("docker-registry").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed {
            bail!("`docker-registry` was not found: apt-get install docker-registry (./scripts/test installs it)");
        }
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().context("creating the registry's directory")?;
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: gatewasm-test-only\n",
                dir.path().join("data").display()
            );
            if let Some((name, password)) = user {
                let hash = bcrypt::hash(password, 4).context("hashing the registry password")?;
                std::fs::write(dir.path().join("htpasswd"), format!("{name}:{hash}\n"))?;
                config += &format!(
                    "auth:\n  htpasswd:\n    realm: gatewasm-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                );
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)?;
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path)?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting docker-registry")?;
            let mut registry = Registry { child, port, dir };
            if registry.wait_ready() {
                return Ok(registry);
            }
            last_log = registry.log();
            // Drop stops it; retry on another port (the free port may have been taken meanwhile).
        }
        bail!("docker-registry did not become ready; its log:\n{last_log}")
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some(status) = http_status(self.port, "/v2/") {
                return status == 200 || status == 401;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the registry logged so far (requests at `warn` level and above).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a plain GET on the loopback registry, if it answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}
