//! Tiny guests on the real /dev/kvm driving a virtio-fs device served by a
//! real virtiofsd: the guest does the driver's register work (status
//! handshake, both queues, DRIVER_OK, which sets the backend up from the
//! vCPU thread, under its seccomp filter), notifies the request queue
//! (KVM's ioeventfd is virtiofsd's kick eventfd) and waits for the used
//! ring; the test wrote a FUSE_INIT request into guest memory and reads
//! virtiofsd's answer. And the backend going away: before DRIVER_OK, and
//! while the guest runs; either way the run ends with
//! `ExitReason::DeviceFailed` naming the device and the socket, promptly.
//!
//! Without /dev/kvm or virtiofsd each test prints a loud `SKIP` line and
//! returns (fails in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_vmm::jail::{FilterParams, SeccompFilters, ThreadFilters};
use amphi_vmm::{ExitReason, FsConfig, Vm, VmConfig};

mod common;
use common::{kvm_or_skip, long_mode, run_guarded, CODE};

/// Queue 1 (requests): descriptors, available ring, used ring.
const DESC: u64 = 0x36000;
const AVAIL: u64 = 0x37000;
const USED: u64 = 0x38000;
/// The FUSE request and the buffer for the reply.
const REQUEST: u64 = 0x40000;
const REPLY: u64 = 0x41000;
/// Where the guest stores InterruptStatus.
const RESULTS: u64 = 0x5000;

/// The guest, part 1: ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK; queue
/// 0 (high priority, 8 entries at 0x30000/0x31000/0x32000) and queue 1
/// (requests, 8 entries at DESC/AVAIL/USED) ready; DRIVER_OK.
#[rustfmt::skip]
const SETUP: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xd0000000
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 1   ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 3   DRIVER
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x24], 1   DriverFeaturesSel
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x20], 1   VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 11  FEATURES_OK
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x30], 0   QueueSel (hiprio)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // mov dword [rbx + 0x80], 0x30000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // mov dword [rbx + 0x90], 0x31000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // mov dword [rbx + 0xa0], 0x32000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x30, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x30], 1   QueueSel (requests)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x60, 0x03, 0x00, // mov dword [rbx + 0x80], 0x36000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x03, 0x00, // mov dword [rbx + 0x90], 0x37000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, // mov dword [rbx + 0xa0], 0x38000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 15  DRIVER_OK
];

/// The guest, part 2: make request 0 available on queue 1 and notify it;
/// wait until it is used and InterruptStatus says so (virtiofsd writes
/// the used ring before it signals the call eventfd the VMM turns into the
/// status bit and the interrupt: a driver that polls the ring can be
/// ahead of the status); acknowledge it; reset through the i8042.
#[rustfmt::skip]
const REQUEST_AND_RESET: &[u8] = &[
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x70, 0x03, 0x00, 0x01, 0x00, // mov word [0x37002], 1  avail idx
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x50], 1   QueueNotify(1)
    0xf3, 0x90,                                     // 1: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x80, 0x03, 0x00, 0x01, // cmp word [0x38002], 1  used idx
    0x72, 0xf3,                                     //    jb 1b
    0xf3, 0x90,                                     // 2: pause
    0x8b, 0x43, 0x60,                               //    mov eax, [rbx + 0x60]    InterruptStatus
    0xa8, 0x01,                                     //    test al, 1               VRING
    0x74, 0xf7,                                     //    jz 2b
    0x89, 0x04, 0x25, 0x14, 0x50, 0x00, 0x00,       // mov [0x5014], eax
    0x89, 0x43, 0x64,                               // mov [rbx + 0x64], eax       InterruptACK
    0xb0, 0xfe,                                     // mov al, 0xfe
    0xe6, 0x64,                                     // out 0x64, al
    0xf4,                                           // hlt
];

/// The guest, part 2 instead: nothing more, forever.
#[rustfmt::skip]
const SPIN: &[u8] = &[
    0xf3, 0x90,                                     // 1: pause
    0xeb, 0xfc,                                     //    jmp 1b
];

/// virtiofsd on `$PATH` and /dev/kvm, or a loud skip.
fn can_run(test: &str) -> bool {
    kvm_or_skip(test)
        && amphi_test_skip::require(
            amphi_test_skip::have("virtiofsd"),
            &format!("{test}: virtiofsd is not installed (scripts/setup installs it); NOT run"),
        )
}

/// A virtiofsd serving an empty directory.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let socket = dir.path().join("vfs.sock");
        let child = Command::new("virtiofsd")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning virtiofsd");
        let mut this = Virtiofsd {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !this.socket.exists() {
            assert!(this.child.try_wait().unwrap().is_none(), "virtiofsd ended");
            assert!(Instant::now() < deadline, "virtiofsd did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        this
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 16 MiB VM with one virtio-fs device on `d`, the guest `parts` at
/// CODE, its vCPU and event loop threads under their seccomp filters (the
/// vhost-user socket allowed for the vCPU).
fn fs_vm(d: &Virtiofsd, parts: &[&[u8]]) -> Vm {
    let config = VmConfig {
        mem_mib: 16,
        fs_devices: vec![FsConfig::new(&d.socket, "amphi").unwrap()],
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("creating the VM");
    let dev = &vm.virtio_devices()[0];
    assert_eq!((dev.base, dev.gsi, dev.device_type), (0xd000_0000, 5, 26));
    vm.write_guest(CODE, &parts.concat()).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    amphi_vmm::jail::install_sigsys_reporter().unwrap();
    let params = FilterParams::for_vm(&vm);
    assert_eq!(params.vhost_user_sockets.len(), 1);
    vm.set_seccomp(ThreadFilters {
        filters: Arc::new(SeccompFilters::new(params).unwrap()),
        main_thread: false,
    });
    vm
}

fn write_desc(vm: &Vm, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    vm.write_guest(DESC + index * 16, &d).unwrap();
}

fn read_u32(vm: &Vm, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    vm.read_guest(addr, &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn guest_gets_fuse_init_answered_by_virtiofsd() {
    let test = "guest_gets_fuse_init_answered_by_virtiofsd";
    if !can_run(test) {
        return;
    }
    let started = Instant::now();
    let d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, REQUEST_AND_RESET]);
    // FUSE_INIT 7.31: struct fuse_in_header, struct fuse_init_in.
    let mut req = Vec::new();
    req.extend_from_slice(&56u32.to_le_bytes());
    req.extend_from_slice(&26u32.to_le_bytes()); // FUSE_INIT
    req.extend_from_slice(&0xabcdu64.to_le_bytes()); // unique
    req.extend_from_slice(&[0u8; 24]);
    req.extend_from_slice(&7u32.to_le_bytes());
    req.extend_from_slice(&31u32.to_le_bytes());
    req.extend_from_slice(&[0u8; 8]);
    vm.write_guest(REQUEST, &req).unwrap();
    write_desc(&vm, 0, REQUEST, 56, 1, 1); // NEXT
    write_desc(&vm, 1, REPLY, 4096, 2, 0); // WRITE
    vm.write_guest(AVAIL, &[0, 0, 0, 0, 0, 0]).unwrap(); // ring[0] = head 0

    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);

    assert_eq!(
        read_u32(&vm, RESULTS + 0x14) & 1,
        1,
        "InterruptStatus VRING"
    );
    let mut used = [0u8; 12];
    vm.read_guest(USED, &mut used).unwrap();
    assert_eq!(u16::from_le_bytes([used[2], used[3]]), 1, "used idx");
    assert_eq!(
        read_u32(&vm, USED + 8),
        80,
        "fuse_out_header + fuse_init_out"
    );
    assert_eq!(read_u32(&vm, REPLY), 80, "out.len");
    assert_eq!(read_u32(&vm, REPLY + 4), 0, "out.error");
    let mut unique = [0u8; 8];
    vm.read_guest(REPLY + 8, &mut unique).unwrap();
    assert_eq!(u64::from_le_bytes(unique), 0xabcd);
    assert_eq!(read_u32(&vm, REPLY + 16), 7, "FUSE major");
    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    assert_eq!(transport.notify_exits(), 0, "KVM_IOEVENTFD took the notify");
    assert_eq!(transport.guest_errors(), 0);
    drop(transport);
    eprintln!("TIMING: {test}: {:?}", started.elapsed());
}

/// virtiofsd gone before the guest's DRIVER_OK: the setup in that write
/// fails and the vCPU ends the run with the device failure.
#[test]
fn a_backend_dead_at_driver_ok_ends_the_run() {
    if !can_run("a_backend_dead_at_driver_ok_ends_the_run") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, SPIN]);
    d.kill();
    match run_guarded(&mut vm) {
        ExitReason::DeviceFailed { device, detail } => {
            assert!(
                device.contains("tag amphi") && device.contains(&*d.socket.to_string_lossy()),
                "{device}"
            );
            assert!(!detail.is_empty());
        }
        other => panic!("not a device failure: {other}"),
    }
}

/// virtiofsd killed while the guest runs with the device live: the event
/// loop sees the socket hang up and the run ends at once.
#[test]
fn a_backend_killed_while_the_guest_runs_ends_the_run() {
    if !can_run("a_backend_killed_while_the_guest_runs_ends_the_run") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, SPIN]);
    let transport = vm.virtio_devices()[0].transport.clone();
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !transport.lock().unwrap().is_active() {
            assert!(Instant::now() < deadline, "the guest never set DRIVER_OK");
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill();
        (d, Instant::now())
    });
    let reason = run_guarded(&mut vm);
    let ended = Instant::now();
    let (d, killed) = killer.join().unwrap();
    match reason {
        ExitReason::DeviceFailed { device, detail } => {
            assert!(device.contains(&*d.socket.to_string_lossy()), "{device}");
            assert!(detail.contains("hung up"), "{detail}");
        }
        other => panic!("not a device failure: {other}"),
    }
    let after = ended.duration_since(killed);
    assert!(
        after < Duration::from_secs(5),
        "noticed {after:?} after the kill"
    );
    eprintln!("the run ended {after:?} after virtiofsd was killed");
}

/// virtiofsd stopped (SIGSTOP: alive, but silent) when the guest sets
/// DRIVER_OK: the vCPU waits for an answer that does not come, however it
/// is kicked. The host's stop still ends the run, as `HostStop`, about
/// `UNSTICK_GRACE` later (the VMM shuts the socket down), not never.
#[test]
fn a_silent_backend_does_not_keep_the_host_from_stopping_the_vm() {
    if !can_run("a_silent_backend_does_not_keep_the_host_from_stopping_the_vm") {
        return;
    }
    let d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, SPIN]);
    // After the handshake (which would time out), before DRIVER_OK.
    let pid = d.child.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let transport = vm.virtio_devices()[0].transport.clone();
    let stop = vm.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        let reason = vm.run();
        let _ = tx.send(Instant::now());
        (vm, reason)
    });
    // The vCPU holds the device while it waits on the backend.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while held < 20 {
        assert!(
            Instant::now() < deadline,
            "the vCPU never waited on the backend"
        );
        held = if transport.try_lock().is_err() {
            held + 1
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped_at = Instant::now();
    stop.stop();
    let grace = amphi_vmm::vm::UNSTICK_GRACE;
    let ended_at = rx
        .recv_timeout(grace + Duration::from_secs(10))
        .expect("the stopped VM did not end: a silent backend kept the vCPU");
    let (vm, reason) = runner.join().unwrap();
    assert_eq!(reason.unwrap(), ExitReason::HostStop);
    let took = ended_at.duration_since(stopped_at);
    eprintln!("the run ended {took:?} after the stop (grace {grace:?})");
    assert!(
        took >= grace,
        "{took:?}: ended before the grace; was the vCPU stuck?"
    );
    drop(vm);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}
