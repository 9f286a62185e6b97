//! A hostile plugin, for the host's tests of what a guest may return. It
//! attaches any connection without importing a key, and its `receive`,
//! written against the canonical ABI by hand, answers by what it was sent:
//!
//! - `flood`: 100,000 events in one output, each a 4-byte "ticket";
//! - `alias`: 256 events whose lists all point at the same 1 MiB, so the
//!   host would lift 256 MiB from a guest that holds one;
//! - anything else: an empty output.
//!
//! The host must refuse both without lifting what it will refuse, end only
//! this connection, and carry on.
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code, reason = "the hand-written export is the point")]

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "application-plugin",
        skip: ["[method]tls-connection.receive"],
    });
}

use bindings::exports::keyferry::dataplane::connection::{
    Guest, GuestTlsConnection, Migrated, Output, TlsConnection,
};
use bindings::keyferry::dataplane::types::{
    AeadAlgorithm, Direction, Error, ExchangeKey, Facts, ProtocolVersion, Residency,
    TrafficKeyState,
};

struct Hostile;

struct Conn;

fn empty() -> Output {
    Output {
        to_send: Vec::new(),
        plaintext: Vec::new(),
        events: Vec::new(),
        closed: None,
        done: false,
        idle: true,
    }
}

fn state(direction: Direction) -> TrafficKeyState {
    TrafficKeyState {
        version: ProtocolVersion::Tls13,
        aead: AeadAlgorithm::Chacha20Poly1305,
        direction,
        sequence: 0,
        generation: 0,
        exportable: false,
        residency: Residency::Software,
        host_key_ref: None,
        connection_id: 0,
        auto_update_limit: u64::MAX,
    }
}

impl Guest for Hostile {
    type TlsConnection = Conn;

    fn instance_exchange_key() -> ExchangeKey {
        let keys = keyferry_guest::blob::ExchangeKeyPair::generate();
        ExchangeKey {
            id: keys.key_id().to_vec(),
            public_key: keys.public_key().to_vec(),
        }
    }

    fn instance_wrapping_secret(secret: Vec<u8>) -> Result<(Vec<u8>, u32), Error> {
        let secret = keyferry_guest::blob::WrappingSecret::from_bytes(&secret)
            .map_err(|_| Error::InvalidArgument("secret".into()))?;
        Ok((secret.id().to_vec(), 0))
    }

    fn instance_epoch() -> u32 {
        0
    }
}

impl GuestTlsConnection for Conn {
    fn attach(_: Vec<u8>, _: Vec<u8>, _: Facts) -> Result<TlsConnection, Error> {
        Ok(TlsConnection::new(Conn))
    }

    fn start(&self) -> Output {
        empty()
    }

    fn end_of_stream(&self) -> Output {
        let mut out = empty();
        out.done = true;
        out
    }

    fn send(&self, _: Vec<u8>) -> Result<Vec<u8>, Error> {
        Err(Error::WrongKeyType)
    }

    fn close(&self) -> Output {
        self.end_of_stream()
    }

    fn key_update(&self, _: bool) -> Result<Vec<u8>, Error> {
        Err(Error::WrongKeyType)
    }

    fn key_states(&self) -> (TrafficKeyState, TrafficKeyState) {
        (state(Direction::Seal), state(Direction::Open))
    }

    fn export(_: TlsConnection, _: Vec<u8>) -> Result<Migrated, Error> {
        Err(Error::NotExportable)
    }
}

bindings::export!(Hostile with_types_in bindings);

/// The canonical ABI's memory form of `output`: three lists (pointer and
/// length each), `option<closed>` (3 bytes), `done`, `idle`; 32 bytes.
#[repr(C, align(4))]
struct RawOutput {
    lists: [[u32; 2]; 3],
    closed: [u8; 3],
    done: u8,
    idle: u8,
    _pad: [u8; 3],
}

/// One `event` in memory: the case byte, padding, then the list.
#[repr(C, align(4))]
struct RawEvent {
    case: u8,
    _pad: [u8; 3],
    list: [u32; 2],
}

/// `receive`, by hand: the output is built in memory the guest keeps, with
/// lists that may overlap, which generated bindings never produce.
///
/// # Safety
///
/// Called by the component runtime with the canonical ABI's arguments.
#[unsafe(export_name = "keyferry:dataplane/connection@0.1.0#[method]tls-connection.receive")]
unsafe extern "C" fn receive(_conn: i32, data: *mut u8, len: usize) -> *const RawOutput {
    // SAFETY: the runtime passes the list it allocated with cabi_realloc.
    let request = unsafe { Vec::from_raw_parts(data, len, len) };
    let (count, target_len) = match &request[..] {
        b"flood" => (100_000usize, 4usize),
        b"alias" => (256, 1 << 20),
        _ => (0, 0),
    };
    // One buffer every event points at, and the events, leaked: the
    // output must outlive this call.
    let target: &'static mut [u8] = vec![0x04; target_len].leak();
    let events: &'static mut [RawEvent] = (0..count)
        .map(|_| RawEvent {
            case: 0, // new-session-ticket
            _pad: [0; 3],
            list: [target.as_ptr() as u32, target_len as u32],
        })
        .collect::<Vec<_>>()
        .leak();
    Box::leak(Box::new(RawOutput {
        lists: [[0, 0], [0, 0], [events.as_ptr() as u32, count as u32]],
        closed: [0; 3],
        done: 0,
        idle: 0,
        _pad: [0; 3],
    }))
}
