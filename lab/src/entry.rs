//! When a VMM's guest ran its first instruction, from level 1's kernel:
//! the first `kvm:kvm_entry` trace event of vCPU 0 (`amphi-lab watch` with
//! `AMPHI_LAB_FIRST_ENTRY` set, `scripts/vm-lab bench --first-entry`).
//! The same for every VMM, so launch → first guest instruction is the
//! VMM's part of a boot and the rest the guest's. The trigger `traceoff:1
//! if vcpu_id == 0` records that one event and stops the trace buffer; the
//! event stays enabled until the watch ends, so every later entry still
//! passes through the (now idle) tracepoint: a small cost per VM entry,
//! larger for a VMM whose guest exits more. That is why this is an option
//! of the bench and not its default.

use std::io;
use std::path::{Path, PathBuf};

/// Where level 1 mounts tracefs.
pub const TRACEFS: &str = "/sys/kernel/tracing";
const EVENT: &str = "events/kvm/kvm_entry";
const TRIGGER: &str = "traceoff:1 if vcpu_id == 0";

/// The trace, armed for one VM's first entry.
pub struct FirstEntry {
    dir: PathBuf,
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

impl FirstEntry {
    /// Empties the trace buffer, sets its clock to CLOCK_MONOTONIC's and
    /// arms the trigger.
    pub fn arm(dir: &Path) -> io::Result<Self> {
        let armed = FirstEntry {
            dir: dir.to_path_buf(),
        };
        armed.disarm();
        write(dir, "tracing_on", "0")?;
        write(dir, "trace", "")?;
        write(dir, "trace_clock", "mono")?;
        write(dir, &format!("{EVENT}/trigger"), TRIGGER)?;
        write(dir, &format!("{EVENT}/enable"), "1")?;
        write(dir, "tracing_on", "1")?;
        Ok(armed)
    }

    /// The first entry's time (seconds on CLOCK_MONOTONIC), if one came.
    pub fn read(&self) -> io::Result<Option<f64>> {
        Ok(first_entry(&std::fs::read_to_string(
            self.dir.join("trace"),
        )?))
    }

    /// Disables the event and removes the trigger (errors ignored: it may
    /// not be there).
    pub fn disarm(&self) {
        let _ = write(&self.dir, &format!("{EVENT}/enable"), "0");
        let _ = write(
            &self.dir,
            &format!("{EVENT}/trigger"),
            &format!("!{TRIGGER}"),
        );
    }
}

impl Drop for FirstEntry {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The timestamp of the trace's first `kvm_entry` line:
/// "  vcpu0-108  [000] d..1.  3.894164: kvm_entry: vcpu 0, rip 0x1000000".
pub fn first_entry(trace: &str) -> Option<f64> {
    trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split_once(": kvm_entry:"))
        .and_then(|(head, _)| head.split_whitespace().last()?.parse().ok())
}

/// Now on CLOCK_MONOTONIC, in seconds (the trace clock `mono`).
pub fn monotonic_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_line_gives_the_time() {
        let trace = "\
# tracer: nop
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
           vcpu0-108     [000] d..1.   123.894164: kvm_entry: vcpu 0, rip 0x1000000
           vcpu0-108     [000] d..1.   123.995000: kvm_entry: vcpu 0, rip 0x1000010
";
        assert_eq!(first_entry(trace), Some(123.894164));
        assert_eq!(first_entry("# tracer: nop\n#\n"), None);
        assert_eq!(
            first_entry("  x-1 [000] ....  9.5: kvm_exit: vcpu 0 reason io\n"),
            None
        );
        let now = monotonic_now();
        assert!(now > 0.0 && monotonic_now() >= now);
    }
}
