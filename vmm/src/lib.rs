//! amphi's KVM virtual machine monitor.
//!
//! The VMM is built on the rust-vmm crates; see `../shared/ARCHITECTURE.md`
//! ("Where the VM path runs"). This crate is filled in by the VMM issue; for
//! now it only fixes the crate's place in the workspace.
