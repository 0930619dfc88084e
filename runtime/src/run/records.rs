//! What `amphi run` remembers of each container, under
//! `$AMPHI_ROOT/containers/<id>/container.json` (it outlives reboots, like
//! the container's writable layer next to it), for `ps`, `logs`, `stop`
//! and `rm`.
//!
//! Each record names its monitor: the process that waits for the container
//! and records its end (the `amphi run` client in the foreground, the
//! monitor forked by `amphi run -d`). A container that has not ended and
//! whose monitor is gone (killed with `kill -9`, or the host rebooted) is
//! *stale*: `ps` says so, and `gc` and `rm` kill what is left of it and
//! remove its state, cgroups and writable layer.

use crate::container::state::{self, State};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One container made by `amphi run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub created: String,
    #[serde(default)]
    pub finished: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub detached: bool,
    #[serde(default)]
    pub rm: bool,
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// The process that waits for the container (absent in records made by
    /// older versions).
    #[serde(default)]
    pub monitor: Option<Proc>,
    /// Published ports, docker's way (`127.0.0.1:8080->80/tcp`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// A microVM container: its guest kernel and VMM (None: a native one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRecord>,
}

/// What a microVM container's record adds: the monitor owns the VM, and
/// the VMM process (QEMU, or `amphi vmm`) is the container's process as
/// the host sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// The guest kernel's release.
    pub kernel: String,
    /// The VMM process, once the workload runs in the guest.
    #[serde(default)]
    pub vmm: Option<Proc>,
}

/// The file `amphi stop`/`kill`/`rm -f` leave in a microVM container's
/// directory before they kill its VMM: the monitor then records the end as
/// a SIGKILL (137), not as a VM failure.
pub const KILL_REQUESTED: &str = "kill-requested";

/// A process, told apart from a later one with the same pid by its start
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

impl Proc {
    /// This process.
    pub fn current() -> Proc {
        let pid = std::process::id() as i32;
        Proc {
            pid,
            start_time: state::start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the process still runs (a zombie does not).
    pub fn alive(&self) -> bool {
        self.pid > 0
            && state::start_time(self.pid) == Some(self.start_time)
            && !state::is_zombie(self.pid)
    }
}

/// Where a recorded container is in its life.
#[derive(Debug)]
pub enum Life {
    /// Being set up by its (live) monitor.
    Created,
    /// Running, watched by its monitor.
    Up(State),
    /// A microVM container running, its monitor and VMM alive.
    VmUp { monitor: Proc, vmm: Proc },
    /// Ended; its monitor recorded (or is recording) how.
    Exited,
    /// Not ended, and its monitor is gone: nothing will record its end or
    /// clean up after it. `running` is its process, if that still runs.
    Stale { running: Option<State> },
}

/// Container directory of `id`.
pub fn dir(store_root: &Path, id: &str) -> PathBuf {
    store_root.join("containers").join(id)
}

/// Creates the container directory of `id` (mode 0700: its record, log
/// and writable layer are the container's business only).
pub fn create_dir(store_root: &Path, id: &str) -> Result<PathBuf, super::RunError> {
    let d = dir(store_root, id);
    crate::image::store::create_private_dir(&d).map_err(|e| super::RunError::io(d.display(), e))?;
    Ok(d)
}

impl Record {
    pub fn save(&self, store_root: &Path) -> Result<(), super::RunError> {
        let d = create_dir(store_root, &self.id)?;
        let tmp = d.join("container.json.tmp");
        crate::image::store::write_private(
            &tmp,
            &serde_json::to_vec_pretty(self).expect("record serialises"),
        )
        .map_err(|e| super::RunError::io(tmp.display(), e))?;
        std::fs::rename(&tmp, d.join("container.json"))
            .map_err(|e| super::RunError::io(d.display(), e))
    }

    /// The live runtime state, if the container is running.
    pub fn running(&self, state_root: &Path) -> Option<State> {
        State::load(state_root, &self.id).ok().filter(|s| s.alive())
    }

    /// "container", or "microVM" with the guest kernel, for `ps`.
    pub fn isolation(&self) -> String {
        match &self.vm {
            Some(vm) => format!("microVM {}", vm.kernel),
            None => "container".to_string(),
        }
    }

    /// Whether the monitor still runs (unknown for old records: then only
    /// a container that still runs counts as watched).
    fn monitor_alive(&self) -> Option<bool> {
        self.monitor.map(|m| m.alive())
    }

    /// Where the container is in its life (see [`Life`]).
    pub fn life(&self, state_root: &Path) -> Life {
        if self.exit_code.is_some() {
            return Life::Exited;
        }
        if let Some(vm) = &self.vm {
            return match self.monitor.filter(|m| m.alive()) {
                // The VMM dies with its monitor (parent-death signal).
                None => Life::Stale { running: None },
                Some(monitor) => match vm.vmm.filter(|v| v.alive()) {
                    Some(vmm) => Life::VmUp { monitor, vmm },
                    None if vm.vmm.is_some() => Life::Exited,
                    None => Life::Created,
                },
            };
        }
        let running = self.running(state_root);
        match (self.monitor_alive(), running) {
            (Some(true), Some(st)) => Life::Up(st),
            (Some(true), None) => {
                if State::dir(state_root, &self.id).join("state.json").exists() {
                    // Ended a moment ago; the monitor is recording it.
                    Life::Exited
                } else {
                    Life::Created
                }
            }
            (None, Some(st)) => Life::Up(st),
            (Some(false), running) | (None, running @ None) => Life::Stale { running },
        }
    }

    /// docker-style status text.
    pub fn status(&self, state_root: &Path) -> String {
        match self.life(state_root) {
            Life::Up(_) | Life::VmUp { .. } => "Up".to_string(),
            Life::Created => "Created".to_string(),
            Life::Stale { running: Some(_) } => "Stale (still running)".to_string(),
            Life::Stale { running: None } => "Stale".to_string(),
            Life::Exited => match self.exit_code {
                Some(c) if self.oom_killed => format!("Exited ({c}, OOM killed)"),
                Some(c) => format!("Exited ({c})"),
                None => "Exiting".to_string(),
            },
        }
    }
}

/// Every recorded container, newest first.
pub fn list(store_root: &Path) -> Vec<Record> {
    let mut out: Vec<Record> = std::fs::read_dir(store_root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("container.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created));
    out
}

/// Checks a `--name` like docker does.
pub fn check_name(n: &str) -> Result<(), super::RunError> {
    let ok = n.len() <= 128
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(super::RunError::Usage(format!(
            "invalid container name {n:?}: use letters, digits and _ . - (starting with a letter or digit)"
        )))
    }
}

/// Finds a container by name, full ID or unique ID prefix.
pub fn find(store_root: &Path, arg: &str) -> Result<Record, super::RunError> {
    let all = list(store_root);
    if let Some(r) = all.iter().find(|r| r.name == arg || r.id == arg) {
        return Ok(r.clone());
    }
    let hits: Vec<&Record> = all
        .iter()
        .filter(|r| arg.len() >= 3 && r.id.starts_with(arg))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(super::RunError::Usage(format!(
            "no such container: {arg} (see amphi ps -a)"
        ))),
        _ => Err(super::RunError::Usage(format!(
            "container ID prefix {arg:?} is ambiguous"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(monitor: Option<Proc>) -> Record {
        Record {
            id: "c".repeat(64),
            name: "web".into(),
            image: "busybox".into(),
            command: vec!["sleep".into()],
            created: state::now_rfc3339(),
            finished: None,
            exit_code: None,
            oom_killed: false,
            detached: false,
            rm: true,
            stop_signal: None,
            monitor,
            ports: vec![],
            vm: None,
        }
    }

    #[test]
    fn a_container_whose_monitor_is_gone_is_stale() {
        let state_root = tempfile::tempdir().unwrap();
        // A real process that has ended (and been reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = Proc {
            pid: child.id() as i32,
            start_time: state::start_time(child.id() as i32).unwrap_or(1),
        };
        child.wait().unwrap();
        assert!(!dead.alive());
        assert!(Proc::current().alive());

        let r = record(Some(Proc::current()));
        assert!(matches!(r.life(state_root.path()), Life::Created));
        let r = record(Some(dead));
        assert!(matches!(
            r.life(state_root.path()),
            Life::Stale { running: None }
        ));
        assert_eq!(r.status(state_root.path()), "Stale");
        // Records of older versions (no monitor) whose end was not recorded.
        assert!(matches!(
            record(None).life(state_root.path()),
            Life::Stale { .. }
        ));
        let mut r = record(Some(dead));
        r.exit_code = Some(3);
        assert_eq!(r.status(state_root.path()), "Exited (3)");
    }

    #[test]
    fn names() {
        assert!(check_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
