//! virtio-blk against guest memory: requests written as descriptors with
//! `MockSplitQueue`, the queue handler run, used ring, data and status
//! checked.

use std::io::{Read, Seek, SeekFrom, Write};

use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::testing::{
    desc, live_queue, push_chain, push_raw, queue_base, test_memory, used, DATA,
};
use crate::devices::virtio::{Interrupt, VirtQueue};
use crate::memory::GuestMemoryMmap;

const SECTORS: u64 = 16;
const HEADER: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x8000;
const W: u32 = VRING_DESC_F_WRITE;

/// Sector `s` is filled with byte `s + 1`.
fn disk_image() -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    for s in 0..SECTORS {
        f.write_all(&[s as u8 + 1; 512]).unwrap();
    }
    f
}

fn block(file: &NamedTempFile, read_only: bool) -> Block {
    Block::open(&BlockConfig {
        path: file.path().to_path_buf(),
        read_only,
        id: Some("test-disk".into()),
    })
    .unwrap()
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
    mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
}

struct Harness {
    queue: VirtQueue,
    interrupt: Interrupt,
    irq: EventFd,
}

impl Harness {
    fn new(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>, event_idx: bool) -> Self {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Harness {
            queue: live_queue(mem, mock, QUEUE_SIZE, QUEUE_SIZE, event_idx),
            interrupt: Interrupt::new(irq.try_clone().unwrap()),
            irq,
        }
    }

    fn run(&mut self, mem: &GuestMemoryMmap, dev: &mut Block) {
        let mut ctx = DeviceContext {
            mem,
            queues: std::slice::from_mut(&mut self.queue),
            interrupt: &self.interrupt,
        };
        dev.process_queue(&mut ctx, 0);
    }

    fn interrupted(&self) -> bool {
        self.irq.read().is_ok()
    }
}

/// A standard request: header, optional data buffer, status.
fn request(mock: &MockSplitQueue<GuestMemoryMmap>, at: u16, data: Option<(u32, u32)>) {
    let mut bufs = vec![(HEADER, 16, 0)];
    if let Some((len, flags)) = data {
        bufs.push((BUF, len, flags));
    }
    bufs.push((STATUS, 1, W));
    push_chain(mock, at, &bufs);
}

#[test]
fn reads_sectors_into_guest_buffers() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, false);
    assert_eq!(dev.capacity(), SECTORS);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    header(&mem, VIRTIO_BLK_T_IN, 2);
    // Data split over two buffers, to cross a buffer boundary.
    push_chain(
        &mock,
        0,
        &[
            (HEADER, 16, 0),
            (BUF, 700, W),
            (BUF + 0x2000, 324, W),
            (STATUS, 1, W),
        ],
    );
    h.run(&mem, &mut dev);
    assert_eq!(used(&mock), vec![(0, 1025)]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut data = vec![0u8; 1024];
    mem.read_slice(&mut data[..700], GuestAddress(BUF)).unwrap();
    mem.read_slice(&mut data[700..], GuestAddress(BUF + 0x2000))
        .unwrap();
    assert!(data[..512].iter().all(|&b| b == 3), "sector 2");
    assert!(data[512..].iter().all(|&b| b == 4), "sector 3");
    assert!(h.interrupted());
    assert_eq!(dev.guest_errors(), 0);
}

#[test]
fn writes_then_flushes() {
    let mem = test_memory();
    let mut file = disk_image();
    let mut dev = block(&file, false);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, true);
    mem.write_slice(&[0x5a; 512], GuestAddress(BUF)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 5);
    request(&mock, 0, Some((512, 0)));
    h.run(&mem, &mut dev);
    assert_eq!(used(&mock), vec![(0, 1)]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut contents = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut contents).unwrap();
    assert!(contents[5 * 512..6 * 512].iter().all(|&b| b == 0x5a));
    assert!(
        contents[4 * 512..5 * 512].iter().all(|&b| b == 5),
        "neighbours untouched"
    );
    assert!(contents[6 * 512..7 * 512].iter().all(|&b| b == 7));

    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    request(&mock, 3, None);
    h.run(&mem, &mut dev);
    assert_eq!(used(&mock)[1], (3, 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn get_id_returns_the_serial() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, true);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    mem.write_slice(&[0xff; 20], GuestAddress(BUF)).unwrap();
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    request(&mock, 0, Some((20, W)));
    h.run(&mem, &mut dev);
    assert_eq!(used(&mock), vec![(0, 21)]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
    assert_eq!(&id[..9], b"test-disk");
    assert_eq!(id[9..], [0; 11]);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mem = test_memory();
    let mut file = disk_image();
    let mut dev = block(&file, true);
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    mem.write_slice(&[0x5a; 512], GuestAddress(BUF)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    request(&mock, 0, Some((512, 0)));
    h.run(&mem, &mut dev);
    assert_eq!(used(&mock), vec![(0, 1)]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    let mut first = [0u8; 512];
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_exact(&mut first).unwrap();
    assert_eq!(first, [1; 512], "file unchanged");
    // Flush on a read-only disk is fine (nothing to flush).
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    request(&mock, 3, None);
    h.run(&mem, &mut dev);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn out_of_range_and_misshapen_requests_get_ioerr() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, false);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    // Type, sector, data buffer (length, flags), expected status.
    type Case = (u32, u64, Option<(u32, u32)>, u32);
    let cases: [Case; 7] = [
        // Last sector plus one more.
        (
            VIRTIO_BLK_T_IN,
            SECTORS - 1,
            Some((1024, W)),
            VIRTIO_BLK_S_IOERR,
        ),
        // sector * 512 overflows.
        (
            VIRTIO_BLK_T_IN,
            u64::MAX / 2,
            Some((512, W)),
            VIRTIO_BLK_S_IOERR,
        ),
        (
            VIRTIO_BLK_T_OUT,
            SECTORS,
            Some((512, 0)),
            VIRTIO_BLK_S_IOERR,
        ),
        // Not a whole sector.
        (VIRTIO_BLK_T_IN, 0, Some((100, W)), VIRTIO_BLK_S_IOERR),
        // IN whose data buffer is device-readable.
        (VIRTIO_BLK_T_IN, 0, Some((512, 0)), VIRTIO_BLK_S_IOERR),
        // OUT whose data buffer is device-writable.
        (VIRTIO_BLK_T_OUT, 0, Some((512, W)), VIRTIO_BLK_S_IOERR),
        (99, 0, None, VIRTIO_BLK_S_UNSUPP),
    ];
    for (i, (kind, sector, data, expected)) in cases.into_iter().enumerate() {
        header(&mem, kind, sector);
        request(&mock, (i * 3) as u16, data);
        h.run(&mem, &mut dev);
        assert_eq!(status(&mem), expected, "case {i}");
        assert_eq!(used(&mock).len(), i + 1, "case {i} returned");
    }
    assert_eq!(dev.guest_errors(), cases.len() as u64);
}

#[test]
fn short_header_and_missing_status() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, false);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    push_chain(&mock, 0, &[(HEADER, 8, 0), (STATUS, 1, W)]);
    // No writable byte at all: nowhere to put a status.
    push_chain(&mock, 2, &[(HEADER, 16, 0), (BUF, 512, 0)]);
    h.run(&mem, &mut dev);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(used(&mock), vec![(0, 1), (2, 0)]);
}

#[test]
fn malformed_chains_are_answered_without_panic() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, false);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, false);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let n = VRING_DESC_F_NEXT;
    // 0: a descriptor loop 1 -> 2 -> 1 among writable buffers.
    push_raw(
        &mock,
        0,
        &[
            desc(HEADER, 16, n, 1),
            desc(BUF, 512, W | n, 2),
            desc(STATUS, 1, W | n, 1),
        ],
    );
    // 3: a data buffer outside guest memory.
    push_raw(
        &mock,
        3,
        &[
            desc(HEADER, 16, n, 4),
            desc(0x7fff_ffff_0000, 512, W | n, 5),
            desc(STATUS, 1, W, 0),
        ],
    );
    // 6: a link outside the table.
    push_raw(&mock, 6, &[desc(HEADER, 16, n, 999)]);
    // 7: an indirect descriptor (not offered).
    push_raw(&mock, 7, &[desc(DATA + 0x9000, 32, 4, 0)]);
    // A head outside the table: skipped, nothing to return.
    let idx = mock.avail().idx().load();
    mock.avail()
        .ring()
        .ref_at(usize::from(idx))
        .unwrap()
        .store(300);
    mock.avail().idx().store(idx + 1);
    // 8: and a good request after all that.
    request(&mock, 8, Some((512, W)));
    h.run(&mem, &mut dev);

    let returned = used(&mock);
    let heads: Vec<u32> = returned.iter().map(|&(h, _)| h).collect();
    assert_eq!(heads, vec![0, 3, 6, 7, 8]);
    // The loop's walked buffers got IOERR in their last writable byte.
    assert_eq!(returned[0].1, 1);
    // No writable buffer walked before the bad one: nothing written.
    assert_eq!(returned[1], (3, 0));
    assert_eq!(returned[4], (8, 513));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK, "the good request");
    assert_eq!(dev.guest_errors(), 5);
}

#[test]
fn a_runaway_available_index_stops_the_handler() {
    let mem = test_memory();
    let file = disk_image();
    let mut dev = block(&file, false);
    let mock = MockSplitQueue::create(&mem, queue_base(0), QUEUE_SIZE);
    let mut h = Harness::new(&mem, &mock, true);
    mock.avail().idx().store(1000);
    h.run(&mem, &mut dev);
    assert!(used(&mock).is_empty());
    assert_eq!(dev.guest_errors(), 1);
}

#[test]
fn config_space_describes_the_disk() {
    let file = disk_image();
    let dev = block(&file, false);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut seg = [0u8; 4];
    dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut past = [0xffu8; 4];
    dev.read_config(0x200, &mut past);
    assert_eq!(past, [0; 4]);
    assert!(Block::open(&BlockConfig {
        path: file.path().to_path_buf(),
        read_only: true,
        id: Some("x".repeat(21)),
    })
    .is_err());
    assert!(Block::open(&BlockConfig::new("/nonexistent/disk.img", true)).is_err());
}
