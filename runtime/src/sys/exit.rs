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

/// Exit status as a shell reports it: the code, or 128 + signal.
pub fn decode(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_UNKNOWN
    }
}

/// The status of a child whose end could not be read (amphi's own).
const EXIT_UNKNOWN: i32 = EXIT_AMPHI;

pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our child with a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(decode(status))
    } else if r < 0 {
        Some(EXIT_UNKNOWN)
    } else {
        None
    }
}

/// Reaps every child that has exited, without blocking (a PID 1 reaps
/// everything); returns `pid`'s status when it was one of them.
pub fn reap_all(pid: i32) -> Option<i32> {
    reap_all_and(pid, |_, _| {})
}

/// As [`reap_all`], handing every other child's pid and status to `other`.
pub fn reap_all_and(pid: i32, mut other: impl FnMut(i32, i32)) -> Option<i32> {
    let mut status = None;
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid pointer.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
        if r == pid {
            status = Some(decode(st));
        } else {
            other(r, decode(st));
        }
    }
    status
}
