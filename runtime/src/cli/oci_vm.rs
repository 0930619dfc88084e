//! The OCI runtime interface for containers the dispatcher puts in a
//! microVM (podman, containerd and Kubernetes drive `create`, `start`,
//! `state`, `kill`, `exec` and `delete`).
//!
//! `create` forks a monitor, which owns the VM (`vm::run_bundle`): the
//! guest boots with the bundle's rootfs shared over virtio-fs and waits;
//! `create` returns once it is up, with the monitor's pid as the
//! container's (in `--pid-file` and `state`). The monitor keeps `create`'s
//! stdio (the client's pipes) or, with `process.terminal`, a pty whose
//! master went to `--console-socket`; it forwards the signals it gets to
//! the workload and exits with the workload's status. That is what a
//! client waiting on the container's pid needs: conmon reaps that pid and
//! takes its exit status as the container's.
//!
//! `start` is the native one: the monitor holds the exec fifo's write end
//! as a native container's process does, sends the start request to the
//! guest when `start` opens the fifo, and answers `0` once the workload
//! runs there (or the guest's error). `kill` signals the monitor; `delete`
//! kills it, which takes the VM, virtiofsd and passt with it, then sweeps
//! the VM's run directory. `exec` connects to the monitor's exec socket.
//!
//! The hooks run on the host, with the state the spec defines (the
//! monitor's pid): createRuntime, createContainer (and the deprecated
//! prestart) once the VM is up, startContainer at `start`, poststart and
//! poststop as for a native container.

use crate::container::state::{self, State};
use crate::oci::{CreateOptions, OciError, Result};
use crate::run::detach;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

/// A bundle the dispatcher put in a microVM.
struct VmBundle {
    bundle: std::path::PathBuf,
    raw: serde_json::Value,
    why: String,
    plan: crate::dispatch::VmPlan,
}

/// Where the dispatcher put a bundle.
enum Decided {
    /// It could not be read: the native command reads it again and says
    /// what is wrong (and asks the dispatcher itself if it can).
    Unread,
    Native,
    Vm(Box<VmBundle>),
}

/// The dispatcher's decision for `o`'s bundle.
fn decide(o: &CreateOptions) -> Result<Decided> {
    // A bad id, bundle or config.json is the native command's to report
    // (with the JSON path of what is wrong; `Unread`). The annotations
    // decide before the spec is checked for a native run (a host
    // namespace path, say, is refused for a microVM by name).
    let (Ok(()), Ok(bundle)) = (state::check_id(&o.id), std::fs::canonicalize(&o.bundle)) else {
        return Ok(Decided::Unread);
    };
    let Some(raw) = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return Ok(Decided::Unread);
    };
    let Some(annotations) = raw
        .get("annotations")
        .cloned()
        .map_or(Some(Default::default()), |a| serde_json::from_value(a).ok())
    else {
        return Ok(Decided::Unread);
    };
    Ok(match crate::oci::target(&annotations, &o.store_root)? {
        crate::dispatch::bundle::BundleTarget::Container => Decided::Native,
        crate::dispatch::bundle::BundleTarget::Vm { why, plan } => {
            Decided::Vm(Box::new(VmBundle {
                bundle,
                raw,
                why,
                plan: *plan,
            }))
        }
    })
}

/// `create`, as the dispatcher decides: a microVM here, else the native
/// `create` (told the decision, so it does not ask again).
pub fn create(root: &Path, o: CreateOptions) -> Result<()> {
    let r = match decide(&o) {
        Ok(Decided::Unread) => return crate::oci::create(root, o),
        Ok(Decided::Native) => return crate::oci::create_as(root, o, crate::oci::Dispatch::Native),
        Ok(Decided::Vm(vm)) => create_vm(root, &o, *vm, false).map(|_| ()),
        Err(e) => Err(e),
    };
    if r.is_err() {
        crate::oci::hang_up(o.console_socket.as_deref());
    }
    r
}

/// runc's one-shot `run`, as the dispatcher decides: the native `run`
/// (told the decision), or for a microVM create and start; detached,
/// return once the workload runs; in the foreground, the monitor is our child: wait
/// for it (forwarding our signals, window size changes included), take
/// its status as the workload's, and delete the container unless `keep`.
/// In the foreground a terminal is ours (the monitor relays it), as
/// natively.
pub fn run(root: &Path, o: crate::oci::RunOptions) -> Result<i32> {
    let vm = match decide(&o.create) {
        Ok(Decided::Unread) => return crate::oci::run_as(root, o, crate::oci::Dispatch::Ask),
        Ok(Decided::Native) => return crate::oci::run_as(root, o, crate::oci::Dispatch::Native),
        Ok(Decided::Vm(vm)) => Ok(*vm),
        Err(e) => Err(e),
    };
    let crate::oci::RunOptions {
        create: ref o,
        detach,
        keep,
    } = o;
    let r = vm.and_then(|vm| {
        let terminal = vm
            .raw
            .pointer("/process/terminal")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        crate::oci::check_terminal(detach, terminal, o.console_socket.is_some())?;
        if detach && keep {
            return Err("--keep applies to a container run in the foreground, not with -d".into());
        }
        // Blocked before the fork: the monitor unblocks what it needs,
        // and we forward them to it.
        let sigs = crate::sys::signal::block_forwarded();
        let started = create_vm(root, o, vm, !detach).and_then(|pid| {
            start_hooks(root, &o.id)
                .and_then(|()| crate::oci::start(root, &o.id))
                .map(|()| pid)
                .inspect_err(|_| {
                    let _ = crate::oci::delete(root, &o.id, true);
                    sweep(root, &o.id);
                })
        });
        let pid = match started {
            Ok(pid) if !detach => pid,
            r => {
                crate::sys::signal::unblock(&sigs);
                return r.map(|_| 0);
            }
        };
        let code = wait_forwarding(pid, &sigs);
        crate::sys::signal::unblock(&sigs);
        if keep {
            if let Ok(mut st) = State::load(root, &o.id) {
                st.exit_code = Some(code);
                let _ = st.save(root);
            }
        } else {
            crate::oci::delete(root, &o.id, true)?;
            sweep(root, &o.id);
        }
        Ok(code)
    });
    if r.is_err() {
        crate::oci::hang_up(o.console_socket.as_deref());
    }
    r
}

/// Waits for our child `pid` (the monitor), forwarding the signals we
/// get to it; its exit status (128+N when killed by signal N).
fn wait_forwarding(pid: i32, sigs: &crate::sys::signal::Signals) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return crate::sys::exit::decode(status);
        }
        if r < 0 {
            return crate::run::EXIT_AMPHI;
        }
        crate::sys::poll::wait_readable(sigs.raw_fd(), std::time::Duration::from_millis(100));
        for s in sigs.drain() {
            if s != libc::SIGCHLD {
                // SAFETY: signalling our child, the monitor.
                unsafe { libc::kill(pid, s) };
            }
        }
    }
}

/// Creates the microVM container of `vm`; the monitor's pid. With
/// `own_tty` (runc's foreground `run`) the monitor relays our own
/// terminal for a `process.terminal` spec, with no console socket.
fn create_vm(root: &Path, o: &CreateOptions, vm: VmBundle, own_tty: bool) -> Result<i32> {
    let VmBundle {
        bundle,
        raw,
        why,
        plan,
    } = vm;
    let (bundle, raw) = (bundle.as_path(), &raw);
    let refused = |e: String| format!("this container must run in a microVM ({why}), but {e}");
    let root_path = raw
        .pointer("/root/path")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| refused("config.json has no root.path".into()))?;
    let rootfs = bundle.join(root_path);
    if !rootfs.is_dir() {
        return Err(refused(format!("root.path {} is no directory", rootfs.display())).into());
    }
    let guest = crate::vm::bundle::translate(raw, &rootfs).map_err(refused)?;
    let spec = crate::container::config::load_bundle(bundle)?;
    let spec = &spec;
    if o.preserve_fds > 0 {
        return Err(refused(format!(
            "--preserve-fds {}: descriptors of the host cannot be passed into a microVM",
            o.preserve_fds
        ))
        .into());
    }
    if guest.terminal && o.console_socket.is_none() && !own_tty {
        return Err("process.terminal is true, but no --console-socket was given".into());
    }
    tracing::info!(id = %o.id, %why, kernel = plan.kernel.release(), "OCI container in a microVM");
    let described = format!(
        "kernel {}, {}",
        plan.kernel.release(),
        plan.backend.describe()
    );
    let dir = crate::oci::new_state_dir(root, &o.id)?;
    let r = create_in(
        root,
        &dir,
        o,
        (bundle, &rootfs, spec),
        (guest, plan, described),
    );
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        sweep(root, &o.id);
    }
    r
}

fn create_in(
    root: &Path,
    dir: &Path,
    o: &CreateOptions,
    (bundle, rootfs, spec): (&Path, &Path, &oci_spec::runtime::Spec),
    (guest, plan, described): (
        crate::vm::bundle::GuestBundle,
        crate::dispatch::VmPlan,
        String,
    ),
) -> Result<i32> {
    let fifo = crate::oci::exec_fifo(dir)?;
    let pty = match (&o.console_socket, guest.terminal) {
        (Some(sock), true) => Some(console_pty(sock)?),
        _ => None,
    };
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| OciError::io("pipe", std::io::Error::from(e)))?;
    // SAFETY: the child runs the monitor and exits; nothing it inherits
    // is shared with a thread of ours that could hold a lock (create runs
    // on one thread).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(OciError::io("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(rx);
        let code = monitor(
            root,
            &o.id,
            &o.store_root,
            guest,
            plan,
            &fifo,
            pty.as_ref(),
            tx,
        );
        // SAFETY: the monitor is done; its own exit status is the
        // workload's.
        unsafe { libc::_exit(code) };
    }
    drop(tx);
    drop(pty);
    let booted = detach::wait_started(rx);
    let kill = || {
        // SAFETY: our child, the monitor.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    if let Err(e) = booted {
        kill();
        return Err(OciError::cause(e));
    }
    let (annotations, template) = crate::oci::creating_state(spec, &o.id, bundle);
    let st = State {
        annotations,
        microvm: Some(described),
        ..State::launched(
            &o.id,
            pid,
            bundle.to_path_buf(),
            rootfs.to_path_buf(),
            no_cgroup(&o.id),
        )
    };
    let saved = st
        .save(root)
        .map_err(OciError::cause)
        .and_then(|()| match &o.pid_file {
            Some(p) => crate::oci::write_pid_file(p, pid),
            None => Ok(()),
        })
        .and_then(|()| create_hooks(spec, &template, pid));
    if let Err(e) = saved {
        kill();
        let mut st = template.clone();
        st["status"] = "stopped".into();
        st["pid"] = 0.into();
        crate::oci::run_poststop(spec, &st.to_string());
        return Err(e);
    }
    Ok(pid)
}

/// The createRuntime, createContainer and prestart hooks, on the host,
/// once the VM is up (the runtime environment exists).
fn create_hooks(
    spec: &oci_spec::runtime::Spec,
    template: &serde_json::Value,
    pid: i32,
) -> Result<()> {
    let Some(h) = spec.hooks() else {
        return Ok(());
    };
    // As natively: the runtime environment exists, so "created".
    let mut st = crate::container::launch::hook_state(template);
    st["pid"] = pid.into();
    let st = st.to_string();
    for (hooks, stage) in [
        (h.prestart(), "prestart"),
        (h.create_runtime(), "createRuntime"),
        (h.create_container(), "createContainer"),
    ] {
        crate::container::hooks::run_all(hooks.as_ref(), stage, &st)
            .map_err(|e| OciError::from(e.to_string()))?;
    }
    Ok(())
}

/// The startContainer hooks of a microVM container, on the host, as its
/// `start` begins (natively they run in the container).
pub fn start_hooks(root: &Path, id: &str) -> Result<()> {
    let st = State::load(root, id)?;
    if st.microvm.is_none() {
        return Ok(());
    }
    let Ok(spec) = crate::container::config::load(&st.bundle) else {
        return Ok(());
    };
    if let Some(h) = spec.hooks() {
        let s = st.oci(root).to_string();
        crate::container::hooks::run_all(h.start_container().as_ref(), "startContainer", &s)
            .map_err(|e| OciError::from(e.to_string()))?;
    }
    Ok(())
}

/// A microVM container has no cgroup on the host (its processes are the
/// guest's); a path that is never created stands for it.
fn no_cgroup(id: &str) -> crate::container::cgroups::Cgroup {
    crate::container::cgroups::Cgroup {
        mode: crate::container::cgroups::mode(),
        path: format!("amphi-microvm-none/{id}"),
        created_parent: None,
    }
}

/// A pty whose master goes to the console socket: (the slave, for the
/// monitor's stdio).
fn console_pty(sock: &Path) -> Result<OwnedFd> {
    let master = crate::sys::term::new_pty_master().map_err(|(what, e)| {
        OciError::io(
            format_args!("the console's pty ({what})"),
            std::io::Error::from(e),
        )
    })?;
    let slave = crate::run::hold_slave(&master)
        .ok_or_else(|| OciError::from("opening the pty's slave (TIOCGPTPEER)"))?;
    let conn = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| OciError::io(format_args!("console socket {}", sock.display()), e))?;
    crate::container::sync::send_fd(&OwnedFd::from(conn), &master, "/dev/ptmx")
        .map_err(|e| OciError::from(format!("console socket {}: {e}", sock.display())))?;
    Ok(slave)
}

/// The monitor (the forked child): runs the VM until the workload exits;
/// returns its exit status.
#[allow(clippy::too_many_arguments)]
fn monitor(
    root: &Path,
    id: &str,
    store_root: &Path,
    guest: crate::vm::bundle::GuestBundle,
    plan: crate::dispatch::VmPlan,
    fifo: &Path,
    pty: Option<&OwnedFd>,
    report: OwnedFd,
) -> i32 {
    let _ = rustix::process::setsid();
    if let Some(slave) = pty {
        // SAFETY: our own stdio becomes the pty's slave, our controlling
        // terminal (window size changes then reach us as SIGWINCH).
        unsafe {
            for fd in 0..3 {
                libc::dup2(slave.as_raw_fd(), fd);
            }
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
    }
    let report = std::sync::Arc::new(std::sync::Mutex::new(Some(report)));
    let (booted_tx, booted_rx) = mpsc::channel::<()>();
    let (answer_tx, answer_rx) = mpsc::channel::<std::result::Result<(), String>>();
    let (go_r, go_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            let e = crate::run::RunError::io("pipe", std::io::Error::from(e));
            if let Some(tx) = take(&report) {
                detach::report(tx, Err(&e));
            }
            return e.failure().exit_status();
        }
    };
    {
        let report = report.clone();
        std::thread::spawn(move || {
            if booted_rx.recv().is_ok() {
                if let Some(tx) = take(&report) {
                    detach::report(tx, Ok(()));
                }
            }
        });
    }
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || gate(&fifo, go_w, answer_rx));
    let run = crate::vm::BundleRun {
        id: id.to_string(),
        state_root: root.to_path_buf(),
        store_root: store_root.to_path_buf(),
        guest,
        plan,
        hold: crate::vm::Hold {
            booted: Some(booted_tx),
            go: go_r,
            answer: Some(answer_tx),
            waiting: false,
        },
        // The monitor's stderr is the container's: notices go to the log.
        notify: |m| tracing::info!("{m}"),
    };
    let result = crate::vm::run_bundle(run);
    match result {
        Ok(code) => code,
        Err(e) => {
            match take(&report) {
                // Never booted: `create` says why.
                Some(tx) => detach::report(tx, Err(&e)),
                None => {
                    let mut err = std::io::stderr();
                    let _ = writeln!(err, "amphi: error: {e}");
                }
            }
            e.failure().exit_status()
        }
    }
}

fn take(m: &std::sync::Mutex<Option<OwnedFd>>) -> Option<OwnedFd> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The exec fifo's writer, as a native container's process is: its open
/// returns when `start` opens the other end; then the VM is told to go,
/// and `start` gets `0` once the workload runs, or the error.
fn gate(fifo: &Path, go: OwnedFd, answer: mpsc::Receiver<std::result::Result<(), String>>) {
    let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(fifo) else {
        return;
    };
    if rustix::io::write(&go, b"g").is_err() {
        return;
    }
    let msg = match answer.recv() {
        Ok(Ok(())) => b"0".to_vec(),
        Ok(Err(m)) => crate::container::sync::ChildError::setup("start", m).encode(),
        Err(_) => crate::container::sync::ChildError::setup(
            "start",
            "the microVM ended before its workload started",
        )
        .encode(),
    };
    let _ = f.write_all(&msg);
}

/// `exec` into a bundle's microVM container; None when `a.id` is no such
/// container (the other execs then take it). With `--detach` a forked
/// relay stands for the process (its pid goes to `--pid-file`, and it
/// exits with the process's status), as conmon expects of `podman exec`.
pub fn exec(root: &Path, a: &super::oci::ExecArgs) -> Option<Result<i32>> {
    let st = State::load(root, &a.id).ok()?;
    st.microvm.as_ref()?;
    Some(exec_vm(root, &st, a))
}

fn exec_vm(root: &Path, st: &State, a: &super::oci::ExecArgs) -> Result<i32> {
    let r = (|| {
        if let Some(flag) = super::vm_exec::unsupported(a, true) {
            return Err(OciError::from(format!(
                "{flag} is not supported yet for exec into a microVM container ({})",
                st.id
            )));
        }
        let status = st.status(root);
        if status != state::Status::Running {
            return Err(format!(
                "container {:?} is {}: cannot exec in it",
                st.id,
                status.as_str()
            )
            .into());
        }
        let req = match &a.process {
            Some(p) => process_request(p)?,
            None if a.command.is_empty() => return Err("exec needs a command".into()),
            None => crate::proto::channel::ExecRequest {
                args: a.command.clone(),
                env: a.env.clone(),
                cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
                user: a.user.clone(),
                stdin: true,
                tty: a.tty.then(|| super::vm_exec::winsize().unwrap_or((24, 80))),
            },
        };
        let pty = match (&a.console_socket, req.tty.is_some()) {
            (Some(sock), true) => Some(console_pty(sock)?),
            _ => None,
        };
        Ok((req, pty))
    })();
    let (req, pty) = match r {
        Ok(x) => x,
        Err(e) => {
            crate::oci::hang_up(a.console_socket.as_deref());
            return Err(e);
        }
    };
    let sock = crate::vm::bundle_exec_socket(root, &st.id);
    let relay = move || -> i32 {
        if let Some(slave) = &pty {
            let _ = rustix::process::setsid();
            // SAFETY: our stdio becomes the pty's slave, our controlling
            // terminal.
            unsafe {
                for fd in 0..3 {
                    libc::dup2(slave.as_raw_fd(), fd);
                }
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
        }
        match super::vm_exec::client(&sock, &st.id, req) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("amphi: error: {e}");
                crate::run::EXIT_AMPHI
            }
        }
    };
    if !a.detach {
        if let Some(p) = &a.pid_file {
            crate::oci::write_pid_file(p, std::process::id() as i32)?;
        }
        return Ok(relay());
    }
    // SAFETY: the child relays and exits; exec runs on one thread here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(OciError::io("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = relay();
        // SAFETY: the relay is done; its status is the process's.
        unsafe { libc::_exit(code) };
    }
    if let Some(p) = &a.pid_file {
        crate::oci::write_pid_file(p, pid)?;
    }
    Ok(0)
}

/// The exec request of an OCI `process.json` (`exec --process`).
fn process_request(path: &Path) -> Result<crate::proto::channel::ExecRequest> {
    let data = std::fs::read(path).map_err(|e| OciError::io(path.display(), e))?;
    let p: oci_spec::runtime::Process = serde_json::from_slice(&data)
        .map_err(|e| OciError::from(format!("{}: {e}", path.display())))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(format!("{}: process.args is empty", path.display()).into());
    }
    let tty = p.terminal().unwrap_or(false).then(|| {
        p.console_size()
            .as_ref()
            .map(|c| (c.height() as u16, c.width() as u16))
            .filter(|(r, c)| *r > 0 && *c > 0)
            .unwrap_or((24, 80))
    });
    Ok(crate::proto::channel::ExecRequest {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: Some(p.cwd().display().to_string()),
        user: Some(format!("{}:{}", p.user().uid(), p.user().gid())),
        stdin: true,
        tty,
    })
}

/// After `delete`: a microVM container's run directory goes once its
/// monitor is wholly gone (a killed monitor's other threads may hold the
/// run's lock a moment after it shows as a zombie); then the root's `vm/`
/// if empty.
pub fn sweep(root: &Path, id: &str) {
    let dir = root.join("vm").join(crate::vm::bundle::run_name(id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Err(e) = crate::vm::sweep_stale_runs(root) {
            tracing::warn!("{e}");
        }
        if !dir.exists() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    crate::vm::remove_empty_root(root);
}
