//! The guest rootfs of a microVM run, built from an image's cached layers
//! and cached in the store.
//!
//! Two kinds:
//! - **initramfs** (small images): one uncompressed newc cpio file for the
//!   kernel's initrd, holding the guest init as `/.amphi/init`, the empty
//!   top-level directories (`/dev /proc /sys /tmp /run /.amphi/newroot`),
//!   `/dev/console`, and the image's merged rootfs under `/.amphi/rootfs/`.
//!   The guest learns it from `amphi.root=initramfs` on the kernel command
//!   line (the kernel runs `rdinit=/.amphi/init`).
//! - **block** (large images, or images whose files carry extended
//!   attributes, which cpio cannot hold): a read-only ext4 image of the
//!   rootfs (attach it read-only: it is shared by every run of the image)
//!   plus a small initrd with only the init part; `amphi.root=vda`.
//!
//! The choice: [`Options::force`], else block when any file has xattrs
//! (file capabilities would be lost) or the rootfs holds more than
//! [`Options::threshold`] bytes of regular files, else initramfs.
//!
//! Cache (`<store>/vm/`, every file written to `tmp/`, fsynced and renamed;
//! each artefact built under its own flock, so two concurrent runs build it
//! once):
//!
//! ```text
//! vm/rootfs/<top chain ID>.json   facts of the merged rootfs (sizes, xattrs)
//! vm/rootfs/<top chain ID>.cpio   rootfs part (newc, own trailer)
//! vm/rootfs/<top chain ID>.ext4   block image
//! vm/init/<amphi sha256>.cpio     init part (newc, own trailer)
//! vm/initrd/<chain>-<amphi>.cpio  init part + rootfs part: the initrd of an
//!                                 initramfs run (the kernel unpacks
//!                                 concatenated archives in turn)
//! vm/binsum/<stat key>            memo: sha256 of the amphi binary by
//!                                 (dev, inode, size, mtime, ctime)
//! ```
//!
//! The image part is keyed by the chain ID of the top layer, not by the
//! config digest: the chain ID names exactly the stacked layer content the
//! rootfs is made of, while the config also covers env, cmd, labels... that
//! the rootfs does not depend on. Images that share their layers (a retag
//! with another CMD, a rebuild that only changed labels) share the rootfs,
//! and `amphi gc` keeps an artefact while any image has that top layer.

mod block;
pub mod cpio;
mod guest_binary;
mod initramfs;
mod tools;
mod tree;

#[cfg(test)]
mod tests;

pub use initramfs::{INIT_PATH, ROOTFS_DIR, TOP_DIRS};
pub(crate) use tools::find as find_program;
pub use tree::Facts;

use crate::image::gc::GcReport;
use crate::image::store::{remove_path, StoreError};
use crate::image::{Access, Digest, ImageRecord, Store};
use crate::sys::io::IoAt;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tools::Tools;

/// Default [`Options::threshold`]: 64 MiB of regular-file content.
pub const DEFAULT_THRESHOLD: u64 = 64 << 20;
/// Environment variable that overrides the threshold ("64M", "1G", bytes).
pub const THRESHOLD_ENV: &str = "AMPHI_VM_INITRAMFS_MAX";

/// The two kinds of guest rootfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsKind {
    Initramfs,
    Block,
    /// The image's stored layers themselves, shared read-only by virtiofsd
    /// (nothing is built; see `vm::virtiofs`).
    Virtiofs,
}

impl RootfsKind {
    /// What the guest init reads on the kernel command line.
    pub fn cmdline(self) -> &'static str {
        match self {
            RootfsKind::Initramfs => "amphi.root=initramfs",
            RootfsKind::Block => "amphi.root=vda",
            RootfsKind::Virtiofs => "amphi.root=virtiofs",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RootfsKind::Initramfs => "initramfs",
            RootfsKind::Block => "block",
            RootfsKind::Virtiofs => "virtiofs",
        }
    }
}

impl std::fmt::Display for RootfsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RootfsKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "initramfs" => Ok(RootfsKind::Initramfs),
            "block" => Ok(RootfsKind::Block),
            "virtiofs" => Ok(RootfsKind::Virtiofs),
            _ => Err(format!(
                "unknown guest rootfs kind {s:?} (expected virtiofs, initramfs or block)"
            )),
        }
    }
}

/// How to prepare a guest rootfs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest rootfs (bytes of regular files) that goes into an initramfs.
    pub threshold: u64,
    /// Use this kind whatever the size.
    pub force: Option<RootfsKind>,
    /// The amphi binary that becomes the guest init (usually
    /// `/proc/self/exe`). It must be statically linked.
    pub amphi_bin: PathBuf,
    /// virtio-fs can serve this run's rootfs (virtiofsd is installed and
    /// the guest kernel has `CONFIG_VIRTIO_FS`): the caller's finding.
    pub virtiofs: bool,
}

impl Options {
    /// The threshold from `$AMPHI_VM_INITRAMFS_MAX` (else
    /// [`DEFAULT_THRESHOLD`]), no forced kind, this very binary as init.
    pub fn from_env() -> Result<Options, GuestfsError> {
        let threshold = match std::env::var(THRESHOLD_ENV) {
            Ok(v) if !v.trim().is_empty() => parse_size(&v)
                .map_err(|e| GuestfsError::Usage(format!("{THRESHOLD_ENV}={v:?}: {e}")))?,
            _ => DEFAULT_THRESHOLD,
        };
        Ok(Options {
            threshold,
            force: None,
            amphi_bin: crate::container::sealed::host_binary(),
            virtiofs: false,
        })
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024;
/// "64M", "64MiB", "1g", "512k").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{t:?} is not a size (examples: 65536, 512K, 64M, 1G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{t:?} is too large"))
}

/// A guest rootfs ready to boot.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub kind: RootfsKind,
    /// The one file for the kernel's initrd (QEMU `-initrd`, the VMM's
    /// initrd).
    pub initrd: PathBuf,
    /// The ext4 image for virtio-blk (block kind only). Attach it read-only.
    pub disk: Option<PathBuf>,
    /// The image's stored layer directories, top first (virtiofs kind
    /// only): virtiofsd shares their read-only overlay.
    pub lowers: Vec<PathBuf>,
    /// Nothing had to be built.
    pub cached: bool,
    /// Bytes of regular files in the rootfs.
    pub content_bytes: u64,
    /// Time `prepare` took.
    pub build_time: Duration,
    /// Why this kind, for `amphi explain` and `-v`.
    pub reason: String,
    /// What the user should know (xattrs dropped, unstripped init...).
    pub warnings: Vec<String>,
}

/// Everything that can go wrong while preparing a guest rootfs.
#[derive(Debug, thiserror::Error)]
pub enum GuestfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image {image}: it has no layers, so there is no rootfs to boot")]
    NoLayers { image: String },
    #[error(
        "image {image}: layer {layer} is missing from the store; pull or load the image again"
    )]
    LayerMissing { image: String, layer: String },
    #[error("image {image}: cannot mount the merged view of its layers: {reason}")]
    Overlay { image: String, reason: String },
    #[error("{path}: writing {what}: {error}")]
    Write {
        path: PathBuf,
        what: String,
        error: io::Error,
    },
    #[error("{tool}: {reason}")]
    Tool { tool: String, reason: String },
    #[error("guest init {path}: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl From<crate::sys::io::PathIoError> for GuestfsError {
    fn from(e: crate::sys::io::PathIoError) -> Self {
        GuestfsError::Store(e.into())
    }
}

/// Paths of the cache under `<store>/vm/`.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    const DIRS: [&'static str; 4] = ["rootfs", "init", "initrd", "binsum"];

    fn open(root: &Path) -> Result<Cache, StoreError> {
        let dir = root.join("vm");
        for d in Self::DIRS {
            let p = dir.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(Cache { dir })
    }

    fn facts(&self, key: &Digest) -> PathBuf {
        self.dir.join("rootfs").join(format!("{}.json", key.hex()))
    }

    fn rootfs(&self, key: &Digest, kind: RootfsKind) -> PathBuf {
        let ext = match kind {
            RootfsKind::Initramfs => "cpio",
            RootfsKind::Block => "ext4",
            RootfsKind::Virtiofs => "virtiofs",
        };
        self.dir.join("rootfs").join(format!("{}.{ext}", key.hex()))
    }

    fn init(&self, bin: &Digest) -> PathBuf {
        self.dir.join("init").join(format!("{}.cpio", bin.hex()))
    }

    fn initrd(&self, key: &Digest, bin: &Digest) -> PathBuf {
        self.dir
            .join("initrd")
            .join(format!("{}-{}.cpio", key.hex(), bin.hex()))
    }

    fn read_facts(&self, key: &Digest) -> Option<Facts> {
        serde_json::from_slice(&fs::read(self.facts(key)).ok()?).ok()
    }
}

/// A path in the store's tmp/, removed on drop unless committed.
struct Temp(Option<PathBuf>);

impl Temp {
    fn new(store: &Store, what: &str) -> Temp {
        Temp(Some(store.temp_path(what)))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("not yet committed")
    }

    /// fsyncs the file and renames it to `dst` (then fsyncs `dst`'s
    /// directory).
    fn commit(mut self, dst: &Path) -> Result<(), StoreError> {
        let p = self.0.take().expect("committed once");
        let r = (|| {
            File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
            fs::rename(&p, dst).at(dst)?;
            if let Some(dir) = dst.parent() {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = remove_path(&p);
        }
        r
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_path(&p);
        }
    }
}

/// Runs `f` on the image's merged, read-only rootfs: an overlay of its
/// stored layers, mounted in a private mount namespace of a thread of its
/// own (nothing is visible elsewhere, and the kernel drops the mount when
/// the thread ends). The image scan reads the image through it.
pub fn with_image_rootfs<T: Send>(
    store: &Store,
    rec: &ImageRecord,
    f: impl FnOnce(&Path) -> T + Send,
) -> Result<T, GuestfsError> {
    let scratch = Temp::new(store, "scan-mnt");
    tree::with_merged(
        store,
        &rec.layers,
        scratch.path(),
        &image_label(rec),
        |root| Ok(f(root)),
    )
}

fn image_label(rec: &ImageRecord) -> String {
    rec.names
        .first()
        .cloned()
        .unwrap_or_else(|| rec.config.short().to_string())
}

/// A size for messages: "12.3 MiB".
fn human(n: u64) -> String {
    if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else if n < 1 << 30 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    }
}

/// Why the rootfs goes over virtio-fs, when it does: asked for; or
/// virtio-fs is available and the image is one [`decide`] would put on
/// the block path (over the initramfs threshold, or with extended
/// attributes, which virtiofsd passes on): sharing its layers builds
/// nothing, where an ext4 image takes seconds to build and its size again
/// in disk. Small images keep the initramfs, which boots from guest RAM
/// and is built in milliseconds (`scripts/bench vm` measures both).
fn virtiofs_reason(
    w: &Store,
    cache: &Cache,
    rec: &ImageRecord,
    key: &Digest,
    opts: &Options,
) -> Result<Option<String>, GuestfsError> {
    match opts.force {
        Some(RootfsKind::Virtiofs) => {
            return Ok(Some("guest rootfs kind virtiofs was asked for: the image's layers are shared read-only by virtiofsd, nothing is built".into()));
        }
        Some(_) => return Ok(None),
        None if !opts.virtiofs => return Ok(None),
        None => {}
    }
    let facts = facts(w, cache, rec, key)?;
    let (kind, why) = decide(&facts, opts);
    Ok((kind == RootfsKind::Block).then(|| {
        format!("{why}; virtio-fs is available, so the image's stored layers are shared read-only by virtiofsd instead of building a block image")
    }))
}

/// The facts of the image's merged rootfs: cached, or walked once (and
/// cached) without building anything.
fn facts(w: &Store, cache: &Cache, rec: &ImageRecord, key: &Digest) -> Result<Facts, GuestfsError> {
    if let Some(f) = cache.read_facts(key) {
        return Ok(f);
    }
    let _lock = w.object_lock(&format!("vm-rootfs-{}", key.hex()))?;
    if let Some(f) = cache.read_facts(key) {
        return Ok(f);
    }
    let scratch = Temp::new(w, "vm-mnt");
    let facts = tree::with_merged(
        w,
        &rec.layers,
        scratch.path(),
        &image_label(rec),
        |merged| Ok(tree::walk(merged)?.facts),
    )?;
    drop(scratch);
    let json = serde_json::to_vec_pretty(&facts).expect("facts serialise");
    w.write_atomic(&cache.facts(key), &json)?;
    Ok(facts)
}

/// Picks the kind for a rootfs with `facts`, and says why (never
/// virtiofs: [`virtiofs_reason`] is asked first).
fn decide(f: &Facts, opts: &Options) -> (RootfsKind, String) {
    if let Some(k) = opts.force {
        return (k, format!("guest rootfs kind {k} was asked for"));
    }
    if f.xattr_entries > 0 {
        return (
            RootfsKind::Block,
            format!(
                "{} entries of the rootfs carry extended attributes (for example {}), which an initramfs cannot hold",
                f.xattr_entries,
                f.xattr_example.as_deref().unwrap_or("?")
            ),
        );
    }
    if f.largest_file > u32::MAX as u64 {
        return (
            RootfsKind::Block,
            format!(
                "the rootfs has a file of {}, over the 4 GiB an initramfs can hold",
                human(f.largest_file)
            ),
        );
    }
    let (kind, cmp) = if f.content_bytes > opts.threshold {
        (RootfsKind::Block, "over")
    } else {
        (RootfsKind::Initramfs, "within")
    };
    (
        kind,
        format!(
            "the rootfs holds {} of files, {cmp} the initramfs threshold of {} (set {THRESHOLD_ENV} to change it)",
            human(f.content_bytes),
            human(opts.threshold)
        ),
    )
}

/// What a forced initramfs loses.
fn warnings_for(kind: RootfsKind, f: &Facts) -> Vec<String> {
    let mut w = Vec::new();
    if kind == RootfsKind::Initramfs && f.xattr_entries > 0 {
        w.push(format!(
            "{} entries lose their extended attributes in the initramfs (for example {}); the block rootfs keeps them",
            f.xattr_entries,
            f.xattr_example.as_deref().unwrap_or("?")
        ));
    }
    if let Some(first) = f.skipped.first() {
        w.push(format!(
            "{} sockets or device nodes are left out of the guest rootfs (for example {first})",
            f.skipped_count
        ));
    }
    w
}

/// The init-only initrd (the guest init, nothing of an image), built once
/// per amphi binary in the store's cache: what a microVM boots whose root
/// filesystem comes from elsewhere (an OCI bundle's rootfs over virtio-fs).
/// Returns its path and the stripping's warnings.
pub fn init_initrd(store_root: &Path) -> Result<(PathBuf, Vec<String>), GuestfsError> {
    let root = store_root.canonicalize().at(store_root)?;
    let w = Store::open(&root, Access::Write)?;
    let cache = Cache::open(&root)?;
    let opts = Options::from_env()?;
    let bin = guest_binary::digest(&opts.amphi_bin, &cache.dir.join("binsum"), || {
        w.temp_path("binsum")
    })?;
    let (_, warnings) = ensure_init(&w, &cache, &opts.amphi_bin, &bin, &Tools::find())?;
    Ok((cache.init(&bin), warnings))
}

/// Prepares (or finds in the cache) the guest rootfs of `rec`.
///
/// Takes the store's shared writer lock for its duration (via its own
/// handle), so `amphi gc` waits and temp files are safe; do not call it
/// while holding the store exclusively. Needs root (it mounts an overlay in
/// a private mount namespace of a helper thread). On error nothing is left
/// behind: no mount (the namespace dies with the thread), no temp file.
pub fn prepare(store: &Store, rec: &ImageRecord, opts: &Options) -> Result<Prepared, GuestfsError> {
    prepare_with(store, rec, opts, &Tools::find())
}

fn prepare_with(
    store: &Store,
    rec: &ImageRecord,
    opts: &Options,
    tools: &Tools,
) -> Result<Prepared, GuestfsError> {
    let start = Instant::now();
    let image = image_label(rec);
    let key = rec
        .layers
        .last()
        .ok_or_else(|| GuestfsError::NoLayers {
            image: image.clone(),
        })?
        .clone();
    // An absolute root: the overlay thread changes its working directory.
    let root = store.root().canonicalize().at(store.root())?;
    let w = Store::open(&root, Access::Write)?;
    for l in &rec.layers {
        if !w.layer_diff(l).is_dir() {
            return Err(GuestfsError::LayerMissing {
                image,
                layer: l.to_string(),
            });
        }
    }
    let cache = Cache::open(&root)?;
    let bin = guest_binary::digest(&opts.amphi_bin, &cache.dir.join("binsum"), || {
        w.temp_path("binsum")
    })?;
    if let Some(reason) = virtiofs_reason(&w, &cache, rec, &key, opts)? {
        // Nothing of the image is built: only the init part, once per binary.
        let (init_built, warnings) = ensure_init(&w, &cache, &opts.amphi_bin, &bin, tools)?;
        let p = Prepared {
            kind: RootfsKind::Virtiofs,
            initrd: cache.init(&bin),
            disk: None,
            lowers: rec.layers.iter().rev().map(|l| w.layer_diff(l)).collect(),
            cached: !init_built,
            content_bytes: 0,
            build_time: start.elapsed(),
            reason,
            warnings,
        };
        tracing::debug!("guest rootfs of {image}: virtiofs: {}", p.reason);
        return Ok(p);
    }

    let (facts, kind, reason, mut built) = ensure_rootfs(&w, &cache, rec, &key, opts, tools)?;
    let mut warnings = warnings_for(kind, &facts);
    let (init_built, init_warnings) = ensure_init(&w, &cache, &opts.amphi_bin, &bin, tools)?;
    built |= init_built;
    warnings.extend(init_warnings);
    let (initrd, disk) = match kind {
        RootfsKind::Initramfs => {
            built |= ensure_initrd(&w, &cache, &key, &bin)?;
            (cache.initrd(&key, &bin), None)
        }
        RootfsKind::Block => (cache.init(&bin), Some(cache.rootfs(&key, kind))),
        RootfsKind::Virtiofs => unreachable!("decide never picks virtiofs"),
    };
    let p = Prepared {
        kind,
        initrd,
        disk,
        lowers: Vec::new(),
        cached: !built,
        content_bytes: facts.content_bytes,
        build_time: start.elapsed(),
        reason,
        warnings,
    };
    tracing::debug!(
        "guest rootfs of {image}: {} ({}), {} in {:?}: {}",
        p.kind,
        if p.cached { "cached" } else { "built" },
        human(p.content_bytes),
        p.build_time,
        p.reason
    );
    Ok(p)
}

/// The rootfs part for the kind `opts` and the facts call for; returns the
/// facts, the kind, why, and whether it was built now.
fn ensure_rootfs(
    w: &Store,
    cache: &Cache,
    rec: &ImageRecord,
    key: &Digest,
    opts: &Options,
    tools: &Tools,
) -> Result<(Facts, RootfsKind, String, bool), GuestfsError> {
    let cached = || {
        let f = cache.read_facts(key)?;
        let (k, why) = decide(&f, opts);
        cache.rootfs(key, k).is_file().then_some((f, k, why, false))
    };
    if let Some(hit) = cached() {
        return Ok(hit);
    }
    let _lock = w.object_lock(&format!("vm-rootfs-{}", key.hex()))?;
    if let Some(hit) = cached() {
        return Ok(hit);
    }
    let out = Temp::new(w, "vm-rootfs");
    let scratch = Temp::new(w, "vm-mnt");
    let (facts, kind, why) = tree::with_merged(
        w,
        &rec.layers,
        scratch.path(),
        &image_label(rec),
        |merged| {
            let tree = tree::walk(merged)?;
            let (kind, why) = decide(&tree.facts, opts);
            match kind {
                RootfsKind::Initramfs => initramfs::write_rootfs(&tree, merged, out.path())?,
                RootfsKind::Block => block::build(tools, &tree, merged, out.path())?,
                RootfsKind::Virtiofs => unreachable!("decide never picks virtiofs"),
            }
            Ok((tree.facts, kind, why))
        },
    )?;
    drop(scratch);
    out.commit(&cache.rootfs(key, kind))?;
    let json = serde_json::to_vec_pretty(&facts).expect("facts serialise");
    w.write_atomic(&cache.facts(key), &json)?;
    Ok((facts, kind, why, true))
}

/// The init part for the binary `bin` (sha256 `digest`); returns whether
/// it was built now, and warnings.
fn ensure_init(
    w: &Store,
    cache: &Cache,
    bin: &Path,
    digest: &Digest,
    tools: &Tools,
) -> Result<(bool, Vec<String>), GuestfsError> {
    let dst = cache.init(digest);
    if dst.is_file() {
        return Ok((false, Vec::new()));
    }
    let _lock = w.object_lock(&format!("vm-init-{}", digest.hex()))?;
    if dst.is_file() {
        return Ok((false, Vec::new()));
    }
    guest_binary::check_static(bin)?;
    let stripped = Temp::new(w, "vm-init-bin");
    let warnings = guest_binary::strip(tools, bin, stripped.path())?;
    let out = Temp::new(w, "vm-init");
    initramfs::write_init(stripped.path(), out.path())?;
    out.commit(&dst)?;
    Ok((true, warnings))
}

/// The initrd of an initramfs run: init part then rootfs part. Returns
/// whether it was built now.
fn ensure_initrd(
    w: &Store,
    cache: &Cache,
    key: &Digest,
    bin: &Digest,
) -> Result<bool, GuestfsError> {
    let dst = cache.initrd(key, bin);
    if dst.is_file() {
        return Ok(false);
    }
    let _lock = w.object_lock(&format!("vm-initrd-{}-{}", key.hex(), bin.hex()))?;
    if dst.is_file() {
        return Ok(false);
    }
    let out = Temp::new(w, "vm-initrd");
    {
        let mut f = File::create(out.path()).at(out.path())?;
        for part in [cache.init(bin), cache.rootfs(key, RootfsKind::Initramfs)] {
            let mut src = File::open(&part).at(&part)?;
            io::copy(&mut src, &mut f).at(out.path())?;
        }
    }
    out.commit(&dst)?;
    Ok(true)
}

/// What [`sweep`] removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: usize,
    pub bytes: u64,
}

/// `amphi gc`: the store's gc ([`Store::gc_store`]: blobs, layers,
/// dangling images, leftovers), then [`sweep`] of the guest rootfs cache
/// with what the images left keep alive. Call it with the store held
/// exclusively.
pub fn gc(store: &Store) -> Result<GcReport, StoreError> {
    let (mut report, keep) = store.gc_store()?;
    let vm = sweep(store, &keep.tops)?;
    report.vm_removed = vm.removed;
    report.bytes_freed += vm.bytes;
    Ok(report)
}

/// `amphi gc` for `vm/`: removes the artefacts of images that are gone
/// (`tops` holds the top-layer chain IDs of the images in the index), the
/// init parts and initrds of other amphi binaries than this one (each
/// rebuild of amphi would otherwise leave ~25 MB behind), and stray files.
/// Call it with the store held exclusively.
pub fn sweep(store: &Store, tops: &HashSet<Digest>) -> Result<Swept, StoreError> {
    let dir = store.root().join("vm");
    let mut out = Swept::default();
    if !dir.is_dir() {
        return Ok(out);
    }
    // This binary's digest, from the memo (never hashing here); unknown
    // means every binary's init parts stay.
    let current: Option<Digest> = guest_binary::stat_key(&crate::container::sealed::host_binary())
        .ok()
        .and_then(|k| fs::read_to_string(dir.join("binsum").join(k)).ok())
        .and_then(|s| Digest::parse(s.trim()).ok());
    let parse = |hex: &str| Digest::parse(&format!("sha256:{hex}")).ok();
    let bin_kept = |b: &Digest| current.as_ref().is_none_or(|c| c == b);
    for sub in Cache::DIRS {
        let d = dir.join(sub);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.at(&d)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or("");
            let keep = match sub {
                "rootfs" => parse(stem).is_some_and(|k| tops.contains(&k)),
                "init" => parse(stem).is_some_and(|b| bin_kept(&b)),
                "initrd" => match stem.split_once('-') {
                    Some((k, b)) => {
                        parse(k).is_some_and(|k| tops.contains(&k))
                            && parse(b).is_some_and(|b| bin_kept(&b))
                    }
                    None => false,
                },
                // binsum: the memo of this binary only (when known).
                _ => fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| Digest::parse(s.trim()).ok())
                    .is_some_and(|b| bin_kept(&b)),
            };
            if !keep {
                // Block images are sparse: count what they take on disk.
                out.bytes += e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
                remove_path(&e.path())?;
                out.removed += 1;
            }
        }
    }
    Ok(out)
}
