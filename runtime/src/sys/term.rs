//! Our terminal while a workload's pty is relayed to it: raw mode (put
//! back by the last guard, by a panic, or by a fatal signal), window size,
//! and the `\r\n` of a terminal's output made plain.

use std::os::fd::AsFd;

pub fn copy_winsize(from: i32, to: i32) {
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
/// (see [`super::signal::block_forwarded`]) nor handles otherwise: while the terminal is raw,
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

/// A new pty master (close-on-exec, not our controlling terminal),
/// granted and unlocked for its slave to be opened; on failure, the step
/// that failed and why.
pub fn new_pty_master() -> Result<std::os::fd::OwnedFd, (&'static str, rustix::io::Errno)> {
    let master = rustix::pty::openpt(
        rustix::pty::OpenptFlags::RDWR
            | rustix::pty::OpenptFlags::NOCTTY
            | rustix::pty::OpenptFlags::CLOEXEC,
    )
    .map_err(|e| ("/dev/ptmx", e))?;
    rustix::pty::grantpt(&master).map_err(|e| ("grantpt", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| ("unlockpt", e))?;
    Ok(master)
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
}
