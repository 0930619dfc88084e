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

/// podman's `--annotation io.amphi.isolation=vm` reaches the dispatcher:
/// amphi's OCI interface cannot run a microVM container yet, so podman's
/// run fails with the reason instead of running it natively.
#[test]
fn podman_asking_for_a_microvm_is_refused_not_run_natively() {
    if !have("podman") {
        amphi_tests::skip("podman is not installed (scripts/setup installs it)");
        return;
    }
    let p = Podman::new();
    let img = p.image();
    let out = run_cmd(&mut p.cmd(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--annotation",
        "io.amphi.isolation=vm",
        &img,
        "echo",
        "ran-natively",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran-natively"));
    assert!(
        err.contains("must run in a microVM") && err.contains("io.amphi.isolation=vm"),
        "{err}"
    );
}

#[test]
fn podman_interactive_tty_through_the_console_socket() {
    if !have("podman") || !have("script") {
        amphi_tests::skip("podman or script(1) missing");
        return;
    }
    let p = Podman::new();
    let img = p.image();
    let d = p.dir.path();
    let inner = format!(
        "CONTAINERS_CONF={} podman --root {} --runroot {} --tmpdir {} --storage-driver vfs --runtime {} run --rm -it --network none {img} sh",
        d.join("containers.conf").display(),
        d.join("root").display(),
        d.join("run").display(),
        d.join("tmp").display(),
        amphi_bin().display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tty; echo typed-$((6*7))\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"exit 3\n").unwrap();
    drop(stdin);
    let out = wait_timeout(child, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/"),
        "the shell has a terminal: {text}"
    );
    assert!(text.contains("typed-42"), "input reached the shell: {text}");
    assert_eq!(out.status.code(), Some(3), "{text}");
}

fn wait_timeout(mut child: Child, t: Duration) -> std::process::Output {
    let deadline = Instant::now() + t;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("timed out: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let out = c.ctr(&["containers", "ls", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "ctr run --rm left containers"
    );
}
