//! virtio-console with one port (no `MULTIPORT`): queue 0 carries host bytes
//! to the guest (`hvc0` input), queue 1 guest bytes to the host. This is
//! amphi's guest channel (ARCHITECTURE.md, "Guest channel").
//!
//! The host end is a pair of descriptors or a connected unix socket; see
//! [`host`] for buffering and back-pressure. Host bytes go only into
//! receive buffers the guest posted; transmit buffers are taken from the
//! guest only while the host end has room.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use vmm_sys_util::epoll::EventSet;

use super::chain::{read_stream, write_stream, ChainError};
use super::queue::Popped;
use super::{read_config_bytes, DeviceContext, HostSource, VirtioDevice};
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::error::{Result, VmmError};

pub mod host;

use host::{check_pollable, HostEnd};

/// Receive queue (host to guest).
pub const RX: usize = 0;
/// Transmit queue (guest to host).
pub const TX: usize = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes in one transmit or receive chain (Linux sends at most 32 KiB
/// per buffer); larger chains are refused.
pub const CHAIN_LIMIT: u64 = 1 << 20;
/// Host source id of the input descriptor.
pub const SOURCE_INPUT: u32 = 0;
/// Host source id of the output descriptor.
pub const SOURCE_OUTPUT: u32 = 1;

/// Where a console's host end is.
#[derive(Clone, Debug)]
pub enum ConsoleBackend {
    /// Bytes for the guest are read from `input`; the guest's bytes are
    /// written to `output`. Both must be pollable (pipe, socket, tty; not a
    /// regular file) and are made non-blocking. They are duplicated: the
    /// caller keeps its own.
    Fds {
        /// Read side.
        input: Arc<OwnedFd>,
        /// Write side.
        output: Arc<OwnedFd>,
    },
    /// A listening unix stream socket to connect to; the connection carries
    /// both directions.
    Socket(PathBuf),
}

/// The virtio-console device.
pub struct Console {
    host: HostEnd,
    label: String,
    log: LogLimiter,
}

impl Console {
    /// Opens the host end.
    pub fn open(backend: &ConsoleBackend) -> Result<Self> {
        let io_err =
            |what: &str, e: std::io::Error| VmmError::Config(format!("console {what}: {e}"));
        let (input, output, label) = match backend {
            ConsoleBackend::Fds { input, output } => {
                let input = input
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| io_err("input", e))?;
                let output = output
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| io_err("output", e))?;
                (input, output, "fds".to_string())
            }
            ConsoleBackend::Socket(path) => {
                let stream = UnixStream::connect(path).map_err(|source| VmmError::File {
                    what: "console socket",
                    path: path.clone(),
                    source,
                })?;
                let input = stream.try_clone().map_err(|e| io_err("socket", e))?;
                (
                    OwnedFd::from(input),
                    OwnedFd::from(stream),
                    path.display().to_string(),
                )
            }
        };
        use std::os::fd::AsRawFd;
        for (what, fd) in [("input", &input), ("output", &output)] {
            check_pollable(fd.as_raw_fd()).map_err(|e| {
                VmmError::Config(format!(
                    "console {what} cannot be polled ({e}); use a pipe, socket or tty, not a \
                     regular file or /dev/null"
                ))
            })?;
        }
        let host = HostEnd::new(input, output).map_err(|e| io_err("setup", e))?;
        Ok(Console::with_host(host, label))
    }

    /// A console on an already prepared host end.
    pub fn with_host(host: HostEnd, label: String) -> Self {
        Console {
            host,
            label,
            log: LogLimiter::new(),
        }
    }

    /// Guest-caused problems seen so far.
    pub fn guest_errors(&self) -> u64 {
        self.log.total()
    }

    /// The host end (buffers and descriptors).
    pub fn host(&self) -> &HostEnd {
        &self.host
    }

    /// Logs a bad chain; returns the head to give back, if it is one.
    fn bad_chain(&mut self, popped_head: u16, error: &ChainError, size: u16) -> Option<u16> {
        guest_warn!(self.log, "virtio-console: bad descriptor chain: {error}");
        (popped_head < size).then_some(popped_head)
    }

    /// Moves waiting host bytes into receive buffers the guest posted.
    fn deliver(&mut self, ctx: &mut DeviceContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX) else {
            return;
        };
        let mut returned = false;
        'outer: loop {
            while !self.host.to_guest().is_empty() {
                let popped: Popped = match queue.pop(mem, CHAIN_LIMIT) {
                    Ok(None) => break,
                    Ok(Some(p)) => p,
                    Err(e) => {
                        guest_warn!(self.log, "virtio-console: receive queue unusable: {e}");
                        break 'outer;
                    }
                };
                let (head, written) = match popped {
                    Ok(chain) => {
                        let pending = self.host.to_guest();
                        let n = usize::try_from(chain.writable_len())
                            .unwrap_or(usize::MAX)
                            .min(pending.len());
                        let bytes = &pending.make_contiguous()[..n];
                        if write_stream(mem, &chain.writable, 0, bytes).is_ok() {
                            pending.drain(..n);
                        } else {
                            guest_warn!(self.log, "virtio-console: receive buffer not writable");
                        }
                        if n == 0 {
                            guest_warn!(self.log, "virtio-console: receive buffer with no room");
                        }
                        (chain.head, n as u32)
                    }
                    Err(bad) => match self.bad_chain(bad.partial.head, &bad.error, queue.size()) {
                        Some(head) => (head, 0),
                        None => continue,
                    },
                };
                match queue.add_used(mem, head, written) {
                    Ok(()) => returned = true,
                    Err(e) => guest_warn!(self.log, "virtio-console: {e}"),
                }
            }
            // Bytes left and no buffers: ask for a notification when the
            // guest posts some (and look again if it already has).
            if self.host.to_guest().is_empty() || !queue.enable_notification(mem) {
                break;
            }
        }
        if returned && queue.needs_notification(mem) {
            ctx.interrupt.signal_used();
        }
    }

    /// Takes guest transmit buffers while the host end has room.
    fn transmit(&mut self, ctx: &mut DeviceContext<'_>) {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX) else {
            return;
        };
        let mut returned = false;
        'outer: loop {
            loop {
                self.host.flush_output();
                let room = self.host.to_host_room();
                if room == 0 {
                    // Back-pressure: the output's readiness brings us back.
                    break 'outer;
                }
                let popped: Popped = match queue.pop(mem, CHAIN_LIMIT) {
                    Ok(None) => break,
                    Ok(Some(p)) => p,
                    Err(e) => {
                        guest_warn!(self.log, "virtio-console: transmit queue unusable: {e}");
                        break 'outer;
                    }
                };
                let head = match popped {
                    Ok(chain) => {
                        let len = chain.readable_len();
                        // A chain larger than the room waits, unless nothing
                        // else is waiting (then it goes, so it cannot stall).
                        if len > room as u64 && self.host.to_host_pending() > 0 {
                            queue.undo_pop();
                            break 'outer;
                        }
                        // `len` <= CHAIN_LIMIT.
                        let mut bytes = vec![0u8; len as usize];
                        if read_stream(mem, &chain.readable, 0, &mut bytes).is_ok() {
                            self.host.push_to_host(&bytes);
                        } else {
                            guest_warn!(self.log, "virtio-console: transmit buffer unreadable");
                        }
                        chain.head
                    }
                    Err(bad) => match self.bad_chain(bad.partial.head, &bad.error, queue.size()) {
                        Some(head) => head,
                        None => continue,
                    },
                };
                match queue.add_used(mem, head, 0) {
                    Ok(()) => returned = true,
                    Err(e) => guest_warn!(self.log, "virtio-console: {e}"),
                }
            }
            if !queue.enable_notification(mem) {
                break;
            }
        }
        self.host.flush_output();
        if returned && queue.needs_notification(mem) {
            ctx.interrupt.signal_used();
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn name(&self) -> String {
        format!("virtio-console({})", self.label)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr;
        // meaningful only with features this device does not offer.
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn process_queue(&mut self, ctx: &mut DeviceContext<'_>, index: usize) {
        match index {
            RX => self.deliver(ctx),
            TX => self.transmit(ctx),
            _ => {}
        }
    }

    fn host_sources(&self) -> Vec<HostSource> {
        let mut sources = Vec::with_capacity(2);
        if let Some(fd) = self.host.input_fd() {
            sources.push(HostSource {
                id: SOURCE_INPUT,
                fd,
                events: if self.host.wants_input() {
                    EventSet::IN
                } else {
                    EventSet::empty()
                },
            });
        }
        if let Some(fd) = self.host.output_fd() {
            sources.push(HostSource {
                id: SOURCE_OUTPUT,
                fd,
                events: if self.host.wants_output() {
                    EventSet::OUT
                } else {
                    EventSet::empty()
                },
            });
        }
        sources
    }

    fn host_event(&mut self, ctx: Option<&mut DeviceContext<'_>>, id: u32, _events: EventSet) {
        match id {
            SOURCE_INPUT => {
                self.host.read_input();
                if let Some(ctx) = ctx {
                    self.deliver(ctx);
                }
            }
            SOURCE_OUTPUT => {
                self.host.flush_output();
                if let Some(ctx) = ctx {
                    self.transmit(ctx);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
