//! `amphi run -d`: fork a monitor that becomes the container's parent
//! (waits for it, records its exit, cleans up), with stdio going to the
//! container's log file; the caller returns once the container started.

use super::{amphi_err, RunError};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| amphi_err(format!("container log {}: {e}", log.display())))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| amphi_err(format!("pipe: {e}")))?;
    // SAFETY: amphi is single-threaded here; the child only runs our code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(amphi_err(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
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
        Err(e) => format!("err:{}:{}", e.code, e.message),
    };
    // SAFETY: the fd is ours; File takes ownership and closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(tx)) };
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
        let (code, msg) = rest.split_once(':').unwrap_or(("125", rest));
        return Err(RunError {
            code: code.parse().unwrap_or(125),
            message: msg.to_string(),
        });
    }
    Err(amphi_err(
        "the container monitor exited before the container started",
    ))
}
