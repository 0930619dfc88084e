//! Exit statuses, as docker uses them, and the error that carries one.

/// Exit status for amphi's own errors.
pub const EXIT_AMPHI: i32 = 125;
/// The command cannot be invoked (permission).
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A failed run: the message and the exit status docker would use.
#[derive(Debug)]
pub struct RunError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunError {}

pub(crate) fn amphi_err(m: impl Into<String>) -> RunError {
    RunError {
        code: EXIT_AMPHI,
        message: m.into(),
    }
}

/// The notice shown when the kernel's OOM killer ended a workload (status
/// 137): one wording for both backends. `workload` names what was killed,
/// e.g. `container 0123456789ab` or `the workload in the microVM`.
pub fn oom_notice(workload: &str) -> String {
    format!("amphi: {workload} was killed by the kernel OOM killer (memory limit reached)")
}
