//! The command line: parse, call the library, print. Kept thin.

mod compare;
mod explain;
mod images;
mod kernel;
mod oci;
mod oci_vm;
mod run;
mod tiny_init;
mod vm_detach;
mod vm_exec;
mod vmm;
mod workload;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Prints what a native run returned (the id of a detached container, or
/// a foreground run's notices on stderr) and gives the exit status.
fn native_outcome(o: crate::run::RunOutcome) -> i32 {
    match o {
        crate::run::RunOutcome::Detached { id } => {
            println!("{id}");
            0
        }
        crate::run::RunOutcome::Exited { status, notices } => {
            for n in notices {
                eprintln!("{n}");
            }
            status
        }
        crate::run::RunOutcome::MonitorEnded { notices } => {
            for n in notices {
                eprintln!("{n}");
            }
            0
        }
    }
}

/// Where the library's notices for the user go: stderr.
pub(crate) fn notify(line: &str) {
    eprintln!("{line}");
}

/// `amphi gc`'s part for microVM runs: removes the run directories of
/// clients that are gone (and kills a backend that outlived its client),
/// saying so on stderr.
fn gc_stale_runs(state_root: &std::path::Path) {
    match crate::vm::sweep_stale_runs(state_root) {
        Ok(s) => {
            for pid in &s.backends_killed {
                eprintln!("amphi: killed microVM backend {pid}, whose client was gone");
            }
            for d in &s.run_dirs {
                eprintln!(
                    "amphi: removed stale microVM run directory {}",
                    state_root.join("vm").join(d).display()
                );
            }
        }
        Err(e) => eprintln!("amphi: warning: microVM run directories: {e}"),
    }
    for what in crate::vm::jail::sweep_stale() {
        eprintln!("amphi: removed {what}");
    }
}

/// Exit status for amphi's own failures (bad flags, missing images, store
/// errors), as docker and podman use it.
pub const EXIT_AMPHI: i32 = 125;

/// Exit status of `exec` when amphi could not run the process (runc's).
pub const EXIT_EXEC_FAILED: i32 = 255;

#[derive(Parser)]
#[command(
    name = "amphi",
    version,
    about = "Run OCI images as Linux containers or in KVM microVMs, chosen per image",
    long_about = "amphi runs OCI container images. For every run it decides whether the image can \
                  run natively as a Linux container or needs its own kernel in a tiny KVM microVM, \
                  and explains why.\n\nImages are kept in a content-addressed store under \
                  $AMPHI_ROOT (default /var/lib/amphi as root).",
    propagate_version = true,
    after_help = "OCI runtime (runc's command line, over bundles and --root): create, start, state, kill, \
delete, exec, run -b DIR ID, ps ID, pause, resume, update, events, list, features, spec.\n\
`amphi run IMAGE` runs an image; `amphi run --bundle DIR ID` is runc's run (see `amphi run --help`).\n\
Refused, with the reason in the error: checkpoint and restore (amphi does not drive CRIU), \
--systemd-cgroup (amphi manages cgroupfs itself), exec --apparmor and --process-label (amphi applies \
no LSM labels), exec --cgroup CONTROLLER:PATH (one cgroup path for every controller), update \
--l3-cache-schema and --mem-bw-schema (no Intel RDT)."
)]
pub struct Cli {
    /// Image store directory
    #[arg(long, global = true, env = "AMPHI_ROOT", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace (or a tracing filter)
    #[arg(
        long,
        global = true,
        env = "AMPHI_LOG",
        default_value = "warn",
        value_name = "LEVEL"
    )]
    pub log_level: String,

    /// Log format on stderr: text or json
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Also write errors to this file (runc's --log; JSON lines with --log-format json)
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Debug logging (same as --log-level debug)
    #[arg(long, global = true)]
    pub debug: bool,

    /// Use systemd to manage cgroups (not supported: refused with an explanation)
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,

    /// Directory for container state (runc's --root)
    #[arg(long, global = true, env = "AMPHI_STATE", value_name = "DIR", default_value = crate::container::state::DEFAULT_ROOT)]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a command in a new container from an image
    Run(Box<run::RunArgs>),
    /// Show how `run` would run an image (container or microVM) and why
    Explain(explain::ExplainArgs),
    /// Run a workload natively and in a microVM, and show what differs
    Compare(Box<compare::CompareArgs>),
    /// Pull an image from a registry into the local store
    #[command(
        after_help = "Examples:\n  amphi pull 127.0.0.1:5000/demo/busybox:latest\n  \
        amphi pull --platform linux/arm64 registry.example.com/app:1.2\n\n\
        Plain http is used only for localhost and 127.0.0.1 registries, or with --insecure."
    )]
    Pull(images::PullArgs),
    /// Load images from a docker save archive, an OCI archive or an OCI layout directory
    #[command(after_help = "Examples:\n  amphi load busybox.tar\n  \
        amphi load --tag localhost/demo/busybox:latest ./busybox-oci-layout\n  \
        docker save app | amphi load -")]
    Load(images::LoadArgs),
    /// List images in the local store
    #[command(visible_alias = "ls")]
    Images(images::ImagesArgs),
    /// Show an image's manifest and config as JSON
    Inspect(images::InspectArgs),
    /// Remove images (by name or ID) from the local store
    Rmi(images::RmiArgs),
    /// Remove blobs and unpacked layers that no image uses, and leftovers of interrupted pulls
    Gc(images::GcArgs),
    /// Guest kernels for microVMs: list, build, add, inspect, remove
    #[command(after_help = "Examples:\n  amphi kernel build --version 6.12\n  \
        amphi kernel ls\n  amphi kernel add ./vmlinux --config ./config\n  \
        amphi kernel inspect 6.12 --option CONFIG_PVM_GUEST\n  amphi kernel rm 6.12.117-b9a0e125f111")]
    Kernel(kernel::KernelArgs),

    /// OCI runtime: create a container from a bundle (its process waits for `start`)
    #[command(
        next_help_heading = "OCI runtime",
        after_help = "Container or microVM: the dispatcher decides from the spec's annotations \
(io.amphi.isolation=vm|container|auto, io.amphi.kernel.version, io.amphi.kernel.config, \
io.amphi.kernel) and the site policy ($AMPHI_POLICY, else /etc/amphi/policy.toml; the image by \
io.kubernetes.cri.image-name or io.kubernetes.cri-o.ImageName). An annotation can only ask for \
more isolation. A microVM container: the VM boots here and waits for `start`; the pid in \
--pid-file and `state` is its monitor's, which exits with the workload's status; \
$AMPHI_VM_BACKEND (auto, builtin, qemu) picks the VMM. Refused for a microVM, by spec path: \
namespace paths to join, linux.devices, a seccomp listenerPath, --preserve-fds.\n\n\
Examples:\n  podman --runtime amphi run --annotation io.amphi.isolation=vm IMAGE\n  \
ctr run --runc-binary amphi --annotation io.amphi.isolation=vm IMAGE ID"
    )]
    Create(oci::CreateArgs),
    /// OCI runtime: start a created container's process
    Start(oci::IdArgs),
    /// OCI runtime: print a container's state as JSON
    State(oci::IdArgs),
    /// OCI runtime: send a signal to a container
    Kill(oci::KillArgs),
    /// OCI runtime: delete a container
    Delete(oci::DeleteArgs),
    /// OCI runtime: run a process in a running container
    Exec(Box<oci::ExecArgs>),
    /// List containers (docker ps), or with an ID a container's processes (runc ps)
    Ps(oci::PsArgs),
    /// Stop containers: their stop signal, then KILL after a grace period
    Stop(oci::StopArgs),
    /// Remove stopped containers (-f: kill running ones first)
    Rm(oci::RmArgs),
    /// Print the output of a detached container
    Logs(oci::LogsArgs),
    /// OCI runtime: pause (freeze) every process of a container
    Pause(oci::IdArgs),
    /// OCI runtime: resume (thaw) a paused container
    Resume(oci::IdArgs),
    /// OCI runtime: change a running container's resources (-r FILE|- or flags)
    Update(Box<oci::UpdateArgs>),
    /// OCI runtime: a container's resource usage (--stats once, else a stream with OOM events)
    Events(oci::EventsArgs),
    /// OCI runtime: list the containers of the state root (runc's table, -q, --format json)
    List(oci::ListArgs),
    /// OCI runtime: checkpoint a container with CRIU (refused: amphi does not drive CRIU; the error says why)
    Checkpoint(Box<oci::CheckpointArgs>),
    /// OCI runtime: restore a container from a CRIU checkpoint (refused, as checkpoint)
    Restore(Box<oci::RestoreArgs>),
    /// OCI runtime: print the runtime's features as JSON
    Features,
    /// OCI runtime: write a starting config.json
    Spec(oci::SpecArgs),
    /// Inside a container: a reaping PID 1 for `run --init`
    #[command(hide = true)]
    Init {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Boot a kernel in amphi's VMM (developer and nested-lab tool)
    #[command(hide = true)]
    Vmm(vmm::VmmArgs),
}

/// The `--console-socket` a command line names, read without the parser
/// (for a command line the parser refused).
pub fn console_socket_arg(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--console-socket" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--console-socket=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Runs the parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let store_root = cli.store.clone().unwrap_or_else(amphi_store_root);
    let done = |r: Result<()>| r.map(|()| 0);
    if cli.systemd_cgroup {
        return oci_result(
            &cli,
            Err("--systemd-cgroup is not supported: amphi manages cgroups through cgroupfs; configure the caller to use cgroupfs (e.g. podman --cgroup-manager=cgroupfs, containerd SystemdCgroup = false)".into()),
        );
    }
    let root = cli.root.clone();
    if let Command::Gc(_) = &cli.command {
        gc_stale_runs(&root);
    }
    if let Command::Init { command } = &cli.command {
        let args: Vec<String> = command.iter().skip_while(|a| *a == "--").cloned().collect();
        return Ok(tiny_init::main(&args).unwrap_or_else(|e| {
            eprintln!("{e}");
            EXIT_AMPHI
        }));
    }
    if let Command::Vmm(a) = &cli.command {
        return Ok(vmm::run(a));
    }
    if !matches!(cli.command, Command::Features | Command::Spec(_)) {
        if let Err(e) = crate::run::check_roots(&store_root, &root) {
            return oci_result(&cli, Err(crate::oci::OciError::cause(e)));
        }
    }
    let r = runtime_command(&cli.command, &store_root, &root);
    if let Some(r) = r {
        return oci_result(&cli, r);
    }
    if let Command::Exec(mut a) = cli.command {
        if let Some(r) = vm_exec::exec(&store_root, &root, &a) {
            return Ok(match r {
                Ok(code) => code,
                Err(e) => {
                    oci_exit(cli.log.as_deref(), &cli.log_format, Err(e));
                    EXIT_EXEC_FAILED
                }
            });
        }
        a.id = crate::run::manage::resolve_id(&store_root, &root, &a.id);
        let r = oci_vm::exec(&root, &a).unwrap_or_else(|| oci::exec(&root, *a));
        // As runc: exec's own failures exit 255, told apart from the
        // process's status (which may well be 1).
        return Ok(match r {
            Ok(code) => code,
            Err(e) => {
                oci_exit(cli.log.as_deref(), &cli.log_format, Err(e));
                EXIT_EXEC_FAILED
            }
        });
    }
    match cli.command {
        Command::Run(a) if a.bundle.is_some() => {
            let r = oci_run(&root, &store_root, &a);
            Ok(oci_exit(cli.log.as_deref(), &cli.log_format, r))
        }
        Command::Run(a)
            if a.console_socket.is_some()
                || a.pid_file.is_some()
                || a.keep
                || a.preserve_fds.is_some() =>
        {
            crate::oci::hang_up(a.console_socket.as_deref());
            eprintln!("amphi: error: --console-socket, --pid-file, --preserve-fds and --keep belong to the OCI runtime form of run, which --bundle DIR selects (amphi run --help)");
            Ok(EXIT_AMPHI)
        }
        Command::Run(a) => {
            let result = run::request(*a, &store_root, &cli.root)
                .and_then(|(req, dispatch)| run::execute(req, dispatch));
            match result {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("amphi: error: {e}");
                    Ok(e.failure().exit_status())
                }
            }
        }
        Command::Kernel(a) => kernel::run(&store_root, a),
        Command::Compare(a) => compare::run(&store_root, &cli.root, *a),
        Command::Explain(a) => explain::run(&store_root, a),
        Command::Gc(a) => done(images::gc(&store_root, &root, a)),
        c => done(run_image_command(c, &store_root)),
    }
}

/// The OCI runtime's commands and the container management ones (`ps`,
/// `stop`, `rm`, `logs`), which all report errors alike; None for the
/// others.
fn runtime_command(
    command: &Command,
    store_root: &std::path::Path,
    root: &std::path::Path,
) -> Option<std::result::Result<i32, crate::oci::OciError>> {
    lifecycle_command(command, store_root, root)
        .or_else(|| inspect_command(command, store_root, root))
}

/// The OCI lifecycle: create, start, state, kill, delete, pause, resume,
/// checkpoint and restore (refused); None for the others.
fn lifecycle_command(
    command: &Command,
    store_root: &std::path::Path,
    root: &std::path::Path,
) -> Option<std::result::Result<i32, crate::oci::OciError>> {
    match command {
        Command::Create(a) => {
            let o = crate::oci::CreateOptions {
                id: a.id.clone(),
                bundle: a.bundle.clone(),
                console_socket: a.console_socket.clone(),
                pid_file: a.pid_file.clone(),
                preserve_fds: a.preserve_fds,
                store_root: store_root.to_path_buf(),
            };
            // The dispatcher's decision: a microVM, or the native create.
            Some(oci_vm::create(root, o).map(|()| 0))
        }
        Command::Start(a) => Some(
            oci_vm::start_hooks(root, &a.id)
                .and_then(|()| crate::oci::start(root, &a.id))
                .map(|()| 0),
        ),
        Command::State(a) => Some(
            crate::oci::state(
                root,
                &crate::run::manage::resolve_id(store_root, root, &a.id),
            )
            .map(|s| {
                println!("{s}");
                0
            }),
        ),
        Command::Kill(a) => {
            let id = crate::run::manage::resolve_id(store_root, root, &a.id);
            let named = id != a.id;
            let sig = a
                .signal
                .clone()
                .or_else(|| a.signal_opt.clone())
                .unwrap_or_else(|| if named { "KILL".into() } else { "TERM".into() });
            if let Some(r) = crate::run::manage::kill_vm_container(store_root, root, &a.id, &sig) {
                return Some(r.map(|()| 0).map_err(crate::oci::OciError::cause));
            }
            Some(crate::oci::kill(root, &id, &sig, a.all).map(|()| 0))
        }
        Command::Delete(a) => {
            let microvm = crate::container::state::State::load(root, &a.id)
                .is_ok_and(|st| st.microvm.is_some());
            let r = crate::oci::delete(root, &a.id, a.force);
            if microvm {
                oci_vm::sweep(root, &a.id);
            }
            Some(r.map(|()| 0))
        }
        Command::Pause(a) => Some(crate::oci::pause(root, &a.id).map(|()| 0)),
        Command::Resume(a) => Some(crate::oci::resume(root, &a.id).map(|()| 0)),
        Command::Checkpoint(a) => Some(crate::oci::checkpoint(root, &a.id).map(|()| 0)),
        Command::Restore(a) => {
            let r = crate::oci::restore(root, &a.id).map(|()| 0);
            if r.is_err() {
                crate::oci::hang_up(a.console_socket.as_deref());
            }
            Some(r)
        }
        _ => None,
    }
}

/// The commands that look at or change containers without running one:
/// update, events, list, ps, stop, rm, logs, features and spec; None for
/// the others.
fn inspect_command(
    command: &Command,
    store_root: &std::path::Path,
    root: &std::path::Path,
) -> Option<std::result::Result<i32, crate::oci::OciError>> {
    match command {
        Command::Update(a) => Some(oci::update(root, a)),
        Command::Events(a) => Some(
            oci::parse_duration(&a.interval)
                .map_err(crate::oci::OciError::from)
                .and_then(|interval| {
                    crate::oci::events(
                        root,
                        &crate::oci::EventsOptions {
                            id: a.id.clone(),
                            stats: a.stats,
                            interval,
                        },
                    )
                    .map(|()| 0)
                }),
        ),
        Command::List(a) => Some(crate::oci::list(root, &a.format, a.quiet).map(|s| {
            print!("{s}");
            0
        })),
        Command::Ps(a) => Some(match &a.id {
            Some(id) => {
                let id = crate::run::manage::resolve_id(store_root, root, id);
                crate::oci::ps(root, &id, a.format == "json").map(|s| {
                    print!("{s}");
                    0
                })
            }
            None => {
                print!(
                    "{}",
                    crate::run::manage::ps(store_root, root, a.all, a.quiet)
                );
                Ok(0)
            }
        }),
        Command::Stop(a) => Some(each(&a.containers, |c| {
            crate::run::manage::stop(store_root, root, c, a.time)
        })),
        Command::Rm(a) => Some(each(&a.containers, |c| {
            crate::run::manage::rm(store_root, root, c, a.force)
        })),
        Command::Logs(a) => Some(
            crate::run::manage::logs(store_root, root, &a.container, a.follow)
                .map(|()| 0)
                .map_err(crate::oci::OciError::cause),
        ),
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::oci::features()).expect("json")
            );
            Some(Ok(0))
        }
        Command::Spec(a) => Some(
            oci::spec(oci::SpecArgs {
                bundle: a.bundle.clone(),
                rootless: a.rootless,
            })
            .map(|()| 0)
            .map_err(crate::oci::OciError::cause),
        ),
        _ => None,
    }
}

/// `run --bundle DIR ID`: runc's run.
fn oci_run(
    root: &std::path::Path,
    store_root: &std::path::Path,
    a: &run::RunArgs,
) -> std::result::Result<i32, crate::oci::OciError> {
    if !a.target.command.is_empty() {
        crate::oci::hang_up(a.console_socket.as_deref());
        return Err(format!(
            "run --bundle takes a container ID only, and was also given {:?}: the process comes from the bundle's config.json",
            a.target.command
        )
        .into());
    }
    let create = crate::oci::CreateOptions {
        id: a.target.image.clone(),
        bundle: a.bundle.clone().unwrap_or_default(),
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds.unwrap_or(0),
        store_root: store_root.to_path_buf(),
    };
    // The dispatcher's decision: a microVM, or the native run.
    oci_vm::run(
        root,
        crate::oci::RunOptions {
            create,
            detach: a.detach,
            keep: a.keep,
        },
    )
}

/// Applies `f` to each container, printing the names done and the errors.
fn each(
    items: &[String],
    f: impl Fn(&str) -> std::result::Result<String, crate::run::RunError>,
) -> std::result::Result<i32, crate::oci::OciError> {
    let mut failed = 0;
    for c in items {
        match f(c) {
            Ok(name) => println!("{name}"),
            Err(e) => {
                eprintln!("amphi: error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        Err(format!("{failed} of {} containers failed", items.len()).into())
    } else {
        Ok(0)
    }
}

/// Runtime commands exit 1 on error (as runc), and also log the error to
/// `--log` for callers such as conmon and containerd's shim.
fn oci_result(cli: &Cli, r: std::result::Result<i32, crate::oci::OciError>) -> Result<i32> {
    Ok(oci_exit(cli.log.as_deref(), &cli.log_format, r))
}

fn oci_exit(
    log: Option<&std::path::Path>,
    format: &str,
    r: std::result::Result<i32, crate::oci::OciError>,
) -> i32 {
    r.unwrap_or_else(|e| {
        log_error(log, format, &e.to_string());
        eprintln!("amphi: error: {e}");
        1
    })
}

fn log_error(log: Option<&std::path::Path>, format: &str, msg: &str) {
    let Some(p) = log else { return };
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": msg, "time": crate::container::state::now_rfc3339()}).to_string()
    } else {
        format!(
            "time=\"{}\" level=error msg={msg:?}",
            crate::container::state::now_rfc3339()
        )
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

fn run_image_command(c: Command, store_root: &std::path::Path) -> Result<()> {
    let store_root = store_root.to_path_buf();
    match c {
        Command::Run(_)
        | Command::Create(_)
        | Command::Start(_)
        | Command::State(_)
        | Command::Kill(_)
        | Command::Delete(_)
        | Command::Pause(_)
        | Command::Resume(_)
        | Command::Update(_)
        | Command::Events(_)
        | Command::List(_)
        | Command::Checkpoint(_)
        | Command::Restore(_)
        | Command::Exec(_)
        | Command::Ps(_)
        | Command::Stop(_)
        | Command::Rm(_)
        | Command::Logs(_)
        | Command::Features
        | Command::Init { .. }
        | Command::Vmm(_)
        | Command::Spec(_)
        | Command::Kernel(_)
        | Command::Compare(_)
        | Command::Explain(_)
        | Command::Gc(_) => unreachable!("handled above"),
        Command::Pull(a) => images::pull(&store_root, a),
        Command::Load(a) => images::load(&store_root, a),
        Command::Images(a) => images::images(&store_root, a),
        Command::Inspect(a) => images::inspect(&store_root, a),
        Command::Rmi(a) => images::rmi(&store_root, a),
    }
}

fn amphi_store_root() -> PathBuf {
    crate::image::Store::default_root()
}

/// Sets up `tracing` on stderr.
pub fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}

#[cfg(test)]
mod tests {
    use super::console_socket_arg;
    use std::ffi::OsString;
    use std::path::PathBuf;

    #[test]
    fn console_socket_found_without_the_parser() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            console_socket_arg(&a(&[
                "amphi",
                "exec",
                "--bogus",
                "--console-socket",
                "/s",
                "id"
            ])),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            console_socket_arg(&a(&["amphi", "create", "--console-socket=/t", "id"])),
            Some(PathBuf::from("/t"))
        );
        assert_eq!(
            console_socket_arg(&a(&["amphi", "exec", "id", "--", "--console-socket", "/u"])),
            None
        );
        assert_eq!(console_socket_arg(&a(&["amphi", "state", "id"])), None);
    }
}
