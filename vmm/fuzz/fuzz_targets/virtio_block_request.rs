//! virtio-blk request parsing and execution (`block::request::handle`) on
//! a chain of guest buffers (inside guest RAM, readable before writable, as
//! `read_chain` guarantees) whose contents the guest wrote: the header, the
//! data and the buffer layout are all the input's. Whatever they are, the
//! request never touches the disk outside its capacity, never writes a
//! read-only disk, answers with a valid status in the last writable byte,
//! and reports a used length within the writable buffers.
#![no_main]

use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use amphi_vmm::devices::virtio::block::request::{handle, Disk, ID_BYTES, SECTOR_SIZE};
use amphi_vmm::devices::virtio::chain::{read_stream, Chain, Segment};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryBackend};

#[path = "common.rs"]
mod common;
use common::{memory, Input, REGION, SECOND};

/// Sectors of the fuzzed disk.
const SECTORS: u64 = 64;

/// A 32 KiB disk in memory (a memfd), and a read-only twin of it.
fn disks() -> &'static (Disk, Disk) {
    static DISKS: OnceLock<(Disk, Disk)> = OnceLock::new();
    DISKS.get_or_init(|| {
        let make = |read_only| {
            // SAFETY: memfd_create with a valid name; the descriptor is new
            // and handed to the File.
            let file = unsafe {
                let fd = libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC);
                assert!(fd >= 0, "memfd_create");
                std::fs::File::from_raw_fd(fd)
            };
            file.set_len(SECTORS * SECTOR_SIZE).expect("disk size");
            Disk {
                file,
                capacity: SECTORS,
                read_only,
                id: [b'f'; ID_BYTES],
            }
        };
        (make(false), make(true))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let read_only = input.byte() & 1 == 1;
    // Up to 8 buffers: an address in either region (or across an edge, then
    // dropped as read_chain would refuse it), a length, a direction.
    let count = input.byte() % 9;
    let mut raw = Vec::new();
    for _ in 0..count {
        let at = u64::from(input.u16());
        let addr = if at & 0x8000 == 0 {
            at
        } else {
            SECOND + (at & 0x7fff)
        };
        let len = u32::from(input.u16() % 0x2000);
        let writable = input.byte() & 1 == 1;
        raw.push((addr, len, writable));
    }
    let mem = memory(input.0);
    let mut chain = Chain::default();
    for (addr, len, writable) in raw {
        let seg = Segment {
            addr: GuestAddress(addr),
            len,
        };
        if len == 0 || !mem.check_range(seg.addr, len as usize) {
            continue;
        }
        if writable {
            chain.writable.push(seg);
        } else if chain.writable.is_empty() {
            chain.readable.push(seg);
        }
    }
    let (rw, ro) = disks();
    let disk = if read_only { ro } else { rw };
    let (used, error) = handle(disk, &mem, &chain);
    let writable = chain.writable_len();
    assert!(
        u64::from(used) <= writable,
        "used {used} of {writable} writable bytes"
    );
    if writable == 0 {
        assert_eq!(used, 0);
        return;
    }
    let mut status = [0u8];
    read_stream(&mem, &chain.writable, writable - 1, &mut status).expect("status byte");
    assert!(
        status[0] <= 2,
        "status {} is not OK, IOERR or UNSUPP",
        status[0]
    );
    assert_eq!(
        status[0] == 0,
        error.is_none(),
        "status {} with {error:?}",
        status[0]
    );
    if let Some(e) = error {
        let _ = e.to_string();
    }
    // The disks keep their size: nothing was written past the capacity.
    let len = disk.file.metadata().expect("disk metadata").len();
    assert_eq!(len, SECTORS * SECTOR_SIZE, "the disk grew");
    if read_only {
        use std::os::unix::fs::FileExt;
        let mut all = vec![0u8; (SECTORS * SECTOR_SIZE) as usize];
        disk.file
            .read_exact_at(&mut all, 0)
            .expect("reading the disk");
        assert!(
            all.iter().all(|&b| b == 0),
            "the read-only disk was written"
        );
    }
    let _ = REGION;
});
