//! Model-specific registers set before a vCPU first runs.
//!
//! The syscall/sysenter MSRs start cleared, fast strings are enabled, and the
//! MTRR default type is write-back so a guest that trusts MTRRs does not run
//! its RAM uncached. KVM may refuse an MSR it does not emulate (PVM refuses
//! some): that is logged and the boot goes on, since none is essential.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::error::{kvm_err, Result, VmmError};

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// IA32_MTRR_DEF_TYPE.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// STAR (syscall segment selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR (64-bit syscall entry).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR (compat syscall entry).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SFMASK (syscall RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE (swapgs).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast-string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRR_DEF_TYPE: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values, in the order they are written.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Writes the boot MSRs; returns the indices KVM refused.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<Vec<u32>> {
    let mut refused = Vec::new();
    let mut pending = boot_msr_entries();
    while !pending.is_empty() {
        let msrs = Msrs::from_entries(&pending)
            .map_err(|e| VmmError::Config(format!("MSR table: {e:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        // KVM stops at the first MSR it refuses: note it, go on after it.
        match pending.get(written) {
            Some(bad) => {
                tracing::debug!(
                    msr = format_args!("{:#x}", bad.index),
                    "KVM refused boot MSR"
                );
                refused.push(bad.index);
                pending.drain(..=written);
            }
            None => break,
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_are_unique_and_enable_write_back() {
        let entries = boot_msr_entries();
        let mut indices: Vec<u32> = entries.iter().map(|e| e.index).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), entries.len());
        let mtrr = entries
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data & 0xff, 6);
        assert_ne!(mtrr.data & (1 << 11), 0);
    }
}
