//! How a VM run ends: the one exit/event model of the VMM, and the register
//! dump that comes with the abnormal endings.

use std::fmt;

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// The exit status `amphi vmm` ends with after
/// [`ExitReason::DeviceFailed`] (a device's host backend failed), distinct
/// from a guest's end (0), its death (1) and the host's stops.
pub const EXIT_DEVICE_FAILED: i32 = 3;

/// Why [`crate::Vm::run`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xFE, or a KVM reset event).
    Reset,
    /// The guest asked to power off (a KVM shutdown system event).
    Shutdown,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the guest is dead.
    TripleFault {
        /// Index of the vCPU.
        vcpu: usize,
        /// Its registers at the fault.
        registers: Box<RegisterDump>,
    },
    /// KVM could not emulate an instruction (internal error, emulation).
    EmulationFailure {
        /// Index of the vCPU.
        vcpu: usize,
        /// The instruction's bytes, when KVM reports them (may run past
        /// the instruction); empty otherwise.
        instruction: Vec<u8>,
        /// Its registers.
        registers: Box<RegisterDump>,
    },
    /// KVM gave up on the vCPU for another reason (internal error, failed
    /// entry, an exit this VMM does not handle).
    InternalError {
        /// Index of the vCPU.
        vcpu: usize,
        /// What KVM reported.
        detail: String,
        /// Its registers.
        registers: Box<RegisterDump>,
    },
    /// The host asked the VM to stop (see [`crate::StopHandle`]).
    HostStop,
    /// A device's host side failed for good: a vhost-user backend hung up
    /// or refused the setup. The guest's requests to it could never be
    /// answered, so the VM ends.
    DeviceFailed {
        /// The device, e.g. `virtio-fs(tag amphi, vhost-user socket /run/x/vfs.sock)`.
        device: String,
        /// What went wrong.
        detail: String,
    },
}

impl ExitReason {
    /// The registers, for the endings that carry them.
    pub fn registers(&self) -> Option<&RegisterDump> {
        match self {
            ExitReason::TripleFault { registers, .. }
            | ExitReason::EmulationFailure { registers, .. }
            | ExitReason::InternalError { registers, .. } => Some(registers),
            _ => None,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::Shutdown => write!(f, "guest shut down"),
            ExitReason::HostStop => write!(f, "stopped by the host"),
            ExitReason::DeviceFailed { device, detail } => {
                write!(f, "device failed: {device}: {detail}")
            }
            ExitReason::TripleFault { vcpu, registers } => {
                write!(f, "vCPU {vcpu} triple-faulted\n{registers}")
            }
            ExitReason::EmulationFailure {
                vcpu,
                instruction,
                registers,
            } => {
                write!(f, "vCPU {vcpu}: KVM instruction emulation failed")?;
                if !instruction.is_empty() {
                    write!(f, " (instruction bytes {instruction:02x?})")?;
                }
                write!(f, "\n{registers}")
            }
            ExitReason::InternalError {
                vcpu,
                detail,
                registers,
            } => write!(f, "vCPU {vcpu}: KVM internal error: {detail}\n{registers}"),
        }
    }
}

/// A segment register as the dump shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Type, S, DPL, P, AVL, L, D/B, G packed as in a descriptor's bits 40..56.
    pub attributes: u16,
}

impl From<&kvm_segment> for Segment {
    fn from(s: &kvm_segment) -> Self {
        let attributes = u16::from(s.type_ & 0xf)
            | u16::from(s.s & 1) << 4
            | u16::from(s.dpl & 3) << 5
            | u16::from(s.present & 1) << 7
            | u16::from(s.avl & 1) << 12
            | u16::from(s.l & 1) << 13
            | u16::from(s.db & 1) << 14
            | u16::from(s.g & 1) << 15;
        Segment {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
            attributes,
        }
    }
}

/// A vCPU's architectural state at an exit, for diagnosis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterDump {
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8..R15, in that order.
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// Control registers.
    pub cr0: u64,
    /// Page-fault address.
    pub cr2: u64,
    /// Page-table root.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// Task priority.
    pub cr8: u64,
    /// Extended feature enable register.
    pub efer: u64,
    /// APIC base MSR.
    pub apic_base: u64,
    /// CS, DS, ES, FS, GS, SS, TR, LDTR, in that order.
    pub segments: [Segment; 8],
    /// GDT (base, limit).
    pub gdt: (u64, u16),
    /// IDT (base, limit).
    pub idt: (u64, u16),
    /// Set when the registers could not be read; the rest is then zero.
    pub unavailable: Option<String>,
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const SEGMENT_NAMES: [&str; 8] = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"];

impl RegisterDump {
    /// Builds a dump from KVM's register structures.
    pub fn from_kvm(r: &kvm_regs, s: &kvm_sregs) -> Self {
        let table = |t: &kvm_dtable| (t.base, t.limit);
        RegisterDump {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            segments: [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt].map(Segment::from),
            gdt: table(&s.gdt),
            idt: table(&s.idt),
            unavailable: None,
        }
    }

    /// Reads the registers of `vcpu`; never fails (a failure is recorded).
    pub fn from_vcpu(vcpu: &VcpuFd) -> Self {
        match (vcpu.get_regs(), vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => Self::from_kvm(&r, &s),
            (r, s) => RegisterDump {
                unavailable: Some(format!(
                    "KVM_GET_REGS: {:?}, KVM_GET_SREGS: {:?}",
                    r.err(),
                    s.err()
                )),
                ..Default::default()
            },
        }
    }

    /// RSP.
    pub fn rsp(&self) -> u64 {
        self.gprs[7]
    }

    /// CS.
    pub fn cs(&self) -> Segment {
        self.segments[0]
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.unavailable {
            return write!(f, "  registers unavailable: {why}");
        }
        writeln!(
            f,
            "  rip {:016x}  rsp {:016x}  rflags {:08x}",
            self.rip,
            self.rsp(),
            self.rflags
        )?;
        for (row, names) in GPR_NAMES.chunks(4).enumerate() {
            write!(f, " ")?;
            for (i, name) in names.iter().enumerate() {
                write!(f, " {name:>3} {:016x}", self.gprs[row * 4 + i])?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "  cr0 {:016x}  cr2 {:016x}  cr3 {:016x}  cr4 {:016x}",
            self.cr0, self.cr2, self.cr3, self.cr4
        )?;
        writeln!(
            f,
            "  cr8 {:016x}  efer {:016x}  apic_base {:016x}",
            self.cr8, self.efer, self.apic_base
        )?;
        for (name, s) in SEGMENT_NAMES.iter().zip(&self.segments) {
            writeln!(
                f,
                "  {name:>3} {:04x} base {:016x} limit {:08x} attr {:04x}",
                s.selector, s.base, s.limit, s.attributes
            )?;
        }
        write!(
            f,
            "  gdt {:016x}/{:04x}  idt {:016x}/{:04x}",
            self.gdt.0, self.gdt.1, self.idt.0, self.idt.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_is_readable() {
        let regs = kvm_regs {
            rip: 0x10_0000,
            rsp: 0x8ff0,
            rax: 0xdead,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr0: 0x8000_0031,
            efer: 0x500,
            ..Default::default()
        };
        sregs.cs.selector = 0x10;
        sregs.cs.l = 1;
        let dump = RegisterDump::from_kvm(&regs, &sregs);
        assert_eq!(dump.cs().attributes, 1 << 13);
        let text = dump.to_string();
        assert!(text.contains("rip 0000000000100000"), "{text}");
        assert!(text.contains("rsp 0000000000008ff0"), "{text}");
        assert!(text.contains("rax 000000000000dead"), "{text}");
        assert!(text.contains("cr0 0000000080000031"), "{text}");
        assert!(text.contains("efer 0000000000000500"), "{text}");
        assert!(text.contains(" cs 0010"), "{text}");
        let exit = ExitReason::TripleFault {
            vcpu: 1,
            registers: Box::new(dump),
        };
        assert!(exit.to_string().starts_with("vCPU 1 triple-faulted\n"));
        assert!(exit.registers().is_some());
        assert!(ExitReason::Reset.registers().is_none());
    }
}
