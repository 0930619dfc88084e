//! runc's `run`: create and start a container from a bundle in one call;
//! in the foreground (wait for its process, then delete it unless
//! `--keep`) or detached (`-d`: return once it runs, as `create` + `start`).

use super::OciError;
use super::{
    create::{bundle_rootfs, creating_state, run_poststop, Dispatch},
    hang_up, write_pid_file, CreateOptions, Result,
};
use crate::container::config;
use crate::container::launch::{launch, LaunchOptions};
use crate::container::state::{self, State};
use std::path::Path;

/// `run` options (runc's flags): `create`'s, and `-d`, `--keep`.
pub struct RunOptions {
    pub create: CreateOptions,
    /// `-d`: return once the process runs.
    pub detach: bool,
    /// `--keep`: leave the stopped container for `delete` (foreground only).
    pub keep: bool,
}

/// runc's rule for the terminal and the console socket: a detached
/// container with a terminal needs a socket to send its pty to, and a
/// socket is only used then (in the foreground, `run` relays the pty
/// itself).
pub fn check_terminal(detach: bool, terminal: bool, console_socket: bool) -> Result<()> {
    if detach && terminal && !console_socket {
        return Err(
            "process.terminal is set and the container is detached: --console-socket is needed to receive its pty"
                .into(),
        );
    }
    if console_socket && (!detach || !terminal) {
        return Err(format!(
            "--console-socket is only used for a detached container whose process.terminal is set (here: {}, terminal {})",
            if detach { "detached" } else { "in the foreground" },
            terminal
        ).into());
    }
    Ok(())
}

/// `run`: returns the process's exit status (0 when detached).
pub fn run(root: &Path, o: RunOptions) -> Result<i32> {
    run_as(root, o, Dispatch::Ask)
}

/// [`run`], with the dispatcher asked already (`Dispatch::Native`) or not.
pub fn run_as(root: &Path, o: RunOptions, d: Dispatch) -> Result<i32> {
    let checked = (|| {
        let spec = config::load_bundle(&o.create.bundle)?;
        // The dispatcher's word holds here too: a container that must run
        // in a microVM never runs natively.
        if d == Dispatch::Ask {
            super::create::refuse_microvm(&spec, &o.create.store_root)?;
        }
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        check_terminal(o.detach, terminal, o.create.console_socket.is_some())
    })();
    if let Err(e) = checked {
        hang_up(o.create.console_socket.as_deref());
        super::hang_up_listener(&o.create.bundle);
        return Err(e);
    }
    if o.detach {
        if o.keep {
            return Err("--keep applies to a container run in the foreground, not with -d".into());
        }
        // Decided above.
        super::create::create_as(root, o.create.clone(), Dispatch::Native)?;
        if let Err(e) = super::start(root, &o.create.id) {
            // As runc: a container that could not start is not left behind.
            let _ = super::delete(root, &o.create.id, true);
            return Err(e);
        }
        return Ok(0);
    }
    let r = foreground(root, &o);
    if r.is_err() {
        super::hang_up_listener(&o.create.bundle);
    }
    r
}

/// Creates, starts and waits for the container's process; then removes
/// the container unless `keep`.
fn foreground(root: &Path, o: &RunOptions) -> Result<i32> {
    let id = o.create.id.as_str();
    state::check_id(id).map_err(|e| e.to_string())?;
    let bundle = std::fs::canonicalize(&o.create.bundle)
        .map_err(|e| OciError::io(format_args!("bundle {}", o.create.bundle.display()), e))?;
    let spec = config::load_bundle(&bundle)?;
    let rootfs = bundle_rootfs(&spec, &bundle)?;
    let dir = super::create::new_state_dir(root, id)?;
    let sigs = crate::sys::signal::block_forwarded();
    let (annotations, template) = creating_state(&spec, id, &bundle);
    let l = launch(
        &spec,
        &rootfs,
        LaunchOptions {
            id: id.to_string(),
            exec_fifo: None,
            console_socket: None,
            user_lookup: None,
            preserve_fds: o.create.preserve_fds,
            state_template: template.clone(),
            owns_cgroup: true,
            sealed: true,
            console_pty: false,
        },
    );
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            crate::sys::signal::unblock(&sigs);
            // As for create: a failed start continues with poststop.
            let mut st = template;
            st["status"] = "stopped".into();
            st["pid"] = 0.into();
            run_poststop(&spec, &st.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let st = State {
        annotations,
        ..State::launched(id, l.pid, bundle.clone(), rootfs, l.cgroup.clone())
    };
    let _ = st.save(root);
    if let Some(p) = &o.create.pid_file {
        if let Err(e) = write_pid_file(p, l.pid) {
            tracing::warn!("{e}");
        }
    }
    // launch returned once the program was executed.
    if let Some(h) = spec.hooks() {
        let s = st.oci_started().to_string();
        if let Err(e) = crate::container::hooks::run_all(h.poststart().as_ref(), "poststart", &s) {
            tracing::warn!("{e}");
        }
    }
    let code = crate::run::pty_wait(l.pid, l.pty, &sigs);
    crate::sys::signal::unblock(&sigs);
    if o.keep {
        // Left stopped, for `state` and `delete` (which runs poststop).
        let mut st = st;
        st.exit_code = Some(code);
        let _ = st.save(root);
        return Ok(code);
    }
    let _ = l.cgroup.remove();
    run_poststop(&spec, &st.oci(root).to_string());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::check_terminal;

    #[test]
    fn terminal_and_console_socket_as_runc() {
        // (detach, terminal, socket) -> allowed
        let cases = [
            (false, false, false, true),
            (false, true, false, true),
            (true, false, false, true),
            (true, true, true, true),
            (true, true, false, false),
            (false, true, true, false),
            (true, false, true, false),
            (false, false, true, false),
        ];
        for (d, t, s, ok) in cases {
            assert_eq!(check_terminal(d, t, s).is_ok(), ok, "{d} {t} {s}");
        }
    }
}
