//! `amphi-lab`: the nested lab's tool (`scripts/vm-lab`, see its `--help`).
//!
//! On the host it builds the pieces of level 1's initramfs with amphi's own
//! code: newc archives with the guest rootfs's cpio writer, and the ELF
//! vmlinux inside a bzImage found through the kernel probe's boot-header
//! parsing. Inside level 1, which has busybox and no libc (so this binary is
//! static, as amphi is), it is the virtio-console listener of the virtio
//! check and the timer of the bench.

mod cpio;
mod entry;
mod listen;
mod markers;
mod vmlinux;
mod watch;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "amphi-lab",
    about = "The nested lab's tool (scripts/vm-lab): initramfs pieces on the host; level 1's listener and timer",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write DIR's contents (not DIR itself) as a gzip'd newc cpio archive
    /// to OUT, every entry owned by root, names sorted: an initramfs piece.
    /// Regular files, directories, symlinks, device nodes and fifos; a
    /// hardlinked file is stored once per name.
    Cpio { dir: PathBuf, out: PathBuf },
    /// Write the ELF vmlinux inside BZIMAGE to OUT. The payload may be
    /// gzip, xz, lz4 (legacy frame) or zstd compressed: what Debian's and
    /// amphi's kernels use.
    ExtractVmlinux { bzimage: PathBuf, out: PathBuf },
    /// Listen on a new unix socket SOCK (the host end of amphi's
    /// virtio-console), accept one connection and append all it receives
    /// to OUT until EOF. When the MARKERs arrive, in order, send each REPLY
    /// and a newline. Prints "AMPHI-L1-LISTEN bytes=N replies=N".
    Listen {
        sock: PathBuf,
        out: PathBuf,
        /// MARKER REPLY pairs.
        #[arg(value_name = "MARKER REPLY", allow_hyphen_values = true)]
        pairs: Vec<String>,
    },
    /// Run CMD with its stdout through a pipe (copied to ours) and time from
    /// just before starting it to the first MARKER on it. SETTLE_MS after
    /// the marker read CMD's /proc/PID/smaps (a mapping of at least
    /// GUEST_MIB MiB is guest RAM), then stop CMD (SIGTERM, SIGKILL 5 s
    /// later); without the marker within TIMEOUT_S, stop it then. Prints
    /// "AMPHI-L1-BENCH LABEL init-ms=... rss-kb=... guest-rss-kb=... ...
    /// exit=N" (or signal=N); fails unless the marker came and the memory
    /// was read. With AMPHI_VMM_TIMING set, CMD gets it as the launch time
    /// (seconds since the epoch), for amphi vmm's startup report. With
    /// AMPHI_LAB_FIRST_ENTRY set, the line also says "entry-ms=...": launch
    /// to the guest's first instruction (level 1's first kvm:kvm_entry trace
    /// event of vCPU 0; tracefs at /sys/kernel/tracing).
    Watch {
        label: String,
        marker: String,
        settle_ms: f64,
        guest_mib: u64,
        timeout_s: f64,
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cpio { dir, out } => cpio::write_dir(&dir, &out).map(|()| ExitCode::SUCCESS),
        Command::ExtractVmlinux { bzimage, out } => {
            vmlinux::extract_file(&bzimage, &out).map(|()| ExitCode::SUCCESS)
        }
        Command::Listen { sock, out, pairs } => {
            if pairs.len() % 2 != 0 {
                eprintln!("amphi-lab listen: MARKER {:?} has no REPLY", pairs.last());
                return ExitCode::from(2);
            }
            let pairs: Vec<(String, String)> = pairs
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            listen::run(&sock, &out, &pairs).map(|()| ExitCode::SUCCESS)
        }
        Command::Watch {
            label,
            marker,
            settle_ms,
            guest_mib,
            timeout_s,
            cmd,
        } => watch::run(&watch::Watch {
            label,
            marker,
            settle_ms,
            guest_kb: guest_mib.saturating_mul(1024),
            timeout_ms: timeout_s * 1e3,
            cmd,
        }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("amphi-lab: error: {e:#}");
        ExitCode::FAILURE
    })
}
