//! `keyferry serve --echo`: sends back every byte, inside the sandbox.
#![cfg(target_arch = "wasm32")]
#![no_std]

keyferry_guest::export_application!(keyferry_guest::application::Echo);
