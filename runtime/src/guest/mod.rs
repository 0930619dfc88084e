//! The guest init: PID 1 inside the microVM.
//!
//! The kernel starts the static amphi binary as `/.amphi/init` from the
//! initramfs (`rdinit=/.amphi/init`). It
//!
//! 1. mounts /dev, /proc and /sys, and builds the root the container
//!    engine needs: a tmpfs holding the image as overlay lower (the
//!    initramfs copy under `/.amphi/rootfs`, or the read-only ext4 on
//!    `/dev/vda`, as `amphi.root=` on the command line says), the upper and
//!    work dirs, and moves it onto `/` (pivot_root cannot leave an
//!    initramfs, so this is a switch_root without deleting anything);
//! 2. mounts cgroup2 with nsdelegate (the guest is a pure cgroup v2 host), or
//!    a cgroup v1 layout when the command line has
//!    `systemd.unified_cgroup_hierarchy=0` (the dispatcher asks for it for
//!    an init older than systemd 230);
//! 3. opens the guest channel (`/dev/hvc0`, raw mode), says
//!    [`Frame::Ready`], and reads the [`Frame::Start`];
//! 4. runs the workload with the same container engine and spec as a
//!    native run, its stdio on pipes (or a pty with `-t`);
//! 5. relays stdin/stdout/stderr, signals and window size, sends
//!    [`Frame::Exit`] and, once the host answers [`Frame::Shutdown`] (or
//!    after a grace period), reboots, which ends the VM (`reboot=t` under
//!    QEMU with `-no-reboot`, `reboot=k` under amphi's VMM).
//!
//! Anything that fails is sent as [`Frame::Error`] when the channel is
//! open, and printed on the console either way.

use crate::container::cgroups::Cgroup;
use crate::container::launch::{launch, ConsolePty, LaunchOptions};
use crate::proto::channel::{self, Decoder, ExitStatus, Frame, GuestError, Ready, StartRequest};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::proto::GUEST_INIT as INIT;
/// The new root (a tmpfs) the init builds and moves onto `/`.
const NEWROOT: &str = "/.amphi/newroot";
/// The guest channel's device.
const CHANNEL: &str = "/dev/hvc0";
/// How long the init waits for the host's [`Frame::Shutdown`] after the exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long output is drained after the workload exits.
const DRAIN: Duration = Duration::from_secs(3);

/// Whether this process is the guest init: PID 1 started as [`INIT`].
pub fn is_guest_init() -> bool {
    std::process::id() == 1
        && std::env::args_os()
            .next()
            .is_some_and(|a| a.to_string_lossy() == INIT)
}

/// Runs the guest init; never returns (the VM ends).
pub fn main() -> ! {
    let console = Console;
    let mut chan = None;
    if let Err(e) = boot(&mut chan) {
        console.line(&format!("amphi-init: error: {}", e.message));
        if let Some(c) = chan.as_mut() {
            let _ = Frame::Error(e).write_to(c);
            wait_shutdown(c);
        }
    }
    power_off();
}

/// The kernel console (fd 2 at start, kept as a duplicate).
struct Console;

impl Console {
    fn line(&self, s: &str) {
        // Before setup_root has kept the console there is nothing to write to.
        if let Some(mut f) = CONSOLE.get() {
            let _ = writeln!(f, "{s}");
        }
    }
}

/// The duplicate of the console the init keeps for its own messages (its
/// stdio goes to /dev/null once the workload runs), at fd 9 or above.
static CONSOLE: std::sync::OnceLock<File> = std::sync::OnceLock::new();
/// The lowest fd the console's duplicate may take.
const CONSOLE_FD: RawFd = 9;

mod exec;

/// Writes a frame to the host: under the shared lock once exec threads may
/// write too ([`exec::send`]), directly before.
fn write_frame(c: &mut File, f: &Frame) -> std::io::Result<()> {
    if exec::send(f) {
        Ok(())
    } else {
        f.write_to(c)
    }
}

fn gerr(m: impl Into<String>) -> GuestError {
    GuestError {
        code: crate::run::EXIT_AMPHI,
        message: m.into(),
    }
}

/// `s` as a C string; one with a NUL byte is refused (it would be cut short).
fn cstr(s: &str) -> Result<CString, GuestError> {
    CString::new(s).map_err(|_| gerr(format!("{s:?} contains a NUL byte")))
}

fn mount(
    src: &str,
    dst: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), GuestError> {
    let (s, d, t, o) = (cstr(src)?, cstr(dst)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: the four are C strings alive for the call; fstype and data
    // are null when empty, which mount(2) accepts.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                t.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                o.as_ptr() as *const libc::c_void
            },
        )
    };
    if r != 0 {
        return Err(gerr(format!(
            "mounting {src} ({fstype}) on {dst}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn mkdir(p: &str) -> Result<(), GuestError> {
    fs::create_dir_all(p).map_err(|e| gerr(format!("creating {p}: {e}")))
}

/// The value of `amphi.root=` on the kernel command line.
fn root_kind() -> String {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("amphi.root=").map(String::from))
        .unwrap_or_else(|| "initramfs".into())
}

/// Step 1 and 2: the root filesystem and the basic mounts.
fn setup_root() -> Result<(), GuestError> {
    keep_console();
    mount_kernel_filesystems()?;
    build_newroot()?;
    switch_root()?;
    mount_cgroups()?;
    mkdir("/tmp")?;
    Ok(())
}

/// Keeps a duplicate of the console the kernel gave us as fd 2 (see
/// [`CONSOLE`]); without it the init only loses its own messages, as
/// before.
fn keep_console() {
    if let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), CONSOLE_FD) {
        let _ = CONSOLE.set(File::from(fd));
    }
}

/// /dev, /proc and /sys in the initramfs.
fn mount_kernel_filesystems() -> Result<(), GuestError> {
    for d in ["/dev", "/proc", "/sys"] {
        mkdir(d)?;
    }
    // devtmpfs may already be there (CONFIG_DEVTMPFS_MOUNT does not apply
    // to an initramfs root, but tolerate it).
    let _ = mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )?;
    mount(
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )
}

/// The new root at [`NEWROOT`]: a tmpfs with the directories the container
/// engine needs, the image as the overlay's lower layer, and the init
/// binary.
fn build_newroot() -> Result<(), GuestError> {
    mkdir(NEWROOT)?;
    mount("tmpfs", NEWROOT, "tmpfs", 0, "mode=0755")?;
    for d in [
        "dev",
        "proc",
        "sys",
        ".amphi/lower",
        ".amphi/upper",
        ".amphi/work",
        ".amphi/rootfs",
        ".amphi/etc",
    ] {
        mkdir(&format!("{NEWROOT}/{d}"))?;
    }
    mount_image(&format!("{NEWROOT}/.amphi/lower"))?;
    // The init binary, for `--init` (bind-mounted into the container).
    let init = format!("{NEWROOT}{INIT}");
    File::create(&init).map_err(|e| gerr(format!("{init}: {e}")))?;
    mount(INIT, &init, "", libc::MS_BIND, "")
}

/// The image on `lower`, as `amphi.root=` says: the initramfs copy under
/// `/.amphi/rootfs`, the host's virtio-fs share of its layers, or a
/// read-only ext4 (or erofs) device.
fn mount_image(lower: &str) -> Result<(), GuestError> {
    match root_kind().as_str() {
        "initramfs" => mount(
            "/.amphi/rootfs",
            lower,
            "",
            libc::MS_BIND | libc::MS_REC,
            "",
        ),
        // The image's stored layers from the host, read-only (virtiofsd
        // serves them read-only too).
        "virtiofs" => mount(
            crate::proto::VIRTIOFS_ROOT_TAG,
            lower,
            "virtiofs",
            libc::MS_RDONLY,
            "",
        ),
        // An OCI bundle's rootfs comes in a virtio-fs share the start
        // request names: no image here.
        "none" => Ok(()),
        dev => {
            let path = format!("/dev/{dev}");
            mount(&path, lower, "ext4", libc::MS_RDONLY, "")
                .or_else(|_| mount(&path, lower, "erofs", libc::MS_RDONLY, ""))
        }
    }
}

/// Moves /dev, /proc and /sys into [`NEWROOT`], then [`NEWROOT`] onto `/`
/// and makes it the root (pivot_root cannot leave an initramfs, so this is
/// a switch_root without deleting anything).
fn switch_root() -> Result<(), GuestError> {
    for d in ["dev", "proc", "sys"] {
        mount(
            &format!("/{d}"),
            &format!("{NEWROOT}/{d}"),
            "",
            libc::MS_MOVE,
            "",
        )?;
    }
    std::env::set_current_dir(NEWROOT).map_err(|e| gerr(format!("chdir {NEWROOT}: {e}")))?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    // SAFETY: chroot reads only the C string literal it is given.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(gerr(format!("chroot: {}", std::io::Error::last_os_error())));
    }
    std::env::set_current_dir("/").map_err(|e| gerr(format!("chdir /: {e}")))
}

/// The cgroup filesystems at /sys/fs/cgroup: cgroup2 with nsdelegate, or
/// a v1 layout when the command line asks for one.
fn mount_cgroups() -> Result<(), GuestError> {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline
        .split_whitespace()
        .any(|w| w == "systemd.unified_cgroup_hierarchy=0")
    {
        // The dispatcher's inference asks for cgroup v1 hierarchies (an
        // init older than systemd 230): a legacy layout.
        mount_cgroup_v1()
    } else {
        // nsdelegate: a container in systemd mode gets its cgroup writable
        // at its /sys/fs/cgroup, and the kernel then refuses, from inside
        // its cgroup namespace, writes to its own limits (memory.max, ...)
        // while letting it manage the subtree below (as systemd mounts it
        // on hosts).
        mount(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "nsdelegate",
        )
    }
}

/// The legacy cgroup layout: a tmpfs at /sys/fs/cgroup with one v1
/// hierarchy per controller the kernel has (from /proc/cgroups), plus the
/// named `systemd` hierarchy old systemd tracks its services in.
fn mount_cgroup_v1() -> Result<(), GuestError> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("tmpfs", "/sys/fs/cgroup", "tmpfs", flags, "mode=0755")?;
    let table = fs::read_to_string("/proc/cgroups").unwrap_or_default();
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "1" {
            continue;
        }
        let dir = format!("/sys/fs/cgroup/{}", f[0]);
        mkdir(&dir)?;
        // A controller this kernel only offers on v2 is left out.
        if mount("cgroup", &dir, "cgroup", flags, f[0]).is_err() {
            let _ = fs::remove_dir(&dir);
        }
    }
    mkdir("/sys/fs/cgroup/systemd")?;
    mount(
        "cgroup",
        "/sys/fs/cgroup/systemd",
        "cgroup",
        flags,
        "none,name=systemd",
    )
}

/// Opens the guest channel in raw mode (no echo, no line editing: frames
/// are binary).
fn open_channel() -> Result<File, GuestError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(CHANNEL)
        .map_err(|e| gerr(format!("opening the guest channel {CHANNEL}: {e}")))?;
    let mut t =
        rustix::termios::tcgetattr(&f).map_err(|e| gerr(format!("{CHANNEL}: tcgetattr: {e}")))?;
    t.make_raw();
    rustix::termios::tcsetattr(&f, rustix::termios::OptionalActions::Now, &t)
        .map_err(|e| gerr(format!("{CHANNEL}: tcsetattr: {e}")))?;
    Ok(f)
}

fn ready() -> Ready {
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ready { kernel, uptime }
}

fn boot(chan: &mut Option<File>) -> Result<(), GuestError> {
    setup_root()?;
    let c = chan.insert(open_channel()?);
    Frame::Ready(ready())
        .write_to(c)
        .map_err(|e| gerr(format!("guest channel: {e}")))?;
    let mut dec = Decoder::new();
    let req = loop {
        match channel::read_frame(c, &mut dec).map_err(gerr)? {
            Some(Frame::Start(s)) => break s.parse().map_err(gerr)?,
            Some(Frame::Shutdown) | None => power_off(),
            Some(_) => {}
        }
    };
    let status = run_workload(c, dec, req)?;
    write_frame(c, &Frame::Exit(status)).map_err(|e| gerr(format!("guest channel: {e}")))?;
    wait_shutdown(c);
    Ok(())
}

/// Waits (bounded) for the host's [`Frame::Shutdown`] or the channel's end.
fn wait_shutdown(c: &mut File) {
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let mut buf = [0u8; 4096];
    let mut dec = Decoder::new();
    while Instant::now() < deadline {
        if !crate::sys::poll::wait_readable(c.as_raw_fd(), Duration::from_millis(200)) {
            continue;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.push(&buf[..n]),
        }
        while let Ok(Some(f)) = dec.next_frame() {
            if f == Frame::Shutdown {
                return;
            }
        }
    }
}

/// Ends the VM.
fn power_off() -> ! {
    // SAFETY: sync and reboot are always safe to call as PID 1.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), GuestError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| gerr(format!("pipe: {e}")))
}

fn dup2(from: RawFd, to: RawFd) {
    // SAFETY: dup2 takes two fd numbers and no memory; replacing `to` (our
    // stdio) is what the callers want.
    unsafe { libc::dup2(from, to) };
}

/// Where the workload's input goes.
enum Input {
    /// The write end of the workload's stdin pipe.
    Pipe(OwnedFd),
    /// A duplicate of the pty master.
    Pty(OwnedFd),
}

/// Writes stdin data in its own thread, so a workload that does not read
/// its input never stalls the relay of its output.
fn stdin_writer(input: Input) -> mpsc::Sender<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    std::thread::spawn(move || {
        let (fd, pty) = match input {
            Input::Pipe(p) => (p, false),
            Input::Pty(m) => (m, true),
        };
        let mut f = File::from(fd);
        while let Ok(Some(data)) = rx.recv() {
            if f.write_all(&data).is_err() {
                break;
            }
        }
        // End of input: ^D on a pty; closing the pipe (dropping `f`) ends it.
        if pty {
            let _ = f.write_all(&[4]);
        }
        drop(f);
    });
    tx
}

/// Step 4 and 5: runs the workload of `req` and relays its stdio, signals
/// and window size over the channel `c` (`dec` holds what was read of it
/// past the start request) until it exits; returns its status.
fn run_workload(c: &mut File, dec: Decoder, req: StartRequest) -> Result<ExitStatus, GuestError> {
    apply_host_state(&req)?;
    let (spec, rootfs, terminal) = workload_spec(&req)?;

    // The workload's stdio: pipes (or the pty the engine makes with -t).
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| gerr(format!("/dev/null: {e}")))?;
    let (mut outputs, stdin_pipe) = workload_stdio(&null, terminal, req.stdin)?;
    let sigs = crate::sys::signal::block_forwarded();
    let launched = launch(&spec, &rootfs, launch_options(&req));
    // Our own stdio back to nothing: the pipes' write ends live only in
    // the workload now, so its exit ends them.
    dup2(null.as_raw_fd(), 0);
    dup2(null.as_raw_fd(), 1);
    dup2(null.as_raw_fd(), 2);
    let launched = launched.map_err(|e| GuestError {
        message: e.to_string(),
        code: crate::run::RunError::Launch(e).failure().exit_status(),
    })?;
    let pid = launched.pid;
    if let Err(e) = exec::prepare(&req.id, pid, &spec, &rootfs, &launched.cgroup, c) {
        Console.line(&format!("amphi-init: exec will not work: {}", e.message));
    }
    let _ = write_frame(c, &Frame::Started(pid as u32));
    let pty = launched.pty;
    let slaves = terminal_outputs(pty.as_ref(), launched.console, &mut outputs)?;
    let stdin_tx = workload_input(pty.as_ref(), stdin_pipe)?.map(stdin_writer);
    let pty_fd = pty.as_ref().map(|m| m.as_raw_fd());

    // Frames from the host, read in their own thread.
    let reader = c
        .try_clone()
        .map_err(|e| gerr(format!("guest channel: {e}")))?;
    read_host_frames(reader, dec, stdin_tx, pid, pty_fd);

    let code = relay(c, pid, &mut outputs, &sigs, slaves);
    Ok(exit_status(&launched.cgroup, code))
}

/// The runtime spec of the start request, the path of its rootfs and
/// whether its process has a terminal.
fn workload_spec(
    req: &StartRequest,
) -> Result<(oci_spec::runtime::Spec, std::path::PathBuf, bool), GuestError> {
    let spec: oci_spec::runtime::Spec = serde_json::from_value(req.spec.clone())
        .map_err(|e| gerr(format!("the runtime spec from the host: {e}")))?;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "/.amphi/rootfs".into());
    let terminal = spec
        .process()
        .as_ref()
        .is_some_and(|p| p.terminal().unwrap_or(false));
    Ok((spec, rootfs, terminal))
}

/// How the container engine launches the workload of `req` in the guest.
fn launch_options(req: &StartRequest) -> LaunchOptions {
    LaunchOptions {
        id: req.id.clone(),
        exec_fifo: None,
        console_socket: None,
        user_lookup: req.user_lookup.clone(),
        preserve_fds: 0,
        state_template: serde_json::json!({
            "ociVersion": "1.2.0", "id": req.id, "status": "creating", "bundle": "/",
        }),
        owns_cgroup: true,
        sealed: false,
        console_pty: req.console,
    }
}

/// Adds the workload's ptys to the outputs to relay: the pty master (with
/// `-t`) and the console-only pty. Returns their slaves, to hold until the
/// workload exits (see `run::hold_slave`): the pty's, and the console-only
/// pty's, taken by launch when its master came.
fn terminal_outputs(
    pty: Option<&OwnedFd>,
    console: Option<ConsolePty>,
    outputs: &mut Vec<Output>,
) -> Result<Vec<OwnedFd>, GuestError> {
    if let Some(m) = pty {
        let m = m.try_clone().map_err(|e| gerr(format!("pty: {e}")))?;
        outputs.push(Output::new(m, Stream::Stdout));
    }
    let mut slaves: Vec<OwnedFd> = pty.and_then(crate::run::hold_slave).into_iter().collect();
    if let Some(console) = console {
        outputs.push(Output::new(
            console.master,
            Stream::Console(crate::sys::term::CrLf::default()),
        ));
        slaves.extend(console.slave);
    }
    Ok(slaves)
}

/// Where the host's stdin goes: the pty master (a duplicate) with `-t`,
/// else the stdin pipe when the host sends stdin, else nowhere.
fn workload_input(
    pty: Option<&OwnedFd>,
    stdin_pipe: Option<OwnedFd>,
) -> Result<Option<Input>, GuestError> {
    Ok(match (pty, stdin_pipe) {
        (Some(m), _) => Some(Input::Pty(
            m.try_clone().map_err(|e| gerr(format!("pty: {e}")))?,
        )),
        (None, Some(p)) => Some(Input::Pipe(p)),
        (None, None) => None,
    })
}

/// The status sent to the host for a workload that exited with `code`:
/// 137 when the OOM killer acted in its cgroup, with its peak memory. The
/// cgroup is removed.
fn exit_status(cgroup: &Cgroup, mut code: i32) -> ExitStatus {
    let oom_killed = cgroup.oom_killed();
    if oom_killed {
        code = 137;
    }
    let peak_memory = cgroup.memory_peak();
    let _ = cgroup.remove();
    ExitStatus {
        code,
        oom_killed,
        peak_memory,
    }
}

/// `lo` up, and `eth0` with the host's address, prefix, MTU and default
/// route: passt behind it forwards what leaves (the guest shares the
/// host's address, so passt needs no NAT table).
fn configure_network(net: &crate::proto::channel::GuestNet) -> Result<(), GuestError> {
    // SAFETY: a socket for the ioctls, owned by the OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(gerr(format!("socket: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fd was just returned by socket(2) and is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ioctl = |req: libc::c_ulong, r: &mut libc::ifreq, what: &str| -> Result<(), GuestError> {
        // SAFETY: the socket and an ifreq we own, for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, r as *mut libc::ifreq) } != 0 {
            return Err(gerr(format!("{what}: {}", std::io::Error::last_os_error())));
        }
        Ok(())
    };
    let up = |name: &str| -> Result<(), GuestError> {
        let mut r = ifreq(name);
        ioctl(libc::SIOCGIFFLAGS, &mut r, &format!("{name} flags"))?;
        // SAFETY: the flags member of the union, which SIOCGIFFLAGS filled.
        unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        ioctl(libc::SIOCSIFFLAGS, &mut r, &format!("bringing {name} up"))
    };
    up("lo")?;
    let mut r = ifreq("eth0");
    r.ifr_ifru.ifru_addr = sockaddr(net.address);
    ioctl(libc::SIOCSIFADDR, &mut r, "eth0 address")?;
    let mask = match net.prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    };
    let mut r = ifreq("eth0");
    r.ifr_ifru.ifru_netmask = sockaddr(mask.into());
    ioctl(libc::SIOCSIFNETMASK, &mut r, "eth0 netmask")?;
    let mut r = ifreq("eth0");
    r.ifr_ifru.ifru_mtu = net.mtu as libc::c_int;
    ioctl(libc::SIOCSIFMTU, &mut r, "eth0 mtu")?;
    up("eth0")?;
    // SAFETY: an all-zero rtentry is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(std::net::Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(net.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    let dev = c"eth0";
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    // SAFETY: the socket and the rtentry (whose device name is a C string
    // alive for the call).
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut libc::rtentry,
        )
    };
    if rc != 0 {
        return Err(gerr(format!(
            "default route via {}: {}",
            net.gateway,
            std::io::Error::last_os_error()
        )));
    }
    // passt learns the guest's MAC address from the guest's first frame:
    // a workload that only serves (-p) would never send one, so say hello
    // (an ARP for the gateway, then a datagram to its discard port).
    if let Ok(u) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = u.send_to(b"amphi", (net.gateway, 9));
    }
    Ok(())
}

/// An `ifreq` naming `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    r
}

/// An IPv4 address as the generic `sockaddr` the ioctls take.
fn sockaddr(a: std::net::Ipv4Addr) -> libc::sockaddr {
    // SAFETY: an all-zero sockaddr is a valid value.
    let mut s: libc::sockaddr = unsafe { std::mem::zeroed() };
    s.sa_family = libc::AF_INET as libc::sa_family_t;
    // sockaddr_in's layout: port (2 bytes), then the address.
    s.sa_data[2..6]
        .iter_mut()
        .zip(a.octets())
        .for_each(|(d, b)| *d = b as libc::c_char);
    s
}

/// The host's clock and the files of the start request (the /etc files).
fn apply_host_state(req: &StartRequest) -> Result<(), GuestError> {
    if let Some((secs, nanos)) = req.host_time {
        let ts = libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos as i64,
        };
        // SAFETY: setting the guest's clock with a valid timespec.
        unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    }
    for (path, content) in &req.files {
        if let Some(parent) = Path::new(path).parent() {
            let _ = fs::create_dir_all(parent);
        }
        fs::write(path, content).map_err(|e| gerr(format!("writing {path}: {e}")))?;
    }
    if let Some(net) = &req.net {
        configure_network(net)?;
    }
    for share in &req.shares {
        if !share.target.starts_with("/.amphi/") || share.target.contains("..") {
            return Err(gerr(format!(
                "virtio-fs share {}: target {} is not below /.amphi/",
                share.tag, share.target
            )));
        }
        mkdir(&share.target)?;
        mount(&share.tag, &share.target, "virtiofs", 0, "")?;
    }
    Ok(())
}

/// The workload's stdio as our own fds 0-2, which launch passes on: pipes
/// (stdin only when asked for), or /dev/null with a terminal (the pty the
/// engine makes). Returns the outputs to relay and the stdin pipe's end.
fn workload_stdio(
    null: &File,
    terminal: bool,
    stdin: bool,
) -> Result<(Vec<Output>, Option<OwnedFd>), GuestError> {
    let mut outputs: Vec<Output> = Vec::new();
    let mut stdin_pipe = None;
    if !terminal {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        if stdin {
            let (in_r, in_w) = pipe()?;
            dup2(in_r.as_raw_fd(), 0);
            stdin_pipe = Some(in_w);
        } else {
            dup2(null.as_raw_fd(), 0);
        }
        dup2(out_w.as_raw_fd(), 1);
        dup2(err_w.as_raw_fd(), 2);
        outputs.push(Output::new(out_r, Stream::Stdout));
        outputs.push(Output::new(err_r, Stream::Stderr));
    } else {
        dup2(null.as_raw_fd(), 0);
        dup2(null.as_raw_fd(), 1);
        dup2(null.as_raw_fd(), 2);
    }
    Ok((outputs, stdin_pipe))
}

/// Reads the host's frames in their own thread: stdin, signals, window
/// size, shutdown. The host's end ends the workload and the VM.
fn read_host_frames(
    mut reader: File,
    dec: Decoder,
    stdin_tx: Option<std::sync::mpsc::Sender<Option<Vec<u8>>>>,
    pid: i32,
    pty_fd: Option<i32>,
) {
    std::thread::spawn(move || {
        let mut dec = dec;
        let mut stdin_tx = stdin_tx;
        loop {
            match channel::read_frame(&mut reader, &mut dec) {
                Ok(Some(Frame::Stdin(b))) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(Some(b));
                    }
                }
                Ok(Some(Frame::StdinEof)) => {
                    if let Some(tx) = stdin_tx.take() {
                        let _ = tx.send(None);
                    }
                }
                Ok(Some(Frame::Signal(s))) => {
                    // SAFETY: signalling the workload's init.
                    unsafe { libc::kill(pid, s) };
                }
                Ok(Some(Frame::Resize { rows, cols })) => {
                    if let Some(m) = pty_fd {
                        let ws = libc::winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ with a valid winsize.
                        unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) };
                    }
                }
                Ok(Some(Frame::Shutdown)) => power_off(),
                Ok(Some(
                    f @ (Frame::ExecStart { .. }
                    | Frame::ExecStdin { .. }
                    | Frame::ExecStdinEof(_)
                    | Frame::ExecSignal { .. }
                    | Frame::ExecResize { .. }),
                )) => exec::on_frame(f),
                Ok(Some(_)) => {}
                // The host went away: nobody is left to report to.
                Ok(None) | Err(_) => {
                    // SAFETY: killing the workload before the VM ends.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    power_off();
                }
            }
        }
    });
}

/// Which stream a workload output goes to.
enum Stream {
    Stdout,
    Stderr,
    /// The console-only pty: to stdout, `\r\n` as `\n`.
    Console(crate::sys::term::CrLf),
}

/// One output of the workload the relay reads.
struct Output {
    fd: OwnedFd,
    stream: Stream,
}

impl Output {
    fn new(fd: OwnedFd, stream: Stream) -> Output {
        Output { fd, stream }
    }

    /// The frame for `data` read from it (none when the console held all
    /// of it back: a `\r` that may start a line end).
    fn frame(&mut self, data: &[u8]) -> Option<Frame> {
        match &mut self.stream {
            Stream::Stdout => Some(Frame::Stdout(data.to_vec())),
            Stream::Stderr => Some(Frame::Stderr(data.to_vec())),
            Stream::Console(crlf) => {
                let mut out = Vec::with_capacity(data.len());
                crlf.convert(data, &mut out);
                (!out.is_empty()).then_some(Frame::Stdout(out))
            }
        }
    }

    /// The frame for what it holds back at its end, if anything.
    fn finish(&mut self) -> Option<Frame> {
        let Stream::Console(crlf) = &mut self.stream else {
            return None;
        };
        let mut out = Vec::new();
        crlf.finish(&mut out);
        (!out.is_empty()).then_some(Frame::Stdout(out))
    }
}

/// Relays the workload's output until it exits; returns its status.
fn relay(
    c: &mut File,
    pid: i32,
    outputs: &mut Vec<Output>,
    sigs: &crate::sys::signal::Signals,
    mut slaves: Vec<OwnedFd>,
) -> i32 {
    let mut buf = vec![0u8; channel::CHUNK];
    let mut status = None;
    let mut drain_until = None;
    loop {
        if let Some(d) = drain_until {
            if outputs.is_empty() || Instant::now() >= d {
                break;
            }
        }
        let timeout = if drain_until.is_some() { 100 } else { 1000 };
        let (set, signals) = poll_outputs(outputs, sigs, Duration::from_millis(timeout));
        forward_outputs(c, outputs, &set, &mut buf);
        if set.has_input(signals) {
            sigs.drain();
        }
        if let Some(st) = crate::sys::exit::reap_all_and(pid, exec::reaped) {
            status = Some(st);
            // The ptys end once what the workload wrote is read.
            slaves.clear();
            drain_until = Some(Instant::now() + DRAIN);
        }
        if status.is_some() && drain_until.is_none() {
            drain_until = Some(Instant::now() + DRAIN);
        }
    }
    status.unwrap_or(crate::run::EXIT_AMPHI)
}

/// Polls the outputs (output i at index i) and the signalfd for up to
/// `timeout`; returns the set and the signalfd's index.
fn poll_outputs(
    outputs: &[Output],
    sigs: &crate::sys::signal::Signals,
    timeout: Duration,
) -> (crate::sys::poll::PollSet, usize) {
    let mut set = crate::sys::poll::PollSet::new();
    for o in outputs {
        set.add(o.fd.as_raw_fd());
    }
    let signals = set.add(sigs.raw_fd());
    set.wait(Some(timeout));
    (set, signals)
}

/// Sends what the outputs that `set` found ready hold to the host, and
/// drops the outputs that ended (after sending what they held back).
fn forward_outputs(
    c: &mut File,
    outputs: &mut Vec<Output>,
    set: &crate::sys::poll::PollSet,
    buf: &mut [u8],
) {
    let mut closed = Vec::new();
    for (i, o) in outputs.iter_mut().enumerate() {
        if !set.readable(i) {
            continue;
        }
        match rustix::io::read(&o.fd, &mut *buf) {
            Ok(n) if n > 0 => {
                if let Some(f) = o.frame(&buf[..n]) {
                    let _ = write_frame(c, &f);
                }
            }
            Ok(_) => closed.push(i),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => closed.push(i),
        }
    }
    for i in closed.into_iter().rev() {
        if let Some(f) = outputs.remove(i).finish() {
            let _ = write_frame(c, &f);
        }
    }
}
