//! keyferry's server: what `keyferry serve` is made of, on the
//! [`keyferry`] core.
//!
//! The core runs handshakes, exports keys, and drives a connection's data
//! plane in a guest ([`keyferry::DataPlane`]); this crate serves
//! connections with it. The layers, bottom up (each module imports only
//! those below it):
//! - [`access`] (the access log's lines), [`ending`] (how a connection ended: the set the log, the metrics and
//!   a worker's report share), [`metrics`] (the counters) and [`scrape`]
//!   (their HTTP listener), [`proxy`] (the PROXY v2 header), [`tickets`]
//!   (session-ticket keys a fleet shares), [`certificate`] (a self-signed
//!   certificate for a server started without one);
//! - [`ready`] (the instance pool both placements use: instances made
//!   and keyed ahead of their connections, or shared ones), [`transport`]
//!   (byte-stream loops), `session` (a connection attached to its guest:
//!   which loop serves it, and its log line), [`forward`] (`--forward`: the backend connect,
//!   its PROXY header, and the relay), [`front`] (every connection's lifecycle but its
//!   placement: accept, admission, the client's address and the
//!   handshake), [`server`] (connections placed in this process);
//! - the process split: [`channel`] (the protocol between the two sides),
//!   [`worker`] (the unprivileged data-plane side), [`monitor`] (the
//!   handshake process that holds the key and supervises workers, relaying
//!   their standard error), and
//!   [`confine`] (what keeps the key from the workers without root).
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, unused_qualifications)]

pub mod access;
pub mod certificate;
pub mod channel;
pub mod confine;
pub mod ending;
pub mod forward;
pub mod front;
mod http_transport;
pub mod metrics;
pub mod monitor;
pub mod proxy;
pub mod ready;
mod relay;
pub mod scrape;
pub mod server;
mod session;
pub mod tickets;
pub mod transport;
pub mod worker;
