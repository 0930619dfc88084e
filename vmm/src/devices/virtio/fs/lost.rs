//! The device with its backend gone: the VMM serves the queues itself and
//! answers every FUSE request with `-EIO`.
//!
//! The guest cannot abort a virtio-fs connection (its driver has no
//! fusectl entry and ignores `umount -f`), so a request nobody answers
//! waits forever, and the workload with it. Answering `EIO` instead makes
//! its file operations fail, and the host side, which watches its
//! virtiofsd, ends the run with the reason.
//!
//! Each request chain is walked with the same checks as every device's
//! ([`super::super::chain::read_chain_with`]), following indirect
//! descriptor tables when the driver accepted them (the queue says so:
//! [`VirtQueue::set_indirect`]; Linux puts every FUSE request in one). Its readable part starts with a
//! `struct fuse_in_header`; the answer is a `struct fuse_out_header` at the
//! start of the writable part: length 16, error `-EIO`, the request's
//! `unique`. A request without a writable part (`FUSE_FORGET`,
//! `FUSE_BATCH_FORGET`, everything on the high-priority queue) expects no
//! answer and is returned with length 0; so is a malformed one, after a
//! (rate-limited) warning.

use super::super::chain::{read_stream, write_stream, Chain, ChainError};
use super::super::queue::VirtQueue;
use crate::devices::log_limit::{guest_warn, LogLimiter};
use crate::memory::GuestMemoryMmap;

/// `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid,
/// total_extlen, padding.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`: len, error, unique.
pub const OUT_HEADER_LEN: u32 = 16;
/// `EIO`, negated as FUSE carries errors.
pub const FUSE_EIO: i32 = -libc::EIO;

/// Bound on a chain's total length: only the headers are read or written,
/// so any size the queue can describe is accepted (the walk still checks
/// every buffer against guest RAM and the chain against loops).
const CHAIN_LIMIT: u64 = u64::MAX;

/// The answer to one request chain: the length written (for the used
/// ring) and, for a malformed chain, what was wrong with it.
pub fn answer_eio(mem: &GuestMemoryMmap, chain: &Chain) -> (u32, Option<String>) {
    let writable = chain.writable_len();
    if writable == 0 {
        // No answer expected (a FORGET).
        return (0, None);
    }
    let mut header = [0u8; IN_HEADER_LEN];
    if read_stream(mem, &chain.readable, 0, &mut header).is_err() {
        return (
            0,
            Some(format!(
                "request of {} readable bytes, less than a fuse_in_header ({IN_HEADER_LEN})",
                chain.readable_len()
            )),
        );
    }
    let opcode = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if writable < u64::from(OUT_HEADER_LEN) {
        return (
            0,
            Some(format!(
                "request (opcode {opcode}) with {writable} writable bytes, less than a \
                 fuse_out_header ({OUT_HEADER_LEN})"
            )),
        );
    }
    let mut out = [0u8; OUT_HEADER_LEN as usize];
    out[..4].copy_from_slice(&OUT_HEADER_LEN.to_le_bytes());
    out[4..8].copy_from_slice(&FUSE_EIO.to_le_bytes());
    out[8..].copy_from_slice(&header[8..16]);
    match write_stream(mem, &chain.writable, 0, &out) {
        Ok(()) => (OUT_HEADER_LEN, None),
        // The segments were checked inside guest RAM; this is a region
        // boundary the write could not cross.
        Err(e) => (0, Some(format!("request (opcode {opcode}): {e}"))),
    }
}

/// Answers every available chain of `queue` with `-EIO` (see the module
/// documentation). Returns whether anything went on the used ring.
pub fn serve_queue(
    name: &str,
    log: &mut LogLimiter,
    mem: &GuestMemoryMmap,
    queue: &mut VirtQueue,
    index: usize,
) -> bool {
    let mut returned = false;
    loop {
        loop {
            let (head, len) = match queue.pop(mem, CHAIN_LIMIT) {
                Ok(None) => break,
                Ok(Some(Ok(chain))) => {
                    let (len, problem) = answer_eio(mem, &chain);
                    if let Some(p) = problem {
                        guest_warn!(log, "{name}: queue {index}: chain {}: {p}", chain.head);
                    }
                    (chain.head, len)
                }
                Ok(Some(Err(bad))) => {
                    guest_warn!(
                        log,
                        "{name}: queue {index}: bad descriptor chain: {}",
                        bad.error
                    );
                    if matches!(bad.error, ChainError::HeadOutOfRange { .. }) {
                        // Not a chain of this queue: nothing to return.
                        continue;
                    }
                    // Returned unanswered: nothing of it is trusted.
                    (bad.partial.head, 0)
                }
                Err(e) => {
                    guest_warn!(log, "{name}: queue {index} unusable: {e}");
                    return returned;
                }
            };
            match queue.add_used(mem, head, len) {
                Ok(()) => returned = true,
                Err(e) => guest_warn!(log, "{name}: queue {index}: chain {head} not returned: {e}"),
            }
        }
        if !queue.enable_notification(mem) {
            return returned;
        }
    }
}
