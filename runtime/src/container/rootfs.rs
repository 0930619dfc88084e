//! The container's filesystem view, built inside its new mount namespace:
//! the root (an overlay of image layers, or the bundle's rootfs), the spec's
//! mounts, /dev, then pivot_root, masked and read-only paths.
//!
//! Mount targets are created and opened with `openat2(RESOLVE_IN_ROOT)` and
//! mounted through `/proc/self/fd/N`, so a symlink planted in the image can
//! never redirect a mount outside the rootfs.

use super::effects::Effects;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::MountPropagationFlags;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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

type Result<T> = std::result::Result<T, RootfsError>;

/// A step of building the container's filesystem view failed. Each names
/// the path (in the container, or the rootfs on the host) and the step.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("path {0:?} contains \"..\"")]
    DotDot(PathBuf),
    #[error("path {0:?} is not a Linux path")]
    NotLinux(PathBuf),
    #[error("too many levels of symbolic links creating {0:?} in the rootfs")]
    SymlinkLoop(PathBuf),
    #[error("opening {path:?} in the rootfs: {source}")]
    Open { path: PathBuf, source: Errno },
    #[error("creating {path:?} in the rootfs: {source}")]
    Create { path: PathBuf, source: Errno },
    #[error("opening the rootfs: {0}")]
    OpenRootDir(#[source] Errno),
    #[error("rootfs {}: {source}", path.display())]
    Rootfs { path: PathBuf, source: Errno },
    #[error("linux.rootfsPropagation: unknown value {0:?}")]
    UnknownRootPropagation(String),
    #[error("making every mount a slave: {0}")]
    AllSlaves(#[source] Errno),
    #[error("the image overlay on {}: {source}", rootfs.display())]
    OverlayOptions {
        rootfs: PathBuf,
        source: crate::sys::overlay::OverlayError,
    },
    #[error("mounting the image overlay on {}: {source}", rootfs.display())]
    Overlay { rootfs: PathBuf, source: Errno },
    #[error("bind mounting rootfs {}: {source}", rootfs.display())]
    BindRootfs { rootfs: PathBuf, source: Errno },
    #[error("making the rootfs private: {0}")]
    RootfsPrivate(#[source] Errno),
    #[error("setting linux.rootfsPropagation on /: {0}")]
    RootPropagation(#[source] Errno),
    #[error("mount {}: a {fstype} filesystem cannot go on the root", dest.display())]
    OnTheRoot { dest: PathBuf, fstype: String },
    #[error("mount {}: opening its parent in the rootfs: {source}", dest.display())]
    OpenParent { dest: PathBuf, source: Errno },
    #[error(
        "mount {}: {} in the rootfs; a {fstype} filesystem must be mounted on an ordinary directory",
        dest.display(),
        if *symlink { "a symbolic link" } else { "not a directory" }
    )]
    NotOrdinaryDir {
        dest: PathBuf,
        symlink: bool,
        fstype: String,
    },
    #[error("mount {}: {source}", dest.display())]
    Stat { dest: PathBuf, source: Errno },
    #[error(
        "mount {}: recursive attributes (mount_setattr set {set:#x} clear {clr:#x}): {source}",
        dest.display()
    )]
    RecursiveAttrs {
        dest: PathBuf,
        set: u64,
        clr: u64,
        source: Errno,
    },
    #[error("mount {}: bind source {}: {source}", dest.display(), from.display())]
    BindSource {
        dest: PathBuf,
        from: PathBuf,
        source: std::io::Error,
    },
    #[error("mount {}: bind {}: {source}", dest.display(), from.display())]
    Bind {
        dest: PathBuf,
        from: PathBuf,
        source: Errno,
    },
    #[error("mount {}: remount with flags {flags:#x}: {source}", dest.display())]
    Remount {
        dest: PathBuf,
        flags: libc::c_ulong,
        source: Errno,
    },
    #[error("mount {}: propagation: {source}", dest.display())]
    Propagation { dest: PathBuf, source: Errno },
    #[error("mount {}: no type and no bind option", dest.display())]
    NoType { dest: PathBuf },
    #[error("mount {} (type {fstype}, options {data:?}): {source}", dest.display())]
    Mount {
        dest: PathBuf,
        fstype: String,
        data: String,
        source: Errno,
    },
    #[error("device {}: {source}", path.display())]
    Device { path: PathBuf, source: Errno },
    #[error("device {}: no file name", path.display())]
    DeviceName { path: PathBuf },
    #[error("device {}: bind from host: {source}", path.display())]
    DeviceBind { path: PathBuf, source: Errno },
    #[error("/dev: {0}")]
    Dev(#[source] Errno),
    #[error("/dev/{link}: {source}")]
    DevLink { link: &'static str, source: Errno },
    #[error("chdir {}: {source}", path.display())]
    Chdir { path: PathBuf, source: Errno },
    #[error("pivot_root: {0}")]
    PivotRoot(#[source] Errno),
    #[error("making the old root a slave: {0}")]
    OldRootSlave(#[source] Errno),
    #[error("detaching the old root: {0}")]
    DetachOldRoot(#[source] Errno),
    #[error("masking {path}: {source}")]
    Mask { path: String, source: Errno },
    #[error("read-only {path}: {source}")]
    ReadOnly { path: String, source: Errno },
    #[error("statvfs /: {0}")]
    StatvfsRoot(#[source] Errno),
    #[error("remounting / read-only (flags {flags:#x}): {source}")]
    ReadOnlyRoot { flags: libc::c_ulong, source: Errno },
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
            Component::ParentDir => return Err(RootfsError::DotDot(p.into())),
            Component::Prefix(_) => return Err(RootfsError::NotLinux(p.into())),
        }
    }
    Ok(out)
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Opens (creating as needed) `path` inside `root`: a directory, or an empty
/// file when `file` is set. Returns an `O_PATH` descriptor to mount on.
pub fn make_target(fx: &impl Effects, root: &OwnedFd, path: &Path, file: bool) -> Result<OwnedFd> {
    make_target_depth(fx, root, path, file, 0)
}

fn make_target_depth(
    fx: &impl Effects,
    root: &OwnedFd,
    path: &Path,
    file: bool,
    depth: u32,
) -> Result<OwnedFd> {
    if depth > 40 {
        return Err(RootfsError::SymlinkLoop(path.into()));
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
            Err(source) => return Err(RootfsError::Open { path: cur, source }),
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
        .map_err(|source| RootfsError::Open {
            path: parent.clone(),
            source,
        })?;
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
            return make_target_depth(fx, root, &normalize(&resolved), file, depth + 1);
        }
        let made = if last && file {
            fx.create_file_at(pfd.as_fd(), name, Mode::from_raw_mode(0o644))
        } else {
            fx.mkdirat(pfd.as_fd(), name, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(source) => return Err(RootfsError::Create { path: cur, source }),
        }
        if last {
            return crate::sys::io::openat2(
                root,
                &cur,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            )
            .map_err(|source| RootfsError::Open { path: cur, source });
        }
    }
    // The root itself.
    rustix::fs::openat(root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(RootfsError::OpenRootDir)
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
        Some(other) => return Err(RootfsError::UnknownRootPropagation(other.into())),
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
pub fn prepare_root(fx: &impl Effects, spec: &Spec, rootfs: &Path) -> Result<()> {
    let configured = root_propagation(spec)?;
    fx.propagate(
        Path::new("/"),
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(RootfsError::AllSlaves)?;
    let ann = spec.annotations().clone().unwrap_or_default();
    match (
        ann.get(OVERLAY_LOWER),
        ann.get(OVERLAY_UPPER),
        ann.get(OVERLAY_WORK),
    ) {
        (Some(lower), Some(upper), Some(work)) => {
            let lowers = crate::sys::overlay::split_lowerdir(lower);
            let upper_work = (Path::new(upper), Path::new(work));
            let opts =
                crate::sys::overlay::options(&lowers, Some(upper_work)).map_err(|source| {
                    RootfsError::OverlayOptions {
                        rootfs: rootfs.into(),
                        source,
                    }
                })?;
            fx.mount("overlay", &rootfs.to_string_lossy(), "overlay", 0, &opts)
                .map_err(|source| RootfsError::Overlay {
                    rootfs: rootfs.into(),
                    source,
                })?;
        }
        _ => {
            fx.bind(rootfs, rootfs, true)
                .map_err(|source| RootfsError::BindRootfs {
                    rootfs: rootfs.into(),
                    source,
                })?;
        }
    }
    if configured.is_none() {
        // Without a rootfsPropagation, not even the host's later mounts
        // reach the container's root.
        fx.propagate(rootfs, MountPropagationFlags::PRIVATE)
            .map_err(RootfsError::RootfsPrivate)?;
    }
    Ok(())
}

/// After pivot_root: gives the container's mounts the spec's
/// `rootfsPropagation`, recursively from "/". "shared" makes them a peer
/// group of their own (still slaves of the host's: nothing goes back).
pub fn apply_root_propagation(fx: &impl Effects, spec: &Spec) -> Result<()> {
    if let Some(flags) = root_propagation(spec)? {
        fx.propagate(Path::new("/"), flags | MountPropagationFlags::REC)
            .map_err(RootfsError::RootPropagation)?;
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
fn mount_v1_hierarchies(fx: &impl Effects, target: &str, flags: libc::c_ulong) {
    let ro = flags | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (name, fstype, opts) in host_cgroup_hierarchies() {
        let dir = format!("{target}/{name}");
        if fx.mkdir(Path::new(&dir)).is_err() {
            continue;
        }
        if fx.mount("cgroup", &dir, &fstype, ro, &opts).is_err() {
            let _ = fx.remove_dir(Path::new(&dir));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let _ = fx.symlink(
                    &link,
                    Path::new(&format!("{target}/{}", e.file_name().to_string_lossy())),
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

/// proc and sysfs go on an ordinary directory only: a symlink (or any
/// other non-directory) in the rootfs at `dest` is refused, as runc
/// refuses it (the CVE-2019-19921 class: a mount redirected through a
/// symlink the image controls). A missing destination is made later.
fn check_ordinary_dir(root: &OwnedFd, dest: &Path, typ: &str) -> Result<()> {
    let r = rel(dest)?;
    let (Some(parent), Some(name)) = (r.parent(), r.file_name()) else {
        return Err(RootfsError::OnTheRoot {
            dest: dest.into(),
            fstype: typ.into(),
        });
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
        Err(source) => {
            return Err(RootfsError::OpenParent {
                dest: dest.into(),
                source,
            })
        }
    };
    match rustix::fs::statat(&pfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let t = rustix::fs::FileType::from_raw_mode(st.st_mode);
            if t == rustix::fs::FileType::Directory {
                Ok(())
            } else {
                Err(RootfsError::NotOrdinaryDir {
                    dest: dest.into(),
                    symlink: t == rustix::fs::FileType::Symlink,
                    fstype: typ.into(),
                })
            }
        }
        Err(Errno::NOENT) => Ok(()),
        Err(source) => Err(RootfsError::Stat {
            dest: dest.into(),
            source,
        }),
    }
}

/// Applies the mount's recursive attributes (`rro`, `rnoexec`, ...) to
/// the mount now at `dest` and every mount below it.
fn apply_rec_attrs(
    fx: &impl Effects,
    root: &OwnedFd,
    dest: &Path,
    opts: &MountOptions,
    file: bool,
) -> Result<()> {
    if !opts.has_rec_attrs() {
        return Ok(());
    }
    // Re-open: the mount's root, not the directory under it.
    let target = make_target(fx, root, dest, file)?;
    fx.mount_setattr(target.as_fd(), opts.attr_set, opts.attr_clr)
        .map_err(|source| RootfsError::RecursiveAttrs {
            dest: dest.into(),
            set: opts.attr_set,
            clr: opts.attr_clr,
            source,
        })
}

/// Mounts one spec mount inside the rootfs.
pub fn do_mount(fx: &impl Effects, root: &OwnedFd, m: &Mount, in_userns: bool) -> Result<()> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let source = m.source().as_deref().unwrap_or(Path::new(""));
    if opts.bind || typ == "bind" {
        return bind_mount(fx, root, dest, source, &opts, in_userns);
    }
    if typ.is_empty() {
        return Err(RootfsError::NoType { dest: dest.into() });
    }
    if matches!(typ, "proc" | "sysfs") {
        check_ordinary_dir(root, dest, typ)?;
    }
    let target = make_target(fx, root, dest, false)?;
    let tpath = fd_path(&target);
    let data = opts.data.join(",");
    let r = match typ {
        "cgroup" | "cgroup2" => mount_cgroup(fx, root, dest, &tpath, typ, opts.flags),
        // sysfs cannot be mounted in a user namespace without a net ns of its own.
        "sysfs" if in_userns => fx
            .mount("sysfs", &tpath, "sysfs", opts.flags, &data)
            .or_else(|_| fx.bind(Path::new("/sys"), Path::new(&tpath), true)),
        t if source.as_os_str().is_empty() => fx.mount(t, &tpath, t, opts.flags, &data),
        t => fx.mount(&source.to_string_lossy(), &tpath, t, opts.flags, &data),
    };
    match r {
        Ok(()) => {}
        // mqueue needs an ipc namespace we own; skip quietly in user namespaces.
        Err(Errno::PERM) if in_userns && typ == "mqueue" => return Ok(()),
        Err(source) => {
            return Err(RootfsError::Mount {
                dest: dest.into(),
                fstype: typ.into(),
                data,
                source,
            })
        }
    }
    if opts.propagation != 0 {
        // Re-open: the old descriptor is the directory under the new mount.
        let target = make_target(fx, root, dest, false)?;
        fx.propagate(Path::new(&fd_path(&target)), propagation(&opts))
            .map_err(|source| RootfsError::Propagation {
                dest: dest.into(),
                source,
            })?;
    }
    apply_rec_attrs(fx, root, dest, &opts, false)
}

/// The mount options' propagation (`rprivate`, `shared`, ...) as flags.
fn propagation(opts: &MountOptions) -> MountPropagationFlags {
    MountPropagationFlags::from_bits_retain(opts.propagation as libc::c_uint)
}

/// A bind mount (`bind`, `rbind`, or type "bind") of `source` at `dest`:
/// then its flags (a remount), propagation and recursive attributes.
fn bind_mount(
    fx: &impl Effects,
    root: &OwnedFd,
    dest: &Path,
    source: &Path,
    opts: &MountOptions,
    in_userns: bool,
) -> Result<()> {
    let meta = std::fs::metadata(source).map_err(|e| RootfsError::BindSource {
        dest: dest.into(),
        from: source.into(),
        source: e,
    })?;
    let file = !meta.is_dir();
    let target = make_target(fx, root, dest, file)?;
    fx.bind(source, Path::new(&fd_path(&target)), opts.recursive)
        .map_err(|e| RootfsError::Bind {
            dest: dest.into(),
            from: source.into(),
            source: e,
        })?;
    // Re-open: the fd now refers to the mount's root.
    let target = make_target(fx, root, dest, file)?;
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
        fx.mount("", &tpath, "", flags, "")
            .map_err(|source| RootfsError::Remount {
                dest: dest.into(),
                flags,
                source,
            })?;
    }
    if opts.propagation != 0 {
        fx.propagate(Path::new(&tpath), propagation(opts))
            .map_err(|source| RootfsError::Propagation {
                dest: dest.into(),
                source,
            })?;
    }
    apply_rec_attrs(fx, root, dest, opts, file)
}

/// A cgroup filesystem at `tpath` (the descriptor path of `dest`).
/// `cgroup2` asks for the unified hierarchy, which a hybrid host has too
/// (with no controllers; the runtime gave the container its own cgroup
/// there, the root of its cgroup namespace). Otherwise, on hybrid and v1
/// hosts: a tmpfs holding each of the host's hierarchies, mounted
/// read-only (as runc does); inside the container's cgroup namespace each
/// shows its own cgroup.
fn mount_cgroup(
    fx: &impl Effects,
    root: &OwnedFd,
    dest: &Path,
    tpath: &str,
    typ: &str,
    flags: libc::c_ulong,
) -> rustix::io::Result<()> {
    if host_cgroup2_only() || (typ == "cgroup2" && host_has_unified()) {
        return fx.mount("cgroup2", tpath, "cgroup2", flags, "");
    }
    let rw = flags & !libc::MS_RDONLY;
    fx.mount("cgroup", tpath, "tmpfs", rw, "mode=755")?;
    // Re-open: the old descriptor is the directory under the new mount.
    if let Ok(tmpfs) = make_target(fx, root, dest, false) {
        let tmpfs = fd_path(&tmpfs);
        mount_v1_hierarchies(fx, &tmpfs, flags);
        let _ = fx.mount(
            "",
            &tmpfs,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | rw,
            "",
        );
    }
    Ok(())
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

/// Creates a device node inside the rootfs (mknod, or a bind mount of the
/// host's node in a user namespace).
pub fn make_device(
    fx: &impl Effects,
    root: &OwnedFd,
    d: &Device<'_>,
    in_userns: bool,
) -> Result<()> {
    let Device {
        path,
        kind,
        major,
        minor,
        mode,
        uid,
        gid,
    } = *d;
    let failed = |source| RootfsError::Device {
        path: path.into(),
        source,
    };
    let r = rel(path)?;
    let parent = r.parent().map(Path::to_path_buf).unwrap_or_default();
    let pfd = make_target(fx, root, &Path::new("/").join(&parent), false)?;
    let pfd = rustix::fs::openat(
        &pfd,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed)?;
    let name = r
        .file_name()
        .ok_or_else(|| RootfsError::DeviceName { path: path.into() })?;
    if in_userns {
        let t = make_target(fx, root, path, true)?;
        return fx
            .bind(path, Path::new(&fd_path(&t)), false)
            .map_err(|source| RootfsError::DeviceBind {
                path: path.into(),
                source,
            });
    }
    let ft = match kind {
        LinuxDeviceType::B => rustix::fs::FileType::BlockDevice,
        LinuxDeviceType::P => rustix::fs::FileType::Fifo,
        _ => rustix::fs::FileType::CharacterDevice,
    };
    let _ = fx.unlinkat(pfd.as_fd(), name);
    let dev = rustix::fs::makedev(major as u32, minor as u32);
    fx.mknodat(
        pfd.as_fd(),
        name,
        ft,
        Mode::from_raw_mode(mode & 0o777),
        dev,
    )
    .map_err(failed)?;
    fx.chmodat(pfd.as_fd(), name, Mode::from_raw_mode(mode & 0o7777))
        .map_err(failed)?;
    fx.chownat(pfd.as_fd(), name, uid, gid).map_err(failed)
}

/// /dev contents: default and spec devices, the standard symlinks.
pub fn setup_dev(fx: &impl Effects, root: &OwnedFd, spec: &Spec, in_userns: bool) -> Result<()> {
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
        make_device(fx, root, &dev, in_userns)?;
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
        make_device(fx, root, &dev, in_userns)?;
    }
    let dev = make_target(fx, root, Path::new("/dev"), false)?;
    let dev = rustix::fs::openat(
        &dev,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(RootfsError::Dev)?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        match fx.symlinkat(target, dev.as_fd(), link) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(source) => return Err(RootfsError::DevLink { link, source }),
        }
    }
    // /dev/ptmx -> pts/ptmx when devpts is mounted with its own instance.
    if rustix::fs::statat(&dev, "pts/ptmx", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        let _ = fx.unlinkat(dev.as_fd(), OsStr::new("ptmx"));
        let _ = fx.symlinkat("pts/ptmx", dev.as_fd(), "ptmx");
    }
    Ok(())
}

/// pivot_root into `rootfs` and detach the old root.
pub fn pivot(rootfs: &Path) -> Result<()> {
    let chdir = |path: &Path| {
        rustix::process::chdir(path).map_err(|source| RootfsError::Chdir {
            path: path.into(),
            source,
        })
    };
    chdir(rootfs)?;
    rustix::process::pivot_root(".", ".").map_err(RootfsError::PivotRoot)?;
    // The old root is stacked on "."; make it private before detaching so
    // the unmount does not propagate to the host.
    rustix::mount::mount_change(
        ".",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(RootfsError::OldRootSlave)?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(RootfsError::DetachOldRoot)?;
    chdir(Path::new("/"))
}

/// Masks paths (after pivot_root): /dev/null over files, an empty read-only
/// tmpfs over directories. Missing paths are fine.
pub fn mask_paths(fx: &impl Effects, paths: &[String]) -> Result<()> {
    for p in paths {
        match std::fs::symlink_metadata(p) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                fx.mount("tmpfs", p, "tmpfs", libc::MS_RDONLY, "size=0k,mode=755")
            }
            Ok(_) => fx.bind(Path::new("/dev/null"), Path::new(p), false),
        }
        .map_err(|source| RootfsError::Mask {
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Makes paths read-only (after pivot_root). Missing paths are fine.
pub fn readonly_paths(fx: &impl Effects, paths: &[String]) -> Result<()> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        let failed = |source| RootfsError::ReadOnly {
            path: p.clone(),
            source,
        };
        fx.bind(Path::new(p), Path::new(p), true).map_err(failed)?;
        fx.mount(
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
            fx.mount(
                "",
                p,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                "",
            )
        })
        .map_err(failed)?;
    }
    Ok(())
}

/// Remounts / read-only (root.readonly), keeping its nosuid, nodev,
/// noexec and access-time mode: in a user namespace those are locked when
/// the rootfs lies on such a mount of the host's (a remount that dropped
/// them would be EPERM), and runc keeps them too.
pub fn readonly_root(fx: &impl Effects) -> Result<()> {
    let st = rustix::fs::statvfs("/").map_err(RootfsError::StatvfsRoot)?;
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked_flags(st.f_flag, 0);
    fx.mount("", "/", "", flags, "")
        .map_err(|source| RootfsError::ReadOnlyRoot { flags, source })
}

/// Opens the rootfs directory.
pub fn open_root(rootfs: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| RootfsError::Rootfs {
        path: rootfs.into(),
        source,
    })
}

#[cfg(test)]
mod recorded_tests;

#[cfg(test)]
mod tests {
    use super::super::effects::Real;
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
                Real.mount(source, target, fstype, libc::MS_NODEV, data),
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
        make_target(&Real, &root, Path::new("/evil/sub/dir"), false).unwrap();
        assert!(dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("sub/dir")
            .is_dir());
        assert!(!outside.path().join("sub").exists());
        make_target(&Real, &root, Path::new("/etc/resolv.conf"), true).unwrap();
        assert!(dir.path().join("etc/resolv.conf").is_file());
        assert!(make_target(&Real, &root, Path::new("/a/../../b"), false).is_err());
    }
}
