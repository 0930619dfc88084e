//! Escape class tests: container (see escapes.rs).
