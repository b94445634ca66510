//! The packet decoder on arbitrary bytes, per protocol level: it never panics, and whatever it
//! decodes encodes back to a packet that decodes to the same thing.
//!
//! Input: byte 0 picks the protocol level (before CONNECT, 3.1, 3.1.1 or 5.0), the rest is
//! the byte stream a client sent.
#![no_main]

use broker::codec::{self, ProtocolVersion};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let version = match selector % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        2 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    };
    let mut buf = BytesMut::from(stream);
    while let Ok(Some(packet)) = codec::decode(&mut buf, version, 1 << 20) {
        broker_fuzz::round_trip(&packet, version);
    }
});
