//! The vhost-user relay (`fs::relay`) fed a hostile frontend: the input is
//! the byte stream QEMU would send (headers, payload sizes, memory tables,
//! ring numbers and addresses, kick and call messages, all the input's;
//! no descriptors). The relay passes it to a backend that reads it all,
//! until the stream ends or breaks the protocol; then the backend hangs up
//! and the relay tries to take the rings over. Whatever the bytes, nothing
//! panics, and no takeover succeeds without a memory table and eventfds.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use amphi_vmm::devices::virtio::fs::relay::{Ending, Relay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (front, relay_front) = UnixStream::pair().expect("socketpair");
    let (mut back, relay_back) = UnixStream::pair().expect("socketpair");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let mut front = front;
        let _ = front.write_all(&input);
        // Dropped: the frontend hangs up after its bytes.
    });
    let drainer = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = back.read_to_end(&mut sink);
        drop(back);
    });
    let mut relay = Relay::new(relay_front, relay_back);
    let ending = relay.relay();
    assert!(
        matches!(ending, Ending::FrontendClosed | Ending::FrontendFailed(_)),
        "the backend never hung up: {ending:?}"
    );
    writer.join().expect("writer");
    // The relay's end of the backend pair closes with the takeover.
    let taken = relay.take_over();
    assert!(taken.is_err(), "rings taken over without descriptors");
    drainer.join().expect("drainer");
});
