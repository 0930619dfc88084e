//! One virtual CPU: its KVM fd, its setup, and the loop that runs it on its
//! own thread and turns KVM exits into device accesses or an [`ExitReason`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kvm_bindings::{
    kvm_mp_state, kvm_run, kvm_xcr, kvm_xcrs, CpuId, KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MP_STATE_RUNNABLE,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::regs::{setup_entry, setup_fpu, EntryPoint};
use crate::arch::x86_64::{cpuid, lapic, msr};
use crate::devices::{Bus, DeviceAction};
use crate::error::{kvm_err, Result, VmmError};
use crate::exit::{ExitReason, RegisterDump};
use crate::memory::GuestMemoryMmap;
use crate::stop::{KickTarget, StopState};

/// What the vCPU threads share: the buses and the stop flags.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) stop: Arc<StopState>,
    /// Set by the first vCPU to come back from `KVM_RUN`.
    pub(crate) first_exit: Arc<OnceLock<Instant>>,
    /// Set just before the first `KVM_RUN` of any vCPU.
    pub(crate) first_run: Arc<OnceLock<Instant>>,
}

/// How one vCPU's run ended.
pub(crate) enum VcpuOutcome {
    /// The VM ends for this reason.
    Exit(ExitReason),
    /// Another vCPU ended the run and this one was kicked out.
    Kicked,
}

/// A vCPU.
pub struct Vcpu {
    index: usize,
    fd: VcpuFd,
    run_size: usize,
    /// HLT exits seen (only possible without an in-kernel LAPIC); logged once.
    hlt_logged: bool,
}

impl Vcpu {
    /// Creates vCPU `index` (also its APIC ID).
    pub(crate) fn new(vm: &VmFd, index: usize) -> Result<Self> {
        let fd = vm
            .create_vcpu(index as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            index,
            fd,
            run_size: vm.run_size(),
            hlt_logged: false,
        })
    }

    /// Index of this vCPU (its APIC ID).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The KVM fd, for callers that need an ioctl this type does not wrap.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Sets CPUID, MSRs, FPU and LAPIC for a VM of `vcpus` vCPUs;
    /// `tsc_deadline`: KVM emulates the TSC deadline timer; `host`: the
    /// host's leaves for those KVM leaves empty.
    pub(crate) fn configure(
        &self,
        supported: &CpuId,
        vcpus: u8,
        tsc_deadline: bool,
        host: &cpuid::HostLeaves,
    ) -> Result<()> {
        let apic_id = u8::try_from(self.index)
            .map_err(|_| VmmError::Config(format!("vCPU index {} too large", self.index)))?;
        let timing = cpuid::GuestTiming {
            tsc_deadline,
            tsc_khz: self.tsc_khz(),
        };
        if self.index == 0 {
            tracing::debug!(?timing, "guest timer and clock");
        }
        let table = cpuid::vcpu_cpuid(supported, apic_id, vcpus, &timing, host)?;
        self.fd
            .set_cpuid2(&table)
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        self.set_xcr0(cpuid::guest_xcr0(table.as_slice()));
        let refused = msr::setup_msrs(&self.fd)?;
        if !refused.is_empty() && self.index == 0 {
            tracing::debug!(
                ?refused,
                "KVM refused some boot MSRs (left at KVM's defaults)"
            );
        }
        setup_fpu(&self.fd)?;
        lapic::setup_lapic(&self.fd)
    }

    /// The vCPU's TSC frequency in kHz, or `None` where KVM does not know
    /// it (`KVM_GET_TSC_KHZ` fails, e.g. with an unstable host TSC).
    fn tsc_khz(&self) -> Option<u32> {
        match self.fd.get_tsc_khz() {
            Ok(khz) if khz > 0 => Some(khz),
            Ok(_) => None,
            Err(e) => {
                if self.index == 0 {
                    tracing::debug!("KVM_GET_TSC_KHZ failed ({e}): no TSC frequency for the guest");
                }
                None
            }
        }
    }

    /// Starts the vCPU with `xcr0` (every XSAVE component its CPUID offers)
    /// instead of KVM's reset value, x87 only, so that leaf 0xD EBX, which
    /// KVM sizes for the XCR0 it knows, matches what the guest enables even
    /// where its XSETBV never exits to KVM (nested under QEMU's TCG). The
    /// guest sets XCR0 itself before it uses XSAVE, so this changes nothing
    /// else. Best effort: a KVM that refuses keeps its reset value.
    fn set_xcr0(&self, xcr0: u64) {
        if xcr0 <= 1 {
            return;
        }
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: xcr0,
        };
        if let Err(e) = self.fd.set_xcrs(&xcrs) {
            if self.index == 0 {
                tracing::debug!("KVM_SET_XCRS (XCR0 {xcr0:#x}) refused: {e}");
            }
        }
    }

    /// Sets the registers for `entry`. For an application processor
    /// (index > 0) this also marks it runnable, so it starts at `entry`
    /// instead of waiting for INIT/SIPI from the boot processor.
    pub(crate) fn set_entry(&self, mem: &GuestMemoryMmap, entry: &EntryPoint) -> Result<()> {
        setup_entry(&self.fd, mem, entry)?;
        if self.index > 0 {
            self.fd
                .set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }

    fn dump(&self) -> Box<RegisterDump> {
        Box::new(RegisterDump::from_vcpu(&self.fd))
    }

    fn internal_error(&self, detail: String) -> VcpuOutcome {
        VcpuOutcome::Exit(ExitReason::InternalError {
            vcpu: self.index,
            detail,
            registers: self.dump(),
        })
    }

    /// Runs the vCPU until the VM ends or it is kicked out.
    pub(crate) fn run(&mut self, ctx: &RunContext) -> Result<VcpuOutcome> {
        let page: *mut kvm_run = self.fd.get_kvm_run();
        let _kick_target = KickTarget::install(page);
        self.fd.set_kvm_immediate_exit(0);
        let mut exited = false;
        loop {
            if ctx.stop.host_stop.load(Ordering::SeqCst) {
                return Ok(VcpuOutcome::Exit(ExitReason::HostStop));
            }
            if ctx.stop.vm_exit.load(Ordering::SeqCst) {
                return Ok(VcpuOutcome::Kicked);
            }
            if !exited {
                ctx.first_run.get_or_init(Instant::now);
            }
            let exit = self.fd.run();
            if !exited {
                exited = true;
                ctx.first_exit.get_or_init(Instant::now);
            }
            match exit {
                Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..)) => {
                    if let Some(outcome) = self.handle_pio(ctx) {
                        return Ok(outcome);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => ctx.mmio.read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if let Some(reason) = action_exit(ctx.mmio.write(addr, data)) {
                        return Ok(VcpuOutcome::Exit(reason));
                    }
                }
                Ok(VcpuExit::Shutdown) => {
                    return Ok(VcpuOutcome::Exit(ExitReason::TripleFault {
                        vcpu: self.index,
                        registers: self.dump(),
                    }))
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return Ok(match kind {
                        KVM_SYSTEM_EVENT_RESET => VcpuOutcome::Exit(ExitReason::Reset),
                        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuOutcome::Exit(ExitReason::Shutdown),
                        KVM_SYSTEM_EVENT_CRASH => self.internal_error("guest crash event".into()),
                        other => self.internal_error(format!("system event {other}")),
                    })
                }
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: KVM_EXIT_INTERNAL_ERROR says `internal` is the live union member.
                    let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
                        let instruction = self.failed_instruction();
                        return Ok(VcpuOutcome::Exit(ExitReason::EmulationFailure {
                            vcpu: self.index,
                            instruction,
                            registers: self.dump(),
                        }));
                    }
                    let n = (internal.ndata as usize).min(internal.data.len());
                    return Ok(self.internal_error(format!(
                        "suberror {} data {:x?}",
                        internal.suberror,
                        &internal.data[..n]
                    )));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Ok(self.internal_error(format!(
                        "VM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
                    )))
                }
                Ok(VcpuExit::Hlt) => {
                    // Only seen without an in-kernel LAPIC; harmless to resume.
                    if !self.hlt_logged {
                        self.hlt_logged = true;
                        tracing::debug!(vcpu = self.index, "HLT exit to user space");
                    }
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => {
                    let detail = format!("unhandled KVM exit {other:?}");
                    return Ok(self.internal_error(detail));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked: clear the request and re-check the flags.
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            }
        }
    }

    /// The bytes of the instruction KVM failed to emulate, when it says.
    fn failed_instruction(&mut self) -> Vec<u8> {
        // SAFETY: called only after KVM_INTERNAL_ERROR_EMULATION, for which
        // `emulation_failure` is the live union member.
        let failure = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.emulation_failure };
        if failure.ndata < 3
            || failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0
        {
            return Vec::new();
        }
        // SAFETY: the flag says the instruction bytes are filled in.
        let insn = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
        let len = usize::from(insn.insn_size).min(insn.insn_bytes.len());
        insn.insn_bytes[..len].to_vec()
    }

    /// Handles a port I/O exit from the `kvm_run` page directly, so string
    /// I/O (`rep outsb`: `count` items of `size` bytes) is split correctly.
    fn handle_pio(&mut self, ctx: &RunContext) -> Option<VcpuOutcome> {
        let run_size = self.run_size;
        let run = self.fd.get_kvm_run();
        // SAFETY: called only after a KVM_EXIT_IO exit, so `io` is live.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let total = size.saturating_mul(io.count as usize);
        let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
        if size == 0 || offset.checked_add(total).is_none_or(|end| end > run_size) {
            return Some(self.internal_error(format!(
                "malformed I/O exit: port {:#x} size {size} count {} offset {offset:#x}",
                io.port, io.count
            )));
        }
        let base = std::ptr::from_mut(self.fd.get_kvm_run()).cast::<u8>();
        // SAFETY: the kvm_run mapping is `run_size` bytes long and KVM put
        // the data at `offset..offset + total` inside it (checked above).
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), total) };
        let port = u64::from(io.port);
        for item in data.chunks_mut(size) {
            if u32::from(io.direction) == KVM_EXIT_IO_OUT {
                if let Some(reason) = action_exit(ctx.pio.write(port, item)) {
                    return Some(VcpuOutcome::Exit(reason));
                }
            } else {
                ctx.pio.read(port, item);
            }
        }
        None
    }
}

/// How a device access ends the run, if it does.
fn action_exit(action: DeviceAction) -> Option<ExitReason> {
    match action {
        DeviceAction::None => None,
        DeviceAction::Reset => Some(ExitReason::Reset),
        DeviceAction::DeviceFailed { device, detail } => {
            Some(ExitReason::DeviceFailed { device, detail })
        }
    }
}
