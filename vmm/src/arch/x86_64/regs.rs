//! Initial vCPU register state for each way into a guest: 16-bit real mode,
//! 32-bit flat protected mode (the PVH ABI) and 64-bit long mode (the Linux
//! 64-bit boot protocol), plus the FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{boot_gdt, segment_from_entry, GdtMode};
use super::layout::{GDT_ADDR, IDT_ADDR};
use super::paging::write_identity_tables;
use crate::error::{kvm_err, Result, VmmError};
use crate::memory::GuestMemoryMmap;

/// CR0: protected mode enable.
pub const CR0_PE: u64 = 1;
/// CR0: extension type (always 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const CR0_NE: u64 = 1 << 5;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

/// The CPU mode a vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// 16-bit real mode. `rip` must be below 1 MiB; CS is derived from it.
    Real,
    /// 32-bit protected mode, flat segments, paging off (PVH entry).
    Protected32,
    /// 64-bit long mode with the first 4 GiB identity mapped.
    Long,
}

/// Where and how a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// CPU mode at entry.
    pub mode: CpuMode,
    /// Instruction pointer (a guest physical address: no paging or identity).
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// RSI at entry (the zero page for the Linux 64-bit boot protocol).
    pub rsi: u64,
    /// RBX at entry (the start_info for PVH).
    pub rbx: u64,
}

impl EntryPoint {
    /// Entry at `rip` in `mode` with a zero stack and argument registers.
    pub fn new(mode: CpuMode, rip: u64) -> Self {
        EntryPoint {
            mode,
            rip,
            rsp: 0,
            rsi: 0,
            rbx: 0,
        }
    }
}

/// Real-mode CS and IP reaching linear address `addr` (below 1 MiB).
pub fn real_mode_cs_ip(addr: u64) -> Result<(u16, u16)> {
    if addr >= 0x10_0000 {
        return Err(VmmError::Boot(format!(
            "real-mode entry {addr:#x} is above 1 MiB"
        )));
    }
    let cs = ((addr >> 4) & 0xf000) as u16;
    Ok((cs, (addr - (u64::from(cs) << 4)) as u16))
}

/// General-purpose registers for `entry`.
pub fn entry_regs(entry: &EntryPoint) -> Result<kvm_regs> {
    let rip = match entry.mode {
        CpuMode::Real => u64::from(real_mode_cs_ip(entry.rip)?.1),
        _ => entry.rip,
    };
    Ok(kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rsi: entry.rsi,
        rbx: entry.rbx,
        ..Default::default()
    })
}

fn real_mode_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: u64::from(selector) << 4,
        limit: 0xffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        s: 1,
        ..Default::default()
    }
}

/// Fills `sregs` for `mode`, writing the GDT, IDT and (for long mode) page
/// tables into guest memory. `sregs` should come from `KVM_GET_SREGS` so the
/// fields this does not touch (APIC base, ...) keep KVM's values.
pub fn fill_sregs(
    mem: &GuestMemoryMmap,
    mode: CpuMode,
    rip: u64,
    sregs: &mut kvm_sregs,
) -> Result<()> {
    if mode == CpuMode::Real {
        let (cs, _) = real_mode_cs_ip(rip)?;
        sregs.cs = real_mode_segment(cs, true);
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            *seg = real_mode_segment(0, false);
        }
        sregs.cr0 = CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
        return Ok(());
    }

    let gdt = boot_gdt(if mode == CpuMode::Long {
        GdtMode::Long
    } else {
        GdtMode::Protected32
    });
    let err = |e: vm_memory::GuestMemoryError| VmmError::Boot(format!("GDT/IDT: {e}"));
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(err)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(err)?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    // An empty IDT: any exception before the guest installs its own
    // escalates to a triple fault, which we report.
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;

    sregs.cs = segment_from_entry(gdt[2], 2);
    let data = segment_from_entry(gdt[3], 3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_entry(gdt[4], 4);

    if mode == CpuMode::Long {
        sregs.cr3 = write_identity_tables(mem)?;
        sregs.cr4 = CR4_PAE;
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE;
        sregs.efer = 0;
    }
    Ok(())
}

/// Sets the vCPU's registers for `entry`.
pub fn setup_entry(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: &EntryPoint) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    fill_sregs(mem, entry.mode, entry.rip, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&entry_regs(entry)?)
        .map_err(kvm_err("KVM_SET_REGS"))
}

/// Resets the FPU to its power-on control words.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn real_mode_split() {
        assert_eq!(real_mode_cs_ip(0x1000).unwrap(), (0, 0x1000));
        assert_eq!(real_mode_cs_ip(0x9_1234).unwrap(), (0x9000, 0x1234));
        assert!(real_mode_cs_ip(0x10_0000).is_err());
    }

    #[test]
    fn long_mode_sregs() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let mut sregs = kvm_sregs::default();
        fill_sregs(&mem, CpuMode::Long, 0x10000, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cr3, super::super::layout::PML4_ADDR);
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 16)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn protected_mode_sregs_have_paging_off() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let mut sregs = kvm_sregs::default();
        fill_sregs(&mem, CpuMode::Protected32, 0x10000, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & CR0_PG, 0);
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.efer), (1, 0, 0));
    }
}
