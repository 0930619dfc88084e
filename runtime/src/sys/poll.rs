//! Waiting for several descriptors at once: the one poll set of the
//! relays (the native run's pty relay, the microVM session, the guest
//! init's output relay) and of the short waits on a single descriptor.

use std::os::fd::RawFd;
use std::time::Duration;

/// Descriptors watched for input, and what the last [`PollSet::wait`] saw.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    pub fn new() -> PollSet {
        PollSet::default()
    }

    /// Watches `fd` for input; returns its index. A negative `fd` is
    /// never ready (poll skips it).
    pub fn add(&mut self, fd: RawFd) -> usize {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Waits until a descriptor is ready or `timeout` passes (`None`:
    /// without end). Returns whether any is ready; an interrupted or failed
    /// wait counts as none.
    pub fn wait(&mut self, timeout: Option<Duration>) -> bool {
        for p in &mut self.fds {
            p.revents = 0;
        }
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a live Vec of fds.len() initialised pollfds;
        // poll writes only their `revents`.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        n > 0
    }

    /// Whether a read of descriptor `i` will not block: it has input, or
    /// its other end closed, or it failed.
    pub fn readable(&self, i: usize) -> bool {
        self.revents(i) & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Whether descriptor `i` has input (a signalfd's signals).
    pub fn has_input(&self, i: usize) -> bool {
        self.revents(i) & libc::POLLIN != 0
    }

    fn revents(&self, i: usize) -> libc::c_short {
        self.fds.get(i).map_or(0, |p| p.revents)
    }
}

/// Waits up to `timeout` for input on `fd` alone; whether it came.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut set = PollSet::new();
    let i = set.add(fd);
    set.wait(Some(timeout)) && set.readable(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn sees_input_and_a_closed_end() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut set = PollSet::new();
        let i = set.add(r.as_raw_fd());
        let never = set.add(-1);
        assert!(!set.wait(Some(Duration::from_millis(10))));
        assert!(!set.readable(i));
        rustix::io::write(&w, b"x").unwrap();
        assert!(set.wait(Some(Duration::from_millis(1000))));
        assert!(set.readable(i) && set.has_input(i));
        assert!(!set.readable(never));
        let mut b = [0u8; 1];
        rustix::io::read(&r, &mut b).unwrap();
        drop(w);
        assert!(wait_readable(r.as_raw_fd(), Duration::from_millis(1000)));
        assert!(set.wait(None) && set.readable(i) && !set.has_input(i));
    }
}
