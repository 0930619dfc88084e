//! The CPUID a vCPU sees: KVM's supported set, filtered.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, each vCPU gets
//! - its APIC ID (leaf 1 EBX, leaf 0xB EDX, AMD leaf 0x8000001E EAX),
//! - a topology of one socket with `vcpus` single-threaded cores
//!   (leaf 1 logical count + HTT, leaf 4 core count, leaf 0xB levels,
//!   AMD leaf 0x80000008 NC),
//! - the hypervisor bit,
//! - and none of what a guest must not see: VMX/SVM (no nested
//!   virtualization), SMX, SGX, MONITOR/MWAIT, thermal and power management,
//!   debug store and the architectural PMU.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::error::{Result, VmmError};

/// The CPU vendor, from leaf 0's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD.
    Amd,
    /// Anything else.
    Other,
}

/// Reads the vendor from the leaf-0 entry.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == 0) {
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e) => {
            Vendor::Intel
        }
        Some(e) if (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) => Vendor::Amd,
        _ => Vendor::Other,
    }
}

// Leaf 1 ECX.
const ECX_DTES64: u32 = 1 << 2;
const ECX_MONITOR: u32 = 1 << 3;
const ECX_DS_CPL: u32 = 1 << 4;
const ECX_VMX: u32 = 1 << 5;
const ECX_SMX: u32 = 1 << 6;
const ECX_EIST: u32 = 1 << 7;
const ECX_TM2: u32 = 1 << 8;
const ECX_PDCM: u32 = 1 << 15;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_DS: u32 = 1 << 21;
const EDX_ACPI: u32 = 1 << 22;
const EDX_HTT: u32 = 1 << 28;
const EDX_TM: u32 = 1 << 29;
const EDX_PBE: u32 = 1 << 31;
// Leaf 6 EAX: always-running APIC timer, the only power bit worth keeping.
const EAX_ARAT: u32 = 1 << 2;
// Leaf 7.0.
const EBX_SGX: u32 = 1 << 2;
const EBX_INTEL_PT: u32 = 1 << 25;
const ECX_WAITPKG: u32 = 1 << 5;
const ECX_SGX_LC: u32 = 1 << 30;
// Leaf 0x80000001 ECX.
const ECX_SVM: u32 = 1 << 2;
// Leaf 0xB level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items (`ceil(log2(n))`).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Filters KVM's supported CPUID `entries` for the vCPU with `apic_id` in a
/// VM of `vcpus` vCPUs.
pub fn filter_entries(
    supported: &[kvm_cpuid_entry2],
    apic_id: u8,
    vcpus: u8,
) -> Vec<kvm_cpuid_entry2> {
    let vendor = vendor(supported);
    let max_basic = supported
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let count = u32::from(vcpus.max(1));
    let id = u32::from(apic_id);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 3);
    for entry in supported {
        let mut e = *entry;
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                e.ecx &= !(ECX_DTES64 | ECX_MONITOR | ECX_DS_CPL | ECX_VMX | ECX_SMX);
                e.ecx &= !(ECX_EIST | ECX_TM2 | ECX_PDCM);
                e.ecx |= ECX_HYPERVISOR;
                e.edx &= !(EDX_DS | EDX_ACPI | EDX_TM | EDX_PBE);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            0x5 => e.eax = 0, // MONITOR/MWAIT parameters: hidden with the feature.
            0x6 => {
                e.eax &= EAX_ARAT;
                (e.ebx, e.ecx, e.edx) = (0, 0, 0);
            }
            0x7 if e.index == 0 => {
                e.ebx &= !(EBX_SGX | EBX_INTEL_PT);
                e.ecx &= !(ECX_WAITPKG | ECX_SGX_LC);
            }
            0xa | 0x12 | 0x14 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            // Replaced by the topology below.
            0xb => continue,
            0x8000_0001 => e.ecx &= !ECX_SVM,
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(count) << 12) | (count - 1);
            }
            0x8000_000a => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = id;
                e.ebx = id & 0xff; // compute unit = core, one thread each
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
        out.push(e);
    }
    if max_basic >= 0xb {
        let core_shift = bits_for(count);
        out.push(leaf(0xb, 0, [0, 1, LEVEL_SMT << 8, id]));
        out.push(leaf(0xb, 1, [core_shift, count, (LEVEL_CORE << 8) | 1, id]));
        out.push(leaf(0xb, 2, [0, 0, 2, id]));
    }
    out
}

/// The CPUID for one vCPU, ready for `KVM_SET_CPUID2`.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u8, vcpus: u8) -> Result<CpuId> {
    let entries = filter_entries(supported.as_slice(), apic_id, vcpus);
    CpuId::from_entries(&entries).map_err(|e| VmmError::Config(format!("CPUID table: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn intel() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(
                1,
                0,
                [
                    0x906ea,
                    0x0000_0800,
                    ECX_VMX | ECX_MONITOR | 1,
                    0x078b_fbff | EDX_PBE,
                ],
            ),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(6, 0, [0x77, 2, 9, 0]),
            entry(0xa, 0, [0x0760_3104, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 0]),
            entry(0x8000_0001, 0, [0, 0, ECX_SVM | 1, 0]),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn vendor_is_read_from_leaf_zero() {
        assert_eq!(vendor(&intel()), Vendor::Intel);
        let amd = [entry(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65])];
        assert_eq!(vendor(&amd), Vendor::Amd);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let out = filter_entries(&intel(), 3, 4);
        let l1 = find(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (ECX_VMX | ECX_MONITOR), 0);
        assert_eq!(l1.ecx & 1, 1, "SSE3 kept");
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.edx & EDX_PBE, 0);
        let single = find(&filter_entries(&intel(), 0, 1), 1, 0);
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_0xb_is_rebuilt_per_vcpu() {
        let out = filter_entries(&intel(), 2, 3);
        assert_eq!(out.iter().filter(|e| e.function == 0xb).count(), 3);
        let smt = find(&out, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&out, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&out, 0xb, 2);
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 2));
        assert!(out
            .iter()
            .filter(|e| e.function == 0xb)
            .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0));
    }

    #[test]
    fn hidden_features_are_masked() {
        let out = filter_entries(&intel(), 0, 2);
        assert_eq!(find(&out, 0xa, 0).eax, 0, "no architectural PMU");
        assert_eq!(find(&out, 6, 0).eax, EAX_ARAT & 0x77);
        assert_eq!(find(&out, 0x8000_0001, 0).ecx, 1, "SVM hidden, rest kept");
        let l4 = find(&out, 4, 3);
        assert_eq!(l4.eax >> 26, 1, "two cores per package");
        assert_eq!((l4.eax >> 14) & 0xfff, 1, "L3 shared by both");
        assert_eq!(
            (find(&out, 4, 0).eax >> 14) & 0xfff,
            0,
            "L1 private to a core"
        );
    }

    #[test]
    fn amd_topology_leaves() {
        let amd = vec![
            entry(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7001, 0]),
            entry(0x8000_001e, 0, [0, 0, 0, 0]),
        ];
        let out = filter_entries(&amd, 1, 2);
        let l = find(&out, 0x8000_0008, 0);
        assert_eq!((l.ecx & 0xff, (l.ecx >> 12) & 0xf), (1, 1));
        assert_eq!(find(&out, 0x8000_001e, 0).eax, 1);
        assert_eq!(find(&out, 0xb, 1).edx, 1, "x2APIC ID in the topology leaf");
    }
}
