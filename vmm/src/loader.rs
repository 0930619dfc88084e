//! Loading a Linux kernel, its initrd and command line into guest memory,
//! through linux-loader, and choosing the boot protocol:
//!
//! - ELF vmlinux with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`): PVH,
//!   32-bit protected mode, paging off, EBX = `hvm_start_info`.
//! - ELF vmlinux without one: Linux 64-bit boot protocol at `e_entry`,
//!   RSI = zero page.
//! - bzImage: Linux 64-bit boot protocol at the 64-bit entry (load address
//!   + 0x200), RSI = zero page built from the image's setup header.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::boot_params::{
    write_pvh_start_info, write_zero_page, zero_page, InitrdPlacement,
};
use crate::arch::x86_64::layout::{
    BOOT_STACK_POINTER, CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START,
};
use crate::arch::x86_64::regs::{CpuMode, EntryPoint};
use crate::error::{Result, VmmError};
use crate::memory::{e820_map, low_ram_end, GuestMemoryMmap};

/// Offset of the 64-bit entry point from a bzImage's load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE: u64 = 4096;

/// How the kernel will be entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode with `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol with a zero page (ELF vmlinux).
    Linux64Elf,
    /// Linux 64-bit boot protocol with a zero page (bzImage).
    Linux64BzImage,
}

/// The result of loading a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Protocol chosen.
    pub protocol: BootProtocol,
    /// Boot processor entry.
    pub entry: EntryPoint,
    /// First byte after the kernel image in guest memory.
    pub kernel_end: u64,
    /// Where the initrd went, if any.
    pub initrd: Option<InitrdPlacement>,
}

fn load_err(path: &Path, detail: impl std::fmt::Display) -> VmmError {
    VmmError::KernelLoad {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn open(what: &'static str, path: &Path) -> Result<File> {
    File::open(path).map_err(|source| VmmError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the kernel image at `path`; returns the loader's result and whether
/// it was an ELF.
fn load_image(mem: &GuestMemoryMmap, path: &Path) -> Result<(KernelLoaderResult, bool)> {
    let mut file = open("kernel", path)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| load_err(path, format!("reading the header: {e}")))?;
    let is_elf = &magic == b"\x7fELF";
    let result = if is_elf {
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    } else {
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
    };
    let kind = if is_elf { "ELF vmlinux" } else { "bzImage" };
    result
        .map(|r| (r, is_elf))
        .map_err(|e| load_err(path, format!("as {kind}: {e}")))
}

/// Places the initrd at the highest page-aligned address below the end of
/// low RAM (and below `max_addr`) that leaves the kernel alone.
pub fn place_initrd(size: u64, kernel_end: u64, ram_end: u64, max_addr: u64) -> Option<u64> {
    let top = ram_end.min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE - 1);
    (addr >= kernel_end.next_multiple_of(PAGE)).then_some(addr)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_bytes: u64,
    max_addr: u64,
) -> Result<InitrdPlacement> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| VmmError::File {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let addr =
        place_initrd(size, kernel_end, low_ram_end(mem_bytes), max_addr).ok_or_else(|| {
            VmmError::Config(format!(
                "initrd {} ({size} bytes) does not fit in guest RAM below {:#x} after the kernel; \
             give the VM more memory",
                path.display(),
                low_ram_end(mem_bytes).min(max_addr)
            ))
        })?;
    let len = usize::try_from(size).map_err(|_| VmmError::Config("initrd too large".into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| VmmError::Memory(format!("reading initrd {}: {e}", path.display())))?;
    Ok(InitrdPlacement { addr, size })
}

/// Loads kernel, initrd and command line, writes the boot structures, and
/// returns how the boot processor must be started.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootInfo> {
    let (loaded, is_elf) = load_image(mem, kernel)?;
    let kernel_end = loaded.kernel_end;

    let cmdline = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE)
        .map_err(|e| VmmError::Config(format!("kernel command line: {e}")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| VmmError::Boot(format!("writing the command line: {e}")))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .map_err(|e| VmmError::Config(format!("kernel command line: {e}")))?;

    let max_initrd = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(u64::from(u32::MAX));
    let initrd = initrd
        .map(|p| load_initrd(mem, p, kernel_end, mem_bytes, max_initrd))
        .transpose()?;
    let e820 = e820_map(mem_bytes);

    let (protocol, entry) = match (is_elf, loaded.pvh_boot_cap) {
        (true, PvhBootCapability::PvhEntryPresent(addr)) => {
            let start_info = write_pvh_start_info(mem, initrd, &e820)?;
            let mut entry = EntryPoint::new(CpuMode::Protected32, addr.0);
            entry.rbx = start_info;
            (BootProtocol::Pvh, entry)
        }
        (true, _) => {
            let params = zero_page(None, cmdline_size, initrd, &e820)?;
            let mut entry = EntryPoint::new(CpuMode::Long, loaded.kernel_load.0);
            entry.rsi = write_zero_page(mem, &params)?;
            entry.rsp = BOOT_STACK_POINTER;
            (BootProtocol::Linux64Elf, entry)
        }
        (false, _) => {
            let params = zero_page(loaded.setup_header, cmdline_size, initrd, &e820)?;
            let rip = loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET;
            let mut entry = EntryPoint::new(CpuMode::Long, rip);
            entry.rsi = write_zero_page(mem, &params)?;
            entry.rsp = BOOT_STACK_POINTER;
            (BootProtocol::Linux64BzImage, entry)
        }
    };
    Ok(BootInfo {
        protocol,
        entry,
        kernel_end,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let addr = place_initrd(0x1801, 0x20_0000, 0x400_0000, u64::from(u32::MAX)).unwrap();
        assert_eq!(addr, 0x400_0000 - 0x2000);
        assert_eq!(addr % PAGE, 0);
        // initrd_addr_max lower than RAM wins.
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 0x400_0000, 0x2ff_ffff),
            Some(0x2ff_f000)
        );
        // Would overlap the kernel.
        assert_eq!(
            place_initrd(0x3f0_0000, 0x20_0001, 0x400_0000, u64::MAX),
            None
        );
        assert_eq!(place_initrd(0x500_0000, 0, 0x400_0000, u64::MAX), None);
    }

    /// A minimal ELF64 executable with one PT_LOAD at 1 MiB and, optionally,
    /// a PVH entry note.
    fn tiny_elf(pvh_entry: Option<u32>) -> Vec<u8> {
        let code = [0xf4u8; 16]; // hlt
        let mut note = Vec::new();
        if let Some(entry) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&0x12u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let code_off = 64 + 56 * u64::from(phnum);
        let note_off = code_off + code.len() as u64;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little-endian
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        let phdr = |kind: u32, off: u64, addr: u64, size: u64, align: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&addr.to_le_bytes());
            p[24..32].copy_from_slice(&addr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            p[48..56].copy_from_slice(&align.to_le_bytes());
            p
        };
        out.extend(phdr(1, code_off, 0x10_0000, code.len() as u64, 0x1000));
        if pvh_entry.is_some() {
            out.extend(phdr(4, note_off, 0, note.len() as u64, 4));
        }
        out.extend_from_slice(&code);
        out.extend_from_slice(&note);
        out
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn elf_with_pvh_note_boots_pvh() {
        let mem_bytes = 32 << 20;
        let mem = create_guest_memory(mem_bytes).unwrap();
        let kernel = write_temp(&tiny_elf(Some(0x10_0004)));
        let initrd = write_temp(b"initrd!");
        let info = load_linux(
            &mem,
            mem_bytes,
            kernel.path(),
            Some(initrd.path()),
            "console=ttyS0",
        )
        .unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(info.entry.mode, CpuMode::Protected32);
        assert_eq!(info.entry.rip, 0x10_0004);
        assert_eq!(info.entry.rbx, crate::arch::x86_64::layout::PVH_INFO_ADDR);
        let placed = info.initrd.unwrap();
        assert_eq!(placed.size, 7);
        let mut buf = [0u8; 7];
        mem.read_slice(&mut buf, GuestAddress(placed.addr)).unwrap();
        assert_eq!(&buf, b"initrd!");
        let mut cmd = [0u8; 14];
        mem.read_slice(&mut cmd, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0\0");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xf4);
    }

    #[test]
    fn elf_without_note_boots_64bit() {
        let mem_bytes = 16 << 20;
        let mem = create_guest_memory(mem_bytes).unwrap();
        let kernel = write_temp(&tiny_elf(None));
        let info = load_linux(&mem, mem_bytes, kernel.path(), None, "quiet").unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64Elf);
        assert_eq!(
            (info.entry.mode, info.entry.rip),
            (CpuMode::Long, 0x10_0000)
        );
        assert_eq!(info.entry.rsi, crate::arch::x86_64::layout::ZERO_PAGE_ADDR);
        let cmd_size: u32 = mem.read_obj(GuestAddress(info.entry.rsi + 0x238)).unwrap();
        assert_eq!(cmd_size, 6);
    }

    #[test]
    fn garbage_is_a_load_error() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let kernel = write_temp(&[0u8; 4096]);
        let err = load_linux(&mem, 16 << 20, kernel.path(), None, "").unwrap_err();
        assert!(matches!(err, VmmError::KernelLoad { .. }), "{err}");
        assert!(err.to_string().contains("bzImage"), "{err}");
    }
}
