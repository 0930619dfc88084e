//! The merged view of an image's layers, and a walk of it.
//!
//! The stored layers are overlayfs layers (whiteouts as 0/0 character
//! devices, opaque directories as `trusted.overlay.opaque`), so the kernel
//! merges them best: a read-only overlay (lower layers only, no upper) is
//! mounted in a private mount namespace of a thread, exactly as the layer
//! unpacker does (see `image/layers.rs`). Nothing is visible outside that
//! thread and the kernel drops the mount when the thread ends, even if the
//! process dies.

use super::GuestfsError;
use crate::image::{Digest, Store};
use crate::sys::io::IoAt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a walk learnt about a rootfs; cached next to its artefacts so that
/// a cached run can choose the rootfs kind without walking again.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Facts {
    /// Bytes of regular files (each hardlinked file counted once).
    pub content_bytes: u64,
    /// Entries (directories, files, links...), the root included.
    pub entries: u64,
    /// Space the tree takes on a 4 KiB-block filesystem, roughly.
    pub alloc_bytes: u64,
    /// The largest regular file.
    pub largest_file: u64,
    /// Entries with extended attributes (an initramfs cannot carry them).
    pub xattr_entries: u64,
    /// One of them, with its attribute names, for messages.
    pub xattr_example: Option<String>,
    /// Sockets and device nodes, which are left out: how many, and the
    /// first few.
    pub skipped_count: u64,
    pub skipped: Vec<String>,
    /// Whether the image has its own `/lost+found`.
    pub has_lost_found: bool,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Symlink(Vec<u8>),
    Fifo,
}

/// One entry of the tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Path relative to the root; empty for the root itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Index into [`Tree::links`] when this regular file has several names.
    pub link: Option<usize>,
}

/// The names a hardlinked file has in the tree.
#[derive(Clone, Debug, Default)]
pub struct LinkGroup {
    pub names: u32,
    /// The node index of the last name, in walk order.
    pub last: usize,
}

/// A whole tree in walk order: pre-order, children sorted by name, so a
/// directory always comes before what it holds and the output is
/// reproducible.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub links: Vec<LinkGroup>,
    pub facts: Facts,
}

/// Runs `f` on the merged, read-only view of `chains` (bottom first) in a
/// thread of its own, with the overlay mounted in that thread's private
/// mount namespace. `scratch` is an empty directory (in the store's tmp)
/// for the mount point; the caller removes it. `image` names the image in
/// errors.
pub fn with_merged<T: Send>(
    store: &Store,
    chains: &[Digest],
    scratch: &Path,
    image: &str,
    f: impl FnOnce(&Path) -> Result<T, GuestfsError> + Send,
) -> Result<T, GuestfsError> {
    let merged = scratch.join("merged");
    let empty = scratch.join("empty");
    for d in [&merged, &empty] {
        fs::create_dir_all(d).at(d)?;
    }
    let layers = store.root().join("layers/sha256");
    let overlay_err = |reason: String| GuestfsError::Overlay {
        image: image.to_string(),
        reason,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            mount_merged(&layers, chains, &empty, &merged).map_err(overlay_err)?;
            let r = f(&merged);
            let _ = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH);
            r
        })
        .join()
        .unwrap_or_else(|_| Err(overlay_err("the thread reading the rootfs panicked".into())))
    })
}

/// In the calling thread: a private mount namespace, then a read-only
/// overlay of the layers `chains` (bottom first) on `merged`.
///
/// An empty directory is the bottom-most lower layer: overlayfs wants two
/// lower layers when there is no upper one, and a single-layer image then
/// goes through overlayfs too (which hides whiteouts and overlay xattrs
/// like it does for any other image).
fn mount_merged(
    layers: &Path,
    chains: &[Digest],
    empty: &Path,
    merged: &Path,
) -> Result<(), String> {
    use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
    // SAFETY: unsharing the mount namespace also unshares this thread's fs
    // context (cwd, root); no memory or file-table state changes.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e} (building a guest rootfs needs root)"))?;
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    // Layers are named relative to the layer directory (the fs context is
    // this thread's own now), which keeps the option string short: about
    // 70 bytes a layer, so some 55 layers fit in the 4 KiB limit.
    rustix::process::chdir(layers).map_err(|e| format!("{}: {e}", layers.display()))?;
    if !empty.is_absolute() {
        return Err(format!("path {:?} is not absolute", empty.display()));
    }
    if chains.is_empty() {
        return Err("the image has no layers".into());
    }
    let mut lower: Vec<PathBuf> = chains
        .iter()
        .rev()
        .map(|c| Path::new(c.hex()).join("diff"))
        .collect();
    lower.push(empty.to_path_buf());
    let opts = crate::sys::overlay::options(&lower, None).map_err(|e| e.to_string())?;
    let data = std::ffi::CString::new(opts).map_err(|e| e.to_string())?;
    mount(
        "overlay",
        merged,
        "overlay",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| format!("mount overlay on {}: {e}", merged.display()))
}

/// `root` joined with a relative path of the tree.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn round_block(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Walks the tree at `root`, not following symlinks.
pub fn walk(root: &Path) -> Result<Tree, GuestfsError> {
    let mut tree = Tree::default();
    let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
    // Pre-order with sorted children: pop one, then push its children in
    // reverse order.
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    let mut xattr_buf = Vec::new();
    while let Some(rel) = stack.pop() {
        let path = join(root, &rel);
        let md = fs::symlink_metadata(&path).at(&path)?;
        let Some(kind) = classify(&rel, &path, &md, &mut tree.facts, &mut stack)? else {
            continue;
        };
        tree.facts.entries += 1;
        let link = match kind {
            Kind::File { size } => count_file(&mut tree, &mut by_inode, &md, size),
            _ => None,
        };
        note_xattrs(&rel, &path, &mut tree.facts, &mut xattr_buf)?;
        tree.nodes.push(Node {
            path: rel,
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            link,
        });
    }
    Ok(tree)
}

/// What the entry `rel` (at `path`, with metadata `md`) is, its space
/// counted in `facts`. A directory's children go on `stack` so that they
/// pop in name order. Sockets and device nodes are left out: `None`, and
/// noted in `facts`.
fn classify(
    rel: &[u8],
    path: &Path,
    md: &fs::Metadata,
    facts: &mut Facts,
    stack: &mut Vec<Vec<u8>>,
) -> Result<Option<Kind>, GuestfsError> {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        facts.alloc_bytes += 4096;
        stack.extend(sorted_children(rel, path)?.into_iter().rev());
        if rel == b"lost+found" {
            facts.has_lost_found = true;
        }
        Kind::Dir
    } else if ft.is_file() {
        let size = md.len();
        Kind::File { size }
    } else if ft.is_symlink() {
        let t = fs::read_link(path).at(path)?;
        let t = t.into_os_string().into_vec();
        if t.len() > 59 {
            facts.alloc_bytes += 4096;
        }
        Kind::Symlink(t)
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        note_skipped(rel, ft.is_socket(), facts);
        return Ok(None);
    };
    Ok(Some(kind))
}

/// The relative paths of the entries of the directory `rel` (at `path`),
/// sorted by name.
fn sorted_children(rel: &[u8], path: &Path) -> Result<Vec<Vec<u8>>, GuestfsError> {
    let mut children: Vec<Vec<u8>> = Vec::new();
    for e in fs::read_dir(path).at(path)? {
        let e = e.at(path)?;
        let mut c = rel.to_vec();
        if !c.is_empty() {
            c.push(b'/');
        }
        c.extend_from_slice(e.file_name().as_bytes());
        children.push(c);
    }
    children.sort_unstable();
    Ok(children)
}

/// Counts a socket or device node `rel` as skipped, and names the first
/// ten of them.
fn note_skipped(rel: &[u8], socket: bool, facts: &mut Facts) {
    facts.skipped_count += 1;
    if facts.skipped.len() >= 10 {
        return;
    }
    facts.skipped.push(format!(
        "/{} ({})",
        String::from_utf8_lossy(rel),
        if socket { "socket" } else { "device node" }
    ));
}

/// Counts the regular file of `size` bytes about to become the next node:
/// its content once, however many names it has. Returns its link group
/// when it has several names.
fn count_file(
    tree: &mut Tree,
    by_inode: &mut HashMap<(u64, u64), usize>,
    md: &fs::Metadata,
    size: u64,
) -> Option<usize> {
    let mut link = None;
    let first_name = if md.nlink() > 1 {
        let idx = tree.nodes.len();
        match by_inode.get(&(md.dev(), md.ino())) {
            Some(&g) => {
                tree.links[g].names += 1;
                tree.links[g].last = idx;
                link = Some(g);
                false
            }
            None => {
                let g = tree.links.len();
                tree.links.push(LinkGroup {
                    names: 1,
                    last: idx,
                });
                by_inode.insert((md.dev(), md.ino()), g);
                link = Some(g);
                true
            }
        }
    } else {
        true
    };
    if first_name {
        let facts = &mut tree.facts;
        facts.content_bytes += size;
        facts.alloc_bytes += round_block(size);
        facts.largest_file = facts.largest_file.max(size);
    }
    link
}

/// Counts the entry `rel` (at `path`) if it has extended attributes, and
/// keeps the first such entry as the example.
fn note_xattrs(
    rel: &[u8],
    path: &Path,
    facts: &mut Facts,
    buf: &mut Vec<u8>,
) -> Result<(), GuestfsError> {
    // overlayfs hides its own from the list, but not from the size query,
    // so the names are always read.
    let names = xattr_names(path, buf)?;
    if !names.is_empty() {
        facts.xattr_entries += 1;
        if facts.xattr_example.is_none() {
            facts.xattr_example = Some(format!(
                "/{} ({})",
                String::from_utf8_lossy(rel),
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// The extended attribute names of `path` (not following a symlink),
/// without overlayfs' own.
fn xattr_names(path: &Path, buf: &mut Vec<u8>) -> Result<Vec<String>, GuestfsError> {
    use rustix::io::Errno;
    let io_err = |e: Errno| Err::<Vec<String>, _>(std::io::Error::from(e)).at(path);
    loop {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(0) | Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) => return Ok(io_err(e)?),
        };
        buf.resize(n, 0);
        let got = match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(got) => got,
            // Grew in between: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Ok(io_err(e)?),
        };
        return Ok(buf[..got]
            .split(|b| *b == 0)
            .filter(|n| {
                !n.is_empty()
                    && !n.starts_with(b"trusted.overlay.")
                    && !n.starts_with(b"user.overlay.")
            })
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect());
    }
}
