//! The run report: when `$AMPHI_RUN_REPORT` names a file, `amphi run`
//! writes what happened there as JSON (exit status, the kernel the
//! workload saw, peak memory, wall time by phase). `amphi compare` reads
//! it; scripts may too.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable naming the report file.
pub const REPORT_ENV: &str = "AMPHI_RUN_REPORT";

/// What one run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// "container" or "vm".
    pub isolation: String,
    pub exit_code: i32,
    pub oom_killed: bool,
    /// `uname -r` as the workload saw it.
    pub kernel: String,
    /// The workload's peak memory (its cgroup's), in bytes.
    pub peak_memory: Option<u64>,
    /// Wall time before the workload could start (rootfs, spec, VM start),
    /// in milliseconds.
    pub setup_ms: f64,
    /// Guest kernel boot to the guest init (0 natively).
    pub boot_ms: f64,
    /// The workload, from start to its exit status.
    pub run_ms: f64,
    /// The whole run inside amphi.
    pub total_ms: f64,
    /// microVM runs: the backend, e.g. "QEMU microvm (TCG, software emulation)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// microVM runs: what jailed the backend (user, capabilities,
    /// filesystem, namespaces, seccomp, cgroup), a line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitor_protections: Vec<String>,
    /// microVM runs: how the guest got the image's files (virtiofs,
    /// initramfs or block) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// The workload's network: `private`, `none` or `host`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Its published ports, docker's way (`127.0.0.1:8080->80/tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

/// The report's network fields for a request's flags.
pub fn network_of(flags: &crate::spec::RunFlags) -> (String, Vec<String>) {
    (
        flags.network.to_string(),
        flags.publish.iter().map(|p| p.to_string()).collect(),
    )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The report file, when one was asked for.
pub fn target() -> Option<PathBuf> {
    std::env::var_os(REPORT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl RunReport {
    /// Writes the report where `$AMPHI_RUN_REPORT` says (if it does); the
    /// error is the warning for the user, who still gets the run's status.
    pub fn try_write(&self) -> Result<(), String> {
        if let Some(p) = target() {
            if let Ok(j) = serde_json::to_vec_pretty(self) {
                if let Err(e) = std::fs::write(&p, j) {
                    return Err(format!("amphi: warning: run report {}: {e}", p.display()));
                }
            }
        }
        Ok(())
    }
}
