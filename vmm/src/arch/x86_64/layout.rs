//! Where things live in guest physical memory (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (a handful of entries)         0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info + memory map    0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack pointer                 0x0000_9000  PML4, then PDPT, 4 PDs
//! 0x0002_0000  kernel command line                0x0009_fc00  EBDA: MP table
//! 0x0010_0000  kernel (1 MiB)  ...  initrd at the top of low RAM
//! 0xc000_0000 .. 0x1_0000_0000  32-bit MMIO hole: virtio-mmio windows from 0xd000_0000
//!                                (4 KiB each), IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above the hole, when the VM has more than 3 GiB
//! ```

/// Guest address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest address of the (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// Guest address of the PVH `hvm_start_info` structure.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Guest address of the PVH memory map (right after `hvm_start_info`).
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Guest address of the PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6800;
/// Guest address of the Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for 64-bit boot.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest address of the top-level page table (PML4).
pub const PML4_ADDR: u64 = 0x9000;
/// Guest address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Guest address of the first of the page directories (one per GiB identity mapped).
pub const PD_ADDR: u64 = 0xb000;
/// Guest address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line, including the NUL (x86 Linux's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy ISA hole: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio register window; device `n` is at `+ n * 0x1000`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Number of IOAPIC pins (GSIs 0 to 23), all routed in the MP table.
pub const IOAPIC_PINS: u8 = 24;
/// First GSI for virtio devices (one each, upwards; below are the legacy
/// ISA devices: timer, keyboard, cascade, COM2, COM1).
pub const VIRTIO_GSI_FIRST: u32 = 5;
/// Last GSI for virtio devices (the IOAPIC's last pin).
pub const VIRTIO_GSI_LAST: u32 = IOAPIC_PINS as u32 - 1;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS on Intel (inside the hole).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM needs for the real-mode identity map on Intel (inside the hole).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
