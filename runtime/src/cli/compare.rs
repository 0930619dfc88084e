//! `amphi compare`.

use super::workload::{ImageCommand, WorkloadArgs};
use anyhow::Result;
use clap::Args;
use std::io::IsTerminal;
use std::path::Path;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  amphi compare localhost/demo/busybox uname -r\n  \
    amphi compare --json localhost/demo/busybox sh -c 'uname -r; head -3 /proc/cpuinfo'\n  \
    amphi compare --kernel 6.1 --memory 128m IMAGE CMD\n\n\
    The workload runs twice, `amphi run --rm --isolation container` then `--isolation vm`, \
    with the same flags (--vm-backend, --kernel and --timeout for the microVM run only). \
    Exit status: 0 when the exit status and the output are the same (the kernel may differ), \
    1 when they differ, 125 when amphi could not compare."
)]
pub struct CompareArgs {
    /// Print the comparison as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub target: ImageCommand,
}

pub fn run(store_root: &Path, state_root: &Path, a: CompareArgs) -> Result<i32> {
    let exe = crate::container::sealed::host_binary();
    // The microVM-only flags go to the microVM side only: `run` refuses
    // them with --isolation container.
    let common = a.workload.to_run_args();
    let mut vm_flags = common.clone();
    vm_flags.extend(a.workload.vm.to_run_args());
    // The child runs use this store and state root whatever set them.
    std::env::set_var("AMPHI_ROOT", store_root);
    std::env::set_var("AMPHI_STATE", state_root);
    // The run reports go to a private mkdtemp directory (removed on drop).
    let scratch =
        crate::compare::Scratch::new_in(&std::env::temp_dir()).map_err(anyhow::Error::msg)?;
    let side = |iso: &str, flags: &[String]| {
        crate::compare::run_side(
            &exe,
            iso,
            flags,
            &a.target.image,
            &a.target.command,
            &scratch,
        )
        .map_err(anyhow::Error::msg)
    };
    let container = side("container", &common)?;
    let vm = side("vm", &vm_flags)?;
    for s in [&container, &vm] {
        if s.report.is_none() {
            anyhow::bail!(
                "the {} run failed before the workload ran (exit status {}):\n{}",
                s.isolation,
                s.exit_code,
                s.stderr.trim_end()
            );
        }
    }
    let c = crate::compare::compare(&a.target.image, &a.target.command, container, vm);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", c.render(color));
    }
    let behaviour_differs = c
        .differences
        .iter()
        .any(|d| d == "exit status" || d == "stdout" || d == "stderr");
    Ok(i32::from(behaviour_differs))
}
