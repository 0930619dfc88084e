//! virtio-console against guest memory, with a socketpair or pipes as the
//! host end: both directions, back-pressure each way, a failed host end and
//! malformed chains.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use virtio_queue::QueueT;

use super::host::{TO_GUEST_LIMIT, TO_HOST_LIMIT};
use super::*;
use crate::devices::virtio::testing::{
    desc, live_queue, push_chain, push_raw, queue_base, test_memory, used, DATA,
};
use crate::devices::virtio::{Interrupt, VirtQueue};
use crate::memory::GuestMemoryMmap;

const W: u32 = VRING_DESC_F_WRITE;

struct Harness<'m> {
    mem: &'m GuestMemoryMmap,
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
    queues: Vec<VirtQueue>,
    interrupt: Interrupt,
    irq: EventFd,
}

impl<'m> Harness<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        let rx = MockSplitQueue::create(mem, queue_base(0), QUEUE_SIZE);
        let tx = MockSplitQueue::create(mem, queue_base(1), QUEUE_SIZE);
        let queues = vec![
            live_queue(mem, &rx, QUEUE_SIZE, QUEUE_SIZE, true),
            live_queue(mem, &tx, QUEUE_SIZE, QUEUE_SIZE, false),
        ];
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Harness {
            mem,
            rx,
            tx,
            queues,
            interrupt: Interrupt::new(irq.try_clone().unwrap()),
            irq,
        }
    }

    fn ctx(&mut self) -> DeviceContext<'_> {
        DeviceContext {
            mem: self.mem,
            queues: &mut self.queues,
            interrupt: &self.interrupt,
        }
    }

    fn notify(&mut self, dev: &mut Console, queue: usize) {
        let mut ctx = self.ctx();
        dev.process_queue(&mut ctx, queue);
    }

    fn host_event(&mut self, dev: &mut Console, id: u32) {
        let mut ctx = self.ctx();
        dev.host_event(Some(&mut ctx), id, EventSet::IN | EventSet::OUT);
    }

    fn interrupted(&self) -> bool {
        self.irq.read().is_ok()
    }
}

/// A console on one end of a socketpair; the test holds the other.
fn socket_console() -> (Console, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let input = OwnedFd::from(ours.try_clone().unwrap());
    let host = HostEnd::new(input, OwnedFd::from(ours)).unwrap();
    theirs.set_nonblocking(true).unwrap();
    (Console::with_host(host, "test".into()), theirs)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: freshly created, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn read_available(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[test]
fn guest_bytes_reach_the_host() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_console();
    let mut h = Harness::new(&mem);
    mem.write_slice(b"hel", GuestAddress(DATA)).unwrap();
    mem.write_slice(b"lo", GuestAddress(DATA + 0x100)).unwrap();
    push_chain(&h.tx, 0, &[(DATA, 3, 0), (DATA + 0x100, 2, 0)]);
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx), vec![(0, 0)]);
    assert!(h.interrupted());
    assert_eq!(read_available(&mut theirs), b"hello");
}

#[test]
fn host_bytes_wait_for_guest_buffers() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_console();
    let mut h = Harness::new(&mem);
    theirs.write_all(b"ping").unwrap();
    // Before the driver is active: kept, not dropped.
    dev.host_event(None, SOURCE_INPUT, EventSet::IN);
    // Active, but no receive buffers yet: still kept.
    h.host_event(&mut dev, SOURCE_INPUT);
    assert_eq!(dev.host().to_guest_len(), 4);
    assert!(used(&h.rx).is_empty());
    // Two small buffers: the bytes are split over them, in order.
    push_chain(&h.rx, 0, &[(DATA, 3, W)]);
    push_chain(&h.rx, 1, &[(DATA + 0x100, 16, W)]);
    h.notify(&mut dev, RX);
    assert_eq!(used(&h.rx), vec![(0, 3), (1, 1)]);
    let mut got = [0u8; 4];
    mem.read_slice(&mut got[..3], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut got[3..], GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(&got, b"ping");
    assert!(h.interrupted());
    assert_eq!(dev.host().to_guest_len(), 0);
}

#[test]
fn a_slow_host_leaves_guest_output_in_the_queue() {
    let mem = test_memory();
    let (in_read, _in_write) = pipe();
    let (out_read, out_write) = pipe();
    // A one-page pipe: the host end fills quickly.
    // SAFETY: fcntl on a pipe we own.
    assert!(unsafe { libc::fcntl(out_write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } >= 4096);
    let host = HostEnd::new(in_read, out_write).unwrap();
    let mut dev = Console::with_host(host, "pipes".into());
    let mut h = Harness::new(&mem);

    const CHUNK: u32 = 16 << 10;
    const CHAINS: u16 = 8;
    let mut expected = Vec::new();
    for i in 0..CHAINS {
        let data = vec![b'a' + i as u8; CHUNK as usize];
        let addr = DATA + u64::from(i) * u64::from(CHUNK);
        mem.write_slice(&data, GuestAddress(addr)).unwrap();
        expected.extend_from_slice(&data);
        push_chain(&h.tx, i, &[(addr, CHUNK, 0)]);
    }
    h.notify(&mut dev, TX);
    let taken = used(&h.tx).len();
    assert!(taken > 0 && taken < usize::from(CHAINS), "took {taken}");
    assert!(dev.host().to_host_pending() <= TO_HOST_LIMIT);
    assert!(
        dev.host_sources()
            .iter()
            .any(|s| s.id == SOURCE_OUTPUT && s.events == EventSet::OUT),
        "waits for the output"
    );
    assert_eq!(
        h.queues[TX].ring().next_avail() as usize,
        taken,
        "the rest stays in the queue"
    );

    // The host reads; each time the output is ready the device goes on.
    let mut got = Vec::new();
    super::host::set_nonblocking(out_read.as_raw_fd()).unwrap();
    let mut reader = std::fs::File::from(out_read);
    for _ in 0..10_000 {
        got.extend(read_available(&mut reader));
        h.host_event(&mut dev, SOURCE_OUTPUT);
        if got.len() == expected.len() {
            break;
        }
    }
    assert_eq!(used(&h.tx).len(), usize::from(CHAINS));
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes in order, none lost");
}

#[test]
fn host_input_is_read_only_while_there_is_room() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_console();
    let mut h = Harness::new(&mem);
    let total = TO_GUEST_LIMIT + 10_000;
    let sent: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut written = 0;
    let mut received = Vec::new();
    for next_desc in 0..200u16 {
        if written < sent.len() {
            match theirs.write(&sent[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        h.host_event(&mut dev, SOURCE_INPUT);
        assert!(dev.host().to_guest_len() <= TO_GUEST_LIMIT);
        if dev.host().to_guest_len() == TO_GUEST_LIMIT {
            let input = dev
                .host_sources()
                .into_iter()
                .find(|s| s.id == SOURCE_INPUT)
                .unwrap();
            assert!(input.events.is_empty(), "full: not reading");
        }
        // The guest posts one 8 KiB buffer per round.
        let before = used(&h.rx).len();
        let addr = DATA + u64::from(next_desc) * 0x2000;
        push_chain(&h.rx, next_desc, &[(addr, 0x2000, W)]);
        h.notify(&mut dev, RX);
        for &(head, len) in &used(&h.rx)[before..] {
            let at = DATA + u64::from(head as u16) * 0x2000;
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            received.extend(buf);
        }
        if received.len() == total {
            break;
        }
    }
    assert_eq!(received.len(), total);
    assert!(received == sent, "in order, none lost");
}

#[test]
fn a_failed_host_output_does_not_stall_the_guest() {
    let mem = test_memory();
    let (mut dev, theirs) = socket_console();
    drop(theirs);
    let mut h = Harness::new(&mem);
    mem.write_slice(b"lost", GuestAddress(DATA)).unwrap();
    for i in 0..3 {
        push_chain(&h.tx, i, &[(DATA, 4, 0)]);
    }
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx).len(), 3);
    assert_eq!(dev.host().discarded(), 12);
    // The input saw end of file: no longer polled.
    h.host_event(&mut dev, SOURCE_INPUT);
    assert!(dev.host_sources().is_empty());
}

#[test]
fn malformed_chains_are_returned_empty() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_console();
    let mut h = Harness::new(&mem);
    let n = VRING_DESC_F_NEXT;
    // TX: a loop, then a buffer outside memory, then a good one.
    push_raw(&h.tx, 0, &[desc(DATA, 4, n, 1), desc(DATA, 4, n, 0)]);
    push_raw(&h.tx, 2, &[desc(0x7fff_0000_0000, 4, 0, 0)]);
    mem.write_slice(b"ok", GuestAddress(DATA + 0x100)).unwrap();
    push_chain(&h.tx, 3, &[(DATA + 0x100, 2, 0)]);
    // A chain larger than the limit.
    push_chain(&h.tx, 4, &[(DATA, (CHAIN_LIMIT + 1) as u32, 0)]);
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx), vec![(0, 0), (2, 0), (3, 0), (4, 0)]);
    assert_eq!(read_available(&mut theirs), b"ok");

    // RX: a buffer outside memory and a read-only one get nothing; the
    // bytes wait for a good buffer.
    theirs.write_all(b"data").unwrap();
    push_raw(&h.rx, 0, &[desc(0x7fff_0000_0000, 64, W, 0)]);
    push_chain(&h.rx, 1, &[(DATA, 64, 0)]);
    h.host_event(&mut dev, SOURCE_INPUT);
    assert_eq!(used(&h.rx), vec![(0, 0), (1, 0)]);
    assert_eq!(dev.host().to_guest_len(), 4);
    push_chain(&h.rx, 2, &[(DATA + 0x200, 64, W)]);
    h.notify(&mut dev, RX);
    assert_eq!(used(&h.rx)[2], (2, 4));
    assert!(dev.guest_errors() >= 5);
}

#[test]
fn identity_and_config() {
    let (dev, _theirs) = socket_console();
    assert_eq!(dev.device_type(), 3);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.features(), 0);
    let mut cfg = [0xffu8; 8];
    dev.read_config(4, &mut cfg);
    assert_eq!(cfg, [0; 8]);
}

#[test]
fn backends_open_and_refuse_unpollable_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chan.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let dev = Console::open(&ConsoleBackend::Socket(path.clone())).unwrap();
    assert_eq!(dev.host_sources().len(), 2);
    let (_conn, _) = listener.accept().unwrap();

    let (r, w) = pipe();
    let fds = ConsoleBackend::Fds {
        input: Arc::new(r),
        output: Arc::new(w),
    };
    assert!(Console::open(&fds).is_ok());

    let file = tempfile::tempfile().unwrap();
    let bad = ConsoleBackend::Fds {
        input: Arc::new(OwnedFd::from(file.try_clone().unwrap())),
        output: Arc::new(OwnedFd::from(file)),
    };
    let err = Console::open(&bad)
        .err()
        .expect("a regular file is refused");
    assert!(err.to_string().contains("cannot be polled"), "{err}");
    assert!(Console::open(&ConsoleBackend::Socket(dir.path().join("none"))).is_err());
}
