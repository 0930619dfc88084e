//! `amphi exec` into a running microVM container: the client's side. It
//! connects to the monitor's exec socket (in the VM's run directory), asks
//! for the process with an exec-start frame, sends its stdin, and prints
//! what comes back until the process's status. The monitor relays to the
//! guest on a stream of its own; the guest init runs the process with the
//! native exec (the workload's namespaces, cgroup, user, capabilities and
//! seccomp). If this client goes away, the monitor kills the process.

use super::oci::ExecArgs;
use crate::oci::OciError;
use crate::proto::channel::{self, Decoder, ExecRequest, Frame};
use crate::run::records::{self, Life};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Runs `a` in the microVM container it names; None when it names no
/// microVM container (the native exec then handles it).
pub fn exec(store_root: &Path, state_root: &Path, a: &ExecArgs) -> Option<Result<i32, OciError>> {
    let r = records::find(store_root, &a.id).ok()?;
    r.vm.as_ref()?;
    Some(run(state_root, &r, a))
}

/// The flags a microVM exec does not take yet, named.
fn unsupported(a: &ExecArgs) -> Option<&'static str> {
    [
        (a.tty, "-t/--tty"),
        (a.process.is_some(), "--process"),
        (a.console_socket.is_some(), "--console-socket"),
        (a.pid_file.is_some(), "--pid-file"),
        (a.detach, "-d/--detach"),
        (!a.cap.is_empty(), "--cap"),
        (a.cgroup.is_some(), "--cgroup"),
        (a.preserve_fds != 0, "--preserve-fds"),
        (!a.additional_gids.is_empty(), "--additional-gids"),
        (a.no_new_privs, "--no-new-privs"),
        (a.apparmor.is_some(), "--apparmor"),
        (a.process_label.is_some(), "--process-label"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

fn run(state_root: &Path, r: &records::Record, a: &ExecArgs) -> Result<i32, OciError> {
    if let Some(flag) = unsupported(a) {
        return Err(format!(
            "{flag} is not supported yet for exec into a microVM container ({})",
            r.name
        )
        .into());
    }
    if a.command.is_empty() {
        return Err("exec needs a command".into());
    }
    if !matches!(r.life(state_root), Life::VmUp { .. }) {
        return Err(format!("container {} is not running: cannot exec in it", r.name).into());
    }
    let sock = crate::vm::exec_socket(state_root, &r.id);
    let mut conn = UnixStream::connect(&sock).map_err(|e| {
        OciError::from(format!(
            "container {}: its monitor does not take exec requests ({}: {e})",
            r.name,
            sock.display()
        ))
    })?;
    let req = ExecRequest {
        args: a.command.clone(),
        env: a.env.clone(),
        cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
        user: a.user.clone(),
        stdin: true,
    };
    Frame::ExecStart { stream: 0, req }
        .write_to(&mut conn)
        .map_err(|e| OciError::from(format!("exec socket: {e}")))?;
    forward_stdin(&conn)?;
    relay(&mut conn, &r.name)
}

/// Copies our stdin to the process in its own thread.
fn forward_stdin(conn: &UnixStream) -> Result<(), OciError> {
    let mut w = conn
        .try_clone()
        .map_err(|e| OciError::from(format!("exec socket: {e}")))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; channel::CHUNK];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let f = Frame::ExecStdin {
                        stream: 0,
                        data: buf[..n].to_vec(),
                    };
                    if f.write_to(&mut w).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = Frame::ExecStdinEof(0).write_to(&mut w);
    });
    Ok(())
}

/// Prints the process's output until its status comes.
fn relay(conn: &mut UnixStream, name: &str) -> Result<i32, OciError> {
    let mut dec = Decoder::new();
    loop {
        match channel::read_frame(conn, &mut dec) {
            Ok(Some(Frame::ExecStdout { data, .. })) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(&data);
                let _ = out.flush();
            }
            Ok(Some(Frame::ExecStderr { data, .. })) => {
                let mut err = std::io::stderr();
                let _ = err.write_all(&data);
                let _ = err.flush();
            }
            Ok(Some(Frame::ExecExit { code, .. })) => return Ok(code),
            Ok(Some(Frame::ExecError { error, .. })) => {
                return Err(format!("container {name}: {}", error.message).into())
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                return Err(
                    format!("container {name} stopped before the exec'd process ended").into(),
                )
            }
        }
    }
}
