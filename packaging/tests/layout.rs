//! The CLI on the real shipped modules: layout structure and media types, reproducibility,
//! refusing non-Wasm input, wasm-opt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{
    pack, pack_ok, pack_with, require_tool, shipped_modules, shipped_native_modules, tree, untar_gz,
};
use gatewasm_pack::image::{
    Image, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
use gatewasm_pack::{oci_digest, sha256_hex};
use serde_json::Value;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn image_layout_structure_and_media_types() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let stdout = pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--out", dir, "--tag", "t1"]);
    for (filter, module) in shipped_modules() {
        let layout = out.path().join(filter.name);
        assert_eq!(std::fs::read(layout.join("oci-layout")).unwrap(), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = json(&std::fs::read(layout.join("index.json")).unwrap());
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "one manifest, not an index of platforms (Istio takes a manifest)");
        assert_eq!(manifests[0]["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(manifests[0]["annotations"]["org.opencontainers.image.ref.name"], "t1");

        let files = tree(&layout);
        let blob = |digest: &Value| {
            let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
            files[&std::path::Path::new("blobs/sha256").join(hex)].clone()
        };
        let manifest_bytes = blob(&manifests[0]["digest"]);
        assert_eq!(oci_digest(&manifest_bytes), manifests[0]["digest"]);
        let manifest = json(&manifest_bytes);
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(manifest["config"]["mediaType"], IMAGE_CONFIG_MEDIA_TYPE);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], IMAGE_LAYER_MEDIA_TYPE);
        let layer = blob(&layers[0]["digest"]);
        assert_eq!(layer.len() as u64, layers[0]["size"].as_u64().unwrap());
        let entries = untar_gz(&layer);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "plugin.wasm");
        assert_eq!(entries[0].1, (0o644, 0, 0, 0), "mode, uid, gid, mtime");
        assert!(entries[0].2 == module, "{}: plugin.wasm differs from the module", filter.name);
        let config = json(&blob(&manifest["config"]["digest"]));
        assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("wasm"), Some("wasip1")));
        // blobs/sha256 holds exactly config, layer and manifest.
        assert_eq!(files.len(), 2 + 3, "{:?}", files.keys().collect::<Vec<_>>());

        // The packaged module next to the layout, and the digests printed with their labels.
        assert!(std::fs::read(out.path().join(format!("{}.wasm", filter.name))).unwrap() == module);
        let digest = manifests[0]["digest"].as_str().unwrap();
        assert!(stdout.contains(&format!("  module sha256    {}\n", sha256_hex(&module))), "{stdout}");
        assert!(stdout.contains(&format!("  manifest digest  {digest}\n")), "{stdout}");
        assert!(
            stdout.contains(&format!("WasmPlugin spec.sha256 for oci:// URLs: {}", &digest[7..])),
            "{stdout}"
        );
        let (image, tag) = Image::read_layout(&layout).unwrap();
        assert_eq!((image.digest(), tag.as_deref()), (digest, Some("t1")));
    }
}

#[test]
fn native_modules_are_written_with_their_sha256() {
    require_tool("sha256sum", "coreutils");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let stdout = pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--out", dir]);
    let natives = shipped_native_modules();
    assert!(natives.len() + 1 == common::shipped_modules().len(), "every shipped module but the bundle");
    for (filter, module) in &natives {
        let file = filter.native_file().unwrap();
        let written = std::fs::read(out.path().join(&file)).unwrap();
        assert!(written == *module, "{file}: not the built module");
        let sum = std::fs::read_to_string(out.path().join(format!("{file}.sha256"))).unwrap();
        assert_eq!(sum, format!("{}  {file}\n", sha256_hex(module)));
        assert!(stdout.contains(&format!("  native sha256    {}  (", sha256_hex(module))), "{stdout}");
        // What an init container runs before Envoy loads it: the file as packaged passes, one
        // changed byte does not.
        let check = |what: &str| {
            std::process::Command::new("sha256sum")
                .args(["-c", &format!("{file}.sha256")])
                .current_dir(out.path())
                .output()
                .unwrap_or_else(|e| panic!("{what}: sha256sum: {e}"))
        };
        let ok = check("as packaged");
        assert!(ok.status.success(), "{file}: {}", String::from_utf8_lossy(&ok.stdout));
        let mut tampered = written.clone();
        *tampered.last_mut().unwrap() ^= 1;
        std::fs::write(out.path().join(&file), &tampered).unwrap();
        let refused = check("tampered");
        assert!(!refused.status.success(), "{file}: a changed byte passes sha256sum -c");
        assert!(String::from_utf8_lossy(&refused.stdout).contains("FAILED"), "{file}");
    }
    let mut shared: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".so"))
        .collect();
    shared.sort();
    let mut expected: Vec<String> = natives.iter().map(|(f, _)| f.native_file().unwrap()).collect();
    expected.sort();
    assert_eq!(shared, expected, "one .so per native filter, none for the bundle");
}

#[test]
fn artifact_layout_has_two_layers_with_the_raw_module() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    pack_ok(&["--no-build", "--wasm-opt", "skip", "--format", "artifact", "--out", dir]);
    for (filter, module) in shipped_modules() {
        let (image, _) = Image::read_layout(&out.path().join(filter.name)).unwrap();
        let manifest = json(&image.manifest.data);
        assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
        let types: Vec<&str> = image.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(types, [WASM_LAYER_MEDIA_TYPE, WASM_CONFIG_MEDIA_TYPE], "Istio wants exactly two layers");
        assert!(image.layers[0].data == module);
    }
}

#[test]
fn packaging_twice_gives_identical_bytes_and_digests() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut printed = Vec::new();
    for format in ["image", "artifact"] {
        for dir in [&a, &b] {
            let d = dir.path().join(format);
            printed.push(pack_ok(&[
                "--no-build",
                "--wasm-opt",
                "skip",
                "--format",
                format,
                "--out",
                d.to_str().unwrap(),
            ]));
        }
        let (ta, tb) = (tree(&a.path().join(format)), tree(&b.path().join(format)));
        assert!(!ta.is_empty());
        assert!(ta == tb, "{format}: the two packagings differ");
    }
    let digests = |s: &str| s.lines().filter(|l| l.contains("sha256")).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        digests(&printed[0].replace(a.path().to_str().unwrap(), "")),
        digests(&printed[1].replace(b.path().to_str().unwrap(), ""))
    );
    assert_ne!(digests(&printed[0]), digests(&printed[2]), "image and artifact differ");
}

#[test]
fn refuses_a_file_that_is_not_wasm() {
    let out = tempfile::tempdir().unwrap();
    let bogus = out.path().join("filter.wasm");
    std::fs::write(&bogus, b"#!/bin/sh\necho not wasm\n").unwrap();
    let dir = out.path().join("oci");
    let res = pack(&["file", bogus.to_str().unwrap(), "--name", "bogus", "--out", dir.to_str().unwrap()]);
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("is not a Wasm module") && stderr.contains("\\0asm"), "{stderr}");
    assert!(!dir.join("bogus").exists(), "nothing is written for a refused module");
}

#[test]
fn cli_errors_name_the_flag_and_value() {
    for (args, want) in [
        (&["--format", "docker"][..], "--format \"docker\""),
        (&["--wasm-opt", "maybe"][..], "--wasm-opt \"maybe\""),
        (&["--filter", "noop-filter", "--no-build"][..], "--filter \"noop-filter\" is not a shipped filter"),
        (&["--tag", "bad tag", "--no-build"][..], "--tag \"bad tag\""),
        (&["--opt-level", "-O9", "--no-build", "--filter", "hello"][..], "--opt-level \"-O9\""),
        (&["push", "--registry", "https://r.example/x"][..], "--registry \"https://r.example/x\""),
        (&["--bogus"][..], "unknown option \"--bogus\""),
    ] {
        let res = pack(args);
        assert!(!res.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn wasm_opt_require_fails_without_it_and_runs_when_present() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let empty_path = out.path().join("empty-bin");
    std::fs::create_dir(&empty_path).unwrap();
    let res = pack_with(&["--no-build", "--filter", "hello", "--wasm-opt", "require", "--out", dir], |c| {
        c.env("PATH", &empty_path);
    });
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("--wasm-opt require: `wasm-opt` is not on PATH"));

    require_tool("wasm-opt", "binaryen");
    let hello = shipped_modules().into_iter().find(|(f, _)| f.name == "hello").unwrap().1;
    let mut modules = Vec::new();
    for run in ["a", "b"] {
        let d = out.path().join(run);
        let stdout = pack_ok(&[
            "--no-build",
            "--filter",
            "hello",
            "--wasm-opt",
            "require",
            "--out",
            d.to_str().unwrap(),
        ]);
        assert!(stdout.contains("optimised by wasm-opt"), "{stdout}");
        modules.push(std::fs::read(d.join("hello.wasm")).unwrap());
    }
    assert!(modules[0] == modules[1], "wasm-opt output is deterministic");
    assert!(modules[0].starts_with(b"\0asm") && modules[0].len() < hello.len());
}
