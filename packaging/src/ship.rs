//! Writing one built module as what ships: the OCI image layout, the exact module, and a native
//! module with its sha256. `gatewasm-pack` does this for the shipped filters, the `gatewasm`
//! tool for a filter crate anywhere; both print the same labelled digests.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::compile::{self, WasmOpt};
use crate::image::{Format, Image, MODULE_SHA256_ANNOTATION};
use crate::manifests::{self, Rendering};
use crate::registry::{self, Credentials, Pushed, Target, PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV};
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

/// Checks a `--registry` value, `HOST[:PORT][/PATH]` without a scheme, tag or digest, and
/// returns it without a trailing `/`.
pub fn check_registry(registry: &str) -> anyhow::Result<String> {
    let registry = registry.trim_end_matches('/').to_owned();
    let path_has_colon = registry.split_once('/').is_some_and(|(_, path)| path.contains(':'));
    if registry.is_empty() || registry.contains("://") || registry.contains('@') || path_has_colon {
        bail!("--registry {registry:?}: give HOST[:PORT][/PATH] without a scheme, tag or digest");
    }
    Ok(registry)
}

/// The native module file of package `name`: `lib<name with _>.so`, what cargo writes and
/// what [`Shipping::native`] copies.
pub fn native_file(name: &str) -> String {
    format!("lib{}.so", gatewasm_paths::native_module_name(name))
}

/// The tag a packaged layout is pushed and named with: `--tag` when given, else the tag the
/// layout was written with, else `default`.
fn layout_tag(given: Option<&str>, layout: Option<String>, default: &str) -> anyhow::Result<String> {
    match (given, layout) {
        (Some(tag), _) => check_tag(tag.to_owned()),
        (None, Some(tag)) => Ok(tag),
        (None, None) => check_tag(default.to_owned()),
    }
}

/// Registry credentials from the flags and the environment: `--username` or
/// [`USERNAME_ENV`], the password from stdin (`--password-stdin`) or [`PASSWORD_ENV`], or a
/// bearer token in [`TOKEN_ENV`]. None of them is ever printed.
pub fn credentials(username: Option<String>, password_stdin: bool) -> anyhow::Result<Credentials> {
    let password = if password_stdin {
        let mut p = String::new();
        std::io::stdin().read_to_string(&mut p).context("--password-stdin: reading the password")?;
        Some(p.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        std::env::var(PASSWORD_ENV).ok()
    };
    let username = username.or_else(|| std::env::var(USERNAME_ENV).ok());
    Credentials::resolve(username, password, std::env::var(TOKEN_ENV).ok())
}

/// Where packaged layouts are pushed.
#[derive(Clone, Debug)]
pub struct Push<'a> {
    /// `HOST[:PORT][/PATH]` ([`check_registry`]).
    pub registry: &'a str,
    /// `--tag`, overriding each layout's own.
    pub tag: Option<&'a str>,
    /// The tag of a layout written without one.
    pub default_tag: &'a str,
    /// Plain HTTP (a local registry) instead of HTTPS.
    pub plain_http: bool,
    /// The registry's credentials.
    pub credentials: Credentials,
}

impl Push<'_> {
    /// Pushes the layout `<out>/<name>/` as `<registry>/<name>:<tag>` and prints what a
    /// `WasmPlugin` takes from it.
    pub fn layout(&self, out: &Path, name: &str) -> anyhow::Result<Pushed> {
        let layout = out.join(name);
        let (image, written_tag) = Image::read_layout(&layout)
            .with_context(|| format!("{name}: reading the layout {}", layout.display()))?;
        let tag = layout_tag(self.tag, written_tag, self.default_tag)?;
        let target = Target {
            reference: format!("{}/{name}:{tag}", self.registry),
            plain_http: self.plain_http,
            credentials: self.credentials.clone(),
        };
        let pushed = registry::push_blocking(&image, &target)?;
        let hex = pushed.manifest_digest.trim_start_matches("sha256:");
        println!(
            "pushed {} ({} blobs uploaded, {} already there)",
            pushed.reference, pushed.uploaded, pushed.already_present
        );
        println!("  manifest digest  {}", pushed.manifest_digest);
        println!("  WasmPlugin       url: oci://{}", pushed.reference);
        println!("                   sha256: {hex}");
        println!("  pinned           oci://{}/{name}@{}", self.registry, pushed.manifest_digest);
        Ok(pushed)
    }
}

/// Rendering the Istio manifests of packaged filters into `<out>/istio/`.
#[derive(Clone, Debug)]
pub struct Render<'a> {
    /// Where `package` wrote the layouts and native modules; the manifests go to `<out>/istio/`.
    pub out: &'a Path,
    /// `HOST[:PORT][/PATH]` the images are pushed to ([`check_registry`]).
    pub registry: &'a str,
    /// `--tag`, overriding each layout's own.
    pub tag: Option<&'a str>,
    /// The tag of a layout written without one.
    pub default_tag: &'a str,
    /// The command named in each rendered file's header.
    pub command: &'a str,
    /// Source paths in the headers are shown relative to this folder (the workspace's, or
    /// the crate's), so a rendering does not depend on where the checkout is.
    pub root: &'a Path,
}

/// One filter's rendered manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// `<out>/istio/<name>/`.
    pub dir: PathBuf,
    /// The files written there.
    pub files: Vec<String>,
    /// The tag the URLs name.
    pub tag: String,
    /// The image's manifest digest, hex.
    pub manifest_digest: String,
    /// The Wasm module's sha256, hex.
    pub module_sha256: String,
    /// The native module's sha256, hex, when it was packaged and rendered.
    pub native_sha256: Option<String>,
}

impl Render<'_> {
    /// The folder rendered manifests go to.
    pub fn dest(&self) -> PathBuf {
        self.out.join("istio")
    }

    /// Renders the committed manifests of filter `name` in `source` (the [`manifests::RENDERED_FILES`]
    /// it holds, and the [`manifests::NATIVE_FILES`] when `native`) into `<out>/istio/<name>/`
    /// with the digests of what `package` wrote to `<out>` (the layout `<out>/<name>/`, the native
    /// module `<out>/lib<name>.so`). The committed URLs are `oci://` [`manifests::PLACEHOLDER_REGISTRY`]
    /// `/<name>:<version>`; a rendered file that still names the placeholder registry is an error,
    /// so a stale version in a committed URL cannot ship. Prints what went where.
    pub fn filter(&self, name: &str, source: &Path, version: &str, native: bool) -> anyhow::Result<Rendered> {
        let layout = self.out.join(name);
        let (image, written_tag) = Image::read_layout(&layout)
            .with_context(|| format!("{name}: reading its layout {} (package it first)", layout.display()))?;
        let tag = layout_tag(self.tag, written_tag, self.default_tag)?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&image.manifest.data).context("parsing the image manifest")?;
        let module_sha256 = manifest
            .pointer(&format!("/annotations/{}", MODULE_SHA256_ANNOTATION.replace('/', "~1")))
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{name}: the image manifest has no {MODULE_SHA256_ANNOTATION}"))?
            .to_owned();
        let native_sha256 = if native { Some(packaged_native_sha256(self.out, name)?) } else { None };
        let natives: Vec<(&str, String)> = native_sha256.iter().map(|sha| (name, sha.clone())).collect();
        let r = Rendering {
            registry: self.registry,
            tag: &tag,
            manifest_digest: image.digest().trim_start_matches("sha256:"),
            module_sha256: &module_sha256,
            native_sha256: &natives,
        };
        let mut values = format!("the digests of the image in {}", layout.display());
        if native {
            values.push_str(&format!(" and of {}", self.out.join(native_file(name)).display()));
        }
        let candidates =
            manifests::RENDERED_FILES.iter().chain(if native { manifests::NATIVE_FILES } else { &[] });
        let mut files = Vec::new();
        for file in candidates.filter(|f| source.join(f).is_file()) {
            self.file(source, name, file, version, &r, &values)?;
            files.push((*file).to_owned());
        }
        if files.is_empty() {
            bail!(
                "{name}: {} holds none of the manifests rendered ({})",
                source.display(),
                manifests::RENDERED_FILES.join(", ")
            );
        }
        let dir = self.dest().join(name);
        println!("{name}: {}", dir.display());
        println!("  WasmPlugin       url: oci://{}/{name}:{tag}", self.registry);
        println!("                   sha256: {}  (manifest digest)", r.manifest_digest);
        println!("  TrafficExtension wasm.url and wasm.sha256: the same");
        println!("  EnvoyFilter      sha256: {module_sha256}  (module)");
        for (_, sha) in &natives {
            println!("  native loader    sha256: {sha}  (native module, native-loader.yaml)");
        }
        Ok(Rendered {
            dir,
            files,
            tag: tag.clone(),
            manifest_digest: r.manifest_digest.to_owned(),
            module_sha256,
            native_sha256,
        })
    }

    /// Renders `source/<file>` into `<out>/istio/<folder>/<file>` with `r`, under a header that
    /// says where the values come from (`values`).
    pub fn file(
        &self,
        source: &Path,
        folder: &str,
        file: &str,
        version: &str,
        r: &Rendering<'_>,
        values: &str,
    ) -> anyhow::Result<()> {
        let from = source.join(file);
        let to = self.dest().join(folder);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        let text = std::fs::read_to_string(&from)
            .with_context(|| format!("{folder}: reading {}", from.display()))?;
        let header = format!(
            "# {}, written by `{}` with registry {}, tag {}\n\
             # and {values} (edit that file, not this one).\n",
            from.strip_prefix(self.root).unwrap_or(&from).display(),
            self.command,
            r.registry,
            r.tag,
        );
        let text = manifests::render(&text, folder, version, r, &header)
            .with_context(|| format!("rendering {}", from.display()))?;
        if let Some(n) = text.lines().position(|l| l.contains(manifests::PLACEHOLDER_REGISTRY)) {
            bail!(
                "rendering {}: line {} of the result still names {} (a URL must read \
                 oci://{}/{folder}:{version} to be rendered)",
                from.display(),
                n + 1,
                manifests::PLACEHOLDER_REGISTRY,
                manifests::PLACEHOLDER_REGISTRY
            );
        }
        std::fs::write(to.join(file), text).with_context(|| format!("writing {}", to.join(file).display()))
    }

    /// Copies this repository's module server (`module-server/` of `manifests_dir`), which
    /// serves modules to the `EnvoyFilter` and native forms, into `<out>/istio/module-server/`.
    pub fn module_server(&self, manifests_dir: &Path) -> anyhow::Result<()> {
        let server = manifests_dir.join("module-server");
        let server_out = self.dest().join("module-server");
        std::fs::create_dir_all(&server_out).with_context(|| format!("creating {}", server_out.display()))?;
        for file in ["module-server.yaml", "kustomization.yaml"] {
            std::fs::copy(server.join(file), server_out.join(file))
                .with_context(|| format!("copying {}", server.join(file).display()))?;
        }
        Ok(())
    }
}

/// The sha256 of the native module `package` wrote for `name` in `out`.
pub fn packaged_native_sha256(out: &Path, name: &str) -> anyhow::Result<String> {
    let path = out.join(native_file(name));
    let module = std::fs::read(&path)
        .with_context(|| format!("{name}: reading {} (package it first)", path.display()))?;
    Ok(sha256_hex(&module))
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
        let file = native_file(name);
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
