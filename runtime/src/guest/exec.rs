//! `amphi exec` into a microVM container, the guest's side. The host asks
//! with [`Frame::ExecStart`] for stream N (≥ 1; the workload is stream 0);
//! the init runs its own binary's native `exec` (`/.amphi/init exec --root
//! STATE ID -- ARGS`) against the workload's state, which it saved at the
//! start: the process joins the workload's namespaces and cgroup, with its
//! user, capabilities, seccomp profile and no_new_privs, exactly as a
//! native `amphi exec` does. Its stdout and stderr go back as
//! [`Frame::ExecStdout`]/[`Frame::ExecStderr`], its status as
//! [`Frame::ExecExit`] once both have ended. The init reaps every child (it
//! is PID 1), so the statuses of exec helpers come through [`reaped`].

use super::{gerr, INIT};
use crate::proto::channel::{ExecRequest, Frame, GuestError};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};

/// Where the init keeps the workload's state and spec for exec (in its
/// own root, which the workload does not see).
const STATE_ROOT: &str = "/.amphi/state";
const BUNDLE: &str = "/.amphi/bundle";

/// What exec needs: the container's id, and the channel to write to.
struct Context {
    id: String,
    out: Mutex<File>,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();
/// Statuses of exited exec helpers, by pid (see [`reaped`]).
static EXITS: Mutex<BTreeMap<i32, i32>> = Mutex::new(BTreeMap::new());
static EXITED: Condvar = Condvar::new();
/// A running exec process: its helper's pid, where its input goes, and
/// its terminal's master (`-t`).
struct Proc {
    pid: i32,
    stdin: Option<Box<dyn Write + Send>>,
    pty: Option<File>,
}

/// The running exec processes, by stream.
static STDINS: Mutex<BTreeMap<u32, Proc>> = Mutex::new(BTreeMap::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a frame to the host under the channel's write lock, once exec is
/// prepared (the workload's relay and the exec threads then share the
/// channel: a frame is never interleaved with another); false before.
pub(super) fn send(f: &Frame) -> bool {
    match CONTEXT.get() {
        Some(c) => {
            let mut out = lock(&c.out);
            let _ = f.write_to(&mut *out);
            true
        }
        None => false,
    }
}

/// After the workload's launch: saves its state and spec where `exec`
/// finds them, and keeps a handle on the channel for exec's frames.
pub(super) fn prepare(
    id: &str,
    pid: i32,
    spec: &oci_spec::runtime::Spec,
    rootfs: &std::path::Path,
    cgroup: &crate::container::cgroups::Cgroup,
    channel: &File,
) -> Result<(), GuestError> {
    std::fs::create_dir_all(BUNDLE).map_err(|e| gerr(format!("{BUNDLE}: {e}")))?;
    let config = serde_json::to_vec(spec).map_err(|e| gerr(format!("the spec: {e}")))?;
    std::fs::write(format!("{BUNDLE}/config.json"), config)
        .map_err(|e| gerr(format!("{BUNDLE}/config.json: {e}")))?;
    let st = crate::container::state::State::launched(
        id,
        pid,
        BUNDLE.into(),
        rootfs.to_path_buf(),
        cgroup.clone(),
    );
    // The state root is private (0700), as the native one.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(crate::container::state::State::dir(
            std::path::Path::new(STATE_ROOT),
            id,
        ))
        .map_err(|e| gerr(format!("{STATE_ROOT}: {e}")))?;
    st.save(std::path::Path::new(STATE_ROOT))
        .map_err(|e| gerr(format!("saving the workload's state: {e}")))?;
    let out = channel
        .try_clone()
        .map_err(|e| gerr(format!("guest channel: {e}")))?;
    let _ = CONTEXT.set(Context {
        id: id.to_string(),
        out: Mutex::new(out),
    });
    Ok(())
}

/// The init reaped `pid` with `status`: an exec helper's waiter wakes.
pub(super) fn reaped(pid: i32, status: i32) {
    lock(&EXITS).insert(pid, status);
    EXITED.notify_all();
}

/// The host's exec frames.
pub(super) fn on_frame(f: Frame) {
    match f {
        Frame::ExecStart { stream, req } => {
            if let Err(error) = start(stream, &req) {
                send(&Frame::ExecError { stream, error });
            }
        }
        Frame::ExecStdin { stream, data } => {
            if let Some(Proc { stdin: Some(w), .. }) = lock(&STDINS).get_mut(&stream) {
                let _ = w.write_all(&data);
            }
        }
        Frame::ExecStdinEof(stream) => {
            if let Some(p) = lock(&STDINS).get_mut(&stream) {
                // A terminal stays open: its EOF is a ^D the user types.
                if p.pty.is_none() {
                    drop(p.stdin.take());
                }
            }
        }
        Frame::ExecSignal { stream, signal } => {
            if let Some(p) = lock(&STDINS).get(&stream) {
                // SAFETY: signalling our own exec helper, which forwards
                // the signal to its process.
                unsafe { libc::kill(p.pid, signal) };
            }
        }
        Frame::ExecResize { stream, rows, cols } => {
            if let Some(Proc { pty: Some(m), .. }) = lock(&STDINS).get(&stream) {
                set_winsize(m, rows, cols);
            }
        }
        _ => {}
    }
}

/// The helper's command line: native `exec` with the request's options.
fn command(id: &str, req: &ExecRequest) -> Command {
    let mut c = Command::new(INIT);
    c.args(["--root", STATE_ROOT, "exec"]);
    for e in &req.env {
        c.arg("--env").arg(e);
    }
    if let Some(w) = &req.cwd {
        c.arg("--cwd").arg(w);
    }
    if let Some(u) = &req.user {
        c.arg("--user").arg(u);
    }
    if req.tty.is_some() {
        c.arg("--tty");
    }
    c.arg(id).arg("--").args(&req.args);
    c
}

/// Spawns the helper for stream `stream` and the threads that relay its
/// output and report its end.
fn start(stream: u32, req: &ExecRequest) -> Result<(), GuestError> {
    let ctx = CONTEXT
        .get()
        .ok_or_else(|| gerr("the workload is not running: nothing to exec in"))?;
    if req.args.is_empty() {
        return Err(gerr("exec needs a command"));
    }
    let (proc, outputs) = match req.tty {
        Some((rows, cols)) => spawn_tty(&ctx.id, req, rows, cols)?,
        None => spawn_piped(&ctx.id, req)?,
    };
    let pid = proc.pid;
    lock(&STDINS).insert(stream, proc);
    let readers: Vec<_> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, r)| std::thread::spawn(move || relay(stream, i == 1, r)))
        .collect();
    std::thread::spawn(move || {
        let code = wait(pid);
        for r in readers {
            let _ = r.join();
        }
        lock(&STDINS).remove(&stream);
        send(&Frame::ExecExit {
            stream,
            code: code.clamp(0, 255),
        });
    });
    Ok(())
}

/// Outputs of an exec process: stdout, then stderr (if it has its own).
type Outputs = Vec<Box<dyn Read + Send>>;

/// The helper with pipes for its stdio.
fn spawn_piped(id: &str, req: &ExecRequest) -> Result<(Proc, Outputs), GuestError> {
    let mut child = command(id, req)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| gerr(format!("starting exec: {e}")))?;
    let outputs = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    let proc = Proc {
        pid: child.id() as i32,
        stdin: child
            .stdin
            .take()
            .map(|w| Box::new(w) as Box<dyn Write + Send>),
        pty: None,
    };
    // The init reaps it; `child` is never waited for here.
    Ok((proc, outputs))
}

/// The helper on a terminal of its own (`-t`): the slave of a pty the init
/// holds the master of is its stdio and controlling terminal, so the
/// native exec puts it in raw mode and follows its size (a resize from the
/// host is set on the master: the helper gets SIGWINCH and passes the size
/// on to the container's terminal).
fn spawn_tty(
    id: &str,
    req: &ExecRequest,
    rows: u16,
    cols: u16,
) -> Result<(Proc, Outputs), GuestError> {
    let (master, slave) = open_pty()?;
    set_winsize(&master, rows, cols);
    let io = |f: &OwnedFd| {
        f.try_clone()
            .map(Stdio::from)
            .map_err(|e| gerr(format!("exec terminal: {e}")))
    };
    let mut cmd = command(id, req);
    cmd.stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe and touch only
    // the child: a session of its own, with the slave (its stdin) as its
    // controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| gerr(format!("starting exec: {e}")))?;
    drop(slave);
    let master = File::from(master);
    let clone = |m: &File| {
        m.try_clone()
            .map_err(|e| gerr(format!("exec terminal: {e}")))
    };
    let proc = Proc {
        pid: child.id() as i32,
        stdin: Some(Box::new(clone(&master)?)),
        pty: Some(clone(&master)?),
    };
    Ok((proc, vec![Box::new(master)]))
}

/// A new pty in the init's own devpts: (master, slave).
fn open_pty() -> Result<(OwnedFd, OwnedFd), GuestError> {
    let _ = std::fs::create_dir_all("/dev/pts");
    // The init's /dev has no devpts of its own until the first `-t` exec
    // (EBUSY once it has).
    let _ = super::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0620,ptmxmode=0666",
    );
    let err = |what: &str, e: rustix::io::Errno| gerr(format!("exec terminal: {what}: {e}"));
    let master = crate::sys::term::new_pty_master().map_err(|(what, e)| err(what, e))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| err("ptsname", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| err("the slave", e))?;
    Ok((master, slave))
}

/// Sets a terminal's size (the kernel signals its foreground group).
fn set_winsize(m: &impl std::os::fd::AsFd, rows: u16, cols: u16) {
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(m, ws);
}

/// Copies one output of an exec process to the host until it ends.
fn relay(stream: u32, stderr: bool, mut r: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; crate::proto::channel::CHUNK];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                send(&if stderr {
                    Frame::ExecStderr { stream, data }
                } else {
                    Frame::ExecStdout { stream, data }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits until the init has reaped `pid`; its status.
fn wait(pid: i32) -> i32 {
    let mut exits = lock(&EXITS);
    loop {
        if let Some(st) = exits.remove(&pid) {
            return st;
        }
        exits = EXITED.wait(exits).unwrap_or_else(|p| p.into_inner());
    }
}
