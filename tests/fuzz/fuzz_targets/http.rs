//! The built-in HTTP/1.1 responder fed arbitrary requests in arbitrary
//! pieces. Checks that what it answers is a sequence of whole HTTP/1.1
//! responses and that it hands the host nothing.
#![no_main]

extern crate alloc;

// The responder is the `http_app` example's; it is included as the
// example and its native tests include it.
#[path = "../../../guest/examples/http_app/responder.rs"]
mod responder;

use keyferry_fuzz::facts;
use keyferry_guest::application::{Application, Reply};
use keyferry_record::ProtocolVersion;
use keyferry_record::connection::Role;
use responder::HttpResponder;
use libfuzzer_sys::fuzz_target;

// The input is the piece size (0: whole) and the request bytes, so real
// requests seed the corpus as they are.
fuzz_target!(|data: &[u8]| {
    let [piece, bytes @ ..] = data else {
        return;
    };
    let mut app = HttpResponder::new(&facts(ProtocolVersion::Tls13, Role::Server));
    for piece in keyferry_fuzz::pieces(*piece, bytes) {
        let mut reply = Reply::default();
        app.receive(piece, &mut reply);
        let sent = reply.sent();
        assert!(
            sent.is_empty() || sent.starts_with(b"HTTP/1.1 "),
            "an answer that is not an HTTP/1.1 response"
        );
        assert!(
            reply.to_host().is_empty(),
            "the responder leaked plaintext to the host"
        );
        // The session stops feeding a responder that closed.
        if reply.closes() {
            break;
        }
    }
});
