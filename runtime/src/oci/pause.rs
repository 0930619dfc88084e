//! `pause` and `resume`: the container's cgroup frozen and thawed (the v1
//! freezer's freezer.state, v2's cgroup.freeze); `state` says "paused"
//! meanwhile.

use super::OciError;
use super::Result;
use crate::container::state::{State, Status};
use std::path::Path;

/// `pause`: freezes a running (or created) container, as runc does.
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    super::refuse_microvm(&st, "pause")?;
    match st.status(root) {
        Status::Running | Status::Created => st.cgroup.freeze(true).map_err(OciError::from),
        s => Err(format!(
            "container {id:?} is {}, not running: cannot pause it",
            s.as_str()
        )
        .into()),
    }
}

/// `resume`: thaws a paused container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let st = State::load(root, id).map_err(|e| e.to_string())?;
    super::refuse_microvm(&st, "resume")?;
    match st.status(root) {
        Status::Paused => st.cgroup.freeze(false).map_err(OciError::from),
        s => Err(format!(
            "container {id:?} is {}, not paused: cannot resume it",
            s.as_str()
        )
        .into()),
    }
}
