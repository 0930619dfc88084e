//! The crate's error type.
//!
//! Every variant names what failed and, where it helps, what to do about it.
//! Guest behaviour is never an error: a guest that faults, resets or asks for
//! an unknown device ends in an [`crate::ExitReason`], not a `VmmError`.

use std::path::PathBuf;

/// Errors from building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {source} (is KVM available and are you root or in group kvm?)")]
    KvmOpen {
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation, e.g. `KVM_CREATE_VM`.
        op: &'static str,
        /// The underlying error.
        source: kvm_ioctls::Error,
    },
    /// The VM configuration is not usable.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// Guest memory could not be created or registered.
    #[error("guest memory: {0}")]
    Memory(String),
    /// An access to guest memory fell outside it.
    #[error("guest memory access at {addr:#x} (+{len} bytes) is outside guest RAM")]
    GuestAccess {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
    },
    /// A host file (kernel, initrd, serial output) could not be used.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is for ("kernel", "initrd", "serial output").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `Vm::load_kernel` was called without `VmConfig::kernel`.
    #[error("no kernel configured (set VmConfig::kernel)")]
    NoKernel,
    /// The kernel image could not be loaded.
    #[error("loading kernel {path}: {detail}")]
    KernelLoad {
        /// Kernel path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The host is a PVM host and the kernel is not known to be PVM-enabled.
    #[error(
        "this host's KVM is PVM (kvm_pvm: no hardware virtualization) and kernel {path} is not a \
         PVM guest kernel ({evidence}); it would run at instruction-emulation speed. Use a \
         kernel built with CONFIG_PVM_GUEST=y, run on a host with vmx/svm, or set \
         VmConfig::force to try anyway"
    )]
    KernelNotPvm {
        /// Kernel path.
        path: PathBuf,
        /// Why we concluded so.
        evidence: String,
    },
    /// A device's host-side backend (a vhost-user process) could not be
    /// used.
    #[error("{device}: {detail}")]
    Backend {
        /// The device, e.g. `virtio-fs(tag amphi, vhost-user socket /run/x/vfs.sock)`.
        device: String,
        /// What went wrong.
        detail: String,
    },
    /// Boot structures (zero page, start_info, MP table, ...) could not be written.
    #[error("boot setup: {0}")]
    Boot(String),
    /// A vCPU thread could not be started or died.
    #[error("vCPU thread: {0}")]
    Thread(String),
    /// A step of the jail (namespaces, new root, ids, capabilities,
    /// seccomp) failed: the VMM does not run unjailed instead.
    #[error("jail: {step}: {detail}")]
    Jail {
        /// What was being done, e.g. `pivot_root into the jail`.
        step: &'static str,
        /// The error.
        detail: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, VmmError>;

/// Wraps a failed KVM ioctl with its name: `.map_err(kvm_err("KVM_RUN"))`.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { op, source }
}
