//! The frames between the handshake process and its workers. The handshake
//! process trusts no worker: any frame decodes to a typed value or a typed
//! error, and what decodes re-encodes to the same value.
#![no_main]

use keyferry_server::channel::{FromWorker, ToWorker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = FromWorker::decode(data) {
        assert_eq!(FromWorker::decode(&frame.encode()).ok(), Some(frame));
    }
    if let Ok(frame) = ToWorker::decode(data) {
        let bytes = frame.encode().expect("a decoded frame fits");
        assert_eq!(ToWorker::decode(&bytes).ok(), Some(frame));
    }
});
