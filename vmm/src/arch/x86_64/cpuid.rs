//! The CPUID a vCPU sees: KVM's supported set, filtered.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, each vCPU gets
//! - its APIC ID (leaf 1 EBX, leaf 0xB EDX, AMD leaf 0x8000001E EAX),
//! - a topology of one socket with `vcpus` single-threaded cores
//!   (leaf 1 logical count + HTT, leaf 4 core count, leaf 0xB levels,
//!   AMD leaf 0x80000008 NC),
//! - the hypervisor bit,
//! - the guest's timer and clock ([`GuestTiming`]): the TSC deadline timer
//!   (leaf 1 ECX bit 24) when KVM emulates it, and the TSC frequency in
//!   the hypervisor timing leaf 0x4000_0010 when KVM knows it, so that a
//!   Linux guest neither calibrates its local APIC timer against the PIT
//!   nor runs the IO-APIC timer check,
//! - an XSAVE leaf 0xD that agrees with itself: only state components whose
//!   subleaf describes them, sizes computed from those subleaves, and EBX
//!   sized for the XCR0 the vCPU starts with ([`guest_xcr0`], set by
//!   `KVM_SET_XCRS`, see [`crate::vcpu`]),
//! - where KVM's table leaves them empty, the host's brand string
//!   (0x8000_0002..4) and, on AMD, its cache and TLB descriptors
//!   (0x8000_0005/6) ([`HostLeaves`]),
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
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_XSAVE: u32 = 1 << 26;
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
// Leaf 0xD: the legacy XSAVE area (512) and the XSAVE header (64) come
// before every extended component.
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;
// XCR0 bits 0 (x87) and 1 (SSE) live in the legacy area, not in subleaves.
const XCR0_LEGACY: u64 = 0b11;
// Leaf 0xD.1 EAX: XSAVEC and XSAVES (the compacted format).
const EAX_XSAVEC: u32 = 1 << 1;
const EAX_XSAVES: u32 = 1 << 3;
// Leaf 0xD.n ECX: bit 0 supervisor state (IA32_XSS), bit 1 64-byte aligned
// in the compacted format.
const ECX_XSS_COMPONENT: u32 = 1 << 0;
const ECX_ALIGN64: u32 = 1 << 1;
// Leaf 0x80000001 ECX.
const ECX_SVM: u32 = 1 << 2;
// The hypervisor leaves: 0x4000_0000 holds the highest hypervisor leaf in
// EAX and the signature in EBX, ECX, EDX; KVM's is "KVMKVMKVM\0\0\0".
const HYPERVISOR_BASE: u32 = 0x4000_0000;
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
// The timing leaf (first defined by VMware, also read by guests on other
// hypervisors): EAX the TSC frequency, EBX the local APIC timer's (bus)
// frequency, both in kHz.
const HYPERVISOR_TIMING: u32 = 0x4000_0010;
// KVM's local APIC timer counts nanoseconds: a 1 GHz bus (in kHz).
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;
// Leaf 0xB level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// What the guest is told about its timer and clock, from KVM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestTiming {
    /// KVM emulates the local APIC's TSC deadline mode
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`, with the in-kernel irqchip).
    pub tsc_deadline: bool,
    /// The vCPU's TSC frequency (`KVM_GET_TSC_KHZ`), if KVM knows it.
    pub tsc_khz: Option<u32>,
}

/// The host's own CPUID leaves a guest gets where KVM's table has them
/// empty (all four registers zero): the brand string (0x8000_0002..4;
/// PVM offers none, and a Linux guest then calls its CPU "AMD 17/01") and
/// the L1 and L2 cache and TLB descriptors (0x8000_0005/6, used on AMD
/// only; KVM before Linux 6.2, e.g. the nested lab's level 1, zeroes
/// 0x8000_0005, and a guest then reports no 2M TLB entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostLeaves {
    /// 0x8000_0002, 0x8000_0003, 0x8000_0004.
    pub brand: [[u32; 4]; 3],
    /// 0x8000_0005, 0x8000_0006.
    pub cache_tlb: [[u32; 4]; 2],
}

impl HostLeaves {
    /// Reads them with the CPUID instruction (zeros beyond the host's
    /// highest extended leaf).
    pub fn read() -> HostLeaves {
        let leaf = |function: u32| {
            // SAFETY: CPUID exists on every x86_64 CPU and only reads. (A safe
            // function from Rust 1.94 on; the workspace supports 1.85.)
            #[allow(unused_unsafe)]
            let r = unsafe { std::arch::x86_64::__cpuid(function) };
            [r.eax, r.ebx, r.ecx, r.edx]
        };
        let max_extended = leaf(0x8000_0000)[0];
        let get = |function: u32| {
            if max_extended >= function {
                leaf(function)
            } else {
                [0; 4]
            }
        };
        HostLeaves {
            brand: [get(0x8000_0002), get(0x8000_0003), get(0x8000_0004)],
            cache_tlb: [get(0x8000_0005), get(0x8000_0006)],
        }
    }
}

/// Fills entry `e` with `regs` if KVM left it empty.
fn fill_if_empty(e: &mut kvm_cpuid_entry2, regs: [u32; 4]) {
    if [e.eax, e.ebx, e.ecx, e.edx] == [0; 4] {
        [e.eax, e.ebx, e.ecx, e.edx] = regs;
    }
}

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

/// One XSAVE state component as leaf 0xD subleaf `n` describes it.
#[derive(Clone, Copy, Debug)]
struct XsaveComponent {
    bit: u32,
    size: u32,
    /// Offset in the standard (non-compacted) format.
    offset: u32,
    supervisor: bool,
    align64: bool,
}

/// The extended XSAVE components (n >= 2) that have a subleaf with a size.
fn xsave_components(entries: &[kvm_cpuid_entry2]) -> Vec<XsaveComponent> {
    let mut found: Vec<XsaveComponent> = entries
        .iter()
        .filter(|e| e.function == 0xd && (2..64).contains(&e.index) && e.eax != 0)
        .map(|e| XsaveComponent {
            bit: e.index,
            size: e.eax,
            offset: e.ebx,
            supervisor: e.ecx & ECX_XSS_COMPONENT != 0,
            align64: e.ecx & ECX_ALIGN64 != 0,
        })
        .collect();
    found.sort_by_key(|c| c.bit);
    found.dedup_by_key(|c| c.bit);
    found
}

/// Bytes of a standard-format XSAVE area holding the components in `mask`.
fn xsave_size(components: &[XsaveComponent], mask: u64) -> u32 {
    components
        .iter()
        .filter(|c| mask & (1 << c.bit) != 0)
        .map(|c| c.offset.saturating_add(c.size))
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max)
}

/// Bytes of a compacted-format XSAVE area (XSAVEC/XSAVES) for `mask`.
fn xsave_compacted_size(components: &[XsaveComponent], mask: u64) -> u32 {
    components
        .iter()
        .filter(|c| mask & (1 << c.bit) != 0)
        .fold(XSAVE_LEGACY_AND_HEADER, |at, c| {
            let at = if c.align64 {
                at.next_multiple_of(64)
            } else {
                at
            };
            at.saturating_add(c.size)
        })
}

/// The XCR0 a vCPU with these (filtered) CPUID `entries` may enable and
/// starts with: leaf 0xD.0 EDX:EAX, or 0 without XSAVE.
pub fn guest_xcr0(entries: &[kvm_cpuid_entry2]) -> u64 {
    let xsave = entries
        .iter()
        .any(|e| e.function == 1 && e.ecx & ECX_XSAVE != 0);
    if !xsave {
        return 0;
    }
    entries
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32))
}

/// Makes leaf 0xD agree with itself. `supported` holds KVM's entries.
///
/// - Subleaf 0 EDX:EAX (the XCR0 bits a guest may set) keeps x87 and SSE
///   and each user component that has a subleaf with a size.
/// - Subleaf 0 ECX (the area for every such component) and EBX (the area
///   for the components enabled in XCR0 now) are computed from those
///   subleaves. The vCPU starts with all of them enabled
///   ([`guest_xcr0`]), so EBX = ECX. KVM recomputes EBX when the guest
///   writes XCR0 with XSETBV, but only if that write exits to KVM: under
///   nested TCG (QEMU's emulated SVM) it does not, and with EBX left at
///   KVM's reset value (XCR0 = x87 only, 576 bytes) Linux reports "XSAVE
///   consistency problem" and turns XSAVE off.
/// - Subleaf 1 EBX (compacted size for XCR0 | IA32_XSS) likewise, when
///   XSAVEC or XSAVES is offered.
/// - Subleaves of user components that are not offered are dropped.
fn fix_xsave_leaf(supported: &[kvm_cpuid_entry2], out: &mut Vec<kvm_cpuid_entry2>) {
    let components = xsave_components(supported);
    let Some(sub0) = out.iter().position(|e| e.function == 0xd && e.index == 0) else {
        return;
    };
    let offered = u64::from(out[sub0].eax) | (u64::from(out[sub0].edx) << 32);
    let described = components
        .iter()
        .filter(|c| !c.supervisor)
        .fold(XCR0_LEGACY, |m, c| m | (1 << c.bit));
    let xcr0 = offered & described;
    let size = xsave_size(&components, xcr0);
    let e = &mut out[sub0];
    e.eax = xcr0 as u32;
    e.edx = (xcr0 >> 32) as u32;
    e.ebx = size;
    e.ecx = size;
    let mut xss = 0u64;
    if let Some(e) = out.iter_mut().find(|e| e.function == 0xd && e.index == 1) {
        xss = u64::from(e.ecx) | (u64::from(e.edx) << 32);
        if e.eax & (EAX_XSAVEC | EAX_XSAVES) != 0 {
            e.ebx = xsave_compacted_size(&components, xcr0 | xss);
        }
    }
    out.retain(|e| {
        e.function != 0xd || e.index < 2 || e.index >= 64 || (xcr0 | xss) & (1 << e.index) != 0
    });
}

/// Adds the timing leaf 0x4000_0010 (TSC and APIC bus frequency) when the
/// table has KVM's hypervisor leaves and the TSC frequency is known, and
/// raises the highest hypervisor leaf to it. Another hypervisor signature
/// (or none) is left alone: the leaf's meaning belongs to the signature.
fn add_timing_leaf(out: &mut Vec<kvm_cpuid_entry2>, tsc_khz: Option<u32>) {
    let Some(khz) = tsc_khz.filter(|&k| k > 0) else {
        return;
    };
    let Some(base) = out.iter_mut().find(|e| e.function == HYPERVISOR_BASE) else {
        return;
    };
    if [base.ebx, base.ecx, base.edx] != KVM_SIGNATURE {
        return;
    }
    base.eax = base.eax.max(HYPERVISOR_TIMING);
    out.retain(|e| e.function != HYPERVISOR_TIMING);
    out.push(kvm_cpuid_entry2 {
        function: HYPERVISOR_TIMING,
        eax: khz,
        ebx: KVM_APIC_BUS_KHZ,
        ..Default::default()
    });
}

/// Filters KVM's supported CPUID `entries` for the vCPU with `apic_id` in a
/// VM of `vcpus` vCPUs, with what `timing` says about its timer and clock
/// and the `host` leaves where KVM's are empty.
pub fn filter_entries(
    supported: &[kvm_cpuid_entry2],
    apic_id: u8,
    vcpus: u8,
    timing: &GuestTiming,
    host: &HostLeaves,
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
                // KVM leaves this bit to the VMM: set only where KVM
                // emulates the deadline MSR (some, e.g. PVM, offer it).
                if timing.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
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
            f @ 0x8000_0002..=0x8000_0004 => {
                fill_if_empty(&mut e, host.brand[(f - 0x8000_0002) as usize]);
            }
            f @ (0x8000_0005 | 0x8000_0006) if vendor == Vendor::Amd => {
                fill_if_empty(&mut e, host.cache_tlb[(f - 0x8000_0005) as usize]);
            }
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
    fix_xsave_leaf(supported, &mut out);
    add_timing_leaf(&mut out, timing.tsc_khz);
    out
}

/// The CPUID for one vCPU, ready for `KVM_SET_CPUID2`.
pub fn vcpu_cpuid(
    supported: &CpuId,
    apic_id: u8,
    vcpus: u8,
    timing: &GuestTiming,
    host: &HostLeaves,
) -> Result<CpuId> {
    let entries = filter_entries(supported.as_slice(), apic_id, vcpus, timing, host);
    CpuId::from_entries(&entries).map_err(|e| VmmError::Config(format!("CPUID table: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_HOST: HostLeaves = HostLeaves {
        brand: [[0; 4]; 3],
        cache_tlb: [[0; 4]; 2],
    };

    const NONE: GuestTiming = GuestTiming {
        tsc_deadline: false,
        tsc_khz: None,
    };

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
        let out = filter_entries(&intel(), 3, 4, &NONE, &NO_HOST);
        let l1 = find(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (ECX_VMX | ECX_MONITOR), 0);
        assert_eq!(l1.ecx & 1, 1, "SSE3 kept");
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.edx & EDX_PBE, 0);
        let single = find(&filter_entries(&intel(), 0, 1, &NONE, &NO_HOST), 1, 0);
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_0xb_is_rebuilt_per_vcpu() {
        let out = filter_entries(&intel(), 2, 3, &NONE, &NO_HOST);
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
        let out = filter_entries(&intel(), 0, 2, &NONE, &NO_HOST);
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
        let out = filter_entries(&amd, 1, 2, &NONE, &NO_HOST);
        let l = find(&out, 0x8000_0008, 0);
        assert_eq!((l.ecx & 0xff, (l.ecx >> 12) & 0xf), (1, 1));
        assert_eq!(find(&out, 0x8000_001e, 0).eax, 1);
        assert_eq!(find(&out, 0xb, 1).edx, 1, "x2APIC ID in the topology leaf");
    }
    /// Leaf 1 with XSAVE, and leaf 0xD as KVM reports it under QEMU's
    /// emulated EPYC (x87, SSE, AVX; EBX sized for XCR0 = x87 only).
    fn tcg_epyc_xsave() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, [0x800f12, 0, ECX_XSAVE, 0]),
            entry(0xd, 0, [0x7, 0x240, 0x340, 0]),
            entry(0xd, 1, [0x5, 0, 0, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
        ]
    }

    #[test]
    fn xsave_leaf_is_sized_for_the_starting_xcr0() {
        let out = filter_entries(&tcg_epyc_xsave(), 0, 1, &NONE, &NO_HOST);
        let sub0 = find(&out, 0xd, 0);
        assert_eq!(sub0.eax, 7);
        assert_eq!(sub0.ebx, 0x340, "x87+SSE+AVX: 576 + 256 bytes");
        assert_eq!(sub0.ecx, 0x340);
        assert_eq!(
            find(&out, 0xd, 1).ebx,
            0,
            "no XSAVEC/XSAVES: no compacted size"
        );
        assert_eq!(find(&out, 0xd, 2).eax, 0x100);
        assert_eq!(guest_xcr0(&out), 7);
    }

    #[test]
    fn xsave_components_without_a_subleaf_are_not_offered() {
        let mut table = tcg_epyc_xsave();
        // MPX (bits 3, 4) and PKRU (9) offered; only PKRU has a subleaf.
        table[2] = entry(0xd, 0, [0x7 | 0x18 | 0x200, 0x240, 0x1000, 0]);
        table.push(entry(0xd, 9, [8, 0x980, 0, 0]));
        table.push(entry(0xd, 5, [0x40, 0x340, 0, 0])); // opmask, not offered
        let out = filter_entries(&table, 0, 1, &NONE, &NO_HOST);
        let sub0 = find(&out, 0xd, 0);
        assert_eq!(sub0.eax, 0x207);
        assert_eq!((sub0.ebx, sub0.ecx), (0x988, 0x988));
        assert!(!out.iter().any(|e| e.function == 0xd && e.index == 5));
        assert_eq!(guest_xcr0(&out), 0x207);
    }

    #[test]
    fn compacted_xsave_size_follows_alignment() {
        let mut table = tcg_epyc_xsave();
        table[3] = entry(0xd, 1, [EAX_XSAVEC | EAX_XSAVES | 1, 0, 0x800, 0]);
        table[2] = entry(0xd, 0, [0x207, 0, 0, 0]);
        table.push(entry(0xd, 9, [8, 0x980, ECX_ALIGN64, 0]));
        table.push(entry(0xd, 11, [16, 0, ECX_XSS_COMPONENT, 0])); // CET user, in XSS
        let out = filter_entries(&table, 0, 1, &NONE, &NO_HOST);
        // 576 + 256 (AVX) = 832, PKRU aligned to 832 (already), + 8, CET + 16.
        assert_eq!(find(&out, 0xd, 1).ebx, 832 + 8 + 16);
        assert_eq!(
            find(&out, 0xd, 0).eax,
            0x207,
            "supervisor state not in XCR0"
        );
        assert_eq!(find(&out, 0xd, 11).eax, 16, "XSS subleaf kept");
    }

    fn kvm_leaves() -> Vec<kvm_cpuid_entry2> {
        let mut v = intel();
        v.push(entry(
            HYPERVISOR_BASE,
            0,
            [
                0x4000_0001,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
            ],
        ));
        v.push(entry(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]));
        v
    }

    #[test]
    fn tsc_deadline_bit_follows_kvm() {
        let on = GuestTiming {
            tsc_deadline: true,
            tsc_khz: None,
        };
        let l1 = find(&filter_entries(&intel(), 0, 1, &on, &NO_HOST), 1, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & 1, 1, "SSE3 kept");
        // Offered by KVM's table but without the capability: hidden.
        let mut table = intel();
        table[1].ecx |= ECX_TSC_DEADLINE;
        let l1 = find(&filter_entries(&table, 0, 1, &NONE, &NO_HOST), 1, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn timing_leaf_carries_the_tsc_frequency() {
        let timing = GuestTiming {
            tsc_deadline: true,
            tsc_khz: Some(2_994_373),
        };
        let out = filter_entries(&kvm_leaves(), 0, 1, &timing, &NO_HOST);
        assert_eq!(find(&out, HYPERVISOR_BASE, 0).eax, HYPERVISOR_TIMING);
        let t = find(&out, HYPERVISOR_TIMING, 0);
        assert_eq!((t.eax, t.ebx, t.ecx, t.edx), (2_994_373, 1_000_000, 0, 0));
        assert_eq!(t.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        assert_eq!(
            find(&out, 0x4000_0001, 0).eax,
            0x0100_7efb,
            "kvmclock features kept"
        );
        // Unknown frequency, or no KVM signature: no timing leaf.
        for (table, khz) in [
            (kvm_leaves(), None),
            (kvm_leaves(), Some(0)),
            (intel(), Some(1000)),
        ] {
            let timing = GuestTiming {
                tsc_deadline: false,
                tsc_khz: khz,
            };
            let out = filter_entries(&table, 0, 1, &timing, &NO_HOST);
            assert!(!out.iter().any(|e| e.function == HYPERVISOR_TIMING));
        }
        let mut other = kvm_leaves();
        other[8].ebx = 0x7263_694d; // "Micr"osoft
        let out = filter_entries(&other, 0, 1, &timing, &NO_HOST);
        assert!(!out.iter().any(|e| e.function == HYPERVISOR_TIMING));
        assert_eq!(find(&out, HYPERVISOR_BASE, 0).eax, 0x4000_0001);
    }

    #[test]
    fn empty_brand_and_amd_cache_leaves_come_from_the_host() {
        let host = HostLeaves {
            brand: [[0x2044_4d41, 0x4359_5045, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]],
            cache_tlb: [[0xff40_ff18, 9, 10, 11], [12, 13, 14, 15]],
        };
        let amd = vec![
            entry(0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(0x8000_0002, 0, [0; 4]),
            entry(0x8000_0003, 0, [0x11, 0, 0, 0]),
            entry(0x8000_0004, 0, [0; 4]),
            entry(0x8000_0005, 0, [0; 4]),
            entry(0x8000_0006, 0, [0x22, 0, 0, 0]),
        ];
        let out = filter_entries(&amd, 0, 1, &NONE, &host);
        let regs = |f| {
            let e = find(&out, f, 0);
            [e.eax, e.ebx, e.ecx, e.edx]
        };
        assert_eq!(regs(0x8000_0002), host.brand[0], "empty: the host's");
        assert_eq!(regs(0x8000_0003), [0x11, 0, 0, 0], "KVM's, not empty, kept");
        assert_eq!(regs(0x8000_0004), host.brand[2]);
        assert_eq!(regs(0x8000_0005), host.cache_tlb[0]);
        assert_eq!(regs(0x8000_0006), [0x22, 0, 0, 0]);
        // Not AMD: the cache leaves stay as KVM has them (the brand string
        // is filled for every vendor).
        let mut intel = amd.clone();
        intel[0] = entry(0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        let out = filter_entries(&intel, 0, 1, &NONE, &host);
        assert_eq!(find(&out, 0x8000_0005, 0).eax, 0);
        assert_eq!(find(&out, 0x8000_0002, 0).eax, host.brand[0][0]);
    }

    #[test]
    fn no_xsave_means_no_xcr0() {
        let mut table = tcg_epyc_xsave();
        table[1] = entry(1, 0, [0x800f12, 0, 0, 0]);
        assert_eq!(
            guest_xcr0(&filter_entries(&table, 0, 1, &NONE, &NO_HOST)),
            0
        );
    }
}
