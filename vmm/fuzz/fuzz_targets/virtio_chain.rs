//! The virtio descriptor-chain walker (`chain::read_chain_with`, with and
//! without indirect tables) on a guest-written descriptor table, and the
//! byte streams over what it returns: whatever the guest wrote, the walk ends, every buffer it
//! returns lies in guest RAM, readable ones come first, the total stays
//! within the limit, and reading or writing the streams never leaves them.
#![no_main]

use amphi_vmm::devices::virtio::chain::{
    read_chain_with, read_stream, write_stream, DESCRIPTOR_SIZE,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryBackend};

#[path = "common.rs"]
mod common;
use common::{memory, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    // Queue sizes 1 to 256 (powers of two, as queues are checked to be),
    // and some that are not, which read_chain must survive as well.
    let size_byte = input.byte();
    let size = if size_byte & 0x80 == 0 {
        1u16 << (size_byte % 9)
    } else {
        u16::from(size_byte & 0x7f) + 1
    };
    // Indirect tables accepted or not (a bit of the same byte).
    let indirect = size_byte & 0x40 != 0;
    let head = input.u16() % (2 * size);
    // The table anywhere in the first region, or near the hole's edge.
    let table = u64::from(input.u16()) & 0x7ff0 | u64::from(input.byte() & 1) * 0x7f00;
    let limit = u64::from(input.u32());
    let mem = memory(input.0);

    let check = |segments: &[amphi_vmm::devices::virtio::chain::Segment]| {
        for s in segments {
            assert!(s.len > 0, "an empty buffer was kept");
            assert!(
                mem.check_range(s.addr, s.len as usize),
                "a buffer outside guest RAM: {:#x}+{}",
                s.addr.0,
                s.len
            );
        }
    };
    match read_chain_with(&mem, GuestAddress(table), size, head, limit, indirect) {
        Ok(chain) => {
            check(&chain.readable);
            check(&chain.writable);
            let count = chain.readable.len() + chain.writable.len();
            // An indirect table holds at most 32768 more.
            let most = usize::from(size) + if indirect { 32768 } else { 0 };
            assert!(count <= most, "{count} buffers in a queue of {size}");
            let total = chain.readable_len() + chain.writable_len();
            assert!(total <= limit, "{total} bytes over the limit {limit}");
            assert!(head < size);
            // The streams: all of the readable one reads, the last byte of
            // the writable one takes a status, and nothing past either end.
            let mut buf = vec![0u8; chain.readable_len().min(1 << 16) as usize];
            read_stream(&mem, &chain.readable, 0, &mut buf).expect("the readable stream");
            assert!(read_stream(&mem, &chain.readable, chain.readable_len(), &mut [0u8]).is_err());
            if chain.writable_len() > 0 {
                write_stream(&mem, &chain.writable, chain.writable_len() - 1, &[0xa5])
                    .expect("the writable stream's last byte");
            }
            assert!(write_stream(&mem, &chain.writable, chain.writable_len(), &[0]).is_err());
        }
        Err(bad) => {
            check(&bad.partial.readable);
            check(&bad.partial.writable);
            let total = bad.partial.readable_len() + bad.partial.writable_len();
            assert!(
                total <= limit,
                "a partial chain of {total} bytes over {limit}"
            );
            let _ = bad.error.to_string();
        }
    }
    let _ = DESCRIPTOR_SIZE;
});
