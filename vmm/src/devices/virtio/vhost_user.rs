//! The frontend side of a vhost-user backend: another process (virtiofsd,
//! say) serves a device's queues straight from guest memory, and the VMM
//! only tells it where things are (rust-vmm's `vhost` crate speaks the
//! protocol).
//!
//! - [`VhostUserConnection::new`], while the VM is built (before the
//!   jail), on a socket connected to the backend (by the VMM, or by its
//!   caller, which hands the descriptor down): `SET_OWNER`,
//!   `GET_FEATURES`, `GET_PROTOCOL_FEATURES` / `SET_PROTOCOL_FEATURES`
//!   (`REPLY_ACK`, so every later request is acknowledged, and `MQ`),
//!   `GET_QUEUE_NUM`. A backend that lacks what amphi's transport offers
//!   the guest (`VERSION_1`, `EVENT_IDX`) or enough queues is refused here,
//!   by name.
//! - [`VhostUserConnection::start`], when the driver sets `DRIVER_OK`:
//!   `SET_FEATURES` (what the driver accepted), `SET_MEM_TABLE` (the guest
//!   RAM memfd, its offsets and host addresses), and per queue
//!   `SET_VRING_NUM`, `SET_VRING_BASE`, `SET_VRING_ADDR` (host addresses
//!   of the rings), `SET_VRING_CALL`, `SET_VRING_KICK`, `SET_VRING_ENABLE`.
//!   The kick eventfd is the queue's ioeventfd: KVM signals the backend
//!   directly. The call eventfd is the device's own: the VMM sets the
//!   `VRING` bit of `InterruptStatus` before it raises the interrupt, as a
//!   virtio-mmio driver reads the status first.
//! - [`VhostUserConnection::stop`], on a device reset: per started queue
//!   `SET_VRING_ENABLE 0` and `GET_VRING_BASE` (which stops the ring in the
//!   backend).
//!
//! Requests are synchronous: each waits for the backend's reply. A backend
//! that exited is an error at once (the socket reads end-of-file), and
//! [`RequestError::connection_lost`] tells it from a refusal (the device
//! then serves its queues itself, see `super::fs`). One that
//! is alive and silent is an error after [`HANDSHAKE_TIMEOUT`] in the
//! handshake; later, in the guest's `DRIVER_OK` or reset write, the vCPU
//! waits for it as for a stuck disk, until the run ends (see
//! `crate::vm::UNSTICK_GRACE`).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::queue::{RingPart, VirtQueue};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::error::{Result, VmmError};
use crate::memory::GuestMemoryMmap;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a virtio feature bit that only the
/// vhost-user protocol uses.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The protocol features the frontend uses when the backend has them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ
}

/// One queue to start in the backend.
pub struct VringSetup<'a> {
    /// The queue's index.
    pub index: usize,
    /// The queue as the driver configured it (ready).
    pub queue: &'a VirtQueue,
    /// What the backend waits on for new buffers (the queue's ioeventfd).
    pub kick: &'a EventFd,
    /// What the backend signals when it used buffers.
    pub call: &'a EventFd,
}

/// A connected vhost-user backend.
pub struct VhostUserConnection {
    frontend: Frontend,
    label: String,
    fd: RawFd,
    features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl std::fmt::Debug for VhostUserConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserConnection")
            .field("socket", &self.label)
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// `step: error`, for the `vhost` crate's errors.
fn step_err(step: &'static str) -> impl FnOnce(vhost::Error) -> String {
    move |e| format!("{step}: {e}")
}

/// A request to a started backend that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RequestError {
    /// What failed, for messages.
    pub detail: String,
    /// Whether the connection itself is gone (the backend exited or
    /// closed the socket, or the socket failed), rather than the backend
    /// refusing the request or the VMM refusing to send it.
    pub connection_lost: bool,
}

impl From<String> for RequestError {
    fn from(detail: String) -> Self {
        RequestError {
            detail,
            connection_lost: false,
        }
    }
}

/// Whether `e` says the connection is gone.
pub fn connection_lost(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    matches!(
        e,
        vhost::Error::VhostUserProtocol(
            E::Disconnected | E::PartialMessage | E::SocketBroken(_) | E::SocketError(_)
        )
    )
}

/// [`step_err`] for requests to a started backend.
fn request_err(step: &'static str) -> impl FnOnce(vhost::Error) -> RequestError {
    move |e| RequestError {
        connection_lost: connection_lost(&e),
        detail: format!("{step}: {e}"),
    }
}

impl VhostUserConnection {
    /// Negotiates with the backend at the other end of `stream` (see the
    /// module documentation); `device` names the device in errors, `label`
    /// the socket. The backend must serve at least `queues` queues and
    /// answer within [`HANDSHAKE_TIMEOUT`].
    pub fn new(device: &str, stream: UnixStream, label: String, queues: usize) -> Result<Self> {
        Self::with_timeout(device, stream, label, queues, HANDSHAKE_TIMEOUT)
    }

    /// [`VhostUserConnection::new`] with the backend given `timeout` to
    /// answer: the handshake runs on a helper thread, and a backend that
    /// is silent that long has its socket shut down (which fails the
    /// request waiting on it) and is an error.
    pub fn with_timeout(
        device: &str,
        stream: UnixStream,
        label: String,
        queues: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let fd = stream.as_raw_fd();
        let frontend = Frontend::from_stream(stream, queues as u64);
        let fail = |detail: String| VmmError::Backend {
            device: device.to_string(),
            detail: format!("vhost-user handshake: {detail}"),
        };
        let (tx, rx) = mpsc::channel();
        let mut worker = frontend.clone();
        let helper = std::thread::Builder::new()
            .name("vhost-user-handshake".into())
            .spawn(move || {
                let _ = tx.send(handshake(&mut worker, queues));
            })
            .map_err(|e| fail(format!("starting its thread: {e}")))?;
        let outcome = match rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(_) => {
                // SAFETY: shutdown(2) of the socket `frontend` owns; it
                // stays open until `frontend` is dropped.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                Err(format!(
                    "the backend did not answer within {timeout:?} (is it stopped or stuck?)"
                ))
            }
        };
        if helper.join().is_err() {
            return Err(fail("its thread panicked".into()));
        }
        let (features, protocol) = outcome.map_err(fail)?;
        tracing::debug!(
            "vhost-user {label}: features {features:#x}, protocol features {protocol:?}"
        );
        Ok(VhostUserConnection {
            frontend,
            label,
            fd,
            features,
            protocol,
        })
    }

    /// The backend's virtio features (`GET_FEATURES`).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// What the socket is, for messages (its path, or its descriptor).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The connected socket (for the hang-up watch and the seccomp
    /// filters, which allow `sendmsg`/`recvmsg` on it alone).
    pub fn socket_fd(&self) -> RawFd {
        self.fd
    }

    /// Starts `vrings` in the backend with the driver's `features` over
    /// guest memory `mem` (which must be shared: a memfd).
    pub fn start(
        &mut self,
        features: u64,
        mem: &GuestMemoryMmap,
        vrings: &[VringSetup<'_>],
    ) -> std::result::Result<(), RequestError> {
        let f = &mut self.frontend;
        f.set_features(features | PROTOCOL_FEATURES)
            .map_err(request_err("SET_FEATURES"))?;
        let regions = memory_table(mem)?;
        f.set_mem_table(&regions)
            .map_err(request_err("SET_MEM_TABLE"))?;
        for v in vrings {
            let i = v.index;
            let q = v.queue;
            f.set_vring_num(i, q.size())
                .map_err(request_err("SET_VRING_NUM"))?;
            f.set_vring_base(i, 0)
                .map_err(request_err("SET_VRING_BASE"))?;
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_address(mem, q, RingPart::Descriptors)?,
                used_ring_addr: host_address(mem, q, RingPart::Used)?,
                avail_ring_addr: host_address(mem, q, RingPart::Avail)?,
                log_addr: None,
            };
            f.set_vring_addr(i, &config)
                .map_err(request_err("SET_VRING_ADDR"))?;
            f.set_vring_call(i, v.call)
                .map_err(request_err("SET_VRING_CALL"))?;
            f.set_vring_kick(i, v.kick)
                .map_err(request_err("SET_VRING_KICK"))?;
            f.set_vring_enable(i, true)
                .map_err(request_err("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Stops the queues `started` in the backend; returns where each one's
    /// available ring was (`GET_VRING_BASE`).
    pub fn stop(&mut self, started: &[usize]) -> std::result::Result<Vec<u32>, RequestError> {
        let f = &mut self.frontend;
        let mut bases = Vec::with_capacity(started.len());
        for &i in started {
            f.set_vring_enable(i, false)
                .map_err(request_err("SET_VRING_ENABLE"))?;
            bases.push(f.get_vring_base(i).map_err(request_err("GET_VRING_BASE"))?);
        }
        Ok(bases)
    }
}

/// How long a backend has to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `SET_OWNER` to `GET_QUEUE_NUM` (see the module documentation): the
/// backend's features and the protocol features in use.
fn handshake(
    f: &mut Frontend,
    queues: usize,
) -> std::result::Result<(u64, VhostUserProtocolFeatures), String> {
    f.set_owner().map_err(step_err("SET_OWNER"))?;
    let features = f.get_features().map_err(step_err("GET_FEATURES"))?;
    let needed = [
        (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
        (VIRTIO_RING_F_EVENT_IDX, "VIRTIO_RING_F_EVENT_IDX"),
        (PROTOCOL_FEATURES, "VHOST_USER_F_PROTOCOL_FEATURES"),
    ];
    for (bit, name) in needed {
        if features & bit == 0 {
            return Err(format!(
                "the backend does not offer {name} (features {features:#x})"
            ));
        }
    }
    let offered = f
        .get_protocol_features()
        .map_err(step_err("GET_PROTOCOL_FEATURES"))?;
    let protocol = offered & wanted_protocol_features();
    f.set_protocol_features(protocol)
        .map_err(step_err("SET_PROTOCOL_FEATURES"))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        // Every request from now on is acknowledged: a backend that
        // refuses one says so, instead of failing silently.
        f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let n = f.get_queue_num().map_err(step_err("GET_QUEUE_NUM"))?;
        if n < queues as u64 {
            return Err(format!(
                "the backend serves {n} queues; the device needs {queues}"
            ));
        }
    }
    Ok((features, protocol))
}

/// How long a refused connection is retried: a backend just started may
/// have bound its socket and not be listening yet.
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Connects to the backend listening on `socket`.
pub fn connect_socket(socket: &Path) -> std::io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + CONNECT_RETRY;
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The memory table for `SET_MEM_TABLE`: each RAM region's guest address,
/// size, host address, and the memfd with the region's offset in it.
pub fn memory_table(
    mem: &GuestMemoryMmap,
) -> std::result::Result<Vec<VhostUserMemoryRegionInfo>, String> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                format!(
                    "guest RAM at {:#x} is not shared memory (a memfd); a vhost-user backend \
                     cannot map it",
                    region.start_addr().0
                )
            })
        })
        .collect()
}

/// The host address of one of `q`'s rings (checked inside guest RAM when
/// the queue was set ready).
fn host_address(
    mem: &GuestMemoryMmap,
    q: &VirtQueue,
    part: RingPart,
) -> std::result::Result<u64, String> {
    let gpa = q.address(part);
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|e| format!("ring at {gpa:#x}: {e}"))
}
