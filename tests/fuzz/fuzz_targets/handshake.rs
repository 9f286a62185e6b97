//! The host's handshake driver (rustls's unbuffered API behind our record
//! framing) fed arbitrary peer bytes in arbitrary pieces, as a server and
//! as a client. It must end in progress, completion or a typed error, never
//! a panic or a loop, and never buffer more than its limit.
#![no_main]

use std::sync::{Arc, OnceLock};

use keyferry::handshake::{Handshake, Progress};
use keyferry::tls::{ServerVerification, TlsOptions};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let identity = keyferry_server::certificate::self_signed(&["fuzz.example".into()]).expect("a certificate");
        let options = TlsOptions::default().with_alpn(&[b"http/1.1"]);
        (
            Arc::new(options.server_config(&identity).expect("server config")),
            Arc::new(
                options
                    .client_config(ServerVerification::DangerousNone)
                    .expect("client config"),
            ),
        )
    })
}

// The input is the mode (low bit: act as the client), the piece size (0:
// whole) and the peer's bytes, so captured flights seed the corpus as is.
fuzz_target!(|data: &[u8]| {
    let [mode, piece, bytes @ ..] = data else {
        return;
    };
    let as_client = mode & 1 == 1;
    let (server, client) = configs();
    let mut handshake = if as_client {
        let name = ServerName::try_from("fuzz.example").expect("a name");
        let mut h = Handshake::client(client, name, 1).expect("a client");
        h.advance().expect("the ClientHello");
        assert!(!h.take_outgoing().is_empty(), "a ClientHello");
        h
    } else {
        Handshake::server(server, 1).expect("a server")
    };
    for piece in keyferry_fuzz::pieces(*piece, bytes) {
        if handshake.feed(piece).is_err() {
            return;
        }
        match handshake.advance() {
            Ok(Progress::Complete) => {
                let _ = handshake.take_outgoing();
                let _ = handshake.finish();
                return;
            }
            Ok(_) => {
                let _ = handshake.take_outgoing();
            }
            Err(_) => return,
        }
    }
});
