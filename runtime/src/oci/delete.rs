//! `delete`: a container's end (its processes, cgroups, state), with the
//! poststop hooks.

use super::create::run_poststop;
use super::{OciError, Result};
use crate::container::config;
use crate::container::state::{self, State, Status};
use std::path::Path;
use std::time::{Duration, Instant};

/// `delete`: remove a stopped (or, with force, any) container.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let st = match State::load(root, id) {
        Ok(s) => s,
        // runc: deleting a missing container with --force is not an error.
        Err(_) if force && state::check_id(id).is_ok() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match st.status(root) {
        s @ (Status::Running | Status::Paused) if !force => {
            return Err(format!(
                "container {id:?} is {}: stop it first or use delete --force",
                s.as_str()
            )
            .into())
        }
        _ => {}
    }
    destroy(root, &st)
}

/// Destroys a container: kills whatever is left of it (without a pid
/// namespace its other processes may outlive it), removes its cgroup, runs
/// the poststop hooks and removes its state.
pub(super) fn destroy(root: &Path, st: &State) -> Result<()> {
    kill_all(st);
    let _ = st.cgroup.remove();
    if let Ok(spec) = config::load(&st.bundle) {
        run_poststop(&spec, &st.oci(root).to_string());
    }
    std::fs::remove_dir_all(State::dir(root, &st.id))
        .map_err(|e| OciError::io(format_args!("removing state of {:?}", st.id), e))
}

pub(super) fn kill_all(st: &State) {
    for p in st.cgroup.pids() {
        // SAFETY: killing processes of the container's cgroup.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    if st.alive() {
        // SAFETY: killing the container's process.
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
    }
    // A paused container's processes die once thawed.
    if st.cgroup.frozen() {
        if let Err(e) = st.cgroup.freeze(false) {
            tracing::warn!("{e}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while st.alive() && Instant::now() < deadline {
        // It may be our child (run, or create in this process).
        // SAFETY: waitpid takes a null status pointer (allowed: no status
        // wanted); WNOHANG only reaps the child if it is gone.
        unsafe { libc::waitpid(st.pid, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(5));
    }
}
