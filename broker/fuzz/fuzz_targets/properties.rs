//! The MQTT 5 property parser on arbitrary bytes: no panic, and a block it accepts encodes
//! back to one that decodes to the same properties.
//!
//! Input: byte 0 picks the packet kind whose properties are parsed, the rest is the block.
#![no_main]

use broker::codec::Properties;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, block)) = data.split_first() else {
        return;
    };
    let kind = selector % 16;
    if let Ok(properties) = Properties::decode_block(Bytes::copy_from_slice(block), kind) {
        let mut out = BytesMut::new();
        properties.encode_block(&mut out);
        let again = Properties::decode_block(out.freeze(), kind)
            .expect("an encoded property block decodes");
        assert_eq!(again, properties);
    }
});
