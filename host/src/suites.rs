//! The one table of record suites: each (version, AEAD) pair the guest
//! speaks, its IANA name and the rustls suite that negotiates it. TLS
//! configuration, the benchmarks and the tests all read it.

use keyferry_record::{AeadAlgorithm, ProtocolVersion};
use rustls::SupportedCipherSuite;
use rustls::crypto::ring::cipher_suite as cs;

/// One record suite.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// Record format.
    pub version: ProtocolVersion,
    /// Record AEAD.
    pub aead: AeadAlgorithm,
    /// The rustls suite (for TLS 1.2, the ECDSA one: keyferry's own
    /// certificates are ECDSA).
    pub rustls: SupportedCipherSuite,
}

impl Suite {
    /// The IANA name, as openssl and the RFCs spell it.
    pub fn name(&self) -> &'static str {
        iana_name(self.rustls)
    }

    /// The rustls protocol version.
    pub fn rustls_version(&self) -> &'static rustls::SupportedProtocolVersion {
        match self.version {
            ProtocolVersion::Tls13 => &rustls::version::TLS13,
            ProtocolVersion::Tls12 => &rustls::version::TLS12,
        }
    }
}

/// Every record suite, TLS 1.3 first.
pub const ALL: [Suite; 6] = [
    suite(
        ProtocolVersion::Tls13,
        AeadAlgorithm::Aes128Gcm,
        cs::TLS13_AES_128_GCM_SHA256,
    ),
    suite(
        ProtocolVersion::Tls13,
        AeadAlgorithm::Aes256Gcm,
        cs::TLS13_AES_256_GCM_SHA384,
    ),
    suite(
        ProtocolVersion::Tls13,
        AeadAlgorithm::ChaCha20Poly1305,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    suite(
        ProtocolVersion::Tls12,
        AeadAlgorithm::Aes128Gcm,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    suite(
        ProtocolVersion::Tls12,
        AeadAlgorithm::Aes256Gcm,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    suite(
        ProtocolVersion::Tls12,
        AeadAlgorithm::ChaCha20Poly1305,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

const fn suite(
    version: ProtocolVersion,
    aead: AeadAlgorithm,
    rustls: SupportedCipherSuite,
) -> Suite {
    Suite {
        version,
        aead,
        rustls,
    }
}

/// A negotiated suite's IANA name (rustls spells TLS 1.3 suites
/// `TLS13_*`; the registry, openssl and the guest say `TLS_*`).
pub fn iana_name(suite: SupportedCipherSuite) -> &'static str {
    match suite {
        SupportedCipherSuite::Tls13(_) => ALL
            .iter()
            .find(|s| s.rustls == suite)
            .map(|s| s.aead.suite_name(ProtocolVersion::Tls13)),
        _ => suite.suite().as_str(),
    }
    .unwrap_or("unknown")
}

/// The suite for a version and AEAD.
pub fn find(version: ProtocolVersion, aead: AeadAlgorithm) -> &'static Suite {
    ALL.iter()
        .find(|s| s.version == version && s.aead == aead)
        .expect("the table holds every (version, AEAD) pair")
}

/// What servers and clients offer by default, in order: ChaCha20-Poly1305
/// first (Wasm has no AES instructions, so it is the fast suite for a
/// software guest), and the TLS 1.2 RSA suites for RSA certificates.
pub const DEFAULT_ORDER: [SupportedCipherSuite; 9] = [
    cs::TLS13_CHACHA20_POLY1305_SHA256,
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_registry_names() {
        let names: Vec<_> = ALL.iter().map(Suite::name).collect();
        assert_eq!(
            names,
            [
                "TLS_AES_128_GCM_SHA256",
                "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
        );
        for s in ALL {
            assert_eq!(s.rustls.version(), s.rustls_version());
            assert_eq!(find(s.version, s.aead).rustls, s.rustls);
        }
    }
}
