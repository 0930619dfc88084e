//! `amphi run --isolation vm`, end to end with the busybox test image: the
//! workload in a microVM with amphi's own guest kernel (from the machine's
//! build cache, registered into an empty catalog on first use). On our PVM
//! machines the guest kernel is not PVM-enabled, so the runs go through QEMU
//! in software emulation (TCG): about 2 to 4 s a boot, so each test packs
//! several checks into one run.
//!
//! Every run gets a private store (`AMPHI_ROOT`), state root (`AMPHI_STATE`,
//! where the run directory `vm/<id>/` lives) and `TMPDIR`, and after every
//! run (failed ones and the timeout included) [`Env::assert_clean`] checks
//! that nothing is left: no backend process (QEMU or `amphi vmm`) or any
//! other process that mentions those directories, no run directory, no
//! temp file, no mount.
//!
//! Without the kernel builds (scripts/test runs `amphi kernel build
//! --version 6.12` and `--version 6.1`) or QEMU, the tests skip loudly
//! (fail in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{amphi_bin, dir_names, have, processes_mentioning, skip, test_image, Amphi};
use serde_json::Value;
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMG: &str = "localhost/demo/busybox:latest";

/// How long one VM run may take before the test gives up on it (amphi's
/// own boot watchdog is 120 s).
const RUN_LIMIT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------
// Guest kernels from the machine's build cache (as in tests/kernel.rs).

/// amphi's finished build of one kernel series.
#[derive(Clone, Debug)]
struct Build {
    dir: PathBuf,
    /// The kernel release it reports (`uname -r` in the guest).
    version: String,
}

/// The machine's finished build of `series`, or None (with a loud skip).
fn cached_build(series: &str) -> Option<Build> {
    amphi_tests::guest_kernel_build(series).map(|(dir, version)| Build { dir, version })
}

fn host_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------
// Running amphi.

/// What one `amphi run` did.
struct Run {
    /// The command line, for messages.
    what: String,
    /// Exit code (None: amphi itself was killed by a signal).
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    /// stderr without amphi's own notice lines (`amphi: ...`).
    stderr: String,
    /// stderr as printed.
    raw_stderr: String,
    took: Duration,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "amphi {}\nexit code {:?} (signal {:?}) after {:.1} s\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.code,
            self.signal,
            self.took.as_secs_f64(),
            self.stdout,
            self.raw_stderr
        )
    }

    /// Asserts the exit code, showing everything when it differs.
    fn expect_code(&self, want: i32) -> &Run {
        assert_eq!(self.code, Some(want), "wrong exit status:\n{}", self.show());
        assert!(
            !self.raw_stderr.contains("panicked at"),
            "amphi panicked:\n{}",
            self.show()
        );
        self
    }
}

/// An `amphi` process the test started.
struct Running {
    what: String,
    child: Child,
    out: File,
    err: File,
    /// amphi's stdin, held open until it exits ([`Input::Open`]).
    keep: Option<std::process::ChildStdin>,
    started: Instant,
}

impl Running {
    /// Waits for amphi to exit (within [`RUN_LIMIT`]).
    fn finish(mut self) -> Run {
        let st = wait_limited(
            &mut self.child,
            &self.what,
            &mut self.err,
            Some(&mut self.out),
        );
        let took = self.started.elapsed();
        drop(self.keep.take());
        let raw_stderr = read_all(&mut self.err);
        Run {
            what: self.what.clone(),
            code: st.code(),
            signal: st.signal(),
            stdout: read_all(&mut self.out),
            stderr: workload_stderr(&raw_stderr),
            raw_stderr,
            took,
        }
    }
}

impl Drop for Running {
    /// A test that gives up on a run (a failed assertion) does not leave
    /// amphi running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Drops the lines amphi itself prints (`amphi: notice: ...` and the like).
fn workload_stderr(raw: &str) -> String {
    raw.split_inclusive('\n')
        .filter(|l| !l.starts_with("amphi: "))
        .collect()
}

fn read_all(file: &mut File) -> String {
    let mut buf = Vec::new();
    file.rewind().unwrap();
    file.read_to_end(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// What amphi's stdin is.
enum Input<'a> {
    Null,
    /// A pipe: these bytes, then EOF.
    Closed(&'a [u8]),
    /// A pipe: these bytes, and the pipe stays open until amphi exits.
    Open(&'a [u8]),
}

/// Waits for `child` up to [`RUN_LIMIT`]; kills it and panics when it
/// takes longer.
fn wait_limited(
    child: &mut Child,
    what: &str,
    err: &mut File,
    out: Option<&mut File>,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            // What amphi and its children were doing, for the hang's cause.
            let tree = Command::new("ps")
                .args(["-o", "pid,stat,wchan:24,etime,args", "--ppid"])
                .arg(child.id().to_string())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "amphi {what} did not end within {RUN_LIMIT:?}; its children:\n{tree}\nstdout:\n{}\nstderr:\n{}",
                out.map(read_all).unwrap_or_default(),
                read_all(err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The busybox image in a private store, with a private state root and
/// TMPDIR for amphi; the kernel builds it may use.
struct Env {
    a: Amphi,
    state: tempfile::TempDir,
    tmp: tempfile::TempDir,
    k612: Build,
}

impl Env {
    /// None (after a loud skip) when the kernel build or QEMU is missing.
    fn new() -> Option<Env> {
        let k612 = cached_build("6.12")?;
        if !have("qemu-system-x86_64") {
            skip("qemu-system-x86_64 is not installed (scripts/setup installs it): no microVM runs without hardware KVM");
            return None;
        }
        let a = Amphi::new();
        a.ok(&["load", "-q", "--tag", IMG, s(&test_image("busybox"))]);
        Some(Env {
            a,
            state: tempfile::Builder::new()
                .prefix("amphi-vmstate-")
                .tempdir()
                .unwrap(),
            tmp: tempfile::Builder::new()
                .prefix("amphi-vmtmp-")
                .tempdir()
                .unwrap(),
            k612,
        })
    }

    /// `amphi ARGS` against this store and state root, with this TMPDIR.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.a.cmd(args);
        c.env("AMPHI_STATE", self.state.path())
            .env("TMPDIR", self.tmp.path());
        c
    }

    /// `amphi run --rm --isolation vm FLAGS IMG CMD...` with stdin null.
    fn vm(&self, flags: &[&str], cmd: &[&str]) -> Run {
        self.vm_with(&[], flags, cmd, Input::Null)
    }

    fn args<'a>(flags: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--rm", "--isolation", "vm"];
        args.extend_from_slice(flags);
        args.push(IMG);
        args.extend_from_slice(cmd);
        args
    }

    /// A VM run with extra environment for amphi and a given stdin; checks
    /// afterwards that the run left nothing behind.
    fn vm_with(&self, envs: &[(&str, &str)], flags: &[&str], cmd: &[&str], input: Input) -> Run {
        let args = Self::args(flags, cmd);
        let run = self.amphi(envs, &args, input);
        self.assert_clean(&run.what);
        run
    }

    /// Runs `amphi ARGS` to completion (within [`RUN_LIMIT`]).
    fn amphi(&self, envs: &[(&str, &str)], args: &[&str], input: Input) -> Run {
        self.start(envs, args, input).finish()
    }

    /// Starts `amphi ARGS`.
    fn start(&self, envs: &[(&str, &str)], args: &[&str], input: Input) -> Running {
        let what = args.join(" ");
        let mut c = self.cmd(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        c.stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap());
        c.stdin(match input {
            Input::Null => Stdio::null(),
            _ => Stdio::piped(),
        });
        let started = Instant::now();
        let mut child = c.spawn().unwrap();
        let mut keep = None;
        match input {
            Input::Null => {}
            Input::Closed(b) => {
                let mut w = child.stdin.take().unwrap();
                // The workload may end before reading it all: EPIPE is fine.
                let _ = w.write_all(b);
            }
            Input::Open(b) => {
                let mut w = child.stdin.take().unwrap();
                let _ = w.write_all(b);
                keep = Some(w);
            }
        }
        Running {
            what,
            child,
            out,
            err,
            keep,
            started,
        }
    }

    /// A run that amphi must refuse (125) without starting anything.
    fn refused(&self, flags: &[&str], cmd: &[&str]) -> Run {
        let run = self.vm(flags, cmd);
        run.expect_code(125);
        assert!(
            run.raw_stderr.contains("amphi: error: "),
            "no error message:\n{}",
            run.show()
        );
        run
    }

    /// The directories that tie a process or file to this test.
    /// Waits until `running`'s backend process and run directory are
    /// there; returns the backend's "PID: command line".
    fn wait_for_backend(&self, running: &Running) -> String {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let procs = processes_mentioning(&self.ours());
            let backend = procs
                .iter()
                .find(|p| p.contains("qemu-system") || p.contains(" vmm "))
                .cloned();
            if let Some(b) =
                backend.filter(|_| !dir_names(&self.state.path().join("vm")).is_empty())
            {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "no backend process or run directory seen while `amphi {}` ran: {procs:?}",
                running.what
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ours(&self) -> [String; 3] {
        [
            s(self.a.root()).to_string(),
            s(self.state.path()).to_string(),
            s(self.tmp.path()).to_string(),
        ]
    }

    /// Nothing is left of the last run: no process that mentions this test's
    /// store, state root or TMPDIR in its command line or environment (the
    /// backend, QEMU or `amphi vmm`, or any helper), no run directory under
    /// the state root's `vm/`, no temp files (amphi's TMPDIR, the store's
    /// tmp/), no container layers, no mounts.
    fn assert_clean(&self, what: &str) {
        let ours = self.ours();
        // A process killed just now may take a moment to be reaped by
        // whoever is its parent; a live one with our paths after that is a leak.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = processes_mentioning(&ours);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "after `amphi {what}`: processes left behind:\n{}",
                    left.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let state: Vec<String> = dir_names(self.state.path())
            .into_iter()
            .filter(|n| n != "vm")
            .collect();
        assert!(
            state.is_empty(),
            "after `amphi {what}`: state left in {}: {state:?}",
            self.state.path().display()
        );
        let vm = dir_names(&self.state.path().join("vm"));
        assert!(
            vm.is_empty(),
            "after `amphi {what}`: run directories left in {}/vm: {vm:?}",
            self.state.path().display()
        );
        let tmp = dir_names(self.tmp.path());
        assert!(
            tmp.is_empty(),
            "after `amphi {what}`: temp files left in amphi's TMPDIR: {tmp:?}"
        );
        let store_tmp = dir_names(&self.a.root().join("tmp"));
        assert!(
            store_tmp.is_empty(),
            "after `amphi {what}`: temp files left in the store's tmp/: {store_tmp:?}"
        );
        let containers = dir_names(&self.a.root().join("containers"));
        assert!(
            containers.is_empty(),
            "after `amphi {what}`: container layers left: {containers:?}"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for p in &ours {
            assert!(
                !mounts.contains(p.as_str()),
                "after `amphi {what}`: a mount is left under {p}"
            );
        }
    }

    /// `amphi kernel ls --json`.
    fn catalog(&self) -> Vec<Value> {
        let out = self.a.ok(&["kernel", "ls", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap_or_else(|e| panic!("kernel ls --json: {e}: {out}"))
            .as_array()
            .unwrap()
            .clone()
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// An empty catalog gets amphi's own kernels from the build cache; the
/// newest (6.12) is the default. The workload's stdout and stderr come
/// through separately, and its exit status is amphi's. A small image boots
/// from an initramfs.
#[test]
fn default_kernel_stdio_and_exit_status() {
    let Some(e) = Env::new() else { return };
    assert!(e.catalog().is_empty(), "a fresh store has no kernels");
    let run = e.vm(
        &[],
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; uname -r; cat /proc/cmdline; seq 1 20000; echo err2 >&2; exit 7",
        ],
    );
    run.expect_code(7);
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("out"), "{}", run.show());
    let release = lines.next().unwrap_or_default();
    assert_eq!(
        release,
        e.k612.version,
        "uname -r in the guest is the default (newest) guest kernel:\n{}",
        run.show()
    );
    assert_ne!(release, host_release(), "uname -r must not be the host's");
    let cmdline = lines.next().unwrap_or_default();
    assert!(
        cmdline
            .split_whitespace()
            .any(|w| w == "amphi.root=initramfs"),
        "the small busybox image boots from an initramfs; guest /proc/cmdline: {cmdline:?}\n{}",
        run.show()
    );
    // Bulk output through the guest channel, intact and in order.
    let seq: Vec<&str> = lines.collect();
    let want: Vec<String> = (1..=20000).map(|i| i.to_string()).collect();
    assert!(
        seq == want,
        "seq 1 20000 came out wrong ({} lines, first {:?}, last {:?})",
        seq.len(),
        seq.first(),
        seq.last()
    );
    assert_eq!(
        run.stderr,
        "err\nerr2\n",
        "the workload's stderr, exactly (amphi's own lines removed):\n{}",
        run.show()
    );
    assert!(
        !run.stdout.contains("err"),
        "stderr leaked into stdout:\n{}",
        run.show()
    );

    // The kernels were registered from the build cache, newest first.
    let catalog = e.catalog();
    let versions: Vec<&str> = catalog
        .iter()
        .map(|k| k["version"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        versions.first().copied(),
        Some(e.k612.version.as_str()),
        "catalog after the run: {catalog:?}"
    );
    match cached_build_quiet("6.1") {
        Some(k61) => assert!(
            versions.contains(&k61.version.as_str()),
            "the cached 6.1 build is registered too: {versions:?}"
        ),
        // Strict mode (CI) builds both series: the check must run there.
        None => assert!(
            !amphi_tests::strict(),
            "guest kernel 6.1 is not built: run `amphi kernel build --version 6.1` (scripts/test does)"
        ),
    }

    // A plain exit 0, and a workload that prints nothing.
    let run = e.vm(&[], &["true"]);
    run.expect_code(0);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", ""),
        "{}",
        run.show()
    );
}

/// [`cached_build`] without the skip message.
fn cached_build_quiet(series: &str) -> Option<Build> {
    amphi_tests::guest_kernel_build_quiet(series).map(|(dir, version)| Build { dir, version })
}

/// -e, -w and -u as natively; --memory and --cpus become the container's
/// cgroup v2 limits inside the guest (the container sees its own cgroup
/// namespace root).
#[test]
fn env_workdir_user_and_cgroup_limits() {
    let Some(e) = Env::new() else { return };
    let run = e.vm(
        &[
            "-e",
            "FOO=bar",
            "-e",
            "SPACED=a b",
            "-w",
            "/data/x",
            "-u",
            "amphi",
            "--memory",
            "128m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
        ],
        &[
            "sh",
            "-c",
            "echo \"$FOO|$SPACED|$HOME\"; pwd; id -u; id -g; cat /sys/fs/cgroup/memory.max; cat /sys/fs/cgroup/cpu.max; cat /sys/fs/cgroup/pids.max; uname -r",
        ],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        format!(
            "bar|a b|/home/amphi\n/data/x\n1000\n1000\n134217728\n50000 100000\n20\n{}\n",
            e.k612.version
        ),
        "env | pwd | id -u | id -g | memory.max | cpu.max | pids.max | uname -r:\n{}",
        run.show()
    );
    assert_eq!(run.stderr, "", "{}", run.show());

    // Numeric uid:gid, and root by default.
    let run = e.vm(&["-u", "1234:56"], &["sh", "-c", "id -u; id -g"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "1234\n56\n", "{}", run.show());
}

/// The exit status is 128+N when the workload is killed by signal N;
/// signals sent to amphi reach the workload.
#[test]
fn signals_give_128_plus_n() {
    let Some(e) = Env::new() else { return };
    // With --init the shell is not PID 1 of its namespace, so its own
    // SIGTERM kills it (a PID 1 would ignore it, natively too).
    let run = e.vm(&["--init"], &["sh", "-c", "kill -TERM $$; sleep 5"]);
    run.expect_code(143);

    // The guest kernel's OOM killer (SIGKILL) on a container over its limit.
    let run = e.vm(
        &["--memory", "16m"],
        &[
            "sh",
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    run.expect_code(137);
    assert!(!run.stdout.contains("survived"), "{}", run.show());
    assert!(
        run.raw_stderr.contains("OOM"),
        "the OOM kill is reported:\n{}",
        run.show()
    );

    // SIGTERM to amphi is forwarded to the workload, which traps it.
    let args = Env::args(
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    let what = args.join(" ");
    let mut err = tempfile::tempfile().unwrap();
    let mut child = e
        .cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 6];
        let r = out.read_exact(&mut buf).map(|_| buf);
        let _ = tx.send(r);
        // Keep draining so the workload never blocks on a full pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(Ok(buf)) if &buf == b"ready\n" => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "amphi {what}: no \"ready\" from the workload ({other:?}); stderr:\n{}",
                read_all(&mut err)
            );
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_limited(&mut child, &what, &mut err, None);
    assert_eq!(
        st.code(),
        Some(42),
        "SIGTERM reaches the workload's trap ({st}); stderr:\n{}",
        read_all(&mut err)
    );
    e.assert_clean(&what);
}

/// stdin goes to the workload with -i; without it the workload reads an
/// empty stdin (/dev/null), whatever amphi's own stdin holds.
#[test]
fn stdin_only_with_i() {
    let Some(e) = Env::new() else { return };
    let run = e.vm_with(&[], &["-i"], &["cat"], Input::Closed(b"hello\n"));
    run.expect_code(0);
    assert_eq!(run.stdout, "hello\n", "{}", run.show());

    // amphi's stdin stays open with data in it: the workload must neither
    // see the data nor wait for it.
    let run = e.vm_with(
        &[],
        &[],
        &["sh", "-c", "cat; echo done"],
        Input::Open(b"secret\n"),
    );
    run.expect_code(0);
    assert_eq!(run.stdout, "done\n", "{}", run.show());
}

/// -t gives the workload a terminal when amphi has one.
#[test]
fn tty_gives_a_terminal() {
    let Some(e) = Env::new() else { return };
    if !have("script") {
        skip("script(1) missing: cannot give amphi a terminal");
        return;
    }
    // script(1) gives amphi a terminal of 30x100; /dev/console is the
    // same terminal (its size is the one read).
    let inner = format!(
        "stty rows 30 cols 100; {} run --rm -t --isolation vm {IMG} sh -c 'test -t 0 && test -t 1 && echo tty; stty size </dev/console'",
        amphi_bin().display()
    );
    let (st, text, err) = in_script(&e, &inner);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(
        lines.contains(&"tty"),
        "the workload's stdin and stdout are a terminal ({st}):\n{text}\n--- stderr\n{err}"
    );
    assert!(
        lines.contains(&"30 100"),
        "the terminal size follows amphi's terminal ({st}):\n{text}"
    );
    assert_eq!(st.code(), Some(0), "{text}");
    e.assert_clean("run -t in script(1)");
}

/// Runs `inner` with script(1) giving it a terminal, with this test's
/// store, state root and TMPDIR: (status, what it printed, its stderr).
fn in_script(e: &Env, inner: &str) -> (std::process::ExitStatus, String, String) {
    let what = format!("script -qec {inner:?}");
    let mut err = tempfile::tempfile().unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let mut child = Command::new("script")
        .args(["-qec", inner, "/dev/null"])
        .env("AMPHI_ROOT", e.a.root())
        .env("AMPHI_STATE", e.state.path())
        .env("TMPDIR", e.tmp.path())
        // A stdin that stays open: at EOF script(1) would type a character
        // into the terminal.
        .stdin(Stdio::piped())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let st = wait_limited(&mut child, &what, &mut err, None);
    drop(stdin);
    (st, read_all(&mut out), read_all(&mut err))
}

/// A rootfs over the initramfs limit goes on a read-only block device with
/// a writable overlay; writes do not reach the shared image.
#[test]
fn large_rootfs_takes_the_block_path() {
    let Some(e) = Env::new() else { return };
    // Over the threshold the automatic rule takes virtio-fs (see
    // debian_minbase_runs_apt_over_virtio_fs); the block path is asked for.
    let force = [("AMPHI_VM_INITRAMFS_MAX", "1")];
    let run = e.vm_with(
        &force,
        &["--vm-rootfs", "block"],
        &[
            "sh",
            "-c",
            "cat /proc/cmdline; test -x /bin/busybox && echo rootfs-ok; echo hi > /written && cat /written",
        ],
        Input::Null,
    );
    run.expect_code(0);
    let mut lines = run.stdout.lines();
    let cmdline = lines.next().unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    assert!(
        words.contains(&"amphi.root=vda") && !words.contains(&"amphi.root=initramfs"),
        "AMPHI_VM_INITRAMFS_MAX=1 puts the image on the block path; guest /proc/cmdline: {cmdline:?}\n{}",
        run.show()
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["rootfs-ok", "hi"],
        "the image's files are there and the root is writable:\n{}",
        run.show()
    );

    // Again, from the cached block image: the last run's write is gone.
    let run = e.vm_with(
        &force,
        &["--vm-rootfs", "block"],
        &["sh", "-c", "cat /proc/cmdline; test -e /written; echo $?"],
        Input::Null,
    );
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].split_whitespace().any(|w| w == "amphi.root=vda"),
        "{}",
        run.show()
    );
    assert_eq!(
        lines[1],
        "1",
        "a write in one run must not reach the shared block image:\n{}",
        run.show()
    );
}

/// --kernel picks a catalog kernel by series, or boots a kernel file.
#[test]
fn kernel_by_series_and_by_path() {
    let Some(e) = Env::new() else { return };
    let Some(k61) = cached_build("6.1") else {
        return;
    };
    let run = e.vm(
        &["--kernel", "6.1", "--vm-backend", "qemu"],
        &["uname", "-r"],
    );
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), k61.version, "{}", run.show());

    // A kernel file (a bzImage, under a name that says nothing).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-kernel");
    fs::copy(k61.dir.join("bzImage"), &file).unwrap();
    let run = e.vm(&["--kernel", s(&file)], &["uname", "-r"]);
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), k61.version, "{}", run.show());
}

/// Kernels that cannot be used are refused with 125 and an error that says
/// which file and what is wrong with it.
#[test]
fn bad_kernels_are_refused_clearly() {
    let Some(e) = Env::new() else { return };
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no-such-kernel");
    let run = e.refused(&["--kernel", s(&missing)], &["true"]);
    let err = run.raw_stderr.to_lowercase();
    assert!(
        run.raw_stderr.contains(s(&missing))
            && (err.contains("does not exist") || err.contains("no such file")),
        "the error names the missing file:\n{}",
        run.show()
    );

    let text = dir.path().join("notes.txt");
    fs::write(&text, "just some text\n".repeat(100)).unwrap();
    let run = e.refused(&["--kernel", s(&text)], &["true"]);
    assert!(
        run.raw_stderr.contains(s(&text))
            && (run.raw_stderr.contains("not a kernel")
                || run
                    .raw_stderr
                    .contains("neither an ELF vmlinux nor a bzImage")),
        "the error says the file is not a kernel image:\n{}",
        run.show()
    );

    for file in ["vmlinux", "bzImage"] {
        let data = fs::read(e.k612.dir.join(file)).unwrap();
        let cut = dir.path().join(format!("{file}-half"));
        fs::write(&cut, &data[..data.len() / 2]).unwrap();
        let run = e.refused(&["--kernel", s(&cut)], &["true"]);
        assert!(
            run.raw_stderr.contains(s(&cut))
                && (run.raw_stderr.contains("truncated") || run.raw_stderr.contains("console")),
            "the error names the broken kernel and says it is truncated (or shows the console):\n{}",
            run.show()
        );
        assert!(
            run.took < Duration::from_secs(150),
            "a broken kernel is found out in time:\n{}",
            run.show()
        );
    }

    // A catalog query that matches nothing.
    let run = e.refused(&["--kernel", "5.10"], &["true"]);
    assert!(run.raw_stderr.contains("5.10"), "{}", run.show());
}

/// --timeout stops a workload that runs too long: 124, an error that says
/// so, and nothing left running.
#[test]
fn timeout_stops_the_workload() {
    let Some(e) = Env::new() else { return };
    let args = Env::args(&["--timeout", "5"], &["sleep", "1000"]);
    let running = e.start(&[], &args, Input::Null);
    // While it runs, the backend and the run directory are there, and the
    // cleanup check sees them (so its "nothing left" means something).
    let backend = e.wait_for_backend(&running);
    let run = running.finish();
    e.assert_clean(&run.what);
    run.expect_code(124);
    assert!(
        run.raw_stderr.to_lowercase().contains("timeout"),
        "the error mentions the timeout:\n{}",
        run.show()
    );
    assert!(
        run.took < Duration::from_secs(60),
        "a 5 s timeout ends the run well within a minute:\n{}",
        run.show()
    );
    assert!(
        run.took >= Duration::from_secs(5),
        "the workload got its 5 s:\n{}",
        run.show()
    );
    assert!(
        !processes_mentioning(&e.ours())
            .iter()
            .any(|p| p == &backend),
        "the backend ({backend}) is gone"
    );
}

/// A guest kernel that panics before the guest init reports (here: told
/// to start an init that does not exist) is a clear host-side error with
/// the last lines of the guest console, and leaves nothing behind.
#[test]
fn a_guest_kernel_panic_shows_the_console() {
    let Some(e) = Env::new() else { return };
    let run = e.vm_with(
        &[("AMPHI_VM_CMDLINE_EXTRA", "rdinit=/no-such-init")],
        &[],
        &["true"],
        Input::Null,
    );
    run.expect_code(125);
    assert!(
        run.raw_stderr.contains("the guest kernel panicked")
            && run.raw_stderr.contains("last lines of the guest console")
            && run.raw_stderr.contains("Kernel panic"),
        "{}",
        run.show()
    );
}

/// `kill -9` of the client during a microVM run: the backend dies with it
/// (PR_SET_PDEATHSIG), the run directory it leaves is stale (its lock is
/// no longer held), and `amphi gc` removes it; nothing is left after.
#[test]
fn kill_9_of_the_client_leaves_nothing_after_gc() {
    let Some(e) = Env::new() else { return };
    let args = Env::args(&[], &["sleep", "1000"]);
    let mut running = e.start(&[], &args, Input::Null);
    let backend = e.wait_for_backend(&running);
    // A live run is not touched by gc.
    let gc = e.cmd(&["gc"]).output().unwrap();
    assert!(gc.status.success(), "{gc:?}");
    assert!(
        !dir_names(&e.state.path().join("vm")).is_empty(),
        "gc left the live run's directory alone"
    );
    running.child.kill().unwrap();
    let st = running.child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    // The backend dies with its client.
    let gone_by = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(&e.ours()).contains(&backend) {
        assert!(
            Instant::now() < gone_by,
            "the backend ({backend}) outlived its client"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = dir_names(&e.state.path().join("vm"));
    assert_eq!(left.len(), 1, "the killed client left its run directory");
    let gc = e.cmd(&["gc"]).output().unwrap();
    let err = String::from_utf8_lossy(&gc.stderr);
    assert!(gc.status.success(), "{gc:?}");
    assert!(
        err.contains("removed stale microVM run directory") && err.contains(&left[0]),
        "gc says what it removed: {err}"
    );
    e.assert_clean("run (client killed) + gc");
}

// --- the monitor's jail (QEMU here; amphi's VMM: tests/vmm_jail.rs) ---

/// `/proc/<pid>/status` as name → value.
fn proc_status(pid: u32) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// While a workload runs, QEMU is what its jail makes it: the run's own
/// user, no effective or permitted capability (its bounding set keeps only
/// what `-runas` and `-chroot` needed), QEMU's seccomp sandbox on every
/// thread, no_new_privs, the run's empty `jail/` as its root, mount and
/// net namespaces of its own, and its own cgroup; afterwards the cgroup is
/// gone with the rest.
#[test]
fn qemu_runs_jailed() {
    use std::os::unix::fs::MetadataExt;
    let Some(e) = Env::new() else { return };
    if !amphi_tests::is_root() {
        skip("QEMU's jail needs root (namespaces, users, cgroups): not tested");
        return;
    }
    // What explain says the jail will be.
    let explain = e
        .cmd(&["explain", "--isolation", "vm", IMG])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{explain:?}");
    for want in [
        "monitor jail (QEMU microvm",
        "user: its own uid and gid",
        "namespaces: its own pid, mount, ipc, uts and net",
        "seccomp: QEMU's -sandbox on,obsolete=deny,",
        "cgroup: amphi-vmm/<id>",
    ] {
        assert!(text.contains(want), "explain lacks {want:?}:\n{text}");
    }
    // --init: the shell is not PID 1 of its container, so SIGTERM ends it.
    let args = Env::args(&["--init"], &["sh", "-c", "echo ready; sleep 60"]);
    let running = e.start(&[], &args, Input::Null);
    let backend = e.wait_for_backend(&running);
    assert!(backend.contains("qemu-system"), "{backend}");
    let pid: u32 = backend.split(':').next().unwrap().trim().parse().unwrap();
    // The user changes just before the guest starts.
    let deadline = Instant::now() + RUN_LIMIT;
    let st = loop {
        let st = proc_status(pid);
        if st.get("Uid").is_some_and(|u| !u.starts_with("0\t")) {
            break st;
        }
        assert!(Instant::now() < deadline, "QEMU never left root: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for k in ["Uid", "Gid"] {
        for id in st[k].split_whitespace() {
            let id: u64 = id.parse().unwrap();
            assert!(id >= 2_000_000_000, "{k} {}", st[k]);
        }
    }
    for k in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(st[k], "0000000000000000", "{k}");
    }
    // CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT: bits 6, 7 and 18.
    assert_eq!(st["CapBnd"], "00000000000400c0");
    assert_eq!(st["NoNewPrivs"], "1");
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = fs::read_to_string(t.join("comm")).unwrap();
        if name.starts_with("kvm-") {
            continue;
        }
        let ts = fs::read_to_string(t.join("status")).unwrap();
        assert!(ts.contains("\nSeccomp:\t2\n"), "thread {name}: {ts}");
    }
    let run_dir = e
        .state
        .path()
        .join("vm")
        .join(&dir_names(&e.state.path().join("vm"))[0]);
    let jail = run_dir.join("jail");
    let root = fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let dir = fs::metadata(&jail).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (dir.dev(), dir.ino()),
        "QEMU's root is {}",
        jail.display()
    );
    assert_eq!(
        fs::read_dir(format!("/proc/{pid}/root/")).unwrap().count(),
        0
    );
    for ns in ["mnt", "net", "ipc", "uts"] {
        let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "QEMU shares the host's {ns} namespace");
    }
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("/amphi-vmm/{id}")), "{cgroup}");

    // SAFETY: signalling our own child (amphi), which forwards it.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    running.finish().expect_code(143);
    e.assert_clean("run (QEMU jailed)");
    for c in ["memory", "pids", ""] {
        let d = Path::new("/sys/fs/cgroup")
            .join(c)
            .join("amphi-vmm")
            .join(&id);
        assert!(!d.exists(), "{} is left", d.display());
    }

    // The run report says what jailed the monitor.
    let report = tempfile::NamedTempFile::new().unwrap();
    let env = [("AMPHI_RUN_REPORT", report.path().to_str().unwrap())];
    e.vm_with(&env, &[], &["true"], Input::Null).expect_code(0);
    let r: Value = serde_json::from_str(&fs::read_to_string(report.path()).unwrap()).unwrap();
    let lines: Vec<&str> = r["monitor_protections"]
        .as_array()
        .unwrap_or_else(|| panic!("no monitor_protections: {r}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("seccomp: QEMU's -sandbox")),
        "{r}"
    );
}

// --- virtio-fs: volumes and the image's rootfs shared from the host ---

/// Every virtiofsd of this test's runs ("PID: command line").
fn virtiofsds(e: &Env) -> Vec<String> {
    processes_mentioning(&e.ours())
        .into_iter()
        .filter(|p| p.contains("virtiofsd"))
        .collect()
}

/// `-v` shares host directories and files into the microVM: the bytes
/// read are the host's, a write to a read-write volume is on the host
/// afterwards (owned by the guest's uid and gid, root here, as a native
/// bind mount gives), a write to a `:ro` volume fails in the guest and
/// never reaches the host, and a file volume is a file.
#[test]
fn volumes_are_shared_with_virtio_fs() {
    let Some(e) = Env::new() else { return };
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    // 200 KiB of varied bytes: more than one FUSE read.
    let data: Vec<u8> = (0..200 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    fs::write(rw.path().join("data"), &data).unwrap();
    fs::write(ro.path().join("keep"), "read-only\n").unwrap();
    let conf = ro.path().join("app.conf");
    fs::write(&conf, "setting=1\n").unwrap();
    let vrw = format!("{}:/work", rw.path().display());
    let vro = format!("{}:/ro:ro", ro.path().display());
    let vfile = format!("{}:/etc/app.conf:ro", conf.display());
    let script = "md5sum /work/data | cut -d' ' -f1; cat /ro/keep /etc/app.conf; \
                  echo from-guest > /work/out && echo wrote; \
                  touch /ro/new 2>&1 && echo ro-written; \
                  if { echo x >> /etc/app.conf; } 2>/dev/null; then echo file-written; fi";
    let run = e.vm(
        &["-v", &vrw, "-v", &vro, "-v", &vfile],
        &["sh", "-c", script],
    );
    run.expect_code(0);
    let want_md5 = {
        let out = Command::new("md5sum")
            .arg(rw.path().join("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(want_md5.as_str()),
        "the guest reads the host file's bytes:\n{}",
        run.show()
    );
    assert_eq!(
        lines.get(1..4),
        Some(&["read-only", "setting=1", "wrote"][..]),
        "{}",
        run.show()
    );
    let err = lines.get(4).copied().unwrap_or_default();
    assert!(
        err.contains("Read-only file system") || err.contains("Permission denied"),
        "a write to a :ro volume fails with EROFS or EACCES:\n{}",
        run.show()
    );
    assert!(
        !run.stdout.contains("ro-written") && !run.stdout.contains("file-written"),
        "{}",
        run.show()
    );
    assert!(
        !ro.path().join("new").exists(),
        "the :ro write reached the host"
    );
    assert_eq!(fs::read_to_string(&conf).unwrap(), "setting=1\n");
    let out = rw.path().join("out");
    assert_eq!(fs::read_to_string(&out).unwrap(), "from-guest\n");
    let md = fs::metadata(&out).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (md.uid(), md.gid()),
        (0, 0),
        "the guest's root writes as root"
    );
}

/// Symlinks in a volume resolve in the guest, as in a native container:
/// an absolute or climbing link to a host file outside the volume does
/// not reach it, neither to read nor to write.
#[test]
fn volume_symlinks_do_not_reach_outside_the_volume() {
    let Some(e) = Env::new() else { return };
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, "HOST-SECRET\n").unwrap();
    let vol = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&secret, vol.path().join("abs")).unwrap();
    let depth = vol.path().components().count();
    let climb = format!(
        "{}{}",
        "../".repeat(depth + 2),
        s(&secret).trim_start_matches('/')
    );
    std::os::unix::fs::symlink(&climb, vol.path().join("rel")).unwrap();
    std::os::unix::fs::symlink("/", vol.path().join("root")).unwrap();
    let v = format!("{}:/work", vol.path().display());
    let run = e.vm(
        &["-v", &v],
        &[
            "sh",
            "-c",
            "cat /work/abs /work/rel /work/root/secret 2>&1; echo owned > /work/abs; echo owned > /work/rel; echo done",
        ],
    );
    run.expect_code(0);
    assert!(
        !run.stdout.contains("HOST-SECRET"),
        "a link in the volume read a host file outside it:\n{}",
        run.show()
    );
    assert!(run.stdout.contains("done"), "{}", run.show());
    assert_eq!(
        fs::read_to_string(&secret).unwrap(),
        "HOST-SECRET\n",
        "a write through a link in the volume reached a host file outside it"
    );
}

/// A missing host path is refused before anything boots.
#[test]
fn a_missing_volume_is_refused_before_boot() {
    let Some(e) = Env::new() else { return };
    let run = e.refused(&["-v", "/no/such/amphi/dir:/work"], &["true"]);
    assert!(
        run.raw_stderr.contains("/no/such/amphi/dir"),
        "the error names the path:\n{}",
        run.show()
    );
    assert!(
        run.took < Duration::from_secs(20),
        "refused before boot, not after: {}",
        run.show()
    );
}

/// `--vm-rootfs virtiofs`: the guest's root is the image's stored layers,
/// shared read-only; nothing is built for the image, writes stay in the
/// guest, and the store's layers are unchanged.
#[test]
fn the_rootfs_over_virtio_fs_builds_nothing_and_keeps_the_store() {
    let Some(e) = Env::new() else { return };
    let layers_before = tree_digest(&e.a.root().join("layers"));
    let script = "cat /proc/cmdline; test -x /bin/busybox && echo rootfs-ok; \
                  echo hi > /written && cat /written; rm /bin/busybox && echo removed";
    let run = e.vm(&["--vm-rootfs", "virtiofs"], &["/bin/sh", "-c", script]);
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|c| c.split_whitespace().any(|w| w == "amphi.root=virtiofs")),
        "{}",
        run.show()
    );
    assert_eq!(lines[1..], ["rootfs-ok", "hi", "removed"], "{}", run.show());
    let built: Vec<String> = dir_names(&e.a.root().join("vm/rootfs"))
        .into_iter()
        .filter(|n| n.ends_with(".cpio") || n.ends_with(".ext4"))
        .collect();
    assert!(built.is_empty(), "a guest rootfs was built: {built:?}");
    assert_eq!(
        tree_digest(&e.a.root().join("layers")),
        layers_before,
        "the guest's writes reached the store's layers"
    );
    let run = e.vm(
        &["--vm-rootfs", "virtiofs"],
        &[
            "/bin/sh",
            "-c",
            "test -e /written; echo $?; test -x /bin/busybox && echo still",
        ],
    );
    run.expect_code(0);
    assert_eq!(run.stdout, "1\nstill\n", "{}", run.show());
}

/// Every path and size under `root` (not following links), for a before /
/// after comparison.
fn tree_digest(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for ent in rd.flatten() {
            let p = ent.path();
            let md = fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), md.len()));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Debian minbase (about 120 MB: over the initramfs limit) runs apt over
/// virtio-fs, and its first run builds no ext4 image.
#[test]
fn debian_minbase_runs_apt_over_virtio_fs() {
    let Some(e) = Env::new() else { return };
    let img = "localhost/demo/minbase:latest";
    e.a.ok(&["load", "-q", "--tag", img, s(&test_image("minbase"))]);
    let args = ["run", "--rm", "--isolation", "vm", img, "apt", "--version"];
    let run = e.amphi(&[("AMPHI_VM_TIMING", "1")], &args, Input::Null);
    e.assert_clean(&run.what);
    run.expect_code(0);
    assert!(run.stdout.starts_with("apt "), "{}", run.show());
    assert!(
        run.raw_stderr.contains("rootfs-kind=virtiofs"),
        "the automatic rule put minbase on virtio-fs:\n{}",
        run.show()
    );
    let ext4: Vec<String> = dir_names(&e.a.root().join("vm/rootfs"))
        .into_iter()
        .filter(|n| n.ends_with(".ext4"))
        .collect();
    assert!(ext4.is_empty(), "an ext4 image was built: {ext4:?}");
}

/// The vhost-user relays of this test's runs ("PID: command line").
fn relays(e: &Env) -> Vec<String> {
    processes_mentioning(&e.ours())
        .into_iter()
        .filter(|p| p.contains("vhost-user-relay"))
        .collect()
}

/// A virtiofsd that dies while the workload uses its share: the
/// workload's file operations on it fail with EIO (QEMU alone would leave
/// them waiting for ever, and the guest kernel cannot abort a virtio-fs
/// connection; amphi's vhost-user relay between QEMU and virtiofsd takes
/// the rings over and answers them), the workload ends by itself, and
/// the run ends with an error that says what happened; nothing hangs and
/// nothing is left. The relay runs jailed: not root, no capabilities,
/// under seccomp, in an empty root of its own.
#[test]
fn a_dying_virtiofsd_fails_the_workloads_file_operations_with_eio() {
    let Some(e) = Env::new() else { return };
    let vol = tempfile::tempdir().unwrap();
    fs::write(vol.path().join("f"), "x\n").unwrap();
    let v = format!("{}:/work", vol.path().display());
    let ro = tempfile::tempdir().unwrap();
    let vro = format!("{}:/ro:ro", ro.path().display());
    let args = Env::args(
        &["-v", &v, "-v", &vro],
        &["sh", "-c", "touch /work/started; while cat /work/f >/dev/null; do sleep 0.2; done; echo loop-ended"],
    );
    let running = e.start(&[], &args, Input::Null);
    let deadline = Instant::now() + RUN_LIMIT;
    while !vol.path().join("started").exists() {
        assert!(Instant::now() < deadline, "the workload never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let daemons = virtiofsds(&e);
    assert!(!daemons.is_empty(), "no virtiofsd runs for the volume");
    // Read-only is the host's rule too, not only the guest's: in the
    // daemon's own mount namespace (its share is its root there) volume 1
    // (`:ro`) is a read-only mount and volume 0 a writable one, so the
    // kernel refuses writes whatever a guest sends.
    let mounts: Vec<String> = daemons
        .iter()
        .filter_map(|d| {
            fs::read_to_string(format!("/proc/{}/mountinfo", d.split(':').next()?)).ok()
        })
        .collect();
    let opts_of = |point: &str| -> Vec<String> {
        mounts
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&point)).then(|| f[5].to_string())
            })
            .collect()
    };
    let (rw_opts, ro_opts) = (opts_of("/0"), opts_of("/1"));
    assert!(
        !ro_opts.is_empty() && ro_opts.iter().all(|o| o.split(',').any(|w| w == "ro")),
        "the :ro volume in virtiofsd's namespace: {ro_opts:?}\n{mounts:?}"
    );
    assert!(
        !rw_opts.is_empty() && rw_opts.iter().all(|o| o.split(',').any(|w| w == "rw")),
        "the writable volume in virtiofsd's namespace: {rw_opts:?}"
    );
    let relays = relays(&e);
    assert_eq!(
        relays.len(),
        1,
        "one relay for the volumes' virtiofsd: {relays:?}"
    );
    let relay = relays[0].split(':').next().unwrap().to_string();
    let st: std::collections::BTreeMap<String, String> =
        fs::read_to_string(format!("/proc/{relay}/status"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
    assert!(
        st["Uid"].split_whitespace().all(|u| u != "0"),
        "the relay runs as root: {st:?}"
    );
    assert_eq!(st["CapEff"], "0000000000000000", "{st:?}");
    assert_eq!(st["CapBnd"], "0000000000000000", "{st:?}");
    assert_eq!(
        (st["Seccomp"].as_str(), st["NoNewPrivs"].as_str()),
        ("2", "1")
    );
    let root: Vec<_> = fs::read_dir(format!("/proc/{relay}/root"))
        .unwrap()
        .flatten()
        .map(|d| d.file_name())
        .collect();
    assert!(root.is_empty(), "the relay's root holds {root:?}");
    assert_ne!(
        fs::read_link(format!("/proc/{relay}/ns/net")).unwrap(),
        fs::read_link("/proc/self/ns/net").unwrap(),
        "the relay shares the host's network"
    );
    let vol_daemons: Vec<&String> = daemons.iter().filter(|d| d.contains("vfs-vol")).collect();
    assert!(!vol_daemons.is_empty(), "{daemons:?}");
    for d in vol_daemons {
        let pid: i32 = d.split(':').next().unwrap().parse().unwrap();
        // SAFETY: kill(2) on a pid the test just read.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let run = running.finish();
    run.expect_code(125);
    assert!(
        run.stdout.contains("loop-ended")
            && run.raw_stderr.contains("Input/output error")
            && run.raw_stderr.contains("virtiofsd serving the volumes")
            && run.raw_stderr.contains("ended while the microVM ran")
            && run.raw_stderr.contains("file operations on it failed from then on")
            && run.raw_stderr.contains("exited with status 0"),
        "the workload's read failed with EIO, it ended by itself, and the error names virtiofsd:\n{}",
        run.show()
    );
    e.assert_clean(&run.what);
}

/// No virtiofsd, socket or memfd outlives a run that ends badly: the
/// guest kernel panics, or amphi itself is killed with SIGKILL.
#[test]
fn virtio_fs_runs_leave_nothing_after_a_panic_or_kill_9() {
    let Some(e) = Env::new() else { return };
    let vol = tempfile::tempdir().unwrap();
    let v = format!("{}:/work", vol.path().display());
    let run = e.vm_with(
        &[("AMPHI_VM_CMDLINE_EXTRA", "rdinit=/no-such-init")],
        &["-v", &v, "--vm-rootfs", "virtiofs"],
        &["true"],
        Input::Null,
    );
    run.expect_code(125);
    assert!(run.raw_stderr.contains("Kernel panic"), "{}", run.show());

    let args = Env::args(&["-v", &v, "--vm-rootfs", "virtiofs"], &["sleep", "1000"]);
    let mut running = e.start(&[], &args, Input::Null);
    let backend = e.wait_for_backend(&running);
    let daemons = virtiofsds(&e);
    assert!(
        daemons.len() >= 2,
        "the rootfs's and the volumes' virtiofsd: {daemons:?}"
    );
    assert_eq!(relays(&e).len(), 2, "a relay for each virtiofsd");
    let run_dirs = dir_names(&e.state.path().join("vm"));
    let run_dir = e.state.path().join("vm").join(&run_dirs[0]);
    let socks: Vec<String> = dir_names(&run_dir)
        .into_iter()
        .filter(|n| n.starts_with("vfs") && n.ends_with(".sock"))
        .collect();
    assert!(socks.is_empty(), "vhost-user socket files exist: {socks:?}");
    let qemu_pid: i32 = backend.split(':').next().unwrap().parse().unwrap();
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    let gone_by = Instant::now() + Duration::from_secs(10);
    loop {
        let left = virtiofsds(&e);
        let relays_left = relays(&e);
        let backend_alive = Path::new(&format!("/proc/{qemu_pid}")).exists();
        if left.is_empty() && relays_left.is_empty() && !backend_alive {
            break;
        }
        assert!(
            Instant::now() < gone_by,
            "after kill -9 of amphi: virtiofsd {left:?}, relay {relays_left:?} or the backend ({backend_alive}) lives on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The memfd was QEMU's: no process holds guest RAM for this run.
    let gc = e.cmd(&["gc"]).output().unwrap();
    assert!(gc.status.success(), "{gc:?}");
    e.assert_clean("run -v (client killed) + gc");
}

// --- networking: passt behind a virtio-net device ---

/// The microVM's own NIC through passt: the guest has the host's address
/// on eth0 and reaches a server on the host's 127.0.0.1 through the
/// gateway; a port published with -p reaches busybox httpd in the guest;
/// `--network none` gives no NIC, and `--network host` is refused for a
/// microVM. Nothing (passt included) is left after.
#[test]
fn the_microvm_network_goes_out_and_publishes() {
    let Some(e) = Env::new() else { return };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"pong-from-host\n");
        }
    });
    let gw = fs::read_to_string("/proc/net/route")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000")).then(|| {
                let g = u32::from_str_radix(f[2], 16).unwrap();
                std::net::Ipv4Addr::from(g.to_le_bytes())
            })
        })
        .expect("a default route");
    // Not `timeout … nc` as the last command: sh would exec it, and
    // busybox timeout execs nc, which would then be the container's PID 1,
    // where the watchdog's SIGTERM is ignored; and Debian 12's passt
    // sometimes drops the server's FIN, which leaves nc waiting.
    let script = format!(
        "ls /sys/class/net | tr '\\n' ' '; echo; timeout 10 nc -w 5 {gw} {port} </dev/null; echo nc-ended"
    );
    let report = tempfile::NamedTempFile::new().unwrap();
    let env = [("AMPHI_RUN_REPORT", report.path().to_str().unwrap())];
    let run = e.vm_with(&env, &[], &["sh", "-c", &script], Input::Null);
    run.expect_code(0);
    assert!(run.stdout.contains("eth0"), "{}", run.show());
    assert!(run.stdout.contains("pong-from-host"), "{}", run.show());
    let r: Value = serde_json::from_str(&fs::read_to_string(report.path()).unwrap()).unwrap();
    assert_eq!(r["network"], "private", "the run report: {r}");

    // A published port: the guest's httpd answers curl on the host.
    let www = tempfile::tempdir().unwrap();
    fs::write(www.path().join("index.html"), "served-from-the-microvm\n").unwrap();
    let hport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{hport}:80");
    let vol = format!("{}:/www:ro", www.path().display());
    // --init: httpd as PID 1 would ignore SIGTERM.
    let args = Env::args(
        &["--init", "-p", &publish, "-v", &vol],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let running = e.start(&[], &args, Input::Null);
    let body =
        amphi_tests::curl_until_served(&format!("http://127.0.0.1:{hport}/index.html"), RUN_LIMIT);
    assert_eq!(body, "served-from-the-microvm\n");
    // SAFETY: SIGTERM to the amphi client we started.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
    let run = running.finish();
    assert_eq!(run.code, Some(143), "{}", run.show());
    e.assert_clean(&run.what);

    let run = e.vm(&["--network", "none"], &["ls", "/sys/class/net"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "lo\n", "{}", run.show());
    let run = e.refused(&["--network", "host"], &["true"]);
    assert!(run.raw_stderr.contains("--network host"), "{}", run.show());
}

// --- the lifecycle of detached microVM containers ---

/// Removes the named detached containers (`rm -f`) when dropped, so that
/// a failing test leaves no monitor and VM running.
struct RmOnDrop<'a>(&'a Env, &'a [&'a str]);

impl Drop for RmOnDrop<'_> {
    fn drop(&mut self) {
        for name in self.1 {
            let _ = self.0.cmd(&["rm", "-f", name]).output();
        }
    }
}

/// The record `amphi run -d` keeps of container `id`.
fn record_of(e: &Env, id: &str) -> Value {
    let path =
        e.a.root()
            .join("containers")
            .join(id)
            .join("container.json");
    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

/// `amphi ARGS` (quick management commands): (status, stdout, stderr).
fn manage(e: &Env, args: &[&str]) -> (i32, String, String) {
    let run = e.amphi(&[], args, Input::Null);
    (
        run.code.unwrap_or(-1),
        run.stdout.clone(),
        run.raw_stderr.clone(),
    )
}

/// Polls `amphi ARGS` until its stdout contains `want` (within
/// [`RUN_LIMIT`]); returns that stdout.
fn wait_output(e: &Env, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        let (_, out, err) = manage(e, args);
        if out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "`amphi {}` never showed {want:?}:\n{out}{err}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `run -d` of a microVM: the id comes back once the workload runs; `ps`
/// lists it as a microVM with its guest kernel; `logs` has its output;
/// `exec` runs a process in its namespaces (output, stdin, exit status;
/// 255 for a command that cannot start, as natively); `kill -s` reaches the workload's handler in the guest; `stop` ends it
/// with the stop signal's status (143), and, for a workload that ignores
/// SIGTERM, with 137 after the grace period; `rm` removes it; a command
/// that cannot start is the caller's error and leaves nothing.
#[test]
fn a_detached_microvm_is_listed_logged_execd_signalled_stopped_and_removed() {
    let Some(e) = Env::new() else { return };
    let _rm = RmOnDrop(&e, &["vmweb", "deaf", "hog"]);
    let script = "echo hello-from-the-vm; uname -r; \
                  trap 'echo got-usr1' USR1; trap 'echo got-term; exit 143' TERM; \
                  while :; do sleep 0.1; done";
    let run = e.amphi(
        &[],
        &[
            "run",
            "-d",
            "--name",
            "vmweb",
            "--isolation",
            "vm",
            IMG,
            "sh",
            "-c",
            script,
        ],
        Input::Null,
    );
    run.expect_code(0);
    let id = run.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "the id: {}", run.show());
    let ps = wait_output(&e, &["ps"], "vmweb");
    let row = ps.lines().find(|l| l.contains("vmweb")).unwrap();
    assert!(
        row.starts_with(&id[..12]) && row.contains("Up") && row.contains("microVM 6.12."),
        "{ps}"
    );
    let logs = wait_output(&e, &["logs", "vmweb"], "hello-from-the-vm");
    assert!(logs.contains("6.12."), "the guest kernel's release: {logs}");
    // The VMM is the container's process on the host.
    let record = record_of(&e, &id);
    let vmm = record["vm"]["vmm"]["pid"].as_i64().expect("the VMM's pid");
    // The backend process amphi spawned: QEMU or amphi-vmm, or the
    // jail's supervisor holding it (its pid namespace's first process).
    let cmdline = |pid: &str| {
        String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ")
    };
    let mut pids = vec![vmm.to_string()];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i].clone();
        let children =
            fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        pids.extend(children.split_whitespace().map(String::from));
        i += 1;
    }
    let tree: Vec<String> = pids.iter().map(|p| cmdline(p)).collect();
    assert!(
        tree.iter()
            .any(|c| c.contains("qemu-system") || c.starts_with("amphi-vmm ")),
        "{tree:?}"
    );
    // exec: a process beside the workload, in its namespaces (its
    // hostname), with its output, stdin and exit status.
    let run = e.amphi(
        &[],
        &[
            "exec",
            "vmweb",
            "sh",
            "-c",
            "echo out; echo err >&2; hostname; exit 7",
        ],
        Input::Null,
    );
    run.expect_code(7);
    assert_eq!(
        run.stdout,
        format!("out\n{}\n", &id[..12]),
        "{}",
        run.show()
    );
    assert!(run.raw_stderr.contains("err"), "{}", run.show());
    let run = e.amphi(
        &[],
        &["exec", "vmweb", "cat"],
        Input::Closed(b"through stdin\n"),
    );
    run.expect_code(0);
    assert_eq!(run.stdout, "through stdin\n", "{}", run.show());
    // exec -t: a terminal of the caller's size (script(1) gives the
    // caller one of 30x100).
    if have("script") {
        let inner = format!(
            "stty rows 30 cols 100; {} exec -t vmweb sh -c 'tty; stty size; exit 4'",
            amphi_bin().display()
        );
        let (st, text, err) = in_script(&e, &inner);
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        assert!(
            lines.iter().any(|l| l.ends_with("/dev/pts/0")) && lines.contains(&"30 100"),
            "a terminal of the caller's size ({st}):\n{text}\n{err}"
        );
        assert_eq!(st.code(), Some(4), "{text}");
    } else {
        skip("script(1) missing: exec -t into a microVM is not tested");
    }
    let run = e.amphi(&[], &["exec", "vmweb", "/no/such/command"], Input::Null);
    run.expect_code(255);
    assert!(
        run.raw_stderr.contains("/no/such/command"),
        "{}",
        run.show()
    );
    assert_eq!(manage(&e, &["kill", "-s", "USR1", "vmweb"]).0, 0);
    wait_output(&e, &["logs", "vmweb"], "got-usr1");
    let (code, out, err) = manage(&e, &["stop", "vmweb"]);
    assert_eq!((code, out.trim()), (0, "vmweb"), "{err}");
    let ps = manage(&e, &["ps", "-a"]).1;
    assert!(ps.contains("Exited (143)"), "{ps}");
    assert!(manage(&e, &["logs", "vmweb"]).1.contains("got-term"));
    assert!(
        !Path::new(&format!("/proc/{vmm}")).exists(),
        "the VMM outlived its container"
    );
    // Nothing to exec in once it ended.
    let run = e.amphi(&[], &["exec", "vmweb", "true"], Input::Null);
    run.expect_code(255);
    assert!(run.raw_stderr.contains("not running"), "{}", run.show());
    assert_eq!(manage(&e, &["rm", "vmweb"]).0, 0);
    assert!(!manage(&e, &["ps", "-a"]).1.contains("vmweb"));

    // A workload that ignores SIGTERM: KILL after the grace period.
    let run = e.amphi(
        &[],
        &[
            "run",
            "-d",
            "--name",
            "deaf",
            "--isolation",
            "vm",
            IMG,
            "sleep",
            "1000",
        ],
        Input::Null,
    );
    run.expect_code(0);
    let (code, _, err) = manage(&e, &["stop", "-t", "1", "deaf"]);
    assert_eq!(code, 0, "{err}");
    assert!(manage(&e, &["ps", "-a"]).1.contains("Exited (137)"));
    assert_eq!(manage(&e, &["rm", "deaf"]).0, 0);

    // The guest kernel's OOM killer: recorded as such.
    let run = e.amphi(
        &[],
        &[
            "run",
            "-d",
            "--name",
            "hog",
            "--isolation",
            "vm",
            "--memory",
            "16m",
            IMG,
            "sh",
            "-c",
            "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        Input::Null,
    );
    run.expect_code(0);
    let ps = wait_output(&e, &["ps", "-a"], "Exited (137, OOM killed)");
    assert!(ps.contains("hog"), "{ps}");
    assert!(!manage(&e, &["logs", "hog"]).1.contains("survived"));
    assert_eq!(manage(&e, &["rm", "hog"]).0, 0);

    // A command that cannot start: the caller's error, nothing left.
    let run = e.amphi(
        &[],
        &["run", "-d", "--isolation", "vm", IMG, "/no/such/command"],
        Input::Null,
    );
    run.expect_code(127);
    assert!(
        run.raw_stderr.contains("/no/such/command"),
        "{}",
        run.show()
    );
    assert!(dir_names(&e.a.root().join("containers")).is_empty());
    e.assert_clean("the detached microVM runs");
}

/// kill -9 of a detached microVM's monitor takes the VM down with it;
/// `ps -a` shows the container as stale, and `gc` removes it and its run
/// directory.
#[test]
fn a_detached_microvm_whose_monitor_is_killed_is_stale_and_gc_cleans_it() {
    let Some(e) = Env::new() else { return };
    let _rm = RmOnDrop(&e, &["orphan"]);
    let run = e.amphi(
        &[],
        &[
            "run",
            "-d",
            "--name",
            "orphan",
            "--isolation",
            "vm",
            IMG,
            "sleep",
            "1000",
        ],
        Input::Null,
    );
    run.expect_code(0);
    let id = run.stdout.trim().to_string();
    let record = record_of(&e, &id);
    let monitor = record["monitor"]["pid"].as_i64().unwrap() as i32;
    let vmm = record["vm"]["vmm"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the monitor the test just read.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{vmm}")).exists() {
        assert!(Instant::now() < deadline, "the VMM outlived its monitor");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = wait_output(&e, &["ps", "-a"], "Stale");
    assert!(ps.contains("orphan"), "{ps}");
    let (code, _, err) = manage(&e, &["gc"]);
    assert_eq!(code, 0, "{err}");
    assert!(!manage(&e, &["ps", "-a"]).1.contains("orphan"));
    e.assert_clean("gc after kill -9 of a detached microVM's monitor");
}
