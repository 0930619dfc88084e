//! COM1: a 16550A UART (vm-superio) whose interrupt is an `EventFd`
//! registered as an irqfd on GSI 4, and whose output goes to a configurable
//! sink. This is the guest kernel's debug console only; every byte is a VM
//! exit, so workloads talk over virtio-console instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice, DeviceAction};
use crate::error::{Result, VmmError};

/// COM1's base port.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of UART registers.
pub const COM1_LEN: u16 = 8;
/// COM1's ISA IRQ (and GSI).
pub const COM1_IRQ: u32 = 4;

/// Where the guest's serial output goes.
#[derive(Clone, Debug, Default)]
pub enum SerialOut {
    /// The VMM's standard output.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// An in-memory buffer the host can read (tests, boot diagnostics).
    Buffer(SerialBuffer),
    /// Discarded.
    #[default]
    None,
}

/// Bytes kept by a [`SerialBuffer`]; later output is counted, not stored.
pub const SERIAL_BUFFER_LIMIT: usize = 1 << 20;

#[derive(Debug, Default)]
struct BufferState {
    bytes: Vec<u8>,
    dropped: u64,
    first_byte_at: Option<Instant>,
}

/// A shareable in-memory capture of serial output (bounded).
#[derive(Clone, Debug, Default)]
pub struct SerialBuffer(Arc<Mutex<BufferState>>);

impl SerialBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of what the guest wrote so far.
    pub fn contents(&self) -> Vec<u8> {
        lock(&self.0).bytes.clone()
    }

    /// The output as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0).bytes).into_owned()
    }

    /// When the first byte arrived, if any did.
    pub fn first_byte_at(&self) -> Option<Instant> {
        lock(&self.0).first_byte_at
    }

    /// Bytes not stored because the buffer was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.0).dropped
    }

    fn push(&self, data: &[u8]) {
        let mut state = lock(&self.0);
        if state.first_byte_at.is_none() && !data.is_empty() {
            state.first_byte_at = Some(Instant::now());
        }
        let room = SERIAL_BUFFER_LIMIT.saturating_sub(state.bytes.len());
        let kept = room.min(data.len());
        state.bytes.extend_from_slice(&data[..kept]);
        state.dropped += (data.len() - kept) as u64;
    }
}

/// The opened form of a [`SerialOut`].
pub enum Sink {
    /// Standard output.
    Stdout(io::Stdout),
    /// A file.
    File(File),
    /// An in-memory buffer.
    Buffer(SerialBuffer),
    /// Nowhere.
    Null,
}

impl Sink {
    /// Opens `out` (creating or truncating a file).
    pub fn open(out: &SerialOut) -> Result<Sink> {
        Ok(match out {
            SerialOut::Stdout => Sink::Stdout(io::stdout()),
            SerialOut::File(path) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|source| VmmError::File {
                        what: "serial output",
                        path: path.clone(),
                        source,
                    })?,
            ),
            SerialOut::Buffer(buf) => Sink::Buffer(buf.clone()),
            SerialOut::None => Sink::Null,
        })
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(data),
            Sink::File(f) => f.write(data),
            Sink::Buffer(b) => {
                b.push(data);
                Ok(data.len())
            }
            Sink::Null => Ok(data.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// An interrupt line backed by an irqfd: a write to the EventFd makes KVM
/// pulse the GSI it is registered on.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 device on the PIO bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqLine, NoEvents, Sink>,
    errors_logged: u32,
}

/// Errors (sink or interrupt) logged per serial device before going quiet.
const SERIAL_ERROR_LOG_LIMIT: u32 = 8;

impl Serial {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: EventFd, sink: Sink) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqLine(irq), sink),
            errors_logged: 0,
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                self.log_error(&e);
                0
            }
        }
    }

    fn log_error(&mut self, e: &dyn std::fmt::Display) {
        if self.errors_logged < SERIAL_ERROR_LOG_LIMIT {
            self.errors_logged += 1;
            tracing::warn!("serial: {e}");
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A wider access reads consecutive registers, as on real hardware.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match u8::try_from(offset + i as u64) {
                Ok(reg) if u16::from(reg) < COM1_LEN => self.uart.read(reg),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        for (i, byte) in data.iter().enumerate() {
            if let Ok(reg) = u8::try_from(offset + i as u64) {
                if u16::from(reg) < COM1_LEN {
                    if let Err(e) = self.uart.write(reg, *byte) {
                        self.log_error(&e);
                    }
                }
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    fn serial() -> (Serial, EventFd, SerialBuffer) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let buf = SerialBuffer::new();
        let dev = Serial::new(irq.try_clone().unwrap(), Sink::Buffer(buf.clone()));
        (dev, irq, buf)
    }

    fn read(dev: &mut Serial, reg: u64) -> u8 {
        let mut b = [0u8];
        dev.read(reg, &mut b);
        b[0]
    }

    #[test]
    fn transmits_to_the_sink() {
        let (mut dev, _irq, buf) = serial();
        for b in b"hello" {
            dev.write(DATA, &[*b]);
        }
        assert_eq!(buf.contents(), b"hello");
        assert!(buf.first_byte_at().is_some());
        // Transmitter always ready: THRE and TEMT set.
        assert_eq!(read(&mut dev, LSR) & 0x60, 0x60);
    }

    #[test]
    fn thr_empty_interrupt_fires_the_irqfd_when_enabled() {
        let (mut dev, irq, _buf) = serial();
        assert!(irq.read().is_err(), "no interrupt before IER is set");
        dev.write(IER, &[0x02]); // THR empty interrupt
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(read(&mut dev, IIR) & 0x0f, 0x02, "IIR: THR empty");
        dev.write(DATA, b"x");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn input_raises_received_data() {
        let (mut dev, irq, _buf) = serial();
        dev.write(IER, &[0x01]);
        assert_eq!(dev.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(read(&mut dev, LSR) & 0x01, 0x01, "data ready");
        assert_eq!(read(&mut dev, DATA), b'a');
        assert_eq!(read(&mut dev, DATA), b'b');
        assert_eq!(read(&mut dev, LSR) & 0x01, 0);
    }

    #[test]
    fn registers_divisor_latch_and_loopback() {
        let (mut dev, _irq, buf) = serial();
        dev.write(SCR, &[0x5a]);
        assert_eq!(read(&mut dev, SCR), 0x5a);
        dev.write(LCR, &[0x80]); // DLAB
        dev.write(DATA, &[0x01]); // divisor low, not transmitted
        assert_eq!(read(&mut dev, DATA), 0x01);
        dev.write(LCR, &[0x03]);
        dev.write(MCR, &[0x10]); // loopback
        dev.write(DATA, b"z");
        assert_eq!(read(&mut dev, DATA), b'z');
        assert!(buf.contents().is_empty(), "nothing transmitted");
        // Out-of-range offsets read as all-ones and are ignored on write.
        let mut wide = [0u8; 2];
        dev.read(7, &mut wide);
        assert_eq!(wide[1], 0xff);
        dev.write(9, &[1]);
    }

    #[test]
    fn buffer_is_bounded() {
        let buf = SerialBuffer::new();
        buf.push(&vec![b'a'; SERIAL_BUFFER_LIMIT - 1]);
        buf.push(b"bcd");
        assert_eq!(buf.contents().len(), SERIAL_BUFFER_LIMIT);
        assert_eq!(buf.dropped(), 2);
    }
}
