//! Against a real registry (Debian's `docker-registry`, bound to 127.0.0.1 on a free port with its
//! storage in a temp dir): push every shipped image with the CLI, pull it back with `skopeo`, and
//! check media types, layer count, `plugin.wasm` and digests; push twice; basic auth.
//! Fails (never skips) when `docker-registry` or `skopeo` is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{assert_success, pack_ok, pack_with, require_tool, shipped_modules, untar_gz};
use gatewasm_envoy::registry::Registry;
use gatewasm_pack::image::{
    Format, Image, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
use gatewasm_pack::registry::{push_blocking, Credentials, Target, PASSWORD_ENV, USERNAME_ENV};
use serde_json::Value;

/// Runs skopeo with `args`; returns stdout, failing with both streams.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let mut full = vec!["--insecure-policy"];
    full.extend_from_slice(args);
    let out = Command::new("skopeo").args(&full).output().unwrap_or_else(|e| panic!("running skopeo: {e}"));
    assert_success("skopeo", &full, &out);
    out.stdout
}

/// Pulls `reference` with skopeo (raw manifest and a copy into an OCI layout) and checks it is
/// exactly `image` holding `module`.
fn pull_and_check(reference: &str, creds: Option<&str>, image: &Image, module: &[u8], scratch: &Path) {
    let docker_ref = format!("docker://{reference}");
    let mut inspect = vec!["inspect", "--raw", "--tls-verify=false"];
    if let Some(c) = creds {
        inspect.extend(["--creds", c]);
    }
    inspect.push(&docker_ref);
    let raw = skopeo(&inspect);
    assert!(raw == image.manifest.data, "{reference}: the registry serves a different manifest");
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);

    let dest = scratch.join(reference.replace([':', '/'], "_"));
    let dest_ref = format!("oci:{}:pulled", dest.display());
    let mut copy = vec!["copy", "--src-tls-verify=false", "--preserve-digests"];
    if let Some(c) = creds {
        copy.extend(["--src-creds", c]);
    }
    copy.extend([docker_ref.as_str(), dest_ref.as_str()]);
    skopeo(&copy);
    let (pulled, tag) = Image::read_layout(&dest).unwrap();
    assert_eq!(tag.as_deref(), Some("pulled"));
    assert_eq!(pulled.digest(), image.digest(), "{reference}: digest after the round trip");
    assert_eq!(pulled, *image, "{reference}: blobs after the round trip");

    match pulled.config.media_type.as_str() {
        IMAGE_CONFIG_MEDIA_TYPE => {
            assert_eq!(pulled.layers.len(), 1);
            assert_eq!(pulled.layers[0].media_type, IMAGE_LAYER_MEDIA_TYPE);
            let files = untar_gz(&pulled.layers[0].data);
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].0, "plugin.wasm");
            assert!(files[0].2 == module, "{reference}: plugin.wasm differs from the module");
        }
        WASM_CONFIG_MEDIA_TYPE => {
            let types: Vec<&str> = pulled.layers.iter().map(|l| l.media_type.as_str()).collect();
            assert_eq!(types, [WASM_LAYER_MEDIA_TYPE, WASM_CONFIG_MEDIA_TYPE]);
            assert!(pulled.layers[0].data == module, "{reference}: the wasm layer differs from the module");
        }
        other => panic!("{reference}: unexpected config media type {other}"),
    }
}

fn out_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("oci")
}

#[test]
fn push_every_image_pull_back_with_skopeo_and_push_again() {
    require_tool("skopeo", "skopeo");
    let registry = Registry::start(None).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = out_path(&work);
    let out_s = out.to_str().unwrap();
    pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--out", out_s]);
    let repo = format!("{}/gatewasm", registry.host());

    let push_args = ["push", "--registry", repo.as_str(), "--plain-http", "--out", out_s, "--tag", "v1"];
    let first = pack_ok(&push_args);
    for (filter, module) in shipped_modules() {
        let (image, _) = Image::read_layout(&out.join(filter.name)).unwrap();
        let reference = format!("{repo}/{}:v1", filter.name);
        assert!(
            first.contains(&format!("pushed {reference} (2 blobs uploaded, 0 already there)")),
            "{first}"
        );
        assert!(first.contains(&format!("  manifest digest  {}\n", image.digest())), "{first}");
        assert!(first.contains(&format!("sha256: {}\n", &image.digest()[7..])), "{first}");
        pull_and_check(&reference, None, &image, &module, work.path());

        // The artifact variant of the same module, pushed through the library.
        let artifact = Image::build(filter.name, &module, Format::Artifact).unwrap();
        let target = Target {
            reference: format!("{repo}/{}:v1-artifact", filter.name),
            plain_http: true,
            credentials: Credentials::Anonymous,
        };
        let pushed = push_blocking(&artifact, &target).unwrap();
        assert_eq!(pushed.manifest_digest, artifact.digest());
        pull_and_check(&target.reference, None, &artifact, &module, work.path());
    }

    // Twice: nothing to upload, the same digests.
    let second = pack_ok(&push_args);
    assert_eq!(
        second.matches("(0 blobs uploaded, 2 already there)").count(),
        shipped_modules().len(),
        "{second}"
    );
    let digests = |s: &str| s.lines().filter(|l| l.contains("sha256")).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(digests(&first), digests(&second));
    assert!(
        registry.log().contains("PUT /v2/gatewasm/hello/manifests/v1 "),
        "registry log:\n{}",
        registry.log()
    );
}

#[test]
fn basic_auth_push_and_pull_and_wrong_password_fails() {
    require_tool("skopeo", "skopeo");
    let password = "s3cret-Pa55word";
    let registry = Registry::start(Some(("gatewasm", password))).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = out_path(&work);
    let out_s = out.to_str().unwrap();
    pack_ok(&["package", "--no-build", "--wasm-opt", "skip", "--filter", "hello", "--out", out_s]);
    let repo = format!("{}/team", registry.host());
    let args = ["push", "--registry", repo.as_str(), "--plain-http", "--filter", "hello", "--out", out_s];

    // Anonymous: refused.
    let anon = pack_with(&args, |c| {
        c.env_remove(USERNAME_ENV).env_remove(PASSWORD_ENV);
    });
    assert!(!anon.status.success(), "anonymous push must be refused");

    // Wrong password: refused, and the password is never printed.
    let wrong = "not-the-password";
    let res = pack_with(&args, |c| {
        c.env(USERNAME_ENV, "gatewasm").env(PASSWORD_ENV, wrong);
    });
    let all = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert!(!res.status.success(), "a wrong password must fail: {all}");
    assert!(all.to_lowercase().contains("401") || all.to_lowercase().contains("unauthorized"), "{all}");
    assert!(!all.contains(wrong), "the password was printed: {all}");

    // Right password from the environment.
    let ok = pack_with(&args, |c| {
        c.env(USERNAME_ENV, "gatewasm").env(PASSWORD_ENV, password);
    });
    assert_success("gatewasm-pack", &args, &ok);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(!stdout.contains(password) && !String::from_utf8_lossy(&ok.stderr).contains(password));

    // Right password on stdin, with --username.
    let mut stdin_args = args.to_vec();
    stdin_args.extend(["--username", "gatewasm", "--password-stdin"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewasm-pack"))
        .args(&stdin_args)
        .env_remove(USERNAME_ENV)
        .env_remove(PASSWORD_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let res = child.wait_with_output().unwrap();
    assert_success("gatewasm-pack", &stdin_args, &res);
    assert!(String::from_utf8_lossy(&res.stdout).contains("(0 blobs uploaded, 2 already there)"));

    let (image, tag) = Image::read_layout(&out.join("hello")).unwrap();
    let module = shipped_modules().into_iter().find(|(f, _)| f.name == "hello").unwrap().1;
    let reference = format!("{repo}/hello:{}", tag.unwrap());
    pull_and_check(&reference, Some(&format!("gatewasm:{password}")), &image, &module, work.path());
}
