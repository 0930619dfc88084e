//! `amphi run` on the native path: image → rootfs plan → spec → launch →
//! wait (forwarding signals, relaying a pty) → clean up.

pub mod detach;
mod error;
pub mod manage;
mod pty;
pub mod records;
pub mod report;

pub use pty::{hold_slave, wait as pty_wait};

use crate::container::launch::{launch, LaunchError, LaunchOptions};
use crate::container::state::{self, State};
use crate::dispatch::ResolvedImage;
use crate::image::index::ImageRecord;
use crate::image::manifest::ImageConfig;
use crate::image::store::Store;
use crate::spec::{self, RootfsPlan, RunFlags};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub use crate::sys::exit::{EXIT_AMPHI, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND};
pub use error::{Failure, RunError, EXIT_TIMEOUT};

/// A run request.
pub struct RunRequest {
    pub image: String,
    pub flags: RunFlags,
    pub name: Option<String>,
    pub rm: bool,
    pub interactive: bool,
    pub detach: bool,
    pub store_root: PathBuf,
    pub state_root: PathBuf,
}

/// A new random container id (64 hex digits).
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}

/// Cleans up everything a container left: state dir, cgroup, and (for
/// --rm) its writable layer.
struct Cleanup {
    state_dir: PathBuf,
    container_dir: PathBuf,
    cgroup: Option<crate::container::cgroups::Cgroup>,
    remove_layer: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &self.cgroup {
            let _ = c.remove();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        if self.remove_layer {
            let _ = std::fs::remove_dir_all(&self.container_dir);
        }
    }
}

/// How a native run ended, for the CLI to print and exit with (the
/// library prints nothing and does not exit).
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The container ran in the foreground and exited with `status`;
    /// `notices` are for the user's stderr (the OOM killer, a report that
    /// could not be written), in order.
    Exited { status: i32, notices: Vec<String> },
    /// `-d`: the container runs under its monitor; the CLI prints its id.
    Detached { id: String },
    /// `-d`, in the monitor (a forked copy of the `amphi run -d` caller,
    /// which has already returned the container's id to its user): the
    /// container has ended and its exit is recorded. The CLI writes
    /// `notices` to stderr, which is the container's log (the user reads
    /// them with `amphi logs`), and ends the monitor with status 0, as
    /// conmon does, without printing anything else.
    MonitorEnded { notices: Vec<String> },
}

/// Runs `resolved` (the image the dispatcher planned for `req.image`, its
/// platform checked there) natively, in the foreground or (`-d`) under a
/// monitor.
pub fn run(req: RunRequest, resolved: ResolvedImage) -> Result<RunOutcome, RunError> {
    let t0 = std::time::Instant::now();
    // Published ports must be free: said before anything is made.
    crate::net::check_free(&req.flags.publish).map_err(RunError::Usage)?;
    let (mut c, mut cleanup) = prepare(&req, resolved)?;
    // Detached: a monitor process (like conmon) becomes the container's
    // parent, waits for it and records its exit; the caller returns its id.
    let report = if req.detach {
        match detach_stage(&req, &mut c)? {
            Role::Caller(outcome) => {
                std::mem::forget(cleanup);
                return outcome;
            }
            Role::Monitor(tx) => Some(tx),
        }
    } else {
        if !req.interactive {
            stdin_from_null();
        }
        None
    };
    // The private network, in the process that waits for the container
    // (the monitor when detached): pasta lives exactly as long as it.
    // A detached run that never started leaves nothing, and is gone
    // before its caller hears of it (`ps -a` right after must not show
    // it): the cleanup runs before the report.
    let net = match private_network(&req, &mut c.spec) {
        Ok(n) => n,
        Err(err) => {
            drop(cleanup);
            if let Some(tx) = report {
                detach::report(tx, Err(&err));
            }
            return Err(err);
        }
    };
    let sigs = crate::sys::signal::block_forwarded();
    let launched = match launch_native(&req, &c.id, &c.spec, &c.plan, &c.state_dir, c.user.take()) {
        Ok(l) => l,
        Err(e) => {
            crate::sys::signal::unblock(&sigs);
            let err = RunError::Launch(e);
            drop(cleanup);
            if let Some(tx) = report {
                detach::report(tx, Err(&err));
            }
            return Err(err);
        }
    };
    cleanup.cgroup = Some(launched.cgroup.clone());
    cleanup.remove_layer = req.rm;
    save_state(&req, &c, &launched);
    let watchdog = watchdog(&req, &c.id);
    if let Some(tx) = report {
        detach::report(tx, Ok(()));
    }

    let t_started = std::time::Instant::now();
    let status = pty::wait_with_console(launched.pid, launched.pty, launched.console, &sigs);
    crate::sys::signal::unblock(&sigs);
    drop(net);
    let net = report::network_of(&req.flags);
    let (status, oom, notices) = ended(&c.id, &launched.cgroup, status, (t0, t_started), net);
    if !req.rm {
        c.record.exit_code = Some(status);
        c.record.oom_killed = oom;
        c.record.finished = Some(state::now_rfc3339());
        let _ = c.record.save(&req.store_root);
    }
    drop(cleanup);
    if let Some(w) = watchdog {
        w.dismiss();
    }
    if req.detach {
        return Ok(RunOutcome::MonitorEnded { notices });
    }
    Ok(RunOutcome::Exited { status, notices })
}

/// A container made ready to launch: its directories, spec and record.
struct Prepared {
    id: String,
    state_dir: PathBuf,
    container_dir: PathBuf,
    plan: RootfsPlan,
    spec: oci_spec::runtime::Spec,
    /// The user to resolve in the container at start, if by name.
    user: Option<String>,
    record: records::Record,
}

/// Stage 1: the container's id, its runtime state directory and its
/// record's (with the writable layer), the rootfs plan over the image's
/// layers, and the spec written where `exec` finds it. Private: 0700 directories, 0600
/// files (the config holds the -e values, the log what the container
/// printed). The cleanup removes them again if the run goes no further.
fn prepare(req: &RunRequest, resolved: ResolvedImage) -> Result<(Prepared, Cleanup), RunError> {
    let ResolvedImage {
        store,
        record: rec,
        config: image,
    } = resolved;
    let lowers = layer_dirs(&store, &rec, &req.image)?;
    check_name(req)?;
    let id = new_id();
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| format!("amphi-{}", &id[..12]));
    state::ensure_root(&req.state_root)?;
    let state_dir = state::create_dir(&req.state_root, &id)
        .map_err(|e| RunError::io(State::dir(&req.state_root, &id).display(), e))?;
    let container_dir = records::dir(&req.store_root, &id);
    let cleanup = Cleanup {
        state_dir: state_dir.clone(),
        container_dir: container_dir.clone(),
        cgroup: None,
        remove_layer: true,
    };
    records::create_dir(&req.store_root, &id)?;
    let plan = RootfsPlan {
        rootfs: state_dir.join("rootfs"),
        lowers,
        upper: container_dir.join("upper"),
        work: container_dir.join("work"),
        etc_dir: container_dir.join("etc"),
    };
    for d in [&plan.rootfs, &plan.upper, &plan.work] {
        std::fs::create_dir_all(d).map_err(|e| RunError::io(d.display(), e))?;
    }
    let (spec, user) = spec::build(&image, &req.flags, &id, &plan)?;
    let config_path = state_dir.join("config.json");
    let config =
        serde_json::to_vec_pretty(&spec).map_err(|e| RunError::step(config_path.display(), e))?;
    crate::image::store::write_private(&config_path, &config)
        .map_err(|e| RunError::step(config_path.display(), e))?;
    let record = new_record(req, &id, name, &spec, &image)?;
    let prepared = Prepared {
        id,
        state_dir,
        container_dir,
        plan,
        spec,
        user,
        record,
    };
    Ok((prepared, cleanup))
}

/// Which side of a detached run's fork this is.
enum Role {
    /// `amphi run -d`: what to return once the monitor said how the start
    /// went (the id, or its error).
    Caller(Result<RunOutcome, RunError>),
    /// The monitor, which runs the container and reports its start here.
    Monitor(std::os::fd::OwnedFd),
}

/// Stage 2 (-d): forks the monitor, which records itself as the container's.
fn detach_stage(req: &RunRequest, c: &mut Prepared) -> Result<Role, RunError> {
    match detach::fork_monitor(&c.container_dir.join("log"))? {
        detach::Side::Caller(rx) => {
            let id = c.id.clone();
            Ok(Role::Caller(
                detach::wait_started(rx).map(|()| RunOutcome::Detached { id }),
            ))
        }
        detach::Side::Monitor(tx) => {
            // The monitor waits for the container from now on.
            c.record.monitor = Some(records::Proc::current());
            if let Err(err) = c.record.save(&req.store_root) {
                // The caller reports it; the monitor ends with it.
                detach::report(tx, Err(&err));
                return Err(err);
            }
            Ok(Role::Monitor(tx))
        }
    }
}

/// Stage 3: the launched container's runtime state (for `amphi exec`, `ps`).
fn save_state(req: &RunRequest, c: &Prepared, launched: &crate::container::launch::Launched) {
    let st = State {
        created: c.record.created.clone(),
        run: Some(serde_json::json!({"name": c.record.name})),
        ..State::launched(
            &c.id,
            launched.pid,
            c.state_dir.clone(),
            c.plan.rootfs.clone(),
            launched.cgroup.clone(),
        )
    };
    let _ = st.save(&req.state_root);
}

/// Without -i the container gets no stdin, like docker.
fn stdin_from_null() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 takes two fd numbers and no memory; `null` is open
        // for the call, and stdin is ours to replace.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
}

/// In the foreground the container dies with its client (see
/// detach::Watchdog); a detached one has its monitor as parent.
fn watchdog(req: &RunRequest, id: &str) -> Option<detach::Watchdog> {
    (!req.detach).then(|| {
        detach::Watchdog::start(detach::Watched {
            id,
            store_root: &req.store_root,
            state_root: &req.state_root,
            rm: req.rm,
        })
    })
}

/// The image's unpacked layers, each checked to be in the store.
fn layer_dirs(store: &Store, rec: &ImageRecord, image: &str) -> Result<Vec<PathBuf>, RunError> {
    let lowers: Vec<PathBuf> = rec.layers.iter().map(|l| store.layer_diff(l)).collect();
    for l in &lowers {
        if !l.is_dir() {
            return Err(RunError::Failed(format!(
                "layer {} of {} is missing from the store; pull the image again",
                l.display(),
                image
            )));
        }
    }

    Ok(lowers)
}

/// `--name`, if given, is a valid name no other container has.
fn check_name(req: &RunRequest) -> Result<(), RunError> {
    let names = records::list(&req.store_root);
    if let Some(n) = &req.name {
        records::check_name(n)?;
        if names.iter().any(|r| r.name == *n) {
            return Err(RunError::Usage(format!(
                "the container name {n:?} is already in use: remove that container (amphi rm {n}) or choose another name"
            )));
        }
    }
    Ok(())
}

/// The container's record, saved.
fn new_record(
    req: &RunRequest,
    id: &str,
    name: String,
    spec: &oci_spec::runtime::Spec,
    image: &ImageConfig,
) -> Result<records::Record, RunError> {
    let record = records::Record {
        id: id.to_string(),
        name,
        image: req.image.clone(),
        command: spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default(),
        created: state::now_rfc3339(),
        finished: None,
        exit_code: None,
        oom_killed: false,
        detached: req.detach,
        rm: req.rm,
        ports: req.flags.publish.iter().map(|p| p.to_string()).collect(),
        stop_signal: spec::stop_signal(image, &req.flags),
        monitor: Some(records::Proc::current()),
        vm: None,
    };
    record.save(&req.store_root)?;
    Ok(record)
}

/// A detached microVM container's record, saved before its monitor is
/// forked (the monitor names itself in it): its id, `--name` checked as
/// for a native one, the guest kernel.
pub fn new_vm_record(
    req: &RunRequest,
    image: &ImageConfig,
    kernel: &str,
) -> Result<records::Record, RunError> {
    check_name(req)?;
    let id = new_id();
    let record = records::Record {
        name: req
            .name
            .clone()
            .unwrap_or_else(|| format!("amphi-{}", &id[..12])),
        image: req.image.clone(),
        command: spec::process_args(image, &req.flags).unwrap_or_default(),
        created: state::now_rfc3339(),
        finished: None,
        exit_code: None,
        oom_killed: false,
        detached: true,
        rm: req.rm,
        ports: req.flags.publish.iter().map(|p| p.to_string()).collect(),
        stop_signal: spec::stop_signal(image, &req.flags),
        monitor: None,
        vm: Some(records::VmRecord {
            kernel: kernel.to_string(),
            vmm: None,
        }),
        id,
    };
    record.save(&req.store_root)?;
    Ok(record)
}

/// Clones the container with its spec (the runtime's part of the launch).
/// With `--network private`: a new network namespace with pasta serving
/// it, which the spec's network namespace now joins.
fn private_network(
    req: &RunRequest,
    spec: &mut oci_spec::runtime::Spec,
) -> Result<Option<crate::net::Attached>, RunError> {
    if req.flags.network != crate::net::Network::Private {
        return Ok(None);
    }
    let net = crate::net::Attached::start(&req.flags.publish)
        .map_err(|e| RunError::Failed(format!("the private network: {e}")))?;
    let path = net.netns_path();
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|mut ns| {
                if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                    ns.set_path(Some(path.clone()));
                }
                ns
            })
            .collect();
        linux.set_namespaces(Some(namespaces));
    }
    Ok(Some(net))
}

fn launch_native(
    req: &RunRequest,
    id: &str,
    spec: &oci_spec::runtime::Spec,
    plan: &RootfsPlan,
    state_dir: &Path,
    user: Option<String>,
) -> Result<crate::container::launch::Launched, LaunchError> {
    let state_template = serde_json::json!({
        "ociVersion": "1.2.0", "id": id, "status": "creating", "bundle": state_dir,
    });
    launch(
        spec,
        &plan.rootfs,
        LaunchOptions {
            id: id.to_string(),
            exec_fifo: None,
            console_socket: None,
            user_lookup: user,
            preserve_fds: 0,
            state_template,
            owns_cgroup: true,
            sealed: true,
            console_pty: console_pty(&req.flags),
        },
    )
}

/// After the container's end: the run report (for compare), the OOM
/// killer's verdict. Returns the exit status, whether the OOM killer
/// struck, and the notices for the user.
fn ended(
    id: &str,
    cgroup: &crate::container::cgroups::Cgroup,
    mut status: i32,
    (t0, t_started): (std::time::Instant, std::time::Instant),
    (network, ports): (String, Vec<String>),
) -> (i32, bool, Vec<String>) {
    let run_time = t_started.elapsed();
    let oom = cgroup.oom_killed();
    let mut notices = Vec::new();
    if report::target().is_some() {
        let r = report::RunReport {
            isolation: "container".into(),
            exit_code: if oom { 137 } else { status },
            oom_killed: oom,
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            peak_memory: cgroup.memory_peak(),
            setup_ms: report::ms(t_started - t0),
            boot_ms: 0.0,
            run_ms: report::ms(run_time),
            total_ms: report::ms(t0.elapsed()),
            backend: None,
            network,
            ports,
            ..Default::default()
        }
        .try_write();
        notices.extend(r.err());
    }
    if oom {
        notices.push(crate::sys::exit::oom_notice(&format!(
            "container {}",
            &id[..12]
        )));
        status = 137;
    }
    (status, oom, notices)
}

/// Whether a run gets a console-only pty: in systemd mode without `-t`
/// (systemd as PID 1 writes only to /dev/console, which a container
/// otherwise has only with `-t`). What is written there goes to the run's
/// stdout (with `-d`, to its log).
pub fn console_pty(flags: &RunFlags) -> bool {
    flags.systemd && !flags.tty
}

/// Checks amphi's roots at start, if they exist: the store and the state
/// root must be private (they are tightened to 0700 with a warning, or
/// refused when another user could change them: see
/// [`crate::image::store::secure_root`]).
///
/// As root the state root is also created here (0700), before anything else
/// (the host probe's cache, a microVM's run directory) could create it with
/// the umask's mode.
pub fn check_roots(store_root: &Path, state_root: &Path) -> Result<(), RunError> {
    crate::image::store::secure_root(store_root, "store", false).map_err(RunError::cause)?;
    let create = rustix::process::geteuid().is_root();
    crate::image::store::secure_root(state_root, "state root", create).map_err(RunError::cause)
}

/// Creates the state root if needed, private (see [`state::ensure_root`]).
pub fn ensure_dir(p: &Path) -> Result<(), RunError> {
    Ok(state::ensure_root(p)?)
}
