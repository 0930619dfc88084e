//! One split virtqueue, as the device side sees it.
//!
//! [`VirtQueue`] keeps what the driver configured through the transport
//! (size and ring addresses) apart from the live ring state, which is
//! `virtio_queue::Queue`'s. Configuration is only checked and applied when
//! the driver sets the queue ready: size a power of two no larger than the
//! device's maximum, rings aligned and wholly inside guest RAM. A queue that
//! fails stays not ready, and a queue that is not ready has no buffers.
//!
//! Popping goes through [`read_chain_with`], so every chain a device sees has been
//! checked. The ring's own bookkeeping (used ring, `EVENT_IDX` notification
//! suppression) is `virtio_queue`'s.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::chain::{read_chain_with, BadChain, Chain, DESCRIPTOR_SIZE};
use crate::memory::GuestMemoryMmap;

/// Why a queue cannot be used as configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The size is zero, not a power of two, or above the maximum.
    #[error("queue size {size} is not a power of two between 1 and {max}")]
    BadSize {
        /// Size the driver wrote.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address breaks the split ring's alignment rules.
    #[error("{ring} at {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        ring: &'static str,
        /// Its address.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// A ring does not lie inside guest RAM.
    #[error("{ring} at {addr:#x} (+{len} bytes) is outside guest memory")]
    OutsideMemory {
        /// Which ring.
        ring: &'static str,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The driver made more buffers available than the queue holds.
    #[error("available ring index {avail} is more than the queue size ahead of {next}")]
    AvailIndex {
        /// The index the driver published.
        avail: u16,
        /// Where the device is.
        next: u16,
    },
    /// A ring access failed (guest memory or `virtio_queue`).
    #[error("ring access failed: {0}")]
    Ring(String),
}

/// Which address register a driver write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table (`QueueDesc`).
    Descriptors,
    /// The available ring (`QueueDriver`).
    Avail,
    /// The used ring (`QueueDevice`).
    Used,
}

/// A virtqueue: driver configuration plus live ring state.
#[derive(Debug)]
pub struct VirtQueue {
    ring: Queue,
    max_size: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ready: bool,
    /// Chains may use indirect descriptor tables ([`Self::set_indirect`]).
    indirect: bool,
}

/// The result of [`VirtQueue::pop`]: a checked chain or one that failed its
/// checks (with the head index it came from, for the used ring).
pub type Popped = Result<Chain, BadChain>;

impl VirtQueue {
    /// A queue of at most `max_size` entries (a power of two up to 32768:
    /// a device constant, so a bad one is a programming error).
    pub fn new(max_size: u16) -> Result<Self, QueueError> {
        let ring = Queue::new(max_size).map_err(|_| QueueError::BadSize {
            size: max_size,
            max: 32768,
        })?;
        Ok(VirtQueue {
            ring,
            max_size,
            size: max_size,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
            indirect: false,
        })
    }

    /// Largest size the driver may choose.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Size the driver chose (or the maximum).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Records the size the driver wrote; it is checked when set ready.
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Sets the low (`high == false`) or high half of a ring address.
    pub fn set_address(&mut self, part: RingPart, high: bool, value: u32) {
        let field = match part {
            RingPart::Descriptors => &mut self.desc,
            RingPart::Avail => &mut self.avail,
            RingPart::Used => &mut self.used,
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(value)
        };
    }

    /// The configured address of a ring.
    pub fn address(&self, part: RingPart) -> u64 {
        match part {
            RingPart::Descriptors => self.desc,
            RingPart::Avail => self.avail,
            RingPart::Used => self.used,
        }
    }

    /// Whether the queue is live.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Checks the configuration against `mem` and makes the queue live.
    /// On error the queue stays not ready.
    pub fn set_ready(&mut self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<(), QueueError> {
        self.check(mem)?;
        let ring = &mut self.ring;
        let bad = |e: virtio_queue::Error| QueueError::Ring(e.to_string());
        ring.try_set_size(self.size).map_err(bad)?;
        ring.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(bad)?;
        ring.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(bad)?;
        ring.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(bad)?;
        ring.set_event_idx(event_idx);
        ring.set_next_avail(0);
        ring.set_next_used(0);
        ring.set_ready(true);
        self.ready = true;
        Ok(())
    }

    fn check(&self, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        let size = self.size;
        if size == 0 || size > self.max_size || !size.is_power_of_two() {
            return Err(QueueError::BadSize {
                size,
                max: self.max_size,
            });
        }
        if self.avail == 0 {
            // virtio_queue takes an available ring at 0 for "never set".
            return Err(QueueError::Ring(
                "the available ring address was not set (0)".into(),
            ));
        }
        let n = u64::from(size);
        // Ring sizes per the virtio 1.x split ring layout, with the
        // event-index word at the end of the avail and used rings.
        let rings = [
            ("descriptor table", self.desc, 16, DESCRIPTOR_SIZE * n),
            ("available ring", self.avail, 2, 6 + 2 * n),
            ("used ring", self.used, 4, 6 + 8 * n),
        ];
        for (ring, addr, align, len) in rings {
            if addr % align != 0 {
                return Err(QueueError::Misaligned { ring, addr, align });
            }
            // `len` is at most 16 * 32768, so it fits a usize.
            if !mem.check_range(GuestAddress(addr), len as usize) {
                return Err(QueueError::OutsideMemory { ring, addr, len });
            }
        }
        Ok(())
    }

    /// Makes the queue not ready (the driver wrote 0 to `QueueReady`).
    pub fn clear_ready(&mut self) {
        self.ready = false;
        self.ring.set_ready(false);
    }

    /// Back to the state after device reset.
    pub fn reset(&mut self) {
        self.ring.reset();
        self.size = self.max_size;
        self.desc = 0;
        self.avail = 0;
        self.used = 0;
        self.ready = false;
        self.indirect = false;
    }

    /// Takes the next available chain, checked by [`read_chain_with`] with
    /// `limit` on its total length. `Ok(None)`: nothing available (or the
    /// queue is not ready). `Err`: the available ring itself is broken.
    pub fn pop(&mut self, mem: &GuestMemoryMmap, limit: u64) -> Result<Option<Popped>, QueueError> {
        if !self.ready {
            return Ok(None);
        }
        let next = self.ring.next_avail();
        let head = match self.ring.iter(mem) {
            Ok(mut iter) => match iter.next() {
                Some(chain) => chain.head_index(),
                None => return Ok(None),
            },
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                let avail = self
                    .ring
                    .avail_idx(mem, std::sync::atomic::Ordering::Relaxed)
                    .map(|w| w.0)
                    .unwrap_or(0);
                return Err(QueueError::AvailIndex { avail, next });
            }
            Err(e) => return Err(QueueError::Ring(e.to_string())),
        };
        Ok(Some(read_chain_with(
            mem,
            GuestAddress(self.desc),
            self.size,
            head,
            limit,
            self.indirect,
        )))
    }

    /// Takes the ring over from another process that served it (a
    /// vhost-user backend that went away): the device side continues at
    /// the used ring's `idx` as that process left it in guest memory, for
    /// both the next chain to take and the next used entry. The chains
    /// between it and the available ring's `idx` are the ones the other
    /// process did not complete, if it completed in order. Returns that
    /// position and the available ring's `idx`.
    pub fn take_over(&mut self, mem: &GuestMemoryMmap) -> Result<(u16, u16), QueueError> {
        if !self.ready {
            return Err(QueueError::Ring("the queue is not ready".into()));
        }
        let ring_err = |e: virtio_queue::Error| QueueError::Ring(e.to_string());
        let used = self
            .ring
            .used_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(ring_err)?
            .0;
        let avail = self
            .ring
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(ring_err)?
            .0;
        self.ring.set_next_avail(used);
        self.ring.set_next_used(used);
        Ok((used, avail))
    }

    /// Whether [`Self::pop`] follows indirect descriptors: only for a
    /// device that offered `VIRTIO_F_INDIRECT_DESC` to a driver that
    /// accepted it (until then, and after a reset, an indirect descriptor
    /// is a bad chain).
    pub fn set_indirect(&mut self, on: bool) {
        self.indirect = on;
    }

    /// Puts the last popped chain back (it will be popped again).
    pub fn undo_pop(&mut self) {
        self.ring.go_to_previous_position();
    }

    /// Returns chain `head` to the driver with `len` bytes written into it.
    /// Heads outside the queue (from a bad chain) are refused.
    pub fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if head >= self.size || !self.ready {
            return Err(QueueError::Ring(format!(
                "cannot return head {head} on a queue of {}",
                self.size
            )));
        }
        self.ring
            .add_used(mem, head, len)
            .map_err(|e| QueueError::Ring(e.to_string()))
    }

    /// Whether the driver wants an interrupt for what was added to the used
    /// ring since the last call. Errs on the side of interrupting.
    pub fn needs_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.ring.needs_notification(mem).unwrap_or(true)
    }

    /// Asks the driver to notify again for new buffers. Returns whether
    /// buffers are already available (then the device must look again).
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.ready && self.ring.enable_notification(mem).unwrap_or(false)
    }

    /// The ring state, for tests and diagnostics.
    pub fn ring(&self) -> &Queue {
        &self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::test_memory;

    fn configured(size: u16) -> VirtQueue {
        let mut q = VirtQueue::new(256).unwrap();
        q.set_size(size);
        q.set_address(RingPart::Descriptors, false, 0x1000);
        q.set_address(RingPart::Avail, false, 0x3000);
        q.set_address(RingPart::Used, false, 0x4000);
        q
    }

    #[test]
    fn a_good_configuration_goes_live() {
        let mem = test_memory();
        let mut q = configured(128);
        q.set_ready(&mem, false).unwrap();
        assert!(q.ready());
        assert_eq!(q.pop(&mem, 4096).unwrap(), None, "nothing available");
        q.reset();
        assert!(!q.ready());
        assert_eq!(q.size(), 256);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let mem = test_memory();
        for size in [0, 3, 100, 512, u16::MAX] {
            let mut q = configured(size);
            assert!(
                matches!(q.set_ready(&mem, false), Err(QueueError::BadSize { .. })),
                "size {size}"
            );
            assert!(!q.ready());
            assert_eq!(q.pop(&mem, 4096).unwrap(), None);
        }
        assert!(VirtQueue::new(0).is_err());
        assert!(VirtQueue::new(96).is_err());
    }

    #[test]
    fn rings_must_be_aligned_and_in_memory() {
        let mem = test_memory();
        let mut q = configured(8);
        q.set_address(RingPart::Used, false, 0x4002);
        assert!(matches!(
            q.set_ready(&mem, false),
            Err(QueueError::Misaligned { align: 4, .. })
        ));
        q.set_address(RingPart::Used, false, 0x4000);
        q.set_address(RingPart::Descriptors, true, 1);
        assert!(matches!(
            q.set_ready(&mem, false),
            Err(QueueError::OutsideMemory { .. })
        ));
        assert_eq!(q.address(RingPart::Descriptors), 0x1_0000_1000);
        q.set_address(RingPart::Descriptors, true, 0);
        q.set_address(RingPart::Descriptors, false, 0xffff_fff0);
        assert!(q.set_ready(&mem, false).is_err());
        q.set_address(RingPart::Descriptors, false, 0x1000);
        q.set_address(RingPart::Avail, false, 0);
        assert!(q.set_ready(&mem, false).is_err(), "avail ring never set");
    }

    /// Another process served the ring and completed 2 of 4 chains: the
    /// device continues at the used ring's idx, so the 3rd chain is the
    /// next one taken and the next used entry is the 3rd.
    #[test]
    fn a_ring_is_taken_over_at_the_used_index_in_memory() {
        use crate::devices::virtio::testing::{live_queue, push_chain, queue_base, used, DATA};
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        use virtio_queue::mock::MockSplitQueue;

        let mem = test_memory();
        let mock = MockSplitQueue::create(&mem, queue_base(0), 16);
        let mut q = live_queue(&mem, &mock, 16, 16, false);
        let mut not_ready = VirtQueue::new(16).unwrap();
        assert!(not_ready.take_over(&mem).is_err());
        for i in 0..4u16 {
            push_chain(
                &mock,
                i * 2,
                &[(DATA + u64::from(i) * 0x100, 16, VRING_DESC_F_WRITE)],
            );
        }
        // The other process's two used entries.
        for (slot, head) in [(0u64, 0u32), (1, 2)] {
            let at = mock.used_addr().0 + 4 + 8 * slot;
            vm_memory::Bytes::write_obj(&mem, [head, 16], GuestAddress(at)).unwrap();
        }
        mock.used().idx().store(2);
        assert_eq!(q.take_over(&mem).unwrap(), (2, 4));
        let chain = q.pop(&mem, 4096).unwrap().unwrap().unwrap();
        assert_eq!(chain.head, 4);
        q.add_used(&mem, chain.head, 0).unwrap();
        assert_eq!(used(&mock), vec![(0, 16), (2, 16), (4, 0)]);
    }

    #[test]
    fn a_runaway_avail_index_is_an_error_not_a_hang() {
        let mem = test_memory();
        let mut q = configured(8);
        q.set_ready(&mem, false).unwrap();
        // The driver claims 200 new buffers on a queue of 8.
        vm_memory::Bytes::write_obj(&mem, 200u16, GuestAddress(0x3002)).unwrap();
        assert!(matches!(
            q.pop(&mem, 4096),
            Err(QueueError::AvailIndex { avail: 200, .. })
        ));
        assert!(q.add_used(&mem, 8, 0).is_err(), "head outside the queue");
    }
}
