//! `amphi load`: docker save archives, OCI archives and OCI layout
//! directories. Archives are unpacked (with the same safe unpacker as layers)
//! into a temp directory of the store and then read as directories.

use super::digest::{Digest, HashingReader};
use super::import::{register, NewBlobs};
use super::index::ImageRecord;
use super::manifest::{
    parse_top_level, Descriptor, Manifest, Platform, TopLevel, DOCKER_CONFIG, DOCKER_MANIFEST,
};
use super::progress::Progress;
use super::reference::Reference;
use super::store::{remove_path, Store};
use super::unpack::unpack_layer;
use super::ImageError;
use crate::sys::io::IoAt;
use serde::Deserialize;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Options of `amphi load`.
pub struct LoadOptions {
    /// Name for the loaded image (only when the input holds one image).
    pub tag: Option<String>,
    /// Which manifest to pick from multi-platform indexes.
    pub platform: Platform,
    pub progress: Progress,
}

fn archive_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Loads every image in `input` (a file or a directory).
pub fn load(
    store: &Store,
    input: &Path,
    opts: &LoadOptions,
) -> Result<Vec<ImageRecord>, ImageError> {
    let meta = fs::metadata(input).map_err(|e| archive_err(input, e.to_string()))?;
    if meta.is_dir() {
        return load_dir(store, input, input, false, opts);
    }
    let tmp = store.temp_path("load");
    let r = (|| {
        fs::create_dir_all(&tmp).at(&tmp)?;
        extract_archive(input, &tmp)?;
        load_dir(store, &tmp, input, true, opts)
    })();
    let _ = remove_path(&tmp);
    r
}

/// Unpacks an archive (plain, gzip or zstd tar) into `dir`, safely.
fn extract_archive(input: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut f = File::open(input).map_err(|e| archive_err(input, e.to_string()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .map_err(|e| archive_err(input, e.to_string()))?;
    let compression = sniff(&magic[..n]);
    let f = File::open(input).map_err(|e| archive_err(input, e.to_string()))?;
    let root = File::open(dir).at(dir)?;
    let label = input.display().to_string();
    unpack_layer(
        f,
        compression,
        std::os::fd::AsFd::as_fd(&root),
        &label,
        None,
    )
    .map_err(|e| archive_err(input, format!("not a valid image archive: {e}")))?;
    Ok(())
}

fn sniff(magic: &[u8]) -> super::manifest::Compression {
    use super::manifest::Compression;
    match magic {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Loads from an unpacked layout. `take` allows moving files instead of
/// copying (they are in the store's temp area).
fn load_dir(
    store: &Store,
    dir: &Path,
    input: &Path,
    take: bool,
    opts: &LoadOptions,
) -> Result<Vec<ImageRecord>, ImageError> {
    let mut new = NewBlobs::default();
    let r = if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
        load_oci(store, dir, input, take, opts, &mut new)
    } else if dir.join("manifest.json").is_file() {
        load_docker(store, dir, input, take, opts, &mut new)
    } else {
        Err(archive_err(
            input,
            "not an OCI layout, OCI archive or docker save archive (no oci-layout + index.json, no manifest.json)",
        ))
    };
    if r.is_err() {
        new.discard(store);
    }
    r
}

/// Copies (or moves) the layout blob `d` into the store, verifying it.
fn take_blob(
    store: &Store,
    dir: &Path,
    d: &Digest,
    size: Option<u64>,
    take: bool,
    new: &mut NewBlobs,
) -> Result<(), ImageError> {
    let src = dir.join("blobs/sha256").join(d.hex());
    import_file(store, &src, d, size, take, new)
}

fn import_file(
    store: &Store,
    src: &Path,
    d: &Digest,
    size: Option<u64>,
    take: bool,
    new: &mut NewBlobs,
) -> Result<(), ImageError> {
    if store.has_blob(d) {
        return Ok(());
    }
    let f = File::open(src).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            archive_err(src, format!("blob {d} is missing"))
        } else {
            archive_err(src, e.to_string())
        }
    })?;
    if take
        && fs::symlink_metadata(src)
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
    {
        let (actual, n) = HashingReader::new(io::BufReader::with_capacity(256 * 1024, f))
            .finish()
            .at(src)?;
        store.commit_blob(src, d, &actual, size, n)?;
        new.add(true, d);
        return Ok(());
    }
    let added = store.put_blob(d, size, &mut io::BufReader::new(f))?;
    new.add(added, d);
    Ok(())
}

#[derive(Deserialize)]
struct LayoutMarker {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, input: &Path) -> Result<T, ImageError> {
    let b = fs::read(path).map_err(|e| archive_err(input, format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&b).map_err(|e| {
        archive_err(
            input,
            format!(
                "{}: malformed JSON: {e}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
        )
    })
}

/// The name an OCI `ref.name` annotation gives, for an input named `input`.
fn name_from_ref(ref_name: &str, input: &Path) -> Option<String> {
    if ref_name.contains('/') || ref_name.contains('@') {
        return Reference::parse(ref_name).ok().map(|r| r.to_string());
    }
    // A bare tag (skopeo's `oci:DIR:TAG`): name it after the file, the way
    // podman names images from archives without a repository.
    let stem = input.file_stem()?.to_string_lossy().to_lowercase();
    // app.tar.gz and app.tar.zst are named app, like app.tar.
    let stem = stem.strip_suffix(".tar").unwrap_or(&stem);
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stem = stem.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    Reference::parse(&format!("localhost/{stem}:{ref_name}"))
        .ok()
        .map(|r| r.to_string())
}

fn load_oci(
    store: &Store,
    dir: &Path,
    input: &Path,
    take: bool,
    opts: &LoadOptions,
    new: &mut NewBlobs,
) -> Result<Vec<ImageRecord>, ImageError> {
    let marker: LayoutMarker = read_json(&dir.join("oci-layout"), input)?;
    if !marker.version.starts_with("1.") {
        return Err(archive_err(
            input,
            format!("unsupported imageLayoutVersion {:?}", marker.version),
        ));
    }
    let index_bytes = fs::read(dir.join("index.json")).at(&dir.join("index.json"))?;
    let index_digest = Digest::of(&index_bytes);
    let TopLevel::Index(index) = parse_top_level(&index_bytes, None, &index_digest)
        .map_err(|e| archive_err(input, format!("index.json: {e}")))?
    else {
        return Err(archive_err(input, "index.json is not an image index"));
    };
    if index.manifests.is_empty() {
        return Err(archive_err(input, "index.json lists no images"));
    }
    // Several entries are one image if they are one multi-platform image.
    let images: std::collections::HashSet<Option<String>> =
        index.manifests.iter().map(ref_name).collect();
    let tag = the_tag(opts, input, images.len())?;
    let mut out = Vec::new();
    let mut done = std::collections::HashSet::new();
    let platform_choice =
        if index.manifests.iter().all(|d| d.platform.is_some()) && index.manifests.len() > 1 {
            Some(index.select(&opts.platform, &index_digest)?.digest.clone())
        } else {
            None
        };
    for desc in &index.manifests {
        if let Some(chosen) = &platform_choice {
            if &desc.digest != chosen {
                continue;
            }
        }
        if !done.insert(desc.digest.clone()) {
            continue;
        }
        let (manifest_digest, manifest) = resolve_manifest(store, dir, desc, take, opts, new)?;
        let names = match &tag {
            Some(t) => vec![t.to_string()],
            None => ref_name(desc)
                .and_then(|n| name_from_ref(&n, input))
                .into_iter()
                .collect(),
        };
        take_blob(
            store,
            dir,
            &manifest.config.digest,
            Some(manifest.config.size as u64),
            take,
            new,
        )?;
        for l in &manifest.layers {
            take_blob(store, dir, &l.digest, Some(l.size as u64), take, new)?;
        }
        out.push(register(
            store,
            names,
            &manifest_digest,
            &manifest,
            &opts.progress,
        )?);
    }
    Ok(out)
}

fn ref_name(d: &Descriptor) -> Option<String> {
    let a = d.annotations.as_ref()?;
    a.get("io.containerd.image.name")
        .or_else(|| a.get("org.opencontainers.image.ref.name"))
        .cloned()
}

/// Follows a descriptor (through a nested index, picking the platform) to
/// an image manifest, importing the manifest blob.
fn resolve_manifest(
    store: &Store,
    dir: &Path,
    desc: &Descriptor,
    take: bool,
    opts: &LoadOptions,
    new: &mut NewBlobs,
) -> Result<(Digest, Manifest), ImageError> {
    let mut desc = desc.clone();
    for _ in 0..4 {
        let path = dir.join("blobs/sha256").join(desc.digest.hex());
        let bytes = fs::read(&path).map_err(|e| {
            archive_err(
                &path,
                format!(
                    "manifest blob {} is missing or unreadable: {e}",
                    desc.digest
                ),
            )
        })?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(super::store::StoreError::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            }
            .into());
        }
        let media = (!desc.media_type.is_empty()).then_some(desc.media_type.as_str());
        match parse_top_level(&bytes, media, &desc.digest)? {
            TopLevel::Manifest(m) => {
                let added =
                    store.put_blob(&desc.digest, Some(bytes.len() as u64), &mut &bytes[..])?;
                new.add(added, &desc.digest);
                let _ = take;
                return Ok((desc.digest.clone(), m));
            }
            TopLevel::Index(i) => {
                desc = i.select(&opts.platform, &desc.digest)?.clone();
            }
        }
    }
    Err(archive_err(dir, "image indexes nested too deeply"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A path inside the archive, refused if it would leave it.
fn inside(dir: &Path, rel: &str, input: &Path) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(archive_err(
            input,
            format!("manifest.json path {rel:?} leaves the archive"),
        ));
    }
    Ok(dir.join(p))
}

/// `--tag`, parsed; refused when `input` holds more than one image.
fn the_tag(
    opts: &LoadOptions,
    input: &Path,
    images: usize,
) -> Result<Option<Reference>, ImageError> {
    if opts.tag.is_some() && images > 1 {
        return Err(ImageError::Usage(format!(
            "{} holds {images} images; --tag names exactly one",
            input.display(),
        )));
    }
    Ok(opts.tag.as_deref().map(Reference::parse).transpose()?)
}

/// Loads a docker save archive's images (`manifest.json`, unpacked in
/// `dir`), each with its config, its layers and a manifest made for it.
fn load_docker(
    store: &Store,
    dir: &Path,
    input: &Path,
    take: bool,
    opts: &LoadOptions,
    new: &mut NewBlobs,
) -> Result<Vec<ImageRecord>, ImageError> {
    let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"), input)?;
    if entries.is_empty() {
        return Err(archive_err(input, "manifest.json lists no images"));
    }
    let tag = the_tag(opts, input, entries.len())?;
    let mut out = Vec::new();
    for e in entries {
        let config = docker_config(store, dir, input, &e.config, new)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            layers.push(docker_layer(store, dir, input, l, take, new)?);
        }
        let manifest = Manifest {
            media_type: Some(DOCKER_MANIFEST.to_string()),
            config,
            layers,
            annotations: None,
        };
        let mdigest = put_docker_manifest(store, &manifest, new)?;
        let names = match &tag {
            Some(t) => vec![t.to_string()],
            None => e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .filter_map(|t| Reference::parse(t).ok().map(|r| r.to_string()))
                .collect(),
        };
        out.push(register(store, names, &mdigest, &manifest, &opts.progress)?);
    }
    Ok(out)
}

/// Imports the image config `name` (a path in the archive, refused if it
/// leaves it) and returns its descriptor. A config named after a digest
/// must have that digest.
fn docker_config(
    store: &Store,
    dir: &Path,
    input: &Path,
    name: &str,
    new: &mut NewBlobs,
) -> Result<Descriptor, ImageError> {
    let cfg_path = inside(dir, name, input)?;
    let cfg_bytes =
        fs::read(&cfg_path).map_err(|err| archive_err(input, format!("config {name:?}: {err}")))?;
    let cfg_digest = Digest::of(&cfg_bytes);
    // The config file name, when it is a digest, must be the truth.
    let stem = Path::new(name)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_end_matches(".json")
        .to_string();
    if stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && stem != cfg_digest.hex() {
        return Err(super::store::StoreError::DigestMismatch {
            expected: Digest::parse(&format!("sha256:{stem}"))
                .map_err(|_| archive_err(input, format!("config name {stem:?}")))?,
            actual: cfg_digest,
        }
        .into());
    }
    let added = store.put_blob(&cfg_digest, None, &mut &cfg_bytes[..])?;
    new.add(added, &cfg_digest);
    Ok(Descriptor {
        media_type: DOCKER_CONFIG.to_string(),
        digest: cfg_digest,
        size: cfg_bytes.len() as i64,
        platform: None,
        annotations: None,
    })
}

/// Imports the layer `name` (a path in the archive, refused if it leaves
/// it) and returns its descriptor: its digest computed here, its media
/// type from its compression.
fn docker_layer(
    store: &Store,
    dir: &Path,
    input: &Path,
    name: &str,
    take: bool,
    new: &mut NewBlobs,
) -> Result<Descriptor, ImageError> {
    let p = inside(dir, name, input)?;
    let f = File::open(&p).map_err(|err| archive_err(input, format!("layer {name:?}: {err}")))?;
    let size = f.metadata().at(&p)?.len();
    let mut magic = [0u8; 4];
    let n = (&f).read(&mut magic).at(&p)?;
    let media_type = match sniff(&magic[..n]) {
        super::manifest::Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        super::manifest::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        super::manifest::Compression::None => "application/vnd.oci.image.layer.v1.tar",
    };
    let (digest, _) = HashingReader::new(io::BufReader::new(File::open(&p).at(&p)?))
        .finish()
        .at(&p)?;
    import_file(store, &p, &digest, Some(size), take, new)?;
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: size as i64,
        platform: None,
        annotations: None,
    })
}

/// Stores the docker manifest `manifest` (made for an archive's image, as
/// docker would have pushed it) and returns its digest.
fn put_docker_manifest(
    store: &Store,
    manifest: &Manifest,
    new: &mut NewBlobs,
) -> Result<Digest, ImageError> {
    let mut mbytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": manifest.config,
        "layers": manifest.layers,
    }))
    .expect("manifest serialises");
    mbytes.push(b'\n');
    let mdigest = Digest::of(&mbytes);
    let added = store.put_blob(&mdigest, None, &mut &mbytes[..])?;
    new.add(added, &mdigest);
    Ok(mdigest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::store::Access;

    /// A docker save directory whose manifest.json names `config` and
    /// `layers`; `files` are written in it.
    fn docker_dir(config: &str, layers: &[&str], files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!([{
            "Config": config, "RepoTags": ["example.com/t:1"], "Layers": layers,
        }]);
        fs::write(d.path().join("manifest.json"), manifest.to_string()).unwrap();
        for (name, data) in files {
            fs::write(d.path().join(name), data).unwrap();
        }
        d
    }

    fn load_err(dir: &Path) -> String {
        let store_dir = tempfile::tempdir().unwrap();
        let store = Store::open(&store_dir.path().join("s"), Access::Write).unwrap();
        let opts = LoadOptions {
            tag: None,
            platform: Platform::host(),
            progress: Progress::new(true),
        };
        match load(&store, dir, &opts) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn docker_paths_that_leave_the_archive_are_refused() {
        let d = docker_dir("../config.json", &[], &[]);
        let e = load_err(d.path());
        assert!(e.contains("\"../config.json\" leaves the archive"), "{e}");
        let d = docker_dir("c.json", &["/etc/passwd"], &[("c.json", b"{}")]);
        let e = load_err(d.path());
        assert!(e.contains("\"/etc/passwd\" leaves the archive"), "{e}");
        let d = docker_dir("c.json", &["l/../../x.tar"], &[("c.json", b"{}")]);
        let e = load_err(d.path());
        assert!(e.contains("leaves the archive"), "{e}");
    }

    #[test]
    fn docker_config_named_after_another_digest_is_refused() {
        let name = format!("{}.json", "ab".repeat(32));
        let d = docker_dir(&name, &[], &[(&name, b"{}")]);
        let e = load_err(d.path());
        assert!(e.contains("digest mismatch"), "{e}");
        assert!(e.contains(&"ab".repeat(32)), "{e}");
    }
}
