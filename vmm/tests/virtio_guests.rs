//! Tiny guests that drive virtio-mmio devices themselves, on the real
//! /dev/kvm (hardware KVM or PVM): the MMIO register path, the ioeventfd
//! on `QueueNotify`, the event loop and the device, end to end.
//!
//! The test writes the virtqueue (descriptors, available ring) into guest
//! memory; the guest does the driver's register work (status handshake,
//! features, queue setup, notify) and waits for the used ring. The guest's
//! source (GNU as, Intel syntax, linked at 0x10000) is next to its bytes.
//!
//! Without /dev/kvm every test prints a loud `SKIP` line and returns
//! (fails in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::time::Instant;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use amphi_vmm::jail::{FilterParams, SeccompFilters, ThreadFilters};
use amphi_vmm::{BlockConfig, ConsoleBackend, ExitReason, Vm, VmConfig};

mod common;
use common::{kvm_or_skip, long_mode, run_guarded, CODE};

/// The virtqueue, where the guest code below points the device.
const DESC: u64 = 0x30000;
const AVAIL: u64 = 0x31000;
const USED: u64 = 0x32000;
/// Request headers, data buffers and status bytes.
const HEADERS: u64 = 0x33000;
const DATA: u64 = 0x34000;
const STATUS: u64 = 0x35000;
/// Where the guest stores what it read from registers.
const RESULTS: u64 = 0x5000;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn write_desc(vm: &Vm, index: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    vm.write_guest(DESC + index * 16, &d).unwrap();
}

/// Request `n` (descriptors `3n .. 3n + 2`): read `sector` into data buffer `n`.
fn read_request(vm: &Vm, n: u64, sector: u64) {
    let header = HEADERS + n * 0x100;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&0u32.to_le_bytes()); // VIRTIO_BLK_T_IN
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    vm.write_guest(header, &h).unwrap();
    vm.write_guest(STATUS + n, &[0xff]).unwrap();
    let first = 3 * n;
    write_desc(vm, first, header, 16, F_NEXT, first as u16 + 1);
    write_desc(
        vm,
        first + 1,
        DATA + n * 0x200,
        512,
        F_WRITE | F_NEXT,
        first as u16 + 2,
    );
    write_desc(vm, first + 2, STATUS + n, 1, F_WRITE, 0);
    vm.write_guest(AVAIL + 4 + 2 * n, &(first as u16).to_le_bytes())
        .unwrap();
}

fn read_u32(vm: &Vm, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    vm.read_guest(addr, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// The guest: identify the device, negotiate VERSION_1, set up queue 0 (8
/// entries at DESC/AVAIL/USED), DRIVER_OK; wait for request 1 (available
/// before DRIVER_OK); make request 2 available and notify; wait for it;
/// read and acknowledge InterruptStatus; reset through the i8042.
#[rustfmt::skip]
const BLOCK_GUEST: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xd0000000
    0x8b, 0x03,                                     // mov eax, [rbx]          MagicValue
    0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00,       // mov [0x5000], eax
    0x8b, 0x43, 0x04,                               // mov eax, [rbx + 0x4]    Version
    0x89, 0x04, 0x25, 0x04, 0x50, 0x00, 0x00,       // mov [0x5004], eax
    0x8b, 0x43, 0x08,                               // mov eax, [rbx + 0x8]    DeviceID
    0x89, 0x04, 0x25, 0x08, 0x50, 0x00, 0x00,       // mov [0x5008], eax
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 1   ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 3   DRIVER
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x24], 1   DriverFeaturesSel
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x20], 1   VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 11  FEATURES_OK
    0x8b, 0x43, 0x70,                               // mov eax, [rbx + 0x70]
    0x89, 0x04, 0x25, 0x0c, 0x50, 0x00, 0x00,       // mov [0x500c], eax
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x30], 0   QueueSel
    0x8b, 0x43, 0x34,                               // mov eax, [rbx + 0x34]       QueueNumMax
    0x89, 0x04, 0x25, 0x10, 0x50, 0x00, 0x00,       // mov [0x5010], eax
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x38], 8   QueueNum
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // mov dword [rbx + 0x80], 0x30000
    0xc7, 0x83, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // mov dword [rbx + 0x84], 0
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // mov dword [rbx + 0x90], 0x31000
    0xc7, 0x83, 0x94, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // mov dword [rbx + 0x94], 0
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // mov dword [rbx + 0xa0], 0x32000
    0xc7, 0x83, 0xa4, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // mov dword [rbx + 0xa4], 0
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 15  DRIVER_OK
    0xf3, 0x90,                                     // 1: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x20, 0x03, 0x00, 0x01, // cmp word [0x32002], 1  used idx
    0x72, 0xf3,                                     //    jb 1b
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x10, 0x03, 0x00, 0x02, 0x00, // mov word [0x31002], 2  avail idx
    0xc7, 0x43, 0x50, 0x00, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x50], 0   QueueNotify
    0xf3, 0x90,                                     // 2: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x20, 0x03, 0x00, 0x02, // cmp word [0x32002], 2
    0x72, 0xf3,                                     //    jb 2b
    0x8b, 0x43, 0x60,                               // mov eax, [rbx + 0x60]       InterruptStatus
    0x89, 0x04, 0x25, 0x14, 0x50, 0x00, 0x00,       // mov [0x5014], eax
    0x89, 0x43, 0x64,                               // mov [rbx + 0x64], eax       InterruptACK
    0xb0, 0xfe,                                     // mov al, 0xfe
    0xe6, 0x64,                                     // out 0x64, al
    0xf4,                                           // hlt
];

#[test]
fn guest_reads_a_block_device_over_virtio_mmio() {
    block_guest("guest_reads_a_block_device_over_virtio_mmio", false);
}

/// As above, with the vCPU and the device event loop under their seccomp
/// filters: a call outside them kills this test process with SIGSYS and a
/// line naming the thread and the call.
#[test]
fn guest_reads_a_block_device_under_seccomp() {
    block_guest("guest_reads_a_block_device_under_seccomp", true);
}

/// Puts the VM's threads under their seccomp filters (not the test's own
/// thread: `main_thread: false`).
fn jail_threads(vm: &mut Vm) {
    amphi_vmm::jail::install_sigsys_reporter().unwrap();
    let filters = SeccompFilters::new(FilterParams::current()).unwrap();
    vm.set_seccomp(ThreadFilters {
        filters: Arc::new(filters),
        main_thread: false,
    });
}

fn block_guest(test: &str, jailed: bool) {
    if !kvm_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let mut disk = tempfile::NamedTempFile::new().unwrap();
    for s in 0..4u8 {
        disk.write_all(&[b'A' + s; 512]).unwrap();
    }
    let config = VmConfig {
        mem_mib: 16,
        block_devices: vec![BlockConfig {
            path: disk.path().to_path_buf(),
            read_only: true,
            id: Some("tiny".into()),
        }],
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("creating the VM");
    assert!(
        vm.cmdline()
            .ends_with(" virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        vm.cmdline()
    );
    let dev = &vm.virtio_devices()[0];
    assert_eq!((dev.base, dev.gsi, dev.device_type), (0xd000_0000, 5, 2));

    // Request 0 is available before the driver is even up; request 1 is
    // written now but made available by the guest later.
    vm.write_guest(AVAIL, &[0, 0, 1, 0]).unwrap(); // flags 0, idx 1
    read_request(&vm, 0, 1);
    read_request(&vm, 1, 3);
    vm.write_guest(CODE, BLOCK_GUEST).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    if jailed {
        jail_threads(&mut vm);
    }
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);

    assert_eq!(read_u32(&vm, RESULTS), 0x7472_6976, "MagicValue");
    assert_eq!(read_u32(&vm, RESULTS + 4), 2, "Version");
    assert_eq!(read_u32(&vm, RESULTS + 8), 2, "DeviceID: block");
    assert_eq!(read_u32(&vm, RESULTS + 0xc), 11, "FEATURES_OK stuck");
    assert_eq!(read_u32(&vm, RESULTS + 0x10), 256, "QueueNumMax");
    assert_eq!(
        read_u32(&vm, RESULTS + 0x14) & 1,
        1,
        "InterruptStatus: used ring"
    );
    let mut status = [0u8; 2];
    vm.read_guest(STATUS, &mut status).unwrap();
    assert_eq!(status, [0, 0], "VIRTIO_BLK_S_OK twice");
    let mut data = vec![0u8; 1024];
    vm.read_guest(DATA, &mut data).unwrap();
    assert!(data[..512].iter().all(|&b| b == b'B'), "sector 1");
    assert!(data[512..].iter().all(|&b| b == b'D'), "sector 3");
    let mut used = [0u8; 20];
    vm.read_guest(USED, &mut used).unwrap();
    assert_eq!(u16::from_le_bytes([used[2], used[3]]), 2, "used idx");
    let elem = |i: usize| {
        let at = 4 + 8 * i;
        (
            u32::from_le_bytes(used[at..at + 4].try_into().unwrap()),
            u32::from_le_bytes(used[at + 4..at + 8].try_into().unwrap()),
        )
    };
    assert_eq!((elem(0), elem(1)), ((0, 513), (3, 513)));

    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    eprintln!(
        "on {}: QueueNotify writes that exited to the VMM: {} (0 = served by the ioeventfd)",
        vm.kvm_kind(),
        transport.notify_exits()
    );
    assert_eq!(transport.notify_exits(), 0, "KVM_IOEVENTFD took the notify");
    assert_eq!(transport.guest_errors(), 0);
    drop(transport);
    assert_eq!(vm.unhandled_mmio().reads + vm.unhandled_mmio().writes, 0);
    eprintln!("TIMING: {test}: {:?}", started.elapsed());
}

/// The guest: bring up the console's receive queue (8 entries at
/// 0x30000/0x31000/0x32000) and transmit queue (0x36000/0x37000/0x38000),
/// DRIVER_OK; wait for host bytes in receive buffer 0 (0x40000), copy them
/// to transmit buffer 0 (0x41000), set its length, make it available and
/// notify queue 1; wait until it is used; reset.
#[rustfmt::skip]
const ECHO_GUEST: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xd0000000
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 1   ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 3   DRIVER
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x24], 1   DriverFeaturesSel
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x20], 1   VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 11  FEATURES_OK
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x30], 0   QueueSel (receive)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // mov dword [rbx + 0x80], 0x30000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // mov dword [rbx + 0x90], 0x31000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // mov dword [rbx + 0xa0], 0x32000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x30, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x30], 1   QueueSel (transmit)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x60, 0x03, 0x00, // mov dword [rbx + 0x80], 0x36000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x03, 0x00, // mov dword [rbx + 0x90], 0x37000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, // mov dword [rbx + 0xa0], 0x38000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x44], 1   QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x70], 15  DRIVER_OK
    0xf3, 0x90,                                     // 1: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x20, 0x03, 0x00, 0x01, // cmp word [0x32002], 1  receive used idx
    0x72, 0xf3,                                     //    jb 1b
    0x8b, 0x0c, 0x25, 0x08, 0x20, 0x03, 0x00,       // mov ecx, [0x32008]          bytes received
    0x89, 0x0c, 0x25, 0x08, 0x60, 0x03, 0x00,       // mov [0x36008], ecx          transmit desc len
    0xbe, 0x00, 0x00, 0x04, 0x00,                   // mov esi, 0x40000
    0xbf, 0x00, 0x10, 0x04, 0x00,                   // mov edi, 0x41000
    0xf3, 0xa4,                                     // rep movsb
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x70, 0x03, 0x00, 0x01, 0x00, // mov word [0x37002], 1  transmit avail idx
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,       // mov dword [rbx + 0x50], 1   QueueNotify(1)
    0xf3, 0x90,                                     // 2: pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x80, 0x03, 0x00, 0x01, // cmp word [0x38002], 1  transmit used idx
    0x72, 0xf3,                                     //    jb 2b
    0xb0, 0xfe,                                     // mov al, 0xfe
    0xe6, 0x64,                                     // out 0x64, al
    0xf4,                                           // hlt
];

#[test]
fn guest_echoes_console_bytes_over_virtio_mmio() {
    echo_guest("guest_echoes_console_bytes_over_virtio_mmio", false);
}

/// As above, under the seccomp filters (see the block test's twin).
#[test]
fn guest_echoes_console_bytes_under_seccomp() {
    echo_guest("guest_echoes_console_bytes_under_seccomp", true);
}

fn echo_guest(test: &str, jailed: bool) {
    if !kvm_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let (vmm_end, mut host) = UnixStream::pair().unwrap();
    let vmm_end = Arc::new(OwnedFd::from(vmm_end));
    let config = VmConfig {
        mem_mib: 16,
        console: Some(ConsoleBackend::Fds {
            input: vmm_end.clone(),
            output: vmm_end,
        }),
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("creating the VM");
    assert_eq!(vm.virtio_devices()[0].device_type, 3, "console");
    // Sent before the guest driver exists: kept for it.
    host.write_all(b"ping over virtio").unwrap();

    // Receive queue: buffer 0 (64 bytes, device-writable) available.
    write_desc(&vm, 0, 0x40000, 64, F_WRITE, 0);
    vm.write_guest(0x31000, &[0, 0, 1, 0, 0, 0]).unwrap();
    // Transmit queue: descriptor 0 at 0x41000 (length set by the guest),
    // in the ring but not yet available.
    vm.write_guest(0x36000, &0x41000u64.to_le_bytes()).unwrap();
    vm.write_guest(0x37000, &[0, 0, 0, 0, 0, 0]).unwrap();
    vm.write_guest(CODE, ECHO_GUEST).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    if jailed {
        jail_threads(&mut vm);
    }
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    assert!(vm.drain_devices(std::time::Duration::from_secs(5)));

    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut echoed = [0u8; 16];
    host.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping over virtio");
    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    assert_eq!(transport.notify_exits(), 0, "KVM_IOEVENTFD took the notify");
    assert_eq!(transport.guest_errors(), 0);
    drop(transport);
    eprintln!("TIMING: {test}: {:?}", started.elapsed());
}
