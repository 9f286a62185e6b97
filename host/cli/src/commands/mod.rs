//! One module per command, as wasmtime-cli lays out its commands; `main.rs`
//! parses the command line and dispatches.

pub(crate) mod acme;
pub(crate) mod args;
pub(crate) mod bench;
pub(crate) mod connect;
pub(crate) mod handover;
pub(crate) mod serve;
pub(crate) mod systemd;
pub(crate) mod worker;
