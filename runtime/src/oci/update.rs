//! `update`: change a running container's resources, as runc's `update`
//! (Kubernetes' in-place resize calls it through containerd): `-r FILE`
//! (or `-r -`, standard input) with `linux.resources` as JSON, or runc's
//! flags. Only what is given changes; the container's resources after
//! the change are kept in its state directory (`resources.json`), so a
//! later `update` starts from them.

use super::OciError;
use super::Result;
use crate::container::config;
use crate::container::state::{State, Status};
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// `update` options: `resources` (`-r`) or the flags, as runc's.
#[derive(Debug, Default, Clone)]
pub struct UpdateOptions {
    pub id: String,
    /// `-r FILE` (`-` for standard input).
    pub resources: Option<PathBuf>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub memory_reservation: Option<String>,
    pub kernel_memory: Option<String>,
    pub kernel_memory_tcp: Option<String>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    pub blkio_weight: Option<u16>,
}

/// A size as runc's flags take it: bytes, or a number with a k, m, g or t
/// suffix (powers of 1024; an optional trailing b); `-1` is unlimited.
pub fn parse_size(flag: &str, s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("--{flag} {s:?}: expected a size (bytes, or e.g. 512m, 2g)"))?;
    if !(0.0..9.2e18).contains(&(v * mult as f64)) {
        return Err(format!("--{flag} {s:?}: out of range").into());
    }
    Ok((v * mult as f64) as i64)
}

/// The flags as a `linux.resources` JSON object holding only what was given.
pub fn flags_json(o: &UpdateOptions) -> Result<Value> {
    let mut memory = Map::new();
    for (flag, key, v) in [
        ("memory", "limit", &o.memory),
        ("memory-swap", "swap", &o.memory_swap),
        ("memory-reservation", "reservation", &o.memory_reservation),
        ("kernel-memory", "kernel", &o.kernel_memory),
        ("kernel-memory-tcp", "kernelTCP", &o.kernel_memory_tcp),
    ] {
        if let Some(v) = v {
            memory.insert(key.into(), parse_size(flag, v)?.into());
        }
    }
    let mut cpu = Map::new();
    if let Some(v) = o.cpu_shares {
        cpu.insert("shares".into(), v.into());
    }
    if let Some(v) = o.cpu_quota {
        cpu.insert("quota".into(), v.into());
    }
    if let Some(v) = o.cpu_period {
        cpu.insert("period".into(), v.into());
    }
    if let Some(v) = o.cpu_rt_period {
        cpu.insert("realtimePeriod".into(), v.into());
    }
    if let Some(v) = o.cpu_rt_runtime {
        cpu.insert("realtimeRuntime".into(), v.into());
    }
    if let Some(v) = &o.cpuset_cpus {
        cpu.insert("cpus".into(), v.clone().into());
    }
    if let Some(v) = &o.cpuset_mems {
        cpu.insert("mems".into(), v.clone().into());
    }
    let mut out = Map::new();
    if !memory.is_empty() {
        out.insert("memory".into(), memory.into());
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), cpu.into());
    }
    if let Some(v) = o.pids_limit {
        out.insert("pids".into(), json!({ "limit": v }));
    }
    if let Some(v) = o.blkio_weight {
        out.insert("blockIO".into(), json!({ "weight": v }));
    }
    Ok(out.into())
}

/// Merges `change` into `base` (objects key by key; anything else replaced).
pub fn merge(base: &mut Value, change: &Value) {
    match (base, change) {
        (Value::Object(b), Value::Object(c)) => {
            for (k, v) in c {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, c) => *b = c.clone(),
    }
}

fn parse_resources(what: &str, v: &Value) -> Result<LinuxResources> {
    serde_path_to_error::deserialize::<_, LinuxResources>(v)
        .map_err(|e| format!("{what}: invalid at `{}`: {}", e.path(), e.inner()).into())
}

/// The file holding a container's resources after updates.
fn saved_path(root: &Path, id: &str) -> PathBuf {
    State::dir(root, id).join("resources.json")
}

/// A container's current `linux.resources` (as JSON): the last update's,
/// else its bundle's.
pub fn current(root: &Path, st: &State) -> Value {
    if let Ok(d) = std::fs::read(saved_path(root, &st.id)) {
        if let Ok(v) = serde_json::from_slice(&d) {
            return v;
        }
    }
    config::load(&st.bundle)
        .ok()
        .and_then(|s| s.linux().as_ref().and_then(|l| l.resources().clone()))
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(|| json!({}))
}

/// `update`.
pub fn update(root: &Path, o: &UpdateOptions) -> Result<()> {
    let st = State::load(root, &o.id).map_err(|e| e.to_string())?;
    super::refuse_microvm(&st, "update")?;
    if st.status(root) == Status::Stopped {
        return Err(format!(
            "container {:?} is stopped: cannot update its resources",
            o.id
        )
        .into());
    }
    let mut change = match &o.resources {
        Some(p) => {
            let data = if p == Path::new("-") {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| OciError::io("-r -: reading standard input", e))?;
                b
            } else {
                std::fs::read(p).map_err(|e| OciError::io(format_args!("-r {}", p.display()), e))?
            };
            let v: Value = serde_json::from_slice(&data).map_err(|e| {
                OciError::io(
                    format_args!("-r {}: not JSON", p.display()),
                    std::io::Error::from(e),
                )
            })?;
            // Checked as linux.resources before anything is written.
            parse_resources(&format!("-r {}", p.display()), &v)?;
            v
        }
        None => flags_json(o)?,
    };
    if change.as_object().is_none_or(|m| m.is_empty()) {
        return Err("update: nothing to change (give -r FILE or a resource flag)".into());
    }
    let mut merged = current(root, &st);
    merge(&mut merged, &change);
    // The spec's swap is memory + swap: cgroup v2 needs the limit with
    // it, so an update of swap alone carries the current limit along.
    if change["memory"].get("swap").is_some() && change["memory"].get("limit").is_none() {
        if let Some(l) = merged["memory"].get("limit").cloned() {
            change["memory"]["limit"] = l;
        }
    }
    let res = parse_resources("update", &change)?;
    parse_resources("the container's resources after the update", &merged)?;
    st.cgroup.update(&res).map_err(|e| e.to_string())?;
    let data = serde_json::to_vec_pretty(&merged).expect("json");
    crate::image::store::write_private(&saved_path(root, &o.id), &data)
        .map_err(|e| OciError::io(format_args!("saving the resources of {:?}", o.id), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_runc_flags() {
        assert_eq!(parse_size("memory", "100000000").unwrap(), 100_000_000);
        assert_eq!(parse_size("memory", "100m").unwrap(), 100 << 20);
        assert_eq!(parse_size("memory", "1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("memory", "64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("memory-swap", "-1").unwrap(), -1);
        assert!(parse_size("memory", "lots").is_err());
        assert!(parse_size("memory", "-5").is_err());
    }

    #[test]
    fn only_the_given_flags() {
        let o = UpdateOptions {
            memory: Some("64m".into()),
            pids_limit: Some(50),
            cpu_shares: Some(512),
            ..Default::default()
        };
        assert_eq!(
            flags_json(&o).unwrap(),
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}, "cpu": {"shares": 512}})
        );
        assert_eq!(flags_json(&UpdateOptions::default()).unwrap(), json!({}));
    }

    #[test]
    fn merge_keeps_what_is_not_changed() {
        let mut base = json!({"memory": {"limit": 1, "swap": 2}, "pids": {"limit": 5}});
        merge(
            &mut base,
            &json!({"memory": {"limit": 3}, "cpu": {"shares": 9}}),
        );
        assert_eq!(
            base,
            json!({"memory": {"limit": 3, "swap": 2}, "pids": {"limit": 5}, "cpu": {"shares": 9}})
        );
    }
}
