//! Writing one built module as what ships: the OCI image layout, the exact module, and a native
//! module with its sha256. `gatewasm-pack` does this for the shipped filters, the `gatewasm`
//! tool for a filter crate anywhere; both print the same labelled digests.

use std::path::Path;

use anyhow::{bail, Context as _};

use crate::compile::{self, WasmOpt};
use crate::image::{Format, Image};
use crate::{check_module, check_native_module, sha256_hex, sha256sum_line};

/// Checks an image tag against the OCI distribution spec's grammar,
/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, and returns it.
pub fn check_tag(tag: String) -> anyhow::Result<String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("--tag {tag:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]*, at most 128 characters)");
    }
    Ok(tag)
}

/// Checks an image name (`--name`): lower-case letters, digits, `.`, `_` and `-`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        bail!("--name {name:?}: use lower-case letters, digits, '.', '_' and '-' (an image name)");
    }
    Ok(())
}

/// Where and how modules are written.
#[derive(Clone, Copy, Debug)]
pub struct Shipping<'a> {
    /// The output directory (`<target>/oci` by default).
    pub out: &'a Path,
    /// The layout's tag.
    pub tag: &'a str,
    /// Which of Istio's image formats.
    pub format: Format,
    /// Whether `wasm-opt` runs.
    pub wasm_opt: WasmOpt,
    /// Its level, when it runs.
    pub opt_level: &'a str,
}

impl Shipping<'_> {
    /// Writes `module` (read from `source`) as the image layout `<out>/<name>/` and the module
    /// `<out>/<name>.wasm`, and prints the module sha256 and the manifest digest, each labelled
    /// with where it goes.
    pub fn module(&self, name: &str, module: &[u8], source: &Path) -> anyhow::Result<()> {
        check_name(name)?;
        check_module(module, &source.display().to_string())?;
        let out = self.out;
        let scratch = out.join(".wasm-opt").join(name);
        let (module, optimized) = compile::optimize(module, self.wasm_opt, self.opt_level, &scratch)?;
        let _ = std::fs::remove_dir_all(out.join(".wasm-opt"));
        let image = Image::build(name, &module, self.format)?;
        let layout = out.join(name);
        image.write_layout(&layout, self.tag)?;
        let module_file = out.join(format!("{name}.wasm"));
        std::fs::write(&module_file, &module)
            .with_context(|| format!("writing {}", module_file.display()))?;
        let module_sha = sha256_hex(&module);
        let digest = image.digest();
        let digest_hex = digest.trim_start_matches("sha256:");
        println!(
            "{name}: {}; module {}",
            self.format,
            optimized.map_or_else(
                || "as cargo built it (no wasm-opt)".to_owned(),
                |v| format!("optimised by {v}")
            )
        );
        println!("  layout           {} (tag {})", layout.display(), self.tag);
        println!("  module           {} ({} bytes)", module_file.display(), module.len());
        println!("  module sha256    {module_sha}");
        println!(
            "                   -> Envoy `remote` code source sha256; WasmPlugin spec.sha256 for http(s):// URLs"
        );
        println!("  manifest digest  {digest}");
        println!("                   -> WasmPlugin spec.sha256 for oci:// URLs: {digest_hex}");
        println!("                      (or pin the URL: oci://<registry>/{name}@{digest})");
        Ok(())
    }

    /// Copies the native module of `name` at `path`, byte for byte, to `<out>/lib<name>.so` and
    /// writes its sha256 next to it, as the line `sha256sum -c` reads.
    pub fn native(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        let file = format!("lib{}.so", gatewasm_paths::native_module_name(name));
        let module = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        check_native_module(&module, &path.display().to_string())?;
        let out = self.out;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let dest = out.join(&file);
        std::fs::write(&dest, &module).with_context(|| format!("writing {}", dest.display()))?;
        let sum = out.join(format!("{file}.sha256"));
        std::fs::write(&sum, sha256sum_line(&module, &file))
            .with_context(|| format!("writing {}", sum.display()))?;
        println!("  native module    {} ({} bytes, from {})", dest.display(), module.len(), path.display());
        println!("  native sha256    {}  ({})", sha256_hex(&module), sum.display());
        println!(
            "                   -> the module loader's check (envoyfilter-native.yaml, Envoy Gateway's EnvoyProxy); \
             Envoy `module.remote.sha256`"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_names_follow_the_oci_grammar() {
        assert_eq!(check_tag("0.1.0".into()).unwrap(), "0.1.0");
        assert!(check_tag("-x".into()).is_err());
        assert!(check_tag("a/b".into()).is_err());
        assert!(check_name("tenant-guard").is_ok());
        let err = check_name("Tenant").unwrap_err().to_string();
        assert!(err.contains("--name \"Tenant\""), "{err}");
    }
}
