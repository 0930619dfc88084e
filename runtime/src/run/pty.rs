//! Waiting for the container in the foreground: signals are forwarded to
//! it (through a signalfd, so nothing races), its pty (with `-t`) is
//! relayed to our terminal in raw mode, window size changes follow.

use crate::container::launch::ConsolePty;
use crate::sys::exit::{decode, try_reap};
use crate::sys::poll::PollSet;
use crate::sys::signal::{read_signal, Signals};
use crate::sys::term::{copy_winsize, CrLf, RawMode};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A descriptor of the slave side of the pty `master` (`TIOCGPTPEER`: no
/// path is looked up), for the relay to hold while the workload runs. A
/// workload that closes every descriptor of its terminal for a while
/// (systemd as PID 1 does, and then writes to /dev/console, the same
/// terminal) would otherwise hang the master up, which reads as the end
/// of its output; the relay learns of the exit from SIGCHLD instead.
pub fn hold_slave(master: &impl AsFd) -> Option<OwnedFd> {
    crate::container::launch::pty_peer(master)
}

/// Waits for `pid`, forwarding signals and relaying `pty`; returns its
/// exit status.
pub fn wait(pid: i32, pty: Option<OwnedFd>, sigs: &Signals) -> i32 {
    wait_with_console(pid, pty, None, sigs)
}

/// [`wait`], also copying the console-only pty's output (`console`) to
/// stdout: output only (nothing is written to it, and our terminal is left
/// as it is), `\r\n` as `\n`. Its slave is held until `pid` exits; then
/// what is left is drained.
pub fn wait_with_console(
    pid: i32,
    pty: Option<OwnedFd>,
    console: Option<ConsolePty>,
    sigs: &Signals,
) -> i32 {
    let Some(sfd) = sigs.fd() else {
        let mut status = 0;
        // SAFETY: blocking waitpid on our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return decode(status);
    };
    // A File only to read and write the master through `&File`.
    let pty = pty.map(std::fs::File::from);
    let _slave = pty.as_ref().and_then(hold_slave);
    let _raw = pty.as_ref().map(|_| RawMode::enter());
    if let Some(m) = &pty {
        copy_winsize(0, m.as_raw_fd());
    }
    let mut stdin_open = pty.is_some();
    let mut buf = vec![0u8; 32 * 1024];
    let (mut console, _console_slave) = match console {
        Some(c) => (Some(Console::new(c.master)), c.slave),
        None => (None, None),
    };
    loop {
        let (mut set, base) = poll_set(sfd, console.as_ref(), pty.as_ref(), stdin_open);
        if !set.wait(None) {
            continue;
        }
        if set.has_input(0) {
            if let Some(code) = on_signal(sfd, pid, pty.as_ref(), console.as_mut(), &mut buf) {
                return code;
            }
        }
        if let Some(c) = &mut console {
            if set.readable(1) && !c.copy(&mut buf) {
                // Unreadable (no slave could be held and the workload
                // closed its own): stop watching it; the exit comes as
                // SIGCHLD.
                console = None;
            }
        }
        if let Some(m) = &pty {
            if let Some(code) = on_pty(m, &set, base, &mut stdin_open, &mut buf, pid) {
                return code;
            }
        }
    }
}

/// What the relay polls: the signalfd, the console-only pty (second, when
/// there is one), then the pty and, while it is open, stdin. Returns the
/// set and the pty's index.
fn poll_set(
    sfd: &OwnedFd,
    console: Option<&Console>,
    pty: Option<&std::fs::File>,
    stdin_open: bool,
) -> (PollSet, usize) {
    let mut set = PollSet::new();
    set.add(sfd.as_raw_fd());
    // The console-only pty, when there is one, is polled second.
    if let Some(c) = console {
        set.add(c.master.as_raw_fd());
    }
    let mut base = usize::MAX;
    if let Some(m) = pty {
        base = set.add(m.as_raw_fd());
        if stdin_open {
            set.add(0);
        }
    }
    (set, base)
}

/// One signal from the signalfd: the child's exit status once it is
/// reaped (after draining its ptys), else None (forwarded or handled).
fn on_signal(
    sfd: &OwnedFd,
    pid: i32,
    pty: Option<&std::fs::File>,
    mut console: Option<&mut Console>,
    buf: &mut [u8],
) -> Option<i32> {
    if let Some(signo) = read_signal(sfd) {
        match signo {
            libc::SIGCHLD => {
                if let Some(code) = try_reap(pid) {
                    if let Some(m) = pty {
                        drain(m, buf);
                    }
                    if let Some(c) = console.as_mut() {
                        c.drain(buf);
                    }
                    return Some(code);
                }
            }
            libc::SIGWINCH => {
                if let Some(m) = pty {
                    copy_winsize(0, m.as_raw_fd());
                }
            }
            s => {
                // SAFETY: forwarding a signal to our child.
                unsafe { libc::kill(pid, s) };
            }
        }
    }
    None
}

/// The pty's output to stdout, stdin to the pty (EOF as ^D, once): the
/// child's exit status when the pty's slave closed.
fn on_pty(
    m: &std::fs::File,
    set: &PollSet,
    base: usize,
    stdin_open: &mut bool,
    buf: &mut [u8],
    pid: i32,
) -> Option<i32> {
    if set.readable(base) {
        match (&mut &*m).read(buf) {
            Ok(n) if n > 0 => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            _ => {
                // The slave side closed: the process is exiting.
                let mut status = 0;
                // SAFETY: blocking waitpid on our child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                return Some(decode(status));
            }
        }
    }
    if *stdin_open && set.readable(base + 1) {
        match std::io::stdin().lock().read(buf) {
            Ok(n) if n > 0 => {
                let _ = (&mut &*m).write_all(&buf[..n]);
            }
            _ => {
                // End of input: send EOF (^D) to the pty, once.
                let _ = (&mut &*m).write_all(&[4]);
                *stdin_open = false;
            }
        }
    }
    None
}

/// The console-only pty's master, copied to stdout.
struct Console {
    master: std::fs::File,
    crlf: CrLf,
    out: Vec<u8>,
}

impl Console {
    fn new(master: OwnedFd) -> Console {
        Console {
            master: std::fs::File::from(master),
            crlf: CrLf::default(),
            out: Vec::new(),
        }
    }

    /// Copies one read's worth to stdout; false when the master cannot be
    /// read (hung up with nothing left, or an error).
    fn copy(&mut self, buf: &mut [u8]) -> bool {
        match (&mut &self.master).read(buf) {
            Ok(n) if n > 0 => {
                self.out.clear();
                self.crlf.convert(&buf[..n], &mut self.out);
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&self.out);
                let _ = stdout.flush();
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            _ => false,
        }
    }

    /// Copies what is left (the workload has exited).
    fn drain(&mut self, buf: &mut [u8]) {
        let _ = rustix::io::ioctl_fionbio(&self.master, true);
        while self.copy(buf) {}
        self.out.clear();
        self.crlf.finish(&mut self.out);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&self.out);
        let _ = stdout.flush();
    }
}

/// Copies what is left in the pty to stdout.
fn drain(mut f: &std::fs::File, buf: &mut [u8]) {
    let _ = rustix::io::ioctl_fionbio(f, true);
    let mut out = std::io::stdout().lock();
    while let Ok(n) = f.read(buf) {
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console-only pty end to end: what the slave side writes with
    /// ONLCR on arrives on stdout's side as plain lines, also after the
    /// only open slave was closed and another taken (as systemd closes and
    /// reopens /dev/console).
    #[test]
    fn a_pty_peer_keeps_the_master_readable() {
        let master = rustix::pty::openpt(
            rustix::pty::OpenptFlags::RDWR
                | rustix::pty::OpenptFlags::NOCTTY
                | rustix::pty::OpenptFlags::CLOEXEC,
        )
        .unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let first = hold_slave(&master).expect("TIOCGPTPEER");
        let held = hold_slave(&master).expect("TIOCGPTPEER");
        rustix::io::write(&first, b"one\n").unwrap();
        drop(first);
        let again = hold_slave(&master).expect("TIOCGPTPEER");
        rustix::io::write(&again, b"two\n").unwrap();
        drop(again);
        let _ = rustix::io::ioctl_fionbio(&master, true);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rustix::io::read(&master, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let mut out = Vec::new();
        let mut c = CrLf::default();
        c.convert(&got, &mut out);
        c.finish(&mut out);
        assert_eq!(out, b"one\ntwo\n", "raw: {got:?}");
        drop(held);
    }
}
