//! virtio-net with one receive queue (0) and one transmit queue (1), on
//! passt's socket protocol (QEMU's `-netdev stream`; see [`stream`]).
//!
//! Offered: `VIRTIO_NET_F_MAC` (the configuration space holds the MAC the
//! VMM was given, or [`DEFAULT_MAC`]); the transport adds
//! `VIRTIO_F_VERSION_1` and `VIRTIO_RING_F_EVENT_IDX`. No offloads, no
//! mergeable receive buffers: every buffer starts with the 12-byte
//! `virtio_net_hdr_v1`, which the device ignores on transmit and writes
//! zeroed (`num_buffers` 1) on receive, followed by one whole frame.
//!
//! The guest's chains are checked like every device's ([`super::chain`]),
//! then: a transmit chain must be device-readable only, hold the header and
//! a frame of [`MIN_FRAME`] to [`MAX_FRAME`] bytes; a receive chain must be
//! device-writable only and hold at least the header. A bad chain goes
//! back to the guest unused (length 0), logged within the device's limit.
//! A frame from the peer larger than the receive buffer it would go into
//! is dropped and counted; the buffer waits for the next one.
//!
//! Back-pressure both ways, nothing buffered without bound: transmit
//! buffers are taken from the guest only while the socket takes frames
//! (else the device waits for it to be writable), and the socket is read
//! only while no frame from the peer waits for a receive buffer (else the
//! device waits for the guest to post one). When the link goes down (passt
//! went away, or broke the protocol) it is logged once; transmit buffers
//! are then consumed and dropped, so the guest is never stuck, and nothing
//! is received. Losing the network does not end the VM.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{virtio_net_hdr_v1, VIRTIO_NET_F_MAC};
use vmm_sys_util::epoll::EventSet;

use super::chain::{read_stream, write_stream, Chain, ChainError};
use super::queue::{Popped, VirtQueue};
use super::{read_config_bytes, DeviceContext, HostSource, VirtioDevice};
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::error::{Result, VmmError};
use crate::memory::GuestMemoryMmap;

pub mod stream;

pub use stream::MAX_FRAME;
use stream::{Fill, StreamLink};

/// Receive queue (peer to guest).
pub const RX: usize = 0;
/// Transmit queue (guest to peer).
pub const TX: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The header before every frame: `virtio_net_hdr_v1` (with
/// `VIRTIO_F_VERSION_1` it always has `num_buffers`).
pub const NET_HDR_LEN: usize = std::mem::size_of::<virtio_net_hdr_v1>();
/// Smallest frame sent: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Most bytes in a transmit chain: the header and the largest frame.
pub const TX_CHAIN_LIMIT: u64 = (NET_HDR_LEN + MAX_FRAME) as u64;
/// Most bytes in a receive chain (a guest may post large ones; only what
/// a frame needs is written).
pub const RX_CHAIN_LIMIT: u64 = 1 << 20;
/// The MAC when none is given: locally administered, unicast
/// (`02:61:6d:70:68:69`, "amphi").
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x61, 0x6d, 0x70, 0x68, 0x69];
/// Host source id of the socket.
pub const SOURCE_SOCKET: u32 = 0;
/// Reads from the socket per call into the device, at most (the event
/// loop comes back while there is more).
const READS_PER_CALL: usize = 32;

/// Where a network device's frames go.
#[derive(Clone, Debug)]
pub enum NetBackend {
    /// A connected unix stream socket whose peer speaks passt's protocol
    /// (`passt --fd`). Duplicated: the caller keeps its own.
    Fd(Arc<OwnedFd>),
    /// A listening unix stream socket to connect to (`passt --socket`).
    Socket(PathBuf),
}

/// A virtio-net device for [`crate::VmConfig`].
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The peer.
    pub backend: NetBackend,
    /// The guest's MAC address (unicast).
    pub mac: [u8; 6],
}

impl NetConfig {
    /// A device on `backend` with [`DEFAULT_MAC`].
    pub fn new(backend: NetBackend) -> Self {
        NetConfig {
            backend,
            mac: DEFAULT_MAC,
        }
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (hex digits, `:` or `-`
/// between); refuses group (multicast, broadcast) and all-zero addresses.
pub fn parse_mac(s: &str) -> std::result::Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address (six hex bytes: 02:61:6d:70:68:69)");
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    check_mac(mac)?;
    Ok(mac)
}

/// Checks that `mac` can be a NIC's own address.
pub fn check_mac(mac: [u8; 6]) -> std::result::Result<(), String> {
    if mac[0] & 1 != 0 {
        return Err(format!(
            "MAC {} is a group (multicast) address; a NIC needs a unicast one \
             (first byte even)",
            format_mac(mac)
        ));
    }
    if mac == [0; 6] {
        return Err("MAC 00:00:00:00:00:00 is not an address".into());
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks that `fd` is a connected unix stream socket.
pub fn check_stream_socket(fd: RawFd) -> std::result::Result<(), String> {
    let opt = |name: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int of ours, with its size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let domain = opt(libc::SO_DOMAIN).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => "not a socket".to_string(),
        Some(libc::EBADF) => "not an open descriptor".to_string(),
        _ => format!("not a usable socket ({e})"),
    })?;
    if domain != libc::AF_UNIX {
        return Err(format!("not a unix socket (address family {domain})"));
    }
    let kind = opt(libc::SO_TYPE).map_err(|e| format!("socket type: {e}"))?;
    if kind != libc::SOCK_STREAM {
        return Err(format!(
            "not a stream socket (type {kind}, not SOCK_STREAM)"
        ));
    }
    // SAFETY: a zeroed sockaddr_un is valid; getpeername fills at most
    // `len` bytes of it.
    let rc = unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        libc::getpeername(fd, (&raw mut addr).cast(), &mut len)
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("not connected ({e})"));
    }
    Ok(())
}

/// Frame and byte counts of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent to the peer.
    pub tx_frames: u64,
    /// Their bytes (frames only).
    pub tx_bytes: u64,
    /// Transmit chains not sent: malformed, or the link was down.
    pub tx_dropped: u64,
    /// Frames put into the guest's receive buffers.
    pub rx_frames: u64,
    /// Their bytes (frames only).
    pub rx_bytes: u64,
    /// Frames from the peer dropped: too large for the guest's buffer.
    pub rx_dropped: u64,
}

/// The virtio-net device.
pub struct Net {
    link: StreamLink,
    mac: [u8; 6],
    label: String,
    log: LogLimiter,
    stats: NetStats,
}

/// What to do with a popped chain.
enum Verdict {
    /// Return it to the guest with this many bytes written.
    Used(u32),
    /// Put it back: it waits for the next frame.
    Keep,
    /// Nothing to return (a head outside the queue).
    Skip,
}

impl Net {
    /// Connects (or takes) the socket and checks it.
    pub fn open(config: &NetConfig) -> Result<Self> {
        check_mac(config.mac).map_err(|e| VmmError::Config(format!("virtio-net: {e}")))?;
        let (socket, label) = match &config.backend {
            NetBackend::Fd(fd) => {
                let label = format!("fd {}", fd.as_raw_fd());
                let dup = fd.as_fd().try_clone_to_owned().map_err(|e| {
                    VmmError::Config(format!("virtio-net {label}: duplicating it: {e}"))
                })?;
                (dup, label)
            }
            NetBackend::Socket(path) => {
                let stream = UnixStream::connect(path).map_err(|source| VmmError::File {
                    what: "virtio-net socket",
                    path: path.clone(),
                    source,
                })?;
                (OwnedFd::from(stream), path.display().to_string())
            }
        };
        check_stream_socket(socket.as_raw_fd()).map_err(|e| {
            VmmError::Config(format!(
                "virtio-net {label}: {e}; it must be a connected unix stream socket \
                 (passt's --fd or --socket)"
            ))
        })?;
        let link = StreamLink::new(socket)
            .map_err(|e| VmmError::Config(format!("virtio-net {label}: {e}")))?;
        Ok(Net::with_link(link, config.mac, label))
    }

    /// A device on an already prepared link.
    pub fn with_link(mut link: StreamLink, mac: [u8; 6], label: String) -> Self {
        link.set_name(format!("virtio-net({label})"));
        Net {
            link,
            mac,
            label,
            log: LogLimiter::new(),
            stats: NetStats::default(),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Guest-caused problems seen so far.
    pub fn guest_errors(&self) -> u64 {
        self.log.total()
    }

    /// The link to the peer.
    pub fn link(&self) -> &StreamLink {
        &self.link
    }

    /// Logs a bad chain; the head to give back, if it is one.
    fn bad_chain(&mut self, queue: &str, head: u16, error: &ChainError, size: u16) -> Verdict {
        guest_warn!(
            self.log,
            "virtio-net: bad {queue} descriptor chain: {error}"
        );
        if head < size {
            Verdict::Used(0)
        } else {
            Verdict::Skip
        }
    }

    /// Sends one checked transmit chain (or drops it).
    fn send_chain(&mut self, mem: &GuestMemoryMmap, chain: &Chain) {
        let problem = if !chain.writable.is_empty() {
            Some("a device-writable buffer in a transmit chain".to_string())
        } else if chain.readable_len() < (NET_HDR_LEN + MIN_FRAME) as u64 {
            Some(format!(
                "a transmit chain of {} bytes, less than the {NET_HDR_LEN}-byte header and a \
                 {MIN_FRAME}-byte Ethernet header",
                chain.readable_len()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            guest_warn!(self.log, "virtio-net: {problem}; dropped");
            self.stats.tx_dropped += 1;
            return;
        }
        // At most TX_CHAIN_LIMIT (the chain's limit).
        let len = chain.readable_len() as usize - NET_HDR_LEN;
        if !self.link.is_up() {
            self.stats.tx_dropped += 1;
            return;
        }
        let sent = self.link.send_frame(len, |buf| {
            read_stream(mem, &chain.readable, NET_HDR_LEN as u64, buf).is_ok()
        });
        if sent {
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += len as u64;
        } else {
            self.stats.tx_dropped += 1;
        }
    }

    /// Takes guest transmit buffers while the socket takes frames.
    fn transmit(&mut self, ctx: &mut DeviceContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX) else {
            return;
        };
        let mut returned = false;
        'outer: loop {
            loop {
                self.link.flush();
                if self.link.tx_pending() {
                    // Back-pressure: the socket's writability brings us back.
                    break 'outer;
                }
                let popped: Popped = match queue.pop(mem, TX_CHAIN_LIMIT) {
                    Ok(None) => break,
                    Ok(Some(p)) => p,
                    Err(e) => {
                        guest_warn!(self.log, "virtio-net: transmit queue unusable: {e}");
                        break 'outer;
                    }
                };
                let verdict = match popped {
                    Ok(chain) => {
                        self.send_chain(mem, &chain);
                        (chain.head, Verdict::Used(0))
                    }
                    Err(bad) => {
                        self.stats.tx_dropped += 1;
                        let head = bad.partial.head;
                        (
                            head,
                            self.bad_chain("transmit", head, &bad.error, queue.size()),
                        )
                    }
                };
                returned |= self.give_back(queue, mem, verdict);
            }
            if !queue.enable_notification(mem) {
                break;
            }
        }
        if returned && queue.needs_notification(mem) {
            ctx.interrupt.signal_used();
        }
    }

    /// Returns a chain to the driver as `verdict` says; whether it did.
    fn give_back(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
        (head, verdict): (u16, Verdict),
    ) -> bool {
        match verdict {
            Verdict::Used(len) => match queue.add_used(mem, head, len) {
                Ok(()) => true,
                Err(e) => {
                    guest_warn!(self.log, "virtio-net: {e}");
                    false
                }
            },
            Verdict::Keep => {
                queue.undo_pop();
                false
            }
            Verdict::Skip => false,
        }
    }

    /// Puts the front frame into a checked receive chain, or says why not.
    fn receive_into(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> Verdict {
        let room = chain.writable_len();
        let problem = if !chain.readable.is_empty() {
            Some("a device-readable buffer in a receive chain".to_string())
        } else if room < NET_HDR_LEN as u64 {
            Some(format!(
                "a receive chain of {room} bytes, less than the {NET_HDR_LEN}-byte header"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            guest_warn!(self.log, "virtio-net: {problem}; returned unused");
            return Verdict::Used(0);
        }
        let Some(frame) = self.link.frame() else {
            return Verdict::Keep;
        };
        let len = frame.len();
        if (NET_HDR_LEN + len) as u64 > room {
            guest_warn!(
                self.log,
                "virtio-net: a frame of {len} bytes does not fit the guest's receive buffer of \
                 {room} bytes (with the header); dropped"
            );
            self.stats.rx_dropped += 1;
            self.link.pop_frame();
            return Verdict::Keep;
        }
        // num_buffers (the last field) is 1: no mergeable buffers.
        let mut header = [0u8; NET_HDR_LEN];
        header[NET_HDR_LEN - 2] = 1;
        let written = write_stream(mem, &chain.writable, 0, &header)
            .and_then(|()| write_stream(mem, &chain.writable, NET_HDR_LEN as u64, frame));
        if written.is_err() {
            // The chain was checked to lie in guest memory: not expected.
            guest_warn!(self.log, "virtio-net: receive buffer not writable");
            return Verdict::Used(0);
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        self.link.pop_frame();
        // NET_HDR_LEN + len <= room <= RX_CHAIN_LIMIT fits in 32 bits.
        Verdict::Used((NET_HDR_LEN + len) as u32)
    }

    /// Moves frames from the peer into receive buffers the guest posted,
    /// reading the socket as long as frames are taken.
    fn deliver(&mut self, ctx: &mut DeviceContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX) else {
            return;
        };
        let mut returned = false;
        let mut reads = 0;
        loop {
            if self.link.frame().is_none() {
                if reads == READS_PER_CALL || !matches!(self.link.fill(), Fill::Read(_)) {
                    break;
                }
                reads += 1;
                continue;
            }
            let popped: Popped = match queue.pop(mem, RX_CHAIN_LIMIT) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    // No buffers: wait for the guest to post some (and
                    // look again if it already has).
                    if queue.enable_notification(mem) {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    guest_warn!(self.log, "virtio-net: receive queue unusable: {e}");
                    break;
                }
            };
            let verdict = match popped {
                Ok(chain) => (chain.head, self.receive_into(mem, &chain)),
                Err(bad) => {
                    let head = bad.partial.head;
                    (
                        head,
                        self.bad_chain("receive", head, &bad.error, queue.size()),
                    )
                }
            };
            returned |= self.give_back(queue, mem, verdict);
        }
        if returned && queue.needs_notification(mem) {
            ctx.interrupt.signal_used();
        }
    }

    /// Reads until a frame is complete (the driver is not there to take
    /// it yet).
    fn fill_only(&mut self) {
        for _ in 0..READS_PER_CALL {
            if !matches!(self.link.fill(), Fill::Read(_)) {
                break;
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> String {
        format!("virtio-net({})", self.label)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac, then fields of features not offered.
        read_config_bytes(&self.mac, offset, data);
    }

    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, index: usize) {
        match index {
            RX => self.deliver(ctx),
            TX => self.transmit(ctx),
            _ => {}
        }
    }

    fn host_sources(&self) -> Vec<HostSource> {
        if !self.link.is_up() {
            return Vec::new();
        }
        let mut events = EventSet::empty();
        if self.link.wants_input() {
            events |= EventSet::IN;
        }
        if self.link.tx_pending() {
            events |= EventSet::OUT;
        }
        vec![HostSource {
            id: SOURCE_SOCKET,
            fd: self.link.fd(),
            events,
        }]
    }

    fn host_event(&mut self, ctx: Option<&mut DeviceContext<'_>>, id: u32, _events: EventSet) {
        if id != SOURCE_SOCKET {
            return;
        }
        match ctx {
            Some(ctx) => {
                self.transmit(ctx);
                self.deliver(ctx);
            }
            None => {
                self.link.flush();
                self.fill_only();
            }
        }
    }
}

#[cfg(test)]
mod tests;
