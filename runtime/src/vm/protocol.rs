//! The host's side of the guest channel protocol, as an explicit state
//! machine. Everything the guest sends is hostile input: a frame that is
//! not legal in the current state, or that carries values out of range, is
//! a protocol violation, and the run ends (the VM is stopped; the run
//! fails as amphi's own error, `RunError::Protocol`).
//!
//! | state     | legal guest frames                          | next state |
//! |-----------|---------------------------------------------|------------|
//! | `Booting` | `Ready` (once)                              | `Running`  |
//! |           | `Log`                                       | `Booting`  |
//! |           | `Error` (the init failed before the start)  | `Finished` |
//! | `Running` | `Stdout`, `Stderr`, `Log`, `Started` (once) | `Running`  |
//! |           | `ExecStdout`, `ExecStderr`, then `ExecExit` (0-255) or `ExecError` (125-127), each for a stream the host opened and has not seen end | `Running` |
//! |           | `Exit` (0-255), `Error` (125-127)           | `Finished` |
//! | `Finished`| none                                        |            |
//!
//! Frames only the host sends (`Start`, `Stdin`, ...) are refused by the
//! decoder ([`crate::proto::channel::Decoder::from_guest`]) before they get here,
//! as are unknown kinds and lengths over each kind's limit.

use crate::proto::channel::{ExitStatus, Frame, GuestError, Ready};

/// Where the conversation with the guest is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The backend runs; the guest init has not said [`Frame::Ready`].
    Booting,
    /// The start request went out; the workload runs.
    Running,
    /// The guest reported the exit status or an error; nothing more is
    /// accepted.
    Finished,
}

/// What the host does with a legal frame.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The guest init is up: send the start request (once).
    Ready(Ready),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// A line for amphi's log (sanitised).
    Log(String),
    /// The workload runs.
    Started,
    /// An exec process's output (stream, stderr?, bytes).
    ExecOutput {
        stream: u32,
        stderr: bool,
        data: Vec<u8>,
    },
    /// An exec process ended (or could not start: `Err`).
    ExecEnded {
        stream: u32,
        result: Result<i32, GuestError>,
    },
    /// The workload ended.
    Exit(ExitStatus),
    /// The guest could not start the workload (message sanitised).
    Failed(GuestError),
}

/// The host's protocol state.
#[derive(Debug)]
pub struct Protocol {
    state: State,
    /// The started frame came.
    started: bool,
    /// The exec streams the host opened that have not ended.
    streams: std::collections::BTreeSet<u32>,
}

impl Default for Protocol {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps printable text: control characters (escape sequences meant for
/// the user's terminal) become `?`, except newline and tab.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\n' || c == '\t' || !c.is_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn valid_release(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-~".contains(&b))
}

impl Protocol {
    pub fn new() -> Self {
        Protocol {
            state: State::Booting,
            started: false,
            streams: Default::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the workload runs (its started frame came, no exit yet).
    pub fn started(&self) -> bool {
        self.started && self.state == State::Running
    }

    /// The host opened exec stream `stream` (sent its start).
    pub fn exec_opened(&mut self, stream: u32) {
        self.streams.insert(stream);
    }

    /// An exec frame's stream must be open.
    fn open_stream(&self, stream: u32, kind: &str) -> Result<(), String> {
        if self.streams.contains(&stream) {
            Ok(())
        } else {
            Err(format!(
                "a {kind} frame for exec stream {stream}, which is not open"
            ))
        }
    }

    /// Takes one frame from the guest; the error names the violation.
    pub fn on_frame(&mut self, f: Frame) -> Result<Event, String> {
        use State::*;
        let kind = frame_name(&f);
        let ev = match (self.state, f) {
            (Booting, Frame::Ready(r)) => {
                if !valid_release(&r.kernel) {
                    return Err(format!(
                        "the ready frame names kernel {:?}, not a kernel release",
                        sanitize(&r.kernel.chars().take(64).collect::<String>())
                    ));
                }
                if !r.uptime.is_finite() || r.uptime < 0.0 {
                    return Err(format!("the ready frame has uptime {}", r.uptime));
                }
                self.state = Running;
                Event::Ready(r)
            }
            (Running, Frame::Ready(_)) => {
                return Err(
                    "a second ready frame (the guest init is already running the workload)".into(),
                )
            }
            (Booting | Running, Frame::Log(l)) => Event::Log(sanitize(&l)),
            (Running, Frame::Started(_)) => {
                if std::mem::replace(&mut self.started, true) {
                    return Err("a second started frame".into());
                }
                Event::Started
            }
            (Running, Frame::ExecStdout { stream, data }) => {
                self.open_stream(stream, kind)?;
                Event::ExecOutput {
                    stream,
                    stderr: false,
                    data,
                }
            }
            (Running, Frame::ExecStderr { stream, data }) => {
                self.open_stream(stream, kind)?;
                Event::ExecOutput {
                    stream,
                    stderr: true,
                    data,
                }
            }
            (Running, Frame::ExecExit { stream, code }) => {
                self.open_stream(stream, kind)?;
                if !(0..=255).contains(&code) {
                    return Err(format!("the exec-exit frame has exit status {code}"));
                }
                self.streams.remove(&stream);
                Event::ExecEnded {
                    stream,
                    result: Ok(code),
                }
            }
            (Running, Frame::ExecError { stream, error }) => {
                self.open_stream(stream, kind)?;
                if !(125..=127).contains(&error.code) {
                    return Err(format!(
                        "the exec-error frame has exit status {}",
                        error.code
                    ));
                }
                self.streams.remove(&stream);
                Event::ExecEnded {
                    stream,
                    result: Err(GuestError {
                        code: error.code,
                        message: sanitize(&error.message),
                    }),
                }
            }
            (Running, Frame::Stdout(b)) => Event::Stdout(b),
            (Running, Frame::Stderr(b)) => Event::Stderr(b),
            (Running, Frame::Exit(e)) => {
                if !(0..=255).contains(&e.code) {
                    return Err(format!("the exit frame has exit status {}", e.code));
                }
                self.state = Finished;
                Event::Exit(e)
            }
            (Booting | Running, Frame::Error(e)) => {
                // The guest init's errors: amphi's own (125), cannot
                // invoke (126), not found (127).
                if !(125..=127).contains(&e.code) {
                    return Err(format!("the error frame has exit status {}", e.code));
                }
                self.state = Finished;
                Event::Failed(GuestError {
                    code: e.code,
                    message: sanitize(&e.message),
                })
            }
            (Finished, _) => return Err(format!("a {kind} frame after the exit status")),
            (Booting, _) => return Err(format!("a {kind} frame before the ready frame")),
            (Running, _) => return Err(format!("a {kind} frame, which only the host sends")),
        };
        Ok(ev)
    }
}

/// The frame's kind, for messages.
pub fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Start(_) => "start",
        Frame::Stdin(_) => "stdin",
        Frame::StdinEof => "stdin-eof",
        Frame::Signal(_) => "signal",
        Frame::Resize { .. } => "resize",
        Frame::Shutdown => "shutdown",
        Frame::Ready(_) => "ready",
        Frame::Stdout(_) => "stdout",
        Frame::Stderr(_) => "stderr",
        Frame::Exit(_) => "exit",
        Frame::Error(_) => "error",
        Frame::Log(_) => "log",
        Frame::Started(_) => "started",
        Frame::ExecStart { .. } => "exec-start",
        Frame::ExecStdin { .. } => "exec-stdin",
        Frame::ExecStdinEof(_) => "exec-stdin-eof",
        Frame::ExecSignal { .. } => "exec-signal",
        Frame::ExecResize { .. } => "exec-resize",
        Frame::ExecStdout { .. } => "exec-stdout",
        Frame::ExecStderr { .. } => "exec-stderr",
        Frame::ExecExit { .. } => "exec-exit",
        Frame::ExecError { .. } => "exec-error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Frame {
        Frame::Ready(Ready {
            kernel: "6.12.117".into(),
            uptime: 0.4,
        })
    }

    fn exit(code: i32) -> Frame {
        Frame::Exit(ExitStatus {
            code,
            oom_killed: false,
            peak_memory: None,
        })
    }

    #[test]
    fn the_honest_conversation_is_accepted() {
        let mut p = Protocol::new();
        assert!(matches!(
            p.on_frame(Frame::Log("hi".into())),
            Ok(Event::Log(_))
        ));
        assert!(matches!(p.on_frame(ready()), Ok(Event::Ready(_))));
        assert_eq!(p.state(), State::Running);
        assert_eq!(
            p.on_frame(Frame::Stdout(b"x".to_vec())),
            Ok(Event::Stdout(b"x".to_vec()))
        );
        assert!(matches!(p.on_frame(exit(3)), Ok(Event::Exit(e)) if e.code == 3));
        assert_eq!(p.state(), State::Finished);
    }

    #[test]
    fn a_second_ready_is_a_violation() {
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        let e = p.on_frame(ready()).unwrap_err();
        assert!(e.contains("second ready frame"), "{e}");
    }

    #[test]
    fn frames_out_of_order_are_violations() {
        for f in [Frame::Stdout(vec![1]), Frame::Stderr(vec![]), exit(0)] {
            let e = Protocol::new().on_frame(f).unwrap_err();
            assert!(e.contains("before the ready frame"), "{e}");
        }
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        p.on_frame(exit(0)).unwrap();
        for f in [
            Frame::Stdout(vec![1]),
            ready(),
            exit(0),
            Frame::Log("x".into()),
        ] {
            let e = p.on_frame(f).unwrap_err();
            assert!(e.contains("after the exit status"), "{e}");
        }
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        let e = p.on_frame(Frame::Shutdown).unwrap_err();
        assert!(e.contains("only the host sends"), "{e}");
    }

    #[test]
    fn values_out_of_range_are_violations() {
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        assert!(p.on_frame(exit(-1)).unwrap_err().contains("exit status -1"));
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        assert!(p.on_frame(exit(256)).is_err());
        let mut p = Protocol::new();
        let e = p
            .on_frame(Frame::Error(GuestError {
                code: 0,
                message: "fine".into(),
            }))
            .unwrap_err();
        assert!(e.contains("exit status 0"), "{e}");
        let e = Protocol::new()
            .on_frame(Frame::Error(GuestError {
                code: 3,
                message: "x".into(),
            }))
            .unwrap_err();
        assert!(e.contains("exit status 3"), "{e}");
        for kernel in ["", "6.1\x1b[2J", &"9".repeat(65), "a b"] {
            let e = Protocol::new()
                .on_frame(Frame::Ready(Ready {
                    kernel: kernel.into(),
                    uptime: 1.0,
                }))
                .unwrap_err();
            assert!(
                e.contains("not a kernel release") && !e.contains('\x1b'),
                "{e}"
            );
        }
        let e = Protocol::new()
            .on_frame(Frame::Ready(Ready {
                kernel: "6.1".into(),
                uptime: f64::NAN,
            }))
            .unwrap_err();
        assert!(e.contains("uptime"), "{e}");
    }

    /// Exec frames: only for streams the host opened and that have not
    /// ended, statuses in range; a second started frame is a violation.
    #[test]
    fn exec_streams_are_checked() {
        let mut p = Protocol::new();
        p.on_frame(ready()).unwrap();
        assert!(!p.started());
        assert_eq!(p.on_frame(Frame::Started(7)).unwrap(), Event::Started);
        assert!(p.started());
        assert!(p
            .on_frame(Frame::Started(7))
            .unwrap_err()
            .contains("second started"));
        let out = |stream| Frame::ExecStdout {
            stream,
            data: b"x".to_vec(),
        };
        assert!(p.on_frame(out(1)).unwrap_err().contains("not open"));
        p.exec_opened(1);
        assert!(matches!(
            p.on_frame(out(1)).unwrap(),
            Event::ExecOutput { stream: 1, .. }
        ));
        assert!(p.on_frame(out(2)).unwrap_err().contains("not open"));
        assert!(p
            .on_frame(Frame::ExecExit {
                stream: 1,
                code: 256
            })
            .unwrap_err()
            .contains("exit status 256"));
        assert_eq!(
            p.on_frame(Frame::ExecExit { stream: 1, code: 3 }).unwrap(),
            Event::ExecEnded {
                stream: 1,
                result: Ok(3)
            }
        );
        // Ended: nothing more for it.
        assert!(p.on_frame(out(1)).unwrap_err().contains("not open"));
        p.exec_opened(2);
        let bad = Frame::ExecError {
            stream: 2,
            error: GuestError {
                code: 1,
                message: String::new(),
            },
        };
        assert!(p.on_frame(bad).unwrap_err().contains("exit status 1"));
    }

    #[test]
    fn guest_text_loses_terminal_escapes() {
        let mut p = Protocol::new();
        let ev = p
            .on_frame(Frame::Error(GuestError {
                code: 127,
                message: "no\x1b]0;pwned\x07 such\tfile\nx".into(),
            }))
            .unwrap();
        assert_eq!(
            ev,
            Event::Failed(GuestError {
                code: 127,
                message: "no?]0;pwned? such\tfile\nx".into()
            })
        );
    }
}
