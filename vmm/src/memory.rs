//! Guest RAM: one anonymous, lazily backed mapping per RAM range, the x86
//! MMIO hole below 4 GiB left out, and the e820 map that describes it.
//!
//! `vm-memory`'s anonymous regions are `MAP_PRIVATE | MAP_NORESERVE`, so a
//! VM with 4 GiB of RAM costs only the pages the guest touches.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};
use crate::error::{kvm_err, Result, VmmError};

/// The guest's physical memory.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Smallest guest RAM we accept: the legacy area plus room for a kernel.
pub const MIN_MEM_BYTES: u64 = 2 << 20;

/// The RAM ranges `(start, length)` of a guest with `mem_bytes` of RAM:
/// RAM runs up to the MMIO hole and continues above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if mem_bytes > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), mem_bytes - MMIO_GAP_START));
    }
    ranges
}

/// Maps `mem_bytes` of guest RAM (not yet registered with KVM).
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap> {
    if mem_bytes < MIN_MEM_BYTES {
        return Err(VmmError::Config(format!(
            "guest memory {mem_bytes} bytes is below the minimum of {MIN_MEM_BYTES}"
        )));
    }
    let ranges = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (start, len))
                .map_err(|_| VmmError::Memory(format!("{len} bytes do not fit this host")))
        })
        .collect::<Result<Vec<_>>>()?;
    GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| VmmError::Memory(format!("mapping {mem_bytes} bytes of guest RAM: {e}")))
}

/// Registers every region of `memory` with KVM as a memory slot (slot = index).
pub fn register_with_kvm(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in memory.iter().enumerate() {
        let slot = u32::try_from(slot).map_err(|_| VmmError::Memory("too many regions".into()))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `memory`, which the
        // `Vm` keeps for as long as the VM fd (and so the slot) exists.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The type of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the guest must not use it as RAM.
    Reserved = 2,
}

/// One entry of the e820 memory map handed to the guest kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The e820 map of a guest with `mem_bytes` of RAM: low RAM up to the EBDA,
/// the legacy BIOS/VGA area reserved, RAM from 1 MiB up to the MMIO hole and
/// the remainder above 4 GiB.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    let low_end = mem_bytes.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// End of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_vm_has_one_range_and_three_e820_entries() {
        assert_eq!(ram_ranges(64 * MIB), vec![(GuestAddress(0), 64 * MIB)]);
        let map = e820_map(64 * MIB);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820Kind::Ram
            }
        );
        assert_eq!(map[1].kind, E820Kind::Reserved);
        assert_eq!(map[1].addr + map[1].size, HIMEM_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: HIMEM_START,
                size: 63 * MIB,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn large_vm_skips_the_mmio_hole() {
        let mem = 5 * GIB;
        assert_eq!(
            ram_ranges(mem),
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), 2 * GIB)]
        );
        let map = e820_map(mem);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: 2 * GIB,
                kind: E820Kind::Ram
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the legacy hole between the EBDA and 1 MiB is usable.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_entries_are_sorted_and_disjoint() {
        for mem in [2 * MIB, 3 * GIB, 3 * GIB + 4096, 9 * GIB] {
            let map = e820_map(mem);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{mem:#x}: {map:?}"
                );
            }
        }
    }

    #[test]
    fn guest_memory_is_lazily_backed_and_holed() {
        let mem = create_guest_memory(3 * GIB + 16 * MIB).unwrap();
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0xdead_beef_u32, GuestAddress(4 * GIB + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(4 * GIB + 8)).unwrap(),
            0xdead_beef
        );
        assert!(mem
            .read_obj::<u32>(GuestAddress(MMIO_GAP_START + 16))
            .is_err());
        assert!(create_guest_memory(MIB).is_err());
    }
}
