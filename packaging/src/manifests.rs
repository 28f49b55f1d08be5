//! The Istio manifests of `istio-envoyfilters/` with real values: the committed files name a
//! placeholder registry and an all-zero sha256 on lines marked [`MANIFEST_DIGEST_MARK`] or
//! [`MODULE_SHA256_MARK`]; [`render`] puts in the registry, the tag and the digests of the
//! images `gatewasm-pack package` wrote, so what a user applies matches what they pushed.
//!
//! Only marked lines and the placeholder registry change; comments and layout are kept.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The folder of the manifests, relative to the workspace root.
pub const MANIFESTS_DIR: &str = "istio-envoyfilters";

/// The registry (and path) the committed `WasmPlugin` URLs name:
/// `oci://registry.example.com/gatewasm/<filter>:<version>`.
pub const PLACEHOLDER_REGISTRY: &str = "registry.example.com/gatewasm";

/// The placeholder digest: 64 zeros, which Istio's CRD accepts (`^[a-f0-9]{64}$`) and no module
/// or image has, so an unrendered manifest fails closed.
pub const PLACEHOLDER_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Marks the line holding a `WasmPlugin`'s `sha256` or a `TrafficExtension`'s `wasm.sha256` (the
/// image's manifest digest).
pub const MANIFEST_DIGEST_MARK: &str = "# gatewasm:manifest-digest";

/// Marks the line holding an `EnvoyFilter`'s `remote.sha256` (the module's sha256).
pub const MODULE_SHA256_MARK: &str = "# gatewasm:module-sha256";

/// Marks the line holding an `EnvoyFilter`'s `vm_id` that names one build of a module:
/// [`PLACEHOLDER_VM_ID`] there becomes the first 16 hex digits of the module's sha256. The
/// bundle's five EnvoyFilters share it, so they share a VM, and a new build gets a VM of its own.
pub const MODULE_VM_ID_MARK: &str = "# gatewasm:module-vm-id";

/// Marks the line holding a native module's sha256 (the module loader's check, or Envoy's
/// `module.remote.sha256`). The mark is followed by the filter whose module it is
/// (`# gatewasm:native-sha256 jwt-auth`), since one file may load several (Envoy Gateway's
/// EnvoyProxy); [`PLACEHOLDER_DIGEST`] there becomes that module's sha256.
pub const NATIVE_SHA256_MARK: &str = "# gatewasm:native-sha256";

/// The placeholder on a [`MODULE_VM_ID_MARK`] line: 16 zeros.
pub const PLACEHOLDER_VM_ID: &str = "0000000000000000";

/// The part of a module's sha256 a [`MODULE_VM_ID_MARK`] line takes: its first 16 hex digits.
pub fn vm_id_suffix(module_sha256: &str) -> &str {
    module_sha256.get(..PLACEHOLDER_VM_ID.len()).unwrap_or(module_sha256)
}

/// The manifests of a filter folder that `gatewasm-pack manifests` renders: the filter in each
/// of Istio's forms (`WasmPlugin`, `EnvoyFilter`, and `TrafficExtension` for Istio 1.30+), and the
/// kustomization that applies one of them.
pub const RENDERED_FILES: &[&str] =
    &["wasmplugin.yaml", "envoyfilter.yaml", "trafficextension.yaml", "kustomization.yaml"];

/// The files every filter folder holds: the [`RENDERED_FILES`] and what the tests check the
/// example configuration against.
pub const FILTER_FILES: &[&str] =
    &["wasmplugin.yaml", "envoyfilter.yaml", "trafficextension.yaml", "kustomization.yaml", "expect.yaml"];

/// The native forms a folder of a filter with a native module also holds, rendered too: the
/// filter as an Envoy dynamic module through an `EnvoyFilter` (Istio 1.31+), and the patch of
/// the gateway Deployment whose init container puts the module on the pods, its sha256 checked.
pub const NATIVE_FILES: &[&str] = &["envoyfilter-native.yaml", "native-loader.yaml"];

/// The folder of the Envoy Gateway forms: one `EnvoyProxy` that registers and loads every
/// native module, and one `EnvoyExtensionPolicy` that attaches the filters to a Gateway.
pub const ENVOY_GATEWAY_DIR: &str = "envoy-gateway";

/// The files of [`ENVOY_GATEWAY_DIR`], rendered with every native module's sha256.
pub const ENVOY_GATEWAY_FILES: &[&str] = &["envoyproxy.yaml", "envoyextensionpolicy.yaml"];

/// Folders of `istio-envoyfilters/` that are not filters.
pub const SUPPORT_DIRS: &[&str] = &["schemas", "module-server", ENVOY_GATEWAY_DIR];

/// The digests and place of one packaged filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendering<'a> {
    /// `HOST[:PORT][/PATH]` the images were pushed to.
    pub registry: &'a str,
    /// The image tag.
    pub tag: &'a str,
    /// The image's manifest digest, hex without `sha256:`.
    pub manifest_digest: &'a str,
    /// The module's sha256, hex.
    pub module_sha256: &'a str,
    /// The native modules' sha256s (hex) by filter, for [`NATIVE_SHA256_MARK`] lines.
    pub native_sha256: &'a [(&'a str, String)],
}

/// The filter folders of `dir` (`istio-envoyfilters/`): every sub-folder but [`SUPPORT_DIRS`],
/// sorted by name.
pub fn filter_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() && !SUPPORT_DIRS.contains(&name.as_str()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Renders one committed manifest of filter `filter`: the placeholder registry and version tag
/// of `oci://` URLs, and the placeholder digest on marked lines. The comment block that opens
/// the file (how to fill it in) is replaced by `header`. Fails when a marked line holds no
/// placeholder, so a manifest cannot silently keep a stale value.
pub fn render(
    text: &str,
    filter: &str,
    version: &str,
    r: &Rendering<'_>,
    header: &str,
) -> anyhow::Result<String> {
    let committed_url = format!("oci://{PLACEHOLDER_REGISTRY}/{filter}:{version}");
    let url = format!("oci://{}/{filter}:{}", r.registry, r.tag);
    let mut out = String::with_capacity(text.len() + 256);
    out.push_str(header);
    let mut opening = true;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        opening = opening && line.starts_with('#');
        if opening {
            continue;
        }
        let value = if line.contains(MANIFEST_DIGEST_MARK) {
            Some((PLACEHOLDER_DIGEST, r.manifest_digest))
        } else if line.contains(MODULE_SHA256_MARK) {
            Some((PLACEHOLDER_DIGEST, r.module_sha256))
        } else if line.contains(MODULE_VM_ID_MARK) {
            Some((PLACEHOLDER_VM_ID, vm_id_suffix(r.module_sha256)))
        } else if let Some((_, named)) = line.split_once(NATIVE_SHA256_MARK) {
            let filter = named.trim();
            let sha = r.native_sha256.iter().find(|(f, _)| *f == filter).map(|(_, sha)| sha.as_str());
            match sha {
                Some(sha) => Some((PLACEHOLDER_DIGEST, sha)),
                None => bail!("line {}: no native module sha256 for {filter:?} (package it first)", n + 1),
            }
        } else {
            None
        };
        match value {
            Some((placeholder, value)) => {
                if !line.contains(placeholder) {
                    bail!(
                        "line {}: a marked line without its placeholder {placeholder}: {}",
                        n + 1,
                        line.trim()
                    );
                }
                out.push_str(&line.replacen(placeholder, value, 1));
            }
            None => out.push_str(&line.replace(&committed_url, &url)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rendering<'static> = Rendering {
        registry: "r.io:5000/team",
        tag: "t1",
        manifest_digest: "aa",
        module_sha256: "bb",
        native_sha256: &[],
    };

    #[test]
    fn a_native_mark_takes_the_sha256_of_the_module_it_names() {
        let natives = [("f", "cc".to_string()), ("g", "dd".to_string())];
        let r = Rendering { native_sha256: &natives, ..R };
        let text = format!(
            "a: \"{PLACEHOLDER_DIGEST}\"  {NATIVE_SHA256_MARK} g\nb: {PLACEHOLDER_DIGEST}  {NATIVE_SHA256_MARK} f\n"
        );
        assert_eq!(
            render(&text, "f", "0.1.0", &r, "").unwrap_or_default(),
            format!("a: \"dd\"  {NATIVE_SHA256_MARK} g\nb: cc  {NATIVE_SHA256_MARK} f\n")
        );
        let err = render(&format!("x: {PLACEHOLDER_DIGEST}  {NATIVE_SHA256_MARK} h\n"), "f", "0.1.0", &r, "")
            .unwrap_err();
        assert!(err.to_string().contains("line 1: no native module sha256 for \"h\""), "{err}");
    }

    #[test]
    fn renders_marked_lines_and_urls() {
        let text = format!(
            "url: oci://{PLACEHOLDER_REGISTRY}/f:0.1.0\nsha256: \"{PLACEHOLDER_DIGEST}\"  {MANIFEST_DIGEST_MARK}\n\
             x: {PLACEHOLDER_DIGEST}\n  sha256: \"{PLACEHOLDER_DIGEST}\"  {MODULE_SHA256_MARK}\n"
        );
        let out =
            render(&format!("# how to fill in\n#\n{text}"), "f", "0.1.0", &R, "# h\n").unwrap_or_default();
        assert_eq!(
            out,
            format!(
                "# h\nurl: oci://r.io:5000/team/f:t1\nsha256: \"aa\"  {MANIFEST_DIGEST_MARK}\nx: {PLACEHOLDER_DIGEST}\n  \
                 sha256: \"bb\"  {MODULE_SHA256_MARK}\n"
            ),
            "unmarked lines keep their digits"
        );
    }

    #[test]
    fn a_vm_id_takes_the_first_16_digits_of_the_module_sha256() {
        let r = Rendering { module_sha256: "0123456789abcdef0123", ..R };
        let text =
            format!("# c\nvm_id: b-{PLACEHOLDER_VM_ID}  {MODULE_VM_ID_MARK}\nvm_id: b-{PLACEHOLDER_VM_ID}\n");
        assert_eq!(
            render(&text, "f", "0.1.0", &r, "").unwrap_or_default(),
            format!("vm_id: b-0123456789abcdef  {MODULE_VM_ID_MARK}\nvm_id: b-{PLACEHOLDER_VM_ID}\n")
        );
        let err = render(&format!("vm_id: b  {MODULE_VM_ID_MARK}\n"), "f", "0.1.0", &r, "").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn other_filters_and_versions_are_left_alone() {
        let text =
            format!("url: oci://{PLACEHOLDER_REGISTRY}/g:0.1.0\nurl: oci://{PLACEHOLDER_REGISTRY}/f:0.0.9");
        assert_eq!(render(&text, "f", "0.1.0", &R, "").unwrap_or_default(), text);
    }

    #[test]
    fn a_marked_line_without_placeholder_is_an_error() {
        let text = format!("sha256: \"abc\"  {MODULE_SHA256_MARK}\n");
        let err = render(&format!("# c\n{text}"), "f", "0.1.0", &R, "").map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
