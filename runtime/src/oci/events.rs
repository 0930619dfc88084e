//! `events`: a container's resource usage, as runc prints it. `--stats`
//! prints one `{"type":"stats","id":...,"data":{cpu,memory,pids,blkio,
//! hugetlb}}` object; without it, one every `--interval`, and an
//! `{"type":"oom","id":...}` event when the kernel's OOM killer acts in
//! the container (found by polling the OOM-kill counter, v1's
//! memory.oom_control and v2's memory.events, at every interval and every
//! 100ms in between), until the container stops.

use super::OciError;
use super::Result;
use crate::container::cgroups::{Cgroup, Mode};
use crate::container::state::{State, Status};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// `events` options.
pub struct EventsOptions {
    pub id: String,
    /// One stats object, then exit.
    pub stats: bool,
    /// Between two stats objects of the stream.
    pub interval: Duration,
}

/// `KEY VALUE` lines (cpu.stat, memory.stat, memory.events, ...) as pairs.
pub fn flat_keyed(s: &str) -> Vec<(String, u64)> {
    s.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let k = f.next()?;
            let v = f.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

fn key(kv: &[(String, u64)], k: &str) -> u64 {
    kv.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// A number of a cgroup file; "max" (unlimited) is None, as is a missing
/// file.
fn num(s: Option<String>) -> Option<u64> {
    s?.trim().parse().ok()
}

/// v1's blkio.throttle.* lines (`MAJ:MIN Op VALUE`) as runc's entries.
pub fn blkio_v1(s: &str) -> Vec<Value> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, v] = f[..] else { return None };
            let (ma, mi) = dev.split_once(':')?;
            Some(
                json!({"major": ma.parse::<u64>().ok()?, "minor": mi.parse::<u64>().ok()?,
                "op": op, "value": v.parse::<u64>().ok()?}),
            )
        })
        .collect()
}

/// v2's io.stat (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`) as runc's
/// ioServiceBytesRecursive and ioServicedRecursive.
pub fn blkio_v2(s: &str) -> (Vec<Value>, Vec<Value>) {
    let (mut bytes, mut ios) = (Vec::new(), Vec::new());
    for l in s.lines() {
        let mut f = l.split_whitespace();
        let Some((ma, mi)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            let e = |op: &str| json!({"major": ma, "minor": mi, "op": op, "value": v});
            match k {
                "rbytes" => bytes.push(e("Read")),
                "wbytes" => bytes.push(e("Write")),
                "rios" => ios.push(e("Read")),
                "wios" => ios.push(e("Write")),
                _ => {}
            }
        }
    }
    (bytes, ios)
}

fn hugepage_sizes() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    let kb: u64 = n
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    Some(crate::container::cgroups::resources::page_size_name(kb))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The stats of a container's cgroup, in runc's `data` shape.
pub fn stats(cg: &Cgroup) -> Value {
    let (mut data, hugetlb) = match cg.mode {
        Mode::Legacy => (legacy_stats(cg), legacy_hugetlb(cg)),
        Mode::Unified => (unified_stats(cg), unified_hugetlb(cg)),
    };
    data.insert("hugetlb".into(), hugetlb.into());
    data.into()
}

/// The `cpu`, `memory`, `pids` and `blkio` stats of a cgroup v1 container,
/// from its cpuacct, cpu, memory, pids and blkio hierarchies.
fn legacy_stats(cg: &Cgroup) -> Map<String, Value> {
    let r = |c: &str, f: &str| cg.read(c, f);
    let mut data = Map::new();
    let percpu: Vec<u64> = r("cpuacct", "cpuacct.usage_percpu")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let st = flat_keyed(&r("cpuacct", "cpuacct.stat").unwrap_or_default());
    // cpuacct.stat counts USER_HZ ticks (100 a second).
    let tick = 10_000_000u64;
    let thr = flat_keyed(&r("cpu", "cpu.stat").unwrap_or_default());
    data.insert("cpu".into(), json!({
        "usage": {"total": num(r("cpuacct", "cpuacct.usage")).unwrap_or(0), "percpu": percpu,
            "kernel": key(&st, "system") * tick, "user": key(&st, "user") * tick},
        "throttling": {"periods": key(&thr, "nr_periods"),
            "throttled_periods": key(&thr, "nr_throttled"), "throttled_time": key(&thr, "throttled_time")},
    }));
    let mem = |prefix: &str| {
        json!({
            "limit": num(r("memory", &format!("{prefix}.limit_in_bytes"))).unwrap_or(0),
            "usage": num(r("memory", &format!("{prefix}.usage_in_bytes"))).unwrap_or(0),
            "max": num(r("memory", &format!("{prefix}.max_usage_in_bytes"))).unwrap_or(0),
            "failcnt": num(r("memory", &format!("{prefix}.failcnt"))).unwrap_or(0),
        })
    };
    let raw = flat_keyed(&r("memory", "memory.stat").unwrap_or_default());
    data.insert("memory".into(), json!({
        "cache": key(&raw, "total_cache"),
        "usage": mem("memory"), "swap": mem("memory.memsw"),
        "kernel": mem("memory.kmem"), "kernelTCP": mem("memory.kmem.tcp"),
        "raw": raw.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<Map<String, Value>>(),
    }));
    data.insert(
        "pids".into(),
        json!({
            "current": num(r("pids", "pids.current")).unwrap_or(0),
            "limit": num(r("pids", "pids.max")).unwrap_or(0),
        }),
    );
    data.insert("blkio".into(), json!({
        "ioServiceBytesRecursive": blkio_v1(&r("blkio", "blkio.throttle.io_service_bytes_recursive").unwrap_or_default()),
        "ioServicedRecursive": blkio_v1(&r("blkio", "blkio.throttle.io_serviced_recursive").unwrap_or_default()),
    }));
    data
}

/// The `hugetlb` stats of a cgroup v1 container, a page size each.
fn legacy_hugetlb(cg: &Cgroup) -> Map<String, Value> {
    let r = |c: &str, f: &str| cg.read(c, f);
    let mut hugetlb = Map::new();
    for size in hugepage_sizes() {
        let f = |x: &str| num(r("hugetlb", &format!("hugetlb.{size}.{x}"))).unwrap_or(0);
        hugetlb.insert(
            size.clone(),
            json!({"usage": f("usage_in_bytes"),
            "max": f("max_usage_in_bytes"), "failcnt": f("failcnt")}),
        );
    }
    hugetlb
}

/// The `cpu`, `memory`, `pids` and `blkio` stats of a cgroup v2 container,
/// from the files of its one cgroup.
fn unified_stats(cg: &Cgroup) -> Map<String, Value> {
    let r = |c: &str, f: &str| cg.read(c, f);
    let mut data = Map::new();
    let st = flat_keyed(&r("", "cpu.stat").unwrap_or_default());
    data.insert("cpu".into(), json!({
        "usage": {"total": key(&st, "usage_usec") * 1000, "kernel": key(&st, "system_usec") * 1000,
            "user": key(&st, "user_usec") * 1000},
        "throttling": {"periods": key(&st, "nr_periods"), "throttled_periods": key(&st, "nr_throttled"),
            "throttled_time": key(&st, "throttled_usec") * 1000},
    }));
    let raw = flat_keyed(&r("", "memory.stat").unwrap_or_default());
    let events = flat_keyed(&r("", "memory.events").unwrap_or_default());
    data.insert("memory".into(), json!({
        "cache": key(&raw, "file"),
        "usage": {"usage": num(r("", "memory.current")).unwrap_or(0),
            "limit": num(r("", "memory.max")).unwrap_or(u64::MAX),
            "max": num(r("", "memory.peak")).unwrap_or(0), "failcnt": key(&events, "max")},
        "swap": {"usage": num(r("", "memory.swap.current")).unwrap_or(0),
            "limit": num(r("", "memory.swap.max")).unwrap_or(u64::MAX)},
        "raw": raw.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<Map<String, Value>>(),
    }));
    data.insert(
        "pids".into(),
        json!({
            "current": num(r("", "pids.current")).unwrap_or(0),
            "limit": num(r("", "pids.max")).unwrap_or(0),
        }),
    );
    let (bytes, ios) = blkio_v2(&r("", "io.stat").unwrap_or_default());
    data.insert(
        "blkio".into(),
        json!({"ioServiceBytesRecursive": bytes, "ioServicedRecursive": ios}),
    );
    data
}

/// The `hugetlb` stats of a cgroup v2 container, a page size each.
fn unified_hugetlb(cg: &Cgroup) -> Map<String, Value> {
    let r = |c: &str, f: &str| cg.read(c, f);
    let mut hugetlb = Map::new();
    for size in hugepage_sizes() {
        let ev = flat_keyed(&r("", &format!("hugetlb.{size}.events")).unwrap_or_default());
        hugetlb.insert(
            size.clone(),
            json!({
            "usage": num(r("", &format!("hugetlb.{size}.current"))).unwrap_or(0),
            "failcnt": key(&ev, "max")}),
        );
    }
    hugetlb
}

/// The count of OOM kills in the container's cgroup so far.
fn oom_kills(cg: &Cgroup) -> u64 {
    let (c, f) = match cg.mode {
        Mode::Legacy => ("memory", "memory.oom_control"),
        Mode::Unified => ("", "memory.events"),
    };
    key(&flat_keyed(&cg.read(c, f).unwrap_or_default()), "oom_kill")
}

/// `events`: prints to standard output as it goes.
pub fn events(root: &Path, o: &EventsOptions) -> Result<()> {
    use std::io::Write;
    let st = State::load(root, &o.id).map_err(|e| e.to_string())?;
    let stopped = |st: &State| st.status(root) == Status::Stopped;
    if stopped(&st) {
        return Err(format!("container {:?} is not running", o.id).into());
    }
    let line = |v: Value| -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{v}")
            .and_then(|()| out.flush())
            .map_err(|e| OciError::io("writing events", e))
    };
    let stats_event = || json!({"type": "stats", "id": o.id, "data": stats(&st.cgroup)});
    if o.stats {
        return line(stats_event());
    }
    if o.interval.is_zero() {
        return Err("events --interval must be more than 0".into());
    }
    let mut ooms = oom_kills(&st.cgroup);
    let mut next = Instant::now();
    loop {
        if State::load(root, &o.id).is_err() || stopped(&st) {
            return Ok(());
        }
        let n = oom_kills(&st.cgroup);
        if n > ooms {
            ooms = n;
            line(json!({"type": "oom", "id": o.id}))?;
        }
        if Instant::now() >= next {
            line(stats_event())?;
            next = Instant::now() + o.interval;
        }
        std::thread::sleep(o.interval.min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let kv = flat_keyed("usage_usec 120\nuser_usec 100\nbad\nsystem_usec x\n");
        assert_eq!(key(&kv, "usage_usec"), 120);
        assert_eq!(key(&kv, "system_usec"), 0);
        assert_eq!(num(Some("max\n".into())), None);
        assert_eq!(num(Some("42\n".into())), Some(42));
        assert_eq!(
            blkio_v1("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n"),
            vec![
                json!({"major": 8, "minor": 0, "op": "Read", "value": 4096}),
                json!({"major": 8, "minor": 0, "op": "Write", "value": 0}),
            ]
        );
        let (b, i) = blkio_v2("254:0 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n");
        assert_eq!(
            b[0],
            json!({"major": 254, "minor": 0, "op": "Read", "value": 512})
        );
        assert_eq!(i.len(), 2);
    }
}
