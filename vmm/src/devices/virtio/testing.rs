//! Test helpers: guest memory, descriptors, and driver-side queues written
//! with `virtio_queue::mock::MockSplitQueue`, the way rust-vmm crates test
//! their devices.
//!
//! `MockSplitQueue` (virtio-queue 0.18) places the used ring `size` bytes
//! after the start of the available ring's entries, not `2 * size`, so the
//! rings overlap past about `size / 2` entries (and the `used_event` word
//! lands inside the used ring). Tests use queues of 256 and keep well below
//! 32 entries per queue; ring indices here do not wrap.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::queue::{RingPart, VirtQueue};
use crate::memory::GuestMemoryMmap;

/// Size of test guest memory.
pub const MEM_SIZE: u64 = 16 << 20;
/// Where test data buffers start (queues live below).
pub const DATA: u64 = 0x10_0000;

/// 16 MiB of guest memory at 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A split descriptor.
pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> Descriptor {
    Descriptor::new(addr, len, flags as u16, next)
}

/// Where driver-side queue `n` lives in test memory.
pub fn queue_base(n: u64) -> GuestAddress {
    GuestAddress(0x1000 + n * 0x4000)
}

/// The device side of `mock`, configured and ready.
pub fn live_queue(
    mem: &GuestMemoryMmap,
    mock: &MockSplitQueue<GuestMemoryMmap>,
    max: u16,
    size: u16,
    event_idx: bool,
) -> VirtQueue {
    let mut q = VirtQueue::new(max).unwrap();
    q.set_size(size);
    for (part, addr) in [
        (RingPart::Descriptors, mock.desc_table_addr()),
        (RingPart::Avail, mock.avail_addr()),
        (RingPart::Used, mock.used_addr()),
    ] {
        q.set_address(part, false, addr.0 as u32);
        q.set_address(part, true, (addr.0 >> 32) as u32);
    }
    q.set_ready(mem, event_idx).unwrap();
    q
}

/// Writes one chain of `(addr, len, flags)` buffers at table index `at`,
/// linking them with NEXT, and makes it available.
pub fn push_chain(mock: &MockSplitQueue<GuestMemoryMmap>, at: u16, buffers: &[(u64, u32, u32)]) {
    let last = buffers.len() - 1;
    let descs: Vec<RawDescriptor> = buffers
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let (flags, next) = if i == last {
                (flags & !VRING_DESC_F_NEXT, 0)
            } else {
                (flags | VRING_DESC_F_NEXT, at + i as u16 + 1)
            };
            RawDescriptor::from(desc(addr, len, flags, next))
        })
        .collect();
    mock.add_desc_chains(&descs, at).unwrap();
}

/// Writes raw descriptors at table index `at` (links as given) and makes
/// the first one available.
pub fn push_raw(mock: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[Descriptor]) {
    for (i, d) in descs.iter().enumerate() {
        mock.desc_table()
            .store(at + i as u16, RawDescriptor::from(*d))
            .unwrap();
    }
    let idx = mock.avail().idx().load();
    mock.avail()
        .ring()
        .ref_at(usize::from(idx))
        .unwrap()
        .store(at.to_le());
    mock.avail().idx().store(idx.wrapping_add(1));
}

/// The used ring's entries so far, as `(head, len)`.
pub fn used(mock: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = mock.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mock.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}
