//! Descriptor chains, read with every guest-controlled field checked.
//!
//! A chain starts at a head index taken from the available ring and follows
//! `next` links through the descriptor table. The guest writes all of it, so
//! walking it checks: indices inside the queue, no more descriptors than the
//! queue has (a longer chain is a loop), no indirect descriptors (the feature
//! is not offered), every buffer inside guest RAM, device-readable buffers
//! before device-writable ones, and a bounded total length.
//!
//! A [`Chain`] is then seen as two byte streams: the readable one (what the
//! driver sends) and the writable one (where the device answers). The helpers
//! here read and write those streams at byte offsets, whatever the buffer
//! boundaries are (virtio 1.x does not let a device assume any framing).

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Size of one split-ring descriptor in the table.
pub const DESCRIPTOR_SIZE: u64 = 16;

/// One guest buffer of a chain, known to lie inside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
}

/// Why a descriptor chain cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The available ring named a head outside the descriptor table.
    #[error("head index {head} is outside the queue of {size} descriptors")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A `next` link points outside the descriptor table.
    #[error("descriptor {index} links to {next}, outside the queue of {size} descriptors")]
    NextOutOfRange {
        /// The linking descriptor.
        index: u16,
        /// Where it points.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// More descriptors than the queue holds: the links form a loop.
    #[error("chain is longer than the queue size {size} (a descriptor loop)")]
    TooLong {
        /// The queue size.
        size: u16,
    },
    /// An indirect descriptor, though the feature was not offered.
    #[error("descriptor {index} is indirect; VIRTIO_F_INDIRECT_DESC was not offered")]
    Indirect {
        /// The descriptor.
        index: u16,
    },
    /// An indirect descriptor the spec forbids: inside an indirect table,
    /// with `NEXT` set, or with a table that is empty, not a whole number
    /// of descriptors, or larger than a queue can be (2.7.5.3).
    #[error("descriptor {index}: bad indirect table ({why})")]
    BadIndirect {
        /// The descriptor.
        index: u16,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The descriptor table entry itself could not be read.
    #[error("descriptor table entry {index} is outside guest memory")]
    TableUnreadable {
        /// The descriptor.
        index: u16,
    },
    /// A buffer lies (partly) outside guest RAM.
    #[error("descriptor {index} buffer {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// The descriptor.
        index: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer after a device-writable one.
    #[error("device-readable descriptor {index} follows a device-writable one")]
    ReadableAfterWritable {
        /// The descriptor.
        index: u16,
    },
    /// The buffers add up to more than the device accepts.
    #[error("chain carries more than {limit} bytes")]
    TooLarge {
        /// The device's limit.
        limit: u64,
    },
}

/// A checked descriptor chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to be returned in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

/// A chain that failed a check. `partial` holds the buffers walked before
/// the failure (each inside guest RAM), so a device can still put an error
/// status into the last writable byte the driver offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadChain {
    /// What was wrong.
    pub error: ChainError,
    /// What was read before.
    pub partial: Chain,
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

impl Chain {
    /// Bytes in the readable buffers.
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    /// Bytes in the writable buffers.
    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }
}

/// Walks the chain at `head` of the split queue whose descriptor table is at
/// `table` and holds `size` entries. `limit` bounds the sum of all buffer
/// lengths. Zero-length buffers are dropped. An indirect descriptor is an
/// error ([`ChainError::Indirect`]): see [`read_chain_with`].
pub fn read_chain(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    limit: u64,
) -> Result<Chain, BadChain> {
    read_chain_with(mem, table, size, head, limit, false)
}

/// [`read_chain`], and with `indirect` (the driver accepted
/// `VIRTIO_F_INDIRECT_DESC`) a descriptor with `INDIRECT` continues the
/// chain in the table it points to, as the spec has it (2.7.5.3): zero or
/// more descriptors of the queue, then one indirect descriptor (no `NEXT`,
/// its `WRITE` ignored) whose table, inside guest RAM and a whole number
/// of 16-byte descriptors, holds the rest of the chain, linked by `next`
/// within that table and never indirect again. The same checks apply to
/// its descriptors, and a loop in it is caught the same way.
pub fn read_chain_with(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    limit: u64,
    indirect: bool,
) -> Result<Chain, BadChain> {
    let (mut table, mut size) = (table, size);
    let mut in_table = false;
    let mut chain = Chain {
        head,
        ..Chain::default()
    };
    let fail = |error, chain: Chain| {
        Err(BadChain {
            error,
            partial: chain,
        })
    };
    if head >= size {
        return fail(ChainError::HeadOutOfRange { head, size }, chain);
    }
    let mut index = head;
    let mut seen: u32 = 0;
    let mut bytes: u64 = 0;
    loop {
        seen += 1;
        if seen > u32::from(size) {
            return fail(ChainError::TooLong { size }, chain);
        }
        let Some(desc) = table
            .0
            .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
            .and_then(|at| mem.read_obj::<Descriptor>(GuestAddress(at)).ok())
        else {
            return fail(ChainError::TableUnreadable { index }, chain);
        };
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            if !indirect {
                return fail(ChainError::Indirect { index }, chain);
            }
            let bad = |why| ChainError::BadIndirect { index, why };
            let len = desc.len();
            let entries = u64::from(len) / DESCRIPTOR_SIZE;
            if in_table {
                return fail(bad("inside an indirect table"), chain);
            }
            if flags & VRING_DESC_F_NEXT != 0 {
                return fail(bad("NEXT is set too"), chain);
            }
            if len == 0 || u64::from(len) % DESCRIPTOR_SIZE != 0 || entries > 32768 {
                return fail(bad("not 1 to 32768 whole descriptors"), chain);
            }
            if !mem.check_range(desc.addr(), len as usize) {
                let error = ChainError::OutsideMemory {
                    index,
                    addr: desc.addr().0,
                    len,
                };
                return fail(error, chain);
            }
            (table, size) = (desc.addr(), entries as u16);
            in_table = true;
            index = 0;
            seen = 0;
            continue;
        }
        let len = desc.len();
        if len > 0 {
            let addr = desc.addr();
            if !mem.check_range(addr, len as usize) {
                let error = ChainError::OutsideMemory {
                    index,
                    addr: addr.0,
                    len,
                };
                return fail(error, chain);
            }
            bytes += u64::from(len);
            if bytes > limit {
                return fail(ChainError::TooLarge { limit }, chain);
            }
            let segment = Segment { addr, len };
            if flags & VRING_DESC_F_WRITE != 0 {
                chain.writable.push(segment);
            } else if chain.writable.is_empty() {
                chain.readable.push(segment);
            } else {
                return fail(ChainError::ReadableAfterWritable { index }, chain);
            }
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        let next = desc.next();
        if next >= size {
            return fail(ChainError::NextOutOfRange { index, next, size }, chain);
        }
        index = next;
    }
}

/// The pieces of `segments` that cover bytes `offset .. offset + len` of
/// their stream. Stops early if the stream is shorter.
pub fn sub_segments(segments: &[Segment], offset: u64, len: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut want = len;
    for s in segments {
        if want == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(want);
        // Both fit: `skip < seg_len <= u32::MAX`, `take <= seg_len`.
        out.push(Segment {
            addr: GuestAddress(s.addr.0 + skip),
            len: take as u32,
        });
        want -= take;
        skip = 0;
    }
    out
}

/// A guest memory access through a chain's buffers failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chain buffers shorter than the access or outside guest memory")]
pub struct StreamError;

/// Fills `buf` from the stream of `segments` at `offset`.
pub fn read_stream(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), StreamError> {
    let mut at = 0usize;
    for s in sub_segments(segments, offset, buf.len() as u64) {
        let end = at + s.len as usize;
        mem.read_slice(&mut buf[at..end], s.addr)
            .map_err(|_| StreamError)?;
        at = end;
    }
    if at == buf.len() {
        Ok(())
    } else {
        Err(StreamError)
    }
}

/// Writes `data` into the stream of `segments` at `offset`.
pub fn write_stream(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    offset: u64,
    data: &[u8],
) -> Result<(), StreamError> {
    let mut at = 0usize;
    for s in sub_segments(segments, offset, data.len() as u64) {
        let end = at + s.len as usize;
        mem.write_slice(&data[at..end], s.addr)
            .map_err(|_| StreamError)?;
        at = end;
    }
    if at == data.len() {
        Ok(())
    } else {
        Err(StreamError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{desc, test_memory, DATA};

    const TABLE: GuestAddress = GuestAddress(0x1000);

    fn put(mem: &GuestMemoryMmap, index: u16, d: Descriptor) {
        mem.write_obj(d, TABLE.unchecked_add(u64::from(index) * DESCRIPTOR_SIZE))
            .unwrap();
    }

    use vm_memory::Address;

    #[test]
    fn reads_readable_then_writable_and_skips_empty_buffers() {
        let mem = test_memory();
        put(&mem, 0, desc(DATA, 16, VRING_DESC_F_NEXT, 3));
        put(&mem, 3, desc(DATA + 0x100, 0, VRING_DESC_F_NEXT, 5));
        put(
            &mem,
            5,
            desc(DATA + 0x200, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1),
        );
        put(&mem, 1, desc(DATA + 0x400, 1, VRING_DESC_F_WRITE, 0));
        let chain = read_chain(&mem, TABLE, 8, 0, 1 << 20).unwrap();
        assert_eq!(chain.readable.len(), 1);
        assert_eq!(chain.writable.len(), 2);
        assert_eq!((chain.readable_len(), chain.writable_len()), (16, 513));
    }

    /// An indirect table somewhere else in guest memory.
    const INDIRECT: GuestAddress = GuestAddress(0x3000);

    fn put_at(mem: &GuestMemoryMmap, table: GuestAddress, index: u16, d: Descriptor) {
        mem.write_obj(d, table.unchecked_add(u64::from(index) * DESCRIPTOR_SIZE))
            .unwrap();
    }

    /// A head that is an indirect descriptor (as Linux makes them), and a
    /// direct descriptor followed by one: the table's descriptors are the
    /// chain, linked within the table; the WRITE flag of the indirect
    /// descriptor itself is ignored.
    #[test]
    fn indirect_tables_continue_the_chain_when_accepted() {
        let mem = test_memory();
        put_at(&mem, INDIRECT, 0, desc(DATA, 40, VRING_DESC_F_NEXT, 2));
        put_at(
            &mem,
            INDIRECT,
            2,
            desc(DATA + 0x100, 16, VRING_DESC_F_WRITE, 0),
        );
        let flags = VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE;
        put(&mem, 0, desc(INDIRECT.0, 3 * 16, flags, 0));
        let chain = read_chain_with(&mem, TABLE, 8, 0, 1 << 20, true).unwrap();
        assert_eq!(chain.head, 0);
        assert_eq!((chain.readable_len(), chain.writable_len()), (40, 16));
        assert_eq!(chain.writable[0].addr, GuestAddress(DATA + 0x100));
        // Not accepted: the same chain is bad, as before.
        let bad = read_chain(&mem, TABLE, 8, 0, 1 << 20).unwrap_err();
        assert_eq!(bad.error, ChainError::Indirect { index: 0 });
        // A direct descriptor first, then the indirect one.
        put(&mem, 4, desc(DATA + 0x200, 8, VRING_DESC_F_NEXT, 5));
        put(&mem, 5, desc(INDIRECT.0, 3 * 16, VRING_DESC_F_INDIRECT, 0));
        let chain = read_chain_with(&mem, TABLE, 8, 4, 1 << 20, true).unwrap();
        assert_eq!((chain.readable_len(), chain.writable_len()), (48, 16));
        assert_eq!(chain.readable[0].addr, GuestAddress(DATA + 0x200));
    }

    /// What the spec forbids of an indirect descriptor, and a table that
    /// lies or loops, are bad chains, with what was walked kept.
    #[test]
    fn bad_indirect_tables_are_refused() {
        let mem = test_memory();
        let err = || read_chain_with(&mem, TABLE, 8, 0, 1 << 20, true).unwrap_err();
        let bad = |why| ChainError::BadIndirect { index: 0, why };
        // NEXT beside INDIRECT.
        let both = VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT;
        put(&mem, 0, desc(INDIRECT.0, 32, both, 1));
        assert_eq!(err().error, bad("NEXT is set too"));
        // Empty, or not whole descriptors.
        for len in [0, 20] {
            put(&mem, 0, desc(INDIRECT.0, len, VRING_DESC_F_INDIRECT, 0));
            assert_eq!(err().error, bad("not 1 to 32768 whole descriptors"));
        }
        // More than a queue can have.
        put(
            &mem,
            0,
            desc(INDIRECT.0, 32769 * 16, VRING_DESC_F_INDIRECT, 0),
        );
        assert_eq!(err().error, bad("not 1 to 32768 whole descriptors"));
        // A table outside guest memory.
        put(&mem, 0, desc(0xffff_ff00, 0x100, VRING_DESC_F_INDIRECT, 0));
        assert!(matches!(err().error, ChainError::OutsideMemory { .. }));
        // Indirect inside the table.
        put(&mem, 0, desc(INDIRECT.0, 32, VRING_DESC_F_INDIRECT, 0));
        put_at(&mem, INDIRECT, 0, desc(DATA, 8, VRING_DESC_F_NEXT, 1));
        put_at(
            &mem,
            INDIRECT,
            1,
            desc(INDIRECT.0, 32, VRING_DESC_F_INDIRECT, 0),
        );
        let nested = err();
        assert_eq!(
            nested.error,
            ChainError::BadIndirect {
                index: 1,
                why: "inside an indirect table"
            }
        );
        assert_eq!(nested.partial.readable_len(), 8);
        // A loop inside the table, and a link out of it.
        put_at(&mem, INDIRECT, 1, desc(DATA, 8, VRING_DESC_F_NEXT, 0));
        assert_eq!(err().error, ChainError::TooLong { size: 2 });
        put_at(&mem, INDIRECT, 1, desc(DATA, 8, VRING_DESC_F_NEXT, 2));
        assert_eq!(
            err().error,
            ChainError::NextOutOfRange {
                index: 1,
                next: 2,
                size: 2
            }
        );
    }

    #[test]
    fn a_loop_is_too_long() {
        let mem = test_memory();
        put(&mem, 0, desc(DATA, 16, VRING_DESC_F_NEXT, 1));
        put(&mem, 1, desc(DATA, 16, VRING_DESC_F_NEXT, 0));
        let bad = read_chain(&mem, TABLE, 8, 0, u64::MAX).unwrap_err();
        assert_eq!(bad.error, ChainError::TooLong { size: 8 });
        // Every descriptor seen was kept: the walk is bounded by the queue size.
        assert_eq!(bad.partial.readable.len(), 8);
    }

    #[test]
    fn indices_flags_memory_order_and_size_are_checked() {
        let mem = test_memory();
        let err = |head| read_chain(&mem, TABLE, 8, head, 4096).unwrap_err().error;
        assert_eq!(err(8), ChainError::HeadOutOfRange { head: 8, size: 8 });
        put(&mem, 0, desc(DATA, 16, VRING_DESC_F_NEXT, 9));
        assert_eq!(
            err(0),
            ChainError::NextOutOfRange {
                index: 0,
                next: 9,
                size: 8
            }
        );
        put(&mem, 0, desc(DATA, 16, VRING_DESC_F_INDIRECT, 0));
        assert_eq!(err(0), ChainError::Indirect { index: 0 });
        put(&mem, 0, desc(0xffff_fff0, 0x100, 0, 0));
        assert!(matches!(err(0), ChainError::OutsideMemory { .. }));
        put(&mem, 0, desc(u64::MAX - 4, 0x100, 0, 0));
        assert!(matches!(err(0), ChainError::OutsideMemory { .. }));
        put(
            &mem,
            0,
            desc(DATA, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
        );
        put(&mem, 1, desc(DATA, 16, 0, 0));
        assert_eq!(err(0), ChainError::ReadableAfterWritable { index: 1 });
        put(&mem, 0, desc(DATA, 4090, VRING_DESC_F_NEXT, 1));
        assert_eq!(err(0), ChainError::TooLarge { limit: 4096 });
        // A descriptor table outside memory.
        let far = read_chain(&mem, GuestAddress(u64::MAX - 8), 8, 1, 4096).unwrap_err();
        assert_eq!(far.error, ChainError::TableUnreadable { index: 1 });
    }

    #[test]
    fn streams_cross_buffer_boundaries() {
        let mem = test_memory();
        let segs = [
            Segment {
                addr: GuestAddress(DATA),
                len: 3,
            },
            Segment {
                addr: GuestAddress(DATA + 0x100),
                len: 5,
            },
        ];
        write_stream(&mem, &segs, 1, b"abcdef").unwrap();
        let mut buf = [0u8; 6];
        read_stream(&mem, &segs, 1, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdef");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(DATA + 0x100)).unwrap(),
            b'c'
        );
        assert_eq!(write_stream(&mem, &segs, 4, b"12345"), Err(StreamError));
        assert_eq!(sub_segments(&segs, 2, 2).len(), 2);
        assert!(sub_segments(&segs, 8, 2).is_empty());
    }
}
