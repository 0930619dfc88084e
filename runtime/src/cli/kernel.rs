//! `amphi kernel ls|build|add|inspect|rm`: the guest kernel catalog.

use crate::kernel::{self, AddOptions, BuildOptions, Catalog, KernelEntry};
use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub command: KernelCommand,
}

#[derive(Subcommand)]
pub enum KernelCommand {
    /// List the kernels in the catalog
    #[command(after_help = "Examples:\n  amphi kernel ls\n  amphi kernel ls --json")]
    Ls(LsArgs),
    /// Build amphi's microVM guest kernel from Debian's linux-source package and add it
    #[command(
        disable_version_flag = true,
        after_help = "Examples:\n  amphi kernel build                  \
        # the newest installed linux-source-<series>\n  \
        amphi kernel build --version 6.1\n  \
        amphi kernel build --version 6.12 --rebuild\n\n\
        Builds are cached per machine in $AMPHI_KERNEL_CACHE (default /var/cache/amphi/kernels), \
        keyed by the recipe, the config fragment and the source package: a second store, or a \
        second run, reuses the build. Sources come from $AMPHI_LINUX_SOURCE_DIR (default /usr/src), \
        e.g. /usr/src/linux-source-6.12.tar.xz from `apt-get install linux-source-6.12`."
    )]
    Build(BuildArgs),
    /// Add a kernel file (ELF vmlinux or bzImage) to the catalog
    #[command(after_help = "Examples:\n  amphi kernel add ./vmlinux\n  \
        amphi kernel add arch/x86/boot/bzImage --config .config\n  \
        amphi kernel add ./vmlinux-pvm --pvm\n\n\
        The version is read from the file. The config is --config, else the copy embedded by \
        CONFIG_IKCONFIG, else recorded as unknown. A kernel is PVM-enabled with --pvm or when its \
        config has CONFIG_PVM_GUEST=y.")]
    Add(AddArgs),
    /// Show a kernel's metadata and key config options
    #[command(after_help = "Examples:\n  amphi kernel inspect 6.12\n  \
        amphi kernel inspect 6.12.117-b9a0e125f111 --json\n  \
        amphi kernel inspect 6.1 --option CONFIG_PVM_GUEST\n\n\
        KERNEL is an ID, an ID prefix, a version (6.12.117) or a series (6.12: the newest).\n\
        --option prints the option's value and exits 0, or prints \"CONFIG_X is not set\" and \
        exits 1.")]
    Inspect(InspectArgs),
    /// Remove a kernel from the catalog
    #[command(after_help = "Examples:\n  amphi kernel rm 6.12.117-b9a0e125f111\n\n\
        The machine's build cache is kept: `amphi kernel build` registers it again without \
        building.")]
    Rm(RmArgs),
}

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Kernel series to build: 6.12 or 6.1 (default: the newest installed linux-source)
    #[arg(long, value_name = "SERIES")]
    pub version: Option<String>,
    /// Build again even when the build cache has this kernel
    #[arg(long)]
    pub rebuild: bool,
}

#[derive(Args)]
pub struct AddArgs {
    /// Kernel file: an x86_64 ELF vmlinux or a bzImage
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// The kernel's .config
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The kernel is PVM-enabled (CONFIG_PVM_GUEST)
    #[arg(long)]
    pub pvm: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Kernel ID, ID prefix, version or series
    #[arg(value_name = "KERNEL")]
    pub kernel: String,
    /// Print JSON
    #[arg(long, conflicts_with = "option")]
    pub json: bool,
    /// Print one config option's value, e.g. CONFIG_PVH
    #[arg(long, value_name = "CONFIG_X")]
    pub option: Option<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Kernel IDs (as `amphi kernel ls` shows them)
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
}

/// The options `inspect` shows: what a microVM guest needs.
const KEY_OPTIONS: &[&str] = &[
    "CONFIG_PVH",
    "CONFIG_KVM_GUEST",
    "CONFIG_PVM_GUEST",
    "CONFIG_VIRTIO_MMIO",
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
    "CONFIG_VIRTIO_BLK",
    "CONFIG_VIRTIO_CONSOLE",
    "CONFIG_VIRTIO_NET",
    "CONFIG_EXT4_FS",
    "CONFIG_EROFS_FS",
    "CONFIG_OVERLAY_FS",
    "CONFIG_DEVTMPFS",
    "CONFIG_CGROUPS",
    "CONFIG_MEMCG",
    "CONFIG_USER_NS",
    "CONFIG_SECCOMP_FILTER",
    "CONFIG_MODULES",
];

/// Runs `amphi kernel ...`; returns the exit status.
pub fn run(store_root: &Path, args: KernelArgs) -> Result<i32> {
    let catalog = Catalog::open(store_root);
    match args.command {
        KernelCommand::Ls(a) => ls(&catalog, a.json).map(|()| 0),
        KernelCommand::Build(a) => {
            let opts = BuildOptions {
                series: a.version,
                rebuild: a.rebuild,
            };
            let e = kernel::build(store_root, &opts, &mut |m| eprintln!("{m}"))?;
            eprintln!(
                "guest kernel {} is in the catalog: {}",
                e.version,
                e.dir.display()
            );
            println!("{}", e.id);
            Ok(0)
        }
        KernelCommand::Add(a) => {
            let opts = AddOptions {
                config: a.config,
                pvm: a.pvm,
            };
            let added = catalog.add(&a.path, &opts)?;
            let e = &added.entry;
            if added.new {
                eprintln!(
                    "added kernel {} ({}; config {}; pvm {})",
                    e.version,
                    formats(e),
                    e.config_source,
                    yes_no(e.pvm)
                );
                if e.vmlinux().is_some() && e.pvh_entry.is_none() {
                    eprintln!("note: this vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): it cannot be booted directly as PVH");
                }
            } else {
                eprintln!("kernel {} is already in the catalog", e.id);
            }
            println!("{}", e.id);
            Ok(0)
        }
        KernelCommand::Inspect(a) => inspect(&catalog, a),
        KernelCommand::Rm(a) => {
            let mut failed = 0;
            for id in &a.ids {
                match catalog.remove(id) {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("amphi: error: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(if failed > 0 { super::EXIT_AMPHI } else { 0 })
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn formats(e: &KernelEntry) -> String {
    e.formats
        .iter()
        .map(|f| f.file_name())
        .collect::<Vec<_>>()
        .join(",")
}

fn ls(catalog: &Catalog, as_json: bool) -> Result<()> {
    let all = catalog.list()?;
    if as_json {
        let v: Vec<Value> = all.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = all
        .iter()
        .map(|e| {
            [
                e.id.clone(),
                e.version.to_string(),
                yes_no(e.pvm).to_string(),
                formats(e),
                e.source.clone(),
            ]
        })
        .collect();
    let header = ["ID", "VERSION", "PVM", "FORMATS", "SOURCE"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 4 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

/// The entry as JSON: its meta.json plus where its files are.
fn entry_json(e: &KernelEntry) -> Value {
    let mut v = serde_json::to_value(e).expect("entry serialises");
    v["dir"] = json!(e.dir);
    v["vmlinux"] = json!(e.vmlinux());
    v["bzImage"] = json!(e.bzimage());
    v["config"] = json!(e.config_path());
    v
}

fn inspect(catalog: &Catalog, a: InspectArgs) -> Result<i32> {
    let e = catalog.get(&a.kernel)?;
    let config = e.config();
    if let Some(opt) = &a.option {
        let name = kernel::config::option_name(opt);
        let Some(config) = config else {
            anyhow::bail!(
                "kernel {}: its config is unknown (add it again with `amphi kernel add PATH --config FILE`)",
                e.id
            );
        };
        return Ok(match config.get(&name) {
            Some(v) => {
                println!("{v}");
                0
            }
            None => {
                println!("{name} is not set");
                1
            }
        });
    }
    if a.json {
        let mut v = entry_json(&e);
        if let Some(c) = &config {
            let opts: serde_json::Map<String, Value> = KEY_OPTIONS
                .iter()
                .map(|o| (o.to_string(), json!(c.get(*o))))
                .collect();
            v["config_options"] = Value::Object(opts);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("ID:          {}", e.id);
    println!("Version:     {} (release {})", e.version, e.release);
    println!("PVM:         {}", yes_no(e.pvm));
    match e.pvh_entry {
        Some(a) => println!("PVH entry:   {a:#x}"),
        None => println!("PVH entry:   none"),
    }
    for (name, p) in [("vmlinux", e.vmlinux()), ("bzImage", e.bzimage())] {
        if let Some(p) = p {
            println!("{:<13}{}", format!("{name}:"), p.display());
        }
    }
    match (&e.config_path(), &e.config_sha256) {
        (Some(p), Some(h)) => println!(
            "Config:      {} (from {}, sha256 {h})",
            p.display(),
            e.config_source
        ),
        _ => println!("Config:      unknown"),
    }
    println!("Source:      {}", e.source);
    println!("Added:       {}", e.added);
    if let Some(c) = &config {
        println!("Key options:");
        for o in KEY_OPTIONS {
            match c.get(*o) {
                Some(v) => println!("  {o}={v}"),
                None => println!("  {o} is not set"),
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_kernel_commands_parse() {
        crate::cli::Cli::command().debug_assert();
        for args in [
            &["amphi", "kernel", "build", "--version", "6.1", "--rebuild"][..],
            &["amphi", "kernel", "ls", "--json"],
            &[
                "amphi", "kernel", "add", "vmlinux", "--config", "c", "--pvm",
            ],
            &[
                "amphi",
                "kernel",
                "inspect",
                "6.12",
                "--option",
                "CONFIG_PVH",
            ],
            &["amphi", "kernel", "rm", "a", "b"],
        ] {
            crate::cli::Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}
