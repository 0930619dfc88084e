//! `amphi run --isolation vm`: the workload in a microVM.
//!
//! The host side runs the dispatcher's plan (the image, the guest kernel
//! and the backend chosen there, never chosen again): prepare the guest
//! rootfs (cached per image), build the same OCI spec as a native run with
//! guest paths, start the backend (amphi's VMM or QEMU), and talk
//! to the guest init over the guest channel ([`crate::proto::channel`]):
//! send the start frame, relay stdio, signals and window size, receive the
//! exit status.
//! A watchdog stops a guest that does not come up, `--timeout` one that
//! runs too long (an absolute deadline from the VM's start that nothing the
//! guest sends can move); either way the backend is killed and the run
//! directory (`<state root>/vm/<id>/`: channel socket, /etc files, lock)
//! removed.
//!
//! The guest is not trusted: what it sends is checked by the protocol
//! state machine ([`protocol`]) and the channel decoder's per-kind limits;
//! a violation stops the VM with exit status 125. Its console is kept in a
//! bounded ring in memory ([`console`]), never on disk.

pub mod backend;
pub mod console;
pub mod protocol;
pub mod rundir;

pub use rundir::sweep_stale_runs;

/// `amphi gc`'s part for microVM runs: removes the run directories of
/// clients that are gone (and kills a backend that outlived its client),
/// saying so on stderr.
pub fn gc_stale_runs(state_root: &Path) {
    match sweep_stale_runs(state_root) {
        Ok(s) => {
            for pid in &s.backends_killed {
                eprintln!("amphi: killed microVM backend {pid}, whose client was gone");
            }
            for d in &s.run_dirs {
                eprintln!(
                    "amphi: removed stale microVM run directory {}",
                    state_root.join("vm").join(d).display()
                );
            }
        }
        Err(e) => eprintln!("amphi: warning: microVM run directories: {e}"),
    }
}

use crate::dispatch::{ResolvedImage, VmPlan};
use crate::guestfs::{self, RootfsKind};
use crate::proto::channel::{self, Decoder, Frame, StartRequest, StartRequestJson};
use crate::run::{amphi_err, RunError, RunRequest};
use crate::spec::{self, RootfsPlan};
use backend::{Backend, VmSpec};
use console::Capture;
use protocol::{Event, Protocol, EXIT_PROTOCOL};
use rundir::RunDir;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Exit status when `--timeout` stopped the workload (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// How long the guest gets to boot and report, unless
/// `$AMPHI_VM_BOOT_TIMEOUT` (seconds) says otherwise.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest gets to power off after the exit status, before its
/// backend is killed (nothing in the guest needs saving: the rootfs is
/// read-only or in guest RAM).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How many console lines an error shows.
const CONSOLE_TAIL: usize = 25;
/// The third SIGINT/SIGTERM/SIGHUP/SIGQUIT during the workload stops the
/// VM (the ones before are forwarded to the workload).
const ENDING_SIGNALS: u32 = 3;
/// How long a write to the guest channel may block (a guest that stops
/// reading its channel breaks the protocol: the honest init always reads).
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the `--timeout` deadline, how long the run may take to wind down
/// before the watchdog ends the process itself.
const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// The VM-specific part of a run that the dispatcher does not decide.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// `--timeout`: stop the workload after this long.
    pub timeout: Option<Duration>,
}

/// Phases of a run, for `$AMPHI_VM_TIMING` and the bench.
#[derive(Default)]
struct Timing {
    start: Option<Instant>,
    rootfs: Duration,
    rootfs_cached: bool,
    vm_start: Duration,
    /// Everything before the backend was spawned, plus spawning it.
    setup: Duration,
    boot: Duration,
    workload: Duration,
    teardown: Duration,
    /// `uname -r` in the guest, from its ready frame.
    guest_kernel: String,
    peak_memory: Option<u64>,
    oom_killed: bool,
}

/// Everything a run leaves, removed on drop: the backend is killed and
/// reaped, the run directory removed (under its lock).
struct Cleanup {
    run: Option<RunDir>,
    child: Option<Child>,
}

impl Cleanup {
    /// Waits up to `grace` for the backend to end by itself, then kills it.
    fn stop_backend(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
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
        st
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop_backend(Duration::ZERO);
        drop(self.run.take());
    }
}

/// The guest console and the backend's messages, kept in bounded rings.
struct Logs {
    console: Capture,
    backend: Capture,
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

fn with_logs(msg: String, logs: &Logs) -> String {
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
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Enforces `--timeout` from its own thread, so that nothing (a guest
/// flooding the channel, a blocked write) can hold it up: at the deadline
/// it kills the backend, and if the run has not wound down
/// [`WATCHDOG_GRACE`] later, it restores the terminal, removes the run
/// directory and ends amphi with status 124.
struct Watchdog {
    fired: Arc<AtomicBool>,
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Watchdog {
    fn start(deadline: Instant, limit: Duration, pidfd: Option<OwnedFd>, run_dir: PathBuf) -> Self {
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
            crate::run::restore_terminal();
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

fn env_duration(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// Runs the request's workload in a microVM as planned: `resolved` (the
/// image the dispatcher planned for `req.image`, its platform checked
/// there) on `vm`'s guest kernel and backend. Returns its exit status.
pub fn run(
    req: RunRequest,
    resolved: ResolvedImage,
    vm: VmPlan,
    opts: VmOptions,
) -> Result<i32, RunError> {
    let mut timing = Timing {
        start: Some(Instant::now()),
        ..Default::default()
    };
    let ResolvedImage {
        store,
        record: rec,
        config: image,
    } = resolved;
    let VmPlan {
        kernel,
        backend,
        notice,
        cmdline: plan_cmdline,
    } = vm;
    let kernel_path = kernel.boot_file()?;
    if let Backend::Qemu { .. } = backend {
        which(&backend::qemu_binary())?;
    }

    let t = Instant::now();
    let gopts = guestfs::Options::from_env().map_err(|e| amphi_err(e.to_string()))?;
    let prepared = guestfs::prepare(&store, &rec, &gopts)
        .map_err(|e| amphi_err(format!("guest rootfs of {}: {e}", req.image)))?;
    timing.rootfs = t.elapsed();
    timing.rootfs_cached = prepared.cached;
    for w in &prepared.warnings {
        eprintln!("amphi: warning: {w}");
    }

    let id = crate::run::new_id();
    let run = RunDir::create(&req.state_root, &id[..16]).map_err(amphi_err)?;
    let run_dir = run.path().to_path_buf();
    let mut cleanup = Cleanup {
        run: Some(run),
        child: None,
    };
    let sock_path = run_dir.join("chan.sock");
    if sock_path.as_os_str().len() > 100 {
        return Err(amphi_err(format!(
            "the state root {} is too deep for a unix socket path; use a shorter --root",
            req.state_root.display()
        )));
    }

    // The same spec as a native run, with the guest's paths.
    let plan = RootfsPlan {
        rootfs: "/.amphi/rootfs".into(),
        lowers: vec!["/.amphi/lower".into()],
        upper: "/.amphi/upper".into(),
        work: "/.amphi/work".into(),
        etc_dir: run_dir.join("etc"),
    };
    let (spec, user) = spec::build(&image, &req.flags, &id, &plan).map_err(amphi_err)?;
    let mut spec_json =
        serde_json::to_value(&spec).map_err(|e| amphi_err(format!("the runtime spec: {e}")))?;
    let mut files = BTreeMap::new();
    if let Some(mounts) = spec_json.get_mut("mounts").and_then(|m| m.as_array_mut()) {
        for m in mounts {
            let Some(src) = m.get("source").and_then(|s| s.as_str()).map(PathBuf::from) else {
                continue;
            };
            if let Ok(name) = src.strip_prefix(&plan.etc_dir) {
                let guest = Path::new("/.amphi/etc").join(name);
                let content = std::fs::read_to_string(&src)
                    .map_err(|e| amphi_err(format!("{}: {e}", src.display())))?;
                files.insert(guest.display().to_string(), content);
                m["source"] = guest.display().to_string().into();
            } else if src == Path::new(crate::spec::INIT_SOURCE) {
                m["source"] = crate::proto::GUEST_INIT.into();
            }
        }
    }
    let interactive = req.interactive || req.flags.tty;
    let start = StartRequestJson::new(&StartRequest {
        id: id.clone(),
        spec: spec_json,
        user_lookup: user,
        files,
        stdin: interactive,
        host_time: None,
        console: crate::run::console_pty(&req.flags),
    });

    // RAM: the container's limit plus room for the guest kernel and the
    // initramfs (unpacked in RAM); vCPUs: --cpus rounded up.
    let initrd_mib = std::fs::metadata(&prepared.initrd)
        .map(|m| m.len() >> 20)
        .unwrap_or(0);
    let mem_mib = match req.flags.memory {
        Some(b) if b > 0 => (b as u64 >> 20) + 128 + 2 * initrd_mib,
        _ => 512 + 2 * initrd_mib,
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let vcpus = req
        .flags
        .cpus
        .map_or(1, |c| c.ceil().max(1.0) as u32)
        .min(host_cpus.max(1));
    // The plan's additions (what the image's inferred needs ask of the
    // guest kernel), then the operator's debugging extras.
    let mut extra = plan_cmdline.join(" ");
    if let Ok(more) = std::env::var("AMPHI_VM_CMDLINE_EXTRA") {
        extra.push(' ');
        extra.push_str(&more);
    }
    let vm = VmSpec {
        kernel: &kernel_path,
        initrd: &prepared.initrd,
        disk: prepared.disk.as_deref(),
        cmdline: backend::cmdline(&backend, prepared.kind.cmdline(), extra.trim()),
        mem_mib,
        vcpus,
        channel: &sock_path,
    };
    tracing::info!(
        kernel = %kernel_path.display(), release = %kernel.release(), backend = backend.describe(),
        rootfs = %prepared.kind, mem_mib, vcpus, cmdline = %vm.cmdline, "starting microVM"
    );
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    let listener = UnixListener::bind(&sock_path)
        .map_err(|e| amphi_err(format!("{}: {e}", sock_path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| amphi_err(e.to_string()))?;
    let mut cmd = backend::command(&backend, &vm).map_err(amphi_err)?;
    // The serial console and the backend's stderr go to pipes read into
    // bounded rings; our copies of the write ends go with `cmd`.
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| amphi_err(format!("pipe: {e}")))
    };
    let (console_r, console_w) = pipe()?;
    let (backend_r, backend_w) = pipe()?;
    cmd.stdout(console_w).stderr(backend_w);
    // Blocked before any thread starts: threads inherit the mask, so the
    // forwarded signals reach the signalfd, never a thread's default action.
    let sigs = crate::run::pty_signals();
    let logs = Logs {
        console: Capture::start(console_r, console::CONSOLE_KEEP),
        backend: Capture::start(backend_r, console::BACKEND_KEEP),
    };
    let t = Instant::now();
    let launch = Instant::now();
    let child = cmd.spawn();
    let program = cmd.get_program().to_owned();
    drop(cmd);
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            crate::run::pty_unblock(&sigs);
            return Err(amphi_err(format!(
                "starting {} ({program:?}): {e}",
                backend.describe(),
            )));
        }
    };
    let pidfd = pidfd_open(child.id());
    if let Some(r) = cleanup.run.as_mut() {
        r.record_backend(child.id() as i32);
    }
    cleanup.child = Some(child);
    // --timeout: an absolute deadline from the VM's start.
    let deadline = opts.timeout.map(|t| (launch + t, t));
    let _watchdog = deadline.map(|(d, limit)| Watchdog::start(d, limit, pidfd, run_dir.clone()));
    let fired = _watchdog.as_ref().map(|w| w.fired.clone());
    timing.vm_start = t.elapsed();
    timing.setup = timing.start.map(|s| s.elapsed()).unwrap_or_default();
    let result = session(
        &mut cleanup,
        &listener,
        &start,
        interactive,
        req.flags.tty,
        deadline,
        fired.as_deref(),
        &sigs,
        &mut timing,
        kernel.release(),
        prepared.kind,
    );
    drop(_watchdog);
    crate::run::pty_unblock(&sigs);
    let t = Instant::now();
    cleanup.stop_backend(Duration::ZERO);
    // The console tells why a VM died; a timeout or the workload's own
    // error needs no kernel log.
    let result = result.map_err(|e| match e.code {
        EXIT_TIMEOUT => e,
        _ if e.message.starts_with("the microVM") || e.message.starts_with("the guest") => {
            RunError {
                code: e.code,
                message: with_logs(e.message, &logs),
            }
        }
        _ => e,
    });
    drop(cleanup);
    timing.teardown += t.elapsed();
    if let Ok(code) = &result {
        let ms = crate::run::report::ms;
        crate::run::report::RunReport {
            isolation: "vm".into(),
            exit_code: *code,
            oom_killed: timing.oom_killed,
            kernel: timing.guest_kernel.clone(),
            peak_memory: timing.peak_memory,
            setup_ms: ms(timing.setup),
            boot_ms: ms(timing.boot),
            run_ms: ms(timing.workload),
            total_ms: ms(timing.start.map(|s| s.elapsed()).unwrap_or_default()),
            backend: Some(backend.describe().to_string()),
        }
        .write();
    }
    if std::env::var_os("AMPHI_VM_TIMING").is_some() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "amphi: vm timing: rootfs={:.1}ms{} vm-start={:.1}ms boot={:.1}ms workload={:.1}ms teardown={:.1}ms total={:.1}ms backend={:?} rootfs-kind={}",
            ms(timing.rootfs),
            if timing.rootfs_cached { "(cached)" } else { "(built)" },
            ms(timing.vm_start),
            ms(timing.boot),
            ms(timing.workload),
            ms(timing.teardown),
            ms(timing.start.map(|s| s.elapsed()).unwrap_or_default()),
            backend.describe(),
            prepared.kind,
        );
    }
    result
}

fn which(prog: &Path) -> Result<(), RunError> {
    if prog.components().count() > 1 {
        return if prog.is_file() {
            Ok(())
        } else {
            Err(amphi_err(format!(
                "QEMU binary {} does not exist",
                prog.display()
            )))
        };
    }
    if crate::guestfs::find_program(&prog.to_string_lossy()).is_some() {
        Ok(())
    } else {
        Err(amphi_err(format!(
            "{} is not installed: the QEMU backend needs it (apt-get install qemu-system-x86, or run scripts/setup)",
            prog.display()
        )))
    }
}

/// Writes a frame under the shared writer lock.
fn send(w: &Mutex<UnixStream>, f: &Frame) -> std::io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    f.write_to(&mut *s)
}

fn winsize() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

fn violation(v: &str) -> RunError {
    RunError {
        code: EXIT_PROTOCOL,
        message: format!(
            "guest protocol violation: {}; the microVM was stopped",
            v.trim_start_matches("guest channel: ")
        ),
    }
}

fn timed_out(limit: Duration) -> RunError {
    RunError {
        code: EXIT_TIMEOUT,
        message: format!(
            "--timeout: the microVM ran longer than {} s and was stopped",
            limit.as_secs_f64()
        ),
    }
}

/// Boots, starts and relays; returns the workload's exit status.
///
/// The conversation follows [`Protocol`]: the start request goes out once,
/// on the one legal ready frame; raw mode and the stdin relay start then,
/// once. `deadline` (`--timeout`, from the VM's start) is never moved.
#[allow(clippy::too_many_arguments)]
fn session(
    cleanup: &mut Cleanup,
    listener: &UnixListener,
    start: &StartRequestJson,
    interactive: bool,
    tty: bool,
    deadline: Option<(Instant, Duration)>,
    fired: Option<&AtomicBool>,
    sigs: &crate::run::Signals,
    timing: &mut Timing,
    kernel_release: &str,
    kind: RootfsKind,
) -> Result<i32, RunError> {
    let boot_start = Instant::now();
    let boot_deadline = boot_start + env_duration("AMPHI_VM_BOOT_TIMEOUT", BOOT_TIMEOUT);
    let expired = || {
        deadline.is_some_and(|(d, _)| Instant::now() >= d)
            || fired.is_some_and(|f| f.load(Ordering::SeqCst))
    };
    let timeout_err = || timed_out(deadline.map(|d| d.1).unwrap_or_default());
    let died = |cleanup: &mut Cleanup, what: &str| -> Option<RunError> {
        let st = cleanup.child.as_mut()?.try_wait().ok()??;
        cleanup.child = None;
        Some(amphi_err(format!(
            "the microVM ({} kernel {}) {what} ({st})",
            kind, kernel_release
        )))
    };
    // 1. The backend connects to the channel.
    let stream = loop {
        if expired() {
            return Err(timeout_err());
        }
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(amphi_err(format!("guest channel: {e}"))),
        }
        if let Some(e) = died(cleanup, "ended before it connected the guest channel") {
            return Err(e);
        }
        if Instant::now() >= boot_deadline {
            return Err(amphi_err(
                "the microVM did not connect the guest channel in time",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)))
        .map_err(|e| amphi_err(format!("guest channel: {e}")))?;
    let writer = Arc::new(Mutex::new(
        stream.try_clone().map_err(|e| amphi_err(e.to_string()))?,
    ));
    let mut reader = stream;
    let mut dec = Decoder::from_guest();
    let mut proto = Protocol::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut _raw = None;
    let mut end_requests = 0;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let sent = |r: std::io::Result<()>, what: &str| {
        r.map_err(|e| {
            violation(&format!(
                "the guest does not take the {what} frame from its channel ({e})"
            ))
        })
    };
    loop {
        if expired() {
            return Err(timeout_err());
        }
        // Frames that arrived, each checked against the protocol.
        loop {
            let f = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(violation(&e)),
            };
            match proto.on_frame(f).map_err(|v| violation(&v))? {
                Event::Ready(r) => {
                    timing.boot = boot_start.elapsed();
                    tracing::info!(kernel = %r.kernel, uptime = r.uptime, "guest init ready");
                    timing.guest_kernel = r.kernel.clone();
                    sent(
                        send(&writer, &Frame::Start(Box::new(start.with_time()))),
                        "start",
                    )?;
                    if tty {
                        _raw = Some(crate::run::RawMode::enter());
                        if let Some((rows, cols)) = winsize() {
                            sent(send(&writer, &Frame::Resize { rows, cols }), "resize")?;
                        }
                    }
                    if interactive {
                        forward_stdin(writer.clone());
                    }
                }
                Event::Stdout(b) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Event::Stderr(b) => {
                    let _ = stderr.write_all(&b);
                    let _ = stderr.flush();
                }
                Event::Log(l) => tracing::info!(guest = %l),
                Event::Exit(e) => {
                    timing.workload = boot_start.elapsed() - timing.boot;
                    timing.peak_memory = e.peak_memory;
                    timing.oom_killed = e.oom_killed;
                    drop(_raw.take());
                    let t = Instant::now();
                    let _ = send(&writer, &Frame::Shutdown);
                    let grace = match deadline {
                        Some((d, _)) => d.saturating_duration_since(Instant::now()),
                        None => SHUTDOWN_GRACE,
                    };
                    cleanup.stop_backend(grace.min(SHUTDOWN_GRACE));
                    timing.teardown = t.elapsed();
                    if e.oom_killed {
                        // The one wording of the notice (native runs too).
                        eprintln!(
                            "{}",
                            crate::sys::exit::oom_notice("the workload in the microVM")
                        );
                    }
                    return Ok(e.code);
                }
                Event::Failed(e) => {
                    drop(_raw.take());
                    let _ = send(&writer, &Frame::Shutdown);
                    cleanup.stop_backend(Duration::from_secs(3));
                    return Err(RunError {
                        code: e.code,
                        message: e.message,
                    });
                }
            }
        }
        // Deadlines: --timeout is absolute, the boot watchdog holds until
        // the ready frame.
        let now = Instant::now();
        if expired() {
            return Err(timeout_err());
        }
        let booting = proto.state() == protocol::State::Booting;
        if booting && now >= boot_deadline {
            return Err(amphi_err(format!(
                "the guest did not come up within {} s (boot watchdog; $AMPHI_VM_BOOT_TIMEOUT sets it)",
                (boot_deadline - boot_start).as_secs()
            )));
        }
        let mut wait = Duration::from_secs(1);
        if booting {
            wait = wait.min(boot_deadline.saturating_duration_since(now));
        }
        if let Some((d, _)) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        let wait_ms = wait.as_millis().clamp(1, 1000) as i32;
        let mut fds = [
            libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigs.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two initialised pollfds (the
        // length passed); poll writes only their `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if n < 0 {
            continue;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            for s in sigs.drain() {
                match s {
                    libc::SIGCHLD => {}
                    libc::SIGWINCH => {
                        if let Some((rows, cols)) = winsize() {
                            if !booting {
                                sent(send(&writer, &Frame::Resize { rows, cols }), "resize")?;
                            }
                        }
                    }
                    s if !booting => {
                        // A workload (or guest) that ignores the signals
                        // cannot hold amphi: the third request to end it
                        // stops the VM.
                        if [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT].contains(&s) {
                            end_requests += 1;
                            if end_requests >= ENDING_SIGNALS {
                                return Err(RunError {
                                    code: 128 + s,
                                    message: format!(
                                        "the workload did not end after {ENDING_SIGNALS} signals (the last: {s}); the microVM was stopped"
                                    ),
                                });
                            }
                        }
                        sent(send(&writer, &Frame::Signal(s)), "signal")?;
                    }
                    // Before the workload runs, a ^C ends the run.
                    s => {
                        return Err(RunError {
                            code: 128 + s,
                            message: format!("interrupted by signal {s} while the microVM booted"),
                        })
                    }
                }
            }
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => {
                    drop(_raw.take());
                    let st = cleanup.stop_backend(Duration::from_secs(2));
                    if expired() {
                        return Err(timeout_err());
                    }
                    let what = if booting {
                        "stopped before the guest init reported"
                    } else {
                        "stopped before the workload finished"
                    };
                    return Err(amphi_err(format!(
                        "the microVM (kernel {}) {what}{}",
                        kernel_release,
                        st.map(|s| format!(" ({s})")).unwrap_or_default()
                    )));
                }
                Ok(n) => dec.push(&buf[..n]),
            }
        } else if let Some(e) = died(cleanup, "ended unexpectedly") {
            if expired() {
                return Err(timeout_err());
            }
            return Err(e);
        }
    }
}

/// Copies our stdin to the guest in its own thread; EOF becomes
/// [`Frame::StdinEof`].
fn forward_stdin(writer: Arc<Mutex<UnixStream>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; channel::CHUNK];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if send(&writer, &Frame::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = send(&writer, &Frame::StdinEof);
    });
}
