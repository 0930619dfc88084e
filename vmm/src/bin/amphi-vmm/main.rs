//! `amphi-vmm`: boot a kernel in amphi's own VMM. A small static
//! executable of its own (ARCHITECTURE.md, "The VMM executable"): `amphi
//! run --vm-backend builtin` starts it, and `amphi vmm` (a tool for the
//! nested lab, tests and developers) execs it. Its messages start with
//! `amphi vmm:` as they did when it was part of amphi. The guest's COM1 goes to stdout with
//! `--serial stdout`; how the VM ended is one line on stderr, e.g.
//! `amphi vmm: guest reset`. Exit status: 0 when the guest reset or shut
//! down, 1 when it died (triple fault, emulation failure, KVM error),
//! [`EXIT_DEVICE_FAILED`] (3) when a device's host backend failed (a
//! `--fs` virtiofsd that refused its setup: `amphi vmm: device failed:
//! virtio-fs(tag T, vhost-user socket S): ...`; one that went away does
//! not end the VM: the VMM answers the guest's file system requests with
//! EIO from then on and says so on stderr), 124 after `--timeout`, 128+N
//! after signal N (SIGTERM, SIGINT), and [`EXIT_AMPHI`] when the VM
//! could not be started.
//!
//! Jailed by default (see [`crate::vm::jail`] and `amphi_vmm::jail`): the
//! process started is a supervisor; the VMM is its child in a new pid
//! namespace, in its own cgroup, which opens everything, creates the VM,
//! then enters new mount, ipc, uts and net namespaces, pivots into an
//! empty read-only root, drops to an unprivileged uid and gid with no
//! capabilities (no_new_privs, not dumpable), and puts each thread under
//! its own seccomp filter before the guest runs. A filter violation ends
//! the VMM with status 159 and a line naming the thread and the system
//! call. `--no-jail` (debugging only) runs the VMM as root, unconfined,
//! and says so on stderr.
//!
//! `--net fd=N` (or `--net PATH`) adds a virtio-net device whose frames
//! go over passt's socket protocol (QEMU's "stream" netdev): a connected
//! unix stream socket inherited as descriptor N, which `amphi vmm` takes
//! before it opens anything else, or a socket path it connects to. Either
//! is connected before the jail; under it, the event loop may `send` to
//! it without blocking and `read` from it. A peer that goes away is
//! logged once and the guest's network goes quiet; the VM runs on.
//!
//! With `AMPHI_VMM_TIMING` set, one more line on stderr says how long
//! startup took: `amphi vmm: timing: ...` in milliseconds, from the
//! moment in `AMPHI_VMM_TIMING` when it holds one (Unix seconds with a
//! fraction, e.g. bash's `$EPOCHREALTIME` on the command line that starts
//! amphi: exec and process setup included), else from entering `amphi vmm`,
//! to the VM created, the kernel loaded, the jail entered, the guest started (the first
//! `KVM_RUN`), the first VM exit (for a guest whose
//! first instruction is a port write: the first guest instruction), and the
//! end of the run.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amphi_vmm::devices::virtio::fs::check_tag;
use amphi_vmm::devices::virtio::net::{self as vnet, NetBackend, NetConfig};
use amphi_vmm::jail::host::{self as vmjail, Side, VmmSide};
use amphi_vmm::jail::{FilterParams, SeccompFilters, ThreadFilters};
use amphi_vmm::{
    BlockConfig, ConsoleBackend, ExitReason, FsConfig, HostWatch, SerialOut, Vm, VmConfig,
    VmmError, EXIT_DEVICE_FAILED,
};

mod args;
mod log;
mod relay;
mod trim;
use args::{Parsed, VmmArgs};

/// Exit status when the VM could not be started (as amphi's own).
const EXIT_AMPHI: i32 = 125;
/// Exit status for a bad command line.
const EXIT_USAGE: i32 = 2;

/// Exit status when `--timeout` stopped the guest (as timeout(1)).
const EXIT_TIMEOUT: i32 = 124;
/// How long the virtio devices get after the run to finish their output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where `--net` frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetArg {
    /// An inherited connected socket: `fd=N`.
    Fd(i32),
    /// A unix socket to connect to.
    Path(PathBuf),
}

/// The jail of this VMM, as its supervisor set it up.
struct Jail {
    /// The cgroup's join files, for a VMM not born in it.
    join: Vec<PathBuf>,
    dir: PathBuf,
    uid: u32,
    gid: u32,
    supervisor: VmmSide,
}

/// Parses `--disk PATH[,ro]`.
fn parse_disk(s: &str) -> Result<BlockConfig, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((_, opt)) => return Err(format!("unknown disk option {opt:?} (only \"ro\")")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(BlockConfig::new(path, read_only))
}

/// A `--fs` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsArg {
    /// Where the backend is.
    pub socket: FsSocket,
    /// The tag (checked).
    pub tag: String,
}

/// The vhost-user socket of a `--fs` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsSocket {
    /// A listening socket's path.
    Path(PathBuf),
    /// An inherited descriptor, connected.
    Fd(RawFd),
}

/// `SOCKET,TAG` or `fd=N,tag=TAG`.
fn parse_fs(s: &str) -> Result<FsArg, String> {
    if let Some(rest) = s.strip_prefix("fd=") {
        let bad = || format!("{s:?}: expected fd=N,tag=TAG (N: an inherited descriptor above 2)");
        let (n, tag) = rest.split_once(',').ok_or_else(bad)?;
        let tag = tag.strip_prefix("tag=").ok_or_else(bad)?;
        let fd = n.parse::<RawFd>().ok().filter(|&n| n > 2).ok_or_else(bad)?;
        check_tag(tag)?;
        return Ok(FsArg {
            socket: FsSocket::Fd(fd),
            tag: tag.to_string(),
        });
    }
    let Some((socket, tag)) = s.rsplit_once(',') else {
        return Err(format!("{s:?}: expected SOCKET,TAG or fd=N,tag=TAG"));
    };
    if socket.is_empty() {
        return Err(format!("{s:?}: empty vhost-user socket path"));
    }
    check_tag(tag)?;
    Ok(FsArg {
        socket: FsSocket::Path(socket.into()),
        tag: tag.to_string(),
    })
}

/// The `--fs` devices, inherited descriptors taken over (each once: one
/// named twice is refused).
fn fs_devices(args: &[FsArg]) -> Result<Vec<FsConfig>, String> {
    let mut taken = Vec::new();
    args.iter()
        .map(|a| match &a.socket {
            FsSocket::Path(path) => FsConfig::new(path, &a.tag),
            FsSocket::Fd(n) => {
                if taken.contains(n) {
                    return Err(format!("--fs fd={n}: the descriptor is named twice"));
                }
                taken.push(*n);
                // SAFETY: fcntl F_GETFD on a number only asks whether it is open.
                if unsafe { libc::fcntl(*n, libc::F_GETFD) } == -1 {
                    return Err(format!(
                        "--fs fd={n}: not an open descriptor ({})",
                        std::io::Error::last_os_error()
                    ));
                }
                // SAFETY: the descriptor is open, was handed down for this
                // device (nothing of amphi vmm's own is open yet: this runs
                // first), and is taken over once (duplicates refused above).
                let fd = unsafe { OwnedFd::from_raw_fd(*n) };
                FsConfig::connected(fd, &a.tag).map_err(|e| format!("--fs fd={n}: {e}"))
            }
        })
        .collect()
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?}: the timeout must be a positive number of seconds"))
}

/// Parses `--net fd=N` or `--net PATH`.
fn parse_net(s: &str) -> Result<NetArg, String> {
    if let Some(n) = s.strip_prefix("fd=") {
        let fd: i32 = n
            .parse()
            .map_err(|_| format!("fd={n}: not a descriptor number"))?;
        if fd < 3 {
            return Err(format!(
                "fd={fd}: descriptors 0 to 2 are stdin, stdout and stderr; pass the socket as 3 or above"
            ));
        }
        return Ok(NetArg::Fd(fd));
    }
    if s.is_empty() {
        return Err("empty socket path".into());
    }
    Ok(NetArg::Path(s.into()))
}

/// The `--net` device: an inherited descriptor is taken over (close on
/// exec from now on) and checked to be a connected unix stream socket; a
/// path is connected to later, when the VM is created.
fn net_config(args: &VmmArgs) -> Result<Option<NetConfig>, String> {
    let Some(net) = &args.net else {
        return Ok(None);
    };
    let backend = match net {
        NetArg::Path(path) => NetBackend::Socket(path.clone()),
        NetArg::Fd(fd) => {
            if args.fs.iter().any(|f| f.socket == FsSocket::Fd(*fd)) {
                return Err(format!("--net fd={fd}: the descriptor is --fs's too"));
            }
            NetBackend::Fd(std::sync::Arc::new(take_inherited_socket(*fd)?))
        }
    };
    Ok(Some(NetConfig {
        backend,
        mac: args.net_mac.unwrap_or(vnet::DEFAULT_MAC),
    }))
}

/// Takes descriptor `fd`, which this process inherited, as its own.
fn take_inherited_socket(fd: i32) -> Result<OwnedFd, String> {
    // SAFETY: fcntl on a descriptor number only reads its flags (EBADF
    // when it is not open).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "--net fd={fd}: descriptor {fd} is not open (the caller must pass a connected \
             unix stream socket as descriptor {fd})"
        ));
    }
    vnet::check_stream_socket(fd).map_err(|e| {
        format!("--net fd={fd}: {e}; it must be a connected unix stream socket (passt --fd)")
    })?;
    // SAFETY: setting close-on-exec on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: `fd` is open and was inherited: `run` takes it before this
    // process opens any file of its own, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Why the host stopped the VM.
#[derive(Clone, Copy, Debug)]
enum StopCause {
    Timeout(Duration),
    Signal(libc::c_int),
}

/// Startup milestones for `AMPHI_VMM_TIMING`.
#[derive(Default)]
struct Timing {
    /// The jailed VMM: forked into its pid namespace, in its cgroup.
    forked: Option<Instant>,
    cgroup: Option<Instant>,
    created: Option<Instant>,
    loaded: Option<Instant>,
    jailed: Option<Instant>,
    /// The first `KVM_RUN`: the VMM's part of the startup ends here.
    guest_started: Option<Instant>,
    first_exit: Option<Instant>,
    ended: Option<Instant>,
}

fn main() {
    log::init();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "vhost-user-relay")
    {
        let args: Result<Vec<String>, _> = std::env::args_os()
            .skip(2)
            .map(std::ffi::OsString::into_string)
            .collect();
        let code = match args
            .map_err(|a| format!("{a:?}: not UTF-8"))
            .and_then(relay::parse)
        {
            Ok(Some(a)) => relay::run(&a),
            Ok(None) => {
                print!("{}", relay::USAGE);
                0
            }
            Err(e) => relay::usage_error(&e),
        };
        std::process::exit(code);
    }
    let code = match args::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            0
        }
        Ok(Parsed::Run(a)) => run(&a),
        Err(e) => {
            eprintln!("amphi vmm: error: {e}");
            EXIT_USAGE
        }
    };
    std::process::exit(code);
}

/// Runs the VMM; returns the process exit status.
fn run(args: &VmmArgs) -> i32 {
    let entered = Instant::now();
    let entered_wall = SystemTime::now();
    let timing_env = std::env::var("AMPHI_VMM_TIMING").ok();
    let mut timing = Timing::default();
    // First: an inherited descriptor is taken before this process opens
    // anything that could be given its number.
    let net = match net_config(args) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("amphi vmm: error: {e}");
            return EXIT_AMPHI;
        }
    };
    if let Err(e) = preflight(args) {
        eprintln!("amphi vmm: error: {e}");
        return EXIT_AMPHI;
    }
    let jail = if args.no_jail {
        eprintln!(
            "amphi vmm: warning: UNJAILED (--no-jail): the VMM runs as root with every capability, \
             sees the host's filesystem, and has no seccomp filter and no cgroup; for debugging only"
        );
        None
    } else {
        match supervise(args) {
            Ok(Side::Supervisor(code)) => return code,
            Ok(Side::Vmm(j)) => Some(j),
            Err(e) => {
                eprintln!("amphi vmm: error: {e}");
                return EXIT_AMPHI;
            }
        }
    };
    let code = match boot(args, net, &mut timing, jail.as_ref()) {
        Ok((reason, cause)) => report(&reason, cause),
        Err(e) => {
            eprintln!("amphi vmm: error: {e}");
            EXIT_AMPHI
        }
    };
    if let Some(env) = timing_env {
        eprintln!(
            "amphi vmm: timing: {}",
            timing_line(&env, entered, entered_wall, &timing)
        );
    }
    code
}

/// `launch to entered X ms, to VM created Y ms, ...` (or `entered to ...`
/// without a launch time in `env`).
fn timing_line(env: &str, entered: Instant, entered_wall: SystemTime, t: &Timing) -> String {
    let launch_ms = env.trim().parse::<f64>().ok().and_then(|launch| {
        let now = entered_wall.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some((now - launch) * 1e3).filter(|ms| (0.0..60_000.0).contains(ms))
    });
    let ms = |at: Option<Instant>| match at {
        Some(at) => format!(
            "{:.3} ms",
            launch_ms.unwrap_or(0.0) + at.duration_since(entered).as_secs_f64() * 1e3
        ),
        None => "-".into(),
    };
    let milestones = format!(
        "to forked {}, to cgroup {}, to VM created {}, to kernel loaded {}, to jailed {}, to guest started {}, to first guest exit {}, to end {}",
        ms(t.forked),
        ms(t.cgroup),
        ms(t.created),
        ms(t.loaded),
        ms(t.jailed),
        ms(t.guest_started),
        ms(t.first_exit),
        ms(t.ended)
    );
    match launch_ms {
        Some(l) => format!("launch to amphi vmm {l:.3} ms, {milestones}"),
        None => format!("from amphi vmm (no launch time given): {milestones}"),
    }
}

/// The checks made before anything else: the kernel and initrd are files
/// the loader may take.
fn preflight(args: &VmmArgs) -> Result<(), String> {
    check_kernel(&args.kernel)?;
    if let Some(initrd) = &args.initrd {
        check_file("initrd", initrd)?;
    }
    Ok(())
}

/// Sets up the jail's directory and forks the VMM into its pid namespace
/// under this process's supervision ([`vmjail::fork_supervised`]).
fn supervise(args: &VmmArgs) -> Result<Side<Jail>, String> {
    let id = args
        .jail_id
        .clone()
        .unwrap_or_else(|| format!("vmm-{}", std::process::id()));
    vmjail::check_id(&id)?;
    let dir = vmjail::jail_dir(args.jail_dir.as_deref(), &id);
    let uid = args
        .jail_uid
        .unwrap_or_else(|| vmjail::default_uid(std::process::id()));
    let gid = args.jail_gid.unwrap_or(uid);
    let made = vmjail::make_jail_dir(&dir)?;
    // The cgroup before the fork, so that the VMM is born in it where the
    // host allows (cgroup2) and all of its memory is charged there.
    let cgroup = vmjail::prepare_cgroup(
        &id,
        vmjail::memory_limit(u64::from(args.mem)),
        vmjail::pids_limit(u64::from(args.vcpus)),
    )
    .map_err(|e| {
        remove_jail(&id, &dir, made);
        format!("jail: {e}")
    })?;
    let cleanup_id = id.clone();
    let cleanup_dir = dir.clone();
    let side = vmjail::fork_supervised(cgroup.dir, trim::drop_resident, move || {
        remove_jail(&cleanup_id, &cleanup_dir, made);
    })
    .inspect_err(|_| remove_jail(&id, &dir, made))?;
    Ok(match side {
        Side::Supervisor(code) => Side::Supervisor(code),
        Side::Vmm(supervisor) => Side::Vmm(Jail {
            join: cgroup.join,
            dir,
            uid,
            gid,
            supervisor,
        }),
    })
}

/// Removes the VMM's cgroup and, if `made` here, its jail directory,
/// saying on stderr what could not be removed.
fn remove_jail(id: &str, dir: &Path, made: bool) {
    if let Err(e) = vmjail::remove_cgroup(id) {
        eprintln!("amphi vmm: warning: {e}");
    }
    if made {
        if let Err(e) = std::fs::remove_dir(dir) {
            eprintln!(
                "amphi vmm: warning: removing the jail directory {}: {e}",
                dir.display()
            );
        }
    }
}

/// Enters the jail (the VM is created and its files are open) and
/// prepares the per-thread seccomp filters, which `Vm::run` installs.
fn lock_down(jail: &Jail, vm: &mut Vm) -> Result<(), String> {
    amphi_vmm::jail::lockdown::enter(&amphi_vmm::jail::Lockdown {
        root: &jail.dir,
        uid: jail.uid,
        gid: jail.gid,
        parent_death_signal: Some(libc::SIGKILL),
    })
    .map_err(|e| e.to_string())?;
    if !jail.supervisor.supervisor_alive() {
        return Err("the supervisor (amphi vmm's first process) is gone".into());
    }
    amphi_vmm::jail::install_sigsys_reporter().map_err(|e| e.to_string())?;
    let filters =
        Arc::new(SeccompFilters::new(FilterParams::for_vm(vm)).map_err(|e| e.to_string())?);
    vm.set_seccomp(ThreadFilters {
        filters,
        main_thread: true,
    });
    Ok(())
}

fn boot(
    args: &VmmArgs,
    net: Option<NetConfig>,
    timing: &mut Timing,
    jail: Option<&Jail>,
) -> Result<(ExitReason, Option<StopCause>), String> {
    // Inherited vhost-user descriptors first, before anything else is open.
    let fs = fs_devices(&args.fs)?;
    if let Some(j) = jail {
        timing.forked = Some(Instant::now());
        // Before guest memory exists, so that all of it is charged there
        // (a VMM born in its cgroup is there already).
        if !j.supervisor.in_cgroup {
            vmjail::join_cgroup(&j.join).map_err(|e| format!("jail: {e}"))?;
        }
        timing.cgroup = Some(Instant::now());
    }
    let config = VmConfig {
        mem_mib: args.mem,
        vcpus: args.vcpus,
        kernel: Some(args.kernel.clone()),
        boot: args.boot,
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        serial: if args.serial_stdout {
            SerialOut::Stdout
        } else {
            SerialOut::None
        },
        force: args.force,
        net,
        block_devices: args.disk.clone(),
        console: args.console.clone().map(ConsoleBackend::Socket),
        fs_devices: fs,
    };
    // Block SIGTERM and SIGINT before any thread exists, so every thread
    // (the vCPUs included) inherits the mask and only the host watch (on
    // this thread) takes them.
    let signals = block_stop_signals()?;
    let mut vm = Vm::new(&config).map_err(|e| e.to_string())?;
    timing.created = Some(Instant::now());
    vm.load_kernel().map_err(|e| match e {
        VmmError::KernelNotPvm { .. } => {
            format!("{e} (with amphi vmm: pass --force)")
        }
        e => e.to_string(),
    })?;
    timing.loaded = Some(Instant::now());
    if let Some(j) = jail {
        lock_down(j, &mut vm)?;
    }
    timing.jailed = Some(Instant::now());
    let cause = Arc::new(OnceLock::new());
    let selftest = args.seccomp_selftest && jail.is_some();
    vm.set_host_watch(host_watch(signals, args.timeout, cause.clone(), selftest));
    let reason = vm.run().map_err(|e| e.to_string())?;
    timing.ended = Some(Instant::now());
    timing.guest_started = vm.first_run_at();
    timing.first_exit = vm.first_exit_at();
    // What the guest handed its devices last (console output) gets out.
    if !vm.drain_devices(DRAIN_TIMEOUT) {
        eprintln!(
            "amphi vmm: warning: device output still pending after {DRAIN_TIMEOUT:?} was dropped"
        );
    }
    Ok((reason, cause.get().copied()))
}

/// Prints how the VM ended and returns the exit status.
fn report(reason: &ExitReason, cause: Option<StopCause>) -> i32 {
    let (text, code) = match reason {
        ExitReason::Reset => ("guest reset".to_string(), 0),
        ExitReason::Shutdown => ("guest shut down".to_string(), 0),
        ExitReason::HostStop => match cause {
            Some(StopCause::Timeout(after)) => (
                format!("stopped by host (timeout after {after:?})"),
                EXIT_TIMEOUT,
            ),
            Some(StopCause::Signal(sig)) => {
                (format!("stopped by host ({})", signal_name(sig)), 128 + sig)
            }
            None => ("stopped by host".to_string(), 1),
        },
        ExitReason::TripleFault { vcpu, registers } => {
            (format!("triple fault on vCPU {vcpu}\n{registers}"), 1)
        }
        ExitReason::DeviceFailed { .. } => (reason.to_string(), EXIT_DEVICE_FAILED),
        other => (other.to_string(), 1),
    };
    eprintln!("amphi vmm: {text}");
    code
}

fn signal_name(sig: libc::c_int) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        n => format!("signal {n}"),
    }
}

/// Checks that `path` is a readable regular file.
fn check_file(what: &str, path: &Path) -> Result<File, String> {
    let file = File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {}: not a regular file", path.display()));
    }
    Ok(file)
}

/// Checks that the kernel looks like something the loader takes: an ELF
/// file or a bzImage (boot header magic "HdrS" at 0x202).
fn check_kernel(path: &Path) -> Result<(), String> {
    let mut file = check_file("kernel", path)?;
    let mut head = [0u8; 0x206];
    let n =
        read_up_to(&mut file, &mut head).map_err(|e| format!("kernel {}: {e}", path.display()))?;
    if head[..n].starts_with(b"\x7fELF") || (n == head.len() && &head[0x202..] == b"HdrS") {
        return Ok(());
    }
    Err(format!(
        "kernel {}: not a kernel image: neither an ELF vmlinux nor a bzImage \
         (no ELF magic, no \"HdrS\" boot header at 0x202)",
        path.display()
    ))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and so in threads it starts).
fn block_stop_signals() -> Result<libc::sigset_t, String> {
    let set = stop_signal_set();
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "blocking SIGTERM/SIGINT: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(set)
}

/// What the thread in `Vm::run` checks every 50 ms: a pending SIGTERM or
/// SIGINT (blocked in every thread, so only taken here) or the timeout;
/// either is recorded in `cause` and stops the VM. No thread of its own:
/// the thread that waits for the vCPUs does it, under the control filter.
/// With `selftest`, its first call makes a forbidden system call.
fn host_watch(
    set: libc::sigset_t,
    timeout: Option<Duration>,
    cause: Arc<OnceLock<StopCause>>,
    mut selftest: bool,
) -> HostWatch {
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    Box::new(move || {
        if std::mem::take(&mut selftest) {
            // SAFETY: integer arguments; the filter stops it.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        match pending_stop(&set, deadline) {
            Some(found) => {
                let _ = cause.set(found);
                true
            }
            None => false,
        }
    })
}

/// A stop signal that is pending (taken), or the deadline if it passed.
fn pending_stop(set: &libc::sigset_t, deadline: Option<(Instant, Duration)>) -> Option<StopCause> {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid set and timespec; no siginfo wanted. A zero timeout
    // only polls.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &now) };
    if sig > 0 {
        return Some(StopCause::Signal(sig));
    }
    match deadline {
        Some((at, total)) if Instant::now() >= at => Some(StopCause::Timeout(total)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments() {
        assert_eq!(
            parse_disk("/d.img,ro").unwrap(),
            BlockConfig::new("/d.img", true)
        );
        assert_eq!(
            parse_disk("/a,b.img").unwrap_err(),
            "unknown disk option \"b.img\" (only \"ro\")"
        );
        assert!(!parse_disk("/d.img").unwrap().read_only);
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn fs_arguments() {
        let fs = parse_fs("/run/a,b/vfs.sock,amphi").unwrap();
        assert_eq!(fs.socket, FsSocket::Path("/run/a,b/vfs.sock".into()));
        assert_eq!(fs.tag, "amphi");
        let fs = parse_fs("fd=7,tag=amphi-root").unwrap();
        assert_eq!(
            (fs.socket, fs.tag.as_str()),
            (FsSocket::Fd(7), "amphi-root")
        );
        for bad in ["fd=2,tag=a", "fd=x,tag=a", "fd=7", "fd=7,a", "fd=-1,tag=a"] {
            assert!(parse_fs(bad).unwrap_err().contains("fd=N,tag=TAG"), "{bad}");
        }
        assert!(parse_fs("fd=7,tag=a,b")
            .unwrap_err()
            .contains("virtio-fs tag"));
        assert!(parse_fs("/run/vfs.sock")
            .unwrap_err()
            .contains("SOCKET,TAG"));
        assert!(parse_fs(",amphi").unwrap_err().contains("empty"));
        assert!(parse_fs("/s,").unwrap_err().contains("virtio-fs tag"));
        assert!(parse_fs(&format!("/s,{}", "t".repeat(37)))
            .unwrap_err()
            .contains("1 to 36"));
    }

    #[test]
    fn inherited_descriptors_are_checked_and_taken_once() {
        use amphi_vmm::FsBackend;
        use std::os::fd::IntoRawFd;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let n = ours.into_raw_fd();
        let arg = |fd: RawFd| FsArg {
            socket: FsSocket::Fd(fd),
            tag: "amphi".into(),
        };
        let e = fs_devices(&[arg(n), arg(n)]).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        // (The first was taken, and closed with the error.)
        let e = fs_devices(&[arg(999_999)]).unwrap_err();
        assert!(e.contains("not an open descriptor"), "{e}");
        let (ours, _theirs2) = std::os::unix::net::UnixStream::pair().unwrap();
        let m = ours.into_raw_fd();
        let devices = fs_devices(&[arg(m)]).unwrap();
        assert!(matches!(devices[0].backend, FsBackend::Connected(_)));
        drop(theirs);
    }

    #[test]
    fn timing_lines() {
        let entered = Instant::now();
        let wall = SystemTime::now();
        let t = Timing {
            created: Some(entered + Duration::from_millis(2)),
            guest_started: Some(entered + Duration::from_millis(2)),
            first_exit: Some(entered + Duration::from_millis(3)),
            ..Timing::default()
        };
        let launch = wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 0.001;
        let line = timing_line(&format!("{launch:.6}"), entered, wall, &t);
        // The launch time went through text with microseconds.
        let ms_after = |label: &str| -> f64 {
            let at = line
                .find(label)
                .unwrap_or_else(|| panic!("{label}: {line}"));
            line[at + label.len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            (ms_after("launch to amphi vmm ") - 1.0).abs() < 0.01,
            "{line}"
        );
        assert!((ms_after("to VM created ") - 3.0).abs() < 0.01, "{line}");
        assert!(
            (ms_after("to first guest exit ") - 4.0).abs() < 0.01,
            "{line}"
        );
        assert!(line.contains("to kernel loaded -,"), "{line}");
        assert!((ms_after("to guest started ") - 3.0).abs() < 0.01, "{line}");
        let line = timing_line("1", entered, wall, &t);
        assert!(
            line.starts_with("from amphi vmm (no launch time given): to forked -, to cgroup -, to VM created 2.000 ms"),
            "{line}"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn net_arguments() {
        assert_eq!(parse_net("fd=3").unwrap(), NetArg::Fd(3));
        assert_eq!(
            parse_net("/run/passt.sock").unwrap(),
            NetArg::Path("/run/passt.sock".into())
        );
        assert_eq!(parse_net("./fd=3").unwrap(), NetArg::Path("./fd=3".into()));
        assert!(parse_net("fd=2")
            .unwrap_err()
            .contains("stdin, stdout and stderr"));
        assert!(parse_net("fd=x")
            .unwrap_err()
            .contains("not a descriptor number"));
        assert!(parse_net("fd=-4").unwrap_err().contains("3 or above"));
        assert!(parse_net("").is_err());
        // A descriptor that is not open, one that is not a socket.
        let e = take_inherited_socket(1_000_000).unwrap_err();
        assert!(e.contains("descriptor 1000000 is not open"), "{e}");
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let e = take_inherited_socket(fd).unwrap_err();
        assert!(e.contains(&format!("--net fd={fd}: not a socket")), "{e}");
    }
}
