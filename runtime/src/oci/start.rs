//! `start`: a created container runs its process.

use super::delete::destroy;
use super::{OciError, Result};
use crate::container::config;
use crate::container::state::{State, Status};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// `start`: let a created container run its process.
///
/// Opening the exec fifo releases the container process, which runs the
/// startContainer hooks and answers `0` (about to execute the program) or
/// `error:<json>` (a typed `ChildError`); its end of the fifo closes when the program is executed.
/// So `start` returns once the program runs, after the poststart hooks, and
/// fails if a startContainer hook (or the exec) failed, in which case the
/// container is destroyed as the runtime spec asks.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let st = State::load(root, id)?;
    match st.status(root) {
        Status::Created => {}
        s => {
            return Err(format!(
                "container {id:?} is {}, not created: cannot start it",
                s.as_str()
            )
            .into())
        }
    }
    let fifo = State::dir(root, id).join("exec.fifo");
    let f = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| OciError::io(format_args!("exec fifo of {id:?}"), e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = Vec::new();
    // Whether the container has opened its end: until then reads give
    // end-of-file; while it runs the hooks, EAGAIN.
    let mut connected = false;
    loop {
        crate::sys::poll::wait_readable(f.as_raw_fd(), Duration::from_millis(50));
        let mut b = [0u8; 4096];
        match rustix::io::read(&f, &mut b) {
            // Its end closed: the program was executed, or it died.
            Ok(0) if connected => break,
            Ok(0) if !st.alive() => {
                return Err(format!("container {id:?} exited before it could start").into())
            }
            Ok(0) if Instant::now() > deadline => {
                return Err(format!("container {id:?} did not start within 30s").into())
            }
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(n) => {
                connected = true;
                answer.extend_from_slice(&b[..n]);
            }
            Err(rustix::io::Errno::AGAIN) => connected = true,
            Err(e) => return Err(format!("exec fifo of {id:?}: {e}").into()),
        }
    }
    let _ = std::fs::remove_file(&fifo);
    let answer = String::from_utf8_lossy(&answer);
    if let Some(i) = answer.find("error:") {
        let e = crate::container::sync::ChildError::decode(answer[i + "error:".len()..].as_bytes());
        if let Err(d) = destroy(root, &st) {
            tracing::warn!("{d}");
        }
        return Err(OciError::cause(e));
    }
    if answer != "0" {
        return Err(format!("container {id:?} exited before it could start").into());
    }
    if let Ok(spec) = config::load(&st.bundle) {
        if let Some(h) = spec.hooks() {
            let s = st.oci_started().to_string();
            if let Err(e) =
                crate::container::hooks::run_all(h.poststart().as_ref(), "poststart", &s)
            {
                tracing::warn!("{e}");
            }
        }
    }
    Ok(())
}
