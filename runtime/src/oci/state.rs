//! `state` and `ps`: what the runtime knows of a container.

use super::Result;
use crate::container::state::State;
use std::path::Path;

/// `state`: the OCI state JSON.
pub fn state(root: &Path, id: &str) -> Result<String> {
    let st = State::load(root, id)?;
    Ok(serde_json::to_string_pretty(&st.oci(root)).expect("state serialises"))
}

/// `ps`: the container's processes.
pub fn ps(root: &Path, id: &str, json: bool) -> Result<String> {
    let st = State::load(root, id)?;
    let mut pids = st.cgroup.pids();
    if pids.is_empty() && st.alive() {
        pids.push(st.pid);
    }
    pids.sort();
    if json {
        return Ok(serde_json::to_string(&pids).expect("pids serialise"));
    }
    let mut out = String::from("PID\tCMD\n");
    for p in pids {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        out.push_str(&format!("{p}\t{cmd}\n"));
    }
    Ok(out)
}
