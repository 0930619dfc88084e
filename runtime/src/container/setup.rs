//! The container side: what the cloned process does between clone and exec.
//! Nothing here forks a helper; every step either succeeds or reports one
//! clear error line to the parent through the sync socket and exits.

use super::effects::Real;
use super::hooks::HookError;
use super::rootfs;
use super::sync::{ChildError, Sync, SyncError};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};
use rustix::io::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A step of the container process's setup failed (those not already
/// reported by rootfs, caps, seccomp, ... with their own errors).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("no process")]
    NoProcess,
    #[error("working directory {}: {source}", path.display())]
    Cwd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("chdir to working directory {}: {source}", path.display())]
    Chdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no_new_privs: {0}")]
    NoNewPrivs(#[source] Errno),
    #[error("exec fifo: {0}")]
    ExecFifo(#[source] std::io::Error),
    #[error("setsid: {0}")]
    Setsid(#[source] Errno),
    #[error("--init: opening amphi's own binary: {0}")]
    SelfExe(#[source] Errno),
    #[error("/proc/self: {0}")]
    ProcSelf(#[source] Errno),
    #[error("chroot: {0}")]
    Chroot(#[source] Errno),
    #[error("chdir /: {0}")]
    ChdirRoot(#[source] Errno),
    #[error("sethostname {name:?}: {source}")]
    Hostname { name: String, source: Errno },
    #[error("setdomainname {name:?}: {source}")]
    Domainname { name: String, source: Errno },
    #[error("sysctl {key}={value}: {source}")]
    Sysctl {
        key: String,
        value: String,
        source: std::io::Error,
    },
    #[error("oomScoreAdj {adj}: {source}")]
    OomScoreAdj { adj: i32, source: std::io::Error },
    /// The capability sets of a user without capabilities.
    #[error("{0}")]
    NoCaps(#[source] oci_spec::OciSpecError),
    #[error("PR_SET_KEEPCAPS: {0}")]
    KeepCaps(#[source] Errno),
    #[error(transparent)]
    Nul(#[from] crate::sys::cstr::NulByte),
    #[error("program path has a NUL byte")]
    ProgramNul,
    #[error("setresgid {gid}: {source}")]
    SetGid { gid: u32, source: std::io::Error },
    #[error("setresuid {uid}: {source}")]
    SetUid { uid: u32, source: std::io::Error },
    #[error("rlimit {name} soft={soft} hard={hard}: {source} (this host allows at most hard={max}; raising it needs CAP_SYS_RESOURCE)")]
    Rlimit {
        name: String,
        soft: u64,
        hard: u64,
        max: u64,
        source: std::io::Error,
    },
    #[error("opening /dev/ptmx: {0}")]
    Ptmx(#[source] Errno),
    #[error("grantpt: {0}")]
    Grantpt(#[source] Errno),
    #[error("unlockpt: {0}")]
    Unlockpt(#[source] Errno),
    #[error("ptsname: {0}")]
    Ptsname(#[source] Errno),
    #[error("opening the pty slave: {0}")]
    PtySlave(#[source] Errno),
    #[error("TIOCSCTTY: {0}")]
    Ctty(#[source] std::io::Error),
    #[error("dup2 pty: {0}")]
    Dup2(#[source] std::io::Error),
    #[error("removing {path} (a {kind:?}): {source}")]
    ConsoleRemove {
        path: &'static str,
        kind: rustix::fs::FileType,
        source: Errno,
    },
    #[error("{path}: {source}")]
    ConsoleStat { path: &'static str, source: Errno },
    #[error("creating {path}: {source}")]
    ConsoleCreate { path: &'static str, source: Errno },
    #[error("binding the pty onto {path}: {source}")]
    ConsoleBind { path: &'static str, source: Errno },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Hook(#[from] HookError),
}

impl InitError {
    /// The setup step it belongs to, as the runtime is told.
    fn stage(&self) -> &'static str {
        use InitError as E;
        match self {
            E::NoProcess | E::Nul(_) => "config",
            E::Cwd { .. } | E::Chdir { .. } => "working directory",
            E::NoNewPrivs(_) => "no_new_privs",
            E::ExecFifo(_) => "exec fifo",
            E::Setsid(_) => "session",
            E::SelfExe(_) => "init",
            E::ProcSelf(_) | E::Chroot(_) | E::ChdirRoot(_) => "rootfs",
            E::Hostname { .. } | E::Domainname { .. } => "hostname",
            E::Sysctl { .. } => "sysctl",
            E::OomScoreAdj { .. } => "oom score",
            E::NoCaps(_) | E::KeepCaps(_) => "capabilities",
            E::ProgramNul => "exec",
            E::SetGid { .. } | E::SetUid { .. } => "user",
            E::Rlimit { .. } => "rlimits",
            E::Ptmx(_)
            | E::Grantpt(_)
            | E::Unlockpt(_)
            | E::Ptsname(_)
            | E::PtySlave(_)
            | E::Ctty(_)
            | E::Dup2(_)
            | E::ConsoleRemove { .. }
            | E::ConsoleStat { .. }
            | E::ConsoleCreate { .. }
            | E::ConsoleBind { .. }
            | E::Sync(_) => "terminal",
            E::Hook(_) => "hooks",
        }
    }
}

impl From<InitError> for ChildError {
    fn from(e: InitError) -> Self {
        ChildError::stage(e.stage())(e)
    }
}

/// The setup stage's payload could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the setup stage's payload: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("memfd_create: {0}")]
    Memfd(#[source] Errno),
    #[error("the setup stage's payload: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the setup stage's payload: {0}")]
    Read(#[source] std::io::Error),
    #[error("the setup stage's payload: {0}")]
    Decode(#[source] serde_json::Error),
}

/// An unknown `linux.personality` flag.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", self.field(), self.reason())]
pub struct PersonalityError {
    pub index: usize,
    pub flag: String,
}

impl PersonalityError {
    /// The spec's field: `linux.personality.flags[N]`.
    pub fn field(&self) -> String {
        format!("linux.personality.flags[{}]", self.index)
    }

    /// What is wrong with it.
    pub fn reason(&self) -> String {
        let known: Vec<&str> = PERSONALITY_FLAGS.iter().map(|(n, _)| *n).collect();
        format!("unknown flag {:?} (known: {})", self.flag, known.join(", "))
    }
}

/// What the child needs besides the spec.
pub struct InitArgs<'a> {
    pub spec: &'a Spec,
    /// Absolute path of the rootfs (before pivot_root).
    pub rootfs: PathBuf,
    pub sync: Sync,
    /// `create`: an O_PATH descriptor of the exec fifo (opened by the
    /// runtime, which can reach the state directory); the process reopens
    /// it for writing and blocks there until `start` opens it.
    pub exec_fifo: Option<OwnedFd>,
    /// Where to send the pty master when `process.terminal` is set.
    pub console: Option<OwnedFd>,
    /// docker-style `-u NAME[:GROUP]` to resolve inside the container.
    pub user_lookup: Option<String>,
    pub in_userns: bool,
    /// File descriptors 3..3+N stay open for the process.
    pub preserve_fds: i32,
    /// The container state (without the pid, which the parent sends with
    /// `go`) given to the createContainer and startContainer hooks.
    pub state: serde_json::Value,
    /// The pid that came with `go`, when it came before the setup stage
    /// was executed (a new user namespace: see `launch`).
    pub go: Option<i32>,
    /// Open a console-only pty when the process has no terminal (see
    /// `LaunchOptions::console_pty`).
    pub console_pty: bool,
}

/// The argument that starts amphi as a container's setup stage: the cloned
/// child executes amphi's sealed binary (container::sealed) with it, so
/// that nothing in the container ever sees the host's binary as the
/// process's executable, then continues in [`child_main`] (as `runc init`).
pub const SETUP_STAGE: &str = "--amphi-container-setup";

/// The source of the `--init` mount (`spec::INIT_PATH`): the running
/// binary, which is a sealed read-only copy (container::sealed), never the
/// host's file.
pub const INIT_SOURCE: &str = "/proc/self/exe";

/// What the setup stage needs, handed over in a memfd: the arguments of
/// [`child_main`], with descriptors as numbers (inherited across the exec).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StagePayload {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub sync_fd: i32,
    pub exec_fifo_fd: Option<i32>,
    pub console_fd: Option<i32>,
    pub user_lookup: Option<String>,
    pub in_userns: bool,
    pub preserve_fds: i32,
    pub state: serde_json::Value,
    #[serde(default)]
    pub console_pty: bool,
}

impl StagePayload {
    /// Writes the payload into a memfd, made before the clone (the child
    /// only executes).
    pub fn to_memfd(&self) -> Result<OwnedFd, PayloadError> {
        let data = serde_json::to_vec(self).map_err(PayloadError::Encode)?;
        let fd = rustix::fs::memfd_create("amphi-setup", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(PayloadError::Memfd)?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, &data).map_err(PayloadError::Write)?;
        Ok(OwnedFd::from(f))
    }
}

/// In the cloned child: executes the sealed binary as the setup stage,
/// keeping `keep` (and the payload) open across the exec. Returns only
/// with the reason it failed.
pub fn exec_setup_stage(
    sealed: &OwnedFd,
    payload: &OwnedFd,
    keep: &[i32],
    go: Option<i32>,
) -> ChildError {
    for fd in keep.iter().copied().chain([payload.as_raw_fd()]) {
        // SAFETY: clearing FD_CLOEXEC on our own descriptors.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let arg1 = CString::new(SETUP_STAGE).expect("no NUL");
    let arg2 = CString::new(payload.as_raw_fd().to_string()).expect("no NUL");
    let arg3 = go.map(|pid| CString::new(pid.to_string()).expect("no NUL"));
    let mut argv = vec![c"amphi".as_ptr(), arg1.as_ptr(), arg2.as_ptr()];
    argv.extend(arg3.as_ref().map(|a| a.as_ptr()));
    argv.push(std::ptr::null());
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: execveat of an open descriptor with AT_EMPTY_PATH; argv and
    // envp are NULL-terminated arrays of C strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            sealed.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    let e = std::io::Error::last_os_error();
    ChildError::setup_errno(
        "setup stage",
        format!("starting the container's setup from amphi's sealed binary: {e}"),
        e.raw_os_error(),
    )
}

/// The payload descriptor (and the pid of `go`, when it came already)
/// when this process is a setup stage.
pub fn setup_stage_args(args: &[std::ffi::OsString]) -> Option<(i32, Option<i32>)> {
    match args {
        [_, flag, fd] if flag == SETUP_STAGE => Some((fd.to_str()?.parse().ok()?, None)),
        [_, flag, fd, pid] if flag == SETUP_STAGE => Some((
            fd.to_str()?.parse().ok()?,
            Some(pid.to_str()?.parse().ok()?),
        )),
        _ => None,
    }
}

/// The setup stage: reads its payload and becomes [`child_main`].
pub fn setup_stage_main(payload_fd: i32, go: Option<i32>) -> ! {
    // Non-dumpable again (the exec made it dumpable), as before the exec.
    // SAFETY: PR_SET_DUMPABLE takes only integers and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: the descriptor was handed to us by the runtime for this.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(payload_fd) });
    let payload: Result<StagePayload, PayloadError> = {
        use std::io::{Read, Seek};
        let mut data = Vec::new();
        let mut f = f;
        f.rewind()
            .and_then(|_| f.read_to_end(&mut data))
            .map_err(PayloadError::Read)
            .and_then(|_| serde_json::from_slice(&data).map_err(PayloadError::Decode))
    };
    let p = match payload {
        Ok(p) => p,
        Err(e) => {
            eprintln!("amphi: error: {e}");
            // SAFETY: leaving without unwinding.
            unsafe { libc::_exit(1) }
        }
    };
    if p.in_userns {
        // As in launch: in a user namespace the process stays dumpable.
        // SAFETY: PR_SET_DUMPABLE takes only integers and changes only this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    // SAFETY: descriptors the runtime kept open for us across the exec;
    // close-on-exec again so the workload does not inherit them.
    let own = |fd: i32| unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        OwnedFd::from_raw_fd(fd)
    };
    let sync = Sync::from_fd(own(p.sync_fd));
    let exec_fifo = p.exec_fifo_fd.map(own);
    let console = p.console_fd.map(own);
    child_main(InitArgs {
        spec: &p.spec,
        rootfs: p.rootfs.clone(),
        sync,
        exec_fifo,
        console,
        user_lookup: p.user_lookup.clone(),
        in_userns: p.in_userns,
        preserve_fds: p.preserve_fds,
        state: p.state.clone(),
        go,
        console_pty: p.console_pty,
    })
}

/// Runs in the cloned child; never returns.
pub fn child_main(mut a: InitArgs<'_>) -> ! {
    match setup(&mut a) {
        Ok(never) => match never {},
        Err(e) => {
            a.sync.send_error(&e);
            // SAFETY: _exit is always safe; no destructors must run in the
            // forked child.
            unsafe { libc::_exit(1) }
        }
    }
}

enum Never {}

fn has_ns(spec: &Spec, t: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == t && n.path().is_none()))
}

fn setup(a: &mut InitArgs<'_>) -> Result<Never, ChildError> {
    use ChildError as E;
    let spec = a.spec;
    let mut state = join(a)?;
    let process = spec.process().as_ref().ok_or(InitError::NoProcess)?;
    // The exec fifo lives on the host: it is reopened through
    // /proc/self/fd after pivot_root.
    let fifo_fd = a.exec_fifo.take();
    let mount_ns = has_ns(spec, LinuxNamespaceType::Mount);
    let (mut proc_self, sealed_init) = enter_root(a, &state)?;
    // Before the root may become read-only: /dev/console is bound to the pty.
    // The console-only pty's slave stays open here until the workload is
    // executed (close-on-exec), by when the runtime holds one of its own.
    let _console_slave = console(a, process.terminal().unwrap_or(false), mount_ns)?;
    namespaced_settings(spec, mount_ns)?;
    process_settings(spec, process, proc_self.as_ref())?;
    let who = resolve_user(a, process)?;
    // The working directory exists (docker creates it).
    let cwd = process.cwd();
    if std::fs::metadata(cwd).is_err() {
        std::fs::create_dir_all(cwd).map_err(|source| InitError::Cwd {
            path: cwd.into(),
            source,
        })?;
        let _ = std::os::unix::fs::chown(cwd, Some(who.uid), Some(who.gid));
    }
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    become_user(a, process, &who, seccomp)?;
    std::env::set_current_dir(cwd).map_err(|source| InitError::Chdir {
        path: cwd.into(),
        source,
    })?;
    if no_new_privs {
        rustix::thread::set_no_new_privs(true).map_err(InitError::NoNewPrivs)?;
    }
    let program = Program::new(process, who.home, sealed_init)?;
    if let (true, Some(seccomp)) = (no_new_privs, seccomp) {
        install_seccomp(seccomp, &a.sync)?;
    }
    close_fds_from(3 + a.preserve_fds);
    // `create`: wait for `start`. Then run the startContainer hooks, and
    // tell `start` how that went through the fifo: `0` when the program is
    // about to be executed, `error:<text>` otherwise. The descriptor is
    // close-on-exec, so `start` sees end-of-file once the program runs (and
    // runs the poststart hooks only then). Without a fifo (run), a failure
    // reaches the runtime through the sync socket.
    let start_fifo = match &fifo_fd {
        Some(fifo) => {
            a.sync.send_ready().map_err(E::stage("sync"))?;
            // Blocks until `amphi start` opens the other end.
            let f = open_proc_self(proc_self.as_ref(), &format!("fd/{}", fifo.as_raw_fd()))
                .map_err(InitError::ExecFifo)?;
            drop(proc_self.take());
            Some(f)
        }
        None => None,
    };
    state["status"] = "created".into();
    // A startContainer hook without an `env` of its own gets the process's
    // environment (as with runc): it runs where and as the process will.
    let hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().as_ref())
        .into_iter()
        .flatten()
        .try_for_each(|h| {
            super::hooks::run_with_env(h, "startContainer", Some(&state.to_string()), &program.env)
        })
        .map_err(E::stage("startContainer hooks"));
    if let Some(f) = &start_fifo {
        match &hooks {
            Ok(()) => tell_start(f, b"0"),
            Err(e) => tell_start(f, &e.encode()),
        }
    }
    hooks?;

    Err(program.exec(start_fifo.as_ref()))
}

/// After the clone: a clean signal mask, the parent's go (the child is in
/// its cgroup, its id maps written), root in a user namespace, a cgroup
/// namespace rooted at its cgroup, a session. Returns the state for the
/// hooks, with the pid.
fn join(a: &InitArgs<'_>) -> Result<serde_json::Value, ChildError> {
    use ChildError as E;
    let spec = a.spec;
    // The runtime blocks signals it forwards; the process gets a clean mask.
    // SAFETY: setting our own signal mask to empty.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    // Wait until the parent has put us in the cgroup and written id maps.
    let pid = match a.go {
        Some(pid) => pid,
        None => a.sync.wait_go().map_err(E::stage("sync"))?,
    };
    let mut state = super::launch::hook_state(&a.state);
    state["pid"] = pid.into();
    if a.in_userns {
        set_ids(0, 0).map_err(E::stage("user namespace"))?;
    }
    // Now that the parent has put us in our cgroup, a new cgroup namespace
    // has it as its root (as runc does): the container sees its own
    // limits at /sys/fs/cgroup.
    let new_cgroupns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| {
            n.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup && n.path().is_none())
        });
    // SAFETY: unshare of our own cgroup namespace.
    if new_cgroupns && unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(E::setup_errno(
            "cgroup namespace",
            format!("creating the cgroup namespace: {e}"),
            e.raw_os_error(),
        ));
    }
    rustix::process::setsid().map_err(InitError::Setsid)?;
    Ok(state)
}

/// The container's root: with a mount namespace, the rootfs prepared, the
/// spec's mounts made, /dev set up, the createContainer hooks run and
/// pivot_root; without one, a chroot. Returns the /proc/self kept for a
/// chroot (see below), and `--init`'s sealed binary.
#[allow(clippy::type_complexity)]
fn enter_root(
    a: &InitArgs<'_>,
    state: &serde_json::Value,
) -> Result<(Option<OwnedFd>, Option<(PathBuf, OwnedFd)>), ChildError> {
    use ChildError as E;
    let spec = a.spec;
    let mut sealed_init = None;
    let proc_self = if has_ns(spec, LinuxNamespaceType::Mount) {
        let rootfs_err = E::stage("rootfs");
        rootfs::prepare_root(&Real, spec, &a.rootfs).map_err(&rootfs_err)?;
        let root = rootfs::open_root(&a.rootfs).map_err(&rootfs_err)?;
        for m in spec.mounts().iter().flatten() {
            if m.source().as_deref() == Some(Path::new(INIT_SOURCE)) {
                // `--init`: amphi's own (sealed) binary. It lives in a
                // detached mount that cannot be bind-mounted; it is
                // executed through a descriptor instead (see below).
                sealed_init = Some((m.destination().clone(), open_self_exe()?));
                continue;
            }
            rootfs::do_mount(&Real, &root, m, a.in_userns).map_err(E::stage("mounts"))?;
        }
        let dev_is_tmpfs = spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new("/dev"));
        if dev_is_tmpfs {
            rootfs::setup_dev(&Real, &root, spec, a.in_userns).map_err(E::stage("dev"))?;
        }
        run_hooks(
            spec.hooks()
                .as_ref()
                .and_then(|h| h.create_container().clone()),
            "createContainer",
            &state.to_string(),
        )
        .map_err(E::stage("createContainer hooks"))?;
        drop(root);
        rootfs::pivot(&a.rootfs).map_err(&rootfs_err)?;
        None
    } else {
        // Without a mount namespace the root is only a chroot, with no /proc
        // of its own: this process's /proc directory is kept (close-on-exec,
        // closed before the program runs) to reopen the exec fifo and
        // write oom_score_adj. It shows nothing the host's mount namespace,
        // which the container shares, does not.
        let proc_self = rustix::fs::open(
            "/proc/self",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(InitError::ProcSelf)?;
        rustix::process::chroot(&a.rootfs).map_err(InitError::Chroot)?;
        rustix::process::chdir("/").map_err(InitError::ChdirRoot)?;
        Some(proc_self)
    };
    Ok((proc_self, sealed_init))
}

/// The terminal (`process.terminal`), or systemd mode's console-only pty,
/// whose slave is returned to be kept open until the exec.
fn console(
    a: &mut InitArgs<'_>,
    terminal: bool,
    mount_ns: bool,
) -> Result<Option<OwnedFd>, ChildError> {
    use ChildError as E;
    Ok(if terminal {
        setup_terminal(a, mount_ns).map_err(E::stage("terminal"))?;
        None
    } else if a.console_pty && mount_ns {
        Some(setup_console_pty(a).map_err(E::stage("console"))?)
    } else {
        None
    })
}

/// What the container's own namespaces get: host and domain name, the
/// loopback, sysctls, masked and read-only paths, a read-only root, the
/// root's propagation (the last of the mounts).
fn namespaced_settings(spec: &Spec, mount_ns: bool) -> Result<(), ChildError> {
    use ChildError as E;
    if has_ns(spec, LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            rustix::system::sethostname(h.as_bytes()).map_err(|source| InitError::Hostname {
                name: h.clone(),
                source,
            })?;
        }
        if let Some(d) = spec.domainname() {
            rustix::system::setdomainname(d.as_bytes()).map_err(|source| {
                InitError::Domainname {
                    name: d.clone(),
                    source,
                }
            })?;
        }
    }
    if has_ns(spec, LinuxNamespaceType::Network) {
        loopback_up();
    }
    if let Some(linux) = spec.linux() {
        for (k, v) in linux.sysctl().iter().flatten() {
            let p = format!("/proc/sys/{}", k.replace('.', "/"));
            std::fs::write(&p, v).map_err(|source| InitError::Sysctl {
                key: k.clone(),
                value: v.clone(),
                source,
            })?;
        }
        if mount_ns {
            rootfs::mask_paths(&Real, linux.masked_paths().as_deref().unwrap_or(&[]))
                .map_err(E::stage("masked paths"))?;
            rootfs::readonly_paths(&Real, linux.readonly_paths().as_deref().unwrap_or(&[]))
                .map_err(E::stage("read-only paths"))?;
        }
    }
    if mount_ns
        && spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    {
        rootfs::readonly_root(&Real).map_err(E::stage("read-only root"))?;
    }
    if mount_ns {
        // Last of the mounts: "unbindable" forbids the binds above.
        rootfs::apply_root_propagation(&Real, spec).map_err(E::stage("rootfs propagation"))?;
    }
    Ok(())
}

/// The process's own settings: umask, personality, rlimits, OOM score.
fn process_settings(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
    proc_self: Option<&OwnedFd>,
) -> Result<(), ChildError> {
    use ChildError as E;
    // process.user.umask, else 0022 whatever amphi's caller had (as runc).
    let umask = process.user().umask().unwrap_or(0o022);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask & 0o777));
    // Before any seccomp filter, which may allow only some personalities.
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        let persona = personality_value(p).map_err(E::stage("personality"))?;
        // SAFETY: personality(2) takes an integer and changes only this process.
        if unsafe { libc::personality(persona) } == -1 {
            let e = std::io::Error::last_os_error();
            return Err(E::setup_errno(
                "personality",
                format!("linux.personality {persona:#x}: {e}"),
                e.raw_os_error(),
            ));
        }
    }

    for r in process.rlimits().iter().flatten() {
        set_rlimit(r.typ(), r.soft(), r.hard()).map_err(E::stage("rlimits"))?;
    }
    if let Some(adj) = process.oom_score_adj() {
        let failed = |source| InitError::OomScoreAdj { adj, source };
        let mut f = open_proc_self(proc_self, "oom_score_adj").map_err(failed)?;
        std::io::Write::write_all(&mut f, adj.to_string().as_bytes()).map_err(failed)?;
    }
    Ok(())
}

/// Who runs the process: uid, gid, groups and home.
struct Who {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    home: Option<String>,
}

/// The process's user: the spec's, or `amphi run`'s user name resolved
/// in the container's /etc/passwd and /etc/group.
fn resolve_user(a: &InitArgs<'_>, process: &oci_spec::runtime::Process) -> Result<Who, ChildError> {
    use ChildError as E;
    // Who runs the process.
    let mut uid = process.user().uid();
    let mut gid = process.user().gid();
    let mut groups: Vec<u32> = process.user().additional_gids().clone().unwrap_or_default();
    let mut home = None;
    if let Some(u) = &a.user_lookup {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let r = super::user::resolve(u, &passwd, &group).map_err(E::stage("user"))?;
        uid = r.uid;
        gid = r.gid;
        groups.extend(r.groups);
        home = Some(r.home);
    } else if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        home = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[2].parse::<u32>() == Ok(uid))
            .map(|f| f[5].to_string());
    }
    Ok(Who {
        uid,
        gid,
        groups,
        home,
    })
}

/// Capabilities, the seccomp filter when no_new_privs is off, groups and
/// ids: the process becomes its user with its capabilities.
fn become_user(
    a: &InitArgs<'_>,
    process: &oci_spec::runtime::Process,
    who: &Who,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<(), ChildError> {
    use ChildError as E;
    let (uid, gid, groups) = (who.uid, who.gid, &who.groups);
    // docker semantics for `amphi run`: a non-root user gets no
    // capabilities beyond the bounding set.
    let no_caps;
    let caps = if a.user_lookup.is_some() && uid != 0 {
        no_caps = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
            .bounding(
                process
                    .capabilities()
                    .as_ref()
                    .and_then(|c| c.bounding().clone())
                    .unwrap_or_default(),
            )
            .effective(oci_spec::runtime::Capabilities::new())
            .permitted(oci_spec::runtime::Capabilities::new())
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .map_err(InitError::NoCaps)?;
        Some(&no_caps)
    } else {
        process.capabilities().as_ref()
    };
    // Without no_new_privs (the spec's noNewPrivileges false), installing
    // a seccomp filter needs CAP_SYS_ADMIN, which the process is about to
    // lose: install it now, as runc does, rather than set no_new_privs
    // that the spec did not ask for. With no_new_privs it comes as late
    // as possible, below.
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if let (false, Some(seccomp)) = (no_new_privs, seccomp) {
        install_seccomp(seccomp, &a.sync)?;
    }
    let caps_err = E::stage("capabilities");
    super::caps::drop_bounding(caps).map_err(&caps_err)?;
    // Keep capabilities across the uid switch, then set them explicitly.
    rustix::thread::set_keep_capabilities(true).map_err(InitError::KeepCaps)?;
    if !a.in_userns || rustix::process::getuid().is_root() {
        let gids: Vec<libc::gid_t> = groups.to_vec();
        // SAFETY: plain syscall with a valid slice.
        if unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            if !(a.in_userns && e.raw_os_error() == Some(libc::EPERM)) {
                return Err(E::setup_errno(
                    "user",
                    format!("setgroups {groups:?}: {e}"),
                    e.raw_os_error(),
                ));
            }
        }
    }
    set_ids(uid, gid).map_err(E::stage("user"))?;
    rustix::thread::set_keep_capabilities(false).map_err(InitError::KeepCaps)?;
    super::caps::apply_sets(caps).map_err(&caps_err)?;

    Ok(())
}

/// The program to execute, resolved in the container, with its arguments
/// and environment as C strings.
struct Program {
    path: PathBuf,
    args: Vec<String>,
    cargs: Vec<CString>,
    cenv: Vec<CString>,
    env: Vec<String>,
    sealed_init: Option<(PathBuf, OwnedFd)>,
}

impl Program {
    fn new(
        process: &oci_spec::runtime::Process,
        home: Option<String>,
        sealed_init: Option<(PathBuf, OwnedFd)>,
    ) -> Result<Self, ChildError> {
        // Environment and the program.
        let mut env: Vec<String> = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", home.unwrap_or_else(|| "/".into())));
        }
        let args = process.args().clone().unwrap_or_default();
        // The config check refuses these already; an exec'd process (`exec
        // --process`) or a HOME from /etc/passwd is checked here.
        let cargs = crate::sys::cstr::args(&args).map_err(InitError::Nul)?;
        let cenv = crate::sys::cstr::env(&env).map_err(InitError::Nul)?;
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .to_string();
        let sealed_init = sealed_init.filter(|(p, _)| Path::new(&args[0]) == p);
        let program = match &sealed_init {
            Some((p, _)) => p.clone(),
            None => find_program(&args[0], &path_var)?,
        };

        Ok(Program {
            path: program,
            args,
            cargs,
            cenv,
            env,
            sealed_init,
        })
    }

    /// Executes the program; returns only on failure (told to `start`
    /// through the fifo too).
    fn exec(&self, start_fifo: Option<&std::fs::File>) -> ChildError {
        use ChildError as E;
        let (program, cargs, cenv, args, sealed_init) = (
            &self.path,
            &self.cargs,
            &self.cenv,
            &self.args,
            &self.sealed_init,
        );
        let Ok(cprog) = CString::new(program.as_os_str().as_encoded_bytes()) else {
            return InitError::ProgramNul.into();
        };
        let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = cenv.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        reset_signal_dispositions();
        match &sealed_init {
            // SAFETY: execveat of an O_PATH descriptor with AT_EMPTY_PATH;
            // argv/envp are NULL-terminated arrays of valid C strings that
            // outlive the call.
            Some((_, fd)) => unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
            },
            // SAFETY: as above: `cprog` is a C string and argv/envp are
            // NULL-terminated arrays of C strings, all alive for the call.
            None => unsafe {
                libc::execve(cprog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            },
        }
        let e = std::io::Error::last_os_error();
        let e = match e.raw_os_error() {
            Some(errno) => E::exec(&args[0], errno),
            None => E::setup("exec", format!("exec {}: {e}", args[0])),
        };
        if let Some(f) = start_fifo {
            tell_start(f, &e.encode());
        }
        e
    }
}

/// Installs the seccomp filter; its notification listener, when the spec
/// has a `listenerPath`, goes to the runtime (which passes it on to the
/// listener) and is closed here.
fn install_seccomp(
    seccomp: &oci_spec::runtime::LinuxSeccomp,
    sync: &Sync,
) -> Result<(), ChildError> {
    let listener = super::seccomp::install(seccomp).map_err(ChildError::stage("seccomp"))?;
    if let Some(fd) = listener {
        sync.send_seccomp_fd(&fd)
            .map_err(ChildError::stage("seccomp"))?;
    }
    Ok(())
}

/// Opens PATH under this process's /proc directory for writing: through
/// `proc_self` when the root has no /proc of its own, else /proc/self.
/// A fifo's open waits for its other end.
fn open_proc_self(proc_self: Option<&OwnedFd>, path: &str) -> std::io::Result<std::fs::File> {
    let fd = match proc_self {
        Some(dir) => rustix::fs::openat(
            dir,
            path,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?,
        None => rustix::fs::open(
            format!("/proc/self/{path}"),
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?,
    };
    Ok(std::fs::File::from(fd))
}

/// This process's binary (amphi's sealed copy), as an O_PATH descriptor.
fn open_self_exe() -> Result<OwnedFd, InitError> {
    rustix::fs::open(
        "/proc/self/exe",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(InitError::SelfExe)
}

/// personality(2)'s flag names (linux/personality.h) and their bits.
const PERSONALITY_FLAGS: &[(&str, libc::c_ulong)] = &[
    ("UNAME26", 0x0020000),
    ("ADDR_NO_RANDOMIZE", 0x0040000),
    ("FDPIC_FUNCPTRS", 0x0080000),
    ("MMAP_PAGE_ZERO", 0x0100000),
    ("ADDR_COMPAT_LAYOUT", 0x0200000),
    ("READ_IMPLIES_EXEC", 0x0400000),
    ("ADDR_LIMIT_32BIT", 0x0800000),
    ("SHORT_INODE", 0x1000000),
    ("WHOLE_SECONDS", 0x2000000),
    ("STICKY_TIMEOUTS", 0x4000000),
    ("ADDR_LIMIT_3GB", 0x8000000),
];

/// `linux.personality` as personality(2)'s argument: the domain (LINUX 0,
/// LINUX32 8) with the flags, named as in linux/personality.h. An unknown
/// flag is an error naming it (the config check refuses it before
/// anything starts).
pub fn personality_value(
    p: &oci_spec::runtime::LinuxPersonality,
) -> Result<libc::c_ulong, PersonalityError> {
    let mut v: libc::c_ulong = match p.domain() {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0,
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    for (i, f) in p.flags().iter().flatten().enumerate() {
        let bit = PERSONALITY_FLAGS
            .iter()
            .find(|(name, _)| name == f)
            .map(|(_, bit)| *bit)
            .ok_or_else(|| PersonalityError {
                index: i,
                flag: f.clone(),
            })?;
        v |= bit;
    }
    Ok(v)
}

/// Gives every signal its default action. Ignored signals stay ignored
/// across execve, and neither amphi's (the Rust runtime ignores SIGPIPE)
/// nor its caller's must leak into the container: a program there starts
/// as on a fresh system (as with runc). The raw system call also reaches
/// the signals libc reserves for itself (32, 33), which a caller may have
/// left ignored.
fn reset_signal_dispositions() {
    /// The kernel's `struct sigaction` (x86-64 and the generic layout).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid struct of the kernel's layout
        // and size of its signal set; we exec right after.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// Writes to `start` through the exec fifo (best effort: if `start` went
/// away there is nobody to tell).
fn tell_start(f: &std::fs::File, msg: &[u8]) {
    use std::io::Write;
    let _ = (&*f).write_all(msg);
}

pub(super) fn set_ids(uid: u32, gid: u32) -> Result<(), InitError> {
    // SAFETY: plain syscalls (raw, so only this thread changes: we are the
    // only thread of the cloned child).
    unsafe {
        if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
            return Err(InitError::SetGid {
                gid,
                source: std::io::Error::last_os_error(),
            });
        }
        if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
            return Err(InitError::SetUid {
                uid,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Resolves the program like execvp, with the container's PATH.
fn find_program(arg0: &str, path: &str) -> Result<PathBuf, ChildError> {
    if arg0.contains('/') {
        return match std::fs::metadata(arg0) {
            Ok(_) => Ok(PathBuf::from(arg0)),
            Err(e) => Err(match e.raw_os_error() {
                Some(errno) => ChildError::exec(arg0, errno),
                None => ChildError::setup("exec", format!("exec {arg0}: {e}")),
            }),
        };
    }
    for dir in path.split(':') {
        let p = Path::new(if dir.is_empty() { "." } else { dir }).join(arg0);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() {
                return Ok(p);
            }
        }
    }
    Err(ChildError::NotFound {
        program: arg0.into(),
        searched_path: true,
    })
}

fn set_rlimit(t: PosixRlimitType, soft: u64, hard: u64) -> Result<(), InitError> {
    let name = serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let res = match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(res, &lim) } != 0 {
        let source = std::io::Error::last_os_error();
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointer to a local rlimit.
        unsafe { libc::getrlimit(res, &mut cur) };
        return Err(InitError::Rlimit {
            name,
            soft,
            hard,
            max: cur.rlim_max,
            source,
        });
    }
    Ok(())
}

/// Marks every fd from `from` up close-on-exec.
fn close_fds_from(from: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        for fd in from..1024 {
            // SAFETY: fcntl on arbitrary fds is harmless (EBADF when closed).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Brings `lo` up in a fresh network namespace.
fn loopback_up() {
    // SAFETY: a plain socket + ioctl on a zeroed, correctly sized ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        libc::close(s);
    }
}

/// A pty for the process: the slave becomes its stdio and controlling
/// terminal and, in a mount namespace of its own, is bound onto
/// /dev/console (as the runtime spec asks of `process.terminal`); the
/// master goes to the console socket (or the parent).
fn setup_terminal(a: &mut InitArgs<'_>, mount_ns: bool) -> Result<(), InitError> {
    let (master, slave, name) = open_pty()?;
    if mount_ns {
        bind_console(&name)?;
    }
    if let Some(size) = a.spec.process().as_ref().and_then(|p| p.console_size()) {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    match a.console.take() {
        Some(sock) => super::sync::send_fd(&sock, &master, "console")?,
        None => a.sync.send_fd(&master)?,
    }
    drop(master);
    // SAFETY: TIOCSCTTY on our own new session; dup2 onto stdio.
    unsafe {
        if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            return Err(InitError::Ctty(std::io::Error::last_os_error()));
        }
        for fd in 0..3 {
            if libc::dup2(slave.as_raw_fd(), fd) < 0 {
                return Err(InitError::Dup2(std::io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Opens a new pty (in the container's devpts) and its slave, close-on-exec
/// and without making it a controlling terminal: (master, slave, the
/// slave's path).
fn open_pty() -> Result<(OwnedFd, OwnedFd, std::ffi::OsString), InitError> {
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .map_err(InitError::Ptmx)?;
    rustix::pty::grantpt(&master).map_err(InitError::Grantpt)?;
    rustix::pty::unlockpt(&master).map_err(InitError::Unlockpt)?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(InitError::Ptsname)?;
    let name = std::ffi::OsStr::from_bytes_ext(name.to_bytes()).to_os_string();
    let slave = rustix::fs::open(
        Path::new(&name),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(InitError::PtySlave)?;
    Ok((master, slave, name))
}

/// A console-only pty (the process has no terminal): its slave is bound
/// onto /dev/console and is neither the process's stdio nor its
/// controlling terminal; the master goes to the parent, which copies what
/// is written there to the run's output. Output post-processing is off
/// (no `\n` → `\r\n`), since that output goes to a file or pipe rather than a
/// terminal. Returns the slave, for the caller to keep open until exec.
fn setup_console_pty(a: &InitArgs<'_>) -> Result<OwnedFd, InitError> {
    let (master, slave, name) = open_pty()?;
    if let Ok(mut t) = rustix::termios::tcgetattr(&slave) {
        t.output_modes.remove(rustix::termios::OutputModes::ONLCR);
        let _ = rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t);
    }
    bind_console(&name)?;
    a.sync.send_console_fd(&master)?;
    Ok(slave)
}

/// Binds the pty slave onto /dev/console, which is made an empty regular
/// file first unless it is one or a device node already (a symlink, from
/// an image or a bundle, is replaced: the bind must not follow it).
fn bind_console(slave: &std::ffi::OsStr) -> Result<(), InitError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
    let path = "/dev/console";
    match rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let t = FileType::from_raw_mode(st.st_mode);
            if !matches!(t, FileType::RegularFile | FileType::CharacterDevice) {
                rustix::fs::unlinkat(CWD, path, AtFlags::empty()).map_err(|source| {
                    InitError::ConsoleRemove {
                        path,
                        kind: t,
                        source,
                    }
                })?;
            }
        }
        Err(rustix::io::Errno::NOENT) => {}
        Err(source) => return Err(InitError::ConsoleStat { path, source }),
    }
    let as_path = || {
        rustix::fs::open(
            path,
            OFlags::NOFOLLOW | OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let target = as_path()
        .or_else(|_| {
            // O_PATH does not create: create it, then open it as a path.
            rustix::fs::open(
                path,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            )?;
            as_path()
        })
        .map_err(|source| InitError::ConsoleCreate { path, source })?;
    let dest = format!("/proc/self/fd/{}", target.as_raw_fd());
    rustix::mount::mount_bind(slave, dest.as_str())
        .map_err(|source| InitError::ConsoleBind { path, source })
}

trait OsStrExt2 {
    fn from_bytes_ext(b: &[u8]) -> &std::ffi::OsStr;
}
impl OsStrExt2 for std::ffi::OsStr {
    fn from_bytes_ext(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Runs hooks (in the child: createContainer, startContainer) with the
/// container state on their stdin.
pub fn run_hooks(
    hooks: Option<Vec<oci_spec::runtime::Hook>>,
    stage: &str,
    state: &str,
) -> Result<(), HookError> {
    for h in hooks.unwrap_or_default() {
        super::hooks::run(&h, stage, Some(state))?;
    }
    Ok(())
}
