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
pub mod bundle;
pub mod console;
pub mod jail;
mod launch;
pub mod protocol;
pub mod rundir;
mod session;
pub mod virtiofs;

pub use rundir::{remove_empty_root, sweep_stale_runs};
pub use session::Hold;

use crate::dispatch::{ResolvedImage, VmPlan};
use crate::guestfs;
use crate::run::{RunError, RunRequest};
use backend::{Backend, VmSpec};
use launch::{which, with_logs, Cleanup, Watchdog};
use rundir::RunDir;
use session::Session;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the guest gets to boot and report, unless
/// `$AMPHI_VM_BOOT_TIMEOUT` (seconds) says otherwise.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest gets to power off after the exit status, before its
/// backend is killed (nothing in the guest needs saving: the rootfs is
/// read-only or in guest RAM).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The VM-specific part of a run that the dispatcher does not decide.
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// `--timeout`: stop the workload after this long.
    pub timeout: Option<Duration>,
    /// `--vm-rootfs`: the guest rootfs kind asked for (None: the rule's).
    pub rootfs: Option<guestfs::RootfsKind>,
    /// `--verbose`: say which guest rootfs kind the run got, and why.
    pub verbose: bool,
    /// Where notices for the user go (warnings, the OOM killer, the
    /// backend's notice): the library does not print.
    pub notify: fn(&str),
    /// The container id to use (a detached run's record has one already);
    /// None: a new one.
    pub id: Option<String>,
    /// Told the VMM's pid once the workload runs in the guest (a detached
    /// run's monitor records it and tells the caller the start went well).
    pub started: Option<std::sync::mpsc::Sender<u32>>,
    /// Take `amphi exec` clients on [`exec_socket`] (a detached run).
    pub exec: bool,
    /// Set when the kernel's OOM killer ended the workload (a detached
    /// run's monitor records it).
    pub oom_killed: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Where a detached microVM's monitor takes `amphi exec` clients: a
/// socket in the VM's run directory (0700, root's).
pub fn exec_socket(state_root: &Path, id: &str) -> PathBuf {
    state_root
        .join("vm")
        .join(id.get(..16).unwrap_or(id))
        .join("exec.sock")
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

impl Timing {
    /// The run report (for compare) of a run that got an exit status, and
    /// with `$AMPHI_VM_TIMING` the phases on stderr.
    fn report(
        &self,
        result: &Result<i32, RunError>,
        monitor: &Backend,
        rootfs: &guestfs::Prepared,
        (network, ports): (String, Vec<String>),
        notify: fn(&str),
    ) {
        let kind = rootfs.kind;
        let backend = monitor.describe();
        if let Ok(code) = result {
            let ms = crate::run::report::ms;
            crate::run::report::RunReport {
                isolation: "vm".into(),
                exit_code: *code,
                oom_killed: self.oom_killed,
                kernel: self.guest_kernel.clone(),
                peak_memory: self.peak_memory,
                setup_ms: ms(self.setup),
                boot_ms: ms(self.boot),
                run_ms: ms(self.workload),
                total_ms: ms(self.start.map(|s| s.elapsed()).unwrap_or_default()),
                backend: Some(backend.to_string()),
                monitor_protections: jail::protections(monitor),
                rootfs: Some(format!("{kind}: {}", rootfs.reason)),
                network,
                ports,
            }
            .try_write()
            .unwrap_or_else(|w| notify(&w));
        }
        if std::env::var_os("AMPHI_VM_TIMING").is_some() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            notify(&format!(
            "amphi: vm timing: rootfs={:.1}ms{} vm-start={:.1}ms boot={:.1}ms workload={:.1}ms teardown={:.1}ms total={:.1}ms backend={:?} rootfs-kind={}",
            ms(self.rootfs),
            if self.rootfs_cached { "(cached)" } else { "(built)" },
            ms(self.vm_start),
            ms(self.boot),
            ms(self.workload),
            ms(self.teardown),
            ms(self.start.map(|s| s.elapsed()).unwrap_or_default()),
            backend,
            kind,
        ));
        }
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

/// The guest's root filesystem (built once per image, then cached), its
/// warnings shown, its time recorded.
fn guest_rootfs(
    store: &crate::image::store::Store,
    rec: &crate::image::index::ImageRecord,
    image: &str,
    timing: &mut Timing,
    opts: &VmOptions,
    virtiofs: bool,
) -> Result<guestfs::Prepared, RunError> {
    let notify = opts.notify;
    let t = Instant::now();
    let mut gopts = guestfs::Options::from_env().map_err(RunError::cause)?;
    gopts.force = opts.rootfs;
    gopts.virtiofs = virtiofs;
    let prepared = guestfs::prepare(store, rec, &gopts)
        .map_err(|e| RunError::step(format_args!("guest rootfs of {image}"), e))?;
    timing.rootfs = t.elapsed();
    timing.rootfs_cached = prepared.cached;
    if opts.verbose {
        notify(&format!(
            "amphi: guest rootfs: {} ({})",
            prepared.kind, prepared.reason
        ));
    }
    for w in &prepared.warnings {
        notify(&format!("amphi: warning: {w}"));
    }
    Ok(prepared)
}

/// virtiofsd, when this run can use virtio-fs (the daemon is installed
/// and the guest kernel has `CONFIG_VIRTIO_FS`), else why not. Volumes
/// and `--vm-rootfs virtiofs` need it; the rootfs rule uses it when there.
fn virtiofs_support(
    kernel: &crate::dispatch::GuestKernel,
    req: &RunRequest,
    opts: &VmOptions,
) -> Result<Option<PathBuf>, RunError> {
    let support = virtiofs_for(kernel);
    let needed = if !req.flags.volumes.is_empty() {
        Some("-v in a microVM shares the host path with virtio-fs")
    } else if opts.rootfs == Some(guestfs::RootfsKind::Virtiofs) {
        Some("--vm-rootfs virtiofs shares the image's layers with virtio-fs")
    } else {
        None
    };
    match (support, needed) {
        (Ok(bin), _) => Ok(Some(bin)),
        (Err(why), Some(what)) => Err(RunError::Usage(format!("{what}, but {why}"))),
        (Err(why), None) => {
            tracing::debug!("no virtio-fs rootfs: {why}");
            Ok(None)
        }
    }
}

/// The virtio-fs shares of an image's run: the rootfs's, the volumes'.
fn image_shares(req: &RunRequest, prepared: &guestfs::Prepared) -> Vec<virtiofs::Share> {
    let mut shares = Vec::new();
    if prepared.kind == guestfs::RootfsKind::Virtiofs {
        shares.push(virtiofs::Share::Rootfs {
            lowers: prepared.lowers.clone(),
        });
    }
    if !req.flags.volumes.is_empty() {
        shares.push(virtiofs::Share::Volumes(
            req.flags
                .volumes
                .iter()
                .map(|v| virtiofs::VolumeShare {
                    host: v.host.clone(),
                    readonly: v.readonly,
                })
                .collect(),
        ));
    }
    shares
}

/// The file the backend boots for `kernel`, once the backend's own
/// program (QEMU) is known to be installed.
fn boot_file(
    kernel: &crate::dispatch::GuestKernel,
    backend: &Backend,
) -> Result<PathBuf, RunError> {
    let path = kernel.boot_file()?;
    if let Backend::Qemu { .. } = backend {
        which(&backend::qemu_binary())?;
    }
    Ok(path)
}

/// virtiofsd, if it is installed and the guest kernel has
/// `CONFIG_VIRTIO_FS`; else why not.
fn virtiofs_for(kernel: &crate::dispatch::GuestKernel) -> Result<PathBuf, String> {
    virtiofs::binary().and_then(|bin| match kernel.virtio_fs() {
        Some(true) => Ok(bin),
        Some(false) => Err(format!(
            "the guest kernel {} is built without CONFIG_VIRTIO_FS (`amphi kernel build` makes one with it)",
            kernel.id()
        )),
        None => Err(format!(
            "the guest kernel {}'s config is unknown, so amphi cannot tell whether it has CONFIG_VIRTIO_FS",
            kernel.id()
        )),
    })
}

/// Starts the run's virtiofsd daemons, owned by the cleanup, each behind
/// a vhost-user relay for QEMU (see [`virtiofs::Daemon::relay`]); returns
/// each one's tag and the backend's descriptor.
fn start_daemons(
    bin: Option<&Path>,
    shares: Vec<virtiofs::Share>,
    backend: &backend::Backend,
    run_dir: &Path,
    cleanup: &mut Cleanup,
) -> Result<Vec<(&'static str, i32)>, RunError> {
    let Some(bin) = bin.filter(|_| !shares.is_empty()) else {
        return Ok(Vec::new());
    };
    let relay = match backend {
        backend::Backend::Qemu { .. } => Some(backend::vmm_binary().map_err(|e| {
            RunError::Failed(format!(
                "virtio-fs under QEMU goes through amphi's vhost-user relay: {e}"
            ))
        })?),
        backend::Backend::Builtin => None,
    };
    let mut out = Vec::new();
    for share in shares {
        let mut d = virtiofs::spawn(bin, share, run_dir)?;
        let relayed = relay.as_deref().map(|vmm| d.relay(vmm, run_dir));
        out.push((d.tag, d.frontend_fd()));
        cleanup.daemons.push(d);
        relayed.transpose()?;
    }
    Ok(out)
}

/// passt for a private network (its published ports checked free first),
/// owned by the cleanup.
fn start_passt(
    (network, publish): (crate::net::Network, &[crate::net::Publish]),
    cleanup: &mut Cleanup,
) -> Result<(), RunError> {
    if network != crate::net::Network::Private {
        return Ok(());
    }
    crate::net::check_free(publish).map_err(RunError::Usage)?;
    let passt = crate::net::Passt::start(publish)
        .map_err(|e| RunError::Failed(format!("the microVM's network: {e}")))?;
    cleanup.passt = Some(passt);
    Ok(())
}

/// The plan's additions to the guest kernel's command line (what the
/// image's inferred needs ask of it), then the operator's debugging extras
/// ($AMPHI_VM_CMDLINE_EXTRA).
fn extra_cmdline(plan: &[String]) -> String {
    let mut extra = plan.join(" ");
    if let Ok(more) = std::env::var("AMPHI_VM_CMDLINE_EXTRA") {
        extra.push(' ');
        extra.push_str(&more);
    }
    extra.trim().to_string()
}

/// The console tells why a VM died; a timeout or the workload's own error
/// needs no kernel log.
fn explained(e: RunError, logs: &launch::Logs) -> RunError {
    match e {
        RunError::Vm(m) => RunError::Vm(with_logs(m, logs)),
        e => e,
    }
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
    let kernel_path = boot_file(&kernel, &backend)?;
    let virtiofsd = virtiofs_support(&kernel, &req, &opts)?;

    let prepared = guest_rootfs(
        &store,
        &rec,
        &req.image,
        &mut timing,
        &opts,
        virtiofsd.is_some(),
    )?;

    let id = opts.id.clone().unwrap_or_else(crate::run::new_id);
    let (mut cleanup, run_dir, sock_path, listener) = open_run_dir(&req.state_root, &id[..16])?;
    let start = launch::start_request(&req, &image, &id, &run_dir)?;
    let (memory, cpus) = (req.flags.memory, req.flags.cpus);
    let result = boot(
        Boot {
            backend: &backend,
            kernel_path: &kernel_path,
            kernel_release: kernel.release(),
            initrd: &prepared.initrd,
            disk: prepared.disk.as_deref(),
            root: prepared.kind.cmdline(),
            kind: prepared.kind,
            extra_cmdline: extra_cmdline(&plan_cmdline),
            virtiofsd: virtiofsd.as_deref(),
            shares: image_shares(&req, &prepared),
            network: (req.flags.network, &req.flags.publish),
            size: launch::machine_size(memory, cpus, &prepared.initrd),
            timeout: opts.timeout,
            start: &start,
            interactive: req.interactive || req.flags.tty,
            tty: req.flags.tty,
            exec: opts.exec,
            started: opts.started.clone(),
            hold: None,
            notice,
            notify: opts.notify,
        },
        &mut cleanup,
        (&run_dir, &sock_path, &listener),
        &mut timing,
    );
    let t = Instant::now();
    drop(cleanup);
    timing.teardown += t.elapsed();
    let net = crate::run::report::network_of(&req.flags);
    timing.report(&result, &backend, &prepared, net, opts.notify);
    if let Some(oom) = &opts.oom_killed {
        oom.store(timing.oom_killed, std::sync::atomic::Ordering::SeqCst);
    }
    result
}

/// A microVM to boot, whatever its root filesystem comes from.
struct Boot<'a> {
    backend: &'a Backend,
    kernel_path: &'a Path,
    kernel_release: &'a str,
    initrd: &'a Path,
    disk: Option<&'a Path>,
    /// `amphi.root=` for the guest init.
    root: &'a str,
    kind: guestfs::RootfsKind,
    extra_cmdline: String,
    virtiofsd: Option<&'a Path>,
    shares: Vec<virtiofs::Share>,
    network: (crate::net::Network, &'a [crate::net::Publish]),
    /// RAM (MiB) and vCPUs.
    size: (u64, u32),
    timeout: Option<Duration>,
    start: &'a crate::proto::channel::StartRequestJson,
    interactive: bool,
    tty: bool,
    exec: bool,
    started: Option<std::sync::mpsc::Sender<u32>>,
    hold: Option<session::Hold>,
    notice: Option<String>,
    notify: fn(&str),
}

/// Starts the daemons, passt and the backend of `b`, runs the session
/// with the guest and tears the VM down (the cleanup removes the rest);
/// the workload's exit status.
fn boot(
    b: Boot<'_>,
    cleanup: &mut Cleanup,
    (run_dir, sock_path, listener): (&Path, &Path, &UnixListener),
    timing: &mut Timing,
) -> Result<i32, RunError> {
    // Blocked before any thread starts (the daemons' log readers are the
    // first): threads inherit the mask, so the forwarded signals reach the
    // signalfd, never a thread's default action.
    let sigs = crate::sys::signal::block_forwarded();
    let shares = match start_daemons(b.virtiofsd, b.shares, b.backend, run_dir, cleanup)
        .and_then(|s| start_passt(b.network, cleanup).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            crate::sys::signal::unblock(&sigs);
            return Err(e);
        }
    };
    let net = cleanup.passt.as_ref().map(|p| p.backend_fd());
    let (mem_mib, vcpus) = b.size;
    let vm = VmSpec {
        kernel: b.kernel_path,
        initrd: b.initrd,
        disk: b.disk,
        cmdline: backend::cmdline(b.backend, b.root, &b.extra_cmdline),
        mem_mib,
        vcpus,
        channel: sock_path,
        shares: &shares,
        net,
        run_dir,
    };
    tracing::info!(
        kernel = %b.kernel_path.display(), release = %b.kernel_release, backend = b.backend.describe(),
        rootfs = %b.kind, mem_mib, vcpus, cmdline = %vm.cmdline, "starting microVM"
    );
    if let Some(n) = &b.notice {
        (b.notify)(n);
    }
    let t = Instant::now();
    let (logs, _watchdog, deadline) =
        match start_backend(b.backend, &vm, cleanup, b.timeout, run_dir) {
            Ok(started) => started,
            Err(e) => {
                crate::sys::signal::unblock(&sigs);
                return Err(e);
            }
        };
    // The backend holds the vhost-user connections and passt's pair now.
    for d in &mut cleanup.daemons {
        d.frontend = None;
    }
    if let Some(p) = cleanup.passt.as_mut() {
        p.backend_end = None;
    }
    let fired = _watchdog.as_ref().map(|w| w.fired.clone());
    let exec = match b.exec {
        true => Some(exec_listener(run_dir)?),
        false => None,
    };
    timing.vm_start = t.elapsed();
    timing.setup = timing.start.map(|s| s.elapsed()).unwrap_or_default();
    let result = Session {
        cleanup,
        start: b.start,
        interactive: b.interactive,
        tty: b.tty,
        deadline,
        fired: fired.as_deref(),
        sigs: &sigs,
        timing,
        kernel_release: b.kernel_release,
        kind: b.kind,
        // amphi's VMM answers a dead virtiofsd's requests with EIO itself;
        // under QEMU its relay does, when it could take the rings over
        // (see Session::check_shares).
        shares_fail_requests: matches!(b.backend, backend::Backend::Builtin),
        started: b.started,
        exec,
        notify: b.notify,
        hold: b.hold,
    }
    .run(listener);
    drop(_watchdog);
    crate::sys::signal::unblock(&sigs);
    let t = Instant::now();
    cleanup.stop_backend(Duration::ZERO);
    let result = result.map_err(|e| match jail::violation(run_dir, cleanup.ended, &logs) {
        Some(message) => RunError::Vm(message),
        None => explained(e, &logs),
    });
    timing.teardown += t.elapsed();
    result
}

/// An OCI bundle's container in a microVM, as `create`'s monitor runs
/// it (see [`bundle`]).
pub struct BundleRun {
    /// The OCI container id.
    pub id: String,
    /// The OCI runtime's root: the VM's run directory is
    /// `<root>/vm/<bundle::run_name(id)>`.
    pub state_root: PathBuf,
    /// amphi's store (the guest init's cached initrd).
    pub store_root: PathBuf,
    pub guest: bundle::GuestBundle,
    pub plan: VmPlan,
    /// The start, held until the OCI `start`.
    pub hold: Hold,
    pub notify: fn(&str),
}

/// Where a bundle microVM's monitor takes `exec` clients.
pub fn bundle_exec_socket(state_root: &Path, id: &str) -> PathBuf {
    state_root
        .join("vm")
        .join(bundle::run_name(id))
        .join("exec.sock")
}

/// Boots the bundle's microVM, holds its start until `b.hold` says go,
/// and relays until the workload exits; its exit status.
pub fn run_bundle(b: BundleRun) -> Result<i32, RunError> {
    let mut timing = Timing {
        start: Some(Instant::now()),
        ..Default::default()
    };
    let VmPlan {
        kernel,
        backend,
        notice,
        cmdline: plan_cmdline,
    } = b.plan;
    let kernel_path = boot_file(&kernel, &backend)?;
    let virtiofsd = virtiofs_for(&kernel).map_err(|why| {
        RunError::Failed(format!(
            "a microVM container shares its bundle's rootfs with virtio-fs, but {why}"
        ))
    })?;
    let (initrd, warnings) = guestfs::init_initrd(&b.store_root)
        .map_err(|e| RunError::step("the guest init's initrd", e))?;
    for w in warnings {
        (b.notify)(&format!("amphi: warning: {w}"));
    }
    let name = bundle::run_name(&b.id);
    let (mut cleanup, run_dir, sock_path, listener) = open_run_dir(&b.state_root, &name)?;
    let start = b.guest.start_request(&b.id).map_err(RunError::Failed)?;
    let result = boot(
        Boot {
            backend: &backend,
            kernel_path: &kernel_path,
            kernel_release: kernel.release(),
            initrd: &initrd,
            disk: None,
            root: "amphi.root=none",
            kind: guestfs::RootfsKind::Virtiofs,
            extra_cmdline: extra_cmdline(&plan_cmdline),
            virtiofsd: Some(&virtiofsd),
            shares: vec![virtiofs::Share::Volumes(b.guest.shares)],
            network: (b.guest.network, &[]),
            size: launch::machine_size(b.guest.memory, b.guest.cpus, &initrd),
            timeout: None,
            start: &start,
            interactive: true,
            tty: b.guest.terminal,
            exec: true,
            started: None,
            hold: Some(b.hold),
            notice,
            notify: b.notify,
        },
        &mut cleanup,
        (&run_dir, &sock_path, &listener),
        &mut timing,
    );
    drop(cleanup);
    result
}

/// The exec socket's listener, non-blocking (the run directory's removal
/// takes the file).
fn exec_listener(run_dir: &Path) -> Result<UnixListener, RunError> {
    let p = run_dir.join("exec.sock");
    let l = UnixListener::bind(&p).map_err(|e| RunError::io(p.display(), e))?;
    l.set_nonblocking(true)
        .map_err(|e| RunError::io(p.display(), e))?;
    Ok(l)
}

/// The run's directory (removed with the cleanup), and the guest channel's
/// socket listening in it.
fn open_run_dir(
    state_root: &Path,
    name: &str,
) -> Result<(Cleanup, PathBuf, PathBuf, UnixListener), RunError> {
    let run = RunDir::create(state_root, name).map_err(RunError::cause)?;
    let run_dir = run.path().to_path_buf();
    let cleanup = Cleanup::new(run);
    let sock_path = run_dir.join("chan.sock");
    if sock_path.as_os_str().len() > 100 {
        return Err(RunError::Usage(format!(
            "the state root {} is too deep for a unix socket path; use a shorter --root",
            state_root.display()
        )));
    }
    let listener =
        UnixListener::bind(&sock_path).map_err(|e| RunError::io(sock_path.display(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| RunError::io(sock_path.display(), e))?;
    Ok((cleanup, run_dir, sock_path, listener))
}

/// The `--timeout` deadline: when, and the limit it came from.
type Deadline = Option<(Instant, Duration)>;

/// Starts the backend (the caller has blocked the forwarded signals): its
/// logs captured, its pid recorded in the run directory and owned by the
/// cleanup, and `--timeout`'s watchdog armed from this moment.
fn start_backend(
    backend: &Backend,
    vm: &VmSpec<'_>,
    cleanup: &mut Cleanup,
    timeout: Option<Duration>,
    run_dir: &Path,
) -> Result<(launch::Logs, Option<Watchdog>, Deadline), RunError> {
    let launch = Instant::now();
    let (child, logs) = launch::spawn(backend, vm)?;
    let pidfd = launch::pidfd_open(child.id());
    if let Some(r) = cleanup.run.as_mut() {
        r.record_backend(child.id() as i32);
    }
    cleanup.child = Some(child);
    let deadline = timeout.map(|t| (launch + t, t));
    let watchdog =
        deadline.map(|(d, limit)| Watchdog::start(d, limit, pidfd, run_dir.to_path_buf()));
    Ok((logs, watchdog, deadline))
}
