//! What `amphi run` remembers of each container, under
//! `$AMPHI_ROOT/containers/<id>/container.json` (it outlives reboots, like
//! the container's writable layer next to it), for `ps`, `logs`, `stop`
//! and `rm`.

use crate::container::state::State;
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
}

/// Container directory of `id`.
pub fn dir(store_root: &Path, id: &str) -> PathBuf {
    store_root.join("containers").join(id)
}

impl Record {
    pub fn save(&self, store_root: &Path) -> Result<(), String> {
        let d = dir(store_root, &self.id);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let tmp = d.join("container.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("record serialises"),
        )
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, d.join("container.json")).map_err(|e| format!("{}: {e}", d.display()))
    }

    /// The live runtime state, if the container is running.
    pub fn running(&self, state_root: &Path) -> Option<State> {
        State::load(state_root, &self.id).ok().filter(|s| s.alive())
    }

    /// docker-style status text.
    pub fn status(&self, state_root: &Path) -> String {
        if self.running(state_root).is_some() {
            "Up".to_string()
        } else {
            match self.exit_code {
                Some(c) if self.oom_killed => format!("Exited ({c}, OOM killed)"),
                Some(c) => format!("Exited ({c})"),
                None => "Exited (unknown)".to_string(),
            }
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
        Err(super::amphi_err(format!(
            "invalid container name {n:?}: use letters, digits and _ . - (starting with a letter or digit)"
        )))
    }
}

/// Finds a container by name, full ID or unique ID prefix.
pub fn find(store_root: &Path, arg: &str) -> Result<Record, String> {
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
        [] => Err(format!("no such container: {arg} (see amphi ps -a)")),
        _ => Err(format!("container ID prefix {arg:?} is ambiguous")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert!(super::check_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "a b"] {
            assert!(super::check_name(bad).is_err(), "{bad}");
        }
    }
}
