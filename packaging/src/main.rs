//! `gatewasm-pack`: package the shipped filters as OCI images and push them. Run `--help`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use gatewasm_pack::compile::{self, WasmOpt, DEFAULT_OPT_LEVEL};
use gatewasm_pack::image::{Format, Image, MODULE_SHA256_ANNOTATION};
use gatewasm_pack::manifests;
use gatewasm_pack::registry::{self, Credentials, Target, PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV};
use gatewasm_pack::ship::Shipping;
use gatewasm_pack::{sha256_hex, shipped, Filter, BUNDLE, SHIPPED};

const USAGE: &str = "\
gatewasm-pack: package proxy-wasm filters as reproducible OCI images and push them.

USAGE:
  gatewasm-pack [package] [--filter NAME]... [--format image|artifact] [--wasm-opt auto|require|skip]
                [--opt-level -Oz|-O3|...] [--out DIR] [--tag TAG] [--no-build]
      Build the shipped filters and the bundle gatewasm-bundle (cargo, wasm32-wasip1: the filters
      --release, the bundle --profile bundle in an invocation of its own), optionally run wasm-opt, and write each as an OCI
      image layout DIR/<filter>/ plus the packaged module DIR/<filter>.wasm; and each filter's native
      Envoy dynamic module (<target>/release/lib<name>.so, built by ./scripts/package) as
      DIR/lib<name>.so with DIR/lib<name>.so.sha256 (what `sha256sum -c` reads).
  gatewasm-pack file MODULE.wasm --name NAME [--format ..] [--wasm-opt ..] [--opt-level ..] [--out DIR] [--tag TAG]
      Package one module file the same way (as DIR/NAME/).
  gatewasm-pack push --registry HOST[:PORT][/PATH] [--filter NAME]... [--out DIR] [--tag TAG]
                [--plain-http] [--username USER] [--password-stdin]
      Push the layouts DIR/<filter>/ as HOST[:PORT]/PATH/<filter>:TAG.
  gatewasm-pack manifests --registry HOST[:PORT][/PATH] [--filter NAME]... [--out DIR]
      Write the Istio manifests of istio-envoyfilters/ to DIR/istio/ with the registry, the tag and
      the digests of the layouts DIR/<filter>/ (WasmPlugin and TrafficExtension sha256: the manifest
      digest; EnvoyFilter sha256: the module's sha256) and the native modules' sha256s (the init
      containers of native-loader.yaml and, without --filter, of envoy-gateway/envoyproxy.yaml).
  gatewasm-pack list
      Print the shipped filters and the bundle (image name, module file).

DEFAULTS: every shipped filter, --format image, --wasm-opt skip (modules ship as cargo built them:
wasm-opt's larger functions cost Envoy more memory), --opt-level -Oz when wasm-opt runs, --out <target>/oci, --tag <the workspace version>.
CREDENTIALS: --username or $GATEWASM_REGISTRY_USERNAME, with the password from --password-stdin or
$GATEWASM_REGISTRY_PASSWORD; or a bearer token in $GATEWASM_REGISTRY_TOKEN. Never printed.
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatewasm-pack: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Options {
    filters: Vec<String>,
    format: Format,
    wasm_opt: WasmOpt,
    opt_level: Option<String>,
    out: Option<PathBuf>,
    tag: Option<String>,
    no_build: bool,
    name: Option<String>,
    module: Option<PathBuf>,
    registry: Option<String>,
    plain_http: bool,
    username: Option<String>,
    password_stdin: bool,
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut args = args.into_iter().peekable();
    let command = match args.peek().map(String::as_str) {
        Some("package" | "file" | "push" | "manifests" | "list" | "help") => args.next().unwrap_or_default(),
        _ => "package".to_owned(),
    };
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            "--filter" => o.filters.push(value("--filter")?),
            "--format" => o.format = value("--format")?.parse()?,
            "--wasm-opt" => o.wasm_opt = value("--wasm-opt")?.parse()?,
            "--opt-level" => o.opt_level = Some(value("--opt-level")?),
            "--out" => o.out = Some(value("--out")?.into()),
            "--tag" => o.tag = Some(value("--tag")?),
            "--name" => o.name = Some(value("--name")?),
            "--registry" => o.registry = Some(value("--registry")?),
            "--username" => o.username = Some(value("--username")?),
            "--no-build" => o.no_build = true,
            "--plain-http" => o.plain_http = true,
            "--password-stdin" => o.password_stdin = true,
            flag if flag.starts_with('-') => bail!("unknown option {flag:?} (see --help)"),
            _ if command == "file" && o.module.is_none() => o.module = Some(arg.into()),
            other => bail!("unexpected argument {other:?} (see --help)"),
        }
    }
    match command.as_str() {
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        "list" => {
            for f in SHIPPED {
                println!("{}\t{}", f.name, f.module);
            }
            Ok(())
        }
        "file" => package_file(&o),
        "push" => push(&o),
        "manifests" => manifests(&o),
        _ => package(&o),
    }
}

fn out_dir(o: &Options) -> PathBuf {
    o.out.clone().unwrap_or_else(|| compile::target_dir().join("oci"))
}

fn tag(o: &Options) -> anyhow::Result<String> {
    gatewasm_pack::ship::check_tag(o.tag.clone().unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()))
}

fn shipping<'a>(o: &'a Options, out: &'a Path, tag: &'a str) -> Shipping<'a> {
    Shipping {
        out,
        tag,
        format: o.format,
        wasm_opt: o.wasm_opt,
        opt_level: o.opt_level.as_deref().unwrap_or(DEFAULT_OPT_LEVEL),
    }
}

fn selected(o: &Options) -> anyhow::Result<Vec<Filter>> {
    if o.filters.is_empty() {
        return Ok(SHIPPED.to_vec());
    }
    o.filters
        .iter()
        .map(|name| {
            shipped(name).with_context(|| {
                let names: Vec<&str> = SHIPPED.iter().map(|f| f.name).collect();
                format!("--filter {name:?} is not a shipped filter (shipped: {})", names.join(", "))
            })
        })
        .collect()
}

fn package(o: &Options) -> anyhow::Result<()> {
    let filters = selected(o)?;
    let tag = tag(o)?;
    if !o.no_build {
        compile::cargo_build(&filters)?;
    }
    for f in &filters {
        let path = compile::module_path(f);
        let module = std::fs::read(&path).with_context(|| {
            format!("reading {} (build it: {})", path.display(), gatewasm_paths::build_command(f.name))
        })?;
        package_one(o, f.name, &module, &path, &tag)?;
        if f.native {
            package_native(o, f, &tag)?;
        }
    }
    Ok(())
}

/// Copies a filter's native module, as built, to `DIR/lib<name>.so` with its sha256 next to it.
fn package_native(o: &Options, f: &Filter, tag: &str) -> anyhow::Result<()> {
    let path = compile::native_path(f)?;
    let out = out_dir(o);
    shipping(o, &out, tag).native(f.name, &path)
}

fn package_file(o: &Options) -> anyhow::Result<()> {
    let module_path = o.module.clone().context("file: give the module path (see --help)")?;
    let name = o.name.clone().context("file: --name NAME is required")?;
    gatewasm_pack::ship::check_name(&name)?;
    let module = std::fs::read(&module_path).with_context(|| format!("reading {}", module_path.display()))?;
    package_one(o, &name, &module, &module_path, &tag(o)?)
}

fn package_one(o: &Options, name: &str, module: &[u8], source: &Path, tag: &str) -> anyhow::Result<()> {
    let out = out_dir(o);
    shipping(o, &out, tag).module(name, module, source)
}

fn registry_arg(o: &Options, command: &str) -> anyhow::Result<String> {
    let registry = o
        .registry
        .clone()
        .with_context(|| format!("{command}: --registry HOST[:PORT][/PATH] is required"))?;
    let registry = registry.trim_end_matches('/').to_owned();
    let path_has_colon = registry.split_once('/').is_some_and(|(_, path)| path.contains(':'));
    if registry.is_empty() || registry.contains("://") || registry.contains('@') || path_has_colon {
        bail!("--registry {registry:?}: give HOST[:PORT][/PATH] without a scheme, tag or digest");
    }
    Ok(registry)
}

fn manifests(o: &Options) -> anyhow::Result<()> {
    let registry = registry_arg(o, "manifests")?;
    let filters = selected(o)?;
    let out = out_dir(o);
    let source = compile::workspace_root().join(manifests::MANIFESTS_DIR);
    let dest = out.join("istio");
    let mut rendered = Vec::new();
    for f in &filters {
        let (image, layout_tag) = Image::read_layout(&out.join(f.name))
            .with_context(|| format!("{}: reading its layout (run `gatewasm-pack package` first)", f.name))?;
        let tag = match (&o.tag, layout_tag) {
            (Some(_), _) | (None, None) => tag(o)?,
            (None, Some(t)) => t,
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&image.manifest.data).context("parsing the image manifest")?;
        let module_sha256 = manifest
            .pointer(&format!("/annotations/{}", MODULE_SHA256_ANNOTATION.replace('/', "~1")))
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{}: the image manifest has no {MODULE_SHA256_ANNOTATION}", f.name))?;
        let native_sha256: Vec<(&str, String)> =
            if f.native { vec![(f.name, packaged_native_sha256(&out, f)?)] } else { Vec::new() };
        let r = manifests::Rendering {
            registry: &registry,
            tag: &tag,
            manifest_digest: image.digest().trim_start_matches("sha256:"),
            module_sha256,
            native_sha256: &native_sha256,
        };
        let files =
            manifests::RENDERED_FILES.iter().chain(if f.native { manifests::NATIVE_FILES } else { &[] });
        let mut images = format!("the digests of the image in {}", out.join(f.name).display());
        if let Some(file) = f.native_file() {
            images.push_str(&format!(" and of {}", out.join(file).display()));
        }
        for file in files {
            render_file(&source, &dest, f.name, file, &r, &images)?;
        }
        println!("{}: {}", f.name, dest.join(f.name).display());
        println!("  WasmPlugin       url: oci://{registry}/{}:{tag}", f.name);
        println!("                   sha256: {}  (manifest digest)", r.manifest_digest);
        println!("  TrafficExtension wasm.url and wasm.sha256: the same");
        println!("  EnvoyFilter      sha256: {module_sha256}  (module)");
        if f.name == BUNDLE {
            println!(
                "                   vm_id: {BUNDLE}-{}  (the same in the five)",
                manifests::vm_id_suffix(module_sha256)
            );
        }
        for (_, sha) in &native_sha256 {
            println!("  native loader    sha256: {sha}  (native module, native-loader.yaml)");
        }
        rendered.push(f.name);
    }
    // Envoy Gateway's EnvoyProxy loads every native module, so its folder is rendered when every
    // filter is (a selection would leave placeholders in it).
    if o.filters.is_empty() {
        let mut natives = Vec::new();
        for f in filters.iter().filter(|f| f.native) {
            natives.push((f.name, packaged_native_sha256(&out, f)?));
        }
        let r = manifests::Rendering {
            registry: &registry,
            tag: &tag(o)?,
            manifest_digest: "",
            module_sha256: "",
            native_sha256: &natives,
        };
        let what = format!("the native modules in {}", out.display());
        for file in manifests::ENVOY_GATEWAY_FILES {
            render_file(&source, &dest, manifests::ENVOY_GATEWAY_DIR, file, &r, &what)?;
        }
        println!("{}: {}", manifests::ENVOY_GATEWAY_DIR, dest.join(manifests::ENVOY_GATEWAY_DIR).display());
        println!("  EnvoyProxy       the native modules' sha256s in its init containers");
    }
    let server = source.join("module-server");
    let server_out = dest.join("module-server");
    std::fs::create_dir_all(&server_out).with_context(|| format!("creating {}", server_out.display()))?;
    for file in ["module-server.yaml", "kustomization.yaml"] {
        std::fs::copy(server.join(file), server_out.join(file))
            .with_context(|| format!("copying {}", server.join(file).display()))?;
    }
    let mut kustomization = String::from(
        "# kubectl apply -k: every rendered filter as a WasmPlugin (written by gatewasm-pack manifests).\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    // The bundle's WasmPlugins carry the single filters' names (applying them replaces those
    // filters' own), so one kustomization cannot hold both; `kubectl apply -k <dir>/gatewasm-bundle`
    // applies it instead.
    for name in rendered.into_iter().filter(|n| *n != BUNDLE) {
        kustomization.push_str(&format!("- {name}\n"));
    }
    std::fs::write(dest.join("kustomization.yaml"), kustomization)
        .with_context(|| format!("writing {}", dest.join("kustomization.yaml").display()))?;
    println!(
        "apply: kubectl apply -k {}/<filter>   (or -f {}/<filter>/envoyfilter.yaml, or on Istio 1.30+ \
         -f {}/<filter>/trafficextension.yaml: one form per filter; the five filters from one module: \
         {BUNDLE} instead of their folders; native modules: <filter>/native-loader.yaml and \
         envoyfilter-native.yaml, or {} on Envoy Gateway)",
        dest.display(),
        dest.display(),
        dest.display(),
        manifests::ENVOY_GATEWAY_DIR
    );
    Ok(())
}

/// The sha256 of the native module `package` wrote for `f` in `out`.
fn packaged_native_sha256(out: &Path, f: &Filter) -> anyhow::Result<String> {
    let file = f.native_file().with_context(|| format!("{}: has no native module", f.name))?;
    let path = out.join(file);
    let module = std::fs::read(&path).with_context(|| {
        format!("{}: reading {} (run `gatewasm-pack package` first)", f.name, path.display())
    })?;
    Ok(sha256_hex(&module))
}

/// Renders `source/<folder>/<file>` into `dest/<folder>/<file>` with `r`, under a header that
/// says where the values come from (`values`).
fn render_file(
    source: &Path,
    dest: &Path,
    folder: &str,
    file: &str,
    r: &manifests::Rendering<'_>,
    values: &str,
) -> anyhow::Result<()> {
    let from = source.join(folder).join(file);
    let to = dest.join(folder);
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    let text =
        std::fs::read_to_string(&from).with_context(|| format!("{folder}: reading {}", from.display()))?;
    let header = format!(
        "# {}/{folder}/{file}, written by `gatewasm-pack manifests` with registry {}, tag {}\n\
         # and {values} (edit the committed file, not this one).\n",
        manifests::MANIFESTS_DIR,
        r.registry,
        r.tag,
    );
    let text = manifests::render(&text, folder, env!("CARGO_PKG_VERSION"), r, &header)
        .with_context(|| format!("rendering {}", from.display()))?;
    std::fs::write(to.join(file), text).with_context(|| format!("writing {}", to.join(file).display()))
}

fn push(o: &Options) -> anyhow::Result<()> {
    let registry = registry_arg(o, "push")?;
    let names: Vec<String> = if o.filters.is_empty() {
        SHIPPED.iter().map(|f| f.name.to_owned()).collect()
    } else {
        o.filters.clone()
    };
    let password = if o.password_stdin {
        let mut p = String::new();
        std::io::stdin().read_to_string(&mut p).context("--password-stdin: reading the password")?;
        Some(p.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        std::env::var(PASSWORD_ENV).ok()
    };
    let username = o.username.clone().or_else(|| std::env::var(USERNAME_ENV).ok());
    let credentials = Credentials::resolve(username, password, std::env::var(TOKEN_ENV).ok())?;
    let out = out_dir(o);
    for name in &names {
        let layout = out.join(name);
        let (image, layout_tag) =
            Image::read_layout(&layout).with_context(|| format!("--filter {name:?}: reading its layout"))?;
        let tag = match (&o.tag, layout_tag) {
            (Some(_), _) | (None, None) => tag(o)?,
            (None, Some(t)) => t,
        };
        let target = Target {
            reference: format!("{registry}/{name}:{tag}"),
            plain_http: o.plain_http,
            credentials: credentials.clone(),
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
        println!("  pinned           oci://{registry}/{name}@{}", pushed.manifest_digest);
    }
    println!("Istio manifests with these images: gatewasm-pack manifests --registry {registry}");
    Ok(())
}
