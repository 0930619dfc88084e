//! The conversation with a booting and running guest: wait for the backend
//! to connect the guest channel, send the start request on the one legal
//! ready frame, relay stdio, signals and window size, and receive the exit.
//!
//! It follows [`Protocol`]: the start request goes out once, on the ready
//! frame; raw mode and the stdin relay start then, once. `--timeout` (from
//! the VM's start) is an absolute deadline nothing the guest sends moves;
//! the boot watchdog holds until the ready frame.

use super::launch::Cleanup;
use super::protocol::{self, Event, Protocol};
use super::{env_duration, Timing, BOOT_TIMEOUT, SHUTDOWN_GRACE};
use crate::guestfs::RootfsKind;
use crate::proto::channel::{self, Decoder, Frame, StartRequestJson};
use crate::run::{Failure, RunError};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The third SIGINT/SIGTERM/SIGHUP/SIGQUIT during the workload stops the
/// VM (the ones before are forwarded to the workload).
const ENDING_SIGNALS: u32 = 3;
/// How long a workload may run on after a virtiofsd serving it died (its
/// file operations on that share failing) before the VM is stopped;
/// `$AMPHI_VM_SHARE_GRACE` sets it.
const SHARE_GRACE: Duration = Duration::from_secs(10);
/// How long a write to the guest channel may block (a guest that stops
/// reading its channel breaks the protocol: the honest init always reads).
const CHANNEL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the session needs from the run.
pub(super) struct Session<'a> {
    pub cleanup: &'a mut Cleanup,
    pub start: &'a StartRequestJson,
    /// Relay stdin (`-i`, or `-t`).
    pub interactive: bool,
    pub tty: bool,
    /// `--timeout`: the absolute deadline and the limit it came from.
    pub deadline: Option<(Instant, Duration)>,
    /// Set by the `--timeout` watchdog when it fired.
    pub fired: Option<&'a AtomicBool>,
    pub sigs: &'a crate::sys::signal::Signals,
    pub timing: &'a mut Timing,
    pub kernel_release: &'a str,
    pub kind: RootfsKind,
    /// Whether the backend fails a dead virtiofsd's requests (EIO) rather
    /// than leaving them waiting.
    pub shares_fail_requests: bool,
    /// Told the backend's pid once the workload runs in the guest.
    pub started: Option<std::sync::mpsc::Sender<u32>>,
    /// Where `amphi exec` connects (non-blocking), for a detached run.
    pub exec: Option<UnixListener>,
    /// Where notices for the user go (the CLI's stderr).
    pub notify: fn(&str),
    /// An OCI `create`: the workload waits for `start` (see [`Hold`]).
    pub hold: Option<Hold>,
}

/// The start held back until the OCI `start`: the guest boots and
/// reports ready, then waits; the start request goes out when `go`
/// becomes readable.
pub struct Hold {
    /// Told once the guest is up and waiting.
    pub booted: Option<std::sync::mpsc::Sender<()>>,
    /// Becomes readable when `start` came.
    pub go: std::os::fd::OwnedFd,
    /// Told how the start went: once the workload runs, or its error.
    pub answer: Option<std::sync::mpsc::Sender<Result<(), String>>>,
    /// The guest is up and the start not yet sent.
    pub waiting: bool,
}

/// The connected guest channel and the protocol's state.
struct Channel {
    writer: Arc<Mutex<UnixStream>>,
    reader: UnixStream,
    dec: Decoder,
    proto: Protocol,
    buf: Vec<u8>,
    raw: Option<crate::sys::term::RawMode>,
    end_requests: u32,
    /// A virtiofsd that died while the workload ran, when the grace it
    /// left the workload ends, and that grace.
    lost: Option<(super::virtiofs::Gone, Instant, Duration)>,
    /// `amphi exec` clients, by their stream in the guest.
    execs: std::collections::BTreeMap<u32, ExecClient>,
    next_stream: u32,
}

/// An `amphi exec` connected to the monitor: it speaks the exec frames
/// (stream 0) that the monitor relays to and from its guest stream.
struct ExecClient {
    conn: UnixStream,
    dec: Decoder,
    /// Its start went to the guest.
    opened: bool,
}

/// Writes a frame to a non-blocking exec client; false when it cannot
/// take it (gone, or not reading for 5 s).
fn write_client(conn: &mut UnixStream, f: &Frame) -> bool {
    let bytes = f.encode();
    let mut off = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while off < bytes.len() {
        match conn.write(&bytes[off..]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return false,
        }
    }
    true
}

impl Channel {
    /// Sends a frame; a guest that does not take it broke the protocol.
    fn send(&self, f: &Frame, what: &str) -> Result<(), RunError> {
        send(&self.writer, f).map_err(|e| {
            violation(&format!(
                "the guest does not take the {what} frame from its channel ({e})"
            ))
        })
    }
}

/// Writes a frame under the shared writer lock.
fn send(w: &Mutex<UnixStream>, f: &Frame) -> std::io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    f.write_to(&mut *s)
}

fn winsize() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

fn violation(v: &str) -> RunError {
    RunError::Protocol(v.trim_start_matches("guest channel: ").to_string())
}

impl Session<'_> {
    /// Boots, starts and relays; returns the workload's exit status.
    pub fn run(mut self, listener: &UnixListener) -> Result<i32, RunError> {
        let boot_start = Instant::now();
        let boot_deadline = boot_start + env_duration("AMPHI_VM_BOOT_TIMEOUT", BOOT_TIMEOUT);
        let mut ch = self.connect(listener, boot_deadline)?;
        loop {
            if self.expired() {
                return Err(self.timeout_err());
            }
            // Frames that arrived, each checked against the protocol.
            if let Some(code) = self.drain_frames(&mut ch, boot_start)? {
                return Ok(code);
            }
            if self.expired() {
                return Err(self.timeout_err());
            }
            let booting = ch.proto.state() == protocol::State::Booting;
            // Booted but held for the OCI `start`: signals end the VM, as
            // while booting (the workload does not run yet).
            let held = self.hold.as_ref().is_some_and(|h| h.waiting);
            self.check_shares(&mut ch, booting)?;
            if booting && Instant::now() >= boot_deadline {
                return Err(RunError::Vm(format!(
                    "the guest did not come up within {} s (boot watchdog; $AMPHI_VM_BOOT_TIMEOUT sets it)",
                    (boot_deadline - boot_start).as_secs()
                )));
            }
            let (channel_ready, signals, go) = self.poll(&ch, booting.then_some(boot_deadline));
            if signals {
                self.on_signals(&mut ch, booting || held)?;
            }
            if go && held {
                if let Some(h) = self.hold.as_mut() {
                    let mut b = [0u8; 16];
                    let _ = rustix::io::read(&h.go, &mut b);
                    h.waiting = false;
                }
                self.begin(&mut ch)?;
            }
            self.service_execs(&mut ch)?;
            if channel_ready {
                self.on_readable(&mut ch, booting)
                    .map_err(|e| share_lost(&ch).unwrap_or(e))?;
                continue;
            }
            // A virtiofsd's end first: the VM may end because of it.
            self.check_shares(&mut ch, booting)?;
            if let Some(e) = self.died("ended unexpectedly") {
                if self.expired() {
                    return Err(self.timeout_err());
                }
                return Err(share_lost(&ch).unwrap_or(e));
            }
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|(d, _)| Instant::now() >= d)
            || self.fired.is_some_and(|f| f.load(Ordering::SeqCst))
    }

    fn timeout_err(&self) -> RunError {
        RunError::TimedOut(self.deadline.map(|d| d.1).unwrap_or_default())
    }

    /// The backend's end, if it has ended: an error saying `what`.
    fn died(&mut self, what: &str) -> Option<RunError> {
        let st = self.cleanup.child.as_mut()?.try_wait().ok()??;
        self.cleanup.ended(st);
        Some(RunError::Vm(format!(
            "the microVM ({} kernel {}) {what} ({st})",
            self.kind, self.kernel_release
        )))
    }

    /// Accepts `amphi exec` clients and relays what they send: the start
    /// (once the workload runs; refused before), stdin, signals. A client
    /// that goes away has its process killed.
    fn service_execs(&mut self, ch: &mut Channel) -> Result<(), RunError> {
        let Some(l) = &self.exec else {
            return Ok(());
        };
        while let Ok((conn, _)) = l.accept() {
            if conn.set_nonblocking(true).is_ok() {
                ch.next_stream += 1;
                let c = ExecClient {
                    conn,
                    dec: Decoder::new(),
                    opened: false,
                };
                ch.execs.insert(ch.next_stream, c);
            }
        }
        let mut frames = Vec::new();
        let mut gone = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        for (&stream, c) in ch.execs.iter_mut() {
            loop {
                match c.conn.read(&mut buf) {
                    Ok(0) => {
                        gone.push(stream);
                        break;
                    }
                    Ok(n) => c.dec.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone.push(stream);
                        break;
                    }
                }
            }
            loop {
                match c.dec.next_frame() {
                    Ok(Some(f)) => frames.push((stream, f)),
                    Ok(None) => break,
                    Err(_) => {
                        gone.push(stream);
                        break;
                    }
                }
            }
        }
        for (stream, f) in frames {
            let opened = ch.execs.get(&stream).is_some_and(|c| c.opened);
            let to_guest = match f {
                Frame::ExecStart { req, .. } if !opened => {
                    if !ch.proto.started() {
                        let error = crate::proto::channel::GuestError {
                            code: crate::run::EXIT_AMPHI,
                            message: "the container's workload is not running".into(),
                        };
                        self.to_client(ch, stream, &Frame::ExecError { stream: 0, error }, true);
                        continue;
                    }
                    ch.proto.exec_opened(stream);
                    if let Some(c) = ch.execs.get_mut(&stream) {
                        c.opened = true;
                    }
                    Frame::ExecStart { stream, req }
                }
                Frame::ExecStdin { data, .. } if opened => Frame::ExecStdin { stream, data },
                Frame::ExecStdinEof(_) if opened => Frame::ExecStdinEof(stream),
                Frame::ExecSignal { signal, .. } if opened => Frame::ExecSignal { stream, signal },
                Frame::ExecResize { rows, cols, .. } if opened => {
                    Frame::ExecResize { stream, rows, cols }
                }
                _ => {
                    gone.push(stream);
                    continue;
                }
            };
            ch.send(&to_guest, "exec")?;
        }
        for stream in gone {
            if ch.execs.remove(&stream).is_some_and(|c| c.opened) {
                let kill = Frame::ExecSignal {
                    stream,
                    signal: libc::SIGKILL,
                };
                ch.send(&kill, "exec-signal")?;
            }
        }
        Ok(())
    }

    /// Sends `f` to the exec client of `stream` (if it is still there);
    /// `last` ends the client. One that cannot take it is dropped, and
    /// its process killed.
    fn to_client(&self, ch: &mut Channel, stream: u32, f: &Frame, last: bool) {
        let Some(c) = ch.execs.get_mut(&stream) else {
            return;
        };
        if write_client(&mut c.conn, f) && !last {
            return;
        }
        let opened = ch.execs.remove(&stream).is_some_and(|c| c.opened);
        if opened && !last {
            let _ = ch.send(
                &Frame::ExecSignal {
                    stream,
                    signal: libc::SIGKILL,
                },
                "exec-signal",
            );
        }
    }

    /// A virtiofsd that died. amphi's VMM from then on answers the
    /// share's requests with EIO, and so does the vhost-user relay in
    /// front of QEMU once it took the rings over (QEMU alone would leave
    /// them waiting forever, and the guest kernel cannot abort a
    /// virtio-fs connection: no fusectl entry, no forced unmount). A
    /// running workload then sees its file operations fail: the user is
    /// told, and the workload has [`SHARE_GRACE`] to end by itself.
    /// Before the workload runs, or when the relay could not take over,
    /// the VM is stopped at once. The run ends with an error either way.
    fn check_shares(&mut self, ch: &mut Channel, booting: bool) -> Result<(), RunError> {
        while let Some(g) = self.cleanup.daemon_gone() {
            if booting || !(self.shares_fail_requests || g.failing) {
                self.cleanup.stop_backend(Duration::ZERO);
                return Err(RunError::Vm(format!(
                    "{}; the microVM was stopped{}",
                    g.what, g.said
                )));
            }
            let grace = env_duration("AMPHI_VM_SHARE_GRACE", SHARE_GRACE);
            (self.notify)(&format!(
                "amphi: warning: {}: the workload's file operations on it fail with EIO from now on; the microVM stops in {} s unless the workload ends first",
                g.what,
                grace.as_secs()
            ));
            if ch.lost.is_none() {
                ch.lost = Some((g, Instant::now() + grace, grace));
            }
        }
        if let Some((g, until, grace)) = &ch.lost {
            if Instant::now() >= *until {
                drop(ch.raw.take());
                self.cleanup.stop_backend(Duration::ZERO);
                return Err(RunError::Vm(format!(
                    "{}; the workload did not end within {} s of its file operations failing: the microVM was stopped{}",
                    g.what,
                    grace.as_secs(),
                    g.said
                )));
            }
        }
        Ok(())
    }

    /// 1. The backend connects to the channel.
    fn connect(
        &mut self,
        listener: &UnixListener,
        boot_deadline: Instant,
    ) -> Result<Channel, RunError> {
        let stream = loop {
            if self.expired() {
                return Err(self.timeout_err());
            }
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(RunError::io("guest channel", e)),
            }
            if let Some(g) = self.cleanup.daemon_gone() {
                self.cleanup.stop_backend(Duration::ZERO);
                return Err(RunError::Vm(format!(
                    "{}; the microVM was stopped{}",
                    g.what, g.said
                )));
            }
            if let Some(e) = self.died("ended before it connected the guest channel") {
                return Err(e);
            }
            if Instant::now() >= boot_deadline {
                return Err(RunError::Vm(
                    "the microVM did not connect the guest channel in time".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(CHANNEL_WRITE_TIMEOUT)))
            .map_err(|e| RunError::io("guest channel", e))?;
        let writer = Arc::new(Mutex::new(
            stream
                .try_clone()
                .map_err(|e| RunError::io("guest channel", e))?,
        ));
        Ok(Channel {
            writer,
            reader: stream,
            dec: Decoder::from_guest(),
            proto: Protocol::new(),
            buf: vec![0u8; 64 * 1024],
            raw: None,
            end_requests: 0,
            lost: None,
            execs: Default::default(),
            next_stream: 0,
        })
    }

    /// Handles the frames decoded so far; the workload's exit status once
    /// it has exited.
    fn drain_frames(
        &mut self,
        ch: &mut Channel,
        boot_start: Instant,
    ) -> Result<Option<i32>, RunError> {
        loop {
            let f = match ch.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(violation(&e)),
            };
            match ch.proto.on_frame(f).map_err(|v| violation(&v))? {
                Event::Ready(r) => {
                    self.timing.boot = boot_start.elapsed();
                    tracing::info!(kernel = %r.kernel, uptime = r.uptime, "guest init ready");
                    self.timing.guest_kernel = r.kernel.clone();
                    match self.hold.as_mut() {
                        Some(h) => {
                            h.waiting = true;
                            if let Some(tx) = h.booted.take() {
                                let _ = tx.send(());
                            }
                        }
                        None => self.begin(ch)?,
                    }
                }
                Event::Stdout(b) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Event::Stderr(b) => {
                    let mut err = std::io::stderr();
                    let _ = err.write_all(&b);
                    let _ = err.flush();
                }
                Event::Log(l) => tracing::info!(guest = %l),
                Event::ExecOutput {
                    stream,
                    stderr,
                    data,
                } => {
                    let f = if stderr {
                        Frame::ExecStderr { stream: 0, data }
                    } else {
                        Frame::ExecStdout { stream: 0, data }
                    };
                    self.to_client(ch, stream, &f, false);
                }
                Event::ExecEnded { stream, result } => {
                    let f = match result {
                        Ok(code) => Frame::ExecExit { stream: 0, code },
                        Err(error) => Frame::ExecError { stream: 0, error },
                    };
                    self.to_client(ch, stream, &f, true);
                }
                Event::Started => {
                    if let (Some(tx), Some(child)) = (self.started.take(), &self.cleanup.child) {
                        let _ = tx.send(child.id());
                    }
                    if let Some(tx) = self.hold.as_mut().and_then(|h| h.answer.take()) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Event::Exit(e) => {
                    self.timing.workload = boot_start.elapsed() - self.timing.boot;
                    self.timing.peak_memory = e.peak_memory;
                    self.timing.oom_killed = e.oom_killed;
                    drop(ch.raw.take());
                    let t = Instant::now();
                    let _ = send(&ch.writer, &Frame::Shutdown);
                    let grace = match self.deadline {
                        Some((d, _)) => d.saturating_duration_since(Instant::now()),
                        None => SHUTDOWN_GRACE,
                    };
                    self.cleanup.stop_backend(grace.min(SHUTDOWN_GRACE));
                    self.timing.teardown = t.elapsed();
                    if e.oom_killed {
                        // The one wording of the notice (native runs too).
                        (self.notify)(&crate::sys::exit::oom_notice("the workload in the microVM"));
                    }
                    if let Some((g, ..)) = ch.lost.take() {
                        return Err(RunError::Vm(format!(
                            "{}; the workload's file operations on it failed from then on, and it exited with status {}{}",
                            g.what, e.code, g.said
                        )));
                    }
                    return Ok(Some(e.code));
                }
                Event::Failed(e) => {
                    if let Some(tx) = self.hold.as_mut().and_then(|h| h.answer.take()) {
                        let _ = tx.send(Err(e.message.clone()));
                    }
                    drop(ch.raw.take());
                    let _ = send(&ch.writer, &Frame::Shutdown);
                    self.cleanup.stop_backend(Duration::from_secs(3));
                    // The guest's init could not start the workload: its
                    // status says why (protocol-checked: 125..=127).
                    let failure = match e.code {
                        crate::run::EXIT_NOT_FOUND => Failure::NotFound,
                        crate::run::EXIT_CANNOT_INVOKE => Failure::CannotInvoke,
                        _ => Failure::Amphi,
                    };
                    return Err(RunError::Reported {
                        failure,
                        message: e.message,
                    });
                }
            }
        }
    }

    /// Sends the start request, and with it begins the terminal's raw
    /// mode and the stdin relay.
    fn begin(&mut self, ch: &mut Channel) -> Result<(), RunError> {
        ch.send(&Frame::Start(Box::new(self.start.with_time())), "start")?;
        if self.tty {
            ch.raw = Some(crate::sys::term::RawMode::enter());
            if let Some((rows, cols)) = winsize() {
                ch.send(&Frame::Resize { rows, cols }, "resize")?;
            }
        }
        if self.interactive {
            forward_stdin(ch.writer.clone());
        }
        Ok(())
    }

    /// Waits (at most a second, and never past a deadline) for the channel,
    /// a signal or the held start's go: (channel readable or closed,
    /// signals pending, go).
    fn poll(&self, ch: &Channel, boot_deadline: Option<Instant>) -> (bool, bool, bool) {
        let now = Instant::now();
        let mut wait = Duration::from_secs(1);
        if let Some(b) = boot_deadline {
            wait = wait.min(b.saturating_duration_since(now));
        }
        if let Some((d, _)) = self.deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(1));
        let mut set = crate::sys::poll::PollSet::new();
        let channel = set.add(ch.reader.as_raw_fd());
        let signals = set.add(self.sigs.raw_fd());
        if let Some(l) = &self.exec {
            set.add(l.as_raw_fd());
        }
        for c in ch.execs.values() {
            set.add(c.conn.as_raw_fd());
        }
        let go = self
            .hold
            .as_ref()
            .filter(|h| h.waiting)
            .map(|h| set.add(h.go.as_raw_fd()));
        if !set.wait(Some(wait)) {
            return (false, false, false);
        }
        (
            set.readable(channel),
            set.has_input(signals),
            go.is_some_and(|g| set.readable(g)),
        )
    }

    /// Forwards the signals amphi received: window size changes, and the
    /// workload's signals once it runs. Before that, a ^C ends the run; and
    /// a workload (or guest) that ignores the signals to end cannot hold
    /// amphi: the third request stops the VM.
    fn on_signals(&mut self, ch: &mut Channel, booting: bool) -> Result<(), RunError> {
        for s in self.sigs.drain() {
            match s {
                libc::SIGCHLD => {}
                libc::SIGWINCH => {
                    if let Some((rows, cols)) = winsize() {
                        if !booting {
                            ch.send(&Frame::Resize { rows, cols }, "resize")?;
                        }
                    }
                }
                s if !booting => {
                    if [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT].contains(&s) {
                        ch.end_requests += 1;
                        if ch.end_requests >= ENDING_SIGNALS {
                            return Err(RunError::Signalled {
                                signal: s,
                                message: format!(
                                    "the workload did not end after {ENDING_SIGNALS} signals (the last: {s}); the microVM was stopped"
                                ),
                            });
                        }
                    }
                    ch.send(&Frame::Signal(s), "signal")?;
                }
                s => {
                    return Err(RunError::Signalled {
                        signal: s,
                        message: format!("interrupted by signal {s} while the microVM booted"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads what the guest sent into the decoder; the channel's end is
    /// the VM's.
    fn on_readable(&mut self, ch: &mut Channel, booting: bool) -> Result<(), RunError> {
        match ch.reader.read(&mut ch.buf) {
            Ok(0) | Err(_) => {
                drop(ch.raw.take());
                let st = self.cleanup.stop_backend(Duration::from_secs(2));
                if self.expired() {
                    return Err(self.timeout_err());
                }
                let what = if booting {
                    "stopped before the guest init reported"
                } else {
                    "stopped before the workload finished"
                };
                Err(RunError::Vm(format!(
                    "the microVM (kernel {}) {what}{}",
                    self.kernel_release,
                    st.map(|s| format!(" ({s})")).unwrap_or_default()
                )))
            }
            Ok(n) => {
                ch.dec.push(&ch.buf[..n]);
                Ok(())
            }
        }
    }
}

/// The error for a run whose VM ended after a virtiofsd serving it died:
/// the daemon's end is the cause to name.
fn share_lost(ch: &Channel) -> Option<RunError> {
    let (g, ..) = ch.lost.as_ref()?;
    Some(RunError::Vm(format!(
        "{}; then the microVM ended{}",
        g.what, g.said
    )))
}

/// Copies our stdin to the guest in its own thread; EOF becomes
/// [`Frame::StdinEof`].
fn forward_stdin(writer: Arc<Mutex<UnixStream>>) {
    std::thread::spawn(move || {
        crate::sys::io::each_stdin_chunk(channel::CHUNK, |data| {
            let f = match data {
                Some(b) => Frame::Stdin(b.to_vec()),
                None => Frame::StdinEof,
            };
            send(&writer, &f).is_ok()
        })
    });
}
