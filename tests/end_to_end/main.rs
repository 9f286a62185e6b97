//! `keyferry serve` and `keyferry connect` against the TLS tools people
//! already use: curl, openssl s_client and s_server, and rustls clients.
//! Every server here listens on 127.0.0.1 with a port the OS picks.

mod access_log;
mod acme;
mod alerts;
mod bench;
mod connect;
mod fleet;
mod forward;
mod identities;
mod limits;
mod metrics;
mod operator;
mod privsep;
mod revocation;
mod robustness;
mod serve;
mod soak;
mod wasi_http;
