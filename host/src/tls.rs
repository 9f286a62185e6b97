//! TLS configuration for the trusted host: identities from PEM files or
//! generated at start, and rustls configs with secret extraction enabled,
//! built with [`TlsOptions`]. Each connection gets its own
//! [`SecretLog`] so the handoff gets the traffic secrets.
//!
//! The private key lives only here, in the host process. It never enters a
//! guest, a blob, a log line or an error message.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, Result};
use crate::export::SecretLog;
use crate::suites;
use crate::tickets::TicketKeys;

/// A certificate chain and its private key. No `Debug`, no `Clone`: it
/// holds the long-term private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1). Errors name the file and the OS's reason, never contents.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = read_certificates(cert)?;
        if chain.is_empty() {
            return Err(ConfigError::NoCertificate { path: cert.into() }.into());
        }
        let pem = read(key)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| ConfigError::Pem {
            path: key.into(),
            what: "private key",
        })?;
        let identity = Self { chain, key };
        identity.check_key_matches()?;
        Ok(identity)
    }

    /// A fresh self-signed ECDSA P-256 certificate for `names`.
    pub fn self_signed(names: &[String]) -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        Ok(Self {
            chain: vec![ck.cert.der().clone()],
            key,
        })
    }

    /// The leaf certificate's SHA-256 fingerprint, colon-separated hex, as
    /// `openssl x509 -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    fn check_key_matches(&self) -> Result<()> {
        let provider = default_provider();
        let signing = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|_| ConfigError::UnsupportedKey)?;
        rustls::sign::CertifiedKey::new(self.chain.clone(), signing)
            .keys_match()
            .map_err(|_| ConfigError::KeyMismatch.into())
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        ConfigError::Read {
            path: path.into(),
            source,
        }
        .into()
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            ConfigError::Pem {
                path: path.into(),
                what: "certificate",
            }
            .into()
        })
}

/// SHA-256 of a DER certificate, colon-separated uppercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// How a client checks the server.
pub enum ServerVerification {
    /// Against these roots (and the server name).
    Roots(RootCertStore),
    /// Not at all. For tests against self-signed servers only.
    DangerousNone,
}

/// Versions, suites, ALPN and client authentication, and the rustls
/// configs built from them: secret extraction on, our suite order.
#[derive(Clone)]
pub struct TlsOptions {
    versions: Vec<&'static SupportedProtocolVersion>,
    suites: Vec<SupportedCipherSuite>,
    alpn: Vec<Vec<u8>>,
    client_roots: Option<Arc<RootCertStore>>,
    client_identity: Option<Arc<Identity>>,
    ticket_keys: Option<Arc<TicketKeys>>,
}

impl Default for TlsOptions {
    /// TLS 1.3 and 1.2, ChaCha20-Poly1305 first: Wasm has no AES
    /// instructions, so it is the fast suite for a software guest.
    fn default() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suites: suites::DEFAULT_ORDER.to_vec(),
            alpn: Vec::new(),
            client_roots: None,
            client_identity: None,
            ticket_keys: None,
        }
    }
}

impl TlsOptions {
    /// Only these versions.
    pub fn with_versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// Only these suites, in this preference order.
    pub fn with_suites(mut self, suites: &[SupportedCipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// ALPN protocols to offer (client) or accept (server), in preference order.
    pub fn with_alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Server side: require a client certificate that chains to `roots`.
    pub fn with_client_verification(mut self, roots: RootCertStore) -> Self {
        self.client_roots = Some(Arc::new(roots));
        self
    }

    /// Client side: present `identity` when the server asks for a client
    /// certificate.
    pub fn with_client_identity(mut self, identity: Arc<Identity>) -> Self {
        self.client_identity = Some(identity);
        self
    }

    /// Server side: issue stateless session tickets with these keys, so any
    /// server sharing them resumes the session.
    pub fn with_ticket_keys(mut self, keys: Arc<TicketKeys>) -> Self {
        self.ticket_keys = Some(keys);
        self
    }

    fn provider(&self) -> Arc<CryptoProvider> {
        let mut p = default_provider();
        p.cipher_suites = self.suites.clone();
        Arc::new(p)
    }

    /// A server config ready for handoff (TLS 1.3 tickets: two per
    /// connection, rustls's default).
    pub fn server_config(&self, identity: &Identity) -> Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(self.provider())
            .with_protocol_versions(&self.versions)
            .map_err(ConfigError::Tls)?;
        let builder = match &self.client_roots {
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider(),
                )
                .build()
                .map_err(ConfigError::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(ConfigError::Tls)?;
        config.enable_secret_extraction = true;
        config.ignore_client_order = true;
        if let Some(keys) = &self.ticket_keys {
            config.ticketer = keys.clone();
        }
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    /// A client config ready for handoff.
    pub fn client_config(&self, verification: ServerVerification) -> Result<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(self.provider())
            .with_protocol_versions(&self.versions)
            .map_err(ConfigError::Tls)?;
        let builder = match verification {
            ServerVerification::Roots(roots) => builder.with_root_certificates(roots),
            ServerVerification::DangerousNone => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(self.provider()))),
        };
        let mut config = match &self.client_identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(ConfigError::Tls)?,
            None => builder.with_no_client_auth(),
        };
        config.enable_secret_extraction = true;
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}

/// Reads a PEM bundle of trust anchors.
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| ConfigError::BadCa {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A copy of `config` with a fresh secret log, for one connection.
pub fn with_secret_log_server(config: &Arc<ServerConfig>) -> (Arc<ServerConfig>, Arc<SecretLog>) {
    let log = Arc::new(SecretLog::new());
    let mut c = (**config).clone();
    c.key_log = log.clone();
    (Arc::new(c), log)
}

/// A copy of `config` with a fresh secret log, for one connection.
pub fn with_secret_log_client(config: &Arc<ClientConfig>) -> (Arc<ClientConfig>, Arc<SecretLog>) {
    let log = Arc::new(SecretLog::new());
    let mut c = (**config).clone();
    c.key_log = log.clone();
    (Arc::new(c), log)
}

#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Handshake, Progress};

    /// A self-signed CA certificate, served as if it were a leaf.
    fn ca_identity() -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    #[test]
    fn a_ca_served_as_a_leaf_is_refused_in_words() {
        let identity = ca_identity();
        let options = TlsOptions::default();
        let mut roots = RootCertStore::empty();
        roots.add(identity.chain[0].clone()).unwrap();
        let client = Arc::new(
            options
                .client_config(ServerVerification::Roots(roots))
                .unwrap(),
        );
        let server = Arc::new(options.server_config(&identity).unwrap());
        let mut peer = rustls::ServerConnection::new(server).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut hs = Handshake::client(&client, name, 1).unwrap();
        let err = loop {
            match hs.advance() {
                Ok(Progress::Complete) => panic!("a CA as a leaf was accepted"),
                Ok(_) => {}
                Err(e) => break e,
            }
            let mut out = &hs.take_outgoing()[..];
            while !out.is_empty() {
                peer.read_tls(&mut out).unwrap();
            }
            peer.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while peer.wants_write() {
                peer.write_tls(&mut wire).unwrap();
            }
            hs.feed(&wire).unwrap();
        };
        let message = err.to_string();
        assert!(message.contains("presented a CA certificate"), "{message}");
        assert!(!message.contains("OtherError"), "{message}");
    }
}
