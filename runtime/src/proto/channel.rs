//! The guest channel: one virtio-console port carrying length-prefixed
//! frames between amphi on the host and the guest init (PID 1 in the VM).
//!
//! A frame is a 1-byte kind, a 4-byte little-endian payload length, and the
//! payload. The same framing runs over amphi's VMM and over QEMU, whose
//! virtio-console ends in a unix socket on the host and in `/dev/hvc0`
//! (a tty in raw mode) in the guest.
//!
//! Host to guest: [`Frame::Start`], then any of [`Frame::Stdin`],
//! [`Frame::StdinEof`], [`Frame::Signal`], [`Frame::Resize`], and
//! [`Frame::Shutdown`] once the host has the exit status.
//! Guest to host: [`Frame::Ready`] once the guest init is up,
//! [`Frame::Started`] once the workload runs, then [`Frame::Stdout`], [`Frame::Stderr`], [`Frame::Log`], and finally
//! [`Frame::Exit`] or [`Frame::Error`].
//!
//! The host does not trust the guest: it decodes with
//! [`Decoder::from_guest`] (guest kinds only, each within its
//! [`guest_payload_limit`], refused from the header) and checks the order
//! and values with the state machine in [`crate::vm::protocol`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// The largest payload either side sends or accepts. Output is chunked
/// well below it; a start frame (spec + files) fits easily.
pub const MAX_PAYLOAD: usize = 4 << 20;
/// How much output one data frame carries at most.
pub const CHUNK: usize = 32 * 1024;

const K_START: u8 = 1;
const K_STDIN: u8 = 2;
const K_STDIN_EOF: u8 = 3;
const K_SIGNAL: u8 = 4;
const K_RESIZE: u8 = 5;
const K_SHUTDOWN: u8 = 6;
const K_EXEC_START: u8 = 8;
const K_EXEC_STDIN: u8 = 9;
const K_EXEC_STDIN_EOF: u8 = 10;
const K_EXEC_SIGNAL: u8 = 11;
const K_EXEC_RESIZE: u8 = 12;
const K_READY: u8 = 16;
const K_STDOUT: u8 = 17;
const K_STDERR: u8 = 18;
const K_EXIT: u8 = 19;
const K_ERROR: u8 = 20;
const K_LOG: u8 = 21;
const K_STARTED: u8 = 22;
const K_EXEC_STDOUT: u8 = 23;
const K_EXEC_STDERR: u8 = 24;
const K_EXEC_EXIT: u8 = 25;
const K_EXEC_ERROR: u8 = 26;

/// A process to run beside the workload (`amphi exec` into a microVM
/// container): the guest runs it in the workload's namespaces and cgroup,
/// with its user, capabilities and seccomp, as a native exec does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// `-e NAME=VALUE`, over the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// `-w DIR`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `-u USER[:GROUP]`, resolved in the container.
    #[serde(default)]
    pub user: Option<String>,
    /// Forward stdin (`-i`); without it the process's stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// A terminal (`-t`) of this size (rows, columns): output comes back
    /// on stdout alone.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
}

/// What the guest needs to run the workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartRequest {
    /// Container id (the host's).
    pub id: String,
    /// The OCI runtime spec, built on the host by the same code as a
    /// native run, with guest paths.
    pub spec: serde_json::Value,
    /// docker-style user name to resolve in the image (`-u NAME`).
    pub user_lookup: Option<String>,
    /// Files to write in the guest before the start (absolute guest path →
    /// content): the generated /etc/hosts, hostname, resolv.conf.
    pub files: BTreeMap<String, String>,
    /// Whether host stdin is forwarded (`-i`); without it the workload's
    /// stdin is /dev/null.
    pub stdin: bool,
    /// The host's wall clock (seconds and nanoseconds since the epoch) when
    /// the request was sent: the guest sets its clock from it (amphi's VMM
    /// has no RTC).
    #[serde(default)]
    pub host_time: Option<(i64, u32)>,
    /// A console-only pty for the workload (systemd mode without `-t`:
    /// see `LaunchOptions::console_pty`); what is written on its
    /// /dev/console comes back as [`Frame::Stdout`]. Absent (an older
    /// host) means no.
    #[serde(default)]
    pub console: bool,
    /// virtio-fs shares the guest mounts before the start (the volumes:
    /// the spec's bind mounts name paths below their targets).
    #[serde(default)]
    pub shares: Vec<GuestShare>,
    /// The guest's `eth0` (a private network through passt); None: no NIC.
    #[serde(default)]
    pub net: Option<GuestNet>,
}

/// What a microVM's guest configures on `eth0`: the host's own IPv4
/// address, prefix and gateway, which passt expects (it NATs the guest's
/// traffic to host sockets), and an MTU of 1500 (the virtio-net devices'
/// receive buffers without mergeable buffers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    pub mtu: u32,
}

/// A virtio-fs share for the guest to mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestShare {
    /// The device's tag.
    pub tag: String,
    /// Where it goes (below `/.amphi/`).
    pub target: String,
}

/// The guest init is up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// Seconds since the guest kernel started (from /proc/uptime).
    pub uptime: f64,
}

/// How the workload ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitStatus {
    /// The exit code, or 128+signal.
    pub code: i32,
    /// The container's cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// The container cgroup's peak memory use, in bytes.
    #[serde(default)]
    pub peak_memory: Option<u64>,
}

/// A failure before or while starting the workload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestError {
    /// The exit status the CLI should use (125, 126, 127).
    pub code: i32,
    pub message: String,
}

/// One frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Start(Box<StartRequestJson>),
    Stdin(Vec<u8>),
    StdinEof,
    Signal(i32),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The host has the exit status: the guest may power off.
    Shutdown,
    Ready(Ready),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
    Error(GuestError),
    Log(String),
    /// The workload runs (its pid in the guest).
    Started(u32),
    /// Start an exec process as stream `stream` (≥ 1; the workload is 0).
    ExecStart {
        stream: u32,
        req: ExecRequest,
    },
    ExecStdin {
        stream: u32,
        data: Vec<u8>,
    },
    ExecStdinEof(u32),
    ExecSignal {
        stream: u32,
        signal: i32,
    },
    /// The exec terminal's new size.
    ExecResize {
        stream: u32,
        rows: u16,
        cols: u16,
    },
    ExecStdout {
        stream: u32,
        data: Vec<u8>,
    },
    ExecStderr {
        stream: u32,
        data: Vec<u8>,
    },
    /// The exec process ended with this status.
    ExecExit {
        stream: u32,
        code: i32,
    },
    /// The exec process could not be started.
    ExecError {
        stream: u32,
        error: GuestError,
    },
}

/// `stream` then `rest`, the payload of an exec frame.
fn with_stream(stream: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = stream.to_le_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

/// A start request kept as JSON text (so frames stay comparable).
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequestJson(pub String);

impl StartRequestJson {
    pub fn new(r: &StartRequest) -> Self {
        StartRequestJson(serde_json::to_string(r).unwrap_or_default())
    }
    /// The same request with `host_time` set to now.
    pub fn with_time(&self) -> Self {
        match self.parse() {
            Ok(mut r) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                r.host_time = Some((now.as_secs() as i64, now.subsec_nanos()));
                Self::new(&r)
            }
            Err(_) => self.clone(),
        }
    }

    pub fn parse(&self) -> Result<StartRequest, String> {
        serde_json::from_str(&self.0).map_err(|e| format!("malformed start request: {e}"))
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Frame {
    fn kind_and_payload(&self) -> (u8, Vec<u8>) {
        match self {
            Frame::Start(s) => (K_START, s.0.as_bytes().to_vec()),
            Frame::Stdin(b) => (K_STDIN, b.clone()),
            Frame::StdinEof => (K_STDIN_EOF, vec![]),
            Frame::Signal(s) => (K_SIGNAL, s.to_le_bytes().to_vec()),
            Frame::Resize { rows, cols } => {
                let mut v = rows.to_le_bytes().to_vec();
                v.extend_from_slice(&cols.to_le_bytes());
                (K_RESIZE, v)
            }
            Frame::Shutdown => (K_SHUTDOWN, vec![]),
            Frame::Ready(r) => (K_READY, json(r)),
            Frame::Stdout(b) => (K_STDOUT, b.clone()),
            Frame::Stderr(b) => (K_STDERR, b.clone()),
            Frame::Exit(e) => (K_EXIT, json(e)),
            Frame::Error(e) => (K_ERROR, json(e)),
            Frame::Log(s) => (K_LOG, s.as_bytes().to_vec()),
            Frame::Started(pid) => (K_STARTED, pid.to_le_bytes().to_vec()),
            Frame::ExecStart { stream, req } => (K_EXEC_START, with_stream(*stream, &json(req))),
            Frame::ExecStdin { stream, data } => (K_EXEC_STDIN, with_stream(*stream, data)),
            Frame::ExecStdinEof(stream) => (K_EXEC_STDIN_EOF, with_stream(*stream, &[])),
            Frame::ExecSignal { stream, signal } => {
                (K_EXEC_SIGNAL, with_stream(*stream, &signal.to_le_bytes()))
            }
            Frame::ExecResize { stream, rows, cols } => {
                let mut v = rows.to_le_bytes().to_vec();
                v.extend_from_slice(&cols.to_le_bytes());
                (K_EXEC_RESIZE, with_stream(*stream, &v))
            }
            Frame::ExecStdout { stream, data } => (K_EXEC_STDOUT, with_stream(*stream, data)),
            Frame::ExecStderr { stream, data } => (K_EXEC_STDERR, with_stream(*stream, data)),
            Frame::ExecExit { stream, code } => {
                (K_EXEC_EXIT, with_stream(*stream, &code.to_le_bytes()))
            }
            Frame::ExecError { stream, error } => {
                (K_EXEC_ERROR, with_stream(*stream, &json(error)))
            }
        }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = self.kind_and_payload();
        let mut v = Vec::with_capacity(5 + payload.len());
        v.push(kind);
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(&payload);
        v
    }

    /// Writes the frame in one piece.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    fn decode(kind: u8, p: Vec<u8>) -> Result<Frame, String> {
        let bad = |what: &str| format!("malformed {what} frame ({} bytes)", p.len());
        Ok(match kind {
            K_START => Frame::Start(Box::new(StartRequestJson(
                String::from_utf8(p.clone()).map_err(|_| bad("start"))?,
            ))),
            K_STDIN => Frame::Stdin(p),
            K_STDIN_EOF => Frame::StdinEof,
            K_SIGNAL => Frame::Signal(i32::from_le_bytes(
                p.as_slice().try_into().map_err(|_| bad("signal"))?,
            )),
            K_RESIZE => {
                if p.len() != 4 {
                    return Err(bad("resize"));
                }
                Frame::Resize {
                    rows: u16::from_le_bytes([p[0], p[1]]),
                    cols: u16::from_le_bytes([p[2], p[3]]),
                }
            }
            K_SHUTDOWN => Frame::Shutdown,
            K_READY => Frame::Ready(serde_json::from_slice(&p).map_err(|_| bad("ready"))?),
            K_STDOUT => Frame::Stdout(p),
            K_STDERR => Frame::Stderr(p),
            K_EXIT => Frame::Exit(serde_json::from_slice(&p).map_err(|_| bad("exit"))?),
            K_ERROR => Frame::Error(serde_json::from_slice(&p).map_err(|_| bad("error"))?),
            K_LOG => Frame::Log(String::from_utf8_lossy(&p).into_owned()),
            K_STARTED => Frame::Started(u32::from_le_bytes(
                p.as_slice().try_into().map_err(|_| bad("started"))?,
            )),
            K_EXEC_START..=K_EXEC_RESIZE | K_EXEC_STDOUT..=K_EXEC_ERROR => {
                if p.len() < 4 {
                    return Err(bad("exec"));
                }
                let stream = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let rest = p[4..].to_vec();
                let int = |what: &str| -> Result<i32, String> {
                    Ok(i32::from_le_bytes(
                        rest.as_slice().try_into().map_err(|_| bad(what))?,
                    ))
                };
                match kind {
                    K_EXEC_START => Frame::ExecStart {
                        stream,
                        req: serde_json::from_slice(&rest).map_err(|_| bad("exec-start"))?,
                    },
                    K_EXEC_STDIN => Frame::ExecStdin { stream, data: rest },
                    K_EXEC_STDIN_EOF if rest.is_empty() => Frame::ExecStdinEof(stream),
                    K_EXEC_SIGNAL => Frame::ExecSignal {
                        stream,
                        signal: int("exec-signal")?,
                    },
                    K_EXEC_RESIZE if rest.len() == 4 => Frame::ExecResize {
                        stream,
                        rows: u16::from_le_bytes([rest[0], rest[1]]),
                        cols: u16::from_le_bytes([rest[2], rest[3]]),
                    },
                    K_EXEC_STDOUT => Frame::ExecStdout { stream, data: rest },
                    K_EXEC_STDERR => Frame::ExecStderr { stream, data: rest },
                    K_EXEC_EXIT => Frame::ExecExit {
                        stream,
                        code: int("exec-exit")?,
                    },
                    K_EXEC_ERROR => Frame::ExecError {
                        stream,
                        error: serde_json::from_slice(&rest).map_err(|_| bad("exec-error"))?,
                    },
                    _ => return Err(bad("exec")),
                }
            }
            k => return Err(format!("unknown frame kind {k}")),
        })
    }
}

/// The largest payload of each kind the host accepts from the guest; 0 for
/// kinds only the host sends (a guest that sends one breaks the protocol).
/// The guest chunks output at [`CHUNK`]; its other frames are small JSON.
pub fn guest_payload_limit(kind: u8) -> Option<usize> {
    match kind {
        K_READY => Some(4096),
        K_STDOUT | K_STDERR => Some(CHUNK),
        K_EXIT => Some(4096),
        K_ERROR => Some(64 * 1024),
        K_LOG => Some(4096),
        K_STARTED => Some(4),
        K_EXEC_STDOUT | K_EXEC_STDERR => Some(4 + CHUNK),
        K_EXEC_EXIT => Some(8),
        K_EXEC_ERROR => Some(4 + 64 * 1024),
        K_START | K_STDIN | K_STDIN_EOF | K_SIGNAL | K_RESIZE | K_SHUTDOWN | K_EXEC_START
        | K_EXEC_STDIN | K_EXEC_STDIN_EOF | K_EXEC_SIGNAL | K_EXEC_RESIZE => Some(0),
        _ => None,
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// The host's decoder of guest frames: per-kind limits
    /// ([`guest_payload_limit`]), checked as soon as the header is in.
    from_guest: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The host's decoder of what the guest sends: only guest kinds, each
    /// within its [`guest_payload_limit`].
    pub fn from_guest() -> Self {
        Decoder {
            buf: Vec::new(),
            from_guest: true,
        }
    }

    /// Bytes received but not yet decoded (bounded by the largest frame
    /// plus one read).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes that arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one is there. A length over
    /// [`MAX_PAYLOAD`] or an unknown kind is an error: the stream cannot be
    /// resynchronised after it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.from_guest {
            if let Some(&kind) = self.buf.first() {
                match guest_payload_limit(kind) {
                    None => return Err(format!("guest channel: unknown frame kind {kind}")),
                    Some(0) => {
                        return Err(format!(
                            "guest channel: the guest sent a host-only frame (kind {kind})"
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.from_guest {
            let limit = guest_payload_limit(self.buf[0]).unwrap_or(0);
            if len > limit {
                return Err(format!(
                    "guest channel: a frame of kind {} announces {len} bytes, over its {limit}-byte limit",
                    self.buf[0]
                ));
            }
        }
        if len > MAX_PAYLOAD {
            return Err(format!(
                "guest channel: a frame of {len} bytes is over the {MAX_PAYLOAD}-byte limit"
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Frame::decode(kind, payload).map(Some)
    }
}

/// Reads one whole frame from a blocking reader; `Ok(None)` at a clean end
/// of stream between frames.
pub fn read_frame(r: &mut impl Read, dec: &mut Decoder) -> Result<Option<Frame>, String> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(f) = dec.next_frame()? {
            return Ok(Some(f));
        }
        match r.read(&mut buf) {
            Ok(0) if dec.buf.is_empty() => return Ok(None),
            Ok(0) => return Err("guest channel: the stream ended inside a frame".into()),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("guest channel: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Start(Box::new(StartRequestJson::new(&StartRequest {
                id: "abc".into(),
                spec: serde_json::json!({"ociVersion": "1.2.0"}),
                user_lookup: Some("nobody".into()),
                files: [("/x".to_string(), "y".to_string())].into(),
                stdin: true,
                host_time: Some((1_700_000_000, 5)),
                console: true,
                shares: vec![GuestShare {
                    tag: "amphi-vol".into(),
                    target: "/.amphi/vol".into(),
                }],
                net: Some(GuestNet {
                    address: [192, 0, 2, 2].into(),
                    prefix: 24,
                    gateway: [192, 0, 2, 1].into(),
                    mtu: 1500,
                }),
            }))),
            Frame::Stdin(b"in\0put".to_vec()),
            Frame::StdinEof,
            Frame::Signal(15),
            Frame::Resize {
                rows: 40,
                cols: 120,
            },
            Frame::Shutdown,
            Frame::Ready(Ready {
                kernel: "6.12.117".into(),
                uptime: 0.5,
            }),
            Frame::Stdout(vec![0xff; 100]),
            Frame::Stderr(vec![]),
            Frame::Exit(ExitStatus {
                code: 137,
                oom_killed: true,
                peak_memory: Some(1 << 20),
            }),
            Frame::Error(GuestError {
                code: 127,
                message: "not found".into(),
            }),
            Frame::Log("hello".into()),
            Frame::Started(42),
            Frame::ExecStart {
                stream: 1,
                req: ExecRequest {
                    args: vec!["ls".into(), "-l".into()],
                    env: vec!["A=b".into()],
                    cwd: Some("/tmp".into()),
                    user: Some("nobody".into()),
                    stdin: true,
                    tty: Some((40, 120)),
                },
            },
            Frame::ExecResize {
                stream: 1,
                rows: 50,
                cols: 132,
            },
            Frame::ExecStdin {
                stream: 1,
                data: b"x".to_vec(),
            },
            Frame::ExecStdinEof(1),
            Frame::ExecSignal {
                stream: 2,
                signal: 15,
            },
            Frame::ExecStdout {
                stream: 1,
                data: vec![0; 10],
            },
            Frame::ExecStderr {
                stream: 1,
                data: vec![],
            },
            Frame::ExecExit { stream: 1, code: 3 },
            Frame::ExecError {
                stream: 3,
                error: GuestError {
                    code: 127,
                    message: "no".into(),
                },
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_even_byte_by_byte() {
        let frames = all();
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut dec = Decoder::new();
        let mut got = vec![];
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        let mut r = &wire[..];
        let mut dec = Decoder::new();
        let mut got = vec![];
        while let Some(f) = read_frame(&mut r, &mut dec).unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    /// A start request from a host that knows no console pty (nor the
    /// clock) still parses, with both off.
    #[test]
    fn an_older_hosts_start_request_means_no_console() {
        let old = r#"{"id":"abc","spec":{},"user_lookup":null,"files":{},"stdin":false}"#;
        let r = StartRequestJson(old.into()).parse().unwrap();
        assert!(!r.console);
        assert_eq!(r.host_time, None);
        let mut r = r;
        r.console = true;
        assert!(StartRequestJson::new(&r).parse().unwrap().console);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut dec = Decoder::new();
        dec.push(&[99, 0, 0, 0, 0]);
        assert!(dec
            .next_frame()
            .unwrap_err()
            .contains("unknown frame kind 99"));
        let mut dec = Decoder::new();
        dec.push(&[K_STDOUT, 0xff, 0xff, 0xff, 0x7f]);
        assert!(dec.next_frame().unwrap_err().contains("limit"));
        let mut dec = Decoder::new();
        dec.push(&[K_SIGNAL, 2, 0, 0, 0, 1, 2]);
        assert!(dec.next_frame().unwrap_err().contains("malformed signal"));
        let mut dec = Decoder::new();
        dec.push(&[K_EXIT, 2, 0, 0, 0, b'{', b'x']);
        assert!(dec.next_frame().unwrap_err().contains("malformed exit"));
        // The host's decoder refuses, from the header alone, unknown
        // kinds, host-only kinds and lengths over the kind's limit.
        let mut dec = Decoder::from_guest();
        dec.push(&[K_STDOUT, 0x01, 0x80, 0, 0]);
        assert!(dec
            .next_frame()
            .unwrap_err()
            .contains("over its 32768-byte limit"));
        let mut dec = Decoder::from_guest();
        dec.push(&[K_READY, 0x01, 0x10, 0, 0]);
        assert!(dec.next_frame().unwrap_err().contains("4096-byte limit"));
        let mut dec = Decoder::from_guest();
        dec.push(&[K_START]);
        assert!(dec.next_frame().unwrap_err().contains("host-only frame"));
        let mut dec = Decoder::from_guest();
        dec.push(&[200]);
        assert!(dec
            .next_frame()
            .unwrap_err()
            .contains("unknown frame kind 200"));
        let mut dec = Decoder::from_guest();
        let full = Frame::Stdout(vec![7; CHUNK]).encode();
        dec.push(&full);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Stdout(vec![7; CHUNK]))
        );
        let mut r: &[u8] = &[K_STDOUT, 10, 0, 0, 0, 1];
        assert!(read_frame(&mut r, &mut Decoder::new())
            .unwrap_err()
            .contains("inside a frame"));
    }
}
