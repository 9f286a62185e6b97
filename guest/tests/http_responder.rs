//! The built-in HTTP/1.1 responder (`examples/http_app`), tested natively:
//! the example itself is a wasm component.

extern crate alloc;

#[path = "../examples/http_app/responder.rs"]
mod responder;
