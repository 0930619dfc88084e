//! The virtio-mmio transport, version 2 (virtio 1.x, "modern"), for any
//! [`VirtioDevice`].
//!
//! One 4 KiB window per device on the MMIO bus: control registers below
//! 0x100, the device's configuration space from 0x100. Registers are 32 bits
//! wide and aligned; other accesses read as zero and are ignored on write.
//!
//! The driver's side of the handshake is checked step by step: status bits
//! only in order (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), features only
//! while negotiating, `FEATURES_OK` refused for features not offered or
//! without `VIRTIO_F_VERSION_1`, queues configured only between
//! `FEATURES_OK` and `DRIVER_OK` and checked when set ready. Writing 0 to
//! `Status` resets the device. Whatever the guest does wrong is logged
//! (rate-limited) and answered the way the spec lets a device answer: a
//! status bit that does not stick, a queue that stays not ready.
//!
//! `QueueNotify` writes normally never get here: KVM signals the queue's
//! ioeventfd directly. One that does (no ioeventfd) signals the same eventfd.
//!
//! A device whose queues another process serves (vhost-user) does its
//! setup and teardown with that process inside the `DRIVER_OK` and reset
//! writes; when that fails, the write answers
//! [`DeviceAction::DeviceFailed`] and the VM ends.

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};

use super::queue::{QueueError, RingPart, VirtQueue};
use super::{
    Activation, DeviceContext, HostSource, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::bus::{BusDevice, DeviceAction};
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::memory::GuestMemoryMmap;

/// `MagicValue`: "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version` of the transport: 2, the virtio 1.x layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "AMPH" in little-endian.
pub const MMIO_VENDOR_ID: u32 = 0x4850_4d41;
/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

pub mod reg;

const S_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// A virtio device and its virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    name: String,
    mem: GuestMemoryMmap,
    queues: Vec<VirtQueue>,
    queue_events: Vec<EventFd>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    notify_exits: u64,
    log: LogLimiter,
}

impl MmioTransport {
    /// Puts `device` behind a transport on guest memory `mem`, with one
    /// notification eventfd per queue and an interrupt eventfd.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        let name = device.name();
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                VirtQueue::new(max).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name}: {e}"))
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        let interrupt = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK)?);
        Ok(MmioTransport {
            device,
            name,
            mem,
            queues,
            queue_events,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            notify_exits: 0,
            log: LogLimiter::new(),
        })
    }

    /// The device's name for log lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtio device ID.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Per-queue notification eventfds (register as ioeventfds on
    /// `QueueNotify` with the queue index as datamatch).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt (register its eventfd as an irqfd).
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// The `Status` register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device's queues.
    pub fn queues(&self) -> &[VirtQueue] {
        &self.queues
    }

    /// `QueueNotify` writes that reached the VMM instead of an ioeventfd.
    pub fn notify_exits(&self) -> u64 {
        self.notify_exits
    }

    /// Guest-caused problems seen so far (logged or not).
    pub fn guest_errors(&self) -> u64 {
        self.log.total()
    }

    /// Whether another process serves the queues (see
    /// [`VirtioDevice::queues_served_elsewhere`]): their eventfds are not
    /// the event loop's to read.
    pub fn queues_served_elsewhere(&self) -> bool {
        self.device.queues_served_elsewhere()
    }

    /// The device's vhost-user socket, if any.
    pub fn vhost_user_socket(&self) -> Option<std::os::fd::RawFd> {
        self.device.vhost_user_socket()
    }

    /// A failure of the device that ends the VM, once.
    pub fn take_device_failure(&mut self) -> Option<String> {
        self.device.take_failure()
    }

    /// Whether the driver finished initialisation and nothing failed.
    pub fn is_active(&self) -> bool {
        self.status & (S_DRIVER_OK | S_FAILED | S_NEEDS_RESET) == S_DRIVER_OK
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    /// Queue `index` was notified (from the event loop).
    pub fn notify_queue(&mut self, index: usize) {
        if !self.is_active() {
            // Buffers made available before DRIVER_OK are looked at on
            // activation; nothing to do now.
            return;
        }
        match self.queues.get(index) {
            None => {
                guest_warn!(
                    self.log,
                    "{}: notification for queue {index}, which does not exist",
                    self.name
                );
                return;
            }
            Some(q) if !q.ready() => {
                guest_warn!(
                    self.log,
                    "{}: notification for queue {index}, which is not ready",
                    self.name
                );
                return;
            }
            Some(_) => {}
        }
        let mut ctx = DeviceContext {
            mem: &self.mem,
            queues: &mut self.queues,
            interrupt: &self.interrupt,
        };
        self.device.process_queue(&mut ctx, index);
    }

    /// The device's host-side descriptors (from the event loop).
    pub fn host_sources(&self) -> Vec<HostSource> {
        self.device.host_sources()
    }

    /// A host-side descriptor is ready (from the event loop).
    pub fn host_event(&mut self, id: u32, events: EventSet) {
        if self.is_active() {
            let mut ctx = DeviceContext {
                mem: &self.mem,
                queues: &mut self.queues,
                interrupt: &self.interrupt,
            };
            self.device.host_event(Some(&mut ctx), id, events);
        } else {
            self.device.host_event(None, id, events);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            tracing::debug!("{}: reset by the driver", self.name);
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's to set.
        let value = (value & !S_NEEDS_RESET) | (self.status & S_NEEDS_RESET);
        if value & self.status != self.status {
            guest_warn!(
                self.log,
                "{}: status {value:#x} clears bits of {:#x}; only a reset (0) may",
                self.name,
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let mut status = self.status;
        let mut activate = false;
        if added & S_ACKNOWLEDGE != 0 {
            status |= S_ACKNOWLEDGE;
        }
        if added & S_DRIVER != 0 {
            status = self.step(status, S_ACKNOWLEDGE, S_DRIVER, "DRIVER");
        }
        if added & S_FEATURES_OK != 0 {
            if self.features_acceptable() {
                status = self.step(status, S_DRIVER, S_FEATURES_OK, "FEATURES_OK");
            } else {
                guest_warn!(
                    self.log,
                    "{}: FEATURES_OK refused for features {:#x} (offered {:#x}, VERSION_1 required)",
                    self.name,
                    self.driver_features,
                    self.offered_features()
                );
            }
        }
        if added & S_DRIVER_OK != 0 {
            status = self.step(status, S_FEATURES_OK, S_DRIVER_OK, "DRIVER_OK");
            activate = status & S_DRIVER_OK != 0;
        }
        if added & S_FAILED != 0 {
            tracing::debug!("{}: the driver gave up (FAILED)", self.name);
            status |= S_FAILED;
        }
        let unknown = added
            & !(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED | S_NEEDS_RESET);
        if unknown != 0 {
            guest_warn!(self.log, "{}: unknown status bits {unknown:#x}", self.name);
        }
        self.status = status;
        if activate {
            self.activate();
        }
    }

    /// Sets `bit` if `needed` is already set.
    fn step(&mut self, status: u32, needed: u32, bit: u32, what: &str) -> u32 {
        if status & needed != 0 {
            status | bit
        } else {
            guest_warn!(self.log, "{}: {what} set out of order", self.name);
            status
        }
    }

    fn features_acceptable(&self) -> bool {
        let f = self.driver_features;
        f & !self.offered_features() == 0 && f & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        tracing::debug!(
            "{}: activated with features {:#x}",
            self.name,
            self.driver_features
        );
        self.device.activate(&Activation {
            features: self.driver_features,
            mem: &self.mem,
            queues: &self.queues,
            queue_events: &self.queue_events,
        });
        // Look at every queue once: buffers may have been made available
        // (and notified) before DRIVER_OK. (A vhost-user backend takes it
        // as a kick.)
        for (q, evt) in self.queues.iter().zip(&self.queue_events) {
            if q.ready() {
                let _ = evt.write(1);
            }
        }
    }

    /// The selected queue, if it may be configured now.
    fn configurable_queue(&mut self, what: &str) -> Option<&mut VirtQueue> {
        let allowed = self.status & (S_FEATURES_OK | S_DRIVER_OK | S_FAILED) == S_FEATURES_OK;
        let sel = self.queue_sel;
        let name = &self.name;
        match self.queues.get_mut(sel as usize) {
            Some(q) if allowed && !q.ready() => Some(q),
            Some(q) => {
                let ready = q.ready();
                guest_warn!(
                    self.log,
                    "{name}: {what} for queue {sel} ignored (status {:#x}, ready {ready})",
                    self.status
                );
                None
            }
            None => {
                guest_warn!(
                    self.log,
                    "{name}: {what} for queue {sel}, which does not exist"
                );
                None
            }
        }
    }

    fn set_queue_ready(&mut self, value: u32) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let sel = self.queue_sel;
        if value == 0 {
            if let Some(q) = self.queues.get_mut(sel as usize) {
                q.clear_ready();
            }
            return;
        }
        let mem = self.mem.clone();
        let Some(q) = self.configurable_queue("QueueReady") else {
            return;
        };
        let result: Result<(), QueueError> = q.set_ready(&mem, event_idx);
        if let Err(e) = result {
            guest_warn!(self.log, "{}: queue {sel} stays not ready: {e}", self.name);
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & (S_DRIVER | S_FEATURES_OK | S_FAILED) != S_DRIVER {
                    guest_warn!(
                        self.log,
                        "{}: DriverFeatures written outside negotiation (status {:#x})",
                        self.name,
                        self.status
                    );
                    return;
                }
                let value = u64::from(value);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    // No features up there: accept only zeros.
                    _ if value == 0 => {}
                    sel => {
                        guest_warn!(self.log, "{}: features {value:#x} in page {sel}", self.name);
                    }
                }
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                // Too large to be a size: store one that fails the checks.
                let size = u16::try_from(value).unwrap_or(0);
                if let Some(q) = self.configurable_queue("QueueNum") {
                    q.set_size(size);
                }
            }
            reg::QUEUE_READY => self.set_queue_ready(value),
            reg::QUEUE_NOTIFY => {
                self.notify_exits += 1;
                match self.queue_events.get(value as usize) {
                    Some(evt) => {
                        let _ = evt.write(1);
                    }
                    None => guest_warn!(
                        self.log,
                        "{}: notification for queue {value}, which does not exist",
                        self.name
                    ),
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                let part = match offset & !0xf {
                    reg::QUEUE_DESC_LOW => RingPart::Descriptors,
                    reg::QUEUE_DRIVER_LOW => RingPart::Avail,
                    _ => RingPart::Used,
                };
                let high = offset & 0x4 != 0;
                if let Some(q) = self.configurable_queue("ring address") {
                    q.set_address(part, high, value);
                }
            }
            reg::SHM_SEL => {}
            _ => guest_warn!(
                self.log,
                "{}: write of {value:#x} to read-only or unknown register {offset:#x}",
                self.name
            ),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: length and base all-ones.
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => 0,
            _ => {
                guest_warn!(
                    self.log,
                    "{}: read of write-only or unknown register {offset:#x}",
                    self.name
                );
                0
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            if data.len() > 8 {
                data.fill(0);
                return;
            }
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            guest_warn!(
                self.log,
                "{}: {}-byte read at {offset:#x}; registers are 32-bit aligned",
                self.name,
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset >= reg::CONFIG {
            if data.len() > 8 || !self.device.write_config(offset - reg::CONFIG, data) {
                guest_warn!(
                    self.log,
                    "{}: configuration write at {:#x} ignored",
                    self.name,
                    offset - reg::CONFIG
                );
            }
            return DeviceAction::None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(
                self.log,
                "{}: {}-byte write at {offset:#x}; registers are 32-bit",
                self.name,
                data.len()
            );
            return DeviceAction::None;
        };
        if offset % 4 != 0 {
            guest_warn!(self.log, "{}: unaligned write at {offset:#x}", self.name);
            return DeviceAction::None;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
        match self.device.take_failure() {
            Some(detail) => DeviceAction::DeviceFailed {
                device: self.name.clone(),
                detail,
            },
            None => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests;
