//! The VMM's jail: what a guest that takes over the VMM process finds.
//!
//! `amphi vmm` opens everything the VM needs (`/dev/kvm`, kernel, initrd,
//! disks, the console socket, the vhost-user sockets, each connected and
//! negotiated), creates the VM and its memory, and then:
//!
//! 1. [`lockdown::enter`]: new mount, ipc, uts and net namespaces (the pid
//!    namespace is entered by forking before any of this), `pivot_root`
//!    into an empty read-only directory, an unprivileged uid and gid, no
//!    capabilities in any set, no_new_privs, not dumpable;
//! 2. [`seccomp`]: [`seccomp::install_sigsys_reporter`], then one filter per
//!    thread kind ([`ThreadKind`]), installed by each thread itself when
//!    [`crate::Vm::run`] starts it ([`crate::Vm::set_seccomp`]), before
//!    the guest runs a single instruction.
//!
//! [`host`] is the host's side: the jail's user, directory and cgroup,
//! and the supervisor that forks the VMM into its own pid namespace
//! (the `amphi-vmm` executable uses it; amphi names and sweeps jails with
//! it).

pub mod host;
pub mod lockdown;
pub mod seccomp;

pub use lockdown::Lockdown;
pub use seccomp::{
    install_sigsys_reporter, FilterParams, SeccompFilters, ThreadKind, Violation, EXIT_SECCOMP,
};

use std::sync::{Arc, Condvar, Mutex};

/// The filters [`crate::Vm::run`] installs.
#[derive(Clone, Debug)]
pub struct ThreadFilters {
    /// The compiled filters.
    pub filters: Arc<SeccompFilters>,
    /// Whether the thread calling `run()` installs the control filter
    /// once the vCPU and device threads exist (`amphi vmm`: yes; a test
    /// that runs a VM inside its own process: no). A filtered main
    /// thread cannot start threads again, so such a VM runs once.
    pub main_thread: bool,
}

/// Holds the VM's threads, each already under its own filter, until the
/// thread that started them has installed its own: no guest instruction
/// runs before every thread is filtered.
#[derive(Default)]
pub(crate) struct Gate {
    /// `None` while closed; then whether every filter went in (the
    /// failure otherwise).
    state: Mutex<Option<std::result::Result<(), String>>>,
    opened: Condvar,
}

impl Gate {
    /// Opens the gate with the starting thread's outcome.
    pub(crate) fn open(&self, outcome: std::result::Result<(), String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = Some(outcome);
        self.opened.notify_all();
    }

    /// Waits until the gate opens; `Err` when a filter failed (the thread
    /// must not run guest code then).
    pub(crate) fn pass(&self) -> std::result::Result<(), String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = s.as_ref() {
                return outcome.clone();
            }
            s = self.opened.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}
