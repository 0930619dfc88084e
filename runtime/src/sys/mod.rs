//! Process plumbing that knows nothing of images, containers or VMs, for
//! every layer above (ARCHITECTURE.md, "Layers"): exit statuses, signal
//! names, time, C strings for exec.

pub mod cstr;
pub mod exit;
pub mod signal;
pub mod time;
