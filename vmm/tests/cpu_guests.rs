//! What a guest learns about its CPU, timer and clock, read back from a
//! tiny guest on the real /dev/kvm (hardware KVM or PVM): the CPUID leaves
//! a Linux guest reads before it decides to calibrate (the TSC deadline
//! bit, the hypervisor leaves with kvmclock and the TSC frequency, ARAT),
//! the TSC deadline timer itself, armed and read back through its MSR, and
//! the brand string and cache leaves filled from the host where KVM's are
//! empty.
//!
//! The expectations come from KVM, asked here directly (its capabilities,
//! its supported CPUID and a vCPU's TSC frequency), and from the host's own
//! CPUID instruction.
//!
//! Without /dev/kvm every test prints a loud `SKIP` line and returns
//! (fails in strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use amphi_vmm::{ExitReason, SerialBuffer, SerialOut, Vm, VmConfig};
use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

mod common;
use common::{kvm_or_skip, long_mode, run_guarded, CODE};

/// Where the guest finds how many leaves to query (u32), and the leaves.
const COUNT: u64 = 0x57fc;
const LEAVES: u64 = 0x5800;
/// Where it writes EAX, EBX, ECX, EDX of each leaf, in turn.
const RESULTS: u64 = 0x5000;
/// Where it writes the TSC deadline it armed (u64) and the one it read
/// back from the MSR (u64).
const DEADLINE: u64 = 0x5400;

/// Queries each leaf at `LEAVES` (subleaf 0) into `RESULTS`, then puts the
/// local APIC timer in TSC-deadline mode (masked, vector 0x40), writes
/// IA32_TSC_DEADLINE (0x6e0) 2^40 cycles ahead, reads it back, and resets.
#[rustfmt::skip]
const GUEST: [u8; 0x83] = [
    0xbe, 0x00, 0x58, 0x00, 0x00,             // mov esi, 0x5800
    0xbf, 0x00, 0x50, 0x00, 0x00,             // mov edi, 0x5000
    0x8b, 0x6e, 0xfc,                         // mov ebp, [rsi - 4]
    0x8b, 0x06,                               // 1: mov eax, [rsi]
    0x31, 0xc9,                               // xor ecx, ecx
    0x0f, 0xa2,                               // cpuid
    0x89, 0x07,                               // mov [rdi], eax
    0x89, 0x5f, 0x04,                         // mov [rdi + 4], ebx
    0x89, 0x4f, 0x08,                         // mov [rdi + 8], ecx
    0x89, 0x57, 0x0c,                         // mov [rdi + 12], edx
    0x48, 0x83, 0xc6, 0x04,                   // add rsi, 4
    0x48, 0x83, 0xc7, 0x10,                   // add rdi, 16
    0xff, 0xcd,                               // dec ebp
    0x75, 0xe3,                               // jnz 1b
    0x48, 0xbb, 0x00, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, // mov rbx, 0xfee00000 (LAPIC)
    0xc7, 0x83, 0x20, 0x03, 0x00, 0x00, 0x40, 0x00, 0x05, 0x00, // mov dword ptr [rbx + 0x320], 0x50040 (LVTT)
    0x0f, 0x31,                               // rdtsc
    0x48, 0xc1, 0xe2, 0x20,                   // shl rdx, 32
    0x48, 0x09, 0xd0,                         // or rax, rdx
    0x48, 0xba, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, // mov rdx, 1 << 40
    0x48, 0x01, 0xd0,                         // add rax, rdx
    0x48, 0x89, 0x04, 0x25, 0x00, 0x54, 0x00, 0x00, // mov [0x5400], rax
    0x48, 0x89, 0xc2,                         // mov rdx, rax
    0x48, 0xc1, 0xea, 0x20,                   // shr rdx, 32
    0xb9, 0xe0, 0x06, 0x00, 0x00,             // mov ecx, 0x6e0 (IA32_TSC_DEADLINE)
    0x0f, 0x30,                               // wrmsr
    0x31, 0xc0,                               // xor eax, eax
    0x31, 0xd2,                               // xor edx, edx
    0x0f, 0x32,                               // rdmsr
    0x89, 0x04, 0x25, 0x08, 0x54, 0x00, 0x00, // mov [0x5408], eax
    0x89, 0x14, 0x25, 0x0c, 0x54, 0x00, 0x00, // mov [0x540c], edx
    0xb0, 0xfe,                               // mov al, 0xfe
    0xe6, 0x64,                               // out 0x64, al
    0xf4,                                     // hlt
];

/// EAX, EBX, ECX, EDX as the guest saw them.
type Regs = [u32; 4];

/// What the guest saw: each leaf's registers, the deadline it armed and
/// the one it read back.
struct Seen {
    leaves: Vec<(u32, Regs)>,
    armed: u64,
    read_back: u64,
}

impl Seen {
    fn leaf(&self, function: u32) -> Regs {
        self.leaves
            .iter()
            .find(|(f, _)| *f == function)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("leaf {function:#x} was not queried"))
    }
}

/// Runs the guest on a 1-vCPU VM, querying `leaves`.
fn run_guest(leaves: &[u32]) -> Seen {
    let config = VmConfig {
        mem_mib: 16,
        vcpus: 1,
        serial: SerialOut::Buffer(SerialBuffer::new()),
        ..VmConfig::default()
    };
    let mut vm = Vm::new(&config).expect("creating the VM");
    let count = u32::try_from(leaves.len()).unwrap();
    vm.write_guest(COUNT, &count.to_le_bytes()).unwrap();
    let list: Vec<u8> = leaves.iter().flat_map(|l| l.to_le_bytes()).collect();
    vm.write_guest(LEAVES, &list).unwrap();
    vm.write_guest(CODE, &GUEST).unwrap();
    vm.set_vcpu_entry(0, &long_mode(CODE)).unwrap();
    let reason = run_guarded(&mut vm);
    assert_eq!(reason, ExitReason::Reset, "on {}: {reason}", vm.kvm_kind());
    let mut raw = vec![0u8; leaves.len() * 16];
    vm.read_guest(RESULTS, &mut raw).unwrap();
    let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    let seen = leaves
        .iter()
        .zip(raw.chunks_exact(16))
        .map(|(&f, b)| (f, [word(b, 0), word(b, 1), word(b, 2), word(b, 3)]))
        .collect();
    let mut deadline = [0u8; 16];
    vm.read_guest(DEADLINE, &mut deadline).unwrap();
    Seen {
        leaves: seen,
        armed: u64::from_le_bytes(deadline[..8].try_into().unwrap()),
        read_back: u64::from_le_bytes(deadline[8..].try_into().unwrap()),
    }
}

/// KVM's own answers: its TSC deadline capability, its supported CPUID
/// and a fresh vCPU's TSC frequency (None if KVM does not know it).
struct FromKvm {
    tsc_deadline: bool,
    supported: Vec<kvm_cpuid_entry2>,
    tsc_khz: Option<u32>,
}

fn ask_kvm() -> FromKvm {
    let kvm = Kvm::new().unwrap();
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .unwrap()
        .as_slice()
        .to_vec();
    let vm = kvm.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    FromKvm {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        supported,
        tsc_khz: vcpu.get_tsc_khz().ok().filter(|&k| k > 0),
    }
}

fn supported(kvm: &FromKvm, function: u32) -> Option<kvm_cpuid_entry2> {
    kvm.supported
        .iter()
        .find(|e| e.function == function && e.index == 0)
        .copied()
}

const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const TSC_DEADLINE: u32 = 1 << 24;
const HYPERVISOR: u32 = 1 << 31;
const ARAT: u32 = 1 << 2;

#[test]
fn guest_sees_the_tsc_deadline_timer_kvm_offers() {
    if !kvm_or_skip("guest_sees_the_tsc_deadline_timer_kvm_offers") {
        return;
    }
    let kvm = ask_kvm();
    let seen = run_guest(&[1, 6]);
    let leaf1 = seen.leaf(1);
    eprintln!(
        "KVM_CAP_TSC_DEADLINE_TIMER {}; guest leaf 1 ECX {:#x}; deadline armed {:#x}, read back {:#x}",
        kvm.tsc_deadline, leaf1[2], seen.armed, seen.read_back
    );
    assert_ne!(leaf1[2] & HYPERVISOR, 0, "the hypervisor bit");
    assert_eq!(
        leaf1[2] & TSC_DEADLINE != 0,
        kvm.tsc_deadline,
        "CPUID.1:ECX[24] (TSC deadline) must follow KVM_CAP_TSC_DEADLINE_TIMER"
    );
    // KVM keeps the LVTT's deadline mode (and so the MSR) only for a guest
    // whose CPUID has the bit: the timer works, not only the bit.
    assert_ne!(seen.armed, 0);
    if kvm.tsc_deadline {
        assert_eq!(
            seen.read_back, seen.armed,
            "IA32_TSC_DEADLINE read back from a timer in TSC-deadline mode"
        );
    } else {
        assert_eq!(seen.read_back, 0, "no deadline mode without the bit");
    }
    // ARAT (the APIC timer runs in deep C-states) as KVM offers it: with
    // the deadline bit it spares a Linux guest the PIT.
    if let Some(l6) = supported(&kvm, 6) {
        assert_eq!(seen.leaf(6)[0] & ARAT, l6.eax & ARAT, "leaf 6 ARAT");
    }
}

#[test]
fn guest_sees_kvmclock_and_the_tsc_frequency() {
    if !kvm_or_skip("guest_sees_kvmclock_and_the_tsc_frequency") {
        return;
    }
    let kvm = ask_kvm();
    let seen = run_guest(&[0x4000_0000, 0x4000_0001, 0x4000_0010]);
    let base = seen.leaf(0x4000_0000);
    eprintln!(
        "KVM_GET_TSC_KHZ {:?}; guest leaves 0x40000000 {base:#x?}, 0x40000010 {:#x?}",
        kvm.tsc_khz,
        seen.leaf(0x4000_0010)
    );
    let Some(kvm_base) = supported(&kvm, 0x4000_0000) else {
        panic!("KVM's supported CPUID has no hypervisor leaf 0x40000000");
    };
    assert_eq!(
        [kvm_base.ebx, kvm_base.ecx, kvm_base.edx],
        KVM_SIGNATURE,
        "KVM's own signature"
    );
    assert_eq!(&base[1..], &KVM_SIGNATURE, "the guest sees KVMKVMKVM");
    let features = supported(&kvm, 0x4000_0001).map_or(0, |e| e.eax);
    assert_eq!(
        seen.leaf(0x4000_0001)[0],
        features,
        "kvmclock and the other KVM features, as KVM offers them"
    );
    match kvm.tsc_khz {
        Some(khz) => {
            assert!(
                base[0] >= 0x4000_0010,
                "highest hypervisor leaf {:#x}",
                base[0]
            );
            assert_eq!(
                seen.leaf(0x4000_0010)[..2],
                [khz, 1_000_000],
                "TSC and APIC bus frequency (kHz)"
            );
        }
        None => assert_eq!(
            base[0], kvm_base.eax,
            "no timing leaf without a TSC frequency"
        ),
    }
}

/// The host's own CPUID (the VMM's process runs where the vCPU does).
fn host_cpuid(function: u32) -> Regs {
    // SAFETY: CPUID exists on every x86_64 CPU and only reads. (A safe
    // function from Rust 1.94 on; the workspace supports 1.85.)
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(function) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

#[test]
fn guest_sees_a_brand_string_and_cache_leaves() {
    if !kvm_or_skip("guest_sees_a_brand_string_and_cache_leaves") {
        return;
    }
    let kvm = ask_kvm();
    let leaves = [
        0x8000_0002,
        0x8000_0003,
        0x8000_0004,
        0x8000_0005,
        0x8000_0006,
    ];
    let seen = run_guest(&leaves);
    // "AuthenticAMD" in EBX, EDX, ECX.
    let amd = supported(&kvm, 0)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]);
    let host_max = host_cpuid(0x8000_0000)[0];
    for function in leaves {
        let from_kvm = supported(&kvm, function).map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
        let from_host = if host_max >= function {
            host_cpuid(function)
        } else {
            [0; 4]
        };
        let filled = function <= 0x8000_0004 || amd;
        let want = if filled && from_kvm == [0; 4] {
            from_host
        } else {
            from_kvm
        };
        assert_eq!(
            seen.leaf(function),
            want,
            "leaf {function:#x}: KVM has {from_kvm:#x?}, the host {from_host:#x?}"
        );
    }
    let brand: Vec<u8> = (0x8000_0002..=0x8000_0004)
        .flat_map(|f| seen.leaf(f))
        .flat_map(u32::to_le_bytes)
        .collect();
    let brand = String::from_utf8_lossy(&brand);
    eprintln!(
        "guest brand string: {:?}",
        brand.trim_end_matches('\0').trim()
    );
}
