//! Which crate a process builds for, and where cargo puts that crate's outputs.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;

/// A cargo workspace and the target directory cargo writes its builds to: the layout every
/// module path is derived from. The workspace may be this repository or any crate outside it
/// that depends on the SDK and the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The workspace root (`cargo metadata`'s `workspace_root`): where module builds run.
    pub workspace_root: PathBuf,
    /// Cargo's target directory for that workspace (absolute).
    pub target_dir: PathBuf,
    /// The workspace's packages.
    pub packages: Vec<Package>,
}

/// A package of a [`Layout`]'s workspace, as `cargo metadata` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Package {
    /// The package name (`tenant-guard`).
    pub name: String,
    /// Its version (`0.1.0`), the default image tag when it is packaged.
    pub version: String,
    /// Its `Cargo.toml`.
    pub manifest_path: PathBuf,
}

impl Package {
    /// The directory holding the package's `Cargo.toml`.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(&self.manifest_path)
    }
}

#[derive(Deserialize)]
struct Metadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
    packages: Vec<Package>,
}

/// Why a [`Layout`] could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

impl Layout {
    /// The layout of the workspace holding `dir` (a crate's directory, or any directory below
    /// it), from `cargo metadata --no-deps` run there. `$CARGO_TARGET_DIR` is honoured; a
    /// relative value is taken from `base`, the directory cargo runs in: what a tool that runs
    /// cargo itself passes.
    pub fn discover(dir: &Path, base: &Path) -> Result<Layout, LayoutError> {
        Layout::discover_from(dir, base, None)
    }

    /// [`Layout::discover`] for a process cargo started (`exe`: this executable), where a
    /// relative `$CARGO_TARGET_DIR` is found above the executable ([`resolve_target_dir`]).
    fn discover_from(dir: &Path, base: &Path, exe: Option<&Path>) -> Result<Layout, LayoutError> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(dir)
            .output()
            .map_err(|e| LayoutError(format!("running `cargo metadata` in {}: {e}", dir.display())))?;
        if !out.status.success() {
            return Err(LayoutError(format!(
                "`cargo metadata` in {} failed ({}): {}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let metadata: Metadata = serde_json::from_slice(&out.stdout)
            .map_err(|e| LayoutError(format!("reading `cargo metadata` of {}: {e}", dir.display())))?;
        let target_dir = resolve_target_dir(
            &metadata.target_directory,
            base,
            std::env::var_os("CARGO_TARGET_DIR").as_deref(),
            exe,
        );
        Ok(Layout { workspace_root: metadata.workspace_root, target_dir, packages: metadata.packages })
    }

    /// The layout of the crate this process tests: the package cargo ran it for
    /// (`$CARGO_MANIFEST_DIR`, which cargo sets for `cargo test` and `cargo run`), else the
    /// current directory's workspace, else this repository (a binary started by hand elsewhere).
    /// Found once per process.
    pub fn current() -> &'static Layout {
        static CURRENT: OnceLock<Layout> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let cwd = std::env::current_dir().unwrap_or_else(|_| crate::workspace_root());
            let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| cwd.clone());
            let exe = std::env::current_exe().ok();
            Layout::discover_from(&crate_dir, &cwd, exe.as_deref()).unwrap_or_else(|_| Layout::repository())
        })
    }

    /// This repository's layout without asking cargo: `<root>/target`, or `$CARGO_TARGET_DIR`
    /// (relative values from the root).
    pub fn repository() -> Layout {
        let root = crate::workspace_root();
        let target_dir = crate::target_dir_in(&root, std::env::var_os("CARGO_TARGET_DIR").as_deref());
        Layout { workspace_root: root, target_dir, packages: Vec::new() }
    }

    /// The workspace package whose directory holds `dir` (the innermost one), for tools run from
    /// inside a crate.
    pub fn package_at(&self, dir: &Path) -> Option<&Package> {
        self.packages.iter().filter(|p| dir.starts_with(p.dir())).max_by_key(|p| p.dir().components().count())
    }

    /// The workspace package named `name` (`-` and `_` alike).
    pub fn package(&self, name: &str) -> Option<&Package> {
        let wanted = name.replace('_', "-");
        self.packages.iter().find(|p| p.name.replace('_', "-") == wanted)
    }
}

/// The target directory cargo uses, given what `cargo metadata` said (`metadata_target`), the
/// directory cargo was started in (`base`), `$CARGO_TARGET_DIR` and the running executable.
///
/// An absolute `$CARGO_TARGET_DIR` is used as is. A relative one is relative to where the
/// `cargo` that built this process ran, which a test process (started in its crate's directory)
/// cannot see: when this executable lies under a directory ending with that relative path
/// (`<dir>/out/t/debug/deps/test-…` for `out/t`), that directory is the one; otherwise it is
/// taken from `base`. Unset, it is `cargo metadata`'s `target_directory` (which also reads
/// `build.target-dir` from cargo's configuration).
pub fn resolve_target_dir(
    metadata_target: &Path,
    base: &Path,
    cargo_target_dir: Option<&OsStr>,
    exe: Option<&Path>,
) -> PathBuf {
    let Some(dir) = cargo_target_dir.filter(|d| !d.is_empty()).map(Path::new) else {
        return metadata_target.to_path_buf();
    };
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    let relative: Vec<Component<'_>> = dir.components().filter(|c| *c != Component::CurDir).collect();
    let under_exe = exe.and_then(|exe| {
        exe.ancestors().skip(1).find(|ancestor| {
            let tail: Vec<Component<'_>> = ancestor.components().collect();
            !relative.is_empty() && tail.ends_with(&relative)
        })
    });
    under_exe.map_or_else(|| base.join(dir), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> PathBuf {
        PathBuf::from("/ws/target")
    }

    #[test]
    fn unset_cargo_target_dir_is_what_cargo_metadata_says() {
        let got = resolve_target_dir(&metadata(), Path::new("/cwd"), None, None);
        assert_eq!(got, PathBuf::from("/ws/target"));
        let empty = resolve_target_dir(&metadata(), Path::new("/cwd"), Some(OsStr::new("")), None);
        assert_eq!(empty, PathBuf::from("/ws/target"));
    }

    #[test]
    fn an_absolute_cargo_target_dir_is_kept() {
        let got = resolve_target_dir(&metadata(), Path::new("/cwd"), Some(OsStr::new("/t")), None);
        assert_eq!(got, PathBuf::from("/t"));
    }

    #[test]
    fn a_relative_cargo_target_dir_is_found_above_the_test_executable() {
        let exe = Path::new("/home/u/ws/out/t/debug/deps/emulator-0123");
        let got = resolve_target_dir(
            &metadata(),
            Path::new("/home/u/ws/sub"),
            Some(OsStr::new("out/t")),
            Some(exe),
        );
        assert_eq!(got, PathBuf::from("/home/u/ws/out/t"));
        let dotted = resolve_target_dir(&metadata(), Path::new("/x"), Some(OsStr::new("./out/t")), Some(exe));
        assert_eq!(dotted, PathBuf::from("/home/u/ws/out/t"));
    }

    #[test]
    fn a_relative_cargo_target_dir_is_otherwise_taken_from_where_cargo_runs() {
        let exe = Path::new("/usr/local/bin/gatewasm");
        let got =
            resolve_target_dir(&metadata(), Path::new("/home/u/guard"), Some(OsStr::new("t")), Some(exe));
        assert_eq!(got, PathBuf::from("/home/u/guard/t"));
    }

    #[test]
    fn this_workspace_is_discovered_with_its_packages() {
        let root = crate::workspace_root();
        let layout = Layout::discover(&root.join("test-harness").join("paths"), &root).unwrap();
        assert_eq!(layout.workspace_root.canonicalize().unwrap(), root);
        let paths = layout.package("gatewasm_paths").unwrap();
        assert_eq!(paths.dir().canonicalize().unwrap(), root.join("test-harness").join("paths"));
        let inner = layout.package_at(&root.join("sdk").join("fixture").join("src")).map(|p| p.name.as_str());
        assert_eq!(inner, Some("sdk-fixture"));
        assert_eq!(layout.package_at(&root.join("sdk")).map(|p| p.name.as_str()), Some("gatewasm-sdk"));
    }

    #[test]
    fn outside_this_workspace_discovery_fails_naming_the_directory() {
        let dir = std::env::temp_dir();
        let err = Layout::discover(&dir, &dir).unwrap_err();
        assert!(err.0.contains(&dir.display().to_string()), "{err}");
    }
}
