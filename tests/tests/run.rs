//! `amphi run` on the native path, end to end with the busybox test image.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{test_image, Amphi};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMG: &str = "localhost/demo/busybox:latest";

/// An amphi with the busybox image loaded and a private state root.
struct Env {
    a: Amphi,
    state: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let a = Amphi::new();
        a.load_test_image("busybox", IMG);
        Env {
            a,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.a.cmd(args);
        c.env("AMPHI_STATE", self.state.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        c.stdin(Stdio::null());
        amphi_tests::run_cmd(&mut c)
    }

    /// `amphi run --rm IMG ARGS...`, returning (status, stdout, stderr).
    fn rm(&self, flags: &[&str], cmd: &[&str]) -> (i32, String, String) {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.push(IMG);
        args.extend_from_slice(cmd);
        let out = self.run(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Nothing of any container is left: state, writable layers, cgroups, mounts.
    fn assert_clean(&self) {
        let leftovers: Vec<PathBuf> = std::fs::read_dir(self.state.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(leftovers.is_empty(), "state left behind: {leftovers:?}");
        let containers = self.a.root().join("containers");
        if containers.exists() {
            let left: Vec<_> = std::fs::read_dir(&containers)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "container layers left behind: {left:?}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for p in [self.a.root(), self.state.path()] {
            assert!(
                !mounts.contains(p.to_str().unwrap()),
                "mount left under {}",
                p.display()
            );
        }
    }
}

fn cgroup_dirs_for(id_prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in [
        "/sys/fs/cgroup/memory/amphi",
        "/sys/fs/cgroup/pids/amphi",
        "/sys/fs/cgroup/amphi",
    ] {
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(id_prefix) {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

#[test]
fn stdout_stderr_and_exit_status() {
    let e = Env::new();
    let (code, out, err) = e.rm(&[], &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((code, out.as_str()), (3, "out\n"), "{err}");
    assert!(err.contains("err"), "{err}");
    let (code, out, _) = e.rm(&[], &["echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    e.assert_clean();
}

/// `amphi run`'s no_new_privs: on by default (a seccomp filter without
/// CAP_SYS_ADMIN needs it, and amphi's spec says so), on when asked, and
/// off with seccomp unconfined or with CAP_SYS_ADMIN kept.
#[test]
fn no_new_privileges_as_the_spec_says() {
    let e = Env::new();
    let nnp = |flags: &[&str]| {
        let (code, out, err) = e.rm(flags, &["grep", "NoNewPrivs", "/proc/self/status"]);
        assert_eq!(code, 0, "{flags:?}: {err}");
        out.trim().rsplit('\t').next().unwrap_or("").to_string()
    };
    assert_eq!(nnp(&[]), "1");
    assert_eq!(nnp(&["--security-opt", "no-new-privileges"]), "1");
    assert_eq!(nnp(&["--security-opt", "seccomp=unconfined"]), "0");
    assert_eq!(nnp(&["--cap-add", "SYS_ADMIN"]), "0");
    e.assert_clean();
}

#[test]
fn missing_command_and_user_give_docker_statuses() {
    let e = Env::new();
    let (code, _, err) = e.rm(&[], &["no-such-command"]);
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("no-such-command") && err.contains("not found"),
        "{err}"
    );
    // A path that does not exist is "not found" too; a file that exists
    // but cannot be executed is 126, with the kernel's reason.
    let (code, _, err) = e.rm(&[], &["/no/such/program"]);
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("exec /no/such/program: No such file or directory"),
        "{err}"
    );
    let (code, _, err) = e.rm(&[], &["/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("exec /etc/passwd: Permission denied"), "{err}");
    let (code, _, err) = e.rm(&["-u", "nobody-here"], &["true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("nobody-here"), "{err}");
    let (code, _, err) = e.rm(&[], &[]);
    assert_eq!(code, 0, "{err}");
    let out = e.run(&["run", "--rm", "localhost/not/there", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("localhost/not/there"));
    e.assert_clean();
}

/// An image whose config holds a NUL byte in its Cmd or Env: exec would see
/// the string cut at the NUL, so run refuses the image (status 125, as for
/// other bad run configurations) naming the argument or the variable,
/// before anything is created.
#[test]
fn image_config_with_a_nul_byte_is_refused() {
    let e = Env::new();
    let cases: &[(&str, serde_json::Value, serde_json::Value, &str)] = &[
        (
            "localhost/nul/cmd:1",
            serde_json::json!(["echo", "a\u{0}b"]),
            serde_json::json!(["PATH=/bin"]),
            r#"process argument 1 ("a\0b") contains a NUL byte"#,
        ),
        (
            "localhost/nul/env:1",
            serde_json::json!(["echo", "hi"]),
            serde_json::json!(["PATH=/bin", "SECRET=x\u{0}y"]),
            r#"environment variable "SECRET" (entry 1) contains a NUL byte"#,
        ),
    ];
    for (name, cmd, env, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        amphi_tests::derive_image(
            &test_image("busybox"),
            dir.path(),
            |c| {
                c["config"]["Entrypoint"] = serde_json::Value::Null;
                c["config"]["Cmd"] = cmd.clone();
                c["config"]["Env"] = env.clone();
            },
            &[],
        );
        e.a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
        for detach in [&[][..], &["-d"][..]] {
            let mut args = vec!["run", "--rm"];
            args.extend_from_slice(detach);
            args.push(name);
            let out = e.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(125), "{name} {detach:?}: {err}");
            assert!(err.contains(want), "{name} {detach:?}: {err}");
            assert!(
                out.stdout.is_empty(),
                "{name}: ran: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let ps = String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).into_owned();
    assert!(!ps.contains("localhost/nul"), "{ps}");
    e.assert_clean();
}

#[test]
fn env_workdir_user_and_hostname() {
    let e = Env::new();
    let envfile = e.state.path().join("../amphi-envfile-test");
    std::fs::write(&envfile, "# comment\nFROMFILE=yes\n").unwrap();
    let (code, out, err) = e.rm(
        &[
            "-e",
            "FOO=bar",
            "--env-file",
            envfile.to_str().unwrap(),
            "-w",
            "/data/x",
            "-u",
            "amphi",
            "--hostname",
            "box",
        ],
        &[
            "sh",
            "-c",
            "echo $FOO $FROMFILE $HOME; pwd; id -u; id -g; hostname",
        ],
    );
    let _ = std::fs::remove_file(&envfile);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "bar yes /home/amphi\n/data/x\n1000\n1000\nbox\n");
    let (_, out, _) = e.rm(&["-u", "1000:50"], &["id"]);
    assert!(out.contains("uid=1000") && out.contains("gid=50"), "{out}");
    // Non-root users get no effective capabilities, as with docker.
    let (_, out, _) = e.rm(&["-u", "amphi"], &["grep", "CapEff", "/proc/self/status"]);
    assert!(out.contains("0000000000000000"), "{out}");
    e.assert_clean();
}

#[test]
fn isolation_mounts_and_masks() {
    let e = Env::new();
    let (code, out, err) = e.rm(
        &["--network", "none"],
        &["sh", "-c", "echo $$; ls /sys/class/net; cat /proc/keys | wc -c; ls /dev/null /dev/zero /dev/pts/ptmx >/dev/null && echo devok; touch /proc/sys/x 2>&1 | head -1"],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "1",
        "the workload is PID 1 of its namespace: {out}"
    );
    assert_eq!(lines[1], "lo", "--network none: loopback only: {out}");
    assert_eq!(lines[2].trim(), "0", "/proc/keys is masked: {out}");
    assert_eq!(lines[3], "devok");
    // Read-only root and volumes.
    let (code, _, err) = e.rm(&["--read-only"], &["touch", "/x"]);
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from host").unwrap();
    let v = format!("{}:/host", host.path().display());
    let (code, out, _) = e.rm(&["-v", &v], &["sh", "-c", "cat /host/f; echo hi > /host/g"]);
    assert_eq!((code, out.as_str()), (0, "from host"));
    assert_eq!(
        std::fs::read_to_string(host.path().join("g")).unwrap(),
        "hi\n"
    );
    let vro = format!("{v}:ro");
    let (code, _, _) = e.rm(&["-v", &vro], &["touch", "/host/h"]);
    assert_ne!(code, 0);
    assert!(!host.path().join("h").exists());
    let (code, _, err) = e.rm(&["-v", "relative:/x"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("relative"), "{err}");
    // The writable layer is per container: a file written in one run is
    // gone in the next.
    e.rm(&[], &["touch", "/written"]);
    let (code, _, _) = e.rm(&[], &["test", "-e", "/written"]);
    assert_eq!(code, 1);
    e.assert_clean();
}

#[test]
fn capabilities_and_seccomp() {
    let e = Env::new();
    let (code, _, err) = e.rm(&[], &["mount", "-t", "tmpfs", "x", "/mnt"]);
    assert_ne!(code, 0, "mount must be refused: {err}");
    let (code, _, _) = e.rm(&[], &["chown", "1", "/tmp"]);
    assert_eq!(code, 0, "CAP_CHOWN is in docker's default set");
    let (code, _, _) = e.rm(&["--cap-drop", "CHOWN"], &["chown", "1", "/tmp"]);
    assert_ne!(code, 0);
    let (code, out, _) = e.rm(
        &["--cap-drop", "ALL"],
        &["grep", "CapEff", "/proc/self/status"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("0000000000000000"), "{out}");
    let (_, out, _) = e.rm(
        &["--cap-add", "NET_ADMIN"],
        &["grep", "CapEff", "/proc/self/status"],
    );
    let eff = u64::from_str_radix(out.split_whitespace().last().unwrap(), 16).unwrap();
    assert_ne!(eff & (1 << 12), 0, "CAP_NET_ADMIN (12) added: {out}");
    let (code, _, err) = e.rm(&["--cap-add", "FLY"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("FLY"), "{err}");

    let (_, out, _) = e.rm(&[], &["grep", "Seccomp:", "/proc/self/status"]);
    assert!(out.contains('2'), "default seccomp filter: {out}");
    let (_, out, _) = e.rm(
        &["--security-opt", "seccomp=unconfined"],
        &["grep", "Seccomp:", "/proc/self/status"],
    );
    assert!(out.contains('0'), "{out}");
    // A custom profile: mkdir answers EACCES (13).
    let prof = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        prof.path(),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", prof.path().display());
    let (code, _, err) = e.rm(&["--security-opt", &opt], &["mkdir", "/newdir"]);
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    std::fs::write(prof.path(), r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).unwrap();
    let (code, _, err) = e.rm(&["--security-opt", &opt], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("defaultAction"), "{err}");
    e.assert_clean();
}

#[test]
fn memory_pids_and_oom() {
    let e = Env::new();
    let (code, out, err) = e.rm(
        &["--memory", "16m"],
        &[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    assert_eq!(code, 137, "{out}{err}");
    assert!(
        err.contains("was killed by the kernel OOM killer (memory limit reached)"),
        "the OOM kill is reported: {err}"
    );
    let (code, _, err) = e.rm(
        &["--pids-limit", "5"],
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("fork") || err.contains("Resource"), "{err}");
    let (code, _, err) = e.rm(&["--memory", "lots"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("lots"), "{err}");
    // The container has its own cgroup namespace rooted at its cgroup, and
    // its cgroups are removed when it exits (its hostname is its ID's
    // first 12 digits).
    let (_, out, _) = e.rm(
        &["--memory", "64m"],
        &["sh", "-c", "cat /proc/self/cgroup; hostname"],
    );
    // The container sees its own limits where cgroup tools look for them
    // (v1 hierarchies read-only under /sys/fs/cgroup, or cgroup2).
    let (_, limit, err) = e.rm(
        &["--memory", "64m"],
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; touch /sys/fs/cgroup/x 2>/dev/null && echo writable",
        ],
    );
    assert_eq!(limit.trim(), "67108864", "{limit}{err}");
    let mem = out
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no memory cgroup in {out}"));
    assert!(mem.ends_with(":/"), "cgroup namespace root: {out}");
    let id = out.lines().last().unwrap().trim();
    assert_eq!(id.len(), 12, "{out}");
    assert!(cgroup_dirs_for(id).is_empty(), "cgroup of {id} left behind");
    e.assert_clean();
}

#[test]
fn stdin_is_piped_only_with_i() {
    let e = Env::new();
    let mut c = e.cmd(&["run", "--rm", "-i", IMG, "sh", "-c", "tr a-z A-Z"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");
    // Without -i the container reads an empty stdin.
    let mut c = e.cmd(&["run", "--rm", IMG, "cat"]);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let child = c.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    e.assert_clean();
}

#[test]
fn tty_gives_a_real_terminal() {
    let e = Env::new();
    if !amphi_tests::have("script") {
        amphi_tests::skip("script(1) missing: cannot give amphi a terminal");
        return;
    }
    // script(1) gives amphi a terminal; inside, the workload must see one,
    // also as /dev/console (its size is the terminal's).
    let inner = format!(
        "stty rows 30 cols 100; {} run --rm -t {IMG} sh -c 'tty; stty size </dev/console'",
        amphi_tests::amphi_bin().display()
    );
    let out = amphi_tests::in_terminal(
        &inner,
        &[("AMPHI_ROOT", e.a.root()), ("AMPHI_STATE", e.state.path())],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(
        text.contains("30 100"),
        "window size follows the terminal: {text}"
    );
    e.assert_clean();
}

#[test]
fn signals_are_forwarded_and_128_plus_signal() {
    let e = Env::new();
    // SIGTERM to amphi reaches the workload, which traps it.
    let code = sigterm_when_ready(
        &e,
        &[
            "run",
            "--rm",
            IMG,
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    assert_eq!(code, Some(42));

    // A workload killed by a signal exits 128+N.
    let mut child = e
        .cmd(&["run", "--rm", IMG, "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_for_container_pid(e.state.path());
    // SAFETY: killing the container's process (a plain pid).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    e.assert_clean();
}

/// Starts `amphi ARGS` (a workload that prints "ready"), sends amphi
/// SIGTERM once it is ready, and returns amphi's exit code.
fn sigterm_when_ready(e: &Env, args: &[&str]) -> Option<i32> {
    let mut child = e
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    use std::io::Read;
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap().code()
}

fn wait_for_container_pid(state: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(rd) = std::fs::read_dir(state) {
            for d in rd.flatten() {
                if let Ok(s) = std::fs::read(d.path().join("state.json")) {
                    let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
                    return v["pid"].as_i64().unwrap() as i32;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no container state appeared in {}", state.display());
}

#[test]
fn detached_containers_ps_logs_stop_rm() {
    let e = Env::new();
    // A detached run whose command cannot start: the caller's error, and
    // nothing left by the time it returns (`ps -a` at once: the monitor
    // removes the container before it reports).
    for _ in 0..3 {
        let out = e.run(&["run", "-d", "--name", "nostart", IMG, "/no/such/command"]);
        assert_eq!(out.status.code(), Some(127), "{out:?}");
        let ps = String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).into_owned();
        assert!(!ps.contains("nostart"), "left behind: {ps}");
    }
    let out = e.run(&[
        "run",
        "-d",
        "--name",
        "web",
        IMG,
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the container id: {id}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = e.run(&["logs", "web"]);
        if String::from_utf8_lossy(&logs.stdout).contains("started") {
            break;
        }
        assert!(Instant::now() < deadline, "no output in logs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = String::from_utf8_lossy(&e.run(&["ps"]).stdout).into_owned();
    assert!(
        ps.contains(&id[..12]) && ps.contains("Up") && ps.contains("web"),
        "{ps}"
    );
    // The name is taken while the container exists.
    let dup = e.run(&["run", "-d", "--name", "web", IMG, "true"]);
    assert_eq!(dup.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already in use"));
    // exec by name.
    let ex = e.run(&["exec", "web", "cat", "/proc/1/cmdline"]);
    assert!(
        String::from_utf8_lossy(&ex.stdout).starts_with("sh"),
        "{ex:?}"
    );
    // exec -t: a terminal of the caller's size from its first instruction
    // (set before the process starts; a size copied afterwards races a
    // process that reads it at once).
    if amphi_tests::have("script") {
        let inner = format!(
            "stty rows 30 cols 100; {} exec -t web stty size",
            amphi_tests::amphi_bin().display()
        );
        let out = amphi_tests::in_terminal(
            &inner,
            &[("AMPHI_ROOT", e.a.root()), ("AMPHI_STATE", e.state.path())],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l.trim_end_matches('\r') == "30 100"),
            "exec -t's size: {text}"
        );
    } else {
        amphi_tests::skip("script(1) missing: exec -t's terminal size is not tested");
    }
    // rm refuses a running container, stop sends TERM (trapped: exit 0).
    let rm = e.run(&["rm", "web"]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("running"));
    assert!(e.run(&["stop", "web"]).status.success());
    let ps = String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).into_owned();
    assert!(ps.contains("Exited (0)"), "{ps}");
    assert!(!String::from_utf8_lossy(&e.run(&["ps"]).stdout).contains("web"));
    let logs = String::from_utf8_lossy(&e.run(&["logs", &id[..8]]).stdout).into_owned();
    assert_eq!(logs, "started\nbye\n");
    assert!(e.run(&["rm", "web"]).status.success());
    assert!(!String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).contains("web"));

    // kill by name defaults to KILL; rm -f removes a running one.
    let out = e.run(&["run", "-d", "--name", "k", IMG, "sleep", "30"]);
    assert!(out.status.success());
    assert!(e.run(&["kill", "k"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).contains("Exited (137)") {
        assert!(Instant::now() < deadline, "kill did not stop the container");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(e.run(&["rm", "k"]).status.success());
    let out = e.run(&["run", "-d", "--name", "f", IMG, "sleep", "30"]);
    assert!(out.status.success());
    assert!(e.run(&["rm", "-f", "f"]).status.success());
    // A foreground run without --rm is kept until rm, with its exit code.
    let out = e.run(&["run", "--name", "fg", IMG, "sh", "-c", "exit 4"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).contains("Exited (4)"));
    let logs = e.run(&["logs", "fg"]);
    assert!(!logs.status.success(), "foreground runs keep no log");
    assert!(e.run(&["rm", "fg"]).status.success());
    assert!(!e.run(&["rm", "nothing-here"]).status.success());
    e.assert_clean();
}

#[test]
fn init_reaps_zombies_and_forwards_signals() {
    let e = Env::new();
    // An orphan is re-parented to PID 1; amphi's init reaps it.
    let (code, out, err) = e.rm(
        &["--init"],
        &[
            "sh",
            "-c",
            "(sleep 0.1 &); sleep 0.6; ps -o stat,comm | grep -c '^Z' ; exit 3",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(out.trim(), "0", "no zombies under --init: {out}");
    // The workload is not PID 1, so a plain SIGTERM ends it: 128+15.
    let code = sigterm_when_ready(
        &e,
        &[
            "run",
            "--rm",
            "--init",
            IMG,
            "sh",
            "-c",
            "echo ready; sleep 30",
        ],
    );
    assert_eq!(code, Some(143));
    e.assert_clean();
}

#[test]
fn cpu_quota_is_applied() {
    let e = Env::new();
    let out = e.run(&[
        "run", "-d", "--cpus", "0.5", "--name", "cpu", IMG, "sleep", "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v1 = PathBuf::from("/sys/fs/cgroup/cpu/amphi").join(&id);
    let v2 = PathBuf::from("/sys/fs/cgroup/amphi").join(&id);
    let got = if v1.exists() {
        std::fs::read_to_string(v1.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim()
            .to_string()
            + " "
            + std::fs::read_to_string(v1.join("cpu.cfs_period_us"))
                .unwrap()
                .trim()
    } else {
        std::fs::read_to_string(v2.join("cpu.max"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(got, "50000 100000");
    assert!(e.run(&["rm", "-f", "cpu"]).status.success());
    e.assert_clean();
}

/// Every cgroup directory named `id` under /sys/fs/cgroup, in every
/// hierarchy (v1 controllers, the named systemd one, the unified one).
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            // Not through symlinks (cpu -> cpu,cpuacct): each hierarchy once.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == id {
                out.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), id, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 3, &mut out);
    out
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A foreground `amphi run ARGS` started in the background: the client,
/// the container's id and pid, and the client's watchdog (its other child).
struct Foreground {
    client: std::process::Child,
    id: String,
    pid: i32,
    watchdog: i32,
}

fn start_foreground(e: &Env, args: &[&str]) -> Foreground {
    let client = e
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_for_container_pid(e.state.path());
    let id = std::fs::read_dir(e.state.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let cpid = client.id();
    let children = format!("/proc/{cpid}/task/{cpid}/children");
    let mut watchdog = 0;
    wait_until("the client's watchdog", 20, || {
        watchdog = std::fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            // Not the container, nor the pasta of its private network
            // (its command name is passt or passt.avx2).
            .find(|p| {
                *p != pid
                    && std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| !c.trim().starts_with("pass"))
            })
            .unwrap_or(0);
        watchdog != 0
    });
    Foreground {
        client,
        id,
        pid,
        watchdog,
    }
}

/// The container of `id` is gone without a trace: processes, runtime
/// state, writable layer, record and every cgroup named after it.
fn assert_gone(e: &Env, id: &str, pid: i32) {
    wait_until("the container's processes to die", 20, || !pid_alive(pid));
    wait_until("its cleanup", 20, || {
        !e.state.path().join(id).exists()
            && !e.a.root().join("containers").join(id).exists()
            && cgroups_named(id).is_empty()
    });
    e.assert_clean();
}

/// kill -9 of a foreground `amphi run --rm`: the container dies with its
/// client (its watchdog kills it), and --rm is still honoured.
#[test]
fn kill_9_of_the_client_takes_the_container_down() {
    let e = Env::new();
    let mut fg = start_foreground(&e, &["run", "--rm", IMG, "sleep", "1000"]);
    assert!(pid_alive(fg.pid));
    assert!(!cgroups_named(&fg.id).is_empty(), "the test sees no cgroup");
    fg.client.kill().unwrap();
    fg.client.wait().unwrap();
    assert_gone(&e, &fg.id, fg.pid);
    assert!(!pid_alive(fg.watchdog), "the watchdog stays behind");

    // Without --rm the record stays, with the status of a SIGKILL.
    let mut fg = start_foreground(&e, &["run", "--name", "kept", IMG, "sleep", "1000"]);
    fg.client.kill().unwrap();
    fg.client.wait().unwrap();
    wait_until("the container's processes to die", 20, || {
        !pid_alive(fg.pid)
    });
    wait_until("its exit to be recorded", 20, || {
        String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).contains("Exited (137)")
    });
    assert!(cgroups_named(&fg.id).is_empty());
    assert!(!e.state.path().join(&fg.id).exists());
    assert!(e.run(&["rm", "kept"]).status.success());
    e.assert_clean();
}

/// kill -9 of the client and its watchdog together: nothing is left to
/// clean up. `ps` shows the container as stale, `gc` (or `rm`) kills it
/// and removes its state, writable layer, record and every cgroup.
#[test]
fn stale_containers_are_shown_and_removed_by_gc_and_rm() {
    let e = Env::new();
    for (remove, name) in [("gc", "stale-gc"), ("rm", "stale-rm")] {
        let mut args = vec!["run", "--name", name];
        if remove == "gc" {
            args.push("--rm");
        }
        args.extend([IMG, "sleep", "1000"]);
        let mut fg = start_foreground(&e, &args);
        // SAFETY: killing our child's child (the watchdog) first, then our child.
        unsafe { libc::kill(fg.watchdog, libc::SIGKILL) };
        fg.client.kill().unwrap();
        fg.client.wait().unwrap();
        wait_until("the watchdog to die", 20, || !pid_alive(fg.watchdog));
        assert!(pid_alive(fg.pid), "nothing should have killed it yet");
        for ps in [&["ps"][..], &["ps", "-a"]] {
            let out = String::from_utf8_lossy(&e.run(ps).stdout).into_owned();
            let line = out.lines().find(|l| l.contains(name)).unwrap_or("");
            assert!(line.contains("Stale (still running)"), "{ps:?}:\n{out}");
            assert!(!out.contains("unknown"), "{out}");
        }
        let out = e.run(&[remove, name][..if remove == "gc" { 1 } else { 2 }]);
        assert!(
            out.status.success(),
            "amphi {remove}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if remove == "gc" {
            assert!(
                String::from_utf8_lossy(&out.stdout)
                    .contains(&format!("Removed stale container {name}")),
                "{out:?}"
            );
        }
        assert!(
            !pid_alive(fg.pid),
            "amphi {remove} left the workload running"
        );
        assert!(
            cgroups_named(&fg.id).is_empty(),
            "amphi {remove} left cgroups: {:?}",
            cgroups_named(&fg.id)
        );
        assert_gone(&e, &fg.id, fg.pid);
        assert!(!String::from_utf8_lossy(&e.run(&["ps", "-a"]).stdout).contains(name));
    }
}
