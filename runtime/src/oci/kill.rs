//! `kill`: a signal to the container's process, or to all of them.

use super::Result;
use crate::container::state::State;
use crate::sys::signal::parse_signal;
use std::path::Path;

/// `kill`: signal the container's process (or all its processes).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<()> {
    let sig = parse_signal(signal)?;
    let st = State::load(root, id)?;
    if all {
        // As runc: frozen while signalled (no process forks past the
        // list), then thawed, a paused container too (so a SIGKILL
        // takes effect).
        let froze = st.alive() && st.cgroup.freeze(true).is_ok();
        let pids = st.cgroup.pids();
        for p in &pids {
            // SAFETY: signalling pids of the container's cgroup.
            unsafe { libc::kill(*p, sig) };
        }
        if froze {
            if let Err(e) = st.cgroup.freeze(false) {
                tracing::warn!("{e}");
            }
        }
        if !pids.is_empty() || st.alive() {
            return Ok(());
        }
    }
    if !st.alive() {
        return Err(format!("container {id:?} is not running").into());
    }
    // SAFETY: signalling the container's process.
    if unsafe { libc::kill(st.pid, sig) } != 0 {
        return Err(format!("kill {id:?}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}
