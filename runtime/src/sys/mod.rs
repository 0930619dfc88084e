//! Process plumbing that knows nothing of images, containers or VMs, for
//! every layer above (ARCHITECTURE.md, "Layers"): signal names, time.

pub mod signal;
pub mod time;
