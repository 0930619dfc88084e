//! The host end of the console: an input and an output descriptor
//! (non-blocking), and one bounded buffer each way.
//!
//! Host bytes are read only while the guest-bound buffer has room, and stay
//! there until the guest posts receive buffers: nothing is dropped. Guest
//! bytes wait in the host-bound buffer until the output accepts them; the
//! device takes transmit buffers from the guest only while that buffer has
//! room, so a slow host holds the guest back instead of losing data. If the
//! output fails for good (the peer went away), guest bytes are counted and
//! discarded so the guest is not stuck.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Most host bytes kept for the guest before the input is no longer read.
pub const TO_GUEST_LIMIT: usize = 64 << 10;
/// Most guest bytes kept for the host before transmit buffers stay queued.
pub const TO_HOST_LIMIT: usize = 64 << 10;

/// The host end of a console.
///
/// Descriptors stay open as long as the device lives, even after end of
/// file or an error: closing one the event loop still watches would leave
/// a stale registration behind (epoll keys on the open file, which a
/// duplicate keeps alive) and could hand its number to another file. They
/// are only marked closed, which takes them out of [`HostEnd::input_fd`]
/// and [`HostEnd::output_fd`], and so out of the event loop.
#[derive(Debug)]
pub struct HostEnd {
    input: File,
    input_open: bool,
    output: File,
    output_ok: bool,
    to_guest: VecDeque<u8>,
    to_host: VecDeque<u8>,
    discarded: u64,
}

/// Makes `fd` non-blocking (a flag of the open file description, so
/// shared with every duplicate of it).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that epoll can watch `fd` (regular files and `/dev/null` cannot).
pub fn check_pollable(fd: RawFd) -> io::Result<()> {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
}

impl HostEnd {
    /// Uses `input` and `output`, making both non-blocking.
    pub fn new(input: OwnedFd, output: OwnedFd) -> io::Result<Self> {
        set_nonblocking(input.as_raw_fd())?;
        set_nonblocking(output.as_raw_fd())?;
        Ok(HostEnd {
            input: File::from(input),
            input_open: true,
            output: File::from(output),
            output_ok: true,
            to_guest: VecDeque::new(),
            to_host: VecDeque::new(),
            discarded: 0,
        })
    }

    /// The input descriptor, while it is open.
    pub fn input_fd(&self) -> Option<RawFd> {
        self.input_open.then(|| self.input.as_raw_fd())
    }

    /// The output descriptor, while it works.
    pub fn output_fd(&self) -> Option<RawFd> {
        self.output_ok.then(|| self.output.as_raw_fd())
    }

    /// Whether the input should be read now.
    pub fn wants_input(&self) -> bool {
        self.input_open && self.to_guest.len() < TO_GUEST_LIMIT
    }

    /// Whether there are bytes waiting for the output.
    pub fn wants_output(&self) -> bool {
        self.output_ok && !self.to_host.is_empty()
    }

    /// Reads host input while there is room. Returns the bytes read;
    /// end of file or an error closes the input.
    pub fn read_input(&mut self) -> usize {
        let mut total = 0;
        let mut chunk = [0u8; 4096];
        while self.input_open {
            let room = TO_GUEST_LIMIT.saturating_sub(self.to_guest.len());
            if room == 0 {
                break;
            }
            let want = room.min(chunk.len());
            match self.input.read(&mut chunk[..want]) {
                Ok(0) => {
                    tracing::debug!("console: host input closed");
                    self.input_open = false;
                }
                Ok(n) => {
                    self.to_guest.extend(&chunk[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("console: reading host input failed, closing it: {e}");
                    self.input_open = false;
                }
            }
        }
        total
    }

    /// Host bytes waiting for the guest.
    pub fn to_guest(&mut self) -> &mut VecDeque<u8> {
        &mut self.to_guest
    }

    /// Host bytes waiting for the guest, counted.
    pub fn to_guest_len(&self) -> usize {
        self.to_guest.len()
    }

    /// Room left for guest bytes (0 when full). Unlimited once the output
    /// failed: bytes are discarded then.
    pub fn to_host_room(&self) -> usize {
        if !self.output_ok {
            return usize::MAX;
        }
        TO_HOST_LIMIT.saturating_sub(self.to_host.len())
    }

    /// Whether guest bytes are waiting for the output.
    pub fn to_host_pending(&self) -> usize {
        self.to_host.len()
    }

    /// Queues guest bytes for the output (discarded if it failed).
    pub fn push_to_host(&mut self, bytes: &[u8]) {
        if self.output_ok {
            self.to_host.extend(bytes);
        } else {
            self.discarded += bytes.len() as u64;
        }
    }

    /// Writes waiting guest bytes as far as the output takes them.
    pub fn flush_output(&mut self) {
        while self.output_ok {
            let (front, _) = self.to_host.as_slices();
            if front.is_empty() {
                break;
            }
            match self.output.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(
                        "console: writing host output failed ({e}); guest output is \
                         discarded from now on"
                    );
                    self.discarded += self.to_host.len() as u64;
                    self.to_host.clear();
                    self.output_ok = false;
                }
            }
        }
    }

    /// Guest bytes discarded because the output failed.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}
