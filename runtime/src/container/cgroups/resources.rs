//! `linux.resources` as cgroup file writes, for v1 hierarchies and for
//! cgroup v2. Pure: the writes are computed here (and unit-tested without
//! root), then applied in order by the caller, which knows the cgroup's
//! directories.
//!
//! Fields with no file on the host's kind of cgroup are refused with the
//! field's name, except the ones the runtime spec deprecates or that only
//! tune (kernel memory limits, swappiness), which v2 has no file for and
//! runc ignores as well.

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxNetwork, LinuxResources};

/// A `linux.resources` field this host's cgroups cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourcesError {
    #[error("linux.resources.hugepageLimits: page size {0:?}: this host has no huge pages")]
    NoHugePages(String),
    #[error(
        "linux.resources.hugepageLimits: page size {size:?} is not one of this host's ({})",
        sizes.join(", ")
    )]
    HugePageSize { size: String, sizes: Vec<String> },
    #[error("{field} cannot be applied: {why}")]
    Unsupported {
        field: &'static str,
        why: &'static str,
    },
    #[error("linux.resources.network.priorities: bad interface name {0:?}")]
    InterfaceName(String),
    #[error("linux.resources.unified: bad file name {0:?}")]
    UnifiedFile(String),
    #[error("linux.resources.memory.swap needs linux.resources.memory.limit on cgroup v2")]
    SwapWithoutLimit,
}

/// One write: `value` into `file` of the cgroup's directory in
/// `controller`'s hierarchy (v1: the directory name under /sys/fs/cgroup;
/// v2: always "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
    /// The spec's field, for errors: "linux.resources.memory.limit".
    pub field: &'static str,
    /// Skipped when the file does not exist (a kernel built without swap
    /// accounting has no memory.memsw.*; only BFQ has blkio.bfq.weight).
    pub optional: bool,
}

fn set(controller: &'static str, file: &str, value: impl ToString, field: &'static str) -> Setting {
    Setting {
        controller,
        file: file.to_string(),
        value: value.to_string(),
        field,
        optional: false,
    }
}

fn optional(mut s: Setting) -> Setting {
    s.optional = true;
    s
}

/// What the host offers that the writes depend on.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Huge page sizes, as the spec writes them ("2MB", "1GB"), from
    /// /sys/kernel/mm/hugepages.
    pub hugepage_sizes: Vec<String>,
}

impl Host {
    /// What `res` needs to know of the host (nothing is read otherwise).
    pub fn for_resources(res: &LinuxResources) -> Self {
        if res
            .hugepage_limits()
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        {
            Self::detect()
        } else {
            Self::default()
        }
    }

    pub fn detect() -> Self {
        let mut sizes = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(kb) = name
                    .strip_prefix("hugepages-")
                    .and_then(|s| s.strip_suffix("kB"))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    sizes.push(page_size_name(kb));
                }
            }
        }
        sizes.sort();
        Host {
            hugepage_sizes: sizes,
        }
    }
}

/// A huge page size in kB as the cgroup files name it: 2048 → "2MB",
/// 1048576 → "1GB", 64 → "64KB".
pub fn page_size_name(kb: u64) -> String {
    if kb >= 1 << 20 && kb % (1 << 20) == 0 {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 && kb % (1 << 10) == 0 {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

fn hugepage_size<'a>(size: &'a str, host: &Host) -> Result<&'a str, ResourcesError> {
    if host.hugepage_sizes.iter().any(|s| s == size) {
        Ok(size)
    } else if host.hugepage_sizes.is_empty() {
        Err(ResourcesError::NoHugePages(size.into()))
    } else {
        Err(ResourcesError::HugePageSize {
            size: size.into(),
            sizes: host.hugepage_sizes.clone(),
        })
    }
}

fn unsupported(field: &'static str, why: &'static str) -> ResourcesError {
    ResourcesError::Unsupported { field, why }
}

/// The writes for a v1 (or hybrid) host, in the order to apply them.
pub fn v1(res: &LinuxResources, host: &Host) -> Result<Vec<Setting>, ResourcesError> {
    let mut out = Vec::new();
    if let Some(m) = res.memory() {
        v1_memory(m, &mut out);
    }
    if let Some(c) = res.cpu() {
        v1_cpu(c, &mut out);
    }
    if let Some(p) = res.pids() {
        let v = if p.limit() <= 0 {
            "max".to_string()
        } else {
            p.limit().to_string()
        };
        out.push(set("pids", "pids.max", v, "linux.resources.pids.limit"));
    }
    if let Some(b) = res.block_io() {
        v1_blkio(b, &mut out);
    }
    v1_hugetlb(res, host, &mut out)?;
    if let Some(n) = res.network() {
        v1_network(n, &mut out)?;
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported(
            "linux.resources.rdma",
            "amphi does not manage the rdma controller",
        ));
    }
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(unsupported(
            "linux.resources.unified",
            "it is for cgroup v2, and this host's controllers are cgroup v1",
        ));
    }
    Ok(out)
}

fn v1_blkio(b: &LinuxBlockIo, out: &mut Vec<Setting>) {
    if let Some(w) = b.weight() {
        // CFQ's file, or BFQ's: which exists depends on the scheduler.
        out.push(optional(set(
            "blkio",
            "blkio.bfq.weight",
            w,
            "linux.resources.blockIO.weight",
        )));
        out.push(set(
            "blkio",
            "blkio.weight",
            w,
            "linux.resources.blockIO.weight",
        ));
    }
    if let Some(w) = b.leaf_weight() {
        out.push(set(
            "blkio",
            "blkio.leaf_weight",
            w,
            "linux.resources.blockIO.leafWeight",
        ));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            out.push(set(
                "blkio",
                "blkio.weight_device",
                format!("{}:{} {w}", d.major(), d.minor()),
                "linux.resources.blockIO.weightDevice",
            ));
        }
        if let Some(w) = d.leaf_weight() {
            out.push(set(
                "blkio",
                "blkio.leaf_weight_device",
                format!("{}:{} {w}", d.major(), d.minor()),
                "linux.resources.blockIO.weightDevice",
            ));
        }
    }
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
            "linux.resources.blockIO.throttleReadBpsDevice",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
            "linux.resources.blockIO.throttleWriteBpsDevice",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
            "linux.resources.blockIO.throttleReadIOPSDevice",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
            "linux.resources.blockIO.throttleWriteIOPSDevice",
        ),
    ];
    for (devs, file, field) in throttles {
        for d in devs.iter().flatten() {
            out.push(set(
                "blkio",
                file,
                format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                field,
            ));
        }
    }
}

fn v1_hugetlb(
    res: &LinuxResources,
    host: &Host,
    out: &mut Vec<Setting>,
) -> Result<(), ResourcesError> {
    for h in res.hugepage_limits().iter().flatten() {
        let size = hugepage_size(h.page_size(), host)?;
        out.push(set(
            "hugetlb",
            &format!("hugetlb.{size}.limit_in_bytes"),
            h.limit(),
            "linux.resources.hugepageLimits",
        ));
        // The reservation limit (kernels ≥ 5.7) follows the same limit, as
        // runc sets it, so that reserved but unfaulted pages count too.
        out.push(optional(set(
            "hugetlb",
            &format!("hugetlb.{size}.rsvd.limit_in_bytes"),
            h.limit(),
            "linux.resources.hugepageLimits",
        )));
    }
    Ok(())
}

fn v1_network(n: &LinuxNetwork, out: &mut Vec<Setting>) -> Result<(), ResourcesError> {
    if let Some(id) = n.class_id() {
        out.push(set(
            "net_cls",
            "net_cls.classid",
            id,
            "linux.resources.network.classID",
        ));
    }
    for p in n.priorities().iter().flatten() {
        if p.name().is_empty() || p.name().contains(char::is_whitespace) {
            return Err(ResourcesError::InterfaceName(p.name().clone()));
        }
        out.push(set(
            "net_prio",
            "net_prio.ifpriomap",
            format!("{} {}", p.name(), p.priority()),
            "linux.resources.network.priorities",
        ));
    }
    Ok(())
}

fn v1_memory(m: &LinuxMemory, out: &mut Vec<Setting>) {
    // A new cgroup's memsw limit is unlimited, so the memory limit goes
    // first (memsw may never be below it).
    if let Some(l) = m.limit() {
        out.push(set(
            "memory",
            "memory.limit_in_bytes",
            l,
            "linux.resources.memory.limit",
        ));
    }
    if let Some(s) = m.swap() {
        // v1's memsw is memory plus swap, as the spec's swap is.
        out.push(optional(set(
            "memory",
            "memory.memsw.limit_in_bytes",
            s,
            "linux.resources.memory.swap",
        )));
    }
    if let Some(r) = m.reservation() {
        out.push(set(
            "memory",
            "memory.soft_limit_in_bytes",
            r,
            "linux.resources.memory.reservation",
        ));
    }
    if let Some(k) = m.kernel() {
        // Deprecated by the spec; kernels since 6.0 accept and ignore it.
        out.push(optional(set(
            "memory",
            "memory.kmem.limit_in_bytes",
            k,
            "linux.resources.memory.kernel",
        )));
    }
    if let Some(k) = m.kernel_tcp() {
        out.push(optional(set(
            "memory",
            "memory.kmem.tcp.limit_in_bytes",
            k,
            "linux.resources.memory.kernelTCP",
        )));
    }
    if let Some(s) = m.swappiness() {
        out.push(set(
            "memory",
            "memory.swappiness",
            s,
            "linux.resources.memory.swappiness",
        ));
    }
    if let Some(d) = m.disable_oom_killer() {
        out.push(set(
            "memory",
            "memory.oom_control",
            u8::from(d),
            "linux.resources.memory.disableOOMKiller",
        ));
    }
    if let Some(h) = m.use_hierarchy() {
        out.push(set(
            "memory",
            "memory.use_hierarchy",
            u8::from(h),
            "linux.resources.memory.useHierarchy",
        ));
    }
}

fn v1_cpu(c: &LinuxCpu, out: &mut Vec<Setting>) {
    if let Some(s) = c.shares() {
        out.push(set("cpu", "cpu.shares", s, "linux.resources.cpu.shares"));
    }
    // The period before the quota: a quota is checked against the period.
    if let Some(p) = c.period() {
        out.push(set(
            "cpu",
            "cpu.cfs_period_us",
            p,
            "linux.resources.cpu.period",
        ));
    }
    if let Some(q) = c.quota() {
        out.push(set(
            "cpu",
            "cpu.cfs_quota_us",
            q,
            "linux.resources.cpu.quota",
        ));
    }
    if let Some(b) = c.burst() {
        out.push(set(
            "cpu",
            "cpu.cfs_burst_us",
            b,
            "linux.resources.cpu.burst",
        ));
    }
    if let Some(p) = c.realtime_period() {
        out.push(set(
            "cpu",
            "cpu.rt_period_us",
            p,
            "linux.resources.cpu.realtimePeriod",
        ));
    }
    if let Some(r) = c.realtime_runtime() {
        out.push(set(
            "cpu",
            "cpu.rt_runtime_us",
            r,
            "linux.resources.cpu.realtimeRuntime",
        ));
    }
    if let Some(i) = c.idle() {
        out.push(set("cpu", "cpu.idle", i, "linux.resources.cpu.idle"));
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        out.push(set(
            "cpuset",
            "cpuset.cpus",
            cpus,
            "linux.resources.cpu.cpus",
        ));
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        out.push(set(
            "cpuset",
            "cpuset.mems",
            mems,
            "linux.resources.cpu.mems",
        ));
    }
}

fn v2_max(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// runc's mapping of v1 cpu shares (2..262144) to v2 cpu.weight (1..10000).
fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262144) - 2) * 9999) / 262142
}

/// runc's mapping of v1 blkio weight (10..1000) to v2 io.weight (1..10000).
fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// The writes for a cgroup v2 host, in the order to apply them, and the
/// controllers they need enabled in the parents' subtree_control.
pub fn v2(res: &LinuxResources, host: &Host) -> Result<Vec<Setting>, ResourcesError> {
    let mut out = Vec::new();
    if let Some(m) = res.memory() {
        v2_memory(m, &mut out)?;
    }
    if let Some(c) = res.cpu() {
        v2_cpu(c, &mut out)?;
    }
    if let Some(p) = res.pids() {
        out.push(set(
            "",
            "pids.max",
            v2_max(p.limit()),
            "linux.resources.pids.limit",
        ));
    }
    if let Some(b) = res.block_io() {
        v2_io(b, &mut out)?;
    }
    for h in res.hugepage_limits().iter().flatten() {
        let size = hugepage_size(h.page_size(), host)?;
        out.push(set(
            "",
            &format!("hugetlb.{size}.max"),
            v2_max(h.limit()),
            "linux.resources.hugepageLimits",
        ));
        out.push(optional(set(
            "",
            &format!("hugetlb.{size}.rsvd.max"),
            v2_max(h.limit()),
            "linux.resources.hugepageLimits",
        )));
    }
    if res.network().as_ref().is_some_and(|n| {
        n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty())
    }) {
        return Err(unsupported(
            "linux.resources.network",
            "cgroup v2 has no net_cls or net_prio controller",
        ));
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported(
            "linux.resources.rdma",
            "amphi does not manage the rdma controller",
        ));
    }
    for (k, v) in res.unified().iter().flatten() {
        // A file of this cgroup's directory: one name, no way out of it.
        if k.is_empty() || k.contains('/') || k.starts_with('.') || k.contains('\0') {
            return Err(ResourcesError::UnifiedFile(k.clone()));
        }
        out.push(set("", k, v, "linux.resources.unified"));
    }
    Ok(out)
}

fn v2_memory(m: &LinuxMemory, out: &mut Vec<Setting>) -> Result<(), ResourcesError> {
    if let Some(l) = m.limit() {
        out.push(set(
            "",
            "memory.max",
            v2_max(l),
            "linux.resources.memory.limit",
        ));
    }
    if let Some(r) = m.reservation() {
        out.push(set(
            "",
            "memory.low",
            v2_max(r),
            "linux.resources.memory.reservation",
        ));
    }
    if let Some(s) = m.swap() {
        // v2's swap.max is swap alone; the spec's is memory plus swap.
        let v = match m.limit() {
            _ if s < 0 => "max".to_string(),
            Some(l) if l >= 0 => (s - l).max(0).to_string(),
            _ => return Err(ResourcesError::SwapWithoutLimit),
        };
        out.push(optional(set(
            "",
            "memory.swap.max",
            v,
            "linux.resources.memory.swap",
        )));
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(unsupported(
            "linux.resources.memory.disableOOMKiller",
            "cgroup v2 has no way to disable the OOM killer",
        ));
    }
    // kernel, kernelTCP and swappiness have no v2 file: ignored, as
    // runc and crun do (the spec deprecates the first two).
    Ok(())
}

fn v2_cpu(c: &LinuxCpu, out: &mut Vec<Setting>) -> Result<(), ResourcesError> {
    if let Some(s) = c.shares() {
        out.push(set(
            "",
            "cpu.weight",
            shares_to_weight(s),
            "linux.resources.cpu.shares",
        ));
    }
    if c.quota().is_some() || c.period().is_some() {
        let quota = c.quota().map(v2_max).unwrap_or_else(|| "max".into());
        let period = c.period().unwrap_or(100_000);
        out.push(set(
            "",
            "cpu.max",
            format!("{quota} {period}"),
            "linux.resources.cpu.quota",
        ));
    }
    if let Some(b) = c.burst() {
        out.push(set("", "cpu.max.burst", b, "linux.resources.cpu.burst"));
    }
    if let Some(i) = c.idle() {
        out.push(set("", "cpu.idle", i, "linux.resources.cpu.idle"));
    }
    if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
        return Err(unsupported(
            "linux.resources.cpu.realtimeRuntime/realtimePeriod",
            "cgroup v2 has no realtime CPU controller",
        ));
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        out.push(set("", "cpuset.cpus", cpus, "linux.resources.cpu.cpus"));
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        out.push(set("", "cpuset.mems", mems, "linux.resources.cpu.mems"));
    }
    Ok(())
}

fn v2_io(b: &LinuxBlockIo, out: &mut Vec<Setting>) -> Result<(), ResourcesError> {
    if let Some(w) = b.weight() {
        out.push(optional(set(
            "",
            "io.bfq.weight",
            w,
            "linux.resources.blockIO.weight",
        )));
        out.push(set(
            "",
            "io.weight",
            blkio_to_io_weight(w),
            "linux.resources.blockIO.weight",
        ));
    }
    if b.leaf_weight().is_some() {
        return Err(unsupported(
            "linux.resources.blockIO.leafWeight",
            "cgroup v2 has no leaf weight",
        ));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            out.push(set(
                "",
                "io.weight",
                format!("{}:{} {}", d.major(), d.minor(), blkio_to_io_weight(w)),
                "linux.resources.blockIO.weightDevice",
            ));
        }
    }
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "rbps",
            "throttleReadBpsDevice",
        ),
        (
            b.throttle_write_bps_device(),
            "wbps",
            "throttleWriteBpsDevice",
        ),
        (
            b.throttle_read_iops_device(),
            "riops",
            "throttleReadIOPSDevice",
        ),
        (
            b.throttle_write_iops_device(),
            "wiops",
            "throttleWriteIOPSDevice",
        ),
    ];
    for (devs, key, _) in throttles {
        for d in devs.iter().flatten() {
            out.push(set(
                "",
                "io.max",
                format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                "linux.resources.blockIO",
            ));
        }
    }
    Ok(())
}

/// The v2 controllers the writes need, to enable in each parent's
/// cgroup.subtree_control: the part of each file name before the dot.
pub fn v2_controllers(settings: &[Setting]) -> Vec<String> {
    let mut out: Vec<String> = ["memory", "pids", "cpu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in settings {
        if let Some((c, _)) = s.file.split_once('.') {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
