//! Loading a Linux kernel, its initrd and command line into guest memory,
//! through linux-loader, and choosing the boot protocol ([`BootChoice`]):
//!
//! - ELF vmlinux of Linux (it carries Linux's own ELF notes): the Linux
//!   64-bit boot protocol at `e_entry`, RSI = zero page, even when it also
//!   has a PVH entry note. Linux entered through PVH first looks for Xen:
//!   it reads 256 hypervisor CPUID leaves (0x40000000 to 0x4000ff00), each
//!   a VM exit, before anything else; the 64-bit entry skips that search
//!   (measured in the nested lab: 680 CPUID exits per boot become 424).
//! - Any other ELF with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`), or
//!   any ELF with it under [`BootChoice::Pvh`]: PVH, 32-bit protected
//!   mode, paging off, EBX = `hvm_start_info`.
//! - Other ELF: Linux 64-bit boot protocol at `e_entry`, RSI = zero page.
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
use crate::elf;
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

/// Which boot protocol to use for a kernel (`amphi-vmm --boot`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootChoice {
    /// Linux's 64-bit entry for a Linux kernel, PVH for another ELF with a
    /// PVH note (see the module documentation).
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol whatever the image has.
    Linux,
    /// PVH; the image must be an ELF with a PVH entry note.
    Pvh,
}

impl std::str::FromStr for BootChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(BootChoice::Auto),
            "linux" => Ok(BootChoice::Linux),
            "pvh" => Ok(BootChoice::Pvh),
            _ => Err(format!(
                "unknown boot protocol {s:?} (possible values: auto, linux, pvh)"
            )),
        }
    }
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

/// What kind of image was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageKind {
    /// An ELF; `linux`: it has an ELF note of Linux's own.
    Elf {
        linux: bool,
    },
    BzImage,
}

/// Loads the kernel image at `path`; returns the loader's result and what
/// the image was.
fn load_image(mem: &GuestMemoryMmap, path: &Path) -> Result<(KernelLoaderResult, ImageKind)> {
    let mut file = open("kernel", path)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| load_err(path, format!("reading the header: {e}")))?;
    if &magic == b"\x7fELF" {
        let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| load_err(path, format!("as ELF vmlinux: {e}")))?;
        // The ELF is well formed (linux-loader read its headers and notes).
        let linux = has_linux_note(&file)
            .map_err(|e| load_err(path, format!("reading its ELF notes: {e}")))?;
        Ok((loaded, ImageKind::Elf { linux }))
    } else {
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map(|r| (r, ImageKind::BzImage))
            .map_err(|e| load_err(path, format!("as bzImage: {e}")))
    }
}

/// The largest note segment read when looking for Linux's notes (Linux's
/// own `.notes` is well under a page).
const MAX_NOTES: u64 = 64 << 10;

/// Whether an ELF64 file has an ELF note owned by "Linux" (every Linux
/// vmlinux since 4.19 carries its build salt as one), in its `PT_NOTE`
/// segments.
fn has_linux_note(file: &File) -> std::io::Result<bool> {
    let segments = elf::contents(file, elf::Table::Segments, elf::PT_NOTE, MAX_NOTES)?;
    Ok(segments
        .unwrap_or_default()
        .iter()
        .any(|notes| notes_have_owner(notes, b"Linux")))
}

/// Whether a note segment holds a note whose name is `owner`.
fn notes_have_owner(notes: &[u8], owner: &[u8]) -> bool {
    // The name is NUL-terminated and counted with its NUL.
    elf::notes(notes).any(|n| n.name.strip_suffix(b"\0") == Some(owner))
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
    boot: BootChoice,
) -> Result<BootInfo> {
    let (loaded, image) = load_image(mem, kernel)?;
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

    let pvh = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    // The PVH entry, when the kernel is to be entered through it.
    let pvh_entry = match (boot, image, pvh) {
        (BootChoice::Pvh, _, None) => {
            return Err(load_err(
                kernel,
                "--boot pvh: the image has no PVH entry (an ELF note XEN_ELFNOTE_PHYS32_ENTRY)",
            ))
        }
        (BootChoice::Pvh, _, entry)
        | (BootChoice::Auto, ImageKind::Elf { linux: false }, entry) => entry,
        _ => None,
    };
    let (protocol, entry) = match (image, pvh_entry) {
        (_, Some(addr)) => {
            let start_info = write_pvh_start_info(mem, initrd, &e820)?;
            let mut entry = EntryPoint::new(CpuMode::Protected32, addr);
            entry.rbx = start_info;
            (BootProtocol::Pvh, entry)
        }
        (ImageKind::Elf { .. }, None) => {
            let params = zero_page(None, cmdline_size, initrd, &e820)?;
            let mut entry = EntryPoint::new(CpuMode::Long, loaded.kernel_load.0);
            entry.rsi = write_zero_page(mem, &params)?;
            entry.rsp = BOOT_STACK_POINTER;
            (BootProtocol::Linux64Elf, entry)
        }
        (ImageKind::BzImage, None) => {
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

    /// A minimal ELF64 with `hlt`s at 1 MiB (its `e_entry`), a PVH entry
    /// note with `pvh_entry`, and with `linux` a note owned by "Linux" (as
    /// Linux's build salt is).
    fn tiny_elf(pvh_entry: Option<u32>, linux: bool) -> Vec<u8> {
        let code = [0xf4u8; 16]; // hlt
        let mut note = Vec::new();
        if linux {
            note.extend_from_slice(&6u32.to_le_bytes()); // namesz "Linux\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&0x100u32.to_le_bytes()); // LINUX_ELFNOTE_BUILD_SALT
            note.extend_from_slice(b"Linux\0\0\0"); // padded to 4
            note.extend_from_slice(&0u32.to_le_bytes());
        }
        if let Some(entry) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&0x12u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&entry.to_le_bytes());
        }
        let phnum: u16 = if note.is_empty() { 1 } else { 2 };
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
        if !note.is_empty() {
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
        let kernel = write_temp(&tiny_elf(Some(0x10_0004), false));
        let initrd = write_temp(b"initrd!");
        let info = load_linux(
            &mem,
            mem_bytes,
            kernel.path(),
            Some(initrd.path()),
            "console=ttyS0",
            BootChoice::Auto,
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
        let kernel = write_temp(&tiny_elf(None, false));
        let info = load_linux(
            &mem,
            mem_bytes,
            kernel.path(),
            None,
            "quiet",
            BootChoice::Auto,
        )
        .unwrap();
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
        let err =
            load_linux(&mem, 16 << 20, kernel.path(), None, "", BootChoice::Auto).unwrap_err();
        assert!(matches!(err, VmmError::KernelLoad { .. }), "{err}");
        assert!(err.to_string().contains("bzImage"), "{err}");
    }

    /// The protocol `boot` picks for `elf`.
    fn protocol(elf: &[u8], boot: BootChoice) -> Result<BootInfo> {
        let mem_bytes = 16 << 20;
        let mem = create_guest_memory(mem_bytes).unwrap();
        let kernel = write_temp(elf);
        load_linux(&mem, mem_bytes, kernel.path(), None, "quiet", boot)
    }

    #[test]
    fn a_linux_vmlinux_boots_64bit_though_it_has_a_pvh_note() {
        let linux = tiny_elf(Some(0x10_0004), true);
        let info = protocol(&linux, BootChoice::Auto).unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64Elf);
        assert_eq!(
            (info.entry.mode, info.entry.rip),
            (CpuMode::Long, 0x10_0000)
        );
        assert_eq!(info.entry.rsi, crate::arch::x86_64::layout::ZERO_PAGE_ADDR);
        // Asked for, PVH it is.
        let info = protocol(&linux, BootChoice::Pvh).unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        assert_eq!(
            (info.entry.mode, info.entry.rip),
            (CpuMode::Protected32, 0x10_0004)
        );
    }

    #[test]
    fn boot_linux_and_boot_pvh_override_auto() {
        let other = tiny_elf(Some(0x10_0004), false);
        assert_eq!(
            protocol(&other, BootChoice::Linux).unwrap().protocol,
            BootProtocol::Linux64Elf
        );
        let err = protocol(&tiny_elf(None, true), BootChoice::Pvh).unwrap_err();
        assert!(matches!(err, VmmError::KernelLoad { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("--boot pvh: the image has no PVH entry"),
            "{err}"
        );
        // Without a PVH note a Linux ELF is entered at e_entry, as before.
        assert_eq!(
            protocol(&tiny_elf(None, true), BootChoice::Auto)
                .unwrap()
                .protocol,
            BootProtocol::Linux64Elf
        );
    }

    #[test]
    fn note_owners_are_read_within_bounds() {
        let note = |namesz: u32, name: &[u8], descsz: u32, desc: &[u8]| {
            let mut n = Vec::new();
            n.extend(namesz.to_le_bytes());
            n.extend(descsz.to_le_bytes());
            n.extend(1u32.to_le_bytes());
            n.extend(name);
            n.extend(desc);
            n
        };
        let xen = note(4, b"Xen\0", 4, &[0; 4]);
        let linux = note(6, b"Linux\0\0\0", 1, &[0; 4]);
        assert!(notes_have_owner(
            &[xen.clone(), linux.clone()].concat(),
            b"Linux"
        ));
        assert!(!notes_have_owner(&xen, b"Linux"));
        assert!(!notes_have_owner(&note(6, b"Linux\0\0\0", 0, &[]), b"Xen"));
        // A name without its NUL, or "Linux" as a prefix, is not it.
        assert!(!notes_have_owner(
            &note(5, b"Linux\0\0\0", 0, &[]),
            b"Linux"
        ));
        assert!(!notes_have_owner(&note(8, b"LinuxXY\0", 0, &[]), b"Linux"));
        // Sizes running past the segment end the walk, never panic.
        assert!(!notes_have_owner(
            &note(u32::MAX, b"Linux\0\0\0", 0, &[]),
            b"Linux"
        ));
        let mut huge_desc = note(4, b"Xen\0", u32::MAX, &[]);
        huge_desc.extend(&linux);
        assert!(!notes_have_owner(&huge_desc, b"Linux"));
        assert!(!notes_have_owner(&[1, 2, 3], b"Linux"));
        assert!(!notes_have_owner(&[], b"Linux"));
    }
}
