//! `amphi explain`.

use crate::dispatch::IsolationChoice;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "Examples:\n  amphi explain localhost/demo/busybox\n  \
    amphi explain --json localhost/demo/old-kernel-app\n  \
    amphi explain localhost/demo/systemd bash      # as `amphi run IMAGE bash` would run\n  \
    amphi explain --policy ./policy.toml registry.example.com/app:1.2\n\n\
    Prints how `amphi run` would run the image (native container or microVM, and with which \
    guest kernel and backend), who decided it and every rule checked, with the values compared; \
    for a microVM also what jails its monitor (user, capabilities, filesystem, namespaces, \
    seccomp, cgroup: what a guest that broke out of the VM would find). \
    Who decides: the policy ([[image]], [[trust]], default_isolation) first; then --isolation \
    (which may raise the policy to vm, never lower its vm); then the image's io.amphi.* \
    annotations and labels, which may only ask for more isolation; then what amphi infers from \
    the image's own files (the image scan: the command's executable, systemd's version, the C \
    library's oldest supported kernel, the vsyscall page, kernel modules), which only adds \
    requirements. Only the command that runs counts: give the same command as to `amphi run`. \
    Exit status 0 when the image can run here, 125 when it cannot (the error says why).")]
pub struct ExplainArgs {
    /// Print the decision as JSON (with the image scan's facts)
    #[arg(long)]
    pub json: bool,
    /// Dispatch policy file (default: $AMPHI_POLICY, else /etc/amphi/policy.toml when it exists)
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// As `amphi run --isolation`: auto, container or vm
    #[arg(long, default_value = "auto", value_parser = ["auto", "container", "vm"])]
    pub isolation: String,
    /// As `amphi run --vm-backend`: auto, builtin or qemu
    #[arg(long, default_value = "auto", value_parser = ["auto", "builtin", "qemu"])]
    pub vm_backend: String,
    /// As `amphi run --kernel`: the guest kernel to consider (catalog ID or version, or a file)
    #[arg(long, value_name = "KERNEL")]
    pub kernel: Option<String>,
    /// As `amphi run --entrypoint`: overwrite the image's entrypoint
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Scan the image's files again, even when a stored scan exists
    #[arg(long)]
    pub rescan: bool,
    /// Image to explain
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The command `amphi run` would be given (default: the image's)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// For a microVM plan, what its monitor's jail gives (`monitor jail:` and a
/// line each); nothing for a native container.
pub fn monitor_protections(p: &crate::dispatch::Plan) -> String {
    match &p.target {
        crate::dispatch::Target::Vm(vm) => {
            let mut s = format!("monitor jail ({}):\n", vm.backend.describe());
            for line in crate::vm::jail::protections(&vm.backend) {
                s.push_str(&format!("  {line}\n"));
            }
            s
        }
        crate::dispatch::Target::Container => String::new(),
    }
}

/// The network a run of the image gets by default: private (none, when
/// this host cannot give one), or the policy's limit (which a `--network`
/// flag cannot exceed).
fn network(p: &crate::dispatch::Plan) -> String {
    match &p.decision.network_limit {
        Some((limit, rule)) if limit.as_str() == "none" => {
            format!("none (the policy allows at most none: {rule}; --network private is refused)")
        }
        Some((limit, rule)) => format!("private (the policy allows at most {limit}: {rule})"),
        None => match crate::net::unavailable(matches!(p.target, crate::dispatch::Target::Vm(_))) {
            Some(why) => format!("none (the default, private, is unavailable on this host: {why})"),
            None => "private (the default; --network none or host to change it)".into(),
        },
    }
}

pub fn run(store_root: &Path, a: ExplainArgs) -> anyhow::Result<i32> {
    let iso: IsolationChoice = a.isolation.parse()?;
    let backend = a.vm_backend.parse().map_err(anyhow::Error::msg)?;
    match crate::dispatch::plan(&crate::dispatch::PlanRequest {
        isolation: iso,
        policy: a.policy.as_deref(),
        vm_backend: backend,
        kernel: a.kernel.as_deref(),
        command: &a.command,
        entrypoint: a.entrypoint.as_deref(),
        rescan: a.rescan,
        notify: super::notify,
        ..crate::dispatch::PlanRequest::new(store_root, &a.image)
    }) {
        Ok(p) if a.json => {
            let mut v = serde_json::to_value(&p)?;
            if let (crate::dispatch::Target::Vm(vm), Some(o)) = (&p.target, v.as_object_mut()) {
                o.insert(
                    "monitor_protections".into(),
                    crate::vm::jail::protections(&vm.backend).into(),
                );
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        Ok(p) => {
            print!("{p}");
            print!("{}", monitor_protections(&p));
            println!("network: {}", network(&p));
            Ok(0)
        }
        Err(e) => {
            eprintln!("amphi: error: {e}");
            Ok(super::EXIT_AMPHI)
        }
    }
}
