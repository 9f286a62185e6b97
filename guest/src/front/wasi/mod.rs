//! The interfaces a stock `wasi:http` component imports, implemented in
//! the sandbox over [`super::conn`]: `wasi:http/types` and an outgoing
//! handler that refuses (`http_types`), `wasi:io` streams, poll and error
//! (`io`), the monotonic clock, stdio and a filesystem with no directories
//! (`cli`), and `wasi:sockets` with no socket (`sockets`). Each carries
//! plaintext or a type that does, so none may be the host's (DESIGN
//! section 9, rule 1).

// Defined before the modules, which use it.
/// Implements a resource's trait for an uninhabited type: no value of it
/// is ever made, so no method can be called.
macro_rules! uninhabited {
    ($trait:path => $ty:ident { $($name:ident($($arg:ident: $argty:ty),*) -> $ret:ty;)* }) => {
        impl $trait for $ty {
            $(#[allow(unused_variables, reason = "no value exists to use them on")]
            fn $name(&self, $($arg: $argty),*) -> $ret { match *self {} })*
        }
    };
}

mod cli;
mod http_types;
mod io;
mod sockets;

use super::conn::HttpFront;
use crate::exports::Exports;

/// The front component's exports.
pub(crate) type Front = Exports<HttpFront>;
