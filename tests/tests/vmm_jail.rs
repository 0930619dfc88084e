//! What a guest that took over the VMM would find, read from the host
//! while a tiny guest runs: `/proc/<pid>/status`, `root`, `ns/*` and
//! `cgroup` of the jailed `amphi vmm` (and of QEMU, the other backend).
//!
//! They need root and a usable /dev/kvm (PVM runs these tiny guests); each
//! skips loudly without (fails under `CI=true`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amphi_tests::tiny_guest::{guest_file, kvm_usable, HANG};
use amphi_tests::{amphi_bin, is_root, skip};

/// Root and KVM, or a loud skip.
fn can_run(test: &str) -> bool {
    if !is_root() {
        skip(&format!(
            "{test}: needs root (the jail's namespaces, users and cgroup)"
        ));
        return false;
    }
    kvm_usable(test)
}

/// `/proc/<pid>/status` as name → value.
fn status(pid: u32) -> BTreeMap<String, String> {
    status_at(&format!("/proc/{pid}/status"))
}

fn status_at(path: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Whether every thread of `pid` (KVM's kernel workers aside), at least
/// the main thread and a vCPU, runs under a seccomp filter.
fn all_threads_filtered(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let t = t.path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if name.starts_with("kvm-") {
            continue;
        }
        let st = status_at(t.join("status").to_str().unwrap_or_default());
        if st.get("Seccomp").map(String::as_str) != Some("2") {
            return false;
        }
        n += 1;
    }
    n >= 2
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A running `amphi vmm` and its stderr (a file, read at the end).
struct Vmm {
    child: Child,
    err: std::fs::File,
}

impl Vmm {
    fn start(guest: &Path, args: &[&str]) -> Vmm {
        Self::start_inheriting(guest, args, None)
    }

    /// [`Vmm::start`], with descriptor `inherit` left open across the exec.
    fn start_inheriting(guest: &Path, args: &[&str], inherit: Option<i32>) -> Vmm {
        let err = tempfile::tempfile().unwrap();
        let mut cmd = Command::new(amphi_bin());
        cmd.args(["vmm", "--kernel", guest.to_str().unwrap(), "--force"])
            .args(["--mem", "32", "--timeout", "60"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err.try_clone().unwrap());
        if let Some(fd) = inherit {
            // SAFETY: fcntl between fork and exec, async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        Vmm { child, err }
    }

    /// The jailed VMM (the supervisor's child) once its main thread is
    /// under seccomp: the guest runs.
    fn jailed_pid(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Locked down once each of its threads has its filter: the
            // main thread's comes first, and a vCPU thread exists for a
            // moment before it is named and installs its own (before the
            // guest's first instruction). One that never gets a filter
            // fails the test here (no jailed VMM).
            if let Some(&pid) = children(self.child.id()).first() {
                if all_threads_filtered(pid) {
                    return pid;
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "amphi vmm ended ({st}) before its VMM ran:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no jailed VMM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops it with SIGTERM; its exit code.
    fn stop(&mut self) -> Option<i32> {
        // SAFETY: signalling our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("amphi vmm did not end:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        self.err.rewind().unwrap();
        self.err.read_to_string(&mut s).unwrap();
        s
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts every field of a thread's or process's status that the jail
/// sets: not root, no capabilities, seccomp, no new privileges.
fn assert_locked(st: &BTreeMap<String, String>, what: &str) {
    let ids = |k: &str| -> Vec<u64> {
        st[k]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    for k in ["Uid", "Gid"] {
        let v = ids(k);
        assert_eq!(v.len(), 4, "{what}: {k}");
        assert!(v.iter().all(|&id| id != 0), "{what}: {k} {v:?}");
    }
    assert_eq!(st["Groups"], "", "{what}: supplementary groups");
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[k], "0000000000000000", "{what}: {k}");
    }
    assert_eq!(st["NoNewPrivs"], "1", "{what}");
    assert_eq!(st["Seccomp"], "2", "{what}");
}

fn ns(pid: &str, name: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap()
}

/// The cgroup files of VMM `id` holding `file` (memory: the v1 memory
/// hierarchy or v2's directory).
fn cgroup_file(id: &str, controller: &str, file: &str) -> PathBuf {
    let v2 = Path::new("/sys/fs/cgroup/amphi-vmm").join(id);
    if amphi_tests::host_cgroup_v2_only() {
        v2.join(file)
    } else {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("amphi-vmm")
            .join(id)
            .join(file)
    }
}

#[test]
fn the_jailed_vmm_is_unprivileged_confined_and_limited() {
    if !can_run("the jailed VMM's /proc") {
        return;
    }
    let guest = guest_file(HANG);
    let id = format!("test-jail-{}", std::process::id());
    let mut vmm = Vmm::start(guest.path(), &["--jail-id", &id]);
    let pid = vmm.jailed_pid();
    let jail = Path::new("/run/amphi/jail").join(&id);

    // The process and each of its threads.
    let st = status(pid);
    assert_locked(&st, "the VMM");
    let uid: u64 = st["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        uid,
        2_000_000_000 + u64::from(vmm.child.id()),
        "the default uid: 2000000000 + the supervisor's pid"
    );
    assert_eq!(
        st["NSpid"].split_whitespace().last(),
        Some("1"),
        "pid 1 of its own pid namespace"
    );
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        if name.starts_with("kvm-") {
            // KVM's own kernel worker, attached to the process.
            continue;
        }
        assert_locked(&status_at(t.join("status").to_str().unwrap()), &name);
        names.push(name);
    }
    names.sort();
    // The VMM executable's main thread (which also takes the stop signals
    // and the timeout) and one vCPU: no thread of its own for the stop.
    assert_eq!(names, ["amphi-vmm", "vcpu0"], "the VMM's threads");
    // Not dumpable: its /proc files stay root's although it runs as uid.
    let environ = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(environ.uid(), 0, "a dumpable VMM would own its /proc files");

    // Its root is the jail directory: the same directory, empty.
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let dir = std::fs::metadata(&jail).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (dir.dev(), dir.ino()),
        "root is {}",
        jail.display()
    );
    assert_eq!(
        std::fs::read_dir(format!("/proc/{pid}/root/"))
            .unwrap()
            .count(),
        0,
        "the jail holds nothing"
    );
    assert_ne!((root.dev(), root.ino()), {
        let host = std::fs::metadata("/").unwrap();
        (host.dev(), host.ino())
    });

    // Namespaces of its own.
    let pid_s = pid.to_string();
    for name in ["mnt", "net", "pid", "ipc", "uts"] {
        assert_ne!(
            ns(&pid_s, name),
            ns("self", name),
            "{name} namespace is the host's"
        );
    }

    // Its cgroup, with guest RAM + 64 MiB + RAM/64 and vCPUs + 8.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/amphi-vmm/{id}");
    if amphi_tests::host_cgroup_v2_only() {
        assert!(
            cgroup.lines().any(|l| l == format!("0::{want}")),
            "{cgroup}"
        );
        let max = std::fs::read_to_string(cgroup_file(&id, "memory", "memory.max")).unwrap();
        assert_eq!(max.trim(), ((32 + 64 + 1) << 20).to_string());
    } else {
        for c in ["memory", "pids"] {
            assert!(
                cgroup.lines().any(|l| l.ends_with(&format!(":{c}:{want}"))),
                "{c}: {cgroup}"
            );
        }
        let max =
            std::fs::read_to_string(cgroup_file(&id, "memory", "memory.limit_in_bytes")).unwrap();
        assert_eq!(max.trim(), ((32 + 64 + 1) << 20).to_string());
    }
    let pids = std::fs::read_to_string(cgroup_file(&id, "pids", "pids.max")).unwrap();
    assert_eq!(pids.trim(), "9");

    // SIGTERM to the supervisor reaches the VMM; then all of it is gone.
    assert_eq!(vmm.stop(), Some(128 + libc::SIGTERM), "{}", vmm.stderr());
    let err = vmm.stderr();
    assert!(
        err.contains("amphi vmm: stopped by host (SIGTERM)"),
        "{err}"
    );
    assert!(!jail.exists(), "the jail directory is left");
    assert!(!cgroup_file(&id, "pids", "").exists(), "the cgroup is left");
}

#[test]
fn each_vm_gets_its_own_user_and_the_user_is_configurable() {
    if !can_run("per-VM users") {
        return;
    }
    let guest = guest_file(HANG);
    let mut a = Vmm::start(guest.path(), &[]);
    let mut b = Vmm::start(
        guest.path(),
        &["--jail-uid", "3000000", "--jail-gid", "3000001"],
    );
    let mut c = Vmm::start(guest.path(), &[]);
    let uid = |v: &mut Vmm| {
        let st = status(v.jailed_pid());
        (st["Uid"].clone(), st["Gid"].clone())
    };
    let (ua, ub, uc) = (uid(&mut a), uid(&mut b), uid(&mut c));
    assert_ne!(ua, uc, "two VMs share a user");
    assert_eq!(ub.0, "3000000\t3000000\t3000000\t3000000");
    assert_eq!(ub.1, "3000001\t3000001\t3000001\t3000001");
    for v in [&mut a, &mut b, &mut c] {
        assert_eq!(v.stop(), Some(128 + libc::SIGTERM));
    }
}

#[test]
fn no_jail_says_it_is_unjailed() {
    if !can_run("--no-jail") {
        return;
    }
    let guest = guest_file(HANG);
    let mut vmm = Vmm::start(guest.path(), &["--no-jail"]);
    // No supervisor: the VMM is the process itself, as root, unfiltered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vmm.stderr().contains("UNJAILED") {
        assert!(Instant::now() < deadline, "{}", vmm.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = status(vmm.child.id());
    assert!(st["Uid"].starts_with("0\t"), "{st:?}");
    assert_eq!(st["Seccomp"], "0");
    assert!(children(vmm.child.id()).is_empty());
    assert_eq!(vmm.stop(), Some(128 + libc::SIGTERM));
    let err = vmm.stderr();
    assert!(
        err.starts_with(
            "amphi vmm: warning: UNJAILED (--no-jail): the VMM runs as root with every capability"
        ),
        "{err}"
    );
}

#[test]
fn a_seccomp_violation_kills_the_vmm_and_names_the_call() {
    if !can_run("seccomp violation") {
        return;
    }
    let guest = guest_file(HANG);
    // The main thread makes socket(2) once under its control filter.
    let mut vmm = Vmm::start(guest.path(), &["--seccomp-selftest"]);
    assert_eq!(vmm.wait(), Some(159), "{}", vmm.stderr());
    let err = vmm.stderr();
    assert!(
        err.contains(&format!(
            "amphi vmm: seccomp: the control thread made system call {}, which its filter forbids; the VMM is stopped\n",
            libc::SYS_socket
        )),
        "{err}"
    );
    assert!(
        err.contains("amphi vmm: the jailed VMM was killed by signal 31 (SIGSYS)"),
        "{err}"
    );
}

/// The guest for the virtio-fs test, in PVH's 32-bit protected mode: the
/// driver's handshake with the device at 0xd0000000 (VERSION_1, both
/// queues of 8 at 0x30000.. and 0x36000..), DRIVER_OK, then nothing.
#[rustfmt::skip]
const FS_DRIVER_OK_THEN_HANG: &[u8] = &[
    0xbb, 0x00, 0x00, 0x00, 0xd0,                   // mov ebx, 0xd0000000
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x70], 1   ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x70], 3   DRIVER
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x24], 1   DriverFeaturesSel
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x20], 1   VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x70], 11  FEATURES_OK
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x30], 0   QueueSel
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x38], 8   QueueNum
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // mov dword [ebx + 0x80], 0x30000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // mov dword [ebx + 0x90], 0x31000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // mov dword [ebx + 0xa0], 0x32000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x30, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x30], 1   QueueSel
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x38], 8   QueueNum
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x60, 0x03, 0x00, // mov dword [ebx + 0x80], 0x36000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x03, 0x00, // mov dword [ebx + 0x90], 0x37000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, // mov dword [ebx + 0xa0], 0x38000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,       // mov dword [ebx + 0x70], 15  DRIVER_OK
    0xeb, 0xfe,                                     // jmp $
];

/// `amphi vmm --fs` with a real virtiofsd, as `amphi run` starts it: the
/// connection made by the caller and handed down (`fd=N,tag=T`; or, with
/// `by_path`, the path of virtiofsd's socket, connected by the jailed VMM
/// before its lockdown). The guest's DRIVER_OK sets the backend up from
/// the filtered vCPU thread (virtiofsd maps the guest RAM memfd), and when
/// virtiofsd is killed the jailed VMM serves the queues itself (every
/// request gets EIO; `vmm/tests/virtiofs_guests.rs` shows the guest's
/// side): it says so in one line naming the device and the socket, and
/// runs on until stopped.
#[test]
fn a_virtiofs_backend_that_goes_away_leaves_the_jailed_vmm_answering_eio() {
    virtiofs_backend_goes_away(
        "a_virtiofs_backend_that_goes_away_leaves_the_jailed_vmm_answering_eio",
        false,
    );
}

/// As above, the VMM connecting to virtiofsd's socket by its path.
#[test]
fn a_virtiofs_backend_by_path_that_goes_away_leaves_the_jailed_vmm_answering_eio() {
    virtiofs_backend_goes_away(
        "a_virtiofs_backend_by_path_that_goes_away_leaves_the_jailed_vmm_answering_eio",
        true,
    );
}

/// Whether a unix socket listens at `path` (/proc/net/unix: the flags
/// column has __SO_ACCEPTCON, 0x10000, for a listening socket).
fn virtiofs_backend_goes_away(test: &str, by_path: bool) {
    if !can_run(test)
        || !amphi_tests::require(
            amphi_tests::have("virtiofsd"),
            &format!("{test}: virtiofsd is not installed (scripts/setup installs it)"),
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("vfs.sock");
    let mut virtiofsd = Command::new("virtiofsd")
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The socket file appears at bind(2), before listen(2): a connection
    // in between is refused. Wait for the listening socket (a probe
    // connection would be the one virtiofsd serves).
    while !amphi_test_skip::unix_listening(&socket) {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let guest = guest_file(FS_DRIVER_OK_THEN_HANG);
    let mut vmm = if by_path {
        let fs = format!("{},amphi", socket.display());
        Vmm::start(guest.path(), &["--fs", &fs])
    } else {
        let conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&conn);
        let fs = format!("fd={fd},tag=amphi");
        let vmm = Vmm::start_inheriting(guest.path(), &["--fs", &fs], Some(fd));
        drop(conn);
        vmm
    };
    vmm.jailed_pid();
    // SET_MEM_TABLE went through: virtiofsd mapped the guest's memfd.
    let maps = format!("/proc/{}/maps", virtiofsd.id());
    while !std::fs::read_to_string(&maps)
        .unwrap_or_default()
        .contains("memfd:amphi-guest-ram")
    {
        assert!(
            vmm.child.try_wait().unwrap().is_none(),
            "amphi vmm ended:
{}",
            vmm.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "virtiofsd never mapped guest RAM:
{}",
            vmm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    virtiofsd.kill().unwrap();
    virtiofsd.wait().unwrap();
    // The VMM says once that the guest's requests now fail with EIO, and
    // the VM runs on (no device failure, no seccomp violation) until it
    // is stopped. The memory table is in when the kill comes; the vrings
    // may not be yet: the backend hung up on a running device, or the
    // socket broke during its setup.
    let (device, ended, eio) = (
        "virtio-fs(tag amphi, vhost-user socket ",
        "): the vhost-user backend ended (",
        "); the guest's file system requests now fail with EIO",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let err = vmm.stderr();
        if let Some(line) = err.lines().find(|l| l.contains(ended)) {
            break line.to_string();
        }
        assert!(
            vmm.child.try_wait().unwrap().is_none(),
            "amphi vmm ended:\n{err}"
        );
        assert!(Instant::now() < deadline, "no backend-ended line:\n{err}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(line.contains(device) && line.contains(eio), "{line}");
    assert!(
        line.contains("(it hung up: exited, or closed the socket)")
            || (line.contains("(starting the vhost-user backend: ")
                && line.contains("socket is broken")),
        "{line}"
    );
    // The socket is named: its path, or the descriptor and the path its
    // peer is bound to (virtiofsd's socket).
    assert!(line.contains(&socket.display().to_string()), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vmm.child.try_wait().unwrap().is_none(),
        "amphi vmm ended after the backend did:\n{}",
        vmm.stderr()
    );
    assert_eq!(vmm.stop(), Some(128 + libc::SIGTERM), "{}", vmm.stderr());
    let err = vmm.stderr();
    assert_eq!(err.matches(ended).count(), 1, "said more than once:\n{err}");
    assert!(!err.contains("device failed"), "{err}");
}

#[test]
fn a_killed_supervisor_takes_its_vmm_along_and_gc_sweeps_the_rest() {
    if !can_run("kill -9 of the supervisor") {
        return;
    }
    let guest = guest_file(HANG);
    let id = format!("test-kill-{}", std::process::id());
    let mut vmm = Vmm::start(guest.path(), &["--jail-id", &id]);
    let pid = vmm.jailed_pid();
    vmm.child.kill().unwrap();
    vmm.child.wait().unwrap();
    // The VMM dies with its supervisor (parent-death signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the VMM outlived its supervisor");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What the supervisor would have removed is left; once a minute old,
    // amphi gc removes it.
    let jail = Path::new("/run/amphi/jail").join(&id);
    let cgroup = cgroup_file(&id, "pids", "");
    assert!(jail.is_dir() && cgroup.is_dir());
    let dirs = [jail.clone(), cgroup.clone(), cgroup_file(&id, "memory", "")];
    for d in &dirs {
        let touched = Command::new("touch")
            .args(["-d", "2 minutes ago"])
            .arg(d)
            .status()
            .unwrap();
        assert!(touched.success());
    }
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let gc = Command::new(amphi_bin())
        .arg("gc")
        .env("AMPHI_ROOT", root.path())
        .env("AMPHI_STATE", state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gc.stderr);
    assert!(gc.status.success(), "{err}");
    for d in &dirs {
        assert!(!d.exists(), "{} is left: {err}", d.display());
    }
    assert!(err.contains("the stale VMM cgroup"), "{err}");
    assert!(
        err.contains(&format!("the stale VMM jail directory {}", jail.display())),
        "{err}"
    );
}
