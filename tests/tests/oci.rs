//! The OCI runtime commands (runc's command line: create, start, state, kill,
//! delete, exec, ps, features, spec) end to end, driving the built binary
//! with hand-made bundles: the busybox test image unpacked with umoci, and a
//! config.json written by `amphi spec` and edited here. Every test has its
//! own bundle, state root (`--root`) and container ids, so they run in
//! parallel.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{amphi_bin, run_cmd, skip, test_image};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A container id no other test (or test process) uses.
fn unique_id(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "oci-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn have_umoci() -> bool {
    amphi_tests::have("umoci")
}

/// Polls `f` every 10ms until it holds; panics with `what` after `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// The cgroup hierarchies of this host (`/sys/fs/cgroup/<ctrl>`, or the
/// unified root itself).
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect()
}

fn unified_host() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Receives the one file descriptor sent with SCM_RIGHTS on `sock`.
fn recv_fd(sock: RawFd) -> OwnedFd {
    amphi_tests::recv_fd(sock).expect("no control message on the console socket")
}

/// One container: a bundle (rootfs + config.json), a private state root and
/// a unique id. Dropping it force-deletes the container.
struct Bundle {
    dir: tempfile::TempDir,
    root: tempfile::TempDir,
    id: String,
}

impl Bundle {
    /// A busybox bundle whose config is `amphi spec`'s, made non-interactive
    /// (no terminal) with a writable rootfs. None (and a skip notice) when
    /// umoci is missing.
    fn new(tag: &str) -> Option<Bundle> {
        if !have_umoci() {
            skip("umoci is not installed: cannot unpack bundles for the OCI runtime tests");
            return None;
        }
        let layout = test_image("busybox");
        let dir = tempfile::Builder::new()
            .prefix("amphi-oci-bundle-")
            .tempdir()
            .unwrap();
        let root = tempfile::Builder::new()
            .prefix("amphi-oci-state-")
            .tempdir()
            .unwrap();
        let out = run_cmd(
            Command::new("umoci")
                .args(["raw", "unpack", "--image"])
                .arg(format!("{}:latest", layout.display()))
                .arg(dir.path().join("rootfs")),
        );
        assert!(out.status.success(), "umoci raw unpack: {}", show(&out));
        let b = Bundle {
            dir,
            root,
            id: unique_id(tag),
        };
        let out = run_cmd(
            Command::new(amphi_bin())
                .arg("spec")
                .arg("--bundle")
                .arg(b.dir()),
        );
        assert!(out.status.success(), "amphi spec: {}", show(&out));
        b.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["root"]["readonly"] = json!(false);
            c["process"]["args"] = json!(["sleep", "1000"]);
        });
        Some(b)
    }

    /// The bundle directory (canonical: that is what `state` reports).
    fn dir(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir().join("rootfs")
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir().join("config.json")).unwrap()).unwrap()
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.config();
        f(&mut c);
        std::fs::write(
            self.dir().join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
    }

    /// `amphi --root ROOT ARGS`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(amphi_bin());
        c.arg("--root").arg(self.root()).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_cmd(&mut self.cmd(args))
    }

    /// Runs `amphi ARGS`, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "amphi {} failed: {}",
            args.join(" "),
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `amphi ARGS`, asserts a clean failure (exit 1 as runc, no
    /// panic, an `amphi: error:` line), returns stderr.
    fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.code() == Some(1)
                && !stderr.contains("panicked")
                && stderr.contains("amphi: error:"),
            "amphi {} should have failed cleanly: {}",
            args.join(" "),
            show(&out)
        );
        stderr
    }

    /// `amphi create --bundle DIR [extra] ID`. The container's stdout and
    /// stderr are the files `stdout` and `stderr` in the bundle (the
    /// runtime's own stderr goes there too).
    fn create_cmd(&self, extra: &[&str]) -> Command {
        let mut c = self.cmd(&["create", "--bundle"]);
        c.arg(self.dir()).args(extra).arg(&self.id);
        let out = File::create(self.dir().join("stdout")).unwrap();
        let err = File::create(self.dir().join("stderr")).unwrap();
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        c
    }

    /// Runs a create command (from [`Bundle::create_cmd`]) to completion;
    /// returns (exit code, what the runtime wrote on stderr).
    fn run_create(&self, mut c: Command) -> (Option<i32>, String) {
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("amphi create {} timed out", self.id);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let err = self.stderr();
        assert!(!err.contains("panicked"), "amphi create panicked:\n{err}");
        (status.code(), err)
    }

    fn create(&self, extra: &[&str]) {
        let (code, err) = self.run_create(self.create_cmd(extra));
        assert_eq!(code, Some(0), "amphi create {} failed:\n{err}", self.id);
    }

    /// Runs create, expecting runc's failure: exit 1 with an error line.
    fn create_fails(&self) -> String {
        let (code, err) = self.run_create(self.create_cmd(&[]));
        assert_eq!(
            code,
            Some(1),
            "amphi create {} should have failed:\n{err}",
            self.id
        );
        assert!(err.contains("amphi: error:"), "{err}");
        err
    }

    /// What the container wrote on stdout so far.
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir().join("stderr")).unwrap_or_default()
    }

    fn start(&self) {
        self.ok(&["start", &self.id]);
    }

    fn state(&self) -> Value {
        let out = self.ok(&["state", &self.id]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("state is not JSON ({e}):\n{out}"))
    }

    fn status(&self) -> String {
        self.state()["status"].as_str().unwrap().to_string()
    }

    fn pid(&self) -> i64 {
        self.state()["pid"].as_i64().unwrap()
    }

    fn wait_status(&self, want: &str) {
        wait_for(20, &format!("{} to be {want}", self.id), || {
            self.status() == want
        });
    }

    /// The default cgroup of the container, relative to each hierarchy.
    fn cgroup(&self) -> String {
        format!("amphi/{}", self.id)
    }

    /// Nothing of container `id` is left anywhere: no state under the
    /// root, no cgroup `cgroup` in any hierarchy, no mount mentioning the
    /// bundle, no process of it (an amphi child stuck before exec, or a
    /// process in its cgroup).
    fn assert_no_trace(&self, id: &str, cgroup: &str) {
        self.assert_no_trace_in(id, Some(cgroup))
    }

    /// [`Bundle::assert_no_trace`], with the cgroup checks left out when
    /// there is no cgroup path to check.
    fn assert_no_trace_in(&self, id: &str, cgroup: Option<&str>) {
        let left: Vec<_> = std::fs::read_dir(self.root())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state left in --root: {left:?}");
        for h in cgroup_roots() {
            if let Some(c) = cgroup {
                let d = h.join(c.trim_start_matches('/'));
                assert!(!d.exists(), "cgroup left behind: {}", d.display());
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let bundle = self.dir();
        assert!(
            !mounts.contains(bundle.to_str().unwrap()),
            "mount of the bundle left behind:\n{mounts}"
        );
        let cg_line = cgroup.map(|c| format!("/{}", c.trim_start_matches('/')));
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            if pid == std::process::id() as i64 || !alive(pid) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            assert!(
                ["", ".."].contains(&id) || !cmdline.split(' ').any(|a| a == id),
                "process {pid} of {id} left behind: {cmdline}"
            );
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if let Some(cg_line) = &cg_line {
                assert!(
                    !cgroups
                        .lines()
                        .any(|l| l.ends_with(cg_line) || l.contains(&format!("{cg_line}/"))),
                    "process {pid} ({cmdline}) left in cgroup {cg_line}"
                );
            }
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = run_cmd(&mut self.cmd(&["delete", "--force", &self.id]));
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------------------
// 1. The lifecycle.

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let Some(b) = Bundle::new("life") else { return };
    b.edit(|c| {
        // pid 1 of a pid namespace only gets the signals it handles: trap TERM.
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "trap 'echo term > /got-term; exit 0' TERM; echo started > /started; \
             while :; do sleep 0.05; done"
        ]);
        c["annotations"] = json!({"org.example.key": "value", "io.amphi.test": "lifecycle"});
    });
    let pid_file = b.dir().join("container.pid");
    b.create(&["--pid-file", pid_file.to_str().unwrap()]);

    let st = b.state();
    let spec_keys: BTreeSet<String> =
        ["ociVersion", "id", "status", "pid", "bundle", "annotations"]
            .map(String::from)
            .into();
    let extra: BTreeSet<String> = keys(&st).difference(&spec_keys).cloned().collect();
    assert!(
        spec_keys.is_subset(&keys(&st)),
        "state lacks runtime-spec fields: {st:#}"
    );
    assert_eq!(
        extra,
        ["created", "rootfs"].map(String::from).into(),
        "state has unexpected fields: {st:#}"
    );
    let version = st["ociVersion"].as_str().unwrap();
    assert!(
        version.starts_with("1.") && version.split('.').count() == 3,
        "ociVersion {version:?}"
    );
    assert_eq!(st["id"], json!(b.id));
    assert_eq!(st["status"], json!("created"));
    assert_eq!(st["bundle"], json!(b.dir()));
    assert_eq!(st["rootfs"], json!(b.rootfs()));
    assert_eq!(
        st["annotations"],
        json!({"org.example.key": "value", "io.amphi.test": "lifecycle"})
    );
    assert!(st["created"].as_str().unwrap().ends_with('Z'), "{st:#}");
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 1 && alive(pid), "created container's pid {pid}");
    let from_file: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(from_file, pid, "--pid-file");
    // Created: set up, but the process has not run yet.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!b.rootfs().join("started").exists(), "ran before start");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.contains(&format!("/{}", b.cgroup())),
        "not in its cgroup:\n{cg}"
    );

    b.start();
    wait_for(10, "the process to write /started", || {
        std::fs::read_to_string(b.rootfs().join("started")).is_ok_and(|s| s == "started\n")
    });
    let st = b.state();
    assert_eq!(st["status"], json!("running"));
    assert_eq!(st["pid"].as_i64(), Some(pid));

    b.ok(&["kill", &b.id, "TERM"]);
    b.wait_status("stopped");
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("got-term")).unwrap(),
        "term\n",
        "the process did not get SIGTERM"
    );
    assert!(!alive(pid));
    // A stopped container cannot be signalled any more.
    let e = b.fail(&["kill", &b.id, "KILL"]);
    assert!(e.contains("not running"), "{e}");

    b.ok(&["delete", &b.id]);
    let e = b.fail(&["state", &b.id]);
    assert!(e.contains("does not exist"), "{e}");
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn kill_with_sigkill_stops_a_process_that_ignores_term() {
    let Some(b) = Bundle::new("sigkill") else {
        return;
    };
    b.edit(|c| c["process"]["args"] = json!(["sleep", "1000"]));
    b.create(&[]);
    b.start();
    let pid = b.pid();
    // sleep is pid 1 of its namespace with no handler: TERM is not delivered.
    b.ok(&["kill", &b.id, "TERM"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.status(), "running");
    b.ok(&["kill", &b.id, "9"]);
    b.wait_status("stopped");
    assert!(!alive(pid));
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn create_and_start_as_a_non_root_user() {
    let Some(b) = Bundle::new("user") else {
        return;
    };
    // The process opens the exec fifo only after switching to its user.
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [1002]});
        c["process"]["args"] = json!(["sh", "-c", "id -u; id -g; id -G"]);
    });
    b.create(&[]);
    b.start();
    b.wait_status("stopped");
    assert_eq!(b.stdout(), "1000\n1001\n1001 1002\n", "{}", b.stderr());
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn the_process_starts_with_default_signal_handling() {
    let Some(b) = Bundle::new("signals") else {
        return;
    };
    // Nothing blocked or ignored: amphi's own SIGPIPE setting (the Rust
    // runtime ignores it) must not leak into the container.
    b.edit(|c| c["process"]["args"] = json!(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]));
    b.create(&[]);
    b.start();
    b.wait_status("stopped");
    assert_eq!(
        b.stdout(),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
        "{}",
        b.stderr()
    );
    b.ok(&["delete", &b.id]);
}

// ---------------------------------------------------------------------------
// 2. Options and the other commands.

#[test]
fn options_after_the_container_id() {
    let Some(b) = Bundle::new("optorder") else {
        return;
    };
    let pid_file = b.dir().join("p.pid");
    // runc accepts options after the id (podman and containerd put them
    // before it); the global --root may follow the command too.
    let out = run_cmd(
        Command::new(amphi_bin())
            .args(["create", &b.id, "--bundle"])
            .arg(b.dir())
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--root")
            .arg(b.root()),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(b.status(), "created");
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, b.pid());
    b.ok(&["start", &b.id]);
    assert_eq!(b.status(), "running");
    b.ok(&["delete", &b.id, "--force"]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn preserve_fds_passes_exactly_n_extra_descriptors() {
    let Some(b) = Bundle::new("fds") else { return };
    b.edit(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "echo via-fd3 >&3; if echo leaked >&4; then echo fd4-open >&3; \
             else echo fd4-closed >&3; fi"
        ])
    });
    let f3_path = b.dir().join("fd3");
    let f4_path = b.dir().join("fd4");
    let f3 = File::create(&f3_path).unwrap();
    let f4 = File::create(&f4_path).unwrap();
    let (r3, r4) = (f3.as_raw_fd(), f4.as_raw_fd());
    let mut c = b.create_cmd(&["--preserve-fds", "1"]);
    // SAFETY: only fcntl and dup2 between fork and exec, on descriptors we
    // own. They go out of the way first (either may be 3 or 4 already), and
    // dup2 leaves the copies without close-on-exec.
    unsafe {
        c.pre_exec(move || {
            let hi3 = libc::fcntl(r3, libc::F_DUPFD_CLOEXEC, 100);
            let hi4 = libc::fcntl(r4, libc::F_DUPFD_CLOEXEC, 100);
            if hi3 < 0 || hi4 < 0 || libc::dup2(hi3, 3) < 0 || libc::dup2(hi4, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, err) = b.run_create(c);
    assert_eq!(code, Some(0), "create --preserve-fds 1:\n{err}");
    drop((f3, f4));
    b.start();
    b.wait_status("stopped");
    assert_eq!(
        std::fs::read_to_string(&f3_path).unwrap(),
        "via-fd3\nfd4-closed\n",
        "fd 3 must reach the process, fd 4 must not; container stderr:\n{}",
        b.stderr()
    );
    assert_eq!(std::fs::read_to_string(&f4_path).unwrap(), "");
    b.ok(&["delete", &b.id]);
}

#[test]
fn kill_all_signals_every_process() {
    let Some(b) = Bundle::new("killall") else {
        return;
    };
    // pid 1 (sh) has no TERM handler and so ignores TERM; its children do not.
    b.edit(|c| {
        c["process"]["args"] = json!(["sh", "-c", "sleep 1000 & sleep 1001 & wait; echo done"])
    });
    b.create(&[]);
    b.start();
    let pid = b.pid();
    let mut pids: Vec<i64> = Vec::new();
    wait_for(10, "three processes in the container", || {
        pids = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
        pids.len() == 3
    });
    b.ok(&["kill", &b.id, "TERM"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.status(), "running", "pid 1 should have ignored TERM");
    b.ok(&["kill", "--all", &b.id, "TERM"]);
    b.wait_status("stopped");
    for p in &pids {
        assert!(!alive(*p), "process {p} survived kill --all");
    }
    assert!(!alive(pid));
    assert_eq!(
        b.stdout(),
        "done\n",
        "sh's wait returned once its children died"
    );
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn delete_force_kills_a_running_container() {
    let Some(b) = Bundle::new("delforce") else {
        return;
    };
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "sleep 1000 & exec sleep 1001"]));
    b.create(&[]);
    b.start();
    let mut pids: Vec<i64> = Vec::new();
    wait_for(10, "two processes", || {
        pids = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
        pids.len() == 2
    });
    let e = b.fail(&["delete", &b.id]);
    assert!(e.contains("running"), "{e}");
    assert_eq!(b.status(), "running");
    b.ok(&["delete", "--force", &b.id]);
    for p in &pids {
        assert!(!alive(*p), "process {p} survived delete --force");
    }
    let e = b.fail(&["state", &b.id]);
    assert!(e.contains("does not exist"), "{e}");
    b.assert_no_trace(&b.id, &b.cgroup());
    // --force on a container that no longer exists is not an error (runc).
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn exec_with_a_process_json() {
    let Some(b) = Bundle::new("execproc") else {
        return;
    };
    b.create(&[]);
    b.start();
    let process = b.dir().join("process.json");
    std::fs::write(
        &process,
        json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo from-process-json; echo \"FOO=$FOO\"; pwd; cat /proc/1/cmdline"],
            "env": ["PATH=/bin:/sbin", "FOO=bar"],
            "cwd": "/tmp"
        })
        .to_string(),
    )
    .unwrap();
    let out = b.ok(&["exec", "--process", process.to_str().unwrap(), &b.id]);
    // pid 1 is the container's sleep: exec joined its pid namespace.
    assert_eq!(out, "from-process-json\nFOO=bar\n/tmp\nsleep\x001000\x00");
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn exec_reports_the_exit_status() {
    let Some(b) = Bundle::new("execrc") else {
        return;
    };
    b.create(&[]);
    b.start();
    let out = b.run(&["exec", &b.id, "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    let out = b.run(&["exec", &b.id, "sh", "-c", "kill -USR1 $$"]);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGUSR1),
        "{}",
        show(&out)
    );
    // Not found in the container's PATH.
    let out = b.run(&["exec", &b.id, "no-such-program"]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-program"),
        "{}",
        show(&out)
    );
    assert_eq!(b.status(), "running");
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn ps_lists_the_container_processes() {
    let Some(b) = Bundle::new("ps") else { return };
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "sleep 1000 & exec sleep 1001"]));
    b.create(&[]);
    // Before start: the one (waiting) container process.
    let pids: Vec<i64> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
    assert_eq!(pids, vec![b.pid()]);
    b.start();
    let mut pids: Vec<i64> = Vec::new();
    // Two processes, both past exec (the shell's forked child shows the
    // shell's command line until it has executed sleep).
    let cmdline =
        |p: &i64| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
    wait_for(10, "two sleep processes", || {
        pids = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
        pids.len() == 2 && pids.iter().all(|p| cmdline(p).starts_with("sleep\x00"))
    });
    assert!(pids.contains(&b.pid()), "{pids:?}");
    for p in &pids {
        let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap();
        assert!(cmd.starts_with("sleep\x00100"), "{p}: {cmd:?}");
    }
    let table = b.ok(&["ps", &b.id]);
    assert!(table.starts_with("PID"), "{table}");
    assert!(table.contains("sleep 1001"), "{table}");
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn features_is_json_with_the_namespaces() {
    let out = run_cmd(Command::new(amphi_bin()).arg("features"));
    assert!(out.status.success(), "{}", show(&out));
    let f: Value = serde_json::from_slice(&out.stdout).expect("features is JSON");
    let ns: BTreeSet<&str> = f["linux"]["namespaces"]
        .as_array()
        .expect("linux.namespaces")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for want in ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"] {
        assert!(ns.contains(want), "{want} missing from {ns:?}");
    }
    assert!(f["ociVersionMin"].as_str().unwrap().starts_with("1."));
    assert!(f["ociVersionMax"].as_str().unwrap().starts_with("1."));
    let hooks: Vec<&str> = f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(hooks.contains(&"createContainer") && hooks.contains(&"poststop"));
    let caps = f["linux"]["capabilities"].as_array().unwrap();
    assert!(caps.contains(&json!("CAP_SYS_ADMIN")), "{caps:?}");
}

#[test]
fn spec_refuses_to_overwrite_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cmd(
        Command::new(amphi_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path()),
    );
    assert!(out.status.success(), "{}", show(&out));
    let p = dir.path().join("config.json");
    let c: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    assert!(c["ociVersion"].as_str().unwrap().starts_with("1."));
    assert_eq!(c["root"]["path"], json!("rootfs"));
    std::fs::write(&p, "{\"mine\": true}").unwrap();
    let out = run_cmd(
        Command::new(amphi_bin())
            .args(["spec", "--bundle"])
            .arg(dir.path()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"mine\": true}");
}

// ---------------------------------------------------------------------------
// 3. The console socket.

#[test]
fn console_socket_receives_the_pty_master() {
    let Some(b) = Bundle::new("console") else {
        return;
    };
    b.edit(|c| {
        c["process"]["terminal"] = json!(true);
        // /dev/console is the same terminal (the runtime spec's rule).
        c["process"]["args"] = json!(["sh", "-c", "tty; echo hello >/dev/console"]);
    });
    let sock = b.dir().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        recv_fd(conn.as_raw_fd())
    });
    b.create(&["--console-socket", sock.to_str().unwrap()]);
    let master = receiver.join().unwrap();
    // It is a pty master, of the container's own devpts instance.
    let mut n: libc::c_uint = 99;
    // SAFETY: TIOCGPTN writes an unsigned int.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    assert_eq!(r, 0, "TIOCGPTN: {}", std::io::Error::last_os_error());
    assert_eq!(n, 0);
    b.start();
    let mut f = File::from(master);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid fd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        if pfd.revents != 0 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // EIO: the slave side closed (the process exited).
                Err(_) => break,
            }
        }
        assert!(
            Instant::now() < deadline,
            "no end of output; got {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out, "/dev/pts/0\r\nhello\r\n");
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

// ---------------------------------------------------------------------------
// 4. Hooks.

/// A hook script: appends `<stage> <stdin>` to the file `$LOG`.
const HOOK_SCRIPT: &str = "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"$(cat)\" >> \"$LOG\"\n";

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn hook(path: &Path, stage: &str, log: &Path) -> Value {
    json!({"path": path, "args": ["hook", stage], "env": [format!("LOG={}", log.display())]})
}

/// Every hook, each logging `<stage> <state>` to `logdir/log`: host
/// scripts, and for startContainer (run inside the container after
/// pivot_root) a script in the rootfs logging through a bind mount of
/// `logdir`. Returns the log's path.
fn hook_every_stage(b: &Bundle, logdir: &Path) -> PathBuf {
    let log = logdir.join("log");
    let host_hook = logdir.join("hook.sh");
    write_script(&host_hook, HOOK_SCRIPT);
    write_script(&b.rootfs().join("hook.sh"), HOOK_SCRIPT);
    b.edit(|c| {
        c["annotations"] = json!({"hooked": "yes"});
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/hostlog", "type": "bind", "source": logdir, "options": ["rbind", "rw"]
        }));
        c["hooks"] = json!({
            "prestart": [hook(&host_hook, "prestart", &log)],
            "createRuntime": [hook(&host_hook, "createRuntime", &log)],
            "createContainer": [hook(&host_hook, "createContainer", &log)],
            "startContainer": [hook(Path::new("/hook.sh"), "startContainer", Path::new("/hostlog/log"))],
            "poststart": [hook(&host_hook, "poststart", &log)],
            "poststop": [hook(&host_hook, "poststop", &log)],
        });
    });
    log
}

/// The hook log: (stage, the state it got on stdin).
fn read_hook_log(log: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (stage, state) = l.split_once(' ').unwrap();
            let v = serde_json::from_str(state)
                .unwrap_or_else(|e| panic!("{stage} got no state JSON on stdin ({e}): {l}"));
            (stage.to_string(), v)
        })
        .collect()
}

fn stages(l: &[(String, Value)]) -> Vec<String> {
    l.iter().map(|(s, _)| s.clone()).collect()
}

const ALL_STAGES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Each hook got the state of its stage, with the container's pid while
/// it has one.
fn check_hook_states(b: &Bundle, entries: &[(String, Value)], pid: i64) {
    for (stage, st) in entries {
        let want = match stage.as_str() {
            // They run once the environment is created (the lifecycle's
            // step 2): runtime-tools' hooks_stdin wants "created" too.
            "prestart" | "createRuntime" | "createContainer" | "startContainer" => "created",
            "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(st["status"], json!(want), "{stage}: {st}");
        assert_eq!(st["id"], json!(b.id), "{stage}: {st}");
        assert_eq!(st["bundle"], json!(b.dir()), "{stage}: {st}");
        assert_eq!(st["annotations"], json!({"hooked": "yes"}), "{stage}: {st}");
        assert!(st["ociVersion"].as_str().is_some(), "{stage}: {st}");
        if want != "stopped" {
            assert_eq!(st["pid"].as_i64(), Some(pid), "{stage}: {st}");
        }
    }
}

#[test]
fn hooks_run_in_order_with_the_state() {
    let Some(b) = Bundle::new("hooks") else {
        return;
    };
    let logtmp = tempfile::Builder::new()
        .prefix("amphi-oci-hooklog-")
        .tempdir()
        .unwrap();
    let log = hook_every_stage(&b, &std::fs::canonicalize(logtmp.path()).unwrap());
    b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "echo ran > /ran; exec sleep 1000"]));

    b.create(&[]);
    let pid = b.pid();
    assert_eq!(
        stages(&read_hook_log(&log)),
        ALL_STAGES[..3],
        "after create; runtime stderr:\n{}",
        b.stderr()
    );
    assert!(!b.rootfs().join("ran").exists());
    b.start();
    assert_eq!(
        stages(&read_hook_log(&log)),
        ALL_STAGES[..5],
        "after start; runtime stderr:\n{}",
        b.stderr()
    );
    wait_for(10, "the process to run", || b.rootfs().join("ran").exists());
    b.ok(&["kill", &b.id, "KILL"]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    let entries = read_hook_log(&log);
    assert_eq!(stages(&entries), ALL_STAGES);
    check_hook_states(&b, &entries, pid);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn run_runs_every_hook_and_returns_the_exit_status() {
    let Some(b) = Bundle::new("runhooks") else {
        return;
    };
    let logtmp = tempfile::tempdir().unwrap();
    let log = hook_every_stage(&b, &std::fs::canonicalize(logtmp.path()).unwrap());
    // The process lives until poststart has run, so that hook sees it running.
    b.edit(|c| {
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "until grep -q ^poststart /hostlog/log; do sleep 0.01; done; echo ran; exit 3"
        ])
    });
    // runc's `run`: create, start, wait, delete.
    let out = b.run(&["run", "--bundle", b.dir().to_str().unwrap(), &b.id]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let entries = read_hook_log(&log);
    assert_eq!(stages(&entries), ALL_STAGES, "{}", show(&out));
    let pid = entries[0].1["pid"].as_i64().unwrap();
    check_hook_states(&b, &entries, pid);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn a_failing_create_hook_fails_create_and_leaves_nothing() {
    for stage in ["prestart", "createRuntime", "createContainer"] {
        let Some(b) = Bundle::new("hookfail") else {
            return;
        };
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("log");
        let ok_hook = logdir.path().join("ok.sh");
        write_script(&ok_hook, HOOK_SCRIPT);
        let bad_hook = logdir.path().join("failing-hook.sh");
        write_script(&bad_hook, "#!/bin/sh\necho hook-says-no >&2\nexit 3\n");
        let cgroup = format!("/{}-cg", b.id);
        b.edit(|c| {
            c["linux"]["cgroupsPath"] = json!(cgroup);
            c["hooks"] = json!({
                stage: [{"path": bad_hook}],
                "poststop": [hook(&ok_hook, "poststop", &log)],
            });
        });
        let e = b.create_fails();
        assert!(
            e.contains(&format!("{stage} hook {}", bad_hook.display()))
                && e.contains("exit status: 3"),
            "{stage}: {e}"
        );
        b.assert_no_trace(&b.id, &cgroup);
        // The runtime spec: a failed create continues with poststop.
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let Some(st) = log.strip_prefix("poststop ") else {
            panic!("{stage}: poststop did not run: {log:?}");
        };
        let st: Value = serde_json::from_str(st).unwrap();
        assert_eq!(st["status"], json!("stopped"), "{stage}: {st}");
        assert_eq!(st["id"], json!(b.id), "{stage}: {st}");
        let e = b.fail(&["state", &b.id]);
        assert!(e.contains("does not exist"), "{e}");
    }
}

#[test]
fn a_failing_start_container_hook_fails_start() {
    let Some(b) = Bundle::new("starthook") else {
        return;
    };
    write_script(
        &b.rootfs().join("bad-hook.sh"),
        "#!/bin/sh\necho start-hook-says-no >&2\nexit 4\n",
    );
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("log");
    let ok_hook = logdir.path().join("ok.sh");
    write_script(&ok_hook, HOOK_SCRIPT);
    let cgroup = format!("/{}-cg", b.id);
    b.edit(|c| {
        c["process"]["args"] = json!(["sh", "-c", "echo ran > /ran; exec sleep 1000"]);
        c["linux"]["cgroupsPath"] = json!(cgroup);
        c["hooks"] = json!({
            "startContainer": [{"path": "/bad-hook.sh"}],
            "poststart": [hook(&ok_hook, "poststart", &log)],
            "poststop": [hook(&ok_hook, "poststop", &log)],
        });
    });
    b.create(&[]);
    let pid = b.pid();
    let e = b.fail(&["start", &b.id]);
    assert!(
        e.contains("startContainer hook /bad-hook.sh") && e.contains("exit status: 4"),
        "{e}"
    );
    assert!(!alive(pid), "the container process survived");
    assert!(!b.rootfs().join("ran").exists(), "the process ran anyway");
    // Stopped and destroyed (runtime spec: continue at "destroy"), with
    // poststop but no poststart.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let stages: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(stages, ["poststop"], "{log}");
    b.assert_no_trace(&b.id, &cgroup);
}

// ---------------------------------------------------------------------------
// 5. A user namespace.

/// `chown -hR uid:gid dir`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if dir.is_symlink() || !dir.is_dir() {
        return;
    }
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        chown_tree(&e.path(), uid, gid);
    }
}

#[test]
fn user_namespace_maps_root_to_100000() {
    let Some(b) = Bundle::new("userns") else {
        return;
    };
    // As for any user-namespaced container, the rootfs belongs to the
    // container's root (host 100000): it creates its mount points there.
    chown_tree(&b.rootfs(), 100000, 100000);
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["process"]["args"] = json!([
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; echo end; exec sleep 1000"
        ]);
    });
    b.create(&[]);
    b.start();
    wait_for(10, "the process's output", || b.stdout().contains("end\n"));
    let out = b.stdout();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["0"],
            vec!["0"],
            vec!["0", "100000", "65536"],
            vec!["0", "100000", "65536"],
            vec!["end"]
        ],
        "{out}\n{}",
        b.stderr()
    );
    // Seen from the host, the process runs as 100000.
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "100000", "100000", "100000", "100000"]
    );
    // exec joins the user namespace as its root, with its capabilities.
    let out = b.ok(&[
        "exec",
        &b.id,
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "{out}");
    assert!(
        !lines
            .next()
            .unwrap_or_default()
            .ends_with("0000000000000000"),
        "exec in the user namespace lost its capabilities: {out}"
    );
    b.ok(&["delete", "--force", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

// ---------------------------------------------------------------------------
// 6. Bad input: a clear error, exit 1, nothing left behind.

/// Creates a bundle, breaks it with `f`, and checks create fails naming
/// every one of `want`, leaving nothing.
fn create_refused(tag: &str, want: &[&str], f: impl FnOnce(&Bundle)) {
    let Some(b) = Bundle::new(tag) else { return };
    f(&b);
    let e = b.create_fails();
    for w in want {
        assert!(e.contains(w), "{tag}: error should mention {w:?}: {e}");
    }
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn malformed_config_json() {
    create_refused(
        "badjson",
        &["config.json: not valid JSON", "EOF", "line 1 column"],
        |b| std::fs::write(b.dir().join("config.json"), "{\"ociVersion\": \"1.0.2\",").unwrap(),
    );
}

#[test]
fn wrong_type_at_process_args() {
    create_refused(
        "argstype",
        &["config.json", "`process.args`", "sequence"],
        |b| b.edit(|c| c["process"]["args"] = json!("sh -c true")),
    );
}

/// A NUL byte in an argument or an environment entry would cut the string
/// at exec: create refuses the config naming the field, the argument's
/// index or the variable, and leaves nothing.
#[test]
fn nul_byte_in_process_args() {
    create_refused(
        "nularg",
        &[
            "`process.args[2]`",
            r#"process argument 2 ("a\0b") contains a NUL byte"#,
        ],
        |b| b.edit(|c| c["process"]["args"] = json!(["sh", "-c", "a\u{0}b"])),
    );
}

#[test]
fn nul_byte_in_process_env() {
    create_refused(
        "nulenv",
        &[
            "`process.env[1]`",
            r#"environment variable "SECRET" (entry 1) contains a NUL byte"#,
        ],
        |b| b.edit(|c| c["process"]["env"] = json!(["PATH=/bin", "SECRET=x\u{0}y"])),
    );
}

/// runc's `run` goes through the same check: the process never starts.
#[test]
fn run_refuses_a_nul_byte_in_process_args() {
    let Some(b) = Bundle::new("nulrun") else {
        return;
    };
    b.edit(|c| c["process"]["args"] = json!(["echo", "ran", "a\u{0}b"]));
    let out = b.run(&["run", "--bundle", b.dir().to_str().unwrap(), &b.id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        err.contains("`process.args[2]`") && err.contains("contains a NUL byte"),
        "{}",
        show(&out)
    );
    assert!(out.stdout.is_empty(), "{}", show(&out));
    b.assert_no_trace(&b.id, &b.cgroup());
}

/// `exec --process` takes its process from a file the config check never
/// saw: the exec is refused, naming the argument, and the container runs on.
#[test]
fn exec_refuses_a_nul_byte_in_a_process_json() {
    let Some(b) = Bundle::new("nulexec") else {
        return;
    };
    b.create(&[]);
    b.start();
    let pid = b.pid();
    let process = b.dir().join("process.json");
    for (proc_args, proc_env, want) in [
        (
            json!(["echo", "ran", "a\u{0}b"]),
            json!(["PATH=/bin"]),
            r#"process argument 2 ("a\0b") contains a NUL byte"#,
        ),
        (
            json!(["echo", "ran"]),
            json!(["PATH=/bin", "SECRET=x\u{0}y"]),
            r#"environment variable "SECRET" (entry 1) contains a NUL byte"#,
        ),
    ] {
        std::fs::write(
            &process,
            json!({
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": proc_args,
                "env": proc_env,
                "cwd": "/"
            })
            .to_string(),
        )
        .unwrap();
        let out = b.run(&["exec", "--process", process.to_str().unwrap(), &b.id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{}", show(&out));
        assert!(err.contains(want), "{}", show(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ran"),
            "{}",
            show(&out)
        );
    }
    assert_eq!(b.status(), "running");
    assert_eq!(b.pid(), pid);
    b.ok(&["delete", "--force", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn unsupported_oci_version() {
    create_refused("ociver", &["`ociVersion`", "2.0.0"], |b| {
        b.edit(|c| c["ociVersion"] = json!("2.0.0"))
    });
}

#[test]
fn missing_rootfs() {
    create_refused("norootfs", &["rootfs", "does not exist"], |b| {
        std::fs::remove_dir_all(b.rootfs()).unwrap()
    });
}

#[test]
fn unknown_namespace_type() {
    create_refused("badns", &["`linux.namespaces[6].type`", "bogus"], |b| {
        b.edit(|c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            assert_eq!(ns.len(), 6);
            ns.push(json!({"type": "bogus"}));
        })
    });
}

#[test]
fn unknown_capability() {
    create_refused(
        "badcap",
        &["`process.capabilities.bounding", "CAP_BOGUS"],
        |b| {
            b.edit(|c| {
                c["process"]["capabilities"]["bounding"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("CAP_BOGUS"))
            })
        },
    );
}

#[test]
fn cgroups_path_with_dot_dot() {
    let Some(b) = Bundle::new("cgdotdot") else {
        return;
    };
    let (first, second) = (format!("{}-a", b.id), format!("{}-b", b.id));
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/{first}/../{second}")));
    let e = b.create_fails();
    assert!(e.contains("cgroupsPath") && e.contains("\"..\""), "{e}");
    b.assert_no_trace(&b.id, &first);
    b.assert_no_trace(&b.id, &second);
}

#[test]
fn rlimit_above_the_hard_limit() {
    let Some(b) = Bundle::new("rlimit") else {
        return;
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    b.edit(|c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "hard": 10_000_000u64, "soft": 10_000_000u64}])
    });
    let e = b.create_fails();
    assert!(
        e.contains("RLIMIT_NOFILE") && e.contains("10000000"),
        "the error should name the limit: {e}"
    );
    assert!(
        e.contains(&lim.rlim_max.to_string()),
        "the error should say what the host allows ({}): {e}",
        lim.rlim_max
    );
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn id_already_taken() {
    let Some(b) = Bundle::new("taken") else {
        return;
    };
    b.create(&[]);
    let pid = b.pid();
    let e = b.fail(&["create", "--bundle", b.dir().to_str().unwrap(), &b.id]);
    assert!(e.contains(&b.id) && e.contains("already in use"), "{e}");
    // The first container is untouched.
    let st = b.state();
    assert_eq!(st["status"], json!("created"));
    assert_eq!(st["pid"].as_i64(), Some(pid));
    assert!(alive(pid));
    b.ok(&["delete", &b.id]);
    assert!(!alive(pid));
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn ids_with_path_characters() {
    let Some(b) = Bundle::new("pathid") else {
        return;
    };
    let escape = b.root().parent().unwrap().join("x");
    let existed = escape.exists();
    // With the cgroup the id would have given (`amphi/<id>`, normalised).
    for (id, cgroup) in [
        ("../x", Some("x")),
        ("a/b", Some("amphi/a")),
        ("..", None),
        ("", None),
    ] {
        let e = b.fail(&["create", "--bundle", b.dir().to_str().unwrap(), id]);
        assert!(e.contains("invalid container id"), "{id:?}: {e}");
        b.assert_no_trace_in(id, cgroup);
        for cmd in ["state", "start", "delete"] {
            let e = b.fail(&[cmd, id]);
            assert!(e.contains("invalid container id"), "{cmd} {id:?}: {e}");
        }
    }
    assert_eq!(
        escape.exists(),
        existed,
        "something was created at {}",
        escape.display()
    );
}

#[test]
fn exec_into_a_stopped_container() {
    let Some(b) = Bundle::new("execstopped") else {
        return;
    };
    b.edit(|c| c["process"]["args"] = json!(["true"]));
    b.create(&[]);
    b.start();
    b.wait_status("stopped");
    // exec's own failures exit 255, as runc's.
    for args in [
        vec!["exec", &b.id, "echo", "hi"],
        vec!["exec", "--process", "/nonexistent.json", &b.id],
    ] {
        let out = b.run(&args);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{}", show(&out));
        assert!(
            e.contains("amphi: error:") && e.contains("not running"),
            "{e}"
        );
    }
    assert_eq!(b.status(), "stopped");
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn kill_of_an_unknown_id() {
    let Some(b) = Bundle::new("killunknown") else {
        return;
    };
    let e = b.fail(&["kill", &b.id, "KILL"]);
    assert!(e.contains(&b.id) && e.contains("does not exist"), "{e}");
    let e = b.fail(&["delete", &b.id]);
    assert!(e.contains("does not exist"), "{e}");
    let e = b.fail(&["kill", &b.id, "SIGNOPE"]);
    assert!(e.contains("SIGNOPE"), "{e}");
    b.assert_no_trace(&b.id, &b.cgroup());
}

#[test]
fn start_of_a_running_container() {
    let Some(b) = Bundle::new("startrunning") else {
        return;
    };
    b.create(&[]);
    b.start();
    let pid = b.pid();
    let e = b.fail(&["start", &b.id]);
    assert!(e.contains("running") && e.contains("not created"), "{e}");
    assert_eq!(b.status(), "running");
    assert_eq!(b.pid(), pid);
    b.ok(&["delete", "--force", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

// ---------------------------------------------------------------------------
// 7. --log FILE --log-format json.

#[test]
fn errors_are_logged_as_json_lines() {
    let Some(b) = Bundle::new("log") else { return };
    let logf = b.dir().join("amphi.log");
    let l = logf.to_str().unwrap();
    b.fail(&["--log", l, "--log-format", "json", "state", &b.id]);
    b.edit(|c| c["process"]["args"] = json!(42));
    b.fail(&[
        "--log",
        l,
        "--log-format",
        "json",
        "create",
        "--bundle",
        b.dir().to_str().unwrap(),
        &b.id,
    ]);
    let text = std::fs::read_to_string(&logf).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for v in &lines {
        assert_eq!(v["level"], json!("error"), "{v}");
    }
    let msg = |i: usize| lines[i]["msg"].as_str().unwrap().to_string();
    assert!(
        msg(0).contains(&b.id) && msg(0).contains("does not exist"),
        "{text}"
    );
    assert!(msg(1).contains("process.args"), "{text}");
    b.assert_no_trace(&b.id, &b.cgroup());
}

// ---------------------------------------------------------------------------
// 8. Resources.

#[test]
fn memory_and_pids_limits_are_applied() {
    let Some(b) = Bundle::new("res") else { return };
    let cgroup = format!("/{}", b.id);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(cgroup);
        c["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
        c["linux"]["resources"]["pids"] = json!({"limit": 42});
    });
    b.create(&[]);
    let pid = b.pid();
    let read = |ctrl: &str, file: &str| -> String {
        let p = if unified_host() {
            Path::new("/sys/fs/cgroup").join(&b.id).join(file)
        } else {
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(&b.id)
                .join(file)
        };
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    };
    let (mem_file, pids_file) = if unified_host() {
        ("memory.max", "pids.max")
    } else {
        ("memory.limit_in_bytes", "pids.max")
    };
    let check = || {
        assert_eq!(read("memory", mem_file), (64 * 1024 * 1024).to_string());
        assert_eq!(read("pids", pids_file), "42");
        let procs = read("pids", "cgroup.procs");
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    };
    check();
    b.start();
    assert_eq!(b.status(), "running");
    check();
    b.ok(&["delete", "--force", &b.id]);
    b.assert_no_trace(&b.id, &cgroup);
}

/// Without a mount namespace the root is a chroot with no /proc of its
/// own: `create` still waits for `start` on the exec fifo (reopened
/// through the /proc it had before the chroot) and oomScoreAdj is set
/// (runtime-tools' linux_ns_itype found the process dead at `state`).
#[test]
fn create_and_start_without_a_mount_namespace() {
    let Some(b) = Bundle::new("nomntns") else {
        return;
    };
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "mount");
        // Masking needs a mount namespace (refused without one).
        c["linux"]["maskedPaths"] = json!([]);
        c["linux"]["readonlyPaths"] = json!([]);
        c["process"]["oomScoreAdj"] = json!(77);
        c["process"]["args"] = json!(["sh", "-c", "echo ran > /ran; exec sleep 1000"]);
    });
    b.create(&[]);
    assert_eq!(b.status(), "created", "{}", b.stderr());
    let pid = b.pid();
    assert!(alive(pid), "the container's process died before start");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "77"
    );
    assert!(!b.rootfs().join("ran").exists());
    b.start();
    // The process's "/" is the rootfs.
    wait_for(10, "the process to run", || b.rootfs().join("ran").exists());
    b.ok(&["kill", &b.id, "KILL"]);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

/// `linux.resources` beyond memory, pids and CPU time: cpusets, CPU
/// realtime, memory reservation, swappiness and the OOM killer, each in its
/// cgroup file; on a cgroup v1 host, a relative `cgroupsPath` whose parents
/// amphi made is removed with them on delete (runtime-tools'
/// linux_cgroups_cpus and *_relative_* left "testdir" behind).
#[test]
fn cgroup_resources_reach_their_files() {
    if unified_host() {
        // The v2 mapping is unit-tested (container::cgroups::resources).
        skip("cgroup v1 files checked here; this host is cgroup v2");
        return;
    }
    let Some(b) = Bundle::new("resources") else {
        return;
    };
    let parent = format!("amphitest-{}", b.id);
    let path = format!("{parent}/mid/{}", b.id);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = json!(path);
        c["linux"]["resources"]["cpu"] = json!({"shares": 512, "period": 200000, "quota": 50000, "cpus": "0", "mems": "0"});
        c["linux"]["resources"]["memory"] = json!({"limit": 67108864, "reservation": 33554432, "swappiness": 10, "disableOOMKiller": true});
        c["linux"]["resources"]["pids"] = json!({"limit": 99});
    });
    b.create(&[]);
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/{path}/{file}"))
            .unwrap_or_else(|e| panic!("{ctrl}/{path}/{file}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(read("cpuset", "cpuset.mems"), "0");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "200000");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("memory", "memory.soft_limit_in_bytes"), "33554432");
    assert_eq!(read("memory", "memory.swappiness"), "10");
    assert!(read("memory", "memory.oom_control").contains("oom_kill_disable 1"));
    assert_eq!(read("pids", "pids.max"), "99");
    b.ok(&["delete", "--force", &b.id]);
    b.assert_no_trace(&b.id, &parent);
}

/// A limit that cannot be applied is an error naming the field, and
/// nothing is left: an unknown huge page size, and on a v1 host a
/// controller that is not mounted.
#[test]
fn cgroup_resources_that_cannot_be_applied_are_refused() {
    let Some(b) = Bundle::new("badres") else {
        return;
    };
    b.edit(|c| {
        c["linux"]["resources"]["hugepageLimits"] = json!([{"pageSize": "3MB", "limit": 1048576}]);
    });
    let err = b.create_fails();
    assert!(
        err.contains("hugepageLimits") && err.contains("\"3MB\""),
        "{err}"
    );
    b.assert_no_trace(&b.id, &b.cgroup());
    if !unified_host() && !Path::new("/sys/fs/cgroup/net_cls").exists() {
        b.edit(|c| {
            c["linux"]["resources"] = json!({"network": {"classID": 1048577}});
        });
        let err = b.create_fails();
        assert!(
            err.contains("linux.resources.network.classID") && err.contains("net_cls"),
            "{err}"
        );
        b.assert_no_trace(&b.id, &b.cgroup());
    }
}

/// A program that exits at once: the poststart hooks still get "running"
/// and its pid (they run because it was executed; runtime-tools'
/// hooks_stdin met "stopped" and pid 0 when `true` won the race).
#[test]
fn poststart_gets_running_even_when_the_program_already_exited() {
    let Some(b) = Bundle::new("poststart") else {
        return;
    };
    let logtmp = tempfile::Builder::new()
        .prefix("amphi-oci-hooklog-")
        .tempdir()
        .unwrap();
    let logdir = std::fs::canonicalize(logtmp.path()).unwrap();
    let log = logdir.join("log");
    let host_hook = logdir.join("hook.sh");
    write_script(&host_hook, HOOK_SCRIPT);
    // The hook waits until the program has surely exited.
    b.edit(|c| {
        c["process"]["args"] = json!(["true"]);
        c["hooks"] = json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c",
            format!("sleep 0.3; exec {} poststart", host_hook.display())],
            "env": [format!("LOG={}", log.display())]}]});
    });
    b.create(&[]);
    let pid = b.pid();
    b.start();
    let entries = read_hook_log(&log);
    assert_eq!(stages(&entries), ["poststart"]);
    assert_eq!(entries[0].1["status"], json!("running"), "{}", entries[0].1);
    assert_eq!(entries[0].1["pid"].as_i64(), Some(pid), "{}", entries[0].1);
    b.wait_status("stopped");
    b.ok(&["delete", &b.id]);
    b.assert_no_trace(&b.id, &b.cgroup());
}

/// A bundle the dispatcher puts in a microVM runs in one through the OCI
/// interface: `create` boots the VM and holds the workload, `start` runs
/// it in the guest (its kernel, the bundle's rootfs shared read-write),
/// `exec` runs beside it, `kill` reaches it, `delete` leaves nothing. The
/// policy decides over the annotation; what a microVM cannot honour is
/// refused at create with the spec path named, and nothing is left.
#[test]
fn a_bundle_that_must_run_in_a_microvm_runs_in_one() {
    let Some(b) = Bundle::new("microvm") else {
        return;
    };
    let host = amphi_tests::host_kernel();
    let id = b.id.clone();
    // The hooks run on the host, each given the state the spec defines.
    let hooks = tempfile::tempdir().unwrap();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}", hooks.path().display())]});
    b.edit(|c| {
        c["annotations"] = json!({"io.amphi.isolation": "vm"});
        c["process"]["args"] = json!([
            "sh", "-c",
            "echo kernel=$(uname -r); echo written > /from-guest; trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
        ]);
        c["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "startContainer": [hook("startContainer")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let hook_state = |name: &str| -> Value {
        let p = hooks.path().join(name);
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_default())
            .unwrap_or_else(|e| panic!("the {name} hook's state ({e})"))
    };
    b.create(&[]);
    let st = b.state();
    assert_eq!(st["status"], "created", "{st}");
    let monitor = st["pid"].as_i64().unwrap();
    assert!(alive(monitor), "the monitor runs: {st}");
    let h = hook_state("createRuntime");
    assert_eq!(
        (h["status"].as_str(), h["pid"].as_i64()),
        (Some("created"), Some(monitor)),
        "{h}"
    );
    assert_eq!(h["id"], id.as_str());
    assert_eq!(st["annotations"]["io.amphi.isolation"], "vm");
    assert!(
        !b.stdout().contains("kernel="),
        "the workload waits for start"
    );
    b.start();
    wait_for(60, "the workload to run in the guest", || {
        b.stdout().contains("ready")
    });
    assert_eq!(b.status(), "running");
    assert_eq!(hook_state("startContainer")["status"], "created");
    assert_eq!(hook_state("poststart")["pid"].as_i64(), Some(monitor));
    let out = b.stdout();
    let kernel = out
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .unwrap_or_default();
    assert!(
        !kernel.is_empty() && kernel != host.as_str(),
        "the guest's kernel, not the host's ({}): {out}",
        host.as_str()
    );
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("from-guest")).unwrap(),
        "written\n",
        "the guest writes to the bundle's rootfs"
    );
    let out = b.run(&["exec", &id, "sh", "-c", "echo in-exec-$(uname -r); exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("in-exec-{kernel}\n")
    );
    // pause cannot reach a guest's cgroups: refused by name.
    assert!(b.fail(&["pause", &id]).contains("microVM"));
    b.ok(&["kill", &id, "TERM"]);
    b.wait_status("stopped");
    assert!(b.stdout().contains("got-term"), "{}", b.stdout());
    b.ok(&["delete", &id]);
    assert_eq!(hook_state("poststop")["status"], "stopped");
    assert!(!b.root().join(&id).exists());
    assert_no_vm_left(b.root());

    // A host namespace to join: refused, spec path named, nothing left.
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("hooks");
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "mount"}]);
    });
    let err = b.create_fails();
    assert!(
        err.contains("linux.namespaces[1].path") && err.contains("microVM"),
        "{err}"
    );
    assert!(!b.root().join(&id).exists(), "state left for {id}");
    assert_no_vm_left(b.root());
    // runc's one-shot run: in the foreground, the workload's status and
    // output, then nothing left.
    b.edit(|c| {
        c["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "mount"}]);
        c["process"]["args"] = json!(["sh", "-c", "echo run-$(uname -r); exit 6"]);
    });
    let dir = b.dir();
    let out = b.run(&["run", "--bundle", dir.to_str().unwrap(), &id]);
    assert_eq!(out.status.code(), Some(6), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("run-{kernel}\n")
    );
    assert!(!b.root().join(&id).exists(), "state left for {id}");
    assert_no_vm_left(b.root());
}

/// kill -9 of a microVM container's monitor (its pid on the host) takes
/// the VM, virtiofsd and all down with it: `state` says stopped, and
/// `delete` leaves nothing, its run directory included.
#[test]
fn a_microvm_containers_vm_dies_with_its_monitor() {
    let Some(b) = Bundle::new("vmkill") else {
        return;
    };
    let id = b.id.clone();
    b.edit(|c| {
        c["annotations"] = json!({"io.amphi.isolation": "vm"});
        c["process"]["args"] = json!(["sh", "-c", "echo ready; sleep 1000"]);
    });
    b.create(&[]);
    b.start();
    wait_for(60, "the workload to run in the guest", || {
        b.stdout().contains("ready")
    });
    let monitor = b.pid();
    let vm = b.root().join("vm");
    let children: Vec<i64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(vm.to_str().unwrap()))
        })
        .collect();
    assert!(
        !children.is_empty(),
        "the VMM and virtiofsd name the run directory"
    );
    // SAFETY: killing the container's monitor, as an operator would.
    unsafe { libc::kill(monitor as i32, libc::SIGKILL) };
    b.wait_status("stopped");
    wait_for(20, "the VM's processes to end", || {
        children.iter().all(|p| !alive(*p))
    });
    b.ok(&["delete", &id]);
    assert!(!b.root().join(&id).exists());
    assert_no_vm_left(b.root());
}

/// The policy decides over the spec's annotation: an image the policy
/// sends to a microVM runs in one whatever the annotation says; another
/// image under the same policy runs natively, unless its
/// `io.amphi.kernel.version` asks for a kernel the host does not have.
#[test]
fn the_policy_sends_a_bundle_to_a_microvm_over_its_annotation() {
    let Some(b) = Bundle::new("isolation") else {
        return;
    };
    let host = amphi_tests::host_kernel();
    let id = b.id.clone();
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "[[trust]]\nmatch = \"untrusted.example/**\"\nisolation = \"vm\"\n",
    )
    .unwrap();
    let kernel_of = |image: &str, iso: &str| -> String {
        b.edit(|c| {
            c["annotations"] = json!({
                "io.amphi.isolation": iso,
                "io.kubernetes.cri.image-name": image,
            });
            if image.contains("claims-sandbox") {
                // The CRI sandbox's role, claimed by anyone who can write
                // an annotation: the policy's vm still holds.
                c["annotations"]["io.kubernetes.cri.container-type"] = json!("sandbox");
            }
            if image.contains("old-kernel") {
                // A kernel need the host does not meet: a microVM with a
                // catalog kernel that does.
                c["annotations"]["io.amphi.kernel.version"] = json!("<6.13");
            }
            c["process"]["args"] = json!(["uname", "-r"]);
        });
        let mut c = b.create_cmd(&[]);
        c.env("AMPHI_POLICY", policy.path());
        let (code, err) = b.run_create(c);
        assert_eq!(code, Some(0), "{err}");
        b.start();
        b.wait_status("stopped");
        b.ok(&["delete", &id]);
        b.stdout().trim().to_string()
    };
    let untrusted = kernel_of("untrusted.example/team/app:1", "container");
    assert!(
        !untrusted.is_empty() && untrusted != host.as_str(),
        "a microVM's kernel: {untrusted:?}"
    );
    let claimed = kernel_of("untrusted.example/claims-sandbox:1", "container");
    assert_eq!(
        claimed, untrusted,
        "the sandbox annotation does not lower the policy's vm"
    );
    assert_eq!(
        kernel_of("docker.io/library/busybox:1", "auto"),
        host.as_str()
    );
    let old = kernel_of("docker.io/library/old-kernel:1", "auto");
    let minor = old
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(99);
    assert!(
        old != host.as_str() && old.starts_with("6.") && minor < 13,
        "io.amphi.kernel.version <6.13 gets a guest kernel below 6.13: {old:?}"
    );
    assert_no_vm_left(b.root());
}

/// No microVM run directory is left under the OCI root, and no VMM,
/// virtiofsd or passt of it runs.
fn assert_no_vm_left(root: &Path) {
    let vm = root.join("vm");
    let left: Vec<_> = std::fs::read_dir(&vm)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "microVM run directories left: {left:?}");
    let needle = vm.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        assert!(
            !cmdline.contains(&needle),
            "a process of the microVM is left: {cmdline}"
        );
    }
}
