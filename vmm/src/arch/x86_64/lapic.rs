//! Local APIC setup: LINT0 as ExtINT (the 8259 PIC's output, virtual wire
//! mode) and LINT1 as NMI, as an MP-spec BIOS leaves them.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::error::{kvm_err, Result};

/// Offset of the LVT LINT0 register in the APIC page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the APIC page.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode: external interrupt (from the PIC).
pub const DELIVERY_EXTINT: u32 = 0x7;
/// Delivery mode: non-maskable interrupt.
pub const DELIVERY_NMI: u32 = 0x4;

fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// Replaces the delivery-mode field (bits 8..11) of an LVT entry.
pub fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 = ExtINT and LINT1 = NMI in `state`.
pub fn set_lint_modes(state: &mut kvm_lapic_state) {
    let lint0 = with_delivery_mode(get_reg(state, APIC_LVT0), DELIVERY_EXTINT);
    let lint1 = with_delivery_mode(get_reg(state, APIC_LVT1), DELIVERY_NMI);
    set_reg(state, APIC_LVT0, lint0);
    set_reg(state, APIC_LVT1, lint1);
}

/// Reads the vCPU's in-kernel LAPIC, sets the LINT modes, writes it back.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut state = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    set_lint_modes(&mut state);
    vcpu.set_lapic(&state).map_err(kvm_err("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_keep_other_bits() {
        let mut state = kvm_lapic_state::default();
        set_reg(&mut state, APIC_LVT0, 0x0001_0000); // masked
        set_reg(&mut state, APIC_LVT1, 0x0001_0700);
        set_lint_modes(&mut state);
        assert_eq!(get_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&state, APIC_LVT1), 0x0001_0400);
    }
}
