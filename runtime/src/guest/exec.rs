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
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
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
static EXITS: Mutex<Option<HashMap<i32, i32>>> = Mutex::new(None);
static EXITED: Condvar = Condvar::new();
/// Each running exec process by stream: its helper's pid and stdin.
type Running = HashMap<u32, (i32, Option<std::process::ChildStdin>)>;
static STDINS: Mutex<Option<Running>> = Mutex::new(None);

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
    lock(&EXITS)
        .get_or_insert_with(HashMap::new)
        .insert(pid, status);
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
            let mut stdins = lock(&STDINS);
            if let Some((_, Some(w))) = stdins.get_or_insert_with(HashMap::new).get_mut(&stream) {
                let _ = w.write_all(&data);
            }
        }
        Frame::ExecStdinEof(stream) => {
            if let Some((_, w)) = lock(&STDINS)
                .get_or_insert_with(HashMap::new)
                .get_mut(&stream)
            {
                drop(w.take());
            }
        }
        Frame::ExecSignal { stream, signal } => {
            if let Some((pid, _)) = lock(&STDINS).get_or_insert_with(HashMap::new).get(&stream) {
                // SAFETY: signalling our own exec helper, which forwards
                // the signal to its process.
                unsafe { libc::kill(*pid, signal) };
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
    let mut child = command(&ctx.id, req)
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| gerr(format!("starting exec: {e}")))?;
    let pid = child.id() as i32;
    lock(&STDINS)
        .get_or_insert_with(HashMap::new)
        .insert(stream, (pid, child.stdin.take()));
    let readers: Vec<_> = [
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
    .enumerate()
    .filter_map(|(i, r)| r.map(|r| (i == 1, r)))
    .map(|(stderr, r)| std::thread::spawn(move || relay(stream, stderr, r)))
    .collect();
    // The init reaps it; `child` is never waited for here.
    drop(child);
    std::thread::spawn(move || {
        let code = wait(pid);
        for r in readers {
            let _ = r.join();
        }
        lock(&STDINS)
            .get_or_insert_with(HashMap::new)
            .remove(&stream);
        send(&Frame::ExecExit {
            stream,
            code: code.clamp(0, 255),
        });
    });
    Ok(())
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
        if let Some(st) = exits.get_or_insert_with(HashMap::new).remove(&pid) {
            return st;
        }
        exits = EXITED.wait(exits).unwrap_or_else(|p| p.into_inner());
    }
}
