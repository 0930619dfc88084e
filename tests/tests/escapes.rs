//! The escape regression suite: one test per attack class that amphi has
//! closed, each run for real as an attacker would (a hostile image built in
//! the test, an unprivileged local user, a hostile guest), asserting what the
//! attacker gets (EPERM, an unchanged binary hash, `explain` saying microVM),
//! not only that a flag is set.
//!
//! Tests are named after their class or CVE. The classes live in one module
//! each under `escapes/`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "escapes/container.rs"]
mod container;
#[path = "escapes/guest_channel.rs"]
mod guest_channel;
#[path = "escapes/policy.rs"]
mod policy;
#[path = "escapes/store.rs"]
mod store;
