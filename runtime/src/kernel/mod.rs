//! Guest kernels for microVMs: the catalog under `$AMPHI_ROOT/kernels/`, the
//! build of amphi's own microVM kernel from Debian's `linux-source-<series>`
//! packages (cached per machine), and the checks that a file is a kernel.
//!
//! ```text
//! $AMPHI_ROOT/kernels/<id>/vmlinux     ELF, PVH direct boot (when present)
//! $AMPHI_ROOT/kernels/<id>/bzImage     Linux boot protocol (when present)
//! $AMPHI_ROOT/kernels/<id>/config      the kernel's .config (when known)
//! $AMPHI_ROOT/kernels/<id>/meta.json   what `amphi kernel inspect` shows
//! $AMPHI_ROOT/kernels/.lock            flock(2): writers (add, rm, register)
//! $AMPHI_KERNEL_CACHE/<series>-<hash12>/{vmlinux,bzImage,config,version}
//!                                      machine-wide build cache (default
//!                                      /var/cache/amphi/kernels)
//! ```
//!
//! The API other modules use:
//! - [`Catalog::open`], [`Catalog::list`], [`Catalog::get`] (by ID, version or series);
//! - [`KernelEntry`]: [`KernelEntry::vmlinux`], [`KernelEntry::bzimage`],
//!   [`KernelEntry::config`], [`KernelEntry::config_option`];
//! - [`ensure_builtin`]: amphi's own kernel for a series, registered from the
//!   machine's build cache (cheap), or an error saying how to build it.

mod build;
mod catalog;
pub mod config;
pub mod probe;
mod version;

pub use build::{
    available_series, build, ensure_builtin, register_builtins, BuildOptions, Recipe, BUILD_SCRIPT,
    CONFIG_FRAGMENT,
};
pub use catalog::{AddOptions, Added, Catalog, KernelEntry};
pub use config::KernelConfig;
pub use probe::Format;
pub use version::KernelVersion;

use std::path::{Path, PathBuf};

/// Everything that can go wrong with guest kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{path}: not a usable kernel: {reason}")]
    BadKernel { path: PathBuf, reason: String },
    #[error("{path}: not a kernel config: {}{reason}", if *.line > 0 { format!("line {}: ", line) } else { String::new() })]
    BadConfig {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0:?} is not a kernel version (expected X.Y or X.Y.Z, e.g. 6.12 or 6.12.117)")]
    BadVersion(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{query:?} matches several kernels ({}): give the full ID", .ids.join(", "))]
    Ambiguous { query: String, ids: Vec<String> },
    #[error("no guest kernel for {series}: run `amphi kernel build --version {series}`")]
    NoBuiltin { series: String },
    #[error("no kernel source for {series}: {tarball} is missing; install it with `apt-get install linux-source-{series}` (or run scripts/setup)")]
    NoSource { series: String, tarball: PathBuf },
    #[error("no linux-source package in {dir}: install one with `apt-get install linux-source-6.12` (or run scripts/setup)")]
    NoSources { dir: PathBuf },
    #[error("building a guest kernel needs {missing}: install them with `apt-get install {packages}` (or run scripts/setup)")]
    MissingTools { missing: String, packages: String },
    #[error("building guest kernel {series} failed ({status}); log: {log}\n--- last lines of the log\n{tail}")]
    BuildFailed {
        series: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("kernel {id} is already in the catalog {reason}: remove it first with `amphi kernel rm {id}`")]
    Conflict { id: String, reason: String },
    #[error("catalog entry {path} is damaged: {reason} (remove it with `amphi kernel rm`)")]
    CorruptEntry { path: PathBuf, reason: String },
}

impl KernelError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        KernelError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

impl From<crate::sys::io::PathIoError> for KernelError {
    fn from(e: crate::sys::io::PathIoError) -> Self {
        KernelError::io(&e.path, e.error)
    }
}
