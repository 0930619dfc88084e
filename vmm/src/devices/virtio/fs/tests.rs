//! virtio-fs against a real virtiofsd (no guest: the test drives the
//! transport's registers as a driver would and writes the virtqueues into
//! guest memory itself): the handshake, the memory table and the vrings
//! the backend acknowledges, a FUSE_INIT request answered through the
//! request queue, a reset and a second activation, and the backend going
//! away (an error, promptly, never a hang).
//!
//! Without virtiofsd on `$PATH` each of these skips loudly (fails under
//! `CI=true`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::bus::{lock, BusDevice, DeviceAction};
use crate::devices::virtio::interrupt::INT_VRING;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::testing::test_memory;
use crate::devices::virtio::vhost_user::PROTOCOL_FEATURES;
use crate::devices::virtio::{MmioTransport, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::event_loop::EventLoop;
use crate::exit::ExitReason;
use crate::memory::{create_guest_memory_with, GuestMemoryMmap, RamBacking};
use crate::stop::StopState;

/// How long anything here may take before the test calls it a hang.
const PROMPTLY: Duration = Duration::from_secs(10);

/// virtiofsd on `$PATH`, or a loud skip.
fn virtiofsd_or_skip(test: &str) -> bool {
    amphi_test_skip::require(
        amphi_test_skip::have("virtiofsd"),
        &format!("{test}: virtiofsd is not installed (scripts/setup installs it); NOT run"),
    )
}

/// A virtiofsd serving a fresh directory with one file, `hello`.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Virtiofsd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"hello from the host\n").unwrap();
        let socket = dir.path().join("vfs.sock");
        let log = std::fs::File::create(dir.path().join("virtiofsd.log")).unwrap();
        let child = Command::new("virtiofsd")
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning virtiofsd");
        let mut this = Virtiofsd { child, socket, dir };
        let deadline = Instant::now() + PROMPTLY;
        while !this.socket.exists() {
            if let Some(status) = this.child.try_wait().unwrap() {
                panic!(
                    "virtiofsd ended ({status}) before listening:\n{}",
                    this.log()
                );
            }
            assert!(Instant::now() < deadline, "virtiofsd did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        this
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("virtiofsd.log")).unwrap_or_default()
    }

    fn config(&self) -> FsConfig {
        FsConfig::new(&self.socket, "amphi").unwrap()
    }

    /// SIGKILL, and reaped.
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

/// 16 MiB of guest RAM in a memfd, as a VM with a vhost-user device has.
fn shared_memory() -> GuestMemoryMmap {
    create_guest_memory_with(16 << 20, RamBacking::SharedMemfd).unwrap()
}

const QUEUE_NUM: u16 = 256;

/// Where queue `q`'s rings are: descriptors, available ring, used ring.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x10_0000 + q * 0x1_0000;
    (base, base + 0x4000, base + 0x8000)
}

fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, offset: u64, value: u32) -> DeviceAction {
    t.write(offset, &value.to_le_bytes())
}

const S_UP_TO_FEATURES: u32 =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

/// The driver's side up to (not including) DRIVER_OK: `features`
/// accepted, both queues set up at [`rings`].
fn negotiate_and_set_up(t: &mut MmioTransport, features: u64) {
    wr(t, reg::STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    wr(
        t,
        reg::STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for (sel, half) in [(0, features as u32), (1, (features >> 32) as u32)] {
        wr(t, reg::DRIVER_FEATURES_SEL, sel);
        wr(t, reg::DRIVER_FEATURES, half);
    }
    wr(t, reg::STATUS, S_UP_TO_FEATURES);
    assert_eq!(rd(t, reg::STATUS), S_UP_TO_FEATURES, "FEATURES_OK refused");
    for q in 0..NUM_QUEUES as u64 {
        let (desc, avail, used) = rings(q);
        wr(t, reg::QUEUE_SEL, q as u32);
        assert_eq!(rd(t, reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        wr(t, reg::QUEUE_NUM, u32::from(QUEUE_NUM));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, desc),
            (reg::QUEUE_DRIVER_LOW, avail),
            (reg::QUEUE_DEVICE_LOW, used),
        ] {
            wr(t, low, addr as u32);
            wr(t, low + 4, (addr >> 32) as u32);
        }
        wr(t, reg::QUEUE_READY, 1);
        assert_eq!(rd(t, reg::QUEUE_READY), 1, "queue {q} not ready");
    }
}

/// Sets DRIVER_OK on another thread and returns what the write answered,
/// failing the test if it does not come back within [`PROMPTLY`].
fn driver_ok(t: &Arc<Mutex<MmioTransport>>) -> DeviceAction {
    let (tx, rx) = mpsc::channel();
    let t = t.clone();
    std::thread::spawn(move || {
        let action = wr(
            &mut lock(&t),
            reg::STATUS,
            S_UP_TO_FEATURES | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let _ = tx.send(action);
    });
    rx.recv_timeout(PROMPTLY)
        .expect("DRIVER_OK hung (the vhost-user setup did not come back)")
}

fn fs_transport(d: &Virtiofsd, mem: &GuestMemoryMmap) -> Arc<Mutex<MmioTransport>> {
    let fs = Fs::open(&d.config()).unwrap();
    Arc::new(Mutex::new(
        MmioTransport::new(Box::new(fs), mem.clone()).unwrap(),
    ))
}

#[test]
fn tags_are_checked() {
    assert!(FsConfig::new("/s", "amphi").is_ok());
    assert!(FsConfig::new("/s", &"x".repeat(TAG_LEN)).is_ok());
    assert!(FsConfig::new("/s", "ünïcode").is_ok());
    for bad in ["", "a,b", "a\0b", "tab\there", &"x".repeat(TAG_LEN + 1)] {
        let e = FsConfig::new("/s", bad).unwrap_err();
        assert!(e.contains("virtio-fs tag"), "{bad:?}: {e}");
    }
}

#[test]
fn a_missing_socket_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let e = Fs::open(&FsConfig::new(&socket, "amphi").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vhost-user socket") && e.contains(&*socket.to_string_lossy()),
        "{e}"
    );
}

/// What `amphi vmm --fs fd=N,tag=T` gets: a socket its caller connected.
/// Anything but a connected unix stream socket is refused by name.
#[test]
fn a_connected_socket_can_be_handed_down() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two new descriptors nothing else owns.
    let (pipe_r, _pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let dir = tempfile::tempdir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock")).unwrap();
    let datagram = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for (what, fd) in [
        ("a pipe", pipe_r),
        ("a listening socket", OwnedFd::from(listener)),
        ("a datagram socket", OwnedFd::from(datagram)),
    ] {
        let n = fd.as_raw_fd();
        let e = FsConfig::connected(fd, "amphi").unwrap_err();
        assert!(
            e.starts_with(&format!("descriptor {n} is not a")),
            "{what}: {e}"
        );
    }
    if !virtiofsd_or_skip("a_connected_socket_can_be_handed_down") {
        return;
    }
    let d = Virtiofsd::start();
    let stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let n = stream.as_raw_fd();
    let config = FsConfig::connected(OwnedFd::from(stream), "amphi").unwrap();
    let fs = Fs::open(&config).unwrap();
    let name = fs.name();
    assert!(
        name.contains(&format!("fd {n} to {}", d.socket.display())),
        "{name}"
    );
    assert_ne!(fs.backend().socket_fd(), n, "the device uses a duplicate");
    assert_ne!(fs.features(), 0);
}

#[test]
fn the_handshake_with_virtiofsd_negotiates_features() {
    if !virtiofsd_or_skip("the_handshake_with_virtiofsd_negotiates_features") {
        return;
    }
    let d = Virtiofsd::start();
    let fs = Fs::open(&d.config()).unwrap();
    let backend = fs.backend();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        PROTOCOL_FEATURES,
    ] {
        assert_ne!(backend.features() & bit, 0, "{bit:#x} not offered");
    }
    assert!(backend
        .protocol_features()
        .contains(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ));
    // Indirect descriptors pass through to the guest; nothing of the
    // vhost-user protocol's own bits does.
    assert_eq!(fs.features(), PASSTHROUGH_FEATURES);
    assert_eq!(fs.device_type(), 26);
    let name = fs.name();
    assert!(
        name.contains("tag amphi") && name.contains(&*d.socket.to_string_lossy()),
        "{name}"
    );
    // The configuration space: the tag, NUL-padded, then one request queue.
    let mut cfg = [0xffu8; TAG_LEN + 4];
    for (i, chunk) in cfg.chunks_mut(4).enumerate() {
        fs.read_config(i as u64 * 4, chunk);
    }
    assert_eq!(&cfg[..5], b"amphi");
    assert!(cfg[5..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&cfg[TAG_LEN..], &1u32.to_le_bytes());
    assert_eq!(fs.vhost_user_socket(), Some(backend.socket_fd()));
    assert!(fs.queues_served_elsewhere());
}

/// With REPLY_ACK every request is acknowledged: a DRIVER_OK that comes
/// back without a failure means virtiofsd took the memory table (the
/// memfd and its offsets) and every vring (sizes, host addresses of rings
/// in guest RAM, kick and call eventfds). A reset stops the rings
/// (GET_VRING_BASE) and a second activation starts them again.
#[test]
fn virtiofsd_accepts_the_memory_table_and_vrings_and_a_reset() {
    if !virtiofsd_or_skip("virtiofsd_accepts_the_memory_table_and_vrings_and_a_reset") {
        return;
    }
    let d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d, &mem);
    for round in 0..2 {
        negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(driver_ok(&t), DeviceAction::None, "round {round}");
        assert!(lock(&t).is_active());
        assert_eq!(wr(&mut lock(&t), reg::STATUS, 0), DeviceAction::None);
        assert_eq!(rd(&mut lock(&t), reg::STATUS), 0);
    }
    assert!(lock(&t).take_device_failure().is_none(), "{}", d.log());
}

/// The FUSE handshake itself: a FUSE_INIT request made available on the
/// request queue and kicked through the queue's eventfd (as KVM's
/// ioeventfd would) is answered by virtiofsd in guest memory, and its call
/// eventfd becomes the VRING interrupt through the event loop.
#[test]
fn a_fuse_init_request_is_answered_through_the_request_queue() {
    if !virtiofsd_or_skip("a_fuse_init_request_is_answered_through_the_request_queue") {
        return;
    }
    let d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d, &mem);
    let stop = Arc::new(StopState::new().unwrap());
    let mut el = EventLoop::new(vec![t.clone()], stop).unwrap();
    negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1);
    assert_eq!(driver_ok(&t), DeviceAction::None);

    // struct fuse_in_header + struct fuse_init_in (7.31: no INIT_EXT).
    const REQ: u64 = 0x40_0000;
    const REPLY: u64 = 0x40_1000;
    let mut req = Vec::new();
    req.extend_from_slice(&56u32.to_le_bytes()); // len
    req.extend_from_slice(&26u32.to_le_bytes()); // opcode FUSE_INIT
    req.extend_from_slice(&0x1234u64.to_le_bytes()); // unique
    req.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, extlen, padding
    req.extend_from_slice(&7u32.to_le_bytes()); // major
    req.extend_from_slice(&31u32.to_le_bytes()); // minor
    req.extend_from_slice(&[0u8; 8]); // max_readahead, flags
    assert_eq!(req.len(), 56);
    mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    mem.write_slice(&[0xaa; 4096], GuestAddress(REPLY)).unwrap();
    let (desc, avail, used) = rings(1);
    // Descriptor 0 (readable request) -> descriptor 1 (writable reply).
    let descriptor = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        b
    };
    mem.write_slice(&descriptor(REQ, 56, 1, 1), GuestAddress(desc))
        .unwrap();
    mem.write_slice(&descriptor(REPLY, 4096, 2, 0), GuestAddress(desc + 16))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap(); // ring[0] = head 0
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap(); // idx = 1
                                                           // The guest's QueueNotify, as KVM's ioeventfd signals it.
    lock(&t).queue_events()[1].write(1).unwrap();

    let deadline = Instant::now() + PROMPTLY;
    while lock(&t).interrupt().status() & INT_VRING == 0 {
        assert!(
            Instant::now() < deadline,
            "no used-buffer interrupt from virtiofsd; its log:\n{}",
            d.log()
        );
        el.run_once(100);
    }
    assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
    let id: u32 = mem.read_obj(GuestAddress(used + 4)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(used + 8)).unwrap();
    assert_eq!(id, 0);
    // struct fuse_out_header + struct fuse_init_out.
    assert_eq!(len, 16 + 64);
    let out_len: u32 = mem.read_obj(GuestAddress(REPLY)).unwrap();
    let error: i32 = mem.read_obj(GuestAddress(REPLY + 4)).unwrap();
    let unique: u64 = mem.read_obj(GuestAddress(REPLY + 8)).unwrap();
    let major: u32 = mem.read_obj(GuestAddress(REPLY + 16)).unwrap();
    let minor: u32 = mem.read_obj(GuestAddress(REPLY + 20)).unwrap();
    assert_eq!((out_len, error, unique), (80, 0, 0x1234));
    assert_eq!(major, 7);
    assert!(minor >= 31, "minor {minor}");
    assert!(lock(&t).take_device_failure().is_none());
}

/// The queues' eventfds are virtiofsd's kick eventfds: the event loop
/// does not watch or read them (it would eat the guest's notifications).
#[test]
fn the_event_loop_leaves_the_kick_eventfds_alone() {
    if !virtiofsd_or_skip("the_event_loop_leaves_the_kick_eventfds_alone") {
        return;
    }
    let d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d, &mem);
    let stop = Arc::new(StopState::new().unwrap());
    let mut el = EventLoop::new(vec![t.clone()], stop).unwrap();
    lock(&t).queue_events()[1].write(3).unwrap();
    for _ in 0..5 {
        el.run_once(0);
    }
    assert!(el.drain(Duration::from_millis(10)));
    assert_eq!(lock(&t).queue_events()[1].read().unwrap(), 3);
}

/// Guest RAM that is not a memfd cannot be shared: the activation fails
/// with an error that says so, instead of a backend mapping nothing.
#[test]
fn private_guest_memory_is_refused_by_name() {
    if !virtiofsd_or_skip("private_guest_memory_is_refused_by_name") {
        return;
    }
    let d = Virtiofsd::start();
    let mem = test_memory();
    let t = fs_transport(&d, &mem);
    negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1);
    match driver_ok(&t) {
        DeviceAction::DeviceFailed { device, detail } => {
            assert!(device.contains("virtio-fs(tag amphi"), "{device}");
            assert!(detail.contains("not shared memory"), "{detail}");
        }
        other => panic!("activation on private memory: {other:?}"),
    }
}

/// virtiofsd killed while the device runs: the event loop sees the
/// socket hang up and ends the run with the device and the socket named,
/// at once; the hung-up socket is no longer watched (no busy loop).
#[test]
fn a_killed_backend_ends_the_run_promptly() {
    if !virtiofsd_or_skip("a_killed_backend_ends_the_run_promptly") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d, &mem);
    let stop = Arc::new(StopState::new().unwrap());
    let mut el = EventLoop::new(vec![t.clone()], stop).unwrap();
    let (tx, rx) = mpsc::channel();
    el.set_outcomes(Some(tx));
    negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1);
    assert_eq!(driver_ok(&t), DeviceAction::None);
    el.run_once(0);
    assert!(rx.try_recv().is_err(), "a failure before the kill");

    d.kill();
    let killed = Instant::now();
    let outcome = loop {
        if let Ok(outcome) = rx.try_recv() {
            break outcome;
        }
        assert!(killed.elapsed() < PROMPTLY, "the hang-up went unnoticed");
        el.run_once(100);
    };
    match outcome {
        Ok(crate::vcpu::VcpuOutcome::Exit(ExitReason::DeviceFailed { device, detail })) => {
            assert!(device.contains(&*d.socket.to_string_lossy()), "{device}");
            assert!(detail.contains("hung up"), "{detail}");
        }
        _ => panic!("not a device failure"),
    }
    // Reported once; the device no longer asks for the socket or its calls.
    for _ in 0..20 {
        el.run_once(0);
    }
    assert!(rx.try_recv().is_err(), "reported twice");
    assert!(lock(&t).host_sources().iter().all(|s| s.events.is_empty()));
}

/// A backend that is alive but silent (stopped) when the VM is built: the
/// handshake gives up after its timeout with an error that says so.
#[test]
fn a_silent_backend_fails_the_handshake_after_its_timeout() {
    if !virtiofsd_or_skip("a_silent_backend_fails_the_handshake_after_its_timeout") {
        return;
    }
    let d = Virtiofsd::start();
    let pid = d.child.id() as libc::pid_t;
    // SAFETY: signalling our own child (SIGKILL on drop ends it stopped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let timeout = Duration::from_millis(500);
    let stream = super::super::vhost_user::connect_socket(&d.socket).unwrap();
    let e = VhostUserConnection::with_timeout("fs0", stream, "s".into(), NUM_QUEUES, timeout)
        .expect_err("a handshake with a stopped backend");
    let took = started.elapsed();
    let e = e.to_string();
    assert!(e.starts_with("fs0: vhost-user handshake: "), "{e}");
    assert!(e.contains("did not answer within 500ms"), "{e}");
    assert!(took >= timeout && took < PROMPTLY, "{took:?}");
}

/// virtiofsd killed before the driver gets to DRIVER_OK: the setup fails
/// at once (the socket is closed), the write says so, nothing hangs.
#[test]
fn activation_with_a_dead_backend_fails_promptly() {
    if !virtiofsd_or_skip("activation_with_a_dead_backend_fails_promptly") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d, &mem);
    d.kill();
    negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1);
    match driver_ok(&t) {
        DeviceAction::DeviceFailed { device, detail } => {
            assert!(device.contains(&*d.socket.to_string_lossy()), "{device}");
            assert!(
                detail.contains("starting the vhost-user backend"),
                "{detail}"
            );
        }
        other => panic!("activation with a dead backend: {other:?}"),
    }
    // A reset afterwards does not talk to the dead backend again.
    assert_eq!(wr(&mut lock(&t), reg::STATUS, 0), DeviceAction::None);
}
