//! TLS configuration for the trusted host: identities from PEM files or
//! generated at start, and rustls configs with secret extraction enabled,
//! built with [`TlsOptions`]. Each connection gets its own
//! [`SecretLog`] so the handoff gets the traffic secrets.
//!
//! The private key lives only here, in the host process. It never enters a
//! guest, a blob, a log line or an error message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, Result};
use crate::export::SecretLog;
use crate::ocsp::{EXPIRY_MARGIN, OcspStaple};
use crate::suites;
use rustls::server::ProducesTickets;

/// A certificate chain and its private key. No `Debug`, no `Clone`: it
/// holds the long-term private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// An OCSP response to staple, and until when.
    staple: Option<(Vec<u8>, Option<SystemTime>)>,
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
        let identity = Self {
            chain,
            key,
            staple: None,
        };
        identity.check_key_matches()?;
        Ok(identity)
    }

    /// A certificate chain (leaf first) and its private key, already
    /// decoded: a certificate made at start, or read from elsewhere than a
    /// PEM file. The key is checked to belong to the leaf.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        if chain.is_empty() {
            return Err(ConfigError::NoCertificate {
                path: "(given chain)".into(),
            }
            .into());
        }
        let identity = Self {
            chain,
            key,
            staple: None,
        };
        identity.check_key_matches()?;
        Ok(identity)
    }

    /// A self-signed certificate for the core's own tests (the server
    /// crate makes them for real, `keyferry_server::certificate`).
    #[cfg(test)]
    pub(crate) fn self_signed(names: &[String]) -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        Self::from_der(vec![ck.cert.der().clone()], key)
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

    /// When the leaf certificate expires (its notAfter), in seconds since
    /// the Unix epoch; `None` if the parser cannot read it.
    pub fn not_after(&self) -> Option<i64> {
        crate::x509::not_after(&self.chain[0])
    }

    /// Staples `response` to this identity's handshakes until its
    /// nextUpdate (less a minute). It must be about this leaf, say `good`,
    /// and be current.
    pub fn staple(&mut self, response: &OcspStaple) -> Result<()> {
        self.staple = Some(response.staple_for(&self.chain, SystemTime::now())?);
        Ok(())
    }

    /// Whether `response` is about this identity's leaf certificate.
    pub fn is_about(&self, response: &OcspStaple) -> bool {
        response.is_for(&self.chain)
    }

    fn check_key_matches(&self) -> Result<()> {
        self.certified().map(|_| ())
    }

    /// The chain with its signing key, checked to belong together.
    fn certified(&self) -> Result<CertifiedKey> {
        let signing = default_provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|_| ConfigError::UnsupportedKey)?;
        let certified = CertifiedKey::new(self.chain.clone(), signing);
        certified
            .keys_match()
            .map_err(|_| ConfigError::KeyMismatch)?;
        Ok(certified)
    }

    /// The DNS names (SAN dNSName entries, wildcards as written) the leaf
    /// certificate is valid for, lower case.
    fn dns_names(&self) -> Vec<String> {
        dns_names(&self.chain[0])
    }
}

/// The server's identities, chosen by the client's server name (SNI) as
/// nginx chooses a `server` block: a certificate valid for the exact name,
/// then one whose wildcard covers it, then the first identity (the
/// default, also for clients that send no name). Among candidates, the
/// first whose key can sign with a scheme the client offers wins, so ECDSA
/// and RSA identities for one name coexist. The set can be replaced while
/// serving ([`Identities::replace`], on SIGHUP): handshakes that start
/// afterwards use the new one; connections already made are untouched.
pub struct Identities {
    current: RwLock<Arc<Catalog>>,
    /// ACME TLS-ALPN-01 challenge certificates (RFC 8737), by the name
    /// being validated: served only to a client that offers `acme-tls/1`
    /// alone, as the validation server does.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

struct Catalog {
    keys: Vec<Arc<CertifiedKey>>,
    /// The same keys with their OCSP response, where one is stapled, and
    /// when to stop stapling it.
    stapled: Vec<Option<(Arc<CertifiedKey>, Option<SystemTime>)>>,
    /// Lower-case name (or `*.suffix`) to indexes into `keys`, in order.
    names: HashMap<String, Vec<usize>>,
    fingerprints: Vec<String>,
    not_after: Vec<Option<i64>>,
}

impl Catalog {
    fn new(identities: &[Identity]) -> Result<Self> {
        if identities.is_empty() {
            return Err(ConfigError::NoIdentity.into());
        }
        let mut names: HashMap<String, Vec<usize>> = HashMap::new();
        let mut keys = Vec::with_capacity(identities.len());
        let mut stapled = Vec::with_capacity(identities.len());
        for (i, identity) in identities.iter().enumerate() {
            let certified = identity.certified()?;
            stapled.push(identity.staple.as_ref().map(|(response, until)| {
                let mut with = certified.clone();
                with.ocsp = Some(response.clone());
                let until = until.map(|t| t.checked_sub(EXPIRY_MARGIN).unwrap_or(t));
                (Arc::new(with), until)
            }));
            keys.push(Arc::new(certified));
            for name in identity.dns_names() {
                names.entry(name).or_default().push(i);
            }
        }
        Ok(Self {
            keys,
            stapled,
            names,
            fingerprints: identities.iter().map(Identity::fingerprint).collect(),
            not_after: identities.iter().map(Identity::not_after).collect(),
        })
    }

    /// The key to serve for identity `i`: with its OCSP response while the
    /// response is current, without once it is not (a stale response is
    /// worse than none: a client that requires stapling refuses it).
    fn serve(&self, i: usize, now: SystemTime) -> Option<Arc<CertifiedKey>> {
        match self.stapled.get(i)? {
            Some((stapled, until)) if until.is_none_or(|t| now < t) => Some(stapled.clone()),
            _ => self.keys.get(i).cloned(),
        }
    }

    /// Indexes of the identities for `name`: exact, then wildcard.
    fn candidates(&self, name: &str) -> impl Iterator<Item = usize> + '_ {
        let name = name.to_ascii_lowercase();
        let wildcard = name
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        let exact = self.names.get(&name);
        let wild = wildcard.and_then(|w| self.names.get(&w));
        exact.into_iter().chain(wild).flatten().copied()
    }
}

impl Identities {
    /// The first identity is the default.
    pub fn new(identities: &[Identity]) -> Result<Self> {
        Ok(Self {
            current: RwLock::new(Arc::new(Catalog::new(identities)?)),
            challenges: RwLock::new(HashMap::new()),
        })
    }

    /// Answers ACME's TLS-ALPN-01 validation of `name` with `certificate`
    /// (self-signed, carrying the acmeIdentifier extension) and its `key`,
    /// until [`Identities::clear_acme_challenge`]. The pair is not checked
    /// against each other as an [`Identity`] is: webpki refuses to parse a
    /// certificate with that critical extension, and only the CA's
    /// validator ever sees this one.
    pub fn set_acme_challenge(
        &self,
        name: &str,
        certificate: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<()> {
        let signing = default_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|_| ConfigError::UnsupportedKey)?;
        let certified = Arc::new(CertifiedKey::new(vec![certificate], signing));
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), certified);
        Ok(())
    }

    /// Stops answering the validation of `name`.
    pub fn clear_acme_challenge(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// The challenge certificate for a client that offers only
    /// `acme-tls/1` (RFC 8737 section 3), if one is set for its name.
    fn acme_challenge(&self, hello: &ClientHello<'_>) -> Option<Option<Arc<CertifiedKey>>> {
        let mut offered = hello.alpn()?;
        if offered.next() != Some(ACME_TLS_ALPN) || offered.next().is_some() {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        Some(
            self.challenges
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned(),
        )
    }

    /// Serves `identities` from the next handshake on. On error the set in
    /// service stays.
    pub fn replace(&self, identities: &[Identity]) -> Result<()> {
        let catalog = Arc::new(Catalog::new(identities)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = catalog;
        Ok(())
    }

    /// The leaf certificates' SHA-256 fingerprints, default first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.catalog().fingerprints.clone()
    }

    /// Each leaf certificate's fingerprint and expiry (seconds since the
    /// Unix epoch), default first; certificates the parser cannot read
    /// are left out.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let catalog = self.catalog();
        catalog
            .fingerprints
            .iter()
            .zip(&catalog.not_after)
            .filter_map(|(f, t)| Some((f.clone(), (*t)?)))
            .collect()
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl core::fmt::Debug for Identities {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identities")
            .field("fingerprints", &self.fingerprints())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Identities {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME validation gets its challenge certificate, or none.
        if let Some(challenge) = self.acme_challenge(&hello) {
            return challenge;
        }
        let catalog = self.catalog();
        let schemes = hello.signature_schemes();
        let can_sign = |i: &usize| catalog.keys[*i].key.choose_scheme(schemes).is_some();
        let by_name = hello
            .server_name()
            .and_then(|name| catalog.candidates(name).find(can_sign));
        // With no identity that can sign for this client (it offered no
        // suite or signature scheme we share), the default goes on, and
        // rustls refuses the client with handshake_failure as the RFCs
        // ask; no certificate at all would be access_denied.
        let chosen = by_name
            .or_else(|| (0..catalog.keys.len()).find(can_sign))
            .unwrap_or(0);
        catalog.serve(chosen, SystemTime::now())
    }
}

/// Staples each OCSP response to the identity it is about. A response
/// about no identity, or one that cannot be stapled (not `good`, expired),
/// is an error naming its file: an operator who gives one expects it
/// served.
pub fn attach_staples(identities: &mut [Identity], responses: &[OcspStaple]) -> Result<()> {
    for response in responses {
        let identity = identities
            .iter_mut()
            .find(|identity| identity.is_about(response))
            .ok_or_else(|| ConfigError::Ocsp {
                path: response.path().into(),
                reason: "it is about none of the --cert certificates (serial number and issuer)"
                    .into(),
            })?;
        identity.staple(response)?;
    }
    Ok(())
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

/// The DNS names (SAN dNSName entries, wildcards as written) a DER
/// certificate is valid for, lower case; none if webpki cannot read it.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|cert| {
            cert.valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
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
    client_optional: bool,
    client_crls: Vec<CertificateRevocationListDer<'static>>,
    client_identity: Option<Arc<Identity>>,
    ticket_keys: Option<Arc<dyn ProducesTickets>>,
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
            client_optional: false,
            client_crls: Vec::new(),
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

    /// The ALPN protocols set, in preference order.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    /// ALPN protocols to offer (client) or accept (server), in preference order.
    pub fn with_alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Server side: require a client certificate that chains to `roots`.
    pub fn with_client_verification(mut self, roots: RootCertStore) -> Self {
        self.client_roots = Some(Arc::new(roots));
        self.client_optional = false;
        self
    }

    /// Server side: ask for a client certificate that chains to `roots`,
    /// and serve clients that send none (one that sends another is still
    /// refused).
    pub fn with_optional_client_verification(mut self, roots: RootCertStore) -> Self {
        self.client_roots = Some(Arc::new(roots));
        self.client_optional = true;
        self
    }

    /// Server side, with client verification: refuse client certificates
    /// these CRLs revoke. As OpenSSL's `X509_V_FLAG_CRL_CHECK_ALL` (nginx's
    /// `ssl_crl`), every certificate of a client's chain needs its issuer's
    /// CRL, and a CRL past its nextUpdate refuses every client it covers
    /// until it is replaced.
    pub fn with_client_crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.client_crls = crls;
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
    pub fn with_ticket_keys(mut self, keys: Arc<dyn ProducesTickets>) -> Self {
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
        let identities = Identities::new(std::slice::from_ref(identity))?;
        self.server_config_for(Arc::new(identities))
    }

    /// A server config that picks among `identities` by SNI, and follows
    /// their replacement while serving.
    pub fn server_config_for(&self, identities: Arc<Identities>) -> Result<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(self.provider())
            .with_protocol_versions(&self.versions)
            .map_err(ConfigError::Tls)?;
        let builder = match &self.client_roots {
            Some(roots) => {
                let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    self.provider(),
                );
                if self.client_optional {
                    verifier = verifier.allow_unauthenticated();
                }
                if !self.client_crls.is_empty() {
                    verifier = verifier
                        .with_crls(self.client_crls.iter().cloned())
                        .enforce_revocation_expiration();
                }
                let verifier = verifier.build().map_err(ConfigError::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(identities);
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
    let certificates = read_certificates(path)?;
    // A file with no certificate in it (not PEM, or the wrong file) would
    // trust no one, or fail later without naming the file.
    if certificates.is_empty() {
        return Err(ConfigError::NoCertificate { path: path.into() }.into());
    }
    for cert in certificates {
        roots.add(cert).map_err(|e| ConfigError::BadCa {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Reads certificate revocation lists: PEM (`X509 CRL` blocks, as `openssl
/// ca -gencrl` writes them) or one DER CRL. Each is parsed as the verifier
/// will, and one already past its nextUpdate is refused, so a stale file
/// fails the start or the reload rather than every client.
pub fn crls_from_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read(path)?;
    let fail = |reason: String| ConfigError::Crl {
        path: path.into(),
        reason,
    };
    let crls = if bytes.starts_with(&[0x30]) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| fail("malformed PEM".into()))?
    };
    if crls.is_empty() {
        return Err(fail("no CRL in it (PEM X509 CRL, or DER)".into()).into());
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| fail(format!("not a CRL webpki reads ({e:?})")))?;
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
            .map_err(|_| fail("not a CRL x509-parser reads".into()))?;
        if let Some(next) = parsed.next_update()
            && next.timestamp() <= now as i64
        {
            return Err(fail(format!(
                "expired (nextUpdate {next}); make a new one (openssl ca -gencrl)"
            ))
            .into());
        }
    }
    Ok(crls)
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
            staple: None,
        }
    }

    #[test]
    fn a_staple_is_served_until_its_next_update_less_the_margin_then_dropped() {
        let now = SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        let mut identity = ca_identity();
        identity.staple = Some((vec![0x30, 0x03, 0x0a, 0x01, 0x00], Some(now + hour)));
        let mut forever = ca_identity();
        forever.staple = Some((vec![0x30], None));
        let catalog = Catalog::new(&[identity, forever, ca_identity()]).unwrap();
        let stapled = |i, at| catalog.serve(i, at).unwrap().ocsp.clone();
        assert_eq!(stapled(0, now), Some(vec![0x30, 0x03, 0x0a, 0x01, 0x00]));
        assert_eq!(stapled(0, now + hour - EXPIRY_MARGIN / 2), None);
        assert_eq!(stapled(0, now + 2 * hour), None);
        assert_eq!(stapled(1, now + 1000 * hour), Some(vec![0x30]));
        assert_eq!(stapled(2, now), None);
    }

    /// The leaf certificate a rustls client gets for `name` (None: no SNI).
    fn served_to(config: &Arc<ServerConfig>, name: &str, sni: bool) -> CertificateDer<'static> {
        let mut client_config = TlsOptions::default()
            .client_config(ServerVerification::DangerousNone)
            .unwrap();
        client_config.enable_sni = sni;
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut client: rustls::Connection =
            rustls::ClientConnection::new(Arc::new(client_config), name)
                .unwrap()
                .into();
        let mut server: rustls::Connection = rustls::ServerConnection::new(config.clone())
            .unwrap()
            .into();
        fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection) {
            let mut wire = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut wire).unwrap();
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
            }
            to.process_new_packets().unwrap();
        }
        while client.is_handshaking() || server.is_handshaking() {
            pass(&mut client, &mut server);
            pass(&mut server, &mut client);
        }
        client.peer_certificates().unwrap()[0].clone()
    }

    #[test]
    fn sni_picks_the_identity_and_a_replacement_serves_the_next_handshake() {
        let a = Identity::self_signed(&["a.example".into()]).unwrap();
        let b = Identity::self_signed(&["b.example".into(), "*.b.example".into()]).unwrap();
        let (a_cert, b_cert) = (a.chain[0].clone(), b.chain[0].clone());
        let identities = Arc::new(Identities::new(&[a, b]).unwrap());
        let config = Arc::new(
            TlsOptions::default()
                .server_config_for(identities.clone())
                .unwrap(),
        );
        assert_eq!(served_to(&config, "a.example", true), a_cert);
        assert_eq!(served_to(&config, "B.Example", true), b_cert);
        assert_eq!(served_to(&config, "www.b.example", true), b_cert);
        // Unknown names and clients without SNI get the default, the first.
        assert_eq!(served_to(&config, "c.example", true), a_cert);
        assert_eq!(served_to(&config, "b.example", false), a_cert);

        let c = Identity::self_signed(&["a.example".into()]).unwrap();
        let c_cert = c.chain[0].clone();
        identities.replace(&[c]).unwrap();
        assert_eq!(served_to(&config, "a.example", true), c_cert);
        assert_eq!(identities.fingerprints(), vec![fingerprint(&c_cert)]);
        // A replacement that fails leaves the set in service.
        assert!(identities.replace(&[]).is_err());
        assert_eq!(served_to(&config, "a.example", true), c_cert);
    }

    #[test]
    fn expiries_follow_the_certificates_in_service() {
        // rcgen's certificates are valid until 4096-01-01.
        const YEAR_4096: i64 = 67_090_118_400;
        let a = Identity::self_signed(&["a.example".into()]).unwrap();
        assert_eq!(a.not_after(), Some(YEAR_4096));
        let fingerprint_a = a.fingerprint();
        let identities = Identities::new(&[a]).unwrap();
        assert_eq!(identities.expiries(), vec![(fingerprint_a, YEAR_4096)]);
        let b = Identity::self_signed(&["b.example".into()]).unwrap();
        let fingerprint_b = b.fingerprint();
        identities.replace(&[b]).unwrap();
        assert_eq!(identities.expiries(), vec![(fingerprint_b, YEAR_4096)]);
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
