//! Escape class tests: policy (see escapes.rs).
