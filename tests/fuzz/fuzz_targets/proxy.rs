//! The PROXY protocol v2 reader, fed whatever arrives before the TLS
//! handshake from a load balancer (or from anyone, when the listener is
//! exposed by mistake). A header it accepts must be one it could have
//! written, for a TCP client. The `--proxy-from` networks are parsed from
//! the same bytes: a network always contains its own address.
#![no_main]

use keyferry_server::proxy::{self, Proxied};
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
        assert!(
            matches!(data[13], 0x11 | 0x21),
            "a client of a transport other than TCP: {:#04x}",
            data[13]
        );
        let server = "127.0.0.1:443".parse().expect("an address");
        let again = proxy::header(client, server);
        let mut reader = &again[..];
        let reread = runtime.block_on(proxy::read_header(&mut reader));
        assert_eq!(reread.ok(), Some(Proxied::Client(client)), "round trip");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(network) = text.parse::<proxy::Network>()
    {
        let address = text.split('/').next().and_then(|a| a.parse().ok());
        let address = address.expect("a network parses only with an address");
        assert!(network.contains(address), "{text} leaves out its own address");
    }
});
