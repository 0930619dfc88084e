//! Device access control: which device nodes a container may create
//! (mknod), read and write.
//!
//! Default deny, as runc and crun: a container gets the spec's
//! `linux.resources.devices` rules applied on top of "deny everything", and
//! then the devices every container has whatever the spec says (runc's
//! allowlist: null, zero, full, random, urandom, tty, console, ptmx and the
//! ptys, tun, and mknod of any node; a node it creates stays unusable unless
//! a rule allows it). Later rules win over earlier ones.
//!
//! On cgroup v1 the rules go to the `devices` controller; on cgroup v2
//! they become a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup (what runc and crun do), generated here.

use super::effects::Effects;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A device rule that is not valid, or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("linux.resources.devices[{index}]: {what} {value} is not a device number")]
    Number {
        index: usize,
        what: &'static str,
        value: i64,
    },
    #[error("linux.resources.devices[{index}]: access {access:?}: only r, w and m are allowed")]
    Access { index: usize, access: String },
    /// A cgroup v1 devices file could not be opened.
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device rule {line:?} in {}: {source}", path.display())]
    Write {
        line: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "loading the device-control BPF program: {source}{}",
        verifier_log(verifier)
    )]
    Load {
        source: std::io::Error,
        /// What the verifier said, if anything.
        verifier: String,
    },
    #[error("cgroup {}: {source}", dir.display())]
    Cgroup {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("attaching the device-control BPF program to cgroup {}: {source}", dir.display())]
    Attach {
        dir: PathBuf,
        source: std::io::Error,
    },
}

fn verifier_log(v: &str) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {v})")
    }
}

/// `BPF_DEVCG_ACC_*`: the access bits, as the BPF context and our rules use them.
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;
const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

/// A device type a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    All,
    Char,
    Block,
}

/// One rule, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Kind,
    /// None: any.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// MKNOD | READ | WRITE bits.
    pub access: u8,
}

impl fmt::Display for Rule {
    /// The cgroup v1 `devices.allow` / `devices.deny` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::All => return write!(f, "a"),
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        let num = |n: Option<u32>| n.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        write!(
            f,
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            access_str(self.access)
        )
    }
}

/// `rwm` letters for access bits.
fn access_str(access: u8) -> String {
    [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')]
        .iter()
        .filter(|(bit, _)| access & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

const fn allow(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
    Rule {
        allow: true,
        kind,
        major,
        minor,
        access,
    }
}

/// The devices every container may use, whatever its spec says (runc's
/// `AllowedDevices`, docker's defaults).
pub const DEFAULT_ALLOWED: &[Rule] = &[
    // mknod of any node (using it still needs a rule)
    allow(Kind::Char, None, None, MKNOD),
    allow(Kind::Block, None, None, MKNOD),
    allow(Kind::Char, Some(1), Some(3), ALL_ACCESS), // /dev/null
    allow(Kind::Char, Some(1), Some(5), ALL_ACCESS), // /dev/zero
    allow(Kind::Char, Some(1), Some(7), ALL_ACCESS), // /dev/full
    allow(Kind::Char, Some(1), Some(8), ALL_ACCESS), // /dev/random
    allow(Kind::Char, Some(1), Some(9), ALL_ACCESS), // /dev/urandom
    allow(Kind::Char, Some(5), Some(0), ALL_ACCESS), // /dev/tty
    allow(Kind::Char, Some(5), Some(1), ALL_ACCESS), // /dev/console
    allow(Kind::Char, Some(5), Some(2), ALL_ACCESS), // /dev/ptmx
    allow(Kind::Char, Some(136), None, ALL_ACCESS),  // /dev/pts/*
    allow(Kind::Char, Some(10), Some(200), ALL_ACCESS), // /dev/net/tun
];

/// The rule that starts every list: deny everything.
pub const DENY_ALL: Rule = Rule {
    allow: false,
    kind: Kind::All,
    major: None,
    minor: None,
    access: ALL_ACCESS,
};

/// The default rules as spec entries, for the spec `amphi run` builds.
pub fn default_spec_rules() -> Vec<LinuxDeviceCgroup> {
    std::iter::once(&DENY_ALL)
        .chain(DEFAULT_ALLOWED)
        .map(|r| {
            let mut b = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                .allow(r.allow)
                .typ(match r.kind {
                    Kind::All => LinuxDeviceType::A,
                    Kind::Char => LinuxDeviceType::C,
                    Kind::Block => LinuxDeviceType::B,
                })
                .access(access_str(r.access));
            if let Some(m) = r.major {
                b = b.major(m as i64);
            }
            if let Some(m) = r.minor {
                b = b.minor(m as i64);
            }
            b.build().expect("valid device rule")
        })
        .collect()
}

/// A spec rule, validated. `None` for rules the device controller has no
/// say over (FIFOs).
pub fn parse(i: usize, r: &LinuxDeviceCgroup) -> Result<Option<Rule>, DevicesError> {
    let kind = match r.typ().unwrap_or_default() {
        LinuxDeviceType::A => Kind::All,
        LinuxDeviceType::C | LinuxDeviceType::U => Kind::Char,
        LinuxDeviceType::B => Kind::Block,
        LinuxDeviceType::P => return Ok(None),
    };
    let num = |n: Option<i64>, what| -> Result<Option<u32>, DevicesError> {
        match n {
            None | Some(-1) => Ok(None),
            Some(value) => u32::try_from(value)
                .map(Some)
                .map_err(|_| DevicesError::Number {
                    index: i,
                    what,
                    value,
                }),
        }
    };
    let access = match r.access().as_deref() {
        None | Some("") => ALL_ACCESS,
        Some(s) => {
            let mut a = 0;
            for c in s.chars() {
                a |= match c {
                    'r' => READ,
                    'w' => WRITE,
                    'm' => MKNOD,
                    _ => {
                        return Err(DevicesError::Access {
                            index: i,
                            access: s.into(),
                        })
                    }
                };
            }
            a
        }
    };
    Ok(Some(Rule {
        allow: r.allow(),
        kind,
        major: num(r.major(), "major")?,
        minor: num(r.minor(), "minor")?,
        access,
    }))
}

/// What applies to a container whose spec has `spec_rules`: deny all, the
/// spec's rules, then [`DEFAULT_ALLOWED`].
pub fn effective(spec_rules: Option<&[LinuxDeviceCgroup]>) -> Result<Vec<Rule>, DevicesError> {
    let mut out = vec![DENY_ALL];
    for (i, r) in spec_rules.unwrap_or_default().iter().enumerate() {
        if let Some(r) = parse(i, r)? {
            out.push(r);
        }
    }
    out.extend_from_slice(DEFAULT_ALLOWED);
    Ok(compact(out))
}

/// The same decisions with fewer rules (each one is a cgroup write or a
/// block of the BPF program, on the path of every start): a rule that
/// matches everything overrides all rules before it, and of identical
/// rules only the last one counts.
fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let start = rules
        .iter()
        .rposition(|r| {
            *r == DENY_ALL
                || *r
                    == Rule {
                        allow: true,
                        ..DENY_ALL
                    }
        })
        .unwrap_or(0);
    let tail = &rules[start..];
    tail.iter()
        .enumerate()
        .filter(|(i, r)| !tail[i + 1..].contains(r))
        .map(|(_, r)| *r)
        .collect()
}

/// Whether `rules` (last match wins, nothing matching: denied) let a
/// process have `access` to a device: the semantics both backends
/// implement, the oracle of the tests that ask the kernel.
#[cfg(test)]
pub fn allows(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| matches(r, kind, major, minor, access))
        .is_some_and(|r| r.allow)
}

#[cfg(test)]
fn matches(r: &Rule, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
    (r.kind == Kind::All || r.kind == kind)
        && access & !r.access == 0
        && r.major.is_none_or(|m| m == major)
        && r.minor.is_none_or(|m| m == minor)
}

/// Applies `rules` to a cgroup v1 `devices` directory.
pub fn apply_v1(fx: &impl Effects, dir: &Path, rules: &[Rule]) -> Result<(), DevicesError> {
    use std::io::Write;
    // One descriptor per file, one write per rule (the kernel takes each
    // write as one rule): this is on the path of every container start.
    let (mut allow, mut deny) = (None, None);
    for r in rules {
        let (slot, name) = if r.allow {
            (&mut allow, "devices.allow")
        } else {
            (&mut deny, "devices.deny")
        };
        let file = dir.join(name);
        let f = match slot {
            Some(f) => f,
            None => slot.insert(fx.open_write(&file).map_err(|source| DevicesError::Open {
                path: file.clone(),
                source,
            })?),
        };
        let line = r.to_string();
        f.write_all(line.as_bytes())
            .map_err(|source| DevicesError::Write {
                line,
                path: file,
                source,
            })?;
    }
    Ok(())
}

// ---- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program ----

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ALU64_MOV_X: u8 = 0xbf;
const BPF_ALU64_MOV_K: u8 = 0xb7;
const BPF_ALU64_AND_K: u8 = 0x57;
const BPF_ALU64_RSH_K: u8 = 0x77;
const BPF_JMP_JNE_K: u8 = 0x55;
const BPF_JMP_EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `BPF_DEVCG_DEV_*`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// The program for `rules`: registers r2 = access, r3 = type, r4 = major,
/// r5 = minor; then one block per rule, last rule first, each returning
/// its verdict on a match; nothing matching returns 0 (denied).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
        insn(BPF_LDX_MEM_W, 2, 1, 0, 0),
        insn(BPF_ALU64_MOV_X, 3, 2, 0, 0),
        insn(BPF_ALU64_AND_K, 3, 0, 0, 0xffff),
        insn(BPF_ALU64_RSH_K, 2, 0, 0, 16),
        insn(BPF_LDX_MEM_W, 4, 1, 4, 0),
        insn(BPF_LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Conditions: each jumps past the block when it does not hold.
        let mut conds: Vec<Vec<Insn>> = Vec::new();
        match r.kind {
            Kind::All => {}
            Kind::Char => conds.push(vec![insn(BPF_JMP_JNE_K, 3, 0, 0, DEV_CHAR)]),
            Kind::Block => conds.push(vec![insn(BPF_JMP_JNE_K, 3, 0, 0, DEV_BLOCK)]),
        }
        if r.access & ALL_ACCESS != ALL_ACCESS {
            // Every requested bit must be one the rule grants.
            conds.push(vec![
                insn(BPF_ALU64_MOV_X, 6, 2, 0, 0),
                insn(BPF_ALU64_AND_K, 6, 0, 0, i32::from(!r.access & ALL_ACCESS)),
                insn(BPF_JMP_JNE_K, 6, 0, 0, 0),
            ]);
        }
        if let Some(m) = r.major {
            conds.push(vec![insn(BPF_JMP_JNE_K, 4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            conds.push(vec![insn(BPF_JMP_JNE_K, 5, 0, 0, m as i32)]);
        }
        let unconditional = conds.is_empty();
        let mut block: Vec<Insn> = conds.into_iter().flatten().collect();
        block.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(BPF_JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == BPF_JMP_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
        if unconditional {
            // It decides everything; what comes before it in the list
            // (after it here) could never run, which the verifier refuses.
            return p;
        }
    }
    p.push(insn(BPF_ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(BPF_JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` for BPF_PROG_LOAD (the fields we use, zero padded).
#[repr(C, align(8))]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    pad: [u8; 64],
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C, align(8))]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    pad: [u8; 44],
}

/// Loads the program for `rules`.
pub fn load(rules: &[Rule]) -> Result<OwnedFd, DevicesError> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16 * 1024];
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"amphi_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        pad: [0; 64],
    };
    // SAFETY: bpf(BPF_PROG_LOAD) with a fully initialised attr whose
    // pointers (program, license, log buffer) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        let verifier = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .trim()
            .to_string();
        return Err(DevicesError::Load { source, verifier });
    }
    // SAFETY: BPF_PROG_LOAD succeeded (fd >= 0), so `fd` is a new descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the program for `rules` to the cgroup v2 directory `dir`.
pub fn apply_v2(dir: &Path, rules: &[Rule]) -> Result<(), DevicesError> {
    let prog = load(rules)?;
    let cg = std::fs::File::open(dir).map_err(|source| DevicesError::Cgroup {
        dir: dir.into(),
        source,
    })?;
    let attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
        pad: [0; 44],
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) with valid fds in a fully initialised attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if r != 0 {
        return Err(DevicesError::Attach {
            dir: dir.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
