//! Inference: what an image that says nothing needs, from its own files.
//!
//! The image scan (`image::scan`) gives [`Fact`]s about the files of the
//! command that runs; the rules here turn them into [`Need`]s. A need is
//! judged twice: against the host (can the shared kernel serve it?) and
//! against a guest kernel (can a microVM with that kernel serve it, and
//! with which kernel command-line additions?). Inference only ever adds
//! requirements: it can send an image to a microVM or narrow the guest
//! kernels, never bring a run back to the host.
//!
//! The rules, each with why:
//! - systemd 256 and later as the init needs a cgroup v2 host (the unified
//!   hierarchy with its controllers). Observed with Debian 13's systemd 257
//!   as a container's init: under cgroup v1 hierarchies it refuses to boot
//!   (256 and later do unless `SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1` is on
//!   the kernel command line, which a container cannot set; 258 removed v1
//!   altogether); on a hybrid host, given the unified hierarchy (which has
//!   no controllers there), it boots, but none of its resource control
//!   (`MemoryMax=`, `CPUQuota=`, `TasksMax=`) can work and it warns for
//!   every unit. A microVM's guest is a pure cgroup v2 host.
//! - systemd before 230 as the init needs cgroup v1 hierarchies (it cannot
//!   run under a unified-only hierarchy): a microVM whose guest init mounts
//!   them (`systemd.unified_cgroup_hierarchy=0`).
//! - An ELF ABI tag (`NT_GNU_ABI_TAG`: glibc's loader and `libc.so.6`, a
//!   static binary) of "Linux >= X" needs a kernel >= X.
//! - glibc older than 2.15 calls the legacy vsyscall page: the kernel must
//!   serve calls to it (`vsyscall=xonly` or `emulate`, not `none`); a
//!   guest gets `vsyscall=xonly` and needs `CONFIG_X86_VSYSCALL_EMULATION`.
//! - `/lib/modules/<release>` with modules in it, or a command that is
//!   `modprobe`/`insmod`, expects a kernel it can change: never the shared
//!   host kernel.

use super::decide::Reason;
use super::requirements::{ConfigRequirement, ConfigWant};
use crate::host::{CgroupMode, HostInfo, Vsyscall};
use crate::image::scan::{glibc_older_than, Fact};
use crate::kernel::KernelVersion;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The systemd release from which cgroup v1 is refused.
pub const SYSTEMD_V2_ONLY_FROM: u32 = 256;
/// The systemd release from which the unified hierarchy works.
pub const SYSTEMD_V2_CAPABLE_FROM: u32 = 230;
/// glibc releases before this one call the vsyscall page.
pub const GLIBC_VSYSCALL_BEFORE: (u32, u32) = (2, 15);

/// What a rule concluded the image needs of its kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "need", rename_all = "kebab-case")]
pub enum Need {
    /// A kernel of at least this version.
    KernelAtLeast { version: KernelVersion },
    /// The unified cgroup hierarchy (cgroup v2 only).
    CgroupV2,
    /// cgroup v1 hierarchies (legacy or hybrid).
    CgroupV1,
    /// The vsyscall page, for calls.
    VsyscallCalls,
    /// A kernel of its own (it loads or ships modules).
    OwnKernel,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::KernelAtLeast { version } => write!(f, "kernel >= {version}"),
            Need::CgroupV2 => f.write_str("cgroup v2 (unified)"),
            Need::CgroupV1 => f.write_str("cgroup v1 hierarchies"),
            Need::VsyscallCalls => f.write_str("the vsyscall page (xonly or emulate)"),
            Need::OwnKernel => f.write_str("a kernel of its own"),
        }
    }
}

/// One inferred requirement, with the fact it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inferred {
    /// "image.systemd", "image.libc", "image.vsyscall", "image.modules".
    pub rule: String,
    pub fact: Fact,
    pub need: Need,
    /// Why the fact implies the need.
    pub why: String,
    /// What the host has for the need, and whether that serves it (set by
    /// `decide`, from [`host_meets`]; empty until then).
    #[serde(default)]
    pub host_has: String,
    #[serde(default)]
    pub host_ok: bool,
}

impl Inferred {
    /// What the fact says, and what it needs: for reasons and warnings.
    pub fn describe(&self) -> String {
        format!("{}: needs {}", self.fact, self.need)
    }
}

/// The rules: the needs the facts imply.
pub fn infer(facts: &[Fact]) -> Vec<Inferred> {
    let mut out: Vec<Inferred> = Vec::new();
    let mut push = |rule: &str, fact: &Fact, need: Need, why: &str| {
        if !out.iter().any(|i| i.need == need && i.fact == *fact) {
            out.push(Inferred {
                rule: rule.to_string(),
                fact: fact.clone(),
                need,
                why: why.to_string(),
                host_has: String::new(),
                host_ok: false,
            });
        }
    };
    for f in facts {
        match f {
            Fact::SystemdInit {
                version: Some(v), ..
            } if *v >= SYSTEMD_V2_ONLY_FROM => push(
                "image.systemd",
                f,
                Need::CgroupV2,
                "systemd 256 and later need cgroup v2: under v1 hierarchies they refuse to boot (unless SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1 is on the kernel command line, which a container cannot set), and a hybrid host's unified hierarchy has no controllers, so none of systemd's resource control works there",
            ),
            Fact::SystemdInit {
                version: Some(v), ..
            } if *v < SYSTEMD_V2_CAPABLE_FROM => push(
                "image.systemd",
                f,
                Need::CgroupV1,
                "systemd before 230 cannot run under a unified-only (cgroup v2) hierarchy",
            ),
            Fact::LibcMinKernel { version, .. } => push(
                "image.libc",
                f,
                Need::KernelAtLeast { version: *version },
                "the C library refuses to start on an older kernel (\"FATAL: kernel too old\")",
            ),
            Fact::GlibcVersion { version, .. }
                if glibc_older_than(version, GLIBC_VSYSCALL_BEFORE.0, GLIBC_VSYSCALL_BEFORE.1) =>
            {
                push(
                    "image.vsyscall",
                    f,
                    Need::VsyscallCalls,
                    "glibc before 2.15 calls the legacy vsyscall page; with vsyscall=none the kernel kills it with SIGSEGV",
                )
            }
            Fact::ShipsModules { .. } | Fact::LoadsModules { .. } => push(
                "image.modules",
                f,
                Need::OwnKernel,
                "an image that ships or loads kernel modules expects a kernel it can change; the shared host kernel must not be changed by a container",
            ),
            _ => {}
        }
    }
    // Of the ABI tags (the libc's, the command's own), the highest counts:
    // a dynamic binary carries its C library's tag too.
    let max = out
        .iter()
        .filter_map(|i| match i.need {
            Need::KernelAtLeast { version } => Some(version),
            _ => None,
        })
        .max();
    let mut kept = false;
    out.retain(|i| match i.need {
        Need::KernelAtLeast { version } if Some(version) == max && !kept => {
            kept = true;
            true
        }
        Need::KernelAtLeast { .. } => false,
        _ => true,
    });
    out
}

/// Whether the host kernel serves the need: Ok with what the host has, or
/// Err with what it has instead.
pub fn host_meets(need: &Need, host: &HostInfo) -> Result<String, String> {
    match need {
        Need::KernelAtLeast { version } => match &host.kernel_version {
            Some(v) if v >= version => Ok(format!("host kernel {v}")),
            Some(v) => Err(format!("host kernel {v}")),
            None => Err(format!(
                "host kernel {:?} (not a version)",
                host.kernel_release
            )),
        },
        Need::CgroupV2 => match host.cgroup {
            CgroupMode::V2 => Ok("this host is cgroup v2".into()),
            CgroupMode::Hybrid => Err(
                "this host is hybrid (its controllers are cgroup v1; its cgroup v2 has none)"
                    .into(),
            ),
            CgroupMode::V1 => Err("this host is cgroup v1".into()),
            CgroupMode::None => Err("this host has no cgroups mounted".into()),
        },
        Need::CgroupV1 => match host.cgroup {
            CgroupMode::V1 => Ok("this host is cgroup v1".into()),
            CgroupMode::Hybrid => Ok("this host is hybrid (cgroup v1 controllers)".into()),
            CgroupMode::V2 => Err("this host is cgroup v2 only".into()),
            CgroupMode::None => Err("this host has no cgroups mounted".into()),
        },
        Need::VsyscallCalls => match host.vsyscall {
            Vsyscall::Emulate | Vsyscall::Xonly => Ok(format!("this host has {}", host.vsyscall)),
            Vsyscall::Unknown => Ok("this host's vsyscall mode is unknown".into()),
            Vsyscall::None => Err("this host has vsyscall=none".into()),
        },
        Need::OwnKernel => Err("a container shares the host's kernel".into()),
    }
}

/// What a guest kernel must have for the need, beyond its version.
pub fn guest_config(need: &Need) -> Vec<ConfigRequirement> {
    let y = |name: &str| ConfigRequirement {
        name: name.to_string(),
        want: ConfigWant::Builtin,
    };
    match need {
        Need::CgroupV2 | Need::CgroupV1 => vec![y("CONFIG_CGROUPS")],
        Need::VsyscallCalls => vec![y("CONFIG_X86_VSYSCALL_EMULATION")],
        Need::KernelAtLeast { .. } | Need::OwnKernel => vec![],
    }
}

/// What the guest kernel command line gets for the need.
pub fn guest_cmdline(need: &Need) -> Option<&'static str> {
    match need {
        Need::CgroupV1 => Some("systemd.unified_cgroup_hierarchy=0"),
        Need::VsyscallCalls => Some("vsyscall=xonly"),
        Need::KernelAtLeast { .. } | Need::CgroupV2 | Need::OwnKernel => None,
    }
}

/// Judges one inferred need against this host: records the verdict on it
/// (`host_has`, `host_ok`) and returns the reason `decide` lists.
pub fn host_reason(i: &mut Inferred, host: &HostInfo) -> Reason {
    use super::decide::Outcome;
    let met = host_meets(&i.need, host);
    i.host_ok = met.is_ok();
    i.host_has = match met {
        Ok(h) | Err(h) => h,
    };
    Reason {
        rule: i.rule.clone(),
        wanted: i.need.to_string(),
        have: i.host_has.clone(),
        outcome: if i.host_ok {
            Outcome::Ok
        } else {
            Outcome::NeedsVm
        },
        note: format!("{} ({})", i.fact, i.why),
    }
}

#[cfg(test)]
mod tests;
