//! Resource limits through cgroups, on unified (v2) hosts and on v1 or
//! hybrid hosts (v1 controllers under `/sys/fs/cgroup/<controller>`, with a
//! controller-less cgroup2 at `/sys/fs/cgroup/unified`).

pub mod resources;

use super::devices::{DevicesError, Rule};
use super::effects::{Effects, Real};
use oci_spec::runtime::LinuxResources;
use resources::ResourcesError;
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
    "hugetlb",
    "net_cls",
    "net_prio",
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

/// A cgroup could not be named, made, limited or frozen.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {0:?} is a systemd slice path; amphi manages cgroups directly (drop --systemd-cgroup)")]
    SystemdPath(String),
    #[error("linux.cgroupsPath {0:?} contains \"..\"")]
    DotDot(String),
    #[error("linux.cgroupsPath is the root cgroup")]
    RootCgroup,
    #[error("creating cgroup {}: {source}", dir.display())]
    Create { dir: PathBuf, source: io::Error },
    #[error("writing {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    #[error("{field} needs the cgroup v1 {controller} controller, which this host does not mount ({} is missing)", hierarchy.display())]
    NoController {
        field: &'static str,
        controller: &'static str,
        hierarchy: PathBuf,
    },
    #[error("{field} cannot be applied: this host's cgroups have no {file} ({} is missing)", path.display())]
    NoFile {
        field: &'static str,
        file: String,
        path: PathBuf,
    },
    #[error("{field}: writing {value:?} to {}: {source}", path.display())]
    Setting {
        field: &'static str,
        value: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the cgroup v1 devices controller is not mounted ({} is missing): amphi cannot restrict the container's devices", hierarchy.display())]
    NoDevicesController { hierarchy: PathBuf },
    #[error(transparent)]
    Devices(#[from] DevicesError),
    #[error(
        "cannot {} the container: its cgroup has no freezer ({} is missing{})",
        if *pause { "pause" } else { "resume" },
        file.display(),
        if *legacy { "; is the v1 freezer controller mounted?" } else { "" }
    )]
    NoFreezer {
        pause: bool,
        file: PathBuf,
        legacy: bool,
    },
    #[error("{}: the cgroup did not become {want} within 10s", file.display())]
    FreezeTimeout { file: PathBuf, want: &'static str },
}

/// Where the cgroup hierarchies are: the host's (`/sys/fs/cgroup` and the
/// v1 hierarchies it mounts), or a test's tree.
struct Layout<'a> {
    root: &'a Path,
    /// The v1 hierarchies (see [`v1_hierarchies`]).
    v1: &'a [PathBuf],
}

impl Layout<'static> {
    fn host() -> Self {
        Layout {
            root: Path::new(ROOT),
            v1: v1_hierarchies(),
        }
    }
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
    /// The shallowest parent of `path` that this cgroup's creation made
    /// (a spec's `cgroupsPath` may name parents that do not exist): it and
    /// the parents below it go when the cgroup is removed, if empty. Never
    /// the shared `amphi/`.
    #[serde(default)]
    pub created_parent: Option<String>,
}

/// Creates a cgroup directory and its missing parents. Retried: another
/// container's removal takes the shared `amphi/` parent away once it is
/// empty, which can happen between our creating it and creating our
/// directory in it.
fn create_dir(fx: &impl Effects, d: &Path) -> Result<(), CgroupError> {
    let mut r = fx.mkdir_all(d);
    for _ in 0..20 {
        match &r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => r = fx.mkdir_all(d),
            _ => break,
        }
    }
    r.map_err(|source| CgroupError::Create {
        dir: d.into(),
        source,
    })
}

fn write(fx: &impl Effects, p: &Path, v: &str) -> Result<(), CgroupError> {
    fx.write_file(p, v.as_bytes())
        .map_err(|source| CgroupError::Write {
            path: p.into(),
            value: v.into(),
            source,
        })
}

impl Cgroup {
    /// The cgroup for `cgroups_path` (the spec's `linux.cgroupsPath`) or the
    /// default `amphi/<id>`.
    pub fn new(cgroups_path: Option<&Path>, id: &str) -> Result<Self, CgroupError> {
        let path = match cgroups_path {
            Some(p) => {
                let s = p.to_string_lossy();
                if s.contains(':') {
                    return Err(CgroupError::SystemdPath(s.into()));
                }
                if s.split('/').any(|c| c == "..") {
                    return Err(CgroupError::DotDot(s.into()));
                }
                s.trim_start_matches('/').to_string()
            }
            None => format!("amphi/{id}"),
        };
        if path.is_empty() {
            return Err(CgroupError::RootCgroup);
        }
        Ok(Cgroup {
            mode: mode(),
            path,
            created_parent: None,
        })
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs_in(&Layout::host())
    }

    fn dirs_in(&self, layout: &Layout<'_>) -> Vec<PathBuf> {
        self.hierarchies(layout)
            .into_iter()
            .map(|h| h.join(&self.path))
            .collect()
    }

    /// The roots of the hierarchies this cgroup has a directory in.
    fn hierarchies(&self, layout: &Layout<'_>) -> Vec<PathBuf> {
        match self.mode {
            Mode::Unified => vec![layout.root.to_path_buf()],
            Mode::Legacy => layout.v1.to_vec(),
        }
    }

    /// Creates the cgroup, applies limits and device rules (a new
    /// container's: an exec joining its cgroup passes none) and moves
    /// `pid` in.
    pub fn apply(
        &mut self,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), CgroupError> {
        self.apply_in(&Real, &Layout::host(), pid, res, devices)
    }

    fn apply_in(
        &mut self,
        fx: &impl Effects,
        layout: &Layout<'_>,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), CgroupError> {
        if devices.is_some() {
            // A new cgroup (an exec joining one passes no device rules).
            self.created_parent = self.missing_parent(layout);
        }
        match self.mode {
            Mode::Unified => self.apply_v2(fx, layout.root, pid, res, devices),
            Mode::Legacy => self.apply_v1(fx, layout, pid, res, devices),
        }
    }

    /// The shallowest proper parent of `path` missing from the first
    /// hierarchy, unless it is the shared `amphi/`.
    fn missing_parent(&self, layout: &Layout<'_>) -> Option<String> {
        let base = self.hierarchies(layout).into_iter().next()?;
        let mut cur = PathBuf::new();
        let comps: Vec<_> = Path::new(&self.path).components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            cur.push(c);
            if !base.join(&cur).exists() {
                let rel = cur.to_string_lossy().into_owned();
                return (rel != "amphi").then_some(rel);
            }
        }
        None
    }

    fn apply_v2(
        &self,
        fx: &impl Effects,
        root: &Path,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), CgroupError> {
        let settings = planned(res, resources::v2)?;
        let dir = root.join(&self.path);
        self.descend_v2(fx, root, &resources::v2_controllers(&settings), true)?;
        for s in &settings {
            apply_setting(fx, &dir.join(&s.file), s)?;
        }
        if let Some(rules) = devices {
            super::devices::apply_v2(&dir, rules)?;
        }
        write(fx, &dir.join("cgroup.procs"), &pid.to_string())
    }

    fn apply_v1(
        &self,
        fx: &impl Effects,
        layout: &Layout<'_>,
        pid: i32,
        res: Option<&LinuxResources>,
        devices: Option<&[Rule]>,
    ) -> Result<(), CgroupError> {
        let root = layout.root;
        let settings = planned(res, resources::v1)?;
        // Every controller a limit needs is mounted, before anything is made.
        for s in settings.iter().filter(|s| !s.optional) {
            let h = root.join(s.controller);
            if !h.is_dir() {
                return Err(CgroupError::NoController {
                    field: s.field,
                    controller: s.controller,
                    hierarchy: h,
                });
            }
        }
        let dirs = self.dirs_in(layout);
        let cpuset = root.join("cpuset");
        for d in &dirs {
            create_dir(fx, d)?;
            // cpuset needs its parents' cpus and mems copied down.
            if d.starts_with(&cpuset) {
                copy_cpuset(fx, &cpuset, d);
            }
        }
        for s in &settings {
            let file = root.join(s.controller).join(&self.path).join(&s.file);
            apply_setting(fx, &file, s)?;
        }
        if let Some(rules) = devices {
            let d = root.join("devices").join(&self.path);
            if !d.is_dir() {
                return Err(CgroupError::NoDevicesController {
                    hierarchy: root.join("devices"),
                });
            }
            super::devices::apply_v1(fx, &d, rules)?;
        }
        for d in &dirs {
            write(fx, &d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Changes a running container's limits (`update`): writes only what
    /// `res` sets. On v1, the memory limit and memsw (memory + swap, never
    /// below the limit) are written in one order, and if the kernel refuses
    /// (EINVAL: raising both, the new limit is above the old memsw), in the
    /// other, as runc does.
    pub fn update(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        self.update_in(&Real, Path::new(ROOT), res)
    }

    fn update_in(
        &self,
        fx: &impl Effects,
        root: &Path,
        res: &LinuxResources,
    ) -> Result<(), CgroupError> {
        let host = resources::Host::for_resources(res);
        match self.mode {
            Mode::Unified => {
                let settings = resources::v2(res, &host)?;
                self.descend_v2(fx, root, &resources::v2_controllers(&settings), false)?;
                let dir = root.join(&self.path);
                for s in &settings {
                    apply_setting(fx, &dir.join(&s.file), s)?;
                }
                Ok(())
            }
            Mode::Legacy => {
                let settings = resources::v1(res, &host)?;
                let file =
                    |s: &resources::Setting| root.join(s.controller).join(&self.path).join(&s.file);
                let is_mem = |s: &resources::Setting| {
                    s.file == "memory.limit_in_bytes" || s.file == "memory.memsw.limit_in_bytes"
                };
                let mem: Vec<&resources::Setting> = settings.iter().filter(|s| is_mem(s)).collect();
                let first = mem.iter().try_for_each(|s| apply_setting(fx, &file(s), s));
                if let Err(e) = first {
                    if mem.len() < 2 {
                        return Err(e);
                    }
                    mem.iter()
                        .rev()
                        .try_for_each(|s| apply_setting(fx, &file(s), s))?;
                }
                for s in settings.iter().filter(|s| !is_mem(s)) {
                    apply_setting(fx, &file(s), s)?;
                }
                Ok(())
            }
        }
    }

    /// Enables the `want`ed controllers (those available) on the way down
    /// to this (v2) cgroup, creating each directory when `create`.
    fn descend_v2(
        &self,
        fx: &impl Effects,
        root: &Path,
        want: &[String],
        create: bool,
    ) -> Result<(), CgroupError> {
        let mut cur = root.to_path_buf();
        for comp in Path::new(&self.path).components() {
            let avail = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
            let enable: Vec<String> = want
                .iter()
                .filter(|c| avail.split_whitespace().any(|a| a == c.as_str()))
                .map(|c| format!("+{c}"))
                .collect();
            if !enable.is_empty() {
                let _ = fx.write_file(
                    &cur.join("cgroup.subtree_control"),
                    enable.join(" ").as_bytes(),
                );
            }
            cur.push(comp);
            if create {
                create_dir(fx, &cur)?;
            }
        }
        Ok(())
    }

    /// Reads one file of this cgroup: v1 in `controller`'s hierarchy, v2
    /// in the cgroup's one directory. None when it is missing.
    pub fn read(&self, controller: &str, file: &str) -> Option<String> {
        let p = match self.mode {
            Mode::Unified => Path::new(ROOT).join(&self.path).join(file),
            Mode::Legacy => Path::new(ROOT).join(controller).join(&self.path).join(file),
        };
        fs::read_to_string(p).ok()
    }

    /// The freezer file and the values meaning frozen / thawed.
    fn freezer(&self) -> (PathBuf, &'static str, &'static str) {
        match self.mode {
            Mode::Unified => (
                Path::new(ROOT).join(&self.path).join("cgroup.freeze"),
                "1",
                "0",
            ),
            Mode::Legacy => (
                Path::new(ROOT)
                    .join("freezer")
                    .join(&self.path)
                    .join("freezer.state"),
                "FROZEN",
                "THAWED",
            ),
        }
    }

    /// Whether the container is paused (its cgroup frozen).
    pub fn frozen(&self) -> bool {
        let (file, frozen, _) = self.freezer();
        fs::read_to_string(file).is_ok_and(|s| s.trim() == frozen)
    }

    /// Freezes (`pause`) or thaws (`resume`) the cgroup, and waits until
    /// the kernel says it is done: v1's freezer.state reads back FROZEN
    /// (FREEZING while tasks are still being stopped: the write is
    /// repeated, as the kernel documentation says), v2's cgroup.events
    /// says `frozen 1` (or `frozen 0`).
    pub fn freeze(&self, on: bool) -> Result<(), CgroupError> {
        let (file, frozen, thawed) = self.freezer();
        let want = if on { frozen } else { thawed };
        if !file.exists() {
            return Err(CgroupError::NoFreezer {
                pause: on,
                file,
                legacy: self.mode == Mode::Legacy,
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let events = Path::new(ROOT).join(&self.path).join("cgroup.events");
        loop {
            write(&Real, &file, want)?;
            let done = match self.mode {
                Mode::Legacy => fs::read_to_string(&file).is_ok_and(|s| s.trim() == want),
                Mode::Unified => fs::read_to_string(&events).is_ok_and(|s| {
                    s.lines()
                        .any(|l| l.trim() == format!("frozen {}", u8::from(on)))
                }),
            };
            if done {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                if on {
                    // Not left half frozen.
                    let _ = write(&Real, &file, thawed);
                }
                return Err(CgroupError::FreezeTimeout { file, want });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
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
        for h in self.hierarchies(&Layout::host()) {
            let d = h.join(&self.path);
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
            // rmdir and the cpuset copy in each hierarchy. Parents this
            // cgroup's creation made go, if nothing else uses them.
            if let Some(top) = &self.created_parent {
                let top = h.join(top);
                let mut p = d.parent();
                while let Some(dir) = p.filter(|dir| dir.starts_with(&top)) {
                    if fs::remove_dir(dir).is_err() {
                        break;
                    }
                    p = dir.parent();
                }
            }
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

/// The writes `plan` (resources::v1 or v2) makes of `res` on this host.
fn planned(
    res: Option<&LinuxResources>,
    plan: fn(&LinuxResources, &resources::Host) -> Result<Vec<resources::Setting>, ResourcesError>,
) -> Result<Vec<resources::Setting>, ResourcesError> {
    res.map_or(Ok(Vec::new()), |r| {
        plan(r, &resources::Host::for_resources(r))
    })
}

/// Writes one setting, naming the spec's field when it fails.
fn apply_setting(
    fx: &impl Effects,
    file: &Path,
    s: &resources::Setting,
) -> Result<(), CgroupError> {
    // Checked first: cgroupfs answers EACCES, not ENOENT, for a file it
    // does not have (write would try to create it).
    if !file.exists() {
        if s.optional {
            return Ok(());
        }
        return Err(CgroupError::NoFile {
            field: s.field,
            file: s.file.clone(),
            path: file.into(),
        });
    }
    // Not created: a file that went away meanwhile is an error too.
    fx.open_write(file)
        .and_then(|mut f| io::Write::write_all(&mut f, s.value.as_bytes()))
        .map_err(|source| CgroupError::Setting {
            field: s.field,
            value: s.value.clone(),
            path: file.into(),
            source,
        })
}

/// Copies `cpuset.cpus` and `cpuset.mems` down from the first parent that
/// has them to each new cgroup on the way to `dir` in the cpuset
/// hierarchy (at `cpuset`), whose own are empty at first.
fn copy_cpuset(fx: &impl Effects, cpuset: &Path, dir: &Path) {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mut chain = Vec::new();
        let mut cur = dir.to_path_buf();
        while cur.starts_with(cpuset) && cur != cpuset {
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
                        let _ = fx.write_file(&d.join(f), v.trim().as_bytes());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod recorded_tests;
