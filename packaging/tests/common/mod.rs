//! Shared by the packaging tests: running the CLI, the shipped modules, reading layers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod manifests;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gatewasm_pack::compile::{module_path, native_path};
use gatewasm_pack::{Filter, SHIPPED};

/// Runs `gatewasm-pack` with `args`; returns its output (not checked).
pub fn pack(args: &[&str]) -> Output {
    pack_with(args, |_| {})
}

/// Runs `gatewasm-pack` with `args` after `setup` adjusts the command (env, stdin).
pub fn pack_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatewasm-pack"));
    cmd.args(args);
    setup(&mut cmd);
    cmd.output().unwrap_or_else(|e| panic!("running gatewasm-pack: {e}"))
}

/// Like [`pack`] but asserts success; returns stdout.
pub fn pack_ok(args: &[&str]) -> String {
    let out = pack(args);
    assert_success("gatewasm-pack", args, &out);
    String::from_utf8(out.stdout).unwrap()
}

/// Panics with both streams when `out` is a failure.
pub fn assert_success(what: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{what} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The built release module of every shipped filter. Fails (never skips) when one is missing.
pub fn shipped_modules() -> Vec<(Filter, Vec<u8>)> {
    SHIPPED
        .iter()
        .map(|f| {
            let path = module_path(f);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; build it with `cargo build --release --target wasm32-wasip1 -p {}` \
                     (./scripts/test does)",
                    path.display(),
                    f.name
                )
            });
            (*f, bytes)
        })
        .collect()
}

/// The built native module of every shipped filter that has one. Fails (never skips) when one
/// is missing.
pub fn shipped_native_modules() -> Vec<(Filter, Vec<u8>)> {
    SHIPPED
        .iter()
        .filter(|f| f.native)
        .map(|f| {
            let path = native_path(f).unwrap_or_else(|e| panic!("{e:#} (./scripts/test builds them too)"));
            (*f, std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        })
        .collect()
}

/// Every file under `dir`, relative path → bytes.
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_owned(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A tar entry's (mode, uid, gid, mtime).
pub type Meta = (u32, u64, u64, u64);

/// The files of a tar+gzip layer: name, header fields, bytes.
pub fn untar_gz(layer: &[u8]) -> Vec<(String, Meta, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header();
            let name = h.path().unwrap().to_string_lossy().into_owned();
            let meta = (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, meta, data)
        })
        .collect()
}

/// Checks a command-line tool is installed; fails with the install advice when it is not.
pub fn require_tool(cmd: &str, package: &str) {
    let found = Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{cmd}` is required by this test and was not found: apt-get install {package} \
         (./scripts/test installs it)"
    );
}
