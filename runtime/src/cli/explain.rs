//! `amphi explain`.

use crate::dispatch::IsolationChoice;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "Examples:\n  amphi explain localhost/demo/busybox\n  \
    amphi explain --json localhost/demo/old-kernel-app\n  \
    amphi explain --policy ./policy.toml registry.example.com/app:1.2\n\n\
    Prints how `amphi run` would run the image (native container or microVM, and with which \
    guest kernel and backend), who decided it and every rule checked, with the values compared. \
    Who decides: --isolation (the operator's override), else the policy ([[image]], [[trust]], \
    default_isolation); the image's io.amphi.isolation may only ask for a microVM where the \
    policy says container or auto. \
    Exit status 0 when the image can run here, 125 when it cannot (the error says why).")]
pub struct ExplainArgs {
    /// Print the decision as JSON
    #[arg(long)]
    pub json: bool,
    /// Dispatch policy file (default /etc/amphi/policy.toml when it exists)
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// As `amphi run --isolation`: auto, container or vm (the operator's override of the policy)
    #[arg(long, default_value = "auto", value_parser = ["auto", "container", "vm"])]
    pub isolation: String,
    /// As `amphi run --vm-backend`: auto, builtin or qemu
    #[arg(long, default_value = "auto", value_parser = ["auto", "builtin", "qemu"])]
    pub vm_backend: String,
    /// As `amphi run --kernel`: the guest kernel to consider (catalog ID or version, or a file)
    #[arg(long, value_name = "KERNEL")]
    pub kernel: Option<String>,
    /// Image to explain
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

pub fn run(store_root: &Path, a: ExplainArgs) -> anyhow::Result<i32> {
    let iso: IsolationChoice = a.isolation.parse()?;
    let backend = a.vm_backend.parse().map_err(anyhow::Error::msg)?;
    match crate::dispatch::plan(
        store_root,
        &a.image,
        iso,
        a.policy.as_deref(),
        backend,
        a.kernel.as_deref(),
    ) {
        Ok(p) if a.json => {
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(0)
        }
        Ok(p) => {
            print!("{p}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("amphi: error: {e}");
            Ok(e.code)
        }
    }
}
