//! What this host is: architecture, kernel release and config, cgroup mode,
//! KVM kind and user-namespace support.
//!
//! [`probe`] caches its answer per boot in a JSON file
//! ([`default_cache_path`], e.g. `/run/amphi/host.json`) keyed by
//! `/proc/sys/kernel/random/boot_id` and the kernel release; a stale,
//! unreadable or unwritable cache is silently ignored and the host probed
//! again. [`probe_fresh`] always probes. Things that can change within a boot
//! (a `kvm_pvm` module loaded later, a sysctl flipped) are only seen by
//! [`probe_fresh`] or after the cache file is removed.

pub(crate) mod cache;
mod cgroup;
pub mod vsyscall;

pub use cache::{default_cache_path, load_cached, probe_with_cache, store_cache};
pub use cgroup::{cgroup_mode_from_mounts, CgroupMode};
pub use vsyscall::Vsyscall;

use crate::kernel::config::{self, KernelConfig};
use crate::kernel::KernelVersion;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// Bumped when [`HostInfo`] changes shape, so older cache files are re-probed.
pub const CACHE_FORMAT: u32 = 2;

/// Everything amphi needs to know about the host to choose how to run an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// [`CACHE_FORMAT`] of the probe that made it.
    pub format: u32,
    /// `/proc/sys/kernel/random/boot_id` ("" when unreadable).
    pub boot_id: String,
    /// The architecture in OCI naming: "amd64", "arm64", ...
    pub arch: String,
    /// `uname -m`: "x86_64", "aarch64", ...
    pub machine: String,
    /// `uname -r`: "6.1.0-56-amd64".
    pub kernel_release: String,
    /// `uname -v`: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.140-1 ...".
    pub kernel_build: String,
    /// X.Y.Z parsed from the release; None when the release does not start
    /// with a version.
    pub kernel_version: Option<KernelVersion>,
    /// The running kernel's config, or None when it cannot be read.
    pub config: Option<KernelConfig>,
    /// Where [`HostInfo::config`] came from ("/proc/config.gz",
    /// "/boot/config-6.1.0-56-amd64"), or why it is unknown.
    pub config_source: String,
    pub cgroup: CgroupMode,
    pub kvm: KvmSupport,
    pub userns: UserNs,
    /// How the kernel serves the legacy vsyscall page.
    #[serde(default)]
    pub vsyscall: Vsyscall,
    /// True when this answer came from the cache file (not stored in it).
    #[serde(skip)]
    pub from_cache: bool,
}

impl HostInfo {
    /// One kernel config option ("NF_TABLES" or "CONFIG_NF_TABLES"):
    /// `Ok(Some(value))` when set ("y", "m" or the value), `Ok(None)` when not
    /// set, `Err(why)` when the host's config is unknown.
    pub fn config_option(&self, name: &str) -> Result<Option<&str>, &str> {
        match &self.config {
            Some(c) => Ok(c.get(&config::option_name(name)).map(String::as_str)),
            None => Err(&self.config_source),
        }
    }

    /// "6.18.3" or, when the release does not parse, the release itself.
    pub fn kernel_display(&self) -> String {
        match &self.kernel_version {
            Some(v) => v.to_string(),
            None => format!("{:?} (not a version)", self.kernel_release),
        }
    }
}

/// The kind of KVM the host offers (from [`amphi_vmm::detect_kvm_kind`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KvmSupport {
    /// Hardware-assisted KVM (vmx/svm): the built-in VMM at full speed.
    Hardware,
    /// PVM (`kvm_pvm`): the built-in VMM, with a PVM-enabled guest kernel.
    Pvm,
    /// `/dev/kvm` exists but its kind could not be told.
    Unrecognized,
    /// No usable KVM: microVMs run under QEMU software emulation.
    None,
}

impl From<amphi_vmm::KvmKind> for KvmSupport {
    fn from(k: amphi_vmm::KvmKind) -> Self {
        match k {
            amphi_vmm::KvmKind::Hardware => KvmSupport::Hardware,
            amphi_vmm::KvmKind::Pvm => KvmSupport::Pvm,
            amphi_vmm::KvmKind::Unrecognized => KvmSupport::Unrecognized,
            amphi_vmm::KvmKind::None => KvmSupport::None,
        }
    }
}

impl std::fmt::Display for KvmSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvmSupport::Hardware => "hardware KVM (vmx/svm)",
            KvmSupport::Pvm => "PVM (kvm_pvm, no hardware virtualization)",
            KvmSupport::Unrecognized => "KVM of unrecognized kind",
            KvmSupport::None => "no KVM",
        })
    }
}

/// User-namespace support.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserNs {
    /// User namespaces can be created (by root at least).
    pub supported: bool,
    /// Unprivileged users may create them (false when
    /// `kernel.unprivileged_userns_clone` is 0).
    pub unprivileged: bool,
    /// `/proc/sys/user/max_user_namespaces`, when readable.
    pub max_user_namespaces: Option<u64>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian), when present.
    pub unprivileged_userns_clone: Option<bool>,
}

/// Judges user-namespace support from the two sysctl files' contents.
pub fn userns_from(max_user_namespaces: Option<&str>, unprivileged_clone: Option<&str>) -> UserNs {
    let max = max_user_namespaces.and_then(|s| s.trim().parse::<u64>().ok());
    let clone = unprivileged_clone.and_then(|s| match s.trim() {
        "0" => Some(false),
        "" => None,
        _ => Some(true),
    });
    let supported = max.is_some_and(|m| m > 0);
    UserNs {
        supported,
        unprivileged: supported && clone != Some(false),
        max_user_namespaces: max,
        unprivileged_userns_clone: clone,
    }
}

/// `uname -m` in OCI naming: x86_64 -> amd64, aarch64 -> arm64.
pub fn oci_arch(machine: &str) -> String {
    match machine {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "386",
        m if m.starts_with("armv") => "arm",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64" => "mips64",
        other => other,
    }
    .to_string()
}

/// The running kernel's config: `/proc/config.gz`, else
/// `/boot/config-<release>`; the config and where it came from, or None and why.
pub fn read_kernel_config(release: &str) -> (Option<KernelConfig>, String) {
    let proc_path = Path::new("/proc/config.gz");
    let boot_path = format!("/boot/config-{release}");
    let mut problems = Vec::new();
    match std::fs::File::open(proc_path) {
        Ok(f) => {
            let mut text = Vec::new();
            match flate2::read::GzDecoder::new(f).read_to_end(&mut text) {
                Ok(_) => match config::parse(&text) {
                    Ok(c) => return (Some(c), proc_path.display().to_string()),
                    Err(e) => problems.push(format!(
                        "{}: line {}: {}",
                        proc_path.display(),
                        e.line,
                        e.reason
                    )),
                },
                Err(e) => problems.push(format!("{}: {e}", proc_path.display())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!("{} does not exist", proc_path.display()))
        }
        Err(e) => problems.push(format!("{}: {e}", proc_path.display())),
    }
    match std::fs::read(&boot_path) {
        Ok(text) => match config::parse(&text) {
            Ok(c) => return (Some(c), boot_path),
            Err(e) => problems.push(format!("{boot_path}: line {}: {}", e.line, e.reason)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!("{boot_path} does not exist"))
        }
        Err(e) => problems.push(format!("{boot_path}: {e}")),
    }
    (
        None,
        format!("kernel config unknown: {}", problems.join("; ")),
    )
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The current boot's ID ("" when unreadable).
pub fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Probes the host now, without the cache.
pub fn probe_fresh() -> HostInfo {
    let uts = rustix::system::uname();
    let machine = uts.machine().to_string_lossy().into_owned();
    let release = uts.release().to_string_lossy().into_owned();
    let build = uts.version().to_string_lossy().into_owned();
    let (config, config_source) = read_kernel_config(&release);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    HostInfo {
        format: CACHE_FORMAT,
        boot_id: boot_id(),
        arch: oci_arch(&machine),
        machine,
        kernel_version: KernelVersion::parse(&release).ok(),
        kernel_release: release,
        kernel_build: build,
        config,
        config_source,
        cgroup: cgroup_mode_from_mounts(&mounts),
        kvm: amphi_vmm::detect_kvm_kind().into(),
        userns: userns_from(
            read_trimmed("/proc/sys/user/max_user_namespaces").as_deref(),
            read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        ),
        vsyscall: vsyscall::probe(),
        from_cache: false,
    }
}

/// The host, from the per-boot cache at [`default_cache_path`] when it is
/// current, else probed (and the cache rewritten, if possible).
pub fn probe() -> HostInfo {
    probe_with_cache(&default_cache_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_arch_names() {
        for (m, want) in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("i686", "386"),
            ("armv7l", "arm"),
            ("ppc64le", "ppc64le"),
            ("weird", "weird"),
        ] {
            assert_eq!(oci_arch(m), want, "{m}");
        }
    }

    #[test]
    fn debian_style_releases_parse() {
        for (rel, want) in [
            ("6.1.0-56-amd64", KernelVersion::new(6, 1, 0)),
            ("6.18.3-foo", KernelVersion::new(6, 18, 3)),
            ("6.12.57+deb13-cloud-amd64", KernelVersion::new(6, 12, 57)),
            ("6.18.44-fc-v657", KernelVersion::new(6, 18, 44)),
        ] {
            assert_eq!(KernelVersion::parse(rel).unwrap(), want, "{rel}");
        }
    }

    #[test]
    fn userns_judgement() {
        let u = userns_from(Some("96365\n"), None);
        assert!(u.supported && u.unprivileged);
        assert_eq!(u.max_user_namespaces, Some(96365));
        let u = userns_from(Some("0"), None);
        assert!(!u.supported && !u.unprivileged);
        let u = userns_from(Some("100"), Some("0"));
        assert!(u.supported && !u.unprivileged);
        assert_eq!(u.unprivileged_userns_clone, Some(false));
        let u = userns_from(None, Some("1"));
        assert!(!u.supported);
    }

    #[test]
    fn config_option_answers() {
        let mut h = cache::tests::fake_host();
        assert_eq!(h.config_option("USER_NS"), Ok(Some("y")));
        assert_eq!(h.config_option("CONFIG_NF_TABLES"), Ok(Some("m")));
        assert_eq!(h.config_option("CONFIG_NOPE"), Ok(None));
        h.config = None;
        h.config_source = "kernel config unknown: nothing".into();
        assert_eq!(
            h.config_option("USER_NS"),
            Err("kernel config unknown: nothing")
        );
    }

    #[test]
    fn probes_this_host() {
        // Reads /proc and /sys only; whatever the host is, the answer is
        // self-consistent.
        let h = probe_fresh();
        assert!(!h.machine.is_empty());
        assert_eq!(h.arch, oci_arch(&h.machine));
        assert!(h.config.is_some() || h.config_source.starts_with("kernel config unknown"));
        assert!(!h.from_cache);
        eprintln!(
            "host: {} ({}), kernel {} ({:?}), config from {}, {}, {}, userns {:?}",
            h.arch,
            h.machine,
            h.kernel_release,
            h.kernel_version,
            h.config_source,
            h.cgroup,
            h.kvm,
            h.userns
        );
    }
}
