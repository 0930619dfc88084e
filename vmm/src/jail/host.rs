//! The jail of amphi's VMM, the host's side of it: the per-VM user, the
//! jail directory, the VMM's cgroup, the pid namespace (a fork before the
//! VMM opens anything) and its supervisor. Used by the `amphi-vmm`
//! executable (which supervises its own VMM) and by amphi (which names,
//! sweeps and explains these jails).
//!
//! A jailed `amphi-vmm` is two processes:
//!
//! - the **supervisor**, the process amphi (or the user) started: it
//!   makes the VMM's cgroup and a new pid namespace and forks (on cgroup2
//!   into the cgroup, see [`fork_supervised`]); it forwards SIGTERM and SIGINT
//!   to the VMM, waits for it, removes its cgroup and jail directory, and
//!   exits with its status. It runs no guest-facing code and keeps root
//!   for that cleanup only.
//! - the **VMM**, pid 1 of that namespace, in its own cgroup from its
//!   first instruction on cgroup2 (on v1 it joins it first thing), opens
//!   and creates everything, then locks itself down (see
//!   [`super::lockdown`]) before the guest's first instruction.
//!
//! Users: the VMM runs as uid and gid [`UID_BASE`] + the supervisor's pid
//! (pids are below 2^22, `PID_MAX_LIMIT`, so the range is 2000000000 to
//! 2004194303 and two live VMMs never share a user), or as
//! `--jail-uid`/`--jail-gid` (`$AMPHI_VMM_UID`/`$AMPHI_VMM_GID`).
//!
//! Cgroup: `amphi-vmm/<id>` in the memory and pids hierarchies (v1) or
//! in the unified hierarchy (v2), with `memory` = guest RAM +
//! [`MEMORY_OVERHEAD_MIB`] + 1/64 of guest RAM (heap, stacks, page
//! tables and KVM's own structures), and `pids` = vCPUs + [`PIDS_SPARE`]
//! (the main thread, the device event loop, and room).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The first uid (and gid) of the per-VM range.
pub const UID_BASE: u32 = 2_000_000_000;
/// How many uids the range holds: the kernel's largest pid_max.
pub const UID_SPAN: u32 = 1 << 22;
/// Memory the VMM may use besides guest RAM (MiB), plus 1/64 of guest RAM.
pub const MEMORY_OVERHEAD_MIB: u64 = 64;
/// Tasks the VMM's cgroup allows besides one per vCPU.
pub const PIDS_SPARE: u64 = 8;
/// Where `amphi vmm` makes its jail directory when not told
/// (`/run/amphi/jail/<id>`).
pub const JAIL_ROOT: &str = "/run/amphi/jail";
/// The cgroup parent of every VMM's cgroup.
pub const CGROUP_PARENT: &str = "amphi-vmm";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The default uid and gid of the VMM supervised by process `pid`.
pub fn default_uid(pid: u32) -> u32 {
    UID_BASE + pid % UID_SPAN
}

/// The memory limit of a VMM whose guest has `mem_mib` MiB, in bytes.
pub fn memory_limit(mem_mib: u64) -> u64 {
    (mem_mib + MEMORY_OVERHEAD_MIB + mem_mib.div_ceil(64)) << 20
}

/// The pids limit of a VMM with `vcpus` vCPUs.
pub fn pids_limit(vcpus: u64) -> u64 {
    vcpus + PIDS_SPARE
}

/// Checks a jail id (a directory and cgroup name).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "jail id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not first)"
        ))
    }
}

/// The VMM's cgroup directories on this host: v2, or v1's memory and
/// pids hierarchies.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if cgroup2_only() {
        vec![root.join(CGROUP_PARENT).join(id)]
    } else {
        ["memory", "pids"]
            .iter()
            .map(|c| root.join(c).join(CGROUP_PARENT).join(id))
            .collect()
    }
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    fs::write(p, v).map_err(|e| format!("writing {v:?} to {}: {e}", p.display()))
}

/// Moves the calling process (which must have one thread) into a cgroup
/// through its join files ([`create_cgroup`]).
pub fn join_cgroup(join_files: &[PathBuf]) -> Result<(), String> {
    for procs in join_files {
        write(procs, "0")?;
    }
    Ok(())
}

/// The VMM's cgroup made ready for [`fork_supervised`]: on a cgroup2 host
/// the VMM is born in it (`clone3` with `CLONE_INTO_CGROUP`); otherwise, or
/// where the kernel cannot, it joins through the files of `join`.
pub struct VmmCgroup {
    /// The cgroup2 directory, open (cgroup2 hosts only).
    pub dir: Option<std::os::fd::OwnedFd>,
    /// What the VMM writes "0" to, to join it itself.
    pub join: Vec<PathBuf>,
}

/// Creates the VMM's cgroup `amphi-vmm/<id>` with its limits (see
/// [`create_cgroup`]) and, on cgroup2, opens it for [`fork_supervised`].
pub fn prepare_cgroup(id: &str, memory: u64, pids: u64) -> Result<VmmCgroup, String> {
    let join = create_cgroup(id, memory, pids)?;
    let dir = match cgroup_dirs(id).as_slice() {
        [path] if cgroup2_only() => {
            Some(open_dir(path).map_err(|e| format!("opening cgroup {}: {e}", path.display()))?)
        }
        _ => None,
    };
    Ok(VmmCgroup { dir, join })
}

/// Opens a directory (for `CLONE_INTO_CGROUP`), close-on-exec.
fn open_dir(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map(Into::into)
}

/// Creates the monitor's cgroup `amphi-vmm/<id>` with its limits; returns
/// the files a process with one thread joins it through, by writing "0"
/// (one, or v1's memory and pids). Fails when the host has no memory or
/// pids controller to give.
///
/// On v1 that is `tasks`, not `cgroup.procs`: moving one thread (the only
/// one) skips the kernel's global lock on thread groups, whose first writer
/// waits out an RCU grace period (measured here: 0.1 ms against 9 to 18 ms
/// through `cgroup.procs`). On v2 there is only `cgroup.procs`.
pub fn create_cgroup(id: &str, memory: u64, pids: u64) -> Result<Vec<PathBuf>, String> {
    let root = Path::new(CGROUP_ROOT);
    let unified = cgroup2_only();
    if unified {
        // The controllers, enabled on the way down.
        let avail = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids"] {
            if !avail.split_whitespace().any(|a| a == c) {
                return Err(format!(
                    "the cgroup2 hierarchy at {CGROUP_ROOT} has no {c} controller to limit the VMM with"
                ));
            }
        }
        let parent = root.join(CGROUP_PARENT);
        let _ = fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
        mkdir(&parent)?;
        let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
        let dir = parent.join(id);
        mkdir(&dir)?;
        write(&dir.join("memory.max"), &memory.to_string())?;
        write(&dir.join("memory.swap.max"), "0").or_else(|e| {
            // No swap accounting: nothing to limit.
            if root
                .join(CGROUP_PARENT)
                .join(id)
                .join("memory.swap.max")
                .exists()
            {
                Err(e)
            } else {
                Ok(())
            }
        })?;
        write(&dir.join("pids.max"), &pids.to_string())?;
        return Ok(vec![dir.join("cgroup.procs")]);
    }
    let dirs = cgroup_dirs(id);
    for (c, d) in ["memory", "pids"].iter().zip(&dirs) {
        if !root.join(c).is_dir() {
            return Err(format!(
                "the cgroup v1 {c} controller is not mounted ({} is missing): the VMM cannot be limited",
                root.join(c).display()
            ));
        }
        mkdir(d)?;
    }
    write(&dirs[0].join("memory.limit_in_bytes"), &memory.to_string())?;
    write(&dirs[1].join("pids.max"), &pids.to_string())?;
    Ok(dirs.iter().map(|d| d.join("tasks")).collect())
}

fn mkdir(d: &Path) -> Result<(), String> {
    match fs::create_dir_all(d) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("creating cgroup {}: {e}", d.display())),
    }
}

/// Removes the VMM's cgroup (once its processes are gone: retried for up
/// to about a second while the kernel lets go of the last one, KVM's worker
/// thread of the VM among them; first after 0.25 ms, doubling to 20 ms).
/// Missing is fine.
pub fn remove_cgroup(id: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    for d in cgroup_dirs(id) {
        let mut r = fs::remove_dir(&d);
        let mut pause = std::time::Duration::from_micros(250);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            match &r {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                    r = fs::remove_dir(&d);
                }
                _ => break,
            }
        }
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", d.display())),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("removing the VMM's cgroup: {}", errors.join("; ")))
    }
}

/// The directory a jailed VMM gets as its root: `dir`, or
/// `/run/amphi/jail/<id>`.
pub fn jail_dir(dir: Option<&Path>, id: &str) -> PathBuf {
    dir.map_or_else(|| Path::new(JAIL_ROOT).join(id), Path::to_path_buf)
}

/// Makes the jail directory: empty, owned by root, mode 0500. Returns
/// whether it was made here (and so is removed afterwards).
pub fn make_jail_dir(dir: &Path) -> Result<bool, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("jail directory {}: {e}", parent.display()))?;
    }
    let made = match fs::DirBuilder::new().mode(0o500).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(format!("jail directory {}: {e}", dir.display())),
    };
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("jail directory {}: not a directory", dir.display()));
    }
    if fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .next()
        .is_some()
    {
        return Err(format!(
            "jail directory {}: not empty (the VMM's root must hold nothing)",
            dir.display()
        ));
    }
    if made {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o500))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(made)
}

/// What a forked VMM needs from its supervisor.
pub struct VmmSide {
    /// Readable end of a pipe the supervisor holds the other end of:
    /// end of file means the supervisor is gone.
    alive: std::os::fd::OwnedFd,
    /// Whether the VMM was born in its cgroup (`CLONE_INTO_CGROUP`); if
    /// not, it joins it itself ([`VmmCgroup::join`]).
    pub in_cgroup: bool,
}

impl VmmSide {
    /// Whether the supervisor still runs (its end of the pipe is open).
    pub fn supervisor_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.alive.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }
}

/// Which side of [`fork_supervised`] this is.
pub enum Side<V = VmmSide> {
    /// The VMM (pid 1 of a new pid namespace), dying with its supervisor.
    Vmm(V),
    /// The supervisor, after the VMM ended: its exit status to pass on.
    Supervisor(i32),
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Forks the VMM into a new pid namespace and supervises it (see the
/// module documentation). Returns in both processes. `idle` runs in the
/// supervisor once the VMM is forked, before it waits (e.g. to let go of
/// memory it does not need while it waits); `cleanup` runs there after
/// the VMM is gone. Call it while the process has one thread.
///
/// With `cgroup` (an open cgroup2 directory) the VMM is born in that
/// cgroup: `clone3` with `CLONE_INTO_CGROUP`, where moving a process
/// through `cgroup.procs` takes the kernel's global lock on thread groups,
/// whose first writer waits out an RCU grace period (about 10 ms measured
/// in the nested lab; the VMM also never runs outside its limits). Where
/// the kernel has no `clone3` (before 5.7) it is a plain fork, and
/// [`VmmSide::in_cgroup`] says the VMM must join itself.
pub fn fork_supervised(
    cgroup: Option<std::os::fd::OwnedFd>,
    idle: impl FnOnce(),
    cleanup: impl FnOnce(),
) -> Result<Side, String> {
    // SIGTERM/SIGINT stay blocked in the VMM (its main thread polls them);
    // SIGCHLD is the supervisor's.
    let set = sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "blocking signals: {}",
            io::Error::from_raw_os_error(rc)
        ));
    }
    // SAFETY: unshare with a flag only.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(format!(
            "jail: unsharing the pid namespace: {}",
            io::Error::last_os_error()
        ));
    }
    let (alive_r, alive_w) = pipe().map_err(|e| format!("jail: pipe: {e}"))?;
    let (pid, in_cgroup) = fork_into(cgroup.as_ref()).map_err(|e| format!("jail: fork: {e}"))?;
    drop(cgroup);
    if pid == 0 {
        drop(alive_w);
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        let side = VmmSide {
            alive: alive_r,
            in_cgroup,
        };
        if !side.supervisor_alive() {
            // SAFETY: ending the process.
            unsafe { libc::_exit(1) };
        }
        // The supervisor's SIGCHLD is not ours.
        let chld = sigset(&[libc::SIGCHLD]);
        // SAFETY: a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut()) };
        return Ok(Side::Vmm(side));
    }
    drop(alive_r);
    idle();
    let code = supervise(pid, &set);
    cleanup();
    drop(alive_w);
    Ok(Side::Supervisor(code))
}

/// `clone3`'s `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (linux/sched.h, `CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks, into the cgroup2 directory `cgroup` when given and the kernel
/// can (`clone3`, a fork's semantics: no new stack, `SIGCHLD` at the end);
/// returns the child's pid (0 in the child) and whether the child was born
/// in `cgroup`. Call it while the process has one thread.
pub fn fork_into(cgroup: Option<&std::os::fd::OwnedFd>) -> io::Result<(libc::pid_t, bool)> {
    use std::os::fd::AsRawFd;
    if let Some(dir) = cgroup {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 with fork semantics (no CLONE_VM, no stack: the
        // child runs on its own copy of this stack) in a process with one
        // thread; `args` is valid for the size given. glibc's cached thread
        // id of the child's one thread stays the parent's: glibc (2.34 and
        // later) asks the kernel instead where it matters (signalling
        // itself), and nothing here uses thread-owned pthread mutexes.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid >= 0 {
            return Ok((pid as libc::pid_t, true));
        }
        // No clone3 (ENOSYS), none that knows CLONE_INTO_CGROUP (E2BIG),
        // or one a sandbox refuses: fork, and the child joins by itself
        // (and says what is wrong if it cannot).
    }
    // SAFETY: the process has one thread (the caller's promise), so the
    // child may go on running ordinary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((pid, false))
}

/// Forwards SIGTERM/SIGINT to `pid` until it ends; its exit status, or
/// 128 + the signal that killed it (said on stderr).
fn supervise(pid: libc::pid_t, set: &libc::sigset_t) -> i32 {
    loop {
        // SAFETY: a valid set; no siginfo wanted.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        match sig {
            libc::SIGTERM | libc::SIGINT => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, sig) };
            }
            libc::SIGCHLD => {
                let mut status = 0;
                // SAFETY: waiting for our own child with a valid out-pointer.
                let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if r == pid {
                    if libc::WIFEXITED(status) {
                        return libc::WEXITSTATUS(status);
                    }
                    if libc::WIFSIGNALED(status) {
                        let s = libc::WTERMSIG(status);
                        let name = match s {
                            libc::SIGKILL => " (SIGKILL)",
                            libc::SIGSYS => " (SIGSYS)",
                            libc::SIGSEGV => " (SIGSEGV)",
                            libc::SIGABRT => " (SIGABRT)",
                            libc::SIGBUS => " (SIGBUS)",
                            _ => "",
                        };
                        eprintln!("amphi vmm: the jailed VMM was killed by signal {s}{name}");
                        return 128 + s;
                    }
                }
                if r < 0 {
                    return 1;
                }
            }
            _ => {}
        }
    }
}

/// Whether /sys/fs/cgroup is a cgroup2 file system (the unified
/// hierarchy alone); otherwise v1's per-controller hierarchies.
pub fn cgroup2_only() -> bool {
    const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
    // SAFETY: an all-zero statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let rc = unsafe { libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) };
    rc == 0 && st.f_type == CGROUP2_SUPER_MAGIC
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: a valid out-array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here only.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_limits() {
        assert_eq!(default_uid(1234), 2_000_001_234);
        assert_eq!(default_uid(UID_SPAN + 5), UID_BASE + 5);
        assert!(default_uid(u32::MAX) < UID_BASE + UID_SPAN);
        assert_eq!(memory_limit(256), (256 + 64 + 4) << 20);
        assert_eq!(memory_limit(16), (16 + 64 + 1) << 20);
        assert_eq!(pids_limit(2), 10);
    }

    /// Where this host mounts a cgroup2 file system (`/sys/fs/cgroup` or,
    /// on a hybrid host, `/sys/fs/cgroup/unified`).
    fn cgroup2_mount() -> PathBuf {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.split(' ').next() == Some("cgroup2")).then(|| pre.split(' ').nth(4))?
            })
            .map(PathBuf::from)
            .expect("this host mounts no cgroup2 file system: fork_into cannot be tested")
    }

    #[test]
    fn a_forked_child_is_born_in_its_cgroup2_group() {
        let group = format!("amphi-test-fork-into-{}", std::process::id());
        let dir = cgroup2_mount().join(&group);
        fs::create_dir(&dir).unwrap();
        let fd = open_dir(&dir).unwrap();
        // The test harness runs tests on threads, so the child allocates
        // nothing (another thread may have held the allocator's lock): it
        // reads its cgroup into a buffer on its stack and exits.
        let want = format!("0::/{group}\n");
        let (pid, born) = fork_into(Some(&fd)).unwrap();
        if pid == 0 {
            let mut buf = [0u8; 512];
            // SAFETY: a NUL-terminated path; reading into a buffer of
            // its length; ending the child without the parent's destructors.
            unsafe {
                let f = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
                let n = libc::read(f, buf.as_mut_ptr().cast(), buf.len());
                let got = &buf[..n.max(0) as usize];
                let ok = got.windows(want.len()).any(|w| w == want.as_bytes());
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        fs::remove_dir(&dir).unwrap();
        assert!(born, "clone3 with CLONE_INTO_CGROUP was not used");
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child was not in {group} from its start (status {status:#x})"
        );
        // Without a cgroup: a plain fork, not in it.
        let (pid, born) = fork_into(None).unwrap();
        if pid == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(!born);
        // A descriptor the kernel refuses as a cgroup (a regular file): the
        // fork still happens, and the child knows it must join by itself.
        let file: std::os::fd::OwnedFd = fs::File::open("/proc/self/cmdline").unwrap().into();
        let (pid, born) = fork_into(Some(&file)).unwrap();
        if pid == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(!born);
    }

    #[test]
    fn ids() {
        assert!(check_id("0123abcd-vm_1.x").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jail_dirs_are_made_empty_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = jail_dir(Some(&t.path().join("a/jail")), "x");
        assert!(make_jail_dir(&d).unwrap());
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o500
        );
        assert!(!make_jail_dir(&d).unwrap());
        assert_eq!(jail_dir(None, "x"), Path::new("/run/amphi/jail/x"));
        let full = t.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("f"), "").unwrap();
        assert!(make_jail_dir(&full).unwrap_err().contains("not empty"));
    }
}
