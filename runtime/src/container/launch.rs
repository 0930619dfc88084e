//! The runtime side of starting a container: clone into new namespaces,
//! put the child in its cgroup, write its id maps, run the runtime hooks,
//! and wait for it to be ready (or to report why it is not).

use super::cgroups::{Cgroup, CgroupError};
use super::devices::{DevicesError, Rule};
use super::hooks::HookError;
use super::sealed::SealedError;
use super::setup::{child_main, InitArgs, PayloadError};
use super::sync::{ChildError, Msg, Sync, SyncError};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How to launch.
pub struct LaunchOptions {
    pub id: String,
    /// `create`: the child blocks on this fifo until `start`. Made the
    /// process user's (as the host sees it), who opens it for writing.
    pub exec_fifo: Option<PathBuf>,
    /// runc's `--console-socket`: a unix socket path to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// docker-style user name to resolve in the container.
    pub user_lookup: Option<String>,
    pub preserve_fds: i32,
    /// State JSON for hooks, without the pid (filled in here, and by the
    /// child for the hooks it runs).
    pub state_template: serde_json::Value,
    /// Whether the cgroup is this launch's own (removed on failure), or a
    /// running container's that an exec joins.
    pub owns_cgroup: bool,
    /// Whether the container process runs from a sealed copy of amphi's
    /// binary (container::sealed; always on a host). Inside a microVM the
    /// guest kernel is the boundary, and the guest's binary is its own.
    pub sealed: bool,
    /// A console-only pty: when the process has no terminal, the setup
    /// stage opens a pty whose slave is bound onto /dev/console only (not
    /// the process's stdio, not its controlling terminal) and sends the
    /// master back ([`Launched::console`]), for the runtime to copy what
    /// is written there to the run's output. `amphi run` asks for it in
    /// systemd mode without `-t` (systemd as PID 1 writes only to
    /// /dev/console); nothing in a spec or bundle turns it on.
    pub console_pty: bool,
}

/// Why a container could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The container process reported why it could not start (the
    /// program is missing or not executable, or a setup step failed).
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The clone itself failed.
    #[error("clone with namespaces {flags:#x}: {source}")]
    Clone {
        flags: i32,
        #[source]
        source: std::io::Error,
    },
    /// The runtime's side failed: the cgroup, device rules, console
    /// socket, exec fifo, id maps, runtime hooks, the sync socket.
    #[error(transparent)]
    Runtime(#[from] ParentError),
}

/// What failed on the runtime's side of a launch.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error("console socket {}: {source}", path.display())]
    ConsoleSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Devices(#[from] DevicesError),
    #[error("exec fifo {}: {source}", path.display())]
    ExecFifo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Sealed(#[from] SealedError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("a user namespace needs linux.uidMappings and linux.gidMappings")]
    NoIdMaps,
    #[error("writing {file} {content:?}: {source}")]
    IdMap {
        file: &'static str,
        content: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("the container sent a seccomp listener that was not asked for")]
    UnaskedListener,
    #[error("linux.seccomp.listenerPath {}: {source}", path.display())]
    ListenerConnect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("linux.seccomp.listenerPath {}: {source}", path.display())]
    ListenerSend { path: PathBuf, source: SyncError },
    #[error("the container sent a console pty that was not asked for")]
    UnaskedConsole,
    #[error("the container process died during setup")]
    DiedDuringSetup,
}

/// The runtime's errors reach a launch's caller as [`LaunchError::Runtime`].
macro_rules! runtime_errors {
    ($($t:ty),*) => {
        $(impl From<$t> for LaunchError {
            fn from(e: $t) -> Self {
                LaunchError::Runtime(e.into())
            }
        })*
    };
}
runtime_errors!(
    CgroupError,
    DevicesError,
    SyncError,
    SealedError,
    PayloadError,
    NamespaceError,
    HookError
);

/// A namespace given by path could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace {typ} at {}: {source}", path.display())]
    Open {
        typ: LinuxNamespaceType,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("joining {typ} namespace {}: {source}", path.display())]
    Join {
        typ: LinuxNamespaceType,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A launched container.
pub struct Launched {
    pub pid: i32,
    pub cgroup: Cgroup,
    /// The pty master when `process.terminal` is set and no console socket
    /// was given (`amphi run -t`).
    pub pty: Option<OwnedFd>,
    /// The console-only pty ([`LaunchOptions::console_pty`]).
    pub console: Option<ConsolePty>,
}

/// A console-only pty, as the runtime holds it: the master to read, and a
/// descriptor of the slave taken the moment the master arrived
/// ([`pty_peer`]), to hold until the workload exits (a workload that
/// closes /dev/console, as systemd does before it reopens it, would
/// otherwise hang the master up).
pub struct ConsolePty {
    pub master: OwnedFd,
    pub slave: Option<OwnedFd>,
}

/// A new descriptor of the slave side of the pty `master` (`TIOCGPTPEER`:
/// no path is looked up, so it works whatever mount namespace the pty's
/// devpts lives in), close-on-exec and never a controlling terminal.
pub fn pty_peer(master: &impl AsFd) -> Option<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER on a pty master takes the open flags as its
    // argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER, flags) };
    // SAFETY: a new descriptor the ioctl just returned, owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ns_flag(t: LinuxNamespaceType) -> i32 {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

fn open_ns(path: &Path, t: LinuxNamespaceType) -> Result<std::fs::File, NamespaceError> {
    std::fs::File::open(path).map_err(|source| NamespaceError::Open {
        typ: t,
        path: path.into(),
        source,
    })
}

fn set_ns(f: &std::fs::File, path: &Path, t: LinuxNamespaceType) -> Result<(), NamespaceError> {
    // SAFETY: setns takes an fd (`f`, open for the call) and a flag; no memory.
    if unsafe { libc::setns(f.as_raw_fd(), ns_flag(t)) } != 0 {
        return Err(NamespaceError::Join {
            typ: t,
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn join_ns(path: &Path, t: LinuxNamespaceType) -> Result<(), NamespaceError> {
    set_ns(&open_ns(path, t)?, path, t)
}

/// The host id of `id` in the container: through the user namespace's
/// mappings when the spec has them, else the same id.
fn host_id(id: u32, maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>) -> Option<u32> {
    match maps {
        Some(maps) if !maps.is_empty() => maps.iter().find_map(|m| {
            let off = id.checked_sub(m.container_id())?;
            (off < m.size()).then(|| m.host_id() + off)
        }),
        _ => Some(id),
    }
}

/// Gives the exec fifo to the user the process will run as (it opens it
/// for writing after switching to that user, and in a user namespace even
/// its root has no rights over host root's files), and opens it O_PATH for
/// the child: the state directory's path may not be searchable from the
/// container's user namespace.
fn prepare_exec_fifo(p: &Path, spec: &Spec, in_userns: bool) -> Result<OwnedFd, ParentError> {
    let failed = |source| ParentError::ExecFifo {
        path: p.into(),
        source,
    };
    let user = spec.process().as_ref().map(|p| p.user().clone());
    let (uid, gid) = user.map(|u| (u.uid(), u.gid())).unwrap_or((0, 0));
    let linux = spec.linux().as_ref();
    let (uid_maps, gid_maps) = match linux {
        Some(l) if in_userns => (l.uid_mappings().as_ref(), l.gid_mappings().as_ref()),
        _ => (None, None),
    };
    // Unmapped ids fail later, with a clear error, when the child switches.
    if let (Some(u), Some(g)) = (host_id(uid, uid_maps), host_id(gid, gid_maps)) {
        std::os::unix::fs::chown(p, Some(u), Some(g)).map_err(failed)?;
    }
    rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| failed(e.into()))
}

/// The state the create-time hooks (prestart, createRuntime,
/// createContainer) read on stdin. They run after the runtime environment
/// is created (the lifecycle's step 2), so the status is "created".
pub fn hook_state(template: &serde_json::Value) -> serde_json::Value {
    let mut state = template.clone();
    if state["status"] == "creating" {
        state["status"] = "created".into();
    }
    state
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), ParentError> {
    let linux = spec.linux().as_ref();
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(&linux.and_then(|l| l.uid_mappings().clone()));
    let gid = fmt(&linux.and_then(|l| l.gid_mappings().clone()));
    if uid.is_empty() || gid.is_empty() {
        return Err(ParentError::NoIdMaps);
    }
    for (file, content) in [("uid_map", uid), ("gid_map", gid)] {
        std::fs::write(format!("/proc/{pid}/{file}"), &content).map_err(|source| {
            ParentError::IdMap {
                file,
                content,
                source,
            }
        })?;
    }
    Ok(())
}

/// `linux.seccomp.listenerPath`: the unix socket the container's seccomp
/// notification listener goes to, with the container's process state (as
/// runc sends it: `ociVersion`, `fds: ["seccompFd"]`, `pid`, `metadata`,
/// `state`). Dropped before the listener was passed on (any error on the
/// way), it connects and closes at once, so that the agent waiting on the
/// socket sees end-of-file instead of waiting forever.
struct SeccompListener {
    path: Option<PathBuf>,
    metadata: Option<String>,
    done: bool,
}

impl SeccompListener {
    fn new(spec: &Spec) -> SeccompListener {
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        SeccompListener {
            path: seccomp.and_then(|s| s.listener_path().clone()),
            metadata: seccomp.and_then(|s| s.listener_metadata().clone()),
            done: false,
        }
    }

    /// The message that goes with the listener.
    fn message(&self, state: &serde_json::Value) -> serde_json::Value {
        let mut m = serde_json::json!({
            "ociVersion": state["ociVersion"],
            "fds": ["seccompFd"],
            "pid": state["pid"],
            "state": state,
        });
        if let Some(meta) = &self.metadata {
            m["metadata"] = meta.clone().into();
        }
        m
    }

    /// Passes the listener on (once; the connection is closed after).
    fn send(&mut self, fd: &OwnedFd, state: &serde_json::Value) -> Result<(), ParentError> {
        self.done = true;
        let Some(path) = &self.path else {
            return Err(ParentError::UnaskedListener);
        };
        let conn = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
            ParentError::ListenerConnect {
                path: path.clone(),
                source,
            }
        })?;
        super::sync::send_fd(&OwnedFd::from(conn), fd, &self.message(state).to_string()).map_err(
            |source| ParentError::ListenerSend {
                path: path.clone(),
                source,
            },
        )
    }
}

impl Drop for SeccompListener {
    fn drop(&mut self) {
        if let (false, Some(p)) = (self.done, &self.path) {
            // Connected and closed: the agent sees end-of-file.
            let _ = std::os::unix::net::UnixStream::connect(p);
        }
    }
}

/// What the runtime makes before the clone.
struct Prepared {
    /// Told (end-of-file) if the launch fails before it is passed on.
    seccomp_listener: SeccompListener,
    /// The console socket, connected.
    console: Option<OwnedFd>,
    /// The clone's namespace flags.
    flags: libc::c_int,
    /// Namespaces joined by path.
    joins: Vec<(PathBuf, LinuxNamespaceType)>,
    in_userns: bool,
    cgroup: Cgroup,
    device_rules: Vec<Rule>,
    exec_fifo: Option<OwnedFd>,
    parent: Sync,
    child: Sync,
    /// The sealed setup stage: binary, payload, descriptors it keeps.
    stage: Option<(OwnedFd, OwnedFd, Vec<i32>)>,
}

/// Clones the container process. On error nothing is left: the child is
/// killed and reaped, its cgroup removed.
pub fn launch(spec: &Spec, rootfs: &Path, opts: LaunchOptions) -> Result<Launched, LaunchError> {
    let Prepared {
        mut seccomp_listener,
        console,
        flags,
        joins,
        in_userns,
        mut cgroup,
        device_rules,
        exec_fifo,
        parent,
        child,
        stage,
    } = prepare(spec, rootfs, &opts)?;
    let pid = clone_process(flags)?;
    if pid == 0 {
        drop(parent);
        child_side(ChildSide {
            spec,
            rootfs,
            opts: &opts,
            child,
            exec_fifo,
            console,
            stage: stage.as_ref(),
            joins: &joins,
            flags,
            in_userns,
        });
    }
    drop(stage);
    drop(child);
    drop(console);
    drop(exec_fifo);
    let new_userns = in_userns && flags & libc::CLONE_NEWUSER != 0;
    let devices = opts.owns_cgroup.then_some(device_rules.as_slice());
    let started = parent_side(spec, &opts, &parent, pid, new_userns, &mut cgroup, devices)
        .and_then(|()| receive(&parent, &opts, pid, &mut seccomp_listener));
    match started {
        Ok((pty, console)) => Ok(Launched {
            pid,
            cgroup,
            pty,
            console,
        }),
        Err(e) => {
            abort(pid, &cgroup, opts.owns_cgroup);
            Err(e)
        }
    }
}

/// Everything made before the clone, in the order that leaves nothing
/// behind on an error: first the seccomp listener's agent and the console
/// socket (each told by end-of-file if anything below fails), then the
/// checks, the exec fifo, the sync socket and the setup stage; last, a pid
/// namespace to join (it applies to children).
fn prepare(spec: &Spec, rootfs: &Path, opts: &LaunchOptions) -> Result<Prepared, LaunchError> {
    let seccomp_listener = SeccompListener::new(spec);
    let console = match &opts.console_socket {
        Some(p) => {
            let s = std::os::unix::net::UnixStream::connect(p).map_err(|source| {
                ParentError::ConsoleSocket {
                    path: p.clone(),
                    source,
                }
            })?;
            Some(OwnedFd::from(s))
        }
        None => None,
    };
    let linux = spec.linux().as_ref();
    let namespaces = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let (flags, joins) = namespace_plan(&namespaces);
    let in_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let cgroup = Cgroup::new(linux.and_then(|l| l.cgroups_path().as_deref()), &opts.id)?;
    // A new container's device rules, checked before anything exists.
    let device_rules = super::devices::effective(
        linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().as_deref()),
    )?;
    let exec_fifo = match &opts.exec_fifo {
        Some(p) => Some(prepare_exec_fifo(p, spec, in_userns)?),
        None => None,
    };
    let (parent, child) = Sync::pair()?;
    // The child executes amphi's sealed binary as its setup stage, with
    // its arguments in a memfd: made here, so the child only executes.
    let stage = if opts.sealed {
        Some(setup_stage(
            spec, rootfs, opts, &child, &exec_fifo, &console, in_userns,
        )?)
    } else {
        None
    };
    // A pid namespace to join must be entered before the clone (it applies
    // to children); the others are joined by the child itself, user first.
    for (p, t) in &joins {
        if *t == LinuxNamespaceType::Pid {
            join_ns(p, *t)?;
        }
    }
    Ok(Prepared {
        seccomp_listener,
        console,
        flags,
        joins,
        in_userns,
        cgroup,
        device_rules,
        exec_fifo,
        parent,
        child,
        stage,
    })
}

/// Clones the container process into new namespaces (`flags`): returns
/// its pid, and 0 in the child.
fn clone_process(flags: libc::c_int) -> Result<i32, LaunchError> {
    // Non-dumpable from before the clone until the workload is executed
    // (execve makes a process dumpable again): the container's processes
    // cannot open /proc/PID/exe, /proc/PID/mem or /proc/PID/fd of a process
    // that still runs amphi (the CVE-2019-5736 class; see sealed.rs).
    // SAFETY: PR_SET_DUMPABLE takes only integers and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    // SAFETY: a fork-like clone (no new stack: the child continues on a
    // copy of ours). amphi is single-threaded here, so the child may run
    // ordinary code until exec.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if pid < 0 {
        return Err(LaunchError::Clone {
            flags,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(pid as i32)
}

/// The runtime's part while the child waits for `go`: the id maps of a
/// new user namespace, the cgroup (with `devices`, a new container's
/// device rules), the runtime hooks; then `go`.
fn parent_side(
    spec: &Spec,
    opts: &LaunchOptions,
    parent: &Sync,
    pid: i32,
    new_userns: bool,
    cgroup: &mut Cgroup,
    devices: Option<&[Rule]>,
) -> Result<(), LaunchError> {
    if new_userns {
        write_id_maps(pid, spec)?;
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    cgroup.apply(pid, resources, devices)?;
    run_runtime_hooks(spec, &opts.state_template, pid)?;
    if let Err(e) = parent.send_go(pid) {
        // The child may have died with a reason (e.g. joining a namespace).
        return Err(match parent.recv() {
            Ok(Msg::Error(m)) => m.into(),
            _ => e.into(),
        });
    }
    Ok(())
}

/// A launch that failed after the clone: the child is killed and reaped,
/// its cgroup removed when it is the launch's own.
fn abort(pid: i32, cgroup: &Cgroup, owns_cgroup: bool) {
    // SAFETY: kill/waitpid on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    if owns_cgroup {
        let _ = cgroup.remove();
    }
}

/// The namespaces the clone makes (its flags) and those the child joins
/// by path. A new cgroup namespace is made by the child once it is in its
/// cgroup (see init), so that cgroup becomes the namespace's root.
fn namespace_plan(
    namespaces: &[oci_spec::runtime::LinuxNamespace],
) -> (libc::c_int, Vec<(PathBuf, LinuxNamespaceType)>) {
    let mut flags = 0;
    let mut joins = Vec::new();
    for ns in namespaces {
        match ns.path() {
            None if ns.typ() == LinuxNamespaceType::Cgroup => {}
            None => flags |= ns_flag(ns.typ()),
            Some(p) => joins.push((p.clone(), ns.typ())),
        }
    }
    (flags, joins)
}

/// The sealed setup stage's binary, its arguments in a memfd, and the
/// descriptors it keeps.
#[allow(clippy::type_complexity)]
fn setup_stage(
    spec: &Spec,
    rootfs: &Path,
    opts: &LaunchOptions,
    child: &Sync,
    exec_fifo: &Option<OwnedFd>,
    console: &Option<OwnedFd>,
    in_userns: bool,
) -> Result<(OwnedFd, OwnedFd, Vec<i32>), LaunchError> {
    let sealed = crate::container::sealed::binary()?;
    let fd = |f: &Option<OwnedFd>| f.as_ref().map(|f| f.as_raw_fd());
    let payload = super::setup::StagePayload {
        spec: spec.clone(),
        rootfs: rootfs.to_path_buf(),
        sync_fd: child.as_fd().as_raw_fd(),
        exec_fifo_fd: fd(exec_fifo),
        console_fd: fd(console),
        user_lookup: opts.user_lookup.clone(),
        in_userns,
        preserve_fds: opts.preserve_fds,
        state: opts.state_template.clone(),
        console_pty: opts.console_pty,
    };
    let mut keep = vec![payload.sync_fd];
    keep.extend(payload.exec_fifo_fd);
    keep.extend(payload.console_fd);
    Ok((sealed, payload.to_memfd()?, keep))
}

/// The prestart and createRuntime hooks, in the runtime's namespaces,
/// with the state of the created container.
fn run_runtime_hooks(
    spec: &Spec,
    template: &serde_json::Value,
    pid: i32,
) -> Result<(), LaunchError> {
    let Some(h) = spec.hooks() else {
        return Ok(());
    };
    let mut state = hook_state(template);
    state["pid"] = pid.into();
    let state_s = state.to_string();
    #[allow(deprecated)]
    super::hooks::run_all(h.prestart().as_ref(), "prestart", &state_s)?;
    super::hooks::run_all(h.create_runtime().as_ref(), "createRuntime", &state_s)?;
    Ok(())
}

/// What the cloned child needs.
struct ChildSide<'a> {
    spec: &'a Spec,
    rootfs: &'a Path,
    opts: &'a LaunchOptions,
    child: Sync,
    exec_fifo: Option<OwnedFd>,
    console: Option<OwnedFd>,
    stage: Option<&'a (OwnedFd, OwnedFd, Vec<i32>)>,
    joins: &'a [(PathBuf, LinuxNamespaceType)],
    flags: libc::c_int,
    in_userns: bool,
}

/// The cloned child: joins the namespaces given by path, then executes
/// the sealed setup stage (or runs the setup in this process).
fn child_side(c: ChildSide<'_>) -> ! {
    let ChildSide {
        spec,
        rootfs,
        opts,
        child,
        exec_fifo,
        console,
        stage,
        joins,
        flags,
        in_userns,
    } = c;
    if in_userns {
        // In a user namespace a non-dumpable process's /proc/self
        // belongs to the host's root, whom the container's root cannot
        // act for (oom_score_adj, /proc/self/fd). There the
        // container's root is not the host's, and the binary is sealed.
        // SAFETY: PR_SET_DUMPABLE takes only integers and changes only this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    }
    let mut joins_child = joins.to_vec();
    joins_child.retain(|(_, t)| *t != LinuxNamespaceType::Pid);
    // User first (it grants the rights for the others), mount last
    // (it changes what /proc shows); all opened before any is joined.
    joins_child.sort_by_key(|(_, t)| match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    let r = joins_child
        .iter()
        .map(|(p, t)| open_ns(p, *t).map(|f| (f, p, *t)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|fds| fds.iter().try_for_each(|(f, p, t)| set_ns(f, p, *t)));
    if let Err(e) = r {
        child.send_error(&ChildError::stage("namespaces")(e));
        // SAFETY: leaving the forked child without unwinding.
        unsafe { libc::_exit(1) }
    }
    if let Some((sealed, payload, keep)) = stage {
        // In a new user namespace the process has no ids until the
        // runtime writes its maps, and an exec without them would
        // drop its capabilities: it waits for `go` first there.
        // In any user namespace (new or joined), it becomes the
        // namespace's root before the exec, which then gives it the
        // namespace's capabilities (the host's root is not mapped
        // there).
        let r = if flags & libc::CLONE_NEWUSER != 0 {
            child.wait_go().map(Some)
        } else {
            Ok(None)
        }
        .map_err(ChildError::stage("user namespace"))
        .and_then(|go| {
            if in_userns {
                super::setup::set_ids(0, 0).map_err(ChildError::stage("user namespace"))?;
            }
            Ok(go)
        });
        let go = match r {
            Ok(go) => go,
            Err(e) => {
                child.send_error(&e);
                // SAFETY: leaving the forked child without unwinding.
                unsafe { libc::_exit(1) }
            }
        };
        let e = super::setup::exec_setup_stage(sealed, payload, keep, go);
        child.send_error(&e);
        // SAFETY: leaving the forked child without unwinding.
        unsafe { libc::_exit(1) }
    }
    child_main(InitArgs {
        spec,
        rootfs: rootfs.to_path_buf(),
        sync: child,
        exec_fifo,
        console,
        user_lookup: opts.user_lookup.clone(),
        in_userns,
        preserve_fds: opts.preserve_fds,
        state: opts.state_template.clone(),
        go: None,
        console_pty: opts.console_pty,
    });
}

/// After `go`: what the child sends until it is ready (or, for `run`, has
/// executed the workload): the terminal's pty, the console-only pty, the
/// seccomp listener (passed on to the agent).
fn receive(
    parent: &Sync,
    opts: &LaunchOptions,
    pid: i32,
    seccomp_listener: &mut SeccompListener,
) -> Result<(Option<OwnedFd>, Option<ConsolePty>), LaunchError> {
    let mut pty = None;
    let mut console = None;
    loop {
        match parent.recv() {
            Ok(Msg::Fd(fd)) => pty = Some(fd),
            Ok(Msg::Console(master)) if opts.console_pty => {
                // The slave at once: the setup stage holds its own only
                // until it executes the workload.
                let slave = pty_peer(&master);
                console = Some(ConsolePty { master, slave });
            }
            Ok(Msg::Console(_)) => return Err(ParentError::UnaskedConsole.into()),
            Ok(Msg::Seccomp(fd)) => {
                let mut st = opts.state_template.clone();
                st["pid"] = pid.into();
                seccomp_listener.send(&fd, &st)?;
            }
            Ok(Msg::Ready) => break,
            Ok(Msg::Eof) if opts.exec_fifo.is_none() => break,
            Ok(Msg::Eof) => return Err(ParentError::DiedDuringSetup.into()),
            Ok(Msg::Error(e)) => return Err(e.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((pty, console))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxIdMappingBuilder;

    #[test]
    fn host_ids_through_the_mappings() {
        let m = vec![
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(100000u32)
                .size(1000u32)
                .build()
                .unwrap(),
            LinuxIdMappingBuilder::default()
                .container_id(1000u32)
                .host_id(5000u32)
                .size(1u32)
                .build()
                .unwrap(),
        ];
        assert_eq!(host_id(0, Some(&m)), Some(100000));
        assert_eq!(host_id(999, Some(&m)), Some(100999));
        assert_eq!(host_id(1000, Some(&m)), Some(5000));
        assert_eq!(host_id(1001, Some(&m)), None);
        assert_eq!(host_id(1001, None), Some(1001));
        assert_eq!(host_id(7, Some(&Vec::new())), Some(7));
    }
}
