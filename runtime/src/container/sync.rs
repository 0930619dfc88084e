//! Parent/child synchronisation over a SOCK_SEQPACKET pair, and passing
//! file descriptors (the pty master) with SCM_RIGHTS.
//!
//! Child → parent messages: `ready`, `error:<json>` (a [`ChildError`],
//! tagged by `kind`), `fd` (with the fd: the pty master of
//! `process.terminal`), `console` (with the fd: the master of a
//! console-only pty, see `LaunchOptions::console_pty`), `seccomp` (with the
//! fd: the seccomp notification listener). Parent → child: `go<pid>`. End
//! of file from the child before `ready` means it exec'd (the socket is
//! close-on-exec) in run mode.

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The sync channel (or a console socket) failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("socketpair: {0}")]
    Socketpair(#[source] Errno),
    #[error("sync send: {0}")]
    Send(#[source] Errno),
    #[error("sync wait: {0}")]
    Wait(#[source] Errno),
    #[error("malformed go message from the runtime")]
    MalformedGo,
    #[error("the runtime went away before the container started")]
    RuntimeGone,
    #[error("sync recv: {0}")]
    Recv(#[source] Errno),
    #[error("sending a file descriptor: {0}")]
    SendFd(#[source] Errno),
    #[error("receiving a file descriptor: {0}")]
    RecvFd(#[source] Errno),
    #[error("no file descriptor received")]
    NoFd,
}

/// One end of the sync channel.
pub struct Sync {
    fd: OwnedFd,
}

/// Why the container process could not start, as it reports it to the
/// runtime (the cloned child and the setup stage alike). The runtime
/// chooses the exit status from the kind, never from the text; the text
/// (`Display`) is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChildError {
    /// The program does not exist: not found on `$PATH`
    /// (`searched_path`), or nothing at the path it was given.
    #[error("exec {program}: {}", not_found_reason(*searched_path))]
    NotFound {
        program: String,
        searched_path: bool,
    },
    /// The program exists but cannot be executed (permission, format, ...).
    #[error("exec {program}: {}", std::io::Error::from_raw_os_error(*errno))]
    NotExecutable { program: String, errno: i32 },
    /// Any other step of the setup failed; `stage` names the step.
    #[error("{message}")]
    Setup {
        stage: String,
        message: String,
        errno: Option<i32>,
    },
}

fn not_found_reason(searched_path: bool) -> String {
    if searched_path {
        "executable file not found in $PATH".into()
    } else {
        std::io::Error::from_raw_os_error(libc::ENOENT).to_string()
    }
}

impl ChildError {
    /// A failed setup step, without an errno.
    pub fn setup(stage: &str, message: impl Into<String>) -> Self {
        ChildError::Setup {
            stage: stage.into(),
            message: message.into(),
            errno: None,
        }
    }

    /// A failed setup step whose system call failed with `errno`.
    pub fn setup_errno(stage: &str, message: impl Into<String>, errno: Option<i32>) -> Self {
        ChildError::Setup {
            stage: stage.into(),
            message: message.into(),
            errno,
        }
    }

    /// The program `program` could not be executed: `errno` from execve
    /// (or from looking it up) tells whether it is missing or not
    /// executable.
    pub fn exec(program: &str, errno: i32) -> Self {
        if errno == libc::ENOENT {
            ChildError::NotFound {
                program: program.into(),
                searched_path: false,
            }
        } else {
            ChildError::NotExecutable {
                program: program.into(),
                errno,
            }
        }
    }

    /// A failed step of the setup, named `stage`: the error's text is
    /// what the user reads, its errno (the first in its chain of causes)
    /// goes along.
    pub fn stage<E: std::error::Error + 'static>(stage: &'static str) -> impl Fn(E) -> ChildError {
        move |e| ChildError::setup_errno(stage, e.to_string(), errno_of(&e))
    }

    /// The wire form: `error:` and the JSON (also what the exec fifo
    /// carries to `start`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"error:".to_vec();
        // A plain enum of strings and integers always serialises; should it
        // not, the text still reaches the runtime.
        match serde_json::to_vec(self) {
            Ok(j) => out.extend(j),
            Err(_) => out.extend(self.to_string().into_bytes()),
        }
        out
    }

    /// Reads what follows `error:`; anything else becomes a `sync` error
    /// that shows what came.
    pub fn decode(data: &[u8]) -> ChildError {
        serde_json::from_slice(data).unwrap_or_else(|_| {
            ChildError::setup(
                "sync",
                format!(
                    "unexpected error message from the container: {:?}",
                    String::from_utf8_lossy(data)
                ),
            )
        })
    }
}

/// The errno of the first system call error in `e`'s chain of causes
/// (`e` itself first): an `io::Error` from the OS or a rustix `Errno`.
pub fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(n) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        if let Some(n) = e.downcast_ref::<Errno>() {
            return Some(n.raw_os_error());
        }
        cur = e.source();
    }
    None
}

/// What the child said.
pub enum Msg {
    Ready,
    Error(ChildError),
    Fd(OwnedFd),
    /// The master of the console-only pty (bound on /dev/console only).
    Console(OwnedFd),
    /// The seccomp user-notification listener (`linux.seccomp.listenerPath`).
    Seccomp(OwnedFd),
    /// The child exec'd or died without a word.
    Eof,
}

impl Sync {
    /// A connected pair: (parent end, child end), both close-on-exec.
    pub fn pair() -> Result<(Sync, Sync), SyncError> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(SyncError::Socketpair)?;
        Ok((Sync { fd: a }, Sync { fd: b }))
    }

    /// The child's end again, in the setup stage (see `init`).
    pub fn from_fd(fd: OwnedFd) -> Sync {
        Sync { fd }
    }

    fn send(&self, data: &[u8]) -> Result<(), SyncError> {
        rustix::net::send(&self.fd, data, SendFlags::NOSIGNAL)
            .map(drop)
            .map_err(SyncError::Send)
    }

    /// Parent: let the child continue, telling it its pid as the runtime
    /// sees it (for the state its createContainer and startContainer hooks
    /// get; inside a new pid namespace the child only knows itself as 1).
    pub fn send_go(&self, pid: i32) -> Result<(), SyncError> {
        self.send(format!("go{pid}").as_bytes())
    }

    /// Child: wait for `go`; returns the pid that came with it.
    pub fn wait_go(&self) -> Result<i32, SyncError> {
        let mut buf = [0u8; 32];
        match rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty()) {
            Ok((n, _)) if n > 2 && &buf[..2] == b"go" => std::str::from_utf8(&buf[2..n])
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or(SyncError::MalformedGo),
            Ok(_) => Err(SyncError::RuntimeGone),
            Err(e) => Err(SyncError::Wait(e)),
        }
    }

    /// Child: all set up.
    pub fn send_ready(&self) -> Result<(), SyncError> {
        self.send(b"ready")
    }

    /// Child: report the error that stops it (best effort: if the
    /// runtime went away there is nobody to tell).
    pub fn send_error(&self, e: &ChildError) {
        let _ = self.send(&e.encode());
    }

    /// Child: pass a file descriptor to the parent.
    pub fn send_fd(&self, fd: &OwnedFd) -> Result<(), SyncError> {
        send_fd_with(self.fd.as_fd(), fd, b"fd")
    }

    /// Child: pass the master of the console-only pty to the parent.
    pub fn send_console_fd(&self, fd: &OwnedFd) -> Result<(), SyncError> {
        send_fd_with(self.fd.as_fd(), fd, b"console")
    }

    /// Child: pass the seccomp notification listener to the parent.
    pub fn send_seccomp_fd(&self, fd: &OwnedFd) -> Result<(), SyncError> {
        send_fd_with(self.fd.as_fd(), fd, b"seccomp")
    }

    /// Parent: the next message.
    pub fn recv(&self) -> Result<Msg, SyncError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => break m.bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(SyncError::Recv(e)),
            }
        };
        let mut received = None;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = m {
                received = fds.next();
            }
        }
        let data = &buf[..n];
        let no_fd = || ChildError::setup("sync", "the container sent no file descriptor");
        Ok(match data {
            b"" => Msg::Eof,
            b"ready" => Msg::Ready,
            b"fd" => received.map_or_else(|| Msg::Error(no_fd()), Msg::Fd),
            b"console" => received.map_or_else(|| Msg::Error(no_fd()), Msg::Console),
            b"seccomp" => received.map_or_else(|| Msg::Error(no_fd()), Msg::Seccomp),
            d => match d.strip_prefix(b"error:") {
                Some(e) => Msg::Error(ChildError::decode(e)),
                None => Msg::Error(ChildError::setup(
                    "sync",
                    format!("unexpected sync message {:?}", String::from_utf8_lossy(d)),
                )),
            },
        })
    }

    /// The raw fd (to keep it across clone).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn send_fd_with(sock: BorrowedFd<'_>, fd: &OwnedFd, data: &[u8]) -> Result<(), SyncError> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map(drop)
    .map_err(SyncError::SendFd)
}

/// Sends `fd` over a connected console socket (runc's --console-socket).
pub fn send_fd(sock: &OwnedFd, fd: &OwnedFd, tag: &str) -> Result<(), SyncError> {
    send_fd_with(sock.as_fd(), fd, tag.as_bytes())
}

/// Receives one fd from a unix socket (the other side of a console socket).
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd, SyncError> {
    let mut buf = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(SyncError::RecvFd)?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(SyncError::NoFd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind crosses a real SEQPACKET pair as itself, with today's text.
    #[test]
    fn child_errors_cross_the_socket_typed() {
        let cases = [
            (
                ChildError::NotFound {
                    program: "nope".into(),
                    searched_path: true,
                },
                "exec nope: executable file not found in $PATH",
            ),
            (
                ChildError::exec("/bin/nope", libc::ENOENT),
                "exec /bin/nope: No such file or directory (os error 2)",
            ),
            (
                ChildError::exec("/etc/passwd", libc::EACCES),
                "exec /etc/passwd: Permission denied (os error 13)",
            ),
            (
                ChildError::setup_errno("cgroup namespace", "creating it: EPERM", Some(1)),
                "creating it: EPERM",
            ),
        ];
        let (parent, child) = Sync::pair().expect("socketpair");
        for (e, text) in cases {
            child.send_error(&e);
            match parent.recv().expect("recv") {
                Msg::Error(got) => {
                    assert_eq!(got, e);
                    assert_eq!(got.to_string(), text);
                }
                _ => panic!("expected an error message"),
            }
        }
        assert!(matches!(
            ChildError::exec("x", libc::ENOENT),
            ChildError::NotFound { .. }
        ));
    }

    /// The pty master of `process.terminal` and the console-only pty's
    /// cross as two kinds, each with its descriptor.
    #[test]
    fn the_two_ptys_arrive_as_their_kinds() {
        let (parent, child) = Sync::pair().expect("socketpair");
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        child.send_fd(&r).expect("send fd");
        child.send_console_fd(&r).expect("send console");
        assert!(matches!(parent.recv().expect("recv"), Msg::Fd(_)));
        assert!(matches!(parent.recv().expect("recv"), Msg::Console(_)));
    }

    /// A typed step error reaches the runtime with its text and the errno
    /// of its first system call cause, however deep.
    #[test]
    fn a_stage_error_carries_text_and_errno() {
        let e = super::super::rootfs::RootfsError::Mask {
            path: "/proc/kcore".into(),
            source: Errno::ACCESS,
        };
        let text = e.to_string();
        let c = ChildError::stage("masked paths")(e);
        assert_eq!(
            c,
            ChildError::Setup {
                stage: "masked paths".into(),
                message: text.clone(),
                errno: Some(libc::EACCES),
            }
        );
        assert_eq!(text, "masking /proc/kcore: Permission denied (os error 13)");
        // Through a transparent wrapper, to an io::Error.
        let e = super::super::launch::ParentError::Sync(SyncError::Send(Errno::PIPE));
        assert_eq!(errno_of(&e), Some(libc::EPIPE));
        // Nothing from the system: no errno.
        assert_eq!(errno_of(&SyncError::MalformedGo), None);
    }

    /// Whatever is not a well-formed error names what came.
    #[test]
    fn malformed_errors_are_reported_with_their_bytes() {
        let e = ChildError::decode(b"exec x: executable file not found in $PATH");
        assert!(matches!(&e, ChildError::Setup { stage, .. } if stage == "sync"));
        assert!(e.to_string().contains("executable file not found"), "{e}");
    }
}
