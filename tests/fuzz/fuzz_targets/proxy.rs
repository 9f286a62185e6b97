//! The PROXY protocol v2 reader, fed whatever arrives before the TLS
//! handshake from a load balancer (or from anyone, when the listener is
//! exposed by mistake). A header it accepts must be one it could have
//! written.
#![no_main]

use keyferry::proxy::{self, Proxied};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let runtime = runtime();
    let mut reader = data;
    let read = runtime.block_on(proxy::read_header(&mut reader));
    if let Ok(Proxied::Client(client)) = read {
        // Consumed exactly the header: what is left is the TLS stream.
        let consumed = data.len() - reader.len();
        assert!(
            consumed >= proxy::SIGNATURE.len() + 4,
            "accepted less than a header"
        );
        let server = "127.0.0.1:443".parse().expect("an address");
        let again = proxy::header(client, server);
        let mut reader = &again[..];
        let reread = runtime.block_on(proxy::read_header(&mut reader));
        assert_eq!(reread.ok(), Some(Proxied::Client(client)), "round trip");
    }
});
