//! Hand-made tar layers and OCI image layouts, including deliberately broken ones.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// One entry of a [`raw_tar`] archive; paths and link targets go into the header verbatim.
#[derive(Debug, Clone)]
pub enum TarEntry<'a> {
    /// A regular file with the given contents and permission bits.
    File {
        path: &'a str,
        data: &'a [u8],
        mode: u32,
    },
    /// A directory, mode 0755.
    Dir { path: &'a str },
    /// A symbolic link to `target`.
    Symlink { path: &'a str, target: &'a str },
    /// A hard link to the earlier entry named `target`.
    Hardlink { path: &'a str, target: &'a str },
    /// A character device 1:3 (what /dev/null is), mode 0666.
    CharDev { path: &'a str },
    /// A block device 7:0 (what /dev/loop0 is), mode 0660.
    BlockDev { path: &'a str },
    /// A FIFO, mode 0644.
    Fifo { path: &'a str },
    /// `entry` with the given owner and mtime, and extended attributes
    /// written as a PAX header of `SCHILY.xattr.NAME` records before it.
    With {
        entry: &'a TarEntry<'a>,
        uid: u64,
        gid: u64,
        mtime: u64,
        xattrs: &'a [(&'a str, &'a [u8])],
    },
}

/// Builds an uncompressed tar archive without any of the `tar` crate's path sanitising.
pub fn raw_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        push_entry(&mut out, entry, 0, 0, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Appends one entry (with its long-name and PAX headers, if any).
fn push_entry(out: &mut Vec<u8>, entry: &TarEntry, uid: u64, gid: u64, mtime: u64) {
    use tar::EntryType as T;
    let (path, kind, mode, data, link) = match *entry {
        TarEntry::File { path, data, mode } => (path, T::Regular, mode, data, None),
        TarEntry::Dir { path } => (path, T::Directory, 0o755, &[][..], None),
        TarEntry::Symlink { path, target } => (path, T::Symlink, 0o777, &[][..], Some(target)),
        TarEntry::Hardlink { path, target } => (path, T::Link, 0o644, &[][..], Some(target)),
        TarEntry::CharDev { path } => (path, T::Char, 0o666, &[][..], None),
        TarEntry::BlockDev { path } => (path, T::Block, 0o660, &[][..], None),
        TarEntry::Fifo { path } => (path, T::Fifo, 0o644, &[][..], None),
        TarEntry::With {
            entry,
            uid,
            gid,
            mtime,
            xattrs,
        } => {
            if !xattrs.is_empty() {
                push_pax(out, entry_path(entry), xattrs);
            }
            return push_entry(out, entry, uid, gid, mtime);
        }
    };
    let mut header = tar::Header::new_gnu();
    put_name(
        out,
        &mut header.as_old_mut().name,
        path.as_bytes(),
        T::GNULongName,
    );
    if let Some(target) = link {
        put_name(
            out,
            &mut header.as_old_mut().linkname,
            target.as_bytes(),
            T::GNULongLink,
        );
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(mtime);
    header.set_size(data.len() as u64);
    match kind {
        T::Char => {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        T::Block => {
            header.set_device_major(7).unwrap();
            header.set_device_minor(0).unwrap();
        }
        _ => {}
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    push_padded(out, data);
}

fn entry_path<'a>(entry: &TarEntry<'a>) -> &'a str {
    match *entry {
        TarEntry::File { path, .. }
        | TarEntry::Dir { path }
        | TarEntry::Symlink { path, .. }
        | TarEntry::Hardlink { path, .. }
        | TarEntry::CharDev { path }
        | TarEntry::BlockDev { path }
        | TarEntry::Fifo { path } => path,
        TarEntry::With { entry, .. } => entry_path(entry),
    }
}

/// Appends a PAX extended header (type `x`) with one `SCHILY.xattr.NAME` record per xattr.
fn push_pax(out: &mut Vec<u8>, path: &str, xattrs: &[(&str, &[u8])]) {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        let key = format!("SCHILY.xattr.{name}");
        // "<len> <key>=<value>\n", where <len> counts the whole record, itself included.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        records.extend_from_slice(format!("{len} {key}=").as_bytes());
        records.extend_from_slice(value);
        records.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    let name = format!("PaxHeaders/{}", path.trim_start_matches('/'));
    let n = name.len().min(100);
    header.as_old_mut().name[..n].copy_from_slice(&name.as_bytes()[..n]);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_mode(0o644);
    header.set_size(records.len() as u64);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    push_padded(out, &records);
}

/// Copies `name` into a header field, spilling into a GNU long-name entry when it does not fit.
fn put_name(out: &mut Vec<u8>, field: &mut [u8; 100], name: &[u8], long_kind: tar::EntryType) {
    let n = name.len().min(100);
    field[..n].copy_from_slice(&name[..n]);
    if name.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(long_kind);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        push_padded(out, &[name, b"\0"].concat());
    }
}

/// Appends `data` and zero padding up to the next 512-byte block.
fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar, media type `...tar`.
    None,
    /// `...tar+gzip`.
    Gzip,
    /// `...tar+zstd`.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses a tar archive.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).unwrap();
                gz.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Writes an OCI image layout from raw layers; can break digests and add a platform index.
#[derive(Debug, Clone)]
pub struct LayoutBuilder {
    tag: String,
    layers: Vec<RawLayer>,
    config: Value,
    platforms: Vec<String>,
    bad_diff_id: Option<usize>,
    bad_digest: Option<usize>,
}

/// A layer as the layout stores it.
#[derive(Debug, Clone)]
struct RawLayer {
    blob: Vec<u8>,
    media_type: String,
    diff_id: String,
}

/// What [`LayoutBuilder::write`] produced, for assertions.
#[derive(Debug, Clone)]
pub struct BuiltLayout {
    /// Digest that index.json points at (a manifest, or the image index with platforms).
    pub digest: String,
    /// Digest of each image manifest (one per platform).
    pub manifests: Vec<String>,
    /// Digest of each layer blob as the manifests name it.
    pub layers: Vec<String>,
    /// The diff_ids written into the config(s).
    pub diff_ids: Vec<String>,
}

impl Default for LayoutBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayoutBuilder {
    /// An image tagged `latest` with no layers and `Cmd ["sh"]` plus a standard PATH.
    pub fn new() -> Self {
        LayoutBuilder {
            tag: "latest".into(),
            layers: Vec::new(),
            config: json!({
                "Cmd": ["sh"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            }),
            platforms: Vec::new(),
            bad_diff_id: None,
            bad_digest: None,
        }
    }

    /// Sets the ref name recorded in index.json.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.into();
        self
    }

    /// Appends a layer given as uncompressed tar bytes.
    pub fn layer(mut self, tar: Vec<u8>, compression: Compression) -> Self {
        self.layers.push(RawLayer {
            blob: compression.compress(&tar),
            media_type: compression.media_type().into(),
            diff_id: sha256_digest(&tar),
        });
        self
    }

    /// Appends a layer given as the exact blob bytes, media type and diff_id to
    /// record (to make layers whose stream is broken but whose digest is right).
    pub fn raw_layer(mut self, blob: Vec<u8>, media_type: &str, diff_id: &str) -> Self {
        self.layers.push(RawLayer {
            blob,
            media_type: media_type.into(),
            diff_id: diff_id.into(),
        });
        self
    }

    /// Replaces the image config's `config` object (Cmd, Env, User, WorkingDir, ...).
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Publishes an image index with one manifest per platform, e.g. `["linux/amd64", "linux/arm/v7"]`.
    pub fn platforms(mut self, platforms: &[&str]) -> Self {
        self.platforms = platforms.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Writes a wrong diff_id for layer `i` into the config.
    pub fn corrupt_diff_id(mut self, i: usize) -> Self {
        self.bad_diff_id = Some(i);
        self
    }

    /// Names layer `i` in the manifest by a digest its blob does not hash to.
    pub fn corrupt_layer_digest(mut self, i: usize) -> Self {
        self.bad_digest = Some(i);
        self
    }

    /// Writes the layout into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> BuiltLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

        let (mut layers, mut diff_ids, mut descriptors) = (Vec::new(), Vec::new(), Vec::new());
        for (i, layer) in self.layers.iter().enumerate() {
            let blob = &layer.blob;
            let mut digest = write_blob(dir, blob);
            if self.bad_digest == Some(i) {
                digest = sha256_digest(&[&blob[..], b"corrupt"].concat());
            }
            let mut diff_id = layer.diff_id.clone();
            if self.bad_diff_id == Some(i) {
                diff_id = sha256_digest(format!("{diff_id}corrupt").as_bytes());
            }
            descriptors.push(json!({
                "mediaType": layer.media_type, "digest": digest, "size": blob.len(),
            }));
            layers.push(digest);
            diff_ids.push(diff_id);
        }

        let platforms = if self.platforms.is_empty() {
            vec!["linux/amd64".to_string()]
        } else {
            self.platforms.clone()
        };
        let mut manifests = Vec::new();
        let mut entries = Vec::new();
        for platform in &platforms {
            let mut parts = platform.split('/');
            let os = parts.next().unwrap();
            let arch = parts.next().expect("platform must be os/arch[/variant]");
            let mut plat = json!({"os": os, "architecture": arch});
            if let Some(variant) = parts.next() {
                plat["variant"] = json!(variant);
            }
            let mut config = plat.clone();
            config["config"] = self.config.clone();
            config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": descriptor(CONFIG, dir, &config),
                "layers": descriptors,
            });
            let mut entry = descriptor(MANIFEST, dir, &manifest);
            manifests.push(entry["digest"].as_str().unwrap().to_string());
            entry["platform"] = plat;
            entries.push(entry);
        }

        let mut top = if self.platforms.is_empty() {
            entries.pop().unwrap()
        } else {
            let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
            descriptor(INDEX, dir, &index)
        };
        top.as_object_mut().unwrap().remove("platform");
        top["annotations"] = json!({"org.opencontainers.image.ref.name": self.tag});
        let digest = top["digest"].as_str().unwrap().to_string();
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [top]});
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
        BuiltLayout {
            digest,
            manifests,
            layers,
            diff_ids,
        }
    }
}

/// Stores a blob under its digest and returns the digest.
fn write_blob(dir: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    std::fs::write(dir.join("blobs/sha256").join(&digest[7..]), data).unwrap();
    digest
}

/// Stores a JSON document as a blob and returns its descriptor.
fn descriptor(media_type: &str, dir: &Path, doc: &Value) -> Value {
    let data = serde_json::to_vec(doc).unwrap();
    json!({"mediaType": media_type, "digest": write_blob(dir, &data), "size": data.len()})
}
