//! amphi: run OCI images natively as Linux containers or in KVM microVMs.
//!
//! See `ARCHITECTURE.md` at the repository root for the design and the
//! layers. This crate holds the library and the `amphi` binary
//! (`src/main.rs`, with the CLI in [`cli`]).

pub mod cli;
pub mod compare;
pub mod container;
pub mod dispatch;
pub mod guest;
pub mod guestfs;
pub mod host;
pub mod image;
pub mod kernel;
pub mod net;
pub mod oci;
pub mod proto;
pub mod run;
pub mod spec;
pub mod sys;
pub mod vm;
