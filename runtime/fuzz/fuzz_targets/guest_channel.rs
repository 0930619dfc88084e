//! The host side of the guest channel: what a hostile guest sends, in
//! pieces of any size, through the host's decoder
//! (`Decoder::from_guest`: per-kind limits from the header, before
//! anything is buffered beyond them; the JSON of Ready, Exit and Error
//! frames) and then the host's protocol state machine (`vm::protocol`).
//! Whatever arrives, nothing panics, the decoder never holds more than one
//! frame's worth, an error ends the stream (as the host stops the VM), and
//! an output frame never carries more than its kind's limit.
#![no_main]

use amphi::proto::channel::{guest_payload_limit, Decoder, Frame};
use amphi::vm::protocol::Protocol;
use libfuzzer_sys::fuzz_target;

/// The largest frame the host takes from a guest: header + payload.
const MAX_FRAME: usize = 5 + 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    // The stream arrives in pieces of 1 to 256 bytes, as reads return it.
    let piece = usize::from(split) + 1;
    let mut dec = Decoder::from_guest();
    let mut proto = Protocol::new();
    for chunk in rest.chunks(piece) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    // Output frames re-encode byte for byte.
                    let raw_kind_ok = matches!(frame, Frame::Stdout(_) | Frame::Stderr(_));
                    let bytes = frame.encode();
                    let limit = guest_payload_limit(bytes[0]).expect("a guest kind");
                    if raw_kind_ok {
                        assert!(
                            bytes.len() - 5 <= limit,
                            "a frame over its limit got through"
                        );
                    }
                    if proto.on_frame(frame).is_err() {
                        // A protocol violation: the host stops the VM here.
                        return;
                    }
                }
                Ok(None) => break,
                // A decoding error: the host stops the VM here.
                Err(_) => return,
            }
        }
        assert!(
            dec.buffered() < MAX_FRAME + piece,
            "the decoder holds {} bytes",
            dec.buffered()
        );
    }
});
