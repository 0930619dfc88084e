//! Signal names as users and OCI callers write them, and the signals a
//! foreground run forwards (blocked, read from a signalfd).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Parses `TERM`, `SIGTERM`, `15`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(format!("invalid signal number {n}"));
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return realtime(name).ok_or_else(|| format!("unknown signal {s:?}")),
    };
    Ok(n)
}

/// `RTMIN`, `RTMIN+N`, `RTMAX`, `RTMAX-N` (as docker and systemd name
/// them: `SIGRTMIN+3` is systemd's "halt"), within the realtime range.
fn realtime(name: &str) -> Option<i32> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        match rest.strip_prefix('+') {
            Some(k) => min.checked_add(k.parse::<i32>().ok()?)?,
            None if rest.is_empty() => min,
            None => return None,
        }
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        match rest.strip_prefix('-') {
            Some(k) => max.checked_sub(k.parse::<i32>().ok()?)?,
            None if rest.is_empty() => max,
            None => return None,
        }
    } else {
        return None;
    };
    (min..=max).contains(&n).then_some(n)
}

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
pub fn block_forwarded() -> Signals {
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
    /// The signalfd, when it could be made.
    pub fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
    }

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
pub fn unblock(s: &Signals) {
    // SAFETY: restoring a mask we saved.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &s.old, std::ptr::null_mut()) };
}

/// Reads one signal off a signalfd: its number, or None when none is
/// pending (non-blocking fd) or the read fails.
pub fn read_signal(fd: impl AsFd) -> Option<i32> {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    match rustix::io::read(fd, &mut info) {
        // ssi_signo, a u32, is the first field of struct signalfd_siginfo.
        Ok(n) if n == info.len() => {
            Some(u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32)
        }
        _ => None,
    }
}

/// For a child between fork and exec (`Command::pre_exec`): SIGKILL when
/// its parent dies, and exit at once if `parent` (read before the fork)
/// already has, since the death signal would never come. Only
/// async-signal-safe calls.
pub fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl, getppid and _exit take no pointers and are
    // async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn realtime_signals() {
        // glibc keeps 32 and 33 for itself: SIGRTMIN is 34, as in docker.
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("RTMIN").unwrap(), libc::SIGRTMIN());
        assert_eq!(parse_signal("rtmax-1").unwrap(), libc::SIGRTMAX() - 1);
        for bad in [
            "RTMIN+40", "RTMIN-1", "RTMAX+1", "RTMIN+", "RTMINX", "RTMIN+-2",
        ] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
