//! A filter author's path outside this repository: `gatewasm new` writes a crate into a
//! temporary directory, `gatewasm test` runs its unit, emulator and Envoy tests (building its
//! modules), `gatewasm package` writes what ships. The crate shares this workspace's target
//! directory through `CARGO_TARGET_DIR`, so the SDK's and the harness's dependencies are not
//! built twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn gatewasm(dir: &Path, args: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gatewasm"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", gatewasm_paths::target_dir())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "gatewasm {args:?} failed ({}):\n{text}", out.status);
    eprintln!("gatewasm {} took {:.1?}", args.join(" "), started.elapsed());
    text
}

#[test]
fn a_filter_crate_outside_the_repository_is_created_tested_and_packaged() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        !tmp.path().starts_with(gatewasm_paths::workspace_root()),
        "the crate must be outside the repository"
    );

    // Relative paths are taken from where the tool runs.
    gatewasm(tmp.path(), &["new", "guard", "--name", "tenant-guard"]);
    let krate = tmp.path().join("guard");
    assert!(krate.join("src").join("lib.rs").is_file());

    let tests = gatewasm(&krate, &["test"]);
    for suite in ["src/lib.rs", "tests/emulator.rs", "tests/envoy.rs"] {
        assert!(
            tests.contains(&format!("Running {suite}"))
                || tests.contains(&format!("Running unittests {suite}")),
            "{tests}"
        );
    }
    assert!(tests.contains("guards_and_counts_in_envoy::native ... ok"), "{tests}");
    assert!(!tests.contains("FAILED"), "{tests}");

    let packaged = gatewasm(&krate, &["package", "--out", "dist"]);
    let dist = krate.join("dist");
    let module = std::fs::read(dist.join("tenant-guard.wasm")).unwrap();
    assert_eq!(module.get(..4), Some(&b"\0asm"[..]));
    let index = std::fs::read_to_string(dist.join("tenant-guard").join("index.json")).unwrap();
    assert!(
        index.contains("\"org.opencontainers.image.ref.name\":\"0.1.0\""),
        "tag from the crate's version: {index}"
    );
    let sum = std::fs::read_to_string(dist.join("libtenant_guard.so.sha256")).unwrap();
    assert!(sum.ends_with("  libtenant_guard.so\n"), "{sum}");
    assert!(packaged.contains("manifest digest  sha256:"), "{packaged}");
}
