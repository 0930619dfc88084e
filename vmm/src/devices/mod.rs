//! Emulated devices and the buses that route guest I/O to them.

pub mod bus;
pub mod i8042;
pub mod log_limit;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceAction, UnhandledStats};
