//! A filter author's path outside this repository: `gatewasm new` writes a crate into a
//! temporary directory, `gatewasm test` runs its unit, emulator and Envoy tests (building its
//! modules), `gatewasm package` writes what ships, `gatewasm push` puts it in a registry on this
//! machine and `gatewasm manifests` writes its Istio manifests with that image. The crate shares this workspace's target
//! directory through `CARGO_TARGET_DIR`, so the SDK's and the harness's dependencies are not
//! built twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use gatewasm_envoy::registry::Registry;

/// Runs the tool in `dir`; returns whether it succeeded and what it printed.
fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_gatewasm"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", gatewasm_paths::target_dir())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("gatewasm {} took {:.1?}", args.join(" "), started.elapsed());
    (out.status.success(), text)
}

fn gatewasm(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = run(dir, args);
    assert!(ok, "gatewasm {args:?} failed:\n{text}");
    text
}

/// The value after `label` on the line holding it.
fn printed<'a>(text: &'a str, label: &str) -> &'a str {
    let line = text.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    line.split_once(label).unwrap().1.trim()
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
    let digest = printed(&packaged, "manifest digest  sha256:").to_owned();

    let (ok, text) = run(&krate, &["manifests", "--registry", "r.test/team", "--out", "elsewhere"]);
    assert!(!ok && text.contains("package it first"), "manifests before package:\n{text}");

    // Pushed to a registry on this machine, then the manifests name it and the pushed digest.
    let registry = Registry::start(None).unwrap();
    let repo = format!("{}/team", registry.host());
    let pushed = gatewasm(&krate, &["push", "--registry", &repo, "--out", "dist", "--plain-http"]);
    assert!(pushed.contains(&format!("pushed {repo}/tenant-guard:0.1.0 ")), "{pushed}");
    assert_eq!(printed(&pushed, "manifest digest  sha256:"), digest, "the registry holds the packaged image");

    let rendered = gatewasm(&krate, &["manifests", "--registry", &repo, "--out", "dist"]);
    let folder = dist.join("istio").join("tenant-guard");
    for form in ["wasmplugin.yaml", "trafficextension.yaml"] {
        let text = std::fs::read_to_string(folder.join(form)).unwrap();
        assert!(text.contains(&format!("url: oci://{repo}/tenant-guard:0.1.0\n")), "{form}:\n{text}");
        assert!(text.contains(&format!("sha256: \"{digest}\"")), "{form}:\n{text}");
        assert!(text.contains("pluginName: tenant-guard\n"), "{form}:\n{text}");
        assert!(!text.contains("registry.example.com") && !text.contains(&"0".repeat(64)), "{form}:\n{text}");
    }
    assert!(folder.join("kustomization.yaml").is_file());
    assert!(rendered.contains("apply: kubectl apply -k "), "{rendered}");
}
