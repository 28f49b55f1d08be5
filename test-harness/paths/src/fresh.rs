//! Building a module before a test loads it: only when it is missing or older than a source it
//! was built from, once per process, and once for all test processes that start together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::{Kind, Layout, ModuleError, Why};

/// Set to `1` to never build a module from a test: a missing or stale module is then an error
/// naming the command (for runs that must test exactly the modules built before them).
pub const NO_BUILD_VAR: &str = "GATEWASM_NO_BUILD";

/// Whether a built module is up to date with what it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Built, and no source it was built from is newer.
    Fresh,
    /// Not built.
    Missing,
    /// A source is newer than the module.
    Stale(PathBuf),
    /// No record of what it was built from (cargo's dep-info file is missing or names other
    /// sources, e.g. a target directory copied from another checkout): cargo must decide.
    Unknown,
}

/// Compares `artifact` with the sources listed in cargo's dep-info file next to it
/// (`<dir>/<stem>.d`: every file rustc read for it, the crate's and its path dependencies'),
/// which is what cargo itself would check, without running cargo. The dep-info file must name
/// at least one file under `workspace_root`, so a target directory copied from another
/// checkout is not trusted.
pub fn freshness(artifact: &Path, workspace_root: &Path) -> Freshness {
    let Ok(built) = std::fs::metadata(artifact).and_then(|m| m.modified()) else {
        return Freshness::Missing;
    };
    let dep_info = artifact.with_extension("d");
    let Ok(text) = std::fs::read_to_string(&dep_info) else {
        return Freshness::Unknown;
    };
    let sources = dep_info_sources(&text);
    let root = workspace_root.canonicalize().unwrap_or_else(|_| workspace_root.to_path_buf());
    if !sources.iter().any(|s| s.starts_with(&root) || s.starts_with(workspace_root)) {
        return Freshness::Unknown;
    }
    for source in sources {
        match std::fs::metadata(&source).and_then(|m| m.modified()) {
            Ok(modified) if modified <= built => {}
            // A source that changed after the build, or that is gone (renamed, deleted).
            _ => return Freshness::Stale(source),
        }
    }
    Freshness::Fresh
}

/// The prerequisites of the first rule of a Makefile-style dep-info file, with `\ ` escapes
/// undone (cargo writes paths with spaces that way).
pub fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => words.push(std::mem::take(&mut word)),
            c => word.push(c),
        }
    }
    words.push(word);
    let mut words = words.into_iter().filter(|w| !w.is_empty());
    // The target ends with an unescaped ':' (`/t/x.wasm:`); what follows are its sources.
    words.by_ref().find(|w| w.ends_with(':'));
    words.map(PathBuf::from).collect()
}

/// Each module checked or built so far, and the answer, by its path and kind.
type Checked = HashMap<(PathBuf, Kind), Result<PathBuf, ModuleError>>;

/// The modules this process has already checked or built, so later tests only look them up.
fn checked() -> &'static Mutex<Checked> {
    static CHECKED: OnceLock<Mutex<Checked>> = OnceLock::new();
    CHECKED.get_or_init(Mutex::default)
}

/// The module of `package` in `layout`, built first when it is missing or stale
/// ([`freshness`]). The first call in a process does the work, under a lock file in the target
/// directory that parallel test processes share; later calls return its answer.
pub fn ensure(layout: &Layout, package: &str, kind: Kind) -> Result<PathBuf, ModuleError> {
    let artifact = layout.artifact(package, kind);
    // A poisoned lock only means another test panicked while holding it; the map is still whole.
    let mut checked = checked().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(answer) = checked.get(&(artifact.clone(), kind)) {
        return answer.clone();
    }
    let answer = check_or_build(layout, package, kind, &artifact);
    checked.insert((artifact, kind), answer.clone());
    answer
}

fn check_or_build(
    layout: &Layout,
    package: &str,
    kind: Kind,
    artifact: &Path,
) -> Result<PathBuf, ModuleError> {
    let error = |why| ModuleError::new(artifact.to_path_buf(), package, kind, why);
    let why = match freshness(artifact, &layout.workspace_root) {
        Freshness::Fresh => return Ok(artifact.to_path_buf()),
        Freshness::Missing => Why::Missing,
        Freshness::Stale(source) => Why::Stale(source),
        Freshness::Unknown => Why::Unrecorded,
    };
    if std::env::var_os(NO_BUILD_VAR).is_some_and(|v| v == "1") {
        return Err(error(Why::NotBuilt { why: Box::new(why), var: NO_BUILD_VAR }));
    }
    let _lock = BuildLock::take(&layout.target_dir).map_err(|e| error(Why::BuildFailed(e)))?;
    // Another process may have built it while this one waited for the lock.
    if freshness(artifact, &layout.workspace_root) == Freshness::Fresh {
        return Ok(artifact.to_path_buf());
    }
    let started = SystemTime::now();
    eprintln!("{} ({}): building with `{}`", artifact.display(), why, crate::command_for(package, kind));
    run_build(layout, package, kind).map_err(|e| error(Why::BuildFailed(e)))?;
    if artifact.is_file() {
        eprintln!("built {} in {:.1?}", artifact.display(), started.elapsed().unwrap_or_default());
        Ok(artifact.to_path_buf())
    } else {
        Err(error(Why::BuildFailed("cargo succeeded but did not write it".to_string())))
    }
}

/// Runs the build command of `package` in the layout's workspace, with the target directory
/// passed on as an absolute `CARGO_TARGET_DIR`; the error holds the end of cargo's output.
pub fn run_build(layout: &Layout, package: &str, kind: Kind) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(crate::build_args(package, kind))
        .current_dir(&layout.workspace_root)
        .env("CARGO_TARGET_DIR", &layout.target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines.get(lines.len().saturating_sub(30)..).unwrap_or_default().join("\n");
    Err(format!("cargo failed ({}):\n{tail}", out.status))
}

/// An exclusive lock on `<target>/.gatewasm-build.lock`, held while a module is checked and
/// built; dropping it releases the lock (closing the file does).
struct BuildLock(#[allow(dead_code)] std::fs::File);

impl BuildLock {
    fn take(target_dir: &Path) -> Result<BuildLock, String> {
        std::fs::create_dir_all(target_dir).map_err(|e| format!("creating {}: {e}", target_dir.display()))?;
        let path = target_dir.join(".gatewasm-build.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        fs4::FileExt::lock(&file).map_err(|e| format!("locking {}: {e}", path.display()))?;
        Ok(BuildLock(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_the_sources_after_the_target() {
        let text = "/t/wasm32-wasip1/release/x.wasm: /c/src/lib.rs /c/my\\ dir/a.rs /sdk/src/lib.rs\n\n";
        assert_eq!(
            dep_info_sources(text),
            ["/c/src/lib.rs", "/c/my dir/a.rs", "/sdk/src/lib.rs"].map(PathBuf::from).to_vec()
        );
        assert!(dep_info_sources("").is_empty());
    }

    fn touch(path: &Path, at: SystemTime) {
        std::fs::write(path, b"x").unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(at).unwrap();
    }

    #[test]
    fn a_module_is_stale_when_a_source_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (source, module) = (root.join("lib.rs"), root.join("m.wasm"));
        let then = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(freshness(&module, root), Freshness::Missing);
        touch(&module, then);
        assert_eq!(freshness(&module, root), Freshness::Unknown, "no dep-info");
        std::fs::write(root.join("m.d"), format!("{}: {}\n", module.display(), source.display())).unwrap();
        touch(&source, then - std::time::Duration::from_secs(1));
        assert_eq!(freshness(&module, root), Freshness::Fresh);
        touch(&source, SystemTime::now());
        assert_eq!(freshness(&module, root), Freshness::Stale(source.clone()));
        std::fs::remove_file(&source).unwrap();
        assert_eq!(freshness(&module, root), Freshness::Stale(source), "a source that is gone");
    }

    #[test]
    fn dep_info_naming_another_checkout_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        touch(&module, SystemTime::now());
        std::fs::write(dir.path().join("m.d"), format!("{}: /elsewhere/src/lib.rs\n", module.display()))
            .unwrap();
        assert_eq!(freshness(&module, dir.path()), Freshness::Unknown);
    }
}
