//! amphi as the OCI runtime of real clients: podman and containerd (ctr),
//! both from Debian, each with private storage so nothing of the host's
//! configuration is touched.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{amphi_bin, have, run_cmd, test_image, Podman};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn podman_run_uses_amphi() {
    if !have("podman") {
        amphi_tests::skip("podman is not installed (scripts/setup installs it)");
        return;
    }
    let p = Podman::new();
    let img = p.image();
    let out = run_cmd(&mut p.cmd(&["run", "--rm", "--network", "none", &img, "echo", "hi"]));
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let out = run_cmd(&mut p.cmd(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "sh",
        "-c",
        "exit 5",
    ]));
    assert_eq!(out.status.code(), Some(5));
    // podman really went through amphi: its state lives under amphi's root.
    let out = run_cmd(&mut p.cmd(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "bg",
        &img,
        "sleep",
        "30",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cmd(&mut p.cmd(&["exec", "bg", "cat", "/proc/1/cmdline"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("sleep"),
        "{out:?}"
    );
    let out = run_cmd(&mut p.cmd(&["inspect", "--format", "{{.OCIRuntime}}", "bg"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("amphi"),
        "{out:?}"
    );
    let out = run_cmd(&mut p.cmd(&["rm", "-f", "bg"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// podman's `--annotation io.amphi.isolation=vm` reaches the dispatcher,
/// and the container runs in a microVM through amphi's OCI interface: the
/// guest's kernel answers `uname -r` (the host's without the annotation);
/// a detached one takes `podman exec` (output and status; `-it` with a
/// terminal), gets `podman stop`'s SIGTERM and ends with its own status; `-it` gets a terminal in
/// the guest through the console socket. Nothing of the VMs is left.
#[test]
fn podman_runs_microvm_containers_through_amphi() {
    if !have("podman") || !have("script") {
        amphi_tests::skip("podman or script(1) missing (scripts/setup installs them)");
        return;
    }
    let p = Podman::new();
    let img = p.image();
    let host = amphi_tests::host_kernel();
    let uname = |extra: &[&str]| -> String {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[img.as_str(), "uname", "-r"]);
        let out = run_cmd(&mut p.cmd(&args));
        assert!(
            out.status.success(),
            "podman run {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let guest = uname(&["--annotation", "io.amphi.isolation=vm"]);
    assert!(
        !guest.is_empty() && guest != host.as_str(),
        "the guest kernel, not the host's {}: {guest:?}",
        host.as_str()
    );
    assert_eq!(uname(&[]), host.as_str());

    let out = run_cmd(&mut p.cmd(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "vm",
        "--annotation",
        "io.amphi.isolation=vm",
        &img,
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 0.1; done",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cmd(&mut p.cmd(&["exec", "vm", "sh", "-c", "uname -r; exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), guest);
    // exec -it: a terminal in the guest, through the console socket.
    let (text, code) = podman_tty(&p, "exec -it vm sh", b"tty; echo typed-$((6*7))\n");
    assert!(
        text.contains("/dev/pts/") && text.contains("typed-42"),
        "{text}"
    );
    assert_eq!(code, Some(3), "{text}");
    let out = run_cmd(&mut p.cmd(&["stop", "-t", "30", "vm"]));
    assert!(out.status.success(), "{out:?}");
    let out = run_cmd(&mut p.cmd(&["inspect", "--format", "{{.State.ExitCode}}", "vm"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{out:?}");
    let out = run_cmd(&mut p.cmd(&["logs", "vm"]));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("up") && logs.contains("got-term"), "{logs}");
    let out = run_cmd(&mut p.cmd(&["rm", "vm"]));
    assert!(out.status.success(), "{out:?}");

    let (text, code) = podman_it(
        &p,
        &["--annotation", "io.amphi.isolation=vm"],
        b"tty; uname -r; echo typed-$((6*7))\n",
    );
    assert!(
        text.contains("/dev/pts/"),
        "a terminal in the guest: {text}"
    );
    assert!(text.contains(&guest), "in the guest: {text}");
    assert!(text.contains("typed-42"), "input reached the shell: {text}");
    assert_eq!(code, Some(3), "{text}");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        assert!(
            !(cmdline.contains("qemu-system") || cmdline.contains("virtiofsd"))
                || !cmdline.contains("/run/amphi/vm/"),
            "a process of podman's microVMs is left: {cmdline}"
        );
    }
}

/// `podman run --rm -it [extra] IMAGE sh` under script(1), typing `input`
/// then `exit 3`: what the terminal showed, and podman's status.
fn podman_it(p: &Podman, extra: &[&str], input: &[u8]) -> (String, Option<i32>) {
    let img = p.image();
    let args = format!("run --rm -it --network none {} {img} sh", extra.join(" "));
    podman_tty(p, &args, input)
}

/// `podman ARGS` under script(1) (a terminal), typing `input` then `exit
/// 3` once `typed-42` showed: what the terminal showed, and podman's
/// status.
fn podman_tty(p: &Podman, args: &str, input: &[u8]) -> (String, Option<i32>) {
    let d = p.dir.path();
    let inner = format!(
        "CONTAINERS_CONF={} podman --root {} --runroot {} --tmpdir {} --storage-driver vfs --runtime {} {args}",
        d.join("containers.conf").display(),
        d.join("root").display(),
        d.join("run").display(),
        d.join("tmp").display(),
        amphi_bin().display(),
    );
    let mut c = Command::new("script");
    c.args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    // The shell reads the input once it runs: a microVM boots first.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut out = out;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    while Instant::now() < deadline
        && !String::from_utf8_lossy(&seen.lock().unwrap()).contains("typed-42")
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stdin.write_all(b"exit 3\n").unwrap();
    drop(stdin);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline + Duration::from_secs(30) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    (text, status.code())
}

#[test]
fn podman_interactive_tty_through_the_console_socket() {
    if !have("podman") || !have("script") {
        amphi_tests::skip("podman or script(1) missing");
        return;
    }
    let p = Podman::new();
    let (text, code) = podman_it(&p, &[], b"tty; echo typed-$((6*7))\n");
    assert!(
        text.contains("/dev/pts/"),
        "the shell has a terminal: {text}"
    );
    assert!(text.contains("typed-42"), "input reached the shell: {text}");
    assert_eq!(code, Some(3), "{text}");
}

/// A private containerd (own root, state and socket), killed on drop with
/// every shim it started.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("amphi-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
                d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let sock = d.join("containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(d.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { dir, daemon }
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "amphitest"])
            .args(args);
        run_cmd(&mut c)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Shims started for our socket.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path().join("containerd.sock"))
            .status();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn ctr_run_with_amphi_as_runc_binary() {
    if !have("containerd") || !have("ctr") || !have("skopeo") {
        amphi_tests::skip("containerd, ctr or skopeo missing (scripts/setup installs them)");
        return;
    }
    let c = Containerd::start();
    let archive: PathBuf = c.path().join("busybox.tar");
    let out = run_cmd(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("oci:{}:latest", test_image("busybox").display()))
            .arg(format!(
                "docker-archive:{}:docker.io/library/busybox:latest",
                archive.display()
            )),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = amphi_bin();
    let bin = bin.to_str().unwrap();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        "docker.io/library/busybox:latest",
        "t1",
        "echo",
        "hi-from-ctr",
    ]);
    assert!(
        out.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi-from-ctr\n");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        "docker.io/library/busybox:latest",
        "t2",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The annotation puts the container in a microVM: the guest's kernel
    // answers, where the host's did without it.
    let host = amphi_tests::host_kernel();
    let uname = |name: &str, extra: &[&str]| -> String {
        let mut args = vec!["run", "--rm", "--runc-binary", bin];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["docker.io/library/busybox:latest", name, "uname", "-r"]);
        let out = c.ctr(&args);
        assert!(
            out.status.success(),
            "ctr run {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(uname("t3", &[]), host.as_str());
    let guest = uname("t4", &["--annotation", "io.amphi.isolation=vm"]);
    assert!(
        !guest.is_empty() && guest != host.as_str(),
        "the guest kernel, not the host's {}: {guest:?}",
        host.as_str()
    );
    let out = c.ctr(&["containers", "ls", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "ctr run --rm left containers"
    );
}
