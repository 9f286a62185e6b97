//! `keyferry serve`'s default application: the HTTP/1.1 responder that
//! reports the connection's TLS facts from inside the sandbox.
#![cfg(target_arch = "wasm32")]
#![no_std]

extern crate alloc;

mod responder;

keyferry_guest::export_application!(responder::HttpResponder);
