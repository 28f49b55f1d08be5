//! Where built modules are, written once for the emulator, the Envoy runner, packaging and the
//! `gatewasm` tool, so that a module one of them finds is the module the others find, for this
//! repository's filters and for a filter crate anywhere else alike.
//!
//! - The crate being tested decides ([`Layout::current`]): the package cargo runs the test for
//!   (`$CARGO_MANIFEST_DIR`), its workspace and that workspace's target directory from `cargo
//!   metadata` (honouring `$CARGO_TARGET_DIR`, a relative value being relative to where cargo
//!   runs, and cargo's `build.target-dir`).
//! - A built module is `<target>/wasm32-wasip1/<profile>/<package with - as _>.wasm`, the profile
//!   being `release`, or `bundle` for the bundle module ([`profile_of`]); setting
//!   `$GATEWASM_WASM_DIR` (relative values from the workspace root) points the tests at other
//!   builds of the same modules, all in that one directory (e.g. packaged modules, which may be
//!   named with dashes).
//! - A built native module (an Envoy dynamic module) is `<target>/release/lib<package with - as
//!   _>.so`, from `cargo build --release -p <package>` on the host target.
//! - A module missing or older than a source it was built from is built before a test loads it
//!   ([`wasm_module`], [`native_module`]; see [`fresh`]); a build that fails, or is turned off with
//!   `GATEWASM_NO_BUILD=1`, is an error naming the exact `cargo build` command and why, never a
//!   skipped test.
//!
//! The `*_in` functions take the environment as arguments, so the rule is tested without
//! changing the process environment other tests read.

pub mod fresh;
mod layout;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

pub use layout::{resolve_target_dir, Layout, LayoutError, Package};

/// The target the filters are compiled for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// The variable that points the tests at another directory of built modules.
pub const WASM_DIR_VAR: &str = "GATEWASM_WASM_DIR";

/// The package of the bundle module (`gatewasm.wasm`, the five filters in one module).
pub const BUNDLE_PACKAGE: &str = "gatewasm-bundle";

/// Which build of a package: the proxy-wasm module or the native Envoy dynamic module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `<package>.wasm`, built for `wasm32-wasip1`.
    Wasm,
    /// `lib<package>.so`, built for the host.
    Native,
}

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

/// This repository's root (this crate lives in `<root>/test-harness/paths`): where its own files
/// are (Envoy in `.venv`, manifests, example configurations), whichever crate is being tested.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

/// Cargo's target directory for the crate being tested ([`Layout::current`]).
pub fn target_dir() -> PathBuf {
    Layout::current().target_dir.clone()
}

/// This repository's target directory when cargo cannot be asked: `$CARGO_TARGET_DIR`
/// (relative values from `root`), else `<root>/target`; an empty value counts as unset.
pub fn target_dir_in(root: &Path, cargo_target_dir: Option<&OsStr>) -> PathBuf {
    match cargo_target_dir {
        // `join` keeps an absolute value as it is and roots a relative one at the workspace.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

impl Layout {
    /// Where cargo writes `package`'s Wasm module: `<target>/wasm32-wasip1/<profile_of(package)>`.
    pub fn wasm_build_dir(&self, package: &str) -> PathBuf {
        self.target_dir.join(WASM_TARGET).join(profile_of(package))
    }

    /// Where `cargo build --release` writes native modules: `<target>/release`.
    pub fn native_dir(&self) -> PathBuf {
        self.target_dir.join("release")
    }

    /// The file cargo writes for `package` built as `kind`.
    pub fn artifact(&self, package: &str, kind: Kind) -> PathBuf {
        match kind {
            Kind::Wasm => self.wasm_build_dir(package).join(module_file_name(package)),
            Kind::Native => self.native_dir().join(native_file_name(package)),
        }
    }

    /// The built module of `package`, built first when missing or stale ([`fresh::ensure`]).
    pub fn ensure(&self, package: &str, kind: Kind) -> Result<PathBuf, ModuleError> {
        fresh::ensure(self, package, kind)
    }
}

/// Where cargo writes a package's module: `<target>/wasm32-wasip1/<profile_of(package)>`.
/// Packaging reads its own build from here, whatever `$GATEWASM_WASM_DIR` says.
pub fn build_dir(package: &str) -> PathBuf {
    Layout::current().wasm_build_dir(package)
}

/// Where the tests read built modules: `$GATEWASM_WASM_DIR` (relative to the workspace root),
/// else `<target>/wasm32-wasip1/release`.
pub fn wasm_dir() -> PathBuf {
    let layout = Layout::current();
    wasm_dir_in(&layout.workspace_root, &layout.target_dir, std::env::var_os(WASM_DIR_VAR).as_deref())
}

/// [`wasm_dir`] for a given workspace root, target directory and `GATEWASM_WASM_DIR`; an empty
/// value counts as unset.
pub fn wasm_dir_in(root: &Path, target: &Path, wasm_dir: Option<&OsStr>) -> PathBuf {
    match wasm_dir {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => target.join(WASM_TARGET).join("release"),
    }
}

/// The module file cargo writes for a package: `jwt-auth` → `jwt_auth.wasm`; the bundle's is
/// `gatewasm.wasm` (its library name).
pub fn module_file_name(package: &str) -> String {
    if package.replace('_', "-") == BUNDLE_PACKAGE {
        return "gatewasm.wasm".to_string();
    }
    format!("{}.wasm", package.replace('-', "_"))
}

/// The file cargo writes for a package's native module: `lib<package with - as _>.so`.
pub fn native_file_name(package: &str) -> String {
    format!("lib{}.so", native_module_name(package))
}

/// The command that builds a package's module.
pub fn build_command(package: &str) -> String {
    command_for(package, Kind::Wasm)
}

/// The command that builds a package as `kind`.
pub fn command_for(package: &str, kind: Kind) -> String {
    format!("cargo {}", build_args(package, kind).join(" "))
}

/// The arguments of that command: `build --release --target wasm32-wasip1 -p <package>` (the
/// bundle: `--profile bundle`), or `build --release -p <package>` for a native module.
pub fn build_args(package: &str, kind: Kind) -> Vec<String> {
    let mut args = vec!["build".to_string()];
    match kind {
        Kind::Wasm => {
            args.extend(profile_flag(package).split(' ').map(String::from));
            args.extend(["--target".to_string(), WASM_TARGET.to_string()]);
        }
        Kind::Native => args.push("--release".to_string()),
    }
    args.extend(["-p".to_string(), package.replace('_', "-")]);
    args
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
    Layout::current().native_dir()
}

/// The library name Envoy's `dynamic_module_config.name` takes for a package: `header-rewrite`
/// → `header_rewrite` (the file is `libheader_rewrite.so`).
pub fn native_module_name(package: &str) -> String {
    package.replace('-', "_")
}

/// The native module of a package of the crate being tested, in [`native_dir`], built first
/// when missing or stale.
pub fn native_module(package: &str) -> Result<PathBuf, ModuleError> {
    Layout::current().ensure(package, Kind::Native)
}

/// The native module of a package as it is now in [`native_dir`], never built: what packaging
/// ships is what the tests ran.
pub fn built_native_module(package: &str) -> Result<PathBuf, ModuleError> {
    let path = Layout::current().artifact(package, Kind::Native);
    existing(path, package, Kind::Native)
}

/// The Wasm module of a package of the crate being tested (`jwt-auth` or `jwt_auth`): in
/// `$GATEWASM_WASM_DIR` when set (as `jwt_auth.wasm`, or `jwt-auth.wasm` as packaged), else
/// where cargo writes it, built first when missing or stale.
pub fn wasm_module(package: &str) -> Result<PathBuf, ModuleError> {
    match std::env::var_os(WASM_DIR_VAR).filter(|d| !d.is_empty()) {
        Some(_) => {
            let dir = wasm_dir();
            let packaged = dir.join(format!("{}.wasm", package.replace('_', "-")));
            let built = existing(dir.join(module_file_name(package)), package, Kind::Wasm);
            built.or_else(|missing| if packaged.is_file() { Ok(packaged) } else { Err(missing) })
        }
        None => Layout::current().ensure(package, Kind::Wasm),
    }
}

/// A module file of a package whose name does not follow the package's (`file_name`, e.g.
/// `noop_filter.wasm`): in `$GATEWASM_WASM_DIR` when set, else in [`build_dir`], the package
/// built first when missing or stale.
pub fn wasm_file(file_name: &str, package: &str) -> Result<PathBuf, ModuleError> {
    if std::env::var_os(WASM_DIR_VAR).is_some_and(|d| !d.is_empty()) {
        return existing(wasm_dir().join(file_name), package, Kind::Wasm);
    }
    if file_name == module_file_name(package) {
        return wasm_module(package);
    }
    existing(build_dir(package).join(file_name), package, Kind::Wasm)
}

fn existing(path: PathBuf, package: &str, kind: Kind) -> Result<PathBuf, ModuleError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModuleError::new(path, package, kind, Why::Missing))
    }
}

/// A module a test cannot load; its message names the path, why, and the command that builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleError {
    /// Where the module was looked for.
    pub path: PathBuf,
    /// The package that builds it.
    pub package: String,
    /// Which build of it.
    pub kind: Kind,
    /// What is wrong with it.
    pub why: Why,
}

/// What is wrong with a module ([`ModuleError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// It is not built.
    Missing,
    /// A source it was built from is newer.
    Stale(PathBuf),
    /// Cargo left no record of what it was built from.
    Unrecorded,
    /// It needed a build and building from tests is turned off (`var`).
    NotBuilt {
        /// Why it needed one.
        why: Box<Why>,
        /// The variable that turned building off.
        var: &'static str,
    },
    /// Building it failed; cargo's own words.
    BuildFailed(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Missing => f.write_str("is missing"),
            Why::Stale(source) => write!(f, "is older than {}", source.display()),
            Why::Unrecorded => f.write_str("has no dep-info file naming this workspace's sources"),
            Why::NotBuilt { why, var } => write!(f, "{why}, and {var}=1 turns building from tests off"),
            Why::BuildFailed(cargo) => write!(f, "could not be built: {cargo}"),
        }
    }
}

impl ModuleError {
    /// An error about `package`'s `kind` module at `path`.
    pub fn new(path: PathBuf, package: &str, kind: Kind, why: Why) -> Self {
        ModuleError { path, package: package.replace('_', "-"), kind, why }
    }

    /// The command that builds the module.
    pub fn command(&self) -> String {
        command_for(&self.package, self.kind)
    }
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: build it with `{}`", self.path.display(), self.why, self.command())
    }
}

impl std::error::Error for ModuleError {}

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
        assert_eq!(target_dir_in(&root(), Some(OsStr::new("/tmp/t"))), PathBuf::from("/tmp/t"));
        assert_eq!(target_dir_in(&root(), Some(OsStr::new("out/t"))), PathBuf::from("/ws/out/t"));
    }

    #[test]
    fn modules_are_in_the_release_wasm_dir_of_the_target() {
        let target = Path::new("/tmp/t");
        assert_eq!(wasm_dir_in(&root(), target, None), PathBuf::from("/tmp/t/wasm32-wasip1/release"));
        assert_eq!(
            wasm_dir_in(&root(), target, Some(OsStr::new(""))),
            PathBuf::from("/tmp/t/wasm32-wasip1/release")
        );
    }

    #[test]
    fn gatewasm_wasm_dir_overrides_the_target() {
        let target = Path::new("/tmp/t");
        assert_eq!(wasm_dir_in(&root(), target, Some(OsStr::new("/opt/wasm"))), PathBuf::from("/opt/wasm"));
        assert_eq!(wasm_dir_in(&root(), target, Some(OsStr::new("opt"))), PathBuf::from("/ws/opt"));
    }

    #[test]
    fn artifacts_are_named_from_the_package() {
        let layout = Layout { workspace_root: root(), target_dir: PathBuf::from("/t"), packages: Vec::new() };
        assert_eq!(
            layout.artifact("tenant-guard", Kind::Wasm),
            PathBuf::from("/t/wasm32-wasip1/release/tenant_guard.wasm")
        );
        assert_eq!(
            layout.artifact("tenant-guard", Kind::Native),
            PathBuf::from("/t/release/libtenant_guard.so")
        );
        assert_eq!(
            layout.artifact("gatewasm-bundle", Kind::Wasm),
            PathBuf::from("/t/wasm32-wasip1/bundle/gatewasm.wasm")
        );
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
        assert_eq!(command_for("tenant_guard", Kind::Native), "cargo build --release -p tenant-guard");
    }

    #[test]
    fn module_file_names_use_underscores() {
        assert_eq!(module_file_name("jwt-auth"), "jwt_auth.wasm");
        assert_eq!(module_file_name("hello"), "hello.wasm");
        assert_eq!(native_file_name("tenant-guard"), "libtenant_guard.so");
    }

    #[test]
    fn a_module_error_names_its_path_why_and_the_build_command() {
        let err = existing(PathBuf::from("/nowhere/jwt_auth.wasm"), "jwt_auth", Kind::Wasm).unwrap_err();
        assert_eq!(err.package, "jwt-auth");
        assert_eq!(
            err.to_string(),
            "/nowhere/jwt_auth.wasm is missing: build it with \
             `cargo build --release --target wasm32-wasip1 -p jwt-auth`"
        );
        let stale = ModuleError::new(
            PathBuf::from("/t/release/libx.so"),
            "x",
            Kind::Native,
            Why::NotBuilt {
                why: Box::new(Why::Stale(PathBuf::from("/x/src/lib.rs"))),
                var: fresh::NO_BUILD_VAR,
            },
        );
        assert_eq!(
            stale.to_string(),
            "/t/release/libx.so is older than /x/src/lib.rs, and GATEWASM_NO_BUILD=1 turns building from \
             tests off: build it with `cargo build --release -p x`"
        );
    }

    #[test]
    fn an_existing_module_is_found() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(existing(file.clone(), "x", Kind::Wasm), Ok(file));
    }

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("test-harness").join("paths").is_dir());
    }

    /// Cargo runs tests in their package's directory with `CARGO_MANIFEST_DIR` set: the crate
    /// being tested is this one, in this workspace.
    #[test]
    fn the_current_layout_is_this_crates_workspace() {
        let layout = Layout::current();
        assert_eq!(layout.workspace_root.canonicalize().unwrap(), workspace_root());
        assert!(layout.package("gatewasm-paths").is_some(), "{layout:?}");
        assert!(layout.target_dir.is_absolute());
        assert!(std::env::current_exe().unwrap().starts_with(&layout.target_dir), "{layout:?}");
    }
}
