//! `checkpoint` and `restore`: runc does them through CRIU. amphi has no
//! CRIU integration yet, so both are refused with the reason, naming what
//! the host lacks when CRIU itself is missing or unusable (`criu check`).

use super::Result;
use crate::container::state::State;
use std::path::Path;

/// Why CRIU cannot be used here: not installed, or `criu check` failed.
/// None when it passes.
fn criu_problem() -> Option<String> {
    let out = match std::process::Command::new("criu").arg("check").output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("CRIU is not installed (no `criu` in PATH)".into())
        }
        Err(e) => return Some(format!("running `criu check`: {e}")),
    };
    if out.status.success() {
        return None;
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let why = why
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Some(format!("criu check failed: {}", why.trim()))
}

fn refuse(verb: &str) -> String {
    let base = format!("{verb} is not supported");
    match criu_problem() {
        Some(p) => format!("{base}: it needs CRIU, and {p}"),
        None => format!(
            "{base}: amphi does not drive CRIU yet (the host's CRIU works; use runc for checkpoints)"
        ),
    }
}

/// `checkpoint ID`: refused (see the module's note); the container must
/// exist, as for runc.
pub fn checkpoint(root: &Path, id: &str) -> Result<()> {
    State::load(root, id)?;
    Err(refuse("checkpoint").into())
}

/// `restore ID`: refused (see the module's note).
pub fn restore(_root: &Path, _id: &str) -> Result<()> {
    Err(refuse("restore").into())
}
