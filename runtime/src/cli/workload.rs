//! The flags that shape a workload, one declaration for `amphi run` and
//! `amphi compare` (which re-runs `amphi run` with them on both sides).

use clap::Args;
use std::fmt::Display;
use std::path::PathBuf;

/// How the workload runs: its process, its limits and its confinement, the
/// same whether it runs in a container or a microVM.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct WorkloadArgs {
    /// Set an environment variable (NAME=VALUE, or NAME to copy it from here)
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (one NAME=VALUE per line)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: NAME, UID, NAME:GROUP or UID:GID
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Container host name
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 512m, 2g)
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Number of CPUs (e.g. 1.5)
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Maximum number of processes (-1 for unlimited)
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Mount the root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Network: private (the default: its own network namespace, or the microVM's NIC, with
    /// outbound traffic and DNS through pasta/passt, and -p ports), none (loopback only) or host
    /// (the host's network; native runs only). A policy rule's `network` is the most it may get.
    /// Without this flag, a host with no passt/pasta or no IPv4 default route gives none, with a
    /// warning; an explicit --network private fails there
    #[arg(long, value_name = "MODE", value_parser = ["private", "none", "host"])]
    pub network: Option<String>,
    /// Add a capability (e.g. NET_ADMIN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (e.g. CHOWN, or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined|FILE, no-new-privileges
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Override the image's entrypoint ("" clears it)
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Run a small init (amphi itself) as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Systemd mode (tmpfs /run, /run/lock, /tmp, a writable cgroup, container=amphi, stop
    /// signal SIGRTMIN+3; without -t, a /dev/console whose output amphi copies to stdout):
    /// true = when the command is systemd (/sbin/init, .../systemd), always, false
    #[arg(long, value_name = "WHEN", default_value = "true", value_parser = ["true", "false", "always"])]
    pub systemd: String,
    /// Dispatch policy file (default: $AMPHI_POLICY, else /etc/amphi/policy.toml when it exists)
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub vm: VmArgs,
}

/// What runs: the image and the command.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct ImageCommand {
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (default: the image's)
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// The flags that apply to microVM runs only.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct VmArgs {
    /// microVM runs: auto (amphi's VMM where KVM serves the kernel, else QEMU), builtin or qemu;
    /// either runs jailed (own user, no capabilities, empty root, namespaces, seccomp, a cgroup;
    /// --verbose says what)
    #[arg(long, value_name = "BACKEND", value_parser = ["auto", "builtin", "qemu"])]
    pub vm_backend: Option<String>,
    /// microVM runs: the guest kernel, a catalog ID or version (see `amphi kernel ls`) or a file
    #[arg(long, value_name = "KERNEL")]
    pub kernel: Option<String>,
    /// microVM runs: stop the workload after this many seconds (exit status 124)
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// microVM runs: how the guest gets the image's files: auto (an initramfs for images up to
    /// 64 MiB; larger ones over virtio-fs when virtiofsd and the guest kernel have it, else a
    /// block image), virtiofs (the stored layers shared read-only, nothing built), initramfs or
    /// block (a guest rootfs built once per image and cached)
    #[arg(long, value_name = "KIND", value_parser = ["auto", "virtiofs", "initramfs", "block"])]
    pub vm_rootfs: Option<String>,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Collects `--flag=value` arguments; the `=` form keeps a value that
/// starts with '-' or is empty a value.
#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn one(&mut self, flag: &str, v: Option<impl Display>) {
        if let Some(v) = v {
            self.0.push(format!("--{flag}={v}"));
        }
    }
    fn each<T: Display>(&mut self, flag: &str, vs: &[T]) {
        for v in vs {
            self.one(flag, Some(v));
        }
    }
    fn switch(&mut self, flag: &str, on: bool) {
        if on {
            self.0.push(format!("--{flag}"));
        }
    }
}

impl WorkloadArgs {
    /// The `amphi run` arguments that give these flags again, except the
    /// microVM-only ones (see [`VmArgs::to_run_args`]).
    pub fn to_run_args(&self) -> Vec<String> {
        // Destructured, so that a new flag does not compile until it is
        // forwarded here too.
        let Self {
            env,
            env_file,
            workdir,
            user,
            hostname,
            memory,
            cpus,
            pids_limit,
            read_only,
            network,
            cap_add,
            cap_drop,
            security_opt,
            entrypoint,
            init,
            systemd,
            policy,
            vm: _,
        } = self;
        let mut a = Argv::default();
        a.each("env", env);
        let env_files: Vec<_> = env_file.iter().map(|p| p.display()).collect();
        a.each("env-file", &env_files);
        a.one("workdir", workdir.as_ref());
        a.one("user", user.as_ref());
        a.one("hostname", hostname.as_ref());
        a.one("memory", memory.as_ref());
        a.one("cpus", *cpus);
        a.one("pids-limit", *pids_limit);
        a.switch("read-only", *read_only);
        a.one("network", network.as_ref());
        a.each("cap-add", cap_add);
        a.each("cap-drop", cap_drop);
        a.each("security-opt", security_opt);
        a.one("entrypoint", entrypoint.as_ref());
        a.switch("init", *init);
        a.one("systemd", Some(systemd));
        let policy = policy.as_ref().map(|p| p.display());
        a.one("policy", policy);
        a.0
    }
}

impl VmArgs {
    /// The `amphi run` arguments that give these flags again.
    pub fn to_run_args(&self) -> Vec<String> {
        let Self {
            vm_backend,
            kernel,
            timeout,
            vm_rootfs,
        } = self;
        let mut a = Argv::default();
        a.one("vm-backend", vm_backend.as_ref());
        a.one("kernel", kernel.as_ref());
        a.one("timeout", *timeout);
        a.one("vm-rootfs", vm_rootfs.as_ref());
        a.0
    }

    /// The flags given, by name: `run` refuses them with `--isolation
    /// container` and warns when the dispatcher chooses a container.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.vm_backend.is_some(), "--vm-backend"),
            (self.kernel.is_some(), "--kernel"),
            (self.timeout.is_some(), "--timeout"),
            (self.vm_rootfs.is_some(), "--vm-rootfs"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        w: WorkloadArgs,
    }

    fn parse(args: &[&str]) -> WorkloadArgs {
        Cmd::try_parse_from(std::iter::once("amphi").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .w
    }

    fn forwarded(w: &WorkloadArgs) -> Vec<String> {
        let mut v = w.to_run_args();
        v.extend(w.vm.to_run_args());
        v
    }

    #[test]
    fn forwarding_gives_every_flag_back() {
        let w = parse(&[
            "-e",
            "A=1",
            "--env",
            "B",
            "--env-file",
            "/tmp/a b.env",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "--hostname",
            "h",
            "-m",
            "64m",
            "--cpus",
            "1.5",
            "--pids-limit=-1",
            "--read-only",
            "--network",
            "host",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "ALL",
            "--cap-drop",
            "CHOWN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges",
            "--entrypoint=-x",
            "--init",
            "--systemd=always",
            "--policy",
            "/etc/p.toml",
            "--vm-backend",
            "qemu",
            "--kernel",
            "6.1",
            "--timeout",
            "0.25",
        ]);
        assert_eq!(w.cpus, Some(1.5));
        assert_eq!(w.pids_limit, Some(-1));
        assert_eq!(w.entrypoint.as_deref(), Some("-x"));
        assert_eq!(w.vm.timeout, Some(0.25));
        let args = forwarded(&w);
        let back = parse(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(back, w, "{args:?}");
    }

    #[test]
    fn forwarding_keeps_defaults_and_empty_values() {
        let w = parse(&[]);
        assert_eq!(w.to_run_args(), ["--systemd=true"]);
        assert!(w.vm.to_run_args().is_empty());
        assert!(w.vm.given().is_empty());
        let w = parse(&["--entrypoint", "", "--timeout", "3"]);
        let args = forwarded(&w);
        assert!(args.contains(&"--entrypoint=".to_string()), "{args:?}");
        assert!(args.contains(&"--timeout=3".to_string()), "{args:?}");
        assert_eq!(w.vm.given(), ["--timeout"]);
        assert_eq!(
            parse(&args.iter().map(String::as_str).collect::<Vec<_>>()),
            w
        );
    }

    #[test]
    fn run_and_compare_take_the_same_workload_flags() {
        use crate::cli::{Cli, Command};
        let flags = ["-e", "A=1", "--cpus", "2", "--timeout", "5", "--read-only"];
        let parse = |sub: &str| {
            let mut args = vec!["amphi", sub];
            args.extend(flags);
            args.extend(["img", "sh", "-c", "x"]);
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{sub}: {e}"))
        };
        let (Command::Run(r), Command::Compare(c)) =
            (parse("run").command, parse("compare").command)
        else {
            panic!("not run and compare");
        };
        assert_eq!(r.workload, c.workload);
        assert_eq!(r.target, c.target);
        assert_eq!(r.target.command, ["sh", "-c", "x"]);
        assert_eq!(r.workload.vm.timeout, Some(5.0));
    }

    #[test]
    fn timeout_must_be_a_positive_number() {
        for bad in ["0", "-1", "nan", "inf", "soon"] {
            let e = Cmd::try_parse_from(["amphi".to_string(), format!("--timeout={bad}")])
                .err()
                .unwrap_or_else(|| panic!("--timeout {bad} accepted"));
            assert!(
                e.to_string().contains("not a positive number of seconds"),
                "{e}"
            );
        }
    }
}
