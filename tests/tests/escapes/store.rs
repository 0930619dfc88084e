//! Escape class tests: the store and the container state, attacked by a
//! local unprivileged user (uid 65534 through `setpriv`), see escapes.rs.
//!
//! amphi keeps the setuid bits of unpacked layers (an image's own `su` or
//! `ping` must work in its containers), and a container's config holds its
//! `-e` values, its log what it printed. What keeps other local users out
//! is that `$AMPHI_ROOT` and the state root are private (0700, checked and
//! tightened at every start) and those files 0600.

use amphi_tests::{raw_tar, Amphi, Compression, LayoutBuilder, TarEntry};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

/// Runs `argv` as uid/gid 65534 without supplementary groups: the local
/// attacker. (setpriv is util-linux; a missing one fails the test.)
/// setpriv keeps root's capabilities until its own execve, which would
/// look the path up with CAP_DAC_OVERRIDE: a shell, running without any,
/// does the exec.
fn as_nobody(argv: &[&str]) -> Output {
    amphi_tests::run_cmd(
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
                "sh",
                "-c",
                "exec \"$@\"",
                "sh",
            ])
            .args(argv),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A static x86-64 program that exits with its effective uid (low byte):
/// 0 when a setuid-root copy of it gave its caller root, 254 for 65534.
fn exit_with_euid_elf() -> Vec<u8> {
    let code: &[u8] = &[
        0xb8, 0x6b, 0, 0, 0, // mov eax, 107 (geteuid)
        0x0f, 0x05, // syscall
        0x89, 0xc7, // mov edi, eax
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ];
    let base: u64 = 0x40_0000;
    let total = (64 + 56 + code.len()) as u64;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(base + 120).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.extend_from_slice(&base.to_le_bytes()); // vaddr
    e.extend_from_slice(&base.to_le_bytes()); // paddr
    e.extend_from_slice(&total.to_le_bytes()); // filesz
    e.extend_from_slice(&total.to_le_bytes()); // memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    e.extend_from_slice(code);
    e
}

/// Every `layers/sha256/*/diff/<name>` in the store at `root`.
fn in_layers(root: &Path, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("layers/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("diff").join(name))
        .filter(|p| p.exists())
        .collect()
}

/// A local user runs a setuid-root file of an unpacked layer straight
/// from the store (`$AMPHI_ROOT/layers/*/diff`) to become root.
#[test]
fn setuid_in_store() {
    let a = Amphi::new();
    // The store as older amphis left it (directories 0755): open to all.
    chmod(a.root(), 0o755);
    let payload = exit_with_euid_elf();
    // A static busybox (the host's) to keep a container running.
    let busybox = std::fs::read("/usr/bin/busybox").expect("a static /usr/bin/busybox");
    let layout = tempfile::tempdir().unwrap();
    LayoutBuilder::new()
        .layer(
            raw_tar(&[
                TarEntry::File {
                    path: "rootshell",
                    data: &payload,
                    mode: 0o4755,
                },
                TarEntry::File {
                    path: "busybox",
                    data: &busybox,
                    mode: 0o755,
                },
            ]),
            Compression::Gzip,
        )
        .write(layout.path());
    let out = a.run(&[
        "load",
        "-q",
        "--tag",
        "localhost/suid:1",
        layout.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    // The premise: the store holds a setuid-root program...
    let found = in_layers(a.root(), "rootshell");
    assert_eq!(found.len(), 1, "the payload was not unpacked: {found:?}");
    let target = &found[0];
    let m = std::fs::metadata(target).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (0, 0o4755),
        "{}",
        target.display()
    );
    // ...that gives root to whoever reaches it (a copy in a place every
    // user can reach, run by uid 65534, exits with euid 0).
    let reachable = tempfile::tempdir().unwrap();
    chmod(reachable.path(), 0o755);
    let copy = reachable.path().join("rootshell");
    std::fs::copy(target, &copy).unwrap();
    chmod(&copy, 0o4755);
    let control = as_nobody(&[copy.to_str().unwrap()]);
    assert_eq!(
        control.status.code(),
        Some(0),
        "the control copy should run with euid 0: {control:?}"
    );

    // The attack, as uid 65534: run it from the store, or look for it.
    let attack = as_nobody(&[target.to_str().unwrap()]);
    assert_ne!(
        attack.status.code(),
        Some(0),
        "uid 65534 ran the store's setuid-root file and got euid 0"
    );
    assert!(
        text(&attack.stderr).contains("Permission denied"),
        "exec from the store should fail with EACCES: {attack:?}"
    );
    let layers = a.root().join("layers/sha256");
    for p in [a.root(), layers.as_path()] {
        let ls = as_nobody(&["ls", p.to_str().unwrap()]);
        assert!(
            !ls.status.success() && text(&ls.stderr).contains("Permission denied"),
            "uid 65534 listed {}: {ls:?}",
            p.display()
        );
    }
    assert_eq!(mode(a.root()), 0o700);
    assert!(
        text(&out.stderr).contains(&format!("the store {} had mode 0755", a.root().display())),
        "the tightening is announced: {}",
        text(&out.stderr)
    );

    // Reached another way: through /proc/PID/root of a container of the
    // image that runs as the attacker's own uid and gid (same ids, no
    // capabilities: the kernel lets them in). The file runs, but the kernel
    // ignores setuid bits on a mount of another mount namespace (the
    // container's overlay): euid stays 65534.
    let state = tempfile::tempdir().unwrap();
    let amphi = |args: &[&str]| {
        let mut c = a.cmd(args);
        c.env("AMPHI_STATE", state.path());
        amphi_tests::run_cmd(&mut c)
    };
    let out = amphi(&[
        "run",
        "-d",
        "--name",
        "suid",
        "-u",
        "65534:65534",
        "localhost/suid:1",
        "/busybox",
        "sleep",
        "100",
    ]);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&amphi(&["state", "suid"]).stdout).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0, "{st}");
    let via_proc = as_nobody(&[&format!("/proc/{pid}/root/rootshell")]);
    let rm = amphi(&["rm", "-f", "suid"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert_eq!(
        via_proc.status.code(),
        Some(254),
        "through /proc/{pid}/root the payload should run with euid 65534: {via_proc:?}"
    );
}

/// A local user reads another user's container secrets: the `-e` values
/// in the container's config.json and what it printed in its log.
#[test]
fn container_secrets_in_state_and_logs() {
    let a = Amphi::new();
    a.load_test_image("busybox", "localhost/busybox:s");
    // A state root that amphi creates, in a directory every user can
    // traverse (as /run is).
    let base = tempfile::tempdir().unwrap();
    chmod(base.path(), 0o755);
    let state = base.path().join("state");
    let secret = "SECRET=hunter2-7f3a";
    let run = |args: &[&str]| {
        let mut c = a.cmd(args);
        c.env("AMPHI_STATE", &state);
        amphi_tests::run_cmd(&mut c)
    };
    let out = run(&[
        "run",
        "-d",
        "--name",
        "vault",
        "-e",
        secret,
        "localhost/busybox:s",
        "sh",
        "-c",
        "echo $SECRET; sleep 100",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let config = state.join(&id).join("config.json");
    let state_json = state.join(&id).join("state.json");
    let log = a.root().join("containers").join(&id).join("log");
    let record = a.root().join("containers").join(&id).join("container.json");
    // The premise: these files hold the secret.
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2-7f3a"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("hunter2-7f3a")
    {
        assert!(
            Instant::now() < deadline,
            "the secret never reached the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    for f in [&config, &state_json, &log, &record] {
        let cat = as_nobody(&["cat", f.to_str().unwrap()]);
        assert!(
            !text(&cat.stdout).contains("hunter2"),
            "uid 65534 read the secret in {}",
            f.display()
        );
        assert!(
            !cat.status.success() && text(&cat.stderr).contains("Permission denied"),
            "uid 65534 read {}: {} {}",
            f.display(),
            cat.status,
            text(&cat.stderr)
        );
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let ls = as_nobody(&["ls", state.to_str().unwrap()]);
    assert!(
        !ls.status.success() && text(&ls.stderr).contains("Permission denied"),
        "uid 65534 listed the state root: {ls:?}"
    );
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(&id)), 0o700);
    assert_eq!(mode(&a.root().join("containers").join(&id)), 0o700);
    let rm = run(&["rm", "-f", "vault"]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
}

/// A store or state root that other users can read, or change: one made
/// 0755 by an older amphi is tightened at start (with a warning naming it
/// and both modes); one owned by another user, reached through a symlink
/// or sitting in a directory others can write, is refused.
#[test]
fn loose_store_and_state_roots_are_tightened_or_refused() {
    let a = Amphi::new();
    let state = tempfile::tempdir().unwrap();
    chmod(a.root(), 0o755);
    chmod(state.path(), 0o751);
    let out = amphi_tests::run_cmd(a.cmd(&["ps", "-a"]).env("AMPHI_STATE", state.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for (what, p, old) in [
        ("store", a.root(), "0755"),
        ("state root", state.path(), "0751"),
    ] {
        assert!(
            err.contains(&format!(
                "the {what} {} had mode {old}, open to other local users; changed it to 0700",
                p.display()
            )),
            "{err}"
        );
        assert_eq!(mode(p), 0o700, "{}", p.display());
    }
    // Once tight, nothing more is said.
    let out = amphi_tests::run_cmd(a.cmd(&["ps", "-a"]).env("AMPHI_STATE", state.path()));
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");

    // A new store is 0700 whatever the umask.
    let base = tempfile::tempdir().unwrap();
    let fresh = base.path().join("fresh/store");
    let out = amphi_tests::run_cmd(
        Command::new("sh")
            .args([
                "-c",
                "umask 000; exec \"$0\" images",
                amphi_tests::amphi_bin().to_str().unwrap(),
            ])
            .env("AMPHI_ROOT", &fresh),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&fresh), 0o700);
    for d in ["blobs", "blobs/sha256", "layers", "tmp", "locks"] {
        assert_eq!(mode(&fresh.join(d)), 0o700, "{d}");
    }

    // A root the attacker owns (they made it before us, or point a symlink
    // at theirs): refused, nothing written in it.
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&theirs, 0o777);
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    for root in [&theirs, &link] {
        let out = amphi_tests::run_cmd(a.cmd(&["images"]).env("AMPHI_ROOT", root));
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains("owned by uid 65534") && err.contains("refusing"),
            "{}: {out:?}",
            root.display()
        );
        let state = amphi_tests::run_cmd(a.cmd(&["ps"]).env("AMPHI_STATE", root));
        assert!(
            !state.status.success() && text(&state.stderr).contains("owned by uid 65534"),
            "state root {}: {state:?}",
            root.display()
        );
    }
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    // Our store inside their directory: they could swap it for theirs.
    let out = amphi_tests::run_cmd(a.cmd(&["images"]).env("AMPHI_ROOT", theirs.join("store")));
    assert!(
        !out.status.success() && text(&out.stderr).contains("above it"),
        "{out:?}"
    );
    assert!(!theirs.join("store").exists());
    // Under a world-writable directory without the sticky bit.
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let out = amphi_tests::run_cmd(a.cmd(&["images"]).env("AMPHI_ROOT", shared.join("store")));
    assert!(
        !out.status.success() && text(&out.stderr).contains("writable by every user"),
        "{out:?}"
    );
}
