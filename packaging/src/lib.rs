//! `gatewasm-pack`: builds the shipped filters and packages each one as a reproducible OCI image
//! in the formats Istio's Wasm image fetcher accepts, writes it as an OCI image layout directory,
//! and pushes it to a registry over the OCI distribution API.
//!
//! The same module bytes always give the same blobs and the same manifest digest: the tar entry,
//! the gzip header and every JSON document are written with fixed fields (see [`image`]).

pub mod compile;
pub mod image;
pub mod manifests;
pub mod registry;
pub mod ship;

use sha2::{Digest as _, Sha256};

/// A module the project ships as an image: a filter, or the bundle of filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Cargo package name, also the image name (`<registry>/<name>:<tag>`).
    pub name: &'static str,
    /// File name of the compiled module in `target/wasm32-wasip1/release/`.
    pub module: &'static str,
    /// How cargo builds it: with the others, or in an invocation of its own.
    pub build: Build,
    /// Whether it also ships as a native Envoy dynamic module (`lib<name>.so`, built for the
    /// host by `cargo build --release`): every filter but the bundle, which exists to share one
    /// Wasm VM and has no native build.
    pub native: bool,
}

impl Filter {
    /// The file name of its native module, `lib<name with _>.so` (what cargo writes, and what
    /// Envoy's `dynamic_module_config.name` looks for); `None` for a Wasm-only module.
    pub fn native_file(&self) -> Option<String> {
        self.native.then(|| ship::native_file(self.name))
    }
}

/// How a shipped module is built (see [`compile::cargo_build`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// In one `cargo build` with every other `Shared` module.
    Shared,
    /// In a `cargo build` of its own. The bundle links the filters with their `export` feature
    /// off; built together with a filter, cargo's feature unification would turn it back on and
    /// five module entry points would not link (bundle/Cargo.toml).
    Alone,
}

/// Every module that ships as an image: the production filters, the `hello` example and the
/// bundle (`gatewasm-bundle`, module `gatewasm.wasm`: five of the filters in one module). This is the one list;
/// `./scripts/package` and the tests read it through this crate (`gatewasm-pack list` prints it).
pub const SHIPPED: &[Filter] = &[
    Filter { name: "header-rewrite", module: "header_rewrite.wasm", build: Build::Shared, native: true },
    Filter { name: "jwt-auth", module: "jwt_auth.wasm", build: Build::Shared, native: true },
    Filter { name: "http-metrics", module: "http_metrics.wasm", build: Build::Shared, native: true },
    Filter { name: "ext-auth", module: "ext_auth.wasm", build: Build::Shared, native: true },
    Filter { name: "kafka-log", module: "kafka_log.wasm", build: Build::Shared, native: true },
    Filter { name: "rate-limit", module: "rate_limit.wasm", build: Build::Shared, native: true },
    Filter { name: "hello", module: "hello.wasm", build: Build::Shared, native: true },
    Filter { name: BUNDLE, module: "gatewasm.wasm", build: Build::Alone, native: false },
];

/// The bundle's package and image name: the five filters in one module, each chosen by its
/// root id (Istio: `pluginName`), so filters configured from it share one VM per worker.
pub const BUNDLE: &str = "gatewasm-bundle";

/// Finds a shipped filter by name.
pub fn shipped(name: &str) -> Option<Filter> {
    SHIPPED.iter().copied().find(|f| f.name == name)
}

/// The Wasm binary magic, `\0asm`.
pub const WASM_MAGIC: [u8; 4] = *b"\0asm";

/// Refuses bytes that are not a Wasm module: Istio (`isValidWasmBinary`) wants at least the
/// 8-byte header (magic and version), starting with `\0asm`. `what` names the input in the error.
pub fn check_module(bytes: &[u8], what: &str) -> anyhow::Result<()> {
    if bytes.len() < 8 || bytes.get(..4) != Some(&WASM_MAGIC[..]) {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        anyhow::bail!(
            "{what} is not a Wasm module: it must start with the magic \\0asm (00 61 73 6d) and hold \
             at least the 8-byte header; it has {} bytes starting with [{}]",
            bytes.len(),
            head.join(" ")
        );
    }
    Ok(())
}

/// The ELF magic a native module (a shared library) starts with, `\x7fELF`.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Refuses bytes that are not a shared library Envoy could `dlopen`: at least the 16-byte ELF
/// identification, starting with [`ELF_MAGIC`]. `what` names the input in the error.
pub fn check_native_module(bytes: &[u8], what: &str) -> anyhow::Result<()> {
    if bytes.len() < 16 || bytes.get(..4) != Some(&ELF_MAGIC[..]) {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        anyhow::bail!(
            "{what} is not a native module: it must be an ELF shared library starting with \\x7fELF \
             (7f 45 4c 46); it has {} bytes starting with [{}]",
            bytes.len(),
            head.join(" ")
        );
    }
    Ok(())
}

/// The line `sha256sum -c` checks a file against: `<hex>  <file name>` and a newline, what
/// `gatewasm-pack` writes next to each native module as `<file>.sha256`.
pub fn sha256sum_line(bytes: &[u8], file_name: &str) -> String {
    format!("{}  {file_name}\n", sha256_hex(bytes))
}

/// Lower-case hex SHA-256 of `bytes` (no `sha256:` prefix): what Envoy's `remote` code source
/// and Istio's `WasmPlugin.spec.sha256` for `http(s)://` URLs hold.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// OCI digest string of `bytes`: `sha256:<hex>`.
pub fn oci_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_wasm() {
        assert!(check_module(b"\0asm\x01\0\0\0", "m").is_ok());
        let err = check_module(b"MZ\x90\0\x03\0\0\0", "x.wasm").unwrap_err().to_string();
        assert!(err.contains("x.wasm is not a Wasm module"), "{err}");
        assert!(err.contains("[4d 5a 90 00]"), "{err}");
        assert!(check_module(b"\0asm", "short").is_err(), "header shorter than 8 bytes");
        assert!(check_module(b"", "empty").is_err());
    }

    #[test]
    fn digests() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(oci_digest(b"").len(), 7 + 64);
    }

    #[test]
    fn shipped_list() {
        assert_eq!(shipped("hello").map(|f| f.module), Some("hello.wasm"));
        assert!(shipped("noop-filter").is_none(), "test modules do not ship");
        let bundle = shipped(BUNDLE).map(|f| (f.module, f.build));
        assert_eq!(bundle, Some(("gatewasm.wasm", Build::Alone)), "the bundle ships, built on its own");
        assert!(SHIPPED.iter().filter(|f| f.build == Build::Alone).all(|f| f.name == BUNDLE));
        assert_eq!(shipped("jwt-auth").and_then(|f| f.native_file()).as_deref(), Some("libjwt_auth.so"));
        assert_eq!(shipped(BUNDLE).and_then(|f| f.native_file()), None, "the bundle is Wasm only");
    }

    #[test]
    fn refuses_non_elf_as_native() {
        assert!(check_native_module(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0", "m").is_ok());
        let err = check_native_module(b"\0asm\x01\0\0\0", "x.so").unwrap_err().to_string();
        assert!(err.contains("x.so is not a native module"), "{err}");
        assert!(err.contains("[00 61 73 6d]"), "{err}");
        assert!(check_native_module(b"\x7fELF", "short").is_err(), "shorter than the ELF identification");
    }

    #[test]
    fn sha256sum_lines() {
        assert_eq!(
            sha256sum_line(b"", "libx.so"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  libx.so\n"
        );
    }
}
