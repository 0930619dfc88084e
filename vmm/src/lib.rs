//! amphi's KVM virtual machine monitor.
//!
//! Built on the rust-vmm crates (kvm-ioctls, vm-memory, linux-loader,
//! vm-superio); see `ARCHITECTURE.md` ("Where the VM path runs"). The layout
//! follows Firecracker's: architecture code under [`arch::x86_64`], each
//! device in its own module under [`devices`], and the VM's state objects
//! ([`vm`], [`vcpu`], [`memory`]) apart from one another.
//!
//! ```no_run
//! use amphi_vmm::{ExitReason, SerialOut, Vm, VmConfig};
//!
//! let config = VmConfig {
//!     kernel: Some("/var/lib/amphi/kernels/vmlinux".into()),
//!     serial: SerialOut::Stdout,
//!     ..VmConfig::default()
//! };
//! let mut vm = Vm::new(&config)?;
//! vm.load_kernel()?;
//! let stop = vm.stop_handle(); // give to whoever may stop the VM
//! match vm.run()? {
//!     ExitReason::Reset | ExitReason::Shutdown => println!("guest finished"),
//!     other => eprintln!("{other}"),
//! }
//! # Ok::<(), amphi_vmm::VmmError>(())
//! ```
//!
//! Block devices and the console are virtio-mmio devices:
//!
//! ```no_run
//! use amphi_vmm::{BlockConfig, ConsoleBackend, VmConfig};
//!
//! let config = VmConfig {
//!     block_devices: vec![BlockConfig::new("/var/lib/amphi/rootfs.erofs", true)],
//!     console: Some(ConsoleBackend::Socket("/run/amphi/abc/channel.sock".into())),
//!     ..VmConfig::default()
//! };
//! # let _ = config;
//! ```
//!
//! A host directory shared with virtio-fs, served by a virtiofsd listening
//! on a vhost-user socket (or [`FsConfig::connected`] to one already
//! connected); guest RAM then becomes a shared memfd:
//!
//! ```no_run
//! use amphi_vmm::{FsConfig, VmConfig};
//!
//! let config = VmConfig {
//!     fs_devices: vec![FsConfig::new("/run/amphi/abc/vfs.sock", "amphi").expect("a valid tag")],
//!     ..VmConfig::default()
//! };
//! # let _ = config;
//! ```
//!
//! Tests and tools can skip the kernel: write machine code with
//! [`Vm::write_guest`] and start a vCPU on it with [`Vm::set_vcpu_entry`].

use std::path::PathBuf;

pub mod arch;
pub mod device_manager;
pub mod devices;
pub mod elf;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod jail;
pub mod loader;
pub mod memory;
pub mod pvm;
pub mod stop;
pub mod vcpu;
pub mod vm;

pub use arch::x86_64::regs::{CpuMode, EntryPoint};
pub use device_manager::AttachedDevice;
pub use devices::serial::{SerialBuffer, SerialOut};
pub use devices::virtio::block::BlockConfig;
pub use devices::virtio::console::ConsoleBackend;
pub use devices::virtio::fs::{FsBackend, FsConfig};
pub use error::{Result, VmmError};
pub use exit::{ExitReason, RegisterDump, EXIT_DEVICE_FAILED};
pub use loader::BootChoice;
pub use loader::{BootInfo, BootProtocol};
pub use pvm::{detect_kvm_kind, kernel_pvm_support, KvmKind, PvmKernelSupport};
pub use stop::StopHandle;
pub use vm::{HostWatch, Vm};

/// The default kernel command line: console on COM1, reboot through the
/// i8042 (which the VMM turns into [`ExitReason::Reset`]), reboot at once on
/// panic, no PCI probing, and a quiet i8042 driver.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// What a VM is made of.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in MiB (at least 2).
    pub mem_mib: u32,
    /// Number of vCPUs (1 to [`arch::x86_64::mptable::MAX_CPUS`]).
    pub vcpus: u8,
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: Option<PathBuf>,
    /// How the kernel is entered (see [`loader`]).
    pub boot: BootChoice,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line. `virtio_mmio.device=` entries for the virtio
    /// devices are appended to it (see [`Vm::cmdline`]).
    pub cmdline: String,
    /// Where COM1 output goes.
    pub serial: SerialOut,
    /// Boot a kernel on a PVM host even if it is not known to be PVM-enabled.
    pub force: bool,
    /// A virtio-net device on passt's socket protocol, after the block
    /// devices (before the console).
    pub net: Option<devices::virtio::net::NetConfig>,
    /// virtio-blk devices, in the order the guest sees them (`vda`, `vdb`, ...).
    pub block_devices: Vec<BlockConfig>,
    /// The virtio-console (the guest channel), after the block devices.
    pub console: Option<ConsoleBackend>,
    /// virtio-fs devices served by vhost-user backends (virtiofsd), after
    /// the console. With any, guest RAM is a shared memfd.
    pub fs_devices: Vec<FsConfig>,
}

impl VmConfig {
    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }

    /// What guest RAM is made of: a shared memfd when a vhost-user
    /// backend (virtio-fs) must map it, else private memory.
    pub fn ram_backing(&self) -> memory::RamBacking {
        if self.fs_devices.is_empty() {
            memory::RamBacking::Private
        } else {
            memory::RamBacking::SharedMemfd
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem_mib: 256,
            vcpus: 1,
            kernel: None,
            boot: BootChoice::Auto,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            serial: SerialOut::None,
            force: false,
            net: None,
            block_devices: Vec::new(),
            console: None,
            fs_devices: Vec::new(),
        }
    }
}
