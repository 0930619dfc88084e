//! An I/O bus: address ranges mapped to devices, used for both port I/O and
//! MMIO. Accesses that hit no device are answered the way an empty ISA/PCI
//! bus answers: reads return all-ones, writes are dropped. Each distinct
//! unhandled address is logged once, up to a fixed number of addresses, so a
//! guest probing for hardware cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, VmmError};

/// What the VMM must do after a device access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing: the guest goes on.
    None,
    /// The guest asked for a system reset.
    Reset,
    /// A device failed in a way that ends the VM (its vhost-user backend
    /// went away): [`crate::ExitReason::DeviceFailed`].
    DeviceFailed {
        /// The device's name.
        device: String,
        /// What went wrong.
        detail: String,
    },
}

/// A device on a [`Bus`]. Offsets are relative to the range's base.
pub trait BusDevice: Send {
    /// Fills `data` for a read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction;
}

/// A device shared between the vCPU threads.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Distinct unhandled addresses logged per bus before going quiet.
pub const UNHANDLED_LOG_LIMIT: usize = 32;

/// Counts of accesses that hit no device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnhandledStats {
    /// Reads answered with all-ones.
    pub reads: u64,
    /// Writes dropped.
    pub writes: u64,
}

#[derive(Default)]
struct LogState {
    logged: Vec<u64>,
    suppressed_notice: bool,
}

/// The unhandled-access counters and the bounded log.
#[derive(Default)]
struct Unhandled {
    reads: AtomicU64,
    writes: AtomicU64,
    log: Mutex<LogState>,
}

/// Locks a mutex, taking the data even if a panicking thread poisoned it:
/// device state stays usable, and a VMM must not cascade one panic.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A set of non-overlapping address ranges, each routed to one device.
pub struct Bus {
    name: &'static str,
    ranges: Vec<Range>,
    unhandled: Unhandled,
}

impl Bus {
    /// An empty bus; `name` ("pio", "mmio") prefixes its log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: Vec::new(),
            unhandled: Unhandled::default(),
        }
    }

    /// Routes `[base, base + len)` to `device`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| VmmError::Config(format!("{} range {base:#x}+{len:#x}", self.name)))?;
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < end)
        {
            return Err(VmmError::Config(format!(
                "{} range {base:#x}+{len:#x} overlaps {:#x}+{:#x}",
                self.name, r.base, r.len
            )));
        }
        self.ranges.push(Range { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Range, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[idx];
        let offset = addr - range.base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(len as u64)? <= range.len).then_some((range, offset))
    }

    /// A read of `data.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((range, offset)) => lock(&range.device).read(offset, data),
            None => {
                data.fill(0xff);
                self.unhandled.reads.fetch_add(1, Ordering::Relaxed);
                self.log_unhandled("read", addr, data.len());
            }
        }
    }

    /// A write of `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> DeviceAction {
        match self.find(addr, data.len()) {
            Some((range, offset)) => lock(&range.device).write(offset, data),
            None => {
                self.unhandled.writes.fetch_add(1, Ordering::Relaxed);
                self.log_unhandled("write", addr, data.len());
                DeviceAction::None
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unhandled(&self) -> UnhandledStats {
        UnhandledStats {
            reads: self.unhandled.reads.load(Ordering::Relaxed),
            writes: self.unhandled.writes.load(Ordering::Relaxed),
        }
    }

    fn log_unhandled(&self, what: &str, addr: u64, len: usize) {
        let mut state = lock(&self.unhandled.log);
        if state.logged.contains(&addr) {
            return;
        }
        if state.logged.len() < UNHANDLED_LOG_LIMIT {
            state.logged.push(addr);
            tracing::debug!(
                bus = self.name,
                addr = format_args!("{addr:#x}"),
                len,
                "unhandled guest {what}: no device here (reads are all-ones, writes dropped)"
            );
        } else if !state.suppressed_notice {
            state.suppressed_notice = true;
            tracing::debug!(
                bus = self.name,
                "more than {UNHANDLED_LOG_LIMIT} unhandled addresses; not logging further ones"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch {
        bytes: [u8; 4],
    }

    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.bytes[o..o + data.len()]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
            let o = offset as usize;
            self.bytes[o..o + data.len()].copy_from_slice(data);
            DeviceAction::None
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new("test");
        bus.insert(0x100, 4, Arc::new(Mutex::new(Scratch::default())))
            .unwrap();
        bus.insert(0x10, 2, Arc::new(Mutex::new(Scratch::default())))
            .unwrap();
        bus.write(0x102, &[7, 8]);
        let mut buf = [0u8; 4];
        bus.read(0x100, &mut buf);
        assert_eq!(buf, [0, 0, 7, 8]);
        assert_eq!(bus.unhandled(), UnhandledStats::default());
    }

    #[test]
    fn unhandled_reads_are_all_ones_and_counted() {
        let mut bus = Bus::new("test");
        bus.insert(0x100, 4, Arc::new(Mutex::new(Scratch::default())))
            .unwrap();
        let mut buf = [0u8; 2];
        bus.read(0x50, &mut buf);
        assert_eq!(buf, [0xff, 0xff]);
        // Straddling the end of a device is not a hit either.
        let mut wide = [0u8; 4];
        bus.read(0x102, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert_eq!(bus.write(0x104, &[1]), DeviceAction::None);
        for port in 0..1000 {
            bus.write(port * 0x1000 + 0x10_0000, &[1]);
        }
        assert_eq!(
            bus.unhandled(),
            UnhandledStats {
                reads: 2,
                writes: 1001
            }
        );
        assert_eq!(lock(&bus.unhandled.log).logged.len(), UNHANDLED_LOG_LIMIT);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new("test");
        let dev: SharedDevice = Arc::new(Mutex::new(Scratch::default()));
        bus.insert(0x100, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x104, 8, dev.clone()).is_err());
        assert!(bus.insert(0xfc, 5, dev.clone()).is_err());
        assert!(bus.insert(0x200, 0, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        bus.insert(0x108, 8, dev).unwrap();
    }
}
