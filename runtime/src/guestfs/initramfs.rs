//! The two initramfs parts: the image's rootfs under `/.amphi/rootfs/`, and
//! the guest init with the top-level directories it mounts on. The kernel
//! unpacks concatenated newc archives one after the other, so the initrd of
//! an initramfs run is the init part followed by the rootfs part, and the
//! initrd of a block run is the init part alone.

use super::cpio::{Header, Writer, S_IFCHR, S_IFDIR, S_IFREG};
use super::tree::{join, Kind, Tree};
use super::GuestfsError;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where the image's rootfs lives in an initramfs.
pub const ROOTFS_DIR: &str = ".amphi/rootfs";
/// The guest init (the stripped amphi binary).
pub const INIT_PATH: &str = ".amphi/init";

/// Directories of the init part, with their modes, parents first.
pub const TOP_DIRS: [(&str, u32); 7] = [
    (".amphi", 0o755),
    (".amphi/newroot", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

fn write_err(out: &Path, what: &[u8], error: io::Error) -> GuestfsError {
    GuestfsError::Write {
        path: out.to_path_buf(),
        what: String::from_utf8_lossy(what).into_owned(),
        error,
    }
}

fn create(out: &Path) -> Result<Writer<BufWriter<File>>, GuestfsError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .map_err(|e| write_err(out, b"the archive", e))?;
    Ok(Writer::new(BufWriter::with_capacity(1 << 20, f)))
}

fn finish(w: Writer<BufWriter<File>>, out: &Path) -> Result<(), GuestfsError> {
    let e = |e| write_err(out, b"the archive trailer", e);
    let mut buf = w.finish().map_err(e)?;
    buf.flush().map_err(e)?;
    Ok(())
}

fn dir_header(ino: u32, perm: u32) -> Header {
    Header {
        ino,
        mode: S_IFDIR | perm,
        nlink: 2,
        ..Header::default()
    }
}

fn open_nofollow(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// Writes the rootfs part: `tree` (walked at `root`) under [`ROOTFS_DIR`].
pub fn write_rootfs(tree: &Tree, root: &Path, out: &Path) -> Result<(), GuestfsError> {
    let mut w = create(out)?;
    w.dir(b".amphi", &dir_header(1, 0o755))
        .map_err(|e| write_err(out, b".amphi", e))?;
    let mut group_ino: Vec<Option<u32>> = vec![None; tree.links.len()];
    let mut name = Vec::with_capacity(256);
    for (i, node) in tree.nodes.iter().enumerate() {
        name.clear();
        name.extend_from_slice(ROOTFS_DIR.as_bytes());
        if !node.path.is_empty() {
            name.push(b'/');
            name.extend_from_slice(&node.path);
        }
        // Inode numbers: 1 is .amphi, then one per node.
        let mut h = Header {
            ino: i as u32 + 2,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            nlink: 1,
            mtime: node.mtime.clamp(0, u32::MAX as i64) as u32,
            ..Header::default()
        };
        let r = match &node.kind {
            Kind::Dir => {
                h.nlink = 2;
                w.dir(&name, &h)
            }
            Kind::Symlink(target) => w.symlink(&name, &h, target),
            Kind::Fifo => w.entry(&name, &h, 0, &mut io::empty()),
            Kind::File { size } => {
                // Hardlinks: one inode number, nlink = the names in the
                // archive (not st_nlink: upper layers may have removed
                // some), the data with the last name only.
                let group = node.link.map(|g| (g, &tree.links[g]));
                let with_data = match group {
                    Some((g, lg)) if lg.names > 1 => {
                        h.ino = *group_ino[g].get_or_insert(h.ino);
                        h.nlink = lg.names;
                        lg.last == i
                    }
                    _ => true,
                };
                if with_data && *size > 0 {
                    let src = join(root, &node.path);
                    let mut f = open_nofollow(&src).map_err(|e| write_err(out, &name, e))?;
                    w.entry(&name, &h, *size, &mut f)
                } else {
                    w.entry(&name, &h, 0, &mut io::empty())
                }
            }
        };
        r.map_err(|e| write_err(out, &name, e))?;
    }
    finish(w, out)
}

/// Writes the init part: [`TOP_DIRS`], `/dev/console` (so the kernel can
/// give init its standard streams) and `bin` as [`INIT_PATH`].
pub fn write_init(bin: &Path, out: &Path) -> Result<(), GuestfsError> {
    let mut w = create(out)?;
    let mut ino = 1;
    for (dir, perm) in TOP_DIRS {
        w.dir(dir.as_bytes(), &dir_header(ino, perm))
            .map_err(|e| write_err(out, dir.as_bytes(), e))?;
        ino += 1;
    }
    let console = Header {
        ino,
        mode: S_IFCHR | 0o600,
        nlink: 1,
        rdev_major: 5,
        rdev_minor: 1,
        ..Header::default()
    };
    w.entry(b"dev/console", &console, 0, &mut io::empty())
        .map_err(|e| write_err(out, b"dev/console", e))?;
    let mut f = File::open(bin).map_err(|e| write_err(out, INIT_PATH.as_bytes(), e))?;
    let size = f
        .metadata()
        .map_err(|e| write_err(out, INIT_PATH.as_bytes(), e))?
        .len();
    let h = Header {
        ino: ino + 1,
        mode: S_IFREG | 0o755,
        nlink: 1,
        ..Header::default()
    };
    w.entry(INIT_PATH.as_bytes(), &h, size, &mut f)
        .map_err(|e| write_err(out, INIT_PATH.as_bytes(), e))?;
    finish(w, out)
}
