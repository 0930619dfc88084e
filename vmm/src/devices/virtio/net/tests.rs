//! virtio-net against guest memory, with one end of a socketpair as the
//! peer (written and read as passt would, byte for byte) and, in the last
//! tests, a real passt: frames both ways, back-pressure both ways,
//! malformed chains, oversized frames, protocol errors and a peer that
//! goes away.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::stream::{LEN_PREFIX, RX_BUFFER};
use super::*;
use crate::devices::virtio::testing::{
    desc, live_queue, push_chain, push_raw, queue_base, test_memory, used, DATA,
};
use crate::devices::virtio::{Interrupt, VirtQueue};
use crate::memory::GuestMemoryMmap;

const W: u32 = VRING_DESC_F_WRITE;
const HDR: u32 = NET_HDR_LEN as u32;

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

    fn notify(&mut self, dev: &mut Net, queue: usize) {
        let mut ctx = self.ctx();
        dev.process_queue(&mut ctx, queue);
    }

    fn socket_event(&mut self, dev: &mut Net) {
        let mut ctx = self.ctx();
        dev.host_event(Some(&mut ctx), SOURCE_SOCKET, EventSet::IN | EventSet::OUT);
    }

    fn interrupted(&self) -> bool {
        self.irq.read().is_ok()
    }

    /// Writes a transmit chain at table index `at`: the header and `frame`
    /// at `addr`, split into two descriptors after `split` bytes.
    fn send(&self, at: u16, addr: u64, frame: &[u8], split: u32) {
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend_from_slice(frame);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        let total = bytes.len() as u32;
        if split == 0 || split >= total {
            push_chain(&self.tx, at, &[(addr, total, 0)]);
        } else {
            push_chain(
                &self.tx,
                at,
                &[
                    (addr, split, 0),
                    (addr + u64::from(split), total - split, 0),
                ],
            );
        }
    }

    /// What the guest received in the chain whose buffer is at `addr`:
    /// the header and the frame (`len` from the used ring).
    fn received(&self, addr: u64, len: u32) -> (Vec<u8>, Vec<u8>) {
        let mut bytes = vec![0u8; len as usize];
        self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        let frame = bytes.split_off(NET_HDR_LEN);
        (bytes, frame)
    }
}

/// A device on one end of a socketpair; the test holds the other.
fn socket_net() -> (Net, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let link = StreamLink::new(OwnedFd::from(ours)).unwrap();
    theirs.set_nonblocking(true).unwrap();
    (Net::with_link(link, DEFAULT_MAC, "test".into()), theirs)
}

/// A frame of `len` bytes: broadcast destination, our MAC, EtherType
/// 0x88b5 (local experimental), then a counting pattern from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len.saturating_sub(14)).map(|i| seed.wrapping_add(i as u8)));
    f.truncate(len);
    f
}

fn framed(f: &[u8]) -> Vec<u8> {
    let mut out = (f.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(f);
    out
}

fn read_available(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
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

/// Splits a byte stream of the protocol into frames (all complete).
fn unframe(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        frames.push(bytes[4..4 + len].to_vec());
        bytes = &bytes[4 + len..];
    }
    frames
}

fn socket_events(dev: &Net) -> Option<EventSet> {
    dev.host_sources()
        .into_iter()
        .find(|s| s.id == SOURCE_SOCKET)
        .map(|s| s.events)
}

#[test]
fn identity_features_and_mac() {
    let (dev, _theirs) = socket_net();
    assert_eq!(NET_HDR_LEN, 12, "virtio_net_hdr_v1");
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.features(), 1 << 5, "VIRTIO_NET_F_MAC only");
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x02, 0x61, 0x6d, 0x70, 0x68, 0x69, 0, 0]);
    let mut one = [0u8; 1];
    dev.read_config(5, &mut one);
    assert_eq!(one, [0x69]);
    assert_eq!(format_mac(DEFAULT_MAC), "02:61:6d:70:68:69");
}

#[test]
fn macs_are_parsed_and_checked() {
    assert_eq!(
        parse_mac("52:54:00:AB:cd:01").unwrap(),
        [0x52, 0x54, 0, 0xab, 0xcd, 1]
    );
    assert_eq!(parse_mac("02-00-00-00-00-01").unwrap()[5], 1);
    for bad in [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:01:02",
        "52:54:0:ab:cd:01",
        "zz:54:00:ab:cd:01",
    ] {
        assert!(parse_mac(bad).unwrap_err().contains("not a MAC"), "{bad}");
    }
    assert!(parse_mac("01:00:5e:00:00:01")
        .unwrap_err()
        .contains("multicast"));
    assert!(parse_mac("ff:ff:ff:ff:ff:ff")
        .unwrap_err()
        .contains("multicast"));
    assert!(parse_mac("00:00:00:00:00:00").is_err());
}

#[test]
fn a_guest_frame_reaches_the_peer_with_its_length() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    let f = frame(60, 1);
    // The header and the first bytes in one buffer, the rest in another.
    h.send(0, DATA, &f, HDR + 5);
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx), vec![(0, 0)]);
    assert!(h.interrupted());
    assert_eq!(read_available(&mut theirs), framed(&f));
    let stats = dev.stats();
    assert_eq!(
        (stats.tx_frames, stats.tx_bytes, stats.tx_dropped),
        (1, 60, 0)
    );
    assert_eq!(dev.guest_errors(), 0);
}

#[test]
fn peer_frames_reach_the_guest_one_per_buffer() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    let (a, b) = (frame(42, 7), frame(1514, 9));
    // The first frame cut in two: the reader waits for the rest.
    let mut bytes = framed(&a);
    bytes.extend(framed(&b));
    theirs.write_all(&bytes[..30]).unwrap();
    h.socket_event(&mut dev);
    assert_eq!(dev.link().rx_buffered(), 30, "nothing for the guest yet");
    assert_eq!(socket_events(&dev), Some(EventSet::IN));
    theirs.write_all(&bytes[30..]).unwrap();
    // The header in its own buffer, the frame in the next (as Linux may).
    push_chain(&h.rx, 0, &[(DATA, HDR, W), (DATA + 0x100, 1518, W)]);
    h.socket_event(&mut dev);
    assert_eq!(used(&h.rx), vec![(0, HDR + 42)]);
    assert!(h.interrupted());
    let mut header = [0xeeu8; 12];
    mem.read_slice(&mut header, GuestAddress(DATA)).unwrap();
    assert_eq!(
        header,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers 1"
    );
    let mut got = vec![0u8; 42];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(got, a);
    // The second frame waits for a buffer; the socket is not read.
    assert_eq!(socket_events(&dev), Some(EventSet::empty()));
    push_chain(&h.rx, 2, &[(DATA + 0x1000, HDR + 1518, W)]);
    h.notify(&mut dev, RX);
    assert_eq!(used(&h.rx)[1], (2, HDR + 1514));
    let (header, got) = h.received(DATA + 0x1000, HDR + 1514);
    assert_eq!(header[10], 1);
    assert_eq!(got, b);
    assert_eq!(dev.stats().rx_frames, 2);
    assert_eq!(dev.stats().rx_bytes, 42 + 1514);
}

#[test]
fn without_receive_buffers_the_socket_is_not_read() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    // 100 frames of 1500 bytes: more than the device buffers.
    let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(1500, i as u8)).collect();
    let stream: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
    assert!(stream.len() > RX_BUFFER);
    let mut written = 0;
    let mut write_more = |theirs: &mut UnixStream| {
        while written < stream.len() {
            match theirs.write(&stream[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    };
    // The guest posted no buffers: the device reads until it holds a
    // frame for the guest, then leaves the rest in the socket.
    write_more(&mut theirs);
    for _ in 0..10 {
        h.socket_event(&mut dev);
    }
    assert!(dev.link().rx_buffered() <= RX_BUFFER);
    assert_eq!(socket_events(&dev), Some(EventSet::empty()), "not reading");
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD into an int of ours.
    let rc = unsafe { libc::ioctl(dev.link().fd(), libc::FIONREAD, &mut unread) };
    assert_eq!(rc, 0);
    assert!(unread > 0, "the peer's frames wait in the socket");

    // The guest posts buffers four at a time.
    let mut received = Vec::new();
    let mut next = 0u16;
    while received.len() < frames.len() {
        assert!(
            next < 120,
            "only {} frames after {next} buffers",
            received.len()
        );
        let before = used(&h.rx).len();
        for _ in 0..4 {
            push_chain(
                &h.rx,
                next,
                &[(DATA + u64::from(next) * 0x800, HDR + 1518, W)],
            );
            next += 1;
        }
        h.notify(&mut dev, RX);
        write_more(&mut theirs);
        h.socket_event(&mut dev);
        for &(head, len) in &used(&h.rx)[before..] {
            received.push(h.received(DATA + u64::from(head) * 0x800, len).1);
        }
        assert!(dev.link().rx_buffered() <= RX_BUFFER);
    }
    assert!(received == frames, "in order, none lost, none changed");
    assert_eq!(dev.stats().rx_dropped, 0);
}

#[test]
fn a_full_socket_leaves_transmit_buffers_in_the_queue() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    // A small send buffer: the socket fills after a few frames.
    let small: libc::c_int = 16 << 10;
    // SAFETY: setsockopt with an int of ours.
    let rc = unsafe {
        libc::setsockopt(
            dev.link().fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let mut h = Harness::new(&mem);
    const CHAINS: u16 = 24;
    let frames: Vec<Vec<u8>> = (0..CHAINS).map(|i| frame(60_000, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        h.send(i as u16, DATA + i as u64 * 0x1_0000, f, 0);
    }
    h.notify(&mut dev, TX);
    let taken = used(&h.tx).len();
    assert!(taken < usize::from(CHAINS), "took all {taken}");
    assert!(dev.link().tx_pending(), "a frame waits for the socket");
    assert_eq!(socket_events(&dev), Some(EventSet::IN | EventSet::OUT));
    assert_eq!(
        h.queues[TX].ring().next_avail() as usize,
        taken,
        "the rest stays in the queue"
    );
    // The peer reads; each time the socket is writable the device goes on.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while used(&h.tx).len() < usize::from(CHAINS) || dev.link().tx_pending() {
        got.extend(read_available(&mut theirs));
        h.socket_event(&mut dev);
        assert!(
            Instant::now() < deadline,
            "stalled at {}",
            used(&h.tx).len()
        );
    }
    got.extend(read_available(&mut theirs));
    assert!(unframe(&got) == frames, "in order, none lost");
    assert_eq!(dev.stats().tx_frames, u64::from(CHAINS));
}

#[test]
fn malformed_transmit_chains_are_dropped() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    let n = VRING_DESC_F_NEXT;
    // 0: a device-writable (write-only) descriptor in a transmit chain.
    push_chain(&h.tx, 0, &[(DATA, HDR + 60, W)]);
    // 1: shorter than the header.
    push_chain(&h.tx, 1, &[(DATA, 8, 0)]);
    // 2: a header and no frame; 3: a frame shorter than an Ethernet header.
    push_chain(&h.tx, 2, &[(DATA, HDR, 0)]);
    push_chain(&h.tx, 3, &[(DATA, HDR + 13, 0)]);
    // 4, 5: a descriptor loop.
    push_raw(&h.tx, 4, &[desc(DATA, 64, n, 5), desc(DATA, 64, n, 4)]);
    // 6: a frame one byte over the largest.
    push_chain(&h.tx, 6, &[(DATA, HDR + MAX_FRAME as u32 + 1, 0)]);
    // 7: outside guest memory.
    push_raw(&h.tx, 7, &[desc(0x7fff_0000_0000, 64, 0, 0)]);
    // 8: a good one, of the largest size.
    let big = frame(MAX_FRAME, 3);
    h.send(8, DATA + 0x10_0000, &big, 0);
    h.notify(&mut dev, TX);
    let heads: Vec<u32> = used(&h.tx).iter().map(|&(head, _)| head).collect();
    assert_eq!(heads, [0, 1, 2, 3, 4, 6, 7, 8]);
    assert!(used(&h.tx).iter().all(|&(_, len)| len == 0));
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(read_available(&mut theirs));
        h.socket_event(&mut dev);
    }
    got.extend(read_available(&mut theirs));
    assert!(unframe(&got) == [big], "only the good frame is sent");
    assert_eq!(dev.stats().tx_dropped, 7);
    assert!(dev.guest_errors() >= 7);
}

#[test]
fn malformed_receive_chains_are_returned_unused() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    let f = frame(100, 5);
    theirs.write_all(&framed(&f)).unwrap();
    let n = VRING_DESC_F_NEXT;
    // 0: a device-readable (read-only) descriptor.
    push_chain(&h.rx, 0, &[(DATA, HDR + 1518, 0)]);
    // 1: room for less than the header.
    push_chain(&h.rx, 1, &[(DATA, HDR - 1, W)]);
    // 2, 3: a loop; 4: outside guest memory; 5: over the chain limit.
    push_raw(
        &h.rx,
        2,
        &[desc(DATA, 64, n | W, 3), desc(DATA, 64, n | W, 2)],
    );
    push_raw(&h.rx, 4, &[desc(0x7fff_0000_0000, 2048, W, 0)]);
    push_chain(&h.rx, 5, &[(DATA, RX_CHAIN_LIMIT as u32 + 1, W)]);
    // 6: a good one; the frame waited for it.
    push_chain(&h.rx, 6, &[(DATA + 0x1000, HDR + 1518, W)]);
    h.socket_event(&mut dev);
    assert_eq!(
        used(&h.rx),
        vec![(0, 0), (1, 0), (2, 0), (4, 0), (5, 0), (6, HDR + 100)]
    );
    assert_eq!(h.received(DATA + 0x1000, HDR + 100).1, f);
    assert!(dev.guest_errors() >= 5);
}

#[test]
fn a_peer_frame_larger_than_the_receive_buffer_is_dropped() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let mut h = Harness::new(&mem);
    let (big, small) = (frame(1600, 1), frame(64, 2));
    theirs.write_all(&framed(&big)).unwrap();
    theirs.write_all(&framed(&small)).unwrap();
    push_chain(&h.rx, 0, &[(DATA, HDR + 1518, W)]);
    h.socket_event(&mut dev);
    // The big one is dropped; the buffer takes the next.
    assert_eq!(used(&h.rx), vec![(0, HDR + 64)]);
    assert_eq!(h.received(DATA, HDR + 64).1, small);
    assert_eq!(dev.stats().rx_dropped, 1);
    // The largest frame fits a buffer made for it, over many descriptors.
    let largest = frame(MAX_FRAME, 4);
    theirs.write_all(&framed(&largest)).unwrap();
    let parts: Vec<(u64, u32, u32)> = (0..17)
        .map(|i| (DATA + 0x10_0000 + i * 0x1000, 0x1000, W))
        .collect();
    push_chain(&h.rx, 1, &parts);
    for _ in 0..10 {
        h.socket_event(&mut dev);
    }
    assert_eq!(used(&h.rx)[1], (1, HDR + MAX_FRAME as u32));
    assert_eq!(
        h.received(DATA + 0x10_0000, HDR + MAX_FRAME as u32).1,
        largest
    );
}

#[test]
fn bad_lengths_from_the_peer_drop_the_connection() {
    for (len, name) in [
        (0u32, "0"),
        (MAX_FRAME as u32 + 1, "65536"),
        (u32::MAX, "4294967295"),
    ] {
        let mem = test_memory();
        let (mut dev, mut theirs) = socket_net();
        let mut h = Harness::new(&mem);
        // A good frame, then the bad length.
        theirs.write_all(&framed(&frame(60, 0))).unwrap();
        theirs.write_all(&len.to_be_bytes()).unwrap();
        theirs.write_all(&[0u8; 64]).unwrap();
        push_chain(&h.rx, 0, &[(DATA, HDR + 1518, W)]);
        h.socket_event(&mut dev);
        assert_eq!(used(&h.rx), vec![(0, HDR + 60)]);
        let why = dev.link().down_reason().expect("the link is down");
        assert!(why.contains(&format!("frame length of {name}")), "{why}");
        assert!(dev.host_sources().is_empty(), "no longer polled");
        // Nothing is received from now on, and transmit chains are taken
        // and dropped, so the guest is not stuck.
        theirs.write_all(&framed(&frame(60, 0))).unwrap();
        push_chain(&h.rx, 1, &[(DATA, HDR + 1518, W)]);
        h.notify(&mut dev, RX);
        assert_eq!(used(&h.rx).len(), 1);
        h.send(0, DATA + 0x1000, &frame(60, 1), 0);
        h.notify(&mut dev, TX);
        assert_eq!(used(&h.tx), vec![(0, 0)]);
        assert_eq!(dev.stats().tx_dropped, 1);
        // The peer's end sees nothing of it.
        assert!(read_available(&mut theirs).is_empty());
    }
}

#[test]
fn frames_that_arrive_before_the_driver_wait_for_it() {
    let mem = test_memory();
    let (mut dev, mut theirs) = socket_net();
    let f = frame(80, 3);
    theirs.write_all(&framed(&f)).unwrap();
    theirs.write_all(&framed(&f)).unwrap();
    dev.host_event(None, SOURCE_SOCKET, EventSet::IN);
    assert_eq!(dev.link().rx_buffered(), 2 * (LEN_PREFIX + 80));
    assert_eq!(socket_events(&dev), Some(EventSet::empty()));
    let mut h = Harness::new(&mem);
    push_chain(&h.rx, 0, &[(DATA, HDR + 1518, W)]);
    push_chain(&h.rx, 1, &[(DATA + 0x1000, HDR + 1518, W)]);
    h.notify(&mut dev, RX);
    assert_eq!(used(&h.rx), vec![(0, HDR + 80), (1, HDR + 80)]);
}

#[test]
fn a_peer_that_goes_away_takes_the_link_down_once() {
    let mem = test_memory();
    let (mut dev, theirs) = socket_net();
    let mut h = Harness::new(&mem);
    push_chain(&h.rx, 0, &[(DATA, HDR + 1518, W)]);
    h.notify(&mut dev, RX);
    assert_eq!(socket_events(&dev), Some(EventSet::IN));
    drop(theirs);
    until_down(&mut h, &mut dev);
    assert_eq!(
        dev.link().down_reason(),
        Some("the network backend closed the connection")
    );
    assert!(dev.host_sources().is_empty());
    // The guest goes on sending: its buffers come back, dropped.
    for i in 0..5 {
        h.send(i, DATA + 0x1000 * u64::from(i + 1), &frame(60, 0), 0);
    }
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx).len(), 5);
    assert_eq!(dev.stats().tx_dropped, 5);
    assert!(used(&h.rx).is_empty());
    // The first reason stays.
    dev.link.take_down("again".into());
    assert_eq!(
        dev.link().down_reason(),
        Some("the network backend closed the connection")
    );

    // A peer gone while a frame waits for the socket: the write fails.
    let (mut dev, theirs) = socket_net();
    let mut h = Harness::new(&mem);
    for i in 0..8 {
        h.send(i, DATA + 0x1_0000 * u64::from(i), &frame(60_000, 0), 0);
    }
    h.notify(&mut dev, TX);
    assert!(dev.link().tx_pending());
    drop(theirs);
    until_down(&mut h, &mut dev);
    let why = dev.link().down_reason().expect("down");
    assert!(
        why.contains("writing to the network backend failed"),
        "{why}"
    );
    assert_eq!(used(&h.tx).len(), 8, "every buffer back");
}

/// Hands socket events to the device until the link is down. (A peer's
/// end may outlive its drop for a moment: a test that forks, passt's,
/// has a copy of every descriptor until its child executes.)
fn until_down(h: &mut Harness<'_>, dev: &mut Net) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.link().is_up() {
        assert!(Instant::now() < deadline, "the link stayed up");
        h.socket_event(dev);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The device in the event loop: once the peer has gone, its socket is
/// out of the epoll set, so the loop sleeps instead of spinning.
#[test]
fn the_event_loop_does_not_spin_after_the_peer_went_away() {
    use crate::devices::virtio::MmioTransport;
    use crate::event_loop::EventLoop;
    use crate::stop::StopState;
    use std::sync::{Arc, Mutex};

    let (dev, theirs) = socket_net();
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(dev), test_memory()).unwrap(),
    ));
    let stop = Arc::new(StopState::new().unwrap());
    let mut el = EventLoop::new(vec![transport.clone()], stop).unwrap();
    assert_eq!(transport.lock().unwrap().host_sources().len(), 1);
    drop(theirs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !transport.lock().unwrap().host_sources().is_empty() {
        assert!(Instant::now() < deadline, "the link stayed up");
        el.run_once(10);
    }
    let started = Instant::now();
    for _ in 0..5 {
        assert!(el.run_once(40));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "epoll kept returning events: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// A real passt.

/// passt on the other end of a socketpair (`passt --fd`), with fixed
/// addresses: the guest 10.0.2.15/24, the gateway 10.0.2.2.
struct Passt {
    child: std::process::Child,
}

impl Passt {
    /// `None` (after a loud skip, or a failure under CI=true) without passt.
    fn start(test: &str) -> Option<(Passt, OwnedFd)> {
        if !amphi_test_skip::have("passt") {
            amphi_test_skip::skip(&format!(
                "{test}: passt is not installed (Debian package passt); this test did NOT run"
            ));
            return None;
        }
        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        let fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new("passt");
        cmd.args(["--foreground", "--quiet", "-a", "10.0.2.15", "-n", "24"])
            .args(["-g", "10.0.2.2", "--fd", &fd.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: between fork and exec only fcntl on a descriptor that
        // the child inherits (async-signal-safe).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting passt");
        drop(theirs);
        Some((Passt { child }, OwnedFd::from(ours)))
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

/// An ARP request from the guest (DEFAULT_MAC, 10.0.2.15) for `target`.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[10, 0, 2, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

#[test]
fn real_passt_answers_an_arp_request_through_the_device() {
    let Some((mut passt, socket)) =
        Passt::start("real_passt_answers_an_arp_request_through_the_device")
    else {
        return;
    };
    let mem = test_memory();
    let link = StreamLink::new(socket).unwrap();
    let mut dev = Net::with_link(link, DEFAULT_MAC, "passt".into());
    let mut h = Harness::new(&mem);
    push_chain(&h.rx, 0, &[(DATA, HDR + 1518, W)]);
    h.notify(&mut dev, RX);
    h.send(0, DATA + 0x1000, &arp_request([10, 0, 2, 2]), 0);
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx), vec![(0, 0)]);

    // The event loop's part: wait for the socket, hand the event over.
    let deadline = Instant::now() + Duration::from_secs(10);
    while used(&h.rx).is_empty() {
        assert!(Instant::now() < deadline, "no answer from passt");
        let mut pfd = libc::pollfd {
            fd: dev.link().fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd of ours.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        h.socket_event(&mut dev);
    }
    let (_, len) = used(&h.rx)[0];
    let (header, reply) = h.received(DATA, len);
    assert_eq!(header[10], 1);
    assert_eq!(&reply[0..6], &DEFAULT_MAC, "to us");
    assert_eq!(&reply[12..14], &[0x08, 0x06], "ARP");
    assert_eq!(&reply[20..22], &[0, 2], "a reply");
    let gateway_mac = &reply[22..28];
    assert_eq!(&reply[6..12], gateway_mac, "from the MAC it announces");
    assert_eq!(&reply[28..32], &[10, 0, 2, 2], "for the gateway");
    assert_eq!(&reply[32..38], &DEFAULT_MAC);
    assert_eq!(&reply[38..42], &[10, 0, 2, 15]);

    // passt is killed: the link goes down; the guest's frames are dropped.
    passt.kill();
    push_chain(&h.rx, 1, &[(DATA + 0x2000, HDR + 1518, W)]);
    h.notify(&mut dev, RX);
    until_down(&mut h, &mut dev);
    assert_eq!(
        dev.link().down_reason(),
        Some("the network backend closed the connection")
    );
    h.send(1, DATA + 0x1000, &arp_request([10, 0, 2, 2]), 0);
    h.notify(&mut dev, TX);
    assert_eq!(used(&h.tx).len(), 2);
    assert_eq!(dev.stats().tx_dropped, 1);
    assert!(dev.host_sources().is_empty());
}

#[test]
fn open_checks_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passt.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let dev = Net::open(&NetConfig::new(NetBackend::Socket(path.clone()))).unwrap();
    assert_eq!(dev.name(), format!("virtio-net({})", path.display()));
    let _conn = listener.accept().unwrap();

    let (a, _b) = UnixStream::pair().unwrap();
    let fd = Arc::new(OwnedFd::from(a));
    let config = NetConfig::new(NetBackend::Fd(fd.clone()));
    let dev = Net::open(&config).unwrap();
    assert_eq!(dev.name(), format!("virtio-net(fd {})", fd.as_raw_fd()));

    let err = |backend: NetBackend| {
        Net::open(&NetConfig::new(backend))
            .err()
            .unwrap()
            .to_string()
    };
    let file = tempfile::tempfile().unwrap();
    let e = err(NetBackend::Fd(Arc::new(OwnedFd::from(file))));
    assert!(e.contains("not a socket"), "{e}");
    let (d, _) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let e = err(NetBackend::Fd(Arc::new(OwnedFd::from(d))));
    assert!(e.contains("not a stream socket"), "{e}");
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = err(NetBackend::Fd(Arc::new(OwnedFd::from(tcp))));
    assert!(e.contains("not a unix socket"), "{e}");
    let unconnected = std::os::unix::net::UnixListener::bind(dir.path().join("l")).unwrap();
    let e = err(NetBackend::Fd(Arc::new(OwnedFd::from(unconnected))));
    assert!(e.contains("not connected"), "{e}");
    let e = err(NetBackend::Socket(dir.path().join("none")));
    assert!(e.contains("virtio-net socket"), "{e}");
    let mut config = NetConfig::new(NetBackend::Fd(fd));
    config.mac = [1, 0, 0, 0, 0, 1];
    assert!(Net::open(&config)
        .err()
        .unwrap()
        .to_string()
        .contains("multicast"));
}
