//! The runtime side of starting a container: clone into new namespaces,
//! put the child in its cgroup, write its id maps, run the runtime hooks,
//! and wait for it to be ready (or to report why it is not).

use super::cgroups::Cgroup;
use super::init::{child_main, InitArgs};
use super::sync::{Msg, Sync};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How to launch.
pub struct LaunchOptions {
    pub id: String,
    /// `create`: the child blocks on this fifo until `start`.
    pub exec_fifo: Option<PathBuf>,
    /// runc's `--console-socket`: a unix socket path to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// docker-style user name to resolve in the container.
    pub user_lookup: Option<String>,
    pub preserve_fds: i32,
    /// State JSON for hooks (filled in with the pid by the caller's template).
    pub state_template: serde_json::Value,
    /// Whether the cgroup is this launch's own (removed on failure), or a
    /// running container's that an exec joins.
    pub owns_cgroup: bool,
}

/// A launched container.
pub struct Launched {
    pub pid: i32,
    pub cgroup: Cgroup,
    /// The pty master when `process.terminal` is set and no console socket
    /// was given (`amphi run -t`).
    pub pty: Option<OwnedFd>,
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

fn open_ns(path: &Path, t: LinuxNamespaceType) -> Result<std::fs::File, String> {
    std::fs::File::open(path).map_err(|e| format!("namespace {t} at {}: {e}", path.display()))
}

fn set_ns(f: &std::fs::File, path: &Path, t: LinuxNamespaceType) -> Result<(), String> {
    // SAFETY: setns on a valid fd.
    if unsafe { libc::setns(f.as_raw_fd(), ns_flag(t)) } != 0 {
        return Err(format!(
            "joining {t} namespace {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn join_ns(path: &Path, t: LinuxNamespaceType) -> Result<(), String> {
    set_ns(&open_ns(path, t)?, path, t)
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), String> {
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
        return Err("a user namespace needs linux.uidMappings and linux.gidMappings".into());
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
        .map_err(|e| format!("writing uid_map {uid:?}: {e}"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
        .map_err(|e| format!("writing gid_map {gid:?}: {e}"))?;
    Ok(())
}

/// Clones the container process. On error nothing is left: the child is
/// killed and reaped, its cgroup removed.
pub fn launch(spec: &Spec, rootfs: &Path, opts: LaunchOptions) -> Result<Launched, String> {
    let linux = spec.linux().as_ref();
    let namespaces = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut flags = 0;
    let mut joins = Vec::new();
    for ns in &namespaces {
        match ns.path() {
            None => flags |= ns_flag(ns.typ()),
            Some(p) => joins.push((p.clone(), ns.typ())),
        }
    }
    let in_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let cgroup = Cgroup::new(linux.and_then(|l| l.cgroups_path().as_deref()), &opts.id)?;

    let console = match &opts.console_socket {
        Some(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)
                .map_err(|e| format!("console socket {}: {e}", p.display()))?;
            Some(OwnedFd::from(s))
        }
        None => None,
    };
    let (parent, child) = Sync::pair()?;

    // A pid namespace to join must be entered before the clone (it applies
    // to children); the others are joined by the child itself, user first.
    for (p, t) in &joins {
        if *t == LinuxNamespaceType::Pid {
            join_ns(p, *t)?;
        }
    }

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
        return Err(format!(
            "clone with namespaces {:#x}: {}",
            flags,
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(parent);
        let mut joins_child = joins.clone();
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
            child.send_error(&e);
            // SAFETY: leaving the forked child without unwinding.
            unsafe { libc::_exit(1) }
        }
        child_main(InitArgs {
            spec,
            rootfs: rootfs.to_path_buf(),
            sync: child,
            exec_fifo: opts.exec_fifo.clone(),
            console,
            user_lookup: opts.user_lookup.clone(),
            in_userns,
            preserve_fds: opts.preserve_fds,
        });
    }
    drop(child);
    drop(console);
    let pid = pid as i32;
    let owns_cgroup = opts.owns_cgroup;
    let fail = |msg: String, cgroup: &Cgroup| -> String {
        // SAFETY: kill/waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if owns_cgroup {
            let _ = cgroup.remove();
        }
        msg
    };

    if in_userns && flags & libc::CLONE_NEWUSER != 0 {
        if let Err(e) = write_id_maps(pid, spec) {
            return Err(fail(e, &cgroup));
        }
    }
    let resources = linux.and_then(|l| l.resources().as_ref());
    if let Err(e) = cgroup.apply(pid, resources) {
        return Err(fail(e, &cgroup));
    }
    let mut state = opts.state_template.clone();
    state["pid"] = pid.into();
    let state_s = state.to_string();
    if let Some(h) = spec.hooks() {
        #[allow(deprecated)]
        let r = super::hooks::run_all(h.prestart().as_ref(), "prestart", &state_s).and_then(|()| {
            super::hooks::run_all(h.create_runtime().as_ref(), "createRuntime", &state_s)
        });
        if let Err(e) = r {
            return Err(fail(e, &cgroup));
        }
    }
    if let Err(e) = parent.send_go() {
        // The child may have died with a reason (e.g. joining a namespace).
        let why = match parent.recv() {
            Ok(Msg::Error(m)) => m,
            _ => e,
        };
        return Err(fail(why, &cgroup));
    }
    let mut pty = None;
    loop {
        match parent.recv() {
            Ok(Msg::Fd(fd)) => pty = Some(fd),
            Ok(Msg::Ready) => break,
            Ok(Msg::Eof) if opts.exec_fifo.is_none() => break,
            Ok(Msg::Eof) => {
                return Err(fail(
                    "the container process died during setup".into(),
                    &cgroup,
                ))
            }
            Ok(Msg::Error(e)) => return Err(fail(e, &cgroup)),
            Err(e) => return Err(fail(e, &cgroup)),
        }
    }
    Ok(Launched { pid, cgroup, pty })
}
