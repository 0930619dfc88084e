//! A virtio-mmio device's interrupt: the `InterruptStatus` bits the driver
//! reads and acknowledges, and an `EventFd` registered with KVM as an irqfd,
//! so raising the interrupt is one `write(2)` with no exit to user space.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// `InterruptStatus` bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// `InterruptStatus` bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// The interrupt line and status of one device.
#[derive(Debug)]
pub struct Interrupt {
    irq: EventFd,
    status: AtomicU32,
    error_logged: AtomicBool,
}

impl Interrupt {
    /// An interrupt raised through `irq` (an irqfd once registered with KVM).
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            irq,
            status: AtomicU32::new(0),
            error_logged: AtomicBool::new(false),
        }
    }

    /// Tells the driver that a used ring changed.
    pub fn signal_used(&self) {
        self.raise(INT_VRING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // Fails only if the counter would overflow, i.e. KVM stopped
        // consuming it; the status bit is set anyway.
        if let Err(e) = self.irq.write(1) {
            if !self.error_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!("virtio interrupt eventfd write failed: {e}");
            }
        }
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits` (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears the status (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_sets_status_and_fires_the_eventfd() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let int = Interrupt::new(irq.try_clone().unwrap());
        assert!(irq.read().is_err(), "quiet at first");
        int.signal_used();
        int.signal_config();
        assert_eq!(int.status(), INT_VRING | INT_CONFIG);
        assert_eq!(irq.read().unwrap(), 2);
        int.ack(INT_VRING);
        assert_eq!(int.status(), INT_CONFIG);
        int.reset();
        assert_eq!(int.status(), 0);
    }
}
