//! Tiny guests on the real /dev/kvm driving a virtio-fs device served by a
//! real virtiofsd: the guest does the driver's register work (status
//! handshake, both queues, DRIVER_OK, which sets the backend up from the
//! vCPU thread, under its seccomp filter), notifies the request queue
//! (KVM's ioeventfd is virtiofsd's kick eventfd) and waits for the used
//! ring; the test wrote a FUSE_INIT request into guest memory and reads
//! virtiofsd's answer. And the backend going away: before DRIVER_OK, and
//! while the guest runs; either way the VM runs on and the VMM answers
//! the guest's next request itself with a FUSE error of -EIO (the guest
//! sees it in its reply buffer and reports it), under the same seccomp
//! filters.
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

/// The second request and its reply buffer (descriptors 2 and 3).
const REQUEST2: u64 = 0x42000;
const REPLY2: u64 = 0x43000;

/// The guest, part 2 instead: request 0 as above (wait for the used ring
/// and VRING, acknowledge); say so at RESULTS + 0x20 and wait for the
/// host's go at RESULTS + 0x24 (the host kills virtiofsd in between);
/// make request 1 (head 2, already in the ring) available and notify;
/// wait for it to be used and for VRING; store InterruptStatus at
/// RESULTS + 0x14 and the reply's error field at RESULTS + 0x18; reset.
#[rustfmt::skip]
const TWO_REQUESTS_AND_RESET: &[u8] = &[
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x70, 0x03, 0x00, 0x01, 0x00, // mov word [0x37002], 1  avail idx
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x50], 1   QueueNotify(1)
    0xf3, 0x90,                                     // 1: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x80, 0x03, 0x00, 0x01, // cmp word [0x38002], 1  used idx
    0x72, 0xf3,                                     //    jb 1b
    0xf3, 0x90,                                     // 2: pause
    0x8b, 0x43, 0x60,                               //    mov eax, [rbx + 0x60]    InterruptStatus
    0xa8, 0x01,                                     //    test al, 1               VRING
    0x74, 0xf7,                                     //    jz 2b
    0x89, 0x43, 0x64,                               // mov [rbx + 0x64], eax       InterruptACK
    0xc7, 0x04, 0x25, 0x20, 0x50, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // mov dword [0x5020], 1
    0xf3, 0x90,                                     // 3: pause
    0x83, 0x3c, 0x25, 0x24, 0x50, 0x00, 0x00, 0x00, //    cmp dword [0x5024], 0  the host's go
    0x74, 0xf4,                                     //    je 3b
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x70, 0x03, 0x00, 0x02, 0x00, // mov word [0x37002], 2  avail idx
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x50], 1   QueueNotify(1)
    0xf3, 0x90,                                     // 4: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x80, 0x03, 0x00, 0x02, // cmp word [0x38002], 2  used idx
    0x72, 0xf3,                                     //    jb 4b
    0xf3, 0x90,                                     // 5: pause
    0x8b, 0x43, 0x60,                               //    mov eax, [rbx + 0x60]    InterruptStatus
    0xa8, 0x01,                                     //    test al, 1               VRING
    0x74, 0xf7,                                     //    jz 5b
    0x89, 0x04, 0x25, 0x14, 0x50, 0x00, 0x00,       // mov [0x5014], eax
    0x89, 0x43, 0x64,                               // mov [rbx + 0x64], eax       InterruptACK
    0x8b, 0x04, 0x25, 0x04, 0x30, 0x04, 0x00,       // mov eax, [0x43004]          reply 1's error
    0x89, 0x04, 0x25, 0x18, 0x50, 0x00, 0x00,       // mov [0x5018], eax
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
        // Listening, not only bound (a connect in between is refused).
        while !amphi_test_skip::unix_listening(&this.socket) {
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

/// A FUSE request: `struct fuse_in_header`, then `body`.
fn fuse_request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&1u64.to_le_bytes()); // nodeid: the root
    req.extend_from_slice(&[0u8; 16]);
    req.extend_from_slice(body);
    req
}

/// FUSE_INIT 7.31: struct fuse_init_in after the header.
fn fuse_init(unique: u64) -> Vec<u8> {
    let body = [7u32.to_le_bytes(), 31u32.to_le_bytes(), [0; 4], [0; 4]].concat();
    fuse_request(26, unique, &body)
}

/// FUSE_GETATTR of the root: struct fuse_getattr_in after the header.
fn fuse_getattr(unique: u64) -> Vec<u8> {
    fuse_request(3, unique, &[0u8; 16])
}

/// A reply's `struct fuse_out_header`: (len, error, unique).
fn out_header(vm: &Vm, at: u64) -> (u32, i32, u64) {
    let mut unique = [0u8; 8];
    vm.read_guest(at + 8, &mut unique).unwrap();
    (
        read_u32(vm, at),
        read_u32(vm, at + 4) as i32,
        u64::from_le_bytes(unique),
    )
}

/// The used ring entry `slot` of queue 1: (head, length).
fn used_entry(vm: &Vm, slot: u64) -> (u32, u32) {
    (
        read_u32(vm, USED + 4 + 8 * slot),
        read_u32(vm, USED + 8 + 8 * slot),
    )
}

/// The VMM's answer with the backend gone: a bare fuse_out_header.
const EIO_REPLY_LEN: u32 = 16;

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
/// finds the connection gone, and the VMM serves the queues itself: the
/// guest's request (a FUSE_GETATTR) comes back with -EIO, its interrupt
/// raised, and the guest goes on to reset.
#[test]
fn a_backend_dead_at_driver_ok_leaves_requests_failing_with_eio() {
    if !can_run("a_backend_dead_at_driver_ok_leaves_requests_failing_with_eio") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, REQUEST_AND_RESET]);
    let req = fuse_getattr(0x5151);
    vm.write_guest(REQUEST, &req).unwrap();
    vm.write_guest(REPLY, &[0xaa; 64]).unwrap();
    write_desc(&vm, 0, REQUEST, req.len() as u32, 1, 1); // NEXT
    write_desc(&vm, 1, REPLY, 64, 2, 0); // WRITE
    vm.write_guest(AVAIL, &[0, 0, 0, 0, 0, 0]).unwrap(); // ring[0] = head 0
    d.kill();

    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);

    assert_eq!(
        read_u32(&vm, RESULTS + 0x14) & 1,
        1,
        "InterruptStatus VRING"
    );
    assert_eq!(used_entry(&vm, 0), (0, EIO_REPLY_LEN));
    assert_eq!(out_header(&vm, REPLY), (16, -libc::EIO, 0x5151));
    assert_eq!(
        read_u32(&vm, REPLY + 16),
        0xaaaa_aaaa,
        "written past the header"
    );
}

/// virtiofsd killed while the guest runs with the device live: the guest's
/// FUSE_INIT was answered by virtiofsd; the test kills it and lets the
/// guest go on; the guest's next request (a FUSE_GETATTR, notified
/// through KVM's ioeventfd, maybe before the VMM saw the hang-up) is
/// answered by the VMM with -EIO and an interrupt, which the guest
/// reports. The VM runs on to the guest's own reset.
#[test]
fn a_backend_killed_while_the_guest_runs_fails_the_next_request_with_eio() {
    let test = "a_backend_killed_while_the_guest_runs_fails_the_next_request_with_eio";
    if !can_run(test) {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut vm = fs_vm(&d, &[SETUP, TWO_REQUESTS_AND_RESET]);
    let init = fuse_init(0x1001);
    vm.write_guest(REQUEST, &init).unwrap();
    write_desc(&vm, 0, REQUEST, init.len() as u32, 1, 1);
    write_desc(&vm, 1, REPLY, 4096, 2, 0);
    let getattr = fuse_getattr(0x1002);
    vm.write_guest(REQUEST2, &getattr).unwrap();
    vm.write_guest(REPLY2, &[0xaa; 256]).unwrap();
    write_desc(&vm, 2, REQUEST2, getattr.len() as u32, 1, 3);
    write_desc(&vm, 3, REPLY2, 256, 2, 0);
    // ring[0] = head 0, ring[1] = head 2; the guest bumps the index.
    vm.write_guest(AVAIL, &[0, 0, 0, 0, 0, 0, 2, 0]).unwrap();

    let mem = vm.memory().clone();
    let killer = std::thread::spawn(move || {
        use vm_memory::{Bytes, GuestAddress};
        let deadline = Instant::now() + Duration::from_secs(15);
        while mem.read_obj::<u32>(GuestAddress(RESULTS + 0x20)).unwrap() == 0 {
            assert!(
                Instant::now() < deadline,
                "the first request was not answered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill();
        mem.write_obj(1u32, GuestAddress(RESULTS + 0x24)).unwrap();
        d
    });
    let reason = run_guarded(&mut vm);
    let _d = killer.join().unwrap();
    assert_eq!(reason, ExitReason::Reset);

    assert_eq!(
        out_header(&vm, REPLY),
        (80, 0, 0x1001),
        "FUSE_INIT by virtiofsd"
    );
    assert_eq!(used_entry(&vm, 1), (2, EIO_REPLY_LEN));
    assert_eq!(out_header(&vm, REPLY2), (16, -libc::EIO, 0x1002));
    assert_eq!(
        read_u32(&vm, RESULTS + 0x18) as i32,
        -libc::EIO,
        "the error the guest read"
    );
    assert_eq!(
        read_u32(&vm, RESULTS + 0x14) & 1,
        1,
        "InterruptStatus VRING"
    );
    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    assert!(
        !transport.queues_served_elsewhere(),
        "the VMM serves the queues"
    );
    assert_eq!(transport.notify_exits(), 0, "KVM_IOEVENTFD took the notify");
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
