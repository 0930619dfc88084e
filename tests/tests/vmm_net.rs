//! `amphi vmm --net fd=N`, jailed, with a real passt on the other end of
//! the socket: a tiny guest drives the virtio-net device (its own queues,
//! an ARP request for passt's gateway) and prints the answer on COM1;
//! then passt is killed: the VMM says so once on stderr, does not spin,
//! and the VM runs on until it is stopped.
//!
//! Needs root, a usable /dev/kvm and passt (Debian package passt); skips
//! loudly without (fails under `CI=true`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use amphi_tests::tiny_guest::{guest_file, kvm_usable};
use amphi_tests::{amphi_bin, have, is_root, skip};

/// The guest (GNU as, Intel syntax, 32-bit: entered through PVH at
/// 1 MiB, paging off): write the receive queue's one buffer (available)
/// and the transmit queue's one (the ARP request for 10.0.2.2 from
/// 02:61:6d:70:68:69, 10.0.2.15, not yet available) into memory, bring
/// the device up (MAC and VERSION_1), make the request available and
/// notify; wait for a receive buffer to be used; write "NET:" and the
/// buffer (header and frame, 54 bytes) to COM1; halt for good.
#[rustfmt::skip]
const NET_GUEST: &[u8] = &[
    0xfc,                                            // 0x000 cld
    0xc7, 0x05, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00, // 0x001 mov dword [0x30000], 0x40000     receive descriptor 0: buffer
    0xc7, 0x05, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x00b mov dword [0x30004], 0
    0xc7, 0x05, 0x08, 0x00, 0x03, 0x00, 0xfa, 0x05, 0x00, 0x00, // 0x015 mov dword [0x30008], 1530        12 + 1518 bytes
    0xc7, 0x05, 0x0c, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00, // 0x01f mov dword [0x3000c], 2           VRING_DESC_F_WRITE, next 0
    0xc7, 0x05, 0x00, 0x10, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, // 0x029 mov dword [0x31000], 0x10000     receive avail: flags 0, idx 1
    0xc7, 0x05, 0x04, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x033 mov dword [0x31004], 0           ring[0] = 0
    0xc7, 0x05, 0x00, 0x60, 0x03, 0x00, 0x00, 0x10, 0x04, 0x00, // 0x03d mov dword [0x36000], 0x41000     transmit descriptor 0: buffer
    0xc7, 0x05, 0x04, 0x60, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x047 mov dword [0x36004], 0
    0xc7, 0x05, 0x08, 0x60, 0x03, 0x00, 0x36, 0x00, 0x00, 0x00, // 0x051 mov dword [0x36008], 54          header + ARP request
    0xc7, 0x05, 0x0c, 0x60, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x05b mov dword [0x3600c], 0
    0xc7, 0x05, 0x00, 0x70, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x065 mov dword [0x37000], 0           transmit avail: flags 0, idx 0
    0xc7, 0x05, 0x04, 0x70, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x06f mov dword [0x37004], 0           ring[0] = 0
    0xbe, 0x71, 0x01, 0x10, 0x00,                    // 0x079 mov esi, offset frame
    0xbf, 0x00, 0x10, 0x04, 0x00,                    // 0x07e mov edi, 0x41000
    0xb9, 0x36, 0x00, 0x00, 0x00,                    // 0x083 mov ecx, 54
    0xf3, 0xa4,                                      // 0x088 rep movsb
    0xbb, 0x00, 0x00, 0x00, 0xd0,                    // 0x08a mov ebx, 0xd0000000
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,        // 0x08f mov dword [ebx + 0x70], 1        ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,        // 0x096 mov dword [ebx + 0x70], 3        DRIVER
    0xc7, 0x43, 0x24, 0x00, 0x00, 0x00, 0x00,        // 0x09d mov dword [ebx + 0x24], 0        DriverFeaturesSel 0
    0xc7, 0x43, 0x20, 0x20, 0x00, 0x00, 0x00,        // 0x0a4 mov dword [ebx + 0x20], 0x20     VIRTIO_NET_F_MAC
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,        // 0x0ab mov dword [ebx + 0x24], 1        DriverFeaturesSel 1
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,        // 0x0b2 mov dword [ebx + 0x20], 1        VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,        // 0x0b9 mov dword [ebx + 0x70], 11       FEATURES_OK
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,        // 0x0c0 mov dword [ebx + 0x30], 0        QueueSel 0 (receive)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,        // 0x0c7 mov dword [ebx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // 0x0ce mov dword [ebx + 0x80], 0x30000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // 0x0d8 mov dword [ebx + 0x90], 0x31000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // 0x0e2 mov dword [ebx + 0xa0], 0x32000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,        // 0x0ec mov dword [ebx + 0x44], 1        QueueReady
    0xc7, 0x43, 0x30, 0x01, 0x00, 0x00, 0x00,        // 0x0f3 mov dword [ebx + 0x30], 1        QueueSel 1 (transmit)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,        // 0x0fa mov dword [ebx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x60, 0x03, 0x00, // 0x101 mov dword [ebx + 0x80], 0x36000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x03, 0x00, // 0x10b mov dword [ebx + 0x90], 0x37000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, // 0x115 mov dword [ebx + 0xa0], 0x38000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,        // 0x11f mov dword [ebx + 0x44], 1        QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,        // 0x126 mov dword [ebx + 0x70], 15       DRIVER_OK
    0x66, 0xc7, 0x05, 0x02, 0x70, 0x03, 0x00, 0x01, 0x00, // 0x12d mov word [0x37002], 1            transmit avail idx 1
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,        // 0x136 mov dword [ebx + 0x50], 1        QueueNotify(1)
    0xf3, 0x90,                                      // 0x13d 1:  pause
    0x66, 0x83, 0x3d, 0x02, 0x20, 0x03, 0x00, 0x01,  // 0x13f cmp word [0x32002], 1            receive used idx
    0x72, 0xf4,                                      // 0x147 jb 1b
    0x66, 0xba, 0xf8, 0x03,                          // 0x149 mov dx, 0x3f8                    COM1: "NET:", then the buffer
    0xbe, 0x6d, 0x01, 0x10, 0x00,                    // 0x14d mov esi, offset marker
    0xb9, 0x04, 0x00, 0x00, 0x00,                    // 0x152 mov ecx, 4
    0xac,                                            // 0x157 2:  lodsb
    0xee,                                            // 0x158 out dx, al
    0xe2, 0xfc,                                      // 0x159 loop 2b
    0xbe, 0x00, 0x00, 0x04, 0x00,                    // 0x15b mov esi, 0x40000
    0xb9, 0x36, 0x00, 0x00, 0x00,                    // 0x160 mov ecx, 54
    0xac,                                            // 0x165 3:  lodsb
    0xee,                                            // 0x166 out dx, al
    0xe2, 0xfc,                                      // 0x167 loop 3b
    0xfa,                                            // 0x169 cli
    0xf4,                                            // 0x16a 4:  hlt
    0xeb, 0xfd,                                      // 0x16b jmp 4b
    0x4e, 0x45, 0x54, 0x3a,                          // 0x16d marker: "NET:"
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 0x171 frame: virtio_net_hdr_v1
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff,              // 0x17d to: broadcast
    0x02, 0x61, 0x6d, 0x70, 0x68, 0x69,              // 0x183 from: 02:61:6d:70:68:69
    0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // 0x189 ARP, Ethernet/IPv4, request
    0x02, 0x61, 0x6d, 0x70, 0x68, 0x69, 0x0a, 0x00, 0x02, 0x0f, // 0x193 sender: 02:61:6d:70:68:69, 10.0.2.15
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x02, 0x02, // 0x19d target: 00:00:00:00:00:00, 10.0.2.2
];

/// The guest's MAC.
const MAC: [u8; 6] = [0x02, 0x61, 0x6d, 0x70, 0x68, 0x69];

fn can_run(test: &str) -> bool {
    if !is_root() {
        skip(&format!("{test}: needs root (the VMM's jail)"));
        return false;
    }
    if !have("passt") {
        skip(&format!(
            "{test}: passt is not installed (Debian package passt); this test did NOT run"
        ));
        return false;
    }
    kvm_usable(test)
}

/// Clears close-on-exec of `fd` in the child (async-signal-safe).
fn inherit(cmd: &mut Command, fd: i32, as_fd: i32) {
    // SAFETY: between fork and exec, dup2/fcntl only.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == as_fd {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, as_fd)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A child killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_all(f: &mut std::fs::File) -> Vec<u8> {
    let mut v = Vec::new();
    f.rewind().unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// The jailed VMM (the supervisor's child) and the tid of its device
/// event loop thread.
fn event_loop_thread(supervisor: u32) -> Option<(u32, u32)> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    let pid: u32 = children.split_whitespace().next()?.parse().ok()?;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let t = t.ok()?.path();
        let comm = std::fs::read_to_string(t.join("comm")).ok()?;
        if comm.trim() == "virtio-events" {
            let tid = t.file_name()?.to_str()?.parse().ok()?;
            return Some((pid, tid));
        }
    }
    None
}

/// utime + stime of a thread, in clock ticks.
fn cpu_ticks(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// passt with the guest 10.0.2.15/24 and the gateway 10.0.2.2, and `end`:
/// `--fd N` or `--socket PATH`.
fn passt(end: &[&str]) -> Command {
    let mut cmd = Command::new("passt");
    cmd.args(["--foreground", "--quiet", "-a", "10.0.2.15", "-n", "24"])
        .args(["-g", "10.0.2.2"])
        .args(end)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A jailed `amphi vmm` running the guest with `--net NET` (and `socket`
/// as descriptor 3), its stdout and stderr.
struct Vmm {
    child: Reaped,
    out: std::fs::File,
    err: std::fs::File,
    id: String,
    _guest: tempfile::NamedTempFile,
}

impl Vmm {
    fn start(net: &str, socket: Option<OwnedFd>) -> Vmm {
        let guest = guest_file(NET_GUEST);
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let id = format!("test-net-{}-{n}", std::process::id());
        let mut cmd = Command::new(amphi_bin());
        cmd.args(["vmm", "--kernel", guest.path().to_str().unwrap(), "--force"])
            .args(["--mem", "32", "--timeout", "60", "--serial", "stdout"])
            .args(["--net", net, "--jail-id", &id])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap());
        if let Some(s) = &socket {
            inherit(&mut cmd, s.as_raw_fd(), 3);
        }
        let child = Reaped(cmd.spawn().unwrap());
        Vmm {
            child,
            out,
            err,
            id,
            _guest: guest,
        }
    }

    fn stderr(&mut self) -> String {
        String::from_utf8_lossy(&read_all(&mut self.err)).into_owned()
    }

    /// What the guest received (header and frame), once it printed it.
    fn reply(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = read_all(&mut self.out);
            if let Some(at) = got.windows(4).position(|w| w == b"NET:") {
                if got.len() >= at + 4 + 54 {
                    return got[at + 4..at + 4 + 54].to_vec();
                }
            }
            if let Some(st) = self.child.0.try_wait().unwrap() {
                panic!("amphi vmm ended ({st}):\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no answer from the guest; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; asserts it ends as stopped by the host, leaving no jail
    /// directory; its stderr.
    fn stop(mut self) -> String {
        assert!(
            self.child.0.try_wait().unwrap().is_none(),
            "the VMM ended on its own:\n{}",
            self.stderr()
        );
        // SAFETY: signalling our own child, not yet waited for.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let status = self.child.0.wait().unwrap();
        let stderr = self.stderr();
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
        assert!(
            stderr.contains("amphi vmm: stopped by host (SIGTERM)"),
            "{stderr}"
        );
        assert!(!std::path::Path::new("/run/amphi/jail")
            .join(&self.id)
            .exists());
        stderr
    }
}

/// passt's answer to the guest's ARP request, as the guest received it.
fn check_reply(reply: &[u8]) {
    let (header, arp) = reply.split_at(12);
    assert_eq!(
        header,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers 1"
    );
    assert_eq!(&arp[0..6], &MAC, "to the guest");
    assert_eq!(&arp[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&arp[20..22], &[0, 2], "a reply");
    assert_eq!(&arp[28..32], &[10, 0, 2, 2], "for the gateway");
    assert_eq!(&arp[38..42], &[10, 0, 2, 15]);
}

#[test]
fn the_jailed_vmm_talks_to_passt_and_outlives_it() {
    if !can_run("the_jailed_vmm_talks_to_passt_and_outlives_it") {
        return;
    }
    let (vmm_end, passt_end) = UnixStream::pair().unwrap();
    let (vmm_end, passt_end) = (OwnedFd::from(vmm_end), OwnedFd::from(passt_end));
    let fd = passt_end.as_raw_fd();
    let mut cmd = passt(&["--fd", &fd.to_string()]);
    inherit(&mut cmd, fd, fd);
    let mut passt = Reaped(cmd.spawn().expect("starting passt"));
    drop(passt_end);
    let mut vmm = Vmm::start("fd=3", Some(vmm_end));
    check_reply(&vmm.reply());

    // passt goes away: said once; the device event loop sleeps.
    let (pid, tid) = event_loop_thread(vmm.child.0.id()).expect("the jailed VMM's event loop");
    let _ = passt.0.kill();
    let _ = passt.0.wait();
    let gone = "virtio-net(fd 3): the network backend closed the connection";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vmm.stderr().contains(gone) {
        assert!(Instant::now() < deadline, "not reported:\n{}", vmm.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = cpu_ticks(pid, tid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid, tid) - before;
    assert!(
        spent <= 5,
        "the event loop used {spent} ticks in 1 s: it spins"
    );

    // The VM runs on until it is stopped.
    let stderr = vmm.stop();
    assert_eq!(stderr.matches(gone).count(), 1, "said once:\n{stderr}");
}

/// `--net PATH`: the VMM connects to passt's socket before its jail.
#[test]
fn the_jailed_vmm_connects_to_passts_socket_path() {
    if !can_run("the_jailed_vmm_connects_to_passts_socket_path") {
        return;
    }
    // passt started as root runs as nobody before it binds its socket.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let path = dir.path().join("passt.sock");
    let _passt = Reaped(
        passt(&["--socket", path.to_str().unwrap()])
            .spawn()
            .expect("starting passt"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "passt made no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut vmm = Vmm::start(path.to_str().unwrap(), None);
    check_reply(&vmm.reply());
    let stderr = vmm.stop();
    assert!(!stderr.contains("virtio-net"), "{stderr}");
}
