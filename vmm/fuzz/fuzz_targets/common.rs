//! Guest memory for the fuzz targets: two 32 KiB regions with a hole
//! between them (0x8000..0x10000), filled from the input, so buffers can
//! fall in RAM, in the hole, or across its edges.

use amphi_vmm::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// The first region: 0..REGION.
pub const REGION: u64 = 0x8000;
/// The second region starts here, after the hole.
pub const SECOND: u64 = 0x10000;

/// The memory, its regions filled with `bytes` (then zeros).
pub fn memory(bytes: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(SECOND), REGION as usize),
    ])
    .expect("test memory");
    let (a, b) = bytes.split_at(bytes.len().min(REGION as usize));
    mem.write_slice(a, GuestAddress(0)).expect("first region");
    let b = &b[..b.len().min(REGION as usize)];
    mem.write_slice(b, GuestAddress(SECOND))
        .expect("second region");
    mem
}

/// Little-endian integers taken off the front of the input.
#[allow(dead_code)] // each target uses some
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}
