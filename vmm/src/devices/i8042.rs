//! The i8042 keyboard controller, reduced to what a microVM needs: the
//! guest's "pulse reset line" command (0xFE to port 0x64) becomes a clean
//! [`DeviceAction::Reset`]. Linux reboots this way with `reboot=k`.
//! Everything else reads as 0 (no data, controller idle), via vm-superio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::{BusDevice, DeviceAction};

/// First i8042 port (data); the range runs to the command port 0x64.
/// Port 0x61 in between belongs to KVM's in-kernel PIT speaker.
pub const I8042_PORT: u16 = 0x60;
/// Length of the i8042 range (0x60..=0x64).
pub const I8042_LEN: u16 = 5;

/// A reset request latched by the device.
#[derive(Clone, Default)]
pub struct ResetLatch(Arc<AtomicBool>);

impl Trigger for ResetLatch {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The i8042 controller on the PIO bus.
pub struct I8042 {
    device: I8042Device<ResetLatch>,
    latch: ResetLatch,
}

impl I8042 {
    /// A controller with no reset pending.
    pub fn new() -> Self {
        let latch = ResetLatch::default();
        I8042 {
            device: I8042Device::new(latch.clone()),
            latch,
        }
    }
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for byte in data.iter_mut() {
            *byte = self.device.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            // The latch cannot fail.
            let _ = self.device.write(reg, value);
        }
        if self.latch.0.swap(false, Ordering::SeqCst) {
            DeviceAction::Reset
        } else {
            DeviceAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_on_the_command_port() {
        let mut dev = I8042::new();
        assert_eq!(dev.write(4, &[0xfe]), DeviceAction::Reset);
        assert_eq!(dev.write(4, &[0xfe]), DeviceAction::Reset, "latch re-arms");
    }

    #[test]
    fn other_writes_do_nothing() {
        let mut dev = I8042::new();
        assert_eq!(dev.write(4, &[0xaa]), DeviceAction::None);
        assert_eq!(dev.write(0, &[0xfe]), DeviceAction::None, "data port");
        assert_eq!(dev.write(4, &[]), DeviceAction::None);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
    }
}
