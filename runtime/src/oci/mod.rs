//! The runc-compatible runtime commands that podman, containerd and
//! Kubernetes drive: `create`, `start`, `state`, `kill`, `delete`, `ps`,
//! `features`, `spec` here, and in their own files `exec`, `run`,
//! `pause`/`resume`, `update`, `events`, `list`, `checkpoint`/`restore`.

mod checkpoint;
mod events;
mod exec;
mod list;
mod pause;
mod run;
mod update;

pub use checkpoint::{checkpoint, restore};
pub use events::{events, EventsOptions};
pub use exec::{exec, ExecOptions};
pub use list::list;
pub use pause::{pause, resume};
pub use run::{run, RunOptions};
pub use update::{update, UpdateOptions};

use crate::container::config;
use crate::container::launch::{launch, LaunchOptions};
use crate::container::state::{self, State, Status};
use crate::sys::signal::parse_signal;
use oci_spec::runtime::Spec;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Result type of the runtime commands: errors are one line for the user.
pub type Result<T> = std::result::Result<T, String>;

/// `create` options.
#[derive(Clone)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// Connects to a console socket and hangs up at once, for an error that
/// comes before the container's launch connected it: the caller waiting
/// for the pty master sees end-of-file instead of waiting forever.
pub fn hang_up(console_socket: Option<&Path>) {
    if let Some(p) = console_socket {
        let _ = std::os::unix::net::UnixStream::connect(p);
    }
}

/// The seccomp agent's socket (`linux.seccomp.listenerPath`) of a bundle
/// whose container failed before its launch could hand a listener over:
/// connected and closed, so the agent sees end-of-file instead of waiting
/// forever. The config is read leniently (it may be the very thing that
/// was refused); a launch that fails tells the agent itself, and an agent
/// meets at most one more empty connection then.
pub fn hang_up_listener(bundle: &Path) {
    let p = bundle.join("config.json");
    // Bounded: a config is a few KiB; a huge file is not worth reading.
    if std::fs::metadata(&p).map_or(true, |m| m.len() > 1 << 20) {
        return;
    }
    let Ok(v) = std::fs::read(&p).map(|d| serde_json::from_slice::<serde_json::Value>(&d)) else {
        return;
    };
    if let Some(l) = v
        .ok()
        .as_ref()
        .and_then(|v| v["linux"]["seccomp"]["listenerPath"].as_str())
    {
        if Path::new(l).is_absolute() {
            let _ = std::os::unix::net::UnixStream::connect(l);
        }
    }
}

fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("amphi-tmp");
    std::fs::write(&tmp, pid.to_string())
        .map_err(|e| format!("pid file {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("pid file {}: {e}", p.display()))
}

/// The spec's annotations, and the state document hooks see while the
/// container is being created.
fn creating_state(
    spec: &Spec,
    id: &str,
    bundle: &Path,
) -> (
    std::collections::BTreeMap<String, String>,
    serde_json::Value,
) {
    let annotations: std::collections::BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let template = serde_json::json!({
        "ociVersion": "1.2.0", "id": id, "status": "creating", "bundle": bundle, "annotations": annotations,
    });
    (annotations, template)
}

fn bundle_rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or("config.json: `root` is missing")?;
    let p = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(format!("rootfs {} is not a directory", p.display())),
        Err(e) => Err(format!("rootfs {} does not exist: {e}", p.display())),
    }
}

/// `create`: set the container up; its process waits for `start`.
pub fn create(root: &Path, o: CreateOptions) -> Result<()> {
    let r = create_checked(root, &o);
    if r.is_err() {
        // Launch connects the console socket first and closes it on its
        // own errors; a second connection after that is never accepted.
        hang_up(o.console_socket.as_deref());
        hang_up_listener(&o.bundle);
    }
    r
}

fn create_checked(root: &Path, o: &CreateOptions) -> Result<()> {
    state::check_id(&o.id).map_err(|e| e.to_string())?;
    let bundle = std::fs::canonicalize(&o.bundle)
        .map_err(|e| format!("bundle {}: {e}", o.bundle.display()))?;
    let spec = config::load_bundle(&bundle).map_err(|e| e.to_string())?;
    let rootfs = bundle_rootfs(&spec, &bundle)?;
    state::ensure_root(root).map_err(|e| e.to_string())?;
    let dir = State::dir(root, &o.id);
    match state::create_dir(root, &o.id) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(format!("container id {:?} is already in use", o.id))
        }
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let r = create_in(root, &dir, &bundle, &rootfs, &spec, o);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

fn create_in(
    root: &Path,
    dir: &Path,
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    o: &CreateOptions,
) -> Result<()> {
    let fifo = dir.join("exec.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| format!("exec fifo {}: {e}", fifo.display()))?;
    let (annotations, template) = creating_state(spec, &o.id, bundle);
    // The runtime spec: when create fails (a hook, or anything after the
    // container began to exist), the container is destroyed and the
    // poststop hooks run.
    let failed = |e: String| -> String {
        let mut st = template.clone();
        st["status"] = "stopped".into();
        st["pid"] = 0.into();
        run_poststop(spec, &st.to_string());
        e
    };
    let l = launch(
        spec,
        rootfs,
        LaunchOptions {
            id: o.id.clone(),
            exec_fifo: Some(fifo),
            console_socket: o.console_socket.clone(),
            user_lookup: None,
            preserve_fds: o.preserve_fds,
            state_template: template.clone(),
            owns_cgroup: true,
            sealed: true,
            console_pty: false,
        },
    )
    .map_err(|e| failed(e.to_string()))?;
    let st = State {
        annotations,
        ..State::launched(
            &o.id,
            l.pid,
            bundle.to_path_buf(),
            rootfs.to_path_buf(),
            l.cgroup.clone(),
        )
    };
    let saved = st
        .save(root)
        .map_err(|e| e.to_string())
        .and_then(|()| match &o.pid_file {
            Some(p) => write_pid_file(p, l.pid),
            None => Ok(()),
        });
    if let Err(e) = saved {
        kill_and_reap(l.pid);
        let _ = l.cgroup.remove();
        return Err(failed(e));
    }
    Ok(())
}

/// Runs the poststop hooks; their failures are only warnings (runtime spec).
fn run_poststop(spec: &Spec, state: &str) {
    if let Some(h) = spec.hooks() {
        if let Err(e) = crate::container::hooks::run_all(h.poststop().as_ref(), "poststop", state) {
            tracing::warn!("{e}");
        }
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: signalling / reaping a pid we own.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
}

/// `start`: let a created container run its process.
///
/// Opening the exec fifo releases the container process, which runs the
/// startContainer hooks and answers `0` (about to execute the program) or
/// `error:<json>` (a typed `ChildError`); its end of the fifo closes when the program is executed.
/// So `start` returns once the program runs, after the poststart hooks, and
/// fails if a startContainer hook (or the exec) failed, in which case the
/// container is destroyed as the runtime spec asks.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    match st.status(root) {
        Status::Created => {}
        s => {
            return Err(format!(
                "container {id:?} is {}, not created: cannot start it",
                s.as_str()
            ))
        }
    }
    let fifo = State::dir(root, id).join("exec.fifo");
    let f = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("exec fifo of {id:?}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = Vec::new();
    // Whether the container has opened its end: until then reads give
    // end-of-file; while it runs the hooks, EAGAIN.
    let mut connected = false;
    loop {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one initialised pollfd on the stack; poll
        // writes only its `revents`.
        unsafe { libc::poll(&mut pfd, 1, 50) };
        let mut b = [0u8; 4096];
        match rustix::io::read(&f, &mut b) {
            // Its end closed: the program was executed, or it died.
            Ok(0) if connected => break,
            Ok(0) if !st.alive() => {
                return Err(format!("container {id:?} exited before it could start"))
            }
            Ok(0) if Instant::now() > deadline => {
                return Err(format!("container {id:?} did not start within 30s"))
            }
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(n) => {
                connected = true;
                answer.extend_from_slice(&b[..n]);
            }
            Err(rustix::io::Errno::AGAIN) => connected = true,
            Err(e) => return Err(format!("exec fifo of {id:?}: {e}")),
        }
    }
    let _ = std::fs::remove_file(&fifo);
    let answer = String::from_utf8_lossy(&answer);
    if let Some(i) = answer.find("error:") {
        let e = crate::container::sync::ChildError::decode(answer[i + "error:".len()..].as_bytes())
            .to_string();
        if let Err(d) = destroy(root, &st) {
            tracing::warn!("{d}");
        }
        return Err(e);
    }
    if answer != "0" {
        return Err(format!("container {id:?} exited before it could start"));
    }
    if let Ok(spec) = config::load(&st.bundle) {
        if let Some(h) = spec.hooks() {
            let s = st.oci_started().to_string();
            if let Err(e) =
                crate::container::hooks::run_all(h.poststart().as_ref(), "poststart", &s)
            {
                tracing::warn!("{e}");
            }
        }
    }
    Ok(())
}

/// `state`: the OCI state JSON.
pub fn state(root: &Path, id: &str) -> Result<String> {
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    Ok(serde_json::to_string_pretty(&st.oci(root)).expect("state serialises"))
}

/// `kill`: signal the container's process (or all its processes).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<()> {
    let sig = parse_signal(signal)?;
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    if all {
        // As runc: frozen while signalled (no process forks past the
        // list), then thawed, a paused container too (so a SIGKILL
        // takes effect).
        let froze = st.alive() && st.cgroup.freeze(true).is_ok();
        let pids = st.cgroup.pids();
        for p in &pids {
            // SAFETY: signalling pids of the container's cgroup.
            unsafe { libc::kill(*p, sig) };
        }
        if froze {
            if let Err(e) = st.cgroup.freeze(false) {
                tracing::warn!("{e}");
            }
        }
        if !pids.is_empty() || st.alive() {
            return Ok(());
        }
    }
    if !st.alive() {
        return Err(format!("container {id:?} is not running"));
    }
    // SAFETY: signalling the container's process.
    if unsafe { libc::kill(st.pid, sig) } != 0 {
        return Err(format!("kill {id:?}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `delete`: remove a stopped (or, with force, any) container.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let st = match State::load(root, id) {
        Ok(s) => s,
        // runc: deleting a missing container with --force is not an error.
        Err(_) if force && state::check_id(id).is_ok() => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    match st.status(root) {
        s @ (Status::Running | Status::Paused) if !force => {
            return Err(format!(
                "container {id:?} is {}: stop it first or use delete --force",
                s.as_str()
            ))
        }
        _ => {}
    }
    destroy(root, &st)
}

/// Destroys a container: kills whatever is left of it (without a pid
/// namespace its other processes may outlive it), removes its cgroup, runs
/// the poststop hooks and removes its state.
fn destroy(root: &Path, st: &State) -> Result<()> {
    kill_all(st);
    let _ = st.cgroup.remove();
    if let Ok(spec) = config::load(&st.bundle) {
        run_poststop(&spec, &st.oci(root).to_string());
    }
    std::fs::remove_dir_all(State::dir(root, &st.id))
        .map_err(|e| format!("removing state of {:?}: {e}", st.id))
}

fn kill_all(st: &State) {
    for p in st.cgroup.pids() {
        // SAFETY: killing processes of the container's cgroup.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    if st.alive() {
        // SAFETY: killing the container's process.
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
    }
    // A paused container's processes die once thawed.
    if st.cgroup.frozen() {
        if let Err(e) = st.cgroup.freeze(false) {
            tracing::warn!("{e}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.alive() && Instant::now() < deadline {
        // It may be our child (run, or create in this process).
        // SAFETY: waitpid takes a null status pointer (allowed: no status
        // wanted); WNOHANG only reaps the child if it is gone.
        unsafe { libc::waitpid(st.pid, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ps`: the container's processes.
pub fn ps(root: &Path, id: &str, json: bool) -> Result<String> {
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    let mut pids = st.cgroup.pids();
    if pids.is_empty() && st.alive() {
        pids.push(st.pid);
    }
    pids.sort();
    if json {
        return Ok(serde_json::to_string(&pids).expect("pids serialise"));
    }
    let mut out = String::from("PID\tCMD\n");
    for p in pids {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        out.push_str(&format!("{p}\t{cmd}\n"));
    }
    Ok(out)
}

/// `features`: what this runtime supports (runtime-spec features.md).
pub fn features() -> serde_json::Value {
    let caps = crate::container::caps::all_names();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime",
            "nostrictatime", "mand", "nomand", "bind", "rbind", "private", "rprivate", "shared", "rshared",
            "slave", "rslave", "unbindable", "runbindable", "nosymfollow", "symfollow", "rro", "rrw",
            "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnodiratime", "rdiratime",
            "rrelatime", "rnorelatime", "rnoatime", "ratime", "rstrictatime", "rnostrictatime",
            "rnosymfollow", "rsymfollow"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"io.amphi.version": env!("CARGO_PKG_VERSION")},
    })
}

/// `spec`: a starting config.json, like `runc spec`.
pub fn default_spec(rootless: bool) -> Spec {
    let mut s = Spec::default();
    s.set_hostname(Some("amphi".into()));
    if let Some(mut p) = s.process().clone() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".into()]));
        s.set_process(Some(p));
    }
    if rootless {
        s.set_uid_mappings(None);
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let rl = oci_spec::runtime::Linux::rootless(uid, gid);
        s.set_linux(Some(rl));
    }
    s
}
