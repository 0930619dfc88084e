//! Stopping running vCPUs from another thread.
//!
//! A vCPU thread spends its time inside `KVM_RUN`. To get it out, the VMM
//! sends it a real-time signal whose handler sets `immediate_exit` in that
//! vCPU's `kvm_run` page (found through a thread-local pointer). The signal
//! interrupts a `KVM_RUN` in progress with EINTR, and `immediate_exit` makes
//! one that is about to start return at once, so there is no window in
//! which a kick is lost. Before each `KVM_RUN` the thread also checks the
//! stop flags, which are set before any signal is sent.
//!
//! The signal is `SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET`; the handler is
//! installed once per process, without `SA_RESTART`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use kvm_bindings::kvm_run;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::bus::lock;

/// Offset from SIGRTMIN of the signal that kicks vCPU threads.
pub const VCPU_KICK_SIGNAL_OFFSET: i32 = 0;

thread_local! {
    /// The `kvm_run` page of the vCPU this thread runs, or null.
    static KVM_RUN_PAGE: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: a const-initialized thread-local
    // read and one volatile byte store.
    let page = KVM_RUN_PAGE.with(Cell::get);
    if !page.is_null() {
        // SAFETY: the pointer is set by `KickTarget` for as long as the vCPU
        // (and so its kvm_run mapping) is owned by this very thread.
        unsafe { std::ptr::write_volatile(&raw mut (*page).immediate_exit, 1) };
    }
}

/// The kick signal number.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET
}

/// Installs the kick handler (once per process).
pub(crate) fn install_kick_handler() -> crate::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| crate::VmmError::Thread(format!("installing the vCPU kick handler: {e}")));
    });
    result
}

/// Makes this thread's kicks land on `page` until dropped.
pub(crate) struct KickTarget;

impl KickTarget {
    pub(crate) fn install(page: *mut kvm_run) -> KickTarget {
        KVM_RUN_PAGE.with(|p| p.set(page));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN_PAGE.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Shared between the `Vm`, its vCPU threads, its event loop and any
/// `StopHandle`.
pub(crate) struct StopState {
    /// The host asked the VM to stop.
    pub(crate) host_stop: AtomicBool,
    /// A vCPU ended the run; the others must leave too.
    pub(crate) vm_exit: AtomicBool,
    /// pthreads of the running vCPU threads. Entries are removed (under the
    /// lock) only after the thread is joined, so a listed thread is valid.
    pub(crate) threads: Mutex<Vec<libc::pthread_t>>,
    /// Wakes the event loop to look at the two flags above.
    pub(crate) wake: EventFd,
}

impl StopState {
    /// Fresh state: nothing requested.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(StopState {
            host_stop: AtomicBool::new(false),
            vm_exit: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Whether the current run is ending (host stop or VM exit).
    pub(crate) fn ending(&self) -> bool {
        self.host_stop.load(Ordering::SeqCst) || self.vm_exit.load(Ordering::SeqCst)
    }

    /// Wakes the event loop (it then checks [`StopState::ending`]).
    pub(crate) fn wake_event_loop(&self) {
        // Fails only if the counter is saturated, i.e. already woken.
        let _ = self.wake.write(1);
    }

    /// Signals every listed vCPU thread.
    pub(crate) fn kick_all(threads: &[libc::pthread_t]) {
        for &thread in threads {
            // SAFETY: the thread is listed, so it has not been joined yet.
            let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if rc != 0 && rc != libc::ESRCH {
                tracing::warn!("kicking a vCPU thread failed: errno {rc}");
            }
        }
    }
}

/// Asks a running (or about to run) VM to stop: [`crate::Vm::run`] then
/// returns [`crate::ExitReason::HostStop`]. The vCPUs are kicked out of
/// `KVM_RUN` and the device event loop is woken. Cloneable and `Send`; call it
/// from any ordinary thread (not from a signal handler).
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) state: Arc<StopState>,
}

impl StopHandle {
    /// Requests the stop and kicks the vCPUs out of KVM_RUN. A request made
    /// while the VM is not running is honoured by the next `run()`.
    pub fn stop(&self) {
        self.state.host_stop.store(true, Ordering::SeqCst);
        self.state.wake_event_loop();
        let threads = lock(&self.state.threads);
        StopState::kick_all(&threads);
    }

    /// Whether a stop was requested and not yet consumed by `run()`.
    pub fn is_requested(&self) -> bool {
        self.state.host_stop.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("requested", &self.is_requested())
            .finish()
    }
}
