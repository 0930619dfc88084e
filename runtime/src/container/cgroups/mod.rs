//! Resource limits through cgroups, on unified (v2) hosts and on v1 or
//! hybrid hosts (v1 controllers under `/sys/fs/cgroup/<controller>`, with a
//! controller-less cgroup2 at `/sys/fs/cgroup/unified`).

use super::devices::Rule;
use oci_spec::runtime::LinuxResources;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers amphi manages (directory names under /sys/fs/cgroup).
const V1_CONTROLLERS: &[&str] = &[
    "memory",
    "pids",
    "cpu",
    "cpuacct",
    "cpu,cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "blkio",
];

/// The v1 hierarchies amphi manages (one path each, though "cpu" and
/// "cpu,cpuacct" may be one hierarchy through symlinks); looked up once
/// per process.
fn v1_hierarchies() -> &'static [PathBuf] {
    static H: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for c in V1_CONTROLLERS {
            let p = Path::new(ROOT).join(c);
            let Ok(real) = std::fs::canonicalize(&p) else {
                continue;
            };
            if real.is_dir() && !seen.contains(&real) {
                seen.push(real);
                out.push(p);
            }
        }
        // A hybrid host's cgroup2 (no controllers): the container gets its
        // own cgroup there too (as runc does), so that its cgroup namespace
        // is rooted there and not at the hierarchy's root; systemd mode
        // mounts it at the container's /sys/fs/cgroup.
        if super::rootfs::host_has_unified() {
            out.push(Path::new(ROOT).join("unified"));
        }
        out
    })
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Pure cgroup2 at /sys/fs/cgroup.
    Unified,
    /// v1 controllers, with or without a cgroup2 at /sys/fs/cgroup/unified.
    Legacy,
}

/// Detects the host's cgroup layout.
pub fn mode() -> Mode {
    if super::rootfs::host_cgroup2_only() {
        Mode::Unified
    } else {
        Mode::Legacy
    }
}

/// One container's cgroup(s).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    pub mode: Mode,
    /// Path relative to each hierarchy's root, e.g. `amphi/<id>`.
    pub path: String,
}

/// Creates a cgroup directory and its missing parents. Retried: another
/// container's removal takes the shared `amphi/` parent away once it is
/// empty, which can happen between our creating it and creating our
/// directory in it.
fn create_dir(d: &Path) -> Result<(), String> {
    let mut r = fs::create_dir_all(d);
    for _ in 0..20 {
        match &r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => r = fs::create_dir_all(d),
            _ => break,
        }
    }
    r.map_err(|e| format!("creating cgroup {}: {e}", d.display()))
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    fs::write(p, v).map_err(|e| format!("writing {v:?} to {}: {e}", p.display()))
}

impl Cgroup {
    /// The cgroup for `cgroups_path` (the spec's `linux.cgroupsPath`) or the
    /// default `amphi/<id>`.
    pub fn new(cgroups_path: Option<&Path>, id: &str) -> Result<Self, String> {
        let path = match cgroups_path {
            Some(p) => {
                let s = p.to_string_lossy();
                if s.contains(':') {
                    return Err(format!(
                        "linux.cgroupsPath {s:?} is a systemd slice path; amphi manages cgroups directly (drop --systemd-cgroup)"
                    ));
                }
                if s.split('/').any(|c| c == "..") {
                    return Err(format!("linux.cgroupsPath {s:?} contains \"..\""));
                }
                s.trim_start_matches('/').to_string()
            }
            None => format!("amphi/{id}"),
        };
        if path.is_empty() {
            return Err("linux.cgroupsPath is the root cgroup".into());
        }
        Ok(Cgroup { mode: mode(), path })
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self.mode {
            Mode::Unified => vec![Path::new(ROOT).join(&self.path)],
            Mode::Legacy => v1_hierarchies()
                .iter()
                .map(|h| h.join(&self.path))
                .collect(),
        }
    }

    /// Creates the cgroup, applies limits and device rules (a new
    /// container's: an exec joining its cgroup passes none) and moves
    /// `pid` in.
    pub fn apply(
        &self,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), String> {
        match self.mode {
            Mode::Unified => self.apply_v2(pid, res, devices),
            Mode::Legacy => self.apply_v1(pid, res, devices),
        }
    }

    fn apply_v2(
        &self,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), String> {
        let dir = Path::new(ROOT).join(&self.path);
        // Enable controllers on the way down.
        let mut cur = PathBuf::from(ROOT);
        for comp in Path::new(&self.path).components() {
            let avail = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
            let want: Vec<String> = ["memory", "pids", "cpu"]
                .iter()
                .filter(|c| avail.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                let _ = fs::write(cur.join("cgroup.subtree_control"), want.join(" "));
            }
            cur.push(comp);
            create_dir(&cur)?;
        }
        if let Some(r) = res {
            if let Some(m) = r.memory() {
                if let Some(limit) = m.limit() {
                    write(&dir.join("memory.max"), &v2_max(limit))?;
                }
                if let Some(swap) = m.swap() {
                    if let Some(limit) = m.limit() {
                        let s = if swap < 0 { -1 } else { (swap - limit).max(0) };
                        let _ = write(&dir.join("memory.swap.max"), &v2_max(s));
                    }
                }
            }
            if let Some(p) = r.pids() {
                write(&dir.join("pids.max"), &v2_max(p.limit()))?;
            }
            if let Some(c) = r.cpu() {
                if let Some(q) = c.quota() {
                    let period = c.period().unwrap_or(100_000);
                    write(&dir.join("cpu.max"), &format!("{} {period}", v2_max(q)))?;
                }
                if let Some(shares) = c.shares() {
                    // runc's conversion of v1 shares to v2 weight.
                    let w = 1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142;
                    let _ = write(&dir.join("cpu.weight"), &w.to_string());
                }
            }
        }
        if let Some(rules) = devices {
            super::devices::apply_v2(&dir, rules)?;
        }
        write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    fn apply_v1(
        &self,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), String> {
        let dirs = self.dirs();
        for d in &dirs {
            create_dir(d)?;
            // cpuset needs its parents' cpus and mems copied down.
            if d.starts_with(Path::new(ROOT).join("cpuset")) {
                copy_cpuset(d);
            }
        }
        let ctrl = |c: &str| Path::new(ROOT).join(c).join(&self.path);
        if let Some(r) = res {
            if let Some(m) = r.memory() {
                if let Some(limit) = m.limit() {
                    write(
                        &ctrl("memory").join("memory.limit_in_bytes"),
                        &limit.to_string(),
                    )?;
                }
                if let (Some(swap), Some(_)) = (m.swap(), m.limit()) {
                    let _ = write(
                        &ctrl("memory").join("memory.memsw.limit_in_bytes"),
                        &swap.to_string(),
                    );
                }
            }
            if let Some(p) = r.pids() {
                let v = if p.limit() <= 0 {
                    "max".to_string()
                } else {
                    p.limit().to_string()
                };
                write(&ctrl("pids").join("pids.max"), &v)?;
            }
            if let Some(c) = r.cpu() {
                let cpu = ctrl("cpu");
                if let Some(period) = c.period() {
                    write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                if let Some(q) = c.quota() {
                    write(&cpu.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                if let Some(s) = c.shares() {
                    write(&cpu.join("cpu.shares"), &s.to_string())?;
                }
            }
        }
        if let Some(rules) = devices {
            let d = ctrl("devices");
            if !d.is_dir() {
                return Err(format!(
                    "the cgroup v1 devices controller is not mounted ({} is missing): amphi cannot restrict the container's devices",
                    Path::new(ROOT).join("devices").display()
                ));
            }
            super::devices::apply_v1(&d, rules)?;
        }
        for d in &dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Whether the kernel OOM-killed something in this cgroup.
    /// The most memory the cgroup ever used, in bytes (`memory.peak` on
    /// cgroup v2, `memory.max_usage_in_bytes` on v1), when the kernel says.
    pub fn memory_peak(&self) -> Option<u64> {
        let file = match self.mode {
            Mode::Unified => Path::new(ROOT).join(&self.path).join("memory.peak"),
            Mode::Legacy => Path::new(ROOT)
                .join("memory")
                .join(&self.path)
                .join("memory.max_usage_in_bytes"),
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    pub fn oom_killed(&self) -> bool {
        let (file, key) = match self.mode {
            Mode::Unified => (
                Path::new(ROOT).join(&self.path).join("memory.events"),
                "oom_kill",
            ),
            Mode::Legacy => (
                Path::new(ROOT)
                    .join("memory")
                    .join(&self.path)
                    .join("memory.oom_control"),
                "oom_kill",
            ),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(key))
                        .then(|| f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// The pids in the cgroup and in the child cgroups the container made.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match self.mode {
            Mode::Unified => Path::new(ROOT).join(&self.path),
            Mode::Legacy => {
                let p = Path::new(ROOT).join("pids").join(&self.path);
                if p.is_dir() {
                    p
                } else {
                    Path::new(ROOT).join("memory").join(&self.path)
                }
            }
        };
        let mut out = Vec::new();
        procs_tree(&dir, 0, &mut out);
        out
    }

    /// Removes the cgroup directories (they must be empty of processes).
    /// Retries briefly: the kernel frees a cgroup a moment after its last
    /// process is reaped.
    pub fn remove(&self) -> io::Result<()> {
        let mut last = Ok(());
        for d in self.dirs() {
            if !d.exists() {
                continue;
            }
            if let Err(e) = remove_tree(&d, 0) {
                if e.kind() != io::ErrorKind::NotFound {
                    last = Err(e);
                }
            }
            // The shared amphi/ parent stays (as docker's docker/ does):
            // creating it again for every container costs a mkdir, an
            // rmdir and the cpuset copy in each hierarchy.
        }
        last
    }
}

/// How deep [`remove_tree`] goes: a container may create child cgroups
/// (systemd does), but the kernel's own limit is far deeper than any real
/// use; deeper ones are left (and the removal fails with EBUSY).
const MAX_CHILD_DEPTH: u32 = 32;

/// Appends the pids in cgroup `d` and its children to `out`.
fn procs_tree(d: &Path, depth: u32, out: &mut Vec<i32>) {
    out.extend(
        fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok()),
    );
    if depth >= MAX_CHILD_DEPTH {
        return;
    }
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                procs_tree(&e.path(), depth + 1, out);
            }
        }
    }
}

/// Removes a cgroup and the child cgroups the container made in it
/// (children first: a cgroup with children cannot be removed), retrying
/// briefly: the kernel frees a cgroup a moment after its last process is
/// reaped.
fn remove_tree(d: &Path, depth: u32) -> io::Result<()> {
    if depth < MAX_CHILD_DEPTH {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                // Only child cgroups are directories; symlinks are not followed.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = remove_tree(&e.path(), depth + 1);
                }
            }
        }
    }
    let mut r = fs::remove_dir(d);
    for _ in 0..50 {
        match &r {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                r = fs::remove_dir(d);
            }
            _ => break,
        }
    }
    r
}

fn v2_max(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

fn copy_cpuset(dir: &Path) {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mut chain = Vec::new();
        let mut cur = dir.to_path_buf();
        while cur.starts_with(Path::new(ROOT).join("cpuset"))
            && cur != Path::new(ROOT).join("cpuset")
        {
            chain.push(cur.clone());
            cur.pop();
        }
        for d in chain.iter().rev() {
            let empty = fs::read_to_string(d.join(f))
                .map(|s| s.trim().is_empty())
                .unwrap_or(false);
            if empty {
                if let Some(parent) = d.parent() {
                    if let Ok(v) = fs::read_to_string(parent.join(f)) {
                        let _ = fs::write(d.join(f), v.trim());
                    }
                }
            }
        }
    }
}
