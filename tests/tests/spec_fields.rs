//! Linux fields of the runtime spec, each checked from inside a container
//! started from a hand-made bundle with `amphi run -b` (runc's `run`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::{amphi_bin, run_cmd, test_image};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A busybox bundle with a config made by `amphi spec`, edited by `edit`.
struct Bundle {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Bundle {
    fn new(edit: impl FnOnce(&mut Value)) -> Bundle {
        Self::new_in(&std::env::temp_dir(), edit)
    }

    /// A bundle in directory `parent`.
    fn new_in(parent: &Path, edit: impl FnOnce(&mut Value)) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("amphi-bundle-")
            .tempdir_in(parent)
            .unwrap();
        let out = run_cmd(
            Command::new("umoci")
                .args(["raw", "unpack", "--image"])
                .arg(format!("{}:latest", test_image("busybox").display()))
                .arg(dir.path().join("rootfs")),
        );
        assert!(
            out.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_cmd(
            Command::new(amphi_bin())
                .args(["spec", "--bundle"])
                .arg(dir.path()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = dir.path().join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["process"]["terminal"] = json!(false);
        edit(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        Bundle {
            dir,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `amphi run -b` with `sh -c SCRIPT`: (status, stdout, stderr).
    fn run(&self, script: &str) -> (i32, String, String) {
        let p = self.path().join("config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["process"]["args"] = json!(["sh", "-c", script]);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        // Unique per test: the cgroup is named after the id, and the tests
        // run in parallel.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("spec-{}-{n}", std::process::id());
        let out = run_cmd(
            Command::new(amphi_bin())
                .arg("--root")
                .arg(self.state.path())
                .args(["run", "-b"])
                .arg(self.path())
                .arg(&id),
        );
        let left: Vec<PathBuf> = std::fs::read_dir(self.state.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "run -b left state: {left:?}");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn sysctl_hostname_and_oom_score_adj() {
    let b = Bundle::new(|v| {
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"});
        v["hostname"] = json!("spec-host");
        v["process"]["oomScoreAdj"] = json!(123);
        v["domainname"] = json!("example.test");
    });
    let (code, out, err) = b.run(
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced /proc/self/oom_score_adj; hostname; cat /proc/sys/kernel/domainname",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1\n1\n123\nspec-host\nexample.test\n");
}

#[test]
fn devices_rlimits_and_readonly_root() {
    let b = Bundle::new(|v| {
        v["linux"]["devices"] = json!([{"path": "/dev/fuse-like", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 7, "gid": 8}]);
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}, {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]);
        v["root"]["readonly"] = json!(true);
    });
    let (code, out, err) = b.run(
        "stat -c '%F %t:%T %a %u:%g' /dev/fuse-like; ulimit -n; ulimit -Hn; ulimit -c; touch /x 2>/dev/null || echo ro; echo x > /dev/fuse-like && echo writable",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "character special file 1:3 666 7:8\n512\n1024\n0\nro\nwritable\n"
    );
}

#[test]
fn mounts_with_options_and_propagation() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "data").unwrap();
    let hp = host.path().to_path_buf();
    let b = Bundle::new(move |v| {
        let mounts = v["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/ro", "type": "bind", "source": hp, "options": ["rbind", "ro", "rprivate"]}));
        mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m", "mode=1777"]}));
        v["linux"]["rootfsPropagation"] = json!("rslave");
    });
    let (code, out, err) = b.run(
        "cat /ro/f; echo; touch /ro/g 2>/dev/null || echo ro-ok; grep -E ' /scratch ' /proc/self/mountinfo | grep -c 'size=1024k'; stat -c %a /scratch",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "data\nro-ok\n1\n1777\n");
    assert!(!host.path().join("g").exists());
}

/// A bundle with CAP_CHOWN and CAP_KILL only, a seccomp profile that
/// refuses mkdir, and `noNewPrivileges` as given: runs a command that shows
/// the process's capabilities, no_new_privs and seccomp mode, then tries
/// mkdir; asserts what holds either way and returns the status lines.
fn caps_and_seccomp_with_no_new_privileges(nnp: bool) -> String {
    let b = Bundle::new(|v| {
        let caps = json!(["CAP_CHOWN", "CAP_KILL"]);
        v["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": []});
        v["process"]["noNewPrivileges"] = json!(nnp);
        v["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let (code, out, err) =
        b.run("grep -E 'CapEff|NoNewPrivs|^Seccomp:' /proc/self/status; mkdir /tmp/d");
    assert_ne!(code, 0, "mkdir must fail under the profile: {out}");
    assert!(out.contains("CapEff:\t0000000000000021"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    out
}

#[test]
fn capabilities_no_new_privileges_and_seccomp_from_the_spec() {
    let out = caps_and_seccomp_with_no_new_privileges(true);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

/// The spec's `noNewPrivileges: false` holds even with a seccomp profile
/// and no CAP_SYS_ADMIN: the filter is installed while the process still
/// has it (as runc does), not by setting no_new_privs the spec did not ask
/// for (runtime-tools' "has expected noNewPrivileges").
#[test]
fn seccomp_without_no_new_privileges_keeps_it_off() {
    let out = caps_and_seccomp_with_no_new_privileges(false);
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
}

#[test]
fn masked_and_readonly_paths_from_the_spec() {
    let b = Bundle::new(|v| {
        v["linux"]["maskedPaths"] = json!(["/etc/hostname-masked-file", "/proc/uptime", "/etc"]);
        v["linux"]["readonlyPaths"] = json!(["/tmp"]);
    });
    let (code, out, err) =
        b.run("ls /etc | wc -l; wc -c < /proc/uptime; touch /tmp/x 2>/dev/null || echo ro");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "ro"],
        "{out}"
    );
}

/// The optional fields (propagation) of the mount at "/" as the process
/// sees it, from its mountinfo line.
fn root_propagation_fields(mountinfo: &str) -> String {
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in {mountinfo}"));
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-").unwrap();
    fields[6..dash].join(" ")
}

/// A shared tmpfs (as / is on systemd hosts), removed on drop.
struct SharedTmpfs(tempfile::TempDir);

impl SharedTmpfs {
    fn new() -> Self {
        let d = tempfile::Builder::new()
            .prefix("amphi-shared-")
            .tempdir()
            .unwrap();
        let ok = |c: &mut Command| assert!(run_cmd(c).status.success(), "{c:?}");
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(d.path()));
        ok(Command::new("mount").arg("--make-shared").arg(d.path()));
        SharedTmpfs(d)
    }

    fn mounts_under(&self) -> Vec<String> {
        let me = format!("{}/", self.0.path().display());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&me))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SharedTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(self.0.path()).status();
    }
}

/// `linux.rootfsPropagation` is what "/" has inside the container, also
/// when the bundle sits on a shared mount (pivot_root refuses a shared
/// parent; runtime-tools' linux_rootfs_propagation and
/// config_updates_without_affect failed on it), and nothing the
/// container mounts shows on the host.
#[test]
fn rootfs_propagation_on_a_shared_host_mount() {
    let shared = SharedTmpfs::new();
    for (prop, want, refuse) in [
        // Shared among the container's mounts, and still a slave of the
        // host's peer group: nothing mounted inside reaches the host.
        ("shared", "shared:", &["unbindable"][..]),
        ("slave", "master:", &["shared:", "unbindable"][..]),
        ("private", "", &["shared:", "master:", "unbindable"][..]),
        ("unbindable", "unbindable", &["shared:"][..]),
        // No rootfsPropagation: amphi's default, a private root.
        ("", "", &["shared:", "master:", "unbindable"][..]),
    ] {
        let b = Bundle::new_in(shared.0.path(), |v| {
            if !prop.is_empty() {
                v["linux"]["rootfsPropagation"] = json!(prop);
            }
        });
        let (code, out, err) = b.run("cat /proc/self/mountinfo");
        assert_eq!(code, 0, "{prop}: {err}");
        let fields = root_propagation_fields(&out);
        assert!(fields.contains(want), "{prop}: / has {fields:?}\n{out}");
        for r in refuse {
            assert!(!fields.contains(r), "{prop}: / has {fields:?}\n{out}");
        }
        assert_eq!(
            shared.mounts_under(),
            Vec::<String>::new(),
            "{prop}: the container's mounts showed on the host"
        );
    }
}
