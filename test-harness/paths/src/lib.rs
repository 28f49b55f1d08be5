//! Where this workspace's build outputs are, written once for the emulator, the Envoy runner and
//! packaging, so that a module one of them finds is the module the others find.
//!
//! - The target directory is `$CARGO_TARGET_DIR` (a relative value is taken from the workspace
//!   root, so every test binary agrees whatever its working directory), else `<workspace>/target`.
//! - A built module is `<target>/wasm32-wasip1/<profile>/<package with - as _>.wasm`, the profile
//!   being `release`, or `bundle` for the bundle module ([`profile_of`]); setting
//!   `$GATEWASM_WASM_DIR` (relative values again from the workspace root) points the tests at
//!   other builds of the same modules, all in that one directory (e.g. packaged modules).
//! - A built native module (an Envoy dynamic module) is `<target>/release/lib<package with - as
//!   _>.so`, from `cargo build --release -p <package>` on the host target.
//! - A missing module is an error naming the exact `cargo build` command, never a skipped test.
//!
//! The `*_in` functions take the environment as arguments, so the rule is tested without
//! changing the process environment other tests read.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// The target the filters are compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The variable that points the tests at another directory of built modules.
pub const WASM_DIR_VAR: &str = "GATEWASM_WASM_DIR";

/// The package of the bundle module (`gatewasm.wasm`, the five filters in one module).
pub const BUNDLE_PACKAGE: &str = "gatewasm-bundle";

/// The cargo profile a package's module is built with: `bundle` (the workspace's size-optimised
/// profile, see `[profile.bundle]` in Cargo.toml) for [`BUNDLE_PACKAGE`], `release` for every
/// other module. The bundle is built for Envoy's memory: V8 keeps what compiling a module cost,
/// and the bundle built for size adds about 16 MB less to Envoy than at `opt-level = 3`
/// (BENCHMARKS.md); a single filter keeps the faster `release` build.
pub fn profile_of(package: &str) -> &'static str {
    if package.replace('_', "-") == BUNDLE_PACKAGE {
        "bundle"
    } else {
        "release"
    }
}

/// The workspace root (this crate lives in `<root>/test-harness/paths`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    target_dir_in(&workspace_root(), std::env::var_os("CARGO_TARGET_DIR").as_deref())
}

/// [`target_dir`] for a given root and `CARGO_TARGET_DIR` value; an empty value counts as unset.
pub fn target_dir_in(root: &Path, cargo_target_dir: Option<&OsStr>) -> PathBuf {
    match cargo_target_dir {
        // `join` keeps an absolute value as it is and roots a relative one at the workspace.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Where `cargo build --release --target wasm32-wasip1` writes modules:
/// `<target>/wasm32-wasip1/release`.
pub fn release_wasm_dir() -> PathBuf {
    release_wasm_dir_of(&target_dir())
}

fn release_wasm_dir_of(target: &Path) -> PathBuf {
    target.join(WASM_TARGET).join("release")
}

/// Where cargo writes a package's module: `<target>/wasm32-wasip1/<profile_of(package)>`.
/// Packaging reads its own build from here, whatever `$GATEWASM_WASM_DIR` says.
pub fn build_dir(package: &str) -> PathBuf {
    target_dir().join(WASM_TARGET).join(profile_of(package))
}

/// Where the tests read built modules: `$GATEWASM_WASM_DIR` (relative to the workspace root),
/// else [`release_wasm_dir`].
pub fn wasm_dir() -> PathBuf {
    wasm_dir_in(
        &workspace_root(),
        std::env::var_os("CARGO_TARGET_DIR").as_deref(),
        std::env::var_os(WASM_DIR_VAR).as_deref(),
    )
}

/// [`wasm_dir`] for a given root, `CARGO_TARGET_DIR` and `GATEWASM_WASM_DIR`; empty values count
/// as unset.
pub fn wasm_dir_in(root: &Path, cargo_target_dir: Option<&OsStr>, wasm_dir: Option<&OsStr>) -> PathBuf {
    match wasm_dir {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => release_wasm_dir_of(&target_dir_in(root, cargo_target_dir)),
    }
}

/// The module file cargo writes for a package: `jwt-auth` → `jwt_auth.wasm`.
pub fn module_file_name(package: &str) -> String {
    format!("{}.wasm", package.replace('-', "_"))
}

/// The command that builds a package's module.
pub fn build_command(package: &str) -> String {
    format!("cargo build {} --target {WASM_TARGET} -p {package}", profile_flag(package))
}

/// The cargo flag that selects [`profile_of`]`(package)`: `--release`, or `--profile bundle`.
pub fn profile_flag(package: &str) -> String {
    match profile_of(package) {
        "release" => "--release".to_string(),
        profile => format!("--profile {profile}"),
    }
}

/// Where `cargo build --release` writes native modules (Envoy dynamic modules): `<target>/release`.
/// Envoy finds them there through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn native_dir() -> PathBuf {
    target_dir().join("release")
}

/// The library name Envoy's `dynamic_module_config.name` takes for a package: `header-rewrite`
/// → `header_rewrite` (the file is `libheader_rewrite.so`).
pub fn native_module_name(package: &str) -> String {
    package.replace('-', "_")
}

/// The built native module of a workspace package, in [`native_dir`].
pub fn native_module(package: &str) -> Result<PathBuf, MissingModule> {
    let file = format!("lib{}.so", native_module_name(package));
    existing(native_dir().join(file), package).map_err(|missing| MissingModule { native: true, ..missing })
}

/// The built module of a workspace package (`jwt-auth` or `jwt_auth`), in [`wasm_dir`].
pub fn wasm_module(package: &str) -> Result<PathBuf, MissingModule> {
    wasm_file(&module_file_name(package), package)
}

/// A module file of a workspace package whose name does not follow the package's (`file_name`,
/// e.g. `noop_filter.wasm`): in `$GATEWASM_WASM_DIR` when set, else in [`build_dir`].
pub fn wasm_file(file_name: &str, package: &str) -> Result<PathBuf, MissingModule> {
    let dir = match std::env::var_os(WASM_DIR_VAR).filter(|d| !d.is_empty()) {
        Some(_) => wasm_dir(),
        None => build_dir(package),
    };
    existing(dir.join(file_name), package)
}

fn existing(path: PathBuf, package: &str) -> Result<PathBuf, MissingModule> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingModule { path, package: package.replace('_', "-"), native: false })
    }
}

/// A module that is not built; its message names the path and the command that builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingModule {
    /// Where the module was looked for.
    pub path: PathBuf,
    /// The workspace package that builds it.
    pub package: String,
    /// A native module (built for the host target), not a Wasm one.
    pub native: bool,
}

impl fmt::Display for MissingModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let command = if self.native {
            format!("cargo build --release -p {}", self.package)
        } else {
            build_command(&self.package)
        };
        write!(f, "{} is missing: build it with `{command}`", self.path.display())
    }
}

impl std::error::Error for MissingModule {}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from("/ws")
    }

    #[test]
    fn target_dir_defaults_to_the_workspace_target() {
        assert_eq!(target_dir_in(&root(), None), PathBuf::from("/ws/target"));
        assert_eq!(target_dir_in(&root(), Some(OsStr::new(""))), PathBuf::from("/ws/target"));
    }

    #[test]
    fn cargo_target_dir_absolute_is_kept() {
        assert_eq!(target_dir_in(&root(), Some(OsStr::new("/tmp/t"))), PathBuf::from("/tmp/t"));
    }

    #[test]
    fn cargo_target_dir_relative_is_taken_from_the_workspace_root() {
        assert_eq!(target_dir_in(&root(), Some(OsStr::new("out/t"))), PathBuf::from("/ws/out/t"));
    }

    #[test]
    fn modules_are_in_the_release_wasm_dir_of_the_target() {
        assert_eq!(wasm_dir_in(&root(), None, None), PathBuf::from("/ws/target/wasm32-wasip1/release"));
        assert_eq!(
            wasm_dir_in(&root(), Some(OsStr::new("/tmp/t")), None),
            PathBuf::from("/tmp/t/wasm32-wasip1/release")
        );
        assert_eq!(
            wasm_dir_in(&root(), Some(OsStr::new("t2")), Some(OsStr::new(""))),
            PathBuf::from("/ws/t2/wasm32-wasip1/release")
        );
    }

    #[test]
    fn gatewasm_wasm_dir_overrides_the_target() {
        let absolute = wasm_dir_in(&root(), Some(OsStr::new("/tmp/t")), Some(OsStr::new("/opt/wasm")));
        assert_eq!(absolute, PathBuf::from("/opt/wasm"));
        assert_eq!(wasm_dir_in(&root(), None, Some(OsStr::new("opt"))), PathBuf::from("/ws/opt"));
    }

    #[test]
    fn the_bundle_is_built_with_its_own_profile() {
        assert_eq!(profile_of("gatewasm-bundle"), "bundle");
        assert_eq!(profile_of("gatewasm_bundle"), "bundle");
        assert_eq!(profile_of("jwt-auth"), "release");
        assert_eq!(
            build_command("gatewasm-bundle"),
            "cargo build --profile bundle --target wasm32-wasip1 -p gatewasm-bundle"
        );
        assert_eq!(build_command("hello"), "cargo build --release --target wasm32-wasip1 -p hello");
    }

    #[test]
    fn module_file_names_use_underscores() {
        assert_eq!(module_file_name("jwt-auth"), "jwt_auth.wasm");
        assert_eq!(module_file_name("hello"), "hello.wasm");
    }

    #[test]
    fn a_missing_module_names_its_path_and_the_build_command() {
        let err = existing(PathBuf::from("/nowhere/jwt_auth.wasm"), "jwt_auth").unwrap_err();
        assert_eq!(err.package, "jwt-auth");
        assert_eq!(
            err.to_string(),
            "/nowhere/jwt_auth.wasm is missing: build it with \
             `cargo build --release --target wasm32-wasip1 -p jwt-auth`"
        );
    }

    #[test]
    fn an_existing_module_is_found() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(existing(file.clone(), "x"), Ok(file));
    }

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("test-harness").join("paths").is_dir());
    }
}
