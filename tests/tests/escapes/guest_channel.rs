//! Escape class tests: guest_channel (see escapes.rs).
