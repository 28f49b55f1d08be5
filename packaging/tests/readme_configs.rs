//! Every filter README carries a complete standalone Envoy configuration (a fenced `yaml` block
//! holding `static_resources:`), and each one loads in Envoy 1.40 as written: `--mode validate`
//! first, then a real start, after which the filter's Wasm VM must be running and its plugin
//! configured (no configuration error in Envoy's log). The module path in the READMEs is
//! `/etc/envoy/<module>.wasm`; the test points it at this workspace's release build, and moves
//! the listeners and the admin interface to free ports so parallel tests never collide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatewasm_envoy::{envoy_binary, validate_config_file, wasm_artifact, workspace_root, Request};
use serde::Deserialize as _;
use serde_json::{json, Value};

/// The path the READMEs give modules, as an operator would install them.
const MODULE_DIR: &str = "/etc/envoy/";

/// The fenced ```yaml blocks of `text` that are whole Envoy bootstraps.
fn bootstrap_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                let block = current.take().unwrap_or_default();
                if block.lines().any(|l| l.starts_with("static_resources:")) {
                    blocks.push(block);
                }
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Every `filters/<name>/README.md`.
fn filter_readmes() -> Vec<PathBuf> {
    let dir = workspace_root().join("filters");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("README.md"))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no filter READMEs under {}", dir.display());
    out
}

/// The block as Envoy should load it here: modules from this build, listeners and admin on
/// ephemeral loopback ports.
fn for_this_machine(block: &str) -> Value {
    let mut text = block.to_string();
    for m in modules_named(block) {
        // The test has already refused a module this workspace does not build.
        if let Ok(path) = wasm_artifact(&m, &m.trim_end_matches(".wasm").replace('_', "-")) {
            text = text.replace(&format!("{MODULE_DIR}{m}"), &path.display().to_string());
        }
    }
    let mut doc = Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap();
    for listener in doc.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).unwrap() {
        listener["address"]["socket_address"]["port_value"] = json!(0);
    }
    doc["admin"] = json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}});
    doc
}

/// The module files a bootstrap loads from [`MODULE_DIR`].
fn modules_named(block: &str) -> Vec<String> {
    block
        .split(MODULE_DIR)
        .skip(1)
        .filter_map(|rest| rest.split(|c: char| c.is_whitespace() || c == '}' || c == ',').next())
        .map(str::to_string)
        .collect()
}

/// Kills Envoy when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(admin: &str, path: &str) -> Option<String> {
    let response = gatewasm_envoy::send(admin.parse().ok()?, &Request::get(path)).ok()?;
    (response.status == 200).then(|| response.text())
}

/// Starts Envoy on `config` and returns its admin address once it is live and every Wasm VM
/// the configuration asks for has started.
fn start(config: &Path, dir: &Path) -> (Running, String) {
    let admin_path = dir.join("admin");
    let log_path = dir.join("envoy.log");
    let child = Command::new(envoy_binary().unwrap())
        .arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "info"])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .arg("--log-path")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(running.0.try_wait().unwrap().is_none(), "Envoy exited:\n{}", read(&log_path));
        assert!(Instant::now() < deadline, "Envoy not live in 30 s:\n{}", read(&log_path));
        if let Ok(admin) = std::fs::read_to_string(&admin_path) {
            let admin = admin.trim().to_string();
            if get(&admin, "/ready").is_some_and(|t| t.trim() == "LIVE") {
                return (running, admin);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn every_filter_readme_has_a_standalone_envoy_config_that_runs() {
    for readme in filter_readmes() {
        let name = readme.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&readme).unwrap();
        let blocks = bootstrap_blocks(&text);
        assert!(!blocks.is_empty(), "{name}/README.md has no ```yaml block with static_resources:");
        for (i, block) in blocks.iter().enumerate() {
            let what = format!("{name}/README.md, Envoy configuration {}", i + 1);
            assert!(block.contains("envoy.filters.http.wasm"), "{what}: no Wasm filter");
            let modules = modules_named(block);
            assert!(!modules.is_empty(), "{what}: no module under {MODULE_DIR}");
            for m in &modules {
                let package = m.trim_end_matches(".wasm").replace('_', "-");
                if let Err(e) = wasm_artifact(m, &package) {
                    panic!("{what}: {m} is not a module this workspace builds: {e:#}");
                }
            }

            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("envoy.json");
            std::fs::write(&config, serde_json::to_vec(&for_this_machine(block)).unwrap()).unwrap();
            let validation = validate_config_file(&config).unwrap();
            assert!(validation.ok, "{what}: envoy --mode validate:\n{}", validation.output);

            let (running, admin) = start(&config, dir.path());
            let stats = get(&admin, "/stats?filter=^wasm\\.").unwrap_or_default();
            let active = stats
                .lines()
                .find_map(|l| l.strip_prefix("wasm.envoy.wasm.runtime.v8.active: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            assert!(
                active >= 1,
                "{what}: no Wasm VM running:\n{stats}\n{}",
                read(&dir.path().join("envoy.log"))
            );
            drop(running);
            let log = read(&dir.path().join("envoy.log"));
            for bad in
                ["invalid plugin configuration", "Unable to create Wasm", "Failed to load Wasm", "[critical]"]
            {
                assert!(!log.contains(bad), "{what}: Envoy says {bad:?}:\n{log}");
            }
        }
    }
}

#[test]
fn blocks_are_found_and_modules_named() {
    let readme = "text\n```yaml\nstatic_resources:\n  x: {filename: /etc/envoy/a_b.wasm}\n```\n\
                  ```yaml\nnot: a bootstrap\n```\n```json\n{\"static_resources\": 1}\n```\n";
    let blocks = bootstrap_blocks(readme);
    assert_eq!(blocks, ["static_resources:\n  x: {filename: /etc/envoy/a_b.wasm}\n"]);
    assert_eq!(modules_named(&blocks[0]), ["a_b.wasm"]);
}
