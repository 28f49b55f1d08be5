//! Building the shipped modules (cargo, release, `wasm32-wasip1`) and the optional `wasm-opt` pass;
//! where the native modules are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{bail, Context as _};

use crate::{check_module, Build, Filter};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    gatewasm_paths::workspace_root()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    gatewasm_paths::target_dir()
}

/// Where a shipped filter's release module is: where `cargo build` writes it, whatever
/// `$GATEWASM_WASM_DIR` points the tests at, since packaging builds the module it packages.
pub fn module_path(filter: &Filter) -> PathBuf {
    gatewasm_paths::build_dir(filter.name).join(filter.module)
}

/// Where a shipped filter's native module is: `<target>/release/lib<name>.so`. Packaging never
/// builds it: `./scripts/package` does, with `build_native_modules` (scripts/lib.sh), the one
/// `cargo build --release` of every native module that `./scripts/test` runs too, so the `.so`
/// shipped is the one the tests ran. The error names that script and the package's own build.
pub fn native_path(filter: &Filter) -> anyhow::Result<PathBuf> {
    gatewasm_paths::built_native_module(filter.name).map_err(|missing| {
        anyhow::anyhow!("{missing} (`./scripts/package` builds every native module in one cargo invocation)")
    })
}

/// Builds `filters` (release, `wasm32-wasip1`): every [`Build::Shared`] one in one cargo
/// invocation, then each [`Build::Alone`] one in an invocation of its own ([`build_args`]).
pub fn cargo_build(filters: &[Filter]) -> anyhow::Result<()> {
    let shared: Vec<&str> = filters.iter().filter(|f| f.build == Build::Shared).map(|f| f.name).collect();
    if !shared.is_empty() {
        run_cargo(&build_args(&shared))?;
    }
    for f in filters.iter().filter(|f| f.build == Build::Alone) {
        run_cargo(&build_args(&[f.name]))?;
    }
    Ok(())
}

/// The arguments of the `cargo` invocation that builds `packages`:
/// `build --release --target wasm32-wasip1 -p <package>...` (the bundle: `--profile bundle`, see
/// [`gatewasm_paths::profile_of`]). The one place packaging spells a module build; `packages`
/// share one profile (the bundle builds alone).
pub fn build_args(packages: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["build".into()];
    let profile =
        packages.first().map_or_else(|| "--release".to_string(), |p| gatewasm_paths::profile_flag(p));
    args.extend(profile.split(' ').map(String::from));
    args.extend(["--target", "wasm32-wasip1"].map(String::from));
    for p in packages {
        args.push("-p".into());
        args.push((*p).to_owned());
    }
    args
}

fn run_cargo(args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(args)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Whether to run `wasm-opt` (binaryen) on each module.
///
/// Off by default: the modules ship as cargo built them, the bytes every test ran. `wasm-opt -Oz`
/// makes them about 12 % smaller but merges functions into larger ones, and Envoy's V8 keeps what
/// compiling a larger function cost: the five filters optimised so added 97 MB to a two-worker
/// Envoy against 81 MB as built (BENCHMARKS.md, "Memory").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WasmOpt {
    /// Run it when `wasm-opt` is on `PATH`, else package the module as cargo built it.
    Auto,
    /// Fail when `wasm-opt` is missing.
    Require,
    /// Never run it (the default).
    #[default]
    Skip,
}

impl FromStr for WasmOpt {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "auto" => Ok(WasmOpt::Auto),
            "require" => Ok(WasmOpt::Require),
            "skip" => Ok(WasmOpt::Skip),
            other => bail!("--wasm-opt {other:?}: expected `auto`, `require` or `skip`"),
        }
    }
}

/// The optimisation level passed to `wasm-opt`. `-Oz` is the default: measured on this project's
/// modules it is both smaller than `-O3` and passes the same emulator and Envoy tests
/// (packaging/README.md has the numbers).
pub const DEFAULT_OPT_LEVEL: &str = "-Oz";

/// Levels `--opt-level` accepts.
pub const OPT_LEVELS: &[&str] = &["-O1", "-O2", "-O3", "-O4", "-Os", "-Oz"];

/// The Wasm features rustc enables by default for `wasm32-wasip1` (and Envoy's V8 runs); binaryen
/// must be told, or it rejects the module (e.g. `memory.copy` needs bulk memory).
pub const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Whether `wasm-opt` is on `PATH`.
pub fn wasm_opt_available() -> bool {
    Command::new("wasm-opt").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs `wasm-opt <level>` on `module` according to `mode`; returns the bytes to package and a
/// note of what ran (`None` when the module is packaged as built).
pub fn optimize(
    module: &[u8],
    mode: WasmOpt,
    level: &str,
    scratch: &Path,
) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    if !OPT_LEVELS.contains(&level) {
        bail!("--opt-level {level:?}: expected one of {}", OPT_LEVELS.join(", "));
    }
    match mode {
        WasmOpt::Skip => return Ok((module.to_vec(), None)),
        WasmOpt::Auto if !wasm_opt_available() => return Ok((module.to_vec(), None)),
        WasmOpt::Require if !wasm_opt_available() => {
            bail!("--wasm-opt require: `wasm-opt` is not on PATH (Debian: apt-get install binaryen)")
        }
        _ => {}
    }
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let input = scratch.join("in.wasm");
    let output = scratch.join("out.wasm");
    std::fs::write(&input, module).with_context(|| format!("writing {}", input.display()))?;
    let out = Command::new("wasm-opt")
        .args(WASM_FEATURES)
        .arg(level)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .context("running wasm-opt")?;
    if !out.status.success() {
        bail!("wasm-opt {level} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let optimized = std::fs::read(&output).with_context(|| format!("reading {}", output.display()))?;
    check_module(&optimized, "wasm-opt output")?;
    let version = Command::new("wasm-opt")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok((optimized, Some(format!("{version} {level}"))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags() {
        assert_eq!("require".parse::<WasmOpt>().unwrap(), WasmOpt::Require);
        let err = "yes".parse::<WasmOpt>().unwrap_err().to_string();
        assert!(err.contains("--wasm-opt \"yes\""), "{err}");
        let err = optimize(b"\0asm\x01\0\0\0", WasmOpt::Skip, "-O9", Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("--opt-level \"-O9\""), "{err}");
    }

    #[test]
    fn the_bundle_builds_in_a_cargo_invocation_of_its_own() {
        assert_eq!(
            build_args(&["jwt-auth", "hello"]).join(" "),
            "build --release --target wasm32-wasip1 -p jwt-auth -p hello"
        );
        assert_eq!(
            build_args(&[crate::BUNDLE]).join(" "),
            "build --profile bundle --target wasm32-wasip1 -p gatewasm-bundle"
        );
        let shared: Vec<_> = crate::SHIPPED.iter().filter(|f| f.build == Build::Shared).collect();
        assert!(shared.iter().all(|f| f.name != crate::BUNDLE), "{shared:?}");
    }

    #[test]
    fn skip_returns_module_unchanged() {
        let m = b"\0asm\x01\0\0\0".to_vec();
        assert_eq!(
            optimize(&m, WasmOpt::Skip, DEFAULT_OPT_LEVEL, Path::new("/nonexistent")).unwrap(),
            (m, None)
        );
    }
}
