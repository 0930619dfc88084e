//! Escapes from a native container (and the container inside a microVM):
//! device nodes, the host binary (CVE-2019-5736), leaked descriptors
//! (CVE-2024-21626), mount destinations through symlinks (CVE-2021-30465),
//! inherited capabilities (CVE-2022-24769), io_uring, masked paths, and
//! `exec` escaping the container's user.

use amphi_tests::{
    amphi_bin, derive_image_with_layer, guest_kernel_build, raw_tar, run_cmd, test_image, Amphi,
    Podman, TarEntry,
};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The attacker's tool (tests/attack.rs), built static with the tests.
fn attack_bin() -> Vec<u8> {
    std::fs::read(env!("CARGO_BIN_EXE_amphi-attack")).expect("the amphi-attack binary")
}

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A store with the busybox image plus `/attack` (and `files`) as `name`.
fn hostile_image(a: &Amphi, name: &str, files: &[(&str, &[u8], u32)]) {
    let bin = attack_bin();
    let mut entries = vec![TarEntry::File {
        path: "attack",
        data: &bin,
        mode: 0o755,
    }];
    for (path, data, mode) in files {
        entries.push(TarEntry::File {
            path,
            data,
            mode: *mode,
        });
    }
    let tar = raw_tar(&entries);
    let dir = tempfile::tempdir().unwrap();
    derive_image_with_layer(&test_image("busybox"), dir.path(), |_| {}, &[], Some(&tar));
    a.ok(&["load", "-q", "--tag", name, dir.path().to_str().unwrap()]);
}

/// The host's root file system device (what a container must never open).
fn host_root_dev() -> (u32, u32) {
    let dev = std::fs::metadata("/").unwrap().dev();
    (libc::major(dev), libc::minor(dev))
}

/// The device attack as a shell script for `sh -c`: makes each node (the
/// container's root may mknod: docker keeps CAP_MKNOD) and opens it.
fn device_attack(nodes: &[(&str, &str, u32, u32)]) -> String {
    let mut s = String::new();
    for (name, kind, maj, min) in nodes {
        s.push_str(&format!(
            "echo \"{name} mknod $(/attack mknod /tmp/{name} {kind} {maj} {min}) open $(/attack open /tmp/{name} r)\"; "
        ));
    }
    s.push_str("echo \"null open $(/attack open /dev/null rw)\"");
    s
}

fn assert_devices_denied(out: &str, nodes: &[(&str, &str, u32, u32)]) {
    for (name, ..) in nodes {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no result for {name}:\n{out}"));
        assert_eq!(
            line,
            format!("{name} mknod ok open EPERM"),
            "the container opened a host device:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l == "null open ok"),
        "/dev/null must stay usable:\n{out}"
    );
}

fn host_nodes() -> Vec<(&'static str, &'static str, u32, u32)> {
    let (maj, min) = host_root_dev();
    vec![
        ("loop0", "b", 7, 0),
        ("loopctl", "c", 10, 237),
        ("mem", "c", 1, 1),
        ("kmsg", "c", 1, 11),
        ("rootdisk", "b", maj, min),
    ]
}

#[test]
fn device_nodes_native() {
    device_attack_in(&[], &host_nodes());
}

/// Runs the device attack on `nodes` in a container made with the
/// `run_args` (before the image) and asserts the attacker got nothing.
fn device_attack_in(run_args: &[&str], nodes: &[(&str, &str, u32, u32)]) {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/devices:1", &[]);
    let attack = device_attack(nodes);
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(run_args);
    args.extend(["localhost/escape/devices:1", "sh", "-c", &attack]);
    assert_devices_denied(&a.ok(&args), nodes);
}

/// The same attack in the container inside a microVM, whose kernel is a
/// pure cgroup v2 host: the rules are a BPF device program there. The
/// guest's own console (hvc0, 229:0) carries the host channel.
#[test]
fn device_nodes_in_microvm() {
    let Some((dir, _)) = guest_kernel_build("6.12") else {
        panic!("the 6.12 guest kernel is not built: scripts/test builds it (amphi kernel build --version 6.12)");
    };
    let kernel = dir.join("vmlinux");
    device_attack_in(
        &["--isolation", "vm", "--kernel", kernel.to_str().unwrap()],
        &[
            ("loop0", "b", 7, 0),
            ("hvc0", "c", 229, 0),
            ("mem", "c", 1, 1),
            ("vda", "b", 254, 0),
        ],
    );
}

/// Through podman, whose bundle carries its own device rules.
#[test]
fn device_nodes_through_podman() {
    let p = Podman::new();
    let nodes = host_nodes();
    let mut script = String::new();
    for (name, kind, maj, min) in &nodes {
        script.push_str(&format!(
            "mknod /tmp/{name} {kind} {maj} {min} && if head -c1 /tmp/{name} >/dev/null 2>/tmp/err; then echo \"{name} opened\"; else echo \"{name} $(cat /tmp/err)\"; fi; "
        ));
    }
    let out = run_cmd(&mut p.cmd(&["run", "--rm", &p.image(), "sh", "-c", &script]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podman run: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, ..) in &nodes {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no result for {name}:\n{text}"));
        assert!(
            line.contains("Operation not permitted"),
            "podman's container opened a host device: {line}"
        );
    }
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// A copy of amphi to attack, so a failed defence damages only the copy.
fn amphi_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("amphi-victim-")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("amphi");
    std::fs::copy(amphi_bin(), &bin).unwrap();
    (dir, bin)
}

/// CVE-2019-5736 through an image whose entrypoint is `/proc/self/exe`:
/// amphi itself runs as the container's PID 1, and the workload tries to
/// write the binary behind it.
#[test]
fn cve_2019_5736_entrypoint_proc_self_exe() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/selfexe:1", &[]);
    let (_keep, victim) = amphi_copy();
    let before = sha256_file(&victim);
    let script = "readlink /proc/1/exe; echo \"write $(/attack open /proc/1/exe w)\"; \
                  exec 3</proc/1/exe; echo \"reopen $(/attack open /proc/self/fd/3 w)\"";
    let out = run_cmd(
        Command::new(&victim)
            .env("AMPHI_ROOT", a.root())
            .args(["run", "--rm", "--entrypoint", "/proc/self/exe"])
            .args([
                "localhost/escape/selfexe:1",
                "init",
                "--",
                "sh",
                "-c",
                script,
            ]),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = text.lines().next().unwrap_or_default();
    assert_ne!(
        Path::new(exe),
        victim.as_path(),
        "PID 1 runs the host's binary"
    );
    assert_refused(&text, "write");
    assert_refused(&text, "reopen");
    assert_eq!(sha256_file(&victim), before, "the host binary changed");
}

/// The attacker's report `what` says the write was refused (the sealed
/// copy is read-only: EROFS, or EPERM for a sealed memfd).
fn assert_refused(report: &str, what: &str) {
    assert!(
        report.contains(&format!("{what} EROFS")) || report.contains(&format!("{what} EPERM")),
        "{what} was not refused: {report}"
    );
}

/// CVE-2019-5736 through `exec`: a process in the container holds on to
/// the binary of an `amphi exec` process (a `#!/proc/self/exe` program
/// runs amphi in the container), and once that process has ended reopens
/// it for writing, as the original exploit did.
#[test]
fn cve_2019_5736_exec_proc_self_exe() {
    let a = Amphi::new();
    let watcher: &[u8] = b"#!/bin/sh\n\
        # Wait for a process running amphi's binary, keep it open, wait for\n\
        # it to end, then try to write it.\n\
        while :; do\n\
          for p in /proc/[0-9]*; do\n\
            [ \"$(cat $p/cmdline 2>/dev/null | tr '\\0' ' ')\" = \"/proc/self/exe init -- sleep 2 \" ] || continue\n\
            exec 3<$p/exe || continue\n\
            echo \"held $(readlink $p/exe)\" > /result\n\
            while [ -d $p ]; do sleep 0.1; done\n\
            echo \"write $(/attack open /proc/self/fd/3 w)\" >> /result\n\
            echo done >> /result\n\
            exec sleep 1000\n\
          done\n\
          sleep 0.05\n\
        done\n";
    hostile_image(
        &a,
        "localhost/escape/exec:1",
        &[("watcher", watcher, 0o755)],
    );
    let (_keep, victim) = amphi_copy();
    let before = sha256_file(&victim);
    let name = unique("cve-2019-5736");
    let amphi = |args: &[&str]| {
        let out = run_cmd(Command::new(&victim).env("AMPHI_ROOT", a.root()).args(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = amphi(&[
        "run",
        "-d",
        "--name",
        &name,
        "localhost/escape/exec:1",
        "/watcher",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = amphi(&["exec", &name, "/proc/self/exe", "init", "--", "sleep", "2"]);
    let mut result = String::new();
    for _ in 0..100 {
        result = amphi(&["exec", &name, "cat", "/result"]).1;
        if result.contains("done") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = amphi(&["rm", "-f", &name]);
    assert!(ok, "exec: {text}");
    assert!(
        result.contains("held "),
        "the watcher never saw the exec'd amphi: {result}"
    );
    assert_refused(&result, "write");
    assert_eq!(sha256_file(&victim), before, "the host binary changed");
}

/// CVE-2024-21626: a descriptor of the host leaked into the container
/// (runc's was /sys/fs/cgroup) lets `-w /proc/self/fd/N` start the
/// workload with a host directory as its working directory. No descriptor
/// beyond stdio may reach the workload.
#[test]
fn cve_2024_21626_leaked_fds() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/fd:1", &[]);
    for n in 3..=9 {
        let wd = format!("/proc/self/fd/{n}");
        let out = a.run(&[
            "run",
            "--rm",
            "-w",
            &wd,
            "localhost/escape/fd:1",
            "cat",
            "../../../../etc/hostname",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        assert!(
            !out.status.success() || (!host.trim().is_empty() && !stdout.contains(host.trim())),
            "-w {wd} reached the host: {stdout}"
        );
    }
    let fds = a.ok(&[
        "run",
        "--rm",
        "localhost/escape/fd:1",
        "sh",
        "-c",
        "ls /proc/1/fd; true",
    ]);
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert_eq!(
        fds,
        ["0", "1", "2"],
        "descriptors leaked into the container"
    );
}

/// CVE-2021-30465 (the class): a mount destination that is a symlink in
/// the image resolves inside the rootfs, never on the host.
#[test]
fn cve_2021_30465_mount_destination_symlink() {
    let a = Amphi::new();
    let host_target = std::env::temp_dir().join(unique("amphi-mount-target"));
    std::fs::create_dir(&host_target).unwrap();
    let link = format!("../../../../../../../..{}", host_target.display());
    let tar = raw_tar(&[
        TarEntry::Symlink {
            path: "evil",
            target: &link,
        },
        TarEntry::Symlink {
            path: "evil-abs",
            target: host_target.to_str().unwrap(),
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    derive_image_with_layer(&test_image("busybox"), dir.path(), |_| {}, &[], Some(&tar));
    a.ok(&[
        "load",
        "-q",
        "--tag",
        "localhost/escape/mnt:1",
        dir.path().to_str().unwrap(),
    ]);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("payload"), "x").unwrap();
    for dest in ["/evil", "/evil-abs"] {
        let vol = format!("{}:{dest}", src.path().display());
        let _ = a.run(&[
            "run",
            "--rm",
            "-v",
            &vol,
            "localhost/escape/mnt:1",
            "sh",
            "-c",
            "touch /evil/written /evil-abs/written; true",
        ]);
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(host_target.to_str().unwrap());
        let entries: Vec<_> = std::fs::read_dir(&host_target).unwrap().collect();
        assert!(
            !mounted,
            "{dest}: a mount landed on the host at {}",
            host_target.display()
        );
        assert!(
            entries.is_empty(),
            "{dest}: the container wrote into the host's {}",
            host_target.display()
        );
    }
    let _ = std::fs::remove_dir(&host_target);
}

/// CVE-2022-24769: no inheritable capabilities, for the workload and for
/// an `exec` as another user (whose file capabilities could otherwise
/// grant them back).
#[test]
fn cve_2022_24769_inheritable_capabilities() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/caps:1", &[]);
    let out = a.ok(&[
        "run",
        "--rm",
        "localhost/escape/caps:1",
        "grep",
        "CapInh",
        "/proc/self/status",
    ]);
    assert_eq!(
        out.split_whitespace().nth(1),
        Some("0000000000000000"),
        "{out}"
    );
    let name = unique("cve-2022-24769");
    a.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "localhost/escape/caps:1",
        "sleep",
        "1000",
    ]);
    let out = a.run(&[
        "exec",
        "-u",
        "65534",
        &name,
        "grep",
        "Cap",
        "/proc/self/status",
    ]);
    let _ = a.run(&["rm", "-f", &name]);
    let text = String::from_utf8_lossy(&out.stdout);
    let inh = text
        .lines()
        .find(|l| l.starts_with("CapInh"))
        .unwrap_or_default();
    assert!(inh.ends_with("0000000000000000"), "{text}");
}

/// io_uring performs its operations outside seccomp's view: denied, as by
/// docker's profile.
#[test]
fn seccomp_denies_io_uring() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/uring:1", &[]);
    let out = a.ok(&[
        "run",
        "--rm",
        "localhost/escape/uring:1",
        "/attack",
        "io-uring",
    ]);
    assert_eq!(out.trim(), "EPERM");
}

/// What the container sees of the host's kernel and hardware: masked, and
/// /proc without setuid, device or executable files.
#[test]
fn masked_paths_and_proc_flags() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/proc:1", &[]);
    let out = a.ok(&[
        "run",
        "--rm",
        "localhost/escape/proc:1",
        "sh",
        "-c",
        "echo \"interrupts $(wc -c < /proc/interrupts)\"; echo \"powercap $(ls /sys/devices/virtual/powercap 2>/dev/null | wc -l)\"; \
         echo \"timer_list $(wc -c < /proc/timer_list)\"; grep ' /proc proc ' /proc/self/mounts",
    ]);
    assert!(out.contains("interrupts 0"), "{out}");
    assert!(out.contains("powercap 0"), "{out}");
    assert!(out.contains("timer_list 0"), "{out}");
    let proc_line = out
        .lines()
        .find(|l| l.starts_with("proc /proc proc"))
        .unwrap();
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(
            proc_line.contains(flag),
            "/proc without {flag}: {proc_line}"
        );
    }
}

/// `exec` into a container started with `-u` runs as that user, with its
/// (absent) capabilities, as `docker exec` does; `-u` overrides it.
#[test]
fn exec_keeps_the_container_user() {
    let a = Amphi::new();
    hostile_image(&a, "localhost/escape/user:1", &[]);
    let name = unique("exec-user");
    a.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-u",
        "nobody",
        "localhost/escape/user:1",
        "sleep",
        "1000",
    ]);
    let who = a.run(&[
        "exec",
        &name,
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status; /attack mknod /tmp/x c 1 3",
    ]);
    let root = a.run(&["exec", "-u", "root", &name, "id", "-u"]);
    let _ = a.run(&["rm", "-f", &name]);
    let who = String::from_utf8_lossy(&who.stdout).into_owned();
    let mut lines = who.lines();
    assert_eq!(lines.next(), Some("65534"), "{who}");
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .ends_with("0000000000000000"),
        "{who}"
    );
    assert_eq!(lines.next(), Some("EPERM"), "{who}");
    assert_eq!(String::from_utf8_lossy(&root.stdout).trim(), "0");
}

/// amphi's own rootfs annotations (`io.amphi.rootfs.*`, which name the
/// host directories that make a container's overlay root) coming from
/// outside: a bundle that carries them is refused, naming the annotation,
/// and leaves nothing; an image that carries them, run through podman
/// (which may copy an image's annotations into the spec), never gets the
/// host's root as its own.
#[test]
fn rootfs_annotations_from_outside_are_refused() {
    let host_marker = std::env::temp_dir().join(unique("amphi-host-marker"));
    std::fs::write(&host_marker, "host secret").unwrap();
    let marker_name = host_marker
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let scratch = tempfile::tempdir().unwrap();
    let (upper, work) = (scratch.path().join("upper"), scratch.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let hostile = [
        ("io.amphi.rootfs.lower", "/".to_string()),
        ("io.amphi.rootfs.upper", upper.display().to_string()),
        ("io.amphi.rootfs.work", work.display().to_string()),
    ];

    // A bundle.
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    let image = format!("{}:latest", test_image("busybox").display());
    let out = run_cmd(
        Command::new("umoci")
            .args(["raw", "unpack", "--image", &image])
            .arg(&rootfs),
    );
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = tempfile::tempdir().unwrap();
    let amphi = |args: &[&str]| {
        run_cmd(
            Command::new(amphi_bin())
                .arg("--root")
                .arg(state.path())
                .args(args),
        )
    };
    assert!(
        amphi(&["spec", "--bundle", bundle.path().to_str().unwrap()])
            .status
            .success()
    );
    let cfg_path = bundle.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["cat", format!("/tmp/{marker_name}")]);
    for (k, v) in &hostile {
        cfg["annotations"][*k] = v.clone().into();
    }
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let id = unique("rootfs-ann");
    for args in [
        vec!["run", "--bundle", bundle.path().to_str().unwrap(), &id],
        vec!["create", "--bundle", bundle.path().to_str().unwrap(), &id],
    ] {
        let out = amphi(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stdout.contains("host secret"),
            "the container read the host's files: {stdout}"
        );
        assert!(
            !out.status.success(),
            "{args:?} accepted the annotations: {stderr}"
        );
        assert!(
            stderr.contains("annotations.io.amphi.rootfs.lower"),
            "{stderr}"
        );
        assert!(
            std::fs::read_dir(state.path()).unwrap().next().is_none(),
            "{args:?} left state behind"
        );
    }

    // An image, through podman.
    let p = Podman::new();
    // podman names an OCI layout after its path, which must be lower case.
    let layout = std::env::temp_dir().join(unique("amphi-hostile-image"));
    std::fs::create_dir(&layout).unwrap();
    let ann: Vec<(&str, &str)> = hostile.iter().map(|(k, v)| (*k, v.as_str())).collect();
    amphi_tests::derive_image(&test_image("busybox"), &layout, |_| {}, &ann);
    let src = format!("oci:{}:latest", layout.display());
    let out = run_cmd(&mut p.cmd(&["pull", "-q", &src]));
    assert!(
        out.status.success(),
        "podman pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = format!("/tmp/{marker_name}");
    let out = run_cmd(&mut p.cmd(&["run", "--rm", &img, "cat", &path]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // podman 4 copies the image's annotations into the spec: refused.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("annotations.io.amphi.rootfs.lower"),
        "podman run failed for another reason: {stderr}"
    );
    assert!(
        !stdout.contains("host secret"),
        "podman's container read the host's files: {stdout}"
    );
    assert!(
        std::fs::read_dir(&upper).unwrap().next().is_none(),
        "the container wrote into a host directory named by the image"
    );
    let _ = std::fs::remove_file(&host_marker);
    let _ = std::fs::remove_dir_all(&layout);
}
