//! OCI hooks: run with the container state on stdin, with an optional
//! timeout; a failing hook fails the operation and names the hook.

use oci_spec::runtime::Hook;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A hook that could not run, failed or timed out.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {}: {source}", path.display())]
    Start {
        stage: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage} hook {}: {source}", path.display())]
    Wait {
        stage: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage} hook {} failed: {status}", path.display())]
    Failed {
        stage: String,
        path: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("{stage} hook {} timed out after {secs}s", path.display())]
    TimedOut {
        stage: String,
        path: PathBuf,
        secs: i64,
    },
}

/// Runs one hook for `stage`, feeding `state` (JSON) on stdin, with the
/// hook's own `env` only.
pub fn run(h: &Hook, stage: &str, state: Option<&str>) -> Result<(), HookError> {
    run_with_env(h, stage, state, &[])
}

/// As [`run`]; a hook that has no `env` of its own gets `default_env`.
pub fn run_with_env(
    h: &Hook,
    stage: &str,
    state: Option<&str>,
    default_env: &[String],
) -> Result<(), HookError> {
    let path = h.path();
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(path);
    if let Some(a0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, a0);
    }
    cmd.args(args.iter().skip(1));
    cmd.env_clear();
    for e in h.env().as_deref().unwrap_or(default_env) {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // For the errors only: nothing is copied on the way of a hook that runs.
    let (stage_s, path_b) = (|| stage.to_string(), || path.to_path_buf());
    let mut child = cmd.spawn().map_err(|source| HookError::Start {
        stage: stage_s(),
        path: path_b(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state.unwrap_or("{}").as_bytes());
    }
    let deadline = h
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
    loop {
        match child.try_wait().map_err(|source| HookError::Wait {
            stage: stage_s(),
            path: path_b(),
            source,
        })? {
            Some(st) if st.success() => return Ok(()),
            Some(status) => {
                return Err(HookError::Failed {
                    stage: stage_s(),
                    path: path_b(),
                    status,
                })
            }
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::TimedOut {
                stage: stage_s(),
                path: path_b(),
                secs: h.timeout().unwrap_or(0),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs every hook of a stage.
pub fn run_all(hooks: Option<&Vec<Hook>>, stage: &str, state: &str) -> Result<(), HookError> {
    for h in hooks.into_iter().flatten() {
        run(h, stage, Some(state))?;
    }
    Ok(())
}
