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
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Runs `a` in the microVM container it names; None when it names no
/// microVM container (the native exec then handles it).
pub fn exec(store_root: &Path, state_root: &Path, a: &ExecArgs) -> Option<Result<i32, OciError>> {
    let r = records::find(store_root, &a.id).ok()?;
    r.vm.as_ref()?;
    Some(run(state_root, &r, a))
}

/// The flags a microVM exec does not take yet, named. An OCI bundle's
/// microVM container (`oci`) takes the ones its clients pass: --process,
/// --console-socket, --pid-file and --detach.
pub(super) fn unsupported(a: &ExecArgs, oci: bool) -> Option<&'static str> {
    [
        (a.process.is_some() && !oci, "--process"),
        (a.console_socket.is_some() && !oci, "--console-socket"),
        (a.pid_file.is_some() && !oci, "--pid-file"),
        (a.detach && !oci, "-d/--detach"),
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
    if let Some(flag) = unsupported(a, false) {
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
    let req = ExecRequest {
        args: a.command.clone(),
        env: a.env.clone(),
        cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
        user: a.user.clone(),
        stdin: true,
        tty: a.tty.then(|| winsize().unwrap_or((24, 80))),
    };
    client(&sock, &r.name, req)
}

/// Asks the monitor listening on `sock` for the process `req` in
/// container `name`, and relays its stdio and our signals until its
/// status.
pub(super) fn client(sock: &Path, name: &str, req: ExecRequest) -> Result<i32, OciError> {
    let mut conn = UnixStream::connect(sock).map_err(|e| {
        OciError::from(format!(
            "container {name}: its monitor does not take exec requests ({}: {e})",
            sock.display()
        ))
    })?;
    let tty = req.tty.is_some();
    Frame::ExecStart { stream: 0, req }
        .write_to(&mut conn)
        .map_err(|e| OciError::from(format!("exec socket: {e}")))?;
    // Before any thread: they inherit the mask, so the signals come to the
    // signalfd.
    let sigs = crate::sys::signal::block_forwarded();
    // Our terminal in raw mode while a `-t` process has it (restored on
    // drop, and on a panic).
    let _raw =
        (tty && rustix::termios::isatty(std::io::stdin())).then(crate::sys::term::RawMode::enter);
    let writer = std::sync::Arc::new(std::sync::Mutex::new(
        conn.try_clone()
            .map_err(|e| OciError::from(format!("exec socket: {e}")))?,
    ));
    forward_stdin(writer.clone());
    forward_signals(sigs, writer, tty);
    relay(&mut conn, name)
}

/// Our terminal's size (rows, columns), when stdin is one.
pub(super) fn winsize() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

type Writer = std::sync::Arc<std::sync::Mutex<UnixStream>>;

/// Writes a frame to the monitor under the writer's lock.
fn send(w: &Writer, f: &Frame) -> std::io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    f.write_to(&mut *s)
}

/// Forwards the signals we get to the process, in their own thread; with
/// `-t`, a window size change becomes a resize of its terminal.
fn forward_signals(sigs: crate::sys::signal::Signals, w: Writer, tty: bool) {
    std::thread::spawn(move || loop {
        let mut set = crate::sys::poll::PollSet::new();
        set.add(sigs.raw_fd());
        if !set.wait(None) {
            continue;
        }
        for s in sigs.drain() {
            let f = match s {
                libc::SIGCHLD => continue,
                libc::SIGWINCH if !tty => continue,
                libc::SIGWINCH => match winsize() {
                    Some((rows, cols)) => Frame::ExecResize {
                        stream: 0,
                        rows,
                        cols,
                    },
                    None => continue,
                },
                s => Frame::ExecSignal {
                    stream: 0,
                    signal: s,
                },
            };
            if send(&w, &f).is_err() {
                return;
            }
        }
    });
}

/// Copies our stdin to the process in its own thread.
fn forward_stdin(w: Writer) {
    std::thread::spawn(move || {
        channel_stdin(&w);
    });
}

/// Our stdin as exec frames, then its end.
fn channel_stdin(w: &Writer) {
    crate::sys::io::each_stdin_chunk(channel::CHUNK, |data| {
        let f = match data {
            Some(b) => Frame::ExecStdin {
                stream: 0,
                data: b.to_vec(),
            },
            None => Frame::ExecStdinEof(0),
        };
        send(w, &f).is_ok()
    })
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
