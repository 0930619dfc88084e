//! virtio-fs against a real virtiofsd (no guest: the test drives the
//! transport's registers as a driver would and writes the virtqueues into
//! guest memory itself): the handshake, the memory table and the vrings
//! the backend acknowledges, a FUSE_INIT request answered through the
//! request queue, a reset and a second activation, and the backend going
//! away: the VMM then answers every request itself with -EIO (requests in
//! flight included), promptly, never a hang, and the run goes on.
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
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::bus::{lock, BusDevice, DeviceAction};
use crate::devices::virtio::interrupt::INT_VRING;
use crate::devices::virtio::mmio::reg;
use crate::devices::virtio::testing::test_memory;
use crate::devices::virtio::vhost_user::PROTOCOL_FEATURES;
use crate::devices::virtio::{MmioTransport, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::event_loop::EventLoop;
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
        // Listening, not only bound: a connect between virtiofsd's bind
        // and its listen is refused.
        while !amphi_test_skip::unix_listening(&this.socket) {
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

fn fs_transport(config: &FsConfig, mem: &GuestMemoryMmap) -> Arc<Mutex<MmioTransport>> {
    let fs = Fs::open(config).unwrap();
    Arc::new(Mutex::new(
        MmioTransport::new(Box::new(fs), mem.clone()).unwrap(),
    ))
}

/// The driver's side of queue `q` at [`rings`]: chains written at fresh
/// descriptor indices and made available in order.
struct Ring {
    mem: GuestMemoryMmap,
    q: u64,
    next_desc: u16,
    avail: u16,
}

impl Ring {
    fn new(mem: &GuestMemoryMmap, q: u64) -> Self {
        Ring {
            mem: mem.clone(),
            q,
            next_desc: 0,
            avail: 0,
        }
    }

    /// Writes descriptor `index` of the table.
    fn desc(&self, index: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        let table = rings(self.q).0;
        self.mem
            .write_slice(&b, GuestAddress(table + 16 * u64::from(index)))
            .unwrap();
    }

    /// Writes `buffers` (address, length, device-writable) as one chain
    /// at fresh descriptors and makes it available. Returns its head.
    fn push(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == buffers.len();
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.desc(index, addr, len, flags, if last { 0 } else { index + 1 });
        }
        self.next_desc += buffers.len() as u16;
        self.offer(head);
        head
    }

    /// Makes `head` available, whatever the descriptors say.
    fn offer(&mut self, head: u16) {
        let avail = rings(self.q).1;
        let slot = u64::from(self.avail % QUEUE_NUM);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
        // used_event (with EVENT_IDX): an interrupt for the next used
        // buffer, as a driver waiting for it asks.
        let used_event = avail + 4 + 2 * u64::from(QUEUE_NUM);
        self.mem
            .write_obj(self.used_idx(), GuestAddress(used_event))
            .unwrap();
        self.mem
            .write_obj(self.avail, GuestAddress(avail + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(rings(self.q).2 + 2))
            .unwrap()
    }

    /// Used ring entry `slot`: (head, length written).
    fn used(&self, slot: u16) -> (u32, u32) {
        let at = rings(self.q).2 + 4 + 8 * u64::from(slot % QUEUE_NUM);
        let pair: [u32; 2] = self.mem.read_obj(GuestAddress(at)).unwrap();
        (pair[0], pair[1])
    }
}

/// A FUSE request: `struct fuse_in_header` for `node`, then `body`.
fn fuse_request(opcode: u32, unique: u64, node: u64, body: &[u8]) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    req.extend_from_slice(&opcode.to_le_bytes());
    req.extend_from_slice(&unique.to_le_bytes());
    req.extend_from_slice(&node.to_le_bytes());
    req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    req.extend_from_slice(body);
    req
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_INIT: u32 = 26;
/// Guest memory for requests: slot `n` at `REQUESTS + n * 0x1000`, its
/// reply buffer 0x800 further.
const REQUESTS: u64 = 0x40_0000;
/// The fill of reply buffers: bytes the device did not write.
const UNTOUCHED: u8 = 0xaa;

/// Puts `request` in slot `n` and offers it on `ring` with a reply
/// buffer of `reply_len` bytes (filled with [`UNTOUCHED`]). Returns the
/// chain's head.
fn send(ring: &mut Ring, n: u64, request: &[u8], reply_len: u32) -> u16 {
    let at = REQUESTS + n * 0x1000;
    ring.mem.write_slice(request, GuestAddress(at)).unwrap();
    let reply = vec![UNTOUCHED; reply_len as usize];
    ring.mem
        .write_slice(&reply, GuestAddress(at + 0x800))
        .unwrap();
    ring.push(&[
        (at, request.len() as u32, false),
        (at + 0x800, reply_len, true),
    ])
}

/// Slot `n`'s reply: `struct fuse_out_header` (len, error, unique).
fn out_header(mem: &GuestMemoryMmap, n: u64) -> (u32, i32, u64) {
    let at = REQUESTS + n * 0x1000 + 0x800;
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
        mem.read_obj(GuestAddress(at + 8)).unwrap(),
    )
}

/// A device live on a virtiofsd that answered FUSE_INIT (slot 0), with
/// the event loop, what the loop reports, and both queues' driver sides.
struct Live {
    mem: GuestMemoryMmap,
    t: Arc<Mutex<MmioTransport>>,
    el: EventLoop,
    outcomes: mpsc::Receiver<crate::error::Result<crate::vcpu::VcpuOutcome>>,
    hiprio: Ring,
    requests: Ring,
}

impl Live {
    fn start(d: &Virtiofsd) -> Self {
        Self::start_with(d, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX)
    }

    /// [`Live::start`] with the driver accepting `features`.
    fn start_with(d: &Virtiofsd, features: u64) -> Self {
        Self::start_on(d, d.config(), features)
    }

    /// [`Live::start_with`] with the device connected by `config` (to a
    /// relay in front of `d`).
    fn start_on(d: &Virtiofsd, config: FsConfig, features: u64) -> Self {
        let mem = shared_memory();
        let t = fs_transport(&config, &mem);
        let stop = Arc::new(StopState::new().unwrap());
        let mut el = EventLoop::new(vec![t.clone()], stop).unwrap();
        let (tx, outcomes) = mpsc::channel();
        el.set_outcomes(Some(tx));
        negotiate_and_set_up(&mut lock(&t), features);
        assert_eq!(driver_ok(&t), DeviceAction::None);
        let mut live = Live {
            hiprio: Ring::new(&mem, 0),
            requests: Ring::new(&mem, 1),
            mem,
            t,
            el,
            outcomes,
        };
        let mut init = Vec::new();
        init.extend_from_slice(&7u32.to_le_bytes());
        init.extend_from_slice(&31u32.to_le_bytes());
        init.extend_from_slice(&[0u8; 8]);
        send(
            &mut live.requests,
            0,
            &fuse_request(FUSE_INIT, 1, 0, &init),
            256,
        );
        live.kick(1);
        live.wait_used(1, 1, d);
        assert_eq!(out_header(&live.mem, 0), (80, 0, 1), "FUSE_INIT answered");
        live
    }

    /// The guest's QueueNotify for `queue`, as KVM's ioeventfd signals it.
    fn kick(&self, queue: usize) {
        lock(&self.t).queue_events()[queue].write(1).unwrap();
    }

    /// Runs the event loop until queue `q`'s used idx is `n`.
    fn wait_used(&mut self, q: u64, n: u16, d: &Virtiofsd) {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let ring = if q == 0 { &self.hiprio } else { &self.requests };
            if ring.used_idx() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {q}: used idx {} after {PROMPTLY:?}, waiting for {n}; virtiofsd's log:\n{}",
                ring.used_idx(),
                d.log()
            );
            self.el.run_once(100);
        }
    }

    /// Looks `hello` up (slot 1), then offers an open of it for writing
    /// (slot 2) and a getattr behind it (slot 3), and runs the event loop
    /// until virtiofsd blocks in the open (the caller holds a read lease
    /// on the file). Returns the open's and the getattr's heads.
    fn block_virtiofsd_in_an_open(&mut self, d: &Virtiofsd) -> (u16, u16) {
        let lookup = fuse_request(FUSE_LOOKUP, 2, 1, b"hello\0");
        send(&mut self.requests, 1, &lookup, 256);
        self.kick(1);
        self.wait_used(1, 2, d);
        assert_eq!(out_header(&self.mem, 1).1, 0, "FUSE_LOOKUP of hello");
        // struct fuse_entry_out starts with the node id.
        let node: u64 = self
            .mem
            .read_obj(GuestAddress(REQUESTS + 0x1000 + 0x800 + 16))
            .unwrap();
        let open_in = [(libc::O_WRONLY as u32).to_le_bytes(), [0; 4]].concat();
        let open = fuse_request(FUSE_OPEN, 3, node, &open_in);
        let open = send(&mut self.requests, 2, &open, 256);
        let getattr = fuse_request(FUSE_GETATTR, 4, 1, &[0; 16]);
        let queued = send(&mut self.requests, 3, &getattr, 256);
        self.kick(1);
        let deadline = Instant::now() + PROMPTLY;
        while !waits_in_the_kernel(d.child.id(), "__break_lease") {
            assert!(
                Instant::now() < deadline,
                "virtiofsd never blocked in the open (used idx {}, open answered {:?}); its log:\n{}",
                self.requests.used_idx(),
                out_header(&self.mem, 2),
                d.log()
            );
            self.el.run_once(10);
        }
        assert_eq!(self.requests.used_idx(), 2, "the open completed");
        (open, queued)
    }

    /// Kills virtiofsd and runs the event loop until the device noticed:
    /// it serves its queues itself, and the run goes on.
    fn kill_backend(&mut self, d: &mut Virtiofsd) {
        d.kill();
        let killed = Instant::now();
        while lock(&self.t).queues_served_elsewhere() {
            assert!(killed.elapsed() < PROMPTLY, "the hang-up went unnoticed");
            self.el.run_once(100);
        }
        for _ in 0..5 {
            self.el.run_once(0);
        }
        assert!(self.outcomes.try_recv().is_err(), "the run was ended");
        assert!(lock(&self.t).take_device_failure().is_none());
        // What virtiofsd completed stays as it was.
        assert_eq!(
            out_header(&self.mem, 0),
            (80, 0, 1),
            "FUSE_INIT answered again"
        );
    }
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
    let t = fs_transport(&d.config(), &mem);
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
    let t = fs_transport(&d.config(), &mem);
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
    let t = fs_transport(&d.config(), &mem);
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
    let t = fs_transport(&d.config(), &mem);
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
/// socket hang up, and the device serves its queues itself from then on,
/// every request answered with a `fuse_out_header` of -EIO and the
/// request's unique, whether the guest notifies through the ioeventfd or
/// a `QueueNotify` write that reached the VMM. The run is not ended, and
/// the hung-up socket and the call eventfds are no longer watched (no
/// busy loop).
#[test]
fn a_killed_backend_leaves_every_request_failing_with_eio() {
    if !virtiofsd_or_skip("a_killed_backend_leaves_every_request_failing_with_eio") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut live = Live::start(&d);
    live.kill_backend(&mut d);
    assert!(lock(&live.t)
        .host_sources()
        .iter()
        .all(|s| s.events.is_empty()));
    lock(&live.t).interrupt().ack(INT_VRING);

    let getattr = fuse_request(FUSE_GETATTR, 0x77, 1, &[0u8; 16]);
    let head = send(&mut live.requests, 1, &getattr, 256);
    live.kick(1);
    live.wait_used(1, 2, &d);
    assert_eq!(live.requests.used(1), (u32::from(head), 16));
    assert_eq!(out_header(&live.mem, 1), (16, -libc::EIO, 0x77));
    let after: u8 = live
        .mem
        .read_obj(GuestAddress(REQUESTS + 0x1000 + 0x800 + 16))
        .unwrap();
    assert_eq!(after, UNTOUCHED, "nothing written past the header");
    assert_ne!(lock(&live.t).interrupt().status() & INT_VRING, 0);

    // A notification that exits to the VMM (no ioeventfd) gets there too.
    let head = send(
        &mut live.requests,
        2,
        &fuse_request(FUSE_GETATTR, 0x78, 1, &[0; 16]),
        64,
    );
    wr(&mut lock(&live.t), reg::QUEUE_SEL, 1);
    assert_eq!(
        wr(&mut lock(&live.t), reg::QUEUE_NOTIFY, 1),
        DeviceAction::None
    );
    live.wait_used(1, 3, &d);
    assert_eq!(live.requests.used(2), (u32::from(head), 16));
    assert_eq!(out_header(&live.mem, 2), (16, -libc::EIO, 0x78));

    for _ in 0..20 {
        live.el.run_once(0);
    }
    assert!(live.outcomes.try_recv().is_err(), "the run was ended");
    assert_eq!(live.requests.used_idx(), 3, "answered once each");
}

/// A driver that accepted indirect descriptors (passed through from
/// virtiofsd; Linux puts every FUSE request in an indirect table then)
/// gets its EIO for such a request too once the backend is lost: the VMM
/// follows the table, with the same checks. A bad table (NEXT beside
/// INDIRECT) is still returned unanswered.
#[test]
fn indirect_requests_get_eio_from_a_lost_backend() {
    if !virtiofsd_or_skip("indirect_requests_get_eio_from_a_lost_backend") {
        return;
    }
    let mut d = Virtiofsd::start();
    // Offered by the device only as virtiofsd offers it (the driver's
    // FEATURES_OK would fail otherwise).
    let indirect = 1u64 << VIRTIO_RING_F_INDIRECT_DESC;
    let mut live = Live::start_with(&d, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | indirect);
    live.kill_backend(&mut d);

    let r = &mut live.requests;
    let getattr = fuse_request(FUSE_GETATTR, 0x1d1, 1, &[0; 16]);
    let at = REQUESTS + 0x8000;
    r.mem.write_slice(&getattr, GuestAddress(at)).unwrap();
    r.mem
        .write_slice(&[UNTOUCHED; 64], GuestAddress(at + 0x800))
        .unwrap();
    // The indirect table: the request, then the reply buffer.
    let table = at + 0xc00;
    let mut t = Vec::new();
    for (addr, len, flags, next) in [
        (at, getattr.len() as u32, VRING_DESC_F_NEXT, 1u16),
        (at + 0x800, 64, VRING_DESC_F_WRITE, 0),
    ] {
        t.extend_from_slice(&addr.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&(flags as u16).to_le_bytes());
        t.extend_from_slice(&next.to_le_bytes());
    }
    r.mem.write_slice(&t, GuestAddress(table)).unwrap();
    r.desc(200, table, 32, VRING_DESC_F_INDIRECT, 0);
    r.offer(200);
    // NEXT beside INDIRECT: refused.
    r.desc(
        201,
        table,
        32,
        VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
        200,
    );
    r.offer(201);
    live.kick(1);
    live.wait_used(1, 3, &d);
    let r = &live.requests;
    assert_eq!(r.used(1), (200, 16));
    let reply: [u8; 16] = live.mem.read_obj(GuestAddress(at + 0x800)).unwrap();
    assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 16);
    assert_eq!(
        i32::from_le_bytes(reply[4..8].try_into().unwrap()),
        -libc::EIO
    );
    assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), 0x1d1);
    assert_eq!(r.used(2), (201, 0));
}

/// Requests virtiofsd had taken and not completed when it died (a
/// FUSE_OPEN for writing of a file the test holds a read lease on, which
/// blocks virtiofsd's one request thread in open(2) until the lease is
/// let go), and the request queued behind it, get -EIO: the VMM takes the
/// ring over at the used ring's idx in guest memory. The requests
/// virtiofsd completed (FUSE_INIT, FUSE_LOOKUP) are not answered again.
#[test]
fn requests_in_flight_when_the_backend_dies_get_eio() {
    if !virtiofsd_or_skip("requests_in_flight_when_the_backend_dies_get_eio") {
        return;
    }
    let mut d = Virtiofsd::start();
    let _lease = read_lease(&d.dir.path().join("shared/hello"));
    let mut live = Live::start(&d);
    let (open, queued) = live.block_virtiofsd_in_an_open(&d);

    live.kill_backend(&mut d);
    live.wait_used(1, 4, &d);
    assert_eq!(live.requests.used(2), (u32::from(open), 16));
    assert_eq!(live.requests.used(3), (u32::from(queued), 16));
    assert_eq!(out_header(&live.mem, 2), (16, -libc::EIO, 3));
    assert_eq!(out_header(&live.mem, 3), (16, -libc::EIO, 4));
    for _ in 0..10 {
        live.el.run_once(10);
    }
    assert_eq!(live.requests.used_idx(), 4, "requests answered twice");
    assert_eq!(live.requests.used(1).1, 144, "FUSE_LOOKUP's used entry");
    assert_eq!(
        out_header(&live.mem, 1),
        (144, 0, 2),
        "FUSE_LOOKUP answered again"
    );
}

/// Holds a read lease on `path`: another process's open of it for
/// writing blocks (up to `/proc/sys/fs/lease-break-time`) until the
/// lease is let go (the file closed).
fn read_lease(path: &std::path::Path) -> std::fs::File {
    let file = std::fs::File::open(path).unwrap();
    let fd = file.as_raw_fd();
    /// `F_SETSIG` (linux/fcntl.h; not in the libc crate).
    const F_SETSIG: libc::c_int = 10;
    // SAFETY: fcntl on a descriptor we own. The break notice comes as
    // SIGURG, ignored by default (SIGIO, the default, would end the test).
    unsafe {
        assert_eq!(libc::fcntl(fd, F_SETSIG, libc::SIGURG), 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK), 0);
    }
    file
}

/// Whether a thread of process `pid` waits in kernel function `wchan`.
fn waits_in_the_kernel(pid: u32, wchan: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|task| std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w == wchan))
}

/// With the backend gone, what needs no answer or cannot have one is
/// returned with length 0 and nothing written: a FUSE_FORGET on the
/// high-priority queue (no writable part), a reply buffer under 16 bytes,
/// a request under a `fuse_in_header`, a descriptor loop, buffers outside
/// guest RAM; a head outside the queue is not returned at all. None of it
/// stops the device: the request after them gets its -EIO.
#[test]
fn forgets_and_malformed_chains_are_returned_unanswered() {
    if !virtiofsd_or_skip("forgets_and_malformed_chains_are_returned_unanswered") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mut live = Live::start(&d);
    live.kill_backend(&mut d);

    let forget = fuse_request(FUSE_FORGET, 9, 5, &1u64.to_le_bytes());
    live.mem
        .write_slice(&forget, GuestAddress(REQUESTS + 0x1000))
        .unwrap();
    let head = live
        .hiprio
        .push(&[(REQUESTS + 0x1000, forget.len() as u32, false)]);
    live.kick(0);
    live.wait_used(0, 1, &d);
    assert_eq!(live.hiprio.used(0), (u32::from(head), 0));

    let r = &mut live.requests;
    let getattr = fuse_request(FUSE_GETATTR, 5, 1, &[0; 16]);
    // Slot 2: an 8-byte reply buffer.
    let short_reply = send(r, 2, &getattr, 8);
    // Slot 3: 20 bytes of request.
    let short_request = send(r, 3, &getattr[..20], 64);
    // A loop: descriptors 100 -> 101 -> 102 -> 101 (two reply buffers).
    let at = REQUESTS + 0x4000;
    r.mem.write_slice(&getattr, GuestAddress(at)).unwrap();
    for reply in [at + 0x800, REQUESTS + 0x5800] {
        r.mem
            .write_slice(&[UNTOUCHED; 64], GuestAddress(reply))
            .unwrap();
    }
    r.desc(100, at, 56, VRING_DESC_F_NEXT, 101);
    let w = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
    r.desc(101, at + 0x800, 32, w, 102);
    r.desc(102, at + 0x820, 32, w, 101);
    r.offer(100);
    // A request outside guest RAM, and a reply buffer crossing its end.
    r.desc(110, 0xffff_0000_0000, 56, VRING_DESC_F_NEXT, 111);
    r.desc(111, REQUESTS + 0x5800, 64, VRING_DESC_F_WRITE, 0);
    r.offer(110);
    r.mem
        .write_slice(&getattr, GuestAddress(REQUESTS + 0x6000))
        .unwrap();
    r.desc(120, REQUESTS + 0x6000, 56, VRING_DESC_F_NEXT, 121);
    r.desc(121, (16 << 20) - 8, 16, VRING_DESC_F_WRITE, 0);
    r.offer(120);
    // A head outside the queue.
    r.offer(QUEUE_NUM + 3);
    // And a good one.
    let good = send(r, 7, &fuse_request(FUSE_GETATTR, 0x5eed, 1, &[0; 16]), 64);
    live.kick(1);
    live.wait_used(1, 7, &d);
    let r = &live.requests;
    let expected = [
        (u32::from(short_reply), 0),
        (u32::from(short_request), 0),
        (100, 0),
        (110, 0),
        (120, 0),
        (u32::from(good), 16),
    ];
    for (i, e) in expected.iter().enumerate() {
        assert_eq!(r.used(1 + i as u16), *e, "used entry {}", 1 + i);
    }
    assert_eq!(out_header(&live.mem, 7), (16, -libc::EIO, 0x5eed));
    for (what, at, len) in [
        ("the short reply buffer", REQUESTS + 0x2800, 8),
        ("the short request's reply", REQUESTS + 0x3800, 64),
        ("the loop's reply", REQUESTS + 0x4800, 64),
        (
            "the reply of the request outside RAM",
            REQUESTS + 0x5800,
            64,
        ),
    ] {
        let mut b = vec![0u8; len];
        live.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        assert!(
            b.iter().all(|&x| x == UNTOUCHED),
            "{what} was written: {b:?}"
        );
    }
    let mut tail = [0u8; 8];
    live.mem
        .read_slice(&mut tail, GuestAddress((16 << 20) - 8))
        .unwrap();
    assert_eq!(
        tail, [0; 8],
        "the buffer crossing the end of RAM was written"
    );
    for _ in 0..10 {
        live.el.run_once(10);
    }
    assert_eq!(live.requests.used_idx(), 7);
    assert!(live.outcomes.try_recv().is_err(), "the run was ended");
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

/// virtiofsd killed before the driver gets to DRIVER_OK: the setup in
/// that write finds the connection gone at once, nothing hangs, and the
/// device serves its queues itself: a request the driver made available
/// before DRIVER_OK gets -EIO from the transport's first look at the
/// queue, with no notification of the driver's (the event loop is woken
/// to watch the queues). A reset and a second activation do not talk to
/// the dead backend and serve the fresh rings the same way.
#[test]
fn activation_with_a_dead_backend_serves_eio() {
    if !virtiofsd_or_skip("activation_with_a_dead_backend_serves_eio") {
        return;
    }
    let mut d = Virtiofsd::start();
    let mem = shared_memory();
    let t = fs_transport(&d.config(), &mem);
    let stop = Arc::new(StopState::new().unwrap());
    let mut el = EventLoop::new(vec![t.clone()], stop).unwrap();
    let (tx, rx) = mpsc::channel();
    el.set_outcomes(Some(tx));
    d.kill();
    for round in 0..2u64 {
        mem.write_slice(&[0u8; 0x1_0000], GuestAddress(rings(1).0))
            .unwrap();
        let mut ring = Ring::new(&mem, 1);
        let unique = 0x100 + round;
        send(
            &mut ring,
            round,
            &fuse_request(FUSE_GETATTR, unique, 1, &[0; 16]),
            64,
        );
        negotiate_and_set_up(&mut lock(&t), VIRTIO_F_VERSION_1);
        assert_eq!(driver_ok(&t), DeviceAction::None, "round {round}");
        let deadline = Instant::now() + PROMPTLY;
        while ring.used_idx() != 1 {
            assert!(Instant::now() < deadline, "round {round}: not answered");
            el.run_once(100);
        }
        assert_eq!(ring.used(0), (0, 16));
        assert_eq!(out_header(&mem, round), (16, -libc::EIO, unique));
        assert!(!lock(&t).queues_served_elsewhere());
        assert_eq!(wr(&mut lock(&t), reg::STATUS, 0), DeviceAction::None);
    }
    assert!(rx.try_recv().is_err(), "the run was ended");
}

// ---------------------------------------------------------------------------
// The vhost-user relay (QEMU's side of a dead virtiofsd's EIO), between
// this device as the frontend and a real virtiofsd.

mod relay_tests {
    use super::*;
    use crate::devices::virtio::fs::relay::{self, Ending, Message, Relay, HEADER_LEN};
    use std::os::unix::net::UnixStream;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    /// A new eventfd.
    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd with flags; the result is checked and owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// A message as a peer sends it.
    fn message(request: u32, flags: u32, payload: &[u8], fds: Vec<OwnedFd>) -> Message {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&request.to_le_bytes());
        header[4..8].copy_from_slice(&flags.to_le_bytes());
        header[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Message {
            header,
            payload: payload.to_vec(),
            fds,
        }
    }

    /// How a test relay ended, and the rings it took over (or why not).
    type RelayEnd = (Ending, std::result::Result<Vec<usize>, String>);

    /// A relay between two socket pairs, run on a thread: (the frontend's
    /// end, the backend's end, how relaying ended, then the takeover).
    fn relay_between() -> (UnixStream, UnixStream, mpsc::Receiver<RelayEnd>) {
        let (front, relay_front) = UnixStream::pair().unwrap();
        let (back, relay_back) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = Relay::new(relay_front, relay_back);
            let ending = r.relay();
            let taken = match ending {
                Ending::BackendGone(_) => r.take_over().map(|s| s.rings()),
                _ => Err("not taken over".into()),
            };
            let _ = tx.send((ending, taken));
        });
        (front, back, rx)
    }

    /// The frontend sees the backend's features without those the relay
    /// cannot follow: the packed ring, dirty logging, the IOMMU; and of
    /// the protocol features only those that leave the messages it reads
    /// as they are (not memory slots, in-band notifications, inflight
    /// tracking, ...). Requests reach the backend unchanged.
    #[test]
    fn the_relay_withholds_what_it_cannot_follow() {
        let (front, back, _rx) = relay_between();
        for (request, want) in [
            (1u32, !((1u64 << 26) | (1 << 33) | (1 << 34))),
            (
                15,
                (1 << 0) | (1 << 3) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 13) | (1 << 16),
            ),
        ] {
            relay::write_message(&front, &message(request, 1, &[], vec![])).unwrap();
            let asked = relay::read_message(&back).unwrap().unwrap();
            assert_eq!((asked.request(), asked.payload.len()), (request, 0));
            let all = u64::MAX.to_le_bytes();
            relay::write_message(&back, &message(request, 1 | 4, &all, vec![])).unwrap();
            let reply = relay::read_message(&front).unwrap().unwrap();
            assert_eq!(
                u64::from_le_bytes(reply.payload[..8].try_into().unwrap()),
                want,
                "request {request}"
            );
        }
        // Descriptors travel with their message.
        let (a, b) = UnixStream::pair().unwrap();
        relay::write_message(&front, &message(21, 1, &[], vec![OwnedFd::from(a)])).unwrap();
        let passed = relay::read_message(&back).unwrap().unwrap();
        assert_eq!((passed.request(), passed.fds.len()), (21, 1));
        let mut passed_end = UnixStream::from(passed.fds.into_iter().next().unwrap());
        use std::io::{Read, Write};
        passed_end.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    /// A message larger than the protocol's largest ends the relay with
    /// the reason; a backend that hangs up ends it as gone, and with no
    /// ring set up there is nothing to take over.
    #[test]
    fn oversized_messages_and_hang_ups_end_the_relay() {
        let (front, _back, rx) = relay_between();
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&5u32.to_le_bytes());
        header[8..].copy_from_slice(&(1u32 << 20).to_le_bytes());
        use std::io::Write;
        (&front).write_all(&header).unwrap();
        let (ending, _) = rx.recv_timeout(PROMPTLY).unwrap();
        match ending {
            Ending::FrontendFailed(why) => assert!(why.contains("1048576 bytes"), "{why}"),
            other => panic!("{other:?}"),
        }

        let (_front, back, rx) = relay_between();
        drop(back);
        let (ending, taken) = rx.recv_timeout(PROMPTLY).unwrap();
        assert_eq!(
            ending,
            Ending::BackendGone("it closed the connection".into())
        );
        let e = taken.unwrap_err();
        assert!(e.contains("no ring was running"), "{e}");
    }

    /// A ring whose addresses the memory table does not hold is refused
    /// at the takeover, by name, before anything is served.
    #[test]
    fn rings_outside_the_memory_table_are_refused() {
        let (front, back, rx) = relay_between();
        let mem = shared_memory();
        let region = mem.iter().next().unwrap();
        let file = region.file_offset().unwrap().file().try_clone().unwrap();
        let mut table = Vec::new();
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        for v in [0u64, region.len(), 0x7f00_0000_0000, 0] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        let mut addr = Vec::new();
        addr.extend_from_slice(&1u32.to_le_bytes());
        addr.extend_from_slice(&0u32.to_le_bytes());
        // Descriptors inside, the used ring past the end, the available
        // ring inside.
        for v in [
            0x7f00_0000_1000u64,
            0x7f00_0000_0000 + region.len(),
            0x7f00_0000_2000,
            0,
        ] {
            addr.extend_from_slice(&v.to_le_bytes());
        }
        let mut num = Vec::new();
        num.extend_from_slice(&1u32.to_le_bytes());
        num.extend_from_slice(&256u32.to_le_bytes());
        for m in [
            message(2, 1, &(1u64 << 32).to_le_bytes(), vec![]),
            message(5, 1, &table, vec![OwnedFd::from(file)]),
            message(8, 1, &num, vec![]),
            message(9, 1, &addr, vec![]),
            message(12, 1, &1u64.to_le_bytes(), vec![eventfd()]),
            message(13, 1, &1u64.to_le_bytes(), vec![eventfd()]),
        ] {
            relay::write_message(&front, &m).unwrap();
            assert_eq!(
                relay::read_message(&back).unwrap().unwrap().request(),
                m.request()
            );
        }
        drop(back);
        let (_, taken) = rx.recv_timeout(PROMPTLY).unwrap();
        let e = taken.unwrap_err();
        assert!(
            e.contains("ring 1: its used ring") && e.contains("outside guest RAM"),
            "{e}"
        );
    }

    /// Through the relay, the device works as without it (the handshake,
    /// the memory table and the rings reach virtiofsd with their
    /// descriptors, FUSE_INIT and a lookup are answered); once virtiofsd
    /// is killed, the relay serves the rings itself: the request virtiofsd
    /// was in the middle of, the one queued behind it and every later one
    /// get -EIO, once each, without the device's own takeover (its event
    /// loop is not run after the kill).
    #[test]
    fn the_relay_answers_eio_once_virtiofsd_dies() {
        if !virtiofsd_or_skip("the_relay_answers_eio_once_virtiofsd_dies") {
            return;
        }
        let mut d = Virtiofsd::start();
        let back = UnixStream::connect(&d.socket).unwrap();
        let (device_end, relay_front) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let server = std::thread::spawn(move || {
            let mut r = Relay::new(relay_front, back);
            let ending = r.relay();
            let served = match &ending {
                Ending::BackendGone(_) => r.take_over(),
                _ => Err("not taken over".into()),
            };
            let mut served = match served {
                Ok(s) => {
                    let _ = tx.send((ending, Ok((s.rings(), s.in_flight))));
                    s
                }
                Err(e) => {
                    let _ = tx.send((ending, Err(e)));
                    return;
                }
            };
            served.serve_all();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                served.serve_kicked(20).unwrap();
            }
        });
        let config = FsConfig::connected(device_end.into(), "amphi").unwrap();
        let _lease = read_lease(&d.dir.path().join("shared/hello"));
        let mut live = Live::start_on(&d, config, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let (open, queued) = live.block_virtiofsd_in_an_open(&d);

        d.kill();
        let (ending, taken) = rx.recv_timeout(PROMPTLY).expect("the relay noticed");
        assert!(matches!(ending, Ending::BackendGone(_)), "{ending:?}");
        let (rings, in_flight) = taken.expect("taken over");
        assert_eq!(rings, vec![0, 1], "both rings ran");
        assert_eq!(in_flight, 2, "the open and the getattr were not completed");
        let later = send(
            &mut live.requests,
            4,
            &fuse_request(FUSE_GETATTR, 5, 1, &[0; 16]),
            64,
        );
        live.kick(1);
        let deadline = Instant::now() + PROMPTLY;
        while live.requests.used_idx() != 5 {
            assert!(
                Instant::now() < deadline,
                "used idx {} after the kill, waiting for 5",
                live.requests.used_idx()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(live.requests.used(2), (u32::from(open), 16));
        assert_eq!(live.requests.used(3), (u32::from(queued), 16));
        assert_eq!(live.requests.used(4), (u32::from(later), 16));
        assert_eq!(out_header(&live.mem, 2), (16, -libc::EIO, 3));
        assert_eq!(out_header(&live.mem, 3), (16, -libc::EIO, 4));
        assert_eq!(out_header(&live.mem, 4), (16, -libc::EIO, 5));
        assert_eq!(out_header(&live.mem, 1).2, 2, "the lookup's answer stays");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(live.requests.used_idx(), 5, "answered once each");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
    }
}
