//! Waiting for the container in the foreground: signals are forwarded to
//! it (through a signalfd, so nothing races), its pty (with `-t`) is
//! relayed to our terminal in raw mode, window size changes follow.

use crate::container::launch::ConsolePty;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Signals blocked in amphi and read from a signalfd while the container runs.
pub struct Signals {
    old: libc::sigset_t,
    fd: Option<OwnedFd>,
}

const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

/// Blocks the forwarded signals (the container's init unblocks them).
pub fn block_signals() -> Signals {
    // SAFETY: sigset manipulation on locals; sigprocmask/signalfd with
    // valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, *s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        Signals {
            old,
            fd: (fd >= 0).then(|| OwnedFd::from_raw_fd(fd)),
        }
    }
}

impl Signals {
    /// The signalfd (-1 when it could not be made).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// Reads the pending signals off the signalfd; returns their numbers.
    pub fn drain(&self) -> Vec<i32> {
        let mut got = Vec::new();
        let Some(fd) = &self.fd else { return got };
        let _ = rustix::io::ioctl_fionbio(fd, true);
        while let Some(signo) = read_signal(fd) {
            got.push(signo);
        }
        let _ = rustix::io::ioctl_fionbio(fd, false);
        got
    }
}

/// Restores the signal mask.
pub fn unblock_signals(s: &Signals) {
    // SAFETY: restoring a mask we saved.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &s.old, std::ptr::null_mut()) };
}

/// Exit status as a shell reports it: the code, or 128 + signal.
pub fn decode(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_UNKNOWN
    }
}

const EXIT_UNKNOWN: i32 = 125;

fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our child with a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(decode(status))
    } else if r < 0 {
        Some(EXIT_UNKNOWN)
    } else {
        None
    }
}

fn copy_winsize(from: i32, to: i32) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// The terminal settings from before the first [`RawMode::enter`], and how
/// many guards are live. One saved state for the whole process: a nested
/// or repeated enter never saves the raw state as the one to restore.
static TERMINAL: std::sync::Mutex<(usize, Option<rustix::termios::Termios>)> =
    std::sync::Mutex::new((0, None));

/// The saved settings again, for the fatal-signal handler (no lock there).
struct SignalSafeTermios {
    ready: std::sync::atomic::AtomicBool,
    t: std::cell::UnsafeCell<std::mem::MaybeUninit<libc::termios>>,
}

// SAFETY: `t` is written only while `ready` is false (by the thread that
// holds TERMINAL) and read only after `ready` is seen true.
unsafe impl Sync for SignalSafeTermios {}

static SIGNAL_SAFE: SignalSafeTermios = SignalSafeTermios {
    ready: std::sync::atomic::AtomicBool::new(false),
    t: std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()),
};

/// Signals whose default action ends amphi and that amphi neither blocks
/// (see [`block_signals`]) nor handles otherwise: while the terminal is raw,
/// a handler restores it and re-raises. (SIGSEGV and SIGBUS keep Rust's
/// stack-overflow handler; SIGKILL cannot be caught.)
const FATAL: &[i32] = &[
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGPWR,
    libc::SIGIO,
    libc::SIGSTKFLT,
    libc::SIGSYS,
    libc::SIGABRT,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
];

extern "C" fn restore_and_reraise(sig: libc::c_int) {
    use std::sync::atomic::Ordering;
    // SAFETY: tcsetattr, signal and raise are async-signal-safe; `t` is
    // initialised once `ready` is true.
    unsafe {
        if SIGNAL_SAFE.ready.load(Ordering::Acquire) {
            libc::tcsetattr(0, libc::TCSANOW, (*SIGNAL_SAFE.t.get()).as_ptr());
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_fatal_handlers() {
    for &sig in FATAL {
        // SAFETY: querying and setting a disposition; only a default one
        // is replaced.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = restore_and_reraise as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Puts our terminal in raw mode for the relay; the last guard to drop
/// restores it. A panic (in any thread) restores it too, and
/// [`restore_terminal`] does for exits that skip destructors.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    pub fn enter() -> RawMode {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                prev(info);
            }));
            install_fatal_handlers();
        });
        let mut g = TERMINAL.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == 0 {
            let stdin = std::io::stdin();
            g.1 = rustix::termios::tcgetattr(stdin.as_fd()).ok();
            if g.1.is_some() {
                use std::sync::atomic::Ordering;
                SIGNAL_SAFE.ready.store(false, Ordering::Release);
                // SAFETY: tcgetattr into our static while `ready` is false.
                let ok = unsafe { libc::tcgetattr(0, (*SIGNAL_SAFE.t.get()).as_mut_ptr()) == 0 };
                SIGNAL_SAFE.ready.store(ok, Ordering::Release);
            }
            if let Some(t) = &g.1 {
                let mut raw = t.clone();
                raw.make_raw();
                let _ = rustix::termios::tcsetattr(
                    stdin.as_fd(),
                    rustix::termios::OptionalActions::Now,
                    &raw,
                );
            }
        }
        g.0 += 1;
        RawMode { _private: () }
    }
}

/// Puts the terminal back as it was before raw mode, if amphi changed it
/// (safe to call at any time, and more than once).
pub fn restore_terminal() {
    // try_lock: a panic while the lock is held must not deadlock here.
    let g = match TERMINAL.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some(t) = &g.1 {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            t,
        );
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let mut g = TERMINAL.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if g.0 == 0 {
            SIGNAL_SAFE
                .ready
                .store(false, std::sync::atomic::Ordering::Release);
            if let Some(t) = g.1.take() {
                let _ = rustix::termios::tcsetattr(
                    std::io::stdin().as_fd(),
                    rustix::termios::OptionalActions::Now,
                    &t,
                );
            }
        }
    }
}

/// A descriptor of the slave side of the pty `master` (`TIOCGPTPEER`: no
/// path is looked up), for the relay to hold while the workload runs. A
/// workload that closes every descriptor of its terminal for a while
/// (systemd as PID 1 does, and then writes to /dev/console, the same
/// terminal) would otherwise hang the master up, which reads as the end
/// of its output; the relay learns of the exit from SIGCHLD instead.
pub fn hold_slave(master: &impl AsFd) -> Option<OwnedFd> {
    crate::container::launch::pty_peer(master)
}

/// Turns the `\r\n` line ends of a terminal's output into `\n`, across
/// chunk boundaries (a `\r` that ends a chunk waits for the next one). For
/// the console-only pty, whose output goes to a file or a pipe: the setup
/// stage clears ONLCR, but the workload may set it again (systemd resets
/// its console's settings). A lone `\r` is kept.
#[derive(Default)]
pub struct CrLf {
    pending_cr: bool,
}

impl CrLf {
    /// `input` converted, appended to `out`.
    pub fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    out.push(b'\r');
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// What is held back at the end of the output (a last lone `\r`).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
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
    let Some(sfd) = &sigs.fd else {
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
        let (mut fds, base) = poll_set(sfd, console.as_ref(), pty.as_ref(), stdin_open);
        // SAFETY: `fds` is a live Vec of fds.len() initialised pollfds;
        // poll writes only their `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Some(code) = on_signal(sfd, pid, pty.as_ref(), console.as_mut(), &mut buf) {
                return code;
            }
        }
        if let Some(c) = &mut console {
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                && !c.copy(&mut buf)
            {
                // Unreadable (no slave could be held and the workload
                // closed its own): stop watching it; the exit comes as
                // SIGCHLD.
                console = None;
            }
        }
        if let Some(m) = &pty {
            if let Some(code) = on_pty(m, &fds, base, &mut stdin_open, &mut buf, pid) {
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
) -> (Vec<libc::pollfd>, usize) {
    let mut fds = vec![libc::pollfd {
        fd: sfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // The console-only pty, when there is one, is polled second.
    if let Some(c) = console {
        fds.push(libc::pollfd {
            fd: c.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let base = fds.len();
    if let Some(m) = pty {
        fds.push(libc::pollfd {
            fd: m.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }
    (fds, base)
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
    fds: &[libc::pollfd],
    base: usize,
    stdin_open: &mut bool,
    buf: &mut [u8],
    pid: i32,
) -> Option<i32> {
    if fds[base].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
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
    if *stdin_open
        && fds.len() > base + 1
        && fds[base + 1].revents & (libc::POLLIN | libc::POLLHUP) != 0
    {
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

/// Reads one signal off a signalfd: its number, or None when none is
/// pending (non-blocking fd) or the read fails.
fn read_signal(fd: impl AsFd) -> Option<i32> {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    match rustix::io::read(fd, &mut info) {
        // ssi_signo, a u32, is the first field of struct signalfd_siginfo.
        Ok(n) if n == info.len() => {
            Some(u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32)
        }
        _ => None,
    }
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

    fn convert_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut c = CrLf::default();
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            c.convert(part, &mut out);
        }
        c.finish(&mut out);
        out
    }

    /// `\r\n` becomes `\n` wherever the chunks split it; a lone `\r` (a
    /// status line redrawn in place) and a `\r` at the very end are kept.
    #[test]
    fn crlf_becomes_lf_across_chunks() {
        let input = b"a\r\nb\rc\r\r\nd\n\r";
        for chunk in 1..=input.len() {
            assert_eq!(
                convert_in_chunks(input, chunk),
                b"a\nb\rc\r\nd\n\r",
                "chunks of {chunk}"
            );
        }
        assert_eq!(convert_in_chunks(b"", 1), b"");
    }

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
