//! Process plumbing that knows nothing of images, containers or VMs, for
//! every layer above (ARCHITECTURE.md, "Layers"): exit statuses, signal
//! names, time, C strings for exec, I/O errors with their path, overlayfs
//! mount options.

pub mod cstr;
pub mod error;
pub mod exit;
pub mod io;
pub mod overlay;
pub mod poll;
pub mod signal;
pub mod term;
pub mod time;
