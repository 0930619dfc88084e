//! Parent/child synchronisation over a SOCK_SEQPACKET pair, and passing
//! file descriptors (the pty master) with SCM_RIGHTS.
//!
//! Child → parent messages: `ready`, `error:<text>`, `fd` (with the fd).
//! Parent → child: `go<pid>`. End of file from the child before `ready`
//! means it exec'd (the socket is close-on-exec) in run mode.

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// One end of the sync channel.
pub struct Sync {
    fd: OwnedFd,
}

/// What the child said.
pub enum Msg {
    Ready,
    Error(String),
    Fd(OwnedFd),
    /// The child exec'd or died without a word.
    Eof,
}

impl Sync {
    /// A connected pair: (parent end, child end), both close-on-exec.
    pub fn pair() -> Result<(Sync, Sync), String> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        Ok((Sync { fd: a }, Sync { fd: b }))
    }

    /// The child's end again, in the setup stage (see `init`).
    pub fn from_fd(fd: OwnedFd) -> Sync {
        Sync { fd }
    }

    fn send(&self, data: &[u8]) -> Result<(), String> {
        rustix::net::send(&self.fd, data, SendFlags::NOSIGNAL)
            .map(drop)
            .map_err(|e| format!("sync send: {e}"))
    }

    /// Parent: let the child continue, telling it its pid as the runtime
    /// sees it (for the state its createContainer and startContainer hooks
    /// get; inside a new pid namespace the child only knows itself as 1).
    pub fn send_go(&self, pid: i32) -> Result<(), String> {
        self.send(format!("go{pid}").as_bytes())
    }

    /// Child: wait for `go`; returns the pid that came with it.
    pub fn wait_go(&self) -> Result<i32, String> {
        let mut buf = [0u8; 32];
        match rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty()) {
            Ok((n, _)) if n > 2 && &buf[..2] == b"go" => std::str::from_utf8(&buf[2..n])
                .ok()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| "malformed go message from the runtime".to_string()),
            Ok(_) => Err("the runtime went away before the container started".into()),
            Err(e) => Err(format!("sync wait: {e}")),
        }
    }

    /// Child: all set up.
    pub fn send_ready(&self) -> Result<(), String> {
        self.send(b"ready")
    }

    /// Child: report the error that stops it.
    pub fn send_error(&self, msg: &str) {
        let _ = self.send(format!("error:{msg}").as_bytes());
    }

    /// Child: pass a file descriptor to the parent.
    pub fn send_fd(&self, fd: &OwnedFd) -> Result<(), String> {
        send_fd_with(self.fd.as_fd(), fd, b"fd")
    }

    /// Parent: the next message.
    pub fn recv(&self) -> Result<Msg, String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => break m.bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(format!("sync recv: {e}")),
            }
        };
        let mut received = None;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = m {
                received = fds.next();
            }
        }
        let data = &buf[..n];
        Ok(match data {
            b"" => Msg::Eof,
            b"ready" => Msg::Ready,
            b"fd" => match received {
                Some(fd) => Msg::Fd(fd),
                None => Msg::Error("the container sent no file descriptor".into()),
            },
            d => match d.strip_prefix(b"error:") {
                Some(e) => Msg::Error(String::from_utf8_lossy(e).into_owned()),
                None => Msg::Error(format!(
                    "unexpected sync message {:?}",
                    String::from_utf8_lossy(d)
                )),
            },
        })
    }

    /// The raw fd (to keep it across clone).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn send_fd_with(sock: BorrowedFd<'_>, fd: &OwnedFd, data: &[u8]) -> Result<(), String> {
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
    .map_err(|e| format!("sending a file descriptor: {e}"))
}

/// Sends `fd` over a connected console socket (runc's --console-socket).
pub fn send_fd(sock: &OwnedFd, fd: &OwnedFd, tag: &str) -> Result<(), String> {
    send_fd_with(sock.as_fd(), fd, tag.as_bytes())
}

/// Receives one fd from a unix socket (the other side of a console socket).
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    let mut buf = [0u8; 256];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| format!("receiving a file descriptor: {e}"))?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err("no file descriptor received".into())
}
