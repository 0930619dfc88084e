//! Exit statuses, as docker uses them.

/// Exit status for amphi's own errors.
pub const EXIT_AMPHI: i32 = 125;
/// The command cannot be invoked (permission).
pub const EXIT_CANNOT_INVOKE: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// The notice shown when the kernel's OOM killer ended a workload (status
/// 137): one wording for both backends. `workload` names what was killed,
/// e.g. `container 0123456789ab` or `the workload in the microVM`.
pub fn oom_notice(workload: &str) -> String {
    format!("amphi: {workload} was killed by the kernel OOM killer (memory limit reached)")
}
