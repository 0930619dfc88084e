//! The runc-compatible runtime commands.

use crate::oci;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CreateArgs {
    /// Container ID
    pub id: String,
    /// Bundle directory (holds config.json)
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// Unix socket to send the pty master to (when process.terminal is set)
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the container process's pid here
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Pass N extra file descriptors (3..3+N) to the process
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,
    /// Accepted for runc compatibility; amphi always uses pivot_root
    #[arg(long, hide = true)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (no session keyring is created)
    #[arg(long, hide = true)]
    pub no_new_keyring: bool,
}

#[derive(Args)]
pub struct IdArgs {
    /// Container ID
    pub id: String,
}

#[derive(Args)]
pub struct KillArgs {
    /// Container ID (or, for `amphi run` containers, name)
    pub id: String,
    /// Signal (name or number), runc style
    pub signal: Option<String>,
    /// Signal (name or number), docker style; default KILL for named
    /// containers, TERM for runtime IDs
    #[arg(
        short = 's',
        long = "signal",
        value_name = "SIGNAL",
        conflicts_with = "signal"
    )]
    pub signal_opt: Option<String>,
    /// Signal every process of the container
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Container ID
    pub id: String,
    /// Kill the container first if it is still running
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args)]
pub struct PsArgs {
    /// With an ID: list that container's processes (runc ps). Without:
    /// list containers (docker ps)
    pub id: Option<String>,
    /// Output format of runc ps: table or json
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Also list stopped containers
    #[arg(short, long)]
    pub all: bool,
    /// Only print container IDs
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Containers (name or ID)
    #[arg(required = true)]
    pub containers: Vec<String>,
    /// Seconds to wait before killing
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
}

#[derive(Args)]
pub struct RmArgs {
    /// Containers (name or ID)
    #[arg(required = true)]
    pub containers: Vec<String>,
    /// Kill running containers first
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Container (name or ID)
    pub container: String,
    /// Keep printing new output until the container stops
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Container ID
    pub id: String,
    /// Process spec JSON file (instead of COMMAND)
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Unix socket to send the pty master to
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write the process's pid here
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Do not wait for the process
    #[arg(short, long)]
    pub detach: bool,
    /// Working directory
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Extra environment variables
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// User to run as: UID[:GID], or a NAME[:GROUP] of the container's
    /// /etc/passwd (default: the container's own user)
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Pass N extra file descriptors
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,
    /// Add a capability to the process (bounding, effective, permitted, ambient); repeatable
    #[arg(short = 'c', long = "cap", value_name = "CAP")]
    pub cap: Vec<String>,
    /// Run in this existing sub-cgroup of the container's cgroup (PATH; the CONTROLLER:PATH form is refused)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Exec even if the container is paused (the process stays frozen until `resume`)
    #[arg(long)]
    pub ignore_paused: bool,
    /// Additional group IDs for the process; repeatable
    #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// Set no_new_privs for the process
    #[arg(long)]
    pub no_new_privs: bool,
    /// AppArmor profile: refused (amphi applies no AppArmor profile; the error says whether the host runs AppArmor)
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// SELinux process label: refused (amphi applies no SELinux label; the error says whether the host runs SELinux)
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// Command and arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct SpecArgs {
    /// Where to write config.json
    #[arg(short, long, default_value = ".", value_name = "DIR")]
    pub bundle: PathBuf,
    /// A spec for running without root (user namespace mappings)
    #[arg(long)]
    pub rootless: bool,
}

fn parse_user(u: &str) -> Result<(u32, u32), String> {
    let (a, b) = u.split_once(':').unwrap_or((u, "0"));
    match (a.parse(), b.parse()) {
        (Ok(x), Ok(y)) => Ok((x, y)),
        _ => Err(format!("--user {u:?}: expected UID[:GID] (numbers)")),
    }
}

pub fn exec(root: &std::path::Path, a: ExecArgs) -> Result<i32, crate::oci::OciError> {
    oci::exec(
        root,
        oci::ExecOptions {
            id: a.id,
            process: a.process,
            args: a.command,
            env: a.env,
            cwd: a.cwd,
            tty: a.tty,
            console_socket: a.console_socket,
            pid_file: a.pid_file,
            detach: a.detach,
            user: a.user.as_deref().and_then(|u| parse_user(u).ok()),
            user_name: a.user.clone().filter(|u| parse_user(u).is_err()),
            preserve_fds: a.preserve_fds,
            caps: a.cap,
            cgroup: a.cgroup,
            ignore_paused: a.ignore_paused,
            additional_gids: a.additional_gids,
            no_new_privs: a.no_new_privs,
            apparmor: a.apparmor,
            process_label: a.process_label,
        },
    )
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Container ID
    pub id: String,
    /// linux.resources as JSON, from FILE or `-` (standard input); the flags are then ignored, as runc
    #[arg(short, long, value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g suffix)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Memory + swap limit (-1: unlimited)
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory soft limit
    #[arg(long, value_name = "SIZE")]
    pub memory_reservation: Option<String>,
    /// Kernel memory limit (deprecated; ignored by kernels since 6.0)
    #[arg(long, value_name = "SIZE")]
    pub kernel_memory: Option<String>,
    /// Kernel TCP buffer memory limit (deprecated)
    #[arg(long, value_name = "SIZE")]
    pub kernel_memory_tcp: Option<String>,
    /// CPU shares (relative weight)
    #[arg(long = "cpu-share", visible_alias = "cpu-shares", value_name = "N")]
    pub cpu_share: Option<u64>,
    /// CPU CFS quota in microseconds (-1: none)
    #[arg(long, value_name = "USEC", allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_period: Option<u64>,
    /// CPU realtime period in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds
    #[arg(long, value_name = "USEC")]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs the container may use (e.g. 0-3,5)
    #[arg(long, value_name = "CPUS")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use
    #[arg(long, value_name = "MEMS")]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (-1 or 0: unlimited)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000)
    #[arg(long, value_name = "N")]
    pub blkio_weight: Option<u16>,
    /// Intel RDT L3 cache schema: refused (amphi does not manage resctrl)
    #[arg(long, value_name = "SCHEMA")]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema: refused (amphi does not manage resctrl)
    #[arg(long, value_name = "SCHEMA")]
    pub mem_bw_schema: Option<String>,
}

pub fn update(root: &std::path::Path, a: &UpdateArgs) -> Result<i32, crate::oci::OciError> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        return Err("--l3-cache-schema and --mem-bw-schema are not supported: amphi does not manage Intel RDT (resctrl)".into());
    }
    // runc: a pids limit of 0 is "unlimited" on the command line.
    let pids_limit = a.pids_limit.map(|n| if n == 0 { -1 } else { n });
    oci::update(
        root,
        &oci::UpdateOptions {
            id: a.id.clone(),
            resources: a.resources.clone(),
            memory: a.memory.clone(),
            memory_swap: a.memory_swap.clone(),
            memory_reservation: a.memory_reservation.clone(),
            kernel_memory: a.kernel_memory.clone(),
            kernel_memory_tcp: a.kernel_memory_tcp.clone(),
            cpu_shares: a.cpu_share,
            cpu_quota: a.cpu_quota,
            cpu_period: a.cpu_period,
            cpu_rt_period: a.cpu_rt_period,
            cpu_rt_runtime: a.cpu_rt_runtime,
            cpuset_cpus: a.cpuset_cpus.clone(),
            cpuset_mems: a.cpuset_mems.clone(),
            pids_limit,
            blkio_weight: a.blkio_weight,
        },
    )
    .map(|()| 0)
}

#[derive(Args)]
pub struct EventsArgs {
    /// Container ID
    pub id: String,
    /// Print the container's stats once and exit
    #[arg(long)]
    pub stats: bool,
    /// Seconds between two stats events of the stream (runc's duration form, e.g. 5s or 500ms, also taken)
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub interval: String,
}

/// A duration as runc's `--interval` takes it (Go's form: 5s, 500ms,
/// 1m, 1.5s), or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--interval {s:?}: expected a duration such as 5s or 500ms"))?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("--interval {s:?}: unknown unit {unit:?}")),
    };
    if !(0.0..1e9).contains(&secs) {
        return Err(format!("--interval {s:?}: out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Args)]
pub struct ListArgs {
    /// Output format: table or json
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Only print container IDs
    #[arg(short, long)]
    pub quiet: bool,
}

/// The CRIU options runc's checkpoint and restore share, accepted so that
/// the refusal says why rather than what it does not know.
#[derive(Args)]
pub struct CriuArgs {
    #[arg(long, value_name = "DIR")]
    pub image_path: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub work_path: Option<PathBuf>,
    #[arg(long)]
    pub tcp_established: bool,
    #[arg(long)]
    pub ext_unix_sk: bool,
    #[arg(long)]
    pub shell_job: bool,
    #[arg(long)]
    pub file_locks: bool,
    #[arg(long, value_name = "MODE")]
    pub manage_cgroups_mode: Option<String>,
    #[arg(long, value_name = "NS")]
    pub empty_ns: Vec<String>,
    #[arg(long)]
    pub auto_dedup: bool,
    #[arg(long)]
    pub lazy_pages: bool,
}

/// runc's checkpoint flags, accepted so that the refusal says why.
#[derive(Args)]
pub struct CheckpointArgs {
    /// Container ID
    pub id: String,
    #[command(flatten)]
    pub criu: CriuArgs,
    #[arg(long, value_name = "DIR")]
    pub parent_path: Option<PathBuf>,
    #[arg(long)]
    pub leave_running: bool,
    #[arg(long, value_name = "FD")]
    pub status_fd: Option<i32>,
    #[arg(long, value_name = "ADDR")]
    pub page_server: Option<String>,
    #[arg(long)]
    pub pre_dump: bool,
}

/// runc's restore flags, accepted so that the refusal says why.
#[derive(Args)]
pub struct RestoreArgs {
    /// Container ID
    pub id: String,
    #[command(flatten)]
    pub criu: CriuArgs,
    #[arg(short, long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub no_subreaper: bool,
    #[arg(long)]
    pub no_pivot: bool,
    #[arg(long, value_name = "PROFILE")]
    pub lsm_profile: Option<String>,
    #[arg(long, value_name = "CONTEXT")]
    pub lsm_mount_context: Option<String>,
}

pub fn spec(a: SpecArgs) -> Result<(), String> {
    let p = a.bundle.join("config.json");
    if p.exists() {
        return Err(format!("{} already exists", p.display()));
    }
    oci::default_spec(a.rootless)
        .save(&p)
        .map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn intervals_as_runc_takes_them() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3parsecs").is_err());
    }
}
