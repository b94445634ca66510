//! A whole connection fed an arbitrary byte stream through the session code, in process: a
//! fresh broker per input, the connection served over an in-memory duplex pipe on a runtime
//! whose clock jumps ahead whenever everything waits (so keep-alive, connect and slow-consumer
//! timeouts fire at once). The broker must never panic, must close the connection, and must
//! leave no queued bytes behind once its sessions are gone.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    broker_fuzz::serve_bytes(data);
});
