//! seccomp: OCI profiles compiled to classic BPF in-process, with
//! first-match semantics (rules are checked in order; the first whose
//! syscall and argument conditions match decides), and docker's default
//! profile.

use super::syscalls;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use std::os::fd::{FromRawFd, OwnedFd};

/// A seccomp profile that cannot be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp rule too large for a BPF jump")]
    JumpTooFar,
    #[error("seccomp program has {0} instructions (max 4096)")]
    TooLong(usize),
    #[error("seccomp argument index {0} out of range (0-5)")]
    ArgIndex(usize),
    #[error(
        "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action \
         (the runtime's own calls would wait for the listener)"
    )]
    NotifyDefault,
    #[error(
        "linux.seccomp.syscalls[{0}].action: SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath"
    )]
    NotifyWithoutListener(usize),
    #[error(
        "linux.seccomp.syscalls[{index}]: SCMP_ACT_NOTIFY cannot be used for {name:?}, \
         which passes the listener to the runtime"
    )]
    NotifyOnSetupCall { index: usize, name: String },
    #[error("linux.seccomp.flags: unsupported flag {0}")]
    Flag(String),
    #[error("no_new_privs: {0}")]
    NoNewPrivs(#[source] rustix::io::Errno),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
    #[error("{origin}: {source}")]
    Profile {
        origin: String,
        source: serde_path_to_error::Error<serde_json::Error>,
    },
    #[error("{origin}: invalid profile at `{path}`: {source}")]
    InvalidProfile {
        origin: String,
        path: String,
        source: serde_json::Error,
    },
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// An instruction with symbolic jump targets, resolved at the end.
#[derive(Clone, Copy)]
enum Ins {
    Stmt(u16, u32),
    Jump {
        code: u16,
        k: u32,
        jt: usize,
        jf: usize,
    },
    Label(usize),
}

struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.ins.push(Ins::Stmt(code, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: usize, jf: usize) {
        self.ins.push(Ins::Jump { code, k, jt, jf });
    }
    fn place(&mut self, l: usize) {
        self.ins.push(Ins::Label(l));
    }
    /// Resolves labels into relative offsets (0 = next instruction).
    fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut pos = std::collections::HashMap::new();
        let mut n = 0usize;
        for i in &self.ins {
            match i {
                Ins::Label(l) => {
                    pos.insert(*l, n);
                }
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for i in &self.ins {
            match *i {
                Ins::Label(_) => {}
                Ins::Stmt(code, k) => out.push(libc::sock_filter {
                    code,
                    jt: 0,
                    jf: 0,
                    k,
                }),
                Ins::Jump { code, k, jt, jf } => {
                    let here = out.len() + 1;
                    let rel = |l: usize| -> Result<u8, SeccompError> {
                        let t = if l == 0 { here } else { pos[&l] };
                        u8::try_from(t - here).map_err(|_| SeccompError::JumpTooFar)
                    };
                    out.push(libc::sock_filter {
                        code,
                        jt: rel(jt)?,
                        jf: rel(jf)?,
                        k,
                    });
                }
            }
        }
        if out.len() > 4096 {
            return Err(SeccompError::TooLong(out.len()));
        }
        Ok(out)
    }
}

/// Label 0 means "the next instruction".
const NEXT: usize = 0;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> u32 {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | errno,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | errno,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActNotify => RET_USER_NOTIF,
    }
}

fn arg_check(asm: &mut Asm, a: &LinuxSeccompArg, fail: usize) -> Result<(), SeccompError> {
    if a.index() > 5 {
        return Err(SeccompError::ArgIndex(a.index()));
    }
    let lo_off = 16 + 8 * a.index() as u32;
    let hi_off = lo_off + 4;
    let v = a.value();
    let (vh, vl) = ((v >> 32) as u32, v as u32);
    let pass = asm.label();
    use LinuxSeccompOperator as Op;
    match a.op() {
        Op::ScmpCmpEq => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JEQ_K, vh, NEXT, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JEQ_K, vl, pass, fail);
        }
        Op::ScmpCmpNe => {
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JEQ_K, vh, NEXT, pass);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(JEQ_K, vl, fail, pass);
        }
        Op::ScmpCmpMaskedEq => {
            let want = a.value_two().unwrap_or(0);
            asm.stmt(LD_W_ABS, hi_off);
            asm.stmt(AND_K, vh);
            asm.jump(JEQ_K, (want >> 32) as u32, NEXT, fail);
            asm.stmt(LD_W_ABS, lo_off);
            asm.stmt(AND_K, vl);
            asm.jump(JEQ_K, want as u32, pass, fail);
        }
        // 64-bit unsigned comparisons from two 32-bit halves.
        op @ (Op::ScmpCmpGt | Op::ScmpCmpGe | Op::ScmpCmpLt | Op::ScmpCmpLe) => {
            // GT/GE computed directly; LT = !GE, LE = !GT.
            let (lo_code, t, f) = match op {
                Op::ScmpCmpGt => (JGT_K, pass, fail),
                Op::ScmpCmpGe => (JGE_K, pass, fail),
                Op::ScmpCmpLt => (JGE_K, fail, pass),
                _ => (JGT_K, fail, pass),
            };
            asm.stmt(LD_W_ABS, hi_off);
            asm.jump(JGT_K, vh, t, NEXT);
            asm.jump(JEQ_K, vh, NEXT, f);
            asm.stmt(LD_W_ABS, lo_off);
            asm.jump(lo_code, vl, t, f);
        }
    }
    asm.place(pass);
    Ok(())
}

/// The system call the setup passes the notification listener to the
/// runtime with, after the filter is in place: it must not wait on the
/// listener it is passing (as runc refuses `write`, its own).
const SETUP_AFTER_FILTER: &[&str] = &["sendmsg"];

/// SCMP_ACT_NOTIFY needs a listener (`listenerPath`) to be answered, and
/// must not catch the call that hands that listener over.
fn check_notify(s: &LinuxSeccomp) -> Result<(), SeccompError> {
    let notify = |a| a == LinuxSeccompAction::ScmpActNotify;
    if notify(s.default_action()) {
        return Err(SeccompError::NotifyDefault);
    }
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        if !notify(rule.action()) {
            continue;
        }
        if s.listener_path().is_none() {
            return Err(SeccompError::NotifyWithoutListener(i));
        }
        if let Some(name) = rule
            .names()
            .iter()
            .find(|n| SETUP_AFTER_FILTER.contains(&n.as_str()))
        {
            return Err(SeccompError::NotifyOnSetupCall {
                index: i,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Compiles a profile for x86_64.
pub fn compile(s: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, SeccompError> {
    check_notify(s)?;
    let default = action(s.default_action(), s.default_errno_ret());
    // Foreign architectures (i386 via int 0x80, x32) have other numbers:
    // they get the default action, or ENOSYS when the default allows.
    let foreign = if default == RET_ALLOW {
        RET_ERRNO | libc::ENOSYS as u32
    } else {
        default
    };
    let mut asm = Asm {
        ins: Vec::new(),
        labels: 0,
    };
    // Conditional jumps only reach 255 instructions ahead: answer foreign
    // calls right here rather than at the end.
    let native = asm.label();
    asm.stmt(LD_W_ABS, 4);
    asm.jump(JEQ_K, AUDIT_ARCH_X86_64, native, NEXT);
    asm.stmt(RET_K, foreign);
    asm.place(native);
    let not_x32 = asm.label();
    asm.stmt(LD_W_ABS, 0);
    asm.jump(JGE_K, X32_SYSCALL_BIT, NEXT, not_x32);
    asm.stmt(RET_K, foreign);
    asm.place(not_x32);
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        for name in rule.names() {
            // Names unknown on x86_64 (other architectures' calls) are
            // skipped, as libseccomp does.
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            let args = rule.args().clone().unwrap_or_default();
            let skip = asm.label();
            asm.jump(JEQ_K, nr as u32, NEXT, skip);
            if args.is_empty() {
                asm.stmt(RET_K, act);
            } else {
                let fail = asm.label();
                for a in &args {
                    arg_check(&mut asm, a, fail)?;
                }
                asm.stmt(RET_K, act);
                asm.place(fail);
                asm.stmt(LD_W_ABS, 0);
            }
            asm.place(skip);
        }
    }
    asm.stmt(RET_K, default);
    asm.finish()
}

/// Compiles and installs a profile in the calling thread: the last step
/// before exec when the spec asks for no_new_privs, else before the
/// capabilities are dropped (without no_new_privs it needs CAP_SYS_ADMIN).
///
/// With `listenerPath`, the filter gets a user-notification listener
/// (`SECCOMP_FILTER_FLAG_NEW_LISTENER`), returned for the runtime to pass on.
pub fn install(s: &LinuxSeccomp) -> Result<Option<OwnedFd>, SeccompError> {
    let prog = compile(s)?;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        let name = serde_json::to_value(f)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        flags |= match name.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            other => return Err(SeccompError::Flag(other.into())),
        };
    }
    let listener = s.listener_path().is_some();
    if listener {
        flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    }
    // The listener's descriptor (close-on-exec, as the kernel makes it)
    // when asked for, else nothing.
    let done = |r: libc::c_long| -> Option<OwnedFd> {
        // SAFETY: with NEW_LISTENER, a successful seccomp(2) returns a new
        // descriptor that nobody else owns.
        (listener && r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as i32) })
    };
    // Without no_new_privs, installing needs CAP_SYS_ADMIN; set it for the
    // filter if we lack that (runc does the same).
    // SAFETY: seccomp(SET_MODE_FILTER) with a valid program that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EACCES) {
            rustix::thread::set_no_new_privs(true).map_err(SeccompError::NoNewPrivs)?;
            // SAFETY: as above: the same program, alive for the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    1,
                    flags,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if r >= 0 {
                return Ok(done(r));
            }
        }
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(done(r))
}

/// Parses a docker/OCI seccomp JSON profile (docker's format: `defaultAction`,
/// `syscalls[].names/action/args`, `archMap` ignored).
pub fn parse_profile(data: &[u8], origin: &str) -> Result<LinuxSeccomp, SeccompError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    let v: serde_json::Value =
        serde_path_to_error::deserialize(de).map_err(|source| SeccompError::Profile {
            origin: origin.into(),
            source,
        })?;
    // docker profiles carry extra keys (archMap, includes/excludes): keep
    // only what the OCI format has, honouring docker's minKernel/caps
    // filters by dropping conditional rules amphi cannot evaluate.
    let mut oci = serde_json::Map::new();
    for k in [
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "syscalls",
    ] {
        if let Some(x) = v.get(k) {
            oci.insert(k.to_string(), x.clone());
        }
    }
    if let Some(sys) = oci.get_mut("syscalls").and_then(|s| s.as_array_mut()) {
        for r in sys.iter_mut() {
            if let Some(o) = r.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "names" | "action" | "errnoRet" | "args"));
            }
        }
    }
    let de = serde_json::Value::Object(oci);
    serde_path_to_error::deserialize(de).map_err(
        |e: serde_path_to_error::Error<serde_json::Error>| SeccompError::InvalidProfile {
            origin: origin.into(),
            path: e.path().to_string(),
            source: e.into_inner(),
        },
    )
}

/// System calls docker's default profile refuses unless a capability
/// grants them: (capability, calls).
const GATED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "adjtimex",
            "clock_adjtime",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    (
        "CAP_DAC_READ_SEARCH",
        &["open_by_handle_at", "name_to_handle_at"],
    ),
];

/// Never allowed by docker's default profile.
const DENIED: &[&str] = &[
    "add_key",
    "create_module",
    "get_kernel_syms",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "nfsservctl",
    "pivot_root",
    "query_module",
    "request_key",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "afs_syscall",
    "tuxcall",
    "security",
    "putpmsg",
    "getpmsg",
    "vserver",
    "lookup_dcookie",
    // io_uring bypasses seccomp for the operations it performs, and has
    // been a steady source of kernel exploits (docker denies it since 25.0).
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "personality",
    "clone",
    "clone3",
    "socket",
];

const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn rule(
    names: &[&str],
    act: LinuxSeccompAction,
    args: Vec<LinuxSeccompArg>,
    errno: Option<u32>,
) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(act);
    if !args.is_empty() {
        b = b.args(args);
    }
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    b.build().expect("valid syscall rule")
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> LinuxSeccompArg {
    let mut b = oci_spec::runtime::LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v2) = value_two {
        b = b.value_two(v2);
    }
    b.build().expect("valid seccomp arg")
}

/// docker's default profile semantics for a process with capabilities
/// `caps`: everything allowed except kernel-wide and escape-prone calls,
/// some of which a capability grants back; `clone` without new namespaces
/// (unless CAP_SYS_ADMIN); `clone3` answers ENOSYS so libc falls back to
/// clone; `personality` only for the harmless personas.
pub fn docker_default(caps: &[String]) -> LinuxSeccomp {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut denied: Vec<&str> = DENIED.to_vec();
    for (cap, calls) in GATED {
        if !has(cap) {
            denied.extend_from_slice(calls);
        }
    }
    let allowed: Vec<&str> = syscalls::SYSCALLS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !denied.contains(n))
        .collect();
    let mut rules = vec![rule(
        &allowed,
        LinuxSeccompAction::ScmpActAllow,
        vec![],
        None,
    )];
    for p in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(rule(
            &["personality"],
            LinuxSeccompAction::ScmpActAllow,
            vec![arg(0, p, None, LinuxSeccompOperator::ScmpCmpEq)],
            None,
        ));
    }
    // socket: everything but AF_VSOCK (40), as docker.
    rules.push(rule(
        &["socket"],
        LinuxSeccompAction::ScmpActAllow,
        vec![arg(0, 40, None, LinuxSeccompOperator::ScmpCmpNe)],
        None,
    ));
    if has("CAP_SYS_ADMIN") {
        rules.push(rule(
            &["clone", "clone3"],
            LinuxSeccompAction::ScmpActAllow,
            vec![],
            None,
        ));
    } else {
        rules.push(rule(
            &["clone"],
            LinuxSeccompAction::ScmpActAllow,
            vec![arg(
                0,
                CLONE_NAMESPACES,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
            None,
        ));
        rules.push(rule(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            vec![],
            Some(libc::ENOSYS as u32),
        ));
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()
        .expect("valid default profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the BPF program on a synthetic seccomp_data, as the kernel would.
    fn eval(prog: &[libc::sock_filter], nr: i32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                AND_K => acc &= i.k,
                RET_K => return i.k,
                JEQ_K | JGT_K | JGE_K => {
                    let t = match i.code {
                        JEQ_K => acc == i.k,
                        JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    fn nr(n: &str) -> i32 {
        syscalls::number(n).unwrap() as i32
    }

    #[test]
    fn docker_default_semantics() {
        let caps: Vec<String> = super::super::caps::DOCKER_DEFAULT
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = compile(&docker_default(&caps)).unwrap();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        assert_eq!(eval(&p, nr("read"), [0; 6]), RET_ALLOW);
        assert_eq!(eval(&p, nr("chroot"), [0; 6]), RET_ALLOW);
        assert_eq!(eval(&p, nr("mount"), [0; 6]), eperm);
        assert_eq!(eval(&p, nr("kexec_load"), [0; 6]), eperm);
        assert_eq!(
            eval(&p, nr("clone"), [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            eval(&p, nr("clone"), [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            eval(&p, nr("clone3"), [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(eval(&p, nr("personality"), [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            eval(&p, nr("personality"), [0x0040_0000, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            eval(&p, nr("socket"), [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(eval(&p, nr("socket"), [40, 0, 0, 0, 0, 0]), eperm);
        // A capability grants its calls back.
        let mut more = caps.clone();
        more.push("CAP_SYS_ADMIN".into());
        let p = compile(&docker_default(&more)).unwrap();
        assert_eq!(eval(&p, nr("mount"), [0; 6]), RET_ALLOW);
        assert_eq!(
            eval(&p, nr("clone"), [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
    }

    #[test]
    fn sixty_four_bit_comparisons() {
        for (op, v, cases) in [
            (
                LinuxSeccompOperator::ScmpCmpGt,
                0x1_0000_0005u64,
                [
                    (0x1_0000_0006u64, true),
                    (0x1_0000_0005, false),
                    (0x2_0000_0000, true),
                    (0xffff_ffff, false),
                ],
            ),
            (
                LinuxSeccompOperator::ScmpCmpLe,
                0x1_0000_0005u64,
                [
                    (0x1_0000_0006u64, false),
                    (0x1_0000_0005, true),
                    (0x2_0000_0000, false),
                    (0xffff_ffff, true),
                ],
            ),
            (
                LinuxSeccompOperator::ScmpCmpNe,
                7,
                [(7, false), (8, true), (0x1_0000_0007, true), (0, true)],
            ),
            (
                LinuxSeccompOperator::ScmpCmpLt,
                7,
                [(6, true), (7, false), (0x1_0000_0000, false), (0, true)],
            ),
        ] {
            let profile = LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![rule(
                    &["write"],
                    LinuxSeccompAction::ScmpActErrno,
                    vec![arg(2, v, None, op)],
                    Some(1),
                )])
                .build()
                .unwrap();
            let p = compile(&profile).unwrap();
            for (x, hit) in cases {
                let r = eval(&p, nr("write"), [0, 0, x, 0, 0, 0]);
                assert_eq!(r == (RET_ERRNO | 1), hit, "{op:?} {v:#x} vs {x:#x}");
            }
            assert_eq!(eval(&p, nr("read"), [0, 0, v + 1, 0, 0, 0]), RET_ALLOW);
        }
    }

    #[test]
    fn parses_docker_json_and_rejects_bad_profiles() {
        let json = br#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_X86_64"}],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"comment":"x","includes":{}}]}"#;
        let p = parse_profile(json, "profile.json").unwrap();
        let prog = compile(&p).unwrap();
        assert_eq!(eval(&prog, nr("mkdirat"), [0; 6]), RET_ERRNO | 13);
        let bad = br#"{"defaultAction":"SCMP_ACT_NOPE"}"#;
        let e = parse_profile(bad, "profile.json").unwrap_err().to_string();
        assert!(
            e.starts_with("profile.json: invalid profile at `defaultAction`: "),
            "{e}"
        );
    }

    #[test]
    fn notify_needs_a_listener_and_spares_the_handover() {
        let spec = |v: serde_json::Value| -> LinuxSeccomp { serde_json::from_value(v).unwrap() };
        let with = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
        }));
        let prog = compile(&with).unwrap();
        assert_eq!(eval(&prog, nr("mkdir"), [0; 6]), RET_USER_NOTIF);
        assert_eq!(eval(&prog, nr("rmdir"), [0; 6]), RET_ALLOW);

        let without = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
        }));
        let e = compile(&without).unwrap_err().to_string();
        assert!(
            e.contains("syscalls[0].action") && e.contains("listenerPath"),
            "{e}"
        );

        let handover = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"},
                {"names": ["write", "sendmsg"], "action": "SCMP_ACT_NOTIFY"},
            ],
        }));
        let e = compile(&handover).unwrap_err().to_string();
        assert!(
            e.contains("syscalls[1]") && e.contains("\"sendmsg\""),
            "{e}"
        );

        let default = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_NOTIFY",
            "listenerPath": "/run/agent.sock",
        }));
        assert!(matches!(
            compile(&default).unwrap_err(),
            SeccompError::NotifyDefault
        ));
    }
}
