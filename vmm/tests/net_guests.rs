//! A tiny guest drives the virtio-net device on the real /dev/kvm, with
//! its vCPU and the device event loop under their seccomp filters, and a
//! real passt on the other end of the socket: the guest sends an ARP
//! request for passt's gateway and gets the answer; with passt killed
//! first, the guest's frame is dropped and the guest runs to its end.
//!
//! Without /dev/kvm or passt every test prints a loud `SKIP` line and
//! returns (fails in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use amphi_vmm::devices::virtio::net::{NetBackend, NetConfig, DEFAULT_MAC, NET_HDR_LEN};
use amphi_vmm::jail::{FilterParams, SeccompFilters, ThreadFilters};
use amphi_vmm::{ExitReason, Vm, VmConfig};

mod common;
use common::{kvm_or_skip, long_mode, run_guarded, CODE};

/// The receive queue (8 entries) and its buffer.
const RX_DESC: u64 = 0x30000;
const RX_AVAIL: u64 = 0x31000;
const RX_USED: u64 = 0x32000;
const RX_BUF: u64 = 0x40000;
/// The transmit queue (8 entries) and its buffer.
const TX_DESC: u64 = 0x36000;
const TX_AVAIL: u64 = 0x37000;
const TX_USED: u64 = 0x38000;
const TX_BUF: u64 = 0x41000;
/// Where the guest stores what it read from registers.
const RESULTS: u64 = 0x5000;
/// A receive buffer as Linux posts it without mergeable buffers.
const RX_LEN: u32 = NET_HDR_LEN as u32 + 1518;

/// The guest (GNU as, Intel syntax, linked at 0x10000): read the device
/// ID and features, accept `VIRTIO_NET_F_MAC` and `VERSION_1`, read the
/// MAC from the configuration space, set up the receive queue
/// (0x30000/0x31000/0x32000) and the transmit queue
/// (0x36000/0x37000/0x38000), DRIVER_OK; make transmit buffer 0
/// available and notify queue 1; wait until it is used, then until a
/// receive buffer is used; read and acknowledge InterruptStatus; reset.
#[rustfmt::skip]
const NET_GUEST: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, // 0x000 mov rbx, 0xd0000000
    0x8b, 0x43, 0x08,                                // 0x00a mov eax, [rbx + 0x8]           DeviceID
    0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00,        // 0x00d mov [0x5000], eax
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,        // 0x014 mov dword [rbx + 0x70], 1      ACKNOWLEDGE
    0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,        // 0x01b mov dword [rbx + 0x70], 3      DRIVER
    0xc7, 0x43, 0x14, 0x00, 0x00, 0x00, 0x00,        // 0x022 mov dword [rbx + 0x14], 0      DeviceFeaturesSel 0
    0x8b, 0x43, 0x10,                                // 0x029 mov eax, [rbx + 0x10]          DeviceFeatures (low)
    0x89, 0x04, 0x25, 0x04, 0x50, 0x00, 0x00,        // 0x02c mov [0x5004], eax
    0xc7, 0x43, 0x24, 0x00, 0x00, 0x00, 0x00,        // 0x033 mov dword [rbx + 0x24], 0      DriverFeaturesSel 0
    0xc7, 0x43, 0x20, 0x20, 0x00, 0x00, 0x00,        // 0x03a mov dword [rbx + 0x20], 0x20   VIRTIO_NET_F_MAC
    0xc7, 0x43, 0x24, 0x01, 0x00, 0x00, 0x00,        // 0x041 mov dword [rbx + 0x24], 1      DriverFeaturesSel 1
    0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00,        // 0x048 mov dword [rbx + 0x20], 1      VERSION_1
    0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,        // 0x04f mov dword [rbx + 0x70], 11     FEATURES_OK
    0x8b, 0x43, 0x70,                                // 0x056 mov eax, [rbx + 0x70]
    0x89, 0x04, 0x25, 0x08, 0x50, 0x00, 0x00,        // 0x059 mov [0x5008], eax
    0x8b, 0x83, 0x00, 0x01, 0x00, 0x00,              // 0x060 mov eax, [rbx + 0x100]         config: mac[0..4]
    0x89, 0x04, 0x25, 0x0c, 0x50, 0x00, 0x00,        // 0x066 mov [0x500c], eax
    0x8b, 0x83, 0x04, 0x01, 0x00, 0x00,              // 0x06d mov eax, [rbx + 0x104]         config: mac[4..6], status
    0x89, 0x04, 0x25, 0x10, 0x50, 0x00, 0x00,        // 0x073 mov [0x5010], eax
    0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00,        // 0x07a mov dword [rbx + 0x30], 0      QueueSel 0 (receive)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,        // 0x081 mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, // 0x088 mov dword [rbx + 0x80], 0x30000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x10, 0x03, 0x00, // 0x092 mov dword [rbx + 0x90], 0x31000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x20, 0x03, 0x00, // 0x09c mov dword [rbx + 0xa0], 0x32000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,        // 0x0a6 mov dword [rbx + 0x44], 1      QueueReady
    0xc7, 0x43, 0x30, 0x01, 0x00, 0x00, 0x00,        // 0x0ad mov dword [rbx + 0x30], 1      QueueSel 1 (transmit)
    0xc7, 0x43, 0x38, 0x08, 0x00, 0x00, 0x00,        // 0x0b4 mov dword [rbx + 0x38], 8
    0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x60, 0x03, 0x00, // 0x0bb mov dword [rbx + 0x80], 0x36000
    0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x03, 0x00, // 0x0c5 mov dword [rbx + 0x90], 0x37000
    0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, // 0x0cf mov dword [rbx + 0xa0], 0x38000
    0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00,        // 0x0d9 mov dword [rbx + 0x44], 1      QueueReady
    0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00, 0x00,        // 0x0e0 mov dword [rbx + 0x70], 15     DRIVER_OK
    0x66, 0xc7, 0x04, 0x25, 0x02, 0x70, 0x03, 0x00, 0x01, 0x00, // 0x0e7 mov word [0x37002], 1          transmit avail idx
    0xc7, 0x43, 0x50, 0x01, 0x00, 0x00, 0x00,        // 0x0f1 mov dword [rbx + 0x50], 1      QueueNotify(1)
    0xf3, 0x90,                                      // 0x0f8 1:  pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x80, 0x03, 0x00, 0x01, // 0x0fa cmp word [0x38002], 1          transmit used idx
    0x72, 0xf3,                                      // 0x103 jb 1b
    0xf3, 0x90,                                      // 0x105 2:  pause
    0x66, 0x83, 0x3c, 0x25, 0x02, 0x20, 0x03, 0x00, 0x01, // 0x107 cmp word [0x32002], 1          receive used idx
    0x72, 0xf3,                                      // 0x110 jb 2b
    0x8b, 0x43, 0x60,                                // 0x112 mov eax, [rbx + 0x60]          InterruptStatus
    0x89, 0x04, 0x25, 0x14, 0x50, 0x00, 0x00,        // 0x115 mov [0x5014], eax
    0x89, 0x43, 0x64,                                // 0x11c mov [rbx + 0x64], eax          InterruptACK
    0xb0, 0xfe,                                      // 0x11f mov al, 0xfe
    0xe6, 0x64,                                      // 0x121 out 0x64, al
    0xf4,                                            // 0x123 hlt
];

/// The bytes of the wait for a receive buffer (`2: pause; cmp; jb 2b`).
const WAIT_FOR_RX: std::ops::Range<usize> = 0x105..0x112;

/// [`NET_GUEST`], without the wait for a receive buffer when no answer
/// can come.
fn guest(wait_for_reply: bool) -> Vec<u8> {
    let mut code = NET_GUEST.to_vec();
    assert_eq!(
        &code[WAIT_FOR_RX][..2],
        &[0xf3, 0x90],
        "the wait starts with pause"
    );
    if !wait_for_reply {
        code[WAIT_FOR_RX].fill(0x90); // nop
    }
    code
}

/// passt on the other end of a socketpair (`passt --fd`), addresses
/// fixed: the guest 10.0.2.15/24, the gateway 10.0.2.2.
struct Passt {
    child: Child,
}

impl Passt {
    fn start() -> (Passt, OwnedFd) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("passt");
        cmd.args(["--foreground", "--quiet", "-a", "10.0.2.15", "-n", "24"])
            .args(["-g", "10.0.2.2", "--fd", &fd.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only fcntl on a descriptor the
        // child inherits (async-signal-safe).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting passt");
        (Passt { child }, OwnedFd::from(ours))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.kill();
    }
}

fn can_run(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    amphi_test_skip::require(
        amphi_test_skip::have("passt"),
        &format!("{test}: passt is not installed (Debian package passt); this test did NOT run"),
    )
}

/// An ARP request from the guest (DEFAULT_MAC, 10.0.2.15) for 10.0.2.2.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
    f
}

fn write_desc(vm: &Vm, table: u64, index: u64, addr: u64, len: u32, flags: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    vm.write_guest(table + index * 16, &d).unwrap();
}

fn read_u32(vm: &Vm, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    vm.read_guest(addr, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// The used ring's index and first element.
fn used(vm: &Vm, ring: u64) -> (u16, (u32, u32)) {
    let mut u = [0u8; 12];
    vm.read_guest(ring, &mut u).unwrap();
    (
        u16::from_le_bytes([u[2], u[3]]),
        (
            u32::from_le_bytes(u[4..8].try_into().unwrap()),
            u32::from_le_bytes(u[8..12].try_into().unwrap()),
        ),
    )
}

/// A VM with the net device on `socket`, its queues prepared: a receive
/// buffer available before the driver is up, and the ARP request in
/// transmit buffer 0, which the guest makes available. Its threads go
/// under their seccomp filters.
fn net_vm(socket: OwnedFd, wait_for_reply: bool) -> Vm {
    let config = VmConfig {
        mem_mib: 16,
        net: Some(NetConfig::new(NetBackend::Fd(Arc::new(socket)))),
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("creating the VM");
    assert!(
        vm.cmdline()
            .ends_with(" virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        vm.cmdline()
    );
    assert_eq!(vm.virtio_devices()[0].device_type, 1, "net");
    write_desc(&vm, RX_DESC, 0, RX_BUF, RX_LEN, 2); // VRING_DESC_F_WRITE
    vm.write_guest(RX_AVAIL, &[0, 0, 1, 0, 0, 0]).unwrap(); // idx 1, ring[0] 0
    let mut frame = vec![0u8; NET_HDR_LEN];
    frame.extend(arp_request());
    vm.write_guest(TX_BUF, &frame).unwrap();
    write_desc(&vm, TX_DESC, 0, TX_BUF, frame.len() as u32, 0);
    vm.write_guest(TX_AVAIL, &[0, 0, 0, 0, 0, 0]).unwrap(); // idx 0, ring[0] 0
    vm.write_guest(CODE, &guest(wait_for_reply)).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    amphi_vmm::jail::install_sigsys_reporter().unwrap();
    let filters = SeccompFilters::new(FilterParams::current()).unwrap();
    vm.set_seccomp(ThreadFilters {
        filters: Arc::new(filters),
        main_thread: false,
    });
    vm
}

#[test]
fn a_tiny_guest_gets_passts_arp_reply_under_seccomp() {
    let test = "a_tiny_guest_gets_passts_arp_reply_under_seccomp";
    if !can_run(test) {
        return;
    }
    let started = Instant::now();
    let (mut passt, socket) = Passt::start();
    let mut vm = net_vm(socket, true);
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);

    assert_eq!(read_u32(&vm, RESULTS), 1, "DeviceID: net");
    assert_ne!(
        read_u32(&vm, RESULTS + 4) & 0x20,
        0,
        "VIRTIO_NET_F_MAC offered"
    );
    assert_eq!(read_u32(&vm, RESULTS + 8), 11, "FEATURES_OK stuck");
    let mut mac = [0u8; 8];
    vm.read_guest(RESULTS + 0xc, &mut mac).unwrap();
    assert_eq!(
        &mac[..6],
        &DEFAULT_MAC,
        "the MAC in the configuration space"
    );
    assert_eq!(
        read_u32(&vm, RESULTS + 0x14) & 1,
        1,
        "InterruptStatus: used ring"
    );
    assert_eq!(used(&vm, TX_USED), (1, (0, 0)), "the request went out");
    let (n, (head, len)) = used(&vm, RX_USED);
    assert_eq!((n, head), (1, 0));
    assert_eq!(len, NET_HDR_LEN as u32 + 42, "header + ARP reply");
    let mut got = vec![0u8; len as usize];
    vm.read_guest(RX_BUF, &mut got).unwrap();
    let (header, reply) = got.split_at(NET_HDR_LEN);
    assert_eq!(
        header,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers 1"
    );
    assert_eq!(&reply[0..6], &DEFAULT_MAC, "to the guest");
    assert_eq!(&reply[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    assert_eq!(&reply[28..32], &[10, 0, 2, 2], "for the gateway");
    assert_eq!(&reply[38..42], &[10, 0, 2, 15], "to the guest's address");

    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    assert_eq!(transport.notify_exits(), 0, "KVM_IOEVENTFD took the notify");
    assert_eq!(transport.guest_errors(), 0);
    assert_eq!(transport.host_sources().len(), 1, "the link is up");
    drop(transport);
    passt.kill();
    eprintln!("TIMING: {test}: {:?}", started.elapsed());
}

#[test]
fn a_guest_whose_passt_is_gone_runs_to_its_end() {
    let test = "a_guest_whose_passt_is_gone_runs_to_its_end";
    if !can_run(test) {
        return;
    }
    let (mut passt, socket) = Passt::start();
    let mut vm = net_vm(socket, false);
    passt.kill();
    assert_eq!(run_guarded(&mut vm), ExitReason::Reset);
    assert!(vm.drain_devices(std::time::Duration::from_secs(5)));
    // The frame was taken (and dropped): the guest is not stuck on it.
    assert_eq!(used(&vm, TX_USED), (1, (0, 0)));
    assert_eq!(used(&vm, RX_USED).0, 0, "nothing received");
    let transport = vm.virtio_devices()[0].transport.lock().unwrap();
    assert!(
        transport.host_sources().is_empty(),
        "the link is down: the socket is no longer polled"
    );
    assert_eq!(transport.guest_errors(), 0);
}
