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
//! So every command that starts container processes first re-executes
//! itself from a sealed copy of its binary, and only then forks:
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
//!    live amphi process), which is why it is only the fallback.
//!
//! In addition the container process is non-dumpable until it executes
//! the workload (see `launch`), so other processes in the container cannot
//! open its `/proc/PID/exe` or `/proc/PID/mem` at all.

use rustix::fs::{Mode, OFlags, SealFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// Set for the re-executed process to the binary's path on the host, so
/// that it knows where it came from and does not loop when it finds itself
/// unsealed after all; removed from the environment at once.
const GUARD: &str = "_AMPHI_SEALED_EXEC";

/// The host path of the binary this process was re-executed from.
static HOST_BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// amphi's binary as a path on the host: the file it was installed as,
/// also after a re-execution from a sealed copy (whose `/proc/self/exe`
/// names a file in a detached mount or a memfd). For what runs outside
/// containers: the VMM process, the guest's init, `compare`'s runs. What a
/// container may see uses `/proc/self/exe`, the sealed copy.
pub fn host_binary() -> std::path::PathBuf {
    HOST_BINARY
        .get()
        .cloned()
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| "/proc/self/exe".into())
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

/// How this process's own binary is protected.
pub fn self_protection() -> Option<Protection> {
    let fd = rustix::fs::open(
        "/proc/self/exe",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    protection(&fd)
}

/// Re-executes this process from a sealed copy of its binary unless it
/// already runs from one. Returns only when it does (or with an error,
/// when no sealed copy can be made: amphi then refuses to start
/// containers rather than expose its binary).
pub fn ensure() -> Result<(), String> {
    let guarded = match std::env::var_os(GUARD) {
        Some(original) => {
            std::env::remove_var(GUARD);
            let _ = HOST_BINARY.set(original.into());
            true
        }
        None => false,
    };
    if self_protection().is_some() {
        return Ok(());
    }
    if guarded {
        return Err(
            "re-executed from a sealed copy of amphi's binary, but /proc/self/exe is still writable"
                .into(),
        );
    }
    let exe = rustix::fs::open(
        "/proc/self/exe",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening amphi's own binary (/proc/self/exe): {e}"))?;
    let sealed = match overlay_clone() {
        Ok(fd) => fd,
        Err(overlay_err) => memfd_clone(&exe).map_err(|e| {
            format!(
                "cannot make a sealed copy of amphi's binary to start containers from \
                 (read-only overlayfs: {overlay_err}; sealed memfd: {e})"
            )
        })?,
    };
    tracing::debug!(
        protection = ?protection(&sealed),
        "re-executing from a sealed copy of the binary"
    );
    let original =
        std::env::current_exe().map_err(|e| format!("finding amphi's own binary: {e}"))?;
    reexec(&sealed, &original)
}

/// A read-only, detached overlayfs over the binary's directory; returns
/// the binary opened through it.
fn overlay_clone() -> Result<OwnedFd, String> {
    let path = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{}: no directory", path.display()));
    };
    if path.to_string_lossy().ends_with(" (deleted)") {
        return Err(format!("{} was deleted", path.display()));
    }
    let empty = empty_dir()?;
    // overlayfs splits lowerdir on ':' (and takes '\' as an escape).
    let escape = |p: &Path| -> Result<String, String> {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
        Ok(s.replace('\\', "\\\\")
            .replace(':', "\\:")
            .replace(',', "\\,"))
    };
    let lower = format!("{}:{}", escape(dir)?, escape(&empty)?);
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| format!("fsopen overlay: {e}"))?;
    rustix::mount::fsconfig_set_string(&fs, "lowerdir", lower.as_str())
        .map_err(|e| format!("overlay lowerdir={lower}: {e}"))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| format!("creating the overlay: {e}"))?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )
    .map_err(|e| format!("fsmount overlay: {e}"))?;
    let fd = rustix::fs::openat(
        &mnt,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| format!("opening {} in the overlay: {e}", name.to_string_lossy()))?;
    match protection(&fd) {
        Some(Protection::Overlay) => Ok(fd),
        p => Err(format!("the overlay clone is not read-only ({p:?})")),
    }
}

/// An empty directory only root can change, the overlay's second layer.
fn empty_dir() -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = Path::new("/run/amphi-empty");
    match std::fs::DirBuilder::new().mode(0o555).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.is_dir() || m.uid() != 0 || m.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory owned by root and writable only by it",
            dir.display()
        ));
    }
    if std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .next()
        .is_some()
    {
        return Err(format!("{} is not empty", dir.display()));
    }
    Ok(dir.to_path_buf())
}

/// A sealed memfd holding a copy of the binary.
fn memfd_clone(exe: &OwnedFd) -> Result<OwnedFd, String> {
    let mfd = rustix::fs::memfd_create(
        "amphi",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    let size = rustix::fs::fstat(exe)
        .map_err(|e| format!("stat of the binary: {e}"))?
        .st_size as u64;
    let mut left = size;
    while left > 0 {
        let n = rustix::fs::sendfile(&mfd, exe, None, left as usize)
            .map_err(|e| format!("copying the binary into the memfd: {e}"))?;
        if n == 0 {
            return Err("the binary shrank while being copied".into());
        }
        left -= n as u64;
    }
    rustix::fs::fcntl_add_seals(&mfd, all_seals())
        .map_err(|e| format!("sealing the memfd: {e}"))?;
    Ok(mfd)
}

/// Executes `fd` with this process's arguments and environment (plus the
/// loop guard).
fn reexec(fd: &OwnedFd, original: &Path) -> Result<(), String> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_encoded_bytes()).map_err(|_| "an argument has a NUL byte"))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut guard = format!("{GUARD}=").into_bytes();
    guard.extend_from_slice(original.as_os_str().as_encoded_bytes());
    env.push(CString::new(guard).map_err(|_| "the binary's path has a NUL byte")?);
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: execveat with a valid fd, an empty path and AT_EMPTY_PATH;
    // argv and envp are NULL-terminated arrays of C strings that outlive
    // the call. It only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(format!(
        "re-executing amphi from its sealed copy: {}",
        std::io::Error::last_os_error()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let o = overlay_clone().unwrap();
        assert_eq!(protection(&o), Some(Protection::Overlay));
        let p = format!("/proc/self/fd/{}", o.as_raw_fd());
        let e = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        // Not reachable from any path of this mount namespace.
        let target = std::fs::read_link(&p).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains("/run/amphi-empty"),
            "the clone is attached somewhere: {target:?}"
        );
    }

    #[test]
    fn a_plain_file_is_not_protected() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(protection(&f), None);
    }
}
