//! The legacy vsyscall page: how this kernel serves it.
//!
//! Old glibc releases (2.13 and older, e.g. CentOS 6's 2.12) call the fixed
//! vsyscall page for `time`/`gettimeofday`. The kernel serves it in one of
//! three modes (`vsyscall=` on its command line): `emulate` (readable and
//! executable, emulated), `xonly` (executable only: calls work, reading the
//! page faults; the default since Linux 5.3) and `none` (any use kills the
//! process with SIGSEGV).

use serde::{Deserialize, Serialize};

/// The vsyscall mode of a kernel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Vsyscall {
    /// Readable and executable (emulated).
    Emulate,
    /// Execute-only: calls work, reads fault.
    Xonly,
    /// No vsyscall page: any use is a SIGSEGV.
    None,
    /// Not an x86-64 host, or nothing to tell from.
    #[default]
    Unknown,
}

impl Vsyscall {
    /// Whether a process that calls the page (but never reads it) works.
    pub fn serves_calls(self) -> bool {
        matches!(self, Vsyscall::Emulate | Vsyscall::Xonly)
    }
}

impl std::fmt::Display for Vsyscall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vsyscall::Emulate => "vsyscall=emulate",
            Vsyscall::Xonly => "vsyscall=xonly",
            Vsyscall::None => "vsyscall=none",
            Vsyscall::Unknown => "vsyscall unknown",
        })
    }
}

/// The mode, from `/proc/self/maps` (the `[vsyscall]` mapping: `r-xp` is
/// emulate, `--xp` xonly, absent none) and `/proc/cmdline` (`vsyscall=`,
/// which wins when it names a mode; the last one counts, as in the kernel).
/// `machine` is `uname -m`: only x86_64 has the page.
pub fn vsyscall_mode(machine: &str, maps: &str, cmdline: &str) -> Vsyscall {
    if machine != "x86_64" {
        return Vsyscall::Unknown;
    }
    let from_cmdline = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("vsyscall="))
        .next_back()
        .and_then(|m| match m {
            "emulate" => Some(Vsyscall::Emulate),
            "xonly" => Some(Vsyscall::Xonly),
            "none" => Some(Vsyscall::None),
            _ => None,
        });
    if let Some(m) = from_cmdline {
        return m;
    }
    if maps.is_empty() {
        return Vsyscall::Unknown;
    }
    match maps.lines().find(|l| l.trim_end().ends_with("[vsyscall]")) {
        None => Vsyscall::None,
        Some(l) => match l.split_whitespace().nth(1) {
            Some(p) if p.starts_with('r') => Vsyscall::Emulate,
            Some(p) if p.contains('x') => Vsyscall::Xonly,
            _ => Vsyscall::None,
        },
    }
}

/// This host's mode.
pub fn probe() -> Vsyscall {
    let machine = rustix::system::uname()
        .machine()
        .to_string_lossy()
        .into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    vsyscall_mode(&machine, &maps, &cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XONLY: &str = "7ffd1000-7ffd3000 r-xp 00000000 00:00 0  [vdso]\nffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";
    const EMULATE: &str = "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0 [vsyscall]\n";
    const NONE: &str = "7ffd1000-7ffd3000 r-xp 00000000 00:00 0  [vdso]\n";

    #[test]
    fn modes_from_the_mapping() {
        assert_eq!(vsyscall_mode("x86_64", XONLY, ""), Vsyscall::Xonly);
        assert_eq!(vsyscall_mode("x86_64", EMULATE, ""), Vsyscall::Emulate);
        assert_eq!(vsyscall_mode("x86_64", NONE, "quiet"), Vsyscall::None);
        assert_eq!(vsyscall_mode("x86_64", "", ""), Vsyscall::Unknown);
        assert_eq!(vsyscall_mode("aarch64", XONLY, ""), Vsyscall::Unknown);
    }

    #[test]
    fn the_command_line_wins_and_the_last_one_counts() {
        assert_eq!(
            vsyscall_mode("x86_64", XONLY, "quiet vsyscall=none"),
            Vsyscall::None
        );
        assert_eq!(
            vsyscall_mode("x86_64", NONE, "vsyscall=none vsyscall=emulate"),
            Vsyscall::Emulate
        );
        // A mode the kernel does not know is ignored: the mapping tells.
        assert_eq!(
            vsyscall_mode("x86_64", XONLY, "vsyscall=bogus"),
            Vsyscall::Xonly
        );
    }

    #[test]
    fn calls_work_unless_none() {
        assert!(Vsyscall::Emulate.serves_calls());
        assert!(Vsyscall::Xonly.serves_calls());
        assert!(!Vsyscall::None.serves_calls());
        assert!(!Vsyscall::Unknown.serves_calls());
    }

    #[test]
    fn this_host_has_a_mode() {
        let m = probe();
        eprintln!("this host: {m}");
        if cfg!(target_arch = "x86_64") {
            assert_ne!(m, Vsyscall::Unknown);
        }
    }
}
