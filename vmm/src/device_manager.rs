//! Wiring virtio devices into the VM: each gets the next 4 KiB window on
//! the MMIO bus (from [`VIRTIO_MMIO_BASE`]) and the next GSI (from
//! [`VIRTIO_GSI_FIRST`]), its interrupt eventfd becomes an irqfd on that
//! GSI, each queue's eventfd becomes an ioeventfd on `QueueNotify` (with the
//! queue index as datamatch), and the kernel learns of it from a
//! `virtio_mmio.device=4K@<base>:<gsi>` command-line entry
//! (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};

use crate::arch::x86_64::layout::{VIRTIO_GSI_FIRST, VIRTIO_GSI_LAST, VIRTIO_MMIO_BASE};
use crate::devices::bus::{lock, SharedDevice};
use crate::devices::virtio::mmio::{reg, MMIO_WINDOW_SIZE};
use crate::devices::virtio::MmioTransport;
use crate::devices::Bus;
use crate::error::{kvm_err, Result, VmmError};

/// Most virtio devices one VM can have (one GSI each).
pub const MAX_VIRTIO_DEVICES: usize = (VIRTIO_GSI_LAST - VIRTIO_GSI_FIRST + 1) as usize;

/// One attached virtio-mmio device.
#[derive(Clone)]
pub struct AttachedDevice {
    /// The transport (and device) behind the window.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Guest physical address of its register window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// Its virtio device ID.
    pub device_type: u32,
}

impl std::fmt::Debug for AttachedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedDevice")
            .field("base", &format_args!("{:#x}", self.base))
            .field("gsi", &self.gsi)
            .field("device_type", &self.device_type)
            .finish()
    }
}

/// The kernel command-line entry announcing a device.
pub fn cmdline_entry(base: u64, gsi: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{gsi}")
}

/// The VM's virtio devices, in attachment order (which is the order the
/// guest enumerates them: the first block device is `vda`).
#[derive(Default)]
pub struct DeviceManager {
    devices: Vec<AttachedDevice>,
}

impl DeviceManager {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `transport` the next window and GSI and registers it with KVM
    /// and on `bus`.
    pub fn attach(&mut self, vm: &VmFd, bus: &mut Bus, transport: MmioTransport) -> Result<()> {
        let n = self.devices.len();
        if n >= MAX_VIRTIO_DEVICES {
            return Err(VmmError::Config(format!(
                "{}: at most {MAX_VIRTIO_DEVICES} virtio devices fit the interrupt lines",
                transport.name()
            )));
        }
        let base = VIRTIO_MMIO_BASE + n as u64 * MMIO_WINDOW_SIZE;
        let gsi = VIRTIO_GSI_FIRST + n as u32;
        vm.register_irqfd(transport.interrupt().eventfd(), gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let notify = IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY);
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            // Without it, the QueueNotify write exits to the VMM, which
            // signals the same eventfd: slower, still correct.
            if let Err(e) = vm.register_ioevent(evt, &notify, queue as u32) {
                tracing::warn!(
                    "{}: KVM_IOEVENTFD for queue {queue} failed ({e}); notifications take a VM exit",
                    transport.name()
                );
            }
        }
        let device_type = transport.device_type();
        tracing::debug!(
            "{} at {base:#x}, GSI {gsi}: {}",
            transport.name(),
            cmdline_entry(base, gsi)
        );
        let transport = Arc::new(Mutex::new(transport));
        let shared: SharedDevice = transport.clone();
        bus.insert(base, MMIO_WINDOW_SIZE, shared)?;
        self.devices.push(AttachedDevice {
            transport,
            base,
            gsi,
            device_type,
        });
        Ok(())
    }

    /// The attached devices.
    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// The connected vhost-user sockets of the devices.
    pub fn vhost_user_sockets(&self) -> Vec<std::os::fd::RawFd> {
        self.devices
            .iter()
            .filter_map(|d| lock(&d.transport).vhost_user_socket())
            .collect()
    }

    /// The transports, for the event loop.
    pub fn transports(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.devices.iter().map(|d| d.transport.clone()).collect()
    }

    /// `base` plus one `virtio_mmio.device=` entry per device.
    pub fn extend_cmdline(&self, base: &str) -> String {
        let mut cmdline = base.trim_end().to_string();
        for d in &self.devices {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&cmdline_entry(d.base, d.gsi));
        }
        cmdline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entries_name_window_and_gsi() {
        assert_eq!(
            cmdline_entry(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(DeviceManager::new().extend_cmdline("quiet "), "quiet");
        assert_eq!(MAX_VIRTIO_DEVICES, 19);
    }
}
