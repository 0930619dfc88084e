//! The runc-compatible runtime commands that podman, containerd and
//! Kubernetes drive, one file per command (`create`, `start`, `state` and
//! `ps`, `kill`, `delete`, `exec`, `run`, `pause`/`resume`, `update`,
//! `events`, `list`, `checkpoint`/`restore`, `features` and `spec`); here
//! what several of them share.

mod checkpoint;
mod create;
mod delete;
mod error;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod run;
mod start;
mod state;
mod update;

pub use checkpoint::{checkpoint, restore};
pub use create::{
    bundle_rootfs, create, create_as, creating_state, exec_fifo, new_state_dir, run_poststop,
    target, CreateOptions, Dispatch,
};
pub use delete::delete;
pub use error::OciError;
pub use events::{events, EventsOptions};
pub use exec::{exec, ExecOptions};
pub use features::{default_spec, features};
pub use kill::kill;
pub use list::list;
pub use pause::{pause, resume};
pub use run::{check_terminal, run, run_as, RunOptions};
pub use start::start;
pub use state::{ps, state};
pub use update::{update, UpdateOptions};

use std::path::Path;

/// Result type of the runtime commands.
pub type Result<T> = std::result::Result<T, OciError>;

/// Connects to a console socket and hangs up at once, for an error that
/// comes before the container's launch connected it: the caller waiting
/// for the pty master sees end-of-file instead of waiting forever.
pub fn hang_up(console_socket: Option<&Path>) {
    if let Some(p) = console_socket {
        let _ = std::os::unix::net::UnixStream::connect(p);
    }
}

/// The seccomp agent's socket (`linux.seccomp.listenerPath`) of a bundle
/// whose container failed before its launch could hand a listener over:
/// connected and closed, so the agent sees end-of-file instead of waiting
/// forever. The config is read leniently (it may be the very thing that
/// was refused); a launch that fails tells the agent itself, and an agent
/// meets at most one more empty connection then.
pub fn hang_up_listener(bundle: &Path) {
    let p = bundle.join("config.json");
    // Bounded: a config is a few KiB; a huge file is not worth reading.
    if std::fs::metadata(&p).map_or(true, |m| m.len() > 1 << 20) {
        return;
    }
    let Ok(v) = std::fs::read(&p).map(|d| serde_json::from_slice::<serde_json::Value>(&d)) else {
        return;
    };
    if let Some(l) = v
        .ok()
        .as_ref()
        .and_then(|v| v["linux"]["seccomp"]["listenerPath"].as_str())
    {
        if Path::new(l).is_absolute() {
            let _ = std::os::unix::net::UnixStream::connect(l);
        }
    }
}

pub fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    let tmp = p.with_extension("amphi-tmp");
    std::fs::write(&tmp, pid.to_string())
        .map_err(|e| OciError::io(format_args!("pid file {}", tmp.display()), e))?;
    std::fs::rename(&tmp, p).map_err(|e| OciError::io(format_args!("pid file {}", p.display()), e))
}

/// `what` (pause, resume, update) is refused for a microVM container: the
/// guest's cgroups are out of the host's reach.
pub(crate) fn refuse_microvm(st: &crate::container::state::State, what: &str) -> Result<()> {
    match &st.microvm {
        Some(vm) => Err(format!(
            "{what} is not supported for container {:?}, which runs in a microVM ({vm})",
            st.id
        )
        .into()),
        None => Ok(()),
    }
}
