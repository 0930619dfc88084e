//! Never expose a writable host binary to a container (the CVE-2019-5736
//! class).
//!
//! A container process is a fork of amphi until it executes the workload,
//! and an `exec` joins a running container's pid namespace before it
//! forks: for a while `/proc/PID/exe` of a process that the container can
//! see is amphi's own binary. An image whose entrypoint is `/proc/self/exe`
//! even runs that binary as the container's PID 1. Whoever holds a
//! descriptor of it could, once it no longer runs, reopen it for writing and
//! replace the host's amphi.
//!
//! So no container process runs the host's binary: right after the clone,
//! the child executes a sealed copy of amphi as its setup stage
//! (`container::setup`, as `runc init`), while the runtime sets up its
//! cgroups; the sealed copy is:
//!
//! 1. **A read-only overlayfs clone** (as runc 1.2 does): a detached
//!    overlayfs mount (new mount API, never attached anywhere, so nothing in
//!    any mount namespace can reach or remount it) whose lower layers are
//!    the binary's directory and an empty one, mounted read-only. It has no
//!    upper layer, so the kernel refuses every write (`EROFS`) and refuses
//!    to make it writable. It costs one mount and no copy.
//! 2. **A sealed memfd** when overlayfs is not available: a copy of the
//!    binary in a memfd with `F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK |
//!    F_SEAL_SEAL`, so neither the memfd nor the host file can be written
//!    through it. It costs a copy of the binary (some MiB of memory per
//!    container start), which is why it is only the fallback.
//!
//! In addition the container process is non-dumpable until it executes
//! the workload (see `launch`), so other processes in the container cannot
//! open its `/proc/PID/exe` or `/proc/PID/mem` at all, and `--init` runs
//! the same sealed copy.

use rustix::fs::{Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// No sealed copy of amphi's binary could be made (or a kept one is not
/// what it must be).
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("opening amphi's own binary (/proc/self/exe): {0}")]
    OpenSelf(#[source] Errno),
    #[error("/proc/self/exe: {0}")]
    ReadLink(#[source] std::io::Error),
    #[error("stat of amphi's binary: {0}")]
    StatSelf(#[source] Errno),
    #[error("{}: no file name", .0.display())]
    NoFileName(PathBuf),
    #[error("{}: no directory", .0.display())]
    NoDirectory(PathBuf),
    #[error("{} was deleted", .0.display())]
    Deleted(PathBuf),
    /// A path of the cache ([`CACHE_DIR`]) could not be opened or made.
    #[error("{}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A kept clone's stat.
    #[error("{0}")]
    Stat(#[source] Errno),
    #[error("{} is not a read-only clone of amphi's binary", .0.display())]
    NotAClone(PathBuf),
    #[error("{} is not a directory private to root", .0.display())]
    CacheNotPrivate(PathBuf),
    #[error("{} is not a directory owned by root and writable only by it", .0.display())]
    EmptyNotRoots(PathBuf),
    #[error("{} is not empty", .0.display())]
    EmptyNotEmpty(PathBuf),
    #[error(transparent)]
    Lowerdir(#[from] crate::sys::overlay::OverlayError),
    #[error("fsopen overlay: {0}")]
    Fsopen(#[source] Errno),
    #[error("overlay lowerdir={lower}: {source}")]
    LowerdirConfig { lower: String, source: Errno },
    #[error("creating the overlay: {0}")]
    FsCreate(#[source] Errno),
    #[error("fsmount overlay: {0}")]
    Fsmount(#[source] Errno),
    #[error("opening {name} in the overlay: {source}")]
    OpenInOverlay { name: String, source: Errno },
    #[error("the overlay clone is not read-only")]
    OverlayWritable,
    #[error("memfd_create: {0}")]
    MemfdCreate(#[source] Errno),
    #[error("stat of the binary: {0}")]
    StatBinary(#[source] Errno),
    #[error("copying the binary into the memfd: {0}")]
    Copy(#[source] Errno),
    #[error("the binary shrank while being copied")]
    Shrank,
    #[error("sealing the memfd: {0}")]
    Seal(#[source] Errno),
    #[error(
        "cannot make a sealed copy of amphi's binary to start containers from \
         (read-only overlayfs: {overlay}; sealed memfd: {memfd})"
    )]
    NoCopy {
        overlay: Box<SealedError>,
        #[source]
        memfd: Box<SealedError>,
    },
}

/// amphi's binary as a path on the host, for what runs outside containers
/// (the VMM process, the guest's init, `compare`'s runs).
pub fn host_binary() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())
}

/// overlayfs's `f_type`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// The seals that make a memfd immutable for good.
fn all_seals() -> SealFlags {
    SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL
}

/// How the running binary is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// A read-only overlayfs without an upper layer.
    Overlay,
    /// A memfd with every write seal.
    Memfd,
}

/// How `fd` (an executable) is protected against writes, if at all.
pub fn protection(fd: impl AsFd) -> Option<Protection> {
    let fd = fd.as_fd();
    if rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(all_seals())) {
        return Some(Protection::Memfd);
    }
    let fs = rustix::fs::fstatfs(fd).ok()?;
    let vfs = rustix::fs::fstatvfs(fd).ok()?;
    (fs.f_type as i64 == OVERLAYFS_MAGIC
        && vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    .then_some(Protection::Overlay)
}

/// A sealed copy of amphi's binary to execute container processes from:
/// the running binary itself when it is sealed already, else an overlayfs
/// clone, else a memfd copy.
pub fn binary() -> Result<OwnedFd, SealedError> {
    let exe = Exe::open()?;
    if protection(&exe.fd).is_some() {
        return Ok(exe.fd);
    }
    match cached(&exe) {
        Ok(Some(fd)) => return Ok(fd),
        Ok(None) => {}
        Err(e) => tracing::debug!("no cached sealed copy: {e}"),
    }
    match overlay_clone(&exe, true) {
        Ok(fd) => Ok(fd),
        Err(overlay) => memfd_clone(&exe.fd).map_err(|memfd| SealedError::NoCopy {
            overlay: Box::new(overlay),
            memfd: Box::new(memfd),
        }),
    }
}

/// This process's binary: opened, its path, and its key in [`CACHE_DIR`]
/// (device, inode, size and mtime), read once.
struct Exe {
    fd: OwnedFd,
    path: std::path::PathBuf,
    key: String,
}

impl Exe {
    fn open() -> Result<Exe, SealedError> {
        let fd = rustix::fs::open(
            "/proc/self/exe",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(SealedError::OpenSelf)?;
        let path = std::fs::read_link("/proc/self/exe").map_err(SealedError::ReadLink)?;
        let st = rustix::fs::fstat(&fd).map_err(SealedError::StatSelf)?;
        let key = format!(
            "{:x}-{:x}-{:x}-{}.{}",
            st.st_dev, st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec
        );
        Ok(Exe { fd, path, key })
    }

    fn name(&self) -> Result<&std::ffi::OsStr, SealedError> {
        self.path
            .file_name()
            .ok_or_else(|| SealedError::NoFileName(self.path.clone()))
    }
}

/// Where read-only overlay clones stay mounted between amphi processes
/// (root's only), one per binary: `<key>/` and the empty lower layer
/// `empty/`. A fresh overlay per container start would cost a mount and
/// the page faults of a cold binary each time; the kept one is mounted
/// once. Nothing can make it writable (no upper layer), and containers
/// never see it (their root is pivoted away from the host's mounts).
pub const CACHE_DIR: &str = "/run/amphi-sealed";

/// The kept clone of `exe`, if there is one and it is what it must be.
fn cached(exe: &Exe) -> Result<Option<OwnedFd>, SealedError> {
    let p = Path::new(CACHE_DIR).join(&exe.key).join(exe.name()?);
    let fd = match rustix::fs::open(
        &p,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(SealedError::Cache {
                path: p,
                source: e.into(),
            })
        }
    };
    let (a, b) = (
        rustix::fs::fstat(&exe.fd).map_err(SealedError::Stat)?,
        rustix::fs::fstat(&fd).map_err(SealedError::Stat)?,
    );
    let same =
        a.st_size == b.st_size && a.st_mtime == b.st_mtime && a.st_mtime_nsec == b.st_mtime_nsec;
    if protection(&fd) == Some(Protection::Overlay) && same {
        Ok(Some(fd))
    } else {
        Err(SealedError::NotAClone(p))
    }
}

/// Unmounts the kept clones of other binaries than this one (older builds
/// or versions of amphi; each pins its binary). For `amphi gc`.
pub fn sweep() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(exe) = Exe::open() else { return out };
    let current = exe.key;
    let Ok(rd) = std::fs::read_dir(CACHE_DIR) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name == "empty" || name.to_string_lossy() == current {
            continue;
        }
        let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
        if std::fs::remove_dir(e.path()).is_ok() {
            out.push(e.path());
        }
    }
    out
}

/// A read-only overlayfs over the binary's directory (kept mounted in
/// [`CACHE_DIR`] when `keep`); returns the binary opened through it.
fn overlay_clone(exe: &Exe, keep: bool) -> Result<OwnedFd, SealedError> {
    let path = &exe.path;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SealedError::NoDirectory(path.clone()));
    };
    if path.to_string_lossy().ends_with(" (deleted)") {
        return Err(SealedError::Deleted(path.clone()));
    }
    let empty = empty_dir()?;
    let lower = crate::sys::overlay::lowerdir(&[dir, &empty])?;
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(SealedError::Fsopen)?;
    rustix::mount::fsconfig_set_string(&fs, "lowerdir", lower.as_str()).map_err(|source| {
        SealedError::LowerdirConfig {
            lower: lower.clone(),
            source,
        }
    })?;
    rustix::mount::fsconfig_create(&fs).map_err(SealedError::FsCreate)?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(SealedError::Fsmount)?;
    let fd = rustix::fs::openat(
        &mnt,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|source| SealedError::OpenInOverlay {
        name: name.to_string_lossy().into_owned(),
        source,
    })?;
    if protection(&fd) != Some(Protection::Overlay) {
        return Err(SealedError::OverlayWritable);
    }
    if keep {
        // Best effort: a concurrent amphi may be keeping one too (the
        // directory exists then); two read-only clones stacked are
        // harmless, and `amphi gc` unmounts what is not current.
        let target = Path::new(CACHE_DIR).join(&exe.key);
        let r = match std::fs::create_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => rustix::mount::move_mount(
                &mnt,
                "",
                rustix::fs::CWD,
                &target,
                rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(std::io::Error::from),
        };
        if let Err(e) = r {
            tracing::debug!("not keeping the sealed copy at {}: {e}", target.display());
        }
    }
    Ok(fd)
}

/// An empty directory only root can change, the overlay's second layer.
fn empty_dir() -> Result<std::path::PathBuf, SealedError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fn at(path: &Path) -> impl Fn(std::io::Error) -> SealedError + '_ {
        move |source| SealedError::Cache {
            path: path.into(),
            source,
        }
    }
    let cache = Path::new(CACHE_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(cache) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(at(cache)(e)),
    }
    let m = std::fs::symlink_metadata(cache).map_err(at(cache))?;
    if !m.is_dir() || m.uid() != 0 || m.permissions().mode() & 0o077 != 0 {
        return Err(SealedError::CacheNotPrivate(cache.into()));
    }
    let dir = &cache.join("empty");
    match std::fs::DirBuilder::new().mode(0o555).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(at(dir)(e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(at(dir))?;
    if !m.is_dir() || m.uid() != 0 || m.permissions().mode() & 0o022 != 0 {
        return Err(SealedError::EmptyNotRoots(dir.clone()));
    }
    if std::fs::read_dir(dir).map_err(at(dir))?.next().is_some() {
        return Err(SealedError::EmptyNotEmpty(dir.clone()));
    }
    Ok(dir.clone())
}

/// A sealed memfd holding a copy of the binary.
fn memfd_clone(exe: &OwnedFd) -> Result<OwnedFd, SealedError> {
    let mfd = rustix::fs::memfd_create(
        "amphi",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(SealedError::MemfdCreate)?;
    let size = rustix::fs::fstat(exe)
        .map_err(SealedError::StatBinary)?
        .st_size as u64;
    let mut left = size;
    while left > 0 {
        let n = rustix::fs::sendfile(&mfd, exe, None, left as usize).map_err(SealedError::Copy)?;
        if n == 0 {
            return Err(SealedError::Shrank);
        }
        left -= n as u64;
    }
    rustix::fs::fcntl_add_seals(&mfd, all_seals()).map_err(SealedError::Seal)?;
    Ok(mfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_sealed_memfd_cannot_be_written() {
        let exe = rustix::fs::open(
            "/proc/self/exe",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let m = memfd_clone(&exe).unwrap();
        assert_eq!(protection(&m), Some(Protection::Memfd));
        // Reopened for writing through /proc, as an attacker would.
        let p = format!("/proc/self/fd/{}", m.as_raw_fd());
        let w = std::fs::OpenOptions::new().write(true).open(&p);
        match w {
            Ok(f) => {
                use std::io::Write;
                let e = (&f).write_all(b"pwned").unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
        assert_eq!(
            rustix::fs::fstat(&m).unwrap().st_size,
            rustix::fs::fstat(&exe).unwrap().st_size
        );
    }

    #[test]
    fn the_overlay_clone_is_read_only_for_good() {
        let o = overlay_clone(&Exe::open().unwrap(), false).unwrap();
        assert_eq!(protection(&o), Some(Protection::Overlay));
        let p = format!("/proc/self/fd/{}", o.as_raw_fd());
        let e = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        // Where it is kept: read-only, in root's private directory.
        let kept = binary().unwrap();
        assert_eq!(protection(&kept), Some(Protection::Overlay));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mounts.lines().filter(|l| l.contains(CACHE_DIR)) {
            assert!(l.split(' ').nth(5).unwrap().starts_with("ro"), "{l}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(CACHE_DIR).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_plain_file_is_not_protected() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(protection(&f), None);
    }
}
