//! Launching a microVM: the start request the guest init gets (the same
//! OCI spec as a native run, with the guest's paths), the machine's size,
//! the backend process with its console and stderr captured in bounded
//! rings, the `--timeout` watchdog, and the cleanup that removes all of it.

use super::backend::{self, Backend, VmSpec};
use super::console::{self, Capture};
use super::rundir::RunDir;
use crate::proto::channel::{StartRequest, StartRequestJson};
use crate::run::EXIT_TIMEOUT;
use crate::run::{RunError, RunRequest};
use crate::spec::{self, RootfsPlan};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many console lines an error shows.
const CONSOLE_TAIL: usize = 25;
/// After the `--timeout` deadline, how long the run may take to wind down
/// before the watchdog ends the process itself.
const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// Everything a run leaves, removed on drop: the backend is killed and
/// reaped, the jailed VMM's cgroup and the run directory removed (under
/// its lock).
pub(super) struct Cleanup {
    pub run: Option<RunDir>,
    pub child: Option<Child>,
    /// How the backend ended, once it has (for the error that says why).
    pub ended: Option<std::process::ExitStatus>,
    /// The virtiofsd daemons: killed after the backend.
    pub daemons: Vec<super::virtiofs::Daemon>,
    /// passt, for a private network: killed after the backend.
    pub passt: Option<crate::net::Passt>,
}

impl Cleanup {
    pub fn new(run: RunDir) -> Self {
        Cleanup {
            run: Some(run),
            child: None,
            ended: None,
            daemons: Vec::new(),
            passt: None,
        }
    }

    /// A virtiofsd that ended while the VM runs (each is reported once);
    /// the session decides what follows.
    pub fn daemon_gone(&mut self) -> Option<super::virtiofs::Gone> {
        self.daemons.iter_mut().find_map(|d| d.ended())
    }

    /// The backend has ended with `st`.
    pub fn ended(&mut self, st: std::process::ExitStatus) {
        self.child = None;
        self.ended = Some(st);
    }

    /// Waits up to `grace` for the backend to end by itself, then kills it.
    pub fn stop_backend(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.ended(st);
                    return Some(st);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let st = child.wait().ok();
        self.child = None;
        if let Some(st) = st {
            self.ended = Some(st);
        }
        st
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_backend(Duration::ZERO);
        self.daemons.clear();
        self.passt = None;
        if let Some(id) = self
            .run
            .as_ref()
            .and_then(|r| super::jail::run_jail_id(r.path()))
        {
            // A supervisor killed before its own cleanup leaves the cgroup
            // (its VMM dies with it, SIGKILL on the parent's death).
            if let Err(e) = super::jail::remove_cgroup(&id) {
                tracing::warn!("{e}");
            }
        }
        drop(self.run.take());
    }
}

/// The guest console and the backend's messages, kept in bounded rings.
pub(super) struct Logs {
    pub console: Capture,
    pub backend: Capture,
}

/// One captured stream for an error message: its last lines, and a note
/// when the ring dropped the start.
fn shown(c: &Capture, keep: usize) -> (String, String) {
    let (text, dropped) = c.tail(CONSOLE_TAIL);
    let note = if dropped > 0 {
        format!(
            " (cut: {dropped} earlier bytes were dropped, only the last {} KiB are kept)",
            keep / 1024
        )
    } else {
        String::new()
    };
    (text, note)
}

pub(super) fn with_logs(msg: String, logs: &Logs) -> String {
    let mut m = msg;
    // The backend has ended or been killed: its pipes close soon.
    logs.console.settle(Duration::from_secs(2));
    logs.backend.settle(Duration::from_secs(1));
    let (console, cnote) = shown(&logs.console, console::CONSOLE_KEEP);
    if console.contains("Kernel panic") {
        m.push_str(" (the guest kernel panicked)");
    }
    let (backend, bnote) = shown(&logs.backend, console::BACKEND_KEEP);
    if !backend.is_empty() {
        m.push_str(&format!("\n--- backend output{bnote}\n{backend}"));
    }
    if console.is_empty() {
        m.push_str("\n--- the guest console printed nothing");
    } else {
        m.push_str(&format!(
            "\n--- last lines of the guest console{cnote}\n{console}"
        ));
    }
    m
}

/// The process file descriptor of the backend (None on kernels without
/// pidfd_open): the watchdog signals it without a pid-reuse race.
pub(super) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Enforces `--timeout` from its own thread, so that nothing (a guest
/// flooding the channel, a blocked write) can hold it up: at the deadline
/// it kills the backend, and if the run has not wound down
/// [`WATCHDOG_GRACE`] later, it restores the terminal, removes the run
/// directory and ends amphi with status 124.
pub(super) struct Watchdog {
    pub fired: Arc<AtomicBool>,
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Watchdog {
    pub fn start(
        deadline: Instant,
        limit: Duration,
        pidfd: Option<OwnedFd>,
        run_dir: PathBuf,
    ) -> Self {
        let fired = Arc::new(AtomicBool::new(false));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let (f, d) = (fired.clone(), done.clone());
        std::thread::spawn(move || {
            let wait_until = |until: Instant| -> bool {
                let mut g = d.0.lock().unwrap_or_else(|p| p.into_inner());
                while !*g {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    g =
                        d.1.wait_timeout(g, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                }
                true
            };
            if wait_until(deadline) {
                return;
            }
            f.store(true, Ordering::SeqCst);
            if let Some(fd) = &pidfd {
                // SAFETY: pidfd_send_signal(2) on the backend's pidfd.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
            if wait_until(Instant::now() + WATCHDOG_GRACE) {
                return;
            }
            crate::sys::term::restore_terminal();
            if let Some(id) = super::jail::run_jail_id(&run_dir) {
                let _ = super::jail::remove_cgroup(&id);
            }
            let _ = std::fs::remove_dir_all(&run_dir);
            eprintln!(
                "amphi: error: --timeout: the microVM ran longer than {} s and was stopped",
                limit.as_secs_f64()
            );
            // SAFETY: ending the process; the backend is dead (SIGKILL)
            // and would die with us anyway (PR_SET_PDEATHSIG).
            unsafe { libc::_exit(EXIT_TIMEOUT) };
        });
        Watchdog { fired, done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.done.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.done.1.notify_all();
    }
}

pub(super) fn which(prog: &Path) -> Result<(), RunError> {
    if prog.components().count() > 1 {
        return if prog.is_file() {
            Ok(())
        } else {
            Err(RunError::Failed(format!(
                "QEMU binary {} does not exist",
                prog.display()
            )))
        };
    }
    if crate::guestfs::find_program(&prog.to_string_lossy()).is_some() {
        Ok(())
    } else {
        Err(RunError::Failed(format!(
            "{} is not installed: the QEMU backend needs it (apt-get install qemu-system-x86, or run scripts/setup)",
            prog.display()
        )))
    }
}

/// The start request for the guest init: the OCI spec a native run would
/// get, with the guest's paths for the rootfs and the /etc files (whose
/// content travels in the request).
pub(super) fn start_request(
    req: &RunRequest,
    image: &crate::image::manifest::ImageConfig,
    id: &str,
    run_dir: &Path,
) -> Result<StartRequestJson, RunError> {
    let plan = RootfsPlan {
        rootfs: "/.amphi/rootfs".into(),
        lowers: vec!["/.amphi/lower".into()],
        upper: "/.amphi/upper".into(),
        work: "/.amphi/work".into(),
        etc_dir: run_dir.join("etc"),
    };
    let (spec, user) = spec::build(image, &req.flags, id, &plan)?;
    let mut spec_json =
        serde_json::to_value(&spec).map_err(|e| RunError::step("the runtime spec", e))?;
    let mut files = BTreeMap::new();
    if let Some(mounts) = spec_json.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for m in mounts {
            let Some(src) = m.get("source").and_then(|s| s.as_str()).map(PathBuf::from) else {
                continue;
            };
            if let Ok(name) = src.strip_prefix(&plan.etc_dir) {
                let guest = Path::new("/.amphi/etc").join(name);
                let content =
                    std::fs::read_to_string(&src).map_err(|e| RunError::io(src.display(), e))?;
                files.insert(guest.display().to_string(), content);
                m["source"] = guest.display().to_string().into();
            } else if src == Path::new(crate::spec::INIT_SOURCE) {
                m["source"] = crate::proto::GUEST_INIT.into();
            } else if let Some(i) = req.flags.volumes.iter().position(|v| v.host == src) {
                // A volume: its entry in the volumes share.
                m["source"] = format!("{}/{i}", super::virtiofs::GUEST_VOLUMES).into();
            }
        }
    }
    // A private network is the VM's own NIC: the workload shares the
    // guest's network namespace (itself private, being a VM's).
    let net = if req.flags.network == crate::net::Network::Private {
        if let Some(nss) = spec_json
            .pointer_mut("/linux/namespaces")
            .and_then(|n| n.as_array_mut())
        {
            nss.retain(|n| n.get("type").and_then(|t| t.as_str()) != Some("network"));
        }
        Some(crate::net::guest_address().map_err(RunError::Failed)?)
    } else {
        None
    };
    let shares = if req.flags.volumes.is_empty() {
        Vec::new()
    } else {
        vec![crate::proto::channel::GuestShare {
            tag: super::virtiofs::VOLUME_TAG.into(),
            target: super::virtiofs::GUEST_VOLUMES.into(),
        }]
    };
    Ok(StartRequestJson::new(&StartRequest {
        id: id.to_string(),
        spec: spec_json,
        user_lookup: user,
        files,
        stdin: req.interactive || req.flags.tty,
        host_time: None,
        console: crate::run::console_pty(&req.flags),
        shares,
        net,
    }))
}

/// The machine's size: RAM is the container's limit plus room for the
/// guest kernel and the initramfs (unpacked in RAM); vCPUs are --cpus
/// rounded up, at most the host's.
pub(super) fn machine_size(memory: Option<i64>, cpus: Option<f64>, initrd: &Path) -> (u64, u32) {
    let initrd_mib = std::fs::metadata(initrd)
        .map(|m| m.len() >> 20)
        .unwrap_or(0);
    let mem_mib = match memory {
        Some(b) if b > 0 => (b as u64 >> 20) + 128 + 2 * initrd_mib,
        _ => 512 + 2 * initrd_mib,
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let vcpus = cpus
        .map_or(1, |c| c.ceil().max(1.0) as u32)
        .min(host_cpus.max(1));
    (mem_mib, vcpus)
}

/// Starts the backend for `vm`, its serial console and stderr going to
/// bounded rings. The caller has blocked the forwarded signals.
pub(super) fn spawn(backend: &Backend, vm: &VmSpec<'_>) -> Result<(Child, Logs), RunError> {
    let mut cmd = backend::command(backend, vm).map_err(RunError::cause)?;
    if let Backend::Qemu { .. } = backend {
        if super::jail::unjailed() {
            eprintln!(
                "amphi: warning: QEMU runs UNJAILED ($AMPHI_VMM_NO_JAIL): as root with every \
                 capability, in the host's namespaces, with no seccomp sandbox; for debugging only"
            );
        } else {
            let jail = super::jail::QemuJail::prepare(vm.run_dir, vm.mem_mib, u64::from(vm.vcpus))
                .map_err(|e| RunError::Failed(format!("jailing QEMU: {e}")))?;
            cmd.args(jail.args());
            let jail = std::sync::Arc::new(jail);
            // SAFETY: QemuJail::in_child makes raw system calls only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || jail.in_child());
            }
        }
    }
    // Our copies of the pipes' write ends go with `cmd`.
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| RunError::io("pipe", e.into()))
    };
    let (console_r, console_w) = pipe()?;
    let (backend_r, backend_w) = pipe()?;
    cmd.stdout(console_w).stderr(backend_w);
    let logs = Logs {
        console: Capture::start(console_r, console::CONSOLE_KEEP),
        backend: Capture::start(backend_r, console::BACKEND_KEEP),
    };
    let child = cmd.spawn();
    let program = cmd.get_program().to_owned();
    drop(cmd);
    let child = child.map_err(|e| {
        RunError::io(
            format_args!("starting {} ({program:?})", backend.describe()),
            e,
        )
    })?;
    Ok((child, logs))
}
