//! The native engine: run an OCI runtime spec as a Linux container
//! (namespaces, cgroups, capabilities, seccomp, pivot_root). The same code
//! runs the workload inside microVMs, so it assumes nothing about the host
//! beyond Linux.

pub mod caps;
pub mod cgroups;
pub mod config;
pub mod devices;
pub mod effects;
pub mod hooks;
pub mod launch;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod setup;
pub mod state;
pub mod sync;
pub mod syscalls;
pub mod user;
