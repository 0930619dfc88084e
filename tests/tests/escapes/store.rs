//! Escape class tests: store (see escapes.rs).
