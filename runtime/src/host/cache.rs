//! The per-boot cache of the host probe.

use super::{boot_id, kernel_release, probe_fresh, HostInfo, CACHE_FORMAT};
use std::path::{Path, PathBuf};

/// `/run/amphi/host.json` for root; `$XDG_RUNTIME_DIR/amphi/host.json` for
/// other users when that is set (else `/run/amphi/host.json`, which then is
/// usually only readable).
pub fn default_cache_path() -> PathBuf {
    if !rustix::process::geteuid().is_root() {
        if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("amphi/host.json");
        }
    }
    PathBuf::from("/run/amphi/host.json")
}

/// The cached probe at `path`, if it is readable, of the current format and
/// made in this boot (`boot_id`) of this kernel (`release`).
pub fn load_cached(path: &Path, boot_id: &str, release: &str) -> Option<HostInfo> {
    let data = std::fs::read(path).ok()?;
    let mut info: HostInfo = serde_json::from_slice(&data).ok()?;
    if info.format != CACHE_FORMAT
        || boot_id.is_empty()
        || info.boot_id != boot_id
        || info.kernel_release != release
    {
        return None;
    }
    info.from_cache = true;
    Some(info)
}

/// Writes the cache atomically (temporary file + rename), creating its directory.
pub fn store_cache(path: &Path, info: &HostInfo) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let data = serde_json::to_vec(info).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// [`super::probe`] with the cache at `path`: the cached answer when current,
/// else a fresh probe, written back (failures to write are only logged).
pub fn probe_with_cache(path: &Path) -> HostInfo {
    let id = boot_id();
    if let Some(info) = load_cached(path, &id, &kernel_release()) {
        return info;
    }
    let info = probe_fresh();
    if !info.boot_id.is_empty() {
        if let Err(e) = store_cache(path, &info) {
            tracing::debug!("not caching the host probe in {}: {e}", path.display());
        }
    }
    info
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{CgroupMode, KvmSupport, UserNs};
    use super::*;
    use crate::kernel::KernelVersion;

    pub(crate) fn fake_host() -> HostInfo {
        HostInfo {
            format: CACHE_FORMAT,
            boot_id: "boot-1".into(),
            arch: "amd64".into(),
            machine: "x86_64".into(),
            kernel_release: "6.18.3-foo".into(),
            kernel_build: "#1 SMP".into(),
            kernel_version: Some(KernelVersion::new(6, 18, 3)),
            config: Some(
                [("CONFIG_USER_NS", "y"), ("CONFIG_NF_TABLES", "m")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            config_source: "/proc/config.gz".into(),
            cgroup: CgroupMode::Hybrid,
            kvm: KvmSupport::Pvm,
            userns: UserNs {
                supported: true,
                unprivileged: true,
                max_user_namespaces: Some(10),
                unprivileged_userns_clone: None,
            },
            vsyscall: crate::host::Vsyscall::Xonly,
            from_cache: false,
        }
    }

    #[test]
    fn cache_round_trip_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host.json");
        let h = fake_host();
        store_cache(&path, &h).unwrap();
        let back = load_cached(&path, "boot-1", "6.18.3-foo").unwrap();
        assert!(back.from_cache);
        assert_eq!(
            HostInfo {
                from_cache: false,
                ..back
            },
            h
        );
        // Another boot, another kernel, an old format, garbage: all stale.
        assert!(load_cached(&path, "boot-2", "6.18.3-foo").is_none());
        assert!(load_cached(&path, "boot-1", "6.18.4").is_none());
        assert!(load_cached(&path, "", "6.18.3-foo").is_none());
        store_cache(
            &path,
            &HostInfo {
                format: 0,
                ..h.clone()
            },
        )
        .unwrap();
        assert!(load_cached(&path, "boot-1", "6.18.3-foo").is_none());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_cached(&path, "boot-1", "6.18.3-foo").is_none());
        assert!(load_cached(&dir.path().join("missing"), "boot-1", "x").is_none());
    }

    #[test]
    fn probe_with_cache_writes_then_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.json");
        let first = probe_with_cache(&path);
        assert!(!first.from_cache);
        if first.boot_id.is_empty() {
            return; // no boot_id on this kernel: nothing is cached
        }
        let second = probe_with_cache(&path);
        assert!(second.from_cache);
        assert_eq!(
            HostInfo {
                from_cache: false,
                ..second
            },
            first
        );
        // A corrupt cache is silently re-probed and rewritten.
        std::fs::write(&path, b"garbage").unwrap();
        assert!(!probe_with_cache(&path).from_cache);
        assert!(probe_with_cache(&path).from_cache);
    }
}
