//! Escape class: a hostile guest talking to the host over the guest
//! channel, and a local user racing `amphi compare`'s temp files.
//!
//! The hostile guest is real: the busybox image in a real microVM (QEMU),
//! with the guest kernel told to start a shell script as its init instead
//! of amphi's (`AMPHI_VM_CMDLINE_EXTRA="rdinit=.../sh -c ... HOSTILE=SCRIPT"`,
//! the existing switch for extra kernel parameters; nothing test-only in
//! amphi). The script plays a compromised guest: it writes frames of its
//! choosing to `/dev/hvc0`. What the attacker must not get: a run that
//! outlives `--timeout`, an exit status of its choosing, the host's memory
//! or disk, the user's terminal left raw, escape sequences printed on the
//! user's terminal, or anything left behind on the host.
//!
//! These tests need the guest kernel build (`amphi kernel build --version
//! 6.12`) and QEMU; without them they fail.

use amphi_tests::{amphi_bin, dir_names, processes_mentioning, Amphi};
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMG: &str = "localhost/escape/busybox:latest";
/// No single run here may take longer (amphi's boot watchdog is 120 s).
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The busybox image in a private store, a private state root and TMPDIR.
struct Vm {
    a: Amphi,
    state: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Vm {
    fn new() -> Vm {
        assert!(
            amphi_tests::guest_kernel_build_quiet("6.12").is_some(),
            "guest kernel 6.12 is not built: run `amphi kernel build --version 6.12` (scripts/test does)"
        );
        assert!(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
                .unwrap_or(false),
            "qemu-system-x86_64 is not installed (scripts/setup installs it)"
        );
        let a = Amphi::new();
        a.load_test_image("busybox", IMG);
        Vm {
            a,
            state: tempfile::Builder::new()
                .prefix("amphi-esc-state-")
                .tempdir()
                .unwrap(),
            tmp: tempfile::Builder::new()
                .prefix("amphi-esc-tmp-")
                .tempdir()
                .unwrap(),
        }
    }

    /// `amphi run --rm --isolation vm FLAGS IMG true` whose guest runs
    /// `script` (busybox sh) as its init instead of amphi's.
    fn hostile(&self, script: &str, flags: &[&str], envs: &[(&str, &str)], tty: bool) -> Outcome {
        self.hostile_with(script, flags, envs, tty, false)
    }

    /// [`Vm::hostile`]; with `stall`, amphi's stdout is a pipe nobody reads.
    fn hostile_with(
        &self,
        script: &str,
        flags: &[&str],
        envs: &[(&str, &str)],
        tty: bool,
        stall: bool,
    ) -> Outcome {
        assert!(
            !script.contains('"'),
            "the kernel command line cannot carry a double quote"
        );
        // The kernel hands parameters it does not know to init: `-c` and
        // the quoted command (no `=`, no `.`) as arguments, HOSTILE=... as
        // the environment. (Not after `--`: QEMU appends the virtio-mmio
        // device parameters to the command line.)
        let extra = format!(
            "rdinit=/.amphi/rootfs/bin/sh -c \"set -f; eval $HOSTILE\" HOSTILE=\"{script}\""
        );
        let mut args = vec!["run", "--rm", "--isolation", "vm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMG, "true"]);
        let mut c = self.a.cmd(&args);
        c.env("AMPHI_STATE", self.state.path())
            .env("TMPDIR", self.tmp.path())
            .env("AMPHI_VM_BOOT_TIMEOUT", "60")
            .env("AMPHI_VM_CMDLINE_EXTRA", &extra);
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = run(c, tty, stall);
        self.assert_clean(&out);
        out
    }

    /// Nothing of the run is left: no process that mentions our state root
    /// or TMPDIR (QEMU names the channel socket in the state root), no
    /// run directory, no temp file.
    fn assert_clean(&self, out: &Outcome) {
        let ours = [
            self.state.path().to_str().unwrap().to_string(),
            self.tmp.path().to_str().unwrap().to_string(),
        ];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_mentioning(&ours);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes left behind: {left:?}\n{}",
                out.show()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let runs = dir_names(&self.state.path().join("vm"));
        assert!(
            runs.is_empty(),
            "run directories left: {runs:?}\n{}",
            out.show()
        );
        let tmp = dir_names(self.tmp.path());
        assert!(tmp.is_empty(), "temp files left: {tmp:?}\n{}", out.show());
    }
}

/// What a run did.
struct Outcome {
    code: Option<i32>,
    stdout_len: u64,
    stdout_head: String,
    stderr: String,
    took: Duration,
    /// With a tty: whether the terminal had ECHO and ICANON back after.
    cooked_after: Option<bool>,
}

impl Outcome {
    fn show(&self) -> String {
        format!(
            "exit {:?} after {:.1} s; {} bytes of stdout, starting {:?}\n--- stderr\n{}",
            self.code,
            self.took.as_secs_f64(),
            self.stdout_len,
            self.stdout_head,
            self.stderr
        )
    }
}

fn read_all(f: &mut File) -> String {
    let mut b = Vec::new();
    f.rewind().unwrap();
    f.read_to_end(&mut b).unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

/// A pty pair (master, slave), the slave in the usual cooked mode.
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty with valid out pointers.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

fn lflags(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: tcgetattr into a zeroed termios.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t.c_lflag
    }
}

/// Runs the command to its end (within [`RUN_LIMIT`]); with `tty`, its
/// stdin is a pty slave whose modes are checked afterwards; with `stall`,
/// its stdout is a pipe that is never read.
fn run(mut c: Command, tty: bool, stall: bool) -> Outcome {
    let (mut out, mut err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    if stall {
        c.stdout(Stdio::piped());
    } else {
        c.stdout(out.try_clone().unwrap());
    }
    c.stderr(err.try_clone().unwrap());
    let term = tty.then(pty);
    match &term {
        Some((_, slave)) => {
            let cooked = libc::ECHO | libc::ICANON;
            assert_eq!(lflags(slave) & cooked, cooked, "the pty starts cooked");
            c.stdin(Stdio::from(slave.try_clone().unwrap()));
        }
        None => {
            c.stdin(Stdio::null());
        }
    }
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    // Held unread until the end.
    let _unread = child.stdout.take();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{c:?} did not end within {RUN_LIMIT:?}; stderr:\n{}",
                read_all(&mut err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let stdout_len = out.metadata().unwrap().len();
    let mut head = vec![0u8; 200];
    out.rewind().unwrap();
    let n = out.read(&mut head).unwrap();
    Outcome {
        code: st.code(),
        stdout_len,
        stdout_head: String::from_utf8_lossy(&head[..n]).into_owned(),
        stderr: read_all(&mut err),
        took,
        cooked_after: term.map(|(_, slave)| {
            let cooked = libc::ECHO | libc::ICANON;
            lflags(&slave) & cooked == cooked
        }),
    }
}

/// The hostile init's preamble: /dev, and the channel open on fd 3 in raw
/// mode (as the real init has it; hvc resets its modes when the last fd
/// closes), so bytes go out as written and nothing is echoed.
const SETUP: &str = "B=/.amphi/rootfs/bin; $B/mount -t devtmpfs dev /dev; \
    while [ ! -e /dev/hvc0 ]; do $B/sleep 0.1; done; exec 3<>/dev/hvc0; $B/stty raw -echo <&3; ";
/// Keeps the hostile init alive (its exit would panic the guest kernel).
const HANG: &str = "while :; do $B/sleep 1; done";
/// A ready frame (kind 16, 27 bytes of JSON), for busybox printf.
const READY: &str = "$B/printf '\\020\\033\\000\\000\\000{\\042kernel\\042:\\0426.1\\042,\\042uptime\\042:0}' >&3; ";

/// The attack of issue 11: a guest that says Ready again and again got the
/// start request again each time, a new stdin thread each time, a reset
/// `--timeout` (a 3 s timeout ran 9.4 s and exited 0) and a terminal left
/// raw. Now the second Ready is a protocol violation: the VM is stopped at
/// once, with 125 and a message that says so, the terminal is restored, and
/// nothing is left.
#[test]
fn hostile_guest_repeated_ready_is_a_protocol_violation() {
    let vm = Vm::new();
    let script = format!("{SETUP}while :; do {READY}$B/sleep 0.5; done");
    let out = vm.hostile(&script, &["-t", "-i", "--timeout", "30"], &[], true);
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr.contains("guest protocol violation")
            && out.stderr.contains("second ready frame")
            && out.stderr.contains("the microVM was stopped"),
        "{}",
        out.show()
    );
    assert!(
        out.took < Duration::from_secs(30),
        "stopped at the violation, not by --timeout: {}",
        out.show()
    );
    assert_eq!(
        out.cooked_after,
        Some(true),
        "the terminal is back in cooked mode (ECHO, ICANON): {}",
        out.show()
    );
}

/// Starts `amphi run -t -i` with a hostile guest that says Ready once and
/// then ignores everything (the signals amphi forwards included), its
/// stdin a pty slave; returns once amphi has put that terminal in raw
/// mode.
fn start_raw(vm: &Vm) -> (std::process::Child, OwnedFd, OwnedFd, File) {
    let script = format!("{SETUP}{READY}{HANG}");
    let extra =
        format!("rdinit=/.amphi/rootfs/bin/sh -c \"set -f; eval $HOSTILE\" HOSTILE=\"{script}\"");
    let (master, slave) = pty();
    let err = tempfile::tempfile().unwrap();
    let mut c =
        vm.a.cmd(&["run", "--rm", "--isolation", "vm", "-t", "-i", IMG, "true"]);
    c.env("AMPHI_STATE", vm.state.path())
        .env("TMPDIR", vm.tmp.path())
        .env("AMPHI_VM_BOOT_TIMEOUT", "60")
        .env("AMPHI_VM_CMDLINE_EXTRA", &extra)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap());
    let mut child = c.spawn().unwrap();
    let started = Instant::now();
    while lflags(&slave) & libc::ECHO != 0 {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("amphi ended ({st}) before the terminal went raw");
        }
        assert!(started.elapsed() < RUN_LIMIT, "the terminal never went raw");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, master, slave, err)
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("amphi did not end within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest that ignores the signals amphi forwards cannot keep amphi (and
/// the user's terminal, raw) hostage: the third SIGTERM stops the VM, with
/// 143 and the terminal restored. A signal amphi does not forward and
/// that kills it (SIGALRM) still restores the terminal; the run directory
/// it leaves is swept by `amphi gc`, and its backend died with it.
#[test]
fn hostile_guest_ignoring_signals_cannot_keep_the_terminal_raw() {
    let vm = Vm::new();
    let (mut child, _master, slave, mut err) = start_raw(&vm);
    for _ in 0..3 {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = wait_child(&mut child);
    let stderr = read_all(&mut err);
    assert_eq!(st.code(), Some(143), "{stderr}");
    assert!(stderr.contains("did not end after 3 signals"), "{stderr}");
    let cooked = libc::ECHO | libc::ICANON;
    assert_eq!(
        lflags(&slave) & cooked,
        cooked,
        "the terminal is cooked again"
    );
    let done = Outcome {
        code: st.code(),
        stdout_len: 0,
        stdout_head: String::new(),
        stderr,
        took: Duration::ZERO,
        cooked_after: Some(true),
    };
    vm.assert_clean(&done);

    let (mut child, _master, slave, _err) = start_raw(&vm);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGALRM) };
    let st = wait_child(&mut child);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGALRM));
    assert_eq!(
        lflags(&slave) & cooked,
        cooked,
        "the terminal is cooked again after amphi died of SIGALRM"
    );
    let gc =
        vm.a.cmd(&["gc"])
            .env("AMPHI_STATE", vm.state.path())
            .output()
            .unwrap();
    assert!(gc.status.success(), "{gc:?}");
    vm.assert_clean(&done);
}

/// A guest that floods the channel with output cannot hold off
/// `--timeout`: the deadline is absolute, from the VM's start; the run ends
/// with 124.
#[test]
fn hostile_guest_output_flood_cannot_extend_the_timeout() {
    let vm = Vm::new();
    let spam = "printf '\\021\\005\\000\\000\\000spam\\n' ";
    let script =
        format!("{SETUP}{READY}while :; do {spam}; {spam}; {spam}; {spam}; done >&3; {HANG}");
    let out = vm.hostile(&script, &["--timeout", "4"], &[], false);
    assert_eq!(out.code, Some(124), "{}", out.show());
    assert!(out.stderr.contains("--timeout"), "{}", out.show());
    assert!(
        out.stdout_head.starts_with("spam\n"),
        "the flood did reach the host: {}",
        out.show()
    );
    assert!(
        out.took >= Duration::from_secs(4) && out.took < Duration::from_secs(60),
        "a 4 s timeout ends the run well within a minute: {}",
        out.show()
    );
}

/// Even when amphi itself is stuck (its stdout is a pipe nobody reads,
/// and the guest floods it), `--timeout` holds: the watchdog thread stops
/// the VM at the deadline and ends amphi with 124 soon after, restoring the
/// terminal and removing the run directory.
#[test]
fn hostile_guest_flood_into_a_stalled_reader_cannot_outlive_the_timeout() {
    let vm = Vm::new();
    let spam = "printf '\\021\\005\\000\\000\\000spam\\n' ";
    let script = format!("{SETUP}{READY}while :; do {spam}; {spam}; done >&3; {HANG}");
    let out = vm.hostile_with(&script, &["--timeout", "3"], &[], false, true);
    assert_eq!(out.code, Some(124), "{}", out.show());
    assert!(out.stderr.contains("--timeout"), "{}", out.show());
    assert!(
        out.took < Duration::from_secs(60),
        "the run ends within the timeout and the watchdog's grace: {}",
        out.show()
    );
}

/// An exit status before the guest said Ready (so before any workload
/// ran) is out of protocol order: refused, not taken as the workload's
/// status (the attacker's 0).
#[test]
fn hostile_guest_frames_out_of_order_are_refused() {
    let vm = Vm::new();
    // Exit frame (kind 19): {"code":0,"oom_killed":false}, 29 bytes.
    let exit =
        "$B/printf '\\023\\035\\000\\000\\000{\\042code\\042:0,\\042oom_killed\\042:false}' >&3; ";
    let out = vm.hostile(&format!("{SETUP}{exit}{HANG}"), &[], &[], false);
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr.contains("guest protocol violation")
            && out.stderr.contains("exit frame before the ready frame"),
        "{}",
        out.show()
    );
}

/// A frame that announces 2 GiB is refused from its header: no allocation,
/// no waiting for the rest.
#[test]
fn hostile_guest_oversized_frame_is_refused() {
    let vm = Vm::new();
    let huge = "$B/printf '\\021\\377\\377\\377\\177xx' >&3; ";
    let out = vm.hostile(&format!("{SETUP}{READY}{huge}{HANG}"), &[], &[], false);
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr.contains("guest protocol violation")
            && out
                .stderr
                .contains("2147483647 bytes, over its 32768-byte limit"),
        "{}",
        out.show()
    );
}

/// A guest that prints on its console without end (and never reports)
/// costs the host a bounded ring in memory, not disk: the error shows the
/// last lines, says the console was cut, and carries no escape sequence
/// from the guest to the user's terminal.
#[test]
fn hostile_guest_console_flood_is_bounded() {
    let vm = Vm::new();
    let script = format!(
        "{SETUP}while :; do printf 'flood \\033]0;owned\\007 line of the hostile guest console\\n'; done >/dev/console"
    );
    let out = vm.hostile(&script, &[], &[("AMPHI_VM_BOOT_TIMEOUT", "15")], false);
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr.contains("did not come up within 15 s"),
        "{}",
        out.show()
    );
    assert!(
        out.stderr
            .contains("last lines of the guest console (cut: ")
            && out.stderr.contains("only the last 64 KiB are kept")
            && out.stderr.contains("line of the hostile guest console"),
        "{}",
        out.show()
    );
    assert!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\x07'),
        "no escape sequence reaches the terminal: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.len() < 16 * 1024,
        "the error shows a bounded tail ({} bytes)",
        out.stderr.len()
    );
}

/// `amphi compare` used `/tmp/amphi-compare-PID.{container,vm}` as root: a
/// local user who planted a symlink there (and re-planted it after amphi
/// removed it) had the run report written through it. The reports now go
/// to a private mkdtemp directory (0700) and the predictable names are
/// never touched.
#[test]
fn compare_temp_files_follow_no_planted_symlink() {
    let a = Amphi::new();
    a.load_test_image("busybox", IMG);
    let tmp = tempfile::tempdir().unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let mut c = Command::new(amphi_bin());
    c.args([
        "compare",
        "--kernel",
        "/nonexistent/kernel",
        IMG,
        "echo",
        "hi",
    ])
    .env("AMPHI_ROOT", a.root())
    .env("TMPDIR", tmp.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    // The attacker: keeps symlinks at the old predictable paths, and looks
    // at what amphi makes in the temp directory.
    let pid = child.id();
    let traps: Vec<PathBuf> = ["container", "vm"]
        .iter()
        .map(|iso| tmp.path().join(format!("amphi-compare-{pid}.{iso}")))
        .collect();
    let mut seen = Vec::new();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        d.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    });
    let started = Instant::now();
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        for t in &traps {
            let _ = std::os::unix::fs::symlink(&victim, t);
        }
        for e in fs::read_dir(tmp.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("amphi-compare-{pid}.")) {
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = fs::symlink_metadata(e.path()) {
                seen.push((name, m.is_dir(), m.permissions().mode() & 0o7777));
            }
        }
        assert!(started.elapsed() < RUN_LIMIT, "amphi compare did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = waiter.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The VM side cannot start (no such kernel): compare says so, after
    // the container side ran and wrote its report.
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&victim).unwrap()),
        "precious\n",
        "the victim file is untouched; amphi compare said:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("the vm run failed"), "{stderr}");
    seen.sort();
    seen.dedup();
    assert!(
        !seen.is_empty(),
        "amphi's private directory was seen while it ran"
    );
    for (name, is_dir, mode) in &seen {
        assert!(
            name.starts_with("amphi-compare-") && *is_dir && *mode == 0o700,
            "only a private 0700 directory is made in TMPDIR, not {name} (dir {is_dir}, mode {mode:o})"
        );
    }
    for t in &traps {
        let _ = fs::remove_file(t);
    }
    assert!(
        dir_names(tmp.path()).is_empty(),
        "compare removed its directory"
    );
}
