//! The jail of amphi's VMM, amphi's side of it: the jail's names and
//! limits and its supervisor are `amphi_vmm::jail::host`'s (the
//! `amphi-vmm` executable supervises its own VMM); here, what amphi does
//! with them: sweeping what a killed supervisor left, the protections a
//! run reports, the jail of a run directory, and what the host makes of a
//! seccomp violation. The mechanics inside the VMM process (namespaces,
//! `pivot_root`, dropping privileges, the per-thread seccomp filters) are
//! `amphi_vmm::jail`'s.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use amphi_vmm::jail::host::{
    cgroup_dirs, check_id, create_cgroup, default_uid, jail_dir, make_jail_dir, memory_limit,
    pids_limit, remove_cgroup, CGROUP_PARENT, JAIL_ROOT, MEMORY_OVERHEAD_MIB, PIDS_SPARE, UID_BASE,
    UID_SPAN,
};
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Left behind by a monitor's supervisor that was killed (`kill -9`) before
/// its cleanup, once a minute old: the VMM cgroups with no process, and
/// the jail directories under [`JAIL_ROOT`] without a cgroup. Returns what
/// it removed, for `amphi gc` to say.
pub fn sweep_stale() -> Vec<String> {
    let old = |p: &Path| {
        fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= std::time::Duration::from_secs(60))
    };
    let mut removed = Vec::new();
    let parents: Vec<PathBuf> = match crate::container::cgroups::mode() {
        crate::container::cgroups::Mode::Unified => {
            vec![Path::new(CGROUP_ROOT).join(CGROUP_PARENT)]
        }
        crate::container::cgroups::Mode::Legacy => ["memory", "pids"]
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c).join(CGROUP_PARENT))
            .collect(),
    };
    for parent in parents {
        for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let d = e.path();
            let empty =
                fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
            if d.is_dir() && empty && old(&d) && fs::remove_dir(&d).is_ok() {
                removed.push(format!("the stale VMM cgroup {}", d.display()));
            }
        }
    }
    for e in fs::read_dir(JAIL_ROOT).into_iter().flatten().flatten() {
        let d = e.path();
        let id = e.file_name().to_string_lossy().into_owned();
        let has_cgroup = cgroup_dirs(&id).iter().any(|c| c.exists());
        if !has_cgroup && old(&d) && fs::remove_dir(&d).is_ok() {
            removed.push(format!("the stale VMM jail directory {}", d.display()));
        }
    }
    removed
}

/// Whether `$AMPHI_VMM_NO_JAIL` asks for an unjailed monitor (debugging
/// only; `amphi vmm` reads it as `--no-jail`, the QEMU backend here).
pub fn unjailed() -> bool {
    std::env::var("AMPHI_VMM_NO_JAIL").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// What a hostile guest that breaks `backend` would find on the host: the
/// protections of its monitor, one line each (`amphi explain`, `run
/// --verbose`, the run report).
pub fn protections(backend: &crate::dispatch::backend::Backend) -> Vec<String> {
    use crate::dispatch::backend::Backend;
    if unjailed() {
        return vec![
            "none: the monitor runs UNJAILED ($AMPHI_VMM_NO_JAIL), as root with every capability"
                .into(),
        ];
    }
    let mut lines = vec![format!(
        "user: its own uid and gid ({UID_BASE} + a pid), not root"
    )];
    match backend {
        Backend::Builtin => lines.extend([
            "capabilities: none in any set (bounding included); no_new_privs; not dumpable".into(),
            "filesystem: an empty read-only root (pivot_root); everything it uses opened before".into(),
            "namespaces: its own pid, mount, ipc, uts and net".into(),
            "seccomp: a filter per thread (vCPU, device event loop, control), argument checks on ioctl and mmap/mprotect; a violation kills it (SIGSYS) and is reported".into(),
            format!("cgroup: amphi-vmm/<id>, memory = guest RAM + {MEMORY_OVERHEAD_MIB} MiB + RAM/64, pids = vCPUs + {PIDS_SPARE}"),
        ]),
        Backend::Qemu { .. } => lines.extend([
            "capabilities: none effective or permitted after -runas; bounding set CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT (QEMU 7.2 needs them to switch user and chroot itself); no_new_privs".into(),
            "filesystem: -chroot into an empty read-only directory".into(),
            "namespaces: its own pid, mount, ipc, uts and net".into(),
            format!("seccomp: QEMU's -sandbox {QEMU_SANDBOX} (one list for the whole process, no argument checks)"),
            format!("cgroup: amphi-vmm/<id>, memory = guest RAM + {QEMU_MEMORY_OVERHEAD_MIB} MiB + RAM/64, pids = vCPUs + {QEMU_PIDS_SPARE}"),
        ]),
    }
    lines
}

/// The directory in a run directory that becomes the jailed VMM's root.
pub const RUN_JAIL_DIR: &str = "jail";

/// The jail of the processes that serve the guest of the run in
/// `run_dir` from the host, QEMU and its vhost-user relays: their root
/// (`run_dir/jail`, made empty if it is not there) and the unprivileged
/// uid (and gid) they run as.
pub fn run_jail(run_dir: &Path) -> Result<(PathBuf, u32), String> {
    let dir = run_dir.join(RUN_JAIL_DIR);
    make_jail_dir(&dir)?;
    Ok((dir, default_uid(std::process::id())))
}

/// The jail id of the microVM run in `run_dir`: its name.
pub fn run_jail_id(run_dir: &Path) -> Option<String> {
    let id = run_dir.file_name()?.to_str()?;
    check_id(id).ok().map(|()| id.to_string())
}

/// For the run in `run_dir` whose backend ended with `status`: the error
/// naming the VM and the system call if its VMM was killed by its seccomp
/// filter, with the backend's last lines and the console's.
pub(super) fn violation(
    run_dir: &Path,
    status: Option<std::process::ExitStatus>,
    logs: &super::launch::Logs,
) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    // 159 from the supervisor; or killed by amphi while the supervisor
    // was still removing the VMM's cgroup.
    let status = status?;
    if status.code() != Some(amphi_vmm::jail::EXIT_SECCOMP) && status.signal().is_none() {
        return None;
    }
    logs.backend.settle(std::time::Duration::from_secs(1));
    let (stderr, _) = logs.backend.tail(25);
    let id = run_jail_id(run_dir).unwrap_or_else(|| run_dir.display().to_string());
    let message = violation_error(&id, &stderr)?;
    Some(super::launch::with_logs(message, logs))
}

/// The error for a VMM that ended on a seccomp violation, from the line
/// its `SIGSYS` reporter wrote in `stderr`: names the VM, the thread, and
/// the system call.
pub fn violation_error(vm: &str, stderr: &str) -> Option<String> {
    let v = amphi_vmm::jail::Violation::find(stderr)?;
    let name = crate::container::syscalls::SYSCALLS
        .iter()
        .find(|(_, nr)| *nr == v.syscall)
        .map_or_else(|| "unknown".to_string(), |(n, _)| (*n).to_string());
    Some(format!(
        "the microVM {vm}: its VMM made system call {} ({name}) on its {} thread, which the VMM's seccomp filter forbids; the VMM was stopped (a guest that broke into the VMM, or a VMM bug)",
        v.syscall, v.thread
    ))
}

// ---------------------------------------------------------------------------
// QEMU, the other backend.

/// QEMU's `-sandbox`: its own seccomp filter, installed at startup for
/// every thread. `elevateprivileges=allow` because QEMU 7.2 installs the
/// filter before `-runas` changes the user, and `deny` would kill it at
/// that change; after it QEMU has no capability and no_new_privs, so the
/// set*id calls can no longer raise anything.
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";
/// Memory QEMU may use besides guest RAM (MiB), plus 1/64 of guest RAM:
/// more than amphi's VMM, for QEMU's own heap and, under TCG, its
/// translation cache.
pub const QEMU_MEMORY_OVERHEAD_MIB: u64 = 512;
/// Tasks QEMU's cgroup allows besides one per vCPU (its RCU and I/O
/// worker threads).
pub const QEMU_PIDS_SPARE: u64 = 64;
/// The capabilities QEMU keeps in its bounding set until `-runas` and
/// `-chroot` (CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT): it does both
/// itself and cannot empty its bounding set afterwards.
pub const QEMU_BOUNDING: &[u32] = &[6, 7, 18];

/// QEMU's jail, prepared by amphi before the spawn: the run's user, the
/// empty `jail/` of its run directory as its `-chroot`, its cgroup
/// (entered between fork and exec, so that all it allocates is counted),
/// new pid, mount, ipc, uts and net namespaces, a bounding set of the
/// three capabilities `-runas`/`-chroot` need, and no_new_privs.
///
/// The spawned process forks twice before QEMU is executed: it waits in
/// the host's pid namespace and passes the status on; its child is the
/// init (pid 1) of the new pid namespace and waits for QEMU, its own
/// child (pid 2), to pass the status up. QEMU's `-runas` clears the
/// parent-death signal amphi gives the backend; the init keeps it, and
/// when the init dies the kernel kills everything in its namespace, so
/// QEMU still dies with amphi.
pub struct QemuJail {
    /// The uid and gid QEMU changes to (`-runas`).
    pub uid: u32,
    pub gid: u32,
    /// Its root (`-chroot`).
    pub dir: PathBuf,
    dir_c: std::ffi::CString,
    /// Its cgroup's join files ([`create_cgroup`]), open for QEMU's
    /// process (one thread then) to write "0" to.
    procs: Vec<std::os::fd::OwnedFd>,
}

impl QemuJail {
    /// Prepares the jail of the QEMU of the run in `run_dir`: a guest of
    /// `mem_mib` MiB and `vcpus` vCPUs.
    pub fn prepare(run_dir: &Path, mem_mib: u64, vcpus: u64) -> Result<QemuJail, String> {
        let id = run_jail_id(run_dir)
            .ok_or_else(|| format!("{}: not a run directory name", run_dir.display()))?;
        let (dir, uid) = run_jail(run_dir)?;
        let memory = (mem_mib + QEMU_MEMORY_OVERHEAD_MIB + mem_mib.div_ceil(64)) << 20;
        let procs = create_cgroup(&id, memory, vcpus + QEMU_PIDS_SPARE)?
            .iter()
            .map(|p| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| format!("{}: {e}", p.display()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a NUL byte in the path", dir.display()))?;
        Ok(QemuJail {
            uid,
            gid: uid,
            dir,
            dir_c,
            procs,
        })
    }

    /// QEMU's own arguments for its part.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "-sandbox".into(),
            QEMU_SANDBOX.into(),
            "-runas".into(),
            format!("{}:{}", self.uid, self.gid).into(),
            "-chroot".into(),
            self.dir.clone().into_os_string(),
        ]
    }

    /// What the child does between fork and exec: raw system calls only
    /// (it is a fork of a threaded process). Returns only in QEMU's
    /// process (see the type's documentation); the two waiting processes
    /// end here with QEMU's exit status (128 + N for signal N).
    pub fn in_child(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let check = |rc: libc::c_int| {
            if rc == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: raw system calls on descriptors and C strings we own;
        // nothing allocates. The forks are raw clones: the waiting
        // processes make raw calls only and never return into std.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWPID))?;
            // A pipe whose write end the host-side waiter holds: the init
            // sees end of file if the waiter died before it armed its
            // parent-death signal.
            let mut alive = [0; 2];
            check(libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC))?;
            let init = fork_raw()?;
            if init != 0 {
                // The waiter in the host's pid namespace. Nothing of amphi's
                // stays open here (amphi's spawn reads its exec-error pipe
                // to the end).
                libc::close(alive[0]);
                close_above(2, alive[1]);
                libc::_exit(wait_status(init));
            }
            libc::close(alive[1]);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            let mut pfd = libc::pollfd {
                fd: alive[0],
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) != 0 {
                libc::_exit(1);
            }
            let qemu = fork_raw()?;
            if qemu != 0 {
                // The namespace's init: when it dies, QEMU dies.
                close_above(2, alive[0]);
                libc::_exit(wait_status(qemu));
            }
            libc::close(alive[0]);
            for fd in &self.procs {
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET,
            ))?;
            amphi_vmm::jail::lockdown::seal_jail_dir(&self.dir_c)?;
            let name = b"amphi-qemu";
            check(libc::sethostname(name.as_ptr().cast(), name.len()))?;
            for cap in 0..64u32 {
                if QEMU_BOUNDING.contains(&cap) {
                    continue;
                }
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                    if cap > 0 && *libc::__errno_location() == libc::EINVAL {
                        break;
                    }
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// A fork by the raw clone call (no glibc fork handlers): 0 in the child.
///
/// # Safety
/// The child must make raw system calls only, or execute a program.
unsafe fn fork_raw() -> io::Result<libc::pid_t> {
    // SAFETY: a fork-like clone (no shared memory, SIGCHLD to the parent).
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid as libc::pid_t)
    }
}

/// Closes every descriptor above `low` except `keep`.
fn close_above(low: libc::c_int, keep: libc::c_int) {
    let keep = keep as libc::c_uint;
    let low = low as libc::c_uint;
    // SAFETY: close_range on descriptors of this process (a fork that
    // makes raw calls only).
    unsafe {
        if keep > low + 1 {
            libc::syscall(libc::SYS_close_range, low + 1, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
}

/// Waits for child `pid` (raw calls); its exit status, or 128 + the signal
/// that killed it.
fn wait_status(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protections_are_said_per_backend() {
        use crate::dispatch::backend::Backend;
        let builtin = protections(&Backend::Builtin).join("\n");
        let qemu = protections(&Backend::Qemu { kvm: false }).join("\n");
        if unjailed() {
            assert!(builtin.contains("UNJAILED") && qemu.contains("UNJAILED"));
            return;
        }
        for text in [&builtin, &qemu] {
            for head in [
                "user:",
                "capabilities:",
                "filesystem:",
                "namespaces:",
                "seccomp:",
                "cgroup:",
            ] {
                assert!(text.contains(head), "{head} missing: {text}");
            }
        }
        assert!(builtin.contains("a filter per thread") && builtin.contains("+ 64 MiB"));
        assert!(qemu.contains(QEMU_SANDBOX) && qemu.contains("CAP_SYS_CHROOT"));
    }

    #[test]
    fn violations_name_the_vm_and_the_call() {
        let err = "amphi vmm: seccomp: the vcpu0 thread made system call 59, which its filter forbids; the VMM is stopped\n";
        let m = violation_error("abc123", err).unwrap();
        assert!(
            m.starts_with(
                "the microVM abc123: its VMM made system call 59 (execve) on its vcpu0 thread"
            ),
            "{m}"
        );
        assert_eq!(violation_error("abc123", "amphi vmm: guest reset"), None);
    }
}
