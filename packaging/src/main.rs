//! `gatewasm-pack`: package the shipped filters as OCI images and push them. Run `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use gatewasm_pack::compile::{self, WasmOpt, DEFAULT_OPT_LEVEL};
use gatewasm_pack::image::Format;
use gatewasm_pack::manifests;
use gatewasm_pack::ship::{self, Push, Render, Shipping};
use gatewasm_pack::{shipped, Filter, BUNDLE, SHIPPED};

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
        .as_deref()
        .with_context(|| format!("{command}: --registry HOST[:PORT][/PATH] is required"))?;
    ship::check_registry(registry)
}

fn manifests(o: &Options) -> anyhow::Result<()> {
    let registry = registry_arg(o, "manifests")?;
    let filters = selected(o)?;
    let out = out_dir(o);
    let root = compile::workspace_root();
    let source = root.join(manifests::MANIFESTS_DIR);
    let default_tag = tag(o)?;
    let render = Render {
        out: &out,
        registry: &registry,
        tag: o.tag.as_deref(),
        default_tag: &default_tag,
        command: "gatewasm-pack manifests",
        root: &root,
    };
    let dest = render.dest();
    let mut rendered = Vec::new();
    for f in &filters {
        let r = render
            .filter(f.name, &source.join(f.name), env!("CARGO_PKG_VERSION"), f.native)
            .context("run `gatewasm-pack package` first")?;
        if f.name == BUNDLE {
            println!(
                "                   vm_id: {BUNDLE}-{}  (the same in the five)",
                manifests::vm_id_suffix(&r.module_sha256)
            );
        }
        rendered.push(f.name);
    }
    // Envoy Gateway's EnvoyProxy loads every native module, so its folder is rendered when every
    // filter is (a selection would leave placeholders in it).
    if o.filters.is_empty() {
        let mut natives = Vec::new();
        for f in filters.iter().filter(|f| f.native) {
            natives.push((f.name, ship::packaged_native_sha256(&out, f.name)?));
        }
        let r = manifests::Rendering {
            registry: &registry,
            tag: &default_tag,
            manifest_digest: "",
            module_sha256: "",
            native_sha256: &natives,
        };
        let what = format!("the native modules in {}", out.display());
        let folder = source.join(manifests::ENVOY_GATEWAY_DIR);
        for file in manifests::ENVOY_GATEWAY_FILES {
            render.file(&folder, manifests::ENVOY_GATEWAY_DIR, file, env!("CARGO_PKG_VERSION"), &r, &what)?;
        }
        println!("{}: {}", manifests::ENVOY_GATEWAY_DIR, dest.join(manifests::ENVOY_GATEWAY_DIR).display());
        println!("  EnvoyProxy       the native modules' sha256s in its init containers");
    }
    render.module_server(&source)?;
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

fn push(o: &Options) -> anyhow::Result<()> {
    let registry = registry_arg(o, "push")?;
    let names: Vec<String> = if o.filters.is_empty() {
        SHIPPED.iter().map(|f| f.name.to_owned()).collect()
    } else {
        o.filters.clone()
    };
    let default_tag = tag(o)?;
    let push = Push {
        registry: &registry,
        tag: o.tag.as_deref(),
        default_tag: &default_tag,
        plain_http: o.plain_http,
        credentials: ship::credentials(o.username.clone(), o.password_stdin)?,
    };
    let out = out_dir(o);
    for name in &names {
        push.layout(&out, name).with_context(|| format!("--filter {name:?}"))?;
    }
    println!("Istio manifests with these images: gatewasm-pack manifests --registry {registry}");
    Ok(())
}
