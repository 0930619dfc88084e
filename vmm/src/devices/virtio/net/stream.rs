//! passt's socket protocol (QEMU's `-netdev stream`): a connected unix
//! stream socket carrying Ethernet frames, each preceded by its length as
//! a 4-byte big-endian number.
//!
//! The peer is not trusted. A length of 0 or above [`MAX_FRAME`] is a
//! protocol error: the connection is dropped (never read or written again)
//! and the reason logged once. So is end of file or a failed read or
//! write (passt went away). Either way the link is down for good and the
//! device carries no traffic from then on.
//!
//! Buffering is bounded both ways. Frames for the guest are read into a
//! fixed buffer of [`RX_BUFFER`] bytes, and only while it holds no
//! complete frame: a complete frame stays there until the guest posts a
//! receive buffer, and the socket is not read meanwhile (passt's side
//! fills up and passt holds back). A frame for the peer is written at
//! once; what the socket does not take waits in [`StreamLink`], and the
//! device takes no further transmit buffer from the guest until it is
//! gone (at most one frame: [`LEN_PREFIX`] + [`MAX_FRAME`] bytes).
//!
//! The descriptor stays open while the link lives, down or not: closing
//! one the event loop may still watch would leave a stale registration
//! (see the console's host end). A dropped connection is only abandoned;
//! it closes with the device.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Largest Ethernet frame either side may send (the length field of the
/// protocol is 32 bits, the frames are those of an Ethernet link of at
/// most 64 KiB: passt's own limit).
pub const MAX_FRAME: usize = 65535;
/// Bytes of the length that precedes each frame.
pub const LEN_PREFIX: usize = 4;
/// Bytes kept for frames read from the peer: two of the largest frames,
/// so one read can bring in many small ones.
pub const RX_BUFFER: usize = 2 * (LEN_PREFIX + MAX_FRAME);
/// `send(2)` flags: never block, never raise `SIGPIPE` (the seccomp
/// filters allow `sendto` with exactly these flags and no address).
pub const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// The connection to the peer.
#[derive(Debug)]
pub struct StreamLink {
    socket: File,
    /// The device's name, for the one log line.
    name: String,
    /// Why the link is down, once it is.
    down: Option<String>,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// A frame (length prefix included) the socket has not taken all of.
    tx: Vec<u8>,
    tx_sent: usize,
}

/// The outcome of one read from the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Bytes arrived.
    Read(usize),
    /// Nothing to read now, or nothing wanted (a complete frame waits).
    Idle,
    /// The link is down.
    Down,
}

impl StreamLink {
    /// Uses `socket` (a connected unix stream socket), making it
    /// non-blocking (a flag of the open file, shared with its duplicates).
    pub fn new(socket: OwnedFd) -> io::Result<Self> {
        crate::devices::virtio::console::host::set_nonblocking(socket.as_raw_fd())?;
        Ok(StreamLink {
            socket: File::from(socket),
            name: "virtio-net".into(),
            down: None,
            rx: vec![0u8; RX_BUFFER].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(LEN_PREFIX + MAX_FRAME),
            tx_sent: 0,
        })
    }

    /// Names the device in the log line of [`StreamLink::take_down`].
    pub fn set_name(&mut self, name: String) {
        self.name = name;
    }

    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether frames still flow.
    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// Why the link went down, if it did.
    pub fn down_reason(&self) -> Option<&str> {
        self.down.as_deref()
    }

    /// Takes the link down for good (logged once, by the first caller),
    /// dropping whatever was buffered either way.
    pub fn take_down(&mut self, why: String) {
        if self.down.is_some() {
            return;
        }
        tracing::warn!(
            "{}: {why}; the guest's network carries no traffic from now on",
            self.name
        );
        self.down = Some(why);
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.tx_sent = 0;
    }

    /// The length announced by the header at the front of the receive
    /// buffer: `Ok(None)` while fewer than 4 bytes are there, `Err` with
    /// the value when it is not a frame length.
    fn front_len(&self) -> Result<Option<usize>, u32> {
        if self.rx_end - self.rx_start < LEN_PREFIX {
            return Ok(None);
        }
        let mut bytes = [0u8; LEN_PREFIX];
        bytes.copy_from_slice(&self.rx[self.rx_start..self.rx_start + LEN_PREFIX]);
        let len = u32::from_be_bytes(bytes);
        match usize::try_from(len) {
            Ok(n) if (1..=MAX_FRAME).contains(&n) => Ok(Some(n)),
            _ => Err(len),
        }
    }

    fn protocol_error(&mut self, len: u32) {
        self.take_down(format!(
            "protocol error from the network backend: a frame length of {len} \
             (1 to {MAX_FRAME} allowed); dropping the connection"
        ));
    }

    /// Whether the front frame is wholly in the buffer (or its header is
    /// bad, which [`StreamLink::frame`] reports): then nothing more is read.
    fn front_complete(&self) -> bool {
        match self.front_len() {
            Ok(Some(len)) => self.rx_end - self.rx_start >= LEN_PREFIX + len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Whether the socket should be read now: the link is up and no
    /// complete frame is waiting for the guest.
    pub fn wants_input(&self) -> bool {
        self.is_up() && !self.front_complete()
    }

    /// The complete frame at the front, if there is one. A bad length
    /// takes the link down here.
    pub fn frame(&mut self) -> Option<&[u8]> {
        match self.front_len() {
            Err(len) => {
                self.protocol_error(len);
                None
            }
            Ok(Some(len)) if self.rx_end - self.rx_start >= LEN_PREFIX + len => {
                let start = self.rx_start + LEN_PREFIX;
                Some(&self.rx[start..start + len])
            }
            Ok(_) => None,
        }
    }

    /// Drops the frame at the front (delivered or not deliverable).
    pub fn pop_frame(&mut self) {
        if let Ok(Some(len)) = self.front_len() {
            if self.rx_end - self.rx_start >= LEN_PREFIX + len {
                self.rx_start += LEN_PREFIX + len;
                if self.rx_start == self.rx_end {
                    self.rx_start = 0;
                    self.rx_end = 0;
                }
            }
        }
    }

    /// Reads once from the socket, if [`StreamLink::wants_input`]. End of
    /// file or an error takes the link down; so does a bad length in what
    /// arrived.
    pub fn fill(&mut self) -> Fill {
        if !self.is_up() {
            return Fill::Down;
        }
        if !self.wants_input() {
            return Fill::Idle;
        }
        if self.rx_start > 0 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        // Not full: what is here is less than one frame of at most
        // LEN_PREFIX + MAX_FRAME bytes, half the buffer.
        let outcome = loop {
            match self.socket.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => {
                    self.take_down("the network backend closed the connection".into());
                    break Fill::Down;
                }
                Ok(n) => {
                    self.rx_end += n;
                    break Fill::Read(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Fill::Idle,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.take_down(format!("reading from the network backend failed: {e}"));
                    break Fill::Down;
                }
            }
        };
        if let Err(len) = self.front_len() {
            self.protocol_error(len);
            return Fill::Down;
        }
        outcome
    }

    /// Whether part of a frame still waits for the socket.
    pub fn tx_pending(&self) -> bool {
        self.tx_sent < self.tx.len()
    }

    /// Sends a frame of `len` bytes (1 to [`MAX_FRAME`]), which `fill`
    /// writes into the buffer it is given; `fill` returning `false`
    /// cancels it. Call only without [`StreamLink::tx_pending`]. Returns
    /// whether the frame was taken (it may still be partly pending).
    pub fn send_frame(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        if !self.is_up() || self.tx_pending() || !(1..=MAX_FRAME).contains(&len) {
            return false;
        }
        self.tx.clear();
        self.tx_sent = 0;
        // `len` <= MAX_FRAME fits in 32 bits.
        self.tx.extend_from_slice(&(len as u32).to_be_bytes());
        self.tx.resize(LEN_PREFIX + len, 0);
        if !fill(&mut self.tx[LEN_PREFIX..]) {
            self.tx.clear();
            return false;
        }
        self.flush();
        true
    }

    /// Writes what is pending as far as the socket takes it. A failure
    /// takes the link down.
    pub fn flush(&mut self) {
        while self.is_up() && self.tx_pending() {
            let rest = &self.tx[self.tx_sent..];
            // SAFETY: send(2) from a buffer we own, of its length, on our
            // socket; no address.
            let n = unsafe {
                libc::send(
                    self.socket.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    SEND_FLAGS,
                )
            };
            if n > 0 {
                // 0 < n <= rest.len().
                self.tx_sent += n as usize;
                continue;
            }
            if n == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => {}
                _ => self.take_down(format!("writing to the network backend failed: {e}")),
            }
        }
        if !self.tx_pending() {
            self.tx.clear();
            self.tx_sent = 0;
        }
    }

    /// Bytes of frames buffered for the guest (complete or not).
    pub fn rx_buffered(&self) -> usize {
        self.rx_end - self.rx_start
    }
}
