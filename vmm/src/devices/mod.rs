//! Emulated devices and the buses that route guest I/O to them.

pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, DeviceAction, UnhandledStats};
