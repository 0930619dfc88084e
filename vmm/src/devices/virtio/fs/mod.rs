//! virtio-fs (device type 26) served by a vhost-user backend, virtiofsd:
//! the VMM holds the register window and the configuration space (the
//! tag the guest mounts by, one request queue); virtiofsd maps guest RAM
//! and serves the two queues (0 high priority, 1 requests) itself. See
//! [`super::vhost_user`] for the protocol steps.
//!
//! What the VMM still does on the event loop:
//!
//! - per queue, the *call* eventfd virtiofsd signals after it used
//!   buffers: the VMM sets `VRING` in `InterruptStatus` and raises the
//!   interrupt (the backend cannot set the status a virtio-mmio driver
//!   reads first);
//! - the socket, watched for hang-up only.
//!
//! The queues' ioeventfds are the backend's kick eventfds: the event loop
//! leaves them alone ([`VirtioDevice::queues_served_elsewhere`]) while the
//! backend is there.
//!
//! When the backend is gone (the socket hung up or failed, or a request to
//! it at `DRIVER_OK` or reset found the connection lost), the device is
//! *backend lost* for the rest of its life: the VMM says so once on its
//! log, stops watching the socket and the call eventfds, and serves the
//! queues itself ([`lost`]): every FUSE request gets `-EIO`, so the
//! guest's file operations fail instead of waiting forever (the guest
//! cannot abort a virtio-fs connection). `queues_served_elsewhere` turns
//! false, and the event loop starts watching the ioeventfds (KVM's, and
//! the `QueueNotify` writes that reach the VMM, signal the same
//! eventfds). The VM runs on; whoever runs it decides when to end it.
//!
//! A ring the backend was serving is taken over where the backend left it
//! in guest memory, at the used ring's `idx` ([`VirtQueue::take_over`]):
//! the chains between it and the available ring's `idx` are the requests
//! virtiofsd had not completed, taken or not, as it completes a queue's
//! requests in order (its default `--thread-pool-size=0` handles them one
//! at a time on the queue's thread). The VMM's own ring state cannot be
//! used: the backend advanced the rings, not the VMM. So the requests in
//! flight at the death get `-EIO` too. (A backend completing out of order
//! could have used a later chain and not an earlier one; that chain would
//! be returned a second time, which a Linux driver reports as a broken
//! ring. amphi runs virtiofsd with the default.)
//!
//! A refusal by a live backend (a setup it does not accept, guest RAM it
//! cannot map) is a device failure that ends the VM
//! ([`crate::ExitReason::DeviceFailed`]), as before.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::queue::VirtQueue;
use super::vhost_user::{RequestError, VhostUserConnection, VringSetup};
use super::{read_config_bytes, Activation, DeviceContext, HostSource, VirtioDevice};
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::error::{Result, VmmError};

pub mod lost;
pub mod relay;

/// Bytes of the tag in the configuration space.
pub const TAG_LEN: usize = 36;
/// Queues: one high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Host source id of the vhost-user socket (watched for hang-up).
pub const SOURCE_SOCKET: u32 = 0;
/// Host source id of queue `q`'s call eventfd: `SOURCE_CALL + q`.
pub const SOURCE_CALL: u32 = 1;

/// Device features passed through from the backend when it has them.
const PASSTHROUGH_FEATURES: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Where a virtio-fs device's backend is.
#[derive(Clone, Debug)]
pub enum FsBackend {
    /// The unix socket the backend (virtiofsd) listens on: the VMM
    /// connects.
    Socket(PathBuf),
    /// A unix stream socket already connected to the backend (the caller
    /// connected it; the VMM uses a duplicate).
    Connected(Arc<OwnedFd>),
}

/// A virtio-fs device for [`crate::VmConfig`].
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The vhost-user connection's other end.
    pub backend: FsBackend,
    /// The tag the guest mounts by (`mount -t virtiofs TAG DIR`).
    pub tag: String,
}

impl FsConfig {
    /// A device whose backend listens on `socket`, with `tag` (checked:
    /// [`check_tag`]).
    pub fn new(socket: impl Into<PathBuf>, tag: &str) -> std::result::Result<Self, String> {
        check_tag(tag)?;
        Ok(FsConfig {
            backend: FsBackend::Socket(socket.into()),
            tag: tag.to_string(),
        })
    }

    /// A device on `socket`, already connected to its backend, with `tag`.
    /// `socket` must be a connected unix stream socket.
    pub fn connected(socket: OwnedFd, tag: &str) -> std::result::Result<Self, String> {
        check_tag(tag)?;
        check_connected_stream(socket.as_fd())?;
        Ok(FsConfig {
            backend: FsBackend::Connected(Arc::new(socket)),
            tag: tag.to_string(),
        })
    }
}

/// `fd` is a unix stream socket, connected (not listening).
fn check_connected_stream(fd: BorrowedFd<'_>) -> std::result::Result<(), String> {
    let opt = |name: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with an int-sized buffer and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(value)
    };
    let what = |e: std::io::Error| {
        format!(
            "descriptor {} is not a socket connected to a vhost-user backend ({e})",
            fd.as_raw_fd()
        )
    };
    let domain = opt(libc::SO_DOMAIN).map_err(what)?;
    let kind = opt(libc::SO_TYPE).map_err(what)?;
    let listening = opt(libc::SO_ACCEPTCONN).map_err(what)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening != 0 {
        return Err(format!(
            "descriptor {} is not a connected unix stream socket (domain {domain}, type \
             {kind}, listening {listening})",
            fd.as_raw_fd()
        ));
    }
    Ok(())
}

impl FsBackend {
    /// The connection, and what to call the socket in messages.
    fn open(&self) -> std::io::Result<(UnixStream, String)> {
        match self {
            FsBackend::Socket(path) => Ok((
                super::vhost_user::connect_socket(path)?,
                path.display().to_string(),
            )),
            FsBackend::Connected(fd) => {
                let stream = UnixStream::from(fd.as_fd().try_clone_to_owned()?);
                let peer = stream
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!(" to {}", p.display())))
                    .unwrap_or_default();
                Ok((stream, format!("fd {}{peer}", fd.as_raw_fd())))
            }
        }
    }
}

/// A tag is 1 to 36 bytes of UTF-8 without NUL, other control characters
/// or commas (`--fs SOCKET,TAG` splits at the last comma).
pub fn check_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(format!(
            "virtio-fs tag {tag:?} is {} bytes; it must be 1 to {TAG_LEN}",
            tag.len()
        ));
    }
    if let Some(c) = tag.chars().find(|c| c.is_control() || *c == ',') {
        return Err(format!(
            "virtio-fs tag {tag:?} contains {c:?}; control characters and commas are not allowed"
        ));
    }
    Ok(())
}

/// The virtio-fs device.
pub struct Fs {
    name: String,
    config: [u8; TAG_LEN + 4],
    backend: VhostUserConnection,
    /// Per queue, what the backend signals when it used buffers.
    calls: Vec<EventFd>,
    /// Queues running in the backend (since the last activation).
    started: Vec<usize>,
    /// The failure not yet reported ([`VirtioDevice::take_failure`]).
    failure: Option<String>,
    /// Failed for good: nothing is watched or started any more.
    failed: bool,
    /// The backend is gone: the VMM serves the queues ([`lost`]).
    lost: bool,
    /// Per queue, in backend-lost mode: its ring is still where the
    /// backend left it, to be taken over before it is served.
    take_over: [bool; NUM_QUEUES],
    /// The driver accepted `VIRTIO_F_INDIRECT_DESC` (passed through from
    /// the backend): its chains, which the VMM walks itself once the
    /// backend is lost, may use indirect tables (Linux's do).
    indirect: bool,
    /// Guest-caused warnings while the VMM serves the queues.
    log: LogLimiter,
}

impl Fs {
    /// Connects to the backend and negotiates with it (before the jail:
    /// the socket cannot be connected from inside).
    pub fn open(config: &FsConfig) -> Result<Self> {
        check_tag(&config.tag).map_err(VmmError::Config)?;
        let (stream, label) = config.backend.open().map_err(|e| {
            let socket = match &config.backend {
                FsBackend::Socket(path) => path.display().to_string(),
                FsBackend::Connected(fd) => format!("fd {}", fd.as_raw_fd()),
            };
            VmmError::Backend {
                device: format!("virtio-fs(tag {})", config.tag),
                detail: format!("vhost-user socket {socket}: {e}"),
            }
        })?;
        let name = format!("virtio-fs(tag {}, vhost-user socket {label})", config.tag);
        let backend = VhostUserConnection::new(&name, stream, label, NUM_QUEUES)?;
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| VmmError::Backend {
                device: name.clone(),
                detail: format!("creating the call eventfds: {e}"),
            })?;
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        // num_request_queues.
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            name,
            config: cfg,
            backend,
            calls,
            started: Vec::new(),
            failure: None,
            failed: false,
            lost: false,
            take_over: [false; NUM_QUEUES],
            indirect: false,
            log: LogLimiter::new(),
        })
    }

    /// The connection to the backend.
    pub fn backend(&self) -> &VhostUserConnection {
        &self.backend
    }

    /// Queues running in the backend.
    pub fn started(&self) -> &[usize] {
        &self.started
    }

    /// Whether the device failed for good.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Whether the backend is gone and the VMM answers the requests.
    pub fn backend_lost(&self) -> bool {
        self.lost
    }

    fn fail(&mut self, detail: String) {
        if !self.failed && !self.lost {
            tracing::error!("{}: {detail}", self.name);
            self.failed = true;
            self.failure = Some(detail);
        }
    }

    /// A request to the backend failed: the connection is gone (backend
    /// lost, `queues` to take over from it), or the backend refused
    /// (the device fails).
    fn request_failed(&mut self, what: &str, e: RequestError, queues: &[usize]) {
        if e.connection_lost {
            self.lose_backend(&format!("{what}: {e}"), queues);
        } else {
            self.fail(format!("{what}: {e}"));
        }
    }

    /// The backend is gone (`why`): from now on the VMM answers the
    /// queues, `queues` (those the backend served) from where the backend
    /// left them. Said once on the log.
    fn lose_backend(&mut self, why: &str, queues: &[usize]) {
        if self.lost || self.failed {
            return;
        }
        tracing::error!(
            "{}: the vhost-user backend ended ({why}); the guest's file system requests now \
             fail with EIO",
            self.name
        );
        self.lost = true;
        self.started.clear();
        // Wakes the event loop (the call eventfds are still in its set
        // until it next looks) when this happens on a vCPU thread, in the
        // DRIVER_OK or reset write: after that event it watches the
        // queues, and the driver's notifications come to the VMM.
        if let Some(call) = self.calls.first() {
            let _ = call.write(1);
        }
        for &q in queues {
            if let Some(flag) = self.take_over.get_mut(q) {
                *flag = true;
            }
        }
    }

    /// Backend lost: answers what queue `index` holds with `-EIO`, after
    /// taking its ring over from the backend if the backend served it
    /// (see the module documentation). Returns whether the driver wants
    /// an interrupt.
    fn serve(
        &mut self,
        mem: &crate::memory::GuestMemoryMmap,
        queue: &mut VirtQueue,
        index: usize,
    ) -> bool {
        let backend_served = self.take_over.get_mut(index).is_some_and(std::mem::take);
        if backend_served {
            // From the used ring's idx in guest memory, not the VMM's own
            // ring state (which the backend never advanced): virtiofsd
            // completes a queue's requests in order, so every chain from
            // there on is one it did not complete, taken (in flight at
            // its death) or not.
            match queue.take_over(mem) {
                Ok((used, avail)) => tracing::debug!(
                    "{}: queue {index} taken over at {used}; {} requests the backend did not \
                     complete get EIO",
                    self.name,
                    avail.wrapping_sub(used)
                ),
                Err(e) => guest_warn!(self.log, "{}: queue {index} not taken over: {e}", self.name),
            }
        }
        queue.set_indirect(self.indirect);
        lost::serve_queue(&self.name, &mut self.log, mem, queue, index)
            && queue.needs_notification(mem)
    }

    /// The backend just went away with the driver live: answers every
    /// ready queue now (requests in flight, and kicks that went to the
    /// backend unread) and raises the interrupt once, for used buffers
    /// the backend signalled and the VMM did not pass on yet, if nothing
    /// else.
    fn take_over_now(&mut self, ctx: &mut DeviceContext<'_>) {
        for call in &self.calls {
            let _ = call.read();
        }
        for index in 0..NUM_QUEUES {
            if let Some(queue) = ctx.queues.get_mut(index).filter(|q| q.ready()) {
                self.serve(ctx.mem, queue, index);
            }
        }
        ctx.interrupt.signal_used();
    }

    /// The backend signalled queue `q`: drain the count; raise the
    /// interrupt when the driver is live.
    fn used(&mut self, ctx: Option<&mut DeviceContext<'_>>, q: usize) {
        let Some(call) = self.calls.get(q) else {
            return;
        };
        if call.read().is_ok() {
            if let Some(ctx) = ctx {
                ctx.interrupt.signal_used();
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend.features() & PASSTHROUGH_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: &Activation<'_>) {
        self.indirect = activation.features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0;
        if self.failed {
            return;
        }
        if self.lost {
            // Fresh rings, the VMM's own from the start: the transport's
            // first look at each queue answers what is there.
            self.take_over = [false; NUM_QUEUES];
            return;
        }
        let vrings: Vec<VringSetup<'_>> = activation
            .queues
            .iter()
            .zip(activation.queue_events)
            .zip(&self.calls)
            .enumerate()
            .filter(|(_, ((q, _), _))| q.ready())
            .map(|(index, ((queue, kick), call))| VringSetup {
                index,
                queue,
                kick,
                call,
            })
            .collect();
        let indices: Vec<usize> = vrings.iter().map(|v| v.index).collect();
        match self
            .backend
            .start(activation.features, activation.mem, &vrings)
        {
            Ok(()) => {
                tracing::debug!("{}: queues {indices:?} started in the backend", self.name);
                self.started = indices;
            }
            Err(e) => self.request_failed("starting the vhost-user backend", e, &indices),
        }
    }

    fn reset(&mut self) {
        // The transport resets the rings: nothing is left to take over.
        self.take_over = [false; NUM_QUEUES];
        if self.started.is_empty() || self.failed || self.lost {
            self.started.clear();
            return;
        }
        let started = std::mem::take(&mut self.started);
        if let Err(e) = self.backend.stop(&started) {
            self.request_failed("stopping the vhost-user backend on reset", e, &[]);
        }
        for call in &self.calls {
            let _ = call.read();
        }
    }

    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, index: usize) {
        // While the backend serves the queues, their notifications never
        // come here (queues_served_elsewhere).
        if !self.lost {
            return;
        }
        let Some(queue) = ctx.queues.get_mut(index) else {
            return;
        };
        if self.serve(ctx.mem, queue, index) {
            ctx.interrupt.signal_used();
        }
    }

    fn host_sources(&self) -> Vec<HostSource> {
        let watch = |events: EventSet| {
            if self.failed || self.lost {
                EventSet::empty()
            } else {
                events
            }
        };
        let mut sources = vec![HostSource {
            id: SOURCE_SOCKET,
            fd: self.backend.socket_fd(),
            // Hang-up only: the replies on this socket are read by the
            // requests that wait for them.
            events: watch(EventSet::READ_HANG_UP),
        }];
        for (q, call) in self.calls.iter().enumerate() {
            sources.push(HostSource {
                id: SOURCE_CALL + q as u32,
                fd: call.as_raw_fd(),
                events: watch(EventSet::IN),
            });
        }
        sources
    }

    fn host_event(&mut self, ctx: Option<&mut DeviceContext<'_>>, id: u32, events: EventSet) {
        if id == SOURCE_SOCKET {
            if events.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR) {
                let why = if events.contains(EventSet::ERROR) {
                    "its socket failed"
                } else {
                    "it hung up: exited, or closed the socket"
                };
                let started = self.started.clone();
                self.lose_backend(why, &started);
                if let (true, Some(ctx)) = (self.lost, ctx) {
                    self.take_over_now(ctx);
                }
            }
            return;
        }
        if let Some(q) = id.checked_sub(SOURCE_CALL) {
            self.used(ctx, q as usize);
        }
    }

    fn queues_served_elsewhere(&self) -> bool {
        !self.lost
    }

    fn vhost_user_socket(&self) -> Option<RawFd> {
        Some(self.backend.socket_fd())
    }

    fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }
}

#[cfg(test)]
mod tests;
