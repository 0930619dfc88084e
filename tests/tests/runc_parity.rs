//! amphi and runc (Debian's) on the same bundle, asserting the same
//! observable result (issue 20). Each test says which runc behaviour it
//! pins down.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_tests::parity::Pair;
use serde_json::json;

/// The harness itself: the same process, same output and exit status.
#[test]
fn the_same_bundle_runs_the_same_on_both() {
    let Some(p) = Pair::new("same", |_| {}) else {
        return;
    };
    p.script("echo hello; id -u; exit 7");
    let a = p.run_same();
    assert_eq!((a.code, a.stdout.as_str()), (7, "hello\n0\n"));
}

/// linux.rootfsPropagation: both runtimes start the process ("shared"
/// failed in amphi with EINVAL from pivot_root). "unbindable" is amphi's
/// alone: runc 1.1 fails it itself (EINVAL binding the rootfs, as amphi
/// did), crun runs it; spec_fields.rs checks what "/" gets for each.
#[test]
fn rootfs_propagation_shared_private_slave() {
    for prop in ["shared", "private", "slave"] {
        let Some(p) = Pair::new("prop", |v| v["linux"]["rootfsPropagation"] = json!(prop)) else {
            return;
        };
        p.script("echo up");
        let a = p.run_same();
        assert_eq!(a.stdout, "up\n", "{prop}: {}", a.stderr);
    }
}

// --- spec fields (issue 20) ---

/// A directory with a tmpfs mounted below it (`sub`, holding an executable
/// copy of busybox), unmounted on drop: the source of recursive binds.
struct SubmountSource {
    dir: tempfile::TempDir,
}

impl SubmountSource {
    fn new(rootfs: &std::path::Path) -> SubmountSource {
        let dir = tempfile::Builder::new()
            .prefix("amphi-parity-src-")
            .tempdir()
            .unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let out = amphi_tests::run_cmd(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs"])
                .arg(&sub),
        );
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        std::fs::copy(rootfs.join("bin/busybox"), sub.join("busybox")).unwrap();
        SubmountSource { dir }
    }

    fn path(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
}

impl Drop for SubmountSource {
    fn drop(&mut self) {
        let _ = amphi_tests::run_cmd(
            std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path().join("sub")),
        );
    }
}

/// Whether this test can mount (root); a skip notice otherwise.
fn can_mount() -> bool {
    amphi_tests::require(amphi_tests::is_root(), "needs root to mount")
}

/// The mount options of the container's mounts whose destination starts
/// with /m or /t and a digit, as "destination options" lines.
const SHOW_MOUNTS: &str = r#"grep -E " /(m|t)[0-9]" /proc/self/mountinfo | cut -d" " -f5,6"#;

/// Recursive mount attributes (rro, rnosuid, rnodev, rnoexec, rnoatime,
/// rstrictatime, rnodiratime, rnosymfollow) reach the submounts of a
/// recursive bind; plain noatime, strictatime, nodiratime and nosymfollow
/// are honoured on binds (a remount) and on new mounts. Both runtimes show
/// the same mount table, and the same writes and executions fail.
#[test]
fn recursive_and_plain_mount_attributes() {
    if !can_mount() {
        return;
    }
    let Some(p) = Pair::new("rattr", |_| {}) else {
        return;
    };
    let src = SubmountSource::new(&p.amphi.rootfs());
    let bind = |dest: &str, opts: &[&str]| json!({"destination": dest, "type": "bind", "source": src.path(), "options": opts});
    let tmpfs = |dest: &str, opts: &[&str]| json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": opts});
    let extra = vec![
        bind("/m1", &["rbind", "rro"]),
        bind("/m2", &["rbind", "rnoexec", "rnosuid", "rnodev"]),
        bind("/m3", &["rbind", "rnoatime"]),
        bind("/m4", &["rbind", "rstrictatime", "rnodiratime"]),
        bind("/m5", &["rbind", "rnosymfollow"]),
        bind("/m6", &["bind", "noatime"]),
        bind("/m7", &["bind", "nosymfollow"]),
        bind("/m8", &["rbind", "rnoatime", "rnorelatime"]),
        tmpfs("/t1", &["noatime"]),
        tmpfs("/t2", &["strictatime", "nodiratime"]),
        tmpfs("/t3", &["nosymfollow"]),
    ];
    p.edit(|v| {
        v["mounts"]
            .as_array_mut()
            .unwrap()
            .extend(extra.iter().cloned())
    });
    p.script(&format!(
        "{SHOW_MOUNTS}; touch /m1/sub/x && echo wrote; /m2/sub/busybox true && echo ran; \
         /m3/sub/busybox echo ran-m3"
    ));
    let a = p.run_same();
    assert_eq!(a.code, 0, "{}", a.stderr);
    for line in [
        "/m1/sub ro,relatime",
        "/m2/sub rw,nosuid,nodev,noexec,relatime",
        "/m3/sub rw,noatime",
        "/m4/sub rw,nodiratime",
        "/m5/sub rw,relatime,nosymfollow",
        "/m6 rw,noatime",
        "/m7 rw,relatime,nosymfollow",
        "/m8/sub rw,noatime",
        "/t1 rw,noatime",
        "/t2 rw,nodiratime",
        "/t3 rw,relatime,nosymfollow",
        "ran-m3",
    ] {
        assert!(
            a.stdout.lines().any(|l| l == line),
            "{line:?} in\n{}",
            a.stdout
        );
    }
    assert!(!a.stdout.contains("wrote\n") && !a.stdout.contains("ran\n"));
}

/// Where runc 1.1 falls short, amphi does as the spec says (and crun):
/// `ratime` and `rnostrictatime` undo a recursive noatime/strictatime
/// (back to the kernel's default, relatime), where runc passes them to
/// mount_setattr as a bare clear that the kernel refuses (EINVAL); and
/// recursive attributes apply to any mount, not only to binds (runc leaves
/// an `rro` tmpfs writable).
#[test]
fn recursive_atime_back_to_relatime() {
    if !can_mount() {
        return;
    }
    let Some(p) = Pair::new("ratime", |_| {}) else {
        return;
    };
    let src = SubmountSource::new(&p.amphi.rootfs());
    let m = json!([
        {"destination": "/m1", "type": "bind", "source": src.path(),
         "options": ["rbind", "rnoatime", "ratime"]},
        {"destination": "/m2", "type": "bind", "source": src.path(),
         "options": ["rbind", "rstrictatime", "rnostrictatime"]},
        {"destination": "/t4", "type": "tmpfs", "source": "tmpfs", "options": ["rro"]},
    ]);
    p.edit(|v| {
        v["mounts"]
            .as_array_mut()
            .unwrap()
            .extend(m.as_array().unwrap().iter().cloned())
    });
    p.script(SHOW_MOUNTS);
    let a = p.amphi.run();
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(
        a.stdout,
        "/m1 rw,relatime\n/m1/sub rw,relatime\n/m2 rw,relatime\n/m2/sub rw,relatime\n\
         /t4 ro,relatime\n"
    );
}

/// A proc or sysfs mount whose destination is a symlink in the rootfs
/// (/proc, /sys, or any other) is refused before the process starts: both
/// fail, and amphi's error names the path.
#[test]
fn proc_or_sysfs_on_a_symlink_is_refused() {
    for (dest, typ, link_to) in [
        ("proc", "proc", "/elsewhere"),
        ("sys", "sysfs", "proc"),
        ("mnt/p", "proc", "/tmp"),
    ] {
        let Some(p) = Pair::new("psym", |_| {}) else {
            return;
        };
        if dest == "mnt/p" {
            p.edit(|v| {
                v["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/mnt/p", "type": "proc", "source": "proc"}))
            });
        }
        for s in p.sides() {
            let path = s.rootfs().join(dest);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::create_dir_all(s.rootfs().join("elsewhere")).unwrap();
            std::os::unix::fs::symlink(link_to, &path).unwrap();
        }
        p.script("echo started");
        let a = p.run_same();
        assert_ne!(a.code, 0, "{dest}");
        assert!(
            a.stderr.contains(&format!("/{dest}")) && a.stderr.contains("symbolic link"),
            "{dest} ({typ}): {}",
            a.stderr
        );
        // Nothing is left behind: no container in either runtime's state.
        for s in p.sides() {
            assert_eq!(s.state(), serde_json::Value::Null, "{}", s.runtime.name());
        }
    }
}

/// root.readonly in a user namespace whose rootfs lies on a nosuid, nodev,
/// noatime mount of the host's: the remount keeps those locked flags (it
/// failed with EPERM). The bundle's directories are traversable and the
/// rootfs owned by the mapped root, as a rootless setup has them.
#[test]
fn readonly_root_in_a_user_namespace() {
    if !can_mount() {
        return;
    }
    let host = tempfile::Builder::new()
        .prefix("amphi-parity-nosuid-")
        .tempdir()
        .unwrap();
    let out = amphi_tests::run_cmd(
        std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "nosuid,nodev,noatime,mode=755",
                "tmpfs",
            ])
            .arg(host.path()),
    );
    assert!(out.status.success(), "mount tmpfs: {out:?}");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ =
                amphi_tests::run_cmd(std::process::Command::new("umount").arg("-l").arg(self.0));
        }
    }
    let _unmount = Unmount(host.path());
    let Some(p) = Pair::new_in(host.path(), "usernsro", |v| {
        v["root"]["readonly"] = json!(true);
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["uidMappings"] = map.clone();
        v["linux"]["gidMappings"] = map;
    }) else {
        return;
    };
    for s in p.sides() {
        let out = amphi_tests::run_cmd(
            std::process::Command::new("chown")
                .args(["-R", "100000:100000"])
                .arg(s.rootfs()),
        );
        assert!(out.status.success(), "chown: {out:?}");
    }
    p.script(
        r#"id -u; cut -d" " -f5,6 /proc/self/mountinfo | grep "^/ "; touch /x || echo read-only"#,
    );
    let a = p.run_same();
    assert_eq!(
        (a.code, a.stdout.as_str()),
        (0, "0\n/ ro,nosuid,nodev,noatime\nread-only\n"),
        "{}",
        a.stderr
    );
}

/// process.user.umask is the process's umask; without one it is 0022
/// whatever the caller's (runc sets 0022 too).
#[test]
fn umask_from_the_spec_or_0022() {
    for (umask, want) in [(Some(0o027), "0027\n"), (None, "0022\n")] {
        let Some(p) = Pair::new("umask", |v| {
            if let Some(m) = umask {
                v["process"]["user"]["umask"] = json!(m);
            }
        }) else {
            return;
        };
        p.script("umask");
        let [a, r] = p.sides().map(|s| {
            let b = s.bundle();
            let mut c = s.cmd(&["run", "--bundle", b.to_str().unwrap(), &s.id]);
            // The caller's umask must not leak into the container.
            // SAFETY: umask(2) in the child before exec, async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                    libc::umask(0o077);
                    Ok(())
                })
            };
            amphi_tests::parity::Outcome::from(amphi_tests::run_cmd(&mut c))
        });
        assert_eq!((a.code, &a.stdout), (r.code, &r.stdout), "{}", a.stderr);
        assert_eq!((a.code, a.stdout.as_str()), (0, want), "{}", a.stderr);
    }
}

/// linux.personality: LINUX32 makes `uname -m` say i686 inside, with
/// personality 8. runc 1.1 ignores linux.personality (runc 1.2 applies
/// the domain), so amphi is compared with crun where it is installed;
/// with the LINUX domain all three agree. Flags are applied by their
/// linux/personality.h names (runc and crun ignore them: the spec says no
/// flag value is defined yet); an unknown one fails before anything runs.
#[test]
fn personality_linux32() {
    let show = "uname -m; cat /proc/self/personality";
    let Some(p) = Pair::new("pers64", |v| {
        v["linux"]["personality"] = json!({"domain": "LINUX"})
    }) else {
        return;
    };
    p.script(show);
    assert_eq!(p.run_same().stdout, "x86_64\n00000000\n");

    let Some(p) = Pair::new("pers32", |v| {
        v["linux"]["personality"] = json!({"domain": "LINUX32"})
    }) else {
        return;
    };
    p.script(show);
    let a = p.amphi.run();
    assert_eq!(
        (a.code, a.stdout.as_str()),
        (0, "i686\n00000008\n"),
        "{}",
        a.stderr
    );
    if amphi_tests::have("crun") {
        let root = tempfile::tempdir().unwrap();
        let b = p.runc.bundle();
        let c = amphi_tests::parity::Outcome::from(amphi_tests::run_cmd(
            std::process::Command::new("crun")
                .arg("--root")
                .arg(root.path())
                .args(["run", "--bundle", b.to_str().unwrap(), "parity-pers32-crun"]),
        ));
        assert_eq!(
            (c.code, c.stdout.as_str()),
            (0, a.stdout.as_str()),
            "crun: {}",
            c.stderr
        );
    }

    p.edit(|v| {
        v["linux"]["personality"] = json!({"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]})
    });
    let a = p.amphi.run();
    assert_eq!(
        (a.code, a.stdout.as_str()),
        (0, "i686\n00040008\n"),
        "{}",
        a.stderr
    );
    p.edit(|v| v["linux"]["personality"]["flags"] = json!(["NO_SUCH_FLAG"]));
    let a = p.amphi.run();
    assert_ne!(a.code, 0);
    assert!(
        a.stderr.contains("linux.personality.flags[0]") && a.stderr.contains("NO_SUCH_FLAG"),
        "{}",
        a.stderr
    );
}

/// Capability sets the kernel refuses fail the start as with runc (EPERM):
/// an effective capability outside the permitted set, an inheritable one
/// outside the bounding set; `create` fails and leaves no container. A
/// permitted or ambient one outside the bounding set starts on both (exec
/// drops it) and the process sees the same sets.
#[test]
fn capabilities_outside_the_bounding_set() {
    let show = "grep Cap /proc/self/status";
    for (set, extra, uid, fails) in [
        ("effective", "CAP_SYS_ADMIN", 0, true),
        ("effective", "CAP_NET_ADMIN", 1000, true),
        ("inheritable", "CAP_SYS_ADMIN", 0, true),
        ("permitted", "CAP_SYS_ADMIN", 0, false),
        ("ambient", "CAP_SYS_ADMIN", 1000, false),
    ] {
        let Some(p) = Pair::new("caps", |v| {
            v["process"]["user"]["uid"] = json!(uid);
            let caps = &mut v["process"]["capabilities"];
            if caps[set].is_null() {
                caps[set] = json!([]);
            }
            caps[set].as_array_mut().unwrap().push(json!(extra));
        }) else {
            return;
        };
        p.script(show);
        let a = p.run_same();
        assert_eq!(a.code != 0, fails, "{set} {extra}: {}", a.stderr);
        if fails {
            assert!(
                a.stderr
                    .contains(&format!("process.capabilities.{set} holds {extra}"))
                    && a.stderr.contains("Operation not permitted"),
                "{}",
                a.stderr
            );
            let (ca, cr) = (p.amphi.create(), p.runc.create());
            assert_eq!((ca.code != 0, cr.code != 0), (true, true), "{}", ca.stderr);
            for s in p.sides() {
                assert_eq!(s.state(), serde_json::Value::Null, "{}", s.runtime.name());
            }
        }
    }
}

/// A startContainer hook runs in the container, as the process's user,
/// with the process's environment when it has no `env` of its own, and
/// with its own `env` only when it has one (runc does both; the spec
/// says only where the hook runs).
#[test]
fn start_container_hooks_get_the_process_environment() {
    let Some(p) = Pair::new("hookenv", |v| {
        v["process"]["user"]["uid"] = json!(1000);
        v["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("FOO=bar"));
        v["hooks"]["startContainer"] = json!([
            {"path": "/bin/sh", "args": ["sh", "-c", "{ id -u; env | sort; } > /tmp/hook1"]},
            {"path": "/bin/sh", "args": ["sh", "-c", "env | sort > /tmp/hook2"], "env": ["X=1"]},
        ]);
    }) else {
        return;
    };
    for s in p.sides() {
        let tmp = s.rootfs().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
    }
    p.script("cat /tmp/hook1; echo --; cat /tmp/hook2");
    let a = p.run_same();
    assert_eq!(a.code, 0, "{}", a.stderr);
    let (one, two) = a.stdout.split_once("--\n").unwrap();
    assert!(
        one.starts_with("1000\n") && one.contains("FOO=bar\n"),
        "{one}"
    );
    assert!(one.contains("HOME=") && one.contains("PATH="), "{one}");
    assert!(two.contains("X=1\n") && !two.contains("FOO"), "{two}");
}

/// What a seccomp agent got on its socket.
#[derive(Debug)]
struct AgentSaw {
    /// The message that came with the listener ("" for end-of-file).
    message: String,
    got_listener: bool,
    /// The system call numbers it answered (with ENOSPC).
    notified: Vec<i32>,
}

/// A seccomp agent listening at `path`: takes one connection (waiting at
/// most 30 s), reads the message and the listener, then answers every
/// notification with ENOSPC until no process uses the filter any more.
fn seccomp_agent(path: &std::path::Path) -> std::thread::JoinHandle<Option<AgentSaw>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        };
        conn.set_nonblocking(false).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr pointing at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: recvmsg into the buffers above.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let message = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
        // SAFETY: walking the control messages recvmsg filled in.
        let fd = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (!c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS)
                .then(|| OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast())))
        };
        let mut saw = AgentSaw {
            message,
            got_listener: fd.is_some(),
            notified: Vec::new(),
        };
        let Some(fd) = fd else {
            return Some(saw);
        };
        loop {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one live descriptor.
            if unsafe { libc::poll(&mut p, 1, 30_000) } <= 0 || p.revents & libc::POLLIN == 0 {
                return Some(saw);
            }
            // SAFETY: the kernel's notification structs, zeroed, filled by
            // the ioctls on the listener.
            unsafe {
                let mut req: libc::seccomp_notif = std::mem::zeroed();
                if libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) != 0 {
                    continue;
                }
                saw.notified.push(req.data.nr);
                let mut resp: libc::seccomp_notif_resp = std::mem::zeroed();
                resp.id = req.id;
                resp.error = -libc::ENOSPC;
                libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp);
            }
        }
    })
}

/// linux.seccomp.listenerPath: the filter's notification listener goes to
/// the agent with the container's state (runc's message: fds
/// ["seccompFd"], the pid, the metadata, the state), and the agent's
/// answers reach the process. A setup that fails before the listener is
/// passed closes the connection, so the agent sees end-of-file (runc
/// never connects then: its agent waits for ever); with nobody listening
/// both fail.
#[test]
fn seccomp_listener_gets_the_notifications() {
    let socks = tempfile::tempdir().unwrap();
    let Some(p) = Pair::new("seccompnotify", |_| {}) else {
        return;
    };
    let sock =
        |s: &amphi_tests::parity::Side| socks.path().join(format!("{}.sock", s.runtime.name()));
    for s in p.sides() {
        let path = sock(s);
        let mut v = s.config();
        v["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": path,
            "listenerMetadata": "meta-1",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
        });
        v["process"]["args"] = json!(["sh", "-c", "mkdir /x 2>/dev/null; echo mkdir=$?"]);
        std::fs::write(s.bundle().join("config.json"), v.to_string()).unwrap();
    }
    let agents = p.sides().map(|s| seccomp_agent(&sock(s)));
    let a = p.run_same();
    assert_eq!(
        (a.code, a.stdout.as_str()),
        (0, "mkdir=1\n"),
        "{}",
        a.stderr
    );
    for (s, agent) in p.sides().into_iter().zip(agents) {
        let saw = agent.join().unwrap().expect("the runtime connected");
        assert!(saw.got_listener, "{}: {saw:?}", s.runtime.name());
        assert!(saw.notified.contains(&(libc::SYS_mkdir as i32)), "{saw:?}");
        let m: serde_json::Value = serde_json::from_str(&saw.message).unwrap();
        assert_eq!(m["fds"], json!(["seccompFd"]), "{m}");
        assert_eq!(m["metadata"], "meta-1", "{m}");
        assert_eq!(m["state"]["id"], json!(s.id), "{m}");
        assert_eq!(m["state"]["status"], "creating", "{m}");
        assert!(
            m["pid"].as_i64().unwrap() > 0 && m["pid"] == m["state"]["pid"],
            "{m}"
        );
    }

    // A setup that fails (a filesystem type that does not exist).
    p.edit(|v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/bad", "type": "nosuchfs", "source": "x"
        }))
    });
    for s in p.sides() {
        let _ = std::fs::remove_file(sock(s));
    }
    let agent = seccomp_agent(&sock(&p.amphi));
    let a = p.amphi.run();
    assert_ne!(a.code, 0);
    let saw = agent.join().unwrap().expect("amphi connected");
    assert_eq!(
        (saw.message.as_str(), saw.got_listener),
        ("", false),
        "{saw:?}"
    );

    // Nobody listening: both fail, amphi naming the socket.
    let _ = std::fs::remove_file(sock(&p.amphi));
    p.edit(|v| {
        v["mounts"].as_array_mut().unwrap().pop();
    });
    let (a, r) = p.run();
    assert_eq!((a.code != 0, r.code != 0), (true, true), "{}", a.stderr);
    assert!(a.stderr.contains("listenerPath"), "{}", a.stderr);
}

/// `features` lists what these tests check amphi honours, as runc lists
/// it: every recursive attribute and (no)symfollow among the mount
/// options runc lists, and SCMP_ACT_NOTIFY among the seccomp actions.
#[test]
fn features_list_the_recursive_attributes_and_notify() {
    if !amphi_tests::require(amphi_tests::have("runc"), "runc is not installed") {
        return;
    }
    let features = |bin: &std::path::Path| -> serde_json::Value {
        let out = amphi_tests::run_cmd(std::process::Command::new(bin).arg("features"));
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (a, r) = (
        features(&amphi_tests::amphi_bin()),
        features(std::path::Path::new("runc")),
    );
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let ours = names(&a["mountOptions"]);
    let wanted: Vec<String> = names(&r["mountOptions"])
        .into_iter()
        .filter(|o| {
            (o.starts_with('r') && !["remount", "rw", "rbind"].contains(&o.as_str())
                || o.ends_with("symfollow"))
                && !o.ends_with("private")
                && !o.ends_with("shared")
                && !o.ends_with("slave")
                && !o.ends_with("bindable")
        })
        .collect();
    assert!(wanted.len() >= 20, "{wanted:?}");
    for o in &wanted {
        assert!(ours.contains(o), "{o} missing from amphi features");
    }
    assert!(names(&a["linux"]["seccomp"]["actions"]).contains(&"SCMP_ACT_NOTIFY".to_string()));
}
