//! The cgroup mode, from the mount table.

use serde::{Deserialize, Serialize};

/// How cgroups are mounted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Unified: cgroup2 at /sys/fs/cgroup.
    V2,
    /// Legacy: v1 controllers only.
    V1,
    /// v1 controllers, plus cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    /// No cgroup file system is mounted.
    None,
}

impl std::fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupMode::V2 => "cgroup v2 (unified)",
            CgroupMode::V1 => "cgroup v1",
            CgroupMode::Hybrid => "cgroup hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)",
            CgroupMode::None => "no cgroups mounted",
        })
    }
}

/// Classifies a `/proc/self/mounts` text.
pub fn cgroup_mode_from_mounts(mounts: &str) -> CgroupMode {
    let mut v1 = false;
    let mut v2_root = false;
    let mut v2_unified = false;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(target), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        match fstype {
            "cgroup2" if target == "/sys/fs/cgroup" => v2_root = true,
            "cgroup2" if target == "/sys/fs/cgroup/unified" => v2_unified = true,
            "cgroup" => v1 = true,
            _ => {}
        }
    }
    match (v2_root, v1, v2_unified) {
        (true, _, _) => CgroupMode::V2,
        (false, true, true) => CgroupMode::Hybrid,
        (false, true, false) => CgroupMode::V1,
        (false, false, true) => CgroupMode::Hybrid,
        (false, false, false) => CgroupMode::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_mount_tables() {
        let v2 = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let v1 = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        for (text, want) in [
            (v2, CgroupMode::V2),
            (hybrid, CgroupMode::Hybrid),
            (v1, CgroupMode::V1),
            ("proc /proc proc rw 0 0\n", CgroupMode::None),
            ("", CgroupMode::None),
        ] {
            assert_eq!(cgroup_mode_from_mounts(text), want, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&CgroupMode::Hybrid).unwrap(),
            "\"hybrid\""
        );
    }
}
