//! Identity page tables for 64-bit entry.
//!
//! One PML4, one PDPT and four page directories of 2 MiB pages map the first
//! 4 GiB of guest physical memory 1:1, MMIO hole included, so a guest (or the
//! Linux 64-bit boot protocol) can reach its kernel, boot structures, initrd
//! below 4 GiB, and the IOAPIC/LAPIC without building tables of its own.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::error::{Result, VmmError};
use crate::memory::GuestMemoryMmap;

/// Present + writable.
const PRESENT_RW: u64 = 0x3;
/// Page-size bit in a page-directory entry: the entry maps a 2 MiB page.
const PAGE_SIZE_2M: u64 = 0x80;
/// Number of page directories, i.e. GiB identity mapped.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

// The tables stay below the first 64 KiB, clear of the command line.
const _: () = assert!(PD_ADDR + IDENTITY_MAPPED_GIB * 0x1000 <= 0x10000);

/// Writes the identity page tables; returns the value for CR3.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64> {
    let err = |e: vm_memory::GuestMemoryError| VmmError::Boot(format!("page tables: {e}"));
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))
        .map_err(err)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT_ADDR + gib * 8))
            .map_err(err)?;
        let mut entries = [0u64; 512];
        for (i, entry) in entries.iter_mut().enumerate() {
            let phys = (gib << 30) | ((i as u64) << 21);
            *entry = phys | PAGE_SIZE_2M | PRESENT_RW;
        }
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd)).map_err(err)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    /// Walks the tables the way the MMU would for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |addr: u64| mem.read_obj::<u64>(GuestAddress(addr)).unwrap();
        let pml4e = read(cr3 + ((va >> 39) & 0x1ff) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8);
        if pde & 1 == 0 {
            return None;
        }
        assert_eq!(pde & PAGE_SIZE_2M, PAGE_SIZE_2M);
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_the_first_four_gib() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        for va in [
            0,
            0x1000,
            0x10_0000,
            0x3fff_ffff,
            0xc000_0000,
            0xfee0_0030,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
