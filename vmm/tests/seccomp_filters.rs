//! The VMM's real seccomp filters, one thread kind at a time, each in a
//! forked child: the calls that kind of thread makes pass, and a forbidden
//! one kills the child with SIGSYS after the `SIGSYS` reporter wrote the
//! line that names the thread and the system call.
//!
//! No KVM or root needed: a filter judges the ioctl number, not the
//! descriptor, so the KVM ioctls are made on /dev/null (the call passes
//! the filter and fails with ENOTTY, or the filter kills the child).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use amphi_vmm::jail::{install_sigsys_reporter, seccomp, FilterParams, SeccompFilters, ThreadKind};

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Killed(i32),
}

/// Runs `body` in a forked child under `kind`'s filter (vCPU index 7);
/// returns how the child ended and what it wrote to stderr. The child uses
/// raw calls only; `body` returns a code, 0 for "all went as expected".
fn in_child(kind: ThreadKind, body: impl FnOnce() -> i32) -> (End, String) {
    in_child_with(kind, Vec::new(), body)
}

/// [`in_child`] with the filters allowing the vhost-user calls on
/// `sockets` (the child's [`FilterParams::current`] otherwise: its own pid).
fn in_child_with(
    kind: ThreadKind,
    sockets: Vec<std::os::fd::RawFd>,
    body: impl FnOnce() -> i32,
) -> (End, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child makes raw calls (and glibc's malloc, which fork
    // makes safe) and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: descriptor plumbing and prctl in the child.
        unsafe {
            libc::dup2(fds[1], 2);
            // No core file from the SIGSYS kill.
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
        let code = (|| {
            if install_sigsys_reporter().is_err() {
                return 90;
            }
            let params = FilterParams {
                vhost_user_sockets: sockets,
                ..FilterParams::current()
            };
            let Ok(filters) = SeccompFilters::for_kinds(params, &[kind]) else {
                return 91;
            };
            if filters.apply(kind, 7).is_err() {
                return 92;
            }
            body()
        })();
        // SAFETY: ending the child.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the write end is ours to close; the read end becomes a File.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is an open descriptor nothing else owns.
    let mut r = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let mut err = String::new();
    r.read_to_string(&mut err).unwrap();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let end = if libc::WIFSIGNALED(status) {
        End::Killed(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    };
    (end, err)
}

/// The thread's name in reports, for `kind` at index 7.
fn thread_name(kind: ThreadKind) -> String {
    match kind {
        ThreadKind::Vcpu => "vcpu7".into(),
        k => k.name().into(),
    }
}

/// Asserts that `call` kills a child under `kind`'s filter with SIGSYS
/// and that the report names the thread and `nr`.
#[track_caller]
fn forbidden(kind: ThreadKind, nr: libc::c_long, what: &str, call: impl FnOnce()) {
    let (end, err) = in_child(kind, || {
        call();
        // The call went through: not what the filter should allow.
        1
    });
    assert_eq!(
        end,
        End::Killed(libc::SIGSYS),
        "{kind:?}: {what} was not killed by SIGSYS; stderr:\n{err}"
    );
    let expected = format!(
        "amphi vmm: seccomp: the {} thread made system call {nr}, which its filter forbids; the VMM is stopped\n",
        thread_name(kind)
    );
    assert_eq!(err, expected, "{kind:?}: {what}");
}

/// Asserts that `body` runs to its end (returning 0) under `kind`'s filter.
#[track_caller]
fn allowed(kind: ThreadKind, body: impl FnOnce() -> i32) {
    let (end, err) = in_child(kind, body);
    assert_eq!(end, End::Exited(0), "{kind:?}: stderr:\n{err}");
}

/// [`forbidden`] with the vhost-user calls allowed on `sockets`.
#[track_caller]
fn forbidden_with(
    kind: ThreadKind,
    params: Vec<std::os::fd::RawFd>,
    nr: libc::c_long,
    what: &str,
    call: impl FnOnce(),
) {
    let (end, err) = in_child_with(kind, params, || {
        call();
        1
    });
    assert_eq!(
        end,
        End::Killed(libc::SIGSYS),
        "{kind:?}: {what} was not killed by SIGSYS; stderr:\n{err}"
    );
    assert!(
        err.contains(&format!("made system call {nr},")),
        "{kind:?}: {what}: {err}"
    );
}

fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// `execve /bin/true`, `open`/`openat` of a host path, `socket`,
/// `ptrace`, a new process, another process's signal, executable memory:
/// forbidden for every kind of thread.
#[test]
fn every_thread_kind_is_killed_for_the_dangerous_calls() {
    for kind in ThreadKind::ALL {
        forbidden(kind, libc::SYS_execve, "execve", || {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: valid NUL-terminated strings and arrays.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), std::ptr::null()) };
        });
        forbidden(kind, libc::SYS_openat, "openat /etc/hostname", || {
            // SAFETY: a valid path.
            unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
        });
        forbidden(kind, libc::SYS_open, "open /etc/passwd", || {
            // SAFETY: a valid path.
            unsafe { libc::syscall(libc::SYS_open, c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
        });
        forbidden(kind, libc::SYS_socket, "socket", || {
            // SAFETY: integer arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
        forbidden(kind, libc::SYS_ptrace, "ptrace", || {
            // SAFETY: PTRACE_TRACEME takes no pointers.
            unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        });
        forbidden(kind, libc::SYS_clone, "clone (a new process)", || {
            // SAFETY: a fork-like clone; should it pass, the child exits at once.
            let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
            if r == 0 {
                // SAFETY: ending the accidental child.
                unsafe { libc::_exit(0) };
            }
        });
        forbidden(kind, libc::SYS_kill, "kill", || {
            // SAFETY: signal 0 only checks; the filter stops it before.
            unsafe { libc::kill(1, 0) };
        });
        forbidden(kind, libc::SYS_mmap, "mmap PROT_EXEC", || {
            // SAFETY: an anonymous mapping (the filter stops it before).
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        });
        let f = dev_null();
        forbidden(kind, libc::SYS_mmap, "mmap of a file", move || {
            // SAFETY: a read-only mapping of /dev/null (stopped before).
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    f.as_raw_fd(),
                    0,
                )
            };
        });
        forbidden(kind, libc::SYS_mprotect, "mprotect PROT_EXEC", || {
            let mut page = vec![0u8; 8192];
            let at = (page.as_mut_ptr() as usize + 4095) & !4095;
            // SAFETY: a page of our own heap (stopped before).
            unsafe {
                libc::mprotect(
                    at as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                )
            };
        });
        forbidden(kind, libc::SYS_rt_sigaction, "rt_sigaction", || {
            // SAFETY: a query only (stopped before).
            unsafe { libc::sigaction(libc::SIGSYS, std::ptr::null(), std::ptr::null_mut()) };
        });
        forbidden(kind, libc::SYS_setuid, "setuid", || {
            // SAFETY: integer argument.
            unsafe { libc::syscall(libc::SYS_setuid, 0) };
        });
    }
}

/// vCPU threads: KVM_RUN and the register reads pass; any other KVM ioctl
/// kills (here KVM_SET_REGS and KVM_CREATE_VCPU), as does any ioctl on
/// the device event loop and the control threads.
#[test]
fn only_vcpu_threads_make_kvm_ioctls_and_only_these() {
    let fd = dev_null();
    allowed(ThreadKind::Vcpu, move || {
        let mut buf = [0u8; 512];
        for nr in [
            seccomp::KVM_RUN,
            seccomp::KVM_GET_REGS,
            seccomp::KVM_GET_SREGS,
        ] {
            // SAFETY: an ioctl on /dev/null with a large enough buffer.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), nr as _, buf.as_mut_ptr()) };
            if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTTY) {
                return 2;
            }
        }
        // Closing is the control threads' (the descriptor dies with the child).
        std::mem::forget(fd);
        0
    });
    // _IOW(KVMIO, 0x82, struct kvm_regs), _IO(KVMIO, 0x41).
    let kvm_set_regs: u64 = (1 << 30) | (0x90 << 16) | (0xae << 8) | 0x82;
    let kvm_create_vcpu: u64 = (0xae << 8) | 0x41;
    for nr in [kvm_set_regs, kvm_create_vcpu] {
        let fd = dev_null();
        forbidden(
            ThreadKind::Vcpu,
            libc::SYS_ioctl,
            "another KVM ioctl",
            move || {
                let mut buf = [0u8; 512];
                // SAFETY: as above.
                unsafe { libc::ioctl(fd.as_raw_fd(), nr as _, buf.as_mut_ptr()) };
            },
        );
    }
    for kind in [ThreadKind::EventLoop, ThreadKind::Control] {
        let fd = dev_null();
        forbidden(kind, libc::SYS_ioctl, "KVM_RUN", move || {
            // SAFETY: as above.
            unsafe { libc::ioctl(fd.as_raw_fd(), seccomp::KVM_RUN as _, 0) };
        });
    }
}

/// What every thread does: log lines, memory, futexes, clocks.
fn housekeeping() -> i32 {
    // SAFETY: write(2) to stderr.
    if unsafe { libc::write(2, b"".as_ptr().cast(), 0) } != 0 {
        return 3;
    }
    // SAFETY: an anonymous read-write mapping, changed and unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return 4;
        }
        if libc::mprotect(p, 4096, libc::PROT_READ) != 0
            || libc::madvise(p, 1 << 20, libc::MADV_DONTNEED) != 0
            || libc::munmap(p, 1 << 20) != 0
        {
            return 5;
        }
    }
    // Allocation (brk or mmap through malloc).
    let v = vec![7u8; 300_000];
    if v.iter().map(|&b| u64::from(b)).sum::<u64>() != 2_100_000 {
        return 6;
    }
    drop(v);
    let word = 0u32;
    // SAFETY: a futex wake on our own word, and a wait that returns at
    // once (the value differs).
    unsafe {
        if libc::syscall(
            libc::SYS_futex,
            &word,
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        ) < 0
        {
            return 7;
        }
        libc::syscall(
            libc::SYS_futex,
            &word,
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            1,
            std::ptr::null::<libc::timespec>(),
        );
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointers and integer arguments.
    unsafe {
        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
        libc::sched_yield();
        libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_gettid);
        let short = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1000,
        };
        libc::nanosleep(&short, std::ptr::null_mut());
    }
    0
}

#[test]
fn every_thread_kind_keeps_its_housekeeping() {
    for kind in ThreadKind::ALL {
        allowed(kind, housekeeping);
    }
}

/// The device event loop: epoll, eventfds, the console socket, disk I/O.
/// The control threads too (the main thread drains the devices).
#[test]
fn the_event_loop_does_device_io() {
    for kind in [ThreadKind::EventLoop, ThreadKind::Control] {
        let disk = tempfile::tempfile().unwrap();
        disk.set_len(4096).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: epoll_create1 and eventfd with flags only (made before
        // the filter, as the VMM makes them).
        let (ep, ev) = unsafe {
            (
                OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)),
                OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK)),
            )
        };
        allowed(kind, move || {
            // SAFETY: every call on descriptors made above, with buffers
            // of our own.
            unsafe {
                let mut e = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: 1,
                };
                if libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, ev.as_raw_fd(), &mut e) != 0
                {
                    return 10;
                }
                let one = 1u64;
                if libc::write(ev.as_raw_fd(), (&raw const one).cast(), 8) != 8 {
                    return 11;
                }
                let mut got = [libc::epoll_event { events: 0, u64: 0 }; 4];
                if libc::epoll_wait(ep.as_raw_fd(), got.as_mut_ptr(), 4, 0) != 1 {
                    return 12;
                }
                let mut n = 0u64;
                if libc::read(ev.as_raw_fd(), (&raw mut n).cast(), 8) != 8 {
                    return 13;
                }
                let block = [0x5au8; 512];
                let mut back = [0u8; 512];
                if libc::pwrite(disk.as_raw_fd(), block.as_ptr().cast(), 512, 1024) != 512
                    || libc::pread(disk.as_raw_fd(), back.as_mut_ptr().cast(), 512, 1024) != 512
                    || back != block
                    || libc::fdatasync(disk.as_raw_fd()) != 0
                {
                    return 14;
                }
                if libc::write(a.as_raw_fd(), b"hi".as_ptr().cast(), 2) != 2 {
                    return 15;
                }
                let mut two = [0u8; 2];
                if libc::read(b.as_raw_fd(), two.as_mut_ptr().cast(), 2) != 2 || &two != b"hi" {
                    return 16;
                }
            }
            // Closing is the control threads' (they die with the child).
            std::mem::forget((ep, ev, disk, a, b));
            0
        });
    }
}

/// virtio-net's frames to passt: `send` with `MSG_DONTWAIT |
/// MSG_NOSIGNAL` and no address passes on the event loop and control
/// threads; other flags (a send that may block or raise SIGPIPE), an
/// address, or a vCPU thread's send are killed.
#[test]
fn the_net_device_sends_without_blocking_or_sigpipe_only() {
    let flags = amphi_vmm::devices::virtio::net::stream::SEND_FLAGS;
    assert_eq!(flags, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    for kind in [ThreadKind::EventLoop, ThreadKind::Control] {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        allowed(kind, move || {
            // SAFETY: send and read on a socketpair of ours, with buffers
            // of our own.
            unsafe {
                if libc::send(a.as_raw_fd(), b"frame".as_ptr().cast(), 5, flags) != 5 {
                    return 30;
                }
                let mut got = [0u8; 5];
                if libc::read(b.as_raw_fd(), got.as_mut_ptr().cast(), 5) != 5 || &got != b"frame" {
                    return 31;
                }
            }
            std::mem::forget((a, b));
            0
        });
    }
    for (kind, flags, what) in [
        (ThreadKind::EventLoop, 0, "send that may block"),
        (
            ThreadKind::EventLoop,
            libc::MSG_DONTWAIT,
            "send that may raise SIGPIPE",
        ),
        (
            ThreadKind::Control,
            libc::MSG_NOSIGNAL,
            "send that may block",
        ),
        (ThreadKind::Vcpu, flags, "send from a vCPU"),
    ] {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        forbidden(kind, libc::SYS_sendto, what, move || {
            // SAFETY: a send on a socketpair of ours (stopped before).
            unsafe { libc::send(a.as_raw_fd(), b"x".as_ptr().cast(), 1, flags) };
            std::mem::forget(b);
        });
    }
    // A datagram to an address (sendto proper): killed too.
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    forbidden(
        ThreadKind::EventLoop,
        libc::SYS_sendto,
        "sendto an address",
        move || {
            // SAFETY: a zeroed sockaddr_un (family AF_UNIX, abstract name ""),
            // of its size (stopped before).
            unsafe {
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
                libc::sendto(
                    s.as_raw_fd(),
                    b"x".as_ptr().cast(),
                    1,
                    flags,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
        },
    );
}

/// The control threads: waiting for signals, kicking this process's
/// threads with the kick signal (and nothing else), closing descriptors.
#[test]
fn control_threads_kick_only_their_own_threads() {
    let kick = amphi_vmm::stop::kick_signal();
    // SAFETY: a new descriptor, closed in the child.
    let spare = unsafe { libc::dup(2) };
    allowed(ThreadKind::Control, move || {
        // SAFETY: signal masks and calls on our own process and thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, kick);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return 20;
            }
            let tid = libc::syscall(libc::SYS_gettid);
            if libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick) != 0 {
                return 21;
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            if libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) != kick {
                return 22;
            }
            if libc::close(spare) != 0 {
                return 23;
            }
        }
        0
    });
    forbidden(
        ThreadKind::Control,
        libc::SYS_tgkill,
        "tgkill SIGKILL",
        || {
            // SAFETY: the filter stops it before.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    libc::SIGKILL,
                )
            };
        },
    );
    forbidden(
        ThreadKind::Control,
        libc::SYS_tgkill,
        "tgkill of another process",
        || {
            // SAFETY: the filter stops it before.
            unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, kick) };
        },
    );
    forbidden(
        ThreadKind::Vcpu,
        libc::SYS_tgkill,
        "tgkill from a vCPU",
        || {
            // SAFETY: the filter stops it before.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    kick,
                )
            };
        },
    );
}

/// One `sendmsg` of `b"x"` on `fd` with `flags`; what it returned.
fn send_one(fd: libc::c_int, flags: libc::c_int) -> isize {
    let mut byte = *b"x";
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: a zeroed msghdr is valid; it points at our one iovec.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        libc::sendmsg(fd, &msg, flags)
    }
}

/// One `recvmsg` of up to one byte on `fd` with `flags`; what it returned.
fn recv_one(fd: libc::c_int, flags: libc::c_int) -> isize {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as in send_one, into our own byte.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        libc::recvmsg(fd, &mut msg, flags)
    }
}

/// With a vhost-user socket (virtio-fs), vCPU threads talk to the backend
/// in the guest's DRIVER_OK and reset writes: `sendmsg` with MSG_NOSIGNAL
/// and `recvmsg` pass on that socket, and on no other descriptor, with no
/// other flags; the other thread kinds get neither, and without a socket
/// nobody does.
#[test]
fn vcpu_threads_talk_to_vhost_user_sockets_only() {
    let (ours, other) = std::os::unix::net::UnixStream::pair().unwrap();
    let (a, b) = (ours.as_raw_fd(), other.as_raw_fd());
    let params = vec![a];
    let (p, keep) = (
        params.clone(),
        (ours.try_clone().unwrap(), other.try_clone().unwrap()),
    );
    allowed_with(ThreadKind::Vcpu, p, move || {
        if send_one(a, libc::MSG_NOSIGNAL) != 1 {
            return 30;
        }
        // The backend's reply.
        // SAFETY: write(2) of one byte of ours.
        if unsafe { libc::write(b, b"y".as_ptr().cast(), 1) } != 1 {
            return 31;
        }
        if recv_one(a, 0) != 1 {
            return 32;
        }
        std::mem::forget(keep);
        0
    });
    forbidden_with(
        ThreadKind::Vcpu,
        params.clone(),
        libc::SYS_sendmsg,
        "sendmsg on another socket",
        move || {
            send_one(b, libc::MSG_NOSIGNAL);
        },
    );
    forbidden_with(
        ThreadKind::Vcpu,
        params.clone(),
        libc::SYS_sendmsg,
        "sendmsg without MSG_NOSIGNAL",
        move || {
            send_one(a, 0);
        },
    );
    forbidden_with(
        ThreadKind::Vcpu,
        params.clone(),
        libc::SYS_recvmsg,
        "recvmsg on another socket",
        move || {
            recv_one(b, libc::MSG_DONTWAIT);
        },
    );
    for kind in [ThreadKind::EventLoop, ThreadKind::Control] {
        forbidden_with(
            kind,
            params.clone(),
            libc::SYS_sendmsg,
            "sendmsg off the vCPU threads",
            move || {
                send_one(a, libc::MSG_NOSIGNAL);
            },
        );
    }
    forbidden_with(
        ThreadKind::Vcpu,
        Vec::new(),
        libc::SYS_sendmsg,
        "sendmsg without vhost-user devices",
        move || {
            send_one(a, libc::MSG_NOSIGNAL);
        },
    );
    drop((ours, other));
}

/// [`allowed`] with the vhost-user calls allowed on `sockets`.
#[track_caller]
fn allowed_with(kind: ThreadKind, params: Vec<std::os::fd::RawFd>, body: impl FnOnce() -> i32) {
    let (end, err) = in_child_with(kind, params, body);
    assert_eq!(end, End::Exited(0), "{kind:?}: stderr:\n{err}");
}

/// The control threads may shut a vhost-user socket down (a run ending
/// while a vCPU waits on a silent backend), that socket only, and only
/// with those sockets configured.
#[test]
fn control_threads_shut_down_vhost_user_sockets_only() {
    let (ours, other) = std::os::unix::net::UnixStream::pair().unwrap();
    let (a, b) = (ours.as_raw_fd(), other.as_raw_fd());
    let keep = (ours.try_clone().unwrap(), other.try_clone().unwrap());
    allowed_with(ThreadKind::Control, vec![a], move || {
        // SAFETY: shutdown(2) of our own socket.
        if unsafe { libc::shutdown(a, libc::SHUT_RDWR) } != 0 {
            return 40;
        }
        drop(keep);
        0
    });
    forbidden_with(
        ThreadKind::Control,
        vec![a],
        libc::SYS_shutdown,
        "shutdown of another socket",
        move || {
            // SAFETY: as above (stopped by the filter).
            unsafe { libc::shutdown(b, libc::SHUT_RDWR) };
        },
    );
    for (kind, sockets) in [
        (ThreadKind::Control, Vec::new()),
        (ThreadKind::Vcpu, vec![a]),
    ] {
        forbidden_with(kind, sockets, libc::SYS_shutdown, "shutdown", move || {
            // SAFETY: as above.
            unsafe { libc::shutdown(a, libc::SHUT_RDWR) };
        });
    }
    drop((ours, other));
}

/// The vhost-user relay (`amphi-vmm vhost-user-relay`): messages with
/// descriptors over its sockets, `poll`, eventfd reads, `fstat` and a
/// shared, non-executable mapping of a memfd it was sent pass; a private
/// file mapping, an executable shared one, an ioctl and `recvmsg` with
/// flags kill it.
#[test]
fn the_relay_relays_and_maps_shared_memory_and_nothing_else() {
    // SAFETY: memfd_create and eventfd with flags; results checked and owned.
    let (memfd, ev) = unsafe {
        let m = libc::memfd_create(c"ram".as_ptr(), libc::MFD_CLOEXEC);
        let e = libc::eventfd(1, libc::EFD_NONBLOCK);
        assert!(m >= 0 && e >= 0);
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(e))
    };
    // SAFETY: ftruncate of our own memfd.
    assert_eq!(unsafe { libc::ftruncate(memfd.as_raw_fd(), 1 << 20) }, 0);
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (a, b) = (OwnedFd::from(a), OwnedFd::from(b));
    let m = memfd.as_raw_fd();
    allowed(ThreadKind::Relay, move || {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let (a, b) = (
            std::os::unix::net::UnixStream::from(a),
            std::os::unix::net::UnixStream::from(b),
        );
        // SAFETY: calls on descriptors made above, buffers of our own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(m, &mut st) != 0 || st.st_size != 1 << 20 {
                return 10;
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                m,
                0,
            );
            if p == libc::MAP_FAILED {
                return 11;
            }
            *(p as *mut u8) = 7;
            if a.send_with_fds(&[&b"msg"[..]], &[m]).is_err() {
                return 12;
            }
            let mut pfd = libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 1000) != 1 {
                return 13;
            }
            let mut buf = [0u8; 3];
            let mut iov = [libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 3,
            }];
            let mut fds = [-1; 4];
            match b.recv_with_fds(&mut iov, &mut fds) {
                Ok((3, 1)) if &buf == b"msg" => {}
                _ => return 14,
            }
            let mut n = 0u64;
            if libc::read(ev.as_raw_fd(), (&raw mut n).cast(), 8) != 8 || n != 1 {
                return 15;
            }
            libc::close(fds[0]);
            libc::munmap(p, 1 << 20);
        }
        0
    });
    let m = memfd.as_raw_fd();
    for (what, prot, flags) in [
        ("a private file mapping", libc::PROT_READ, libc::MAP_PRIVATE),
        (
            "an executable shared mapping",
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_SHARED,
        ),
    ] {
        forbidden(ThreadKind::Relay, libc::SYS_mmap, what, move || {
            // SAFETY: stopped before it maps.
            unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, m, 0) };
        });
    }
    forbidden(ThreadKind::Relay, libc::SYS_ioctl, "ioctl", move || {
        let mut n = 0i32;
        // SAFETY: FIONREAD into our own int (stopped before).
        unsafe { libc::ioctl(m, libc::FIONREAD, &mut n) };
    });
    forbidden(
        ThreadKind::Relay,
        libc::SYS_recvmsg,
        "recvmsg with flags",
        move || {
            // SAFETY: an empty msghdr (stopped before).
            unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                libc::recvmsg(m, &mut msg, libc::MSG_DONTWAIT);
            }
        },
    );
    drop(memfd);
}
