//! `amphi run --isolation vm`: the workload in a microVM.
//!
//! The host side: pick the guest kernel (catalog, or a file), prepare the
//! guest rootfs (cached per image), build the same OCI spec as a native
//! run with guest paths, start the backend (amphi's VMM or QEMU), and talk
//! to the guest init over the guest channel ([`channel`]): send the start
//! frame, relay stdio, signals and window size, receive the exit status.
//! A watchdog stops a guest that does not come up, `--timeout` one that
//! runs too long; either way the backend is killed and the run directory
//! (`<state root>/vm/<id>/`: channel socket, console log, backend log)
//! removed.

pub mod backend;
pub mod channel;

use crate::guestfs::{self, RootfsKind};
use crate::kernel::Catalog;
use crate::run::{amphi_err, RunError, RunRequest};
use crate::spec::{self, RootfsPlan};
use backend::{Backend, BackendChoice, VmSpec};
use channel::{Decoder, Frame, StartRequest, StartRequestJson};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
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

/// The VM-specific part of a run.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub backend: BackendChoice,
    /// `--kernel`: a catalog ID/version/series, or a path (with a `/`).
    pub kernel: Option<String>,
    /// `--timeout`: stop the workload after this long.
    pub timeout: Option<Duration>,
}

/// The guest kernel of a run.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    pub path: PathBuf,
    pub release: String,
    pub pvm: bool,
}

/// Picks the guest kernel: `--kernel PATH` (checked), `--kernel QUERY` in
/// the catalog, else the newest catalog kernel. An empty catalog first
/// registers amphi's own kernels from the machine's build cache.
pub fn select_kernel(store_root: &Path, query: Option<&str>) -> Result<GuestKernel, RunError> {
    if let Some(q) = query.filter(|q| q.contains('/')) {
        let path = Path::new(q);
        let (img, _) =
            crate::kernel::probe::probe(path).map_err(|e| amphi_err(format!("--kernel: {e}")))?;
        return Ok(GuestKernel {
            path: path.to_path_buf(),
            release: img.release,
            pvm: false,
        });
    }
    let catalog = Catalog::open(store_root);
    let mut list = catalog.list().map_err(|e| amphi_err(e.to_string()))?;
    if list.is_empty() {
        crate::kernel::register_builtins(store_root);
        list = catalog.list().map_err(|e| amphi_err(e.to_string()))?;
    }
    let entry = match query {
        Some(q) => catalog
            .get(q)
            .map_err(|e| amphi_err(format!("--kernel: {e}")))?,
        None => list.into_iter().next().ok_or_else(|| {
            amphi_err(
                "no guest kernel in the catalog: build amphi's with `amphi kernel build` \
                 (about 17 minutes, once per machine) or add one with `amphi kernel add PATH`",
            )
        })?,
    };
    let path = entry.vmlinux().or_else(|| entry.bzimage()).ok_or_else(|| {
        amphi_err(format!(
            "guest kernel {} has no kernel file in {}",
            entry.id,
            entry.dir.display()
        ))
    })?;
    Ok(GuestKernel {
        path,
        release: entry.release.clone(),
        pvm: entry.pvm,
    })
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
/// reaped, the run directory removed.
struct Cleanup {
    run_dir: PathBuf,
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
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// The last lines of the guest's console (kernel messages).
fn console_tail(p: &Path) -> String {
    let text = std::fs::read(p).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n")
}

fn with_logs(msg: String, run_dir: &Path) -> String {
    let mut m = msg;
    let console = console_tail(&run_dir.join("console.log"));
    if console.contains("Kernel panic") {
        m.push_str(" (the guest kernel panicked)");
    }
    let backend = console_tail(&run_dir.join("backend.log"));
    if !backend.is_empty() {
        m.push_str(&format!("\n--- backend output\n{backend}"));
    }
    if console.is_empty() {
        m.push_str("\n--- the guest console printed nothing");
    } else {
        m.push_str(&format!("\n--- last lines of the guest console\n{console}"));
    }
    m
}

fn env_duration(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// Runs the request's workload in a microVM; returns its exit status.
pub fn run(req: RunRequest, opts: VmOptions) -> Result<i32, RunError> {
    let mut timing = Timing {
        start: Some(Instant::now()),
        ..Default::default()
    };
    let (store, rec, image) = crate::run::resolve_image(&req.store_root, &req.image)?;
    let host = crate::image::manifest::Platform::host();
    if image.architecture != host.architecture || (!image.os.is_empty() && image.os != "linux") {
        return Err(amphi_err(format!(
            "image {} is for {}/{}: amphi's microVMs run {} guests",
            req.image, image.os, image.architecture, host
        )));
    }
    let kernel = select_kernel(&req.store_root, opts.kernel.as_deref())?;
    let kvm = amphi_vmm::detect_kvm_kind();
    let (backend, notice) = backend::choose(opts.backend, kvm, kernel.pvm, &kernel.release);
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
    let run_dir = req.state_root.join("vm").join(&id[..16]);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| amphi_err(format!("{}: {e}", run_dir.display())))?;
    let mut cleanup = Cleanup {
        run_dir: run_dir.clone(),
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
                m["source"] = crate::guest::INIT.into();
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
    let extra = std::env::var("AMPHI_VM_CMDLINE_EXTRA").unwrap_or_default();
    let vm = VmSpec {
        kernel: &kernel.path,
        initrd: &prepared.initrd,
        disk: prepared.disk.as_deref(),
        cmdline: backend::cmdline(&backend, prepared.kind.cmdline(), extra.trim()),
        mem_mib,
        vcpus,
        channel: &sock_path,
        console_log: &run_dir.join("console.log"),
        backend_log: &run_dir.join("backend.log"),
    };
    tracing::info!(
        kernel = %kernel.path.display(), release = %kernel.release, backend = backend.describe(),
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
    let t = Instant::now();
    let sigs = crate::run::pty_signals();
    let child = cmd.spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            crate::run::pty_unblock(&sigs);
            return Err(amphi_err(format!(
                "starting {} ({:?}): {e}",
                backend.describe(),
                cmd.get_program()
            )));
        }
    };
    cleanup.child = Some(child);
    timing.vm_start = t.elapsed();
    timing.setup = timing.start.map(|s| s.elapsed()).unwrap_or_default();
    let result = session(
        &mut cleanup,
        &listener,
        &start,
        interactive,
        req.flags.tty,
        &opts,
        &sigs,
        &mut timing,
        &kernel,
        prepared.kind,
    );
    crate::run::pty_unblock(&sigs);
    let t = Instant::now();
    // The console tells why a VM died; a timeout or the workload's own
    // error needs no kernel log.
    let result = result.map_err(|e| match e.code {
        EXIT_TIMEOUT => e,
        _ if e.message.starts_with("the microVM") || e.message.starts_with("the guest") => {
            RunError {
                code: e.code,
                message: with_logs(e.message, &run_dir),
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
    // SAFETY: TIOCGWINSZ into a zeroed winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// Boots, starts and relays; returns the workload's exit status.
#[allow(clippy::too_many_arguments)]
fn session(
    cleanup: &mut Cleanup,
    listener: &UnixListener,
    start: &StartRequestJson,
    interactive: bool,
    tty: bool,
    opts: &VmOptions,
    sigs: &crate::run::Signals,
    timing: &mut Timing,
    kernel: &GuestKernel,
    kind: RootfsKind,
) -> Result<i32, RunError> {
    let boot_start = Instant::now();
    let boot_deadline = boot_start + env_duration("AMPHI_VM_BOOT_TIMEOUT", BOOT_TIMEOUT);
    let died = |cleanup: &mut Cleanup, what: &str| -> Option<RunError> {
        let st = cleanup.child.as_mut()?.try_wait().ok()??;
        cleanup.child = None;
        Some(amphi_err(format!(
            "the microVM ({} kernel {}) {what} ({st})",
            kind, kernel.release
        )))
    };
    // 1. The backend connects to the channel.
    let stream = loop {
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
        .map_err(|e| amphi_err(e.to_string()))?;
    let writer = Arc::new(Mutex::new(
        stream.try_clone().map_err(|e| amphi_err(e.to_string()))?,
    ));
    let mut reader = stream;
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut ready = false;
    let mut run_deadline = None;
    let mut _raw = None;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        // Frames that arrived.
        loop {
            let f = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(amphi_err(e)),
            };
            match f {
                Frame::Ready(r) => {
                    ready = true;
                    timing.boot = boot_start.elapsed();
                    tracing::info!(kernel = %r.kernel, uptime = r.uptime, "guest init ready");
                    timing.guest_kernel = r.kernel.clone();
                    send(&writer, &Frame::Start(Box::new(start.with_time())))
                        .map_err(|e| amphi_err(format!("guest channel: {e}")))?;
                    if tty {
                        _raw = Some(crate::run::RawMode::enter());
                        if let Some((rows, cols)) = winsize() {
                            let _ = send(&writer, &Frame::Resize { rows, cols });
                        }
                    }
                    if interactive {
                        forward_stdin(writer.clone());
                    }
                    run_deadline = opts.timeout.map(|t| Instant::now() + t);
                }
                Frame::Stdout(b) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Frame::Stderr(b) => {
                    let _ = stderr.write_all(&b);
                    let _ = stderr.flush();
                }
                Frame::Log(l) => tracing::info!(guest = %l),
                Frame::Exit(e) => {
                    timing.workload = boot_start.elapsed() - timing.boot;
                    timing.peak_memory = e.peak_memory;
                    timing.oom_killed = e.oom_killed;
                    drop(_raw.take());
                    let t = Instant::now();
                    let _ = send(&writer, &Frame::Shutdown);
                    cleanup.stop_backend(SHUTDOWN_GRACE);
                    timing.teardown = t.elapsed();
                    if e.oom_killed {
                        eprintln!(
                            "amphi: the workload was killed by the guest kernel's OOM killer (memory limit reached)"
                        );
                    }
                    return Ok(e.code);
                }
                Frame::Error(e) => {
                    drop(_raw.take());
                    let _ = send(&writer, &Frame::Shutdown);
                    cleanup.stop_backend(Duration::from_secs(3));
                    return Err(RunError {
                        code: e.code,
                        message: e.message,
                    });
                }
                other => {
                    return Err(amphi_err(format!(
                        "guest channel: unexpected frame from the guest: {other:?}"
                    )))
                }
            }
        }
        // Deadlines.
        let now = Instant::now();
        if !ready && now >= boot_deadline {
            return Err(amphi_err(format!(
                "the guest did not come up within {} s (boot watchdog; $AMPHI_VM_BOOT_TIMEOUT sets it)",
                (boot_deadline - boot_start).as_secs()
            )));
        }
        if let Some(d) = run_deadline {
            if now >= d {
                drop(_raw.take());
                return Err(RunError {
                    code: EXIT_TIMEOUT,
                    message: format!(
                        "--timeout: the workload ran longer than {} s; the microVM was stopped",
                        opts.timeout.unwrap_or_default().as_secs_f64()
                    ),
                });
            }
        }
        let wait_ms = match (ready, run_deadline) {
            (false, _) => boot_deadline.saturating_duration_since(now),
            (true, Some(d)) => d.saturating_duration_since(now),
            (true, None) => Duration::from_secs(1),
        }
        .as_millis()
        .clamp(1, 1000) as i32;
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
        // SAFETY: poll on a valid array.
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
                            let _ = send(&writer, &Frame::Resize { rows, cols });
                        }
                    }
                    s if ready => {
                        let _ = send(&writer, &Frame::Signal(s));
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
                    let what = if ready {
                        "stopped before the workload finished"
                    } else {
                        "stopped before the guest init reported"
                    };
                    return Err(amphi_err(format!(
                        "the microVM (kernel {}) {what}{}",
                        kernel.release,
                        st.map(|s| format!(" ({s})")).unwrap_or_default()
                    )));
                }
                Ok(n) => dec.push(&buf[..n]),
            }
        } else if let Some(e) = died(cleanup, "ended unexpectedly") {
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
