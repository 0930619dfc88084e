//! `amphi run`.

use crate::dispatch::backend::BackendChoice;
use crate::dispatch::{IsolationChoice, Plan, Target};
use crate::run::{RunError, RunRequest};
use crate::spec::{parse_memory, Network, RunFlags, SeccompChoice, Volume};
use crate::vm::VmOptions;

use super::workload::{ImageCommand, WorkloadArgs};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  amphi run --rm localhost/demo/busybox echo hi\n  \
    amphi run --rm -it localhost/demo/busybox sh\n  \
    amphi run --rm --memory 64m --pids-limit 50 -e A=1 -w /tmp -u 1000 IMAGE CMD\n  \
    amphi run --rm --isolation vm localhost/demo/busybox uname -r\n  \
    amphi run --rm --isolation vm --kernel 6.1 --memory 256m --cpus 2 IMAGE CMD\n\n\
    The exit status is the workload's own (128+N when killed by signal N); 125 means amphi \
    itself failed, 126 the command could not be run, 127 it was not found.\n\n\
    OCI runtime form (runc's run), chosen when --bundle/-b is given:\n  \
    amphi run [-d] -b DIR [--console-socket SOCK] [--pid-file F] [--preserve-fds N] [--keep] ID\n\
    creates and starts the bundle's container; in the foreground it waits for the process, exits \
    with its status and deletes the container (unless --keep); with -d it returns once the process \
    runs, and the container is stopped and removed with `amphi kill` and `amphi delete`. Errors \
    exit 1, as runc's. The image flags do not apply to it.",
    override_usage = "amphi run [OPTIONS] IMAGE [CMD]...\n       amphi run [-d] --bundle DIR [--console-socket SOCK] [--pid-file FILE] [--preserve-fds N] [--keep] ID"
)]
pub struct RunArgs {
    /// Remove the container's state and writable layer when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container ID (containers and
    /// microVMs alike: `ps`, `logs`, `stop`, `kill` and `rm` manage both)
    #[arg(short, long)]
    pub detach: bool,
    /// Keep standard input open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Bind mount a host directory or file: HOST:CONTAINER[:ro] (in a microVM: shared by
    /// virtiofsd, read-only enforced on the host too)
    #[arg(short, long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volume: Vec<String>,
    /// Publish a container port on the host: [IP:]HOSTPORT:CTRPORT[/tcp|/udp] (docker's syntax;
    /// every address when IP is not given); needs --network private
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CTR[/PROTO]")]
    pub publish: Vec<String>,
    /// Name for the container
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Where to run: auto (the dispatcher decides from the policy, the image's annotations and
    /// its files; see `amphi explain`), container or vm. May not lower a policy's vm
    #[arg(long, default_value = "auto", value_parser = ["auto", "container", "vm"])]
    pub isolation: String,
    /// Print how the run was dispatched (container or microVM) and why
    #[arg(long)]
    pub verbose: bool,
    /// OCI runtime form (runc's run): run the bundle in DIR, IMAGE being the container ID
    #[arg(
        short = 'b',
        long,
        value_name = "DIR",
        help_heading = "OCI runtime form (with --bundle)"
    )]
    pub bundle: Option<PathBuf>,
    /// With --bundle: unix socket to send the pty master to (-d and process.terminal only, as runc)
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "OCI runtime form (with --bundle)"
    )]
    pub console_socket: Option<PathBuf>,
    /// With --bundle: write the container process's pid here
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "OCI runtime form (with --bundle)"
    )]
    pub pid_file: Option<PathBuf>,
    /// With --bundle: pass N extra file descriptors (3..3+N) to the process
    #[arg(
        long,
        value_name = "N",
        help_heading = "OCI runtime form (with --bundle)"
    )]
    pub preserve_fds: Option<i32>,
    /// With --bundle: keep the stopped container for `delete` (foreground only)
    #[arg(long, help_heading = "OCI runtime form (with --bundle)")]
    pub keep: bool,
    /// With --bundle: accepted for runc compatibility; amphi always uses pivot_root
    #[arg(long, help_heading = "OCI runtime form (with --bundle)")]
    pub no_pivot: bool,
    /// With --bundle: accepted for runc compatibility (no session keyring is created)
    #[arg(long, help_heading = "OCI runtime form (with --bundle)")]
    pub no_new_keyring: bool,
    #[command(flatten)]
    pub target: ImageCommand,
}

fn usage(m: impl std::fmt::Display) -> RunError {
    RunError::Usage(m.to_string())
}

fn read_env_file(p: &Path) -> Result<Vec<String>, RunError> {
    let s = std::fs::read_to_string(p)
        .map_err(|e| usage(format!("--env-file {}: {e}", p.display())))?;
    Ok(s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// How a run is dispatched: the flags that choose container or microVM.
pub struct Dispatch {
    pub isolation: IsolationChoice,
    /// `--vm-backend`.
    pub vm_backend: BackendChoice,
    /// `--kernel`: a catalog ID/version/series, or a path (with a `/`).
    pub kernel: Option<String>,
    /// Used when the run goes into a microVM.
    pub vm: VmOptions,
    /// `--policy`.
    pub policy: Option<PathBuf>,
    /// `--verbose`: print the decision and its reasons.
    pub verbose: bool,
    /// Which microVM-only flags were given (ignored, with a warning, when
    /// the decision is a container).
    pub vm_only_flags: Vec<&'static str>,
    /// `-d` was given (a microVM gets its own monitor: cli/vm_detach.rs).
    pub detach: bool,
    /// `--network` was given (not the default): a policy that allows less
    /// refuses it rather than lowering it.
    pub network_given: bool,
    /// `--systemd`: true, false or always (resolved once the image is known).
    pub systemd: String,
}

/// The policy's network limit for the image: a `--network` that asks for
/// more is refused; the default is lowered to it. `-p` needs a private
/// network, and `host` is native only.
fn apply_network_policy(
    flags: &mut crate::spec::RunFlags,
    plan: &crate::dispatch::Plan,
    d: &Dispatch,
) -> Result<(), RunError> {
    if let Some((limit, rule)) = &plan.decision.network_limit {
        let limit: Network = limit.parse().map_err(usage)?;
        if flags.network.rank() > limit.rank() {
            if d.network_given {
                return Err(usage(format!(
                    "--network {}: the policy allows at most --network {limit} for this image ({rule})",
                    flags.network
                )));
            }
            flags.network = limit;
        }
    }
    if !flags.publish.is_empty() && flags.network != Network::Private {
        return Err(usage(format!(
            "-p publishes ports of a private network, and this run's network is {}",
            flags.network
        )));
    }
    if flags.network == Network::Host && matches!(plan.target, crate::dispatch::Target::Vm(_)) {
        return Err(usage(
            "--network host: a microVM has its own network stack and cannot share the host's; use --network private (the default) or none, or --isolation container",
        ));
    }
    Ok(())
}

/// The default network, private, falls back to none when this host cannot
/// give one (no pasta/passt, no IPv4 default route), with a one-line
/// warning that says why: a run does not fail because networking is
/// unavailable. An explicit `--network private`, a policy rule's
/// `network`, or `-p` (which needs it) keep it required: those fail later
/// with the clear error.
fn default_network_fallback(
    flags: &mut crate::spec::RunFlags,
    plan: &crate::dispatch::Plan,
    d: &Dispatch,
) {
    if d.network_given
        || plan.decision.network_limit.is_some()
        || flags.network != Network::Private
        || !flags.publish.is_empty()
    {
        return;
    }
    let vm = matches!(plan.target, crate::dispatch::Target::Vm(_));
    if let Some(why) = crate::net::unavailable(vm) {
        eprintln!("amphi: warning: no network for this run (--network none): {why}");
        flags.network = Network::None;
    }
}

/// What `--verbose` says of the run's network.
pub fn network_line(flags: &crate::spec::RunFlags, plan: &crate::dispatch::Plan) -> String {
    let mut line = flags.network.to_string();
    if let Some((limit, rule)) = &plan.decision.network_limit {
        line.push_str(&format!(" (the policy allows at most {limit}: {rule})"));
    }
    for p in &flags.publish {
        line.push_str(&format!(", publishes {p}"));
    }
    line
}

/// `--security-opt`s: the seccomp profile and no_new_privileges.
fn security_opts(opts: &[String]) -> Result<(SeccompChoice, bool), RunError> {
    let mut seccomp = SeccompChoice::Default;
    let mut nnp = false;
    for o in opts {
        match o.split_once(['=', ':']) {
            Some(("seccomp", "unconfined")) => seccomp = SeccompChoice::Unconfined,
            Some(("seccomp", f)) => seccomp = SeccompChoice::File(PathBuf::from(f)),
            None if o == "no-new-privileges" => nnp = true,
            Some(("no-new-privileges", v)) => nnp = v == "true",
            _ => return Err(usage(format!("--security-opt {o:?}: supported are seccomp=unconfined, seccomp=FILE, no-new-privileges"))),
        }
    }
    Ok((seccomp, nnp))
}

/// Turns the flags into a request and the dispatch flags.
pub fn request(
    a: RunArgs,
    store_root: &Path,
    state_root: &Path,
) -> Result<(RunRequest, Dispatch), RunError> {
    let isolation: IsolationChoice = a
        .isolation
        .parse()
        .map_err(|e: crate::dispatch::DispatchError| usage(e.to_string()))?;
    let w = a.workload;
    let vm_only_flags = w.vm.given();
    if let (Some(flag), IsolationChoice::Container) = (vm_only_flags.first(), isolation) {
        return Err(usage(format!(
            "{flag} only applies to microVM runs, and --isolation container was given"
        )));
    }
    let dispatch = Dispatch {
        isolation,
        vm_backend: w
            .vm
            .vm_backend
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .map_err(usage)?,
        kernel: w.vm.kernel,
        vm: VmOptions {
            timeout: w.vm.timeout.map(Duration::from_secs_f64),
            rootfs: match w.vm.vm_rootfs.as_deref() {
                None | Some("auto") => None,
                Some(k) => Some(k.parse().map_err(usage)?),
            },
            verbose: a.verbose,
            notify: super::notify,
            id: None,
            started: None,
            exec: false,
            oom_killed: None,
        },
        policy: w.policy,
        verbose: a.verbose,
        vm_only_flags,
        detach: a.detach,
        network_given: w.network.is_some(),
        systemd: w.systemd,
    };
    if a.detach && (a.tty || a.interactive) {
        return Err(usage(
            "-d cannot be combined with -t or -i: a detached container has no terminal or input",
        ));
    }
    let mut env = Vec::new();
    for f in &w.env_file {
        env.extend(read_env_file(f)?);
    }
    env.extend(w.env);
    let (seccomp, nnp) = security_opts(&w.security_opt)?;
    let volumes = a
        .volume
        .iter()
        .map(|v| Volume::parse(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let flags = RunFlags {
        command: a.target.command,
        entrypoint: w.entrypoint,
        env,
        workdir: w.workdir,
        user: w.user,
        hostname: w.hostname,
        memory: w
            .memory
            .as_deref()
            .map(parse_memory)
            .transpose()
            .map_err(usage)?,
        cpus: w.cpus,
        pids_limit: w.pids_limit,
        read_only: w.read_only,
        network: match w.network.as_deref() {
            Some(n) => n.parse().map_err(usage)?,
            None => Network::Private,
        },
        publish: a
            .publish
            .iter()
            .map(|p| crate::net::Publish::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)?,
        cap_add: w.cap_add,
        cap_drop: w.cap_drop,
        seccomp,
        no_new_privileges: nnp,
        volumes,
        tty: a.tty,
        init: w.init,
        systemd: false,
    };
    let req = RunRequest {
        image: a.target.image,
        flags,
        name: a.name,
        rm: a.rm,
        interactive: a.interactive,
        detach: a.detach,
        store_root: store_root.to_path_buf(),
        state_root: state_root.to_path_buf(),
    };
    Ok((req, dispatch))
}

/// Decides container or microVM, then runs the plan.
pub fn execute(mut req: RunRequest, d: Dispatch) -> Result<i32, RunError> {
    let plan = crate::dispatch::plan(&crate::dispatch::PlanRequest {
        isolation: d.isolation,
        policy: d.policy.as_deref(),
        vm_backend: d.vm_backend,
        kernel: d.kernel.as_deref(),
        command: &req.flags.command,
        entrypoint: req.flags.entrypoint.as_deref(),
        notify: super::notify,
        ..crate::dispatch::PlanRequest::new(&req.store_root, &req.image)
    })?;
    for r in &plan.decision.reasons {
        tracing::info!(rule = %r.rule, wanted = %r.wanted, have = %r.have, outcome = %r.outcome, note = %r.note, "dispatch");
        if r.outcome == crate::dispatch::Outcome::Warning {
            eprintln!("amphi: warning: {r}");
        }
    }
    apply_network_policy(&mut req.flags, &plan, &d)?;
    default_network_fallback(&mut req.flags, &plan, &d);
    if d.verbose {
        eprint!("{plan}");
        eprint!("{}", super::explain::monitor_protections(&plan));
        eprintln!("network: {}", network_line(&req.flags, &plan));
    }
    // What the image scan knows of the init, for `--systemd` and for the
    // hint when it fails.
    let scanned_systemd = plan.decision.facts.iter().find_map(|f| match f {
        crate::image::scan::Fact::SystemdInit { version, path } => Some((*version, path.clone())),
        _ => None,
    });
    let forced_misses: Vec<String> = plan
        .decision
        .inferred
        .iter()
        .filter(|i| !i.host_ok)
        .map(|i| format!("{}, {}", i.describe(), i.host_has))
        .collect();
    let Plan {
        resolved, target, ..
    } = plan;
    // `--systemd`, podman's rule: `true` when the command is systemd (by
    // its name, or as the image scan found it).
    let command = crate::spec::process_args(&resolved.config, &req.flags).unwrap_or_default();
    let runs_systemd = crate::spec::is_systemd_command(&command) || scanned_systemd.is_some();
    req.flags.systemd = match d.systemd.as_str() {
        "always" => true,
        "false" => false,
        _ => runs_systemd,
    };
    match target {
        Target::Vm(vm) => {
            if d.detach {
                return super::vm_detach::run(req, resolved, *vm, d.vm);
            }
            let console = has_console(&req.flags);
            let code = crate::vm::run(req, resolved, *vm, d.vm)?;
            init_hint(code, runs_systemd, console, scanned_systemd.as_ref(), &[]);
            Ok(code)
        }
        Target::Container => {
            for f in &d.vm_only_flags {
                eprintln!("amphi: warning: {f} ignored: the dispatcher chose a native container (see --verbose)");
            }
            let console = has_console(&req.flags);
            let detach = req.detach;
            let code = crate::run::run(req, resolved).map(super::native_outcome)?;
            if !detach {
                init_hint(
                    code,
                    runs_systemd,
                    console,
                    scanned_systemd.as_ref(),
                    &forced_misses,
                );
            }
            Ok(code)
        }
    }
}

/// Whether the container has a /dev/console whose output the user sees:
/// the terminal with `-t`, the console-only pty in systemd mode.
fn has_console(flags: &RunFlags) -> bool {
    flags.tty || crate::run::console_pty(flags)
}

/// When a systemd init failed: its exit status, and why it may have (a
/// need the host misses that the run was forced past; no /dev/console,
/// where systemd writes its own explanation).
fn init_hint(
    code: i32,
    runs_systemd: bool,
    console: bool,
    scanned: Option<&(Option<u32>, String)>,
    misses: &[String],
) {
    if code == 0 || !runs_systemd {
        return;
    }
    let what = match scanned {
        Some((Some(v), path)) => format!("the init {path} (systemd {v})"),
        Some((None, path)) => format!("the init {path} (systemd)"),
        None => "the init (systemd)".to_string(),
    };
    eprintln!("amphi: {what} exited with status {code}");
    for m in misses {
        eprintln!("amphi: hint: the run was forced past what the image needs: {m}; run it without --isolation container to let the dispatcher choose");
    }
    if !console {
        eprintln!("amphi: hint: systemd as PID 1 writes its messages only to /dev/console, which a container has with -t or in systemd mode: run with -t (or without --systemd=false) to see why it stopped");
    }
}
