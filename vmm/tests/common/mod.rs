//! Helpers shared by the tests that run tiny guests on the real /dev/kvm.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use amphi_vmm::{CpuMode, EntryPoint, ExitReason, Vm};

/// Where long-mode test code goes (above the page tables, below the cmdline).
pub const CODE: u64 = 0x10000;
/// A guest that has not ended by then is stopped and the test fails.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// Whether /dev/kvm is there; if not, the test skips loudly (fails in
/// strict mode: `CI=true` or `AMPHI_TEST_STRICT=1`).
pub fn kvm_or_skip(test: &str) -> bool {
    amphi_test_skip::require(
        Path::new("/dev/kvm").exists(),
        &format!("{test}: /dev/kvm is missing; this tiny-guest test did NOT run"),
    )
}

/// A long-mode entry at `rip` with a stack below 0x8000.
pub fn long_mode(rip: u64) -> EntryPoint {
    EntryPoint {
        rsp: 0x8000,
        ..EntryPoint::new(CpuMode::Long, rip)
    }
}

/// Runs the VM with a watchdog that stops it after `WATCHDOG`.
pub fn run_guarded(vm: &mut Vm) -> ExitReason {
    let stop = vm.stop_handle();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if done_rx.recv_timeout(WATCHDOG).is_err() {
            stop.stop();
        }
    });
    let reason = vm.run().expect("running the VM");
    drop(done_tx);
    watchdog.join().expect("the watchdog thread panicked");
    assert_ne!(
        reason,
        ExitReason::HostStop,
        "the guest did not finish within {WATCHDOG:?} (watchdog stopped it)"
    );
    reason
}
