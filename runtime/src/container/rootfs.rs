//! The container's filesystem view, built inside its new mount namespace:
//! the root (an overlay of image layers, or the bundle's rootfs), the spec's
//! mounts, /dev, then pivot_root, masked and read-only paths.
//!
//! Mount targets are created and opened with `openat2(RESOLVE_IN_ROOT)` and
//! mounted through `/proc/self/fd/N`, so a symlink planted in the image can
//! never redirect a mount outside the rootfs.

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::MountPropagationFlags;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Annotation carrying the overlay lower dirs for `amphi run` containers,
/// top first, as overlayfs' `lowerdir` value ([`crate::sys::overlay::lowerdir`]:
/// `lower1:lower2:...`, ':', ',' and '\' escaped). Its upper and work dirs
/// are `upperdir`/`workdir` next to the rootfs.
pub const OVERLAY_LOWER: &str = "io.amphi.rootfs.lower";
/// Annotation: the overlay's upper directory.
pub const OVERLAY_UPPER: &str = "io.amphi.rootfs.upper";
/// Annotation: the overlay's work directory.
pub const OVERLAY_WORK: &str = "io.amphi.rootfs.work";

type Result<T> = std::result::Result<T, String>;

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Mount flags and data from fstab-style options.
#[derive(Default, Debug)]
pub struct MountOptions {
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// `MS_PRIVATE`/`MS_SHARED`/... (with `MS_REC`), applied after mounting.
    pub propagation: libc::c_ulong,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
    /// Recursive attributes (`rro`, `rnosuid`, ...): `MOUNT_ATTR_*` bits to
    /// set and to clear on the mount and every mount below it, with
    /// mount_setattr(2) and `AT_RECURSIVE`.
    pub attr_set: u64,
    pub attr_clr: u64,
}

/// mount_setattr(2)'s attribute bits (linux/mount.h).
pub mod attr {
    pub const RDONLY: u64 = 0x0000_0001;
    pub const NOSUID: u64 = 0x0000_0002;
    pub const NODEV: u64 = 0x0000_0004;
    pub const NOEXEC: u64 = 0x0000_0008;
    /// The access-time field: one of RELATIME (0), NOATIME, STRICTATIME.
    pub const ATIME_MASK: u64 = 0x0000_0070;
    pub const RELATIME: u64 = 0x0000_0000;
    pub const NOATIME: u64 = 0x0000_0010;
    pub const STRICTATIME: u64 = 0x0000_0020;
    pub const NODIRATIME: u64 = 0x0000_0080;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

impl MountOptions {
    /// Whether a recursive attribute was asked for.
    pub fn has_rec_attrs(&self) -> bool {
        self.attr_set | self.attr_clr != 0
    }

    /// A recursive attribute that is a flag: set (`rnoexec`) or cleared (`rexec`).
    fn rec_flag(&mut self, bit: u64, set: bool) {
        if set {
            self.attr_set |= bit;
            self.attr_clr &= !bit;
        } else {
            self.attr_clr |= bit;
            self.attr_set &= !bit;
        }
    }

    /// A recursive access-time mode: the kernel takes the whole field
    /// (cleared, then one value set), so the last one given wins.
    fn rec_atime(&mut self, mode: u64) {
        self.attr_clr |= attr::ATIME_MASK;
        self.attr_set = (self.attr_set & !attr::ATIME_MASK) | mode;
    }
}

/// Parses mount options the way runc does.
pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut m = MountOptions::default();
    for o in opts {
        match o.as_str() {
            "ro" => m.flags |= libc::MS_RDONLY,
            "rw" => m.flags &= !libc::MS_RDONLY,
            "nosuid" => m.flags |= libc::MS_NOSUID,
            "suid" => m.flags &= !libc::MS_NOSUID,
            "nodev" => m.flags |= libc::MS_NODEV,
            "dev" => m.flags &= !libc::MS_NODEV,
            "noexec" => m.flags |= libc::MS_NOEXEC,
            "exec" => m.flags &= !libc::MS_NOEXEC,
            "sync" => m.flags |= libc::MS_SYNCHRONOUS,
            "async" => m.flags &= !libc::MS_SYNCHRONOUS,
            "dirsync" => m.flags |= libc::MS_DIRSYNC,
            "noatime" => m.flags |= libc::MS_NOATIME,
            "atime" => m.flags &= !libc::MS_NOATIME,
            "nodiratime" => m.flags |= libc::MS_NODIRATIME,
            "diratime" => m.flags &= !libc::MS_NODIRATIME,
            "relatime" => m.flags |= libc::MS_RELATIME,
            "norelatime" => m.flags &= !libc::MS_RELATIME,
            "strictatime" => m.flags |= libc::MS_STRICTATIME,
            "nostrictatime" => m.flags &= !libc::MS_STRICTATIME,
            "mand" => m.flags |= libc::MS_MANDLOCK,
            "nomand" => m.flags &= !libc::MS_MANDLOCK,
            "nosymfollow" => m.flags |= libc::MS_NOSYMFOLLOW,
            "symfollow" => m.flags &= !libc::MS_NOSYMFOLLOW,
            // Recursive attributes (runtime-spec config.md, "mounts").
            "rro" => m.rec_flag(attr::RDONLY, true),
            "rrw" => m.rec_flag(attr::RDONLY, false),
            "rnosuid" => m.rec_flag(attr::NOSUID, true),
            "rsuid" => m.rec_flag(attr::NOSUID, false),
            "rnodev" => m.rec_flag(attr::NODEV, true),
            "rdev" => m.rec_flag(attr::NODEV, false),
            "rnoexec" => m.rec_flag(attr::NOEXEC, true),
            "rexec" => m.rec_flag(attr::NOEXEC, false),
            "rnodiratime" => m.rec_flag(attr::NODIRATIME, true),
            "rdiratime" => m.rec_flag(attr::NODIRATIME, false),
            "rnosymfollow" => m.rec_flag(attr::NOSYMFOLLOW, true),
            "rsymfollow" => m.rec_flag(attr::NOSYMFOLLOW, false),
            "rnoatime" => m.rec_atime(attr::NOATIME),
            "rstrictatime" => m.rec_atime(attr::STRICTATIME),
            // Not noatime / not strictatime: the kernel's default, relatime
            // (runc 1.1 passes these to the kernel as a bare clear, EINVAL).
            "rrelatime" | "ratime" | "rnostrictatime" => m.rec_atime(attr::RELATIME),
            // Clearing relatime (bit value 0) changes nothing, as with runc
            // and crun: the mounts keep their access-time mode.
            "rnorelatime" => {}
            "bind" => m.bind = true,
            "rbind" => {
                m.bind = true;
                m.recursive = true
            }
            "private" => m.propagation |= libc::MS_PRIVATE,
            "rprivate" => m.propagation |= libc::MS_PRIVATE | libc::MS_REC,
            "shared" => m.propagation |= libc::MS_SHARED,
            "rshared" => m.propagation |= libc::MS_SHARED | libc::MS_REC,
            "slave" => m.propagation |= libc::MS_SLAVE,
            "rslave" => m.propagation |= libc::MS_SLAVE | libc::MS_REC,
            "unbindable" => m.propagation |= libc::MS_UNBINDABLE,
            "runbindable" => m.propagation |= libc::MS_UNBINDABLE | libc::MS_REC,
            "defaults" | "tmpcopyup" | "idmap" | "ridmap" => {}
            other => m.data.push(other.to_string()),
        }
    }
    m
}

/// Splits an absolute container path into its normal components, refusing
/// `..` (the kernel-style resolution below handles symlinks).
fn rel(p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err(format!("path {p:?} contains \"..\"")),
            Component::Prefix(_) => return Err(format!("path {p:?} is not a Linux path")),
        }
    }
    Ok(out)
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Opens (creating as needed) `path` inside `root`: a directory, or an empty
/// file when `file` is set. Returns an `O_PATH` descriptor to mount on.
pub fn make_target(root: &OwnedFd, path: &Path, file: bool) -> Result<OwnedFd> {
    make_target_depth(root, path, file, 0)
}

fn make_target_depth(root: &OwnedFd, path: &Path, file: bool, depth: u32) -> Result<OwnedFd> {
    if depth > 40 {
        return Err(format!(
            "too many levels of symbolic links creating {path:?} in the rootfs"
        ));
    }
    let r = rel(path)?;
    let comps: Vec<_> = r.components().collect();
    let mut cur = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match crate::sys::io::openat2(
            root,
            &cur,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => continue,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(err(format!("opening {cur:?} in the rootfs"), e)),
        }
        let parent = cur.parent().map(Path::to_path_buf).unwrap_or_default();
        let pfd = crate::sys::io::openat2(
            root,
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &parent
            },
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )
        .map_err(|e| err(format!("opening {parent:?} in the rootfs"), e))?;
        let name = cur.file_name().expect("normal component");
        // A dangling symlink: create what it points to, inside the root.
        if let Ok(target) = rustix::fs::readlinkat(&pfd, name, Vec::new()) {
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
            let mut resolved = if target.is_absolute() {
                target
            } else {
                Path::new("/").join(&parent).join(target)
            };
            for rest in &comps[i + 1..] {
                resolved.push(rest);
            }
            return make_target_depth(root, &normalize(&resolved), file, depth + 1);
        }
        let made = if last && file {
            rustix::fs::openat(
                &pfd,
                name,
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(err(format!("creating {cur:?} in the rootfs"), e)),
        }
        if last {
            return crate::sys::io::openat2(
                root,
                &cur,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            )
            .map_err(|e| err(format!("opening {cur:?} in the rootfs"), e));
        }
    }
    // The root itself.
    rustix::fs::openat(root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err("opening the rootfs", e))
}

/// Lexically resolves `.` and `..` of an absolute path, clamping at `/`
/// (as the kernel does at the root).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `s` as a C string; a NUL byte (from a bundle's mount, which would be
/// cut short there, dropping options) is EINVAL.
fn c(s: &str) -> rustix::io::Result<CString> {
    CString::new(s).map_err(|_| rustix::io::Errno::INVAL)
}

/// mount(2) with raw `MS_*` flags (rustix has no remount-with-flags).
fn mount_raw(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> rustix::io::Result<()> {
    let (src, tgt, typ, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let opt = |x: &CString, s: &str| {
        if s.is_empty() {
            std::ptr::null()
        } else {
            x.as_ptr()
        }
    };
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let r = unsafe {
        libc::mount(
            opt(&src, source),
            tgt.as_ptr(),
            opt(&typ, fstype),
            flags,
            opt(&dat, data) as *const libc::c_void,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(rustix::io::Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        ))
    }
}

fn propagate(target: &str, flags: libc::c_ulong) -> rustix::io::Result<()> {
    mount_raw("", target, "", flags, "")
}

/// `linux.rootfsPropagation`, as the flags to give the container's root
/// (recursively) once it is in place; `None` when the spec sets none.
fn root_propagation(spec: &Spec) -> Result<Option<MountPropagationFlags>> {
    let flags = match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .as_deref()
    {
        None => return Ok(None),
        Some("shared") | Some("rshared") => MountPropagationFlags::SHARED,
        Some("private") | Some("rprivate") => MountPropagationFlags::PRIVATE,
        Some("unbindable") | Some("runbindable") => MountPropagationFlags::UNBINDABLE,
        Some("slave") | Some("rslave") => MountPropagationFlags::DOWNSTREAM,
        Some(other) => return Err(format!("linux.rootfsPropagation: unknown value {other:?}")),
    };
    Ok(Some(flags))
}

/// Prepares the root: every mount of the new namespace becomes a slave
/// first (nothing done in the container propagates back to the host, and
/// pivot_root refuses a shared parent), then an overlay of image layers or
/// a bind mount of the bundle's rootfs onto itself. The spec's
/// `rootfsPropagation` is applied after pivot_root ([`apply_root_propagation`]):
/// applied here, "unbindable" would forbid the rootfs bind itself and
/// "shared" would make the rootfs bind a peer of the host's mounts.
pub fn prepare_root(spec: &Spec, rootfs: &Path) -> Result<()> {
    let configured = root_propagation(spec)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| err("making every mount a slave", e))?;
    let ann = spec.annotations().clone().unwrap_or_default();
    match (
        ann.get(OVERLAY_LOWER),
        ann.get(OVERLAY_UPPER),
        ann.get(OVERLAY_WORK),
    ) {
        (Some(lower), Some(upper), Some(work)) => {
            let lowers = crate::sys::overlay::split_lowerdir(lower);
            let upper_work = (Path::new(upper), Path::new(work));
            let opts = crate::sys::overlay::options(&lowers, Some(upper_work))
                .map_err(|e| err(format!("the image overlay on {}", rootfs.display()), e))?;
            mount_raw("overlay", &rootfs.to_string_lossy(), "overlay", 0, &opts).map_err(|e| {
                err(
                    format!("mounting the image overlay on {}", rootfs.display()),
                    e,
                )
            })?;
        }
        _ => {
            rustix::mount::mount_bind_recursive(rootfs, rootfs)
                .map_err(|e| err(format!("bind mounting rootfs {}", rootfs.display()), e))?;
        }
    }
    if configured.is_none() {
        // Without a rootfsPropagation, not even the host's later mounts
        // reach the container's root.
        rustix::mount::mount_change(rootfs, MountPropagationFlags::PRIVATE)
            .map_err(|e| err("making the rootfs private", e))?;
    }
    Ok(())
}

/// After pivot_root: gives the container's mounts the spec's
/// `rootfsPropagation`, recursively from "/". "shared" makes them a peer
/// group of their own (still slaves of the host's: nothing goes back).
pub fn apply_root_propagation(spec: &Spec) -> Result<()> {
    if let Some(flags) = root_propagation(spec)? {
        rustix::mount::mount_change("/", flags | MountPropagationFlags::REC)
            .map_err(|e| err("setting linux.rootfsPropagation on /", e))?;
    }
    Ok(())
}

/// Whether the host's /sys/fs/cgroup is a pure cgroup2 hierarchy.
pub fn host_cgroup2_only() -> bool {
    rustix::fs::statfs("/sys/fs/cgroup")
        .map(|s| s.f_type == 0x63677270)
        .unwrap_or(false)
}

/// Whether the host has a cgroup2 hierarchy at /sys/fs/cgroup/unified
/// (a hybrid host).
pub fn host_has_unified() -> bool {
    rustix::fs::statfs("/sys/fs/cgroup/unified")
        .map(|s| s.f_type == 0x63677270)
        .unwrap_or(false)
}

/// The host's cgroup hierarchies under /sys/fs/cgroup, from
/// /proc/self/mountinfo: (directory name, filesystem type, options), e.g.
/// ("memory", "cgroup", "memory"), ("cpu,cpuacct", "cgroup", "cpu,cpuacct"),
/// ("unified", "cgroup2", "").
fn host_cgroup_hierarchies() -> Vec<(String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let name = mount_point.strip_prefix("/sys/fs/cgroup/")?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let super_opts = post.nth(1).unwrap_or("");
            let opts: Vec<&str> = super_opts
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect();
            match fstype {
                "cgroup" => Some((name.to_string(), "cgroup".to_string(), opts.join(","))),
                "cgroup2" => Some((name.to_string(), "cgroup2".to_string(), String::new())),
                _ => None,
            }
        })
        .collect()
}

/// Mounts the host's v1 (and hybrid cgroup2) hierarchies read-only in the
/// tmpfs at `target`, with the host's symlinks (`cpu -> cpu,cpuacct`).
/// Best effort: a hierarchy that cannot be mounted (e.g. in a user
/// namespace) is left out.
fn mount_v1_hierarchies(target: &str, flags: libc::c_ulong) {
    let ro = flags | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (name, fstype, opts) in host_cgroup_hierarchies() {
        let dir = format!("{target}/{name}");
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        if mount_raw("cgroup", &dir, &fstype, ro, &opts).is_err() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let _ = std::os::unix::fs::symlink(
                    link,
                    format!("{target}/{}", e.file_name().to_string_lossy()),
                );
            }
        }
    }
}

/// The `MS_*` flags a remount must carry over from the mount it changes
/// (`st`: its statvfs flags) besides the `wanted` ones: in a user
/// namespace the kernel locks read-only, nosuid, nodev, noexec and the
/// access-time mode of every mount that came from a more privileged one,
/// and refuses (EPERM) a remount that would clear them. The access-time
/// mode is kept only when `wanted` names none.
pub fn locked_flags(st: rustix::fs::StatVfsMountFlags, wanted: libc::c_ulong) -> libc::c_ulong {
    use rustix::fs::StatVfsMountFlags as S;
    let mut keep = 0;
    for (have, f) in [
        (S::RDONLY, libc::MS_RDONLY),
        (S::NOSUID, libc::MS_NOSUID),
        (S::NODEV, libc::MS_NODEV),
        (S::NOEXEC, libc::MS_NOEXEC),
    ] {
        if st.contains(have) {
            keep |= f;
        }
    }
    let atime_modes = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;
    if wanted & (atime_modes | libc::MS_NODIRATIME) == 0 {
        keep |= if st.contains(S::NOATIME) {
            libc::MS_NOATIME
        } else if st.contains(S::RELATIME) {
            libc::MS_RELATIME
        } else {
            libc::MS_STRICTATIME
        };
        if st.contains(S::NODIRATIME) {
            keep |= libc::MS_NODIRATIME;
        }
    }
    keep
}

/// The kernel's `struct mount_attr` (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) with `AT_RECURSIVE` on the mount `fd` is the root of
/// (an `O_PATH` descriptor): sets and clears `MOUNT_ATTR_*` bits on it and
/// on every mount below it.
fn mount_setattr_recursive(fd: &OwnedFd, set: u64, clr: u64) -> rustix::io::Result<()> {
    let a = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a
    // valid, initialised struct of the kernel's layout; the path is an
    // empty C string and `fd` an open descriptor (AT_EMPTY_PATH).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        ))
    }
}

/// proc and sysfs go on an ordinary directory only: a symlink (or any
/// other non-directory) in the rootfs at `dest` is refused, as runc
/// refuses it (the CVE-2019-19921 class: a mount redirected through a
/// symlink the image controls). A missing destination is made later.
fn check_ordinary_dir(root: &OwnedFd, dest: &Path, typ: &str) -> Result<()> {
    let r = rel(dest)?;
    let (Some(parent), Some(name)) = (r.parent(), r.file_name()) else {
        return Err(format!(
            "mount {}: a {typ} filesystem cannot go on the root",
            dest.display()
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let pfd = match crate::sys::io::openat2(
        root,
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(err(
                format!("mount {}: opening its parent in the rootfs", dest.display()),
                e,
            ))
        }
    };
    match rustix::fs::statat(&pfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let t = rustix::fs::FileType::from_raw_mode(st.st_mode);
            if t == rustix::fs::FileType::Directory {
                Ok(())
            } else {
                let what = if t == rustix::fs::FileType::Symlink {
                    "a symbolic link"
                } else {
                    "not a directory"
                };
                Err(format!(
                    "mount {}: {what} in the rootfs; a {typ} filesystem must be mounted on an ordinary directory",
                    dest.display()
                ))
            }
        }
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(format!("mount {}", dest.display()), e)),
    }
}

/// Applies the mount's recursive attributes (`rro`, `rnoexec`, ...) to
/// the mount now at `dest` and every mount below it.
fn apply_rec_attrs(root: &OwnedFd, dest: &Path, opts: &MountOptions, file: bool) -> Result<()> {
    if !opts.has_rec_attrs() {
        return Ok(());
    }
    // Re-open: the mount's root, not the directory under it.
    let target = make_target(root, dest, file)?;
    mount_setattr_recursive(&target, opts.attr_set, opts.attr_clr).map_err(|e| {
        err(
            format!(
                "mount {}: recursive attributes (mount_setattr set {:#x} clear {:#x})",
                dest.display(),
                opts.attr_set,
                opts.attr_clr
            ),
            e,
        )
    })
}

/// Mounts one spec mount inside the rootfs.
pub fn do_mount(root: &OwnedFd, m: &Mount, in_userns: bool) -> Result<()> {
    let dest = m.destination();
    let what = format!("mount {}", dest.display());
    let typ = m.typ().clone().unwrap_or_default();
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let source = m.source().clone().unwrap_or_default();
    if opts.bind || typ == "bind" {
        let meta = std::fs::metadata(&source)
            .map_err(|e| err(format!("{what}: bind source {}", source.display()), e))?;
        let target = make_target(root, dest, !meta.is_dir())?;
        let tpath = fd_path(&target);
        let r = if opts.recursive {
            rustix::mount::mount_bind_recursive(&source, tpath.as_str())
        } else {
            rustix::mount::mount_bind(&source, tpath.as_str())
        };
        r.map_err(|e| err(format!("{what}: bind {}", source.display()), e))?;
        // Re-open: the fd now refers to the mount's root.
        let target = make_target(root, dest, !meta.is_dir())?;
        let tpath = fd_path(&target);
        // A bind mount takes its flags (ro, nosuid, noatime, nosymfollow,
        // ...) only from a remount, of its top mount alone.
        if opts.flags != 0 {
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | opts.flags;
            // Keep locked flags of the source mount (userns) to not get EPERM.
            if in_userns {
                if let Ok(st) = rustix::fs::fstatvfs(&target) {
                    flags |= locked_flags(st.f_flag, opts.flags);
                }
            }
            mount_raw("", &tpath, "", flags, "")
                .map_err(|e| err(format!("{what}: remount with flags {flags:#x}"), e))?;
        }
        if opts.propagation != 0 {
            propagate(&tpath, opts.propagation)
                .map_err(|e| err(format!("{what}: propagation"), e))?;
        }
        return apply_rec_attrs(root, dest, &opts, !meta.is_dir());
    }
    if matches!(typ.as_str(), "proc" | "sysfs") {
        check_ordinary_dir(root, dest, &typ)?;
    }
    let target = make_target(root, dest, false)?;
    let tpath = fd_path(&target);
    let data = opts.data.join(",");
    let r = match typ.as_str() {
        "cgroup" | "cgroup2" => {
            // `cgroup2` asks for the unified hierarchy, which a hybrid host
            // has too (with no controllers; the runtime gave the container
            // its own cgroup there, the root of its cgroup namespace).
            if host_cgroup2_only() || (typ == "cgroup2" && host_has_unified()) {
                mount_raw("cgroup2", &tpath, "cgroup2", opts.flags, "")
            } else {
                // Hybrid/v1 hosts: a tmpfs holding each of the host's
                // hierarchies, mounted read-only (as runc does); inside the
                // container's cgroup namespace each shows its own cgroup.
                let rw = opts.flags & !libc::MS_RDONLY;
                mount_raw("cgroup", &tpath, "tmpfs", rw, "mode=755").map(|()| {
                    // Re-open: the old descriptor is the directory under
                    // the new mount.
                    if let Ok(tmpfs) = make_target(root, dest, false) {
                        let tmpfs = fd_path(&tmpfs);
                        mount_v1_hierarchies(&tmpfs, opts.flags);
                        let _ = mount_raw(
                            "",
                            &tmpfs,
                            "",
                            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | rw,
                            "",
                        );
                    }
                })
            }
        }
        "sysfs" if in_userns => {
            // sysfs cannot be mounted in a user namespace without a net ns of its own.
            mount_raw("sysfs", &tpath, "sysfs", opts.flags, &data)
                .or_else(|_| rustix::mount::mount_bind_recursive("/sys", tpath.as_str()))
        }
        "" => return Err(format!("{what}: no type and no bind option")),
        t => {
            let src = if source.as_os_str().is_empty() {
                t.to_string()
            } else {
                source.to_string_lossy().into_owned()
            };
            mount_raw(&src, &tpath, t, opts.flags, &data)
        }
    };
    match r {
        Ok(()) => {}
        // mqueue needs an ipc namespace we own; skip quietly in user namespaces.
        Err(Errno::PERM) if in_userns && typ == "mqueue" => return Ok(()),
        Err(e) => return Err(err(format!("{what} (type {typ}, options {data:?})"), e)),
    }
    if opts.propagation != 0 {
        // Re-open: the old descriptor is the directory under the new mount.
        let target = make_target(root, dest, false)?;
        propagate(&fd_path(&target), opts.propagation)
            .map_err(|e| err(format!("{what}: propagation"), e))?;
    }
    apply_rec_attrs(root, dest, &opts, false)
}

/// The devices every container gets (runc's list).
pub fn default_devices() -> Vec<(&'static str, u32, u32)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

/// Creates a character device inside the rootfs (mknod, or a bind mount
/// of the host's node in a user namespace).
/// A device node to create.
pub struct Device<'a> {
    pub path: &'a Path,
    pub kind: LinuxDeviceType,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn make_device(root: &OwnedFd, d: &Device<'_>, in_userns: bool) -> Result<()> {
    let Device {
        path,
        kind,
        major,
        minor,
        mode,
        uid,
        gid,
    } = *d;
    let what = format!("device {}", path.display());
    let r = rel(path)?;
    let parent = r.parent().map(Path::to_path_buf).unwrap_or_default();
    let pfd = make_target(root, &Path::new("/").join(&parent), false)?;
    let pfd = rustix::fs::openat(
        &pfd,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(&what, e))?;
    let name = r
        .file_name()
        .ok_or_else(|| format!("{what}: no file name"))?;
    if in_userns {
        let t = make_target(root, path, true)?;
        return rustix::mount::mount_bind(path, fd_path(&t).as_str())
            .map_err(|e| err(format!("{what}: bind from host"), e));
    }
    let ft = match kind {
        LinuxDeviceType::B => rustix::fs::FileType::BlockDevice,
        LinuxDeviceType::P => rustix::fs::FileType::Fifo,
        _ => rustix::fs::FileType::CharacterDevice,
    };
    let _ = rustix::fs::unlinkat(&pfd, name, rustix::fs::AtFlags::empty());
    let dev = rustix::fs::makedev(major as u32, minor as u32);
    rustix::fs::mknodat(&pfd, name, ft, Mode::from_raw_mode(mode & 0o777), dev)
        .map_err(|e| err(&what, e))?;
    rustix::fs::chmodat(
        &pfd,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| err(&what, e))?;
    rustix::fs::chownat(
        &pfd,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| err(&what, e))
}

/// /dev contents: default and spec devices, the standard symlinks.
pub fn setup_dev(root: &OwnedFd, spec: &Spec, in_userns: bool) -> Result<()> {
    let spec_devices: Vec<LinuxDevice> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for (p, maj, min) in default_devices() {
        if spec_devices.iter().any(|d| d.path() == Path::new(p)) {
            continue;
        }
        let dev = Device {
            path: Path::new(p),
            kind: LinuxDeviceType::C,
            major: maj.into(),
            minor: min.into(),
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        make_device(root, &dev, in_userns)?;
    }
    for d in &spec_devices {
        let dev = Device {
            path: d.path(),
            kind: d.typ(),
            major: d.major(),
            minor: d.minor(),
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        };
        make_device(root, &dev, in_userns)?;
    }
    let dev = make_target(root, Path::new("/dev"), false)?;
    let dev = rustix::fs::openat(
        &dev,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("/dev", e))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        match rustix::fs::symlinkat(target, &dev, link) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(err(format!("/dev/{link}"), e)),
        }
    }
    // /dev/ptmx -> pts/ptmx when devpts is mounted with its own instance.
    if rustix::fs::statat(&dev, "pts/ptmx", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        let _ = rustix::fs::unlinkat(&dev, "ptmx", rustix::fs::AtFlags::empty());
        let _ = rustix::fs::symlinkat("pts/ptmx", &dev, "ptmx");
    }
    Ok(())
}

/// pivot_root into `rootfs` and detach the old root.
pub fn pivot(rootfs: &Path) -> Result<()> {
    rustix::process::chdir(rootfs).map_err(|e| err(format!("chdir {}", rootfs.display()), e))?;
    rustix::process::pivot_root(".", ".").map_err(|e| err("pivot_root", e))?;
    // The old root is stacked on "."; make it private before detaching so
    // the unmount does not propagate to the host.
    propagate(".", libc::MS_SLAVE | libc::MS_REC)
        .map_err(|e| err("making the old root a slave", e))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| err("detaching the old root", e))?;
    rustix::process::chdir("/").map_err(|e| err("chdir /", e))
}

/// Masks paths (after pivot_root): /dev/null over files, an empty read-only
/// tmpfs over directories. Missing paths are fine.
pub fn mask_paths(paths: &[String]) -> Result<()> {
    for p in paths {
        match std::fs::symlink_metadata(p) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                mount_raw("tmpfs", p, "tmpfs", libc::MS_RDONLY, "size=0k,mode=755")
            }
            Ok(_) => rustix::mount::mount_bind("/dev/null", p.as_str()),
        }
        .map_err(|e| err(format!("masking {p}"), e))?;
    }
    Ok(())
}

/// Makes paths read-only (after pivot_root). Missing paths are fine.
pub fn readonly_paths(paths: &[String]) -> Result<()> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        rustix::mount::mount_bind_recursive(p.as_str(), p.as_str())
            .map_err(|e| err(format!("read-only {p}"), e))?;
        mount_raw(
            "",
            p,
            "",
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            "",
        )
        .or_else(|_| {
            mount_raw(
                "",
                p,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                "",
            )
        })
        .map_err(|e| err(format!("read-only {p}"), e))?;
    }
    Ok(())
}

/// Remounts / read-only (root.readonly), keeping its nosuid, nodev,
/// noexec and access-time mode: in a user namespace those are locked when
/// the rootfs lies on such a mount of the host's (a remount that dropped
/// them would be EPERM), and runc keeps them too.
pub fn readonly_root() -> Result<()> {
    let st = rustix::fs::statvfs("/").map_err(|e| err("statvfs /", e))?;
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(st.f_flag, 0);
    mount_raw("", "/", "", flags, "")
        .map_err(|e| err(format!("remounting / read-only (flags {flags:#x})"), e))
}

/// Opens the rootfs directory.
pub fn open_root(rootfs: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(format!("rootfs {}", rootfs.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NUL byte would cut the string short at mount(2) (dropping options,
    /// or mounting on another path): refused before the call, so this
    /// holds without root too (a mount attempt would be EPERM, not EINVAL).
    #[test]
    fn mount_refuses_nul_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_str().unwrap();
        let nul_target = format!("{target}\0/elsewhere");
        for (source, target, fstype, data) in [
            ("tmpfs", nul_target.as_str(), "tmpfs", ""),
            ("tmpfs", target, "tmpfs", "size=1m\0,exec"),
            ("tmp\0fs", target, "tmpfs", ""),
            ("tmpfs", target, "tmp\0fs", ""),
        ] {
            assert_eq!(
                mount_raw(source, target, fstype, libc::MS_NODEV, data),
                Err(rustix::io::Errno::INVAL),
                "{source:?} {target:?} {fstype:?} {data:?}"
            );
        }
    }

    #[test]
    fn options_parse_like_runc() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "mode=755".into(),
            "rbind".into(),
        ]);
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_RDONLY);
        assert!(o.bind && o.recursive);
        assert_eq!(o.data, vec!["mode=755"]);
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert_eq!(o.flags & libc::MS_RDONLY, 0);
    }

    #[test]
    fn plain_atime_and_symfollow_options_are_flags() {
        let o = parse_options(&["noatime".into(), "nosymfollow".into()]);
        assert_eq!(o.flags, libc::MS_NOATIME | libc::MS_NOSYMFOLLOW);
        assert!(o.data.is_empty());
        let o = parse_options(&["strictatime".into(), "nodiratime".into()]);
        assert_eq!(o.flags, libc::MS_STRICTATIME | libc::MS_NODIRATIME);
        let o = parse_options(&["nosymfollow".into(), "symfollow".into()]);
        assert_eq!(o.flags, 0);
        assert!(!o.has_rec_attrs());
    }

    #[test]
    fn recursive_options_are_mount_setattr_bits() {
        let o = parse_options(&[
            "rbind".into(),
            "rro".into(),
            "rnosuid".into(),
            "rnodev".into(),
            "rnoexec".into(),
            "rnosymfollow".into(),
        ]);
        assert_eq!(o.flags, 0, "no mount(2) flag");
        assert!(o.data.is_empty(), "nothing goes to the filesystem");
        assert_eq!(
            o.attr_set,
            attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC | attr::NOSYMFOLLOW
        );
        assert_eq!(o.attr_clr, 0);
        // The opposite clears, the last one wins.
        let o = parse_options(&["rro".into(), "rrw".into(), "rexec".into()]);
        assert_eq!((o.attr_set, o.attr_clr), (0, attr::RDONLY | attr::NOEXEC));
        // Access time: the whole field is cleared and one mode set.
        let o = parse_options(&["rnoatime".into(), "rnodiratime".into()]);
        assert_eq!(o.attr_set, attr::NOATIME | attr::NODIRATIME);
        assert_eq!(o.attr_clr, attr::ATIME_MASK);
        let o = parse_options(&["rnoatime".into(), "rstrictatime".into()]);
        assert_eq!(
            (o.attr_set, o.attr_clr),
            (attr::STRICTATIME, attr::ATIME_MASK)
        );
        for back in ["ratime", "rrelatime", "rnostrictatime"] {
            let o = parse_options(&["rstrictatime".into(), back.into()]);
            assert_eq!(
                (o.attr_set, o.attr_clr),
                (attr::RELATIME, attr::ATIME_MASK),
                "{back}"
            );
            assert!(o.has_rec_attrs(), "{back}");
        }
        let o = parse_options(&["rnorelatime".into()]);
        assert!(!o.has_rec_attrs() && o.data.is_empty());
    }

    #[test]
    fn a_remount_keeps_the_locked_flags() {
        use rustix::fs::StatVfsMountFlags as S;
        // A host tmpfs: nosuid, nodev, noatime.
        let st = S::NOSUID | S::NODEV | S::NOATIME;
        assert_eq!(
            locked_flags(st, libc::MS_RDONLY),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME
        );
        // The spec names an access-time mode: that one is asked for.
        assert_eq!(
            locked_flags(st, libc::MS_STRICTATIME),
            libc::MS_NOSUID | libc::MS_NODEV
        );
        assert_eq!(locked_flags(S::RELATIME, 0), libc::MS_RELATIME);
        assert_eq!(
            locked_flags(S::RDONLY | S::NOEXEC | S::NODIRATIME, 0),
            libc::MS_RDONLY | libc::MS_NOEXEC | libc::MS_STRICTATIME | libc::MS_NODIRATIME
        );
    }

    #[test]
    fn targets_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let root = open_root(dir.path()).unwrap();
        make_target(&root, Path::new("/evil/sub/dir"), false).unwrap();
        assert!(dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("sub/dir")
            .is_dir());
        assert!(!outside.path().join("sub").exists());
        make_target(&root, Path::new("/etc/resolv.conf"), true).unwrap();
        assert!(dir.path().join("etc/resolv.conf").is_file());
        assert!(make_target(&root, Path::new("/a/../../b"), false).is_err());
    }
}
