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

pub fn exec(root: &std::path::Path, a: ExecArgs) -> Result<i32, String> {
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
        },
    )
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
