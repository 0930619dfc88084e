//! The guest's console (serial) and the backend's own messages, kept in
//! memory with a bound: the backend writes them to pipes, a thread per
//! pipe keeps the last [`CONSOLE_KEEP`] bytes in a ring and counts the
//! rest. Nothing of it goes to disk, and a guest that prints without end
//! costs a fixed amount of memory.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How much of the guest console is kept.
pub const CONSOLE_KEEP: usize = 64 * 1024;
/// How much of the backend's stderr is kept.
pub const BACKEND_KEEP: usize = 16 * 1024;

/// The last `cap` bytes of a stream, and how many came in all.
#[derive(Debug)]
pub struct Ring {
    buf: Vec<u8>,
    cap: usize,
    /// Where the next byte goes once the ring is full.
    head: usize,
    total: u64,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            cap: cap.max(1),
            head: 0,
            total: 0,
        }
    }

    pub fn push(&mut self, mut b: &[u8]) {
        self.total += b.len() as u64;
        if b.len() >= self.cap {
            b = &b[b.len() - self.cap..];
            self.buf.clear();
            self.buf.extend_from_slice(b);
            self.head = 0;
            return;
        }
        let room = self.cap - self.buf.len();
        if room > 0 {
            let n = room.min(b.len());
            self.buf.extend_from_slice(&b[..n]);
            b = &b[n..];
        }
        for &x in b {
            self.buf[self.head] = x;
            self.head = (self.head + 1) % self.cap;
        }
    }

    /// The kept bytes, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buf.len());
        v.extend_from_slice(&self.buf[self.head..]);
        v.extend_from_slice(&self.buf[..self.head]);
        v
    }

    /// Bytes received in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes dropped from the front.
    pub fn dropped(&self) -> u64 {
        self.total - self.buf.len() as u64
    }
}

struct Shared {
    ring: Mutex<(Ring, bool)>,
    done: Condvar,
}

/// A stream being captured.
#[derive(Clone)]
pub struct Capture {
    shared: Arc<Shared>,
}

impl Capture {
    /// Reads `from` (a pipe's read end) in a thread until its end.
    pub fn start(from: OwnedFd, cap: usize) -> Capture {
        let shared = Arc::new(Shared {
            ring: Mutex::new((Ring::new(cap), false)),
            done: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(from);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => s
                        .ring
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                        .push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            s.ring.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            s.done.notify_all();
        });
        Capture { shared }
    }

    /// Waits up to `t` for the writer to close (the backend ended), so the
    /// last lines are in.
    pub fn settle(&self, t: Duration) {
        let deadline = Instant::now() + t;
        let mut g = self.shared.ring.lock().unwrap_or_else(|p| p.into_inner());
        while !g.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .shared
                .done
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The last `lines` non-empty lines, as text safe for a terminal, and
    /// how many bytes were dropped before the kept part.
    pub fn tail(&self, lines: usize) -> (String, u64) {
        let g = self.shared.ring.lock().unwrap_or_else(|p| p.into_inner());
        (tail_text(&g.0.contents(), lines), g.0.dropped())
    }
}

/// The last `lines` non-empty lines of `bytes`, sanitised.
pub fn tail_text(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    super::protocol::sanitize(&all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_bytes_and_counts_the_rest() {
        let mut r = Ring::new(8);
        r.push(b"abc");
        assert_eq!(r.contents(), b"abc");
        r.push(b"defgh");
        assert_eq!(r.contents(), b"abcdefgh");
        r.push(b"ij");
        assert_eq!(r.contents(), b"cdefghij");
        assert_eq!((r.total(), r.dropped()), (10, 2));
        r.push(b"0123456789xyz");
        assert_eq!(r.contents(), b"23456789xyz"[3..].to_vec());
        assert_eq!(r.dropped(), 23 - 8);
        for _ in 0..1000 {
            r.push(b"12345");
        }
        assert_eq!(r.contents(), b"34512345");
    }

    #[test]
    fn a_capture_of_endless_output_stays_bounded() {
        let (rd, wr) = rustix::pipe::pipe().unwrap();
        let cap = Capture::start(rd, 1024);
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(wr);
            let line = b"console line that repeats\n";
            for _ in 0..100_000 {
                std::io::Write::write_all(&mut f, line).unwrap();
            }
            std::io::Write::write_all(&mut f, b"\x1b[31mthe last line\n").unwrap();
        });
        writer.join().unwrap();
        cap.settle(Duration::from_secs(30));
        let (tail, dropped) = cap.tail(3);
        assert!(dropped > 2_000_000, "{dropped}");
        assert!(tail.ends_with("?[31mthe last line"), "{tail}");
        assert_eq!(tail.lines().count(), 3);
        assert!(cap.shared.ring.lock().unwrap().0.contents().len() <= 1024);
    }
}
