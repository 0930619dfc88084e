//! One virtio-blk request: parse it from a checked chain, check it against
//! the disk, do it, and put the status byte in place.
//!
//! The chain's readable stream is the 16-byte header (type, reserved,
//! sector) followed, for OUT, by the data; the writable stream is the data
//! for IN (or the ID for GET_ID) followed by one status byte. Whatever is
//! wrong ends as `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for unknown types), never
//! as a panic.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestMemoryBackend;

use crate::devices::virtio::chain::{read_stream, sub_segments, write_stream, Chain, Segment};
use crate::memory::GuestMemoryMmap;

/// Bytes per sector, the unit of `sector` in requests and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
pub const HEADER_SIZE: u64 = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The host file behind a block device, and what the guest may do with it.
#[derive(Debug)]
pub struct Disk {
    /// The file.
    pub file: File,
    /// Size in sectors.
    pub capacity: u64,
    /// Writes refused.
    pub read_only: bool,
    /// The GET_ID answer.
    pub id: [u8; ID_BYTES],
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The readable part is shorter than the header.
    #[error("request header shorter than {HEADER_SIZE} bytes")]
    ShortHeader,
    /// Data length not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    PartialSector(u64),
    /// The sectors lie (partly) beyond the disk.
    #[error("sectors {sector}+{len} bytes beyond the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
        /// The disk's capacity.
        capacity: u64,
    },
    /// Data on the wrong side: readable data for IN, writable for OUT.
    #[error("{0}")]
    Layout(&'static str),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A request type this device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Guest memory could not be accessed through the chain.
    #[error("guest memory access failed")]
    Memory,
    /// The host file failed.
    #[error("host I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status byte for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Answers the chain: does the request, writes its status byte, and
/// returns the number of bytes written into the chain (for the used ring)
/// plus the error, if any. A chain with no writable byte cannot be answered
/// and gets 0.
pub fn handle(disk: &Disk, mem: &GuestMemoryMmap, chain: &Chain) -> (u32, Option<RequestError>) {
    let writable = chain.writable_len();
    if writable == 0 {
        return (0, Some(RequestError::Memory));
    }
    let (status, written, error) = match execute(disk, mem, chain) {
        Ok(written) => (VIRTIO_BLK_S_OK as u8, written, None),
        Err(e) => (e.status(), 0, Some(e)),
    };
    if write_stream(mem, &chain.writable, writable - 1, &[status]).is_err() {
        return (0, Some(RequestError::Memory));
    }
    // `written` < `writable` <= u32::MAX (chains are bounded well below).
    let used = u32::try_from(written + 1).unwrap_or(u32::MAX);
    (used, error)
}

/// Answers a chain that failed its checks: `VIRTIO_BLK_S_IOERR` into the
/// last writable byte walked, if there is one. Returns the used length.
pub fn fail(mem: &GuestMemoryMmap, partial: &Chain) -> u32 {
    let writable = partial.writable_len();
    if writable == 0 {
        return 0;
    }
    let status = [VIRTIO_BLK_S_IOERR as u8];
    match write_stream(mem, &partial.writable, writable - 1, &status) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Does the request; returns the data bytes written into the chain
/// (status byte not counted).
fn execute(disk: &Disk, mem: &GuestMemoryMmap, chain: &Chain) -> Result<u64, RequestError> {
    let mut header = [0u8; HEADER_SIZE as usize];
    read_stream(mem, &chain.readable, 0, &mut header).map_err(|_| RequestError::ShortHeader)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    // Data around the header and the status byte (both present here).
    let out_len = chain.readable_len() - HEADER_SIZE;
    let in_len = chain.writable_len() - 1;

    match kind {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return Err(RequestError::Layout("IN request with device-readable data"));
            }
            let mut at = check_range(disk, sector, in_len)?;
            for s in sub_segments(&chain.writable, 0, in_len) {
                transfer(&disk.file, mem, s, at, Dir::Read)?;
                at += u64::from(s.len);
            }
            Ok(in_len)
        }
        VIRTIO_BLK_T_OUT => {
            if in_len != 0 {
                return Err(RequestError::Layout(
                    "OUT request with device-writable data",
                ));
            }
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let mut at = check_range(disk, sector, out_len)?;
            for s in sub_segments(&chain.readable, HEADER_SIZE, out_len) {
                transfer(&disk.file, mem, s, at, Dir::Write)?;
                at += u64::from(s.len);
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only {
                disk.file.sync_data()?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = usize::try_from(in_len).map_or(ID_BYTES, |n| n.min(ID_BYTES));
            write_stream(mem, &chain.writable, 0, &disk.id[..n])
                .map_err(|_| RequestError::Memory)?;
            Ok(n as u64)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Checks that `len` bytes from `sector` lie on the disk in whole sectors;
/// returns the byte offset.
fn check_range(disk: &Disk, sector: u64, len: u64) -> Result<u64, RequestError> {
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::PartialSector(len));
    }
    let out_of_range = || RequestError::OutOfRange {
        sector,
        len,
        capacity: disk.capacity,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
    let end = offset.checked_add(len).ok_or_else(out_of_range)?;
    if end > disk.capacity * SECTOR_SIZE {
        return Err(out_of_range());
    }
    Ok(offset)
}

#[derive(Clone, Copy)]
enum Dir {
    /// File to guest memory.
    Read,
    /// Guest memory to file.
    Write,
}

/// Moves one guest buffer to or from the file at `offset`, directly
/// (pread/pwrite on the guest's pages, no bounce buffer).
fn transfer(
    file: &File,
    mem: &GuestMemoryMmap,
    s: Segment,
    offset: u64,
    dir: Dir,
) -> Result<(), RequestError> {
    let mut offset = offset;
    for slice in GuestMemoryBackend::get_slices(mem, s.addr, s.len as usize) {
        let slice = slice.map_err(|_| RequestError::Memory)?;
        let guard = slice.ptr_guard_mut();
        let base = guard.as_ptr();
        let mut done = 0usize;
        while done < slice.len() {
            let file_offset =
                libc::off_t::try_from(offset + done as u64).map_err(|_| RequestError::Memory)?;
            // SAFETY: `base .. base + slice.len()` is mapped guest memory
            // (the slice came from `mem`, which outlives this call), and
            // `done < slice.len()`, so the range passed is inside it.
            let n = unsafe {
                let ptr = base.add(done).cast::<libc::c_void>();
                let count = slice.len() - done;
                match dir {
                    Dir::Read => libc::pread(file.as_raw_fd(), ptr, count, file_offset),
                    Dir::Write => libc::pwrite(file.as_raw_fd(), ptr, count, file_offset),
                }
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => {
                    return Err(RequestError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended early (did it shrink?)",
                    )))
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(RequestError::Io(e));
                    }
                }
            }
        }
        offset += slice.len() as u64;
    }
    Ok(())
}
