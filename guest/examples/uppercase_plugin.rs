//! A data-plane plugin built on keyferry's record layer: an echo service
//! that answers in upper case. The record layer, KeyUpdate, alerts, blob
//! import and the WIT glue all come from `keyferry_guest`; the plugin is its
//! application and one line that exports it.
//!
//! Build it:
//!
//! ```text
//! cargo build -p keyferry-guest --example uppercase_plugin --no-default-features \
//!     --target wasm32-wasip2 --release
//! ```
//!
//! and serve with it: `keyferry serve --guest
//! target/wasm32-wasip2/release/examples/uppercase_plugin.wasm`.
#![cfg(target_arch = "wasm32")]

use keyferry_guest::application::{Application, Reply};
use keyferry_guest::connection::Facts;

struct Shout;

impl Application for Shout {
    fn new(_facts: &Facts) -> Self {
        Shout
    }

    fn receive(&mut self, plaintext: &[u8], reply: &mut Reply) {
        reply.send(&plaintext.to_ascii_uppercase());
    }
}

keyferry_guest::export_application!(Shout);
