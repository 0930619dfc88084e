//! A vhost-user relay between a frontend that cannot answer the guest
//! without its backend (QEMU) and virtiofsd, so that a dead virtiofsd's
//! requests fail with `EIO` under QEMU as they do under amphi's VMM.
//!
//! QEMU 7.2's `vhost-user-fs-device` neither reconnects nor answers when
//! its backend goes away: the guest's FUSE requests wait forever, and the
//! guest cannot abort a virtio-fs connection. So amphi puts this relay on
//! the vhost-user connection: QEMU talks to the relay as if it were the
//! backend, the relay passes every message on to virtiofsd unchanged (and
//! every reply back), descriptors included, and the data path never
//! touches it: virtiofsd maps guest RAM and uses the kick and call
//! eventfds QEMU sent, directly.
//!
//! On the way the relay keeps what it needs to serve the queues itself:
//! the memory table (its region descriptors, the memfds), each ring's
//! size, addresses and kick and call eventfds, whether it runs, and the
//! negotiated features (indirect descriptors, event index). When virtiofsd
//! hangs up, the relay closes QEMU's connection (for QEMU the backend is
//! gone, as it was without the relay), maps the memory table, and takes
//! every running ring over where virtiofsd left it in guest memory (the
//! used ring's `idx`; virtiofsd completes a queue's requests in order, see
//! [`VirtQueue::take_over`]), answering each FUSE request with `-EIO`
//! exactly as amphi's VMM does ([`super::lost`]): it reads the kick
//! eventfds and signals the call eventfds, which QEMU turns into the
//! guest's interrupt.
//!
//! Protocol features are passed on only when the relay can follow what
//! they change: memory added region by region (`CONFIGURE_MEM_SLOTS`),
//! in-band notifications, host notifiers, inflight tracking, dirty logging
//! and the like are withheld from QEMU's view, which then uses the plain
//! messages the relay reads. The packed ring, dirty logging and an IOMMU
//! are withheld from the device features for the same reason.
//!
//! Everything the relay reads comes from processes a guest may control
//! (QEMU and virtiofsd both face it): messages are bounded
//! ([`MAX_PAYLOAD`], [`MAX_FDS`]), the tables are checked before anything
//! is mapped, and the rings are walked with the checks every device uses.
//! `amphi-vmm vhost-user-relay` runs it jailed (see `ARCHITECTURE.md`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::lost;
use crate::devices::log_limit::LogLimiter;
use crate::devices::virtio::queue::{RingPart, VirtQueue};
use crate::memory::{map_shared_regions, GuestMemoryMmap, SharedRegion};

/// A message's header: request, flags, payload size.
pub const HEADER_LEN: usize = 12;
/// The largest payload passed on (the protocol's largest, a configuration
/// space read or a memory table, is well under it).
pub const MAX_PAYLOAD: usize = 4096;
/// Descriptors one message may carry.
pub const MAX_FDS: usize = 32;
/// Rings followed (virtio-fs: the high-priority queue and the request
/// queues).
pub const MAX_QUEUES: usize = 16;
/// The largest ring size the split-ring layout allows.
const MAX_RING: u16 = 32768;

/// The requests the relay reads (the vhost-user specification's numbers).
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const RESET_DEVICE: u32 = 34;
}

/// `flags`: this message is a reply.
const FLAG_REPLY: u32 = 0x4;
/// `SET_VRING_KICK`/`CALL`: no descriptor comes with the message.
const VRING_NOFD: u64 = 0x100;

/// The device features kept from the backend's offer: all but dirty
/// logging (`VHOST_F_LOG_ALL`, 26), the IOMMU (`VIRTIO_F_ACCESS_PLATFORM`,
/// 33) and the packed ring (34), none of which the relay could follow.
const FEATURES_WITHHELD: u64 = (1 << 26) | (1 << 33) | (1 << 34);
/// `VIRTIO_RING_F_INDIRECT_DESC`.
const F_INDIRECT: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: rings start disabled and are enabled
/// by message.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// The protocol features passed on: multiple queues (0), reply
/// acknowledgements (3), the backend's request channel and its
/// descriptors (5, 10), the configuration space (9), device reset (13)
/// and status (16). Each leaves the messages the relay reads as they are.
const PROTOCOL_FEATURES_KEPT: u64 =
    (1 << 0) | (1 << 3) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 13) | (1 << 16);

/// One message, with the descriptors that came with it.
pub struct Message {
    pub header: [u8; HEADER_LEN],
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    pub fn request(&self) -> u32 {
        u32::from_le_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    /// The payload's `u32` / `u64` at `at`, when it is long enough.
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.payload.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u64_at(&self, at: usize) -> Option<u64> {
        let b = self.payload.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn set_u64_at(&mut self, at: usize, value: u64) {
        if let Some(b) = self.payload.get_mut(at..at + 8) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// Reads one message from `sock` (blocking). `Ok(None)`: the peer closed
/// the connection between messages.
pub fn read_message(sock: &UnixStream) -> Result<Option<Message>, String> {
    let mut header = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    if !recv_exact(sock, &mut header, &mut fds, true)? {
        return Ok(None);
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(format!(
            "a message (request {}) of {size} bytes, more than the {MAX_PAYLOAD} allowed",
            u32::from_le_bytes([header[0], header[1], header[2], header[3]])
        ));
    }
    let mut payload = vec![0u8; size];
    recv_exact(sock, &mut payload, &mut fds, false)?;
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

/// Fills `buf` from `sock`, collecting descriptors into `fds`. Returns
/// false when the peer closed before the first byte and `may_end`.
fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    may_end: bool,
) -> Result<bool, String> {
    let mut got = 0;
    while got < buf.len() {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let room = MAX_FDS - fds.len();
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        // SAFETY: the iovec points into `buf`, which any bytes may be
        // written to; the descriptors received are owned right below.
        let r = unsafe { sock.recv_with_fds(&mut iov, &mut raw[..room]) };
        let (n, nfds) = match r {
            Ok(v) => v,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) if e.errno() == libc::ENOBUFS => {
                return Err(format!("a message with more than {MAX_FDS} descriptors"))
            }
            Err(e) => return Err(format!("reading: {e}")),
        };
        for &fd in &raw[..nfds] {
            // SAFETY: received just now with SCM_RIGHTS: ours alone.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            if got == 0 && may_end {
                return Ok(false);
            }
            return Err("the connection ended inside a message".into());
        }
        got += n;
    }
    Ok(true)
}

/// Writes `msg` to `sock`, its descriptors with the first bytes.
pub fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + msg.payload.len());
    bytes.extend_from_slice(&msg.header);
    bytes.extend_from_slice(&msg.payload);
    let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let fds: &[RawFd] = if sent == 0 { &raw } else { &[] };
        match sock.send_with_fds(&[&bytes[sent..]], fds) {
            Ok(n) => sent += n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(())
}

/// One ring as the frontend set it up.
#[derive(Default)]
struct Ring {
    /// `SET_VRING_NUM` (0: not yet).
    num: u16,
    /// Descriptor table, used ring, available ring: frontend addresses.
    addr: Option<[u64; 3]>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    /// Started by its kick descriptor, until `GET_VRING_BASE` stops it.
    started: bool,
    /// `SET_VRING_ENABLE`.
    enabled: bool,
}

/// One memory table entry.
struct Region {
    start: u64,
    len: u64,
    /// Where the frontend has it (ring addresses are given so).
    user: u64,
    offset: u64,
    file: OwnedFd,
}

/// What the relay kept of the frontend's setup.
#[derive(Default)]
struct Setup {
    features: u64,
    regions: Vec<Region>,
    rings: Vec<Ring>,
}

impl Setup {
    fn ring(&mut self, index: Option<u64>) -> Option<&mut Ring> {
        let i = usize::try_from(index?).ok().filter(|&i| i < MAX_QUEUES)?;
        if self.rings.len() <= i {
            self.rings.resize_with(i + 1, Ring::default);
        }
        self.rings.get_mut(i)
    }

    /// Keeps what `msg` (from the frontend, already passed on) sets up;
    /// takes the descriptors it needs. Malformed messages are not kept
    /// (the backend refuses them, or the takeover finds the gap).
    fn keep(&mut self, msg: &mut Message) {
        let index = msg.u32_at(0).map(u64::from);
        match msg.request() {
            req::SET_FEATURES => {
                if let Some(f) = msg.u64_at(0) {
                    self.features = f;
                }
            }
            req::SET_MEM_TABLE => {
                let n = msg.u32_at(0).unwrap_or(0) as usize;
                let fits = n <= MAX_FDS && msg.payload.len() >= 8 + 32 * n;
                if fits && msg.fds.len() == n {
                    self.regions = std::mem::take(&mut msg.fds)
                        .into_iter()
                        .enumerate()
                        .map(|(i, file)| {
                            let at = 8 + 32 * i;
                            let field = |k: usize| msg.u64_at(at + 8 * k).unwrap_or(0);
                            Region {
                                start: field(0),
                                len: field(1),
                                user: field(2),
                                offset: field(3),
                                file,
                            }
                        })
                        .collect();
                }
            }
            req::SET_VRING_NUM => {
                let num = msg.u32_at(4).and_then(|n| u16::try_from(n).ok());
                if let (Some(num), Some(r)) = (num, self.ring(index)) {
                    r.num = num;
                }
            }
            req::SET_VRING_ADDR => {
                // index, flags, descriptors, used, available, log.
                let addrs = (msg.u64_at(8), msg.u64_at(16), msg.u64_at(24));
                if let ((Some(d), Some(u), Some(a)), Some(r)) = (addrs, self.ring(index)) {
                    r.addr = Some([d, u, a]);
                }
            }
            req::GET_VRING_BASE => {
                if let Some(r) = self.ring(index) {
                    r.started = false;
                }
            }
            req::SET_VRING_KICK | req::SET_VRING_CALL => {
                let Some(v) = msg.u64_at(0) else { return };
                let kick = msg.request() == req::SET_VRING_KICK;
                let fd = if v & VRING_NOFD == 0 && msg.fds.len() == 1 {
                    msg.fds.pop()
                } else {
                    None
                };
                if let Some(r) = self.ring(Some(v & 0xff)) {
                    if kick {
                        r.started = fd.is_some();
                        r.kick = fd;
                    } else {
                        r.call = fd;
                    }
                }
            }
            req::SET_VRING_ENABLE => {
                let on = msg.u32_at(4).is_some_and(|v| v != 0);
                if let Some(r) = self.ring(index) {
                    r.enabled = on;
                }
            }
            req::RESET_OWNER | req::RESET_DEVICE => {
                self.rings.clear();
            }
            _ => {}
        }
    }

    /// A frontend address as a guest address, when a region holds the
    /// `len` bytes from it.
    fn guest_address(&self, user: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = user.checked_sub(r.user)?;
            (off.checked_add(len)? <= r.len).then(|| r.start + off)
        })
    }
}

/// Rewrites a reply from the backend before the frontend sees it: the
/// features the relay cannot follow are withheld.
fn filter_reply(msg: &mut Message) {
    if msg.flags() & FLAG_REPLY == 0 || msg.payload.len() != 8 {
        return;
    }
    let Some(v) = msg.u64_at(0) else { return };
    match msg.request() {
        req::GET_FEATURES => msg.set_u64_at(0, v & !FEATURES_WITHHELD),
        req::GET_PROTOCOL_FEATURES => msg.set_u64_at(0, v & PROTOCOL_FEATURES_KEPT),
        _ => {}
    }
}

/// How relaying ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The frontend closed the connection (QEMU ended): nothing to do.
    FrontendClosed,
    /// The frontend broke the protocol (said why).
    FrontendFailed(String),
    /// The backend is gone (said how).
    BackendGone(String),
}

/// The relay between a frontend (`front`, QEMU) and a backend (`back`,
/// virtiofsd).
pub struct Relay {
    front: UnixStream,
    back: UnixStream,
    setup: Setup,
}

impl Relay {
    pub fn new(front: UnixStream, back: UnixStream) -> Self {
        Relay {
            front,
            back,
            setup: Setup::default(),
        }
    }

    /// Passes messages both ways until one side ends (see [`Ending`]).
    pub fn relay(&mut self) -> Ending {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.front.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.back.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Ending::FrontendFailed(format!("poll: {e}"));
            }
            if fds[0].revents != 0 {
                match read_message(&self.front) {
                    Ok(None) => return Ending::FrontendClosed,
                    Err(e) => return Ending::FrontendFailed(e),
                    Ok(Some(mut msg)) => {
                        if let Err(e) = write_message(&self.back, &msg) {
                            return Ending::BackendGone(format!(
                                "passing request {} on: {e}",
                                msg.request()
                            ));
                        }
                        self.setup.keep(&mut msg);
                    }
                }
            }
            if fds[1].revents != 0 {
                match read_message(&self.back) {
                    Ok(None) => return Ending::BackendGone("it closed the connection".into()),
                    Err(e) => return Ending::BackendGone(e),
                    Ok(Some(mut msg)) => {
                        filter_reply(&mut msg);
                        if write_message(&self.front, &msg).is_err() {
                            return Ending::FrontendClosed;
                        }
                    }
                }
            }
        }
    }

    /// The backend is gone: closes the frontend's connection and takes
    /// every running ring over (see the module documentation).
    pub fn take_over(self) -> Result<Served, String> {
        drop(self.front);
        drop(self.back);
        let mut setup = self.setup;
        let rings: Vec<(usize, Ring)> = std::mem::take(&mut setup.rings)
            .into_iter()
            .enumerate()
            .filter(|(_, r)| r.started && (r.enabled || setup.features & F_PROTOCOL_FEATURES == 0))
            .collect();
        if rings.is_empty() {
            return Err("no ring was running: the driver had not set the device up".into());
        }
        let mut queues = Vec::new();
        let mut placed = Vec::new();
        for (index, ring) in rings {
            let fail = |what: &str| format!("ring {index}: {what}");
            let n = u64::from(ring.num);
            let [desc, used, avail] = ring.addr.ok_or_else(|| fail("no addresses"))?;
            let guest = |addr: u64, len: u64, what: &str| {
                setup
                    .guest_address(addr, len)
                    .ok_or_else(|| fail(&format!("its {what} at {addr:#x} is outside guest RAM")))
            };
            let addrs = [
                (
                    RingPart::Descriptors,
                    guest(desc, 16 * n, "descriptor table")?,
                ),
                (RingPart::Avail, guest(avail, 6 + 2 * n, "available ring")?),
                (RingPart::Used, guest(used, 6 + 8 * n, "used ring")?),
            ];
            let kick = ring.kick.ok_or_else(|| fail("no kick eventfd"))?;
            let call = ring.call.ok_or_else(|| fail("no call eventfd"))?;
            placed.push((index, ring.num, addrs, kick, call));
        }
        let regions = std::mem::take(&mut setup.regions)
            .into_iter()
            .map(|r| SharedRegion {
                start: r.start,
                len: r.len,
                file: File::from(r.file),
                offset: r.offset,
            })
            .collect();
        let mem = map_shared_regions(regions).map_err(|e| e.to_string())?;
        let event_idx = setup.features & F_EVENT_IDX != 0;
        let indirect = setup.features & F_INDIRECT != 0;
        let mut in_flight = 0u32;
        for (index, num, addrs, kick, call) in placed {
            let fail = |e: String| format!("ring {index}: {e}");
            let mut q = VirtQueue::new(MAX_RING).map_err(|e| fail(e.to_string()))?;
            q.set_size(num);
            for (part, addr) in addrs {
                q.set_address(part, false, addr as u32);
                q.set_address(part, true, (addr >> 32) as u32);
            }
            q.set_ready(&mem, event_idx)
                .map_err(|e| fail(e.to_string()))?;
            let (used, avail) = q.take_over(&mem).map_err(|e| fail(e.to_string()))?;
            in_flight += u32::from(avail.wrapping_sub(used));
            q.set_indirect(indirect);
            queues.push(Taken {
                index,
                name: format!("virtio-fs relay ring {index}"),
                queue: q,
                kick: File::from(kick),
                call: File::from(call),
            });
        }
        Ok(Served {
            mem,
            queues,
            in_flight,
            log: LogLimiter::new(),
        })
    }
}

/// A ring the relay serves.
struct Taken {
    index: usize,
    /// For its log lines.
    name: String,
    queue: VirtQueue,
    kick: File,
    call: File,
}

/// The rings taken over from a dead backend, answered with `-EIO`.
pub struct Served {
    mem: GuestMemoryMmap,
    queues: Vec<Taken>,
    /// Requests the backend had not completed when it died.
    pub in_flight: u32,
    log: LogLimiter,
}

impl Served {
    /// The rings served, by index.
    pub fn rings(&self) -> Vec<usize> {
        self.queues.iter().map(|t| t.index).collect()
    }

    /// Answers what every ring holds now.
    pub fn serve_all(&mut self) {
        for i in 0..self.queues.len() {
            self.serve(i);
        }
    }

    fn serve(&mut self, i: usize) {
        let Some(t) = self.queues.get_mut(i) else {
            return;
        };
        if lost::serve_queue(&t.name, &mut self.log, &self.mem, &mut t.queue, t.index)
            && t.queue.needs_notification(&self.mem)
        {
            let _ = eventfd_write(&t.call);
        }
    }

    /// Waits up to `timeout_ms` (-1: for ever) for kicks and answers the
    /// rings kicked. Err when the wait itself failed.
    pub fn serve_kicked(&mut self, timeout_ms: i32) -> Result<(), String> {
        let mut fds: Vec<libc::pollfd> = self
            .queues
            .iter()
            .map(|t| libc::pollfd {
                fd: t.kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds and its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(format!("poll: {e}"));
        }
        for (i, p) in fds.iter().enumerate() {
            if p.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(format!(
                    "ring {}'s kick eventfd failed",
                    self.queues[i].index
                ));
            }
            if p.revents & libc::POLLIN != 0 {
                let _ = eventfd_read(&self.queues[i].kick);
                self.serve(i);
            }
        }
        Ok(())
    }
}

fn eventfd_read(f: &File) -> io::Result<u64> {
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte buffer we own.
    let n = unsafe { libc::read(f.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(v))
}

fn eventfd_write(f: &File) -> io::Result<()> {
    let v = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte buffer we own.
    let n = unsafe { libc::write(f.as_raw_fd(), v.as_ptr().cast(), 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
