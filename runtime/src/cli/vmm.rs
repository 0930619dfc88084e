//! `amphi vmm`: boot a kernel in amphi's own VMM (hidden; a tool for the
//! nested lab, tests and developers). The VMM is a small static executable
//! of its own, `amphi-vmm` (ARCHITECTURE.md, "The VMM executable"): this
//! command execs it with the same arguments, so the process started is the
//! VMM's (its supervisor, when jailed) and none of amphi's code or memory
//! stays in it. `amphi-vmm --help` says what it takes.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use clap::Args;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct VmmArgs {
    /// The arguments of amphi-vmm (see `amphi vmm --help`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// Execs `amphi-vmm` with `args`; returns only when that failed (with
/// amphi's exit status, said on stderr).
pub fn run(args: &VmmArgs) -> i32 {
    let exe = match crate::vm::backend::vmm_binary() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("amphi vmm: error: {e}");
            return super::EXIT_AMPHI;
        }
    };
    let e = std::process::Command::new(&exe)
        .arg0("amphi-vmm")
        .args(&args.args)
        .exec();
    eprintln!("amphi vmm: error: executing {}: {e}", exe.display());
    super::EXIT_AMPHI
}
