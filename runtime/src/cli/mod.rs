//! The command line: parse, call the library, print. Kept thin.

mod images;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Exit status for amphi's own failures (bad flags, missing images, store
/// errors), as docker and podman use it.
pub const EXIT_AMPHI: i32 = 125;

#[derive(Parser)]
#[command(
    name = "amphi",
    version,
    about = "Run OCI images as Linux containers or in KVM microVMs, chosen per image",
    long_about = "amphi runs OCI container images. For every run it decides whether the image can \
                  run natively as a Linux container or needs its own kernel in a tiny KVM microVM, \
                  and explains why.\n\nImages are kept in a content-addressed store under \
                  $AMPHI_ROOT (default /var/lib/amphi as root).",
    propagate_version = true
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
}

/// Runs the parsed command line; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let store_root = cli.store.clone().unwrap_or_else(amphi_store_root);
    let done = |r: Result<()>| r.map(|()| 0);
    match cli.command {
        Command::Run(a) => {
            let req = match run::request(*a, &store_root, &cli.root) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("amphi: error: {e}");
                    return Ok(e.code);
                }
            };
            match crate::run::run(req) {
                Ok(code) => Ok(code),
                Err(e) => {
                    eprintln!("amphi: error: {e}");
                    Ok(e.code)
                }
            }
        }
        c => done(run_image_command(c, &store_root)),
    }
}

fn run_image_command(c: Command, store_root: &std::path::Path) -> Result<()> {
    let store_root = store_root.to_path_buf();
    match c {
        Command::Run(_) => unreachable!("handled above"),
        Command::Pull(a) => images::pull(&store_root, a),
        Command::Load(a) => images::load(&store_root, a),
        Command::Images(a) => images::images(&store_root, a),
        Command::Inspect(a) => images::inspect(&store_root, a),
        Command::Rmi(a) => images::rmi(&store_root, a),
        Command::Gc(a) => images::gc(&store_root, a),
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
