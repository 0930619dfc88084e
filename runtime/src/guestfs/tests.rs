//! Tests of the guest rootfs: the cpio writer against GNU cpio, and
//! `prepare` on images loaded into a temp store (both kinds, the cache,
//! failures that must leave nothing behind, gc).
//!
//! Most need root (overlay mounts, owners) and the host tools (cpio,
//! e2fsprogs, binutils); without root they are skipped with a loud line,
//! or fail in strict mode (`CI=true` or `AMPHI_TEST_STRICT=1`).

use super::*;
use crate::image::load::{load, LoadOptions};
use crate::image::manifest::Platform;
use crate::image::progress::Progress;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::process::Command;

fn root_or_skip(test: &str) -> bool {
    amphi_test_skip::require(
        rustix::process::geteuid().is_root(),
        &format!("guestfs::{test} needs root (overlay mounts, file owners)"),
    )
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// `cpio -idm` of `archive` into `into` (as root: owners kept).
fn extract(archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let out = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(archive)
        .current_dir(into)
        .output()
        .expect(
            "GNU cpio is needed for these tests (scripts/setup installs it; apt-get install cpio)",
        );
    assert!(
        out.status.success(),
        "cpio -idm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything that should survive, per relative path.
#[derive(Debug, PartialEq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    data: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

/// Lists a tree: path -> what it is, and inode -> its paths.
fn snapshot(root: &Path) -> (BTreeMap<String, Seen>, BTreeMap<u64, Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let name = format!("/{}", rel.display());
        let mut s = Seen {
            kind: "other",
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: None,
            data: None,
            target: None,
        };
        if ft.is_dir() {
            s.kind = "dir";
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else if ft.is_file() {
            s.kind = "file";
            s.mtime = Some(m.mtime());
            s.data = Some(fs::read(&p).unwrap());
            if m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(name.clone());
            }
        } else if ft.is_symlink() {
            s.kind = "symlink";
            s.mode = 0;
            s.target = Some(fs::read_link(&p).unwrap());
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                s.kind = "fifo";
            }
        }
        out.insert(name, s);
    }
    for v in inodes.values_mut() {
        v.sort();
    }
    (out, inodes)
}

const LONG_DIR: &str =
    "a-directory-with-a-rather-long-name-to-go-past-the-old-tar-limits-of-one-hundred-bytes";

fn long_file() -> String {
    format!("{LONG_DIR}/{}", "f".repeat(200))
}

/// A source tree with every kind of entry the writer handles.
fn sample_tree(root: &Path) {
    chmod(root, 0o751);
    fs::write(root.join("plain"), b"plain data\n").unwrap();
    set_mtime(&root.join("plain"), 1_600_000_000);
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("linked"), b"shared by two names").unwrap();
    fs::hard_link(root.join("linked"), root.join("sub/linked-too")).unwrap();
    symlink("../plain", root.join("sub/to-plain")).unwrap();
    fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
    chown(&root.join("suid"), 1000, 1000);
    chmod(&root.join("suid"), 0o4755);
    fs::write(root.join("empty"), b"").unwrap();
    chmod(&root.join("empty"), 0o600);
    fs::create_dir(root.join(LONG_DIR)).unwrap();
    fs::write(root.join(long_file()), b"long").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::create_dir(root.join("private")).unwrap();
    chown(&root.join("private"), 5, 6);
    chmod(&root.join("private"), 0o700);
    fs::write(root.join("private/secret"), b"s").unwrap();
    chown(&root.join("private/secret"), 5, 6);
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    chown(&root.join("abs-link"), 7, 8);
}

#[test]
fn cpio_round_trips_through_gnu_cpio() {
    if !root_or_skip("cpio_round_trips_through_gnu_cpio") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let tree = tree::walk(&src).unwrap();
    assert_eq!(tree.facts.content_bytes, 11 + 19 + 10 + 4 + 1);
    assert_eq!(tree.facts.xattr_entries, 0);
    let archive = t.path().join("rootfs.cpio");
    initramfs::write_rootfs(&tree, &src, &archive).unwrap();
    assert_eq!(fs::metadata(&archive).unwrap().len() % 512, 0);
    // The data of the hardlinked file is in the archive once.
    let bytes = fs::read(&archive).unwrap();
    let hits = bytes
        .windows(b"shared by two names".len())
        .filter(|w| *w == b"shared by two names")
        .count();
    assert_eq!(hits, 1);

    let out = t.path().join("out");
    extract(&archive, &out);
    let got_root = out.join(ROOTFS_DIR);
    let (want, want_links) = snapshot(&src);
    let (got, got_links) = snapshot(&got_root);
    assert_eq!(got, want);
    // The same names share an inode (the numbers themselves differ).
    let groups = |l: BTreeMap<u64, Vec<String>>| l.into_values().collect::<Vec<_>>();
    assert_eq!(
        groups(got_links),
        vec![vec!["/linked".to_string(), "/sub/linked-too".to_string()]]
    );
    assert_eq!(groups(want_links).len(), 1);
    let suid = fs::metadata(got_root.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
}

#[test]
fn init_part_has_the_binary_and_the_top_dirs() {
    if !root_or_skip("init_part_has_the_binary_and_the_top_dirs") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("bin");
    fs::write(&bin, b"\x7fELF pretend").unwrap();
    let archive = t.path().join("init.cpio");
    initramfs::write_init(&bin, &archive).unwrap();
    let out = t.path().join("out");
    extract(&archive, &out);
    assert_eq!(fs::read(out.join(INIT_PATH)).unwrap(), b"\x7fELF pretend");
    let m = fs::metadata(out.join(INIT_PATH)).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    for (d, perm) in TOP_DIRS {
        let m = fs::metadata(out.join(d)).unwrap();
        assert!(m.is_dir(), "{d}");
        assert_eq!(m.mode() & 0o7777, perm, "{d}");
    }
    let console = fs::metadata(out.join("dev/console")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(console.file_type().is_char_device());
    assert_eq!(console.rdev(), libc::makedev(5, 1));
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("64M").unwrap(), 64 << 20);
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    assert_eq!(parse_size("512k").unwrap(), 512 << 10);
    assert_eq!(parse_size(" 4096 ").unwrap(), 4096);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("-1M").is_err());
    assert!(parse_size("99999999999T").is_err());
}

#[test]
fn the_kind_follows_size_xattrs_and_force() {
    let opts = |threshold, force| Options {
        threshold,
        force,
        amphi_bin: PathBuf::new(),
        virtiofs: false,
    };
    let mut f = Facts {
        content_bytes: 100,
        ..Facts::default()
    };
    assert_eq!(decide(&f, &opts(100, None)).0, RootfsKind::Initramfs);
    assert_eq!(decide(&f, &opts(99, None)).0, RootfsKind::Block);
    let (k, why) = decide(&f, &opts(99, Some(RootfsKind::Initramfs)));
    assert_eq!(k, RootfsKind::Initramfs);
    assert!(why.contains("asked for"), "{why}");
    f.xattr_entries = 1;
    f.xattr_example = Some("/bin/ping (security.capability)".into());
    let (k, why) = decide(&f, &opts(1 << 30, None));
    assert_eq!(k, RootfsKind::Block);
    assert!(why.contains("/bin/ping"), "{why}");
    assert_eq!(warnings_for(RootfsKind::Initramfs, &f).len(), 1);
    assert!(warnings_for(RootfsKind::Block, &f).is_empty());
    assert_eq!(block::image_size(0), 64 << 20);
    assert_eq!(block::image_size(100 << 20), 189 << 20);
}

// ---- images in a temp store ----

/// One tar layer, built entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    }

    fn dir(mut self, path: &str, mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, uid, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn fifo(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Fifo, 0o640, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A PAX header carrying one xattr for the next entry.
    fn xattr(mut self, name: &str, value: &str) -> Self {
        let rec = format!("SCHILY.xattr.{name}={value}\n");
        let mut len = rec.len() + 3;
        while format!("{len} {rec}").len() != len {
            len += 1;
        }
        let rec = format!("{len} {rec}");
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeader").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(rec.len() as u64);
        h.set_cksum();
        self.0.append(&h, rec.as_bytes()).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn base_layer() -> Vec<u8> {
    use tar::EntryType as E;
    Layer::new()
        .dir("etc", 0o755, 0)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0)
        .file("hl1", b"linked data", 0o644, 0)
        .link(E::Link, "hl2", "hl1")
        .dir("d", 0o755, 0)
        .link(E::Link, "d/hl3", "hl1")
        .file("suid", b"#!/bin/sh\n", 0o4755, 0)
        .file("owned", b"x", 0o640, 1000)
        .file("empty", b"", 0o600, 0)
        .link(E::Symlink, "link", "etc/passwd")
        .fifo("pipe")
        .dir("opq", 0o755, 0)
        .file("opq/old1", b"old", 0o644, 0)
        .dir("opq/sub", 0o755, 0)
        .file("opq/sub/old2", b"old", 0o644, 0)
        .file("gone.txt", b"bye", 0o644, 0)
        .dir(LONG_DIR, 0o755, 0)
        .file(&long_file(), b"long", 0o644, 0)
        .dir("private", 0o700, 5)
        .finish()
}

fn top_layer() -> Vec<u8> {
    Layer::new()
        .file(".wh.gone.txt", b"", 0o644, 0)
        .file(".wh.hl2", b"", 0o644, 0)
        .dir("opq", 0o755, 0)
        .file("opq/.wh..wh..opq", b"", 0o644, 0)
        .file("opq/new", b"new", 0o644, 0)
        .file("etc/added", b"added", 0o644, 0)
        .finish()
}

fn xattr_layer() -> Vec<u8> {
    Layer::new()
        .xattr("user.amphi", "yes")
        .file("capped", b"cap", 0o755, 0)
        .finish()
}

/// Writes an OCI layout of `layers` (uncompressed) and loads it as `tag`.
fn load_image(store: &Store, tag: &str, layers: &[Vec<u8>]) -> ImageRecord {
    let t = tempfile::tempdir().unwrap();
    let blobs = t.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        fs::write(blobs.join(d.hex()), data).unwrap();
        json!({"digest": d.to_string(), "size": data.len()})
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let mut cfg_desc = put(&serde_json::to_vec(&config).unwrap());
    cfg_desc["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let mut d = put(l);
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg_desc,
        "layers": layer_descs,
    });
    let mut m_desc = put(&serde_json::to_vec(&manifest).unwrap());
    m_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    let index = json!({"schemaVersion": 2, "manifests": [m_desc]});
    fs::write(t.path().join("index.json"), index.to_string()).unwrap();
    fs::write(
        t.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let opts = LoadOptions {
        tag: Some(tag.to_string()),
        platform: Platform::host(),
        progress: Progress::hidden(),
    };
    let mut recs = load(store, t.path(), &opts).unwrap();
    assert_eq!(recs.len(), 1);
    recs.remove(0)
}

fn test_opts(force: Option<RootfsKind>) -> Options {
    Options {
        threshold: DEFAULT_THRESHOLD,
        force,
        // The test binary is linked like amphi (static, see .cargo/config.toml).
        amphi_bin: std::env::current_exe().unwrap(),
        virtiofs: false,
    }
}

/// With virtio-fs available, an image the block path would take is shared
/// instead, and nothing of it is built: the initrd is the init part alone,
/// and the layers are named top first. A small image keeps the initramfs;
/// a kind asked for is what the run gets.
#[test]
fn virtiofs_builds_nothing_of_the_image() {
    if !root_or_skip("virtiofs_builds_nothing_of_the_image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/layered:1",
        &[base_layer(), top_layer()],
    );
    // Over the initramfs threshold: the layers are shared.
    let opts = Options {
        virtiofs: true,
        threshold: 1,
        ..test_opts(None)
    };
    let p = prepare(&store, &rec, &opts).unwrap();
    assert_eq!(p.kind, RootfsKind::Virtiofs, "{}", p.reason);
    assert!(p.disk.is_none());
    let root = t.path().canonicalize().unwrap();
    let cache = Cache::open(&root).unwrap();
    let bin = guest_binary::hash_file(&opts.amphi_bin).unwrap();
    assert_eq!(p.initrd, cache.init(&bin));
    let w = Store::open(&root, Access::Read).unwrap();
    let want: Vec<PathBuf> = rec.layers.iter().rev().map(|l| w.layer_diff(l)).collect();
    assert_eq!(p.lowers, want, "the layers, top first");
    assert!(p.lowers.iter().all(|l| l.is_dir()));
    assert!(p.reason.contains("over"), "{}", p.reason);
    let rootfs_dir = root.join("vm/rootfs");
    let built: Vec<String> = dir_entries(&rootfs_dir)
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(built.is_empty(), "nothing built for the image: {built:?}");
    let again = prepare(&store, &rec, &opts).unwrap();
    assert!(again.cached && again.kind == RootfsKind::Virtiofs);
    let forced = prepare(
        &store,
        &rec,
        &Options {
            force: Some(RootfsKind::Initramfs),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(forced.kind, RootfsKind::Initramfs);
    assert!(forced.lowers.is_empty());
    // Within the threshold, a small image keeps the initramfs.
    let small = prepare(
        &store,
        &rec,
        &Options {
            threshold: DEFAULT_THRESHOLD,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(small.kind, RootfsKind::Initramfs, "{}", small.reason);
    // Asked for, whatever the size.
    let asked = prepare(
        &store,
        &rec,
        &Options {
            threshold: DEFAULT_THRESHOLD,
            force: Some(RootfsKind::Virtiofs),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(asked.kind, RootfsKind::Virtiofs);
    assert_clean(t.path());
}

fn dir_entries(d: &Path) -> Vec<String> {
    fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// No temp files in the store and no mount anywhere under it.
fn assert_clean(store_root: &Path) {
    let tmp: Vec<_> = fs::read_dir(store_root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let root = store_root.canonicalize().unwrap();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(root.to_str().unwrap()))
        .collect();
    assert!(leaked.is_empty(), "mounts left: {leaked:?}");
}

/// Checks the merged view, as extracted or as listed.
fn assert_merged(files: &BTreeMap<String, Seen>) {
    for gone in ["/gone.txt", "/hl2", "/opq/old1", "/opq/sub"] {
        assert!(!files.contains_key(gone), "{gone} should be gone");
    }
    let data = |p: &str| files[p].data.as_deref().unwrap().to_vec();
    assert_eq!(data("/opq/new"), b"new");
    assert_eq!(data("/etc/added"), b"added");
    assert_eq!(data("/hl1"), b"linked data");
    assert_eq!(data("/d/hl3"), b"linked data");
    assert_eq!(data(&format!("/{}", long_file())), b"long");
    assert_eq!(files["/suid"].mode, 0o4755);
    assert_eq!((files["/owned"].uid, files["/owned"].gid), (1000, 1000));
    assert_eq!(files["/owned"].mode, 0o640);
    assert_eq!(files["/empty"].data.as_deref(), Some(&b""[..]));
    assert_eq!(files["/pipe"].kind, "fifo");
    assert_eq!(
        files["/link"].target.as_deref(),
        Some(Path::new("etc/passwd"))
    );
    assert_eq!(files["/private"].mode, 0o700);
    assert_eq!((files["/private"].uid, files["/private"].gid), (5, 5));
    assert_eq!(files["/etc/passwd"].mtime, Some(1_600_000_000));
}

#[test]
fn initramfs_of_a_layered_image() {
    if !root_or_skip("initramfs_of_a_layered_image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/layered:1",
        &[base_layer(), top_layer()],
    );
    let p = prepare(&store, &rec, &test_opts(None)).unwrap();
    assert_eq!(p.kind, RootfsKind::Initramfs, "{}", p.reason);
    assert!(p.disk.is_none());
    assert!(!p.cached);
    assert!(p.reason.contains("within"), "{}", p.reason);
    assert_eq!(p.content_bytes, 26 + 11 + 10 + 1 + 4 + 3 + 5);
    assert_clean(t.path());

    // The initrd is the init part followed by the rootfs part.
    let cache = Cache::open(&t.path().canonicalize().unwrap()).unwrap();
    let key = rec.layers.last().unwrap();
    let bin = guest_binary::hash_file(&test_opts(None).amphi_bin).unwrap();
    let init_part = fs::read(cache.init(&bin)).unwrap();
    let rootfs_part = fs::read(cache.rootfs(key, RootfsKind::Initramfs)).unwrap();
    let initrd = fs::read(&p.initrd).unwrap();
    assert_eq!(initrd.len(), init_part.len() + rootfs_part.len());
    assert!(initrd.starts_with(&init_part) && initrd.ends_with(&rootfs_part));
    // The init is stripped.
    let exe = fs::metadata(&test_opts(None).amphi_bin).unwrap().len();
    assert!(
        (init_part.len() as u64) < exe,
        "init part {} bytes, binary {exe}",
        init_part.len()
    );

    let out = t.path().join("out");
    extract(&cache.init(&bin), &out);
    extract(&cache.rootfs(key, RootfsKind::Initramfs), &out);
    for (d, _) in TOP_DIRS {
        assert!(out.join(d).is_dir(), "{d}");
    }
    assert!(out.join(INIT_PATH).is_file());
    let (files, links) = snapshot(&out.join(ROOTFS_DIR));
    assert_merged(&files);
    // hl1 had three names; the top layer removed one: two are linked.
    assert_eq!(
        links.values().cloned().collect::<Vec<_>>(),
        vec![vec!["/d/hl3".to_string(), "/hl1".to_string()]]
    );

    // A second run is a cache hit, and quick.
    let again = prepare(&store, &rec, &test_opts(None)).unwrap();
    assert!(again.cached);
    assert_eq!(again.initrd, p.initrd);
    assert!(
        again.build_time < Duration::from_millis(200),
        "cached prepare took {:?}",
        again.build_time
    );
    assert_clean(t.path());
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ls -p DIR` of an ext4 image: name -> (inode, mode, uid, gid).
fn ext4_ls(image: &Path, dir: &str) -> BTreeMap<String, (u64, u32, u32, u32)> {
    debugfs(image, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().trim_matches('/').split('/').collect();
            if f.len() < 5 || f[4] == "." || f[4] == ".." {
                return None;
            }
            Some((
                f[4].to_string(),
                (
                    f[0].parse().ok()?,
                    u32::from_str_radix(f[1], 8).ok()?,
                    f[2].parse().ok()?,
                    f[3].parse().ok()?,
                ),
            ))
        })
        .collect()
}

#[test]
fn block_image_of_a_layered_image() {
    if !root_or_skip("block_image_of_a_layered_image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/layered:1",
        &[base_layer(), top_layer()],
    );
    let p = prepare(&store, &rec, &test_opts(Some(RootfsKind::Block))).unwrap();
    assert_eq!(p.kind, RootfsKind::Block);
    assert_clean(t.path());
    let img = p.disk.clone().unwrap();
    // The initrd holds only the init part.
    let out = t.path().join("out");
    extract(&p.initrd, &out);
    assert!(out.join(INIT_PATH).is_file());
    assert!(!out.join(".amphi/rootfs").exists());

    let root = ext4_ls(&img, "/");
    for gone in ["gone.txt", "hl2", "lost+found"] {
        assert!(!root.contains_key(gone), "{gone} in {root:?}");
    }
    assert_eq!(root["suid"].1, 0o104755);
    assert_eq!(root["owned"], (root["owned"].0, 0o100640, 1000, 1000));
    assert_eq!(root["private"].1 & 0o7777, 0o700);
    assert_eq!(root["pipe"].1 & 0o170000, 0o010000);
    let d = ext4_ls(&img, "/d");
    assert_eq!(d["hl3"].0, root["hl1"].0, "hardlinks share an inode");
    let opq: Vec<String> = ext4_ls(&img, "/opq").into_keys().collect();
    assert_eq!(opq, vec!["new".to_string()]);
    assert_eq!(debugfs(&img, "cat /etc/added"), "added");
    assert!(debugfs(&img, "stat /link").contains("Fast link dest: \"etc/passwd\""));
    let stat_root = debugfs(&img, "stat /");
    assert!(stat_root.contains("Mode:  0755"), "{stat_root}");

    let again = prepare(&store, &rec, &test_opts(Some(RootfsKind::Block))).unwrap();
    assert!(again.cached);
    assert_eq!(again.disk, p.disk);
    // A forced initramfs of the same image is another artefact.
    let i = prepare(&store, &rec, &test_opts(Some(RootfsKind::Initramfs))).unwrap();
    assert_eq!(i.kind, RootfsKind::Initramfs);
    assert!(!i.cached);
    assert_clean(t.path());
}

#[test]
fn xattrs_send_an_image_to_the_block_path() {
    if !root_or_skip("xattrs_send_an_image_to_the_block_path") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/xattr:1",
        &[base_layer(), top_layer(), xattr_layer()],
    );
    let p = prepare(&store, &rec, &test_opts(None)).unwrap();
    assert_eq!(p.kind, RootfsKind::Block, "{}", p.reason);
    assert!(p.reason.contains("/capped (user.amphi)"), "{}", p.reason);
    let ea = debugfs(p.disk.as_ref().unwrap(), "ea_list /capped");
    assert!(ea.contains("user.amphi") && ea.contains("yes"), "{ea}");
    let forced = prepare(&store, &rec, &test_opts(Some(RootfsKind::Initramfs))).unwrap();
    assert_eq!(forced.warnings.len(), 1, "{:?}", forced.warnings);
    assert_clean(t.path());
}

#[test]
fn a_threshold_below_the_content_picks_block() {
    if !root_or_skip("a_threshold_below_the_content_picks_block") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(&store, "localhost/gfs/small:1", &[base_layer()]);
    let mut opts = test_opts(None);
    opts.threshold = 10;
    let p = prepare(&store, &rec, &opts).unwrap();
    assert_eq!(p.kind, RootfsKind::Block, "{}", p.reason);
    assert!(p.reason.contains("over"), "{}", p.reason);
    // The same image under the default threshold: the facts are cached,
    // the initramfs is built.
    let p = prepare(&store, &rec, &test_opts(None)).unwrap();
    assert_eq!(p.kind, RootfsKind::Initramfs);
    assert_clean(t.path());
}

#[test]
fn concurrent_runs_build_once() {
    if !root_or_skip("concurrent_runs_build_once") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/layered:1",
        &[base_layer(), top_layer()],
    );
    let results: Vec<Prepared> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| prepare(&store, &rec, &test_opts(None)).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|p| p.initrd == results[0].initrd));
    assert_clean(t.path());
    let n = fs::read_dir(t.path().join("vm/initrd")).unwrap().count();
    assert_eq!(n, 1);
}

#[test]
fn failures_leave_nothing_behind() {
    if !root_or_skip("failures_leave_nothing_behind") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let rec = load_image(
        &store,
        "localhost/gfs/layered:1",
        &[base_layer(), top_layer()],
    );
    let block = test_opts(Some(RootfsKind::Block));
    let rootfs_dir = t.path().join("vm/rootfs");
    let no_artefacts = || fs::read_dir(&rootfs_dir).map(|d| d.count()).unwrap_or(0) == 0;

    // mkfs.ext4 missing.
    let mut tools = Tools::find();
    tools.mkfs_ext4 = None;
    let e = prepare_with(&store, &rec, &block, &tools).unwrap_err();
    assert!(e.to_string().contains("e2fsprogs"), "{e}");
    assert_clean(t.path());
    assert!(no_artefacts());

    // mkfs.ext4 that writes half an image and fails.
    let fake = t.path().join("fake-mkfs");
    fs::write(
        &fake,
        "#!/bin/sh\neval out=\\${$(($# - 1))}\necho junk > \"$out\"\necho 'mkfs: disk on fire' >&2\nexit 1\n",
    )
    .unwrap();
    chmod(&fake, 0o755);
    tools.mkfs_ext4 = Some(fake);
    let e = prepare_with(&store, &rec, &block, &tools).unwrap_err();
    assert!(e.to_string().contains("disk on fire"), "{e}");
    assert_clean(t.path());
    assert!(no_artefacts());

    // A corrupt layer: a file over 4 GiB (sparse) cannot go in a cpio; the
    // archive fails half-written.
    let top = store.layer_diff(rec.layers.last().unwrap());
    let huge = File::create(top.join("zz-huge")).unwrap();
    huge.set_len((4 << 30) + 1).unwrap();
    drop(huge);
    let e = prepare(&store, &rec, &test_opts(Some(RootfsKind::Initramfs))).unwrap_err();
    assert!(e.to_string().contains("4 GiB"), "{e}");
    assert_clean(t.path());
    assert!(no_artefacts());
    fs::remove_file(top.join("zz-huge")).unwrap();

    // A layer missing from the store.
    fs::rename(&top, t.path().join("moved")).unwrap();
    let e = prepare(&store, &rec, &test_opts(None)).unwrap_err();
    assert!(matches!(e, GuestfsError::LayerMissing { .. }), "{e}");
    assert_clean(t.path());
    assert!(no_artefacts());

    // A dynamically linked "amphi" is refused before anything is built.
    fs::rename(t.path().join("moved"), &top).unwrap();
    let mut dynamic = test_opts(None);
    dynamic.amphi_bin = PathBuf::from("/bin/sh");
    let e = prepare(&store, &rec, &dynamic).unwrap_err();
    assert!(e.to_string().contains("dynamically linked"), "{e}");
    assert_clean(t.path());
}

#[test]
fn gc_sweeps_the_artefacts_of_removed_images() {
    if !root_or_skip("gc_sweeps_the_artefacts_of_removed_images") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path(), Access::Write).unwrap();
    let keep = load_image(&store, "localhost/gfs/keep:1", &[base_layer(), top_layer()]);
    let drop_me = load_image(
        &store,
        "localhost/gfs/drop:1",
        &[base_layer(), top_layer(), xattr_layer()],
    );
    let kept = prepare(&store, &keep, &test_opts(None)).unwrap();
    let dropped = prepare(&store, &drop_me, &test_opts(None)).unwrap();
    assert_eq!(dropped.kind, RootfsKind::Block);
    // A stray file in vm/ (say, from an older layout) goes too.
    fs::write(t.path().join("vm/rootfs/stray"), b"?").unwrap();
    drop(store);

    let store = Store::open(t.path(), Access::Exclusive).unwrap();
    store
        .update_index(|idx| {
            idx.images.retain(|i| i.manifest != drop_me.manifest);
            Ok(())
        })
        .unwrap();
    let r = gc(&store).unwrap();
    assert_eq!(r.vm_removed, 3, "{r:?}"); // .ext4, .json, stray
    assert!(!dropped.disk.unwrap().exists());
    assert!(kept.initrd.exists());
    assert!(dropped.initrd.exists(), "this binary's init part stays");
    let left: Vec<_> = fs::read_dir(t.path().join("vm/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}"); // keep's .cpio and .json
}

/// Build times on the images of `scripts/build-test-images`:
/// `cargo test -p amphi guestfs::tests::bench -- --ignored --nocapture`
/// (`AMPHI_GUESTFS_BIN=target/.../amphi` to use the real binary as init).
#[test]
#[ignore]
fn bench_test_images() {
    if !root_or_skip("bench_test_images") {
        return;
    }
    let cache = PathBuf::from(
        std::env::var("AMPHI_TEST_CACHE").unwrap_or("/var/cache/amphi/test-images".into()),
    );
    // AMPHI_GUESTFS_BENCH_ROOT keeps the store (to boot the results).
    let t = tempfile::tempdir().unwrap();
    let root = std::env::var_os("AMPHI_GUESTFS_BENCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| t.path().to_path_buf());
    let store = Store::open(&root, Access::Write).unwrap();
    for (name, force) in [
        ("busybox", None),
        ("minbase", None),
        ("minbase", Some(RootfsKind::Initramfs)),
    ] {
        let dir = cache.join(name);
        if !dir.is_dir() {
            amphi_test_skip::skip(&format!(
                "test image {name}: {} missing (scripts/build-test-images)",
                dir.display()
            ));
            continue;
        }
        let opts = LoadOptions {
            tag: Some(format!("localhost/bench/{name}:1")),
            platform: Platform::host(),
            progress: Progress::hidden(),
        };
        let rec = load(&store, &dir, &opts).unwrap().remove(0);
        let mut o = test_opts(force);
        if let Some(bin) = std::env::var_os("AMPHI_GUESTFS_BIN") {
            o.amphi_bin = bin.into();
        }
        let cold = prepare(&store, &rec, &o).unwrap();
        let warm = prepare(&store, &rec, &o).unwrap();
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "{name}: {} ({} of files): cold {:?}, cached {:?} (cached={}); initrd {} bytes, disk {} bytes; {}",
            cold.kind,
            human(cold.content_bytes),
            cold.build_time,
            warm.build_time,
            warm.cached,
            size(&cold.initrd),
            cold.disk.as_deref().map(size).unwrap_or(0),
            cold.reason
        );
        if let Some(disk) = &cold.disk {
            let out = Command::new("e2fsck")
                .arg("-fn")
                .arg(disk)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "e2fsck {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    assert_clean(&root);
}
