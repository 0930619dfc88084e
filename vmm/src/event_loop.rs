//! The device event loop: one thread, one epoll, serving
//!
//! - queue notifications: each virtio queue's ioeventfd, which KVM signals
//!   when the guest writes `QueueNotify` (no exit to user space);
//! - host-side descriptors of devices (the console's input and output),
//!   watched only for what the device waits for now (level-triggered; a
//!   descriptor with nothing to wait for is taken out of the set, so a
//!   hung-up peer cannot make the loop spin);
//! - the stop handle's wake eventfd: the loop ends when the VM run ends.
//!
//! The queues of a device served by another process (vhost-user) are not
//! watched: their eventfds are that process's kick eventfds. When that
//! changes (a virtio-fs device whose virtiofsd went away serves its queues
//! itself from then on), the queues are watched from the next event on:
//! notifications pending in the eventfds then come up at once
//! (level-triggered). A device that fails for good (its vhost-user backend
//! refused the setup) ends the run: the loop hands `run()` an
//! [`ExitReason::DeviceFailed`] the way a vCPU hands it how the guest
//! ended.
//!
//! vCPU threads keep handling register accesses (PIO/MMIO exits); the
//! transport's mutex serialises them with the work done here.
//!
//! Epoll tokens: `u64::MAX` is the wake eventfd; otherwise the device index
//! is in the high 32 bits, and the low 32 bits are the queue index, or
//! `HOST_SOURCE_BIT` plus the device's source id.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::bus::lock;
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::devices::virtio::MmioTransport;
use crate::error::{Result, VmmError};
use crate::exit::ExitReason;
use crate::stop::StopState;
use crate::vcpu::VcpuOutcome;

/// Where the event loop sends a device failure during a run: the channel
/// `run()` takes the vCPUs' outcomes from.
pub(crate) type OutcomeSender = Sender<Result<VcpuOutcome>>;

const TOKEN_WAKE: u64 = u64::MAX;
const HOST_SOURCE_BIT: u64 = 1 << 31;
/// Events taken from epoll per wait.
const EVENT_BATCH: usize = 32;

/// What one epoll token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Wake,
    Queue { device: usize, queue: usize },
    Host { device: usize, id: u32 },
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Wake => TOKEN_WAKE,
            Token::Queue { device, queue } => ((device as u64) << 32) | queue as u64,
            Token::Host { device, id } => ((device as u64) << 32) | HOST_SOURCE_BIT | u64::from(id),
        }
    }

    fn decode(raw: u64) -> Token {
        if raw == TOKEN_WAKE {
            return Token::Wake;
        }
        let device = (raw >> 32) as usize;
        let low = raw & 0xffff_ffff;
        if low & HOST_SOURCE_BIT != 0 {
            Token::Host {
                device,
                id: (low & !HOST_SOURCE_BIT) as u32,
            }
        } else {
            Token::Queue {
                device,
                queue: low as usize,
            }
        }
    }
}

/// The event loop of a VM's virtio devices.
pub struct EventLoop {
    epoll: Epoll,
    devices: Vec<Arc<Mutex<MmioTransport>>>,
    /// Host descriptors in the epoll set now, by token.
    registered: HashMap<u64, (RawFd, EventSet)>,
    /// Per device: whether its queue eventfds are in the epoll set.
    queues_watched: Vec<bool>,
    stop: Arc<StopState>,
    /// Device events handled so far.
    dispatched: u64,
    log: LogLimiter,
    /// During a run: where a device failure goes.
    outcomes: Option<OutcomeSender>,
}

fn epoll_err(what: &str) -> impl FnOnce(std::io::Error) -> VmmError + '_ {
    move |e| VmmError::Config(format!("event loop: {what}: {e}"))
}

impl EventLoop {
    /// An event loop for `devices`, ending when `stop` says the run ends.
    pub(crate) fn new(
        devices: Vec<Arc<Mutex<MmioTransport>>>,
        stop: Arc<StopState>,
    ) -> Result<Self> {
        let epoll = Epoll::new().map_err(epoll_err("epoll_create"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_WAKE),
            )
            .map_err(epoll_err("watching the wake eventfd"))?;
        let mut this = EventLoop {
            epoll,
            queues_watched: vec![false; devices.len()],
            devices,
            registered: HashMap::new(),
            stop,
            dispatched: 0,
            log: LogLimiter::new(),
            outcomes: None,
        };
        for device in 0..this.devices.len() {
            this.sync_queue_events(device)
                .map_err(epoll_err("watching a queue eventfd"))?;
            this.sync_host_sources(device);
        }
        Ok(this)
    }

    /// Watches device `device`'s queue eventfds, unless another process
    /// serves its queues now (a vhost-user backend waits on them itself).
    fn sync_queue_events(&mut self, device: usize) -> std::io::Result<()> {
        let transport = lock(&self.devices[device]);
        let want = !transport.queues_served_elsewhere();
        if self.queues_watched[device] == want {
            return Ok(());
        }
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            let token = Token::Queue { device, queue }.encode();
            let (op, event) = if want {
                (ControlOperation::Add, EpollEvent::new(EventSet::IN, token))
            } else {
                (ControlOperation::Delete, EpollEvent::default())
            };
            match self.epoll.ctl(op, evt.as_raw_fd(), event) {
                // Left from an earlier attempt that failed part way.
                Err(e)
                    if e.raw_os_error() == Some(if want { libc::EEXIST } else { libc::ENOENT }) => {
                }
                other => other?,
            }
        }
        self.queues_watched[device] = want;
        Ok(())
    }

    /// Brings the epoll set in line with what device `device` waits for.
    fn sync_host_sources(&mut self, device: usize) {
        let wanted = lock(&self.devices[device]).host_sources();
        let mut keep = Vec::with_capacity(wanted.len());
        for source in wanted {
            let token = Token::Host {
                device,
                id: source.id,
            }
            .encode();
            if source.events.is_empty() {
                continue;
            }
            keep.push(token);
            let event = EpollEvent::new(source.events, token);
            let op = match self.registered.get(&token) {
                Some(&(fd, events)) if fd == source.fd && events == source.events => continue,
                Some(&(fd, _)) if fd == source.fd => ControlOperation::Modify,
                Some(&(old_fd, _)) => {
                    let _ = self
                        .epoll
                        .ctl(ControlOperation::Delete, old_fd, EpollEvent::default());
                    ControlOperation::Add
                }
                None => ControlOperation::Add,
            };
            match self.epoll.ctl(op, source.fd, event) {
                Ok(()) => {
                    self.registered.insert(token, (source.fd, source.events));
                }
                Err(e) => {
                    guest_warn!(
                        self.log,
                        "event loop: cannot watch host descriptor {}: {e}",
                        source.fd
                    );
                    self.registered.remove(&token);
                }
            }
        }
        let stale: Vec<u64> = self
            .registered
            .keys()
            .copied()
            .filter(|&t| matches!(Token::decode(t), Token::Host { device: d, .. } if d == device))
            .filter(|t| !keep.contains(t))
            .collect();
        for token in stale {
            if let Some((fd, _)) = self.registered.remove(&token) {
                // Devices keep their descriptors open while they live, so
                // this is the descriptor that was registered.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    /// Runs until the VM run ends; a device failure goes to `outcomes`.
    pub(crate) fn run(&mut self, outcomes: OutcomeSender) {
        self.set_outcomes(Some(outcomes));
        // A device may have failed while no run was there to end.
        for device in 0..self.devices.len() {
            self.check_failure(device);
        }
        while self.run_once(-1) {}
        self.outcomes = None;
    }

    /// Where device failures go from now on (`None`: logged).
    pub(crate) fn set_outcomes(&mut self, outcomes: Option<OutcomeSender>) {
        self.outcomes = outcomes;
    }

    /// Reports a failure of device `device`, if it has one: it ends the
    /// run, or is logged outside one.
    fn check_failure(&mut self, device: usize) {
        let (name, failure) = {
            let mut t = lock(&self.devices[device]);
            match t.take_device_failure() {
                Some(detail) => (t.name().to_string(), detail),
                None => return,
            }
        };
        let reason = ExitReason::DeviceFailed {
            device: name,
            detail: failure,
        };
        match &self.outcomes {
            // The receiver is gone only once the run is over.
            Some(tx) => {
                let _ = tx.send(Ok(VcpuOutcome::Exit(reason)));
            }
            None => tracing::error!("after the run: {reason}"),
        }
    }

    /// Waits up to `timeout_ms` (-1: forever) and handles what arrived.
    /// Returns `false` once the run is ending.
    pub fn run_once(&mut self, timeout_ms: i32) -> bool {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
            Err(e) => {
                tracing::error!("event loop: epoll_wait failed, devices stop: {e}");
                return false;
            }
        };
        // Device work first: a wake that comes with a last notification
        // (the guest wrote, then powered off) must not lose it.
        let mut woken = false;
        for event in &events[..n] {
            match Token::decode(event.data()) {
                Token::Wake => woken = true,
                token => self.dispatch(token, event.event_set()),
            }
        }
        if woken {
            let _ = self.stop.wake.read();
            if self.stop.ending() {
                return false;
            }
        }
        true
    }

    /// After a run: lets the devices finish what the guest handed them
    /// (queues notified but not yet looked at, guest output the host end
    /// has not taken yet) for at most `timeout`. Returns whether all of it
    /// got out.
    pub fn drain(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for device in 0..self.devices.len() {
            let mut t = lock(&self.devices[device]);
            // Another process's kick eventfds are not ours to read.
            let ours = if t.queues_served_elsewhere() {
                0
            } else {
                t.queue_events().len()
            };
            let notified: Vec<usize> = (0..ours)
                .filter(|&q| t.queue_events()[q].read().is_ok())
                .collect();
            for queue in notified {
                t.notify_queue(queue);
            }
            drop(t);
            self.sync_host_sources(device);
        }
        loop {
            let waiting = self
                .registered
                .values()
                .any(|(_, e)| e.contains(EventSet::OUT));
            if !waiting {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            self.run_once(ms);
        }
    }

    fn dispatch(&mut self, token: Token, events: EventSet) {
        let device = match token {
            Token::Queue { device, .. } | Token::Host { device, .. } => device,
            Token::Wake => return,
        };
        let Some(transport) = self.devices.get(device) else {
            return;
        };
        self.dispatched += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = lock(transport);
            match token {
                Token::Queue { queue, .. } => {
                    if let Some(evt) = t.queue_events().get(queue) {
                        // Drain the count: one look at the queue serves all.
                        let _ = evt.read();
                    }
                    t.notify_queue(queue);
                }
                Token::Host { id, .. } => t.host_event(id, events),
                Token::Wake => {}
            }
        }));
        if outcome.is_err() {
            tracing::error!("event loop: virtio device {device} panicked; carrying on");
        }
        self.check_failure(device);
        if let Err(e) = self.sync_queue_events(device) {
            tracing::error!("event loop: virtio device {device}: cannot watch its queues: {e}");
        }
        self.sync_host_sources(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;

    use crate::devices::virtio::console::host::HostEnd;
    use crate::devices::virtio::console::Console;
    use crate::devices::virtio::testing::test_memory;

    #[test]
    fn tokens_round_trip() {
        for token in [
            Token::Wake,
            Token::Queue {
                device: 3,
                queue: 1,
            },
            Token::Host { device: 0, id: 7 },
            Token::Host { device: 18, id: 0 },
        ] {
            assert_eq!(Token::decode(token.encode()), token);
        }
    }

    fn console_loop() -> (EventLoop, UnixStream, Arc<StopState>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let host = HostEnd::new(
            OwnedFd::from(ours.try_clone().unwrap()),
            OwnedFd::from(ours),
        )
        .unwrap();
        let console = Console::with_host(host, "loop".into());
        let transport = MmioTransport::new(Box::new(console), test_memory()).unwrap();
        let stop = Arc::new(StopState::new().unwrap());
        let el = EventLoop::new(vec![Arc::new(Mutex::new(transport))], stop.clone()).unwrap();
        (el, theirs, stop)
    }

    #[test]
    fn host_input_is_read_until_full_then_unwatched() {
        let (mut el, mut theirs, _stop) = console_loop();
        theirs.set_nonblocking(true).unwrap();
        // The device is not active: host bytes are buffered up to the limit.
        let big = vec![7u8; 100 << 10];
        let mut sent = 0;
        for _ in 0..100 {
            if let Ok(n) = theirs.write(&big[sent..]) {
                sent += n;
            }
            el.run_once(0);
        }
        assert!(sent > 64 << 10, "sent {sent}");
        let input = Token::Host { device: 0, id: 0 }.encode();
        assert!(
            !el.registered.contains_key(&input),
            "input unwatched while the guest-bound buffer is full"
        );
        // Queue notifications are watched; a notification for an inactive
        // device is harmless.
        lock(&el.devices[0]).queue_events()[0].write(1).unwrap();
        assert!(el.run_once(0));
        // The peer hangs up: no busy loop, the loop keeps answering.
        drop(theirs);
        for _ in 0..10 {
            assert!(el.run_once(0));
        }
    }

    #[test]
    fn a_closed_peer_does_not_make_the_loop_spin() {
        let (mut el, mut theirs, _stop) = console_loop();
        theirs.write_all(b"last words").unwrap();
        drop(theirs);
        // Read the bytes, then end of file: the input is taken out of the
        // set (the output, a duplicate of the same socket, stays open).
        for _ in 0..5 {
            el.run_once(0);
        }
        let settled = el.dispatched;
        for _ in 0..100 {
            assert!(el.run_once(0));
        }
        assert_eq!(el.dispatched, settled, "no events after end of file");
        assert!(el.registered.is_empty());
    }

    #[test]
    fn ends_on_stop_but_not_on_a_stale_wake() {
        let (mut el, _theirs, stop) = console_loop();
        stop.wake_event_loop();
        assert!(el.run_once(0), "woken, but nothing is ending");
        stop.vm_exit.store(true, Ordering::SeqCst);
        stop.wake_event_loop();
        let (tx, _rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            el.run(tx);
            el
        });
        let el = handle.join().unwrap();
        assert_eq!(el.devices.len(), 1);
    }
}
