//! Virtio devices over the virtio-mmio transport (virtio 1.x, MMIO version 2).
//!
//! ```text
//! mmio.rs       MmioTransport: the register window, feature negotiation, status
//!               state machine, queue setup; device-independent
//! queue.rs      VirtQueue: driver configuration checked, ring state
//! chain.rs      descriptor chains walked with every guest field checked
//! interrupt.rs  InterruptStatus + the irqfd
//! net/          virtio-net on passt's socket protocol (qemu's stream netdev)
//! block/        virtio-blk on a host file
//! console/      virtio-console, one port, to host fds or a unix socket
//! vhost_user.rs the frontend side of a vhost-user backend (another process
//!               serves the queues)
//! fs/           virtio-fs served by a vhost-user backend (virtiofsd)
//! ```
//!
//! A device implements [`VirtioDevice`]. The transport owns its queues and
//! interrupt and lends them to the device in a [`DeviceContext`] when a queue
//! is notified or a host-side file descriptor is ready. Both happen on the
//! event loop thread ([`crate::event_loop`]); register accesses happen on
//! vCPU threads. One mutex around the transport serialises the two.

use std::os::fd::RawFd;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

pub mod block;
pub mod chain;
pub mod console;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
#[cfg(test)]
pub(crate) mod testing;
pub mod vhost_user;

pub use interrupt::Interrupt;
pub use mmio::MmioTransport;
pub use queue::VirtQueue;

/// `VIRTIO_F_VERSION_1`: the device is a virtio 1.x ("modern") device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression by ring index.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// What a device lends from its transport while it works: guest memory,
/// its queues (in device order) and its interrupt.
pub struct DeviceContext<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The device's queues.
    pub queues: &'a mut [VirtQueue],
    /// The device's interrupt.
    pub interrupt: &'a Interrupt,
}

/// What a device gets when the driver sets `DRIVER_OK`: the queues as the
/// driver configured them and their notification eventfds (the ioeventfds
/// KVM signals on `QueueNotify`).
pub struct Activation<'a> {
    /// The features the driver accepted.
    pub features: u64,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The device's queues (a queue the driver did not set up is not ready).
    pub queues: &'a [VirtQueue],
    /// Each queue's notification eventfd.
    pub queue_events: &'a [EventFd],
}

/// A host-side file descriptor a device wants polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSource {
    /// The device's own number for it, passed back to
    /// [`VirtioDevice::host_event`].
    pub id: u32,
    /// The descriptor (owned by the device, valid while it lives).
    pub fd: RawFd,
    /// What to wait for; empty means "not now".
    pub events: EventSet,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 block, 3 console, ...).
    fn device_type(&self) -> u32;

    /// A short name for log lines, e.g. `virtio-blk(/path)`.
    fn name(&self) -> String;

    /// The maximum size of each queue; the slice's length is the number of
    /// queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device features offered. The transport adds `VIRTIO_F_VERSION_1` and
    /// `VIRTIO_RING_F_EVENT_IDX`.
    fn features(&self) -> u64;

    /// Reads `data.len()` bytes of the configuration space at `offset`.
    /// Bytes beyond the device's configuration read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver wrote the configuration space. Read-only by default:
    /// returns `false` when the write is ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) -> bool {
        false
    }

    /// The driver set `DRIVER_OK` (see [`Activation`]). A device that
    /// cannot go live records why for [`VirtioDevice::take_failure`].
    fn activate(&mut self, _activation: &Activation<'_>) {}

    /// The driver notified queue `index`, which is ready.
    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, index: usize);

    /// Host-side descriptors to poll, with what the device waits for now.
    /// Asked again after every call into the device.
    fn host_sources(&self) -> Vec<HostSource> {
        Vec::new()
    }

    /// Host source `id` is ready with `events`. `ctx` is `None` while the
    /// driver has not activated the device (host data must then wait).
    fn host_event(&mut self, _ctx: Option<&mut DeviceContext<'_>>, _id: u32, _events: EventSet) {}

    /// The driver reset the device: forget per-activation state.
    fn reset(&mut self) {}

    /// Whether another process serves the queues now (vhost-user): their
    /// notification eventfds go to it, and the VMM must not consume them.
    /// Asked again after every call into the device: a device whose
    /// backend went away may serve its queues itself from then on.
    fn queues_served_elsewhere(&self) -> bool {
        false
    }

    /// The connected vhost-user socket, if the device has one: the only
    /// descriptor the seccomp filters let `sendmsg`/`recvmsg` use.
    fn vhost_user_socket(&self) -> Option<RawFd> {
        None
    }

    /// A failure that ends the VM (a vhost-user backend that refused its
    /// setup), once: what went wrong, for the exit reason. Asked after
    /// every call into the device.
    fn take_failure(&mut self) -> Option<String> {
        None
    }
}

/// Copies `src` into `data`, as if `src` were followed by zeros: the way a
/// configuration space of `src.len()` bytes reads at `offset`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(avail) = src.get(start..) {
        let n = avail.len().min(data.len());
        data[..n].copy_from_slice(&avail[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_pad_with_zeros() {
        let src = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&src, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&src, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&src, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
