//! Per-thread seccomp filters (built with rust-vmm's `seccompiler`), and
//! the `SIGSYS` reporter that names the forbidden system call.
//!
//! Three kinds of thread run once a VM is set up, each with its own
//! allowlist ([`ThreadKind`]):
//!
//! - **vCPU** threads: `KVM_RUN` and the two register reads of a fault
//!   report (`KVM_GET_REGS`, `KVM_GET_SREGS`) on the vCPU fd, no other
//!   ioctl; `write` (COM1 output, interrupt eventfds, log lines); memory
//!   and thread housekeeping. With vhost-user devices (virtio-fs), also
//!   the requests to their backends, made in the guest's `DRIVER_OK` and
//!   reset writes: `sendmsg` (with `MSG_NOSIGNAL`) and `recvmsg` on the
//!   connected vhost-user sockets alone ([`FilterParams::vhost_user_sockets`]),
//!   and `close` (descriptors a misbehaving backend attaches to a reply
//!   are closed, not kept).
//! - the **event loop** thread (virtio devices): epoll, `read`/`write`
//!   (eventfds, the console's socket, virtio-net's socket),
//!   `pread64`/`pwrite64`/`fdatasync` (disks), and `sendto` with exactly
//!   `MSG_DONTWAIT | MSG_NOSIGNAL` and no address (virtio-net's frames to
//!   passt: a `send` that never blocks and never raises `SIGPIPE`); no
//!   ioctl at all.
//! - the **control** thread (the main thread once the vCPUs run, which
//!   also takes `amphi-vmm`'s stop signals): what the event loop may do (the main thread drains the
//!   devices after the run), plus waiting for signals, `tgkill` of this
//!   process's own threads with the vCPU kick signal only, `close`, and
//!   `shutdown(SHUT_RDWR)` of the vhost-user sockets (a run that ends
//!   while a vCPU waits on a backend that does not answer).
//!
//! Everywhere: no `execve`, `open`/`openat`, `socket`/`connect`, `ptrace`,
//! `clone`/`fork` (every thread exists before the filters), `mount`,
//! `setuid`, ...; `mmap` only anonymous and never `PROT_EXEC`, `mprotect`
//! never `PROT_EXEC`; `futex` only wait and wake.
//!
//! A call outside the list is not run: the filter returns
//! `SECCOMP_RET_TRAP`, the kernel forces `SIGSYS` on the thread, and the
//! handler installed by [`install_sigsys_reporter`] writes one line to
//! stderr, `amphi vmm: seccomp: the vcpu0 thread made system call 59,
//! which its filter forbids; the VMM is stopped`, then makes the one call
//! that a second filter on every thread (the *kill switch*, installed
//! first) answers with `SECCOMP_RET_KILL_PROCESS`: `exit_group` with
//! [`KILL_SWITCH`] as its status. So the process is killed by `SIGSYS`,
//! all threads at once, as with a plain kill action, and whoever reads its
//! stderr learns the syscall number (with `SECCOMP_RET_KILL_PROCESS` alone
//! the parent only sees "killed by SIGSYS"; the number would be in the
//! audit log, if any). Only `write` and `exit_group` run in the handler
//! (both in every list). A call of another architecture (the filters'
//! x86_64 check) is killed outright. The supervisor of `amphi vmm` exits
//! with [`EXIT_SECCOMP`] (128 + SIGSYS) for a VMM killed by `SIGSYS`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Result, VmmError};

/// Exit status of `amphi vmm` for a VMM killed by its seccomp filter (128 +
/// SIGSYS, as a shell reports a process killed by SIGSYS).
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// The `exit_group` status that the kill switch answers with
/// `SECCOMP_RET_KILL_PROCESS` (no real exit status is this large).
pub const KILL_SWITCH: u64 = 0x5ecc_0de0;

/// The start of the line the `SIGSYS` handler writes to stderr; the
/// syscall number follows `made system call `.
pub const VIOLATION_PREFIX: &str = "amphi vmm: seccomp: the ";

/// The kinds of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`KVM_RUN`).
    Vcpu,
    /// The virtio devices' event loop.
    EventLoop,
    /// The main thread once the VM runs (it also takes the stop signals).
    Control,
    /// `amphi-vmm vhost-user-relay`'s only thread (see
    /// [`crate::devices::virtio::fs::relay`]).
    Relay,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::Control,
        ThreadKind::Relay,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "virtio-events",
            ThreadKind::Control => "control",
            ThreadKind::Relay => "vhost-user-relay",
        }
    }

    fn code(self) -> u8 {
        match self {
            ThreadKind::Vcpu => 1,
            ThreadKind::EventLoop => 2,
            ThreadKind::Control => 3,
            ThreadKind::Relay => 4,
        }
    }
}

thread_local! {
    /// This thread's filter kind (0: none) and index (the vCPU's), for the
    /// `SIGSYS` report. Const-initialised: read from a signal handler.
    static THREAD: Cell<(u8, u32)> = const { Cell::new((0, 0)) };
}

/// What the filters need to know about this process.
#[derive(Clone, Debug)]
pub struct FilterParams {
    /// This process's pid as its threads see it (`getpid()`; 1 in the
    /// jail's pid namespace): `tgkill` may only signal this process.
    pub pid: libc::pid_t,
    /// The vCPU kick signal (`tgkill` may only send this one).
    pub kick_signal: libc::c_int,
    /// The connected vhost-user sockets: vCPU threads may `sendmsg` and
    /// `recvmsg` on these descriptors and no other. Empty: neither call.
    pub vhost_user_sockets: Vec<RawFd>,
}

impl FilterParams {
    /// The values for the calling process, without vhost-user sockets.
    pub fn current() -> Self {
        FilterParams {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            kick_signal: crate::stop::kick_signal(),
            vhost_user_sockets: Vec::new(),
        }
    }

    /// The values for the calling process running `vm`.
    pub fn for_vm(vm: &crate::Vm) -> Self {
        FilterParams {
            vhost_user_sockets: vm.vhost_user_sockets(),
            ..Self::current()
        }
    }
}

/// The compiled filters: the kill switch, and one per [`ThreadKind`] of
/// the process.
#[derive(Clone, Debug)]
pub struct SeccompFilters {
    kill_switch: BpfProgram,
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl SeccompFilters {
    /// The thread kinds of a VMM process.
    pub const VMM: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Control];

    /// Compiles the VMM's three filters ([`Self::VMM`]) for a process
    /// described by `params`.
    pub fn new(params: FilterParams) -> Result<Self> {
        Self::for_kinds(params, &Self::VMM)
    }

    /// Compiles the filters of `kinds` only (the relay has one kind of
    /// thread: it compiles nothing else, and the VMM never compiles its).
    pub fn for_kinds(params: FilterParams, kinds: &[ThreadKind]) -> Result<Self> {
        let compile = |kind| -> Result<BpfProgram> {
            let filter = SeccompFilter::new(
                rules(kind, &params)?,
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(|e| jail_err(kind, e))?;
            filter.try_into().map_err(|e| jail_err(kind, e))
        };
        let kill_switch = SeccompFilter::new(
            [(libc::SYS_exit_group, vec![rule(vec![eq(0, KILL_SWITCH)?])?])]
                .into_iter()
                .collect(),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from)
        .map_err(|e| VmmError::Jail {
            step: "building the seccomp filters",
            detail: format!("kill switch: {e}"),
        })?;
        let programs = kinds
            .iter()
            .map(|&k| compile(k).map(|p| (k, p)))
            .collect::<Result<_>>()?;
        Ok(SeccompFilters {
            kill_switch,
            programs,
        })
    }

    /// The BPF program of `kind`, when it was compiled.
    pub fn program(&self, kind: ThreadKind) -> Option<&BpfProgram> {
        self.programs
            .iter()
            .find_map(|(k, p)| (*k == kind).then_some(p))
    }

    /// Installs the kill switch and then `kind`'s filter on the calling
    /// thread (for good: a filter cannot be removed, and the lists do not
    /// allow adding another). `index` names the thread in a violation
    /// report (the vCPU's index). Sets no_new_privs (process-wide; the
    /// jail has set it already).
    pub fn apply(&self, kind: ThreadKind, index: u32) -> Result<()> {
        THREAD.with(|t| t.set((kind.code(), index)));
        let fail = |e: seccompiler::Error| VmmError::Jail {
            step: "installing the seccomp filter",
            detail: format!("{} thread: {e}", kind.name()),
        };
        let program = self.program(kind).ok_or_else(|| VmmError::Jail {
            step: "installing the seccomp filter",
            detail: format!("{} thread: no filter compiled for it", kind.name()),
        })?;
        seccompiler::apply_filter(&self.kill_switch).map_err(fail)?;
        seccompiler::apply_filter(program).map_err(fail)
    }
}

fn jail_err(kind: ThreadKind, e: impl std::fmt::Display) -> VmmError {
    VmmError::Jail {
        step: "building the seccomp filters",
        detail: format!("{} thread: {e}", kind.name()),
    }
}

// ---------------------------------------------------------------------------
// The allowlists.

/// KVM's ioctl type.
const KVMIO: u64 = 0xAE;
/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = (KVMIO << 8) | 0x80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| VmmError::Jail {
        step: "building the seccomp filters",
        detail: e.to_string(),
    })
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule> {
    SeccompRule::new(conditions).map_err(|e| VmmError::Jail {
        step: "building the seccomp filters",
        detail: e.to_string(),
    })
}

/// `arg & mask == value`.
fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompCondition> {
    cond(arg, SeccompCmpOp::MaskedEq(mask), value)
}

/// `arg == value`.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition> {
    cond(arg, SeccompCmpOp::Eq, value)
}

fn allow(rules: &mut Rules, calls: &[libc::c_long]) {
    for &nr in calls {
        rules.insert(nr, Vec::new());
    }
}

/// What every thread may do: memory (never executable), futex waits and
/// wakes, signal return and masks, its own end, writing (logs), clocks.
fn common(rules: &mut Rules) -> Result<()> {
    allow(
        rules,
        &[
            libc::SYS_write,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_mremap,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_restart_syscall,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_sched_yield,
            libc::SYS_getpid,
            libc::SYS_gettid,
        ],
    );
    let no_exec = || masked(2, libc::PROT_EXEC as u64, 0);
    // Anonymous memory only (no file is mapped after setup), never executable.
    rules.insert(
        libc::SYS_mmap,
        vec![rule(vec![
            no_exec()?,
            masked(3, libc::MAP_ANONYMOUS as u64, libc::MAP_ANONYMOUS as u64)?,
        ])?],
    );
    rules.insert(libc::SYS_mprotect, vec![rule(vec![no_exec()?])?]);
    // FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET, with
    // or without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME.
    let cmd_mask =
        !u64::from((libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME) as u32) & 0xffff_ffff;
    rules.insert(
        libc::SYS_futex,
        [
            libc::FUTEX_WAIT,
            libc::FUTEX_WAKE,
            libc::FUTEX_WAIT_BITSET,
            libc::FUTEX_WAKE_BITSET,
        ]
        .iter()
        .map(|&op| rule(vec![masked(1, cmd_mask, op as u64)?]))
        .collect::<Result<_>>()?,
    );
    Ok(())
}

/// The device I/O of the event loop (and of the main thread's drain).
fn device_io(rules: &mut Rules) -> Result<()> {
    allow(
        rules,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
        ],
    );
    // virtio-net's send(2) to its peer: on a connected socket (no
    // address), never blocking, never SIGPIPE.
    let flags = crate::devices::virtio::net::stream::SEND_FLAGS as u64;
    rules.insert(
        libc::SYS_sendto,
        vec![rule(vec![eq(3, flags)?, eq(4, 0)?])?],
    );
    Ok(())
}

/// The vhost-user requests of the vCPU threads: `sendmsg` with
/// `MSG_NOSIGNAL` and `recvmsg` without flags, each on `sockets` alone, and
/// `close`. Nothing without sockets.
fn vhost_user(rules: &mut Rules, sockets: &[RawFd]) -> Result<()> {
    if sockets.is_empty() {
        // (An empty rule list would allow any arguments.)
        return Ok(());
    }
    let on_sockets = |flags: libc::c_int| -> Result<Vec<SeccompRule>> {
        sockets
            .iter()
            .map(|&fd| rule(vec![eq(0, socket_arg(fd)?)?, eq(2, flags as u64)?]))
            .collect()
    };
    rules.insert(libc::SYS_sendmsg, on_sockets(libc::MSG_NOSIGNAL)?);
    rules.insert(libc::SYS_recvmsg, on_sockets(0)?);
    allow(rules, &[libc::SYS_close]);
    Ok(())
}

/// The vhost-user relay: its two sockets (`recvmsg` without flags,
/// `sendmsg` with `MSG_NOSIGNAL`), `poll`, reading the kick eventfds,
/// `fstat`/`statx` (a memory table's files are checked before they are
/// mapped) and mapping them: shared mappings of a descriptor it holds
/// (the frontend's memfds), never executable; private file mappings stay
/// forbidden. It opens nothing and makes no descriptor.
fn relay_io(rules: &mut Rules) -> Result<()> {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
        ],
    );
    rules.insert(
        libc::SYS_sendmsg,
        vec![rule(vec![eq(2, libc::MSG_NOSIGNAL as u64)?])?],
    );
    rules.insert(libc::SYS_recvmsg, vec![rule(vec![eq(2, 0)?])?]);
    rules.insert(
        libc::SYS_fcntl,
        vec![rule(vec![eq(1, libc::F_GETFD as u64)?])?],
    );
    let shared = rule(vec![
        masked(2, libc::PROT_EXEC as u64, 0)?,
        masked(3, 0x03, libc::MAP_SHARED as u64)?,
    ])?;
    rules.entry(libc::SYS_mmap).or_default().push(shared);
    Ok(())
}

/// `shutdown(SHUT_RDWR)` of the vhost-user `sockets` (nothing without).
fn unstick_vhost_user(rules: &mut Rules, sockets: &[RawFd]) -> Result<()> {
    if sockets.is_empty() {
        return Ok(());
    }
    let list = sockets
        .iter()
        .map(|&fd| {
            rule(vec![
                eq(0, socket_arg(fd)?)?,
                eq(1, libc::SHUT_RDWR as u64)?,
            ])
        })
        .collect::<Result<_>>()?;
    rules.insert(libc::SYS_shutdown, list);
    Ok(())
}

fn socket_arg(fd: RawFd) -> Result<u64> {
    u64::try_from(fd).map_err(|_| VmmError::Jail {
        step: "building the seccomp filters",
        detail: format!("vhost-user socket descriptor {fd}"),
    })
}

/// The allowlist of `kind`: syscall number to the argument rules (empty:
/// any arguments).
pub fn rules(kind: ThreadKind, params: &FilterParams) -> Result<Rules> {
    let mut rules = Rules::new();
    common(&mut rules)?;
    match kind {
        ThreadKind::Vcpu => {
            rules.insert(
                libc::SYS_ioctl,
                [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
                    .iter()
                    .map(|&nr| rule(vec![eq(1, nr)?]))
                    .collect::<Result<_>>()?,
            );
            vhost_user(&mut rules, &params.vhost_user_sockets)?;
        }
        ThreadKind::EventLoop => device_io(&mut rules)?,
        ThreadKind::Control => {
            device_io(&mut rules)?;
            allow(
                &mut rules,
                &[
                    libc::SYS_rt_sigtimedwait,
                    libc::SYS_close,
                    libc::SYS_sched_getaffinity,
                ],
            );
            // Kicking this process's vCPU threads, nothing else.
            rules.insert(
                libc::SYS_tgkill,
                vec![rule(vec![
                    eq(0, params.pid as u64)?,
                    eq(2, params.kick_signal as u64)?,
                ])?],
            );
            unstick_vhost_user(&mut rules, &params.vhost_user_sockets)?;
            // Rust's debug check that a descriptor is open before closing it.
            rules.insert(
                libc::SYS_fcntl,
                vec![rule(vec![eq(1, libc::F_GETFD as u64)?])?],
            );
        }
        ThreadKind::Relay => relay_io(&mut rules)?,
    }
    Ok(rules)
}

// ---------------------------------------------------------------------------
// The SIGSYS reporter.

/// The `SIGSYS` part of `siginfo_t` on x86_64 (`_sigsys` in the kernel's
/// `union __sifields`, which starts at offset 16).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `si_code` of a seccomp `SIGSYS`.
const SYS_SECCOMP: libc::c_int = 1;

/// A fixed buffer that formats without allocating (signal-safe).
struct LineBuf {
    buf: [u8; 192],
    len: usize,
}

impl LineBuf {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut v = n.unsigned_abs();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report line for a forbidden `syscall` on a thread of kind `code`
/// (0: unknown) and `index`.
fn violation_line(code: u8, index: u32, syscall: i64, out: &mut LineBuf) {
    out.push(VIOLATION_PREFIX.as_bytes());
    match ThreadKind::ALL.iter().find(|k| k.code() == code) {
        Some(ThreadKind::Vcpu) => {
            out.push(b"vcpu");
            out.push_num(i64::from(index));
        }
        Some(k) => out.push(k.name().as_bytes()),
        None => out.push(b"unfiltered"),
    }
    out.push(b" thread made system call ");
    out.push_num(syscall);
    out.push(b", which its filter forbids; the VMM is stopped\n");
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Signal-safe work only: a const thread-local, a stack buffer, write
    // and _exit (exit_group).
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO
    // handler; for SIGSYS its union holds the _sigsys fields laid out as
    // SigsysInfo.
    let (code, syscall) = unsafe {
        let s = &*info.cast::<SigsysInfo>();
        (s.code, s.syscall)
    };
    let (kind, index) = THREAD.with(Cell::get);
    let mut line = LineBuf {
        buf: [0; 192],
        len: 0,
    };
    if code == SYS_SECCOMP {
        violation_line(kind, index, i64::from(syscall), &mut line);
    } else {
        line.push(b"amphi vmm: SIGSYS not from seccomp; the VMM is stopped\n");
    }
    // SAFETY: write(2) of our own stack buffer, then exit_group with the
    // kill switch's status (the kernel kills the process with SIGSYS),
    // and _exit should there be no kill switch: all async-signal-safe and
    // allowed by every filter.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, KILL_SWITCH);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Installs the `SIGSYS` handler that reports a filter violation and ends
/// the process (see the module documentation). Call it before installing
/// any filter: `rt_sigaction` is not in the lists.
pub fn install_sigsys_reporter() -> Result<()> {
    // SAFETY: a zeroed sigaction is valid; we set the handler, SA_SIGINFO
    // and an empty mask (with SIGSYS itself blocked while it runs).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(VmmError::Jail {
            step: "installing the SIGSYS handler",
            detail: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// A violation line [`install_sigsys_reporter`]'s handler wrote: the
/// thread and the syscall number. For the host side, which reads the
/// VMM's stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// `vcpu0`, `virtio-events`, `control`.
    pub thread: String,
    /// The system call number (x86_64).
    pub syscall: i64,
}

impl Violation {
    /// The last violation line in `stderr`, if any.
    pub fn find(stderr: &str) -> Option<Violation> {
        stderr.lines().rev().find_map(|line| {
            let rest = line.strip_prefix(VIOLATION_PREFIX)?;
            let (thread, rest) = rest.split_once(" thread made system call ")?;
            let (nr, _) = rest.split_once(',')?;
            Some(Violation {
                thread: thread.to_string(),
                syscall: nr.parse().ok()?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_lines_round_trip() {
        let mut line = LineBuf {
            buf: [0; 192],
            len: 0,
        };
        violation_line(ThreadKind::Vcpu.code(), 3, 59, &mut line);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "amphi vmm: seccomp: the vcpu3 thread made system call 59, which its filter forbids; the VMM is stopped\n"
        );
        let v = Violation::find(&format!("noise\n{text}")).unwrap();
        assert_eq!(
            v,
            Violation {
                thread: "vcpu3".into(),
                syscall: 59
            }
        );
        let mut line = LineBuf {
            buf: [0; 192],
            len: 0,
        };
        violation_line(ThreadKind::EventLoop.code(), 0, 41, &mut line);
        let v = Violation::find(std::str::from_utf8(&line.buf[..line.len]).unwrap()).unwrap();
        assert_eq!((v.thread.as_str(), v.syscall), ("virtio-events", 41));
        assert_eq!(Violation::find("amphi vmm: guest reset"), None);
    }

    #[test]
    fn only_vcpu_threads_get_the_vhost_user_calls_and_only_with_sockets() {
        let none = FilterParams::current();
        let some = FilterParams {
            vhost_user_sockets: vec![5, 9],
            ..FilterParams::current()
        };
        let calls = [libc::SYS_sendmsg, libc::SYS_recvmsg];
        let vcpu = rules(ThreadKind::Vcpu, &some).unwrap();
        for nr in calls {
            // One rule per socket: never an empty (any-argument) list.
            assert_eq!(vcpu.get(&nr).map(Vec::len), Some(2), "syscall {nr}");
        }
        assert!(vcpu.contains_key(&libc::SYS_close));
        let bare = rules(ThreadKind::Vcpu, &none).unwrap();
        assert!(!calls.iter().any(|nr| bare.contains_key(nr)));
        assert!(!bare.contains_key(&libc::SYS_close));
        for kind in [ThreadKind::EventLoop, ThreadKind::Control] {
            let r = rules(kind, &some).unwrap();
            assert!(!calls.iter().any(|nr| r.contains_key(nr)), "{kind:?}");
        }
        // Shutting a stuck backend's socket down: the control threads only.
        let shutdown = |k, p| rules(k, p).unwrap().get(&libc::SYS_shutdown).map(Vec::len);
        assert_eq!(shutdown(ThreadKind::Control, &some), Some(2));
        assert_eq!(shutdown(ThreadKind::Control, &none), None);
        assert_eq!(shutdown(ThreadKind::Vcpu, &some), None);
        assert_eq!(shutdown(ThreadKind::EventLoop, &some), None);
        SeccompFilters::new(some).unwrap();
    }

    #[test]
    fn ioctl_numbers_are_kvms() {
        assert_eq!(KVM_RUN, 0xae80);
        // As <linux/kvm.h> computes them on x86_64.
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn every_filter_compiles_and_keeps_the_dangerous_calls_out() {
        let params = FilterParams::current();
        SeccompFilters::for_kinds(params.clone(), &ThreadKind::ALL).unwrap();
        // The VMM compiles its three kinds, not the relay's (and applying
        // a kind not compiled is an error, not an unfiltered thread).
        let vmm = SeccompFilters::new(params.clone()).unwrap();
        assert!(SeccompFilters::VMM
            .iter()
            .all(|&k| vmm.program(k).is_some()));
        assert!(vmm.program(ThreadKind::Relay).is_none());
        for kind in ThreadKind::ALL {
            let r = rules(kind, &params).unwrap();
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_openat2,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_kill,
                libc::SYS_rt_sigaction,
                libc::SYS_seccomp,
                libc::SYS_prctl,
                libc::SYS_process_vm_writev,
                libc::SYS_bpf,
                libc::SYS_userfaultfd,
                libc::SYS_pkey_mprotect,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows syscall {nr}");
            }
            // Write, the SIGSYS reporter's other call, is everywhere.
            assert!(r.contains_key(&libc::SYS_write) && r.contains_key(&libc::SYS_exit_group));
        }
        let ioctl_allowed = |k| rules(k, &params).unwrap().contains_key(&libc::SYS_ioctl);
        assert!(ioctl_allowed(ThreadKind::Vcpu));
        assert!(!ioctl_allowed(ThreadKind::EventLoop));
        assert!(!ioctl_allowed(ThreadKind::Control));
    }
}
