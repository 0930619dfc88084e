//! Container state under the state root (`/run/amphi/<id>/state.json`),
//! and the OCI `state` view of it.

use super::cgroups::Cgroup;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::sys::time::now_rfc3339;

/// The state root or a container's state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Root(#[from] crate::image::store::StoreError),
    #[error("invalid container id {0:?}: must be 1-1024 characters")]
    IdLength(String),
    #[error("invalid container id {0:?}: only letters, digits and _ . - + are allowed")]
    IdCharacters(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: corrupt state: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the state of container {id:?}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
}

/// Default state root, like runc's /run/runc.
pub const DEFAULT_ROOT: &str = "/run/amphi";

/// Creates the state root if needed and makes sure it is private: mode
/// 0700, owned by us (or root), no parent another user can change (see
/// [`crate::image::store::secure_root`]). Each container's directory in it
/// is 0700 and the files holding its config and state 0600.
pub fn ensure_root(root: &Path) -> Result<(), StateError> {
    Ok(crate::image::store::secure_root(root, "state root", true)?)
}

/// Creates the directory of container `id` in the state root, mode 0700
/// whatever the umask; fails with `AlreadyExists` if it is there.
pub fn create_dir(root: &Path, id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let d = State::dir(root, id);
    std::fs::DirBuilder::new().mode(0o700).create(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

/// What amphi keeps about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    /// The process start time (clock ticks since boot), to tell a reused pid.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub cgroup: Cgroup,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Set once the process was seen to exit (by whoever waited for it).
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    /// `amphi run` bookkeeping (image, name, ...), absent for OCI bundles.
    #[serde(default)]
    pub run: Option<serde_json::Value>,
    /// A bundle's container in a microVM: its guest kernel and backend.
    /// `pid` is then the VM's monitor, which forwards signals to the
    /// workload and exits with its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microvm: Option<String>,
}

/// OCI runtime status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Its cgroup frozen (`pause`).
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// Validates a container id: no path characters, sane length.
pub fn check_id(id: &str) -> Result<(), StateError> {
    if id.is_empty() || id.len() > 1024 {
        return Err(StateError::IdLength(id.into()));
    }
    if id == "."
        || id == ".."
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b))
    {
        return Err(StateError::IdCharacters(id.into()));
    }
    Ok(())
}

/// Start time of a process (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl State {
    /// The state of a container whose process `pid` was just launched
    /// (its start time read now, so a reused pid is told apart later).
    pub fn launched(id: &str, pid: i32, bundle: PathBuf, rootfs: PathBuf, cgroup: Cgroup) -> State {
        State {
            id: id.to_string(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            bundle,
            rootfs,
            created: now_rfc3339(),
            cgroup,
            annotations: BTreeMap::new(),
            exit_code: None,
            oom_killed: false,
            run: None,
            microvm: None,
        }
    }

    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    pub fn load(root: &Path, id: &str) -> Result<State, StateError> {
        check_id(id)?;
        let p = Self::dir(root, id).join("state.json");
        let data = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StateError::NotFound(id.into())
            } else {
                StateError::Io {
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path: p, source })
    }

    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let dir = Self::dir(root, &self.id);
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|source| StateError::Encode {
            id: self.id.clone(),
            source,
        })?;
        crate::image::store::write_private(&tmp, &data).map_err(|source| StateError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, dir.join("state.json"))
            .map_err(|source| StateError::Io { path: dir, source })
    }

    /// Whether the recorded process is still the one we started.
    pub fn alive(&self) -> bool {
        self.pid > 0 && start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    pub fn status(&self, root: &Path) -> Status {
        if !self.alive() {
            Status::Stopped
        } else if self.cgroup.frozen() {
            Status::Paused
        } else if Self::dir(root, &self.id).join("exec.fifo").exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The OCI state document.
    pub fn oci(&self, root: &Path) -> serde_json::Value {
        self.oci_as(self.status(root))
    }

    /// The state the poststart hooks read: "running", with the pid, since
    /// they run because the program was executed, even if it has already
    /// exited by then (a short program often has).
    pub fn oci_started(&self) -> serde_json::Value {
        self.oci_as(Status::Running)
    }

    fn oci_as(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "id": self.id,
            "status": status.as_str(),
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
        })
    }
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        check_id("abc-1.2_x+y").unwrap();
        for bad in ["", "a/b", "..", "a b", "../x"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_id("a/b").unwrap_err().to_string(),
            "invalid container id \"a/b\": only letters, digits and _ . - + are allowed"
        );
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(start_time(std::process::id() as i32).is_some());
    }
}
