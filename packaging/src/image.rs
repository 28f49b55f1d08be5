//! Reproducible OCI images of one Wasm module, and OCI image layout directories.
//!
//! Istio's fetcher (`pkg/wasm/imagefetcher.go`) takes a single manifest (not an index) and accepts:
//! a Docker v2 manifest whose last layer is `application/vnd.docker.image.rootfs.diff.tar.gzip`
//! holding `plugin.wasm`; an OCI manifest whose last layer is
//! `application/vnd.oci.image.layer.v1.tar+gzip` holding `plugin.wasm` ([`Format::Image`], the
//! default here); or an OCI manifest with exactly two layers, one of them
//! `application/vnd.module.wasm.content.layer.v1+wasm` holding the raw module
//! ([`Format::Artifact`]; the other layer is the `application/vnd.module.wasm.config.v1+json`
//! config, as in Istio's own test of that variant).
//!
//! Reproducibility: the tar holds one entry, `plugin.wasm`, with uid/gid 0, mode 0644, mtime 0,
//! no user/group names; gzip has mtime 0, no file name, OS byte 255 (unknown) and level 9 (the
//! pure-Rust miniz_oxide backend, pinned by Cargo.lock); JSON is written from structs (fixed key
//! order), compact, without timestamps.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};

use crate::{check_module, oci_digest, sha256_hex};

/// OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (the layout's `index.json`).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer (the image variant's only layer).
pub const IMAGE_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Wasm artifact config (and second layer) media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
/// Wasm artifact layer: the raw module.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Name of the module inside the image layer's tar, as Istio looks it up.
pub const PLUGIN_FILE_NAME: &str = "plugin.wasm";
/// Manifest annotation carrying the module's sha256 (hex).
pub const MODULE_SHA256_ANNOTATION: &str = "io.gatewasm.module.sha256";
/// Manifest and index annotation: the image name / tag.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Index annotation naming a manifest's tag in an OCI layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Which of Istio's accepted image formats to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// OCI image: one `tar+gzip` layer holding `plugin.wasm` (Istio's "compat" variant).
    #[default]
    Image,
    /// OCI artifact: the raw module layer plus the Wasm config layer (Istio's "oci" variant).
    Artifact,
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "image" => Ok(Format::Image),
            "artifact" => Ok(Format::Artifact),
            other => bail!("--format {other:?}: expected `image` or `artifact`"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Image => "OCI image (tar+gzip layer with plugin.wasm)",
            Format::Artifact => "OCI Wasm artifact (raw module layer)",
        })
    }
}

/// One content-addressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Media type the manifest gives it.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob { media_type: media_type.to_owned(), digest: oci_digest(&data), data }
    }
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.data.len() as u64,
            annotations: None,
        }
    }
}

/// An OCI image (or artifact) ready to be written as a layout or pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The manifest blob; its digest is the image's digest.
    pub manifest: Blob,
    /// The config blob.
    pub config: Blob,
    /// The layers, in manifest order (the artifact's second layer is the config blob again).
    pub layers: Vec<Blob>,
}

impl Image {
    /// Packages `module` (checked for the Wasm magic) in `format`; `title` names the image.
    pub fn build(title: &str, module: &[u8], format: Format) -> anyhow::Result<Image> {
        check_module(module, title)?;
        let module_sha = sha256_hex(module);
        let (config, layers) = match format {
            Format::Image => {
                let tar = tar_single_file(PLUGIN_FILE_NAME, module)?;
                let diff_id = oci_digest(&tar);
                let layer = Blob::new(IMAGE_LAYER_MEDIA_TYPE, gzip(&tar)?);
                let config = ImageConfig {
                    architecture: "wasm",
                    os: "wasip1",
                    config: EmptyObject {},
                    rootfs: RootFs { kind: "layers", diff_ids: vec![diff_id] },
                };
                (Blob::new(IMAGE_CONFIG_MEDIA_TYPE, to_json(&config)?), vec![layer])
            }
            Format::Artifact => {
                let config =
                    WasmConfig { kind: "envoy_proxy", abi_versions: vec!["proxy_abi_version_0_2_1"] };
                let config = Blob::new(WASM_CONFIG_MEDIA_TYPE, to_json(&config)?);
                let layer = Blob::new(WASM_LAYER_MEDIA_TYPE, module.to_vec());
                (config.clone(), vec![layer, config])
            }
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(MODULE_SHA256_ANNOTATION.to_owned(), module_sha);
        annotations.insert(TITLE_ANNOTATION.to_owned(), title.to_owned());
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            config: config.descriptor(),
            layers: layers.iter().map(Blob::descriptor).collect(),
            annotations: Some(annotations),
        };
        Ok(Image { manifest: Blob::new(MANIFEST_MEDIA_TYPE, to_json(&manifest)?), config, layers })
    }

    /// The manifest digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Config and layer blobs without duplicates, in manifest order (what a push uploads
    /// before the manifest).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut out: Vec<&Blob> = Vec::new();
        for blob in std::iter::once(&self.config).chain(self.layers.iter()) {
            if !out.iter().any(|b| b.digest == blob.digest) {
                out.push(blob);
            }
        }
        out
    }

    /// Writes an OCI image layout at `dir` (created; an existing layout there is replaced):
    /// `oci-layout`, `index.json` naming the manifest with tag `tag`, `blobs/sha256/<hex>`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> anyhow::Result<()> {
        if dir.exists() {
            if !dir.join("oci-layout").is_file() {
                bail!("{} exists and is not an OCI layout; refusing to replace it", dir.display());
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        for blob in self.blobs().into_iter().chain(std::iter::once(&self.manifest)) {
            let hex = blob.digest.trim_start_matches("sha256:");
            write_file(&blobs.join(hex), &blob.data)?;
        }
        write_file(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(REF_NAME_ANNOTATION.to_owned(), tag.to_owned());
        let mut descriptor = self.manifest.descriptor();
        descriptor.annotations = Some(annotations);
        let index =
            Index { schema_version: 2, media_type: INDEX_MEDIA_TYPE.to_owned(), manifests: vec![descriptor] };
        write_file(&dir.join("index.json"), &to_json(&index)?)
    }

    /// Reads the single image of the OCI layout at `dir`, checking every blob's digest and size.
    /// Returns the image and its tag (the index's `org.opencontainers.image.ref.name`, if any).
    pub fn read_layout(dir: &Path) -> anyhow::Result<(Image, Option<String>)> {
        let index_path = dir.join("index.json");
        let text = std::fs::read(&index_path).with_context(|| {
            format!("reading {} (package the filter first: ./scripts/package)", index_path.display())
        })?;
        let index: Index =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", index_path.display()))?;
        let [entry] = index.manifests.as_slice() else {
            bail!(
                "{} must name exactly one manifest, it names {}",
                index_path.display(),
                index.manifests.len()
            );
        };
        let tag = entry.annotations.as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).cloned();
        let manifest_blob = read_blob(dir, entry)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_blob.data)
            .with_context(|| format!("parsing manifest {} in {}", entry.digest, dir.display()))?;
        let config = read_blob(dir, &manifest.config)?;
        let layers = manifest.layers.iter().map(|d| read_blob(dir, d)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok((Image { manifest: manifest_blob, config, layers }, tag))
    }
}

fn read_blob(dir: &Path, d: &Descriptor) -> anyhow::Result<Blob> {
    let Some(hex) = d.digest.strip_prefix("sha256:") else {
        bail!("{}: unsupported digest {:?} (only sha256)", dir.display(), d.digest);
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{}: malformed digest {:?}", dir.display(), d.digest);
    }
    let path = dir.join("blobs").join("sha256").join(hex);
    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if oci_digest(&data) != d.digest || data.len() as u64 != d.size {
        bail!("{} does not match its descriptor (digest {}, size {})", path.display(), d.digest, d.size);
    }
    Ok(Blob { media_type: d.media_type.clone(), digest: d.digest.clone(), data })
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(value).context("serialising JSON")
}

/// A ustar archive holding one regular file `name` with `data`: uid/gid 0, mode 0644, mtime 0,
/// no user/group names, then the two zero blocks that end an archive.
pub fn tar_single_file(name: &str, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    const BLOCK: usize = 512;
    if name.is_empty() || name.len() > 99 {
        bail!("tar entry name {name:?} must be 1 to 99 bytes");
    }
    // The size field holds 11 octal digits.
    if data.len() as u64 > 0o77_777_777_777 {
        bail!("module of {} bytes is too large for a ustar entry", data.len());
    }
    let mut header = [0u8; BLOCK];
    let mut put = |offset: usize, field: &[u8]| {
        for (i, b) in field.iter().enumerate() {
            if let Some(slot) = header.get_mut(offset + i) {
                *slot = *b;
            }
        }
    };
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        "); // checksum is computed over the header with this field as spaces
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    for (i, b) in format!("{sum:06o}\0 ").bytes().enumerate() {
        if let Some(slot) = header.get_mut(148 + i) {
            *slot = b;
        }
    }
    let padded = data.len().div_ceil(BLOCK) * BLOCK;
    let mut out = Vec::with_capacity(BLOCK + padded + 2 * BLOCK);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(BLOCK + padded + 2 * BLOCK, 0);
    Ok(out)
}

/// Gzip with a fixed header (mtime 0, no file name, OS 255) at level 9.
pub fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), Compression::best());
    encoder.write_all(data).context("gzip")?;
    encoder.finish().context("gzip")
}

/// `{}`.
#[derive(Serialize, Deserialize)]
struct EmptyObject {}

#[derive(Serialize)]
struct ImageConfig {
    architecture: &'static str,
    os: &'static str,
    config: EmptyObject,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct WasmConfig {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "abiVersions")]
    abi_versions: Vec<&'static str>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::io::Read as _;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0\x00\x01\x02 not really code";

    #[test]
    fn tar_entry_has_fixed_fields() {
        let tar = tar_single_file("plugin.wasm", MODULE).unwrap();
        assert_eq!(tar.len(), 512 * 4);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let h = entry.header().clone();
        assert_eq!(h.path().unwrap().to_str(), Some("plugin.wasm"));
        assert_eq!(
            (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
            (0o644, 0, 0, 0)
        );
        assert_eq!(h.username().unwrap(), Some(""));
        assert_eq!(h.groupname().unwrap(), Some(""));
        assert!(h.entry_type().is_file());
        assert_eq!(h.cksum().unwrap(), {
            let mut b = *h.as_bytes();
            b[148..156].copy_from_slice(b"        ");
            b.iter().map(|&x| u32::from(x)).sum::<u32>()
        });
        let mut body = Vec::new();
        entry.read_to_end(&mut body).unwrap();
        assert_eq!(body, MODULE);
        drop(entry);
        assert!(entries.next().is_none());
    }

    #[test]
    fn gzip_header_is_fixed() {
        let gz = gzip(b"abc").unwrap();
        // ID1 ID2 CM FLG MTIME(4) XFL OS: no flags (no name), mtime 0, level 9 (XFL 2), OS 255.
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }

    #[test]
    fn image_manifest_shape() {
        let image = Image::build("t", MODULE, Format::Image).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
        assert_eq!(m["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(m["config"]["mediaType"], IMAGE_CONFIG_MEDIA_TYPE);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], IMAGE_LAYER_MEDIA_TYPE);
        assert_eq!(m["annotations"][MODULE_SHA256_ANNOTATION], sha256_hex(MODULE));
        // Keys in a fixed order, compact.
        let text = String::from_utf8(image.manifest.data.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"#
        ));
        let c: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(
            c["rootfs"]["diff_ids"][0],
            oci_digest(&tar_single_file(PLUGIN_FILE_NAME, MODULE).unwrap())
        );
    }

    #[test]
    fn artifact_has_two_layers_one_raw_module() {
        let image = Image::build("t", MODULE, Format::Artifact).unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.layers[0].media_type, WASM_LAYER_MEDIA_TYPE);
        assert_eq!(image.layers[0].data, MODULE);
        assert_eq!(image.layers[1], image.config);
        assert_eq!(image.config.media_type, WASM_CONFIG_MEDIA_TYPE);
        assert_eq!(image.blobs().len(), 2, "the config blob is uploaded once");
    }

    #[test]
    fn same_module_same_digest_and_format_matters() {
        let a = Image::build("t", MODULE, Format::Image).unwrap();
        assert_eq!(a, Image::build("t", MODULE, Format::Image).unwrap());
        assert_ne!(a.digest(), Image::build("t", MODULE, Format::Artifact).unwrap().digest());
        let mut other = MODULE.to_vec();
        other.push(0);
        assert_ne!(a.digest(), Image::build("t", &other, Format::Image).unwrap().digest());
    }

    #[test]
    fn refuses_non_wasm() {
        let err = Image::build("bad", b"#!/bin/sh\necho", Format::Image).unwrap_err().to_string();
        assert!(err.contains("bad is not a Wasm module"), "{err}");
    }

    #[test]
    fn format_flag() {
        assert_eq!("artifact".parse::<Format>().unwrap(), Format::Artifact);
        let err = "docker".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("--format \"docker\""), "{err}");
    }
}
