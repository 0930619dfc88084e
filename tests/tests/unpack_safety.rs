//! Safe layer unpacking, end to end: `amphi load` of hand-made OCI layouts,
//! then checks of what landed in `<AMPHI_ROOT>/layers/sha256/<chain>/diff`
//! (and of the overlay of those dirs, what a container would see), of what
//! must not exist anywhere else, and of the errors for hostile layers.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use amphi_tests::{raw_tar, sha256_digest, Amphi, Compression, LayoutBuilder, TarEntry};
use common::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn file<'a>(path: &'a str, data: &'a [u8]) -> TarEntry<'a> {
    TarEntry::File {
        path,
        data,
        mode: 0o644,
    }
}

fn dir(path: &str) -> TarEntry<'_> {
    TarEntry::Dir { path }
}

fn symlink<'a>(path: &'a str, target: &'a str) -> TarEntry<'a> {
    TarEntry::Symlink { path, target }
}

fn hardlink<'a>(path: &'a str, target: &'a str) -> TarEntry<'a> {
    TarEntry::Hardlink { path, target }
}

/// An image of the given layers (uncompressed), each given as tar entries.
fn image(layers: &[&[TarEntry]]) -> LayoutBuilder {
    layers.iter().fold(LayoutBuilder::new(), |b, entries| {
        b.layer(raw_tar(entries), Compression::None)
    })
}

/// Loads an image of `layers` into a fresh store; returns the store and the diff dirs.
fn unpack(layers: &[&[TarEntry]]) -> (Amphi, Vec<PathBuf>) {
    let a = Amphi::new();
    let diffs = load_layers(&a, &image(layers), "example.com/test/unpack:1");
    assert_eq!(diffs.len(), layers.len());
    (a, diffs)
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn has(view: &[String], path: &str) -> bool {
    view.iter().any(|p| p == path)
}

// ---------------------------------------------------------------- whiteouts

#[test]
fn whiteout_file_hides_lower_file() {
    let (_a, diffs) = unpack(&[
        &[
            dir("etc"),
            file("etc/keep", b"k"),
            file("etc/gone", b"g"),
            dir("etc/gonedir"),
            file("etc/gonedir/f", b"f"),
        ],
        &[
            dir("etc"),
            file("etc/.wh.gone", b""),
            file("etc/.wh.gonedir", b""),
        ],
    ]);
    let upper = &diffs[1];
    for gone in ["etc/gone", "etc/gonedir"] {
        assert!(
            is_whiteout(&upper.join(gone)),
            "{gone} in layer 2 is not an overlayfs whiteout (char 0:0)"
        );
    }
    assert!(!upper.join("etc/.wh.gone").exists(), "the marker was kept");
    assert!(
        !upper.join("etc/keep").exists(),
        "etc/keep was copied up for nothing"
    );
    assert!(diffs[0].join("etc/gone").is_file(), "layer 1 was modified");

    assert_eq!(merged_view(&diffs), ["etc", "etc/keep"]);
}

/// Layer 1 of the opaque-dir tests: `d` with a file and a subdirectory.
const OPQ_LOWER: &[TarEntry] = &[
    TarEntry::Dir { path: "d" },
    TarEntry::File {
        path: "d/old",
        data: b"old",
        mode: 0o644,
    },
    TarEntry::Dir { path: "d/sub" },
    TarEntry::File {
        path: "d/sub/old2",
        data: b"old2",
        mode: 0o644,
    },
    TarEntry::Dir { path: "other" },
    TarEntry::File {
        path: "other/stays",
        data: b"s",
        mode: 0o644,
    },
];

/// `d` is opaque in layer 2, which adds `d/new`, `d/sub/new2` (re-declaring
/// `d/sub`) and `d/implied/new3` (no entry for `d/implied`).
fn check_opaque(upper_entries: &[TarEntry]) {
    let (_a, diffs) = unpack(&[OPQ_LOWER, upper_entries]);
    let view = merged_view(&diffs);
    let d: Vec<&String> = view.iter().filter(|p| p.starts_with("d/")).collect();
    assert_eq!(
        d,
        [
            "d/implied",
            "d/implied/new3",
            "d/new",
            "d/sub",
            "d/sub/new2"
        ],
        "layer 2's view of the opaque dir d"
    );
    assert!(has(&view, "other/stays"), "{view:?}");
    let upper = &diffs[1];
    assert_eq!(fs::read(upper.join("d/new")).unwrap(), b"new");
    assert_eq!(fs::read(upper.join("d/sub/new2")).unwrap(), b"new2");
    assert_eq!(fs::read(upper.join("d/implied/new3")).unwrap(), b"new3");
    assert!(
        !upper.join("d/.wh..wh..opq").exists(),
        "the marker was kept"
    );
    assert!(
        is_whiteout(&upper.join("d/old")),
        "lower d/old is not whited out in layer 2"
    );
    // Layer 1 itself is untouched.
    assert_eq!(fs::read(diffs[0].join("d/sub/old2")).unwrap(), b"old2");
}

#[test]
fn opaque_dir_marker_before_entries() {
    check_opaque(&[
        dir("d"),
        file("d/.wh..wh..opq", b""),
        file("d/new", b"new"),
        dir("d/sub"),
        file("d/sub/new2", b"new2"),
        file("d/implied/new3", b"new3"),
    ]);
}

#[test]
fn opaque_dir_marker_after_entries() {
    check_opaque(&[
        dir("d"),
        file("d/new", b"new"),
        dir("d/sub"),
        file("d/sub/new2", b"new2"),
        file("d/implied/new3", b"new3"),
        file("d/.wh..wh..opq", b""),
    ]);
}

// ------------------------------------------------------ links and metadata

#[test]
fn hardlink_in_same_layer() {
    let (_a, diffs) = unpack(&[&[
        dir("bin"),
        file("bin/busybox", b"#!busybox"),
        hardlink("bin/sh", "bin/busybox"),
        hardlink("./bin/ls", "./bin/busybox"),
    ]]);
    let d = &diffs[0];
    let target = lstat(&d.join("bin/busybox"));
    for link in ["bin/sh", "bin/ls"] {
        let m = lstat(&d.join(link));
        assert!(m.file_type().is_file(), "{link}");
        assert_eq!(m.ino(), target.ino(), "{link} is not a hardlink");
    }
    assert_eq!(target.nlink(), 3);
    assert_eq!(fs::read(d.join("bin/sh")).unwrap(), b"#!busybox");
}

#[test]
fn hardlink_to_lower_layer_file() {
    let (_a, diffs) = unpack(&[
        &[dir("bin"), file("bin/busybox", b"#!busybox")],
        &[hardlink("bin/sh", "bin/busybox")],
    ]);
    let upper = &diffs[1];
    let sh = lstat(&upper.join("bin/sh"));
    assert!(sh.file_type().is_file());
    assert_eq!(fs::read(upper.join("bin/sh")).unwrap(), b"#!busybox");
    // overlayfs copied the target up to link it: both names are one inode in layer 2.
    assert_eq!(lstat(&upper.join("bin/busybox")).ino(), sh.ino());
    assert_eq!(lstat(&diffs[0].join("bin/busybox")).nlink(), 1);
    let view = merged_view(&diffs);
    assert!(
        has(&view, "bin/sh") && has(&view, "bin/busybox"),
        "{view:?}"
    );
}

#[test]
fn symlinks_are_kept_verbatim() {
    let (_a, diffs) = unpack(&[&[
        dir("bin"),
        file("bin/busybox", b"x"),
        symlink("bin/sh", "busybox"),
        symlink("bin/abs", "/bin/busybox"),
        symlink("bin/dangling", "../nowhere/at/all"),
        symlink("bin/outside", "../../../../etc/passwd"),
    ]]);
    let d = &diffs[0];
    for (link, target) in [
        ("bin/sh", "busybox"),
        ("bin/abs", "/bin/busybox"),
        ("bin/dangling", "../nowhere/at/all"),
        ("bin/outside", "../../../../etc/passwd"),
    ] {
        assert!(lstat(&d.join(link)).file_type().is_symlink(), "{link}");
        assert_eq!(fs::read_link(d.join(link)).unwrap(), Path::new(target));
    }
}

#[test]
fn modes_are_kept_including_setuid() {
    let (_a, diffs) = unpack(&[&[
        dir("bin"),
        TarEntry::File {
            path: "bin/su",
            data: b"su",
            mode: 0o4755,
        },
        TarEntry::File {
            path: "bin/wall",
            data: b"wall",
            mode: 0o2755,
        },
        TarEntry::File {
            path: "secret",
            data: b"s",
            mode: 0o600,
        },
        TarEntry::File {
            path: "bin/tool",
            data: b"t",
            mode: 0o755,
        },
    ]]);
    let d = &diffs[0];
    for (p, mode) in [
        ("bin/su", 0o4755),
        ("bin/wall", 0o2755),
        ("secret", 0o600),
        ("bin/tool", 0o755),
        ("bin", 0o755),
    ] {
        assert_eq!(
            lstat(&d.join(p)).permissions().mode() & 0o7777,
            mode,
            "mode of {p}"
        );
    }
}

#[test]
fn ownership_is_kept() {
    let owned = |entry| TarEntry::With {
        entry,
        uid: 1234,
        gid: 5678,
        mtime: 0,
        xattrs: &[],
    };
    let (f, dd, l) = (
        file("home/u/f", b"f"),
        dir("home/u"),
        symlink("home/u/l", "f"),
    );
    let (_a, diffs) = unpack(&[&[dir("home"), owned(&dd), owned(&f), owned(&l)]]);
    let d = &diffs[0];
    for p in ["home/u", "home/u/f", "home/u/l"] {
        let m = lstat(&d.join(p));
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "owner of {p}");
    }
    assert_eq!(
        (lstat(&d.join("home")).uid(), lstat(&d.join("home")).gid()),
        (0, 0)
    );
}

#[test]
fn mtimes_are_kept() {
    const T: u64 = 1_000_000_000; // 2001-09-09
    let at = |entry| TarEntry::With {
        entry,
        uid: 0,
        gid: 0,
        mtime: T,
        xattrs: &[],
    };
    let (dd, f, l) = (
        dir("var"),
        file("var/log", b"l"),
        symlink("var/link", "log"),
    );
    // The directory gets its mtime even though a child is created after it.
    let (_a, diffs) = unpack(&[&[at(&dd), at(&f), at(&l)]]);
    let d = &diffs[0];
    for p in ["var", "var/log", "var/link"] {
        assert_eq!(lstat(&d.join(p)).mtime(), T as i64, "mtime of {p}");
    }
}

#[test]
fn xattrs_from_pax_records_are_kept() {
    let f = file("etc/tagged", b"x");
    let tagged = TarEntry::With {
        entry: &f,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: &[("user.foo", b"bar"), ("user.empty", b"")],
    };
    let (_a, diffs) = unpack(&[&[dir("etc"), tagged, file("etc/plain", b"p")]]);
    let d = &diffs[0];
    assert_eq!(
        getxattr(&d.join("etc/tagged"), "user.foo"),
        Some(b"bar".to_vec())
    );
    assert_eq!(getxattr(&d.join("etc/tagged"), "user.empty"), Some(vec![]));
    assert_eq!(getxattr(&d.join("etc/plain"), "user.foo"), None);
    assert_eq!(fs::read(d.join("etc/tagged")).unwrap(), b"x");
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODATA),
            "{}: {e}",
            p.display()
        );
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

// ------------------------------------------------------------ merged /usr

fn check_merged_usr(link_target: &str) {
    let (_a, diffs) = unpack(&[
        &[
            dir("usr"),
            dir("usr/lib"),
            file("usr/lib/libc.so", b"libc"),
            symlink("lib", link_target),
        ],
        &[file("lib/x", b"x")],
    ]);
    let (lower, upper) = (&diffs[0], &diffs[1]);
    assert_eq!(
        fs::read(upper.join("usr/lib/x")).unwrap(),
        b"x",
        "lib/x did not land in usr/lib/x of layer 2"
    );
    match fs::symlink_metadata(upper.join("lib")) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        Ok(m) => assert!(m.file_type().is_symlink(), "layer 2 replaced lib"),
    }
    assert!(lstat(&lower.join("lib")).file_type().is_symlink());
    assert_eq!(
        fs::read_link(lower.join("lib")).unwrap(),
        Path::new(link_target)
    );
    assert!(!lower.join("usr/lib/x").exists(), "layer 1 was modified");
    let view = merged_view(&diffs);
    assert!(
        has(&view, "usr/lib/x") && has(&view, "usr/lib/libc.so"),
        "{view:?}"
    );
    assert!(
        !has(&view, "lib/x"),
        "lib is a directory in the image: {view:?}"
    );
}

#[test]
fn merged_usr_relative_lib_symlink() {
    check_merged_usr("usr/lib");
}

#[test]
fn merged_usr_absolute_lib_symlink() {
    check_merged_usr("/usr/lib");
}

// ------------------------------------------------- symlinked parents outside

/// A real directory `/tmp/<unique>` holding only `precious`, that a naive
/// unpacker would write into (or remove from).
struct Decoy(PathBuf);

impl Decoy {
    fn new() -> Self {
        let p = Path::new("/tmp").join(unique("decoy"));
        fs::create_dir(&p).unwrap();
        fs::write(p.join("precious"), "precious").unwrap();
        Decoy(p)
    }

    fn name(&self) -> String {
        self.0.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn assert_untouched(&self) {
        let l = listing(&self.0);
        assert_eq!(
            l,
            ["precious".to_string()].into(),
            "written outside the rootfs"
        );
        assert_eq!(fs::read(self.0.join("precious")).unwrap(), b"precious");
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `evil -> target` then `evil/pwned` and whiteouts of `evil/precious` and
/// of all of `evil/` (in layer `pwned_layer` of 1 or 2): the file lands in the
/// rootfs's own `tmp/<decoy>`, the real one is left alone.
fn check_symlinked_parent(target: &str, decoy: &Decoy, pwned_layer: usize) {
    let link = symlink("evil", target);
    let pwned = [
        file("evil/pwned", b"pwned"),
        file("evil/.wh.precious", b""),
        file("evil/.wh..wh..opq", b""),
    ];
    let (_a, diffs) = if pwned_layer == 1 {
        unpack(&[&[&[link][..], &pwned].concat()])
    } else {
        unpack(&[&[link], &pwned])
    };
    decoy.assert_untouched();
    let landed = diffs[pwned_layer - 1]
        .join("tmp")
        .join(decoy.name())
        .join("pwned");
    assert_eq!(
        fs::read(&landed).unwrap_or_else(|e| panic!("{}: {e}", landed.display())),
        b"pwned"
    );
    assert!(lstat(&diffs[0].join("evil")).file_type().is_symlink());
    assert_eq!(
        fs::read_link(diffs[0].join("evil")).unwrap(),
        Path::new(target)
    );
    let view = merged_view(&diffs);
    assert!(
        has(&view, &format!("tmp/{}/pwned", decoy.name())),
        "{view:?}"
    );
}

#[test]
fn symlinked_parent_absolute_stays_inside() {
    let decoy = Decoy::new();
    check_symlinked_parent(&format!("/tmp/{}", decoy.name()), &decoy, 1);
}

#[test]
fn symlinked_parent_relative_stays_inside() {
    let decoy = Decoy::new();
    check_symlinked_parent(&format!("../../../../../tmp/{}", decoy.name()), &decoy, 1);
}

#[test]
fn symlinked_parent_from_lower_layer_stays_inside() {
    let decoy = Decoy::new();
    check_symlinked_parent(&format!("../../../../../tmp/{}", decoy.name()), &decoy, 2);
    let decoy = Decoy::new();
    check_symlinked_parent(&format!("/tmp/{}", decoy.name()), &decoy, 2);
}

// ------------------------------------------------------------ refused entries

/// Loads a two-layer image whose second layer is `hostile` into a store that
/// already holds another image: the load fails naming layer 2 and `entry`,
/// the store is unchanged and nothing named `needle` exists anywhere.
fn check_refused(hostile: &[TarEntry], entry: &str, needle: &str) -> String {
    let a = Amphi::new();
    load_layers(
        &a,
        &image(&[&[file("etc/other", b"another image")]]),
        "example.com/other:1",
    );
    let before = store_state(a.root());
    let base_name = format!("etc/{}", unique("base"));
    let base = [dir("etc"), file(&base_name, b"base")];
    let (layout_dir, built) = layout(&image(&[&base, hostile]));
    let stderr = a.fail(&["load", "-q", layout_dir.path().to_str().unwrap()]);
    assert!(
        stderr.contains("layer 2/2"),
        "error does not name the layer: {stderr}"
    );
    assert!(
        stderr.contains(&built.layers[1]),
        "no layer digest: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{entry:?}")),
        "error does not name the entry {entry:?}: {stderr}"
    );
    assert_store_unchanged(a.root(), &before);
    assert_no_trace(&a, needle);
    assert!(find_named(layout_dir.path(), needle).is_empty());
    stderr
}

#[test]
fn absolute_entry_name_is_refused() {
    let u = unique("abs");
    let name = format!("/{u}");
    let stderr = check_refused(&[file(&name, b"abs")], &name, &u);
    assert!(stderr.contains("absolute"), "{stderr}");
}

#[test]
fn entry_name_climbing_with_dotdot_is_refused() {
    let u = unique("escape");
    let name = format!("../../{u}");
    let stderr = check_refused(&[file(&name, b"up")], &name, &u);
    assert!(stderr.contains(".."), "{stderr}");
}

#[test]
fn entry_name_climbing_from_a_subdir_is_refused() {
    let u = unique("escape");
    let name = format!("a/../../{u}");
    check_refused(&[dir("a"), file(&name, b"up")], &name, &u);
}

fn check_hardlink_refused(target: &str) {
    let before = lstat(Path::new("/etc/passwd"));
    let u = unique("link");
    let stderr = check_refused(&[hardlink(&u, target)], &u, &u);
    assert!(stderr.contains("hardlink"), "{stderr}");
    let after = lstat(Path::new("/etc/passwd"));
    assert_eq!(
        (after.ino(), after.nlink(), after.mtime(), after.size()),
        (before.ino(), before.nlink(), before.mtime(), before.size()),
        "/etc/passwd was touched"
    );
}

#[test]
fn hardlink_to_relative_path_outside_is_refused() {
    check_hardlink_refused("../../etc/passwd");
}

#[test]
fn hardlink_to_absolute_path_is_refused() {
    check_hardlink_refused("/etc/passwd");
}

// ------------------------------------------------------------- digests

/// A store holding one image, and a two-layer layout to load into it.
fn two_layers() -> (Amphi, LayoutBuilder, Vec<u8>) {
    let a = Amphi::new();
    load_layers(
        &a,
        &image(&[&[file("etc/other", b"another image")]]),
        "example.com/other:1",
    );
    let u = unique("layer");
    let base = raw_tar(&[dir("etc"), file(&format!("etc/{u}"), b"1")]);
    let top = raw_tar(&[file(&format!("etc/{u}-2"), b"2")]);
    let b = LayoutBuilder::new()
        .layer(base, Compression::None)
        .layer(top.clone(), Compression::None);
    (a, b, top)
}

#[test]
fn layer_digest_mismatch_is_refused() {
    let (a, b, top) = two_layers();
    let (dir, built) = layout(&b.corrupt_layer_digest(1));
    // Put the real blob under the digest the manifest names, so the blob is there but wrong.
    let real = sha256_digest(&top);
    let blobs = dir.path().join("blobs/sha256");
    fs::copy(blobs.join(&real[7..]), blobs.join(&built.layers[1][7..])).unwrap();
    let before = store_state(a.root());
    let stderr = a.fail(&["load", "-q", dir.path().to_str().unwrap()]);
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(stderr.contains(&real), "{stderr}");
    assert_store_unchanged(a.root(), &before);
}

#[test]
fn diff_id_mismatch_is_refused() {
    let (a, b, _) = two_layers();
    let (dir, built) = layout(&b.corrupt_diff_id(1));
    let before = store_state(a.root());
    let stderr = a.fail(&["load", "-q", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("layer 2/2"), "{stderr}");
    assert!(stderr.contains(&built.layers[1]), "{stderr}");
    assert!(stderr.contains("diff ID mismatch"), "{stderr}");
    assert!(stderr.contains(&built.diff_ids[1]), "{stderr}");
    assert_store_unchanged(a.root(), &before);
}

// ---------------------------------------------------------- devices

#[test]
fn device_nodes_are_skipped_with_a_warning() {
    let a = Amphi::new();
    let b = image(&[&[
        dir("dev"),
        TarEntry::CharDev { path: "dev/null" },
        TarEntry::BlockDev { path: "dev/loop0" },
        TarEntry::Fifo { path: "dev/fifo" },
        dir("etc"),
        file("etc/after", b"after"),
    ]]);
    let (dir, _) = layout(&b);
    let out = a.run(&[
        "load",
        "--tag",
        "example.com/dev:1",
        dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning"), "{stderr}");
    for dev in ["dev/null", "dev/loop0"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("warning") && l.contains(dev)),
            "no warning about {dev}: {stderr}"
        );
    }
    let d = &diff_dirs(&a, "example.com/dev:1")[0];
    assert!(d.join("dev").is_dir());
    assert!(
        fs::symlink_metadata(d.join("dev/null")).is_err(),
        "dev/null was created"
    );
    assert!(
        fs::symlink_metadata(d.join("dev/loop0")).is_err(),
        "dev/loop0 was created"
    );
    assert!(lstat(&d.join("dev/fifo")).file_type().is_fifo());
    assert_eq!(fs::read(d.join("etc/after")).unwrap(), b"after");
}

// ------------------------------------------------------------ compression

fn check_compression(c: Compression) {
    let a = Amphi::new();
    let b = LayoutBuilder::new()
        .layer(raw_tar(&[dir("etc"), file("etc/one", b"1")]), c)
        .layer(
            raw_tar(&[file("etc/two", b"2"), file("etc/.wh.one", b"")]),
            c,
        );
    let (dir, built) = layout(&b);
    a.ok(&[
        "load",
        "-q",
        "--tag",
        "example.com/c:1",
        dir.path().to_str().unwrap(),
    ]);
    let info = inspect(&a, "example.com/c:1");
    for (i, l) in info["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(l["mediaType"], c.media_type());
        assert_eq!(l["digest"], built.layers[i].as_str());
    }
    assert_eq!(
        info["Config"]["rootfs"]["diff_ids"],
        serde_json::json!(built.diff_ids)
    );
    let diffs = diff_dirs(&a, "example.com/c:1");
    assert_eq!(fs::read(diffs[0].join("etc/one")).unwrap(), b"1");
    assert_eq!(fs::read(diffs[1].join("etc/two")).unwrap(), b"2");
    assert_eq!(merged_view(&diffs), ["etc", "etc/two"]);
    // The layer blobs are stored as they came.
    for (i, l) in built.layers.iter().enumerate() {
        let stored = fs::read(a.root().join("blobs/sha256").join(&l[7..])).unwrap();
        assert_eq!(sha256_digest(&stored), built.layers[i]);
    }
}

#[test]
fn uncompressed_layers_load() {
    check_compression(Compression::None);
}

#[test]
fn gzip_layers_load() {
    check_compression(Compression::Gzip);
}

#[test]
fn zstd_layers_load() {
    check_compression(Compression::Zstd);
}

#[test]
fn symlink_loop_in_parent_is_an_error() {
    let a = Amphi::new();
    let u = unique("loop");
    let (dir, built) = layout(&image(&[&[
        symlink("a", "b"),
        symlink("b", "/a"),
        symlink("c", "c/d"),
        file(&format!("a/{u}"), b"x"),
    ]]));
    let before = store_state(a.root());
    let stderr = a.fail(&["load", "-q", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("layer 1/1"), "{stderr}");
    assert!(stderr.contains(&built.layers[0]), "{stderr}");
    assert!(stderr.contains(&format!("a/{u}")), "{stderr}");
    assert_store_unchanged(a.root(), &before);
    assert_no_trace(&a, &u);

    // A self-referencing dangling link must not recurse forever either.
    let (dir, _) = layout(&image(&[&[symlink("c", "c/d"), file("c/e", b"x")]]));
    let stderr = a.fail(&["load", "-q", dir.path().to_str().unwrap()]);
    assert!(stderr.contains("\"c/e\""), "{stderr}");
}
