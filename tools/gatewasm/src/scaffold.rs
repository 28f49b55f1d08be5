//! `gatewasm new`: a filter crate anywhere, from the templates in `template/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The files of a new filter crate: path in the crate, template text.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../template/Cargo.toml")),
    (".gitignore", include_str!("../template/.gitignore")),
    ("README.md", include_str!("../template/README.md")),
    ("envoy.yaml", include_str!("../template/envoy.yaml")),
    ("src/lib.rs", include_str!("../template/src/lib.rs")),
    ("tests/emulator.rs", include_str!("../template/tests/emulator.rs")),
    ("tests/envoy.rs", include_str!("../template/tests/envoy.rs")),
    ("istio/wasmplugin.yaml", include_str!("../template/istio/wasmplugin.yaml")),
    ("istio/trafficextension.yaml", include_str!("../template/istio/trafficextension.yaml")),
    ("istio/kustomization.yaml", include_str!("../template/istio/kustomization.yaml")),
];

/// This checkout's root: the SDK and the harness the new crate depends on by path.
pub fn checkout() -> PathBuf {
    gatewasm_paths::workspace_root()
}

/// Checks a package name: a lower-case letter, then lower-case letters, digits, `-` and `_`
/// (a cargo package, an image name and, with `_`, a Rust identifier).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    if !first_ok || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        bail!("--name {name:?}: start with a lower-case letter, then lower-case letters, digits, '-' or '_'");
    }
    Ok(())
}

/// `tenant-guard` → `TenantGuard`, the configuration type's name.
pub fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The text of a template with the crate's names and this checkout's path put in.
pub fn render(template: &str, name: &str, checkout: &Path) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{lib}}", &name.replace('-', "_"))
        .replace("{{Type}}", &type_name(name))
        .replace("{{checkout}}", &checkout.display().to_string())
}

/// Writes a new filter crate named `name` into `dir` (created; it must not exist or be
/// empty), with this checkout's `Cargo.lock` so it builds the versions the SDK and the harness
/// are tested with (and a shared target directory reuses their builds). Returns the files written.
pub fn create(dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && dir.read_dir().with_context(|| format!("reading {}", dir.display()))?.next().is_some()
    {
        bail!(
            "{} exists and is not empty: `gatewasm new` writes a crate into a new directory",
            dir.display()
        );
    }
    let checkout = checkout();
    let mut written = Vec::new();
    for (file, template) in FILES {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, render(template, name, &checkout))
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    let lock = dir.join("Cargo.lock");
    std::fs::copy(checkout.join("Cargo.lock"), &lock).with_context(|| {
        format!("copying {} to {}", checkout.join("Cargo.lock").display(), lock.display())
    })?;
    written.push(lock);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("tenant-guard").is_ok());
        assert!(check_name("a_1").is_ok());
        for bad in ["", "1a", "Tenant", "a b", "-a"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("tenant-guard"), "TenantGuard");
        assert_eq!(type_name("a_b-c"), "ABC");
    }

    #[test]
    fn templates_are_rendered_with_every_placeholder_filled() {
        for (file, template) in FILES {
            let text = render(template, "tenant-guard", Path::new("/checkout"));
            assert!(!text.contains("{{"), "{file} keeps a placeholder");
        }
        let manifest = render(FILES[0].1, "tenant-guard", Path::new("/checkout"));
        assert!(manifest.contains("name = \"tenant-guard\""), "{manifest}");
        assert!(manifest.contains("path = \"/checkout/sdk\""), "{manifest}");
    }

    #[test]
    fn refuses_a_directory_with_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        let err = create(dir.path(), "x").unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }
}
