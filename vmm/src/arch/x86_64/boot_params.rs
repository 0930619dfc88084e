//! Boot information handed to a Linux kernel: the zero page (`boot_params`)
//! for the 64-bit boot protocol and `hvm_start_info` for PVH. Both carry the
//! command line, the initrd and the e820 map; both are written through
//! linux-loader's boot configurators.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::layout::{
    CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, ZERO_PAGE_ADDR,
};
use crate::error::{Result, VmmError};
use crate::memory::{E820Entry, GuestMemoryMmap};

/// `boot_flag` magic of a valid setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS": the setup header magic.
const HDR_MAGIC: u32 = 0x5372_6448;
/// type_of_loader: "undefined" boot loader.
const LOADER_TYPE_OTHER: u8 = 0xff;
/// Default kernel alignment when the header does not say (16 MiB).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// PVH start_info magic ("xEn3" with the top bit flipped).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// Room reserved for the PVH memory map entries.
const PVH_MEMMAP_MAX: usize = ((PVH_MODLIST_ADDR - PVH_MEMMAP_ADDR) / 24) as usize;

/// Where an initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The zero page for the Linux 64-bit boot protocol. `header` is the setup
/// header from a bzImage; `None` (an ELF vmlinux) synthesizes one.
pub fn zero_page(
    header: Option<setup_header>,
    cmdline_size: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<boot_params> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDR_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(VmmError::Boot(format!(
            "{} e820 entries is too many",
            e820.len()
        )));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`]; returns its address (for RSI).
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<u64> {
    let boot = BootParams::new(params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams(&boot, mem)
        .map_err(|e| VmmError::Boot(format!("writing the zero page: {e}")))?;
    Ok(ZERO_PAGE_ADDR)
}

/// Writes `hvm_start_info`, its memory map and module list (the initrd) for
/// a PVH boot; returns the start_info address (for EBX).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
) -> Result<u64> {
    if e820.len() > PVH_MEMMAP_MAX {
        return Err(VmmError::Boot(format!(
            "{} memory map entries is too many",
            e820.len()
        )));
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut boot = if let Some(initrd) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
        let mut boot = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        boot.set_modules(&[module], GuestAddress(PVH_MODLIST_ADDR));
        boot
    } else {
        BootParams::new(&info, GuestAddress(PVH_INFO_ADDR))
    };
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&boot, mem)
        .map_err(|e| VmmError::Boot(format!("writing PVH start_info: {e}")))?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, e820_map};
    use vm_memory::Bytes;

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let e820 = e820_map(64 << 20);
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let params = zero_page(None, 42, Some(initrd), &e820).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries as usize, e820.len());
        let last = params.e820_table[e820.len() - 1];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, 63 << 20, 1)
        );

        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(write_zero_page(&mem, &params).unwrap(), ZERO_PAGE_ADDR);
        let magic: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x202)).unwrap();
        assert_eq!(magic, HDR_MAGIC);
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1e8)).unwrap();
        assert_eq!(entries as usize, e820.len());
    }

    #[test]
    fn pvh_start_info_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let e820 = e820_map(64 << 20);
        let initrd = InitrdPlacement {
            addr: 0x200_0000,
            size: 0x4000,
        };
        let addr = write_pvh_start_info(&mem, Some(initrd), &e820).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        assert_eq!(info.memmap_entries as usize, e820.len());
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 0x4000));
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));
        assert!(PVH_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64 <= PVH_MEMMAP_ADDR);
    }
}
