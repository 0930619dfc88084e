//! The process-wide part of the jail, entered once everything the VM needs
//! is open and created: new mount, ipc, uts and net namespaces, an empty
//! read-only root (`pivot_root`; from an initramfs root, which cannot be
//! pivoted away, the jail is moved over `/` and chrooted into), an unprivileged uid and gid with no supplementary
//! groups, no capability in any set (bounding and ambient included),
//! no_new_privs, not dumpable.
//!
//! The pid namespace is the caller's part: a process cannot enter a new
//! one itself (only its children do), so `amphi vmm` forks into it before
//! it opens anything.
//!
//! Call [`enter`] from the only thread of the process: capabilities and
//! the bounding set are per thread, and threads made afterwards inherit
//! the dropped sets.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Result, VmmError};

/// Where and as whom the VMM ends up.
#[derive(Clone, Debug)]
pub struct Lockdown<'a> {
    /// The jail directory: an existing, empty directory that becomes the
    /// root (bind-mounted read-only, nosuid, nodev, noexec).
    pub root: &'a Path,
    /// The uid to run as (not 0).
    pub uid: u32,
    /// The gid to run as (not 0).
    pub gid: u32,
    /// Re-armed after the uid change (which clears it): the signal the
    /// VMM gets when its parent dies.
    pub parent_death_signal: Option<libc::c_int>,
}

fn fail(step: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |e| VmmError::Jail {
        step,
        detail: e.to_string(),
    }
}

/// `rc == -1` as the OS error.
fn check(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In a mount namespace of the caller's own: makes every mount private
/// (nothing propagates back to the host), then bind-mounts `dir` onto
/// itself read-only, nosuid, nodev and noexec: the jail root both
/// monitors get (amphi's VMM pivots into it, QEMU chroots into it).
/// Only mount(2) calls and errno, so it is safe between fork and exec.
pub fn seal_jail_dir(dir: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: mount(2) with valid C strings or null pointers throughout.
    unsafe {
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(
            libc::mount(
                dir.as_ptr(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            )
            .into(),
        )
    }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

/// Enters the jail described by `l` (see the module documentation).
pub fn enter(l: &Lockdown<'_>) -> Result<()> {
    if l.uid == 0 || l.gid == 0 {
        return Err(VmmError::Jail {
            step: "choosing the VMM's user",
            detail: format!(
                "uid {} gid {}: the jail never runs the VMM as root",
                l.uid, l.gid
            ),
        });
    }
    namespaces().map_err(fail("unsharing the mount, ipc, uts and net namespaces"))?;
    new_root(l.root).map_err(|e| VmmError::Jail {
        step: "pivot_root into the jail",
        detail: format!("{}: {e}", l.root.display()),
    })?;
    drop_privileges(l.uid, l.gid)?;
    if let Some(sig) = l.parent_death_signal {
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }.into())
            .map_err(fail("re-arming the parent-death signal"))?;
    }
    Ok(())
}

fn namespaces() -> io::Result<()> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare with flags only.
    check(unsafe { libc::unshare(flags) }.into())?;
    let name = b"amphi-vmm";
    // SAFETY: a valid buffer and its length; the uts namespace is ours.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into())
}

/// Makes `root` (an empty directory) the root: every mount private (none
/// of ours reaches the host), `root` bind-mounted onto itself read-only,
/// `pivot_root` there, the old root detached.
fn new_root(root: &Path) -> io::Result<()> {
    let root_c = cstr(root)?;
    let slash = c"/";
    let dot = c".";
    seal_jail_dir(&root_c)?;
    // SAFETY: chdir, pivot_root and mount(2) with valid C strings or null
    // pointers throughout.
    unsafe {
        check(libc::chdir(root_c.as_ptr()).into())?;
        // pivot_root(".", "."): the old root ends up on top of the new
        // one, and is detached right away.
        let pivoted = check(libc::syscall(
            libc::SYS_pivot_root,
            dot.as_ptr(),
            dot.as_ptr(),
        ));
        match pivoted {
            Ok(()) => check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH).into())?,
            // The root is the initramfs (rootfs), which cannot be pivoted
            // away (a VMM started from an initramfs, as in the nested
            // lab): move the jail over "/" and chroot into it, as
            // switch_root does. What lies beneath is out of reach without
            // CAP_SYS_CHROOT and the chroot call, both gone below.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                check(
                    libc::mount(
                        dot.as_ptr(),
                        slash.as_ptr(),
                        std::ptr::null(),
                        libc::MS_MOVE,
                        std::ptr::null(),
                    )
                    .into(),
                )?;
                check(libc::chroot(dot.as_ptr()).into())?;
            }
            Err(e) => return Err(e),
        }
        check(libc::chdir(slash.as_ptr()).into())?;
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    // SAFETY: setgroups with an empty list; needs CAP_SETGID, which we
    // still have.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }.into())
        .map_err(fail("clearing the supplementary groups"))?;
    // SAFETY: integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) }.into()).map_err(|e| VmmError::Jail {
        step: "changing to the jail's gid",
        detail: format!("gid {gid}: {e}"),
    })?;
    // The bounding set, while CAP_SETPCAP is still ours: every capability
    // this kernel knows (prctl says EINVAL past the last one).
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(VmmError::Jail {
                step: "dropping the capability bounding set",
                detail: format!("capability {cap}: {e}"),
            });
        }
    }
    let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0) };
    check(rc.into()).map_err(fail("clearing the ambient capabilities"))?;
    // SAFETY: integer arguments. Leaving uid 0 clears the permitted and
    // effective sets (no SECBIT_KEEP_CAPS).
    check(unsafe { libc::setresuid(uid, uid, uid) }.into()).map_err(|e| VmmError::Jail {
        step: "changing to the jail's uid",
        detail: format!("uid {uid}: {e}"),
    })?;
    // And the inheritable set, explicitly: nothing left anywhere.
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset with a valid header and two data structs (version 3).
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
        .map_err(fail("clearing the capability sets"))?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())
        .map_err(fail("setting no_new_privs"))?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }.into())
        .map_err(fail("making the process non-dumpable"))?;
    Ok(())
}
