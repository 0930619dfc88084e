//! `amphi run -d`: fork a monitor that becomes the container's parent
//! (waits for it, records its exit, cleans up), with stdio going to the
//! container's log file; the caller returns once the container started.

use super::{Failure, RunError};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Which side of the fork we are on.
pub enum Side {
    /// The `amphi run -d` process: read the monitor's report here.
    Caller(OwnedFd),
    /// The monitor: report on this pipe once started (or failed).
    Monitor(OwnedFd),
}

/// Forks the monitor; it gets a new session and the log file as stdio.
pub fn fork_monitor(log: &Path) -> Result<Side, RunError> {
    // The log holds what the container printed: its owner's only (0600).
    let logf = crate::image::store::open_private(log, true)
        .map_err(|e| RunError::io(format_args!("container log {}", log.display()), e))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| RunError::io("pipe", e.into()))?;
    // SAFETY: amphi is single-threaded here; the child only runs our code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(RunError::io("fork", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(w);
        return Ok(Side::Caller(r));
    }
    drop(r);
    let _ = rustix::process::setsid();
    // SAFETY: redirecting our own stdio.
    unsafe {
        if let Ok(null) = std::fs::File::open("/dev/null") {
            libc::dup2(null.as_raw_fd(), 0);
        }
        libc::dup2(logf.as_raw_fd(), 1);
        libc::dup2(logf.as_raw_fd(), 2);
    }
    Ok(Side::Monitor(w))
}

/// Monitor: tell the caller how the start went.
pub fn report(tx: OwnedFd, r: Result<(), &RunError>) {
    let msg = match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err:{}:{e}", e.failure().token()),
    };
    let mut f = std::fs::File::from(tx);
    let _ = f.write_all(msg.as_bytes());
}

/// Caller: wait for the monitor's report.
pub fn wait_started(rx: OwnedFd) -> Result<(), RunError> {
    let mut f = std::fs::File::from(rx);
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    if s == "ok" {
        return Ok(());
    }
    if let Some(rest) = s.strip_prefix("err:") {
        let (kind, msg) = rest.split_once(':').unwrap_or(("amphi", rest));
        return Err(RunError::Reported {
            failure: Failure::from_token(kind),
            message: msg.to_string(),
        });
    }
    Err(RunError::Failed(
        "the container monitor exited before the container started".into(),
    ))
}

/// The watchdog of a foreground run: the container dies with its client.
/// If `amphi run` is killed (even with SIGKILL) while its container runs,
/// the watchdog, a process forked from it, sees its pipe close, kills the
/// container and cleans up after it (its cgroups and runtime state; with
/// `--rm` also its writable layer and record, else it records exit 137).
/// If the watchdog is killed too, the container shows as stale in
/// `amphi ps` and `amphi gc` removes it.
pub struct Watchdog {
    tx: Option<OwnedFd>,
}

/// What the watchdog needs to clean up after a container.
pub struct Watched<'a> {
    pub id: &'a str,
    pub store_root: &'a Path,
    pub state_root: &'a Path,
    pub rm: bool,
}

impl Watchdog {
    /// Forks the watchdog. Call once the container's state is saved, with
    /// amphi single-threaded. Without a watchdog (fork failed) the run goes
    /// on: a killed client then leaves a stale container for `amphi gc`.
    pub fn start(w: Watched) -> Watchdog {
        let Ok((r, tx)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
            return Watchdog { tx: None };
        };
        // SAFETY: amphi is single-threaded here; the child only runs our code
        // and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            tracing::warn!("fork of the watchdog: {}", std::io::Error::last_os_error());
            return Watchdog { tx: None };
        }
        if pid > 0 {
            return Watchdog { tx: Some(tx) };
        }
        drop(tx);
        watch(r, w)
    }

    /// The run ended normally: the watchdog leaves quietly.
    pub fn dismiss(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = rustix::io::write(&tx, b"x");
        }
    }
}

/// The watchdog's side (never returns).
fn watch(r: OwnedFd, w: Watched) -> ! {
    // Out of the client's process group (no terminal signals), nothing
    // blocked, job-control and hangup signals ignored; stdin and stdout
    // closed (only stderr is kept, for the message below).
    // SAFETY: plain syscalls on our own process.
    unsafe {
        libc::setpgid(0, 0);
        for s in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Ok(null) = std::fs::File::open("/dev/null") {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
        libc::dup2(r.as_raw_fd(), 3);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: reading into a local buffer from our pipe (fd 3).
        let n = unsafe { libc::read(3, b.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n == 1 {
        // SAFETY: leaving the forked child without unwinding.
        unsafe { libc::_exit(0) }
    }
    // The client is gone without a word: the container goes with it. The
    // watchdog is a forked process of its own, whose client (the CLI) is
    // dead: its stderr (the client's terminal) is the only place to say so.
    let short = &w.id[..w.id.len().min(12)];
    eprintln!(
        "amphi: the client of container {short} was killed; killing the container and removing {}",
        if w.rm { "it" } else { "its runtime state" }
    );
    let code = match super::manage::remove_leftovers(w.state_root, w.id) {
        Ok(()) => {
            let rec = super::records::dir(w.store_root, w.id);
            if w.rm {
                let _ = crate::image::store::remove_path(&rec);
            } else if let Ok(mut r) = super::records::find(w.store_root, w.id) {
                r.exit_code = Some(137);
                r.finished = Some(crate::container::state::now_rfc3339());
                let _ = r.save(w.store_root);
            }
            0
        }
        Err(e) => {
            eprintln!("amphi: error: {e} (amphi gc will retry)");
            1
        }
    };
    // SAFETY: leaving the forked child without unwinding.
    unsafe { libc::_exit(code) }
}
