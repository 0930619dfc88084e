//! The VM: KVM handles, guest memory, the in-kernel irqchip and PIT, the
//! legacy devices on the PIO bus, the virtio devices on the MMIO bus with
//! their event loop, the vCPUs, and `run()`, which runs every vCPU on its
//! own thread (and the event loop on another) until one of them ends the VM.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::cpuid::HostLeaves;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::arch::x86_64::mptable::{self, MAX_CPUS};
use crate::arch::x86_64::regs::EntryPoint;
use crate::device_manager::{AttachedDevice, DeviceManager};
use crate::devices::bus::{lock, SharedDevice};
use crate::devices::i8042::{I8042, I8042_LEN, I8042_PORT};
use crate::devices::serial::{Serial, Sink, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::devices::{Bus, UnhandledStats};
use crate::error::{kvm_err, Result, VmmError};
use crate::event_loop::{EventLoop, OutcomeSender};
use crate::exit::ExitReason;
use crate::jail::{Gate, ThreadFilters, ThreadKind};
use crate::loader::{load_linux, BootInfo};
use crate::memory::{create_guest_memory_with, register_with_kvm, GuestMemoryMmap};
use crate::pvm::{detect_kvm_kind, kernel_pvm_support, KvmKind, PvmKernelSupport};
use crate::stop::{install_kick_handler, StopHandle, StopState};
use crate::vcpu::{RunContext, Vcpu, VcpuOutcome};
use crate::VmConfig;

/// A virtual machine.
pub struct Vm {
    config: VmConfig,
    kind: KvmKind,
    // Field order matters for drop: vCPUs and the VM fd go before the
    // memory they map.
    vcpus: Vec<Vcpu>,
    fd: VmFd,
    _kvm: Kvm,
    memory: GuestMemoryMmap,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<Serial>>,
    devices: DeviceManager,
    /// Serves the virtio devices; `None` without devices (and while
    /// `run()` has it on its thread).
    event_loop: Option<EventLoop>,
    /// `config.cmdline` plus the virtio device announcements.
    cmdline: String,
    stop: Arc<StopState>,
    /// When a vCPU first came back from `KVM_RUN` (see [`Vm::first_exit_at`]).
    first_exit: Arc<OnceLock<Instant>>,
    /// When a vCPU first entered `KVM_RUN` (see [`Vm::first_run_at`]).
    first_run: Arc<OnceLock<Instant>>,
    /// The seccomp filters `run()` installs (see [`Vm::set_seccomp`]).
    seccomp: Option<ThreadFilters>,
    /// The thread calling `run()` is under its filter: no new thread can
    /// be started, so no second run.
    main_filtered: bool,
    /// The devices' vhost-user sockets (known without locking a device,
    /// which a vCPU may hold while it waits on one).
    vhost_sockets: Vec<std::os::fd::RawFd>,
    /// Called by the thread in `run()` every [`UNSTICK_POLL`] (see
    /// [`Vm::set_host_watch`]).
    host_watch: Option<HostWatch>,
}

/// See [`Vm::set_host_watch`].
pub type HostWatch = Box<dyn FnMut() -> bool + Send>;

impl Vm {
    /// Creates the VM: memory, irqchip, PIT, MP table, COM1, i8042, and
    /// configured vCPUs. No kernel yet: see [`Vm::load_kernel`], or place code
    /// with [`Vm::write_guest`] and start it with [`Vm::set_vcpu_entry`].
    pub fn new(config: &VmConfig) -> Result<Vm> {
        if config.vcpus == 0 || config.vcpus > MAX_CPUS {
            return Err(VmmError::Config(format!(
                "{} vCPUs requested; 1 to {MAX_CPUS} are supported",
                config.vcpus
            )));
        }
        let mem_bytes = config.mem_bytes();
        let kind = detect_kvm_kind();
        let kvm = Kvm::new().map_err(|source| VmmError::KvmOpen { source })?;
        let max_vcpus = kvm.get_max_vcpus();
        if usize::from(config.vcpus) > max_vcpus {
            return Err(VmmError::Config(format!(
                "{} vCPUs requested; KVM allows {max_vcpus}",
                config.vcpus
            )));
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Memory before the irqchip: on PVM a memslot registered after
        // KVM_CREATE_IRQCHIP took ~5 ms, before it ~40 us (measured).
        let memory = create_guest_memory_with(mem_bytes, config.ram_backing())?;
        register_with_kvm(&fd, &memory)?;
        // Intel needs these below 4 GiB; AMD and PVM accept and ignore them.
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        mptable::setup_mptable(&memory, config.vcpus)?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| VmmError::Config(format!("creating the COM1 eventfd: {e}")))?;
        fd.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let serial = Arc::new(Mutex::new(Serial::new(
            serial_irq,
            Sink::open(&config.serial)?,
        )));
        let mut pio = Bus::new("pio");
        pio.insert(u64::from(COM1_PORT), u64::from(COM1_LEN), serial.clone())?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new()));
        pio.insert(u64::from(I8042_PORT), u64::from(I8042_LEN), i8042)?;
        let mut mmio = Bus::new("mmio");
        let stop = Arc::new(
            StopState::new()
                .map_err(|e| VmmError::Config(format!("creating the stop eventfd: {e}")))?,
        );
        let devices = attach_virtio_devices(config, &fd, &memory, &mut mmio)?;
        let event_loop = if devices.devices().is_empty() {
            None
        } else {
            Some(EventLoop::new(devices.transports(), stop.clone())?)
        };
        let cmdline = devices.extend_cmdline(&config.cmdline);

        let supported: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        // The in-kernel irqchip is always there, the other half of what the
        // TSC deadline timer needs.
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let host_leaves = HostLeaves::read();
        let vcpus = (0..usize::from(config.vcpus))
            .map(|i| {
                let vcpu = Vcpu::new(&fd, i)?;
                vcpu.configure(&supported, config.vcpus, tsc_deadline, &host_leaves)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>>>()?;
        install_kick_handler()?;

        tracing::debug!(%kind, mem_bytes, vcpus = config.vcpus, "VM created");
        Ok(Vm {
            config: config.clone(),
            kind,
            vcpus,
            fd,
            _kvm: kvm,
            memory,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            serial,
            event_loop,
            cmdline,
            stop,
            first_exit: Arc::new(OnceLock::new()),
            first_run: Arc::new(OnceLock::new()),
            seccomp: None,
            main_filtered: false,
            vhost_sockets: devices.vhost_user_sockets(),
            host_watch: None,
            devices,
        })
    }

    /// Loads `VmConfig::kernel` (and initrd, command line) and points the
    /// boot vCPU at it. On a PVM host a kernel that is not shown to be
    /// PVM-enabled is refused unless `VmConfig::force` is set.
    pub fn load_kernel(&mut self) -> Result<BootInfo> {
        let kernel = self.config.kernel.clone().ok_or(VmmError::NoKernel)?;
        if self.kind == KvmKind::Pvm {
            let verdict = kernel_pvm_support(&kernel).map_err(|source| VmmError::File {
                what: "kernel",
                path: kernel.clone(),
                source,
            })?;
            match verdict {
                PvmKernelSupport::Enabled(why) => tracing::debug!("PVM guest kernel: {why}"),
                PvmKernelSupport::NotEnabled(evidence) | PvmKernelSupport::Unknown(evidence) => {
                    if !self.config.force {
                        return Err(VmmError::KernelNotPvm {
                            path: kernel,
                            evidence,
                        });
                    }
                    tracing::warn!(
                        "PVM host, kernel not PVM-enabled ({evidence}); forced: expect it to be slow"
                    );
                }
            }
        }
        let info = load_linux(
            &self.memory,
            self.config.mem_bytes(),
            &kernel,
            self.config.initrd.as_deref(),
            &self.cmdline,
            self.config.boot,
        )?;
        self.set_vcpu_entry(0, &info.entry)?;
        Ok(info)
    }

    /// Sets where and how vCPU `index` starts. vCPU 0 is the boot processor;
    /// giving an entry to another vCPU starts it directly (no INIT/SIPI).
    pub fn set_vcpu_entry(&mut self, index: usize, entry: &EntryPoint) -> Result<()> {
        let vcpu = self
            .vcpus
            .get(index)
            .ok_or_else(|| VmmError::Config(format!("no vCPU {index}")))?;
        vcpu.set_entry(&self.memory, entry)
    }

    /// Copies `bytes` into guest memory at `addr`.
    pub fn write_guest(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| VmmError::GuestAccess {
                addr,
                len: bytes.len(),
            })
    }

    /// Fills `buf` from guest memory at `addr`.
    pub fn read_guest(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.memory
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| VmmError::GuestAccess {
                addr,
                len: buf.len(),
            })
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The vCPUs (empty while `run()` is running them).
    pub fn vcpus(&self) -> &[Vcpu] {
        &self.vcpus
    }

    /// The kind of KVM this VM runs on.
    pub fn kvm_kind(&self) -> KvmKind {
        self.kind
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The kernel command line `load_kernel` uses: `VmConfig::cmdline`
    /// plus a `virtio_mmio.device=4K@<base>:<gsi>` entry per virtio device.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The virtio devices: block devices in configuration order, then the
    /// console, then the virtio-fs devices.
    pub fn virtio_devices(&self) -> &[AttachedDevice] {
        self.devices.devices()
    }

    /// The connected vhost-user sockets (one per virtio-fs device): the
    /// seccomp filters allow `sendmsg`/`recvmsg` (vCPU threads) and
    /// `shutdown` (control threads) on these alone (see
    /// [`crate::jail::FilterParams::for_vm`]).
    pub fn vhost_user_sockets(&self) -> Vec<std::os::fd::RawFd> {
        self.vhost_sockets.clone()
    }

    /// Has the thread that calls [`Vm::run`] call `watch` every 50 ms
    /// while the VM runs (under the control filter when the VM is jailed
    /// with `main_thread`); when it returns true, the VM stops as with
    /// [`StopHandle::stop`]. Lets a VMM take its stop signals and its
    /// timeout on the thread that waits for the vCPUs anyway, without a
    /// thread (and a stack) of their own.
    pub fn set_host_watch(&mut self, watch: HostWatch) {
        self.host_watch = Some(watch);
    }

    /// A handle that stops `run()` from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            state: self.stop.clone(),
        }
    }

    /// When the first VM exit of any vCPU reached the VMM: for a guest whose
    /// first instruction exits (a port write), when the guest started
    /// running. `None` before the first `run()`. For startup measurements
    /// (`AMPHI_VMM_TIMING` in `amphi vmm`).
    pub fn first_exit_at(&self) -> Option<Instant> {
        self.first_exit.get().copied()
    }

    /// When a vCPU first entered `KVM_RUN`: the guest's first instruction,
    /// give or take the entry itself. `None` before the first `run()`.
    pub fn first_run_at(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// Queues bytes for the guest to read from COM1; returns how many fit.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_input(bytes)
    }

    /// Port I/O accesses that hit no device.
    pub fn unhandled_pio(&self) -> UnhandledStats {
        self.pio.unhandled()
    }

    /// MMIO accesses that hit no device.
    pub fn unhandled_mmio(&self) -> UnhandledStats {
        self.mmio.unhandled()
    }

    /// Makes `run()` put each thread it starts under its own seccomp
    /// filter (vCPU threads the vCPU one, the device event loop its own)
    /// before the guest runs, and, with `filters.main_thread`, the calling
    /// thread under the control filter once they are started. The SIGSYS
    /// reporter ([`crate::jail::install_sigsys_reporter`]) should be
    /// installed first.
    pub fn set_seccomp(&mut self, filters: ThreadFilters) {
        self.seccomp = Some(filters);
    }

    /// Runs every vCPU on its own thread until the guest resets, shuts
    /// down, faults, KVM gives up, or the host stops it. The vCPUs come back
    /// afterwards, so `run()` can be called again (e.g. after a `HostStop`),
    /// unless the calling thread went under a seccomp filter in the first
    /// run ([`Vm::set_seccomp`]).
    pub fn run(&mut self) -> Result<ExitReason> {
        if self.vcpus.len() != usize::from(self.config.vcpus) {
            return Err(VmmError::Thread(
                "the vCPUs were lost by an earlier failed run".into(),
            ));
        }
        if self.main_filtered {
            return Err(VmmError::Thread(
                "this thread is under its seccomp filter since the first run: it cannot start the VM's threads again".into(),
            ));
        }
        let jail = self.seccomp.clone().map(|f| (f, Arc::new(Gate::default())));
        let ctx = RunContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            stop: self.stop.clone(),
            first_exit: self.first_exit.clone(),
            first_run: self.first_run.clone(),
        };
        self.stop.vm_exit.store(false, Ordering::SeqCst);
        // The vCPUs' outcomes, and the event loop's device failures.
        let (tx, rx) = mpsc::channel();
        let event_loop = match self.spawn_event_loop(jail.clone(), tx.clone()) {
            Ok(el) => el,
            Err(e) => {
                if let Some((_, gate)) = &jail {
                    gate.open(Err("the device event loop did not start".into()));
                }
                return Err(e);
            }
        };
        let (handles, spawn_error) = self.spawn_vcpus(&ctx, &tx, jail.as_ref());
        drop(tx);
        if let Some((filters, gate)) = &jail {
            let outcome = if let Some(e) = &spawn_error {
                Err(e.to_string())
            } else if filters.main_thread {
                self.main_filtered = true;
                filters
                    .filters
                    .apply(ThreadKind::Control, 0)
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            };
            gate.open(outcome);
        }

        // The first vCPU to finish (or a failed device) decides how the
        // VM ended.
        let mut unstick = Unstick::default();
        let first = match spawn_error {
            Some(e) => Err(e),
            None => self.first_outcome(&rx, &mut unstick),
        };

        // Bring the others out and back. The lock is held across the joins
        // so a concurrent StopHandle never signals a joined thread.
        self.stop.vm_exit.store(true, Ordering::SeqCst);
        {
            let mut threads = lock(&self.stop.threads);
            StopState::kick_all(&threads);
            while !handles.iter().all(thread::JoinHandle::is_finished) {
                thread::sleep(JOIN_POLL);
                unstick.tick(self);
            }
            for handle in handles {
                match handle.join() {
                    Ok(vcpu) => self.vcpus.push(vcpu),
                    Err(_) => tracing::error!("a vCPU thread panicked outside its run loop"),
                }
            }
            threads.clear();
        }
        self.vcpus.sort_by_key(Vcpu::index);
        if let Some(handle) = event_loop {
            // vm_exit is set: the woken loop ends.
            self.stop.wake_event_loop();
            match handle.join() {
                Ok(el) => self.event_loop = Some(el),
                Err(_) => tracing::error!("the device event loop thread panicked"),
            }
        }

        let reason = self.exit_reason(first?, &unstick);
        if reason == ExitReason::HostStop {
            self.stop.host_stop.store(false, Ordering::SeqCst);
        }
        tracing::debug!(%reason, "VM run ended");
        Ok(reason)
    }

    /// After `run()` returns: gives the virtio devices up to `timeout` to
    /// finish what the guest handed them before it stopped (notified queues
    /// not yet looked at, console output the host end has not taken yet).
    /// Returns whether everything got out. A guest that writes its last
    /// words to the console and powers off relies on this.
    pub fn drain_devices(&mut self, timeout: std::time::Duration) -> bool {
        match self.event_loop.as_mut() {
            Some(el) => el.drain(timeout),
            None => true,
        }
    }

    /// How the run ended, from its first outcome.
    fn exit_reason(&self, first: VcpuOutcome, unstick: &Unstick) -> ExitReason {
        match first {
            // The failure is the backend shut down to stop the run.
            VcpuOutcome::Exit(ExitReason::DeviceFailed { .. })
                if unstick.done && self.stop.host_stop.load(Ordering::SeqCst) =>
            {
                ExitReason::HostStop
            }
            VcpuOutcome::Exit(reason) => reason,
            // Only possible if vm_exit was set before the run began.
            VcpuOutcome::Kicked => ExitReason::HostStop,
        }
    }

    /// Starts a thread per vCPU, each sending its outcome on `tx`; the
    /// handles of those started, and why the next one could not be.
    fn spawn_vcpus(
        &mut self,
        ctx: &RunContext,
        tx: &OutcomeSender,
        jail: Option<&(ThreadFilters, Arc<Gate>)>,
    ) -> (Vec<thread::JoinHandle<Vcpu>>, Option<VmmError>) {
        let mut handles = Vec::with_capacity(self.vcpus.len());
        let mut threads = lock(&self.stop.threads);
        for mut vcpu in self.vcpus.drain(..) {
            let ctx = ctx.clone();
            let tx = tx.clone();
            let index = vcpu.index();
            let jail = jail.cloned();
            let spawned = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(THREAD_STACK)
                .spawn(move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if let Some((filters, gate)) = &jail {
                            enter_filter(filters, gate, ThreadKind::Vcpu, index)?;
                        }
                        vcpu.run(&ctx)
                    }))
                    .unwrap_or_else(|_| Err(VmmError::Thread(format!("vCPU {index} panicked"))));
                    // The receiver outlives every sender; nothing to do if not.
                    let _ = tx.send(outcome);
                    vcpu
                });
            match spawned {
                Ok(handle) => {
                    threads.push(std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle));
                    handles.push(handle);
                }
                Err(e) => {
                    let e = VmmError::Thread(format!("spawning vCPU {index}: {e}"));
                    return (handles, Some(e));
                }
            }
        }
        (handles, None)
    }

    /// The first outcome of the run, while [`Unstick`] keeps an ending run
    /// from waiting forever on a vCPU stuck in a vhost-user request.
    fn first_outcome(
        &mut self,
        rx: &mpsc::Receiver<Result<VcpuOutcome>>,
        unstick: &mut Unstick,
    ) -> Result<VcpuOutcome> {
        loop {
            match rx.recv_timeout(UNSTICK_POLL) {
                Ok(outcome) => return outcome,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(VmmError::Thread("all vCPU threads vanished".into()))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.host_watch.as_mut().is_some_and(|watch| watch()) {
                        self.stop_handle().stop();
                    }
                    unstick.tick(self);
                }
            }
        }
    }

    /// Starts the event loop on its own thread, if there are devices.
    fn spawn_event_loop(
        &mut self,
        jail: Option<(ThreadFilters, Arc<Gate>)>,
        outcomes: OutcomeSender,
    ) -> Result<Option<thread::JoinHandle<EventLoop>>> {
        let Some(mut el) = self.event_loop.take() else {
            if !self.devices.devices().is_empty() {
                return Err(VmmError::Thread(
                    "the device event loop was lost by an earlier failed run".into(),
                ));
            }
            return Ok(None);
        };
        thread::Builder::new()
            .name("virtio-events".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if let Some((filters, gate)) = &jail {
                    if let Err(e) = enter_filter(filters, gate, ThreadKind::EventLoop, 0) {
                        tracing::error!("the device event loop does not run: {e}");
                        return el;
                    }
                }
                el.run(outcomes);
                el
            })
            .map(Some)
            .map_err(|e| VmmError::Thread(format!("spawning the device event loop: {e}")))
    }
}

/// The stack of the VM's threads (vCPUs, the device event loop): 1 MiB,
/// where Rust's default is 2 MiB. A 2 MiB stack that happens to be 2 MiB
/// aligned (mmap places it right below guest RAM, which is) is a whole
/// transparent huge page on a host with THP `always`: 2 MiB of anonymous
/// memory for a few KiB of stack, measured in the nested lab's level 1. A
/// mapping under 2 MiB never holds one.
const THREAD_STACK: usize = 1 << 20;

/// How often a run waiting for its first outcome looks at whether it is
/// ending with a vCPU that does not come back.
const UNSTICK_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// How often an ending run looks at whether its vCPU threads are done
/// (kicked, they are within microseconds).
const JOIN_POLL: std::time::Duration = std::time::Duration::from_millis(1);
/// How long an ending run waits for its vCPUs before it shuts the
/// vhost-user sockets down.
pub const UNSTICK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A vCPU in the middle of a request to a vhost-user backend (in the
/// guest's `DRIVER_OK` or reset write) waits for the answer however it is
/// kicked. A backend that is alive but does not answer (stopped,
/// deadlocked) would so keep an ending run (the host's stop, another
/// vCPU's exit) from ending: [`UNSTICK_GRACE`] after the run started
/// ending, the VMM shuts the vhost-user sockets down, which fails the
/// request at once.
#[derive(Default)]
struct Unstick {
    ending_since: Option<Instant>,
    done: bool,
}

impl Unstick {
    fn tick(&mut self, vm: &Vm) {
        if self.done || !vm.stop.ending() {
            return;
        }
        let since = *self.ending_since.get_or_insert_with(Instant::now);
        if since.elapsed() < UNSTICK_GRACE {
            return;
        }
        self.done = true;
        for fd in vm.vhost_user_sockets() {
            tracing::warn!(
                "a vCPU has not come back {UNSTICK_GRACE:?} after the run began to end; shutting \
                 vhost-user socket (fd {fd}) down: its backend does not answer"
            );
            // SAFETY: shutdown(2) of a socket the VM's device owns; the
            // descriptor stays open (closed with the device).
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// Puts the calling thread under `kind`'s filter, then waits until the
/// thread that started it is filtered too. An error means the thread must
/// not run guest code.
fn enter_filter(
    filters: &ThreadFilters,
    gate: &Gate,
    kind: ThreadKind,
    index: usize,
) -> Result<()> {
    let own = filters
        .filters
        .apply(kind, u32::try_from(index).unwrap_or(u32::MAX));
    let all = gate.pass().map_err(|detail| VmmError::Jail {
        step: "installing the seccomp filters",
        detail,
    });
    own.and(all)
}

/// Creates the configured virtio devices (block devices in order, the
/// console, the virtio-fs devices in order) and attaches them to the VM.
fn attach_virtio_devices(
    config: &VmConfig,
    fd: &VmFd,
    memory: &GuestMemoryMmap,
    mmio: &mut Bus,
) -> Result<DeviceManager> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for block in &config.block_devices {
        devices.push(Box::new(Block::open(block)?));
    }
    if let Some(net) = &config.net {
        devices.push(Box::new(crate::devices::virtio::net::Net::open(net)?));
    }
    if let Some(backend) = &config.console {
        devices.push(Box::new(Console::open(backend)?));
    }
    for fs in &config.fs_devices {
        devices.push(Box::new(Fs::open(fs)?));
    }
    let mut manager = DeviceManager::new();
    for device in devices {
        let name = device.name();
        let transport = MmioTransport::new(device, memory.clone())
            .map_err(|e| VmmError::Config(format!("{name}: creating its eventfds: {e}")))?;
        manager.attach(fd, mmio, transport)?;
    }
    Ok(manager)
}
