//! `gatewasm`: scaffold a filter crate anywhere, build it, test it and package it, the same way
//! for a crate outside this repository and for this repository's own filters. Run `--help`.
//!
//! Exit codes: 0 done; 1 the command failed (the message says why); 2 a usage error (clap's).

mod scaffold;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use gatewasm_pack::compile::{WasmOpt, DEFAULT_OPT_LEVEL};
use gatewasm_pack::image::Format;
use gatewasm_pack::manifests::{MANIFESTS_DIR, NATIVE_FILES};
use gatewasm_pack::ship::{check_registry, check_tag, credentials, native_file, Push, Render, Shipping};
use gatewasm_paths::{Kind, Layout, Package};

/// Scaffold, build, test and package proxy-wasm filters written on the gatewasm SDK.
///
/// Every command but `new` works on the crate of the current directory (or `--package` of its
/// workspace); paths are relative to where it runs. Outputs go to the crate's target directory
/// (`CARGO_TARGET_DIR` when set).
#[derive(Parser)]
#[command(name = "gatewasm", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a filter crate in DIR (a new or empty directory): a small filter on the SDK, its
    /// README, unit, emulator and Envoy tests, an envoy.yaml, its Istio manifests (`istio/`),
    /// and the profiles modules need.
    New {
        /// Where to create it.
        dir: PathBuf,
        /// The package name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Build the crate's module: `<target>/wasm32-wasip1/release/<name>.wasm`, or with
    /// `--native` the Envoy dynamic module `<target>/release/lib<name>.so`.
    Build {
        /// Build the native module instead.
        #[arg(long)]
        native: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Build the crate's module, then run its tests (`cargo test -p <package>`); ARGS go to
    /// cargo test (`gatewasm test -- --nocapture`).
    Test {
        #[command(flatten)]
        select: Select,
        /// Arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the crate's modules and write what ships: the OCI image layout `<out>/<name>/`
    /// (tagged with the crate's version), `<out>/<name>.wasm`, and `<out>/lib<name>.so` with its
    /// sha256; print the digests Istio manifests need.
    Package {
        /// The output directory (default `<target>/oci`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The image tag (default: the crate's version).
        #[arg(long)]
        tag: Option<String>,
        /// `image` (one tar+gzip layer) or `artifact` (Istio's OCI artifact).
        #[arg(long, default_value = "image")]
        format: String,
        /// Run `wasm-opt`: `auto`, `require` or `skip`.
        #[arg(long, default_value = "skip")]
        wasm_opt: String,
        /// Package the Wasm module only, without the native one.
        #[arg(long)]
        wasm_only: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Push the image layout `package` wrote (`<out>/<name>/`) to a registry as
    /// `<registry>/<name>:<tag>`; print the digest a WasmPlugin pins.
    Push {
        #[command(flatten)]
        image: Published,
        /// Plain HTTP, for a registry on this machine.
        #[arg(long)]
        plain_http: bool,
        /// Basic-auth user (or `$GATEWASM_REGISTRY_USERNAME`); the password from
        /// `--password-stdin` or `$GATEWASM_REGISTRY_PASSWORD`; a bearer token from
        /// `$GATEWASM_REGISTRY_TOKEN` instead. Never printed.
        #[arg(long)]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        select: Select,
    },
    /// Write the crate's Istio manifests (its `istio/` folder; for this repository's filters,
    /// `istio-envoyfilters/<name>/`) to `<out>/istio/<name>/` with the registry, the tag and the
    /// digests of what `package` wrote: WasmPlugin and TrafficExtension carry the image's
    /// manifest digest, EnvoyFilter the module's sha256, the native forms the native module's.
    Manifests {
        #[command(flatten)]
        image: Published,
        #[command(flatten)]
        select: Select,
    },
}

/// Where a packaged image is, and where it is (or goes) in a registry.
#[derive(clap::Args)]
struct Published {
    /// The registry: `HOST[:PORT][/PATH]`, without a scheme.
    #[arg(long)]
    registry: String,
    /// Where `package` wrote the image (default `<target>/oci`); manifests go to `<out>/istio/`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The tag (default: the layout's own, the crate's version).
    #[arg(long)]
    tag: Option<String>,
}

impl Published {
    /// The checked registry and the output directory of `layout`.
    fn resolve(&self, layout: &Layout) -> anyhow::Result<(String, PathBuf)> {
        let registry = check_registry(&self.registry)?;
        Ok((registry, self.out.clone().unwrap_or_else(|| layout.target_dir.join("oci"))))
    }
}

/// Which package a command works on.
#[derive(clap::Args)]
struct Select {
    /// The package (default: the crate of the current directory).
    #[arg(long, short)]
    package: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatewasm: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::New { dir, name } => new(&dir, name),
        Cmd::Build { native, select } => {
            let (layout, package) = selected(&select)?;
            let kind = if native { Kind::Native } else { Kind::Wasm };
            let path = build(&layout, &package, kind)?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
            println!("{} ({size} bytes)", path.display());
            Ok(())
        }
        Cmd::Test { select, args } => {
            let (layout, package) = selected(&select)?;
            build(&layout, &package, Kind::Wasm)?;
            let mut test_args = vec!["test".to_string(), "-p".to_string(), package.name.clone()];
            if !args.is_empty() {
                test_args.push("--".to_string());
                test_args.extend(args);
            }
            cargo(&layout, &test_args)
        }
        Cmd::Package { out, tag, format, wasm_opt, wasm_only, select } => {
            let (layout, package) = selected(&select)?;
            let format: Format = format.parse()?;
            let wasm_opt: WasmOpt = wasm_opt.parse()?;
            let tag = check_tag(tag.unwrap_or_else(|| package.version.clone()))?;
            let out = out.unwrap_or_else(|| layout.target_dir.join("oci"));
            let wasm = build(&layout, &package, Kind::Wasm)?;
            let module = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let shipping = Shipping { out: &out, tag: &tag, format, wasm_opt, opt_level: DEFAULT_OPT_LEVEL };
            shipping.module(&package.name, &module, &wasm)?;
            if !wasm_only {
                let native = build(&layout, &package, Kind::Native)?;
                shipping.native(&package.name, &native)?;
            }
            Ok(())
        }
        Cmd::Push { image, plain_http, username, password_stdin, select } => {
            let (layout, package) = selected(&select)?;
            let (registry, out) = image.resolve(&layout)?;
            let push = Push {
                registry: &registry,
                tag: image.tag.as_deref(),
                default_tag: &package.version,
                plain_http,
                credentials: credentials(username, password_stdin)?,
            };
            push.layout(&out, &package.name).context("run `gatewasm package` first")?;
            println!("Istio manifests with this image: gatewasm manifests --registry {registry}");
            Ok(())
        }
        Cmd::Manifests { image, select } => {
            let (layout, package) = selected(&select)?;
            let (registry, out) = image.resolve(&layout)?;
            manifests(&layout, &package, &out, &registry, image.tag.as_deref())
        }
    }
}

/// Renders the package's manifests: its own `istio/` folder, else this repository's
/// `istio-envoyfilters/<name>/` when the package is one of this workspace's filters. The native
/// forms are rendered when `package` wrote the native module.
fn manifests(
    layout: &Layout,
    package: &Package,
    out: &Path,
    registry: &str,
    tag: Option<&str>,
) -> anyhow::Result<()> {
    let own = package.dir().join("istio");
    let repository = layout.workspace_root.join(MANIFESTS_DIR).join(&package.name);
    let (source, root) = if own.is_dir() {
        (own, package.dir())
    } else if repository.is_dir() {
        (repository, layout.workspace_root.as_path())
    } else {
        bail!("{}: no Istio manifests in {} (`gatewasm new` writes them there)", package.name, own.display());
    };
    let native = out.join(native_file(&package.name)).is_file();
    let render =
        Render { out, registry, tag, default_tag: &package.version, command: "gatewasm manifests", root };
    let rendered = render
        .filter(&package.name, &source, &package.version, native)
        .context("run `gatewasm package` first")?;
    if !native {
        println!("  (no native forms: {} was not packaged)", out.join(native_file(&package.name)).display());
    }
    // The EnvoyFilter and native forms fetch modules from this checkout's module server.
    let fetched =
        ["envoyfilter.yaml"].iter().chain(NATIVE_FILES).any(|f| rendered.files.iter().any(|r| r == f));
    if fetched {
        render.module_server(&scaffold::checkout().join(MANIFESTS_DIR))?;
        println!("  module server    {}", render.dest().join("module-server").display());
    }
    println!("apply: kubectl apply -k {}", rendered.dir.display());
    Ok(())
}

fn new(dir: &Path, name: Option<String>) -> anyhow::Result<()> {
    let name = match name {
        Some(name) => name,
        None => dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| format!("{}: give the package a name with --name", dir.display()))?,
    };
    let files = scaffold::create(dir, &name)?;
    println!("created {name} in {} ({} files)", dir.display(), files.len());
    println!("next: cd {} && gatewasm test", dir.display());
    Ok(())
}

/// The layout of the current directory's workspace and the package to work on.
fn selected(select: &Select) -> anyhow::Result<(Layout, Package)> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let layout = Layout::discover(&cwd, &cwd)?;
    let package = match &select.package {
        Some(name) => layout.package(name).with_context(|| {
            let names: Vec<&str> = layout.packages.iter().map(|p| p.name.as_str()).collect();
            format!("--package {name:?} is not in the workspace (its packages: {})", names.join(", "))
        })?,
        None => layout.package_at(&cwd).with_context(|| {
            format!(
                "{} is not inside a package: run from a crate's directory, or give --package",
                cwd.display()
            )
        })?,
    };
    let package = package.clone();
    Ok((layout, package))
}

/// Builds `package` as `kind` (cargo's output shown as it goes) and returns the module.
fn build(layout: &Layout, package: &Package, kind: Kind) -> anyhow::Result<PathBuf> {
    cargo(layout, &gatewasm_paths::build_args(&package.name, kind))?;
    let path = layout.artifact(&package.name, kind);
    if !path.is_file() {
        bail!(
            "{} was not written by `{}`: is {} a filter crate (crate-type cdylib)?",
            path.display(),
            gatewasm_paths::command_for(&package.name, kind),
            package.name
        );
    }
    Ok(path)
}

/// Runs cargo in the workspace with the layout's target directory, as an absolute
/// `CARGO_TARGET_DIR`, so every process below (tests, builds they start) agrees on it.
fn cargo(layout: &Layout, args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(&layout.workspace_root)
        .env("CARGO_TARGET_DIR", &layout.target_dir)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
